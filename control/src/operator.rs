//! The operator CLI: commands that talk to a running daemon over its
//! control socket ([`crate::socket`] has the protocol). Each prints a
//! short human answer, or with `--json` the daemon's JSON; a failure is
//! one line on stderr and exit status 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

/// Where the CLI looks for the daemon by default.
pub const DEFAULT_SOCKET: &str = "/run/xrelay/xrelay.sock";

/// Options every operator command has.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The daemon's control socket (`node.control_socket`).
    #[arg(long, default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    /// Print the daemon's JSON answers as they are.
    #[arg(long, global = true)]
    json: bool,
}

/// `xrelay rom ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RomCommand {
    /// Publish FILE (`-`: standard input) as the newest version of this
    /// node's exported module NAME.
    Publish {
        /// The exported module.
        name: String,
        /// The content.
        file: PathBuf,
    },
    /// Write the current content of module NAME (routed to its peer) to
    /// standard output.
    Get {
        /// The module, as the routes know it.
        name: String,
        /// How long to wait for a first version, in seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Print module NAME each time it changes (the newest version; ones
    /// replaced before they arrive are skipped): a header line and the
    /// content (`--json`: one JSON line per version, no content).
    Watch {
        /// The module, as the routes know it.
        name: String,
        /// Stop after this many versions.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// `xrelay signal ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SignalCommand {
    /// Submit COUNT signals to CONTEXT (routed to its peer) and wait for
    /// the peer's acknowledgement.
    Send {
        /// The signal context, as the routes know it.
        context: String,
        /// How many.
        #[arg(default_value_t = 1)]
        count: u64,
        /// How long to wait for the acknowledgement, in seconds.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
    /// Wait for signals to this node's exported CONTEXT; print how many
    /// arrived since the last wait.
    Wait {
        /// The exported signal context.
        context: String,
        /// Give up after this many seconds (exit status 1).
        #[arg(long)]
        timeout: Option<f64>,
    },
}

/// `xrelay rpc ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RpcCommand {
    /// Call the example `kv-store` interface on session LABEL (routed).
    Call {
        /// The session label, as the routes know it.
        label: String,
        /// `get KEY`, `put KEY VALUE`, `delete KEY` or `stats`.
        op: String,
        /// The key.
        key: Option<String>,
        /// The value (`put`).
        value: Option<String>,
    },
}

/// One request; returns the connection for answers that carry content.
fn request(
    socket: &Path,
    request: &Value,
    payload: &[u8],
) -> Result<BufReader<UnixStream>, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "{}: {e} (is the daemon running? see node.control_socket)",
            socket.display()
        )
    })?;
    writeln!(stream, "{request}").map_err(|e| e.to_string())?;
    stream.write_all(payload).map_err(|e| e.to_string())?;
    Ok(BufReader::new(stream))
}

/// Reads one answer line; `Ok(None)` at the end of the stream.
fn read_answer(reader: &mut BufReader<UnixStream>) -> Result<Option<Value>, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| format!("bad answer from the daemon: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// One request, one answer; an `error` answer is an error.
fn ask(
    socket: &Path,
    command: &Value,
    payload: &[u8],
    wait: Option<Duration>,
) -> Result<Value, String> {
    let mut reader = request(socket, command, payload)?;
    reader
        .get_ref()
        .set_read_timeout(wait)
        .map_err(|e| e.to_string())?;
    let answer = read_answer(&mut reader)?.ok_or("the daemon closed the connection")?;
    check(answer)
}

fn check(answer: Value) -> Result<Value, String> {
    match answer.get("error") {
        Some(error) => {
            let mut message = error.as_str().unwrap_or("error").to_owned();
            for detail in answer["errors"].as_array().into_iter().flatten() {
                message.push_str("\n  ");
                message.push_str(detail.as_str().unwrap_or(""));
            }
            Err(message)
        }
        None => Ok(answer),
    }
}

fn finish(name: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xrelay {name}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or(Duration::MAX)
}

/// Prints a JSON value as indented `key value` lines.
fn print_tree(value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if item.is_object() || item.is_array() {
                    println!("{pad}{key}:");
                    print_tree(item, indent + 2);
                } else {
                    println!("{pad}{key:<22} {item}");
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let title = item.get("name").or_else(|| item.get("queue"));
                println!(
                    "{pad}- {}",
                    title.map(ToString::to_string).unwrap_or_default()
                );
                print_tree(item, indent + 2);
            }
        }
        other => println!("{pad}{other}"),
    }
}

/// `xrelay stats`: the daemon's counters and latency percentiles.
pub fn stats(connection: &Connection) -> ExitCode {
    let result = ask(
        &connection.socket,
        &json!({"command": "stats"}),
        &[],
        Some(Duration::from_secs(5)),
    )
    .map(|answer| {
        if connection.json {
            println!("{answer}");
        } else {
            print_tree(&answer, 0);
        }
    });
    finish("stats", result)
}

/// `xrelay reload`: the daemon re-reads its configuration (as on SIGHUP)
/// and says what it applied, or why it refused.
pub fn reload(connection: &Connection) -> ExitCode {
    let result = ask(
        &connection.socket,
        &json!({"command": "reload"}),
        &[],
        Some(Duration::from_secs(30)),
    )
    .map(|answer| {
        if connection.json {
            println!("{answer}");
        } else {
            println!("reloaded:");
            for note in answer["notes"].as_array().into_iter().flatten() {
                println!("  {}", note.as_str().unwrap_or(""));
            }
        }
    });
    finish("reload", result)
}

/// Reads one version record's content (after its header line).
fn read_content(reader: &mut BufReader<UnixStream>, header: &Value) -> Result<Vec<u8>, String> {
    let bytes = header["bytes"]
        .as_u64()
        .ok_or("an answer without \"bytes\"")?;
    let mut content = Vec::new();
    reader
        .take(bytes)
        .read_to_end(&mut content)
        .map_err(|e| e.to_string())?;
    if content.len() as u64 != bytes {
        return Err(format!(
            "the daemon sent {} of {bytes} bytes",
            content.len()
        ));
    }
    Ok(content)
}

/// `xrelay rom ...`.
pub fn rom(connection: &Connection, command: &RomCommand) -> ExitCode {
    let socket = &connection.socket;
    let mut out = std::io::stdout().lock();
    match command {
        RomCommand::Publish { name, file } => {
            let content = if file.as_os_str() == "-" {
                let mut content = Vec::new();
                std::io::stdin().read_to_end(&mut content).map(|_| content)
            } else {
                std::fs::read(file)
            };
            let result = content
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|content| {
                    let command =
                        json!({"command": "rom_publish", "name": name, "bytes": content.len()});
                    ask(socket, &command, &content, Some(Duration::from_secs(60)))
                })
                .map(|answer| {
                    if connection.json {
                        println!("{answer}");
                    } else {
                        println!(
                            "published {name} version {} ({} bytes)",
                            answer["version"], answer["bytes"]
                        );
                    }
                });
            finish("rom publish", result)
        }
        RomCommand::Get { name, timeout } => {
            let wait = seconds(*timeout);
            let command = json!({
                "command": "rom_get",
                "name": name,
                "timeout_ms": u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            });
            let result = request(socket, &command, &[]).and_then(|mut reader| {
                let header = check(read_answer(&mut reader)?.ok_or("no answer")?)?;
                let content = read_content(&mut reader, &header)?;
                if connection.json {
                    writeln!(out, "{header}").map_err(|e| e.to_string())
                } else if header["removed"] == true {
                    Err(format!(
                        "{name}: removed by its publisher (version {})",
                        header["version"]
                    ))
                } else {
                    out.write_all(&content).map_err(|e| e.to_string())
                }
            });
            finish("rom get", result)
        }
        RomCommand::Watch { name, count } => {
            let command = json!({"command": "rom_watch", "name": name});
            let result = request(socket, &command, &[]).and_then(|mut reader| {
                let mut seen = 0u64;
                while count.is_none_or(|c| seen < c) {
                    let Some(answer) = read_answer(&mut reader)? else {
                        return Err("the daemon closed the connection".into());
                    };
                    let header = check(answer)?;
                    if let Some(end) = header.get("end") {
                        return Err(format!("{name}: {}", end.as_str().unwrap_or("ended")));
                    }
                    let content = read_content(&mut reader, &header)?;
                    let written = if connection.json {
                        writeln!(out, "{header}")
                    } else {
                        let state = if header["removed"] == true {
                            "removed"
                        } else {
                            "valid"
                        };
                        writeln!(
                            out,
                            "== {name} version {} ({state}, {} bytes, blake3 {})",
                            header["version"],
                            header["bytes"],
                            header["blake3"].as_str().unwrap_or("")
                        )
                        .and_then(|()| out.write_all(&content))
                        .and_then(|()| {
                            if content.last().is_some_and(|&b| b != b'\n') {
                                writeln!(out)
                            } else {
                                Ok(())
                            }
                        })
                    };
                    written
                        .and_then(|()| out.flush())
                        .map_err(|e| e.to_string())?;
                    seen += 1;
                }
                Ok(())
            });
            finish("rom watch", result)
        }
    }
}

/// `xrelay signal ...`.
pub fn signal(connection: &Connection, command: &SignalCommand) -> ExitCode {
    let socket = &connection.socket;
    match command {
        SignalCommand::Send {
            context,
            count,
            timeout,
        } => {
            let wait = seconds(*timeout);
            let command = json!({
                "command": "signal_send",
                "context": context,
                "count": count,
                "timeout_ms": u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            });
            let result = ask(socket, &command, &[], None).and_then(|answer| {
                if connection.json {
                    println!("{answer}");
                }
                if answer["acknowledged"] == true {
                    if !connection.json {
                        println!("sent {count} to {context} on {}", answer["peer"]);
                    }
                    Ok(())
                } else {
                    Err(format!(
                        "{count} submitted to {context}, not acknowledged within {wait:?}"
                    ))
                }
            });
            finish("signal send", result)
        }
        SignalCommand::Wait { context, timeout } => {
            let mut command = json!({"command": "signal_wait", "context": context});
            if let Some(timeout) = timeout {
                command["timeout_ms"] =
                    json!(u64::try_from(seconds(*timeout).as_millis()).unwrap_or(u64::MAX));
            }
            let result = ask(socket, &command, &[], None).map(|answer| {
                if connection.json {
                    println!("{answer}");
                } else {
                    println!("{}", answer["count"]);
                }
            });
            finish("signal wait", result)
        }
    }
}

/// `xrelay rpc call`.
pub fn rpc(connection: &Connection, command: &RpcCommand) -> ExitCode {
    let RpcCommand::Call {
        label,
        op,
        key,
        value,
    } = command;
    let request =
        json!({"command": "rpc_call", "label": label, "op": op, "key": key, "value": value});
    let result = ask(
        &connection.socket,
        &request,
        &[],
        Some(Duration::from_secs(60)),
    )
    .map(|answer| {
        if connection.json {
            println!("{answer}");
        } else if let Some(value) = answer.get("value") {
            println!("{}", value.as_str().unwrap_or(""));
        } else {
            let mut shown = answer.clone();
            if let Some(map) = shown.as_object_mut() {
                map.remove("round_trip_ns");
            }
            println!("{shown}");
        }
    });
    finish("rpc call", result)
}
