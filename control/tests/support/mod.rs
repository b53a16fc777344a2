//! What the daemon tests share: configuration files in a per-process
//! directory, daemons started as child processes with their stderr read
//! line by line, and the operator CLI run against them.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The test's directory for configurations and sockets.
pub fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xrelay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A control socket path for daemon `name`.
pub fn socket_path(name: &str) -> PathBuf {
    dir().join(format!("{name}.sock"))
}

/// Writes configuration `name` and returns its path.
pub fn write(name: &str, text: &str) -> PathBuf {
    let path = dir().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A UDP port free on loopback right now.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `xrelay ARGS`.
pub fn xrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `xrelay ARGS --socket SOCKET` and expects success; returns stdout.
pub fn cli(socket: &Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    let socket = socket.display().to_string();
    all.extend(["--socket", &socket]);
    let output = xrelay(&all);
    assert!(
        output.status.success(),
        "xrelay {all:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `xrelay ARGS --socket SOCKET` and expects failure; returns stderr.
pub fn cli_fails(socket: &Path, args: &[&str]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    let socket = socket.display().to_string();
    all.extend(["--socket", &socket]);
    let output = xrelay(&all);
    assert_eq!(output.status.code(), Some(1), "xrelay {all:?} should fail");
    String::from_utf8(output.stderr).unwrap()
}

/// The daemon's `stats --json`.
pub fn stats(socket: &Path) -> serde_json::Value {
    serde_json::from_str(&cli(socket, &["stats", "--json"])).unwrap()
}

/// The stats entry of peer `name`.
pub fn peer<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no peer {name} in {stats}"))
}

/// Polls `condition` for up to 10 s.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within 10 s: {what}");
}

/// A daemon (`xrelay run`) and its stderr, line by line; killed on drop.
pub struct Daemon {
    /// The process.
    pub child: Child,
    lines: Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Daemon {
    /// `xrelay run CONFIG`.
    pub fn start(config: &Path) -> Daemon {
        Daemon::spawn(
            Command::new(env!("CARGO_BIN_EXE_xrelay"))
                .arg("run")
                .arg(config),
        )
    }

    /// `xrelay run CONFIG` inside network namespace `ns`.
    pub fn start_in(ns: &str, config: &Path) -> Daemon {
        Daemon::spawn(
            Command::new("ip")
                .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_xrelay"), "run"])
                .arg(config),
        )
    }

    fn spawn(command: &mut Command) -> Daemon {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
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
    pub fn expect(&self, text: &str) {
        if self.seen.borrow().iter().any(|line| line.contains(text)) {
            return;
        }
        self.expect_again(text);
    }

    /// Like [`Daemon::expect`], but only lines that have not been seen.
    pub fn expect_again(&self, text: &str) {
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
        panic!(
            "no new line with {text:?} within 10 s; saw {:#?}",
            self.seen.borrow()
        );
    }

    /// Sends `signal` (`HUP`, `TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, and the exit status must be success.
    pub fn stop(mut self) {
        self.signal("TERM");
        self.expect("SIGTERM: stopping");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
