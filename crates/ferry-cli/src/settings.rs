//! Turns command-line settings into domain values, validating each at the edge.

use crate::args::{NetdevArgs, NodeOnlyArgs, SettingsArgs, TpmArgs};
use anyhow::{bail, Context};
use ferry_api::admin::{TpmQuery, TpmRegister};
use ferry_api::Secret;
use ferry_core::model::{check_asset_tag, Interface, LayerKind, PCR_TO_LEARN};
use ferry_core::net::{ip_sequence, MacAddr};
use ferry_core::{ProfileName, Settings};
use std::io::Read;
use std::net::IpAddr;

/// Settings for each of `count` targets (IPs counting up), and the profile list if given.
pub struct Resolved {
    pub profiles: Option<Vec<ProfileName>>,
    pub per_target: Vec<Settings>,
}

impl Resolved {
    /// One new record per name: `make(name, profiles, settings)` with the profile list
    /// (empty if none was given) and that target's settings.
    pub fn per_name<N, T>(self, names: Vec<N>, make: impl Fn(N, Vec<ProfileName>, Settings) -> T) -> Vec<T> {
        let profiles = self.profiles.unwrap_or_default();
        names.into_iter().zip(self.per_target).map(|(name, settings)| make(name, profiles.clone(), settings)).collect()
    }
}

pub fn resolve(args: &SettingsArgs, count: usize, layer: LayerKind) -> anyhow::Result<Resolved> {
    let profiles = args
        .profiles
        .as_ref()
        .map(|ps| ps.iter().filter(|p| !p.is_empty()).map(|p| ProfileName::parse(p)).collect::<Result<Vec<_>, _>>())
        .transpose()?;
    let mut base = Settings {
        comment: args.comment.clone(),
        image: args.image.clone(),
        domain: args.domain.clone(),
        kernel: args.kernel.clone(),
        kernel_args: args.kernel_args.iter().flatten().flat_map(|a| a.split_whitespace().map(str::to_owned)).collect(),
        root: args.root.as_deref().map(str::parse).transpose()?,
        identity: args.identity.clone().unwrap_or_default(),
        tunnel_ttl_secs: args
            .tunnel_ttl
            .as_deref()
            .map(|t| {
                humantime::parse_duration(t)
                    .with_context(|| format!("invalid --tunnel-ttl {t:?} (examples: 90s, 10m, 1h)"))
            })
            .transpose()?
            .map(|d| d.as_secs()),
        boot_asset_gate: args.boot_asset_gate,
        ..Default::default()
    };
    for t in &args.tags {
        let (k, v) = split_kv("--tag", t)?;
        base.tags.insert(k, v);
    }
    for p in &args.tpm_pcrs {
        // A bare index selects the PCR, its value to be learned from a known-good boot.
        let bare = !p.contains('=') && !p.starts_with('~');
        let (k, v) = if bare { (p.trim().to_owned(), PCR_TO_LEARN.to_owned()) } else { split_kv("--tpm-pcr", p)? };
        base.tpm_pcrs.insert(k, v.to_ascii_lowercase());
    }
    for index in &args.tpm_pcrs_to_learn {
        base.tpm_pcrs.insert(index.trim().to_owned(), PCR_TO_LEARN.to_owned());
    }
    for m in &args.meta {
        let (k, v) = split_kv("--meta", m)?;
        base.cloud_init.meta_data.insert(k, serde_json::Value::String(v));
    }
    base.cloud_init.user_data = args.user_data.as_deref().map(read_document).transpose()?;
    base.cloud_init.vendor_data = args.vendor_data.as_deref().map(read_document).transpose()?;
    base.cloud_init.network_config = args.network_config.as_deref().map(read_document).transpose()?;

    let (iface_name, iface) = interface(&args.netdev)?;
    let v4 = sequence("--ip", args.netdev.ipv4.as_deref(), count)?;
    let v6 = sequence("--ip6", args.netdev.ipv6.as_deref(), count)?;
    if iface.mac.is_some() && count > 1 {
        bail!("--mac names one interface of one node; give it per node (`ferry node set NAME --mac ...`)");
    }
    let mut per_target = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = base.clone();
        if let Some(name) = &iface_name {
            let mut iface = iface.clone();
            iface.ipv4 = v4.as_ref().and_then(|v| match v[i] {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            });
            iface.ipv6 = v6.as_ref().and_then(|v| match v[i] {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            });
            s.interfaces.insert(name.clone(), iface);
        }
        s.validate(layer)?;
        per_target.push(s);
    }
    Ok(Resolved { profiles, per_target })
}

fn split_kv(flag: &str, s: &str) -> anyhow::Result<(String, String)> {
    if let Some(key) = s.strip_prefix('~') {
        return Ok((format!("~{key}"), String::new()));
    }
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("{flag} takes KEY=VALUE (or ~KEY to remove an inherited key), got {s:?}"),
    }
}

fn read_document(path: &std::path::Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > ferry_core::model::MAX_DOCUMENT_BYTES as u64 {
        bail!("{} is larger than {} bytes", path.display(), ferry_core::model::MAX_DOCUMENT_BYTES);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {} as UTF-8 text", path.display()))
}

fn sequence(flag: &str, start: Option<&str>, count: usize) -> anyhow::Result<Option<Vec<IpAddr>>> {
    let Some(start) = start else { return Ok(None) };
    let ip: IpAddr = start.parse().with_context(|| format!("{flag} {start:?} is not an IP address"))?;
    match (flag, ip) {
        ("--ip", IpAddr::V6(_)) => bail!("--ip takes an IPv4 address; use --ip6 for {start}"),
        ("--ip6", IpAddr::V4(_)) => bail!("--ip6 takes an IPv6 address; use --ip for {start}"),
        _ => Ok(Some(ip_sequence(ip, count)?)),
    }
}

/// The interface the netdev flags describe, if any flag was given.
fn interface(a: &NetdevArgs) -> anyhow::Result<(Option<String>, Interface)> {
    let iface = Interface {
        mac: a.mac.as_deref().map(MacAddr::parse).transpose()?,
        ipv4: None,
        netmask: a
            .netmask
            .as_deref()
            .map(|m| m.parse().with_context(|| format!("--netmask {m:?} is not like 255.255.255.0")))
            .transpose()?,
        gateway: a
            .gateway
            .as_deref()
            .map(|g| g.parse().with_context(|| format!("--gateway {g:?} is not an IP address")))
            .transpose()?,
        ipv6: None,
        ipv6_prefix: a.ipv6_prefix,
        vlan: a.vlan,
        mtu: a.mtu,
        primary: a.primary.then_some(true),
    };
    let any = iface != Interface::default() || a.ipv4.is_some() || a.ipv6.is_some();
    match (&a.netdev, any) {
        (Some(n), _) => Ok((Some(n.clone()), iface)),
        (None, true) => Ok((Some("eth0".into()), iface)),
        (None, false) => Ok((None, iface)),
    }
}

/// The asset tag from a file or standard input (trailing newline removed).
pub fn asset_tag(args: &NodeOnlyArgs) -> anyhow::Result<Option<Secret>> {
    let raw = if let Some(path) = &args.asset_tag_file {
        std::fs::read_to_string(path).with_context(|| format!("cannot read asset tag file {}", path.display()))?
    } else if args.asset_tag_stdin {
        let mut s = String::new();
        std::io::stdin().take(4096).read_to_string(&mut s).context("cannot read the asset tag from standard input")?;
        s
    } else {
        return Ok(None);
    };
    let tag = Secret::new(raw.trim_end_matches(['\n', '\r']).to_owned());
    check_asset_tag(tag.expose())?;
    if let Some(why) = ferry_core::identity::asset_tag_weakness(tag.expose()) {
        eprintln!(
            "warning: this asset tag is short or easy to guess ({why}); whoever can try guesses at enrollment \
             (or reads the tag off the node) can prove it. Prefer a random tag of 16 or more characters \
             (e.g. `openssl rand -hex 16`, set as the node's chassis asset tag), or add the tpm factor"
        );
    }
    Ok(Some(tag))
}

/// Registers or clears one node's TPM (`node set --tpm-ek / --tpm-ek-cert / --tpm-clear`).
pub async fn set_tpm(
    client: &crate::client::AdminClient,
    node: &ferry_core::NodeName,
    tpm: &TpmArgs,
) -> anyhow::Result<()> {
    use base64::Engine;
    let request = if let Some(file) = &tpm.tpm_ek {
        let pem =
            std::fs::read_to_string(file).with_context(|| format!("cannot read {} as PEM text", file.display()))?;
        TpmRegister { ek_pem: Some(pem), ek_certificate: None }
    } else if let Some(file) = &tpm.tpm_ek_cert {
        let der = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        TpmRegister { ek_pem: None, ek_certificate: Some(base64::engine::general_purpose::STANDARD.encode(der)) }
    } else {
        client.clear_tpm(node).await?;
        outln!("cleared the TPM of node {node}")?;
        return Ok(());
    };
    client.register_tpm(node, &request).await?;
    let tpms = client.list_tpms(&TpmQuery { node: Some(node.to_string()) }).await?;
    match tpms.first() {
        Some(t) => outln!("registered TPM {} for node {node}", t.fingerprint)?,
        None => outln!("registered the TPM of node {node}")?,
    }
    Ok(())
}

/// `ferry secret set | list | rm`.
pub async fn secret(client: &crate::client::AdminClient, cmd: crate::args::SecretCommand) -> anyhow::Result<()> {
    use crate::args::{SecretCommand, SecretScopeArgs};
    use base64::Engine;
    use ferry_api::admin::{SecretScopeQuery, SecretSet};
    let scope = |s: &SecretScopeArgs| -> anyhow::Result<(Option<ferry_core::NodeName>, Option<ProfileName>)> {
        Ok((
            s.node.as_deref().map(ferry_core::NodeName::parse).transpose()?,
            s.profile.as_deref().map(ProfileName::parse).transpose()?,
        ))
    };
    match cmd {
        SecretCommand::Set { name, from_file, value_stdin: _, scope: s } => {
            ferry_core::model::check_secret_name(&name)?;
            let max = ferry_core::model::MAX_SECRET_BYTES;
            let mut value = zeroize::Zeroizing::new(Vec::new());
            match &from_file {
                Some(f) => {
                    let file = std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
                    file.take(max as u64 + 1)
                        .read_to_end(&mut value)
                        .with_context(|| format!("cannot read {}", f.display()))?
                }
                None => std::io::stdin()
                    .take(max as u64 + 1)
                    .read_to_end(&mut value)
                    .context("cannot read standard input")?,
            };
            if value.len() > max {
                bail!("the secret is larger than {max} bytes");
            }
            let (node, profile) = scope(&s)?;
            let body = SecretSet {
                value: Secret::new(base64::engine::general_purpose::STANDARD.encode(value.as_slice())),
                node,
                profile,
            };
            client.set_secret(&name, &body).await?;
            outln!("set secret {name} ({} bytes)", value.len())?;
        }
        SecretCommand::List { json } => outln!("{}", crate::listing::listing(&client.list_secrets().await?, json))?,
        SecretCommand::Rm { name, scope: s } => {
            ferry_core::model::check_secret_name(&name)?;
            let (node, profile) = scope(&s)?;
            let scope = SecretScopeQuery { node: node.map(String::from), profile: profile.map(String::from) };
            client.delete_secret(&name, &scope).await?;
            outln!("removed secret {name}")?;
        }
    }
    Ok(())
}

/// `ferry token create | list | revoke`.
pub async fn token(client: &crate::client::AdminClient, cmd: crate::args::TokenCommand) -> anyhow::Result<()> {
    use crate::args::TokenCommand;
    use ferry_api::admin::TokenCreate;
    match cmd {
        TokenCommand::Create { name, role, expires } => {
            let expires_in_secs = expires
                .as_deref()
                .map(|e| humantime::parse_duration(e).with_context(|| format!("--expires {e:?}: e.g. 30d, 12h")))
                .transpose()?
                .map(|d| d.as_secs());
            let made =
                client.create_token(&TokenCreate { name: name.clone(), role: role.clone(), expires_in_secs }).await?;
            eprintln!("token {name} ({role}); shown once, keep it in a 0600 file:");
            outln!("{}", made.token.expose())?;
        }
        TokenCommand::List { json } => outln!("{}", crate::listing::listing(&client.list_tokens().await?, json))?,
        TokenCommand::Revoke { name } => {
            client.revoke_token(&name).await?;
            outln!("revoked token {name}")?;
        }
    }
    Ok(())
}
