//! The steady-state datapath allocates nothing: two relay nodes exchange
//! signals over AF_XDP (in namespaces, as root) and, after a warm-up, a
//! counting allocator sees no allocation on either datapath thread while
//! thousands of frames go through the node, the signal engine and the
//! AF_XDP rings. The same holds for several queues handing frames to each
//! other, and for RPC: echo calls between two nodes (one or 16
//! outstanding) reuse message buffers, maps and queues once warm.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use xrelay_datapath::netns::{self, VethPair};
use xrelay_datapath::node::{Node, NodeConfig};
use xrelay_datapath::poll::{poll_once, Budget};
use xrelay_datapath::time::MonotonicClock;
use xrelay_datapath::transport::xdp::{XdpConfig, XdpTransport};
use xrelay_datapath::transport::Transport;
use xrelay_datapath::wire::encap::{Endpoint, DEFAULT_UDP_PORT};
use xrelay_datapath::wire::session::Service;

/// Counts allocations made by threads that asked to be counted.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// The RPC test counts its own thread only (tests run in parallel, and
    /// the other tests' count is global).
    static COUNTING_HERE: Cell<bool> = const { Cell::new(false) };
    static COUNTED_HERE: Cell<u64> = const { Cell::new(0) };
    /// A runtime's datapath thread of the handoff test.
    static RUNTIME_THREAD: Cell<bool> = const { Cell::new(false) };
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The handoff test counts on its runtime threads while this is set.
static ARMED: AtomicBool = AtomicBool::new(false);
static RUNTIME_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn note_allocation() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
    if COUNTING_HERE.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNTED_HERE.try_with(|c| c.set(c.get() + 1));
    }
    if ARMED.load(Ordering::Relaxed) && RUNTIME_THREAD.try_with(Cell::get).unwrap_or(false) {
        RUNTIME_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a side effect that does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn relay(endpoint: Endpoint) -> Endpoint {
    Endpoint {
        port: DEFAULT_UDP_PORT,
        ..endpoint
    }
}

/// One iteration of a datapath loop, then the events.
fn drive(node: &mut Node, link: &mut XdpTransport, clock: &MonotonicClock) {
    poll_once(node, link, clock.now(), Budget::default()).unwrap();
    while node.poll_event().is_some() {}
}

#[test]
fn the_steady_state_loop_allocates_nothing() {
    let pair = VethPair::new(1).unwrap_or_else(|e| panic!("namespaces (needs root): {e}"));
    let clock = MonotonicClock::new();
    let (a_at, b_at) = (pair.a.endpoint, pair.b.endpoint);
    let measure_from = StdInstant::now() + Duration::from_millis(700);
    let measure_until = measure_from + Duration::from_millis(700);

    let (b_ns, b_if) = (pair.b.ns.name().to_owned(), pair.b.interface.clone());
    let receiver = std::thread::spawn(move || {
        netns::enter(&b_ns).unwrap();
        let mut link = XdpTransport::new(XdpConfig::new(&b_if, b_at.ip)).unwrap();
        let mut node = Node::new(NodeConfig::new(link.max_frame_len())).unwrap();
        node.add_peer(clock.now(), "a", relay(a_at)).unwrap();
        node.export_signal("bench").unwrap();
        let mut measured = 0u64;
        while StdInstant::now() < measure_until + Duration::from_millis(300) {
            let counting = (measure_from..measure_until).contains(&StdInstant::now());
            COUNTING.with(|c| c.set(counting));
            let before = node.stats().frames_received;
            drive(&mut node, &mut link, &clock);
            if counting {
                measured += node.stats().frames_received - before;
            }
        }
        COUNTING.with(|c| c.set(false));
        measured
    });

    let (a_ns, a_if) = (pair.a.ns.name().to_owned(), pair.a.interface.clone());
    let sender = std::thread::spawn(move || {
        netns::enter(&a_ns).unwrap();
        let mut link = XdpTransport::new(XdpConfig::new(&a_if, a_at.ip)).unwrap();
        let mut node = Node::new(NodeConfig::new(link.max_frame_len())).unwrap();
        let peer = node.add_peer(clock.now(), "b", relay(b_at)).unwrap();
        let session = node
            .open(clock.now(), peer, Service::Signal, "bench")
            .unwrap();
        let mut sent = 0u64;
        while StdInstant::now() < measure_until + Duration::from_millis(300) {
            let counting = (measure_from..measure_until).contains(&StdInstant::now());
            COUNTING.with(|c| c.set(counting));
            if node.is_open(session) {
                for _ in 0..16 {
                    node.submit(session, 0, 1).unwrap();
                    drive(&mut node, &mut link, &clock);
                    if counting {
                        sent += 1;
                    }
                }
            } else {
                drive(&mut node, &mut link, &clock);
            }
        }
        COUNTING.with(|c| c.set(false));
        sent
    });

    let sent = sender.join().unwrap();
    let received = receiver.join().unwrap();
    assert!(
        sent > 1000 && received > 1000,
        "too little traffic: {sent} sent, {received} received"
    );
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations while {sent} signals were sent and {received} frames received"
    );
}

/// Two queues per side, each a runtime with its own node, joined by a
/// handoff group; every peer is owned by the queue its frames do *not*
/// arrive on (veth keeps the queue), so every frame is handed over. After
/// a warm-up, no runtime thread allocates while signals flow.
#[test]
fn handing_frames_to_the_owning_queue_allocates_nothing() {
    use xrelay_datapath::runtime::{Handoff, Runtime, RuntimeConfig};
    use xrelay_datapath::transport::xdp::XdpProgram;

    let pair = VethPair::new(2).unwrap_or_else(|e| panic!("namespaces (needs root): {e}"));
    let (a_at, b_at) = (relay(pair.a.endpoint), relay(pair.b.endpoint));
    // A: peer b owned by queue 0 (its frames from b arrive on queue 1).
    // B: peer a owned by queue 1 (its frames from a arrive on queue 0).
    let side = |host: &netns::Host, peer: &str, peer_at: Endpoint, owner: usize| {
        netns::enter(host.ns.name()).unwrap();
        let program = XdpProgram::attach_for(
            &host.interface,
            xrelay_datapath::transport::xdp::AttachMode::Auto,
            xrelay_datapath::wire::encap::Encapsulation::default(),
            &[0, 1],
        )
        .expect("the XDP program (needs root)");
        let program = Arc::new(Mutex::new(program));
        let group = Handoff::group(2);
        group[0].assign(&peer_at, owner);
        let mut runtimes = Vec::new();
        for (queue, handoff) in group.into_iter().enumerate() {
            let peers = if queue == owner {
                vec![(peer.to_owned(), peer_at)]
            } else {
                Vec::new()
            };
            let mut config = RuntimeConfig::new(peers);
            config.handoff = Some(handoff);
            let xdp = XdpConfig {
                queue: u32::try_from(queue).unwrap(),
                ..XdpConfig::new(&host.interface, host.endpoint.ip)
            };
            let program = Arc::clone(&program);
            let ns = host.ns.name().to_owned();
            runtimes.push(
                Runtime::spawn(&format!("alloc-q{queue}"), config, move || {
                    RUNTIME_THREAD.with(|c| c.set(true));
                    netns::enter(&ns).unwrap();
                    XdpTransport::with_program(xdp, program)
                })
                .unwrap(),
            );
        }
        runtimes
    };
    let a = std::thread::scope(|s| s.spawn(|| side(&pair.a, "b", b_at, 0)).join().unwrap());
    let b = std::thread::scope(|s| s.spawn(|| side(&pair.b, "a", a_at, 1)).join().unwrap());
    let handler = b[1].export_signal("bench").unwrap();
    b[0].export_signal_to("bench", &handler).unwrap();
    let transmitter = a[0]
        .open_signal("b", "bench")
        .expect("the session, through handoffs");

    // Warm up, then count while signals flow.
    let mut submitted = 0u64;
    let mut flow = |duration: Duration| {
        let until = StdInstant::now() + duration;
        while StdInstant::now() < until {
            transmitter.submit().unwrap();
            submitted += 1;
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    flow(Duration::from_millis(500));
    let before = handler.poll().unwrap_or(0);
    ARMED.store(true, Ordering::Relaxed);
    flow(Duration::from_millis(700));
    ARMED.store(false, Ordering::Relaxed);
    assert!(transmitter.flush(Duration::from_secs(5)).unwrap());
    let delivered = before + handler.poll().unwrap_or(0);
    assert!(delivered > 1000, "only {delivered} signals delivered");
    // Every frame of the session crossed queues on both sides.
    let handed: Vec<u64> = a
        .iter()
        .chain(&b)
        .map(|r| r.report().unwrap().handoff.sent)
        .collect();
    assert!(
        handed[1] > 0 && handed[2] > 0,
        "handoffs per queue: {handed:?}"
    );
    assert_eq!(
        RUNTIME_ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations on the runtime threads while {submitted} signals went through handoffs"
    );
}

/// Echoes its arguments (into the reply buffer the node lends it).
struct Echo;

impl xrelay_datapath::marshal::Dispatch for Echo {
    fn interface_id(&self) -> u32 {
        0x4543_484f
    }

    fn dispatch(&mut self, _opcode: u16, args: &[u8], reply: &mut Vec<u8>) -> i32 {
        reply.extend_from_slice(args);
        0
    }
}

/// Hands every frame `from` builds to `to`.
fn carry(
    from: &mut Node,
    from_at: Endpoint,
    to: &mut Node,
    now: xrelay_datapath::time::Instant,
    buf: &mut [u8],
) {
    while let Some((_, len)) = from.poll_transmit(now, buf) {
        to.handle_datagram(now, from_at, &buf[..len]);
    }
}

#[test]
fn rpc_calls_in_the_steady_state_allocate_nothing() {
    use xrelay_datapath::node::NodeEvent;
    use xrelay_datapath::time::Instant;
    use xrelay_datapath::transport::mem::host_endpoint;

    // Virtual time, a millisecond per loop iteration: the server's memory
    // of executed ids covers a minute (`rpc::REMEMBER_FOR`), so it stops
    // growing only once that much time has passed at a steady rate.
    let mut now = Instant::ZERO;
    let (a_at, b_at) = (host_endpoint(1), host_endpoint(2));
    let mut client = Node::new(NodeConfig::new(1472)).unwrap();
    let mut server = Node::new(NodeConfig::new(1472)).unwrap();
    let peer = client.add_peer(now, "b", b_at).unwrap();
    server.add_peer(now, "a", a_at).unwrap();
    server.export_rpc("echo", Box::new(Echo)).unwrap();
    let session = client.open(now, peer, Service::Rpc, "echo").unwrap();
    let mut buf = vec![0; 1472];
    for _ in 0..10 {
        carry(&mut client, a_at, &mut server, now, &mut buf);
        carry(&mut server, b_at, &mut client, now, &mut buf);
    }
    assert!(client.is_open(session));

    // `window` calls outstanding until `calls` are done or `limit` of
    // virtual time passed; each reply's buffer carries the next call's
    // arguments, as a caller reusing its buffers would.
    let mut run = |window: usize, calls: usize, limit: Duration, spare: &mut Vec<Vec<u8>>| {
        let until = now + limit;
        let (mut issued, mut done) = (0, 0);
        while done < calls && now < until {
            while issued < calls && issued - done < window {
                let mut args = spare.pop().unwrap_or_default();
                args.clear();
                args.extend_from_slice(&[0x5a; 48]);
                client.call(now, session, 0x4543_484f, 0, args).unwrap();
                issued += 1;
            }
            carry(&mut client, a_at, &mut server, now, &mut buf);
            while server.poll_event().is_some() {}
            carry(&mut server, b_at, &mut client, now, &mut buf);
            while let Some(event) = client.poll_event() {
                if let NodeEvent::CallDone { outcome, .. } = event {
                    let (code, reply) = outcome.result.unwrap();
                    assert_eq!((code, reply.as_slice()), (0, &[0x5a; 48][..]));
                    spare.push(reply);
                    done += 1;
                }
            }
            now += Duration::from_millis(1);
        }
        while issued > done {
            carry(&mut client, a_at, &mut server, now, &mut buf);
            carry(&mut server, b_at, &mut client, now, &mut buf);
            while let Some(event) = client.poll_event() {
                if let NodeEvent::CallDone { outcome, .. } = event {
                    spare.push(outcome.result.unwrap().1);
                    done += 1;
                }
            }
        }
    };
    let mut spare = Vec::with_capacity(64);
    for window in [1, 16] {
        // Warm up for 65 s of virtual time at this rate.
        run(window, usize::MAX, Duration::from_secs(65), &mut spare);
        COUNTING_HERE.with(|c| c.set(true));
        let before = COUNTED_HERE.with(Cell::get);
        run(window, 20_000, Duration::from_secs(3600), &mut spare);
        let allocations = COUNTED_HERE.with(Cell::get) - before;
        COUNTING_HERE.with(|c| c.set(false));
        assert_eq!(
            allocations, 0,
            "{allocations} allocations in 20000 echo calls, {window} outstanding"
        );
    }
}
