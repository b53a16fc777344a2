//! `xrelay run CONFIG` as an operator uses it: two daemons over UDP on
//! loopback with authenticated frames find each other; SIGHUP with a
//! broken file keeps the old configuration running; SIGTERM stops cleanly;
//! a broken configuration starts nothing and exits 2.

#[expect(dead_code, reason = "the other daemon tests use the rest")]
mod support;

use std::net::UdpSocket;
use std::process::Command;

use support::{free_port, socket_path, write, Daemon};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

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
    a.expect("keys, policy and routes applied");

    // A broken file on SIGHUP is refused; the node keeps running.
    std::fs::write(&path_a, "[node]\nname = 1\n").unwrap();
    a.signal("HUP");
    a.expect("the old configuration keeps running");
    // A valid one is applied.
    std::fs::write(&path_a, config("a", pa, "b", pb)).unwrap();
    a.signal("HUP");
    a.expect_again("keys, policy and routes applied");

    a.stop();
    b.stop();
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
