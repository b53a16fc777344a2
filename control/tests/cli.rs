//! The `xrelay` binary as a user runs it: the two-node demo passes its own
//! checks on every transport it offers (AF_XDP in namespaces it creates,
//! as root) and prints the documented JSON;
//! bad options are refused with status 2; `decode` reads frames and
//! refuses garbage with status 2.

use std::process::Command;

fn xrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(args)
        .output()
        .expect("the xrelay binary runs")
}

/// Runs `xrelay demo ARGS --json`, checks the exit status and the exact
/// shape of the one JSON object it prints, and returns it.
fn demo_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["demo"];
    all.extend_from_slice(args);
    all.push("--json");
    let output = xrelay(&all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo {args:?} failed: {stdout}{stderr}"
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "exactly one line of JSON: {stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&json), ["ok", "rom", "rpc", "signal", "transport"]);
    assert_eq!(keys(&json["rpc"]), ["calls", "replies_ok"]);
    assert_eq!(keys(&json["signal"]), ["delivered", "submitted"]);
    assert_eq!(
        keys(&json["rom"]),
        ["final_version_match", "largest_bytes", "versions_published"]
    );
    json
}

fn check_figures(json: &serde_json::Value, transport: &str) {
    assert_eq!(json["ok"], true);
    assert_eq!(json["transport"], transport);
    let calls = json["rpc"]["calls"].as_u64().unwrap();
    assert!(calls >= 1000, "{json}");
    assert_eq!(json["rpc"]["replies_ok"].as_u64(), Some(calls));
    let submitted = json["signal"]["submitted"].as_u64().unwrap();
    assert!(submitted > 0);
    assert_eq!(json["signal"]["delivered"].as_u64(), Some(submitted));
    assert!(json["rom"]["versions_published"].as_u64().unwrap() >= 3);
    assert_eq!(json["rom"]["final_version_match"], true);
    assert!(json["rom"]["largest_bytes"].as_u64().unwrap() >= 4 * 1024 * 1024);
}

#[test]
fn demo_on_its_default_transport_uses_af_xdp_as_root() {
    // CI and these machines run as root: `auto` must pick AF_XDP.
    check_figures(&demo_json(&[]), "xdp");
}

#[test]
fn demo_on_mem_passes_with_the_documented_json() {
    check_figures(&demo_json(&["--transport", "mem"]), "mem");
}

#[test]
fn demo_on_xdp_passes() {
    check_figures(&demo_json(&["--transport", "xdp"]), "xdp");
}

#[test]
fn demo_on_a_lossy_mem_network_passes() {
    check_figures(
        &demo_json(&["--transport", "mem", "--loss", "0.1", "--seed", "7"]),
        "mem",
    );
}

#[test]
fn demo_on_udp_passes() {
    check_figures(&demo_json(&["--transport", "udp"]), "udp");
}

#[test]
fn demo_prints_a_readable_summary() {
    let output = xrelay(&["demo", "--keys", "100"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("two nodes over xdp (AF_XDP on veth"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rpc:    351 calls, 351 replies as expected (50 typed NotFound"),
        "{stdout}"
    );
    assert!(stdout.contains("ok: every check passed"), "{stdout}");
}

#[test]
fn demo_refuses_bad_options() {
    let output = xrelay(&["demo", "--transport", "udp", "--loss", "0.1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--loss applies to --transport mem only")
    );
    let output = xrelay(&["demo", "--loss", "1.5"]);
    assert_eq!(output.status.code(), Some(2));
    let output = xrelay(&["demo", "--transport", "carrier-pigeon"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn decode_prints_fields_and_rejects_garbage() {
    let output = xrelay(&[
        "decode",
        "5852 01 14 20 00 1000 04000000 0900000000000000 03000000 00000000 e803000000000000",
    ]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("SIGNAL channel 4 sequence 9"), "{stdout}");
    assert!(stdout.contains("count: 1000"), "{stdout}");

    let output = xrelay(&["decode", "5852 01"]);
    assert_eq!(output.status.code(), Some(2));
    let output = xrelay(&["decode", "zz"]);
    assert_eq!(output.status.code(), Some(2));
}

/// Runs `xrelay ARGS` as the unprivileged user `nobody` (util-linux's
/// setpriv; the tests run as root).
fn xrelay_unprivileged(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_xrelay"))
        .args(args)
        .output()
        .expect("setpriv runs (util-linux)")
}

#[test]
fn without_privileges_auto_falls_back_to_udp_and_xdp_says_why() {
    let output = xrelay_unprivileged(&["demo", "--keys", "50", "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("AF_XDP is not available here"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line of notice: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["transport"], "udp");
    assert_eq!(json["ok"], true);

    let output = xrelay_unprivileged(&["demo", "--transport", "xdp", "--keys", "50"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs root"), "{stderr}");
}
