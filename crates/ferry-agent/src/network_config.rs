//! cloud-init mode: the node's `network-config` as cloud-init system configuration.
//!
//! cloud-init 22.4 fetches only meta-data, user-data and vendor-data from an `s=` seed
//! URL, so a profile's network-config would be silently ignored in cloud-init mode. Its
//! local stage (before the network is up) takes the network from, in order: the kernel
//! command line, the initramfs, the system configuration (`network:` in
//! /etc/cloud/cloud.cfg.d), the datasource. The agent fetches network-config through
//! the tunnel and writes it as a `network:` drop-in there (0600, atomically), before it
//! prints the `ds=` line; a node with no network-config gets no drop-in (a stale one is
//! removed). network-config is no secret; user-data, which is, never goes to disk.

use std::path::Path;

use crate::error::AgentError;
use crate::seed::write_private_file;

/// The drop-in's default path: sorted last, so its `network:` is the one cloud-init
/// merges first.
pub const DEFAULT_DROP_IN: &str = "/etc/cloud/cloud.cfg.d/99_ferry_network.cfg";

/// The drop-in for `network_config` (a YAML mapping, with or without a top-level
/// `network:` key): the document itself, indented under `network:`, so cloud-init's YAML
/// parser reads every value as it would read the NoCloud file (no re-serialisation that
/// could turn `dhcp4: no` or a MAC address into something else).
pub fn drop_in(network_config: &[u8]) -> Result<String, AgentError> {
    let invalid = |why: String| {
        AgentError::Fetch(format!(
            "the node's network-config is not usable: {why}; fix the --network-config template of \
             the node's profile (or of the node)"
        ))
    };
    let text = std::str::from_utf8(network_config).map_err(|_| invalid("it is not UTF-8".into()))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| invalid(format!("it is not YAML ({e})")))?;
    match docs.as_slice() {
        [yaml_rust2::Yaml::Hash(_)] => {}
        [] => return Err(invalid("it is empty".into())),
        [_] => return Err(invalid("it is not a YAML mapping (version: 1|2, ...)".into())),
        _ => return Err(invalid("it holds several YAML documents".into())),
    }
    let mut out = String::from(
        "# Written by `ferry agent --mode cloud-init` at every boot: this node's network-config\n\
         # from ferry (cloud-init 22.4 does not fetch network-config from an s= seed URL).\n\
         network:\n",
    );
    for line in body_lines(text) {
        if !line.trim().is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

/// The document's lines without YAML directives and the document start and end
/// markers, which cannot stand indented.
fn body_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim_end() == "---" || l.starts_with("--- "));
    if let Some(i) = start.filter(|&i| lines[..i].iter().all(|l| is_preamble(l))) {
        match lines[i].strip_prefix("--- ") {
            Some(rest) => lines[i] = rest,
            None => {
                lines.remove(i);
            }
        }
        lines.retain(|l| !l.starts_with('%'));
    }
    while lines.last().is_some_and(|l| l.trim().is_empty() || l.trim_end() == "...") {
        lines.pop();
    }
    lines
}

fn is_preamble(line: &str) -> bool {
    let l = line.trim();
    l.is_empty() || l.starts_with('#') || l.starts_with('%')
}

/// Writes the drop-in for `network_config` at `path`, or removes it when the node has
/// none. A missing directory means no cloud-init here: nothing is written.
pub fn install(path: &Path, network_config: Option<&[u8]>) -> Result<(), AgentError> {
    let Some(body) = network_config else {
        return match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "no network-config for this node: removed the old drop-in");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::io_path("remove", path, e)),
        };
    };
    let text = drop_in(body)?;
    if !path.parent().is_some_and(Path::is_dir) {
        tracing::warn!(
            path = %path.display(),
            "the node has a network-config but this system has no cloud-init configuration directory \
             there: not written (pass --network-config-file)"
        );
        return Ok(());
    }
    write_private_file(path, text.as_bytes())?;
    tracing::info!(path = %path.display(), "network-config written for cloud-init's local stage");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const V2: &str = "version: 2\nethernets:\n  eth0:\n    match: {macaddress: \"52:54:00:00:01:01\"}\n    dhcp4: no\n";

    #[test]
    fn the_document_is_indented_under_network_as_written() {
        let out = drop_in(V2.as_bytes()).expect("valid");
        assert!(out.starts_with("# Written by `ferry agent"), "{out}");
        let body: String = out.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            body,
            "network:\n  version: 2\n  ethernets:\n    eth0:\n      match: {macaddress: \"52:54:00:00:01:01\"}\n      dhcp4: no\n"
        );
        // The result is one YAML mapping whose network: is the document.
        let parsed = yaml_rust2::YamlLoader::load_from_str(&out).expect("yaml");
        assert_eq!(parsed[0]["network"], yaml_rust2::YamlLoader::load_from_str(V2).expect("yaml")[0]);
    }

    #[test]
    fn markers_directives_and_block_scalars() {
        let doc = "%YAML 1.1\n# comment\n--- \nversion: 1\nconfig:\n  - type: physical\n    name: eth0\n    note: |\n      two\n\n      lines\n...\n\n";
        let out = drop_in(doc.as_bytes()).expect("valid");
        let parsed = yaml_rust2::YamlLoader::load_from_str(&out).expect("yaml");
        assert_eq!(parsed.len(), 1, "{out}");
        assert_eq!(parsed[0]["network"]["version"].as_i64(), Some(1), "{out}");
        assert_eq!(parsed[0]["network"]["config"][0]["note"].as_str(), Some("two\n\nlines\n"), "{out}");
        let inline = drop_in(b"--- {version: 2, ethernets: {}}\n").expect("valid");
        let parsed = yaml_rust2::YamlLoader::load_from_str(&inline).expect("yaml");
        assert_eq!(parsed[0]["network"]["version"].as_i64(), Some(2), "{inline}");
    }

    #[test]
    fn unusable_documents_are_refused_with_what_to_fix() {
        for bad in [&b""[..], b"just a string\n", b"a: [\n", b"a: 1\n---\nb: 2\n", b"\xff\xfe"] {
            let e = drop_in(bad).expect_err("refused").to_string();
            assert!(e.contains("network-config is not usable") && e.contains("--network-config"), "{e}");
        }
    }

    #[test]
    fn install_writes_0600_replaces_and_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("99_ferry_network.cfg");
        install(&path, Some(V2.as_bytes())).expect("write");
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        install(&path, Some(b"version: 1\nconfig: []\n")).expect("replace");
        assert!(std::fs::read_to_string(&path).expect("read").contains("  version: 1\n"));
        install(&path, None).expect("remove");
        assert!(!path.exists(), "a node without network-config keeps no stale drop-in");
        install(&path, None).expect("nothing to remove");
        let nowhere = dir.path().join("no-cloud-init/99_ferry_network.cfg");
        install(&nowhere, Some(V2.as_bytes())).expect("no cloud-init here: skipped");
        assert!(!nowhere.parent().expect("parent").exists(), "the agent creates no cloud-init directory");
        assert!(install(&path, Some(b"nope")).is_err(), "a broken document is refused");
        assert!(!path.exists(), "and nothing is written");
    }
}
