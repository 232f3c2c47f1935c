//! The `levee` command: run a relay node, or act as a client of one.

mod cli;

/// mimalloc rather than glibc's malloc: a node allocates and frees small buffers for every
/// envelope on every core, and glibc's arenas spent about a fifth of the node's CPU on it
/// (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
