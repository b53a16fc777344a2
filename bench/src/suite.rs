//! The benchmark suite: every scenario of [`crate::scenarios`] on every
//! backend it applies to, in one run, with a progress bar; then the
//! console table with the ratios and the targets, and on request the JSON
//! file, HdrHistogram percentile files and plots ([`crate::plot`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use xrelay_datapath::node::{Node, NodeConfig};

use crate::frames;
use crate::pair::Backend;
use crate::scenarios::{self, Load, Measurement};

/// Options of the suite.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Smoke check: short windows and fewer points (under two minutes).
    #[arg(long)]
    pub quick: bool,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write latency and throughput plots (SVG and PNG) and the
    /// HdrHistogram percentile files into DIR.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Write the HdrHistogram percentile files (`.hgrm`) into DIR.
    #[arg(long, value_name = "DIR")]
    pub histograms: Option<PathBuf>,
    /// Only scenarios whose name starts with one of these.
    #[arg(long, value_name = "PREFIX")]
    pub only: Vec<String>,
    /// Seconds per measurement (default: 3, or 0.5 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Measure every scenario this many times, the whole list once per
    /// round so that backends alternate; report the median rate and the
    /// percentiles of all rounds' latencies together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Also time every datapath iteration per stage (RX poll, engine,
    /// handler, TX submit, TX completion) during a closed-loop RPC run on
    /// xdp and udp, and report a histogram per stage.
    #[arg(long)]
    pub profile: bool,
}

/// One side's stage histograms from a profiled run.
struct Profiled {
    backend: Backend,
    side: &'static str,
    stages: crate::pair::Stages,
}

/// One measurement to make.
struct Job {
    name: String,
    backend: Backend,
    run: Box<dyn Fn() -> Result<Measurement, String>>,
}

const RELAY: [Backend; 2] = [Backend::Xdp, Backend::Udp];

fn jobs(quick: bool, seconds: f64) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut add =
        |name: String, backend: Backend, run: Box<dyn Fn() -> Result<Measurement, String>>| {
            jobs.push(Job { name, backend, run });
        };
    add(
        "raw_frames".into(),
        Backend::RawXdp,
        Box::new(move || frame_rate("raw_frames", Backend::RawXdp, seconds, None)),
    );
    add(
        "raw_frames_full".into(),
        Backend::RawXdp,
        Box::new(move || {
            frame_rate(
                "raw_frames_full",
                Backend::RawXdp,
                seconds,
                Some(chunk_bytes()),
            )
        }),
    );
    for backend in RELAY {
        add(
            "signal_throughput".into(),
            backend,
            Box::new(move || frame_rate("signal_throughput", backend, seconds, None)),
        );
    }
    add(
        "rpc_latency_closed".into(),
        Backend::RawXdp,
        Box::new(move || scenarios::raw_ping_pong(seconds)),
    );
    add(
        "rpc_latency_closed".into(),
        Backend::RawUdp,
        Box::new(move || scenarios::raw_udp_ping_pong(seconds)),
    );
    for backend in RELAY {
        add(
            "rpc_latency_closed".into(),
            backend,
            Box::new(move || {
                scenarios::rpc("rpc_latency_closed", backend, Load::Closed, 32, seconds)
            }),
        );
    }
    let rates: &[u64] = if quick {
        &[10_000, 50_000]
    } else {
        &[10_000, 50_000, 100_000, 200_000]
    };
    for &rate in rates {
        for backend in RELAY {
            let name = format!("rpc_latency_open_{rate}");
            let n = name.clone();
            add(
                name,
                backend,
                Box::new(move || scenarios::rpc(&n, backend, Load::Open(rate), 32, seconds)),
            );
        }
    }
    for backend in RELAY {
        add(
            "rpc_throughput".into(),
            backend,
            Box::new(move || {
                scenarios::rpc("rpc_throughput", backend, Load::Window(64), 32, seconds)
            }),
        );
    }
    for (size, label) in [
        (1 << 10, "1KiB"),
        (64 << 10, "64KiB"),
        (1 << 20, "1MiB"),
        (16 << 20, "16MiB"),
    ] {
        for backend in RELAY {
            let name = format!("rom_update_{label}");
            let n = name.clone();
            // At least a second: a 16 MiB update takes a good part of one.
            let window = seconds.max(1.0);
            add(
                name,
                backend,
                Box::new(move || scenarios::rom(&n, backend, size, window)),
            );
        }
    }
    let payloads: &[usize] = if quick {
        &[16, 1024, 16384]
    } else {
        &[16, 256, 1024, 4096, 16384]
    };
    for &payload in payloads {
        for backend in RELAY {
            let name = format!("payload_{payload}");
            let n = name.clone();
            add(
                name,
                backend,
                Box::new(move || scenarios::rpc(&n, backend, Load::Window(16), payload, seconds)),
            );
        }
    }
    jobs
}

/// The bytes of content a ROM chunk carries on a 1500-byte MTU.
fn chunk_bytes() -> usize {
    Node::new(NodeConfig::new(1472)).map_or(1, |n| n.config().rom.chunk_size as usize)
}

/// A frame-rate scenario ([`frames::measure_sized`]).
fn frame_rate(
    name: &str,
    backend: Backend,
    seconds: f64,
    chunk: Option<usize>,
) -> Result<Measurement, String> {
    let rates = frames::measure_sized(backend, seconds, false, chunk)?;
    Ok(Measurement {
        name: name.to_owned(),
        backend,
        frames_per_s: Some(rates.received),
        bytes_per_s: None,
        ops_per_s: None,
        latency: None,
    })
}

/// Runs the suite.
pub fn run(args: &SuiteArgs) -> Result<(), String> {
    let seconds = args.seconds.unwrap_or(if args.quick { 0.5 } else { 3.0 });
    let jobs: Vec<Job> = jobs(args.quick, seconds)
        .into_iter()
        .filter(|j| {
            args.only.is_empty() || args.only.iter().any(|p| j.name.starts_with(p.as_str()))
        })
        .collect();
    if jobs.is_empty() {
        return Err("no scenario matches --only".into());
    }
    let profile_backends: &[Backend] = if args.profile { &RELAY } else { &[] };
    let runs = args.runs.max(1) as usize;
    let bar = indicatif::ProgressBar::new((jobs.len() * runs + profile_backends.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut rounds: Vec<Vec<Measurement>> = jobs.iter().map(|_| Vec::new()).collect();
    for round in 1..=runs {
        for (job, measured) in jobs.iter().zip(&mut rounds) {
            bar.set_message(format!(
                "{} on {} (round {round} of {runs})",
                job.name,
                job.backend.name()
            ));
            measured.push(
                (job.run)().map_err(|e| format!("{} on {}: {e}", job.name, job.backend.name()))?,
            );
            bar.inc(1);
        }
    }
    let mut results: Vec<Measurement> = rounds.into_iter().filter_map(combine).collect();
    let mut profiles = Vec::new();
    for &backend in profile_backends {
        bar.set_message(format!("profile on {}", backend.name()));
        let (measured, client, server) = scenarios::profile_rpc(backend, seconds)
            .map_err(|e| format!("profile on {}: {e}", backend.name()))?;
        results.push(measured);
        profiles.push(Profiled {
            backend,
            side: "client",
            stages: client,
        });
        profiles.push(Profiled {
            backend,
            side: "server",
            stages: server,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    print!("{}", table(&results, seconds, args.quick, runs));
    if !profiles.is_empty() {
        print!("{}", profile_table(&profiles));
    }
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut report = report_json(&results, seconds, args.quick, runs);
        if !profiles.is_empty() {
            report["profile"] = profile_json(&profiles);
        }
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        println!("JSON: {}", path.display());
    }
    for dir in [&args.histograms, &args.plot].into_iter().flatten() {
        write_hgrm(dir, &results)?;
        for p in &profiles {
            for (stage, h) in p.stages.named() {
                if !h.is_empty() {
                    let path = dir.join(format!(
                        "profile_{}_{stage}.{}.hgrm",
                        p.side,
                        p.backend.name()
                    ));
                    std::fs::write(&path, hgrm(h))
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
        }
        println!("percentile files: {}/*.hgrm", dir.display());
    }
    if let Some(dir) = &args.plot {
        crate::plot::all(dir, &results)?;
        println!("plots: {}/*.svg, *.png", dir.display());
    }
    Ok(())
}

/// The machine, for the JSON and the report.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(1, usize::from),
        "kernel": kernel,
        "memory_mib": memory_kib / 1024,
        "link": "veth pair between two network namespaces (AF_XDP copy mode, native XDP)",
    })
}

/// The percentiles reported, and their JSON keys.
const QUANTILES: [(f64, &str); 6] = [
    (0.5, "p50_ns"),
    (0.9, "p90_ns"),
    (0.99, "p99_ns"),
    (0.999, "p999_ns"),
    (0.9999, "p9999_ns"),
    (1.0, "max_ns"),
];

/// One scenario's rounds as one measurement: the median of each rate,
/// and every round's latencies in one histogram. `None` for no rounds.
fn combine(mut rounds: Vec<Measurement>) -> Option<Measurement> {
    let median = |rounds: &[Measurement], field: fn(&Measurement) -> Option<f64>| {
        let mut values: Vec<f64> = rounds.iter().filter_map(field).collect();
        values.sort_by(f64::total_cmp);
        let half = values.len() / 2;
        match values.len() {
            0 => None,
            n if n % 2 == 1 => Some(values[half]),
            _ => Some((values[half - 1] + values[half]) / 2.0),
        }
    };
    let frames_per_s = median(&rounds, |m| m.frames_per_s);
    let bytes_per_s = median(&rounds, |m| m.bytes_per_s);
    let ops_per_s = median(&rounds, |m| m.ops_per_s);
    let mut latency: Option<Histogram<u64>> = None;
    for round in &rounds {
        if let Some(h) = &round.latency {
            match &mut latency {
                Some(all) => {
                    // Same bounds everywhere (scenarios::histogram): cannot fail.
                    let _ = all.add(h);
                }
                None => latency = Some(h.clone()),
            }
        }
    }
    let mut first = rounds.drain(..).next()?;
    first.frames_per_s = frames_per_s;
    first.bytes_per_s = bytes_per_s;
    first.ops_per_s = ops_per_s;
    first.latency = latency;
    Some(first)
}

fn report_json(results: &[Measurement], seconds: f64, quick: bool, runs: usize) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .map(|m| {
            let mut v = json!({"name": m.name, "backend": m.backend.name()});
            if let Some(x) = m.frames_per_s {
                v["frames_per_s"] = json!(x.round());
            }
            if let Some(x) = m.bytes_per_s {
                v["bytes_per_s"] = json!(x.round());
            }
            if let Some(x) = m.ops_per_s {
                v["ops_per_s"] = json!(x.round());
            }
            if let Some(h) = &m.latency {
                v["samples"] = json!(h.len());
                for (q, key) in QUANTILES {
                    v[key] = json!(if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(q)
                    });
                }
                v["mean_ns"] = json!(h.mean().round());
            }
            v
        })
        .collect();
    json!({
        "machine": machine(),
        "seconds_per_measurement": seconds,
        "runs": runs,
        "quick": quick,
        "scenarios": scenarios,
        "ratios": ratios(results),
    })
}

fn find<'a>(results: &'a [Measurement], name: &str, backend: Backend) -> Option<&'a Measurement> {
    results
        .iter()
        .find(|m| m.name == name && m.backend == backend)
}

fn throughput(m: &Measurement) -> Option<f64> {
    m.frames_per_s.or(m.bytes_per_s).or(m.ops_per_s)
}

fn p50(m: &Measurement) -> Option<f64> {
    m.latency
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(|h| h.value_at_quantile(0.5) as f64)
}

/// The ratios the targets are stated in, per scenario.
fn ratios(results: &[Measurement]) -> Value {
    let mut out = serde_json::Map::new();
    let names: Vec<&str> = {
        let mut seen = Vec::new();
        for m in results {
            if !seen.contains(&m.name.as_str()) {
                seen.push(m.name.as_str());
            }
        }
        seen
    };
    for name in names {
        let (xdp, udp) = (
            find(results, name, Backend::Xdp),
            find(results, name, Backend::Udp),
        );
        let raw = find(results, name, Backend::RawXdp).or_else(|| {
            (name == "signal_throughput")
                .then(|| find(results, "raw_frames", Backend::RawXdp))
                .flatten()
        });
        let mut r = serde_json::Map::new();
        if let (Some(x), Some(u)) = (xdp, udp) {
            if let (Some(a), Some(b)) = (throughput(x), throughput(u)) {
                r.insert("xdp_udp_throughput".into(), json!(a / b));
            }
            if let (Some(a), Some(b)) = (p50(x), p50(u)) {
                r.insert("xdp_udp_p50".into(), json!(a / b));
            }
        }
        if let (Some(x), Some(w)) = (xdp, raw) {
            if let (Some(a), Some(b)) = (throughput(x), throughput(w)) {
                r.insert("xdp_raw_throughput".into(), json!(a / b));
            }
            if let (Some(a), Some(b)) = (p50(x), p50(w)) {
                r.insert("xdp_raw_p50".into(), json!(a / b));
            }
        }
        // The bare floors: what the links give with no relay logic.
        let raw_udp = find(results, name, Backend::RawUdp);
        if let (Some(u), Some(v)) = (udp, raw_udp) {
            if let (Some(a), Some(b)) = (p50(u), p50(v)) {
                r.insert("udp_raw_udp_p50".into(), json!(a / b));
            }
        }
        if let (Some(w), Some(v)) = (raw, raw_udp) {
            if let (Some(a), Some(b)) = (p50(w), p50(v)) {
                r.insert("raw_xdp_raw_udp_p50".into(), json!(a / b));
            }
        }
        if !r.is_empty() {
            out.insert(name.to_owned(), Value::Object(r));
        }
    }
    // What the frame rate allows a ROM transfer: the rate of full-size
    // frames on this link (bare AF_XDP, ROM_CHUNK frames of one chunk)
    // times the chunk's bytes.
    if let (Some(rom), Some(frames)) = (
        find(results, "rom_update_16MiB", Backend::Xdp),
        find(results, "raw_frames_full", Backend::RawXdp),
    ) {
        let chunk = chunk_bytes() as f64;
        if let (Some(bytes), Some(fps)) = (rom.bytes_per_s, frames.frames_per_s) {
            out.insert(
                "rom_16MiB_of_frame_rate".into(),
                json!({"ratio": bytes / (fps * chunk), "chunk_bytes": chunk, "frames_per_s": fps}),
            );
        }
    }
    Value::Object(out)
}

fn human(x: f64, unit: &str) -> String {
    if x >= 1e9 {
        format!("{:.2} G{unit}", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M{unit}", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k{unit}", x / 1e3)
    } else {
        format!("{x:.0} {unit}")
    }
}

fn micros(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// The console table, ratios and targets.
fn table(results: &[Measurement], seconds: f64, quick: bool, runs: usize) -> String {
    let mut out = String::new();
    let m = machine();
    let _ = writeln!(
        out,
        "xrelay-bench: {} s per measurement{}{}; {} ({} cores), kernel {}",
        seconds,
        if runs > 1 {
            format!(", {runs} rounds (median rates, latencies of all rounds together)")
        } else {
            String::new()
        },
        if quick { " (--quick)" } else { "" },
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "scenario",
        "backend",
        "throughput",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9",
        "p99.99",
        "max us"
    );
    for r in results {
        let tp = match (r.frames_per_s, r.bytes_per_s, r.ops_per_s) {
            (Some(f), _, _) => human(f, "f/s"),
            (None, Some(b), _) => human(b, "B/s"),
            (None, None, Some(o)) => human(o, "op/s"),
            _ => String::new(),
        };
        let _ = write!(out, "{:<24} {:<8} {:>14}", r.name, r.backend.name(), tp);
        if let Some(h) = r.latency.as_ref().filter(|h| !h.is_empty()) {
            for (q, _) in QUANTILES {
                let _ = write!(out, " {:>9}", micros(h.value_at_quantile(q)));
            }
        }
        let _ = writeln!(out);
    }
    let ratios = ratios(results);
    let _ = writeln!(
        out,
        "\nratios (xdp over udp, xdp over raw_xdp; udp over raw_udp, raw_xdp over raw_udp):"
    );
    for (name, r) in ratios.as_object().into_iter().flatten() {
        let fields: Vec<String> = r
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some(format!("{k} = {:.2}", v.as_f64()?)))
            .collect();
        if !fields.is_empty() {
            let _ = writeln!(out, "  {name:<24} {}", fields.join(", "));
        }
    }
    let get = |name: &str, key: &str| ratios[name][key].as_f64();
    let _ = writeln!(out, "\ntargets (measured here, never asserted):");
    let mut target = |what: &str, value: Option<f64>, ok: fn(f64) -> bool, goal: &str| {
        let _ = match value {
            Some(v) => writeln!(
                out,
                "  {what:<44} {v:>6.2}  (target {goal}: {})",
                if ok(v) { "met" } else { "missed" }
            ),
            None => writeln!(out, "  {what:<44}    n/a  (not measured in this run)"),
        };
    };
    target(
        "signal throughput xdp / udp",
        get("signal_throughput", "xdp_udp_throughput"),
        |v| v >= 2.0,
        ">= 2",
    );
    target(
        "signal throughput xdp / raw_xdp",
        get("signal_throughput", "xdp_raw_throughput"),
        |v| v >= 0.85,
        ">= 0.85",
    );
    target(
        "RPC round trip p50 xdp / raw_xdp ping-pong",
        get("rpc_latency_closed", "xdp_raw_p50"),
        |v| v <= 1.5,
        "<= 1.5",
    );
    target(
        "RPC round trip p50 xdp / udp",
        get("rpc_latency_closed", "xdp_udp_p50"),
        |v| v <= 0.5,
        "<= 0.5",
    );
    target(
        "ROM 16 MiB bytes/s / (full frames/s x chunk)",
        ratios["rom_16MiB_of_frame_rate"]["ratio"].as_f64(),
        |v| v >= 0.8,
        ">= 0.8",
    );
    // Not a target: the links alone, no relay logic on either side.
    let links = get("rpc_latency_closed", "raw_xdp_raw_udp_p50").map_or_else(
        || "   n/a  (not measured in this run)".to_owned(),
        |v| format!("{v:>6.2}  (the links alone: no relay logic on either side)"),
    );
    let _ = writeln!(
        out,
        "  {:<44} {links}",
        "RPC round trip p50 raw_xdp / raw_udp"
    );
    out
}

/// The per-stage table of profiled runs.
fn profile_table(profiles: &[Profiled]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nprofile of rpc_latency_closed (ns per frame; handler: per call; tx_completion: per frame, AF_XDP only):"
    );
    let _ = writeln!(
        out,
        "{:<8} {:<7} {:<14} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "backend", "side", "stage", "samples", "p50", "p90", "p99", "max"
    );
    for p in profiles {
        for (stage, h) in p.stages.named() {
            if h.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "{:<8} {:<7} {:<14} {:>10} {:>10} {:>10} {:>10} {:>10}",
                p.backend.name(),
                p.side,
                stage,
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.max()
            );
        }
    }
    out
}

fn profile_json(profiles: &[Profiled]) -> Value {
    let rows: Vec<Value> = profiles
        .iter()
        .flat_map(|p| {
            p.stages
                .named()
                .into_iter()
                .filter(|(_, h)| !h.is_empty())
                .map(move |(stage, h)| {
                    json!({
                        "scenario": "rpc_latency_closed",
                        "backend": p.backend.name(),
                        "side": p.side,
                        "stage": stage,
                        "samples": h.len(),
                        "p50_ns": h.value_at_quantile(0.5),
                        "p90_ns": h.value_at_quantile(0.9),
                        "p99_ns": h.value_at_quantile(0.99),
                        "max_ns": h.max(),
                    })
                })
        })
        .collect();
    Value::Array(rows)
}

/// Writes `<name>.<backend>.hgrm`: the percentile distribution in
/// HdrHistogram's text format (values in microseconds).
fn write_hgrm(dir: &Path, results: &[Measurement]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for m in results {
        let Some(h) = m.latency.as_ref().filter(|h| !h.is_empty()) else {
            continue;
        };
        let path = dir.join(format!("{}.{}.hgrm", m.name, m.backend.name()));
        std::fs::write(&path, hgrm(h)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The percentile distribution of `h` (ns) as HdrHistogram prints it,
/// in microseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - q))
        } else {
            "inf".into()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {:>14}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inverse
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// Groups the results by scenario, for the plots.
pub fn by_scenario(results: &[Measurement]) -> BTreeMap<&str, Vec<&Measurement>> {
    let mut map: BTreeMap<&str, Vec<&Measurement>> = BTreeMap::new();
    for m in results {
        map.entry(m.name.as_str()).or_default().push(m);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rate: f64, latencies: &[u64]) -> Measurement {
        let mut m = Measurement::new("s", Backend::Xdp);
        m.frames_per_s = Some(rate);
        let mut h = scenarios::histogram();
        for &ns in latencies {
            h.record(ns).unwrap();
        }
        m.latency = Some(h);
        m
    }

    #[test]
    fn rounds_combine_to_median_rates_and_all_latencies() {
        let three = combine(vec![
            round(5.0, &[100]),
            round(1.0, &[200, 300]),
            round(3.0, &[400]),
        ])
        .unwrap();
        assert_eq!(three.frames_per_s, Some(3.0));
        let h = three.latency.unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h.max(), 400);
        assert_eq!(h.min(), 100);
        let two = combine(vec![round(1.0, &[]), round(3.0, &[])]).unwrap();
        assert_eq!(two.frames_per_s, Some(2.0));
        assert_eq!(two.bytes_per_s, None);
        assert!(combine(Vec::new()).is_none());
    }
}
