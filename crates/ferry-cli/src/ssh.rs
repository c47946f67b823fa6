//! `ferry ssh ...`: ferry as the cluster's SSH host certificate authority.

use crate::client::AdminClient;
use crate::listing::{listing, Listing};
use crate::output::text;
use anyhow::Context;
use clap::Subcommand;
use ferry_api::ssh::{
    SshCaPurpose, SshCaRotate, SshCaView, SshCertificateQuery, SshCertificateView, SshUserCertificateRequest,
};
use ferry_core::ssh::{cert_authority_line, check_host_pattern, revoked_line};
use ferry_core::NodeName;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum SshCommand {
    /// Print known_hosts lines that trust the cluster's SSH host CA: one
    /// `@cert-authority PATTERNS KEY` line per CA still trusted, then `@revoked * KEY` for
    /// each revoked host key. Add them to /etc/ssh/ssh_known_hosts on login nodes and
    /// workstations; nodes get theirs through the tunnel at boot.
    KnownHosts {
        /// The host keys nodes reported at phone-home instead, `NODE KEY` per line (as
        /// `ferry known-hosts`): they change whenever a node makes new keys.
        #[arg(long)]
        plain: bool,
        /// The host patterns the CA is trusted for (comma-separated, e.g.
        /// '*.cluster.example,n*'). Default: every node's name and addresses and
        /// *.DOMAIN for each inventory domain.
        #[arg(long, value_delimiter = ',', value_name = "PATTERNS")]
        hosts: Option<Vec<String>>,
    },
    /// Print the revoked host keys, one OpenSSH public key per line: the file
    /// `RevokedHostKeys` names in ssh_config (a list of keys is valid there, as a KRL
    /// is; `ssh-keygen -k -f FILE.krl LIST` turns it into a binary KRL).
    Krl {
        /// Write the list to this file (atomically, mode 0644) instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Revoke every host certificate issued to a node and issue it none until
    /// `ferry ssh reinstate`; its keys appear in `ferry ssh krl` and as `@revoked` lines.
    Revoke {
        /// The node whose host certificates to revoke.
        node: String,
    },
    /// Let a revoked node get host certificates again (from its next boot).
    Reinstate {
        /// The revoked node to reinstate.
        node: String,
    },
    /// The host certificates issued (serial, key ID, principals, validity, state).
    Certs {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sign a short-lived SSH user certificate for an admin's public key: it logs in as
    /// the given login names on every node that trusts the cluster's user CA (made with
    /// `ferry ssh ca rotate --purpose user`; nodes trust it from their next boot).
    SignUser {
        /// The public key to certify (e.g. ~/.ssh/id_ed25519.pub); the private key stays
        /// where it is.
        key: PathBuf,
        /// A login name on the nodes the certificate may log in as (repeat for several).
        #[arg(long = "principal", required = true, value_name = "LOGIN")]
        principals: Vec<String>,
        /// How long the certificate is valid, e.g. 1h, 8h (at most 7d).
        #[arg(long, default_value = "1h", value_name = "DURATION")]
        validity: String,
        /// Where to write the certificate. Default: next to the key as NAME-cert.pub,
        /// where ssh finds it without further options.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The certificate authorities.
    #[command(subcommand)]
    Ca(SshCaCommand),
}

#[derive(Subcommand, Debug)]
pub enum SshCaCommand {
    /// List the CAs: signing, trusted (rotated out, within its overlap) or expired.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a new host CA that signs from now on; the current one stays trusted (in
    /// `ferry ssh known-hosts`) for the overlap. Distribute the new known_hosts lines
    /// before the nodes reboot onto certificates of the new CA. With `--purpose user`,
    /// make (the first time) or replace the user CA that nodes' sshd trusts
    /// (TrustedUserCAKeys) from their next boot.
    Rotate {
        /// Which CA: `host` (host certificates of nodes) or `user` (admins' logins).
        #[arg(long, default_value = "host", value_parser = ["host", "user"])]
        purpose: String,
        /// How long the old CA stays trusted, e.g. 7d (at least the host certificates'
        /// validity, so that those it signed expire first).
        #[arg(long, default_value = "7d", value_name = "DURATION")]
        overlap: String,
    },
}

impl Listing for SshCaView {
    const HEADER: &'static [&'static str] = &["id", "purpose", "state", "key", "created", "trusted until"];
    fn row(&self) -> Vec<String> {
        let state = serde_json::to_value(self.state).ok().and_then(|v| v.as_str().map(str::to_owned));
        vec![
            self.id.to_string(),
            self.purpose.to_string(),
            state.unwrap_or_default(),
            text(&self.public_key),
            self.created_at.clone(),
            self.trusted_until.clone().unwrap_or_else(|| "-".into()),
        ]
    }
}

impl Listing for SshCertificateView {
    const HEADER: &'static [&'static str] = &["serial", "node", "type", "principals", "valid before", "state"];
    fn row(&self) -> Vec<String> {
        let state = serde_json::to_value(self.state).ok().and_then(|v| v.as_str().map(str::to_owned));
        vec![
            self.serial.to_string(),
            self.node.to_string(),
            self.key_type.clone(),
            self.principals.join(","),
            self.valid_before.clone(),
            state.unwrap_or_default(),
        ]
    }
}

/// `ferry known-hosts` and `ferry ssh known-hosts --plain`: the keys nodes reported.
pub async fn plain_known_hosts(client: &AdminClient) -> anyhow::Result<()> {
    for host in client.known_hosts().await? {
        outln!("{}", crate::output::known_hosts_line(&host))?;
    }
    Ok(())
}

pub async fn ssh(client: &AdminClient, cmd: SshCommand) -> anyhow::Result<()> {
    match cmd {
        SshCommand::KnownHosts { plain: true, .. } => plain_known_hosts(client).await,
        SshCommand::KnownHosts { plain: false, hosts } => {
            let trust = client.ssh_known_hosts().await?;
            let patterns = match hosts {
                Some(hosts) => {
                    hosts.iter().try_for_each(|p| check_host_pattern(p))?;
                    hosts
                }
                None => trust.patterns,
            };
            if patterns.is_empty() {
                anyhow::bail!("the inventory has no nodes: name the hosts to trust the CA for with --hosts");
            }
            for ca in &trust.cas {
                outln!("{}", cert_authority_line(&patterns, &ca.public_key))?;
            }
            for key in &trust.revoked_keys {
                outln!("{}", revoked_line(key))?;
            }
            Ok(())
        }
        SshCommand::Krl { output } => {
            let keys: String = client.ssh_known_hosts().await?.revoked_keys.iter().map(|k| format!("{k}\n")).collect();
            match output {
                None => out!("{keys}")?,
                Some(path) => write_atomically(&path, keys.as_bytes())?,
            }
            Ok(())
        }
        SshCommand::Revoke { node } => {
            let node = NodeName::parse(&node)?;
            let done = client.ssh_revoke(&node).await?;
            outln!(
                "revoked {} host certificate(s) of {node}; it gets none until `ferry ssh reinstate {node}`. \
                 Distribute `ferry ssh krl` (or `ferry ssh known-hosts`) to clients now",
                done.certificates
            )?;
            Ok(())
        }
        SshCommand::Reinstate { node } => {
            let node = NodeName::parse(&node)?;
            client.ssh_reinstate(&node).await?;
            outln!("{node} gets host certificates again from its next boot")?;
            Ok(())
        }
        SshCommand::Certs { node, json } => {
            let node = node.map(|n| NodeName::parse(&n)).transpose()?;
            let certs = client.ssh_certificates(&SshCertificateQuery { node }).await?;
            outln!("{}", listing(&certs, json))?;
            Ok(())
        }
        SshCommand::Ca(SshCaCommand::List { json }) => {
            outln!("{}", listing(&client.ssh_cas().await?, json))?;
            Ok(())
        }
        SshCommand::Ca(SshCaCommand::Rotate { purpose, overlap }) => {
            let overlap = humantime::parse_duration(&overlap)
                .with_context(|| format!("invalid --overlap {overlap:?} (examples: 12h, 7d)"))?;
            let purpose = match purpose.as_str() {
                "user" => SshCaPurpose::User,
                _ => SshCaPurpose::Host,
            };
            let ca = client.ssh_rotate_ca(&SshCaRotate { purpose, overlap_secs: overlap.as_secs() }).await?;
            outln!("new {purpose} CA {} signs from now on: {}", ca.id, ca.public_key)?;
            match purpose {
                SshCaPurpose::Host => {
                    outln!("distribute `ferry ssh known-hosts` to clients now: it lists the old and the new CA")?
                }
                SshCaPurpose::User => outln!(
                    "nodes trust it (TrustedUserCAKeys) from their next boot; sign admins' keys with `ferry ssh sign-user`"
                )?,
            }
            Ok(())
        }
        SshCommand::SignUser { key, principals, validity, output } => {
            let validity = humantime::parse_duration(&validity)
                .with_context(|| format!("invalid --validity {validity:?} (examples: 1h, 8h)"))?;
            let public_key = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the public key {}", key.display()))?;
            let req = SshUserCertificateRequest { public_key, principals, validity_secs: validity.as_secs() };
            let signed = client.ssh_sign_user(&req).await?;
            let output = output.unwrap_or_else(|| certificate_path(&key));
            write_atomically(&output, format!("{}\n", signed.certificate).as_bytes())?;
            outln!(
                "{}: logs in as {} until {} (serial {}, key ID {:?})",
                output.display(),
                signed.principals.join(","),
                signed.valid_before,
                signed.serial,
                signed.key_id
            )?;
            Ok(())
        }
    }
}

/// Where ssh looks for a key's certificate: `id_ed25519.pub` → `id_ed25519-cert.pub`.
fn certificate_path(key: &std::path::Path) -> PathBuf {
    let name = key.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    key.with_file_name(format!("{}-cert.pub", name.strip_suffix(".pub").unwrap_or(&name)))
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`, so
/// a reader (ssh) never sees half a list.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
