//! `m4c`: the command-line face of the m4c compiler.
//!
//! Every subcommand lives in its own module under `cli/`; this file only
//! parses the command line and turns errors into one line plus an exit code.

mod cli;

use clap::Parser;

fn main() {
    restore_sigpipe();
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

/// Lets `m4c … | head` end quietly: Rust ignores SIGPIPE, which turns a
/// closed pipe into a panic inside `println!`; the default action is what
/// command-line tools are expected to do.
#[cfg(unix)]
fn restore_sigpipe() {
    // SAFETY: called once at start-up before any other thread exists;
    // `signal` with SIG_DFL has no other preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_sigpipe() {}
