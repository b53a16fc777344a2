//! Real relay nodes over real AF_XDP sockets, in network namespaces joined
//! by veth (as root): RPC, signals and a multi-MiB ROM module; the kernel
//! still gets what is not ours (ping, other UDP ports); a UDP-transport
//! node and an AF_XDP node talk to each other; a node killed with SIGKILL
//! leaves no XDP program attached and a new one starts on the interface.
//!
//! These tests need root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN for
//! namespaces). Where that is missing they fail with the reason; they
//! never skip.
#![expect(
    clippy::cast_possible_truncation,
    reason = "test payloads are wrapping byte patterns"
)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xrelay_datapath::example::{KvError, KvStoreClient, KvStoreServer, MemoryStore};
use xrelay_datapath::marshal::RpcError;
use xrelay_datapath::netns::{self, VethPair};
use xrelay_datapath::runtime::{Runtime, RuntimeConfig};
use xrelay_datapath::transport::udp::{UdpConfig, UdpTransport};
use xrelay_datapath::transport::xdp::{XdpConfig, XdpTransport};
use xrelay_datapath::transport::TransportError;
use xrelay_datapath::wire::encap::{Endpoint, DEFAULT_UDP_PORT};

fn relay(endpoint: Endpoint) -> Endpoint {
    Endpoint {
        port: DEFAULT_UDP_PORT,
        ..endpoint
    }
}

/// A runtime on the AF_XDP socket of `host`'s veth, inside its namespace.
fn xdp_node(name: &str, host: &netns::Host, peer: &str, peer_at: Endpoint) -> Runtime {
    xdp_node_with(
        name,
        host,
        peer,
        peer_at,
        XdpConfig::new(&host.interface, host.endpoint.ip),
    )
}

/// [`xdp_node`] with the transport configured by `config`.
fn xdp_node_with(
    name: &str,
    host: &netns::Host,
    peer: &str,
    peer_at: Endpoint,
    config: XdpConfig,
) -> Runtime {
    let ns = host.ns.name().to_owned();
    Runtime::spawn(
        name,
        RuntimeConfig::new(vec![(peer.to_owned(), relay(peer_at))]),
        move || {
            netns::enter(&ns).map_err(|e| TransportError::Config(e.to_string()))?;
            XdpTransport::new(config)
        },
    )
    .unwrap_or_else(|e| panic!("starting {name} over AF_XDP (needs root): {e}"))
}

/// A runtime on a kernel UDP socket inside `host`'s namespace.
fn udp_node(name: &str, host: &netns::Host, peer: &str, peer_at: Endpoint) -> Runtime {
    let ns = host.ns.name().to_owned();
    let bind = SocketAddrV4::new(host.endpoint.ip, DEFAULT_UDP_PORT);
    Runtime::spawn(
        name,
        RuntimeConfig::new(vec![(peer.to_owned(), relay(peer_at))]),
        move || {
            netns::enter(&ns).map_err(|e| TransportError::Config(e.to_string()))?;
            UdpTransport::bind(bind, UdpConfig::default())
        },
    )
    .unwrap_or_else(|e| panic!("starting {name} over UDP: {e}"))
}

fn topology() -> VethPair {
    VethPair::new(1).unwrap_or_else(|e| panic!("building namespaces and veth (needs root): {e}"))
}

/// Puts and gets `keys` keys named `<prefix><i>` on `peer`'s `kv`.
fn kv_round(node: &Runtime, peer: &str, prefix: &str, keys: u32) {
    let mut kv = KvStoreClient::new(node.open_rpc(peer, "kv").expect("open kv"));
    for i in 0..keys {
        let value: Vec<u8> = (0..(i as usize * 97) % 9000)
            .map(|j| (i as usize + j) as u8)
            .collect();
        assert_eq!(kv.put(format!("{prefix}{i}"), value.clone()), Ok(None));
        assert_eq!(kv.get(format!("{prefix}{i}")), Ok(value));
    }
    assert_eq!(
        kv.get("missing".into()),
        Err(RpcError::Exception(KvError::NotFound))
    );
}

#[test]
fn rpc_signals_and_rom_cross_af_xdp() {
    let pair = topology();
    let a = xdp_node("xdp-a", &pair.a, "b", pair.b.endpoint);
    let b = xdp_node("xdp-b", &pair.b, "a", pair.a.endpoint);
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(1000)))
        .unwrap();
    let handler = b.export_signal("events").unwrap();
    let publisher = b.export_rom("config").unwrap();

    kv_round(&a, "b", "k", 200);

    let tx = a.open_signal("b", "events").unwrap();
    let mut submitted = 0u64;
    for burst in 1..=10u64 {
        for _ in 0..burst * 7 {
            tx.submit().unwrap();
            submitted += 1;
        }
    }
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered < submitted && Instant::now() < deadline {
        delivered += handler
            .wait_timeout(Duration::from_millis(100))
            .unwrap_or(0);
    }
    assert_eq!(delivered, submitted);

    let subscriber = a.subscribe_rom("b", "config").unwrap();
    let content: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let version = publisher.publish(content.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut current = subscriber.current();
    while current.as_ref().map(|v| v.version) != Some(version) {
        assert!(Instant::now() < deadline, "the 6 MiB module did not arrive");
        current = subscriber.wait_change(current.as_ref(), Duration::from_millis(200));
    }
    let current = current.unwrap();
    assert_eq!(current.data, content);
    assert_eq!(current.hash, *blake3::hash(&content).as_bytes());
    let stats = b.stats().unwrap();
    assert_eq!(stats.malformed + stats.unknown_peer, 0, "{stats:?}");
}

#[test]
fn auto_attaches_generic_on_veth_and_native_still_works() {
    use xrelay_datapath::transport::xdp::program::{auto_prefers_generic, driver};
    use xrelay_datapath::transport::xdp::AttachMode;

    let pair = topology();
    let ns = pair.a.ns.name().to_owned();
    let interface = pair.a.interface.clone();
    let (name, generic, generic_two, missing, modes) = std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let transport = XdpTransport::new(XdpConfig::new(&interface, Ipv4Addr::new(198, 18, 0, 1)))
            .unwrap_or_else(|e| panic!("AF_XDP on {interface} (needs root): {e}"));
        (
            driver(&interface),
            auto_prefers_generic(&interface, &[0]),
            auto_prefers_generic(&interface, &[0, 1]) || auto_prefers_generic(&interface, &[1]),
            driver("xrelay-none0"),
            transport.modes().0,
        )
    })
    .join()
    .unwrap();
    assert_eq!(name.as_deref(), Some("veth"));
    assert!(generic);
    assert!(
        !generic_two,
        "several queues, or queue 1 alone, keep native XDP on veth"
    );
    assert_eq!(missing, None);
    assert_eq!(modes, AttachMode::Generic);

    // Native mode, asked for, still carries calls to a node in auto mode.
    let mut native = XdpConfig::new(&pair.a.interface, pair.a.endpoint.ip);
    native.attach = AttachMode::Native;
    let a = xdp_node_with("xdp-a", &pair.a, "b", pair.b.endpoint, native);
    let b = xdp_node("xdp-b", &pair.b, "a", pair.a.endpoint);
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(1000)))
        .unwrap();
    kv_round(&a, "b", "n", 50);
}

#[test]
fn the_kernel_still_gets_what_is_not_ours() {
    let pair = topology();
    let a = xdp_node("xdp-a", &pair.a, "b", pair.b.endpoint);
    let b = xdp_node("xdp-b", &pair.b, "a", pair.a.endpoint);
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(100)))
        .unwrap();
    kv_round(&a, "b", "before", 20);
    // ICMP passes the program both ways.
    let ping = pair
        .a
        .ns
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2"]);
    assert!(ping.is_ok(), "ping from a to b failed: {ping:?}");
    // A kernel UDP socket on another port in b gets a datagram from a.
    let ns_b = pair.b.ns.name().to_owned();
    let receiver = std::thread::spawn(move || {
        netns::enter(&ns_b).unwrap();
        let socket = UdpSocket::bind("198.18.0.2:7000").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let (len, _) = socket
            .recv_from(&mut buf)
            .expect("the datagram on port 7000");
        buf[..len].to_vec()
    });
    std::thread::sleep(Duration::from_millis(200));
    let ns_a = pair.a.ns.name().to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns_a).unwrap();
        let socket = UdpSocket::bind("198.18.0.1:0").unwrap();
        for _ in 0..5 {
            socket
                .send_to(b"not for the relay", "198.18.0.2:7000")
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .join()
    .unwrap();
    assert_eq!(receiver.join().unwrap(), b"not for the relay");
    // And the relay still works.
    kv_round(&a, "b", "after", 20);
    drop(b);
}

#[test]
fn a_udp_node_and_an_af_xdp_node_talk() {
    let pair = topology();
    let a = udp_node("udp-a", &pair.a, "b", pair.b.endpoint);
    let b = xdp_node("xdp-b", &pair.b, "a", pair.a.endpoint);
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(100)))
        .unwrap();
    a.export_rpc("kv", KvStoreServer(MemoryStore::new(100)))
        .unwrap();
    kv_round(&a, "b", "k", 50);
    kv_round(&b, "a", "k", 50);
}

/// Runs an AF_XDP transport in the namespace named by XRELAY_CHILD_NS
/// until killed (for the SIGKILL test, which starts this test binary as a
/// child). Without the variable it does nothing.
#[test]
fn child_holding_an_af_xdp_socket() {
    let (Ok(ns), Ok(interface)) = (
        std::env::var("XRELAY_CHILD_NS"),
        std::env::var("XRELAY_CHILD_IF"),
    ) else {
        return;
    };
    netns::enter(&ns).unwrap();
    let transport =
        XdpTransport::new(XdpConfig::new(&interface, "198.18.0.1".parse().unwrap())).unwrap();
    println!("ready");
    std::thread::sleep(Duration::from_secs(60));
    drop(transport);
}

#[test]
fn a_killed_node_leaves_nothing_attached() {
    let pair = topology();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_holding_an_af_xdp_socket",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("XRELAY_CHILD_NS", pair.a.ns.name())
        .env("XRELAY_CHILD_IF", &pair.a.interface)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("ready"));
    assert!(ready, "the child did not start its AF_XDP socket");
    assert!(netns::xdp_attached(&pair.a.ns, &pair.a.interface).unwrap());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while netns::xdp_attached(&pair.a.ns, &pair.a.interface).unwrap() {
        assert!(
            Instant::now() < deadline,
            "an XDP program stayed attached after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A new node starts on the same interface (retrying briefly: the
    // queue can stay busy for a few tens of milliseconds).
    let a = Arc::new(std::sync::Mutex::new(None));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ns = pair.a.ns.name().to_owned();
        let config = XdpConfig::new(&pair.a.interface, pair.a.endpoint.ip);
        let result = Runtime::spawn("xdp-a2", RuntimeConfig::new(Vec::new()), move || {
            netns::enter(&ns).map_err(|e| TransportError::Config(e.to_string()))?;
            XdpTransport::new(config)
        });
        match result {
            Ok(runtime) => {
                *a.lock().unwrap() = Some(runtime);
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "restart on the interface failed: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    assert!(netns::xdp_attached(&pair.a.ns, &pair.a.interface).unwrap());
}

#[test]
fn peer_addresses_come_from_the_neighbour_table_or_a_clear_error() {
    use xrelay_datapath::transport::xdp::neighbour_mac;
    let pair = topology();
    let ns = pair.a.ns.name().to_owned();
    let interface = pair.a.interface.clone();
    let b = pair.b.endpoint;
    let (found, missing) = std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        (
            neighbour_mac("b", &interface, b.ip),
            neighbour_mac("nobody", &interface, "198.18.0.77".parse().unwrap()),
        )
    })
    .join()
    .unwrap();
    assert_eq!(found.unwrap(), b.mac);
    let error = missing.unwrap_err().to_string();
    assert!(error.contains("peer nobody (198.18.0.77)"), "{error}");
}

#[test]
fn two_queues_two_pinned_threads_carry_traffic() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use xrelay_datapath::transport::xdp::{AttachMode, XdpProgram};
    use xrelay_datapath::transport::Transport;
    use xrelay_datapath::wire::encap::Encapsulation;
    use xrelay_datapath::wire::signal::Signal;
    use xrelay_datapath::wire::{Flags, Frame, Message};

    const PER_QUEUE: u64 = 3000;
    let pair = VethPair::new(2).unwrap_or_else(|e| panic!("namespaces (needs root): {e}"));
    let attach = |host: &netns::Host| {
        let ns = host.ns.name().to_owned();
        let interface = host.interface.clone();
        std::thread::spawn(move || {
            netns::enter(&ns).unwrap();
            Arc::new(Mutex::new(
                XdpProgram::attach_for(
                    &interface,
                    AttachMode::Auto,
                    Encapsulation::default(),
                    &[0, 1],
                )
                .unwrap(),
            ))
        })
        .join()
        .unwrap()
    };
    let (program_a, program_b) = (attach(&pair.a), attach(&pair.b));
    let pin = |core: usize| {
        // Best effort: an unpinned thread still proves the queues work.
        let _ = xrelay_datapath::poll::pin_to_core(core);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receivers: Vec<_> = (0..2u32)
        .map(|queue| {
            let (ns, program, stop, count, ready) = (
                pair.b.ns.name().to_owned(),
                Arc::clone(&program_b),
                Arc::clone(&stop),
                Arc::clone(&counts[queue as usize]),
                ready_tx.clone(),
            );
            let config = XdpConfig {
                queue,
                ..XdpConfig::new(&pair.b.interface, pair.b.endpoint.ip)
            };
            std::thread::spawn(move || {
                netns::enter(&ns).unwrap();
                pin(queue as usize);
                let mut link = XdpTransport::with_program(config, program).unwrap();
                ready.send(()).unwrap();
                let now = xrelay_datapath::time::Instant::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let n = link.recv(now, 64, &mut |_, _| {}).unwrap();
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    ready_rx.recv().unwrap();
    ready_rx.recv().unwrap();
    let to = relay(pair.b.endpoint);
    let senders: Vec<_> = (0..2u32)
        .map(|queue| {
            let (ns, program) = (pair.a.ns.name().to_owned(), Arc::clone(&program_a));
            let config = XdpConfig {
                queue,
                ..XdpConfig::new(&pair.a.interface, pair.a.endpoint.ip)
            };
            std::thread::spawn(move || {
                netns::enter(&ns).unwrap();
                pin(queue as usize);
                let mut link = XdpTransport::with_program(config, program).unwrap();
                let now = xrelay_datapath::time::Instant::ZERO;
                let mut sent = 0;
                while sent < PER_QUEUE {
                    for _ in 0..16.min(PER_QUEUE - sent) {
                        let frame = Frame {
                            flags: Flags::NONE,
                            channel: queue,
                            sequence: sent,
                            message: Message::Signal(Signal {
                                context: queue,
                                count: sent,
                            }),
                        };
                        let len = frame.buffer_len();
                        if link
                            .send(&mut |buf| {
                                frame.emit(&mut buf[..len]);
                                Some((to, len))
                            })
                            .unwrap()
                        {
                            sent += 1;
                        }
                    }
                    link.flush(now).unwrap();
                    std::thread::sleep(Duration::from_micros(200));
                }
                for _ in 0..20 {
                    link.flush(now).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum::<u64>()
        < 2 * PER_QUEUE
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for receiver in receivers {
        receiver.join().unwrap();
    }
    let got: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    // Each queue's thread received the frames sent on its queue.
    assert_eq!(got, [PER_QUEUE, PER_QUEUE]);
    // The program's per-CPU counters, summed, saw every one of them.
    let stats = program_b.lock().unwrap().stats().unwrap();
    assert!(stats.redirected >= 2 * PER_QUEUE, "{stats:?}");
    assert_eq!(stats.no_socket, 0, "{stats:?}");
}

#[test]
fn busy_polling_sockets_carry_traffic() {
    let pair = topology();
    let busy = |host: &netns::Host| {
        let ns = host.ns.name().to_owned();
        let config = XdpConfig {
            busy_poll: Some(50),
            ..XdpConfig::new(&host.interface, host.endpoint.ip)
        };
        move || {
            netns::enter(&ns).map_err(|e| TransportError::Config(e.to_string()))?;
            XdpTransport::new(config)
        }
    };
    let a = Runtime::spawn(
        "busy-a",
        RuntimeConfig::new(vec![("b".into(), relay(pair.b.endpoint))]),
        busy(&pair.a),
    )
    .unwrap_or_else(|e| panic!("busy-polling AF_XDP socket: {e}"));
    let b = Runtime::spawn(
        "busy-b",
        RuntimeConfig::new(vec![("a".into(), relay(pair.a.endpoint))]),
        busy(&pair.b),
    )
    .unwrap();
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(100)))
        .unwrap();
    kv_round(&a, "b", "k", 30);
}

#[test]
fn reflect_sends_relay_frames_back_from_the_frames_they_arrived_in() {
    use xrelay_datapath::wire::signal::Signal;
    use xrelay_datapath::wire::{Flags, Frame, Message};
    let pair = topology();
    let ns_b = pair.b.ns.name().to_owned();
    let (interface, ip) = (pair.b.interface.clone(), pair.b.endpoint.ip);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reflector = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            netns::enter(&ns_b).unwrap();
            let mut link = XdpTransport::new(XdpConfig::new(&interface, ip))
                .expect("an AF_XDP socket (needs root)");
            ready_tx.send(()).unwrap();
            let clock = xrelay_datapath::time::MonotonicClock::new();
            let mut reflected = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                reflected += link.reflect(clock.now(), 64).unwrap();
            }
            (reflected, link.stats())
        })
    };
    ready_rx.recv().unwrap();
    let ns_a = pair.a.ns.name().to_owned();
    let echoed = std::thread::spawn(move || {
        netns::enter(&ns_a).unwrap();
        let socket = UdpSocket::bind(("198.18.0.1", DEFAULT_UDP_PORT)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 256];
        let mut echoed = 0;
        for n in 1..=200u64 {
            let frame = Frame {
                flags: Flags::NONE,
                channel: 1,
                sequence: n,
                message: Message::Signal(Signal {
                    context: 7,
                    count: n,
                }),
            };
            let mut bytes = vec![0u8; frame.buffer_len()];
            frame.emit(&mut bytes);
            socket
                .send_to(&bytes, ("198.18.0.2", DEFAULT_UDP_PORT))
                .unwrap();
            let (len, from) = socket.recv_from(&mut buf).expect("the echo");
            assert_eq!(from.to_string(), format!("198.18.0.2:{DEFAULT_UDP_PORT}"));
            assert_eq!(&buf[..len], &bytes[..], "frame {n} came back changed");
            echoed += 1;
        }
        echoed
    })
    .join()
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reflected, stats) = reflector.join().unwrap();
    assert_eq!(echoed, 200);
    assert_eq!(reflected, 200, "{stats:?}");
}

#[test]
fn raw_ethernet_frames_carry_rpc_between_af_xdp_nodes() {
    use xrelay_datapath::wire::encap::Encapsulation;
    use xrelay_datapath::wire::ethernet::ETHERTYPE_RELAY;
    let pair = topology();
    let ethernet = |host: &netns::Host| XdpConfig {
        encap: Encapsulation::Ethernet {
            ethertype: ETHERTYPE_RELAY,
        },
        ..XdpConfig::new(&host.interface, host.endpoint.ip)
    };
    let a = xdp_node_with("eth-a", &pair.a, "b", pair.b.endpoint, ethernet(&pair.a));
    let b = xdp_node_with("eth-b", &pair.b, "a", pair.a.endpoint, ethernet(&pair.b));
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(100)))
        .unwrap();
    kv_round(&a, "b", "ethernet", 50);
    let stats = b.stats().unwrap();
    assert_eq!(stats.unknown_peer, 0, "{stats:?}");
}
