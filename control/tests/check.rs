//! `xrelay check CONFIG`: the annotated example passes; broken
//! configurations are refused with exit status 2 and messages that name the
//! file, the line and the field.

use std::path::PathBuf;
use std::process::Command;

const GOOD: &str = r#"
[node]
name = "a"
address = "198.18.0.1"

[[peer]]
name = "b"
address = "198.18.0.2"
key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

[[export.rpc]]
label = "kv"
interface = "kv-store"

[[route]]
service = "rpc"
label = "app -> kv"
peer = "b"

[[policy]]
peer = "b"
rpc = ["kv"]
"#;

/// Writes `text` to a fresh file and runs `xrelay check` on it.
fn check(name: &str, text: &str) -> (PathBuf, i32, String, String) {
    let dir = std::env::temp_dir().join(format!("xrelay-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    (
        path,
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `GOOD` with `from` replaced by `to` (which must occur).
fn broken(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn the_annotated_example_and_a_minimal_config_pass() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/node-a.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["check", example])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("ok: node \"a\", 2 peers, 3 exports, 3 routes"),
        "{stdout}"
    );
    // Authentication off is said loudly.
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("WARNING: authentication is OFF for peer \"bench\""));

    let (_, code, stdout, stderr) = check("good", GOOD);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn broken_configs_name_file_line_and_field() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown-key",
            broken("name = \"a\"", "name = \"a\"\ncolour = \"blue\""),
            ":4: unknown field `colour`",
        ),
        (
            "duplicate-peer",
            format!(
                "{GOOD}\n[[peer]]\nname = \"b\"\naddress = \"198.18.0.9\"\nauthenticate = false\n"
            ),
            ":25: peer[1].name: \"b\" is already peer[0]",
        ),
        (
            "unknown-route-peer",
            broken(
                "label = \"app -> kv\"\npeer = \"b\"",
                "label = \"app -> kv\"\npeer = \"c\"",
            ),
            ":18: route[0].peer: no peer named \"c\"",
        ),
        (
            "same-address-and-port",
            broken("address = \"198.18.0.2\"", "address = \"198.18.0.1\""),
            ":8: peer[0].address: 198.18.0.1:9555 is already \"a\"'s",
        ),
        (
            "malformed-key",
            broken("key = \"0001", "key = \"zz01"),
            ":9: peer[0].key: must be 64 hex digits",
        ),
        (
            "bad-address",
            broken("address = \"198.18.0.1\"", "address = \"198.18.0.300\""),
            ":4: node.address: \"198.18.0.300\" is not an IPv4 address",
        ),
        (
            "policy-for-unexported",
            broken("rpc = [\"kv\"]", "rpc = [\"kv\", \"nope\"]"),
            ":22: policy[0].rpc[1]: \"nope\" is not exported",
        ),
        (
            "wrong-type",
            broken("address = \"198.18.0.1\"", "address = 42"),
            ":4: invalid type: integer `42`, expected a string",
        ),
        (
            "metrics-off-loopback",
            broken(
                "address = \"198.18.0.1\"",
                "address = \"198.18.0.1\"\nmetrics = \"198.18.0.1:9464\"",
            ),
            ":5: node.metrics: 198.18.0.1:9464 is not a loopback address",
        ),
        (
            "two-queues",
            broken(
                "address = \"198.18.0.1\"",
                "address = \"198.18.0.1\"\nqueues = [{ queue = 0 }, { queue = 1 }]",
            ),
            ":5: node.queues[1]: several queues need AF_XDP",
        ),
        (
            "missing-rom-file",
            format!("{GOOD}\n[[export.rom]]\nlabel = \"config\"\nfile = \"/nonexistent/config.txt\"\n"),
            ":26: export.rom[0].file: /nonexistent/config.txt: No such file or directory",
        ),
        (
            "two-selectors",
            broken("label = \"app -> kv\"", "label = \"app -> kv\"\ndefault = true"),
            ":19: route[0]: needs exactly one of label, label_prefix, label_suffix or default = true",
        ),
    ];
    for (name, text, expected) in cases {
        let (path, code, stdout, stderr) = check(name, &text);
        assert_eq!(code, 2, "{name}: {stdout}{stderr}");
        let want = format!("{}{expected}", path.display());
        assert!(
            stderr.contains(&want),
            "{name}: expected {want:?} in:\n{stderr}"
        );
    }
}

#[test]
fn an_unreadable_file_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_xrelay"))
        .args(["check", "/nonexistent/xrelay.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("/nonexistent/xrelay.toml: cannot read:"),
        "{stderr}"
    );
}
