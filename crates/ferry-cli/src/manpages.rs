//! Man pages (`ferry man --dir DIR`, hidden; the packages run it): `ferry(1)` and one
//! page per subcommand from the same clap definitions as `--help`, and `ferry.toml(5)`
//! from the documented example configuration, so neither can drift from what it
//! describes.

use anyhow::Context;
use roff::{bold, italic, roman, Roff};
use std::path::{Path, PathBuf};

/// The documented example: every key, its default and what it does.
const EXAMPLE: &str = include_str!("../../../docs/ferry.example.toml");

/// Writes every page into `dir` (created if missing); returns the pages now in it.
pub fn write_all(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(crate::args::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let config = dir.join("ferry.toml.5");
    std::fs::write(&config, config_page(EXAMPLE)).with_context(|| format!("cannot write {}", config.display()))?;
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1" || e == "5") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// One key of the example: its name, the value shown, and what the comments say.
#[derive(Debug, PartialEq)]
struct Key {
    name: String,
    value: String,
    /// Set in the example (a default), or shown commented out (an optional key).
    default: bool,
    text: Vec<String>,
}

/// A `[table]` of the example (the top level is the empty name) and its keys, with the
/// paragraphs that stand alone.
#[derive(Debug, Default)]
struct Table {
    name: String,
    intro: Vec<String>,
    keys: Vec<Key>,
}

/// `key = value  # comment` (also after `# `): the key, the value, the comment.
fn key_line(line: &str) -> Option<(String, String, Option<String>)> {
    let (name, rest) = line.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return None;
    }
    let rest = rest.trim();
    let end = match rest.chars().next()? {
        '"' => rest[1..].find('"').map(|i| i + 2)?,
        '[' => rest.find(']').map(|i| i + 1)?,
        _ => rest.find(char::is_whitespace).unwrap_or(rest.len()),
    };
    let (value, tail) = rest.split_at(end);
    let comment = tail.trim().strip_prefix('#').map(|c| c.trim().to_owned());
    Some((name.to_owned(), value.to_owned(), comment))
}

/// The example, read as the page needs it: the header, then tables of keys.
fn parse(example: &str) -> (Vec<String>, Vec<Table>) {
    let mut header = Vec::new();
    let mut tables = vec![Table::default()];
    let mut pending: Vec<String> = Vec::new();
    let mut in_header = true;
    for line in example.lines().map(str::trim) {
        let table = tables.last_mut().expect("one table at least");
        if line.is_empty() {
            if in_header {
                in_header = false;
                header.append(&mut pending);
            } else if !pending.is_empty() {
                table.intro.append(&mut pending);
            }
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table.intro.append(&mut pending);
            tables.push(Table { name: name.to_owned(), ..Table::default() });
        } else if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            match key_line(comment) {
                Some((name, value, tail)) if !in_header => {
                    let mut text = std::mem::take(&mut pending);
                    text.extend(tail);
                    table.keys.push(Key { name, value, default: false, text });
                }
                _ => pending.push(comment.to_owned()),
            }
        } else if let Some((name, value, tail)) = key_line(line) {
            in_header = false;
            let mut text = std::mem::take(&mut pending);
            text.extend(tail);
            table.keys.push(Key { name, value, default: true, text });
        }
    }
    tables.last_mut().expect("one table at least").intro.append(&mut pending);
    (header, tables)
}

/// `ferry.toml(5)`.
pub fn config_page(example: &str) -> String {
    let (header, tables) = parse(example);
    let mut page = Roff::new();
    let version = format!("ferry {}", env!("CARGO_PKG_VERSION"));
    page.control("TH", ["FERRY.TOML", "5", "", version.as_str(), "File Formats"]);
    page.control("SH", ["NAME"]).text([roman("ferry.toml - configuration of the ferry server")]);
    page.control("SH", ["SYNOPSIS"]).text([
        bold("/etc/ferry/ferry.toml"),
        roman(" (read by "),
        bold("ferry serve --config"),
        roman(" FILE or "),
        italic("FERRY_CONFIG"),
        roman(")"),
    ]);
    page.control("SH", ["DESCRIPTION"]).text([roman(header.join(" "))]);
    page.text([roman(
        "Below, each key with the value the server uses when the key is absent (its default), or, marked \
         optional, an example of a key that has no default.",
    )]);
    for table in tables {
        let title = if table.name.is_empty() { "TOP-LEVEL KEYS".to_owned() } else { format!("[{}]", table.name) };
        page.control("SH", [title.as_str()]);
        if !table.intro.is_empty() {
            page.text([roman(table.intro.join(" "))]);
        }
        for key in table.keys {
            let shown = if key.default { format!(" = {}", key.value) } else { format!(" = {} (optional)", key.value) };
            page.control("TP", []).text([bold(key.name.as_str()), roman(shown)]);
            page.text([roman(key.text.join(" "))]);
        }
    }
    page.control("SH", ["SEE ALSO"]).text([
        bold("ferry"),
        roman("(1), "),
        bold("ferry-serve"),
        roman("(1), /usr/share/doc/ferry/operations.md"),
    ]);
    page.to_roff()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_and_their_comments() {
        assert_eq!(
            key_line("data_dir = \"/var/lib/ferry\""),
            Some(("data_dir".into(), "\"/var/lib/ferry\"".into(), None))
        );
        assert_eq!(
            key_line("endpoint = \"10.0.0.1:51820\"   # default: the address"),
            Some(("endpoint".into(), "\"10.0.0.1:51820\"".into(), Some("default: the address".into())))
        );
        assert_eq!(key_line("trusted_proxies = []"), Some(("trusted_proxies".into(), "[]".into(), None)));
        assert_eq!(key_line("Every key is optional; shown are the defaults."), None);
        assert_eq!(key_line("rate in requests per second (0 = no limit) and"), None);
    }

    /// Every key of the example is on the page, under its table, with its default or
    /// marked optional.
    #[test]
    fn the_config_page_has_every_key_of_the_example() {
        let (_, tables) = parse(EXAMPLE);
        let keys: Vec<(&str, &str, bool)> = tables
            .iter()
            .flat_map(|t| t.keys.iter().map(move |k| (t.name.as_str(), k.name.as_str(), k.default)))
            .collect();
        for expected in [
            ("", "data_dir", true),
            ("", "admin_users", true),
            ("", "store", false),
            ("cluster", "lost_after_secs", true),
            ("provisioning", "tls_listen", false),
            ("wireguard", "handshake_deadline_secs", true),
            ("remote_admin", "tls_names", false),
        ] {
            assert!(keys.contains(&expected), "{expected:?} not in {keys:?}");
        }
        // Every `key =` of the example, commented out or not, is on the page.
        let page = config_page(EXAMPLE);
        for line in EXAMPLE.lines() {
            if let Some((name, _, _)) = key_line(line.trim().trim_start_matches('#').trim()) {
                assert!(page.contains(&format!("\\fB{name}\\fR")), "{name} missing from ferry.toml(5)");
            }
        }
        assert!(page.contains(".SH [wireguard]") && page.contains(".TH FERRY.TOML 5"), "{page}");
    }
}
