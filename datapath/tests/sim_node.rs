//! Whole nodes on the in-memory network, in virtual time: sessions opened
//! by label, RPC, signals and ROM modules together under loss,
//! duplication and reordering; peers that die, restart and come back;
//! hostile frames. Deterministic (seeded) and fast.
#![expect(
    clippy::cast_possible_truncation,
    reason = "test payloads are wrapping byte patterns"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use xrelay_datapath::engine::peer::PeerEvent;
use xrelay_datapath::engine::rom::RomVersion;
use xrelay_datapath::example::{KvStoreServer, MemoryStore};
use xrelay_datapath::marshal::CallError;
use xrelay_datapath::node::{CloseCause, ExportId, Node, NodeConfig, NodeEvent, PeerId, SessionId};
use xrelay_datapath::poll::{poll_once, Budget};
use xrelay_datapath::time::Instant;
use xrelay_datapath::transport::mem::{host_endpoint, Faults, MemNetwork, MemTransport};
use xrelay_datapath::transport::Transport;
use xrelay_datapath::wire::rom::RomState;
use xrelay_datapath::wire::session::{OpenStatus, Service};

const STEP: Duration = Duration::from_micros(100);

/// Interface id of the echo dispatcher below.
const ECHO: u32 = 77;

/// A dispatcher that returns its arguments reversed (opcode 0), raises
/// -1000 (opcode 1), and counts executions per argument string.
struct Echo {
    executions: Arc<std::sync::Mutex<HashMap<Vec<u8>, u32>>>,
}

impl xrelay_datapath::marshal::Dispatch for Echo {
    fn interface_id(&self) -> u32 {
        ECHO
    }

    fn dispatch(&mut self, opcode: u16, args: &[u8], reply: &mut Vec<u8>) -> i32 {
        *self
            .executions
            .lock()
            .unwrap()
            .entry(args.to_vec())
            .or_default() += 1;
        reply.clear();
        match opcode {
            0 => {
                reply.extend(args.iter().rev());
                0
            }
            1 => -1000,
            _ => -2,
        }
    }
}

struct Host {
    node: Node,
    link: MemTransport,
    events: Vec<NodeEvent>,
}

struct Sim {
    network: MemNetwork,
    hosts: Vec<Host>,
    now: Instant,
    /// Hosts that do not run until this time (a starved thread).
    frozen: HashMap<u8, Instant>,
}

fn config(seed: u64) -> NodeConfig {
    let mut config = NodeConfig::new(1472);
    config.incarnation = seed;
    config.initial_sequence = 1;
    config
}

impl Sim {
    /// Hosts 1..=n, each with every other host as a peer named `h<i>`.
    fn new(seed: u64, faults: Faults, n: u8) -> Sim {
        let network = MemNetwork::new(seed, faults, 1500);
        let mut sim = Sim {
            network,
            hosts: Vec::new(),
            now: Instant::from_nanos(1_000_000),
            frozen: HashMap::new(),
        };
        for host in 1..=n {
            let h = sim.make_host(host, n, seed * 100 + u64::from(host));
            sim.hosts.push(h);
        }
        sim
    }

    fn make_host(&self, host: u8, n: u8, incarnation: u64) -> Host {
        let mut node = Node::new(config(incarnation)).unwrap();
        for other in (1..=n).filter(|&o| o != host) {
            node.add_peer(self.now, &format!("h{other}"), host_endpoint(other))
                .unwrap();
        }
        Host {
            node,
            link: self.network.attach(host),
            events: Vec::new(),
        }
    }

    /// Host `i` (1-based) starts afresh: new incarnation, no state.
    fn restart(&mut self, host: u8, incarnation: u64) {
        let n = u8::try_from(self.hosts.len()).unwrap();
        self.hosts[usize::from(host - 1)] = self.make_host(host, n, incarnation);
    }

    fn host(&mut self, host: u8) -> &mut Host {
        &mut self.hosts[usize::from(host - 1)]
    }

    fn step(&mut self) {
        let now = self.now;
        for (i, host) in self.hosts.iter_mut().enumerate() {
            let id = u8::try_from(i + 1).unwrap();
            if self.frozen.get(&id).is_some_and(|&until| now < until) {
                continue;
            }
            let node = &mut host.node;
            // Unbounded sends: the simulation wants everything due out
            // in this step.
            let budget = Budget {
                rx: 256,
                tx: usize::MAX,
            };
            poll_once(node, &mut host.link, now, budget).unwrap();
            while let Some(event) = node.poll_event() {
                host.events.push(event);
            }
        }
        self.now += STEP;
    }

    /// Steps until `done` or `limit` of virtual time.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn open(&mut self, host: u8, peer: &str, service: Service, label: &str) -> SessionId {
        let now = self.now;
        let h = self.host(host);
        let peer = h.node.peer(peer).unwrap();
        let session = h.node.open(now, peer, service, label).unwrap();
        assert!(
            self.run_until(Duration::from_secs(2), |sim| sim
                .host(host)
                .node
                .is_open(session)),
            "session {label} did not open"
        );
        session
    }
}

fn calls_done(events: &[NodeEvent]) -> HashMap<u64, Result<(i32, Vec<u8>), CallError>> {
    events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::CallDone { outcome, .. } => {
                Some((outcome.request_id, outcome.result.clone()))
            }
            _ => None,
        })
        .collect()
}

fn echo_export(sim: &mut Sim, host: u8) -> Arc<std::sync::Mutex<HashMap<Vec<u8>, u32>>> {
    let executions = Arc::default();
    let echo = Echo {
        executions: Arc::clone(&executions),
    };
    sim.host(host)
        .node
        .export_rpc("echo", Box::new(echo))
        .unwrap();
    executions
}

#[test]
fn everything_at_once_under_loss_reordering_and_duplication() {
    for seed in [3, 4] {
        let mut sim = Sim::new(seed, Faults::lossy(0.15), 2);
        let executions = echo_export(&mut sim, 2);
        let signals = sim.host(2).node.export_signal("events").unwrap();
        let module = sim.host(2).node.export_rom("config").unwrap();
        let rpc = sim.open(1, "h2", Service::Rpc, "echo");
        let sig = sim.open(1, "h2", Service::Signal, "events");
        let rom = sim.open(1, "h2", Service::Rom, "config");

        // 200 calls in flight 40 at a time, some fragmented, some raising.
        let mut expected = HashMap::new();
        let mut next = 0u32;
        let mut submitted = 0u64;
        let mut published = HashMap::new();
        let done = sim.run_until(Duration::from_secs(30), |sim| {
            let now = sim.now;
            let h = sim.host(1);
            let open = h.node.is_open(rpc);
            let finished = calls_done(&h.events).len();
            while open && next < 200 && (next as usize) < finished + 40 {
                let len = (next as usize * 131) % 6000;
                let args: Vec<u8> = (0..len)
                    .map(|j| (j as u32 ^ next) as u8)
                    .chain(next.to_le_bytes())
                    .collect();
                let opcode = u16::from(next.is_multiple_of(7));
                let id = h.node.call(now, rpc, ECHO, opcode, args.clone()).unwrap();
                expected.insert(id, (opcode, args));
                next += 1;
            }
            if submitted < 1000 && now.as_nanos() % 1_000_000 == 0 {
                h.node.submit(sig, 0, 50).unwrap();
                submitted += 50;
            }
            if published.len() < 4 && now.as_nanos() % 7_000_000 == 0 {
                let data: Vec<u8> = (0..(published.len() + 1) * 300_000)
                    .map(|i| (i * 7 + published.len()) as u8)
                    .collect();
                let hash = *blake3::hash(&data).as_bytes();
                let v = sim.host(2).node.publish(now, module, Some(data)).unwrap();
                published.insert(v, hash);
            }
            let newest = published.keys().max().copied();
            let rom_done =
                newest.is_some() && sim.host(1).node.rom_current(rom).map(|v| v.version) == newest;
            let delivered: u64 = sim
                .host(2)
                .events
                .iter()
                .map(|e| match e {
                    NodeEvent::Signal { count, .. } => *count,
                    _ => 0,
                })
                .sum();
            next == 200
                && calls_done(&sim.host(1).events).len() == 200
                && submitted == 1000
                && delivered == 1000
                && published.len() == 4
                && rom_done
        });
        assert!(done, "seed {seed}: not everything finished");

        // RPC: exactly one end per call, the right result, at most one execution.
        let results = calls_done(&sim.host(1).events);
        for (id, (opcode, args)) in &expected {
            let result = results[id].as_ref().unwrap();
            if *opcode == 1 {
                assert_eq!(result.0, -1000);
            } else {
                let reversed: Vec<u8> = args.iter().rev().copied().collect();
                assert_eq!(result, &(0, reversed));
            }
            assert_eq!(
                executions.lock().unwrap()[args],
                1,
                "executed more than once"
            );
        }
        // Signals: delivered equals submitted, never more.
        let delivered: u64 = sim
            .host(2)
            .events
            .iter()
            .map(|e| match e {
                NodeEvent::Signal { export, count, .. } => {
                    assert_eq!(*export, signals);
                    *count
                }
                _ => 0,
            })
            .sum();
        assert_eq!(delivered, submitted);
        // ROM: each version seen is complete and what was published; the
        // last is the newest.
        let seen: Vec<Arc<RomVersion>> = sim
            .host(1)
            .events
            .iter()
            .filter_map(|e| match e {
                NodeEvent::RomChanged { version, .. } => Some(Arc::clone(version)),
                _ => None,
            })
            .collect();
        let mut previous = 0;
        for v in &seen {
            assert!(v.version > previous);
            previous = v.version;
            assert_eq!(blake3::hash(&v.data).as_bytes(), &v.hash);
            if v.version > 1 {
                assert_eq!(published[&v.version], v.hash);
            }
        }
        assert_eq!(Some(previous), published.keys().max().copied());
        let stats = sim.host(1).node.stats();
        assert_eq!(stats.malformed + stats.unknown_peer, 0, "{stats:?}");
    }
}

#[test]
fn unknown_labels_are_refused_and_the_application_is_told() {
    let mut sim = Sim::new(1, Faults::default(), 2);
    let now = sim.now;
    let h = sim.host(1);
    let peer = h.node.peer("h2").unwrap();
    let session = h.node.open(now, peer, Service::Rpc, "nobody").unwrap();
    sim.run_until(Duration::from_secs(1), |sim| !sim.host(1).events.is_empty());
    assert!(sim.host(1).events.iter().any(|e| matches!(
        e,
        NodeEvent::Closed { session: s, reason: CloseCause::Refused(OpenStatus::NoRoute) } if *s == session
    )));
    assert_eq!(sim.host(2).node.stats().refused_opens, 1);
    let now = sim.now;
    assert!(matches!(
        sim.host(1).node.call(now, session, 1, 0, vec![]),
        Err(CallError::Closed(_))
    ));
}

#[test]
fn calls_to_a_dead_peer_fail_as_unreachable_within_the_dead_time() {
    let mut sim = Sim::new(2, Faults::default(), 2);
    echo_export(&mut sim, 2);
    let rpc = sim.open(1, "h2", Service::Rpc, "echo");
    sim.run_until(Duration::from_millis(300), |_| false);
    sim.network.set_host_up(2, false);
    let now = sim.now;
    let id = sim
        .host(1)
        .node
        .call(now, rpc, ECHO, 0, vec![1, 2, 3])
        .unwrap();
    let dead_after = sim.host(1).node.config().liveness.dead_after;
    let started = sim.now;
    assert!(sim.run_until(Duration::from_secs(10), |sim| calls_done(
        &sim.host(1).events
    )
    .contains_key(&id)));
    let took = sim.now - started;
    assert!(
        took <= dead_after + Duration::from_millis(5),
        "took {took:?}"
    );
    assert!(matches!(
        calls_done(&sim.host(1).events)[&id],
        Err(CallError::Unreachable(_))
    ));
    assert!(sim.host(1).events.iter().any(|e| matches!(
        e,
        NodeEvent::Peer {
            peer: PeerId(0),
            event: PeerEvent::Down
        }
    )));
    // New calls fail at once while the peer is down.
    let now = sim.now;
    assert!(matches!(
        sim.host(1).node.call(now, rpc, ECHO, 0, vec![]),
        Err(CallError::Unreachable(_))
    ));
    // When it comes back, the session reopens by itself and works.
    sim.network.set_host_up(2, true);
    assert!(sim.run_until(Duration::from_secs(5), |sim| sim.host(1).node.is_open(rpc)));
    let now = sim.now;
    let id = sim
        .host(1)
        .node
        .call(now, rpc, ECHO, 0, vec![9, 8])
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| calls_done(
        &sim.host(1).events
    )
    .contains_key(&id)));
    assert_eq!(calls_done(&sim.host(1).events)[&id], Ok((0, vec![8, 9])));
}

#[test]
fn a_restarted_server_is_reopened_and_a_restarted_publisher_converges() {
    let mut sim = Sim::new(5, Faults::lossy(0.1), 2);
    echo_export(&mut sim, 2);
    let module = sim.host(2).node.export_rom("config").unwrap();
    let rpc = sim.open(1, "h2", Service::Rpc, "echo");
    let rom = sim.open(1, "h2", Service::Rom, "config");
    let now = sim.now;
    sim.host(2)
        .node
        .publish(now, module, Some(vec![7; 100_000]))
        .unwrap();
    sim.host(2)
        .node
        .publish(now, module, Some(vec![8; 200_000]))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        sim.host(1)
            .node
            .rom_current(rom)
            .is_some_and(|v| v.version == 3)
    }));

    // Host 2 restarts with new content at a *lower* version number, and
    // exports its services only a while after it is back: the reopens it
    // refuses meanwhile are tried again.
    sim.restart(2, 999);
    sim.run_until(Duration::from_millis(300), |_| false);
    assert!(sim.host(2).node.stats().refused_opens > 0);
    assert!(sim.host(1).node.stats().refused_reopens > 0);
    echo_export(&mut sim, 2);
    let module = sim.host(2).node.export_rom("config").unwrap();
    let now = sim.now;
    let fresh: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let v = sim
        .host(2)
        .node
        .publish(now, module, Some(fresh.clone()))
        .unwrap();
    assert_eq!(v, 2);
    assert!(
        sim.run_until(Duration::from_secs(10), |sim| {
            sim.host(1)
                .node
                .rom_current(rom)
                .is_some_and(|v| v.data == fresh)
        }),
        "the subscriber did not converge on the restarted publisher's content"
    );
    assert!(sim.host(1).events.iter().any(|e| matches!(
        e,
        NodeEvent::Peer {
            event: PeerEvent::Restarted { incarnation: 999 },
            ..
        }
    )));
    // The RPC session was reopened too.
    assert!(sim.run_until(Duration::from_secs(5), |sim| sim.host(1).node.is_open(rpc)));
    let now = sim.now;
    let id = sim
        .host(1)
        .node
        .call(now, rpc, ECHO, 0, vec![1, 2])
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| calls_done(
        &sim.host(1).events
    )
    .contains_key(&id)));
    assert_eq!(calls_done(&sim.host(1).events)[&id], Ok((0, vec![2, 1])));
}

#[test]
fn late_and_multiple_subscribers_get_the_current_version_and_removal() {
    let mut sim = Sim::new(6, Faults::lossy(0.1), 3);
    let module = sim.host(1).node.export_rom("config").unwrap();
    let now = sim.now;
    let data: Vec<u8> = (0..500_000u32).map(|i| (i / 3) as u8).collect();
    let v = sim
        .host(1)
        .node
        .publish(now, module, Some(data.clone()))
        .unwrap();
    let sub2 = sim.open(2, "h1", Service::Rom, "config");
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        sim.host(2)
            .node
            .rom_current(sub2)
            .is_some_and(|c| c.version == v)
    }));
    // Host 3 subscribes late and still gets the current version at once.
    let sub3 = sim.open(3, "h1", Service::Rom, "config");
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        sim.host(3)
            .node
            .rom_current(sub3)
            .is_some_and(|c| c.version == v)
    }));
    assert_eq!(sim.host(3).node.rom_current(sub3).unwrap().data, data);
    // Removal and empty content are states both see.
    let now = sim.now;
    let removed = sim.host(1).node.publish(now, module, None).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| {
        [(2, sub2), (3, sub3)].iter().all(|&(h, s)| {
            sim.host(h)
                .node
                .rom_current(s)
                .is_some_and(|c| c.version == removed && c.state == RomState::Removed)
        })
    }));
    let now = sim.now;
    let empty = sim
        .host(1)
        .node
        .publish(now, module, Some(Vec::new()))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| {
        [(2, sub2), (3, sub3)].iter().all(|&(h, s)| {
            sim.host(h).node.rom_current(s).is_some_and(|c| {
                c.version == empty && c.state == RomState::Valid && c.data.is_empty()
            })
        })
    }));
}

#[test]
fn the_kv_interface_works_through_nodes() {
    use xrelay_datapath::example::KvStoreOpcode;
    use xrelay_datapath::marshal::to_vec;
    let mut sim = Sim::new(7, Faults::lossy(0.1), 2);
    sim.host(2)
        .node
        .export_rpc("kv", Box::new(KvStoreServer(MemoryStore::new(10))))
        .unwrap();
    let rpc = sim.open(1, "h2", Service::Rpc, "kv");
    let now = sim.now;
    let args = to_vec(&("k".to_owned(), vec![1u8, 2, 3]));
    let id = sim
        .host(1)
        .node
        .call(
            now,
            rpc,
            KvStoreOpcode::INTERFACE_ID,
            KvStoreOpcode::Put.code(),
            args,
        )
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| calls_done(
        &sim.host(1).events
    )
    .contains_key(&id)));
    assert_eq!(calls_done(&sim.host(1).events)[&id].as_ref().unwrap().0, 0);
    // A call for another interface on this session: INVALID_OBJECT.
    let now = sim.now;
    let id = sim.host(1).node.call(now, rpc, 12345, 0, vec![]).unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| calls_done(
        &sim.host(1).events
    )
    .contains_key(&id)));
    assert_eq!(calls_done(&sim.host(1).events)[&id], Ok((-1, vec![])));
}

#[test]
fn export_ids_are_distinct() {
    let mut sim = Sim::new(8, Faults::default(), 2);
    let a = sim.host(1).node.export_signal("a").unwrap();
    let b = sim.host(1).node.export_signal("b").unwrap();
    assert_ne!(a, b);
    assert!(sim.host(1).node.export_signal("a").is_err());
    let _: ExportId = sim.host(1).node.export_rom("a").unwrap();
}

/// Sends raw relay bytes from host `from`'s link to host `to`.
fn inject(sim: &mut Sim, from: u8, to: u8, bytes: &[u8]) {
    let now = sim.now;
    let link = &mut sim.host(from).link;
    assert!(link
        .send(&mut |buf| {
            buf[..bytes.len()].copy_from_slice(bytes);
            Some((host_endpoint(to), bytes.len()))
        })
        .unwrap());
    link.flush(now).unwrap();
}

fn frame_bytes(channel: u32, message: xrelay_datapath::wire::Message<'_>) -> Vec<u8> {
    let frame = xrelay_datapath::wire::Frame {
        flags: xrelay_datapath::wire::Flags::NONE,
        channel,
        sequence: 1,
        message,
    };
    let mut out = vec![0; frame.buffer_len()];
    frame.emit(&mut out);
    out
}

#[test]
fn hostile_frames_are_counted_drops_and_memory_stays_bounded() {
    use xrelay_datapath::wire::rpc::{Fragment, RpcCall};
    use xrelay_datapath::wire::signal::Signal;
    use xrelay_datapath::wire::Message;

    // Host 1 misbehaves, host 3 is an honest peer of host 2.
    let mut sim = Sim::new(9, Faults::default(), 3);
    echo_export(&mut sim, 2);
    let rpc = sim.open(1, "h2", Service::Rpc, "echo");
    let honest = sim.open(3, "h2", Service::Rpc, "echo");
    let channel = sim.host(1).node.channel_of(rpc).unwrap();
    let signal = frame_bytes(
        channel,
        Message::Signal(Signal {
            context: 1,
            count: 5,
        }),
    );
    let before = sim.host(2).node.stats();

    // Truncated, a length pointing past the end, unknown kind, unknown
    // version, an authenticated frame without keys, a session frame for
    // a channel nobody opened, an open on a non-zero channel.
    inject(&mut sim, 1, 2, &signal[..10]);
    let mut long = signal.clone();
    long[6] = 0xff;
    inject(&mut sim, 1, 2, &long);
    let mut kind = signal.clone();
    kind[4] = 0x7f;
    inject(&mut sim, 1, 2, &kind);
    let mut version = signal.clone();
    version[2] = 9;
    inject(&mut sim, 1, 2, &version);
    let mut auth = signal.clone();
    auth[5] = 0x01;
    auth.extend_from_slice(&[0; 16]);
    inject(&mut sim, 1, 2, &auth);
    inject(
        &mut sim,
        1,
        2,
        &frame_bytes(
            channel.wrapping_add(1000),
            Message::Signal(Signal {
                context: 1,
                count: 5,
            }),
        ),
    );
    // A frame from a host that is not a configured peer.
    let mut stranger = sim.network.attach(4);
    let now = sim.now;
    stranger
        .send(&mut |buf| {
            buf[..signal.len()].copy_from_slice(&signal);
            Some((host_endpoint(2), signal.len()))
        })
        .unwrap();
    stranger.flush(now).unwrap();
    let link_drops = sim.host(2).link.drops();
    for _ in 0..5 {
        sim.step();
    }
    let after = sim.host(2).node.stats();
    // The truncated frame, the one whose length points past its end and
    // the unknown version are refused by the link, which checks every
    // datagram's relay header before the node sees it.
    assert_eq!(sim.host(2).link.drops() - link_drops, 3, "{after:?}");
    assert_eq!(after.malformed - before.malformed, 0, "{after:?}");
    assert_eq!(after.unknown_kind - before.unknown_kind, 1);
    assert_eq!(after.unauthenticated - before.unauthenticated, 1);
    assert_eq!(after.unknown_session - before.unknown_session, 1);
    assert_eq!(after.unknown_peer - before.unknown_peer, 1);
    assert_eq!(after.wrong_service - before.wrong_service, 0);
    // A SIGNAL on the RPC session's channel: wrong service, counted.
    inject(&mut sim, 1, 2, &signal);
    sim.step();
    assert_eq!(
        sim.host(2).node.stats().wrong_service - before.wrong_service,
        1
    );

    // First fragments of 16 MiB calls that never complete: the peer's
    // budget (64 MiB) admits four, refuses the rest, and frees them once
    // they are stale.
    let data = vec![0u8; 1000];
    for i in 0..6u64 {
        let call = RpcCall {
            request_id: 1_000_000 + i,
            interface: ECHO,
            opcode: 0,
            fragment: Fragment {
                index: 0,
                count: 16 * 1024,
                offset: 0,
                total_len: 16 * 1024 * 1024,
            },
            data: &data,
        };
        inject(
            &mut sim,
            1,
            2,
            &frame_bytes(channel, Message::RpcCall(call)),
        );
    }
    sim.step();
    sim.step();
    let dropped = sim.host(2).node.stats().rpc_dropped;
    assert_eq!(dropped, 2, "{:?}", sim.host(2).node.stats());
    // Another peer's calls are not disturbed; the flooding peer's own
    // calls wait until its stale fragments expire.
    let now = sim.now;
    let id = sim
        .host(3)
        .node
        .call(now, honest, ECHO, 0, vec![4, 5])
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(2), |sim| calls_done(
        &sim.host(3).events
    )
    .contains_key(&id)));
    assert_eq!(calls_done(&sim.host(3).events)[&id], Ok((0, vec![5, 4])));
    sim.run_until(Duration::from_secs(16), |_| false);
    let now = sim.now;
    let id = sim
        .host(1)
        .node
        .call(now, rpc, ECHO, 0, vec![6, 7])
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(2), |sim| calls_done(
        &sim.host(1).events
    )
    .contains_key(&id)));
    assert_eq!(calls_done(&sim.host(1).events)[&id], Ok((0, vec![7, 6])));
    for i in 10..14u64 {
        let call = RpcCall {
            request_id: 1_000_000 + i,
            interface: ECHO,
            opcode: 0,
            fragment: Fragment {
                index: 0,
                count: 16 * 1024,
                offset: 0,
                total_len: 16 * 1024 * 1024,
            },
            data: &data,
        };
        inject(
            &mut sim,
            1,
            2,
            &frame_bytes(channel, Message::RpcCall(call)),
        );
    }
    sim.step();
    assert_eq!(
        sim.host(2).node.stats().rpc_dropped,
        dropped,
        "stale fragments were not freed"
    );
}

#[test]
fn a_starved_node_is_declared_down_and_everything_recovers() {
    // Host 2 stops running for longer than the dead time in the middle of
    // a transfer and of calls (a starved thread), then runs again: host 1
    // saw it down and reopened its sessions, host 2 saw nothing.
    for seed in [11, 12] {
        let mut sim = Sim::new(seed, Faults::lossy(0.1), 2);
        echo_export(&mut sim, 2);
        let module = sim.host(2).node.export_rom("config").unwrap();
        let rpc = sim.open(1, "h2", Service::Rpc, "echo");
        let rom = sim.open(1, "h2", Service::Rom, "config");
        let now = sim.now;
        let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        sim.host(2)
            .node
            .publish(now, module, Some(vec![1; 5000]))
            .unwrap();
        let newest = sim
            .host(2)
            .node
            .publish(now, module, Some(big.clone()))
            .unwrap();
        sim.run_until(Duration::from_millis(20), |_| false);
        let freeze_until = sim.now + Duration::from_millis(800);
        sim.frozen.insert(2, freeze_until);
        let now = sim.now;
        let id = sim.host(1).node.call(now, rpc, ECHO, 0, vec![1]).unwrap();
        sim.run_until(Duration::from_millis(900), |_| false);
        assert!(matches!(
            calls_done(&sim.host(1).events)[&id],
            Err(CallError::Unreachable(_))
        ));
        assert!(
            sim.run_until(Duration::from_secs(10), |sim| {
                sim.host(1)
                    .node
                    .rom_current(rom)
                    .is_some_and(|v| v.version == newest)
            }),
            "seed {seed}: the subscriber is stuck at {:?}",
            sim.host(1).node.rom_current(rom).map(|v| v.version)
        );
        assert_eq!(sim.host(1).node.rom_current(rom).unwrap().data, big);
        assert!(sim.run_until(Duration::from_secs(5), |sim| sim.host(1).node.is_open(rpc)));
        let now = sim.now;
        let id = sim
            .host(1)
            .node
            .call(now, rpc, ECHO, 0, vec![1, 2])
            .unwrap();
        assert!(sim.run_until(Duration::from_secs(5), |sim| calls_done(
            &sim.host(1).events
        )
        .contains_key(&id)));
        assert_eq!(calls_done(&sim.host(1).events)[&id], Ok((0, vec![2, 1])));
    }
}

#[test]
fn sessions_open_correctly_when_frames_overtake_the_session_reply() {
    // Heavy reordering and duplication: a publisher's first announce often
    // arrives before the SESSION_REPLY that names its channel. The
    // subscriber's "unknown session" answer must not kill the new session.
    for seed in 20..30 {
        let faults = Faults {
            reorder: 0.5,
            duplicate: 0.3,
            loss: 0.05,
            ..Faults::lossy(0.0)
        };
        let mut sim = Sim::new(seed, faults, 2);
        let module = sim.host(2).node.export_rom("config").unwrap();
        let now = sim.now;
        let v = sim
            .host(2)
            .node
            .publish(now, module, Some(vec![5; 30_000]))
            .unwrap();
        echo_export(&mut sim, 2);
        let rom = sim.open(1, "h2", Service::Rom, "config");
        let rpc = sim.open(1, "h2", Service::Rpc, "echo");
        assert!(
            sim.run_until(Duration::from_secs(5), |sim| {
                sim.host(1)
                    .node
                    .rom_current(rom)
                    .is_some_and(|c| c.version == v)
            }),
            "seed {seed}"
        );
        let now = sim.now;
        let later = sim
            .host(2)
            .node
            .publish(now, module, Some(vec![6; 40_000]))
            .unwrap();
        assert!(
            sim.run_until(Duration::from_secs(5), |sim| {
                sim.host(1)
                    .node
                    .rom_current(rom)
                    .is_some_and(|c| c.version == later)
            }),
            "seed {seed}: an update after the open did not arrive"
        );
        let now = sim.now;
        let id = sim.host(1).node.call(now, rpc, ECHO, 0, vec![3]).unwrap();
        assert!(sim.run_until(Duration::from_secs(5), |sim| calls_done(
            &sim.host(1).events
        )
        .contains_key(&id)));
        assert_eq!(
            calls_done(&sim.host(1).events)[&id],
            Ok((0, vec![3])),
            "seed {seed}"
        );
        // No session was lost and reopened on the way.
        assert!(
            !sim.host(1)
                .events
                .iter()
                .any(|e| matches!(e, NodeEvent::Interrupted { .. })),
            "seed {seed}: {:?} {:?}",
            sim.hosts[0]
                .events
                .iter()
                .filter(|e| !matches!(e, NodeEvent::CallDone { .. } | NodeEvent::RomChanged { .. }))
                .collect::<Vec<_>>(),
            sim.hosts[0].node.stats()
        );
    }
}

#[test]
fn a_restarted_subscriber_catches_up_and_its_old_sessions_are_freed() {
    let mut sim = Sim::new(13, Faults::lossy(0.15), 2);
    let module = sim.host(2).node.export_rom("config").unwrap();
    let now = sim.now;
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
    let v = sim
        .host(2)
        .node
        .publish(now, module, Some(data.clone()))
        .unwrap();
    let first = sim.open(1, "h2", Service::Rom, "config");
    assert!(sim.run_until(Duration::from_secs(10), |sim| {
        sim.host(1)
            .node
            .rom_current(first)
            .is_some_and(|c| c.version == v)
    }));
    for round in 0..3u64 {
        // Host 1 restarts (new incarnation, no state) and subscribes again.
        sim.restart(1, 5000 + round);
        let session = sim.open(1, "h2", Service::Rom, "config");
        assert!(
            sim.run_until(Duration::from_secs(10), |sim| {
                sim.host(1)
                    .node
                    .rom_current(session)
                    .is_some_and(|c| c.version == v)
            }),
            "round {round}"
        );
        assert_eq!(sim.host(1).node.rom_current(session).unwrap().data, data);
        // The publisher holds exactly the new subscription for host 1.
        let h1 = sim.host(2).node.peer("h1").unwrap();
        assert!(
            sim.run_until(Duration::from_secs(5), |sim| sim
                .host(2)
                .node
                .sessions_served(h1)
                == 1),
            "round {round}: {} sessions served",
            sim.host(2).node.sessions_served(h1)
        );
    }
}

#[test]
fn closed_sessions_are_freed_on_the_server_even_when_closes_are_lost() {
    let mut sim = Sim::new(14, Faults::lossy(0.3), 2);
    echo_export(&mut sim, 2);
    let h1 = sim.host(2).node.peer("h1").unwrap();
    for _ in 0..40 {
        let session = sim.open(1, "h2", Service::Rpc, "echo");
        sim.host(1).node.close(session);
    }
    assert!(
        sim.run_until(Duration::from_secs(5), |sim| sim
            .host(2)
            .node
            .sessions_served(h1)
            == 0),
        "{} sessions leaked",
        sim.host(2).node.sessions_served(h1)
    );
}

#[test]
fn a_node_waiting_for_a_down_peer_sleeps() {
    let mut sim = Sim::new(15, Faults::default(), 2);
    echo_export(&mut sim, 2);
    let rpc = sim.open(1, "h2", Service::Rpc, "echo");
    sim.network.set_host_up(2, false);
    sim.run_until(Duration::from_secs(1), |_| false);
    assert!(!sim.host(1).node.is_open(rpc));
    // Reopening waits for the peer: nothing is due before the next
    // heartbeat, so a driver may sleep instead of spinning.
    let now = sim.now;
    let next = sim.host(1).node.poll_timeout();
    assert!(next > now, "poll_timeout {next:?} is not after now {now:?}");
}

#[test]
fn policy_denies_counts_grants_on_reload_and_revokes_cleanly() {
    use std::collections::BTreeSet;
    let mut sim = Sim::new(16, Faults::lossy(0.1), 3);
    echo_export(&mut sim, 2);
    let rpc_export = ExportId(0);
    let module = sim.host(2).node.export_rom("config").unwrap();
    let node = &sim.host(2).node;
    let (h1, h3) = (node.peer("h1").unwrap(), node.peer("h3").unwrap());
    // B lets A call and subscribe, not C.
    let policy: BTreeSet<_> = [(h1, rpc_export), (h1, module)].into_iter().collect();
    sim.host(2).node.set_policy(Some(policy.clone()));
    let now = sim.now;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
    let v = sim
        .host(2)
        .node
        .publish(now, module, Some(data.clone()))
        .unwrap();
    let rpc_a = sim.open(1, "h2", Service::Rpc, "echo");
    let rom_a = sim.open(1, "h2", Service::Rom, "config");

    let now = sim.now;
    let h2 = sim.host(3).node.peer("h2").unwrap();
    let rom_c = sim
        .host(3)
        .node
        .open(now, h2, Service::Rom, "config")
        .unwrap();
    assert!(
        sim.run_until(Duration::from_secs(2), |sim| !sim.host(3).events.is_empty()
            && sim
                .host(3)
                .events
                .iter()
                .any(|e| matches!(e, NodeEvent::Closed { .. })))
    );
    assert!(sim.host(3).events.iter().any(|e| matches!(
        e,
        NodeEvent::Closed { session, reason: CloseCause::Refused(OpenStatus::Denied) } if *session == rom_c
    )));
    assert!(sim.host(2).node.stats().policy_denied >= 1);

    // Reload while A's transfer is in flight: C may now subscribe too.
    sim.run_until(Duration::from_millis(5), |_| false);
    let mut granted = policy.clone();
    granted.insert((h3, module));
    sim.host(2).node.set_policy(Some(granted));
    let rom_c = sim.open(3, "h2", Service::Rom, "config");
    assert!(sim.run_until(Duration::from_secs(20), |sim| {
        sim.host(1)
            .node
            .rom_current(rom_a)
            .is_some_and(|c| c.version == v)
            && sim
                .host(3)
                .node
                .rom_current(rom_c)
                .is_some_and(|c| c.version == v)
    }));
    assert_eq!(sim.host(3).node.rom_current(rom_c).unwrap().data, data);
    // A's sessions were not disturbed by the reload.
    assert!(!sim
        .host(1)
        .events
        .iter()
        .any(|e| matches!(e, NodeEvent::Interrupted { .. } | NodeEvent::Closed { .. })));
    assert_eq!(sim.host(2).node.stats().revoked, 0);

    // A new policy withdraws A's RPC: its session closes with a clear
    // reason and calls fail as closed.
    let mut withdrawn = BTreeSet::new();
    withdrawn.insert((h1, module));
    withdrawn.insert((h3, module));
    sim.host(2).node.set_policy(Some(withdrawn));
    assert!(sim.run_until(Duration::from_secs(5), |sim| sim.host(1).events.iter().any(|e| matches!(
        e,
        NodeEvent::Closed { session, reason: CloseCause::ClosedByServer(xrelay_datapath::wire::session::CloseReason::Revoked) } if *session == rpc_a
    ))));
    let now = sim.now;
    assert!(matches!(
        sim.host(1).node.call(now, rpc_a, ECHO, 0, vec![1]),
        Err(CallError::Closed(_))
    ));
    assert_eq!(sim.host(2).node.stats().revoked, 1);
    // The ROM subscription, still allowed, goes on.
    let now = sim.now;
    let v2 = sim
        .host(2)
        .node
        .publish(now, module, Some(vec![9; 10_000]))
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| {
        sim.host(1)
            .node
            .rom_current(rom_a)
            .is_some_and(|c| c.version == v2)
    }));
}

#[test]
fn authenticated_peers_talk_and_wrong_keys_and_replays_are_counted_drops() {
    use xrelay_datapath::auth::FrameKeys;
    let mut sim = Sim::new(17, Faults::lossy(0.1), 3);
    let (k12, k23) = ([1u8; 32], [2u8; 32]);
    let set = |sim: &mut Sim, host: u8, peer: &str, keys: FrameKeys| {
        let node = &mut sim.host(host).node;
        let id = node.peer(peer).unwrap();
        node.set_peer_keys(id, Some(keys)).unwrap();
    };
    set(&mut sim, 1, "h2", FrameKeys::derive(&k12, "h1", "h2"));
    set(&mut sim, 2, "h1", FrameKeys::derive(&k12, "h2", "h1"));
    set(&mut sim, 2, "h3", FrameKeys::derive(&k23, "h2", "h3"));
    // Host 3 has the wrong key for h2.
    set(&mut sim, 3, "h2", FrameKeys::derive(&[9u8; 32], "h3", "h2"));
    echo_export(&mut sim, 2);
    let rpc = sim.open(1, "h2", Service::Rpc, "echo");
    let now = sim.now;
    let id = sim
        .host(1)
        .node
        .call(now, rpc, ECHO, 0, vec![1, 2, 3])
        .unwrap();
    assert!(sim.run_until(Duration::from_secs(5), |sim| calls_done(
        &sim.host(1).events
    )
    .contains_key(&id)));
    assert_eq!(calls_done(&sim.host(1).events)[&id], Ok((0, vec![3, 2, 1])));
    // Host 3's frames never pass: its open gets no answer.
    let now = sim.now;
    let h2 = sim.host(3).node.peer("h2").unwrap();
    let session = sim
        .host(3)
        .node
        .open(now, h2, Service::Rpc, "echo")
        .unwrap();
    sim.run_until(Duration::from_secs(1), |_| false);
    assert!(!sim.host(3).node.is_open(session));
    assert!(sim.host(2).node.stats().auth_failed > 0);
    let stats = sim.host(2).node.stats();
    assert_eq!(stats.replayed, 0, "{stats:?}");

    // A captured frame sent again is a replay.
    let mut a = Node::new(config(31)).unwrap();
    let mut b = Node::new(config(32)).unwrap();
    let now = Instant::from_nanos(1);
    let to_b = a.add_peer(now, "b", host_endpoint(2)).unwrap();
    let to_a = b.add_peer(now, "a", host_endpoint(1)).unwrap();
    a.set_peer_keys(to_b, Some(FrameKeys::derive(&k12, "a", "b")))
        .unwrap();
    b.set_peer_keys(to_a, Some(FrameKeys::derive(&k12, "b", "a")))
        .unwrap();
    let mut buf = vec![0u8; 1472];
    let (_, len) = a.poll_transmit(now, &mut buf).expect("a heartbeat");
    b.handle_datagram(now, host_endpoint(1), &buf[..len]);
    assert_eq!(b.stats().replayed, 0);
    b.handle_datagram(now, host_endpoint(1), &buf[..len]);
    assert_eq!(b.stats().replayed, 1);
    // Setting the keys again (a reload) keeps the window: still a replay.
    b.set_peer_keys(to_a, Some(FrameKeys::derive(&k12, "b", "a")))
        .unwrap();
    b.handle_datagram(now, host_endpoint(1), &buf[..len]);
    assert_eq!(b.stats().replayed, 2);
    // An altered copy fails the tag first.
    buf[len - 1] ^= 1;
    b.handle_datagram(now, host_endpoint(1), &buf[..len]);
    assert_eq!(b.stats().auth_failed, 1);
    // And a frame without authentication from a keyed peer is refused.
    let mut plain = Node::new(config(33)).unwrap();
    plain.add_peer(now, "b", host_endpoint(2)).unwrap();
    let (_, len) = plain.poll_transmit(now, &mut buf).expect("a heartbeat");
    b.handle_datagram(now, host_endpoint(1), &buf[..len]);
    assert_eq!(b.stats().unauthenticated, 1);
}

/// The kind of the relay frame in `bytes`.
fn kind_of(bytes: &[u8]) -> xrelay_datapath::wire::Kind {
    let (frame, _) = xrelay_datapath::wire::Frame::parse(bytes).unwrap();
    frame.message.kind()
}

/// Two nodes driven by hand (no network) at virtual time `now`: `a` at
/// host 1 with an RPC session (still opening) on `b` at host 2, which
/// exports the echo dispatcher.
fn echo_pair(now: Instant) -> (Node, Node, SessionId) {
    let (a_at, b_at) = (host_endpoint(1), host_endpoint(2));
    let mut a = Node::new(config(1)).unwrap();
    let mut b = Node::new(config(2)).unwrap();
    let peer = a.add_peer(now, "b", b_at).unwrap();
    b.add_peer(now, "a", a_at).unwrap();
    let executions = Arc::default();
    b.export_rpc("echo", Box::new(Echo { executions })).unwrap();
    let session = a.open(now, peer, Service::Rpc, "echo").unwrap();
    (a, b, session)
}

#[test]
fn an_idle_node_wakes_at_once_for_new_work_and_in_time_for_its_timers() {
    // Two nodes handing frames across by hand, in virtual time: an idle
    // node answers passes without looking at its sessions (see
    // `Node::poll_transmit`), which must never hold back what is due.
    use xrelay_datapath::wire::Kind;
    let (a_at, b_at) = (host_endpoint(1), host_endpoint(2));
    let mut now = Instant::from_nanos(1_000_000);
    let (mut a, mut b, session) = echo_pair(now);
    let mut buf = vec![0u8; 1472];
    let carry = |from: &mut Node, at, to: &mut Node, now, buf: &mut [u8]| {
        let mut kinds = Vec::new();
        while let Some((_, len)) = from.poll_transmit(now, buf) {
            kinds.push(kind_of(&buf[..len]));
            to.handle_datagram(now, at, &buf[..len]);
        }
        kinds
    };
    while !a.is_open(session) {
        now += Duration::from_micros(10);
        carry(&mut a, a_at, &mut b, now, &mut buf);
        carry(&mut b, b_at, &mut a, now, &mut buf);
    }
    // Idle passes at one instant: nothing to send.
    for _ in 0..5 {
        assert_eq!(a.poll_transmit(now, &mut buf), None);
        assert_eq!(b.poll_transmit(now, &mut buf), None);
    }
    // A call goes out on the very next pass, and the idle server answers
    // it on its very next pass.
    let id = a.call(now, session, ECHO, 0, b"ping".to_vec()).unwrap();
    assert_eq!(carry(&mut a, a_at, &mut b, now, &mut buf), [Kind::RpcCall]);
    assert!(carry(&mut b, b_at, &mut a, now, &mut buf).contains(&Kind::RpcReply));
    assert!(std::iter::from_fn(|| a.poll_event())
        .any(|e| matches!(e, NodeEvent::CallDone { outcome, .. } if outcome.request_id == id)));
    // A call whose frame is lost is retransmitted when its timer says,
    // however many idle passes came before; every timer the node
    // announces is served when it falls due.
    a.call(now, session, ECHO, 0, b"lost".to_vec()).unwrap();
    while a.poll_transmit(now, &mut buf).is_some() {}
    let start = now;
    let mut retransmitted = None;
    while retransmitted.is_none() && now < start + Duration::from_secs(1) {
        let due = a.poll_timeout();
        assert!(
            due > now,
            "a timer due at {due:?} was not served at {now:?}"
        );
        // Idle passes up to just before the timer.
        while now + Duration::from_micros(7) < due {
            now += Duration::from_micros(7);
            assert_eq!(
                a.poll_transmit(now, &mut buf),
                None,
                "nothing is due at {now:?}"
            );
        }
        now = due;
        while let Some((_, len)) = a.poll_transmit(now, &mut buf) {
            if kind_of(&buf[..len]) == Kind::RpcCall {
                retransmitted = Some(now);
            }
        }
    }
    let at = retransmitted.expect("the lost call was never retransmitted");
    assert!(
        at.saturating_since(start) <= Duration::from_millis(6),
        "{at:?}"
    );
}

#[test]
fn a_node_finds_the_peer_of_an_address_as_the_first_peer_with_the_same_address() {
    // Peers by IPv4 address and port, and peers known only by Ethernet
    // address (raw Ethernet encapsulation), with Ethernet addresses that
    // repeat: the node's constant-time lookup must name the first peer
    // (in the order added) that `Endpoint::same_address` matches.
    use std::net::Ipv4Addr;
    use xrelay_datapath::wire::encap::Endpoint;
    use xrelay_datapath::wire::ethernet::EthernetAddress;
    use xrelay_datapath::wire::heartbeat::Heartbeat;
    let heartbeat = frame_bytes(
        0,
        xrelay_datapath::wire::Message::Heartbeat(Heartbeat {
            incarnation: 5,
            send_time: 1,
            echo_time: 0,
        }),
    );
    let mut rng = fastrand::Rng::with_seed(7);
    let endpoint = |rng: &mut fastrand::Rng| Endpoint {
        mac: EthernetAddress([2, 0, 0, 0, 0, rng.u8(0..6)]),
        ip: if rng.bool() {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::new(198, 18, 7, rng.u8(0..6))
        },
        port: 7000 + u16::from(rng.u8(0..3)),
    };
    for round in 0..50 {
        let mut node = Node::new(config(round + 1)).unwrap();
        let mut peers: Vec<Endpoint> = Vec::new();
        for k in 0..12 {
            let at = endpoint(&mut rng);
            let added = node.add_peer(Instant::ZERO, &format!("p{k}"), at);
            // add_peer refuses an address some peer already matches.
            assert_eq!(
                added.is_ok(),
                !peers.iter().any(|p| p.same_address(&at)),
                "{at:?} among {peers:?}"
            );
            if added.is_ok() {
                peers.push(at);
            }
            for _ in 0..20 {
                let from = endpoint(&mut rng);
                let expected = peers.iter().position(|p| p.same_address(&from));
                assert_eq!(
                    node.peer_by_address(&from),
                    expected.map(PeerId),
                    "{from:?} among {peers:?}"
                );
                // A frame from there reaches that peer or is left to the
                // caller, also when the answer comes from the last lookup.
                for _ in 0..2 {
                    let counts = |node: &Node| -> Vec<u64> {
                        node.peer_ids()
                            .map(|p| node.peer_report(p).unwrap().counters.frames_received)
                            .collect()
                    };
                    let before = counts(&node);
                    assert_eq!(
                        node.handle_known(Instant::ZERO, from, &heartbeat),
                        expected.is_some()
                    );
                    let reached: Vec<usize> = counts(&node)
                        .iter()
                        .zip(&before)
                        .enumerate()
                        .filter(|(_, (after, before))| after > before)
                        .map(|(p, _)| p)
                        .collect();
                    assert_eq!(reached, Vec::from_iter(expected));
                }
            }
        }
    }
}

#[test]
fn a_node_with_many_peers_keeps_every_timer_while_one_peer_is_busy() {
    // Node a knows b, which serves echo calls, and 40 peers that never
    // answer. Only peers with work are looked at on a pass (the others
    // sleep until their next timer): a call to b must still be answered
    // at once, and every peer, busy, idle or busy then idle, must get its
    // heartbeat on time, in virtual time.
    use std::net::Ipv4Addr;
    use xrelay_datapath::wire::encap::Endpoint;
    use xrelay_datapath::wire::Kind;
    let (a_at, b_at) = (host_endpoint(1), host_endpoint(2));
    let mut now = Instant::from_nanos(1_000_000);
    let (mut a, mut b, session) = echo_pair(now);
    let idle: Vec<Endpoint> = (0..40)
        .map(|k| Endpoint {
            ip: Ipv4Addr::new(198, 19, 0, k + 1),
            ..b_at
        })
        .collect();
    for (k, at) in idle.iter().enumerate() {
        a.add_peer(now, &format!("idle{k}"), *at).unwrap();
    }
    let mut buf = vec![0u8; 1472];
    // Heartbeat times per destination.
    let mut heartbeats: HashMap<[u8; 4], Vec<Instant>> = HashMap::new();
    let step = Duration::from_micros(50);
    let (mut calls, mut answered) = (0u32, 0u32);
    let half = now + Duration::from_millis(750);
    let end = half + Duration::from_millis(750);
    while now < end {
        now += step;
        // Calls for the first half, one at a time, then nothing.
        let busy = now < half;
        if busy && a.is_open(session) && calls == answered {
            a.call(now, session, ECHO, 0, b"ping".to_vec()).unwrap();
            calls += 1;
        }
        while let Some((to, len)) = a.poll_transmit(now, &mut buf) {
            if kind_of(&buf[..len]) == Kind::Heartbeat {
                heartbeats.entry(to.ip.octets()).or_default().push(now);
            }
            if to.same_address(&b_at) {
                b.handle_datagram(now, a_at, &buf[..len]);
            }
        }
        while let Some((_, len)) = b.poll_transmit(now, &mut buf) {
            a.handle_datagram(now, b_at, &buf[..len]);
        }
        while let Some(event) = a.poll_event() {
            if let NodeEvent::CallDone { outcome, .. } = event {
                outcome.result.unwrap();
                answered += 1;
            }
        }
        // A call made in this step was answered in this step.
        assert_eq!(calls, answered, "a call waited at {now:?}");
    }
    assert!(calls > 1000, "{calls} calls");
    let interval = config(1).liveness.interval;
    for at in idle.iter().chain([&b_at]) {
        let times = &heartbeats[&at.ip.octets()];
        assert!(times.len() >= 14, "{} heartbeats to {at:?}", times.len());
        for pair in times.windows(2) {
            let gap = pair[1].saturating_since(pair[0]);
            assert!(
                gap >= interval && gap <= interval + step,
                "heartbeats to {at:?} {gap:?} apart"
            );
        }
    }
}
