//! Two relay nodes between the ends of a fresh veth pair, each on its own
//! thread pinned to its own core, busy-polling its transport (AF_XDP or
//! kernel UDP): what every relay scenario runs on. Each side gets a
//! [`Side`] logic that sets its node up and then runs once per loop
//! iteration, right after the node received and sent what was due.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use xrelay_datapath::netns::{self, VethPair};
use xrelay_datapath::node::{Node, NodeConfig, PeerId};
use xrelay_datapath::poll::{pin_to_core, poll_once_then, poll_once_timed, Budget, StageTimes};
use xrelay_datapath::time::{Instant, MonotonicClock};
use xrelay_datapath::transport::udp::{UdpConfig, UdpTransport};
use xrelay_datapath::transport::xdp::{XdpConfig, XdpTransport};
use xrelay_datapath::transport::{Transport, TransportError};
use xrelay_datapath::wire::encap::{Endpoint, DEFAULT_UDP_PORT};

/// The backends compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Backend {
    /// Bare AF_XDP programs, no relay logic: the floor.
    RawXdp,
    /// Relay nodes over AF_XDP.
    Xdp,
    /// Relay nodes over kernel UDP sockets (`sendmmsg`/`recvmmsg`).
    Udp,
    /// Bare kernel UDP sockets, no relay logic: the floor of `udp`
    /// (round trips only).
    RawUdp,
}

impl Backend {
    /// The name in tables, JSON and plots.
    pub fn name(self) -> &'static str {
        match self {
            Backend::RawXdp => "raw_xdp",
            Backend::Xdp => "xdp",
            Backend::Udp => "udp",
            Backend::RawUdp => "raw_udp",
        }
    }
}

/// One end of the pair: namespace, interface, address.
#[derive(Debug, Clone)]
pub struct Place {
    /// The network namespace.
    pub ns: String,
    /// The veth interface in it.
    pub interface: String,
    /// The host's address (relay port set by [`relay`]).
    pub endpoint: Endpoint,
}

impl Place {
    /// Where `host` is.
    pub fn of(host: &netns::Host) -> Place {
        Place {
            ns: host.ns.name().to_owned(),
            interface: host.interface.clone(),
            endpoint: host.endpoint,
        }
    }
}

/// `endpoint` at the relay's port.
pub fn relay(endpoint: Endpoint) -> Endpoint {
    Endpoint {
        port: DEFAULT_UDP_PORT,
        ..endpoint
    }
}

/// The calling thread enters `place`'s namespace and opens the backend's
/// transport there (AF_XDP for `raw_xdp` and `xdp`). `raw_udp` has no
/// relay transport: its ping-pong uses plain sockets.
pub fn transport(backend: Backend, place: &Place) -> Result<Box<dyn Transport>, TransportError> {
    netns::enter(&place.ns).map_err(|e| TransportError::Config(e.to_string()))?;
    Ok(match backend {
        Backend::RawXdp | Backend::Xdp => Box::new(XdpTransport::new(XdpConfig::new(
            &place.interface,
            place.endpoint.ip,
        ))?),
        Backend::Udp => Box::new(UdpTransport::bind(
            SocketAddrV4::new(place.endpoint.ip, DEFAULT_UDP_PORT),
            UdpConfig::default(),
        )?),
        Backend::RawUdp => {
            return Err(TransportError::Config(
                "raw_udp is plain sockets, not a relay transport (rpc_latency_closed only)".into(),
            ))
        }
    })
}

/// Pins the calling thread; best effort (an unpinned run still compares
/// backends fairly, both run the same way).
pub fn pin(core: usize) {
    let _ = pin_to_core(core);
}

/// What runs on one side of a pair.
pub trait Side: Send + 'static {
    /// Sets the node up (exports, sessions); `peer` is the other side.
    fn setup(&mut self, node: &mut Node, peer: PeerId, now: Instant) -> Result<(), String>;
    /// Runs after every loop iteration; `true` ends the run (both sides).
    fn step(&mut self, node: &mut Node, now: Instant) -> Result<bool, String>;
}

/// Runs `client` (core 0) and `server` (core 1), timed by `clock`, on relay nodes over
/// `backend` between the two ends of a fresh veth pair until a side's
/// step says done or `limit` passes (an error: the scenario hung).
/// Returns both sides for their results.
pub fn run<C: Side, S: Side>(
    backend: Backend,
    clock: &MonotonicClock,
    client: C,
    server: S,
    limit: Duration,
) -> Result<(C, S), String> {
    run_with(backend, clock, client, server, limit, None).map(|(c, s, _)| (c, s))
}

/// Per-stage time histograms of one side ([`run_with`] with profiling),
/// in nanoseconds per frame (per call for handlers).
#[derive(Debug, Clone)]
pub struct Stages {
    /// Receive calls, outside the node, per received frame.
    pub rx_poll: Histogram<u64>,
    /// The node, per frame received or sent (handlers excluded).
    pub engine: Histogram<u64>,
    /// RPC handlers, per iteration that ran any.
    pub handler: Histogram<u64>,
    /// Send and flush calls, outside the node, per sent frame.
    pub tx_submit: Histogram<u64>,
    /// From a frame's handing to the link to its completion (AF_XDP).
    pub tx_completion: Histogram<u64>,
}

impl Stages {
    fn new() -> Stages {
        let h = crate::scenarios::histogram;
        Stages {
            rx_poll: h(),
            engine: h(),
            handler: h(),
            tx_submit: h(),
            tx_completion: h(),
        }
    }

    fn add(&mut self, t: &StageTimes) {
        let per = |total: u64, n: usize| total / u64::try_from(n.max(1)).unwrap_or(1);
        if t.received > 0 {
            self.rx_poll
                .saturating_record(per(t.rx_poll, t.received).max(1));
        }
        if t.received + t.sent > 0 {
            self.engine
                .saturating_record(per(t.engine, t.received + t.sent).max(1));
        }
        if t.handler > 0 {
            self.handler.saturating_record(t.handler);
        }
        if t.sent > 0 {
            self.tx_submit
                .saturating_record(per(t.tx_submit, t.sent).max(1));
        }
    }

    /// The stages by name, in datapath order.
    pub fn named(&self) -> [(&'static str, &Histogram<u64>); 5] {
        [
            ("rx_poll", &self.rx_poll),
            ("engine", &self.engine),
            ("handler", &self.handler),
            ("tx_submit", &self.tx_submit),
            ("tx_completion", &self.tx_completion),
        ]
    }
}

/// The client's and the server's stage histograms.
pub type BothStages = (Stages, Stages);

/// Handler time counters of the two sides, for profiling.
pub type Profiling = (Arc<AtomicU64>, Arc<AtomicU64>);

/// [`run`], and with `profile` every loop iteration timed per stage
/// ([`poll_once_timed`]); returns each side's [`Stages`] then.
pub fn run_with<C: Side, S: Side>(
    backend: Backend,
    clock: &MonotonicClock,
    client: C,
    server: S,
    limit: Duration,
    profile: Option<Profiling>,
) -> Result<(C, S, Option<BothStages>), String> {
    let pair = VethPair::new(1).map_err(|e| format!("{e} (needs root)"))?;
    let clock = *clock;
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = (Place::of(&pair.a), Place::of(&pair.b));
    let (a_at, b_at) = (relay(a.endpoint), relay(b.endpoint));
    let spawn = |mut side: Box<dyn SideBox>,
                 place: Place,
                 peer_at: Endpoint,
                 core: usize,
                 handlers: Option<Arc<AtomicU64>>| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(
            move || -> Result<(Box<dyn SideBox>, Option<Stages>), String> {
                pin(core);
                let mut stages = handlers.as_ref().map(|_| Stages::new());
                let result = (|| {
                    let mut link = transport(backend, &place).map_err(|e| e.to_string())?;
                    link.track_completions(stages.is_some());
                    let mut node = Node::new(NodeConfig::new(link.max_frame_len()))
                        .map_err(|e| e.to_string())?;
                    let peer = node
                        .add_peer(clock.now(), "peer", peer_at)
                        .map_err(|e| e.to_string())?;
                    side.setup(&mut node, peer, clock.now())?;
                    while !stop.load(Ordering::Relaxed) {
                        let now = clock.now();
                        // The side runs between the node's answers and the
                        // flush: what it starts leaves in the same batch.
                        let mut outcome = Ok(false);
                        let mut ready = |node: &mut Node| {
                            outcome = side.step(node, clock.now());
                        };
                        match (&handlers, &mut stages) {
                            (Some(handlers), Some(stages)) => {
                                let (_, times) = poll_once_timed(
                                    &mut node,
                                    link.as_mut(),
                                    &clock,
                                    Budget::default(),
                                    handlers,
                                    &mut ready,
                                )
                                .map_err(|e| e.to_string())?;
                                stages.add(&times);
                                link.completion_times(&mut |d| {
                                    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                                    stages.tx_completion.saturating_record(ns.max(1));
                                });
                            }
                            _ => {
                                poll_once_then(
                                    &mut node,
                                    link.as_mut(),
                                    now,
                                    Budget::default(),
                                    &mut |_, _| false,
                                    &mut ready,
                                )
                                .map_err(|e| e.to_string())?;
                            }
                        }
                        if outcome? {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                })();
                // Whatever happened, the other side must stop too.
                stop.store(true, Ordering::Relaxed);
                result.map(|()| (side, stages))
            },
        )
    };
    let (client_handlers, server_handlers) = match profile {
        Some((c, s)) => (Some(c), Some(s)),
        None => (None, None),
    };
    let client_thread = spawn(Box::new(client), a, b_at, 0, client_handlers);
    let server_thread = spawn(Box::new(server), b, a_at, 1, server_handlers);
    let watchdog = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + limit;
            while !stop.load(Ordering::Relaxed) {
                if std::time::Instant::now() >= deadline {
                    stop.store(true, Ordering::Relaxed);
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
    };
    let (client, client_stages) = client_thread.join().map_err(|_| "the client panicked")??;
    let (server, server_stages) = server_thread.join().map_err(|_| "the server panicked")??;
    if watchdog.join().unwrap_or(true) {
        return Err(format!("did not finish within {limit:?}"));
    }
    drop(pair);
    let client = client
        .into_any()
        .downcast::<C>()
        .map_err(|_| "client type")?;
    let server = server
        .into_any()
        .downcast::<S>()
        .map_err(|_| "server type")?;
    let stages = client_stages.zip(server_stages);
    Ok((*client, *server, stages))
}

/// A [`Side`] that can be taken back as its concrete type.
trait SideBox: Side {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

impl<T: Side> SideBox for T {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}
