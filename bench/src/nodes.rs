//! `xrelay-bench nodes`: the relay's own CPU cost per RPC round trip. Two
//! relay nodes run in one thread and hand each other their frames directly
//! (no transport, no kernel): the client node builds a call, the server
//! node parses it, finds peer, session and export, runs the echo handler
//! and builds the reply, and the client node completes the call, with one
//! call outstanding as in `rpc_latency_closed`. What a round trip over a
//! link costs beyond the link itself is this figure; profile it with
//! `perf record xrelay-bench nodes`. With `--peers N` each node also knows
//! N idle peers (heartbeats only; their frames go nowhere), which shows
//! what a node's size costs every frame.

use std::time::{Duration, Instant as StdInstant};

use xrelay_datapath::marshal::Dispatch;
use xrelay_datapath::node::{Node, NodeConfig, NodeEvent};
use xrelay_datapath::time::{Instant, MonotonicClock};
use xrelay_datapath::transport::mem::host_endpoint;
use xrelay_datapath::wire::encap::Endpoint;
use xrelay_datapath::wire::session::Service;

use crate::scenarios::{Echo, ECHO};

/// The largest relay frame the nodes build (a 1500-byte MTU's).
const FRAME_LEN: usize = 1472;

/// Hands every frame `from` builds for `to_at` to `to` (through `buf`),
/// and drops those for its idle peers; returns how many it handed over.
fn carry(
    from: &mut Node,
    from_at: Endpoint,
    to: &mut Node,
    to_at: Endpoint,
    now: Instant,
    buf: &mut [u8],
) -> usize {
    let mut frames = 0;
    while let Some((dst, len)) = from.poll_transmit(now, buf) {
        if dst.same_address(&to_at) {
            to.handle_datagram(now, from_at, &buf[..len]);
            frames += 1;
        }
    }
    frames
}

/// The `index`th idle peer's address: in 198.19.0.0/16, which no node
/// here is at (and nothing is ever sent on a link).
fn idle_peer(index: u16) -> Endpoint {
    let [hi, lo] = index.to_be_bytes();
    Endpoint {
        ip: std::net::Ipv4Addr::new(198, 19, hi, lo),
        ..host_endpoint(1)
    }
}

/// Closed-loop echo calls with `payload`-byte arguments for `seconds`,
/// each node knowing `peers` idle peers besides its partner; prints round
/// trips per second, nanoseconds per round trip and frames per round trip.
pub fn run(seconds: f64, payload: usize, peers: u16) -> Result<(), String> {
    let clock = MonotonicClock::new();
    let (a_at, b_at) = (host_endpoint(1), host_endpoint(2));
    let config = NodeConfig::new(FRAME_LEN);
    let mut client = Node::new(config).map_err(|e| e.to_string())?;
    let mut server = Node::new(config).map_err(|e| e.to_string())?;
    let now = clock.now();
    let peer = client.add_peer(now, "b", b_at).map_err(|e| e.to_string())?;
    server.add_peer(now, "a", a_at).map_err(|e| e.to_string())?;
    for index in 0..peers {
        for node in [&mut client, &mut server] {
            node.add_peer(now, &format!("idle{index}"), idle_peer(index))
                .map_err(|e| e.to_string())?;
        }
    }
    let echo: Box<dyn Dispatch + Send> = Box::new(Echo);
    server.export_rpc("echo", echo).map_err(|e| e.to_string())?;
    let session = client
        .open(now, peer, Service::Rpc, "echo")
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; FRAME_LEN];
    for _ in 0..100 {
        carry(&mut client, a_at, &mut server, b_at, clock.now(), &mut buf);
        carry(&mut server, b_at, &mut client, a_at, clock.now(), &mut buf);
        if client.is_open(session) {
            break;
        }
    }
    if !client.is_open(session) {
        return Err("the echo session did not open".into());
    }
    let args = vec![0x5a; payload];
    let mut round_trip = |count: u64| -> Result<u64, String> {
        let mut frames = 0u64;
        for _ in 0..count {
            // One clock reading per side and step, as a datapath's loop.
            client
                .call(clock.now(), session, ECHO, 0, args.clone())
                .map_err(|e| format!("call: {e}"))?;
            let mut done = false;
            while !done {
                frames += carry(&mut client, a_at, &mut server, b_at, clock.now(), &mut buf) as u64;
                while server.poll_event().is_some() {}
                frames += carry(&mut server, b_at, &mut client, a_at, clock.now(), &mut buf) as u64;
                while let Some(event) = client.poll_event() {
                    if let NodeEvent::CallDone { outcome, .. } = event {
                        outcome.result.map_err(|e| format!("call: {e}"))?;
                        done = true;
                    }
                }
            }
        }
        Ok(frames)
    };
    round_trip(10_000)?;
    let window = Duration::from_secs_f64(seconds.max(0.01));
    let start = StdInstant::now();
    let (mut calls, mut frames) = (0u64, 0u64);
    while start.elapsed() < window {
        frames += round_trip(1000)?;
        calls += 1000;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{:<52} {:>14}",
        "operation (one core, both nodes)", "figure"
    );
    println!(
        "{:<52} {:>14.0}",
        format!("echo round trips per second, {payload}-byte args, {peers} idle peers"),
        calls as f64 / elapsed
    );
    println!(
        "{:<52} {:>14.0}",
        "ns per round trip",
        elapsed * 1e9 / calls as f64
    );
    println!(
        "{:<52} {:>14.2}",
        "frames per round trip",
        frames as f64 / calls as f64
    );
    Ok(())
}
