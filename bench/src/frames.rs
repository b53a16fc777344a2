//! `xrelay-bench frames`: one-way frame rate between two namespaces joined
//! by veth, three backends side by side in one run:
//!
//! * `raw_xdp`: the AF_XDP transport sending a prebuilt SIGNAL frame as
//!   fast as it can and a receiver counting frames: rings, UMEM and the
//!   outer headers, no relay logic (the floor);
//! * `xdp`: relay nodes over AF_XDP: every frame is a SIGNAL produced by
//!   the sender node's signal engine and consumed by the receiver node
//!   (parse, peer and session lookup, engine, acknowledgement);
//! * `udp`: the same relay nodes over kernel UDP sockets
//!   (`sendmmsg`/`recvmmsg`).
//!
//! Sender and receiver each run on their own thread pinned to its own core
//! and busy-poll. The figure is what the receiver counts in the measured
//! window; ratios are computed within the run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use xrelay_datapath::auth::FrameKeys;
use xrelay_datapath::netns::VethPair;
use xrelay_datapath::node::{Node, NodeConfig};
use xrelay_datapath::poll::{poll_once, Budget};
use xrelay_datapath::time::MonotonicClock;
use xrelay_datapath::transport::{Transport, TransportError};
use xrelay_datapath::wire::rom::RomChunk;
use xrelay_datapath::wire::session::Service;
use xrelay_datapath::wire::signal::Signal;
use xrelay_datapath::wire::{Flags, Frame, Message};

use crate::pair::{pin, relay, transport, Backend, Place};

/// The pair key of the benchmark's nodes (with `--authenticate`).
const BENCH_KEY: [u8; 32] = [0x42; 32];

/// Sends and receives everything due for `node` over `link` once.
fn drive(
    node: &mut Node,
    link: &mut dyn Transport,
    clock: &MonotonicClock,
) -> Result<(), TransportError> {
    poll_once(node, link, clock.now(), Budget::default()).map(|_| ())
}

/// Frames per second the sender put on the link and the receiver got.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Sent per second.
    pub sent: f64,
    /// Received per second (the figure).
    pub received: f64,
}

/// One-way frames between two fresh namespaces for `seconds` after a
/// warm-up: bare AF_XDP for `raw_xdp`, SIGNAL frames between relay nodes
/// otherwise.
pub fn measure(backend: Backend, seconds: f64, authenticate: bool) -> Result<Rates, String> {
    measure_sized(backend, seconds, authenticate, None)
}

/// [`measure`]; with `chunk`, `raw_xdp` sends ROM_CHUNK frames carrying
/// `chunk` bytes instead of SIGNAL frames (the frame rate a ROM transfer
/// could reach).
pub fn measure_sized(
    backend: Backend,
    seconds: f64,
    authenticate: bool,
    chunk: Option<usize>,
) -> Result<Rates, String> {
    let pair = VethPair::new(1).map_err(|e| format!("{e} (needs root)"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let transmitted = Arc::new(AtomicU64::new(0));
    let clock = MonotonicClock::new();
    let (a_at, b_at) = (pair.a.endpoint, pair.b.endpoint);

    let receiver = {
        let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
        let host = Place::of(&pair.b);
        std::thread::spawn(move || -> Result<(), String> {
            pin(1);
            let mut link = transport(backend, &host).map_err(|e| e.to_string())?;
            let mut node =
                Node::new(NodeConfig::new(link.max_frame_len())).map_err(|e| e.to_string())?;
            let peer = node
                .add_peer(clock.now(), "a", relay(a_at))
                .map_err(|e| e.to_string())?;
            if authenticate {
                let keys = FrameKeys::derive(&BENCH_KEY, "b", "a");
                node.set_peer_keys(peer, Some(keys))
                    .map_err(|e| e.to_string())?;
            }
            node.export_signal("bench").map_err(|e| e.to_string())?;
            while !stop.load(Ordering::Relaxed) {
                if backend == Backend::RawXdp {
                    let n = link
                        .recv(clock.now(), 64, &mut |_, _| {})
                        .map_err(|e| e.to_string())?;
                    received.fetch_add(n as u64, Ordering::Relaxed);
                } else {
                    drive(&mut node, link.as_mut(), &clock).map_err(|e| e.to_string())?;
                    while node.poll_event().is_some() {}
                    received.store(node.stats().frames_received, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    };

    let sender = {
        let stop = Arc::clone(&stop);
        let transmitted = Arc::clone(&transmitted);
        let host = Place::of(&pair.a);
        std::thread::spawn(move || -> Result<(), String> {
            pin(0);
            let mut link = transport(backend, &host).map_err(|e| e.to_string())?;
            let to = relay(b_at);
            if backend == Backend::RawXdp {
                let data = vec![0x5a; chunk.unwrap_or(0)];
                let message = match chunk {
                    Some(_) => Message::RomChunk(RomChunk {
                        module: 1,
                        version: 1,
                        offset: 0,
                        data: &data,
                    }),
                    None => Message::Signal(Signal {
                        context: 0,
                        count: 1,
                    }),
                };
                let frame = Frame {
                    flags: Flags::NONE,
                    channel: 1,
                    sequence: 1,
                    message,
                };
                let len = frame.buffer_len();
                let mut bytes = vec![0; len];
                frame.emit(&mut bytes);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let room = link
                            .send(&mut |buf| {
                                buf[..len].copy_from_slice(&bytes);
                                Some((to, len))
                            })
                            .map_err(|e| e.to_string())?;
                        if !room {
                            break;
                        }
                        transmitted.fetch_add(1, Ordering::Relaxed);
                    }
                    link.flush(clock.now()).map_err(|e| e.to_string())?;
                }
                return Ok(());
            }
            let mut node =
                Node::new(NodeConfig::new(link.max_frame_len())).map_err(|e| e.to_string())?;
            let peer = node
                .add_peer(clock.now(), "b", to)
                .map_err(|e| e.to_string())?;
            if authenticate {
                let keys = FrameKeys::derive(&BENCH_KEY, "a", "b");
                node.set_peer_keys(peer, Some(keys))
                    .map_err(|e| e.to_string())?;
            }
            let session = node
                .open(clock.now(), peer, Service::Signal, "bench")
                .map_err(|e| e.to_string())?;
            let deadline = StdInstant::now() + Duration::from_secs(5);
            while !node.is_open(session) {
                if StdInstant::now() > deadline {
                    return Err("the signal session did not open".into());
                }
                drive(&mut node, link.as_mut(), &clock).map_err(|e| e.to_string())?;
            }
            while !stop.load(Ordering::Relaxed) {
                // One submission per frame: each SIGNAL carries a new count.
                let now = clock.now();
                link.recv(now, 64, &mut |from, bytes| {
                    node.handle_datagram(now, from, bytes)
                })
                .map_err(|e| e.to_string())?;
                for _ in 0..64 {
                    node.submit(session, 0, 1).map_err(|e| e.to_string())?;
                    let mut produced = false;
                    let room = link
                        .send(&mut |buf| {
                            let out = node.poll_transmit(now, buf);
                            produced = out.is_some();
                            out
                        })
                        .map_err(|e| e.to_string())?;
                    if !room || !produced {
                        break;
                    }
                }
                link.flush(now).map_err(|e| e.to_string())?;
                while node.poll_event().is_some() {}
                transmitted.store(node.stats().frames_sent, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    // Warm up, then count over the window.
    std::thread::sleep(Duration::from_millis(500));
    let count = || {
        (
            received.load(Ordering::Relaxed),
            transmitted.load(Ordering::Relaxed),
            StdInstant::now(),
        )
    };
    let start = count();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let end = count();
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().map_err(|_| "the sender panicked")?;
    let got = receiver.join().map_err(|_| "the receiver panicked")?;
    sent?;
    got?;
    drop(pair);
    let elapsed = (end.2 - start.2).as_secs_f64();
    Ok(Rates {
        received: (end.0 - start.0) as f64 / elapsed,
        sent: (end.1 - start.1) as f64 / elapsed,
    })
}

/// Runs every backend `runs` times, alternating; prints medians and, when
/// all three ran, the ratios.
pub fn run(seconds: f64, runs: usize, only: &[Backend], authenticate: bool) -> Result<(), String> {
    let all = [Backend::RawXdp, Backend::Xdp, Backend::Udp];
    if let Some(other) = only.iter().find(|b| !all.contains(b)) {
        return Err(format!(
            "no one-way frame rate on {} (backends here: raw_xdp, xdp, udp)",
            other.name()
        ));
    }
    let backends: Vec<Backend> = if only.is_empty() {
        all.to_vec()
    } else {
        all.into_iter().filter(|b| only.contains(b)).collect()
    };
    let mut rates: Vec<Vec<Rates>> = vec![Vec::new(); backends.len()];
    for _ in 0..runs.max(1) {
        for (i, &backend) in backends.iter().enumerate() {
            rates[i].push(measure(backend, seconds, authenticate)?);
        }
    }
    // The run with the median received rate, per backend.
    let median = |v: &mut Vec<Rates>| {
        v.sort_by(|a, b| a.received.total_cmp(&b.received));
        v[v.len() / 2]
    };
    let picked: Vec<Rates> = rates.iter_mut().map(median).collect();
    let medians: Vec<f64> = picked.iter().map(|r| r.received).collect();
    println!("xrelay-bench frames: one-way SIGNAL frames between two namespaces over veth,");
    println!(
        "sender and receiver pinned to cores 0 and 1, busy-polling; median of {runs} x {seconds} s"
    );
    if authenticate {
        println!("relay frames authenticated (ChaCha20-Poly1305 tag, replay window)");
    }
    println!("{:<10} {:>14} {:>14}", "backend", "frames/s", "sent/s");
    for (backend, rate) in backends.iter().zip(&picked) {
        println!(
            "{:<10} {:>14.0} {:>14.0}",
            backend.name(),
            rate.received,
            rate.sent
        );
    }
    if backends.len() == all.len() {
        println!(
            "ratios: xdp/raw_xdp = {:.2}, xdp/udp = {:.2}",
            medians[1] / medians[0],
            medians[1] / medians[2]
        );
    }
    Ok(())
}
