//! `ferry man --dir DIR`: ferry(1), one page per subcommand, ferry.toml(5), rendered by
//! the real man(1) without a warning.

mod common;

use common::FERRY;
use std::process::Command;

/// Every visible subcommand's page name: `ferry-node-add.1` for `ferry node add`.
fn expected_pages(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, String)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("{prefix}-{}", sub.get_name());
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        out.push((format!("{name}.1"), about));
        expected_pages(sub, &name, out);
    }
}

fn man(page: &std::path::Path) -> (String, String) {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("LANG", "C.UTF-8")
        .env("MANWIDTH", "100")
        .output()
        .unwrap_or_else(|e| panic!("cannot run man ({e}): apt-get install -y man-db"));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn man_pages_cover_every_subcommand_and_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FERRY).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut cmd = ferry_cli::args::command();
    cmd.build();
    let mut pages = vec![("ferry.1".to_string(), "Secure bootstrap".to_string())];
    expected_pages(&cmd, "ferry", &mut pages);
    assert!(pages.len() > 40, "{pages:?}");
    assert!(pages.iter().any(|(p, _)| p == "ferry-import-warewulf.1"));
    for (page, about) in &pages {
        let path = dir.path().join(page);
        assert!(path.exists(), "{page} was not written");
        let (text, warnings) = man(&path);
        assert!(warnings.trim().is_empty(), "{page}: {warnings}");
        let first_words: String = about.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&first_words), "{page} lacks {first_words:?}: {text}");
    }
    assert!(!dir.path().join("ferry-man.1").exists(), "the hidden man command has no page");

    let (config, warnings) = man(&dir.path().join("ferry.toml.5"));
    assert!(warnings.trim().is_empty(), "ferry.toml(5): {warnings}");
    let flat = config.split_whitespace().collect::<Vec<_>>().join(" ");
    for key in ["data_dir = \"/var/lib/ferry\"", "admin_users = []", "[wireguard]", "handshake_deadline_secs = 30"] {
        assert!(flat.contains(key), "ferry.toml(5) lacks {key:?}: {config}");
    }
}
