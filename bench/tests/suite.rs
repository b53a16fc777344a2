//! `xrelay-bench run` as users run it (as root, in namespaces it makes):
//! a short run of a few scenarios on every backend writes the table with
//! ratios and targets, the JSON in the documented shape, HdrHistogram
//! percentile files and the plots. The figures themselves are never
//! asserted: these machines are shared and noisy.

use std::process::Command;

#[test]
fn a_short_run_writes_table_json_percentiles_and_plots() {
    let dir = std::env::temp_dir().join(format!("xrelay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let json = dir.join("out/results.json");
    let plots = dir.join("plots");
    let output = Command::new(env!("CARGO_BIN_EXE_xrelay-bench"))
        .args(["run", "--quick", "--seconds", "0.2", "--runs", "2"])
        .args(["--only", "raw_frames", "--only", "signal_throughput"])
        .args(["--only", "rpc_latency_closed", "--only", "rom_update_1KiB"])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "2 rounds (median rates, latencies of all rounds together)",
        "signal throughput xdp / udp",
        "RPC round trip p50 xdp / raw_xdp ping-pong",
        "rpc_latency_closed       raw_xdp",
        "rpc_latency_closed       raw_udp",
        "RPC round trip p50 raw_xdp / raw_udp",
    ] {
        assert!(stdout.contains(line), "{line:?} missing in:\n{stdout}");
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["machine"]["cores"].as_u64() >= Some(1), "{report}");
    assert_eq!(report["runs"], 2, "{report}");
    let scenarios = report["scenarios"].as_array().unwrap();
    let find = |name: &str, backend: &str| {
        scenarios
            .iter()
            .find(|s| s["name"] == name && s["backend"] == backend)
            .unwrap_or_else(|| panic!("no {name} on {backend} in {report}"))
    };
    for backend in ["xdp", "udp"] {
        assert!(find("signal_throughput", backend)["frames_per_s"].as_f64() > Some(0.0));
        assert!(find("rom_update_1KiB", backend)["bytes_per_s"].as_f64() > Some(0.0));
    }
    assert!(find("raw_frames", "raw_xdp")["frames_per_s"].as_f64() > Some(0.0));
    for backend in ["raw_xdp", "raw_udp", "xdp", "udp"] {
        let s = find("rpc_latency_closed", backend);
        let p50 = s["p50_ns"].as_u64().unwrap();
        let p99 = s["p99_ns"].as_u64().unwrap();
        let p999 = s["p999_ns"].as_u64().unwrap();
        let max = s["max_ns"].as_u64().unwrap();
        assert!(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{s}");
    }
    assert!(report["ratios"]["signal_throughput"]["xdp_udp_throughput"].as_f64() > Some(0.0));
    let closed = &report["ratios"]["rpc_latency_closed"];
    for ratio in [
        "xdp_udp_p50",
        "xdp_raw_p50",
        "udp_raw_udp_p50",
        "raw_xdp_raw_udp_p50",
    ] {
        assert!(closed[ratio].as_f64() > Some(0.0), "{ratio} in {closed}");
    }

    // Percentile files in HdrHistogram's text format, and the plots.
    let hgrm = std::fs::read_to_string(plots.join("rpc_latency_closed.xdp.hgrm")).unwrap();
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("#[Max"),
        "{hgrm}"
    );
    let rows: Vec<f64> = hgrm
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert!(rows.windows(2).all(|w| w[0] <= w[1]) && rows.len() > 10);
    for file in [
        "latency_rpc_latency_closed.svg",
        "latency_rpc_latency_closed.png",
        "throughput_frames.svg",
        "throughput_frames.png",
        "throughput_bytes.png",
    ] {
        let bytes = std::fs::read(plots.join(file)).unwrap();
        assert!(bytes.len() > 1000, "{file} is {} bytes", bytes.len());
    }
    let png = std::fs::read(plots.join("latency_rpc_latency_closed.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(plots.join("latency_rpc_latency_closed.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("xdp") && svg.contains("udp"));
    let _ = std::fs::remove_dir_all(&dir);
}
