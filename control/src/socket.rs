//! The daemon's control socket: a Unix socket with owner-only permissions
//! where the operator CLI ([`crate::operator`]) makes its requests. One
//! request per connection, each connection on a thread of its own (at
//! most [`MAX_CONNECTIONS`] at a time), so a long `rom watch` or
//! `signal wait` does not hold up `stats`.
//!
//! Protocol: the client writes one line holding a JSON object with a
//! `command`; `rom_publish` is followed by exactly `bytes` bytes of
//! content. The daemon answers with one JSON line, an object with `error`
//! when the request failed; answers that carry content (`rom_get`, each
//! version of `rom_watch`) give its length as `bytes` and follow the line
//! with exactly that many bytes. `rom_watch` answers until the client
//! hangs up or the session ends (a last line with `end`).
//!
//! | command | fields | answer |
//! | --- | --- | --- |
//! | `stats` | | the counters ([`stats_json`]) |
//! | `reload` | | `reload: applied` with `notes`, or `error` with `errors` |
//! | `rom_publish` | `name`, `bytes` | `version` |
//! | `rom_get` | `name`, `timeout_ms` | `version`, `bytes`, `blake3`, `removed` + content |
//! | `rom_watch` | `name` | one such record per version |
//! | `signal_send` | `context`, `count`, `timeout_ms` | `acknowledged` |
//! | `signal_wait` | `context`, `timeout_ms` (absent: for ever) | `count` |
//! | `rpc_call` | `label`, `op` (`get`, `put`, `delete`, `stats`), `key`, `value` | the result |

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xrelay_datapath::engine::peer::PeerState;
use xrelay_datapath::engine::rom::RomVersion;
use xrelay_datapath::example::{KvError, KvStoreClient};
use xrelay_datapath::marshal::RpcError;
use xrelay_datapath::node::{LatencySummary, NodeStats};
use xrelay_datapath::runtime::Report;
use xrelay_datapath::wire::rom::{RomState, MAX_ROM_SIZE};

use crate::config::ServiceChoice;
use crate::daemon::Daemon;

/// Connections served at the same time; more are answered `busy`.
pub const MAX_CONNECTIONS: usize = 64;

/// The longest request line.
const MAX_LINE: u64 = 64 * 1024;

/// How long an answer may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiting request checks whether its client hung up.
const HANGUP_CHECK: Duration = Duration::from_millis(200);

fn latency_json(summary: &LatencySummary) -> Value {
    json!({
        "count": summary.count,
        "p50_ns": summary.p50_ns,
        "p90_ns": summary.p90_ns,
        "p99_ns": summary.p99_ns,
        "p999_ns": summary.p999_ns,
        "max_ns": summary.max_ns,
    })
}

/// The daemon's counters as JSON: node-wide frames and drops by reason
/// (summed over the queues), sessions, the control plane's own, each
/// queue's transport and handoff counters, and each peer's counters and
/// latency percentiles (from the queue that owns it).
pub fn stats_json(daemon: &Daemon, all: &[(u32, Result<Report, String>)]) -> Value {
    let reports: Vec<(u32, &Report)> = all
        .iter()
        .filter_map(|(queue, report)| Some((*queue, report.as_ref().ok()?)))
        .collect();
    let mut stats = NodeStats::default();
    for (_, report) in &reports {
        stats += report.node;
    }
    let control = &daemon.counters;
    let stopped = all.iter().filter_map(|(queue, report)| {
        Some(json!({"queue": queue, "error": report.as_ref().err()?}))
    });
    let queues: Vec<Value> = reports
        .iter()
        .map(|(queue, report)| {
            let transport = &report.transport;
            json!({
                "queue": queue,
                "transport": transport.kind,
                "received": transport.received,
                "sent": transport.sent,
                "dropped": transport.dropped,
                "send_stalls": transport.send_stalls,
                "send_errors": transport.send_errors,
                "wakeups": transport.wakeups,
                "handoff_sent": report.handoff.sent,
                "handoff_dropped": report.handoff.dropped,
                "handoff_received": report.handoff.received,
                "peers": report.peers.len(),
            })
        })
        .chain(stopped)
        .collect();
    let peers: Vec<Value> = reports
        .iter()
        .flat_map(|(queue, report)| report.peers.iter().map(move |peer| (*queue, peer)))
        .map(|(queue, peer)| {
            let c = &peer.counters;
            json!({
                "name": peer.name,
                "queue": queue,
                "state": match peer.state {
                    PeerState::Unknown => "unknown",
                    PeerState::Up => "up",
                    PeerState::Down => "down",
                },
                "authenticated": peer.authenticated,
                "frames_received": c.frames_received,
                "frames_sent": c.frames_sent,
                "drops": {
                    "unauthenticated": c.unauthenticated,
                    "auth_failed": c.auth_failed,
                    "replayed": c.replayed,
                    "policy_denied": c.policy_denied,
                },
                "revoked": c.revoked,
                "sessions_served": peer.sessions_served,
                "sessions_client": peer.sessions_client,
                "latency": {
                    "heartbeat_rtt": latency_json(&peer.heartbeat_rtt),
                    "rpc_call": latency_json(&peer.rpc_call),
                },
            })
        })
        .collect();
    json!({
        "node": daemon.name(),
        "transport": daemon.transport(),
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
            "no_route": control.no_route.load(Ordering::Relaxed),
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
        "control": {
            "requests": control.requests.load(Ordering::Relaxed),
            "reloads": control.reloads.load(Ordering::Relaxed),
            "reloads_refused": control.reloads_refused.load(Ordering::Relaxed),
        },
        "queues": queues,
        "peers": peers,
    })
}

/// The control socket: serves requests until dropped, then removes the
/// socket file.
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlSocket {
    /// Listens on `path` (owner-only permissions) for `daemon`.
    pub fn start(path: &Path, daemon: Arc<Daemon>) -> std::io::Result<ControlSocket> {
        let listener = bind_private(path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let active = Arc::new(AtomicUsize::new(0));
        let running = Arc::clone(&active);
        let thread = std::thread::Builder::new()
            .name("xrelay-control".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accept(stream, &daemon, &running, &flag);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(ControlSocket {
            path: path.to_owned(),
            stop,
            active,
            thread: Some(thread),
        })
    }
}

/// Binds a Unix socket at `path` that only the owner can use from the
/// first moment: it is bound inside a fresh directory only the owner can
/// enter, made 0600, then moved into place. A socket left by a killed
/// daemon is replaced; anything else at `path` (a file, a live daemon's
/// socket) is an error, never removed.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                ErrorKind::AlreadyExists,
                "exists and is not a socket (not removed)",
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                ErrorKind::AddrInUse,
                "a daemon is listening there",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let private = dir.join(format!(".xrelay-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("socket");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Gives a connection slot back however its request ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
        // Waiting requests notice the stop within HANGUP_CHECK; give the
        // others a moment to answer.
        let grace = Instant::now() + Duration::from_secs(2);
        while self.active.load(Ordering::Acquire) > 0 && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn accept(
    stream: UnixStream,
    daemon: &Arc<Daemon>,
    active: &Arc<AtomicUsize>,
    stop: &Arc<AtomicBool>,
) {
    let slot = Slot(Arc::clone(active));
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut stream = &stream;
        let _ = writeln!(
            stream,
            "{}",
            json!({"error": "busy: too many requests at once"})
        );
        return;
    }
    let (daemon, stop) = (Arc::clone(daemon), Arc::clone(stop));
    let spawned = std::thread::Builder::new()
        .name("xrelay-request".into())
        .spawn(move || {
            let _slot = slot;
            serve(&stream, &daemon, &stop);
        });
    if spawned.is_err() {
        eprintln!("xrelay: cannot start a thread for a control request");
    }
}

type Answer = Result<Value, String>;

fn write_line(mut stream: &UnixStream, value: &Value) -> std::io::Result<()> {
    writeln!(stream, "{value}")
}

fn serve(stream: &UnixStream, daemon: &Daemon, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if (&mut reader).take(MAX_LINE).read_line(&mut line).is_err() {
        return;
    }
    daemon.counters.requests.fetch_add(1, Ordering::Relaxed);
    let request: Value = match line.trim() {
        // The first protocol's plain words still work.
        word @ ("stats" | "reload") => json!({"command": word}),
        text => match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => {
                let _ = write_line(stream, &json!({"error": format!("bad request: {e}")}));
                return;
            }
        },
    };
    let text = |key: &str| request.get(key).and_then(Value::as_str);
    let number = |key: &str| request.get(key).and_then(Value::as_u64);
    let timeout = number("timeout_ms").map(Duration::from_millis);
    let answer: Answer = match text("command").unwrap_or("") {
        "stats" => Ok(stats_json(daemon, &daemon.reports())),
        "reload" => match daemon.reload() {
            Ok(notes) => {
                eprintln!(
                    "xrelay: reloaded {}: {}",
                    daemon.path().display(),
                    notes.join("; ")
                );
                Ok(json!({"reload": "applied", "notes": notes}))
            }
            Err(errors) => {
                for error in &errors {
                    eprintln!("xrelay: reload refused: {error}");
                }
                Ok(
                    json!({"error": "reload refused; the old configuration keeps running", "errors": errors}),
                )
            }
        },
        "rom_publish" => rom_publish(&mut reader, daemon, text("name"), number("bytes")),
        "rom_get" => match rom_get(stream, daemon, text("name"), timeout) {
            Ok(()) => return,
            Err(error) => Err(error),
        },
        "rom_watch" => match rom_watch(stream, daemon, text("name"), stop) {
            Ok(()) => return,
            Err(error) => Err(error),
        },
        "signal_send" => signal_send(daemon, text("context"), number("count"), timeout),
        "signal_wait" => match signal_wait(stream, daemon, text("context"), timeout, stop) {
            Ok(_) => return,
            Err(error) => Err(error),
        },
        "rpc_call" => rpc_call(daemon, &request),
        other => Err(format!("unknown command {other:?}")),
    };
    let value = answer.unwrap_or_else(|error| json!({"error": error}));
    let _ = write_line(stream, &value);
}

fn required<'a>(value: Option<&'a str>, what: &str) -> Result<&'a str, String> {
    value.ok_or_else(|| format!("the request needs {what:?}"))
}

fn rom_publish(
    reader: &mut BufReader<&UnixStream>,
    daemon: &Daemon,
    name: Option<&str>,
    bytes: Option<u64>,
) -> Answer {
    let name = required(name, "name")?;
    let bytes = bytes.ok_or("the request needs \"bytes\"")?;
    if bytes > MAX_ROM_SIZE {
        return Err(format!(
            "{bytes} bytes is more than a ROM module holds ({MAX_ROM_SIZE})"
        ));
    }
    let mut content = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
    reader
        .take(bytes)
        .read_to_end(&mut content)
        .map_err(|e| format!("reading the content: {e}"))?;
    if content.len() as u64 != bytes {
        return Err(format!(
            "expected {bytes} bytes of content, got {}",
            content.len()
        ));
    }
    let version = daemon.publish(name, content)?;
    Ok(json!({"name": name, "version": version, "bytes": bytes}))
}

/// The record of one version: its JSON line, then its content.
fn send_version(
    stream: &UnixStream,
    name: &str,
    target: &crate::routes::Target,
    version: &RomVersion,
) -> std::io::Result<()> {
    let header = json!({
        "name": name,
        "peer": target.peer,
        "remote": target.remote,
        "version": version.version,
        "removed": version.state == RomState::Removed,
        "bytes": version.data.len(),
        "blake3": blake3::Hash::from(version.hash).to_hex().as_str(),
    });
    write_line(stream, &header)?;
    let mut out = stream;
    out.write_all(&version.data)?;
    out.flush()
}

fn rom_get(
    stream: &UnixStream,
    daemon: &Daemon,
    name: Option<&str>,
    timeout: Option<Duration>,
) -> Result<(), String> {
    let name = required(name, "name")?;
    let target = daemon.route(ServiceChoice::Rom, name)?;
    let subscriber = daemon
        .runtime_for(&target.peer)
        .subscribe_rom(&target.peer, &target.remote)
        .map_err(|e| e.to_string())?;
    let timeout = timeout.unwrap_or(Duration::from_secs(10));
    let version = match subscriber.current() {
        Some(version) => version,
        None => subscriber
            .wait_change(None, timeout)
            .ok_or_else(|| match subscriber.closed() {
                Some(cause) => format!("{name:?} on {}: closed: {cause:?}", target.peer),
                None => format!(
                    "{name:?} on {}: no version arrived within {timeout:?}",
                    target.peer
                ),
            })?,
    };
    let _ = send_version(stream, name, &target, &version);
    Ok(())
}

/// Whether the client hung up (it sends nothing after its request).
fn hung_up(stream: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let gone = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    gone
}

fn rom_watch(
    stream: &UnixStream,
    daemon: &Daemon,
    name: Option<&str>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let name = required(name, "name")?;
    let target = daemon.route(ServiceChoice::Rom, name)?;
    let subscriber = daemon
        .runtime_for(&target.peer)
        .subscribe_rom(&target.peer, &target.remote)
        .map_err(|e| e.to_string())?;
    let mut seen = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let _ = write_line(stream, &json!({"end": "the daemon is stopping"}));
            return Ok(());
        }
        if let Some(cause) = subscriber.closed() {
            let _ = write_line(stream, &json!({"end": format!("closed: {cause:?}")}));
            return Ok(());
        }
        let current = subscriber.wait_change(seen.as_ref(), HANGUP_CHECK);
        let changed = match (&current, &seen) {
            (Some(c), Some(s)) => !Arc::ptr_eq(c, s),
            (Some(_), None) => true,
            _ => false,
        };
        if changed {
            if let Some(version) = &current {
                if send_version(stream, name, &target, version).is_err() {
                    return Ok(());
                }
            }
            seen = current;
        } else if hung_up(stream) {
            return Ok(());
        }
    }
}

fn signal_send(
    daemon: &Daemon,
    context: Option<&str>,
    count: Option<u64>,
    timeout: Option<Duration>,
) -> Answer {
    let context = required(context, "context")?;
    let count = count.unwrap_or(1);
    let target = daemon.route(ServiceChoice::Signal, context)?;
    let transmitter = daemon
        .runtime_for(&target.peer)
        .open_signal(&target.peer, &target.remote)
        .map_err(|e| e.to_string())?;
    transmitter
        .submit_many(0, count)
        .map_err(|e| e.to_string())?;
    let acknowledged = transmitter
        .flush(timeout.unwrap_or(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "context": context,
        "peer": target.peer,
        "remote": target.remote,
        "count": count,
        "acknowledged": acknowledged,
    }))
}

fn signal_wait(
    stream: &UnixStream,
    daemon: &Daemon,
    context: Option<&str>,
    timeout: Option<Duration>,
    stop: &AtomicBool,
) -> Answer {
    let context = required(context, "context")?;
    let handler = daemon.signal_handler(context)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "no signal for {context:?} within {:?}",
                        timeout.unwrap_or_default()
                    ));
                }
                left.min(HANGUP_CHECK)
            }
            None => HANGUP_CHECK,
        };
        if let Some(count) = handler.wait_timeout(slice) {
            let answer = json!({"context": context, "count": count});
            if write_line(stream, &answer).is_err() {
                // Nobody took them: the next wait will.
                handler.restore(count);
            }
            return Ok(Value::Null);
        }
        if stop.load(Ordering::Relaxed) {
            return Err("the daemon is stopping".into());
        }
        if hung_up(stream) {
            return Err("the client hung up".into());
        }
    }
}

fn rpc_call(daemon: &Daemon, request: &Value) -> Answer {
    let label = required(request.get("label").and_then(Value::as_str), "label")?;
    let op = required(request.get("op").and_then(Value::as_str), "op")?;
    let key = || {
        request
            .get("key")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{op} needs a key"))
    };
    let target = daemon.route(ServiceChoice::Rpc, label)?;
    let session = daemon
        .runtime_for(&target.peer)
        .open_rpc(&target.peer, &target.remote)
        .map_err(|e| e.to_string())?;
    let mut kv = KvStoreClient::new(session);
    let failed = |e: RpcError<KvError>| match e {
        RpcError::Exception(KvError::NotFound) => "not found".to_owned(),
        RpcError::Exception(KvError::Full) => "the store is full".to_owned(),
        other => format!("{other}"),
    };
    let started = Instant::now();
    let result = match op {
        "get" => kv
            .get(key()?)
            .map(|value| json!({"value": String::from_utf8_lossy(&value), "bytes": value.len()}))
            .map_err(failed),
        "put" => {
            let value = request
                .get("value")
                .and_then(Value::as_str)
                .ok_or("put needs a value")?;
            kv.put(key()?, value.as_bytes().to_vec())
                .map(|old| {
                    json!({"replaced": old.map(|v| String::from_utf8_lossy(&v).into_owned())})
                })
                .map_err(failed)
        }
        "delete" => kv
            .delete(key()?)
            .map(|()| json!({"deleted": true}))
            .map_err(failed),
        "stats" => kv
            .stats()
            .map(|s| json!({"keys": s.keys, "value_bytes": s.value_bytes}))
            .map_err(|e| e.to_string()),
        other => return Err(format!("unknown op {other:?} (get, put, delete, stats)")),
    };
    let mut value = result?;
    value["peer"] = json!(target.peer);
    value["remote"] = json!(target.remote);
    value["round_trip_ns"] = json!(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    Ok(value)
}
