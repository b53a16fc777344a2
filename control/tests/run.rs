//! `xrelay run CONFIG` as an operator uses it: two daemons over UDP on
//! loopback with authenticated frames find each other; SIGHUP with a
//! broken file keeps the old configuration running; SIGTERM stops cleanly;
//! a broken configuration starts nothing and exits 2.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xrelay-run-{}/{name}.sock", std::process::id()))
}

fn config(name: &str, port: u16, peer: &str, peer_port: u16) -> String {
    let socket = socket_path(name).display().to_string();
    format!(
        r#"
[node]
name = "{name}"
address = "127.0.0.1"
transport = "udp"
port = {port}
control_socket = "{socket}"

[[peer]]
name = "{peer}"
address = "127.0.0.1"
port = {peer_port}
key = "{KEY}"

[[export.rpc]]
label = "kv"
interface = "kv-store"

[[policy]]
peer = "{peer}"
rpc = ["kv"]
"#
    )
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xrelay-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A daemon and its stderr, line by line.
struct Daemon {
    child: Child,
    lines: Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Daemon {
    fn start(config: &PathBuf) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xrelay"))
            .arg("run")
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: std::cell::RefCell::default(),
        }
    }

    /// Waits for a line containing `text` (or finds it among the lines
    /// seen so far).
    fn expect(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = self.seen.borrow_mut();
        if seen.iter().any(|line| line.contains(text)) {
            return;
        }
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let found = line.contains(text);
                seen.push(line);
                if found {
                    return;
                }
            }
        }
        panic!("no line with {text:?} within 10 s; saw {seen:#?}");
    }

    /// Like [`Daemon::expect`], but only lines that have not been seen.
    fn expect_again(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                let found = line.contains(text);
                self.seen.borrow_mut().push(line);
                if found {
                    return;
                }
            }
        }
        panic!("no new line with {text:?} within 10 s");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_daemons_find_each_other_reload_safely_and_stop_cleanly() {
    let (pa, pb) = (free_port(), free_port());
    let path_a = write("a", &config("a", pa, "b", pb));
    let path_b = write("b", &config("b", pb, "a", pa));
    let a = Daemon::start(&path_a);
    let b = Daemon::start(&path_b);
    a.expect("node \"a\" running on udp");
    b.expect("node \"b\" running on udp");
    // Heartbeats pass authentication both ways.
    a.expect("peer b: Up");
    b.expect("peer a: Up");

    // The operator CLI over the owner-only control socket.
    let socket = socket_path("a");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let output = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["stats", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(stats["frames"]["received"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["drops"]["auth_failed"], 0, "{stats}");
    let output = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["reload", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(output.status.success());
    a.expect("keys and policy applied");

    // A broken file on SIGHUP is refused; the node keeps running.
    std::fs::write(&path_a, "[node]\nname = 1\n").unwrap();
    a.signal("HUP");
    a.expect("the old configuration keeps running");
    // A valid one is applied.
    std::fs::write(&path_a, config("a", pa, "b", pb)).unwrap();
    a.signal("HUP");
    a.expect_again("keys and policy applied");

    for mut daemon in [a, b] {
        daemon.signal("TERM");
        daemon.expect("SIGTERM: stopping");
        let status = daemon.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

#[test]
fn a_broken_configuration_starts_nothing() {
    let port = free_port();
    let path = write("broken", &config("a", port, "a", port));
    let output = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .arg("run")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("peer[0].name: \"a\" is this node's own name"),
        "{stderr}"
    );
    // Nothing bound the port.
    assert!(UdpSocket::bind(("127.0.0.1", port)).is_ok());
}
