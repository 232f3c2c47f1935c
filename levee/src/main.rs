//! The `levee` command: run a relay node, or act as a client of one.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
