//! `bolt`: the agent daemon and the command line that talks to it.

use std::process::ExitCode;

use bolt_agent::cli::{self, Cli};
use clap::Parser;

/// mimalloc: the state fold allocates and frees small strings at a high rate (replaying the log
/// at startup, every event after); it is markedly faster at that than the system allocator
/// (`cargo bench -p bolt-bench --bench fold`, docs/state.md). Built with `no_thp`: mimalloc's
/// `madvise(MADV_HUGEPAGE)` on its first arena made the kernel zero a 2 MiB page in every
/// short-lived `bolt` process (CLI, `bolt supervise`), ~11% of a supervisor's start-up.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `bolt supervise DIR` is on the path of every capsule start: skip building clap's whole
    // command tree for it (the agent spawns it with exactly these arguments).
    let mut args = std::env::args_os();
    if let (Some(_), Some(cmd), Some(dir), None) =
        (args.next(), args.next(), args.next(), args.next())
    {
        if cmd == "supervise" {
            let code = bolt_agent::supervisor::main(std::path::Path::new(&dir));
            return ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255));
        }
    }
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bolt: {e}");
            ExitCode::FAILURE
        }
    }
}
