//! `ferry import`: an inventory kept by another tool, added as ferry profiles and nodes
//! in one transaction (all or nothing); `--dry-run` has the server check the same
//! transaction and roll it back.

pub mod warewulf;

use crate::client::AdminClient;
use anyhow::Context;
use clap::Subcommand;
use ferry_api::admin::AddInventory;
use std::fmt::Write;
use std::io::Read;
use std::path::{Path, PathBuf};
use warewulf::Plan;

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// Warewulf 4's nodes.conf: profiles (with their parents) and nodes, network devices,
    /// kernel, image, tags; asset keys become sealed asset tags (never printed). Fields
    /// ferry has no equivalent for (IPMI, overlays, ...) are listed, not imported. All or
    /// nothing: any refusal (a duplicate MAC, a name that exists) imports nothing.
    Warewulf {
        /// The file (usually /etc/warewulf/nodes.conf).
        #[arg(value_name = "NODES_CONF")]
        nodes_conf: PathBuf,
        /// Show what would be imported and have the server check it, writing nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `ferry import warewulf NODES_CONF [--dry-run]`.
pub async fn warewulf(client: &AdminClient, file: &Path, dry_run: bool) -> anyhow::Result<()> {
    let shown = file.display();
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(warewulf::MAX_FILE_BYTES as u64 + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read {shown}"))?;
    let plan = warewulf::convert(&text).with_context(|| format!("{shown}"))?;
    outln!("{}", describe(&plan))?;
    let request =
        AddInventory { profiles: plan.profiles, nodes: plan.nodes, source: format!("warewulf:{shown}"), dry_run };
    let added = client
        .add_inventory(&request)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nnothing was imported{}", if dry_run { " (dry run)" } else { "" }))?;
    if added.committed {
        outln!("imported {} profile(s) and {} node(s) in one transaction", added.profiles, added.nodes)?;
    } else {
        outln!(
            "dry run: the server checked it: {} profile(s) and {} node(s) would be added; nothing was written",
            added.profiles,
            added.nodes
        )?;
    }
    Ok(())
}

/// What the plan adds, what it leaves out (field names only) and the notes.
pub fn describe(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "profiles ({}):", plan.profiles.len());
    for p in &plan.profiles {
        let parents = if p.profiles.is_empty() { String::new() } else { format!(" <- {}", join(&p.profiles)) };
        let _ = writeln!(out, "  + {}{parents}{}", p.name, summary(&p.settings));
    }
    let _ = writeln!(out, "nodes ({}):", plan.nodes.len());
    for n in &plan.nodes {
        let profiles = if n.profiles.is_empty() { String::new() } else { format!(" <- {}", join(&n.profiles)) };
        let tag = if n.asset_tag.is_some() { "; asset tag (sealed)" } else { "" };
        let _ = writeln!(out, "  + {}{profiles}{}{tag}", n.name, summary(&n.settings));
    }
    if !plan.skipped.is_empty() {
        let _ = writeln!(out, "not imported (no equivalent in ferry; values not shown):");
        let mut groups: Vec<((&str, &str), Vec<&str>)> = Vec::new();
        for s in &plan.skipped {
            match groups.last_mut() {
                Some(((owner, why), fields)) if *owner == s.owner && *why == s.why => fields.push(&s.field),
                _ => groups.push(((&s.owner, s.why), vec![&s.field])),
            }
        }
        for ((owner, why), fields) in groups {
            let _ = writeln!(out, "  - {owner}: {} ({why})", fields.join(", "));
        }
    }
    for note in &plan.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out.trim_end().to_owned()
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// `: image rocky9, kernel 6.1, 3 kernel args, root tmpfs, eth0 52:54:… 10.0.0.1, 2 tags`.
fn summary(s: &ferry_core::Settings) -> String {
    let mut parts = Vec::new();
    if let Some(i) = &s.image {
        parts.push(format!("image {i}"));
    }
    if let Some(k) = &s.kernel {
        parts.push(format!("kernel {k}"));
    }
    if !s.kernel_args.is_empty() {
        parts.push(format!("kernel args \"{}\"", s.kernel_args.join(" ")));
    }
    if let Some(r) = s.root {
        parts.push(format!(
            "root {}",
            serde_json::to_value(r).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        ));
    }
    for (name, i) in &s.interfaces {
        let mut iface = vec![name.clone()];
        iface.extend(i.mac.map(|m| m.to_string()));
        iface.extend(i.ipv4.map(|a| a.to_string()));
        iface.extend(i.ipv6.map(|a| a.to_string()));
        iface.extend(i.netmask.map(|m| format!("mask {m}")));
        iface.extend(i.gateway.map(|g| format!("gw {g}")));
        iface.extend(i.mtu.map(|m| format!("mtu {m}")));
        if i.primary == Some(true) {
            iface.push("primary".into());
        }
        parts.push(iface.join(" "));
    }
    if !s.tags.is_empty() {
        parts.push(format!("tags {}", s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")));
    }
    if let Some(c) = &s.comment {
        parts.push(format!("comment {c:?}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}
