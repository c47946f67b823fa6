//! Image records with sealed roots, on SQLite and PostgreSQL (see tests/common): the
//! root's key is sealed at rest, bound to its image, and comes back only through
//! `image_root_key`.

#[macro_use]
mod common;

use common::{Kind, TestDb};
use ferry_api::image::{Artifact, ImageRecord, RootArchive};
use ferry_store::prelude::*;
use ferry_store::{Actor, Sealer, StoreError};

fn actor() -> Actor {
    Actor("uid:0".into())
}

fn artifact(c: char, size: u64) -> Artifact {
    Artifact { sha256: c.to_string().repeat(64), size }
}

fn image(name: &str, sealed: Option<bool>) -> ImageRecord {
    ImageRecord {
        name: name.into(),
        kernel: artifact('a', 1),
        initrd: artifact('b', 2),
        root: sealed.map(|sealed| RootArchive {
            sha256: "c".repeat(64),
            size: 3,
            sealed,
            entries: 31_402,
            xattrs: 2_311,
            unpacked_bytes: 1 << 30,
        }),
        rootfs_zst: None,
        rootfs_gz: None,
        created_at: String::new(),
    }
}

/// A key whose bytes are easy to find in a database dump.
const KEY: [u8; 32] = *b"FERRY-ROOT-KEY-0123456789abcdef!";

async fn a_sealed_root_key_is_sealed_at_rest_and_bound_to_its_image(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    s.add_image(&image("sealed", Some(true)), Some(&KEY), &actor()).await.unwrap();
    s.add_image(&image("plain", Some(false)), None, &actor()).await.unwrap();
    s.add_image(&image("kernel-only", None), None, &actor()).await.unwrap();

    let got = s.get_image("sealed").await.unwrap().unwrap();
    assert_eq!(got.root, image("sealed", Some(true)).root, "every field of the root comes back");
    assert!(!serde_json::to_string(&got).unwrap().contains("FERRY-ROOT-KEY"), "no key in the record");
    assert_eq!(s.image_root_key("sealed").await.unwrap().as_deref().map(|k| &k[..]), Some(&KEY[..]));
    assert_eq!(s.image_root_key("plain").await.unwrap(), None);
    assert_eq!(s.get_image("plain").await.unwrap().unwrap().root.map(|r| r.sealed), Some(false));
    assert_eq!(s.image_root_key("kernel-only").await.unwrap(), None);
    assert_eq!(s.image_root_key("missing").await.unwrap(), None);
    let audit = format!("{:?}", s.audit(None, 100).await.unwrap());
    assert!(audit.contains("sealed=true") && !audit.contains("FERRY-ROOT-KEY"), "{audit}");

    // A sealed root needs its key; an unsealed one takes none; keys are 32 bytes.
    for (record, key) in [
        (image("x1", Some(true)), None),
        (image("x2", Some(false)), Some(&KEY[..])),
        (image("x3", None), Some(&KEY[..])),
        (image("x4", Some(true)), Some(&KEY[..31])),
    ] {
        let e = s.add_image(&record, key, &actor()).await.unwrap_err();
        assert!(matches!(e, StoreError::BadRequest(_)), "{}: {e}", record.name);
        assert!(s.get_image(&record.name).await.unwrap().is_none(), "nothing stored for {}", record.name);
    }
    drop(s);
    for bytes in db.stored_bytes().await {
        assert!(!bytes.windows(14).any(|w| w == b"FERRY-ROOT-KEY"), "clear root key at rest");
    }
    // Another sealing key opens nothing.
    let other = db.open_with(Sealer::ephemeral()).await;
    assert!(other.image_root_key("sealed").await.is_err());
}

both_backends!(a_sealed_root_key_is_sealed_at_rest_and_bound_to_its_image);
