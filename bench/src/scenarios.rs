//! The scenarios of the benchmark suite, each measured on every backend
//! it applies to, and what one measurement yields.
//!
//! * `raw_frames` (`raw_xdp`): one-way frames per second of bare AF_XDP
//!   (see [`crate::frames`]).
//! * `signal_throughput` (`xdp`, `udp`): one-way SIGNAL frames per second
//!   between relay nodes ([`crate::frames`]).
//! * `rpc_latency_closed`: round trips of an echo call with one call
//!   outstanding; on `raw_xdp` a ping-pong of a bare frame echoed by an
//!   AF_XDP program with no relay logic, and on `raw_udp` the same over
//!   plain kernel UDP sockets: the floors of `xdp` and `udp`.
//! * `rpc_latency_open_<rate>`: echo calls issued at a fixed rate; each
//!   latency is measured from the time the call was *scheduled*, so a
//!   stalled sender cannot hide the calls it failed to send (coordinated
//!   omission, corrected as Aeron's and wrk2's harnesses do).
//! * `rpc_throughput`: echo calls per second with 64 outstanding.
//! * `rom_update_<size>`: a publisher replaces a module of 1 KiB, 64 KiB,
//!   1 MiB or 16 MiB as soon as the subscriber holds the previous version;
//!   bytes per second and the update latency.
//! * `payload_<bytes>`: echo calls with 16 outstanding and arguments of
//!   16 B to 16 KiB; calls and argument bytes per second.

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use xrelay_datapath::marshal::{CallError, Dispatch};
use xrelay_datapath::node::{ExportId, Node, NodeEvent, PeerId, SessionId};
use xrelay_datapath::poll::TimedDispatch;
use xrelay_datapath::time::{Instant, MonotonicClock};
use xrelay_datapath::wire::encap::Endpoint;
use xrelay_datapath::wire::session::Service;

use crate::pair::{self, Backend, Side, Stages};

/// What one scenario on one backend measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The scenario, e.g. `rpc_latency_closed`, `rom_update_16MiB`.
    pub name: String,
    /// The backend.
    pub backend: Backend,
    /// Frames per second (frame-rate scenarios).
    pub frames_per_s: Option<f64>,
    /// Payload bytes per second (ROM, payload sweep).
    pub bytes_per_s: Option<f64>,
    /// Completed calls or updates per second.
    pub ops_per_s: Option<f64>,
    /// Latencies in nanoseconds.
    pub latency: Option<Histogram<u64>>,
}

impl Measurement {
    pub fn new(name: &str, backend: Backend) -> Measurement {
        Measurement {
            name: name.to_owned(),
            backend,
            frames_per_s: None,
            bytes_per_s: None,
            ops_per_s: None,
            latency: None,
        }
    }
}

/// A latency histogram: 1 ns to 60 s, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(ns.max(1));
}

/// The interface id of the echo service.
pub const ECHO: u32 = 0x4543_484f;

/// Replies with its arguments.
pub struct Echo;

impl Dispatch for Echo {
    fn interface_id(&self) -> u32 {
        ECHO
    }

    fn dispatch(&mut self, _opcode: u16, args: &[u8], reply: &mut Vec<u8>) -> i32 {
        reply.extend_from_slice(args);
        0
    }
}

/// The server of the RPC scenarios: exports the echo service (timed
/// when profiling, adding to the counter).
struct EchoServer(Option<(MonotonicClock, Arc<AtomicU64>)>);

impl Side for EchoServer {
    fn setup(&mut self, node: &mut Node, _peer: PeerId, _now: Instant) -> Result<(), String> {
        let dispatcher: Box<dyn Dispatch + Send> = match &self.0 {
            Some((clock, spent)) => Box::new(TimedDispatch::new(Echo, *clock, Arc::clone(spent))),
            None => Box::new(Echo),
        };
        node.export_rpc("echo", dispatcher)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn step(&mut self, node: &mut Node, _now: Instant) -> Result<bool, String> {
        while node.poll_event().is_some() {}
        Ok(false)
    }
}

/// How the RPC client issues calls.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// One call at a time.
    Closed,
    /// Calls at a fixed rate per second, latency from the scheduled time.
    Open(u64),
    /// This many calls always outstanding.
    Window(usize),
}

/// Most calls an open-loop client lets pile up before it stops issuing
/// (their latency keeps counting from the schedule); the engine's own
/// limit applies too.
const OPEN_LOOP_CAP: usize = 4096;

/// The client of the RPC scenarios.
struct RpcLoad {
    load: Load,
    payload: usize,
    warmup: Duration,
    window: Duration,
    session: Option<SessionId>,
    opened: Option<Instant>,
    /// Start of the measured window (after the warm-up).
    start: Instant,
    end: Instant,
    next: Instant,
    interval: Duration,
    /// Outstanding calls: when each was scheduled (open loop) or issued.
    pending: FxHashMap<u64, Instant>,
    /// Buffers of finished calls' replies, reused as arguments: the
    /// harness allocates nothing per call, as a careful caller would not.
    spare: Vec<Vec<u8>>,
    histogram: Histogram<u64>,
    completed: u64,
    failed: u64,
    /// Why the first failed call failed.
    first_failure: Option<String>,
    started_at: Instant,
}

impl RpcLoad {
    fn new(load: Load, payload: usize, warmup: Duration, window: Duration) -> RpcLoad {
        let interval = match load {
            Load::Open(rate) => Duration::from_nanos(1_000_000_000 / rate.max(1)),
            _ => Duration::ZERO,
        };
        RpcLoad {
            load,
            payload,
            warmup,
            window,
            session: None,
            opened: None,
            start: Instant::ZERO,
            end: Instant::ZERO,
            next: Instant::ZERO,
            interval,
            pending: FxHashMap::default(),
            spare: Vec::new(),
            histogram: histogram(),
            completed: 0,
            failed: 0,
            first_failure: None,
            started_at: Instant::ZERO,
        }
    }

    fn issue(
        &mut self,
        node: &mut Node,
        session: SessionId,
        now: Instant,
        at: Instant,
    ) -> Result<bool, String> {
        let mut args = self.spare.pop().unwrap_or_default();
        args.clear();
        args.resize(self.payload, 0x5a);
        match node.call(now, session, ECHO, 0, args) {
            Ok(id) => {
                self.pending.insert(id, at);
                Ok(true)
            }
            // The engine's limit (calls plus unacknowledged replies): the
            // call waits, its latency counting from `at` all the same.
            Err(CallError::Busy) => Ok(false),
            Err(e) => Err(format!("call: {e}")),
        }
    }
}

impl Side for RpcLoad {
    fn setup(&mut self, node: &mut Node, peer: PeerId, now: Instant) -> Result<(), String> {
        self.session = Some(
            node.open(now, peer, Service::Rpc, "echo")
                .map_err(|e| e.to_string())?,
        );
        self.started_at = now;
        Ok(())
    }

    fn step(&mut self, node: &mut Node, now: Instant) -> Result<bool, String> {
        let Some(session) = self.session else {
            return Err("no session".into());
        };
        while let Some(event) = node.poll_event() {
            if let NodeEvent::CallDone { outcome, .. } = event {
                let Some(at) = self.pending.remove(&outcome.request_id) else {
                    continue;
                };
                let ok = match outcome.result {
                    Ok((_, reply)) => {
                        if self.spare.len() < OPEN_LOOP_CAP {
                            self.spare.push(reply);
                        }
                        true
                    }
                    Err(error) => {
                        let age = now.saturating_since(at);
                        self.first_failure.get_or_insert_with(|| {
                            format!("call {}: {error} after {age:?}", outcome.request_id)
                        });
                        false
                    }
                };
                if !ok {
                    self.failed += 1;
                } else if at >= self.start && at <= self.end {
                    // Every call due inside the window counts, however
                    // late it ends (the run drains them below).
                    record(&mut self.histogram, now.saturating_since(at));
                    self.completed += 1;
                }
            }
        }
        if self.opened.is_none() {
            if !node.is_open(session) {
                if now.saturating_since(self.started_at) > Duration::from_secs(5) {
                    return Err("the echo session did not open".into());
                }
                return Ok(false);
            }
            self.opened = Some(now);
            self.start = now + self.warmup;
            self.end = self.start + self.window;
            self.next = now;
        }
        if self.failed > 0 {
            return Err(format!(
                "{} calls failed (first: {})",
                self.failed,
                self.first_failure.as_deref().unwrap_or("?")
            ));
        }
        // After the window: no new calls, but the open loop still issues
        // what was due inside it, and every call due inside it is waited
        // for, so the slowest are not left out.
        let due_left = matches!(self.load, Load::Open(_)) && self.next <= self.end;
        if now > self.end && !due_left {
            return Ok(self.pending.is_empty());
        }
        match self.load {
            Load::Closed => {
                if self.pending.is_empty() {
                    self.issue(node, session, now, now)?;
                }
            }
            Load::Window(outstanding) => {
                while self.pending.len() < outstanding && self.issue(node, session, now, now)? {}
            }
            Load::Open(_) => {
                // Past the engine's limit, calls wait (their latency
                // still counts from the schedule).
                let cap = OPEN_LOOP_CAP.min(node.config().rpc.max_outstanding);
                while self.next <= now && self.next <= self.end && self.pending.len() < cap {
                    let at = self.next;
                    if !self.issue(node, session, now, at)? {
                        break;
                    }
                    self.next += self.interval;
                }
            }
        }
        Ok(false)
    }
}

/// An RPC scenario on a relay backend.
pub fn rpc(
    name: &str,
    backend: Backend,
    load: Load,
    payload: usize,
    seconds: f64,
) -> Result<Measurement, String> {
    let window = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_millis(300);
    let client = RpcLoad::new(load, payload, warmup, window);
    let limit = window + warmup + Duration::from_secs(20);
    let (client, _) = pair::run(
        backend,
        &MonotonicClock::new(),
        client,
        EchoServer(None),
        limit,
    )?;
    let mut m = Measurement::new(name, backend);
    let per_s = client.completed as f64 / window.as_secs_f64();
    m.ops_per_s = Some(per_s);
    if name.starts_with("payload_") {
        m.bytes_per_s = Some(per_s * payload as f64);
    }
    m.latency = Some(client.histogram);
    Ok(m)
}

/// The version the ROM subscriber holds and when it got it.
#[derive(Debug, Default)]
struct Seen {
    version: AtomicU64,
    at_ns: AtomicU64,
}

/// The publisher of the ROM scenario.
struct RomPublisherSide {
    clock: MonotonicClock,
    size: usize,
    contents: [(Vec<u8>, [u8; 32]); 2],
    module: Option<ExportId>,
    seen: Arc<Seen>,
    window: Duration,
    warmup_until: Option<Instant>,
    end: Instant,
    /// The version in flight and when it was published.
    in_flight: Option<(u64, Instant)>,
    histogram: Histogram<u64>,
    updates: u64,
    busy: Duration,
    turn: usize,
}

impl Side for RomPublisherSide {
    fn setup(&mut self, node: &mut Node, _peer: PeerId, _now: Instant) -> Result<(), String> {
        self.module = Some(node.export_rom("module").map_err(|e| e.to_string())?);
        Ok(())
    }

    fn step(&mut self, node: &mut Node, now: Instant) -> Result<bool, String> {
        while node.poll_event().is_some() {}
        let Some(module) = self.module else {
            return Err("no module".into());
        };
        let seen = self.seen.version.load(Ordering::Acquire);
        if let Some((version, published)) = self.in_flight {
            if seen < version {
                return Ok(false);
            }
            let at = Instant::from_nanos(self.seen.at_ns.load(Ordering::Acquire));
            let took = at.saturating_since(published);
            if self.warmup_until.is_some_and(|w| published >= w) {
                record(&mut self.histogram, took);
                self.updates += 1;
                self.busy += took;
            }
            self.in_flight = None;
        }
        let warmup_until = *self
            .warmup_until
            .get_or_insert(now + Duration::from_millis(200));
        if now >= warmup_until && self.end == Instant::ZERO {
            self.end = now + self.window;
        }
        if self.end != Instant::ZERO && now >= self.end && self.updates > 0 {
            return Ok(true);
        }
        // The copy is made before the clock starts: the node takes the
        // content by value; hashing was done before the run.
        let (data, hash) = &self.contents[self.turn % 2];
        self.turn += 1;
        let content = data.clone();
        let published = self.clock.now();
        let version = node
            .publish_hashed(published, module, Some((content, *hash)))
            .map_err(|e| e.to_string())?;
        self.in_flight = Some((version, published));
        Ok(false)
    }
}

/// The subscriber of the ROM scenario.
struct RomSubscriberSide {
    seen: Arc<Seen>,
}

impl Side for RomSubscriberSide {
    fn setup(&mut self, node: &mut Node, peer: PeerId, now: Instant) -> Result<(), String> {
        node.open(now, peer, Service::Rom, "module")
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn step(&mut self, node: &mut Node, now: Instant) -> Result<bool, String> {
        while let Some(event) = node.poll_event() {
            if let NodeEvent::RomChanged { version, .. } = event {
                self.seen.at_ns.store(now.as_nanos(), Ordering::Release);
                self.seen.version.store(version.version, Ordering::Release);
            }
        }
        Ok(false)
    }
}

/// A ROM scenario: modules of `size` bytes replaced back to back.
pub fn rom(name: &str, backend: Backend, size: usize, seconds: f64) -> Result<Measurement, String> {
    let content = |fill: u8| {
        let data: Vec<u8> = (0..size)
            .map(|i| (i.to_le_bytes()[0]).wrapping_mul(31) ^ fill)
            .collect();
        let hash = *blake3::hash(&data).as_bytes();
        (data, hash)
    };
    let seen = Arc::new(Seen::default());
    let window = Duration::from_secs_f64(seconds);
    let clock = MonotonicClock::new();
    let publisher = RomPublisherSide {
        clock,
        size,
        contents: [content(0), content(0xff)],
        module: None,
        seen: Arc::clone(&seen),
        window,
        warmup_until: None,
        end: Instant::ZERO,
        in_flight: None,
        histogram: histogram(),
        updates: 0,
        busy: Duration::ZERO,
        turn: 0,
    };
    let subscriber = RomSubscriberSide { seen };
    let (publisher, _) = pair::run(
        backend,
        &clock,
        publisher,
        subscriber,
        window + Duration::from_secs(60),
    )?;
    let mut m = Measurement::new(name, backend);
    let busy = publisher.busy.as_secs_f64().max(1e-9);
    m.bytes_per_s = Some(publisher.updates as f64 * publisher.size as f64 / busy);
    m.ops_per_s = Some(publisher.updates as f64 / busy);
    m.latency = Some(publisher.histogram);
    Ok(m)
}

/// The bare frame a ping-pong sends: a SIGNAL frame whose count is the
/// sequence number, so a late echo of an earlier ping never passes for
/// the current one.
fn ping_frame(sequence: u64, bytes: &mut Vec<u8>) {
    use xrelay_datapath::wire::signal::Signal;
    use xrelay_datapath::wire::{Flags, Frame, Message};
    let frame = Frame {
        flags: Flags::NONE,
        channel: 1,
        sequence,
        message: Message::Signal(Signal {
            context: 0,
            count: sequence,
        }),
    };
    bytes.resize(frame.buffer_len(), 0);
    frame.emit(bytes);
}

/// One end of a bare ping-pong: sends a frame, and polls for frames
/// (handing each to the closure) without blocking.
trait Pinger {
    fn send(&mut self, frame: &[u8], now: Instant) -> Result<(), String>;
    fn poll(&mut self, now: Instant, seen: &mut dyn FnMut(&[u8])) -> Result<(), String>;
}

/// Pings one frame at a time for `window` after a 300 ms warm-up, each
/// sent when the previous one came back (or was given up after 200 ms,
/// counted by its absence); the histogram of round trips.
fn ping_pong(
    pinger: &mut dyn Pinger,
    clock: MonotonicClock,
    window: Duration,
    stop: &AtomicBool,
) -> Result<Histogram<u64>, String> {
    let mut histogram = histogram();
    let measure_from = clock.now() + Duration::from_millis(300);
    let end = measure_from + window;
    let mut bytes = Vec::new();
    let mut sequence = 1u64;
    while !stop.load(Ordering::Relaxed) {
        ping_frame(sequence, &mut bytes);
        let sent_at = clock.now();
        if sent_at > end {
            break;
        }
        pinger.send(&bytes, sent_at)?;
        let mut back = false;
        let give_up = sent_at + Duration::from_millis(200);
        while !back {
            let now = clock.now();
            if now > give_up {
                break;
            }
            pinger.poll(now, &mut |frame| back |= frame == bytes.as_slice())?;
        }
        if back && sent_at >= measure_from {
            record(&mut histogram, clock.now().saturating_since(sent_at));
        }
        sequence += 1;
    }
    Ok(histogram)
}

/// Runs a bare ping-pong between the ends of a fresh veth pair: `reflect`
/// (core 1, in the second end's namespace) echoes until told to stop,
/// `pinger` (core 0, in the first's) measures.
fn bare_round_trips(
    backend: Backend,
    seconds: f64,
    reflect: impl FnOnce(&pair::Place, &AtomicBool) -> Result<(), String> + Send + 'static,
    pinger: impl FnOnce(&pair::Place, Endpoint) -> Result<Box<dyn Pinger>, String> + Send + 'static,
) -> Result<Measurement, String> {
    use xrelay_datapath::netns::VethPair;

    let pair = VethPair::new(1).map_err(|e| format!("{e} (needs root)"))?;
    let (a, b) = (pair::Place::of(&pair.a), pair::Place::of(&pair.b));
    let to = pair::relay(b.endpoint);
    let stop = Arc::new(AtomicBool::new(false));
    let clock = MonotonicClock::new();
    let reflector = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> Result<(), String> {
            pair::pin(1);
            xrelay_datapath::netns::enter(&b.ns).map_err(|e| e.to_string())?;
            reflect(&b, &stop)
        })
    };
    let window = Duration::from_secs_f64(seconds);
    let measured = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> Result<Histogram<u64>, String> {
            pair::pin(0);
            xrelay_datapath::netns::enter(&a.ns).map_err(|e| e.to_string())?;
            let mut pinger = pinger(&a, to)?;
            ping_pong(pinger.as_mut(), clock, window, &stop)
        })
    };
    let histogram = measured.join();
    // Whatever became of the pinger, the reflector must stop.
    stop.store(true, Ordering::Relaxed);
    let histogram = histogram.map_err(|_| "the pinger panicked")?;
    reflector.join().map_err(|_| "the reflector panicked")??;
    drop(pair);
    let histogram = histogram?;
    let mut m = Measurement::new("rpc_latency_closed", backend);
    m.ops_per_s = Some(histogram.len() as f64 / window.as_secs_f64());
    m.latency = Some(histogram);
    Ok(m)
}

/// `rpc_latency_closed` on `raw_xdp`: a bare frame sent over AF_XDP and
/// echoed in place by an AF_XDP reflector (`XdpTransport::reflect`), one
/// at a time: the round trip with no relay logic on either side.
pub fn raw_ping_pong(seconds: f64) -> Result<Measurement, String> {
    use xrelay_datapath::transport::xdp::{XdpConfig, XdpTransport};
    use xrelay_datapath::transport::Transport;

    struct XdpPinger {
        link: Box<dyn Transport>,
        to: Endpoint,
    }
    impl Pinger for XdpPinger {
        fn send(&mut self, frame: &[u8], now: Instant) -> Result<(), String> {
            let to = self.to;
            // No free frame yet (completions pending): flush and retry.
            let mut tries = 0;
            while !self
                .link
                .send(&mut |buf| {
                    buf[..frame.len()].copy_from_slice(frame);
                    Some((to, frame.len()))
                })
                .map_err(|e| e.to_string())?
            {
                self.link.flush(now).map_err(|e| e.to_string())?;
                tries += 1;
                if tries > 1000 {
                    return Err("no free UMEM frame to send from".into());
                }
            }
            self.link.flush(now).map_err(|e| e.to_string())
        }
        fn poll(&mut self, now: Instant, seen: &mut dyn FnMut(&[u8])) -> Result<(), String> {
            self.link
                .recv(now, 8, &mut |_, frame| seen(frame))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }

    let clock = MonotonicClock::new();
    bare_round_trips(
        Backend::RawXdp,
        seconds,
        move |b, stop| {
            let mut link = XdpTransport::new(XdpConfig::new(&b.interface, b.endpoint.ip))
                .map_err(|e| e.to_string())?;
            while !stop.load(Ordering::Relaxed) {
                link.reflect(clock.now(), 64).map_err(|e| e.to_string())?;
            }
            Ok(())
        },
        |a, to| {
            let link = pair::transport(Backend::RawXdp, a).map_err(|e| e.to_string())?;
            Ok(Box::new(XdpPinger { link, to }))
        },
    )
}

/// `rpc_latency_closed` on `raw_udp`: the same bare frame over plain
/// non-blocking kernel UDP sockets, busy-polled with `recv_from` and
/// echoed with `send_to`: the kernel UDP round
/// trip with no relay logic, the floor of the `udp` backend.
pub fn raw_udp_ping_pong(seconds: f64) -> Result<Measurement, String> {
    use std::io::ErrorKind;
    use std::net::{SocketAddrV4, UdpSocket};

    fn bind(place: &pair::Place) -> Result<UdpSocket, String> {
        let at = SocketAddrV4::new(place.endpoint.ip, pair::relay(place.endpoint).port);
        let socket = UdpSocket::bind(at).map_err(|e| format!("bind {at}: {e}"))?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(socket)
    }
    struct UdpPinger {
        socket: UdpSocket,
        to: SocketAddrV4,
        buf: Vec<u8>,
    }
    impl Pinger for UdpPinger {
        fn send(&mut self, frame: &[u8], _: Instant) -> Result<(), String> {
            match self.socket.send_to(frame, self.to) {
                // Counted lost (never echoed), as a dropped frame would be.
                Err(e) if e.kind() != ErrorKind::WouldBlock => Err(format!("send_to: {e}")),
                _ => Ok(()),
            }
        }
        fn poll(&mut self, _: Instant, seen: &mut dyn FnMut(&[u8])) -> Result<(), String> {
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, _)) => seen(&self.buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("recv_from: {e}")),
            }
            Ok(())
        }
    }

    bare_round_trips(
        Backend::RawUdp,
        seconds,
        |b, stop| {
            let socket = bind(b)?;
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => match socket.send_to(&buf[..n], from) {
                        // A full send buffer drops the echo: the pinger
                        // counts it lost.
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => return Err(format!("send_to: {e}")),
                    },
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("recv_from: {e}")),
                }
            }
            Ok(())
        },
        |a, to| {
            Ok(Box::new(UdpPinger {
                socket: bind(a)?,
                to: SocketAddrV4::new(to.ip, to.port),
                buf: vec![0u8; 2048],
            }))
        },
    )
}

/// `rpc_latency_closed` with every datapath iteration timed per stage on
/// both sides: where a round trip's microseconds go.
pub fn profile_rpc(
    backend: Backend,
    seconds: f64,
) -> Result<(Measurement, Stages, Stages), String> {
    let window = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_millis(300);
    let clock = MonotonicClock::new();
    let handlers = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let server = EchoServer(Some((clock, Arc::clone(&handlers.1))));
    let client = RpcLoad::new(Load::Closed, 32, warmup, window);
    let limit = window + warmup + Duration::from_secs(20);
    let (client, _, stages) =
        pair::run_with(backend, &clock, client, server, limit, Some(handlers))?;
    let (client_stages, server_stages) = stages.ok_or("no stage times")?;
    let mut m = Measurement::new("profile_rpc_latency_closed", backend);
    m.ops_per_s = Some(client.completed as f64 / window.as_secs_f64());
    m.latency = Some(client.histogram);
    Ok((m, client_stages, server_stages))
}
