//! Profiles and nodes added in one transaction (`ferry import`), on both backends: all
//! or nothing, and a dry run that checks everything and writes nothing.

#[macro_use]
mod common;

use common::{Kind, TestDb};
use ferry_api::admin::{AddInventory, InventoryAdded, NewNode, NewProfile};
use ferry_api::Secret;
use ferry_core::{Interface, NodeName, ProfileName, Settings};
use ferry_store::prelude::*;
use ferry_store::{Actor, StoreError};

fn actor() -> Actor {
    Actor("test".into())
}

fn profile(name: &str, parents: &[&str]) -> NewProfile {
    NewProfile {
        name: ProfileName::parse(name).unwrap(),
        profiles: parents.iter().map(|p| ProfileName::parse(p).unwrap()).collect(),
        settings: Settings { kernel_args: vec![format!("from-{name}")], ..Default::default() },
    }
}

fn node(name: &str, profiles: &[&str], mac: &str) -> NewNode {
    let mut settings = Settings::default();
    settings.interfaces.insert("eth0".into(), Interface { mac: Some(mac.parse().unwrap()), ..Default::default() });
    NewNode {
        name: NodeName::parse(name).unwrap(),
        profiles: profiles.iter().map(|p| ProfileName::parse(p).unwrap()).collect(),
        settings,
        asset_tag: None,
    }
}

fn inventory(nodes: Vec<NewNode>, dry_run: bool) -> AddInventory {
    AddInventory {
        // The child is listed before its parent: one batch may hold both.
        profiles: vec![profile("gpu", &["default"]), profile("default", &[])],
        nodes,
        source: "warewulf:/etc/warewulf/nodes.conf".into(),
        dry_run,
    }
}

async fn counts(s: &ferry_store::SqlStore) -> (usize, usize) {
    (s.list_profiles().await.unwrap().len(), s.list_nodes().await.unwrap().len())
}

async fn profiles_and_nodes_go_in_together_or_not_at_all(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    // A duplicate MAC in the batch: refused, and no profile either.
    let clash = vec![node("n1", &["gpu"], "52:54:00:00:00:01"), node("n2", &["default"], "52:54:00:00:00:01")];
    let e = s.add_inventory(inventory(clash.clone(), false), &actor()).await.unwrap_err();
    assert!(matches!(&e, StoreError::Conflict(m) if m.contains("52:54:00:00:00:01") && m.contains("n1")), "{e}");
    assert_eq!(counts(&s).await, (0, 0), "nothing written");
    // The dry run says the same, before anything is written.
    let e = s.add_inventory(inventory(clash, true), &actor()).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    // A node naming a profile the batch does not have: refused.
    let e = s.add_inventory(inventory(vec![node("n1", &["nope"], "52:54:00:00:00:01")], false), &actor()).await;
    assert!(e.is_err());
    assert_eq!(counts(&s).await, (0, 0));

    let mut tagged = node("n2", &["default"], "52:54:00:00:00:02");
    tagged.asset_tag = Some(Secret::new("ASSET-7f3e-91aa-55c2-0d1e".into()));
    let good = vec![node("n1", &["gpu"], "52:54:00:00:00:01"), tagged];
    let dry = s.add_inventory(inventory(good.clone(), true), &actor()).await.unwrap();
    assert_eq!(dry, InventoryAdded { profiles: 2, nodes: 2, committed: false });
    assert_eq!(counts(&s).await, (0, 0), "a dry run writes nothing");
    assert!(s.audit(None, 100).await.unwrap().iter().all(|e| e.action != "inventory.import"), "nor audits");

    let done = s.add_inventory(inventory(good.clone(), false), &actor()).await.unwrap();
    assert_eq!(done, InventoryAdded { profiles: 2, nodes: 2, committed: true });
    assert_eq!(counts(&s).await, (2, 2));
    let merged = s.merged_node(&NodeName::parse("n1").unwrap()).await.unwrap();
    assert_eq!(merged.settings.kernel_args, ["from-default", "from-gpu"], "inherited through the chain");
    assert_eq!(
        s.get_node(&NodeName::parse("n2").unwrap()).await.unwrap().asset_tag,
        ferry_api::admin::SecretState::Set
    );
    let audit = s.audit(None, 100).await.unwrap();
    let import = audit.iter().find(|e| e.action == "inventory.import").expect("audited");
    assert_eq!(import.detail, "source=warewulf:/etc/warewulf/nodes.conf profiles=2 nodes=2");
    assert!(!audit.iter().any(|e| e.detail.contains("ASSET-7f3e")), "the tag is never in the audit");

    // Importing again: the names exist; nothing changes.
    let e = s.add_inventory(inventory(good, false), &actor()).await.unwrap_err();
    assert!(matches!(&e, StoreError::Conflict(m) if m.contains("already exists")), "{e}");
    assert_eq!(counts(&s).await, (2, 2));
}

both_backends!(profiles_and_nodes_go_in_together_or_not_at_all);
