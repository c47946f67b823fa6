//! The kernel fetch of a boot is audited once (`boot.artifacts`), for the node whose MAC
//! the iPXE script's kernel URL names: `ferry node status` shows the phase `artifacts`.
//! No entry per range request, per other artifact, or for a MAC no node has.

use super::*;
use ferry_api::image::{Artifact, ImageRecord};

const MAC1: &str = "52:54:00:00:00:01";
const DIGEST: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// n1 boots image `os`, whose kernel and initrd are one object in the store.
async fn server() -> TestServer {
    let s = TestServer::start().await;
    let object = crate::boot::object_path(&s.config.data_dir, DIGEST);
    std::fs::create_dir_all(object.parent().expect("parent")).expect("object dir");
    std::fs::write(&object, b"a kernel").expect("object");
    let artifact = Artifact { sha256: DIGEST.into(), size: 8 };
    let image = ImageRecord {
        name: "os".into(),
        kernel: artifact.clone(),
        initrd: artifact,
        root: None,
        rootfs_zst: None,
        rootfs_gz: None,
        created_at: String::new(),
    };
    s.store.add_image(&image, None, &Actor("test".into())).await.expect("image");
    s.add_node("n1", MAC1, "192.0.2.11", serde_json::json!({"image": "os"}), None).await;
    s
}

fn artifacts_entries(audit: &str) -> Vec<&str> {
    audit.lines().filter(|l| l.contains(" boot.artifacts ")).collect()
}

#[tokio::test]
async fn the_kernel_fetch_is_audited_once_for_the_node_it_names() {
    let s = server().await;
    let from = ip("192.0.2.11");
    let script = s.provisioning(from, get(&format!("/boot/ipxe?mac={MAC1}"))).await;
    assert!(script.text().contains("/boot/images/os/kernel?mac=${net0/mac} "), "{}", script.text());

    let kernel = format!("/boot/images/os/kernel?mac={MAC1}");
    let a = s.provisioning(from, get(&kernel)).await;
    assert_eq!((a.status, a.body.as_ref()), (StatusCode::OK, &b"a kernel"[..]));
    // A resumed download, the initrd, an unnamed or unknown MAC: nothing more.
    let resumed = s.provisioning(from, with_header(get(&kernel), "range", "bytes=4-")).await;
    assert_eq!(resumed.status, StatusCode::PARTIAL_CONTENT);
    for other in [
        format!("/boot/images/os/initrd?mac={MAC1}"),
        "/boot/images/os/kernel".into(),
        "/boot/images/os/kernel?mac=52:54:00:99:99:99".into(),
        "/boot/images/os/kernel?mac=nonsense".into(),
    ] {
        assert_eq!(s.provisioning(from, get(&other)).await.status, StatusCode::OK, "{other}");
    }
    let audit = s.audit("node/n1").await;
    assert_eq!(
        artifacts_entries(&audit),
        [format!("mac:{MAC1} boot.artifacts image=os artifact=kernel")],
        "one entry for the boot: {audit}"
    );
    assert_eq!(artifacts_entries(&s.audit("node/n2").await).len(), 0);
}

#[tokio::test]
async fn a_storm_of_kernel_fetches_for_one_node_is_folded() {
    let s = server().await;
    let from = ip("192.0.2.11");
    for _ in 0..20 {
        let a = s.provisioning(from, get(&format!("/boot/images/os/kernel?mac={MAC1}"))).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let audit = s.audit("node/n1").await;
    assert_eq!(
        artifacts_entries(&audit),
        [
            format!("mac:{MAC1} boot.artifacts image=os artifact=kernel"),
            format!("mac:{MAC1} boot.artifacts image=os artifact=kernel repeated=19"),
        ],
        "the first, then the count: not 20 rows"
    );
}
