//! The application's view of a node: a datapath thread that drives a
//! [`Node`] over a [`Transport`], and thread-safe handles to talk to it.
//!
//! [`Runtime::spawn`] creates the transport *on* the datapath thread (a
//! transport need not be `Send`) and runs the loop: receive a batch, let
//! the node handle it (exported RPC dispatchers run inline here), send
//! what is due, hand events to the handles. Application threads send
//! commands through a `crossbeam` channel and unpark the thread.
//!
//! Handles:
//!
//! * [`RpcSession`]: a [`Caller`], so any interface's generated client
//!   stub calls through it; a call blocks until its reply or a clear error.
//! * [`SignalTransmitter`] (`submit`, never blocks) and [`SignalHandler`]
//!   (`wait` blocks, `poll` does not; one wake-up carries the number of
//!   submissions since the last).
//! * [`RomPublisher`] (`publish(bytes)`, `remove`) and [`RomSubscriber`]
//!   (`current`, and `wait_change` for change notification). A subscriber
//!   only ever sees complete, verified versions.
//!
//! When idle the thread spins briefly, then parks for at most
//! [`RuntimeConfig::idle_park`] or until its next timer; `idle_park` of
//! zero busy-polls.
//!
//! Several queues of one interface serve one node identity with one
//! runtime each, joined by a [`Handoff`] group: every peer is owned by one
//! queue, whose node holds all of its state; a frame that arrives on
//! another queue (the NIC steered the peer's flow elsewhere) is copied to
//! the owner, and counted.

use core::time::Duration;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::auth::FrameKeys;
use crate::engine::peer::PeerState;
use crate::engine::rom::RomVersion;
use crate::marshal::{CallError, Caller, Dispatch};
use crate::node::{
    CloseCause, ExportId, Node, NodeConfig, NodeError, NodeEvent, NodeStats, PeerId, PeerReport,
    SessionId,
};
use crate::time::{Instant, MonotonicClock};
use crate::transport::{Transport, TransportCounters, TransportError};
use crate::wire::encap::Endpoint;
use crate::wire::session::Service;

/// How a runtime runs its node.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The node's configuration; `max_frame_len` is lowered to the
    /// transport's if larger.
    pub node: NodeConfig,
    /// Peers by name and address.
    pub peers: Vec<(String, Endpoint)>,
    /// The clock (share one between nodes of one in-memory network).
    pub clock: MonotonicClock,
    /// Frames received per batch.
    pub recv_budget: usize,
    /// Longest park when idle; zero busy-polls.
    pub idle_park: Duration,
    /// How long opening a session may take before it is an error.
    pub open_timeout: Duration,
    /// Pin the datapath thread to this CPU core (`core_affinity` id).
    pub core: Option<usize>,
    /// Print peer events (up, restarted, down) on stderr, one line each
    /// (for daemons).
    pub log_peers: bool,
    /// Frame keys by peer name, in force from the first frame.
    pub keys: Vec<(String, FrameKeys)>,
    /// Start with a policy that allows nothing: no peer can open an
    /// export before [`Runtime::set_policy`] or [`Runtime::reconfigure`]
    /// grants it (daemons, whose exports and policy come after the start).
    pub deny_all: bool,
    /// This runtime's place in a group of queues serving one node identity.
    pub handoff: Option<Handoff>,
}

/// A frame on its way to the queue that owns its peer: sender, bytes in
/// a pooled buffer, and the queue whose pool the buffer goes back to.
type Diverted = (Endpoint, Vec<u8>, usize);

/// A queue's free buffers for handed-off frames: where they go back, and
/// where they are taken from.
type Pool = (Sender<Vec<u8>>, Receiver<Vec<u8>>);

/// How a peer is found: by IP address and port, or (raw Ethernet, where a
/// frame carries no IP) by MAC, as the node matches peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OwnerKey {
    Ip(Ipv4Addr, u16),
    Mac([u8; 6]),
}

impl OwnerKey {
    fn of(endpoint: &Endpoint) -> OwnerKey {
        if endpoint.ip.is_unspecified() {
            OwnerKey::Mac(endpoint.mac.0)
        } else {
            OwnerKey::Ip(endpoint.ip, endpoint.port)
        }
    }
}

/// One queue's link to the other queues of its group (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct Handoff {
    index: usize,
    owners: Arc<RwLock<HashMap<OwnerKey, usize>>>,
    outboxes: Vec<Sender<Diverted>>,
    inbox: Receiver<Diverted>,
    /// Each queue's free buffers (allocated at start): a diverted frame
    /// travels in one of its sender's and goes back after.
    pools: Vec<Pool>,
    threads: Arc<Vec<OnceLock<std::thread::Thread>>>,
}

impl Handoff {
    /// Frames waiting per queue before more are dropped (and counted).
    pub const CAPACITY: usize = 4096;

    /// Buffers per queue for frames on their way to another queue.
    pub const BUFFERS: usize = 1024;

    /// Bytes per buffer: the largest frame any transport carries here.
    const BUFFER_LEN: usize = 2048;

    /// The handoffs of a group of `queues` queues, one per queue in order.
    pub fn group(queues: usize) -> Vec<Handoff> {
        let owners = Arc::new(RwLock::new(HashMap::new()));
        let threads = Arc::new((0..queues).map(|_| OnceLock::new()).collect::<Vec<_>>());
        let (outboxes, inboxes): (Vec<_>, Vec<_>) = (0..queues)
            .map(|_| crossbeam_channel::bounded(Self::CAPACITY))
            .unzip();
        let pools: Vec<Pool> = (0..queues)
            .map(|_| {
                let (give, take) = crossbeam_channel::bounded(Self::BUFFERS);
                for _ in 0..Self::BUFFERS {
                    let _ = give.try_send(Vec::with_capacity(Self::BUFFER_LEN));
                }
                (give, take)
            })
            .collect();
        inboxes
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Handoff {
                index,
                owners: Arc::clone(&owners),
                outboxes: outboxes.clone(),
                inbox,
                pools: pools.clone(),
                threads: Arc::clone(&threads),
            })
            .collect()
    }

    /// Records that queue `queue` owns the peer at `endpoint` (for the
    /// whole group).
    pub fn assign(&self, endpoint: &Endpoint, queue: usize) {
        let mut owners = self.owners.write().unwrap_or_else(PoisonError::into_inner);
        owners.insert(OwnerKey::of(endpoint), queue);
        // Raw Ethernet frames name their sender by MAC only.
        if endpoint.mac.0 != [0; 6] {
            owners.insert(OwnerKey::Mac(endpoint.mac.0), queue);
        }
    }

    /// Gives a handled frame's buffer back to the queue it came from.
    fn recycle(&self, mut buffer: Vec<u8>, origin: usize) {
        buffer.clear();
        if let Some((give, _)) = self.pools.get(origin) {
            let _ = give.try_send(buffer);
        }
    }

    /// Passes a frame from a peer this queue does not own to the owner;
    /// `false` if no queue of the group owns it.
    fn divert(&self, from: Endpoint, bytes: &[u8], counters: &mut HandoffCounters) -> bool {
        let owner = self
            .owners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&OwnerKey::of(&from))
            .copied();
        let Some(owner) = owner.filter(|&q| q != self.index) else {
            return false;
        };
        // A pooled buffer: no allocation per frame.
        let Ok(mut buffer) = self.pools[self.index].1.try_recv() else {
            counters.dropped += 1;
            return true;
        };
        buffer.extend_from_slice(bytes);
        match self.outboxes[owner].try_send((from, buffer, self.index)) {
            Ok(()) => {
                counters.sent += 1;
                if let Some(thread) = self.threads[owner].get() {
                    thread.unpark();
                }
            }
            Err(error) => {
                counters.dropped += 1;
                let (_, buffer, _) = error.into_inner();
                self.recycle(buffer, self.index);
            }
        }
        true
    }
}

/// Frames passed between the queues of a [`Handoff`] group, seen from one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffCounters {
    /// Frames this queue received for another queue's peer and passed on.
    pub sent: u64,
    /// Frames for another queue dropped: its inbox was full, or this
    /// queue's buffers were all on their way.
    pub dropped: u64,
    /// Frames other queues passed to this one.
    pub received: u64,
}

impl RuntimeConfig {
    /// Defaults with `peers`.
    pub fn new(peers: Vec<(String, Endpoint)>) -> RuntimeConfig {
        RuntimeConfig {
            node: NodeConfig::new(crate::transport::udp::UdpConfig::default().max_frame_len),
            peers,
            clock: MonotonicClock::new(),
            recv_budget: 64,
            idle_park: Duration::from_micros(200),
            open_timeout: Duration::from_secs(3),
            core: None,
            log_peers: false,
            keys: Vec::new(),
            deny_all: false,
            handoff: None,
        }
    }
}

/// What [`Runtime::report`] returns.
#[derive(Debug, Clone)]
pub struct Report {
    /// Node-wide counters.
    pub node: NodeStats,
    /// The transport's counters (its one queue).
    pub transport: TransportCounters,
    /// Frames passed to and from the other queues of its group.
    pub handoff: HandoffCounters,
    /// Each peer's counters and latency.
    pub peers: Vec<PeerReport>,
}

/// A change of configuration applied by [`Runtime::reconfigure`] at once.
#[derive(Debug, Default)]
pub struct Reconfiguration {
    /// Peers to add, by name and address.
    pub add_peers: Vec<(String, Endpoint)>,
    /// Frame keys by peer name (`None`: no authentication).
    pub keys: Vec<(String, Option<FrameKeys>)>,
    /// The new policy as `(peer, service, label)` triples, or `None` to
    /// keep the current one.
    pub policy: Option<Vec<(String, Service, String)>>,
}

/// Why a runtime operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The transport could not be created or failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The node refused the configuration or the request.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The datapath thread is gone.
    #[error("the datapath thread has stopped")]
    Stopped,
    /// Called on the datapath thread itself (from an RPC handler), where
    /// waiting for the datapath thread can never end.
    #[error("called from the datapath thread (an RPC handler), which would deadlock")]
    WouldDeadlock,
    /// No such peer.
    #[error("no peer named {0:?}")]
    UnknownPeer(String),
    /// The peer did not answer the session request in time.
    #[error("opening {label:?} on {peer}: no answer within {timeout:?} (peer unreachable)")]
    OpenTimeout {
        /// The peer.
        peer: String,
        /// The label.
        label: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The peer refused the session.
    #[error("opening {label:?} on {peer}: {cause:?}")]
    Refused {
        /// The peer.
        peer: String,
        /// The label.
        label: String,
        /// Its answer.
        cause: CloseCause,
    },
}

type Command = Box<dyn FnOnce(&mut Driver, Instant) + Send>;
type CallResult = Result<(i32, Vec<u8>), CallError>;

/// The state shared by a signal handler and the datapath thread.
#[derive(Debug, Default)]
struct SignalShared {
    state: Mutex<SignalState>,
    arrived: Condvar,
}

#[derive(Debug, Default)]
struct SignalState {
    pending: u64,
    /// Datapath threads delivering to this handler (several queues may).
    drivers: usize,
    /// Every one of them has ended: nothing more will arrive.
    stopped: bool,
}

/// The state shared by a ROM subscriber and the datapath thread.
#[derive(Debug, Default)]
struct RomShared {
    state: Mutex<RomState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct RomState {
    current: Option<Arc<RomVersion>>,
    stopped: bool,
    /// The publisher's side closed the session for good (revoked by its
    /// policy, export gone).
    closed: Option<CloseCause>,
}

/// Signals submitted by the application and not yet handed to the node:
/// one command carries any number of submissions.
#[derive(Debug, Default)]
struct SignalBacklog {
    counts: Mutex<BTreeMap<u32, u64>>,
    /// A command to hand them over is on its way.
    scheduled: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder
    // panicked (plain counters and Arc swaps).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The datapath thread's state besides the node.
struct Driver {
    node: Node,
    /// The transport's counters as of the last batch of commands.
    transport: TransportCounters,
    handoff: HandoffCounters,
    waiters: Waiters,
}

/// Who waits for what the node reports.
struct Waiters {
    log_peers: bool,
    calls: HashMap<(SessionId, u64), Sender<CallResult>>,
    opens: HashMap<SessionId, Sender<Result<(), CloseCause>>>,
    signals: HashMap<ExportId, Arc<SignalShared>>,
    roms: HashMap<SessionId, Arc<RomShared>>,
}

impl Waiters {
    /// Hands the node's events to whoever waits for them.
    fn deliver(&mut self, node: &mut Node) {
        while let Some(event) = node.poll_event() {
            match event {
                NodeEvent::CallDone { session, outcome } => {
                    if let Some(waiter) = self.calls.remove(&(session, outcome.request_id)) {
                        let _ = waiter.send(outcome.result);
                    }
                }
                NodeEvent::Opened { session } => {
                    if let Some(waiter) = self.opens.remove(&session) {
                        let _ = waiter.send(Ok(()));
                    }
                }
                NodeEvent::Closed { session, reason } => {
                    if let Some(shared) = self.roms.get(&session) {
                        lock(&shared.state).closed = Some(reason);
                        shared.changed.notify_all();
                    }
                    if let Some(waiter) = self.opens.remove(&session) {
                        let _ = waiter.send(Err(reason));
                    }
                }
                NodeEvent::Signal { export, count, .. } => {
                    if let Some(shared) = self.signals.get(&export) {
                        lock(&shared.state).pending += count;
                        shared.arrived.notify_all();
                    }
                }
                NodeEvent::RomChanged { session, version } => {
                    if let Some(shared) = self.roms.get(&session) {
                        lock(&shared.state).current = Some(version);
                        shared.changed.notify_all();
                    }
                }
                NodeEvent::Peer { peer, event } => {
                    if self.log_peers {
                        let name = node.peer_name(peer).unwrap_or("?");
                        eprintln!("xrelay: peer {name}: {event:?}");
                    }
                }
                NodeEvent::Interrupted { .. } => {}
            }
        }
    }
}

impl Drop for Waiters {
    /// The thread is ending (stopped, or its transport failed): wake every
    /// handle that waits, so none blocks for ever.
    fn drop(&mut self) {
        for shared in self.signals.values() {
            let mut state = lock(&shared.state);
            state.drivers = state.drivers.saturating_sub(1);
            if state.drivers == 0 {
                state.stopped = true;
                shared.arrived.notify_all();
            }
        }
        for shared in self.roms.values() {
            lock(&shared.state).stopped = true;
            shared.changed.notify_all();
        }
    }
}

/// A running node (see the module documentation). Dropping it stops the
/// datapath thread.
#[derive(Debug)]
pub struct Runtime {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<Result<NodeStats, TransportError>>>,
}

#[derive(Debug)]
struct Inner {
    commands: Sender<Command>,
    thread: std::thread::Thread,
    stop: AtomicBool,
    open_timeout: Duration,
    call_timeout: Duration,
    local: Endpoint,
}

impl Inner {
    fn on_datapath_thread(&self) -> bool {
        std::thread::current().id() == self.thread.id()
    }
}

impl Inner {
    fn send(&self, command: Command) -> Result<(), RuntimeError> {
        self.commands
            .send(command)
            .map_err(|_| RuntimeError::Stopped)?;
        self.thread.unpark();
        Ok(())
    }

    /// Runs `f` on the datapath thread and waits for its result.
    fn request<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Driver, Instant) -> R + Send + 'static,
    ) -> Result<R, RuntimeError> {
        if self.on_datapath_thread() {
            return Err(RuntimeError::WouldDeadlock);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Box::new(move |driver, now| {
            let _ = tx.send(f(driver, now));
        }))?;
        rx.recv().map_err(|_| RuntimeError::Stopped)
    }

    fn open(
        self: &Arc<Self>,
        peer: &str,
        service: Service,
        label: &str,
    ) -> Result<SessionId, RuntimeError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let owned = label.to_owned();
        let name = peer.to_owned();
        let session = self.request(move |driver, now| {
            let p = driver
                .node
                .peer(&name)
                .ok_or(RuntimeError::UnknownPeer(name))?;
            let session = driver.node.open(now, p, service, &owned)?;
            driver.waiters.opens.insert(session, tx);
            Ok::<_, RuntimeError>(session)
        })??;
        let answer = match rx.recv_timeout(self.open_timeout) {
            Err(RecvTimeoutError::Disconnected) => return Err(RuntimeError::Stopped),
            other => other,
        };
        let fail = |error| {
            let _ = self.send(Box::new(move |driver, _| {
                driver.waiters.opens.remove(&session);
                driver.node.close(session);
            }));
            Err(error)
        };
        match answer {
            Ok(Ok(())) => Ok(session),
            Ok(Err(cause)) => fail(RuntimeError::Refused {
                peer: peer.to_owned(),
                label: label.to_owned(),
                cause,
            }),
            Err(_) => fail(RuntimeError::OpenTimeout {
                peer: peer.to_owned(),
                label: label.to_owned(),
                timeout: self.open_timeout,
            }),
        }
    }

    fn close(&self, session: SessionId) {
        let _ = self.send(Box::new(move |driver, _| {
            driver.waiters.roms.remove(&session);
            driver.node.close(session);
        }));
    }
}

impl Runtime {
    /// Starts a datapath thread named `name` that creates its transport
    /// with `make_transport`, adds the configured peers and runs until the
    /// runtime is dropped. Returns once the transport exists.
    pub fn spawn<T, F>(
        name: &str,
        config: RuntimeConfig,
        make_transport: F,
    ) -> Result<Runtime, RuntimeError>
    where
        T: Transport + 'static,
        F: FnOnce() -> Result<T, TransportError> + Send + 'static,
    {
        let (commands, inbox) = crossbeam_channel::unbounded::<Command>();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<Endpoint, RuntimeError>>(1);
        let (inner_tx, inner_rx) = crossbeam_channel::bounded::<Arc<Inner>>(1);
        let open_timeout = config.open_timeout;
        let call_timeout = config.node.rpc.call_timeout;
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                if let Some(core) = config.core {
                    if !crate::poll::pin_to_core(core) {
                        let _ = ready_tx.send(Err(RuntimeError::Transport(format!(
                            "cannot pin the datapath thread to core {core}"
                        ))));
                        return Ok(NodeStats::default());
                    }
                }
                let setup = || -> Result<(T, Driver), RuntimeError> {
                    let transport =
                        make_transport().map_err(|e| RuntimeError::Transport(e.to_string()))?;
                    let mut node_config = config.node;
                    node_config.max_frame_len =
                        node_config.max_frame_len.min(transport.max_frame_len());
                    let mut node = Node::new(node_config)?;
                    let now = config.clock.now();
                    for (peer, endpoint) in &config.peers {
                        node.add_peer(now, peer, *endpoint)?;
                    }
                    for (name, keys) in &config.keys {
                        let peer = node
                            .peer(name)
                            .ok_or_else(|| RuntimeError::UnknownPeer(name.clone()))?;
                        node.set_peer_keys(peer, Some(keys.clone()))?;
                    }
                    if config.deny_all {
                        node.set_policy(Some(std::collections::BTreeSet::new()));
                    }
                    let counters = transport.counters();
                    Ok((
                        transport,
                        Driver {
                            node,
                            transport: counters,
                            handoff: HandoffCounters::default(),
                            waiters: Waiters {
                                log_peers: config.log_peers,
                                calls: HashMap::new(),
                                opens: HashMap::new(),
                                signals: HashMap::new(),
                                roms: HashMap::new(),
                            },
                        },
                    ))
                };
                match setup() {
                    Ok((transport, driver)) => {
                        let _ = ready_tx.send(Ok(transport.local_endpoint()));
                        match inner_rx.recv() {
                            Ok(inner) => run(transport, driver, &inbox, &inner, &config),
                            Err(_) => Ok(driver.node.stats()),
                        }
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        Ok(NodeStats::default())
                    }
                }
            })
            .map_err(|e| RuntimeError::Transport(format!("spawning the datapath thread: {e}")))?;
        // The thread sets up the transport and reports its address; then
        // it gets the shared state (with the stop flag) and runs.
        let waker = thread.thread().clone();
        let ready = ready_rx.recv().map_err(|_| RuntimeError::Stopped);
        let local = match ready {
            Ok(Ok(local)) => local,
            Ok(Err(error)) | Err(error) => {
                let _ = thread.join();
                return Err(error);
            }
        };
        let inner = Arc::new(Inner {
            commands,
            thread: waker,
            stop: AtomicBool::new(false),
            open_timeout,
            call_timeout,
            local,
        });
        let _ = inner_tx.send(Arc::clone(&inner));
        Ok(Runtime {
            inner,
            thread: Some(thread),
        })
    }

    /// Serves RPC sessions labelled `label` with `dispatcher`, inline on
    /// the datapath thread.
    pub fn export_rpc(
        &self,
        label: &str,
        dispatcher: impl Dispatch + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let label = label.to_owned();
        self.inner.request(move |driver, _| {
            driver
                .node
                .export_rpc(&label, Box::new(dispatcher))
                .map(|_| ())
        })??;
        Ok(())
    }

    /// Receives signals on sessions labelled `label`.
    pub fn export_signal(&self, label: &str) -> Result<SignalHandler, RuntimeError> {
        let label = label.to_owned();
        let shared = Arc::new(SignalShared::default());
        let theirs = Arc::clone(&shared);
        self.inner.request(move |driver, _| {
            let export = driver.node.export_signal(&label)?;
            lock(&theirs.state).drivers += 1;
            driver.waiters.signals.insert(export, theirs);
            Ok::<_, NodeError>(())
        })??;
        Ok(SignalHandler { shared })
    }

    /// Serves signal receivers labelled `label` whose signals wake
    /// `handler` (another runtime's: one handler for the queues of a group).
    pub fn export_signal_to(
        &self,
        label: &str,
        handler: &SignalHandler,
    ) -> Result<(), RuntimeError> {
        let label = label.to_owned();
        let shared = Arc::clone(&handler.shared);
        self.inner.request(move |driver, _| {
            let export = driver.node.export_signal(&label)?;
            lock(&shared.state).drivers += 1;
            driver.waiters.signals.insert(export, shared);
            Ok::<_, NodeError>(())
        })??;
        Ok(())
    }

    /// Publishes a ROM module labelled `label` (empty until the first
    /// [`RomPublisher::publish`]).
    pub fn export_rom(&self, label: &str) -> Result<RomPublisher, RuntimeError> {
        let label = label.to_owned();
        let module = self
            .inner
            .request(move |driver, _| driver.node.export_rom(&label))??;
        Ok(RomPublisher {
            inner: Arc::clone(&self.inner),
            module,
        })
    }

    /// Opens an RPC session labelled `label` on `peer`.
    pub fn open_rpc(&self, peer: &str, label: &str) -> Result<RpcSession, RuntimeError> {
        let session = self.inner.open(peer, Service::Rpc, label)?;
        Ok(RpcSession {
            inner: Arc::clone(&self.inner),
            session,
        })
    }

    /// Opens a signal session labelled `label` on `peer`.
    pub fn open_signal(&self, peer: &str, label: &str) -> Result<SignalTransmitter, RuntimeError> {
        let session = self.inner.open(peer, Service::Signal, label)?;
        Ok(SignalTransmitter {
            inner: Arc::clone(&self.inner),
            session,
            backlog: Arc::default(),
        })
    }

    /// Subscribes to ROM module `label` on `peer`.
    pub fn subscribe_rom(&self, peer: &str, label: &str) -> Result<RomSubscriber, RuntimeError> {
        let shared = Arc::new(RomShared::default());
        let session = self.inner.open(peer, Service::Rom, label)?;
        let theirs = Arc::clone(&shared);
        self.inner.request(move |driver, _| {
            // A version may have completed between the open and now.
            lock(&theirs.state).current = driver.node.rom_current(session);
            driver.waiters.roms.insert(session, theirs);
        })?;
        Ok(RomSubscriber {
            inner: Arc::clone(&self.inner),
            session,
            shared,
        })
    }

    /// Authenticates every frame to and from peer `name` with `keys`
    /// (`None`: no authentication for that peer).
    pub fn set_peer_keys(&self, name: &str, keys: Option<FrameKeys>) -> Result<(), RuntimeError> {
        let name = name.to_owned();
        self.inner.request(move |driver, _| {
            let peer = driver
                .node
                .peer(&name)
                .ok_or(RuntimeError::UnknownPeer(name))?;
            driver.node.set_peer_keys(peer, keys)?;
            Ok::<_, RuntimeError>(())
        })?
    }

    /// Sets which peer may open which export, by names: `(peer, service,
    /// label)` triples (`None`: everything is allowed). Sessions the new
    /// policy no longer allows are revoked; the others go on.
    pub fn set_policy(
        &self,
        allowed: Option<Vec<(String, Service, String)>>,
    ) -> Result<(), RuntimeError> {
        self.inner.request(move |driver, _| {
            let Some(allowed) = allowed else {
                driver.node.set_policy(None);
                return Ok(());
            };
            let mut set = std::collections::BTreeSet::new();
            for (peer, service, label) in allowed {
                let p = driver
                    .node
                    .peer(&peer)
                    .ok_or(RuntimeError::UnknownPeer(peer))?;
                let export = driver
                    .node
                    .export_id(service, &label)
                    .ok_or(RuntimeError::Node(NodeError::Unknown("export")))?;
                set.insert((p, export));
            }
            driver.node.set_policy(Some(set));
            Ok::<_, RuntimeError>(())
        })?
    }

    /// This node's address on its link.
    pub fn local_endpoint(&self) -> Endpoint {
        self.inner.local
    }

    /// Adds a peer (for peers whose address is known only after start).
    pub fn add_peer(&self, name: &str, endpoint: Endpoint) -> Result<(), RuntimeError> {
        let name = name.to_owned();
        self.inner
            .request(move |driver, now| driver.node.add_peer(now, &name, endpoint).map(|_| ()))??;
        Ok(())
    }

    /// Whether peer `name` is up.
    pub fn peer_state(&self, name: &str) -> Result<PeerState, RuntimeError> {
        let name = name.to_owned();
        self.inner
            .request({
                let name = name.clone();
                move |driver, _| {
                    driver
                        .node
                        .peer(&name)
                        .and_then(|p| driver.node.peer_state(p))
                }
            })?
            .ok_or(RuntimeError::UnknownPeer(name))
    }

    /// The node's counters.
    pub fn stats(&self) -> Result<NodeStats, RuntimeError> {
        self.inner.request(|driver, _| driver.node.stats())
    }

    /// Everything the operator sees: the node's counters, the transport's
    /// and each peer's (with latency percentiles).
    pub fn report(&self) -> Result<Report, RuntimeError> {
        self.inner.request(|driver, _| Report {
            node: driver.node.stats(),
            transport: driver.transport,
            handoff: driver.handoff,
            peers: driver
                .node
                .peer_ids()
                .filter_map(|p| driver.node.peer_report(p))
                .collect(),
        })
    }

    /// Whether [`Runtime::reconfigure`] would accept `change`, without
    /// applying it (several queues check all before any applies).
    pub fn check_reconfigure(&self, change: &Reconfiguration) -> Result<(), RuntimeError> {
        let peers = change.add_peers.clone();
        let keyed: Vec<String> = change.keys.iter().map(|(n, _)| n.clone()).collect();
        let policy = change.policy.clone();
        self.inner.request(move |driver, _| {
            let probe = Reconfiguration {
                add_peers: peers,
                keys: Vec::new(),
                policy,
            };
            validate(&driver.node, &probe, &keyed)
        })?
    }

    /// Applies `change` as one step between two batches of the datapath:
    /// no frame is handled under half of it. Everything is checked
    /// first; on an error nothing changes.
    pub fn reconfigure(&self, change: Reconfiguration) -> Result<(), RuntimeError> {
        self.inner.request(move |driver, now| {
            let keyed: Vec<String> = change.keys.iter().map(|(n, _)| n.clone()).collect();
            validate(&driver.node, &change, &keyed)?;
            let node = &mut driver.node;
            for (name, endpoint) in &change.add_peers {
                node.add_peer(now, name, *endpoint)?;
            }
            for (name, keys) in change.keys {
                if let Some(peer) = node.peer(&name) {
                    node.set_peer_keys(peer, keys)?;
                }
            }
            if let Some(allowed) = change.policy {
                let set: std::collections::BTreeSet<(PeerId, ExportId)> = allowed
                    .iter()
                    .filter_map(|(peer, service, label)| {
                        Some((node.peer(peer)?, node.export_id(*service, label)?))
                    })
                    .collect();
                node.set_policy(Some(set));
            }
            Ok(())
        })?
    }

    /// Stops the datapath thread; returns its final counters.
    pub fn shutdown(mut self) -> Result<NodeStats, RuntimeError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<NodeStats, RuntimeError> {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.thread.unpark();
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(result) => result.map_err(|e| RuntimeError::Transport(e.to_string())),
                Err(_) => Err(RuntimeError::Stopped),
            },
            None => Err(RuntimeError::Stopped),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

/// Checks `change` (with keys for the peers named `keyed`) against
/// `node`: new peers clash with no peer, keys and policy name known peers
/// and exports.
fn validate(node: &Node, change: &Reconfiguration, keyed: &[String]) -> Result<(), RuntimeError> {
    for (i, (name, endpoint)) in change.add_peers.iter().enumerate() {
        let clash = node.peer(name).is_some()
            || node.peer_by_address(endpoint).is_some()
            || change.add_peers[..i]
                .iter()
                .any(|(n, e)| n == name || e.same_address(endpoint));
        if clash {
            return Err(RuntimeError::Node(NodeError::DuplicatePeer(name.clone())));
        }
    }
    let known =
        |name: &str| node.peer(name).is_some() || change.add_peers.iter().any(|(n, _)| n == name);
    if let Some(name) = keyed.iter().find(|name| !known(name)) {
        return Err(RuntimeError::UnknownPeer(name.clone()));
    }
    if let Some(allowed) = &change.policy {
        for (peer, service, label) in allowed {
            if !known(peer) {
                return Err(RuntimeError::UnknownPeer(peer.clone()));
            }
            if node.export_id(*service, label).is_none() {
                return Err(RuntimeError::Node(NodeError::Unknown("export")));
            }
        }
    }
    Ok(())
}

/// The datapath loop.
fn run<T: Transport>(
    mut transport: T,
    mut driver: Driver,
    inbox: &Receiver<Command>,
    inner: &Inner,
    config: &RuntimeConfig,
) -> Result<NodeStats, TransportError> {
    const SPINS_BEFORE_PARK: u32 = 64;
    const MAX_COMMANDS_PER_ITERATION: usize = 256;
    if let Some(handoff) = &config.handoff {
        // Other queues wake this thread when they pass it a frame.
        let _ = handoff.threads[handoff.index].set(std::thread::current());
    }
    let mut idle = 0u32;
    while !inner.stop.load(Ordering::Acquire) {
        let mut busy = false;
        let now = config.clock.now();
        // A bounded number per iteration: the link is served even while
        // the application floods commands.
        for command in inbox.try_iter().take(MAX_COMMANDS_PER_ITERATION) {
            if !busy {
                driver.transport = transport.counters();
            }
            command(&mut driver, now);
            busy = true;
        }
        let budget = crate::poll::Budget {
            rx: config.recv_budget,
            ..crate::poll::Budget::default()
        };
        if let Some(handoff) = &config.handoff {
            for (from, bytes, origin) in handoff.inbox.try_iter().take(config.recv_budget) {
                driver.node.handle_datagram(now, from, &bytes);
                handoff.recycle(bytes, origin);
                driver.handoff.received += 1;
                busy = true;
            }
        }
        // Events reach their waiters before the flush's system call.
        let Driver {
            node,
            handoff: counters,
            waiters,
            ..
        } = &mut driver;
        let work = crate::poll::poll_once_then(
            node,
            &mut transport,
            now,
            budget,
            &mut |from, bytes| {
                config
                    .handoff
                    .as_ref()
                    .is_some_and(|handoff| handoff.divert(from, bytes, counters))
            },
            &mut |node| waiters.deliver(node),
        )?;
        busy |= work.is_busy();
        driver.waiters.deliver(&mut driver.node);
        if busy {
            idle = 0;
            continue;
        }
        idle += 1;
        if config.idle_park.is_zero() || idle < SPINS_BEFORE_PARK {
            std::hint::spin_loop();
            continue;
        }
        let until_timer = driver
            .node
            .poll_timeout()
            .saturating_since(config.clock.now());
        let park = config.idle_park.min(until_timer);
        if !park.is_zero() {
            std::thread::park_timeout(park);
        }
    }
    Ok(driver.node.stats())
}

/// An open RPC session: a [`Caller`] for the interface's client stub.
/// Closing (dropping) it closes the session.
#[derive(Debug)]
pub struct RpcSession {
    inner: Arc<Inner>,
    session: SessionId,
}

impl Caller for RpcSession {
    fn call(
        &mut self,
        interface: u32,
        opcode: u16,
        args: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<i32, CallError> {
        if self.inner.on_datapath_thread() {
            return Err(CallError::Closed(RuntimeError::WouldDeadlock.to_string()));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let session = self.session;
        let args = args.to_vec();
        self.inner
            .send(Box::new(move |driver, now| {
                match driver.node.call(now, session, interface, opcode, args) {
                    Ok(request_id) => {
                        driver.waiters.calls.insert((session, request_id), tx);
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error));
                    }
                }
            }))
            .map_err(|_| CallError::Closed("the node has stopped".into()))?;
        // The engine ends every call by its deadline; the margin only
        // guards against a stopped thread.
        match rx.recv_timeout(self.inner.call_timeout + Duration::from_secs(1)) {
            Ok(Ok((code, data))) => {
                *reply = data;
                Ok(code)
            }
            Ok(Err(error)) => Err(error),
            Err(RecvTimeoutError::Disconnected) => {
                Err(CallError::Closed("the node has stopped".into()))
            }
            Err(RecvTimeoutError::Timeout) => Err(CallError::Timeout),
        }
    }
}

impl Drop for RpcSession {
    fn drop(&mut self) {
        self.inner.close(self.session);
    }
}

/// The transmitting end of a signal session.
#[derive(Debug)]
pub struct SignalTransmitter {
    inner: Arc<Inner>,
    session: SessionId,
    backlog: Arc<SignalBacklog>,
}

impl SignalTransmitter {
    /// Submits one signal to context 0. Never blocks.
    pub fn submit(&self) -> Result<(), RuntimeError> {
        self.submit_many(0, 1)
    }

    /// Submits `count` signals to `context`. Never blocks: submissions are
    /// counted here and handed to the datapath thread by at most one
    /// command in flight, however fast they come.
    pub fn submit_many(&self, context: u32, count: u64) -> Result<(), RuntimeError> {
        {
            let mut counts = lock(&self.backlog.counts);
            let total = counts.entry(context).or_default();
            *total = total.saturating_add(count);
        }
        if self.backlog.scheduled.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let session = self.session;
        let backlog = Arc::clone(&self.backlog);
        self.inner.send(Box::new(move |driver, _| {
            // Clear the mark first: a submission after the take below
            // schedules a command of its own.
            backlog.scheduled.store(false, Ordering::Release);
            let counts = core::mem::take(&mut *lock(&backlog.counts));
            for (context, count) in counts {
                let _ = driver.node.submit(session, context, count);
            }
        }))
    }
}

impl SignalTransmitter {
    /// Waits until the peer has acknowledged every signal submitted so
    /// far; `false` if that did not happen within `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<bool, RuntimeError> {
        let deadline = std::time::Instant::now() + timeout;
        // Asking the datapath thread costs it a command: back off.
        let mut pause = Duration::from_micros(500);
        loop {
            let backlog = Arc::clone(&self.backlog);
            let session = self.session;
            let done = self.inner.request(move |driver, _| {
                !backlog.scheduled.load(Ordering::Acquire)
                    && lock(&backlog.counts).is_empty()
                    && driver.node.signals_acknowledged(session)
            })?;
            if done {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for SignalTransmitter {
    fn drop(&mut self) {
        self.inner.close(self.session);
    }
}

/// The receiving end of an exported signal service: wake-ups carrying the
/// number of submissions since the last one (all contexts together).
#[derive(Debug, Clone)]
pub struct SignalHandler {
    shared: Arc<SignalShared>,
}

impl SignalHandler {
    /// Submissions since the last wake-up, without blocking.
    pub fn poll(&self) -> Option<u64> {
        let count = core::mem::take(&mut lock(&self.shared.state).pending);
        (count > 0).then_some(count)
    }

    /// Blocks until signals arrive; returns how many since the last
    /// wake-up, or [`RuntimeError::Stopped`] once the node has stopped and
    /// nothing is pending.
    pub fn wait(&self) -> Result<u64, RuntimeError> {
        let mut state = lock(&self.shared.state);
        while state.pending == 0 && !state.stopped {
            state = self
                .shared
                .arrived
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        match core::mem::take(&mut state.pending) {
            0 => Err(RuntimeError::Stopped),
            count => Ok(count),
        }
    }

    /// Gives back `count` signals taken by a wait whose result could not
    /// be handed on: the next wait sees them again.
    pub fn restore(&self, count: u64) {
        let mut state = lock(&self.shared.state);
        state.pending = state.pending.saturating_add(count);
        self.shared.arrived.notify_all();
    }

    /// Like [`SignalHandler::wait`], giving up after `timeout` (or when the
    /// node stops) with `None`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<u64> {
        let state = lock(&self.shared.state);
        let (mut state, _) = self
            .shared
            .arrived
            .wait_timeout_while(state, timeout, |s| s.pending == 0 && !s.stopped)
            .unwrap_or_else(PoisonError::into_inner);
        let count = core::mem::take(&mut state.pending);
        (count > 0).then_some(count)
    }
}

/// The publishing end of an exported ROM module.
#[derive(Debug)]
pub struct RomPublisher {
    inner: Arc<Inner>,
    module: ExportId,
}

impl RomPublisher {
    /// Makes `content` the module's newest version; returns the version.
    /// The content is hashed on the calling thread, not the datapath's.
    pub fn publish(&self, content: Vec<u8>) -> Result<u64, RuntimeError> {
        let hash = *blake3::hash(&content).as_bytes();
        self.publish_hashed(content, hash)
    }

    /// Like [`RomPublisher::publish`] with the content's BLAKE3 hash
    /// already computed (one module published on several queues).
    pub fn publish_hashed(&self, content: Vec<u8>, hash: [u8; 32]) -> Result<u64, RuntimeError> {
        let module = self.module;
        Ok(self.inner.request(move |driver, now| {
            driver
                .node
                .publish_hashed(now, module, Some((content, hash)))
        })??)
    }

    /// Removes the module (subscribers see the state "removed").
    pub fn remove(&self) -> Result<u64, RuntimeError> {
        let module = self.module;
        Ok(self
            .inner
            .request(move |driver, now| driver.node.publish(now, module, None))??)
    }
}

/// A subscription to a remote ROM module.
#[derive(Debug)]
pub struct RomSubscriber {
    inner: Arc<Inner>,
    session: SessionId,
    shared: Arc<RomShared>,
}

impl RomSubscriber {
    /// The current version: complete and verified, never partial.
    pub fn current(&self) -> Option<Arc<RomVersion>> {
        lock(&self.shared.state).current.clone()
    }

    /// Why the session ended for good, if it did (the publisher's policy
    /// withdrew it, say); no new version arrives after that.
    pub fn closed(&self) -> Option<CloseCause> {
        lock(&self.shared.state).closed
    }

    /// Blocks until the current version is another than `seen` (the
    /// value [`RomSubscriber::current`] or this call returned before; a
    /// new version is always a new `Arc`, even when a restarted publisher
    /// reuses a version number), the session is closed for good
    /// ([`RomSubscriber::closed`]) or `timeout` passes; returns the
    /// current version either way.
    pub fn wait_change(
        &self,
        seen: Option<&Arc<RomVersion>>,
        timeout: Duration,
    ) -> Option<Arc<RomVersion>> {
        let state = lock(&self.shared.state);
        let unchanged = |state: &mut RomState| {
            !state.stopped
                && state.closed.is_none()
                && match (state.current.as_ref(), seen) {
                    (None, None) => true,
                    (Some(c), Some(s)) => Arc::ptr_eq(c, s),
                    _ => false,
                }
        };
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, unchanged)
            .unwrap_or_else(PoisonError::into_inner);
        state.current.clone()
    }
}

impl Drop for RomSubscriber {
    fn drop(&mut self) {
        self.inner.close(self.session);
    }
}

/// Peers of a runtime as `(name, endpoint)` pairs, for [`RuntimeConfig::new`].
pub fn peers<'a>(list: impl IntoIterator<Item = (&'a str, Endpoint)>) -> Vec<(String, Endpoint)> {
    list.into_iter().map(|(n, e)| (n.to_owned(), e)).collect()
}
