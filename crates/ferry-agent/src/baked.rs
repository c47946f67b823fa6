//! Server pins baked into the node's initramfs (`ferry image initramfs --pin-server-key
//! KEY --pin-server-url URL --pin-tls-cert sha256:HEX`): the file [`BAKED_PINS_PATH`]
//! holds `ferry.server=`, `ferry.pubkey=` and `ferry.tls=` in kernel command line
//! syntax, and each one it sets wins over the kernel command line.
//!
//! Why: the command line comes from the boot channel — an iPXE script fetched over
//! plain HTTP — so anyone on the path of the provisioning network can rewrite it and
//! point the node at an impostor server with the impostor's own key. A pin in the
//! initramfs the administrator built is as trustworthy as the way that initramfs
//! reaches the node (see docs/threat-model.md, finding 14). Flags still override both:
//! they are given by root on the node.

use std::path::Path;

use ferry_wg::PublicKey;

use crate::cmdline::{parse, split_list, FerryParams};
use crate::config::{parse_pin, ServerUrl};
use crate::error::AgentError;

/// Where `ferry image initramfs` puts the baked pins, and where the agent reads them
/// (`--pins-file`).
pub const BAKED_PINS_PATH: &str = "/etc/ferry/pins";
/// Longest pins file read (a few servers, keys and pins take well under 1 KiB).
const MAX_PINS_FILE: usize = 64 * 1024;
/// The parameters a pins file may set: the server, its key and its certificate. Never
/// `ferry.node=` (one initramfs serves every node) or anything else.
const PINNED: [&str; 3] = ["ferry.server", "ferry.pubkey", "ferry.tls"];

/// The pins file's text for `ferry image initramfs`, each value checked as the agent
/// will check it at boot. `None` if nothing is to be baked.
pub fn render(servers: Option<&str>, keys: Option<&str>, tls: Option<&str>) -> Result<Option<String>, AgentError> {
    let mut lines = Vec::new();
    if let Some(servers) = servers {
        let list = split_list(servers);
        if list.is_empty() {
            return Err(AgentError::Config("--pin-server-url is empty: give the server URL(s)".into()));
        }
        for s in &list {
            ServerUrl::parse(s)?;
        }
        lines.push(format!("ferry.server={}", list.join(",")));
    }
    if let Some(keys) = keys {
        let list = split_list(keys);
        if list.is_empty() {
            return Err(AgentError::Config("--pin-server-key is empty: give the servers' WireGuard keys".into()));
        }
        for k in &list {
            k.parse::<PublicKey>()
                .map_err(|e| AgentError::Config(format!("invalid server key {k:?} in --pin-server-key: {e}")))?;
        }
        lines.push(format!("ferry.pubkey={}", list.join(",")));
    }
    if let Some(tls) = tls {
        let list = split_list(tls);
        if list.is_empty() {
            return Err(AgentError::Config("--pin-tls-cert is empty: give sha256:HEX".into()));
        }
        for p in &list {
            parse_pin(p)?;
        }
        lines.push(format!("ferry.tls={}", list.join(",")));
    }
    Ok((!lines.is_empty()).then(|| lines.join("\n") + "\n"))
}

/// Reads a pins file; a missing file means nothing is baked.
pub fn read(path: &Path) -> Result<FerryParams, AgentError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FerryParams::default()),
        Err(e) => return Err(AgentError::io_path("read the baked server pins", path, e)),
    };
    let bad = |why: String| {
        AgentError::Config(format!(
            "the baked server pins {} are invalid ({why}): rebuild the initramfs with `ferry image initramfs --pin-...`",
            path.display()
        ))
    };
    if bytes.len() > MAX_PINS_FILE {
        return Err(bad(format!("{} bytes", bytes.len())));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    let params = parse(&text);
    if let Some(p) = params.iter().find(|p| !PINNED.contains(&p.name.as_str())) {
        return Err(bad(format!("{:?} is not one of {}", p.name, PINNED.join(", "))));
    }
    Ok(FerryParams::from_params(&params))
}

/// The kernel command line's parameters with the baked ones put over them. A command
/// line that names other servers, keys or certificates than the baked ones is worth a
/// warning: the boot script was changed (or the initramfs is out of date).
pub fn apply(mut cmdline: FerryParams, baked: FerryParams, path: &Path) -> FerryParams {
    let warn = |what: &str| {
        tracing::warn!(
            "the kernel command line's {what} differs from the one baked into {}: using the baked one \
             (was the boot script changed on its way? else rebuild the initramfs)",
            path.display()
        )
    };
    if !baked.servers.is_empty() {
        if !cmdline.servers.is_empty() && cmdline.servers != baked.servers {
            warn("ferry.server=");
        }
        cmdline.servers = baked.servers;
    }
    if let Some(keys) = baked.pubkey {
        if cmdline.pubkey.as_ref().is_some_and(|k| split_list(k) != split_list(&keys)) {
            warn("ferry.pubkey=");
        }
        cmdline.pubkey = Some(keys);
    }
    if let Some(tls) = baked.tls {
        if cmdline.tls.as_ref().is_some_and(|t| split_list(t) != split_list(&tls)) {
            warn("ferry.tls=");
        }
        cmdline.tls = Some(tls);
    }
    cmdline
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_for_tests as args;
    use ferry_core::NodeName;

    const KEY: &str = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";

    /// Finding 14: an on-path attacker rewrites the iPXE script, so the kernel command
    /// line names its server and key. The pins baked into the initramfs win.
    #[test]
    fn baked_pins_win_over_a_rewritten_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let evil = ferry_wg::PrivateKey::from_bytes([6; 32]).public_key().to_base64();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(
            &cmdline,
            format!("quiet ferry.server=http://203.0.113.66:8470 ferry.pubkey={evil} ferry.node=n7\n"),
        )
        .expect("write");
        let pins = dir.path().join("pins");
        let files = |extra: &[&str]| {
            let mut a = vec!["--cmdline", cmdline.to_str().unwrap(), "--pins-file", pins.to_str().unwrap()];
            a.extend_from_slice(&["--asset-tag-file", "/nonexistent/tag"]);
            a.extend_from_slice(extra);
            crate::config::Config::from_args(&args(&a)).expect("valid")
        };
        // Nothing baked: the command line decides (what the attacker relies on).
        let c = files(&[]);
        assert_eq!((c.first_server().host.as_str(), c.pinned[0].to_base64()), ("203.0.113.66", evil.clone()));

        let baked =
            render(Some("http://10.0.0.1:8470,http://10.0.0.2:8470"), Some(KEY), None).expect("valid").expect("pins");
        std::fs::write(&pins, baked).expect("write");
        let c = files(&[]);
        let hosts: Vec<&str> = c.servers.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(hosts, ["10.0.0.1", "10.0.0.2"], "the baked servers");
        assert_eq!(c.pinned.iter().map(PublicKey::to_base64).collect::<Vec<_>>(), [KEY], "only the baked key");
        assert_eq!(
            c.node.as_ref().map(NodeName::as_str),
            Some("n7"),
            "the node name still comes from the command line"
        );
        // Flags (root on the node) still win over both.
        let c = files(&["--server", "http://10.9.9.9:1", "--pubkey", &evil]);
        assert_eq!((c.first_server().host.as_str(), c.pinned[0].to_base64()), ("10.9.9.9", evil));
        // A baked https server needs its certificate pin: a command line cannot drop or swap it.
        let pin = format!("sha256:{}", "ab".repeat(32));
        let baked = render(Some("https://10.0.0.1:8443"), Some(KEY), Some(&pin)).expect("valid");
        std::fs::write(&pins, baked.expect("pins")).expect("write");
        std::fs::write(&cmdline, format!("ferry.server=http://10.0.0.1:8470 ferry.tls=sha256:{}", "cd".repeat(32)))
            .expect("write");
        let c = files(&[]);
        assert!(c.first_server().https);
        assert_eq!(c.tls_pins, vec![[0xab; 32]]);
        // With everything baked, the agent needs no kernel command line at all.
        std::fs::remove_file(&cmdline).expect("rm");
        assert_eq!(files(&[]).pinned.len(), 1);
    }

    #[test]
    fn rendered_pins_read_back() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let text = render(Some("https://10.0.0.1:8443, https://10.0.0.2:8443"), Some(KEY), Some(&pin))
            .expect("valid")
            .expect("something to bake");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pins");
        std::fs::write(&path, text).expect("write");
        let baked = read(&path).expect("read");
        assert_eq!(baked.servers, ["https://10.0.0.1:8443", "https://10.0.0.2:8443"]);
        assert_eq!((baked.pubkey.as_deref(), baked.tls.as_deref()), (Some(KEY), Some(pin.as_str())));
        assert_eq!((baked.node, baked.tpm), (None, None));
        assert_eq!(render(None, None, None).expect("nothing"), None);
        assert_eq!(read(&dir.path().join("none")).expect("no file: nothing baked"), FerryParams::default());
    }

    #[test]
    fn bad_pins_are_refused_when_building_and_when_reading() {
        for (servers, keys, tls) in [
            (Some("ftp://x"), None, None),
            (Some(" , "), None, None),
            (None, Some("not-a-key"), None),
            (None, Some(""), None),
            (None, None, Some("sha256:abcd")),
        ] {
            assert_eq!(render(servers, keys, tls).expect_err("invalid").exit_code(), 2, "{servers:?} {keys:?} {tls:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pins");
        for text in ["ferry.node=n1\n", "ferry.pubkey=K quiet\n", "init=/bin/sh"] {
            std::fs::write(&path, text).expect("write");
            let e = read(&path).expect_err("only pins");
            assert!(e.to_string().contains("ferry image initramfs"), "{e}");
        }
    }
}
