//! `xrelay-bench`: xrelay's benchmarks.
//!
//! * `xrelay-bench run` (root): the suite, every scenario on `raw_xdp`,
//!   `xdp` and `udp` side by side, with ratios, targets, JSON, plots and
//!   HdrHistogram files.
//! * `xrelay-bench frames` (root): the one-way frame rate over veth of raw
//!   AF_XDP, relay nodes over AF_XDP and relay nodes over UDP, medians of
//!   several runs.
//! * `xrelay-bench codec`: single-thread costs of the wire format (building
//!   and parsing frames, the Internet checksum of a full frame) and of
//!   marshalling.
//! * `xrelay-bench engine`: the RPC engine's own cost per call with many
//!   calls outstanding (client and server engines joined directly, every
//!   frame emitted and parsed, no network).
//! * `xrelay-bench nodes`: the relay's CPU per RPC round trip, two whole
//!   nodes in one thread handing each other frames.
#![forbid(unsafe_code)]

mod frames;
mod nodes;
mod pair;
mod plot;
mod scenarios;
mod suite;

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use xrelay_datapath::engine::rpc::{RpcClient, RpcConfig, RpcServer};
use xrelay_datapath::example::{KvStoreClient, KvStoreServer, MemoryStore};
use xrelay_datapath::marshal::Local;
use xrelay_datapath::wire::checksum;
use xrelay_datapath::wire::encap::{self, Encapsulation, Endpoint, DEFAULT_UDP_PORT};
use xrelay_datapath::wire::ethernet::EthernetAddress;
use xrelay_datapath::wire::signal::Signal;
use xrelay_datapath::wire::{Flags, Frame, Message};

/// xrelay's benchmarks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The suite: every scenario on raw_xdp, xdp and udp side by side
    /// (needs root); table, ratios, targets; --json, --plot, --quick.
    Run(suite::SuiteArgs),
    /// Single-thread cost of building and parsing frames and of marshalling calls.
    Codec {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// One-way frame rate over veth between namespaces: raw AF_XDP, relay
    /// over AF_XDP and relay over UDP side by side (needs root).
    Frames {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Runs per backend (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only these backends (default: all three, with ratios).
        #[arg(long, value_enum)]
        backend: Vec<pair::Backend>,
        /// Authenticate the relay's frames (ChaCha20-Poly1305, replay window).
        #[arg(long)]
        authenticate: bool,
    },
    /// Relay CPU per RPC round trip: two nodes in one thread, frames
    /// handed across directly (no transport), one call outstanding.
    Nodes {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Argument bytes per call.
        #[arg(long, default_value_t = 32)]
        payload: usize,
        /// Idle peers each node has besides its partner (they get
        /// heartbeats, never a session): how a node's cost per frame grows
        /// with the peers it knows.
        #[arg(long, default_value_t = 0)]
        peers: u16,
    },
    /// RPC engine cost: calls per second through client and server engines.
    Engine {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Calls kept outstanding.
        #[arg(long, default_value_t = 256)]
        outstanding: usize,
    },
}

/// Runs `step` repeatedly for `duration`; returns operations per second.
fn rate(duration: Duration, mut step: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < duration {
        for _ in 0..1024 {
            step(done);
            done += 1;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn endpoint(host: u8) -> Endpoint {
    Endpoint {
        mac: EthernetAddress([2, 0, 0, 0, 0, host]),
        ip: Ipv4Addr::new(198, 18, 0, host),
        port: DEFAULT_UDP_PORT,
    }
}

fn codec(seconds: f64) {
    let duration = Duration::from_secs_f64(seconds.max(0.01));
    let encap = Encapsulation::default();
    let (src, dst) = (endpoint(1), endpoint(2));
    let mut buf = vec![0u8; 128];

    let build = |count: u64, buf: &mut Vec<u8>| {
        let frame = Frame {
            flags: Flags::NONE,
            channel: 1,
            sequence: count,
            message: Message::Signal(Signal { context: 3, count }),
        };
        let relay_len = frame.buffer_len();
        let start = encap.header_len();
        buf.resize(encap.frame_len(relay_len), 0);
        frame.emit(&mut buf[start..start + relay_len]);
        encap::emit(encap, &src, &dst, relay_len, buf);
    };
    let build_rate = rate(duration, |n| {
        build(n, &mut buf);
        black_box(&buf);
    });
    build(7, &mut buf);
    let parse_rate = rate(duration, |_| {
        let parsed =
            encap::parse(black_box(&buf), encap).and_then(|(_, _, relay)| Frame::parse(relay));
        black_box(parsed.is_ok());
    });
    // A full ROM chunk's UDP payload: what every full frame checksums on
    // sending and again on receiving.
    let payload: Vec<u8> = (0..1440u32).map(|i| i.to_le_bytes()[0] ^ 0x5a).collect();
    let checksum_rate = rate(duration, |_| {
        black_box(checksum::finish(checksum::accumulate(
            0,
            black_box(&payload),
        )));
    });
    let mut kv = KvStoreClient::new(Local::new(KvStoreServer(MemoryStore::new(1))));
    let value = vec![0x5a; 64];
    let call_rate = rate(duration, |_| {
        black_box(kv.put("key".to_string(), value.clone()).is_ok());
    });

    println!("{:<52} {:>14}", "operation (one core)", "per second");
    println!(
        "{:<52} {:>14.0}",
        "build SIGNAL frame in Ethernet+IPv4+UDP (checksums)", build_rate
    );
    println!(
        "{:<52} {:>14.0}",
        "parse + verify the same frame", parse_rate
    );
    println!(
        "{:<52} {:>14.0}",
        "Internet checksum of 1440 bytes (a full frame's UDP)", checksum_rate
    );
    println!(
        "{:<52} {:>14.0}",
        "KvStore put(3-byte key, 64-byte value), in-process", call_rate
    );
}

/// Emits `message` as a frame into `buf` and parses it back, as a link would.
fn across<'b>(message: Message<'_>, buf: &'b mut Vec<u8>) -> Message<'b> {
    let frame = Frame {
        flags: Flags::NONE,
        channel: 1,
        sequence: 1,
        message,
    };
    buf.resize(frame.buffer_len(), 0);
    frame.emit(buf);
    match Frame::parse(buf) {
        Ok((frame, _)) => frame.message,
        Err(e) => panic!("a frame the engine built does not parse: {e}"),
    }
}

fn engine(seconds: f64, outstanding: usize) {
    let config = RpcConfig {
        max_outstanding: outstanding.max(1),
        ..RpcConfig::default()
    };
    let mut client = RpcClient::new(config);
    let mut server = RpcServer::new(config);
    let args = vec![0x5a; 64];
    let mut buf = Vec::new();
    let mut now = xrelay_datapath::time::Instant::ZERO;
    let mut completed = 0u64;
    let start = Instant::now();
    let duration = Duration::from_secs_f64(seconds.max(0.01));
    while start.elapsed() < duration {
        while client.outstanding() < config.max_outstanding {
            if client.call(now, 1, 0, args.clone()).is_err() {
                break;
            }
        }
        while let Some(message) = client.poll_transmit(now) {
            match across(message, &mut buf) {
                Message::RpcCall(call) => server.handle_call(now, &call),
                Message::RpcAck(ack) => server.handle_ack(&ack),
                _ => {}
            }
        }
        while let Some(ready) = server.poll_call() {
            let _ = server.complete(now, ready.request_id, 0, ready.args);
        }
        while let Some(message) = server.poll_transmit() {
            match across(message, &mut buf) {
                Message::RpcReply(reply) => client.handle_reply(now, &reply),
                Message::RpcAck(ack) => client.handle_ack(&ack),
                _ => {}
            }
        }
        while let Some(message) = client.poll_transmit(now) {
            if let Message::RpcAck(ack) = across(message, &mut buf) {
                server.handle_ack(&ack);
            }
        }
        while let Some(outcome) = client.poll_event() {
            completed += u64::from(outcome.result.is_ok());
        }
        now += Duration::from_micros(10);
    }
    let rate = completed as f64 / start.elapsed().as_secs_f64();
    println!("{:<52} {:>14}", "operation (one core)", "per second");
    println!(
        "{:<52} {:>14.0}",
        format!("RPC engine calls, {outstanding} outstanding, 64-byte args"),
        rate
    );
}

fn main() {
    match Cli::parse().command {
        Command::Run(args) => {
            if let Err(error) = suite::run(&args) {
                eprintln!("xrelay-bench run: {error}");
                std::process::exit(1);
            }
        }
        Command::Codec { seconds } => codec(seconds),
        Command::Nodes {
            seconds,
            payload,
            peers,
        } => {
            if let Err(error) = nodes::run(seconds, payload, peers) {
                eprintln!("xrelay-bench nodes: {error}");
                std::process::exit(1);
            }
        }
        Command::Engine {
            seconds,
            outstanding,
        } => engine(seconds, outstanding),
        Command::Frames {
            seconds,
            runs,
            backend,
            authenticate,
        } => {
            if let Err(error) = frames::run(seconds, runs, &backend, authenticate) {
                eprintln!("xrelay-bench frames: {error}");
                std::process::exit(1);
            }
        }
    }
}
