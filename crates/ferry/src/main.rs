//! The `ferry` binary: server, node agent and admin CLI in one program.

fn main() -> std::process::ExitCode {
    ferry_cli::main()
}
