//! The SSH certificate authority's state (issue 18): one CA shared by every server of a
//! store (its private key sealed), rotation with an overlap, issued certificates that
//! refuse a key shared between nodes, revocation and the revoked-keys list; on both
//! backends.

#[macro_use]
mod common;

use common::{Kind, TestDb};
use ferry_api::admin::{AddNodes, NewNode};
use ferry_core::NodeName;
use ferry_store::prelude::*;
use ferry_store::ssh_ca::{SshCaPurpose, SshCaState, SshCertificateState};
use ferry_store::{now_secs, Actor, NewSshCertificate, Sealer, SqlStore, SshIssueRefusal, StoreError};

const CA_PRIVATE: &[u8] = b"-----BEGIN OPENSSH PRIVATE KEY-----\nCA-ONE-PRIVATE-BYTES\n";

fn actor() -> Actor {
    Actor("test".into())
}
fn n(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}

async fn store_with(db: &TestDb, sealer: Sealer, nodes: &[&str]) -> SqlStore {
    let s = db.open_with(sealer).await;
    let nodes = nodes
        .iter()
        .map(|n| NewNode {
            name: NodeName::parse(n).unwrap(),
            profiles: vec![],
            settings: Default::default(),
            asset_tag: None,
        })
        .collect();
    s.add_nodes(AddNodes { nodes }, &actor()).await.unwrap();
    s
}

fn cert(serial: u64, ca_id: i64, fingerprint: &str, key: &str) -> NewSshCertificate {
    let now = now_secs();
    NewSshCertificate {
        serial,
        ca_id,
        key_id: format!("ferry host test serial {serial}"),
        key_type: "ed25519".into(),
        fingerprint: fingerprint.into(),
        public_key: key.into(),
        principals: vec!["a".into(), "a.hpc.example".into(), "10.0.0.1".into()],
        issued_at: now,
        valid_before: now + 3600,
    }
}

async fn one_ca_for_every_server_sealed_at_rest(kind: Kind) {
    let db = TestDb::new(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("secrets.key");
    let first = store_with(&db, Sealer::load_or_create(&key).unwrap(), &[]).await;
    let (ca, made) =
        first.ensure_ssh_ca(SshCaPurpose::Host, "ssh-ed25519 AAAAONE ca-1", CA_PRIVATE, &actor()).await.unwrap();
    assert!(made);
    assert_eq!((ca.id, ca.state(now_secs())), (1, SshCaState::Signing));
    // A second server (same sealing key) made its own pair at start: the store keeps the first.
    let second = db.open_with(Sealer::load_or_create(&key).unwrap()).await;
    let (same, made) =
        second.ensure_ssh_ca(SshCaPurpose::Host, "ssh-ed25519 AAAATWO ca-2", b"OTHER PRIVATE", &actor()).await.unwrap();
    assert!(!made);
    assert_eq!(same, ca);
    let signing = second.ssh_signing_ca(SshCaPurpose::Host).await.unwrap().expect("a signing CA");
    assert_eq!(
        (&signing.private_key[..], &signing.ca),
        (CA_PRIVATE, &ca),
        "the second server signs with the first's CA"
    );
    assert!(second.ssh_signing_ca(SshCaPurpose::User).await.unwrap().is_none(), "purposes are separate");
    assert!(
        !db.stored_bytes().await.iter().any(|b| b.windows(20).any(|w| w == b"CA-ONE-PRIVATE-BYTES")),
        "the CA's private key is sealed at rest"
    );
    let audit = first.audit(Some("ssh-ca/1"), 10).await.unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "ssh.ca-created").count(), 1, "{audit:?}");
    // A server with another sealing key cannot open it.
    assert!(db.open().await.ssh_signing_ca(SshCaPurpose::Host).await.is_err());
}

async fn rotation_keeps_the_old_ca_trusted_for_the_overlap(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = store_with(&db, Sealer::ephemeral(), &[]).await;
    let (one, _) = s.ensure_ssh_ca(SshCaPurpose::Host, "ssh-ed25519 AAAAONE", CA_PRIVATE, &actor()).await.unwrap();
    let two = s.rotate_ssh_ca(SshCaPurpose::Host, "ssh-ed25519 AAAATWO", b"TWO", 3600, &actor()).await.unwrap();
    assert_eq!(two.id, 2);
    let three = s.rotate_ssh_ca(SshCaPurpose::Host, "ssh-ed25519 AAAATHREE", b"THREE", 0, &actor()).await.unwrap();
    let now = now_secs();
    let cas = s.list_ssh_cas().await.unwrap();
    let states: Vec<_> = cas.iter().map(|c| (c.id, c.state(now))).collect();
    assert_eq!(states, [(3, SshCaState::Signing), (2, SshCaState::Expired), (1, SshCaState::Trusted)]);
    assert!(cas[2].trusted_until.unwrap() >= now + 3590 && cas[2].retired_at.is_some(), "{cas:?}");
    assert_eq!(s.ssh_signing_ca(SshCaPurpose::Host).await.unwrap().unwrap().ca, three);
    assert_eq!(cas[2].public_key, one.public_key);
    let audit = s.audit(Some("ssh-ca/2"), 10).await.unwrap();
    assert!(audit[0].action == "ssh.ca-rotated" && audit[0].detail.contains("replaces=ssh-ca/1"), "{audit:?}");
    assert!(matches!(
        s.rotate_ssh_ca(SshCaPurpose::Host, "two\nlines", b"x", 1, &actor()).await,
        Err(StoreError::BadRequest(_))
    ));
}

async fn certificates_are_recorded_revoked_and_never_shared_between_nodes(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = store_with(&db, Sealer::ephemeral(), &["a", "b", "c"]).await;
    let (ca, _) = s.ensure_ssh_ca(SshCaPurpose::Host, "ssh-ed25519 AAAACA", CA_PRIVATE, &actor()).await.unwrap();
    let node_actor = Actor("node:a".into());
    let boot = now_secs() - 10;
    let ka = cert(u64::MAX >> 1, ca.id, "SHA256:keyA", "ssh-ed25519 AAAAKEYA");
    assert_eq!(s.record_ssh_certificates(&n("a"), boot, std::slice::from_ref(&ka), &node_actor).await.unwrap(), Ok(()));
    let listed = s.list_ssh_certificates(Some(&n("a"))).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].serial, listed[0].state), (u64::MAX >> 1, SshCertificateState::Valid));
    assert_eq!(listed[0].principals, ka.principals);
    let audit = s.audit(Some("node/a"), 10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "ssh.certificate-issued" && e.detail.contains("fingerprint=SHA256:keyA")));

    // b presents a's key (an image's shared host key): refused, nothing recorded, audited.
    let shared = cert(7, ca.id, "SHA256:keyA", "ssh-ed25519 AAAAKEYA");
    let refused = s.record_ssh_certificates(&n("b"), boot, &[shared], &Actor("node:b".into())).await.unwrap();
    assert_eq!(refused, Err(SshIssueRefusal::KeyOfAnotherNode { fingerprint: "SHA256:keyA".into(), other: n("a") }));
    assert!(s.list_ssh_certificates(Some(&n("b"))).await.unwrap().is_empty());
    let audit = s.audit(Some("node/b"), 10).await.unwrap();
    assert!(!audit.iter().any(|e| e.action.starts_with("ssh.")), "a refusal writes nothing (the server audits it)");
    // a may certify its own key again (a reboot that kept the key).
    assert_eq!(
        s.record_ssh_certificates(&n("a"), boot, &[cert(8, ca.id, "SHA256:keyA", "ssh-ed25519 AAAAKEYA")], &node_actor)
            .await
            .unwrap(),
        Ok(())
    );
    assert!(s.ssh_revoked_keys().await.unwrap().is_empty());

    // Revoking a: both its certificates; no new ones until reinstated.
    assert_eq!(s.revoke_ssh_node(&n("a"), &actor()).await.unwrap(), 2);
    assert_eq!(s.ssh_revoked_keys().await.unwrap(), ["ssh-ed25519 AAAAKEYA"]);
    assert!(s
        .list_ssh_certificates(Some(&n("a")))
        .await
        .unwrap()
        .iter()
        .all(|c| c.state == SshCertificateState::Revoked));
    let new_key = [cert(9, ca.id, "SHA256:keyA2", "ssh-ed25519 AAAAKEYA2")];
    let held = s.record_ssh_certificates(&n("a"), boot, &new_key, &node_actor).await.unwrap();
    assert_eq!(held, Err(SshIssueRefusal::NodeRevoked(n("a"))));
    assert_eq!(s.list_ssh_certificates(None).await.unwrap().len(), 2, "nothing recorded while held");
    s.reinstate_ssh_node(&n("a"), &actor()).await.unwrap();
    assert!(matches!(s.reinstate_ssh_node(&n("a"), &actor()).await, Err(StoreError::NotFound { .. })));
    let again = cert(10, ca.id, "SHA256:keyA2", "ssh-ed25519 AAAAKEYA2");
    assert_eq!(s.record_ssh_certificates(&n("a"), boot, &[again], &node_actor).await.unwrap(), Ok(()));
    assert_eq!(s.ssh_revoked_keys().await.unwrap(), ["ssh-ed25519 AAAAKEYA"], "the new key is not revoked");
    assert!(matches!(s.revoke_ssh_node(&n("nope"), &actor()).await, Err(StoreError::NotFound { .. })));

    // A node deleted from the inventory: its certificates' keys are refused too.
    assert_eq!(
        s.record_ssh_certificates(
            &n("c"),
            boot,
            &[cert(11, ca.id, "SHA256:keyC", "ssh-ed25519 AAAAKEYC")],
            &Actor("node:c".into())
        )
        .await
        .unwrap(),
        Ok(())
    );
    s.delete_nodes(&[n("c")], &actor()).await.unwrap();
    assert_eq!(s.ssh_revoked_keys().await.unwrap(), ["ssh-ed25519 AAAAKEYA", "ssh-ed25519 AAAAKEYC"]);
}

async fn a_boot_gets_a_bounded_number_of_certificates(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = store_with(&db, Sealer::ephemeral(), &["a"]).await;
    let (ca, _) = s.ensure_ssh_ca(SshCaPurpose::Host, "ssh-ed25519 AAAACA", CA_PRIVATE, &actor()).await.unwrap();
    let certs = |from: u64, count: u64| -> Vec<NewSshCertificate> {
        (from..from + count)
            .map(|i| cert(i, ca.id, &format!("SHA256:k{i}"), &format!("ssh-ed25519 AAAAK{i}")))
            .collect()
    };
    let boot = now_secs() - 10;
    let node_actor = Actor("node:a".into());
    assert_eq!(s.record_ssh_certificates(&n("a"), boot, &certs(1, 10), &node_actor).await.unwrap(), Ok(()));
    let over = s.record_ssh_certificates(&n("a"), boot, &certs(11, 7), &node_actor).await.unwrap();
    assert_eq!(over, Err(SshIssueRefusal::TooMany { node: n("a"), issued: 10, max: 16 }));
    assert_eq!(s.list_ssh_certificates(None).await.unwrap().len(), 10, "nothing of the refused request");
    assert_eq!(s.record_ssh_certificates(&n("a"), boot, &certs(11, 6), &node_actor).await.unwrap(), Ok(()));
    // The next boot starts counting again.
    assert_eq!(s.record_ssh_certificates(&n("a"), now_secs() + 1, &certs(20, 8), &node_actor).await.unwrap(), Ok(()));
}

both_backends!(
    one_ca_for_every_server_sealed_at_rest,
    rotation_keeps_the_old_ca_trusted_for_the_overlap,
    certificates_are_recorded_revoked_and_never_shared_between_nodes,
    a_boot_gets_a_bounded_number_of_certificates,
);
