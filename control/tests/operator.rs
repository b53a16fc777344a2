//! The operator CLI against two running daemons over UDP on loopback:
//! `rom publish|get|watch`, `signal send|wait` and `rpc call` reach the
//! peer the routes name; a request no route matches is refused and
//! counted; `stats` has per-peer counters and latency percentiles; the
//! Prometheus endpoint serves the same; `reload` adds exports, peers and
//! routes and revokes what the new policy withdraws, closing a running
//! watch with a clear error.

#[expect(dead_code, reason = "the namespace tests use the rest")]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use support::{cli, cli_fails, free_port, peer, socket_path, stats, write, Daemon};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn client(port: u16, server_port: u16, metrics: u16, extra_route: bool) -> String {
    let socket = socket_path("op-a").display().to_string();
    let extra = if extra_route {
        "[[route]]\nservice = \"rom\"\nlabel_prefix = \"ex\"\npeer = \"b\"\n"
    } else {
        ""
    };
    format!(
        r#"
[node]
name = "a"
address = "127.0.0.1"
transport = "udp"
port = {port}
control_socket = "{socket}"
metrics = "127.0.0.1:{metrics}"

[[peer]]
name = "b"
address = "127.0.0.1"
port = {server_port}
key = "{KEY}"

[[route]]
service = "rom"
label = "config"
peer = "b"

[[route]]
service = "rpc"
label_prefix = "app -> "
peer = "b"
remote = "kv"

[[route]]
service = "signal"
default = true
peer = "b"
{extra}"#
    )
}

fn server(port: u16, client_port: u16, file: &str, extra: bool, grant_rom: bool) -> String {
    let socket = socket_path("op-b").display().to_string();
    let (export, granted) = match (extra, grant_rom) {
        (true, true) => (
            "[[export.rom]]\nlabel = \"extra\"\n",
            r#"["config", "extra"]"#,
        ),
        (true, false) => ("[[export.rom]]\nlabel = \"extra\"\n", "[]"),
        (false, _) => ("", r#"["config"]"#),
    };
    format!(
        r#"
[node]
name = "b"
address = "127.0.0.1"
transport = "udp"
port = {port}
control_socket = "{socket}"

[[peer]]
name = "a"
address = "127.0.0.1"
port = {client_port}
key = "{KEY}"

[[export.rpc]]
label = "kv"
interface = "kv-store"

[[export.rom]]
label = "config"
file = "{file}"

[[export.signal]]
label = "events"

{export}
[[policy]]
peer = "a"
rpc = ["kv"]
rom = {granted}
signal = ["events"]
"#
    )
}

#[test]
fn the_operator_cli_reaches_routed_services_and_reload_changes_them() {
    let (pa, pb, metrics) = (free_port(), free_port(), free_port());
    let first = support::dir().join("config-v1.txt");
    std::fs::write(&first, "mode = 1\n").unwrap();
    let first_text = first.display().to_string();
    let path_a = write("op-a", &client(pa, pb, metrics, false));
    let path_b = write("op-b", &server(pb, pa, &first_text, false, true));
    let a = Daemon::start(&path_a);
    let b = Daemon::start(&path_b);
    // "running" comes once the control socket is there.
    a.expect("node \"a\" running on udp");
    b.expect("node \"b\" running on udp");
    a.expect("peer b: Up");
    b.expect("peer a: Up");
    let (sa, sb) = (socket_path("op-a"), socket_path("op-b"));

    // ROM: the file published at start, then versions published by the
    // operator, each seen by a watcher in order.
    assert_eq!(cli(&sa, &["rom", "get", "config"]), "mode = 1\n");
    let mut watch = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args([
            "rom", "watch", "config", "--json", "--count", "3", "--socket",
        ])
        .arg(&sa)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    let v1 = next();
    assert_eq!(v1["bytes"], 9);
    let second = support::dir().join("config-v2.txt");
    std::fs::write(&second, "mode = 2, a longer line\n").unwrap();
    let published = cli(
        &sb,
        &["rom", "publish", "config", &second.display().to_string()],
    );
    assert!(
        published.starts_with("published config version"),
        "{published}"
    );
    let v2 = next();
    assert_eq!(v2["bytes"], 24);
    assert_eq!(
        v2["blake3"],
        blake3::hash(b"mode = 2, a longer line\n").to_hex().as_str()
    );
    // From standard input.
    let mut publish = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["rom", "publish", "config", "-", "--socket"])
        .arg(&sb)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    publish
        .stdin
        .take()
        .unwrap()
        .write_all(b"mode = 3\n")
        .unwrap();
    assert!(publish.wait().unwrap().success());
    let v3 = next();
    assert!(v3["version"].as_u64() > v2["version"].as_u64());
    assert!(v2["version"].as_u64() > v1["version"].as_u64());
    assert!(watch.wait().unwrap().success());
    assert_eq!(cli(&sa, &["rom", "get", "config"]), "mode = 3\n");

    // RPC through a prefix route with a remote label.
    cli(&sa, &["rpc", "call", "app -> kv", "put", "colour", "blue"]);
    assert_eq!(
        cli(&sa, &["rpc", "call", "app -> kv", "get", "colour"]),
        "blue\n"
    );
    let missing = cli_fails(&sa, &["rpc", "call", "app -> kv", "get", "size"]);
    assert!(missing.contains("not found"), "{missing}");

    // Signals: sent through the default route, acknowledged, counted.
    let wait = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["signal", "wait", "events", "--timeout", "10", "--socket"])
        .arg(&sb)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sent = cli(&sa, &["signal", "send", "events", "5"]);
    assert!(sent.starts_with("sent 5 to events"), "{sent}");
    let output = wait.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "5\n");

    // No route: refused and counted; nothing was sent for it.
    let refused = cli_fails(&sa, &["rpc", "call", "nowhere", "stats"]);
    assert!(
        refused.contains("no route for rpc \"nowhere\""),
        "{refused}"
    );
    let now = stats(&sa);
    assert_eq!(now["drops"]["no_route"], 1, "{now}");
    let b_seen_by_a = peer(&now, "b");
    assert_eq!(b_seen_by_a["state"], "up");
    assert!(b_seen_by_a["latency"]["heartbeat_rtt"]["count"].as_u64() > Some(0));
    assert!(b_seen_by_a["latency"]["heartbeat_rtt"]["p50_ns"].as_u64() > Some(0));
    assert_eq!(b_seen_by_a["latency"]["rpc_call"]["count"], 3, "{now}");
    assert!(b_seen_by_a["frames_received"].as_u64() > Some(0));
    assert_eq!(now["queues"][0]["transport"], "udp");

    // The same figures for Prometheus, on loopback.
    let mut http = TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    http.read_to_string(&mut page).unwrap();
    assert!(page.lines().next().unwrap().ends_with(" 200 OK"), "{page}");
    assert!(
        page.contains("xrelay_peer_up{node=\"a\",peer=\"b\"} 1\n"),
        "{page}"
    );
    assert!(
        page.contains("xrelay_drops_total{node=\"a\",reason=\"no_route\"} 1\n"),
        "{page}"
    );

    // Reload: b exports a new module granted to a, a routes to it.
    std::fs::write(&path_b, server(pb, pa, &first_text, true, true)).unwrap();
    let notes = cli(&sb, &["reload"]);
    assert!(notes.contains("keys, policy and routes applied"), "{notes}");
    std::fs::write(&path_a, client(pa, pb, metrics, true)).unwrap();
    cli(&sa, &["reload"]);
    cli(
        &sb,
        &["rom", "publish", "extra", &second.display().to_string()],
    );
    assert_eq!(
        cli(&sa, &["rom", "get", "extra"]),
        "mode = 2, a longer line\n"
    );
    // Removed and added again: the export the datapath still holds is
    // granted again, and later reloads keep working.
    std::fs::write(&path_b, server(pb, pa, &first_text, false, true)).unwrap();
    let notes = cli(&sb, &["reload"]);
    assert!(notes.contains("export \"extra\" removed"), "{notes}");
    assert!(cli_fails(&sa, &["rom", "get", "extra"]).contains("Denied"));
    std::fs::write(&path_b, server(pb, pa, &first_text, true, true)).unwrap();
    cli(&sb, &["reload"]);
    assert_eq!(
        cli(&sa, &["rom", "get", "extra"]),
        "mode = 2, a longer line\n"
    );

    // Reload withdrawing ROM from a: a running watch ends with the reason,
    // while RPC, still granted, goes on.
    let watch = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["rom", "watch", "config", "--json", "--socket"])
        .arg(&sa)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = watch;
    let mut watch_lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let current: serde_json::Value =
        serde_json::from_str(&watch_lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(current["version"], v3["version"]);
    std::fs::write(&path_b, server(pb, pa, &first_text, true, false)).unwrap();
    cli(&sb, &["reload"]);
    assert!(watch_lines.next().is_none());
    let mut stderr = String::new();
    watch
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(watch.wait().unwrap().code(), Some(1));
    assert!(stderr.contains("Revoked"), "{stderr}");
    assert_eq!(
        cli(&sa, &["rpc", "call", "app -> kv", "get", "colour"]),
        "blue\n"
    );
    let denied = cli_fails(&sa, &["rom", "get", "config"]);
    assert!(denied.contains("Denied"), "{denied}");
    let b_stats = stats(&sb);
    assert!(
        b_stats["sessions"]["revoked"].as_u64() >= Some(1),
        "{b_stats}"
    );
    assert!(peer(&b_stats, "a")["drops"]["policy_denied"].as_u64() >= Some(1));

    a.stop();
    b.stop();
}
