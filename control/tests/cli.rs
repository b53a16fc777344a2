//! The `xrelay` binary as a user runs it: the demo passes its own checks,
//! and `decode` reads frames and refuses garbage with status 2.

use std::process::Command;

fn xrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(args)
        .output()
        .expect("the xrelay binary runs")
}

#[test]
fn demo_runs_every_call_through_the_wire_and_passes() {
    let output = xrelay(&["demo", "--calls", "200", "--mtu", "600"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("calls: 701 (200 put, 400 get, 100 delete, 1 stats)"),
        "{stdout}"
    );
    assert!(stdout.contains("100 NotFound"), "{stdout}");
    assert!(stdout.contains("ok: every check passed"));
}

#[test]
fn demo_rejects_an_impossible_mtu() {
    let output = xrelay(&["demo", "--mtu", "40"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--mtu must be between"));
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
