//! What a newcomer tripped over, tried the way they tried it: the real binary, a real
//! server, real pipes.

mod common;

use common::{TestServer, FERRY};
use std::process::{Command, Stdio};

/// Runs `cmd` with its standard output on a pipe whose reader is already gone (what
/// `| head -1` leaves behind once head has its line): (exit code, stderr).
fn run_into_closed_pipe(cmd: &mut Command) -> (Option<i32>, String) {
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    let out = cmd.stdout(Stdio::from(writer)).stderr(Stdio::piped()).output().expect("run ferry");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `ferry completions bash | head`, `ferry audit | head -1`: the command ends quietly
/// (status 0, nothing on stderr) instead of panicking with a backtrace (status 101).
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    let (code, err) = run_into_closed_pipe(Command::new(FERRY).args(["completions", "bash"]));
    assert_eq!((code, err.as_str()), (Some(0), ""), "completions into a closed pipe");

    let s = TestServer::start();
    s.ok(&["node", "add", "n[1-3]", "--identity", "network"]);
    let (code, err) = run_into_closed_pipe(s.cmd().args(["audit"]));
    assert_eq!((code, err.as_str()), (Some(0), ""), "audit into a closed pipe");
    let (code, err) = run_into_closed_pipe(s.cmd().args(["node", "list", "--json"]));
    assert_eq!((code, err.as_str()), (Some(0), ""), "node list into a closed pipe");

    // And through the shell, as typed: head's one line arrives, nothing else is said.
    let typed = Command::new("sh")
        .arg("-c")
        .arg(format!("'{FERRY}' audit | head -1; '{FERRY}' completions bash | head -1"))
        .env("FERRY_ADMIN_SOCKET", &s.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&typed.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(typed.stderr.is_empty(), "{}", String::from_utf8_lossy(&typed.stderr));
}
