//! `bolt`: the agent daemon and the command line that talks to it.

use std::process::ExitCode;

use bolt_agent::cli::capsules::CapsuleCommand;
use bolt_agent::cli::{self, Cli, Command};
use clap::Parser;

/// mimalloc: the state fold allocates and frees small strings at a high rate (replaying the log
/// at startup, every event after); it is markedly faster at that than the system allocator
/// (`cargo bench -p bolt-bench --bench fold`, docs/state.md). Its transparent huge pages cost
/// every short-lived `bolt` process (CLI, `bolt supervise`) a zeroed 2 MiB page (~0.4 ms), but
/// building it with `no_thp` made the fold ~6% slower (4.5–4.9 against 5.0–5.2 M events/s), so
/// THP stays (docs/benchmarks.md).
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
            return cli::capsules::exit_code(bolt_agent::shim::main(std::path::Path::new(&dir)));
        }
    }
    let Cli { socket, command } = Cli::parse();
    let result = match command {
        // The daemon and the supervisor are the binary's own: the client side never runs them.
        Command::Agent(args) => {
            return match bolt_agent::daemon::main(args, socket) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bolt: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Capsule(CapsuleCommand::Supervise { dir }) => {
            return cli::capsules::exit_code(bolt_agent::shim::main(&dir));
        }
        command => cli::run(socket, command),
    };
    match result {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bolt: {e}");
            ExitCode::FAILURE
        }
    }
}
