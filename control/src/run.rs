//! `xrelay run CONFIG`: the daemon's main thread. Checks the
//! configuration (nothing starts on an error: exit 2), starts the
//! [`Daemon`] (datapath, exports, keys, policy), the control socket and
//! the metrics endpoint when configured, then waits for signals: SIGHUP
//! reloads ([`Daemon::reload`]: an invalid file is reported and the old
//! configuration keeps running), SIGINT and SIGTERM stop.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};

use crate::config;
use crate::daemon::Daemon;
use crate::metrics::MetricsServer;
use crate::socket::ControlSocket;

/// Options of `xrelay run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    config: PathBuf,
}

/// `xrelay run CONFIG`.
pub fn run(args: &RunArgs) -> ExitCode {
    let checked = match config::load(&args.config) {
        Ok(checked) => checked,
        Err(errors) => {
            for error in errors {
                eprintln!("{error}");
            }
            return ExitCode::from(2);
        }
    };
    for warning in &checked.warnings {
        eprintln!("{warning}");
    }
    // Signals are taken synchronously by this thread; block them before
    // any other thread starts so none of them gets one.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("xrelay: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let config = checked.config;
    let daemon = match Daemon::start(&args.config, config.clone()) {
        Ok(daemon) => Arc::new(daemon),
        Err(error) => {
            eprintln!("xrelay: starting: {error}");
            return ExitCode::FAILURE;
        }
    };
    let control = match &config.node.control_socket {
        Some(path) => match ControlSocket::start(Path::new(path), Arc::clone(&daemon)) {
            Ok(socket) => Some(socket),
            Err(error) => {
                eprintln!("xrelay: control socket {path}: {error}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let metrics = match &config.node.metrics {
        Some(address) => match MetricsServer::start(address.get_ref(), Arc::clone(&daemon)) {
            Ok(server) => Some(server),
            Err(error) => {
                eprintln!("xrelay: metrics on {}: {error}", address.get_ref());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    eprintln!(
        "xrelay: node {:?} running on {} at {} ({} queues, {} peers, {} exports)",
        daemon.name(),
        daemon.transport(),
        config.node.address.get_ref(),
        daemon.queues().len(),
        config.peers.len(),
        config.export.rpc.len() + config.export.rom.len() + config.export.signal.len()
    );
    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => match daemon.reload() {
                Ok(notes) => eprintln!(
                    "xrelay: reloaded {}: {}",
                    args.config.display(),
                    notes.join("; ")
                ),
                Err(errors) => {
                    for error in errors {
                        eprintln!("xrelay: reload refused: {error}");
                    }
                    eprintln!("xrelay: the old configuration keeps running");
                }
            },
            Ok(signal) => {
                eprintln!("xrelay: {signal:?}: stopping");
                break;
            }
            Err(e) => {
                eprintln!("xrelay: waiting for signals: {e}");
                break;
            }
        }
    }
    drop(metrics);
    drop(control);
    let Ok(daemon) = Arc::try_unwrap(daemon) else {
        // A request still running after the grace period: leaving the
        // process releases the socket and the XDP program all the same.
        eprintln!("xrelay: stopped with an operator request still open");
        return ExitCode::SUCCESS;
    };
    match daemon.shutdown() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xrelay: stopping: {error}");
            ExitCode::FAILURE
        }
    }
}
