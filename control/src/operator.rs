//! The operator's side of a running daemon: a Unix control socket
//! (owner-only) that answers one command per connection, and the CLI
//! commands that talk to it (`xrelay stats`, `xrelay reload`).
//!
//! Protocol: the client writes one line (`stats` or `reload`), the daemon
//! answers with one JSON object and closes the connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xrelay_datapath::node::NodeStats;
use xrelay_datapath::runtime::Runtime;

/// Where `xrelay stats` and `xrelay reload` look by default.
pub const DEFAULT_SOCKET: &str = "/run/xrelay/xrelay.sock";

/// The counters as JSON.
pub fn stats_json(stats: &NodeStats) -> serde_json::Value {
    serde_json::json!({
        "frames": {"received": stats.frames_received, "sent": stats.frames_sent},
        "drops": {
            "unknown_peer": stats.unknown_peer,
            "malformed": stats.malformed,
            "bad_version": stats.bad_version,
            "unknown_kind": stats.unknown_kind,
            "unauthenticated": stats.unauthenticated,
            "auth_failed": stats.auth_failed,
            "replayed": stats.replayed,
            "unknown_session": stats.unknown_session,
            "wrong_service": stats.wrong_service,
            "policy_denied": stats.policy_denied,
            "control_queue_full": stats.control_queue_full,
            "too_many_contexts": stats.too_many_contexts,
            "rpc_dropped": stats.rpc_dropped,
            "rom_dropped": stats.rom_dropped,
        },
        "sessions": {
            "refused_opens": stats.refused_opens,
            "refused_reopens": stats.refused_reopens,
            "revoked": stats.revoked,
            "reply_too_large": stats.reply_too_large,
        },
    })
}

/// The daemon's control socket: serves commands on a thread until
/// dropped; removes the socket file then.
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlSocket {
    /// Listens on `path` (owner-only permissions). `reload` is what the
    /// `reload` command does.
    pub fn start(
        path: &Path,
        runtime: Arc<Runtime>,
        reload: impl Fn() + Send + 'static,
    ) -> std::io::Result<ControlSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A socket left by a killed daemon is in the way; a live one is not
        // ours to remove, but binding would fail on it anyway.
        if UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("xrelay-control".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => serve(stream, &runtime, &reload),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })?;
        Ok(ControlSocket {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, runtime: &Runtime, reload: &dyn Fn()) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let answer = match line.trim() {
        "stats" => match runtime.stats() {
            Ok(stats) => stats_json(&stats),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        },
        "reload" => {
            reload();
            serde_json::json!({"reload": "requested"})
        }
        other => serde_json::json!({"error": format!("unknown command {other:?}")}),
    };
    let mut stream = &stream;
    let _ = writeln!(stream, "{answer}");
}

/// Options of `xrelay stats` and `xrelay reload`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The daemon's control socket (`node.control_socket`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the daemon's JSON answer as is.
    #[arg(long)]
    json: bool,
}

fn ask(socket: &Path, command: &str) -> Result<serde_json::Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "{}: {e} (is the daemon running? see node.control_socket)",
            socket.display()
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    writeln!(stream, "{command}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("bad answer from the daemon: {e}"))
}

/// `xrelay stats`: the daemon's counters.
pub fn stats(args: &ClientArgs) -> ExitCode {
    match ask(&args.socket, "stats") {
        Ok(answer) if args.json => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            for (group, values) in answer.as_object().into_iter().flatten() {
                println!("{group}:");
                for (name, value) in values.as_object().into_iter().flatten() {
                    println!("  {name:<20} {value}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("xrelay stats: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `xrelay reload`: the daemon re-reads its configuration (as on SIGHUP).
pub fn reload(args: &ClientArgs) -> ExitCode {
    match ask(&args.socket, "reload") {
        Ok(_) => {
            if !args.json {
                println!("reload requested; the daemon reports the outcome in its log");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("xrelay reload: {error}");
            ExitCode::FAILURE
        }
    }
}
