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

    const KEY: &str = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";

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
