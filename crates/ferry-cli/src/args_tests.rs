//! The command line's own rules: help on every argument, the admin socket flag, flag precedence.

use super::*;
use clap::Parser;

/// Every argument, flag or positional, of every subcommand says what it is.
#[test]
fn every_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    let mut cmd = command();
    cmd.build();
    walk(&cmd, "ferry", &mut missing);
    assert!(missing.is_empty(), "arguments without help text: {missing:#?}");
}

fn help(path: &[&str]) -> String {
    let mut cmd = command();
    cmd.build();
    let mut sub = &mut cmd;
    for name in path {
        sub = sub.find_subcommand_mut(name).unwrap_or_else(|| panic!("no subcommand {name}"));
    }
    sub.render_long_help().to_string()
}

/// The admin socket is called what the config calls it, is described the same way
/// everywhere, and is not offered where no admin API is used.
#[test]
fn the_admin_socket_flag_is_named_and_offered_consistently() {
    for path in [&["node", "list"][..], &["serve"], &["audit"]] {
        let text = help(path);
        assert!(text.contains("--admin-socket <PATH>"), "{path:?}: {text}");
        assert!(text.contains("admin_socket") && !text.contains("where to listen"), "{path:?}: {text}");
    }
    for path in [&["agent"][..], &["agent", "teardown"], &["completions"], &["bench", "storm"]] {
        let text = help(path);
        assert!(!text.contains("socket <PATH>"), "{path:?} offers the admin socket: {text}");
    }
    // The old spelling still parses (scripts), and the agent refuses it (run()).
    let cli = Cli::try_parse_from(["ferry", "--socket", "/x.sock", "node", "list"]).unwrap();
    assert_eq!(cli.socket, Some(PathBuf::from("/x.sock")));
}

#[test]
fn help_says_what_newcomers_asked() {
    let set = help(&["node", "set"]);
    assert!(set.contains("5s to 24h"), "the tunnel TTL bounds: {set}");
    assert!(set.contains("network-config template"), "{set}");
    let secret = help(&["secret", "set"]);
    assert!(secret.contains("over its profiles'") && secret.contains("over the global one"), "{secret}");
}

/// `ferry serve`: the defaults, then the file, then `FERRY_*` variables, then flags.
/// (The only test of this binary that sets these variables; no other reads them.)
#[test]
fn serve_flags_win_over_ferry_variables_which_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, "data_dir = \"/file/data\"\nstore = \"/file/ferry.db\"\nlog_format = \"json\"\n").unwrap();
    let vars = [("FERRY_CONFIG", file.to_str().unwrap()), ("FERRY_DATA_DIR", "/env/data"), ("FERRY_STORE", "/env/db")];
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let load = |argv: &[&str]| {
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve") };
        ferry_server::Config::load(args.overrides(cli.socket)).unwrap()
    };
    let env_only = load(&["ferry", "serve"]);
    let flags = load(&["ferry", "--socket", "/flag/admin.sock", "serve", "--data-dir", "/flag/data"]);
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    assert_eq!(env_only.data_dir, PathBuf::from("/env/data"), "the variable over the file");
    assert_eq!(env_only.store.as_deref(), Some("/env/db"));
    assert_eq!(env_only.log_format, ferry_server::LogFormat::Json, "the file over the defaults");
    assert_eq!(flags.data_dir, PathBuf::from("/flag/data"), "the flag over the variable");
    assert_eq!(flags.store.as_deref(), Some("/env/db"));
    assert_eq!(flags.admin_socket, PathBuf::from("/flag/admin.sock"));
}

/// `--tpm-pcr 7` (no value) and `--tpm-pcrs 4,8` select PCRs to learn; `INDEX=HEX` pins;
/// `ferry node tpm learn NODE` is the subcommand, `ferry node tpm NODES` still the listing.
#[test]
fn pcrs_to_learn_and_the_learn_subcommand() {
    let hex = "ab".repeat(32);
    let pin = format!("9={hex}");
    let cli =
        Cli::try_parse_from(["ferry", "node", "set", "n1", "--tpm-pcr", "7", "--tpm-pcrs", "4,8", "--tpm-pcr", &pin])
            .unwrap();
    let Command::Node(NodeCommand::Set { settings, .. }) = cli.command else { panic!("node set") };
    let resolved = crate::settings::resolve(&settings, 1, ferry_core::model::LayerKind::Node).unwrap();
    let s = &resolved.per_target[0];
    assert_eq!(s.unlearned_pcrs(), vec![4, 7, 8]);
    assert_eq!(s.pcr_policy().keys().copied().collect::<Vec<_>>(), vec![9]);
    let learn = Cli::try_parse_from(["ferry", "node", "tpm", "learn", "n1"]).unwrap();
    assert!(matches!(
        learn.command,
        Command::Node(NodeCommand::Tpm {
            action: Some(crate::tpm_learn::NodeTpmCommand::Learn { yes: false, .. }),
            ..
        })
    ));
    let list = Cli::try_parse_from(["ferry", "node", "tpm", "n[1-4]"]).unwrap();
    assert!(matches!(list.command, Command::Node(NodeCommand::Tpm { action: None, hostlist: Some(_), .. })));
    let profile =
        Cli::try_parse_from(["ferry", "profile", "tpm", "learn", "compute", "--from", "n1", "--yes"]).unwrap();
    assert!(matches!(profile.command, Command::Profile(ProfileCommand::Tpm { .. })));
    assert!(Cli::try_parse_from(["ferry", "profile", "tpm", "learn", "compute"]).is_err(), "--from is required");
}
