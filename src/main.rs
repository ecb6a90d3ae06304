//! `m4c`: the command-line face of the m4c compiler.
//!
//! Every subcommand lives in its own module under `cli/`; this file only
//! parses the command line and turns errors into one line plus an exit code.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let code = match cli::dispatch(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            2
        }
    };
    std::process::exit(code);
}
