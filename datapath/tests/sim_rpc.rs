//! The RPC engine between two nodes on the in-memory network under loss,
//! duplication and reordering, in virtual time: every call executes at most
//! once and ends exactly once, with the right result; large messages are
//! fragmented; calls to a dead peer time out.

use std::collections::HashMap;
use std::time::Duration;

use xrelay_datapath::engine::rpc::{RpcClient, RpcConfig, RpcServer};
use xrelay_datapath::marshal::CallError;
use xrelay_datapath::time::Instant;
use xrelay_datapath::transport::mem::{host_endpoint, Faults, MemNetwork, MemTransport};
use xrelay_datapath::transport::Transport;
use xrelay_datapath::wire::{Flags, Frame, Message};

fn send(transport: &mut MemTransport, to: u8, sequence: &mut u64, message: Message<'_>) {
    let frame = Frame {
        flags: Flags::NONE,
        channel: 1,
        sequence: *sequence,
        message,
    };
    *sequence += 1;
    let sent = transport
        .send(&mut |buf| {
            let len = frame.buffer_len();
            frame.emit(&mut buf[..len]);
            Some((host_endpoint(to), len))
        })
        .unwrap();
    assert!(sent);
}

/// The server's "application": the arguments reversed, or exception -1000
/// for arguments starting with 0xee. Counts executions per request id.
fn execute(args: &[u8]) -> (i32, Vec<u8>) {
    if args.first() == Some(&0xee) {
        (-1000, Vec::new())
    } else {
        (0, args.iter().rev().copied().collect())
    }
}

struct Outcomes {
    results: HashMap<u64, Result<(i32, Vec<u8>), CallError>>,
    executions: HashMap<u64, u32>,
}

/// Runs `calls` (argument messages) from host 1 to host 2 until every call
/// has ended or `limit` of virtual time has passed.
fn run(
    network: &MemNetwork,
    calls: &[Vec<u8>],
    config: RpcConfig,
    limit: Duration,
) -> (Outcomes, HashMap<u64, Vec<u8>>) {
    let mut a = network.attach(1);
    let mut b = network.attach(2);
    let mut client = RpcClient::new(config);
    let mut server = RpcServer::new(config);
    let (mut seq_a, mut seq_b) = (1u64, 1u64);
    let mut now = Instant::ZERO;
    let mut expected = HashMap::new();
    let mut outcomes = Outcomes {
        results: HashMap::new(),
        executions: HashMap::new(),
    };
    let mut next = 0;
    while now < Instant::ZERO + limit && (next < calls.len() || client.outstanding() > 0) {
        while next < calls.len() && client.outstanding() < 32 {
            let id = client.call(now, 7, 1, calls[next].clone()).unwrap();
            expected.insert(id, calls[next].clone());
            next += 1;
        }
        b.recv(
            now,
            256,
            &mut |_, bytes| match Frame::parse(bytes).map(|f| f.0.message) {
                Ok(Message::RpcCall(call)) => server.handle_call(now, &call),
                Ok(Message::RpcAck(ack)) => server.handle_ack(&ack),
                _ => {}
            },
        )
        .unwrap();
        while let Some(ready) = server.poll_call() {
            *outcomes.executions.entry(ready.request_id).or_default() += 1;
            let (code, reply) = execute(&ready.args);
            server.complete(now, ready.request_id, code, reply).unwrap();
        }
        server.expire(now);
        let mut budget = 64;
        while budget > 0 {
            let Some(message) = server.poll_transmit() else {
                break;
            };
            send(&mut b, 1, &mut seq_b, message);
            budget -= 1;
        }
        b.flush(now).unwrap();

        a.recv(
            now,
            256,
            &mut |_, bytes| match Frame::parse(bytes).map(|f| f.0.message) {
                Ok(Message::RpcReply(reply)) => client.handle_reply(now, &reply),
                Ok(Message::RpcAck(ack)) => client.handle_ack(&ack),
                _ => {}
            },
        )
        .unwrap();
        let mut budget = 64;
        while budget > 0 {
            let Some(message) = client.poll_transmit(now) else {
                break;
            };
            send(&mut a, 2, &mut seq_a, message);
            budget -= 1;
        }
        a.flush(now).unwrap();
        while let Some(outcome) = client.poll_event() {
            let previous = outcomes.results.insert(outcome.request_id, outcome.result);
            assert!(
                previous.is_none(),
                "call {} ended twice",
                outcome.request_id
            );
        }
        now += Duration::from_micros(100);
    }
    (outcomes, expected)
}

#[test]
fn calls_execute_at_most_once_and_end_exactly_once_under_loss() {
    for seed in [1, 2] {
        let network = MemNetwork::new(seed, Faults::lossy(0.15), 1500);
        let mut rng = fastrand::Rng::with_seed(seed);
        let calls: Vec<Vec<u8>> = (0..300)
            .map(|i| {
                let len = if i % 10 == 0 {
                    rng.usize(0..40_000)
                } else {
                    rng.usize(0..200)
                };
                let mut args: Vec<u8> = (0..len).map(|_| rng.u8(..0xee)).collect();
                if i % 7 == 0 {
                    args.insert(0, 0xee);
                }
                args
            })
            .collect();
        let (outcomes, expected) = run(
            &network,
            &calls,
            RpcConfig::default(),
            Duration::from_secs(30),
        );
        assert_eq!(
            outcomes.results.len(),
            calls.len(),
            "seed {seed}: every call ended"
        );
        for (id, args) in &expected {
            assert!(
                outcomes.executions.get(id).copied().unwrap_or(0) <= 1,
                "executed twice"
            );
            let result = outcomes.results[id]
                .as_ref()
                .expect("no call fails on a live link");
            assert_eq!(result, &execute(args), "seed {seed}: request {id}");
            assert_eq!(outcomes.executions[id], 1);
        }
        assert!(network.stats().lost > 100 && network.stats().duplicated > 0);
    }
}

#[test]
fn a_one_mebibyte_call_and_reply_cross_a_lossy_link() {
    let network = MemNetwork::new(9, Faults::lossy(0.1), 1500);
    let args: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (outcomes, _) = run(
        &network,
        std::slice::from_ref(&args),
        RpcConfig::default(),
        Duration::from_secs(30),
    );
    let (code, reply) = outcomes.results[&1].clone().unwrap();
    assert_eq!(code, 0);
    assert_eq!(reply, execute(&args).1);
    assert_eq!(outcomes.executions[&1], 1);
}

#[test]
fn calls_to_a_dead_peer_time_out_instead_of_hanging() {
    let network = MemNetwork::new(3, Faults::default(), 1500);
    network.set_host_up(2, false);
    let config = RpcConfig {
        call_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    };
    let (outcomes, _) = run(
        &network,
        &[vec![1, 2, 3], vec![4]],
        config,
        Duration::from_secs(2),
    );
    assert_eq!(outcomes.results.len(), 2);
    assert!(outcomes
        .results
        .values()
        .all(|r| r == &Err(CallError::Timeout)));
    assert!(outcomes.executions.is_empty());
}
