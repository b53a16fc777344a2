//! The `xrelay` binary.
//!
//! * `xrelay demo`: two relay nodes in one process exercising RPC,
//!   signals and ROM through the application API (`--json` for figures).
//! * `xrelay decode HEX`: prints a relay frame field by field.
//! * `xrelay check CONFIG`: validates a node configuration
//!   (docs/config.md); every error names the file, the line and the field.
//! * `xrelay run CONFIG`: the daemon (SIGHUP reloads).
//! * The operator CLI, over the daemon's control socket: `xrelay stats`,
//!   `xrelay reload`, `xrelay rom publish|get|watch`,
//!   `xrelay signal send|wait` and `xrelay rpc call`.
#![forbid(unsafe_code)]

mod config;
mod daemon;
mod decode;
mod demo;
mod metrics;
mod operator;
mod routes;
mod run;
mod socket;

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
    /// Print a running daemon's counters and latency percentiles.
    Stats(operator::Connection),
    /// Make a running daemon re-read its configuration.
    Reload(operator::Connection),
    /// Publish, read or watch ROM modules through a running daemon.
    Rom {
        #[command(flatten)]
        connection: operator::Connection,
        #[command(subcommand)]
        command: operator::RomCommand,
    },
    /// Send or wait for signals through a running daemon.
    Signal {
        #[command(flatten)]
        connection: operator::Connection,
        #[command(subcommand)]
        command: operator::SignalCommand,
    },
    /// Call the example RPC interface through a running daemon.
    Rpc {
        #[command(flatten)]
        connection: operator::Connection,
        #[command(subcommand)]
        command: operator::RpcCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Decode(args) => decode::run(&args),
        Command::Check(args) => config::check(&args),
        Command::Run(args) => run::run(&args),
        Command::Stats(connection) => operator::stats(&connection),
        Command::Reload(connection) => operator::reload(&connection),
        Command::Rom {
            connection,
            command,
        } => operator::rom(&connection, &command),
        Command::Signal {
            connection,
            command,
        } => operator::signal(&connection, &command),
        Command::Rpc {
            connection,
            command,
        } => operator::rpc(&connection, &command),
    }
}
