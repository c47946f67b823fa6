//! `ferry node tpm learn NODE` and `ferry profile tpm learn PROFILE --from NODE`: show the
//! PCR values of a node's latest verified quote and, once the admin approves them, pin
//! them as the node's (or the profile's) PCR policy. No hex is copied by hand.

use crate::client::AdminClient;
use anyhow::bail;
use clap::Subcommand;
use ferry_api::admin::{TpmLearn, TpmQuoteView};
use ferry_core::{NodeName, ProfileName};
use std::io::{BufRead, IsTerminal, Write};

#[derive(Subcommand, Debug)]
pub enum NodeTpmCommand {
    /// Show the PCR values of the node's latest verified quote (a boot its PCR policy may
    /// have refused) and, once you approve, pin them as the node's PCR policy. Boot the
    /// node known-good first (e.g. after `ferry node set NODE --tpm-pcrs 4,7,8,9`).
    Learn {
        /// The node whose quote to learn.
        node: String,
        /// Approve without asking (scripts); otherwise a terminal asks y/N.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProfileTpmCommand {
    /// Pin the PCR values one node of the profile quoted (a known-good boot) as the
    /// profile's PCR policy, for every node of the profile: learn once, apply to all.
    /// The profile selects the PCRs (`ferry profile set PROFILE --tpm-pcrs 4,7,8,9`).
    Learn {
        /// The profile to pin the values on.
        profile: String,
        /// The node (using the profile) whose latest verified quote to learn.
        #[arg(long, value_name = "NODE")]
        from: String,
        /// Approve without asking (scripts); otherwise a terminal asks y/N.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn node(client: &AdminClient, cmd: NodeTpmCommand) -> anyhow::Result<()> {
    let NodeTpmCommand::Learn { node, yes } = cmd;
    learn(client, &NodeName::parse(&node)?, None, yes).await
}

pub async fn profile(client: &AdminClient, cmd: ProfileTpmCommand) -> anyhow::Result<()> {
    let ProfileTpmCommand::Learn { profile, from, yes } = cmd;
    learn(client, &NodeName::parse(&from)?, Some(ProfileName::parse(&profile)?), yes).await
}

async fn learn(client: &AdminClient, node: &NodeName, profile: Option<ProfileName>, yes: bool) -> anyhow::Result<()> {
    let quote = client.tpm_quote(node).await?;
    outln!("{}", describe(&quote))?;
    let target = match &profile {
        Some(p) => format!("profile {p} (every node of it)"),
        None => format!("node {node}"),
    };
    if !yes && !approved(&format!("Pin these values as the PCR policy of {target}?"))? {
        bail!("not approved; nothing pinned");
    }
    let approval = TpmLearn { recorded_at_secs: quote.recorded_at_secs, pcrs: quote.pcrs.clone(), profile };
    let learned = client.learn_tpm(node, &approval).await?;
    let list: Vec<String> = learned.pcrs.keys().map(u8::to_string).collect();
    outln!("pinned PCRs {} on {}", list.join(", "), learned.pinned_on)?;
    Ok(())
}

/// The quote as the admin judges it: which TPM, which boot, when, every PCR's value.
fn describe(q: &TpmQuoteView) -> String {
    let mut out = format!(
        "node {} quoted at {} (boot: TPM reset {}, restart {}; from {})\nTPM {}\n",
        q.node, q.recorded_at, q.reset_count, q.restart_count, q.client, q.ek_fingerprint
    );
    for (index, value) in &q.pcrs {
        out.push_str(&format!("  PCR {index:>2} ({}) = {value}\n", q.bank));
    }
    out.push_str("Approve only a boot you know is good: these values become what every boot must measure.");
    out
}

/// y/N on a terminal; refused (not assumed) without one.
fn approved(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("not approved: no terminal to ask on; check the values above and run again with --yes");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}
