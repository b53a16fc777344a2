//! Prometheus text exposition of a running daemon at
//! `http://ADDRESS/metrics` (`node.metrics`, loopback only): the same
//! counters and latency percentiles as `xrelay stats`, flattened into
//! metric families named `xrelay_*`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::daemon::Daemon;
use crate::socket::stats_json;

/// The metrics endpoint: serves until dropped.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `daemon`'s metrics on `address` (`IP:PORT`).
    pub fn start(address: &str, daemon: Arc<Daemon>) -> Result<MetricsServer, String> {
        let server = tiny_http::Server::http(address).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("xrelay-metrics".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    let response = if request.url() == "/metrics" {
                        let body = exposition(&stats_json(&daemon, &daemon.reports()));
                        let response = tiny_http::Response::from_string(body);
                        match tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"text/plain; version=0.0.4"[..],
                        ) {
                            Ok(header) => response.with_header(header),
                            Err(()) => response,
                        }
                    } else {
                        tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                    };
                    let _ = request.respond(response);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(MetricsServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Label values are names from the configuration: escape as the format
/// asks.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The stats object (see [`stats_json`]) in Prometheus text format.
pub fn exposition(stats: &Value) -> String {
    let mut out = String::new();
    let node = escape(stats["node"].as_str().unwrap_or(""));
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP xrelay_{name} {help}");
        let _ = writeln!(out, "# TYPE xrelay_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "xrelay_{name}{{node=\"{node}\"{labels}}} {value}");
        }
    };
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    family(
        "frames_received_total",
        "counter",
        "Relay frames handed to the node.",
        &[(String::new(), u(&stats["frames"]["received"]))],
    );
    family(
        "frames_sent_total",
        "counter",
        "Relay frames the node sent.",
        &[(String::new(), u(&stats["frames"]["sent"]))],
    );
    let by_reason: Vec<(String, u64)> = stats["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(reason, v)| (format!(",reason=\"{reason}\""), u(v)))
        .collect();
    family(
        "drops_total",
        "counter",
        "Frames and requests dropped, by reason.",
        &by_reason,
    );
    let sessions: Vec<(String, u64)> = stats["sessions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(event, v)| (format!(",event=\"{event}\""), u(v)))
        .collect();
    family(
        "session_events_total",
        "counter",
        "Session opens refused, revoked and the like.",
        &sessions,
    );
    let queues = stats["queues"].as_array().cloned().unwrap_or_default();
    for counter in [
        "received",
        "sent",
        "dropped",
        "send_stalls",
        "send_errors",
        "wakeups",
        "handoff_sent",
        "handoff_dropped",
        "handoff_received",
    ] {
        let samples: Vec<(String, u64)> = queues
            .iter()
            .map(|q| (format!(",queue=\"{}\"", u(&q["queue"])), u(&q[counter])))
            .collect();
        family(
            &format!("queue_{counter}_total"),
            "counter",
            &format!("Transport counter {counter} per queue."),
            &samples,
        );
    }
    let peers = stats["peers"].as_array().cloned().unwrap_or_default();
    let peer_label = |p: &Value| format!(",peer=\"{}\"", escape(p["name"].as_str().unwrap_or("")));
    let up: Vec<(String, u64)> = peers
        .iter()
        .map(|p| (peer_label(p), u64::from(p["state"] == "up")))
        .collect();
    family(
        "peer_up",
        "gauge",
        "1 while the peer's heartbeats arrive.",
        &up,
    );
    for counter in ["frames_received", "frames_sent", "revoked"] {
        let samples: Vec<(String, u64)> = peers
            .iter()
            .map(|p| (peer_label(p), u(&p[counter])))
            .collect();
        family(
            &format!("peer_{counter}_total"),
            "counter",
            &format!("Per-peer {counter}."),
            &samples,
        );
    }
    let drops: Vec<(String, u64)> = peers
        .iter()
        .flat_map(|p| {
            let label = peer_label(p);
            p["drops"]
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(reason, v)| (format!("{label},reason=\"{reason}\""), u(v)))
                .collect::<Vec<_>>()
        })
        .collect();
    family(
        "peer_drops_total",
        "counter",
        "Frames from the peer dropped, by reason.",
        &drops,
    );
    for (histogram, help) in [
        ("heartbeat_rtt", "Heartbeat round trip, nanoseconds."),
        (
            "rpc_call",
            "RPC call round trip from this node, nanoseconds.",
        ),
    ] {
        let mut samples = Vec::new();
        for p in &peers {
            let h = &p["latency"][histogram];
            for (quantile, key) in [
                ("0.5", "p50_ns"),
                ("0.9", "p90_ns"),
                ("0.99", "p99_ns"),
                ("0.999", "p999_ns"),
                ("1", "max_ns"),
            ] {
                samples.push((
                    format!("{},quantile=\"{quantile}\"", peer_label(p)),
                    u(&h[key]),
                ));
            }
        }
        family(
            &format!("peer_{histogram}_ns"),
            "gauge",
            &format!("{help} Quantiles since start."),
            &samples,
        );
        let counts: Vec<(String, u64)> = peers
            .iter()
            .map(|p| (peer_label(p), u(&p["latency"][histogram]["count"])))
            .collect();
        family(
            &format!("peer_{histogram}_samples_total"),
            "counter",
            "Samples behind the quantiles.",
            &counts,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_is_name_labels_value_and_families_are_declared() {
        let stats = serde_json::json!({
            "node": "b\"x",
            "frames": {"received": 5, "sent": 6},
            "drops": {"auth_failed": 2, "policy_denied": 3},
            "sessions": {"revoked": 1},
            "queues": [{"queue": 0, "received": 5, "sent": 6, "dropped": 0,
                        "send_stalls": 0, "send_errors": 0, "wakeups": 9}],
            "peers": [{"name": "a", "state": "up", "frames_received": 4,
                       "frames_sent": 4, "revoked": 0,
                       "drops": {"replayed": 7},
                       "latency": {"heartbeat_rtt": {"count": 3, "p50_ns": 1000,
                           "p90_ns": 2000, "p99_ns": 3000, "p999_ns": 3000, "max_ns": 3000},
                           "rpc_call": {"count": 0}}}],
        });
        let text = exposition(&stats);
        assert!(text.contains("xrelay_drops_total{node=\"b\\\"x\",reason=\"policy_denied\"} 3\n"));
        assert!(text.contains(
            "xrelay_peer_drops_total{node=\"b\\\"x\",peer=\"a\",reason=\"replayed\"} 7\n"
        ));
        assert!(text.contains(
            "xrelay_peer_heartbeat_rtt_ns{node=\"b\\\"x\",peer=\"a\",quantile=\"0.99\"} 3000\n"
        ));
        assert!(text.contains("xrelay_peer_up{node=\"b\\\"x\",peer=\"a\"} 1\n"));
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap_or("").to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, rest) = line.split_once('{').expect("labels");
            assert!(declared.contains(name), "{name} undeclared");
            let (_, value) = rest.rsplit_once("} ").expect("value");
            value.parse::<u64>().expect("integer value");
        }
    }
}
