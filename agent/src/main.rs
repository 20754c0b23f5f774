//! `bolt`: the agent daemon and the command line that talks to it.

use std::process::ExitCode;

use bolt_agent::cli::{self, Cli};
use clap::Parser;

fn main() -> ExitCode {
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
