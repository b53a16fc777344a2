//! `xrelay demo`: two relay nodes in one process, each on its own
//! datapath thread, talking over a real transport (`mem`: the in-process
//! network, optionally lossy; `udp`: kernel UDP sockets on loopback).
//!
//! Node `b` exports the example key-value interface (`kv`), a signal
//! receiver (`events`) and a ROM module (`config`); node `a` uses all three
//! through the application API, exactly as a program would:
//!
//! * RPC: puts, gets (values up to 20 KiB, so many calls are fragmented),
//!   deletes, gets of deleted keys (the typed `NotFound` exception) and a
//!   stats call, each checked against what was put;
//! * signals: bursts of submissions; the delivered count must equal the
//!   submitted count;
//! * ROM: several versions published back to back (empty, small, large,
//!   the largest over 4 MiB); the subscriber must end at the newest version
//!   with its hash, and every version it saw must be complete and exactly
//!   what was published under that number.
//!
//! The exit status is 0 only when every check passed; `--json` prints one
//! JSON object with the figures (shape fixed by issue 3, kept exactly).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xrelay_datapath::engine::rom::RomVersion;
use xrelay_datapath::example::{KvError, KvStoreClient, KvStoreServer, MemoryStore, StoreStats};
use xrelay_datapath::marshal::RpcError;
use xrelay_datapath::netns::{self, VethPair};
use xrelay_datapath::runtime::{Runtime, RuntimeConfig, RuntimeError};
use xrelay_datapath::time::MonotonicClock;
use xrelay_datapath::transport::mem::{host_endpoint, Faults, MemNetwork};
use xrelay_datapath::transport::udp::{UdpConfig, UdpTransport};
use xrelay_datapath::transport::xdp::{XdpConfig, XdpTransport};
use xrelay_datapath::transport::TransportError;
use xrelay_datapath::wire::encap::{Endpoint, DEFAULT_UDP_PORT};
use xrelay_datapath::wire::rom::RomState;

/// The transports the demo runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// AF_XDP where this process may (root: namespaces, XDP, AF_XDP),
    /// else udp, saying so.
    Auto,
    /// AF_XDP sockets on a veth pair between two network namespaces the
    /// demo creates (and removes).
    Xdp,
    /// Kernel UDP sockets on 127.0.0.1.
    Udp,
    /// The in-process network (frames are real Ethernet+IPv4+UDP bytes).
    Mem,
}

/// Options of `xrelay demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which transport carries the frames.
    #[arg(long, value_enum, default_value_t = TransportKind::Auto)]
    transport: TransportKind,
    /// Frame loss probability of the `mem` network (with it come 5 %
    /// duplicates and 10 % reordering).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the `mem` network's fault injector.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keys to put (each is put, read back, half are deleted and all read
    /// again: 3.5 calls per key, plus one stats call).
    #[arg(long, default_value_t = 400)]
    keys: u32,
    /// Print exactly one JSON object instead of the readable summary.
    #[arg(long)]
    json: bool,
}

/// What the demo measured; every field is checked.
#[derive(Debug, Default)]
struct Report {
    calls: u64,
    replies_ok: u64,
    exceptions: u64,
    fragmented_values: u64,
    submitted: u64,
    delivered: u64,
    wakeups: u64,
    versions_published: u64,
    versions_seen: u64,
    final_version_match: bool,
    largest_bytes: u64,
    failures: Vec<String>,
    seconds: f64,
}

/// Runs the demo; exit status 0 only when every check passed.
pub fn run(args: &Args) -> ExitCode {
    if !(0.0..0.9).contains(&args.loss) {
        eprintln!("xrelay demo: --loss must be at least 0 and below 0.9");
        return ExitCode::from(2);
    }
    if args.loss > 0.0 && args.transport != TransportKind::Mem {
        eprintln!("xrelay demo: --loss applies to --transport mem only");
        return ExitCode::from(2);
    }
    let started = std::time::Instant::now();
    let mut report = Report::default();
    let nodes = match args.transport {
        TransportKind::Auto => start(args, TransportKind::Xdp).or_else(|error| {
            eprintln!("xrelay demo: AF_XDP is not available here ({error}); using udp");
            start(args, TransportKind::Udp)
        }),
        kind => start(args, kind),
    };
    let transport = match &nodes {
        Ok(nodes) => nodes.transport,
        Err(_) => match args.transport {
            TransportKind::Mem => "mem",
            TransportKind::Udp => "udp",
            TransportKind::Xdp | TransportKind::Auto => "xdp",
        },
    };
    let link = nodes
        .as_ref()
        .map_or_else(|_| String::new(), |n| n.link.clone());
    match nodes {
        Ok(nodes) => {
            if let Err(error) = exercise(args, nodes, &mut report) {
                report.failures.push(error);
            }
        }
        Err(error) => report.failures.push(format!("starting the nodes: {error}")),
    }
    report.seconds = started.elapsed().as_secs_f64();
    let ok = report.failures.is_empty();
    if args.json {
        let json = serde_json::json!({
            "ok": ok,
            "transport": transport,
            "rpc": {"calls": report.calls, "replies_ok": report.replies_ok},
            "signal": {"submitted": report.submitted, "delivered": report.delivered},
            "rom": {
                "versions_published": report.versions_published,
                "final_version_match": report.final_version_match,
                "largest_bytes": report.largest_bytes,
            },
        });
        println!("{json}");
    } else {
        print_summary(&link, &report);
    }
    for failure in &report.failures {
        eprintln!("xrelay demo: FAILED: {failure}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_summary(link: &str, r: &Report) {
    println!("xrelay demo: two nodes over {link}, {:.2} s", r.seconds);
    println!(
        "  rpc:    {} calls, {} replies as expected ({} typed NotFound exceptions, {} values over one frame)",
        r.calls, r.replies_ok, r.exceptions, r.fragmented_values
    );
    println!(
        "  signal: {} submitted in bursts, {} delivered in {} wake-ups",
        r.submitted, r.delivered, r.wakeups
    );
    println!(
        "  rom:    {} versions published (largest {} bytes), subscriber saw {} complete versions, final version and hash match: {}",
        r.versions_published, r.largest_bytes, r.versions_seen, r.final_version_match
    );
    if r.failures.is_empty() {
        println!("ok: every check passed");
    }
}

/// Two running nodes; `a` knows `b` as "b" and the other way round.
/// Fields drop in order: the nodes stop before their namespaces go.
struct Nodes {
    a: Runtime,
    b: Runtime,
    transport: &'static str,
    link: String,
    _topology: Option<VethPair>,
}

/// Starts the two nodes on `kind` (not `Auto`).
fn start(args: &Args, kind: TransportKind) -> Result<Nodes, String> {
    let clock = MonotonicClock::new();
    let config = |peer: &str, endpoint| {
        let mut config = RuntimeConfig::new(vec![(peer.to_owned(), endpoint)]);
        config.clock = clock;
        config
    };
    let fail = |e: RuntimeError| e.to_string();
    match kind {
        TransportKind::Mem => {
            let faults = if args.loss > 0.0 {
                Faults::lossy(args.loss)
            } else {
                Faults::default()
            };
            let network = MemNetwork::new(args.seed, faults, 1500);
            let (net_a, net_b) = (network.clone(), network);
            let a = Runtime::spawn("xrelay-a", config("b", host_endpoint(2)), move || {
                Ok(net_a.attach(1))
            })
            .map_err(fail)?;
            let b = Runtime::spawn("xrelay-b", config("a", host_endpoint(1)), move || {
                Ok(net_b.attach(2))
            })
            .map_err(fail)?;
            let link = if args.loss > 0.0 {
                format!(
                    "mem (in-process network, {:.0} % loss, 5 % duplicates, 10 % reordering)",
                    args.loss * 100.0
                )
            } else {
                "mem (in-process network)".to_owned()
            };
            Ok(Nodes {
                a,
                b,
                transport: "mem",
                link,
                _topology: None,
            })
        }
        TransportKind::Udp | TransportKind::Auto => {
            let bind = || {
                UdpTransport::bind(
                    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
                    UdpConfig::default(),
                )
            };
            let plain = RuntimeConfig {
                clock,
                ..RuntimeConfig::new(Vec::new())
            };
            let a = Runtime::spawn("xrelay-a", plain.clone(), bind).map_err(fail)?;
            let b = Runtime::spawn("xrelay-b", plain, bind).map_err(fail)?;
            a.add_peer("b", b.local_endpoint()).map_err(fail)?;
            b.add_peer("a", a.local_endpoint()).map_err(fail)?;
            let link = "udp (kernel sockets on 127.0.0.1)".to_owned();
            Ok(Nodes {
                a,
                b,
                transport: "udp",
                link,
                _topology: None,
            })
        }
        TransportKind::Xdp => {
            let pair = VethPair::new(1).map_err(|e| format!("{e} (needs root)"))?;
            let modes = Arc::new(std::sync::Mutex::new(String::new()));
            let spawn = |name: &str, host: &netns::Host, peer: &str, peer_at: Endpoint| {
                let ns = host.ns.name().to_owned();
                let xdp = XdpConfig::new(&host.interface, host.endpoint.ip);
                let modes = Arc::clone(&modes);
                let peer_at = Endpoint {
                    port: DEFAULT_UDP_PORT,
                    ..peer_at
                };
                Runtime::spawn(name, config(peer, peer_at), move || {
                    netns::enter(&ns).map_err(|e| TransportError::Config(e.to_string()))?;
                    let transport = XdpTransport::new(xdp)?;
                    let (attach, bind) = transport.modes();
                    if let Ok(mut modes) = modes.lock() {
                        *modes = format!("{attach:?} XDP, {bind:?} bind").to_lowercase();
                    }
                    Ok(transport)
                })
                .map_err(fail)
            };
            let a = spawn("xrelay-a", &pair.a, "b", pair.b.endpoint)?;
            let b = spawn("xrelay-b", &pair.b, "a", pair.a.endpoint)?;
            let modes = modes.lock().map(|m| m.clone()).unwrap_or_default();
            let link = format!(
                "xdp (AF_XDP on veth {} <-> {} between namespaces {} and {}; {modes})",
                pair.a.interface,
                pair.b.interface,
                pair.a.ns.name(),
                pair.b.ns.name()
            );
            Ok(Nodes {
                a,
                b,
                transport: "xdp",
                link,
                _topology: Some(pair),
            })
        }
    }
}

fn exercise(args: &Args, nodes: Nodes, report: &mut Report) -> Result<(), String> {
    // Declared first, dropped last: the nodes stop before their
    // namespaces go, on every path out of here.
    let topology = nodes._topology;
    let (a, b) = (nodes.a, nodes.b);
    b.export_rpc(
        "kv",
        KvStoreServer(MemoryStore::new(args.keys as usize + 1)),
    )
    .map_err(|e| e.to_string())?;
    let handler = b.export_signal("events").map_err(|e| e.to_string())?;
    let publisher = b.export_rom("config").map_err(|e| e.to_string())?;

    let session = a.open_rpc("b", "kv").map_err(|e| e.to_string())?;
    let transmitter = a.open_signal("b", "events").map_err(|e| e.to_string())?;
    let subscriber = Arc::new(a.subscribe_rom("b", "config").map_err(|e| e.to_string())?);

    // Every version the subscriber sees, recorded on a thread of its own
    // while the publisher publishes and the RPC and signal parts run.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let subscriber = Arc::clone(&subscriber);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || watch(&subscriber, &stop))
    };
    let published = publish_versions(&publisher, report);
    let rpc_result = rpc(KvStoreClient::new(session), args.keys, report);
    signals(&transmitter, &handler, report);
    let published = published?;
    rpc_result?;

    // The subscriber must reach the newest version.
    let newest = published
        .iter()
        .map(|(&v, &h)| (v, h))
        .max_by_key(|&(v, _)| v);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = subscriber.current();
    while std::time::Instant::now() < deadline
        && last.as_ref().map(|v| (v.version, v.hash)) != newest
    {
        last = subscriber.wait_change(last.as_ref(), Duration::from_millis(100));
    }
    stop.store(true, Ordering::Release);
    let seen = watcher.join().map_err(|_| "the ROM watcher panicked")?;
    report.versions_seen = seen.len() as u64;
    report.final_version_match = last.as_ref().map(|v| (v.version, v.hash)) == newest;
    if !report.final_version_match {
        report.failures.push(format!(
            "rom: the subscriber is at version {:?}, the newest published is {:?}",
            last.map(|v| v.version),
            newest.map(|(v, _)| v)
        ));
        report
            .failures
            .push(format!("node a: {:?}\nnode b: {:?}", a.stats(), b.stats()));
    }
    // Every version seen is complete, verified and exactly what was
    // published under its number; versions only go forward.
    let mut previous = 0;
    for version in &seen {
        let intact = blake3::hash(&version.data).as_bytes() == &version.hash
            && published.get(&version.version) == Some(&version.hash)
            && (version.state == RomState::Valid || version.data.is_empty());
        if !intact {
            report.failures.push(format!(
                "rom: version {} seen with content that was not published",
                version.version
            ));
        }
        if version.version <= previous {
            report.failures.push(format!(
                "rom: version {} seen after {previous}",
                version.version
            ));
        }
        previous = version.version;
    }
    drop((a, b));
    drop(topology);
    Ok(())
}

/// Records each new version the subscriber sees until `stop`.
fn watch(
    subscriber: &xrelay_datapath::runtime::RomSubscriber,
    stop: &AtomicBool,
) -> Vec<Arc<RomVersion>> {
    let mut seen: Vec<Arc<RomVersion>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let last = seen.last().cloned();
        if let Some(version) = subscriber.wait_change(last.as_ref(), Duration::from_millis(20)) {
            if !last.is_some_and(|l| Arc::ptr_eq(&l, &version)) {
                seen.push(version);
            }
        }
    }
    seen
}

/// Deterministic content of `len` bytes.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Publishes several versions back to back, some faster than they can be
/// transferred (only the newest must arrive); returns version -> hash of
/// everything published, the initial empty version 1 included.
fn publish_versions(
    publisher: &xrelay_datapath::runtime::RomPublisher,
    report: &mut Report,
) -> Result<HashMap<u64, [u8; 32]>, String> {
    let mut published = HashMap::new();
    published.insert(1, *blake3::hash(&[]).as_bytes());
    let steps: [Option<usize>; 6] = [
        Some(1024),
        None,
        Some(0),
        Some(300 * 1024),
        Some(4 * 1024 * 1024 + 17),
        Some(1024 * 1024 + 3),
    ];
    for (i, step) in steps.into_iter().enumerate() {
        let (version, hash) = match step {
            Some(len) => {
                let data = content(i as u64, len);
                let hash = *blake3::hash(&data).as_bytes();
                report.largest_bytes = report.largest_bytes.max(len as u64);
                (publisher.publish(data), hash)
            }
            None => (publisher.remove(), *blake3::hash(&[]).as_bytes()),
        };
        let version = version.map_err(|e| format!("rom: publish: {e}"))?;
        published.insert(version, hash);
        report.versions_published += 1;
        if i == 4 {
            // Let the large version get under way before it is superseded.
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    Ok(published)
}

/// The value stored under key `i`: 0 bytes to 20 KiB, so some calls need
/// one frame and some need many.
fn value_for(i: u32) -> Vec<u8> {
    let len = (i as usize * 37) % (20 * 1024 + 1);
    (0..len)
        .map(|j| (i as usize + j).to_le_bytes()[0])
        .collect()
}

fn rpc(
    mut kv: KvStoreClient<xrelay_datapath::runtime::RpcSession>,
    keys: u32,
    report: &mut Report,
) -> Result<(), String> {
    let check = |report: &mut Report, what: String, ok: bool| {
        report.calls += 1;
        if ok {
            report.replies_ok += 1;
            Ok(())
        } else {
            Err(format!("rpc: {what}"))
        }
    };
    let mut value_bytes = 0;
    for i in 0..keys {
        let value = value_for(i);
        value_bytes += value.len() as u64;
        if value.len() > 1400 {
            report.fragmented_values += 1;
        }
        let result = kv.put(format!("key-{i}"), value);
        check(
            report,
            format!("put key-{i}: {result:?}"),
            result == Ok(None),
        )?;
    }
    for i in 0..keys {
        let result = kv.get(format!("key-{i}"));
        let ok = result.as_ref().is_ok_and(|v| *v == value_for(i));
        check(
            report,
            format!("get key-{i}: {:?}", result.map(|v| v.len())),
            ok,
        )?;
    }
    let stats = kv.stats();
    let expected = StoreStats {
        keys: u64::from(keys),
        value_bytes,
    };
    check(
        report,
        format!("stats: {stats:?}, expected {expected:?}"),
        stats == Ok(expected),
    )?;
    for i in (0..keys).step_by(2) {
        let result = kv.delete(format!("key-{i}"));
        check(
            report,
            format!("delete key-{i}: {result:?}"),
            result == Ok(()),
        )?;
    }
    for i in 0..keys {
        let result = kv.get(format!("key-{i}"));
        let ok = match &result {
            Err(RpcError::Exception(KvError::NotFound)) if i % 2 == 0 => {
                report.exceptions += 1;
                true
            }
            Ok(value) => i % 2 == 1 && *value == value_for(i),
            _ => false,
        };
        check(
            report,
            format!("get key-{i} after deletes: {:?}", result.map(|v| v.len())),
            ok,
        )?;
    }
    Ok(())
}

/// Bursts of submissions while the receiving side waits on its handler;
/// the handler must get exactly as many, in coalesced wake-ups.
fn signals(
    transmitter: &xrelay_datapath::runtime::SignalTransmitter,
    handler: &xrelay_datapath::runtime::SignalHandler,
    report: &mut Report,
) {
    const BURSTS: u64 = 20;
    let expected: u64 = (1..=BURSTS).map(|burst| burst * 10).sum();
    let waiter = {
        let handler = handler.clone();
        std::thread::spawn(move || {
            let (mut delivered, mut wakeups) = (0u64, 0u64);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while delivered < expected && std::time::Instant::now() < deadline {
                if let Some(count) = handler.wait_timeout(Duration::from_millis(100)) {
                    delivered += count;
                    wakeups += 1;
                }
            }
            // Anything more would be a doubled signal.
            if let Some(extra) = handler.wait_timeout(Duration::from_millis(50)) {
                delivered += extra;
            }
            (delivered, wakeups)
        })
    };
    for burst in 1..=BURSTS {
        for _ in 0..burst * 10 {
            if transmitter.submit().is_ok() {
                report.submitted += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    match waiter.join() {
        Ok((delivered, wakeups)) => {
            report.delivered = delivered;
            report.wakeups = wakeups;
        }
        Err(_) => report
            .failures
            .push("signal: the waiting thread panicked".into()),
    }
    if report.delivered != report.submitted {
        report.failures.push(format!(
            "signal: {} submitted, {} delivered",
            report.submitted, report.delivered
        ));
    }
}
