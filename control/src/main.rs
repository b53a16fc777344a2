//! The `xrelay` binary.
//!
//! * `xrelay demo`: two relay nodes in one process, on the `mem` or `udp`
//!   transport, exercising RPC, signals and ROM through the application
//!   API; `--json` prints the figures as one JSON object.
//! * `xrelay decode HEX`: prints a relay frame or an Ethernet frame
//!   carrying one, field by field.
//!
//! * `xrelay check CONFIG`: validates a node configuration
//!   (docs/config.md); every error names the file, line and field.
//!
//! * `xrelay run CONFIG`: the daemon (SIGHUP reloads keys and policy).
//!
//! * `xrelay stats [--json]`, `xrelay reload`: the operator CLI over the
//!   daemon's control socket. ROM, signal and RPC commands come next.
#![forbid(unsafe_code)]

mod config;
mod decode;
mod demo;
mod operator;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// xrelay: RPC, signals and ROM modules between machines over AF_XDP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run two nodes in one process and exercise RPC, signals and ROM.
    Demo(demo::Args),
    /// Decode a frame given as hex (spaces allowed).
    Decode(decode::Args),
    /// Validate a configuration without starting anything (exit 2 on errors).
    Check(config::CheckArgs),
    /// Run a node from a configuration until SIGINT or SIGTERM (SIGHUP reloads).
    Run(run::RunArgs),
    /// Print a running daemon's counters (`--json` for the raw object).
    Stats(operator::ClientArgs),
    /// Make a running daemon re-read its configuration.
    Reload(operator::ClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Decode(args) => decode::run(&args),
        Command::Check(args) => config::check(&args),
        Command::Run(args) => run::run(&args),
        Command::Stats(args) => operator::stats(&args),
        Command::Reload(args) => operator::reload(&args),
    }
}
