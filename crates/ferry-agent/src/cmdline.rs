//! Kernel command line parsing (`/proc/cmdline`).
//!
//! Follows the kernel's own rules (`next_arg` in `lib/cmdline.c`) closely enough for our
//! parameters: words are separated by whitespace, double quotes group words (`a="b c"` or
//! `"a=b c"`) and are removed, the name ends at the first `=`. A bare `--` is skipped.
//! Later occurrences of a parameter win. Any input — unbalanced quotes, missing `=`,
//! invalid UTF-8, very long lines — parses without panicking.

use std::io::Read;
use std::path::Path;

use crate::error::AgentError;

/// Longest command line read; the kernel's own limit is a few KiB on every architecture.
pub const MAX_CMDLINE: u64 = 256 * 1024;

/// One `name[=value]` word of the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    /// `None` for a bare flag (`quiet`), `Some("")` for `name=`.
    pub value: Option<String>,
}

/// Splits a command line into parameters.
pub fn parse(line: &str) -> Vec<Param> {
    let mut params = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    push_word(&mut params, std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        push_word(&mut params, word);
    }
    params
}

fn push_word(params: &mut Vec<Param>, word: String) {
    if word == "--" || word.is_empty() {
        return;
    }
    let param = match word.split_once('=') {
        Some((name, value)) => Param { name: name.to_string(), value: Some(value.to_string()) },
        None => Param { name: word, value: None },
    };
    params.push(param);
}

/// The ferry parameters found on a kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FerryParams {
    /// `ferry.server=URL[,URL...]`, split on commas, empty entries dropped.
    pub servers: Vec<String>,
    /// `ferry.server_order=hashed|listed`, as written (checked by the configuration).
    pub server_order: Option<String>,
    /// `ferry.pubkey=KEY`: the server's WireGuard public key.
    pub pubkey: Option<String>,
    /// `ferry.node=NAME`.
    pub node: Option<String>,
    /// `ferry.tpm[=TCTI]`: the TCTI as written; a bare `ferry.tpm` (or `ferry.tpm=`)
    /// is `"device"`, the kernel's resource manager.
    pub tpm: Option<String>,
    /// `ferry.tls=sha256:HEX`: the SHA-256 of the provisioning listener's TLS
    /// certificate, for an `https://` ferry.server.
    pub tls: Option<String>,
}

impl FerryParams {
    /// Extracts the ferry parameters; the last occurrence of each wins, and a parameter
    /// given without a value (`ferry.node` or `ferry.node=`) unsets it — except
    /// `ferry.tpm`, a flag whose value is optional.
    pub fn from_params(params: &[Param]) -> Self {
        let mut out = FerryParams::default();
        for p in params {
            let value = p.value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
            match p.name.as_str() {
                "ferry.server" => out.servers = split_list(value.as_deref().unwrap_or("")),
                "ferry.server_order" => out.server_order = value,
                "ferry.pubkey" => out.pubkey = value,
                "ferry.node" => out.node = value,
                "ferry.tpm" => out.tpm = Some(value.unwrap_or_else(|| "device".into())),
                "ferry.tls" => out.tls = value,
                _ => {}
            }
        }
        out
    }

    /// Reads and parses a command line file (normally `/proc/cmdline`).
    pub fn read(path: &Path) -> Result<Self, AgentError> {
        let file =
            std::fs::File::open(path).map_err(|e| AgentError::io_path("read the kernel command line", path, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_CMDLINE)
            .read_to_end(&mut bytes)
            .map_err(|e| AgentError::io_path("read the kernel command line", path, e))?;
        Ok(Self::from_params(&parse(&String::from_utf8_lossy(&bytes))))
    }
}

/// Splits a comma list, trimming entries and dropping empty ones.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, value: Option<&str>) -> Param {
        Param { name: name.into(), value: value.map(Into::into) }
    }

    #[test]
    fn plain_words_and_flags() {
        let got = parse("BOOT_IMAGE=/vmlinuz root=tmpfs  quiet\tro\n");
        assert_eq!(
            got,
            vec![p("BOOT_IMAGE", Some("/vmlinuz")), p("root", Some("tmpfs")), p("quiet", None), p("ro", None)]
        );
    }

    #[test]
    fn quotes_group_words_and_are_removed() {
        assert_eq!(parse(r#"a="b c" "d=e f" g"#), vec![p("a", Some("b c")), p("d", Some("e f")), p("g", None)]);
        // An unbalanced quote runs to the end of the line, as in the kernel.
        assert_eq!(parse(r#"x="y z"#), vec![p("x", Some("y z"))]);
        assert_eq!(parse(r#""""#), vec![]);
        assert_eq!(parse(r#"a="" b"#), vec![p("a", Some("")), p("b", None)]);
    }

    #[test]
    fn odd_input_never_panics() {
        for line in ["", " ", "=", "==", "=x", "\"", "a=b=c", "--", "é=ü ß", "\u{0}=\u{0}", "\"\"\"\"\""] {
            let _ = FerryParams::from_params(&parse(line));
        }
        assert_eq!(parse("a=b=c"), vec![p("a", Some("b=c"))]);
        assert_eq!(parse("=x"), vec![p("", Some("x"))]);
        let huge = "ferry.node=n1 ".repeat(100_000) + &"x".repeat(1_000_000);
        let params = parse(&huge);
        assert_eq!(params.len(), 100_001);
        assert_eq!(FerryParams::from_params(&params).node.as_deref(), Some("n1"));
    }

    #[test]
    fn ferry_parameters() {
        let line = "quiet ferry.server=http://10.0.0.1:8080,,http://10.0.0.2:8080 \
                    ferry.pubkey=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE= ferry.node=n001 -- init=/bin/sh";
        let f = FerryParams::from_params(&parse(line));
        assert_eq!(f.servers, vec!["http://10.0.0.1:8080", "http://10.0.0.2:8080"]);
        assert_eq!(f.pubkey.as_deref(), Some("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="));
        assert_eq!(f.node.as_deref(), Some("n001"));
    }

    #[test]
    fn later_wins_and_empty_unsets() {
        let f = FerryParams::from_params(&parse("ferry.node=a ferry.node=b ferry.server=x ferry.server="));
        assert_eq!(f.node.as_deref(), Some("b"));
        assert!(f.servers.is_empty());
        let f = FerryParams::from_params(&parse("ferry.node=a ferry.node ferry.pubkey"));
        assert_eq!(f, FerryParams::default());
    }

    #[test]
    fn tpm_flag_with_optional_tcti() {
        assert_eq!(FerryParams::from_params(&parse("quiet")).tpm, None);
        for (line, want) in [
            ("ferry.tpm", "device"),
            ("ferry.tpm=", "device"),
            ("ferry.tpm=device", "device"),
            ("ferry.tpm=swtpm:host=127.0.0.1,port=2321", "swtpm:host=127.0.0.1,port=2321"),
            ("ferry.tpm=device:/dev/tpm0 ferry.tpm", "device"),
        ] {
            assert_eq!(FerryParams::from_params(&parse(line)).tpm.as_deref(), Some(want), "{line}");
        }
    }

    #[test]
    fn read_from_file_with_invalid_utf8() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cmdline");
        std::fs::write(&path, b"\xff\xfe ferry.node=n7 \xc3\n").expect("write");
        assert_eq!(FerryParams::read(&path).expect("read").node.as_deref(), Some("n7"));
        let err = FerryParams::read(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("kernel command line"), "{err}");
    }
}
