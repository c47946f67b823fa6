//! ferry's command line. The binary crate only calls [`main`].

/// `println!` that returns an error instead of panicking when standard output is
/// closed (`ferry audit | head -1`); [`main`] then exits quietly.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` as [`outln!`] does it.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}

pub mod args;
mod bench;
mod bench_unpack;
mod client;
mod dnsmasq;
mod doctor;
mod doctor_checks;
mod image_import;
mod images;
mod import;
mod listing;
mod manpages;
mod output;
mod serve_args;
mod settings;
mod ssh;
mod status;
mod tftp_export;
mod tpm_learn;

use anyhow::Context;
use args::{Cli, Command, NodeCommand, ProfileCommand, ServeArgs, TunnelCommand};
use clap::FromArgMatches;
use client::AdminClient;
use ferry_api::admin::{
    AddNodes, AddProfiles, AssetTagChange, AuditQuery, Changed, Names, NewNode, NewProfile, NodePatch, ProfilePatch,
    SetNodes, SetProfiles, TpmApprove, TpmQuery,
};
use ferry_core::model::LayerKind;
use ferry_core::patch::{parse_field, Field, SettingsPatch};
use ferry_core::{hostlist, NodeName, ProfileName};
use listing::{listing, Listing};
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs the command line; errors print as one clear message and exit 1. A closed
/// standard output (the reader of a pipe went away) ends the command quietly with
/// status 0, as `ripgrep` and friends do, rather than with a panic.
pub fn main() -> ExitCode {
    let matches = args::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(sub) = matches.subcommand_name().filter(|s| args::WITHOUT_ADMIN_SOCKET.contains(s)) {
        if matches.value_source("socket") == Some(clap::parser::ValueSource::CommandLine) {
            eprintln!("error: `ferry {sub}` uses no admin socket: leave --admin-socket out");
            return ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.downcast_ref::<output::StdoutError>().is_some_and(|o| o.is_closed_pipe())) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            // The agent's failures have documented exit codes (refused, key mismatch, ...).
            ExitCode::from(e.downcast_ref::<ferry_agent::AgentError>().map_or(1, |a| a.exit_code()))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = cli.socket.clone().unwrap_or_else(|| ferry_server::config::DEFAULT_ADMIN_SOCKET.into());
    let client = AdminClient::new(socket.clone());
    match cli.command {
        Command::Serve(args) => serve(args, cli.socket).await,
        Command::Node(cmd) => node(&client, cmd).await,
        Command::Profile(cmd) => profile(&client, cmd).await,
        Command::Audit { node, limit, since, follow, json } => {
            let subject = node.map(|n| NodeName::parse(&n).map(|n| format!("node/{n}"))).transpose()?;
            let since = since.map(|t| since_secs(&t)).transpose()?;
            let mut query = AuditQuery { subject, limit: Some(limit), since, after: None };
            let mut entries = client.audit(&query).await?;
            if !follow {
                outln!("{}", listing(&entries, json))?;
                return Ok(());
            }
            let mut last = 0;
            loop {
                for e in &entries {
                    last = e.id;
                    outln!("{}", if json { output::json_line_sorted(e) } else { e.row().join("  ") })?;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                query.after = Some(last);
                entries = client.audit(&query).await?;
            }
        }
        Command::Secret(cmd) => settings::secret(&client, cmd).await,
        Command::Token(cmd) => settings::token(&client, cmd).await,
        Command::Tunnel(TunnelCommand::List { json }) => {
            let tunnels = client.list_tunnels().await?;
            outln!("{}", listing(&tunnels, json))?;
            Ok(())
        }
        Command::Tunnel(TunnelCommand::Revoke { node }) => {
            let node = NodeName::parse(&node)?;
            let changed = client.revoke_tunnel(&node).await?;
            if changed.changed == 0 {
                outln!("{node} had no active tunnel")?;
            } else {
                outln!("revoked the tunnel of {node}")?;
            }
            Ok(())
        }
        Command::Image(cmd) => images::image(&client, cmd).await,
        Command::Bench(args::BenchCommand::Storm(a)) => bench::storm(a).await,
        Command::Bench(args::BenchCommand::Unpack(a)) => bench_unpack::unpack(a),
        Command::Configure(crate::args::ConfigureCommand::Dnsmasq(a)) => dnsmasq::configure(&client, a).await,
        Command::Import(import::ImportCommand::Warewulf { nodes_conf, dry_run }) => {
            import::warewulf(&client, &nodes_conf, dry_run).await
        }
        Command::Server(args::ServerCommand::List { json }) => {
            let servers = client.list_servers().await?;
            outln!("{}", listing(&servers, json))?;
            Ok(())
        }
        Command::Server(args::ServerCommand::Remove { id }) => {
            client.remove_server(&id).await?;
            outln!("removed server {id}")?;
            Ok(())
        }
        Command::ServerKey => {
            outln!("{}", client.server_info().await?.public_key)?;
            Ok(())
        }
        Command::ServerCert => {
            match client.server_info().await?.provisioning_tls_pin {
                Some(pin) => outln!("{pin}")?,
                None => anyhow::bail!("the provisioning TLS listener is off: set [provisioning] tls_listen"),
            }
            Ok(())
        }
        Command::Doctor(args) => doctor::doctor(&client, &socket, args).await,
        Command::KnownHosts => ssh::plain_known_hosts(&client).await,
        Command::Ssh(cmd) => ssh::ssh(&client, cmd).await,
        Command::Agent { command, args } => {
            init_logging(ferry_server::LogFormat::Text);
            match command {
                Some(args::AgentCommand::Teardown(t)) => ferry_agent::teardown(t).await?,
                None => {
                    ferry_agent::run(*args).await?;
                }
            }
            Ok(())
        }
        Command::Man { dir } => {
            for page in manpages::write_all(&dir)? {
                outln!("{}", page.display())?;
            }
            Ok(())
        }
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut args::command(), "ferry", &mut script);
            out!("{}", String::from_utf8_lossy(&script))?;
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let config = ferry_server::Config::load(args.overrides(socket))?;
    init_logging(config.log_format);
    ferry_server::Server::build(config).await?.run_until_stopped().await
}

fn init_logging(format: ferry_server::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        ferry_server::LogFormat::Json => builder.json().init(),
        ferry_server::LogFormat::Text => builder.init(),
    }
}

/// `--since`: an RFC 3339 time, or a duration back from now.
fn since_secs(text: &str) -> anyhow::Result<i64> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(t) => t,
        Err(_) => {
            let back = humantime::parse_duration(text).with_context(|| {
                format!("--since {text:?}: give a time (2026-11-23T10:00:00Z) or a duration (10m, 2h)")
            })?;
            std::time::SystemTime::now() - back
        }
    };
    Ok(at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0))
}

fn node_names(list: &str) -> anyhow::Result<Vec<NodeName>> {
    hostlist::expand(list)?.iter().map(|n| NodeName::parse(n).map_err(Into::into)).collect()
}

fn profile_names(list: &str) -> anyhow::Result<Vec<ProfileName>> {
    hostlist::expand(list)?.iter().map(|n| ProfileName::parse(n).map_err(Into::into)).collect()
}

/// Splits `unset` fields into settings paths, and whether profiles / asset tag go.
fn unset_fields(fields: &[String]) -> anyhow::Result<(Vec<Vec<String>>, bool, bool)> {
    let (mut paths, mut profiles, mut asset) = (Vec::new(), false, false);
    for f in fields {
        match parse_field(f)? {
            Field::Settings(p) => paths.push(p),
            Field::Profiles => profiles = true,
            Field::AssetTag => asset = true,
        }
    }
    Ok((paths, profiles, asset))
}

fn report(verb: &str, what: &str, changed: Changed) -> Result<(), output::StdoutError> {
    outln!("{verb} {} {what}{}", changed.changed, if changed.changed == 1 { "" } else { "s" })
}

async fn node(client: &AdminClient, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Add { hostlist, settings, node } => {
            let names = node_names(&hostlist)?;
            let resolved = settings::resolve(&settings, names.len(), LayerKind::Node)?;
            let tag = settings::asset_tag(&node)?;
            if tag.is_some() && names.len() > 1 {
                anyhow::bail!("an asset tag belongs to one node; set it per node");
            }
            let nodes = resolved.per_name(names, |name, profiles, settings| NewNode {
                name,
                profiles,
                settings,
                asset_tag: tag.clone(),
            });
            report("added", "node", client.add_nodes(&AddNodes { nodes }).await?)?;
        }
        NodeCommand::Set { hostlist, settings, node, tpm }
            if tpm.tpm_ek.is_some() || tpm.tpm_ek_cert.is_some() || tpm.tpm_clear =>
        {
            let names = node_names(&hostlist)?;
            let [name] = names.as_slice() else {
                anyhow::bail!(
                    "a TPM identifies one node: give one node name with --tpm-ek, --tpm-ek-cert or --tpm-clear"
                );
            };
            let resolved = settings::resolve(&settings, 1, LayerKind::Node)?;
            let unchanged = resolved.profiles.is_none()
                && resolved.per_target.iter().all(|s| *s == Default::default())
                && settings::asset_tag(&node)?.is_none();
            if !unchanged {
                anyhow::bail!(
                    "TPM options change the TPM registration only; make other changes with a separate `ferry node set`"
                );
            }
            settings::set_tpm(client, name, &tpm).await?;
        }
        NodeCommand::Approve { hostlist, ek_fingerprint } => {
            for (name, fingerprint) in approvals(&node_names(&hostlist)?, &ek_fingerprint)? {
                let view = client.approve_tpm(&name, &TpmApprove { fingerprint }).await?;
                outln!("approved TPM {} for node {}", view.fingerprint, view.node)?;
            }
        }
        NodeCommand::Tpm { action: Some(action), .. } => tpm_learn::node(client, action).await?,
        NodeCommand::Tpm { action: None, hostlist, json } => {
            let mut tpms = client.list_tpms(&TpmQuery::default()).await?;
            if let Some(list) = hostlist {
                let wanted: std::collections::HashSet<NodeName> = node_names(&list)?.into_iter().collect();
                tpms.retain(|t| wanted.contains(&t.node));
            }
            outln!("{}", listing(&tpms, json))?;
        }
        NodeCommand::Set { hostlist, settings, node, tpm: _ } => {
            let names = node_names(&hostlist)?;
            let resolved = settings::resolve(&settings, names.len(), LayerKind::Node)?;
            let asset_tag = settings::asset_tag(&node)?.map(AssetTagChange::Set);
            let per_node_ip = settings.netdev.ipv4.is_some() || settings.netdev.ipv6.is_some();
            if per_node_ip && names.len() > 1 {
                // Each node gets its own address: one request per node, still validated by the server.
                for (name, set) in names.into_iter().zip(resolved.per_target) {
                    let patch = NodePatch {
                        profiles: resolved.profiles.clone(),
                        settings: SettingsPatch { set, unset: vec![] },
                        asset_tag: asset_tag.clone(),
                    };
                    client.set_nodes(&SetNodes { names: vec![name], patch }).await?;
                }
                outln!("changed nodes")?;
            } else {
                let set = resolved.per_target.into_iter().next().unwrap_or_default();
                let patch = NodePatch {
                    profiles: resolved.profiles,
                    settings: SettingsPatch { set, unset: vec![] },
                    asset_tag,
                };
                report("changed", "node", client.set_nodes(&SetNodes { names, patch }).await?)?;
            }
        }
        NodeCommand::Unset { hostlist, fields } => {
            let names = node_names(&hostlist)?;
            let (unset, profiles, asset) = unset_fields(&fields)?;
            let patch = NodePatch {
                profiles: profiles.then(Vec::new),
                settings: SettingsPatch { set: Default::default(), unset },
                asset_tag: asset.then_some(AssetTagChange::Unset),
            };
            report("changed", "node", client.set_nodes(&SetNodes { names, patch }).await?)?;
        }
        NodeCommand::Status { hostlist, watch, since, json } => {
            status::node_status(client, hostlist, since_secs(&since)?, watch, json).await?;
        }
        NodeCommand::List { hostlist, json } => {
            let mut nodes = client.list_nodes().await?;
            if let Some(list) = hostlist {
                let wanted: std::collections::HashSet<NodeName> = node_names(&list)?.into_iter().collect();
                nodes.retain(|n| wanted.contains(&n.name));
            }
            outln!("{}", listing(&nodes, json))?;
            if !json {
                output::weak_identity_note(&nodes);
            }
        }
        NodeCommand::Show { name, merged, json } => {
            let name = NodeName::parse(&name)?;
            if merged {
                let view = client.merged_node(&name).await?;
                outln!("{}", if json { output::json(&view) } else { output::node_merged(&view) })?;
            } else {
                let view = client.node(&name).await?;
                let boot = client.boot_info(&name).await?;
                let shown = if json {
                    output::node_show_json(&view, boot.as_ref())
                } else {
                    output::node_show(&view, boot.as_ref())
                };
                outln!("{shown}")?;
            }
        }
        NodeCommand::Delete { hostlist } => {
            let names = node_names(&hostlist)?.into_iter().map(String::from).collect();
            report("deleted", "node", client.delete_nodes(&Names { names }).await?)?;
        }
    }
    Ok(())
}

/// Pairs each node of an approval with the one fingerprint given for it: a bare
/// fingerprint for a single node, `NODE=FINGERPRINT` for every node of a hostlist.
/// Checked before any request, so a mistake approves nothing.
fn approvals(names: &[NodeName], given: &[String]) -> anyhow::Result<Vec<(NodeName, String)>> {
    let mut by_node = std::collections::BTreeMap::new();
    for g in given {
        let (node, fingerprint) = match g.split_once('=') {
            Some((node, fp)) => (NodeName::parse(node)?, fp.trim().to_owned()),
            None if names.len() == 1 && given.len() == 1 => (names[0].clone(), g.trim().to_owned()),
            None => anyhow::bail!(
                "--ek-fingerprint {g}: with several nodes, name each one: --ek-fingerprint NODE=sha256:… per node"
            ),
        };
        if !names.contains(&node) {
            anyhow::bail!("--ek-fingerprint names node {node}, which is not in the hostlist");
        }
        if by_node.insert(node.clone(), fingerprint).is_some() {
            anyhow::bail!("--ek-fingerprint names node {node} twice");
        }
    }
    names
        .iter()
        .map(|n| match by_node.remove(n) {
            Some(fp) => Ok((n.clone(), fp)),
            None => anyhow::bail!(
                "no --ek-fingerprint for node {n}: each node's TPM is approved by the fingerprint you checked on it"
            ),
        })
        .collect()
}

async fn profile(client: &AdminClient, cmd: ProfileCommand) -> anyhow::Result<()> {
    match cmd {
        ProfileCommand::Add { names, settings } => {
            let names = profile_names(&names)?;
            let resolved = settings::resolve(&settings, names.len(), LayerKind::Profile)?;
            let profiles = resolved.per_name(names, |name, profiles, settings| NewProfile { name, profiles, settings });
            report("added", "profile", client.add_profiles(&AddProfiles { profiles }).await?)?;
        }
        ProfileCommand::Set { names, settings } => {
            let names = profile_names(&names)?;
            let resolved = settings::resolve(&settings, 1, LayerKind::Profile)?;
            let set = resolved.per_target.into_iter().next().unwrap_or_default();
            let patch = ProfilePatch { profiles: resolved.profiles, settings: SettingsPatch { set, unset: vec![] } };
            report("changed", "profile", client.set_profiles(&SetProfiles { names, patch }).await?)?;
        }
        ProfileCommand::Unset { names, fields } => {
            let names = profile_names(&names)?;
            let (unset, profiles, asset) = unset_fields(&fields)?;
            if asset {
                anyhow::bail!("profiles have no asset tag (it belongs to one node)");
            }
            let patch = ProfilePatch {
                profiles: profiles.then(Vec::new),
                settings: SettingsPatch { set: Default::default(), unset },
            };
            report("changed", "profile", client.set_profiles(&SetProfiles { names, patch }).await?)?;
        }
        ProfileCommand::List { json } => {
            let profiles = client.list_profiles().await?;
            outln!("{}", listing(&profiles, json))?;
        }
        ProfileCommand::Show { name, json } => {
            let view = client.profile(&ProfileName::parse(&name)?).await.context("profile show")?;
            outln!("{}", if json { output::json(&view) } else { output::profile_show(&view) })?;
        }
        ProfileCommand::Tpm { action } => tpm_learn::profile(client, action).await?,
        ProfileCommand::Delete { names } => {
            let names = profile_names(&names)?.into_iter().map(String::from).collect();
            report("deleted", "profile", client.delete_profiles(&Names { names }).await?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvals_need_one_fingerprint_per_node() {
        let names = |list: &[&str]| list.iter().map(|n| NodeName::parse(n).unwrap()).collect::<Vec<_>>();
        let given = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let one = approvals(&names(&["n1"]), &given(&["sha256:aa"])).unwrap();
        assert_eq!(one, [(NodeName::parse("n1").unwrap(), "sha256:aa".to_string())]);
        assert_eq!(approvals(&names(&["n1"]), &given(&["n1=sha256:aa"])).unwrap(), one);
        let two = approvals(&names(&["n1", "n2"]), &given(&["n2=sha256:bb", "n1=sha256:aa"])).unwrap();
        assert_eq!(two[1], (NodeName::parse("n2").unwrap(), "sha256:bb".to_string()));
        for (nodes, fps, why) in [
            (&["n1", "n2"][..], &["sha256:aa"][..], "name each one"),
            (&["n1", "n2"], &["n1=sha256:aa"], "no --ek-fingerprint for node n2"),
            (&["n1"], &["n2=sha256:aa"], "not in the hostlist"),
            (&["n1"], &["n1=sha256:aa", "n1=sha256:bb"], "twice"),
        ] {
            let err = approvals(&names(nodes), &given(fps)).unwrap_err().to_string();
            assert!(err.contains(why), "{nodes:?} {fps:?}: {err}");
        }
    }
}
