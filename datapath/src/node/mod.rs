//! A relay node, sans-IO: every engine of every session with every peer,
//! behind one pair of calls that match a [`Transport`](crate::transport::Transport)'s
//! batches — [`Node::handle_datagram`] for each received frame and
//! [`Node::poll_transmit`] to fill each send buffer.
//!
//! The node owns:
//!
//! * **peers**, each with liveness (heartbeats, restart detection), its own
//!   sequence counter and a bounded queue of session control frames;
//! * **exports**: what peers may open here, by service and label — an RPC
//!   dispatcher that runs inline on the datapath thread, a signal receiver
//!   or a ROM module;
//! * **client sessions** the application opened on peers, which are
//!   re-opened on their own after the peer restarts or comes back, and
//!   **served sessions** peers opened here.
//!
//! Everything the application must hear about comes out of
//! [`Node::poll_event`]. Every frame that is not processed is counted in
//! [`NodeStats`] by reason; no input panics, and the state a peer can make
//! this node hold is bounded (sessions per peer, signal contexts per
//! session, reassembly bytes per RPC session, control queue, ROM size).
//!
//! The control plane decides policy (docs/config.md) and hands the node
//! the set of (peer, export) pairs allowed ([`Node::set_policy`]); without
//! one, an export is open to every configured peer. A peer is known by its
//! address.

mod report;
mod session;

pub use self::report::{LatencyHistogram, LatencySummary, PeerCounters, PeerLatency, PeerReport};

use core::cmp::Reverse;
use core::ops::Bound;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use self::session::{ClientEngine, ClientSession, Content, Phase, ServedEngine, ServedSession};
use crate::auth::{FrameKeys, ReplayWindow};
use crate::engine::peer::{LivenessConfig, PeerEvent, PeerLiveness, PeerState};
use crate::engine::rom::{RomConfig, RomReceiver, RomSender, RomVersion};
use crate::engine::rpc::{CallOutcome, RpcClient, RpcConfig, RpcServer};
use crate::engine::signal::{SignalReceiver, SignalSender};
use crate::marshal::rpc::codes;
use crate::marshal::{CallError, Dispatch};
use crate::time::Instant;
use crate::wire::encap::Endpoint;
use crate::wire::ethernet::EthernetAddress;
use crate::wire::header::{HEADER_LEN, TAG_LEN};
use crate::wire::rom::{RomState, HASH_LEN, MAX_ROM_SIZE};
use crate::wire::rpc::Acked;
use crate::wire::session::{
    CloseReason, OpenStatus, Origin, Service, SessionClose, SessionOpen, SessionReply,
    MAX_LABEL_LEN,
};
use crate::wire::{Error as WireError, Flags, Frame, Message};

/// Events the queue holds without growing: more than one iteration of
/// the datapath produces (a receive batch, frames handed over from other
/// queues, timers).
const EVENT_ROOM: usize = 512;

/// Fixed body bytes before an RPC fragment's data (RPC_CALL, the larger).
const RPC_FIXED: usize = 28;
/// Fixed body bytes before a ROM chunk's data.
const ROM_FIXED: usize = 24;
/// An unanswered SESSION_OPEN is repeated with a doubling delay up to this.
const MAX_OPEN_BACKOFF: Duration = Duration::from_millis(250);
/// A SESSION_CLOSE of ours is repeated this often until confirmed ...
const CLOSE_RETRY: Duration = Duration::from_millis(50);
/// ... at most this many times.
const CLOSE_TRIES: u32 = 8;
/// A session opened here that its client has not used for this long is
/// forgotten: the client gave up the open before a reply reached it.
const UNCONFIRMED_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a peer with nothing to send may sleep (see
/// [`Node::poll_transmit`]) when no timer of its own is sooner:
/// housekeeping without a timer in [`Node::poll_timeout`] (partial calls
/// of a served session, the sweep of unconfirmed sessions, forgetting
/// executed ids, all on scales of seconds) is late by this much at most.
/// As long as the default heartbeat interval, so an idle peer wakes no
/// more often than its heartbeats make it.
const ASLEEP_AT_MOST: Duration = Duration::from_millis(100);

/// Alarm entries per peer the heap keeps room for; beyond this many in
/// all, stale ones are dropped in place (no allocation).
const ALARMS_PER_PEER: usize = 4;

/// A SESSION_CLOSE of ours waiting for confirmation.
#[derive(Debug, Clone, Copy, Default)]
struct Closing {
    next: Instant,
    tries: u32,
}

/// How a node behaves: timing, sizes and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// This run's incarnation (non-zero, random per start).
    pub incarnation: u64,
    /// The first sequence number sent to each peer (docs/wire.md 3.2:
    /// UNIX time in ns at start).
    pub initial_sequence: u64,
    /// The longest relay frame the transport carries.
    pub max_frame_len: usize,
    /// Heartbeats and the dead time.
    pub liveness: LivenessConfig,
    /// RPC timing and limits (`max_fragment` is derived from `max_frame_len`).
    pub rpc: RpcConfig,
    /// ROM timing and limits (`chunk_size` is derived from `max_frame_len`).
    pub rom: RomConfig,
    /// An unacknowledged signal count is repeated this often.
    pub signal_retransmit: Duration,
    /// An unanswered SESSION_OPEN is repeated after this long, doubling up
    /// to 250 ms.
    pub open_retransmit: Duration,
    /// Sessions a peer may open here.
    pub max_sessions_per_peer: usize,
    /// Signal contexts per signal session.
    pub max_contexts_per_session: usize,
    /// Session control frames (replies, closes) queued per peer.
    pub max_control_queue: usize,
    /// Bytes of unfinished RPC messages a peer may make this node hold,
    /// over all its sessions (each session also has `rpc.max_reassembly_bytes`).
    pub max_reassembly_per_peer: usize,
}

impl NodeConfig {
    /// Defaults for a transport carrying frames of `max_frame_len` bytes,
    /// with a random incarnation and the sequence starting at the current
    /// UNIX time.
    pub fn new(max_frame_len: usize) -> NodeConfig {
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        NodeConfig {
            incarnation: fastrand::u64(1..),
            initial_sequence: unix_ns,
            max_frame_len,
            liveness: LivenessConfig::default(),
            rpc: RpcConfig::default(),
            rom: RomConfig::default(),
            signal_retransmit: Duration::from_millis(20),
            open_retransmit: Duration::from_millis(20),
            max_sessions_per_peer: 256,
            max_contexts_per_session: 64,
            max_control_queue: 256,
            max_reassembly_per_peer: 64 * 1024 * 1024,
        }
    }
}

/// Why a node could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The frames are too short to carry the protocol.
    #[error("frames of {0} bytes are too short (at least 128 needed)")]
    FrameTooShort(usize),
    /// Two peers with one address, or one name.
    #[error("peer {0:?} is configured twice")]
    DuplicatePeer(String),
    /// Two exports of one service with one label.
    #[error("{0:?} is exported twice")]
    DuplicateExport(String),
    /// A label longer than the wire allows.
    #[error("label of {0} bytes exceeds {MAX_LABEL_LEN}")]
    LabelTooLong(usize),
    /// An incarnation of 0 (reserved on the wire).
    #[error("incarnation 0 is reserved")]
    ZeroIncarnation,
    /// No such peer, session or export.
    #[error("unknown {0}")]
    Unknown(&'static str),
    /// The session has the wrong service for the operation.
    #[error("the session is not a {0} session")]
    WrongService(&'static str),
    /// ROM content over the wire's limit.
    #[error("ROM content of {0} bytes exceeds the 1 GiB limit")]
    TooLarge(usize),
}

/// A configured peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub usize);

/// A client session this node opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// Something this node exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExportId(pub usize);

/// What the application hears from the node.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A peer came up, restarted or went down.
    Peer {
        /// Which.
        peer: PeerId,
        /// What happened.
        event: PeerEvent,
    },
    /// A client session is open (again, after a reconnect).
    Opened {
        /// The session.
        session: SessionId,
    },
    /// A client session is down until its peer is back; pending calls
    /// failed with [`CallError::Unreachable`].
    Interrupted {
        /// The session.
        session: SessionId,
    },
    /// A client session was refused or closed for good.
    Closed {
        /// The session.
        session: SessionId,
        /// The server's answer or the reason of the close.
        reason: CloseCause,
    },
    /// A call ended.
    CallDone {
        /// The session it was made on.
        session: SessionId,
        /// Its request id and result.
        outcome: CallOutcome,
    },
    /// Signals arrived for an exported signal receiver: one wake-up.
    Signal {
        /// The export.
        export: ExportId,
        /// From whom.
        peer: PeerId,
        /// The context within the session.
        context: u32,
        /// Submissions since the last wake-up of this context.
        count: u64,
    },
    /// A subscribed ROM module has a new complete, verified version.
    RomChanged {
        /// The session.
        session: SessionId,
        /// The version, content and hash.
        version: Arc<RomVersion>,
    },
}

/// Why a client session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The server refused to open it.
    Refused(OpenStatus),
    /// The server closed it.
    ClosedByServer(CloseReason),
    /// The application closed it.
    Local,
}

/// Frames received, sent and dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Frames handed to [`Node::handle_datagram`].
    pub frames_received: u64,
    /// Frames produced by [`Node::poll_transmit`].
    pub frames_sent: u64,
    /// From an address that is no configured peer.
    pub unknown_peer: u64,
    /// Not a relay frame, truncated, bad lengths or fields.
    pub malformed: u64,
    /// A protocol version this node does not speak.
    pub bad_version: u64,
    /// A frame kind or flag this node does not know.
    pub unknown_kind: u64,
    /// Frames whose authentication does not match the peer's
    /// configuration: AUTH set while no key is configured, or missing (or
    /// with ENCRYPTED, which this node does not do) while one is.
    pub unauthenticated: u64,
    /// Frames whose tag does not verify (wrong key, altered frame).
    pub auth_failed: u64,
    /// Authenticated frames seen before or older than the replay window.
    pub replayed: u64,
    /// For a session this node does not hold (answered with SESSION_CLOSE).
    pub unknown_session: u64,
    /// A kind that does not belong to the session's service or direction.
    pub wrong_service: u64,
    /// SESSION_OPENs refused (no such export, no room).
    pub refused_opens: u64,
    /// Our automatic reopens the peer refused (tried again later).
    pub refused_reopens: u64,
    /// SESSION_OPENs the policy does not allow (also in `refused_opens`).
    pub policy_denied: u64,
    /// Served sessions closed because a new policy no longer allows them.
    pub revoked: u64,
    /// Control frames not queued because the queue was full.
    pub control_queue_full: u64,
    /// Signals for more contexts than a session may have.
    pub too_many_contexts: u64,
    /// Fragments the RPC engines refused (inconsistent, over the memory budget).
    pub rpc_dropped: u64,
    /// ROM chunks, acks and requests the ROM engines refused.
    pub rom_dropped: u64,
    /// Replies over the message limit, answered with INVALID_OBJECT.
    pub reply_too_large: u64,
}

impl core::ops::AddAssign for NodeStats {
    /// Sums the counters of several nodes (the queues of one daemon).
    fn add_assign(&mut self, other: NodeStats) {
        // Destructured, so that a new counter cannot be forgotten here.
        let NodeStats {
            frames_received,
            frames_sent,
            unknown_peer,
            malformed,
            bad_version,
            unknown_kind,
            unauthenticated,
            auth_failed,
            replayed,
            unknown_session,
            wrong_service,
            refused_opens,
            refused_reopens,
            policy_denied,
            revoked,
            control_queue_full,
            too_many_contexts,
            rpc_dropped,
            rom_dropped,
            reply_too_large,
        } = other;
        self.frames_received += frames_received;
        self.frames_sent += frames_sent;
        self.unknown_peer += unknown_peer;
        self.malformed += malformed;
        self.bad_version += bad_version;
        self.unknown_kind += unknown_kind;
        self.unauthenticated += unauthenticated;
        self.auth_failed += auth_failed;
        self.replayed += replayed;
        self.unknown_session += unknown_session;
        self.wrong_service += wrong_service;
        self.refused_opens += refused_opens;
        self.refused_reopens += refused_reopens;
        self.policy_denied += policy_denied;
        self.revoked += revoked;
        self.control_queue_full += control_queue_full;
        self.too_many_contexts += too_many_contexts;
        self.rpc_dropped += rpc_dropped;
        self.rom_dropped += rom_dropped;
        self.reply_too_large += reply_too_large;
    }
}

enum Export {
    Rpc(Box<dyn Dispatch + Send>),
    Signal,
    Rom(Content),
}

impl Export {
    fn service(&self) -> Service {
        match self {
            Export::Rpc(_) => Service::Rpc,
            Export::Signal => Service::Signal,
            Export::Rom(_) => Service::Rom,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Control {
    Reply { open_id: u32, status: OpenStatus },
    Close { reason: CloseReason, origin: Origin },
}

struct Peer {
    name: String,
    endpoint: Endpoint,
    liveness: PeerLiveness,
    /// Sequence numbers and keys of what this node sends the peer.
    out: Outbound,
    /// Sequences seen from the peer (authenticated peers only).
    replay: ReplayWindow,
    /// What the operator sees of it.
    counters: PeerCounters,
    latency: PeerLatency,
    /// Sessions the peer opened here, by the channel this node assigned.
    served: BTreeMap<u32, ServedSession>,
    /// The peer's open ids of served sessions, to answer repeated opens.
    served_opens: BTreeMap<u32, u32>,
    next_channel: u32,
    /// This node's open client sessions on the peer, by the peer's channel.
    open: BTreeMap<u32, SessionId>,
    /// This node's client sessions being opened, by open id.
    opening: BTreeMap<u32, SessionId>,
    /// This node's client sessions on the peer.
    clients: BTreeMap<SessionId, ClientSession>,
    control: VecDeque<(u32, Control)>,
    /// Channels of our sessions to close on the peer: repeated while it
    /// is up until it confirms (with a SESSION_CLOSE of its own) or
    /// [`CLOSE_TRIES`] have gone out.
    closing: BTreeMap<u32, Closing>,
    /// Bytes of unfinished RPC messages in the peer's served sessions.
    assembling: usize,
    /// Round robin over sessions: the next served channel and client
    /// session to ask for output first.
    served_turn: u32,
    /// The next sweep for unconfirmed served sessions.
    next_sweep: Instant,
    client_turn: SessionId,
    served_first: bool,
    /// Its last pass found nothing, and nothing came in since.
    idle_pass: bool,
    /// When it wakes, while it sleeps; `None` while it is in the node's
    /// queue of peers that may have something to send.
    asleep_until: Option<Instant>,
    /// Its earliest entry in the node's `sleeping` heap (entries at other
    /// times are stale): a peer that goes back to sleep with a later wake
    /// time adds no entry, one with an earlier time does (a new
    /// retransmission timer); stale entries leave when they ring, or
    /// when the heap grows past [`ALARMS_PER_PEER`] entries per peer.
    alarm: Option<Instant>,
}

impl Peer {
    /// When this peer next has something to send without new input (a
    /// heartbeat, a retransmission, a deadline); see [`Node::poll_timeout`].
    fn poll_timeout(&self, probe_after: Duration) -> Instant {
        let mut next = self.liveness.poll_timeout();
        if !self.control.is_empty() {
            next = Instant::ZERO;
        }
        // Unconfirmed sessions send nothing (see `transmit_served`).
        for served in self.served.values().filter(|s| s.confirmed) {
            if let Some(at) = served.poll_timeout() {
                next = next.min(at);
            }
        }
        // Opens and closes wait while the peer is down.
        let down = self.liveness.state() == PeerState::Down;
        if !down {
            if let Some(closing) = self.closing.values().map(|c| c.next).min() {
                next = next.min(closing);
            }
        }
        for client in self.clients.values() {
            match client.phase {
                Phase::Opening { next_send, .. } if !down => next = next.min(next_send),
                Phase::Open { .. } => {
                    if let Some(at) = client.poll_timeout(probe_after) {
                        next = next.min(at);
                    }
                }
                Phase::Opening { .. } | Phase::Closed => {}
            }
        }
        next
    }

    fn allocate_channel(&mut self) -> u32 {
        loop {
            let channel = self.next_channel;
            self.next_channel = self.next_channel.wrapping_add(1).max(1);
            if !self.served.contains_key(&channel) {
                return channel;
            }
        }
    }

    /// Forgets served session `channel` and what it held.
    fn remove_served(&mut self, channel: u32) {
        if let Some(served) = self.served.remove(&channel) {
            self.served_opens.remove(&served.open_id);
            if let ServedEngine::Rpc(server) = &served.engine {
                self.assembling -= server.assembling_bytes();
            }
        }
    }

    /// Forgets served sessions the client never used within
    /// [`UNCONFIRMED_TIMEOUT`] (it gave up the open before any reply
    /// reached it); a repeated open of theirs simply gets a new session.
    fn expire_unconfirmed(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + UNCONFIRMED_TIMEOUT / 4;
        while let Some(channel) = self
            .served
            .iter()
            .find(|(_, s)| !s.confirmed && now >= s.created + UNCONFIRMED_TIMEOUT)
            .map(|(&channel, _)| channel)
        {
            self.remove_served(channel);
        }
    }

    fn queue_control(
        &mut self,
        stats: &mut NodeStats,
        limit: usize,
        channel: u32,
        control: Control,
    ) {
        if self.control.len() >= limit {
            stats.control_queue_full += 1;
        } else {
            self.control.push_back((channel, control));
        }
    }
}

/// One relay node (see the module documentation).
pub struct Node {
    config: NodeConfig,
    peers: Vec<Peer>,
    exports: Vec<Export>,
    export_labels: BTreeMap<(u8, String), ExportId>,
    /// Which peer each client session is on.
    clients: BTreeMap<SessionId, usize>,
    next_session: u64,
    next_open_id: u32,
    events: VecDeque<NodeEvent>,
    stats: NodeStats,
    reply: Vec<u8>,
    /// Seeded by the incarnation: open ids and channel numbers.
    rng: fastrand::Rng,
    /// Which peer may open which export; `None` allows everything.
    policy: Option<BTreeSet<(PeerId, ExportId)>>,
    /// Peers that may have something to send, in turn order: the only
    /// ones [`Node::poll_transmit`] asks. A peer whose pass found nothing
    /// twice in a row leaves for `sleeping` until its next timer
    /// ([`Peer::poll_timeout`]); everything that can give it output wakes
    /// it ([`Node::wake`]). So a pass costs the peers with work, not every
    /// peer the node knows, and an idle node's pass costs next to nothing.
    ready: VecDeque<usize>,
    /// Alarms of sleeping peers: (time, peer). At its time an entry wakes
    /// its peer, or puts the alarm at the later time the peer now sleeps
    /// until; one that is not its peer's `alarm` is stale and skipped.
    sleeping: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The latest `now` [`Node::poll_transmit`] saw: an earlier one (a
    /// clock that stepped back) wakes every peer, so it costs a pass,
    /// never a frame.
    last_now: Instant,
    /// Peers by name.
    by_name: FxHashMap<String, usize>,
    /// Peers by address, for [`Node::find_peer`]: by IPv4 address and
    /// port, by the first peer with an Ethernet address, and among peers
    /// known only by Ethernet address.
    by_ip: FxHashMap<(Ipv4Addr, u16), usize>,
    by_mac: FxHashMap<EthernetAddress, usize>,
    raw_by_mac: FxHashMap<EthernetAddress, usize>,
    /// The last address a received frame came from and its peer: frames
    /// come in runs from one peer, and the answer only changes when a
    /// peer is added.
    last_found: Option<(Endpoint, usize)>,
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("incarnation", &self.config.incarnation)
            .field("peers", &self.peers.len())
            .field("exports", &self.exports.len())
            .field("clients", &self.clients.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with no peers and no exports.
    pub fn new(mut config: NodeConfig) -> Result<Node, NodeError> {
        if config.max_frame_len < 128 {
            return Err(NodeError::FrameTooShort(config.max_frame_len));
        }
        if config.incarnation == 0 {
            return Err(NodeError::ZeroIncarnation);
        }
        let room = config.max_frame_len - HEADER_LEN - TAG_LEN;
        config.rpc.max_fragment = room - RPC_FIXED;
        config.rom.chunk_size = u32::try_from(room - ROM_FIXED)
            .unwrap_or(u32::MAX)
            .min(u32::from(u16::MAX));
        let mut rng = fastrand::Rng::with_seed(config.incarnation);
        Ok(Node {
            config,
            peers: Vec::new(),
            exports: Vec::new(),
            export_labels: BTreeMap::new(),
            clients: BTreeMap::new(),
            next_session: 1,
            // Random per incarnation, as are channel numbers: ids of a
            // previous run still in flight must not match this run's.
            next_open_id: rng.u32(1..),
            rng,
            // Room for the events of the largest batch, so that the
            // queue does not grow (allocate) in the steady state.
            events: VecDeque::with_capacity(EVENT_ROOM),
            stats: NodeStats::default(),
            reply: Vec::new(),
            policy: None,
            ready: VecDeque::new(),
            sleeping: BinaryHeap::new(),
            last_now: Instant::ZERO,
            by_name: FxHashMap::default(),
            by_ip: FxHashMap::default(),
            by_mac: FxHashMap::default(),
            raw_by_mac: FxHashMap::default(),
            last_found: None,
        })
    }

    /// The configuration in effect (with the derived sizes).
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Adds a peer reachable at `endpoint`.
    pub fn add_peer(
        &mut self,
        now: Instant,
        name: &str,
        endpoint: Endpoint,
    ) -> Result<PeerId, NodeError> {
        // `same_address` is symmetric: a peer matches the new address if
        // the new address finds it.
        if self.by_name.contains_key(name) || self.find_peer(&endpoint).is_some() {
            return Err(NodeError::DuplicatePeer(name.to_owned()));
        }
        let p = self.peers.len();
        self.last_found = None;
        self.by_name.insert(name.to_owned(), p);
        // Room for every peer's place in the ready queue and for their
        // alarms, so that neither grows (allocates) on the steady path.
        let peers = p + 1;
        self.ready.reserve(peers.saturating_sub(self.ready.len()));
        self.sleeping
            .reserve((ALARMS_PER_PEER * peers).saturating_sub(self.sleeping.len()));
        if endpoint.ip.is_unspecified() {
            self.raw_by_mac.insert(endpoint.mac, p);
        } else {
            self.by_ip.insert((endpoint.ip, endpoint.port), p);
        }
        self.by_mac.entry(endpoint.mac).or_insert(p);
        self.peers.push(Peer {
            name: name.to_owned(),
            endpoint,
            liveness: PeerLiveness::new(self.config.liveness, self.config.incarnation, now),
            out: Outbound {
                sequence: self.config.initial_sequence,
                keys: None,
            },
            replay: ReplayWindow::default(),
            counters: PeerCounters::default(),
            latency: PeerLatency::default(),
            served: BTreeMap::new(),
            served_opens: BTreeMap::new(),
            next_channel: self.rng.u32(1..),
            open: BTreeMap::new(),
            opening: BTreeMap::new(),
            clients: BTreeMap::new(),
            control: VecDeque::new(),
            closing: BTreeMap::new(),
            assembling: 0,
            served_turn: 0,
            next_sweep: Instant::ZERO,
            client_turn: SessionId(0),
            served_first: false,
            idle_pass: false,
            asleep_until: None,
            alarm: None,
        });
        self.ready.push_back(p);
        Ok(PeerId(p))
    }

    /// The export of `service` labelled `label`.
    pub fn export_id(&self, service: Service, label: &str) -> Option<ExportId> {
        self.export_labels
            .get(&(u8::from(service), label.to_owned()))
            .copied()
    }

    /// Sets which peer may open which export (`None`: everyone may open
    /// everything). Sessions the new policy no longer allows are closed at
    /// once with SESSION_CLOSE "revoked" (the client's pending calls fail
    /// with a clear error); sessions it still allows go on undisturbed.
    pub fn set_policy(&mut self, policy: Option<BTreeSet<(PeerId, ExportId)>>) {
        self.wake_all();
        self.policy = policy;
        let Some(policy) = &self.policy else {
            return;
        };
        let limit = self.config.max_control_queue;
        for (p, peer) in self.peers.iter_mut().enumerate() {
            let revoked: Vec<u32> = peer
                .served
                .iter()
                .filter(|(_, s)| !policy.contains(&(PeerId(p), s.export)))
                .map(|(&channel, _)| channel)
                .collect();
            for channel in revoked {
                peer.remove_served(channel);
                self.stats.revoked += 1;
                peer.counters.revoked += 1;
                peer.queue_control(
                    &mut self.stats,
                    limit,
                    channel,
                    Control::Close {
                        reason: CloseReason::Revoked,
                        origin: Origin::Server,
                    },
                );
            }
        }
    }

    /// Authenticates every frame to and from `peer` with `keys` (derived
    /// with [`FrameKeys::derive`] from the pair's key and the two node
    /// names); `None` turns authentication off for that peer.
    pub fn set_peer_keys(
        &mut self,
        peer: PeerId,
        keys: Option<FrameKeys>,
    ) -> Result<(), NodeError> {
        if peer.0 >= self.peers.len() {
            return Err(NodeError::Unknown("peer"));
        }
        self.wake(peer.0);
        let peer = &mut self.peers[peer.0];
        // The replay window stays: sequences only grow (docs/wire.md 3.2),
        // so frames captured under the same key before this call must not
        // become acceptable again, and those under another key fail the tag.
        peer.out.keys = keys;
        Ok(())
    }

    /// The peer at `endpoint`'s IP address and port.
    pub fn peer_by_address(&self, endpoint: &Endpoint) -> Option<PeerId> {
        self.find_peer(endpoint).map(PeerId)
    }

    /// The first peer (in the order they were added) whose endpoint is
    /// [`Endpoint::same_address`] as `from`, found in constant time: by
    /// IPv4 address and port, or by Ethernet address when either side has
    /// no IPv4 address.
    fn find_peer(&self, from: &Endpoint) -> Option<usize> {
        if from.ip.is_unspecified() {
            return self.by_mac.get(&from.mac).copied();
        }
        let by_ip = self.by_ip.get(&(from.ip, from.port)).copied();
        let raw = self.raw_by_mac.get(&from.mac).copied();
        match (by_ip, raw) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The peer called `name`.
    pub fn peer(&self, name: &str) -> Option<PeerId> {
        self.by_name.get(name).copied().map(PeerId)
    }

    /// The name of `peer`.
    pub fn peer_name(&self, peer: PeerId) -> Option<&str> {
        self.peers.get(peer.0).map(|p| p.name.as_str())
    }

    /// Sessions `peer` holds open on this node.
    pub fn sessions_served(&self, peer: PeerId) -> usize {
        self.peers.get(peer.0).map_or(0, |p| p.served.len())
    }

    /// Counters and latency percentiles of `peer`.
    pub fn peer_report(&self, peer: PeerId) -> Option<PeerReport> {
        let peer = self.peers.get(peer.0)?;
        Some(PeerReport {
            name: peer.name.clone(),
            state: peer.liveness.state(),
            counters: peer.counters,
            sessions_served: peer.served.len(),
            sessions_client: peer.clients.len(),
            authenticated: peer.out.keys.is_some(),
            heartbeat_rtt: peer.latency.heartbeat_rtt.summary(),
            rpc_call: peer.latency.rpc_call.summary(),
        })
    }

    /// The peers, in the order they were added.
    pub fn peer_ids(&self) -> impl Iterator<Item = PeerId> + use<> {
        (0..self.peers.len()).map(PeerId)
    }

    /// Whether `peer` is up, as far as its heartbeats tell.
    pub fn peer_state(&self, peer: PeerId) -> Option<PeerState> {
        self.peers.get(peer.0).map(|p| p.liveness.state())
    }

    fn export(&mut self, label: &str, export: Export) -> Result<ExportId, NodeError> {
        if label.len() > MAX_LABEL_LEN {
            return Err(NodeError::LabelTooLong(label.len()));
        }
        let key = (u8::from(export.service()), label.to_owned());
        if self.export_labels.contains_key(&key) {
            return Err(NodeError::DuplicateExport(label.to_owned()));
        }
        let id = ExportId(self.exports.len());
        self.exports.push(export);
        self.export_labels.insert(key, id);
        Ok(id)
    }

    /// Serves RPC sessions labelled `label` with `dispatcher`, which runs
    /// inline on the thread that drives the node.
    pub fn export_rpc(
        &mut self,
        label: &str,
        dispatcher: Box<dyn Dispatch + Send>,
    ) -> Result<ExportId, NodeError> {
        self.export(label, Export::Rpc(dispatcher))
    }

    /// Receives signals on sessions labelled `label`
    /// ([`NodeEvent::Signal`]).
    pub fn export_signal(&mut self, label: &str) -> Result<ExportId, NodeError> {
        self.export(label, Export::Signal)
    }

    /// Publishes a ROM module labelled `label`, empty at version 1 until
    /// the first [`Node::publish`].
    pub fn export_rom(&mut self, label: &str) -> Result<ExportId, NodeError> {
        let initial = Arc::new(RomVersion::valid(1, Vec::new()));
        self.export(label, Export::Rom(initial))
    }

    /// Makes `content` the newest version of ROM module `module` (`None`
    /// removes the module); returns the new version. Subscribers are told
    /// at once; a transfer of an older version still running is abandoned.
    pub fn publish(
        &mut self,
        now: Instant,
        module: ExportId,
        content: Option<Vec<u8>>,
    ) -> Result<u64, NodeError> {
        let content = content.map(|data| {
            let hash = *blake3::hash(&data).as_bytes();
            (data, hash)
        });
        self.publish_hashed(now, module, content)
    }

    /// Like [`Node::publish`] with the content's BLAKE3 hash computed by
    /// the caller, so that hashing a large module happens off the
    /// datapath thread. A wrong hash makes every subscriber refuse the
    /// version.
    pub fn publish_hashed(
        &mut self,
        now: Instant,
        module: ExportId,
        content: Option<(Vec<u8>, [u8; HASH_LEN])>,
    ) -> Result<u64, NodeError> {
        self.wake_all();
        if let Some((data, _)) = &content {
            if data.len() as u64 > MAX_ROM_SIZE {
                return Err(NodeError::TooLarge(data.len()));
            }
        }
        let Some(Export::Rom(current)) = self.exports.get_mut(module.0) else {
            return Err(NodeError::Unknown("ROM module"));
        };
        let version = current.version + 1;
        *current = Arc::new(match content {
            Some((data, hash)) => RomVersion {
                version,
                state: RomState::Valid,
                data,
                hash,
            },
            None => RomVersion::removed(version),
        });
        let current = Arc::clone(current);
        for peer in &mut self.peers {
            for served in peer.served.values_mut() {
                if served.export == module {
                    if let ServedEngine::Rom(sender) = &mut served.engine {
                        sender.update(now, Arc::clone(&current));
                    }
                }
            }
        }
        Ok(version)
    }

    /// The newest version of an exported ROM module.
    pub fn published(&self, module: ExportId) -> Option<Arc<RomVersion>> {
        match self.exports.get(module.0) {
            Some(Export::Rom(current)) => Some(Arc::clone(current)),
            _ => None,
        }
    }

    /// Opens a session with `service` labelled `label` on `peer`. The
    /// session is usable after [`NodeEvent::Opened`]; it is re-opened on
    /// its own when the peer restarts or comes back after being down.
    pub fn open(
        &mut self,
        now: Instant,
        peer: PeerId,
        service: Service,
        label: &str,
    ) -> Result<SessionId, NodeError> {
        if label.len() > MAX_LABEL_LEN {
            return Err(NodeError::LabelTooLong(label.len()));
        }
        if peer.0 >= self.peers.len() {
            return Err(NodeError::Unknown("peer"));
        }
        self.wake(peer.0);
        let engine = match service {
            Service::Rpc => ClientEngine::Rpc(Box::new(RpcClient::new(self.config.rpc))),
            Service::Signal => ClientEngine::Signal(BTreeMap::new()),
            Service::Rom => ClientEngine::Rom(Box::new(RomReceiver::new(self.config.rom, now))),
            Service::Unknown(_) => return Err(NodeError::Unknown("service")),
        };
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let open_id = self.fresh_open_id();
        let p = peer.0;
        self.peers[p].opening.insert(open_id, id);
        self.clients.insert(id, p);
        self.peers[p].clients.insert(
            id,
            ClientSession {
                service,
                label: label.to_owned(),
                phase: Phase::Opening {
                    open_id,
                    next_send: now,
                    backoff: self.config.open_retransmit,
                    reopen: false,
                },
                engine,
                heard: now,
            },
        );
        Ok(id)
    }

    fn fresh_open_id(&mut self) -> u32 {
        let id = self.next_open_id;
        self.next_open_id = self.next_open_id.wrapping_add(1).max(1);
        id
    }

    fn client(&self, session: SessionId) -> Option<&ClientSession> {
        let &p = self.clients.get(&session)?;
        self.peers[p].clients.get(&session)
    }

    /// The channel the server gave `session`, while it is open.
    pub fn channel_of(&self, session: SessionId) -> Option<u32> {
        match self.client(session)?.phase {
            Phase::Open { channel } => Some(channel),
            _ => None,
        }
    }

    /// Whether `session` is open now.
    pub fn is_open(&self, session: SessionId) -> bool {
        matches!(
            self.client(session).map(|s| s.phase),
            Some(Phase::Open { .. })
        )
    }

    /// Closes a client session: pending calls fail with
    /// [`CallError::Closed`], the server is told.
    pub fn close(&mut self, session: SessionId) {
        let Some(p) = self.clients.remove(&session) else {
            return;
        };
        self.wake(p);
        let peer = &mut self.peers[p];
        let Some(mut client) = peer.clients.remove(&session) else {
            return;
        };
        match client.phase {
            Phase::Open { channel } => {
                peer.open.remove(&channel);
                peer.closing.insert(channel, Closing::default());
            }
            Phase::Opening { open_id, .. } => {
                peer.opening.remove(&open_id);
            }
            Phase::Closed => {}
        }
        fail_calls(
            &mut self.events,
            session,
            &mut client,
            &CallError::Closed("closed by the application".into()),
        );
    }

    /// Starts a call on an open RPC session; its end comes as
    /// [`NodeEvent::CallDone`] with the returned request id.
    pub fn call(
        &mut self,
        now: Instant,
        session: SessionId,
        interface: u32,
        opcode: u16,
        args: Vec<u8>,
    ) -> Result<u64, CallError> {
        let Some(&p) = self.clients.get(&session) else {
            return Err(CallError::Closed("no such session".into()));
        };
        self.wake(p);
        let Some(client) = self.peers[p].clients.get_mut(&session) else {
            return Err(CallError::Closed("no such session".into()));
        };
        match client.phase {
            Phase::Open { .. } => {}
            Phase::Opening { .. } => {
                let name = &self.peers[p].name;
                return Err(CallError::Unreachable(format!(
                    "{name} is down; the session reopens when it is back"
                )));
            }
            Phase::Closed => return Err(CallError::Closed("session closed".into())),
        }
        let ClientEngine::Rpc(rpc) = &mut client.engine else {
            return Err(CallError::Closed("not an RPC session".into()));
        };
        rpc.call(now, interface, opcode, args)
    }

    /// Submits `count` signals to `context` of a signal session. Never
    /// blocks; submissions made while the session is (re)opening are sent
    /// when it opens.
    pub fn submit(
        &mut self,
        session: SessionId,
        context: u32,
        count: u64,
    ) -> Result<(), NodeError> {
        let retransmit = self.config.signal_retransmit;
        let limit = self.config.max_contexts_per_session;
        let Some(&p) = self.clients.get(&session) else {
            return Err(NodeError::Unknown("session"));
        };
        self.wake(p);
        let Some(client) = self.peers[p].clients.get_mut(&session) else {
            return Err(NodeError::Unknown("session"));
        };
        let ClientEngine::Signal(senders) = &mut client.engine else {
            return Err(NodeError::WrongService("signal"));
        };
        if !senders.contains_key(&context) && senders.len() >= limit {
            return Err(NodeError::Unknown("context (too many contexts)"));
        }
        senders
            .entry(context)
            .or_insert_with(|| SignalSender::new(context, retransmit))
            .submit(count);
        Ok(())
    }

    /// Whether the peer has acknowledged every signal submitted on
    /// `session` (also `true` for a session that is no signal session).
    pub fn signals_acknowledged(&self, session: SessionId) -> bool {
        match self.client(session).map(|c| &c.engine) {
            Some(ClientEngine::Signal(senders)) => {
                senders.values().all(SignalSender::is_acknowledged)
            }
            _ => true,
        }
    }

    /// The current content of a subscribed ROM module, complete and
    /// verified (`None` until the first version arrived).
    pub fn rom_current(&self, session: SessionId) -> Option<Arc<RomVersion>> {
        match &self.client(session)?.engine {
            ClientEngine::Rom(receiver) => receiver.current().cloned(),
            _ => None,
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------
    // Receiving
    // ---------------------------------------------------------------

    /// Takes one received relay frame from `from` into account.
    pub fn handle_datagram(&mut self, now: Instant, from: Endpoint, bytes: &[u8]) {
        if !self.handle_known(now, from, bytes) {
            self.unknown_frame();
        }
    }

    /// Counts a received frame from an address that is no peer of this
    /// node (what [`Node::handle_datagram`] does with one).
    pub fn unknown_frame(&mut self) {
        self.stats.frames_received += 1;
        self.stats.unknown_peer += 1;
    }

    /// Like [`Node::handle_datagram`], but a frame from an address that is
    /// no peer of this node is left to the caller: returns `false` and
    /// counts nothing (another queue's node may own that peer).
    pub fn handle_known(&mut self, now: Instant, from: Endpoint, bytes: &[u8]) -> bool {
        let p = match self.last_found {
            Some((at, p)) if at == from => p,
            _ => {
                let Some(p) = self.find_peer(&from) else {
                    return false;
                };
                self.last_found = Some((from, p));
                p
            }
        };
        // A frame can give its own peer output, no other.
        self.wake(p);
        self.stats.frames_received += 1;
        self.handle_from(now, p, bytes);
        true
    }

    fn handle_from(&mut self, now: Instant, p: usize, bytes: &[u8]) {
        let (frame, frame_len) = match Frame::parse(bytes) {
            Ok(parsed) => parsed,
            Err(error) => {
                match error {
                    WireError::UnsupportedVersion(_) => self.stats.bad_version += 1,
                    WireError::UnknownKind(_) | WireError::UnknownFlags(_) => {
                        self.stats.unknown_kind += 1;
                    }
                    _ => self.stats.malformed += 1,
                }
                return;
            }
        };
        let peer = &mut self.peers[p];
        peer.counters.frames_received += 1;
        match &peer.out.keys {
            // The tag first, then the replay window (docs/wire.md 11).
            Some(keys) => {
                if frame.flags != Flags::AUTH {
                    self.stats.unauthenticated += 1;
                    peer.counters.unauthenticated += 1;
                    return;
                }
                if keys.verify(&bytes[..frame_len], frame.sequence).is_err() {
                    self.stats.auth_failed += 1;
                    peer.counters.auth_failed += 1;
                    return;
                }
                if !peer.replay.accept(frame.sequence) {
                    self.stats.replayed += 1;
                    peer.counters.replayed += 1;
                    return;
                }
            }
            None => {
                if frame.flags != Flags::NONE {
                    self.stats.unauthenticated += 1;
                    peer.counters.unauthenticated += 1;
                    return;
                }
            }
        }
        self.peers[p].liveness.handle_frame(now);
        let channel = frame.channel;
        match frame.message {
            Message::Heartbeat(heartbeat) => {
                let peer = &mut self.peers[p];
                if let Some(rtt) = peer.liveness.handle_heartbeat(now, &heartbeat) {
                    peer.latency.heartbeat_rtt.record(rtt);
                }
                self.peer_events(now, p);
            }
            Message::SessionOpen(open) => self.handle_open(now, p, channel, &open),
            Message::SessionReply(reply) => self.handle_session_reply(now, p, channel, reply),
            Message::SessionClose(close) => self.handle_close(now, p, channel, close),
            // Client -> server kinds: a served session.
            Message::RpcCall(_)
            | Message::Signal(_)
            | Message::RomRequest(_)
            | Message::RomAck(_)
            | Message::RpcAck(crate::wire::rpc::RpcAck {
                acked: Acked::Reply,
                ..
            }) => self.handle_served(now, p, channel, &frame.message),
            // Server -> client kinds: a client session.
            Message::RpcReply(_)
            | Message::RpcAck(_)
            | Message::SignalAck(_)
            | Message::RomAnnounce(_)
            | Message::RomChunk(_) => self.handle_client(now, p, channel, &frame.message),
        }
    }

    fn peer_events(&mut self, now: Instant, p: usize) {
        while let Some(event) = self.peers[p].liveness.poll_event(now) {
            match event {
                PeerEvent::Up { .. } => self.reopen_interrupted(now, p),
                PeerEvent::Restarted { .. } => {
                    // The peer lost every session, ours and its own.
                    self.drop_served(p);
                    self.interrupt_clients(now, p, false);
                    self.peers[p].closing.clear();
                    self.reopen_interrupted(now, p);
                }
                PeerEvent::Down => {
                    // Our calls fail now and our sessions reopen when the
                    // peer is back. Its sessions here stay: it may only
                    // be our view of it that was cut, and an idle client
                    // would never learn that we dropped its session. It
                    // closes them itself when it reopens.
                    self.interrupt_clients(now, p, true);
                }
            }
            self.events.push_back(NodeEvent::Peer {
                peer: PeerId(p),
                event,
            });
        }
    }

    fn drop_served(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        peer.served.clear();
        peer.served_opens.clear();
        peer.control.clear();
        peer.assembling = 0;
    }

    /// Every open client session on peer `p` goes back to opening (sent
    /// once the peer is up); pending calls fail as unreachable.
    fn interrupt_clients(&mut self, now: Instant, p: usize, close_old: bool) {
        while let Some((_, id)) = self.peers[p].open.pop_first() {
            self.interrupt(now, p, id, close_old);
        }
    }

    /// Sends the SESSION_OPENs of `p`'s opening sessions now.
    fn reopen_interrupted(&mut self, now: Instant, p: usize) {
        let first = self.config.open_retransmit;
        for client in self.peers[p].clients.values_mut() {
            if let Phase::Opening {
                next_send, backoff, ..
            } = &mut client.phase
            {
                *next_send = now;
                *backoff = first;
            }
        }
    }

    /// Session `id` lost (or may have lost) its server-side state: fail
    /// what is pending and open it again. With `close_old`, the old
    /// channel is closed on the server once the peer is up (it may still
    /// hold it).
    fn interrupt(&mut self, now: Instant, p: usize, id: SessionId, close_old: bool) {
        let open_id = self.fresh_open_id();
        let peer = &mut self.peers[p];
        let Some(client) = peer.clients.get_mut(&id) else {
            return;
        };
        if let (true, Phase::Open { channel }) = (close_old, client.phase) {
            peer.closing.insert(channel, Closing::default());
        }
        let error = CallError::Unreachable(format!("{} went down or restarted", peer.name));
        fail_calls(&mut self.events, id, client, &error);
        match &mut client.engine {
            ClientEngine::Rpc(rpc) => {
                **rpc = RpcClient::starting_at(self.config.rpc, rpc.next_request_id());
            }
            ClientEngine::Signal(senders) => {
                // The new session's receiver starts from zero: carry over
                // what was not acknowledged.
                for sender in senders.values_mut() {
                    let unacked = sender.submitted() - sender.acknowledged();
                    let context = sender.context();
                    *sender = SignalSender::new(context, self.config.signal_retransmit);
                    sender.submit(unacked);
                }
            }
            ClientEngine::Rom(receiver) => receiver.reset(now),
        }
        client.phase = Phase::Opening {
            open_id,
            next_send: now,
            backoff: self.config.open_retransmit,
            reopen: true,
        };
        peer.opening.insert(open_id, id);
        self.events
            .push_back(NodeEvent::Interrupted { session: id });
    }

    fn handle_open(&mut self, now: Instant, p: usize, channel: u32, open: &SessionOpen<'_>) {
        let limit = self.config.max_control_queue;
        if channel != 0 {
            self.stats.malformed += 1;
            return;
        }
        let export = self
            .export_labels
            .get(&(u8::from(open.service), open.label.to_owned()))
            .copied();
        let peer = &mut self.peers[p];
        // A repeated open (our reply was lost) gets the same channel; the
        // same id for another service or label is a new open (of a
        // restarted client whose heartbeat we have not seen yet).
        let repeated = peer
            .served_opens
            .get(&open.open_id)
            .copied()
            .filter(|channel| peer.served.get(channel).map(|s| s.export) == export);
        if let Some(existing) = repeated {
            peer.queue_control(
                &mut self.stats,
                limit,
                existing,
                Control::Reply {
                    open_id: open.open_id,
                    status: OpenStatus::Accepted,
                },
            );
            return;
        }
        let allowed = |export: ExportId| {
            self.policy
                .as_ref()
                .is_none_or(|policy| policy.contains(&(PeerId(p), export)))
        };
        let status = match export {
            None => OpenStatus::NoRoute,
            Some(export) if !allowed(export) => OpenStatus::Denied,
            Some(_) if peer.served.len() >= self.config.max_sessions_per_peer => {
                OpenStatus::Exhausted
            }
            Some(_) => OpenStatus::Accepted,
        };
        let Some(export) = export.filter(|_| status == OpenStatus::Accepted) else {
            self.stats.refused_opens += 1;
            if status == OpenStatus::Denied {
                self.stats.policy_denied += 1;
                peer.counters.policy_denied += 1;
            }
            peer.queue_control(
                &mut self.stats,
                limit,
                0,
                Control::Reply {
                    open_id: open.open_id,
                    status,
                },
            );
            return;
        };
        let engine = match &self.exports[export.0] {
            Export::Rpc(_) => ServedEngine::Rpc(Box::new(RpcServer::new(self.config.rpc))),
            Export::Signal => ServedEngine::Signal(BTreeMap::new()),
            Export::Rom(current) => ServedEngine::Rom(Box::new(RomSender::new(
                self.config.rom,
                u32::try_from(export.0).unwrap_or(u32::MAX),
                Arc::clone(current),
                now,
            ))),
        };
        let channel = peer.allocate_channel();
        peer.served.insert(
            channel,
            ServedSession {
                export,
                open_id: open.open_id,
                engine,
                confirmed: false,
                created: now,
            },
        );
        peer.served_opens.insert(open.open_id, channel);
        peer.queue_control(
            &mut self.stats,
            limit,
            channel,
            Control::Reply {
                open_id: open.open_id,
                status: OpenStatus::Accepted,
            },
        );
    }

    fn handle_session_reply(&mut self, now: Instant, p: usize, channel: u32, reply: SessionReply) {
        let Some(id) = self.peers[p].opening.remove(&reply.open_id) else {
            // A duplicate reply (harmless) or the late answer to an open
            // given up: close that session on the server.
            let peer = &mut self.peers[p];
            if reply.status == OpenStatus::Accepted
                && channel != 0
                && !peer.open.contains_key(&channel)
                && peer.closing.len() < self.config.max_control_queue
            {
                peer.closing.entry(channel).or_default();
            }
            return;
        };
        let Some(client) = self.peers[p].clients.get_mut(&id) else {
            return;
        };
        if reply.status == OpenStatus::Accepted && channel != 0 {
            client.phase = Phase::Open { channel };
            if let Some(stale) = self.peers[p].open.insert(channel, id) {
                // The server reused a channel we thought open: that
                // session is gone on the server.
                if stale != id {
                    self.interrupt(now, p, stale, false);
                }
            }
            self.events.push_back(NodeEvent::Opened { session: id });
        } else if let Phase::Opening {
            next_send,
            backoff,
            reopen: true,
            ..
        } = &mut client.phase
        {
            // Keep trying (at the backoff's pace) until the label is back
            // or the application closes the session; calls meanwhile fail
            // as unreachable.
            *next_send = now + *backoff;
            *backoff = (*backoff * 2).min(MAX_OPEN_BACKOFF);
            self.stats.refused_reopens += 1;
            self.peers[p].opening.insert(reply.open_id, id);
        } else {
            client.phase = Phase::Closed;
            let status = if reply.status == OpenStatus::Accepted {
                OpenStatus::Unknown(0)
            } else {
                reply.status
            };
            self.events.push_back(NodeEvent::Closed {
                session: id,
                reason: CloseCause::Refused(status),
            });
        }
    }

    fn handle_close(&mut self, now: Instant, p: usize, channel: u32, close: SessionClose) {
        match close.origin {
            // The peer as client closes a session it opened here.
            Origin::Client => {
                let peer = &mut self.peers[p];
                peer.remove_served(channel);
                if close.reason == CloseReason::Normal {
                    // Confirm, so the client stops repeating its close.
                    let limit = self.config.max_control_queue;
                    peer.queue_control(
                        &mut self.stats,
                        limit,
                        channel,
                        Control::Close {
                            reason: CloseReason::Normal,
                            origin: Origin::Server,
                        },
                    );
                }
            }
            // The peer as server closes a session we opened.
            Origin::Server => {
                if self.peers[p].closing.remove(&channel).is_some() {
                    // The confirmation of our own close.
                    return;
                }
                let Some(id) = self.peers[p].open.remove(&channel) else {
                    return;
                };
                if close.reason == CloseReason::Unknown {
                    // The server lost it (restart, our earlier close
                    // crossing): open it again.
                    self.interrupt(now, p, id, false);
                } else if let Some(client) = self.peers[p].clients.get_mut(&id) {
                    client.phase = Phase::Closed;
                    fail_calls(
                        &mut self.events,
                        id,
                        client,
                        &CallError::Closed(format!("closed by the server: {:?}", close.reason)),
                    );
                    self.events.push_back(NodeEvent::Closed {
                        session: id,
                        reason: CloseCause::ClosedByServer(close.reason),
                    });
                }
            }
        }
    }

    fn unknown_session(&mut self, p: usize, channel: u32, origin: Origin) {
        self.stats.unknown_session += 1;
        let limit = self.config.max_control_queue;
        // Tell the sender once per frame, within the queue's bound.
        self.peers[p].queue_control(
            &mut self.stats,
            limit,
            channel,
            Control::Close {
                reason: CloseReason::Unknown,
                origin,
            },
        );
    }

    fn handle_served(&mut self, now: Instant, p: usize, channel: u32, message: &Message<'_>) {
        let contexts = self.config.max_contexts_per_session;
        let peer_cap = self.config.max_reassembly_per_peer;
        let Peer {
            served, assembling, ..
        } = &mut self.peers[p];
        let Some(served) = served.get_mut(&channel) else {
            self.unknown_session(p, channel, Origin::Server);
            return;
        };
        served.confirmed = true;
        match (&mut served.engine, message) {
            (ServedEngine::Rpc(server), Message::RpcCall(call)) => {
                // One budget for all of the peer's sessions: a new message
                // must fit in what its other unfinished messages leave.
                if *assembling + call.fragment.total_len as usize > peer_cap
                    && !server.knows(call.request_id)
                {
                    self.stats.rpc_dropped += 1;
                    return;
                }
                let (before, dropped) = (server.assembling_bytes(), server.dropped);
                server.handle_call(now, call);
                *assembling = *assembling + server.assembling_bytes() - before;
                self.stats.rpc_dropped += server.dropped - dropped;
                let export = served.export;
                let Export::Rpc(dispatcher) = &mut self.exports[export.0] else {
                    return;
                };
                while let Some(ready) = server.poll_call() {
                    let code = if ready.interface == dispatcher.interface_id() {
                        dispatcher.dispatch(ready.opcode, &ready.args, &mut self.reply)
                    } else {
                        self.reply.clear();
                        codes::INVALID_OBJECT
                    };
                    let data = core::mem::replace(&mut self.reply, server.reply_buffer());
                    server.recycle(ready.args);
                    if server.complete(now, ready.request_id, code, data).is_err() {
                        self.stats.reply_too_large += 1;
                        let _ = server.complete(
                            now,
                            ready.request_id,
                            codes::INVALID_OBJECT,
                            Vec::new(),
                        );
                    }
                }
            }
            (ServedEngine::Rpc(server), Message::RpcAck(ack)) => server.handle_ack(ack),
            (ServedEngine::Signal(receivers), Message::Signal(signal)) => {
                if !receivers.contains_key(&signal.context) && receivers.len() >= contexts {
                    self.stats.too_many_contexts += 1;
                    return;
                }
                let receiver = receivers
                    .entry(signal.context)
                    .or_insert_with(|| SignalReceiver::new(signal.context));
                receiver.handle_signal(signal);
                if let Some(count) = receiver.take() {
                    self.events.push_back(NodeEvent::Signal {
                        export: served.export,
                        peer: PeerId(p),
                        context: signal.context,
                        count,
                    });
                }
            }
            (ServedEngine::Rom(sender), Message::RomRequest(request)) => {
                let before = sender.stats().dropped;
                sender.handle_request(now, request);
                self.stats.rom_dropped += sender.stats().dropped - before;
            }
            (ServedEngine::Rom(sender), Message::RomAck(ack)) => {
                let before = sender.stats().dropped;
                sender.handle_ack(now, ack);
                self.stats.rom_dropped += sender.stats().dropped - before;
            }
            _ => self.stats.wrong_service += 1,
        }
    }

    fn handle_client(&mut self, now: Instant, p: usize, channel: u32, message: &Message<'_>) {
        let Some(&id) = self.peers[p].open.get(&channel) else {
            self.unknown_session(p, channel, Origin::Client);
            return;
        };
        let peer = &mut self.peers[p];
        let Some(client) = peer.clients.get_mut(&id) else {
            return;
        };
        client.heard = now;
        match (&mut client.engine, message) {
            (ClientEngine::Rpc(rpc), Message::RpcReply(reply)) => {
                rpc.handle_reply(now, reply);
                let latency = &mut peer.latency;
                while let Some(outcome) = rpc.poll_event() {
                    call_done(&mut self.events, latency, now, id, outcome);
                }
            }
            (ClientEngine::Rpc(rpc), Message::RpcAck(ack)) => rpc.handle_ack(ack),
            (ClientEngine::Signal(senders), Message::SignalAck(ack)) => {
                if let Some(sender) = senders.get_mut(&ack.context) {
                    sender.handle_ack(ack);
                }
            }
            (ClientEngine::Rom(receiver), Message::RomAnnounce(announce)) => {
                receiver.handle_announce(now, announce);
                rom_events(&mut self.events, id, receiver);
            }
            (ClientEngine::Rom(receiver), Message::RomChunk(chunk)) => {
                let before = receiver.stats().dropped_chunks;
                receiver.handle_chunk(now, chunk);
                self.stats.rom_dropped += receiver.stats().dropped_chunks - before;
                rom_events(&mut self.events, id, receiver);
            }
            _ => self.stats.wrong_service += 1,
        }
    }

    // ---------------------------------------------------------------
    // Sending
    // ---------------------------------------------------------------

    /// Writes the next frame due into `buf` (at most
    /// [`NodeConfig::max_frame_len`] bytes); returns its destination and
    /// length, or `None` when nothing is due. Peers and sessions take turns.
    ///
    /// Only peers that may have work are asked (see `ready`), in turn; a
    /// peer that twice in a row had nothing sleeps until its next timer
    /// or 100 ms, whichever is sooner, unless something wakes
    /// it first. A `now` earlier than the last one wakes every peer, so a
    /// clock that steps back costs a pass, never a frame.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(Endpoint, usize)> {
        if now < self.last_now {
            self.wake_all();
        }
        self.last_now = now;
        while let Some(&Reverse((at, p))) = self.sleeping.peek() {
            if at > now {
                break;
            }
            self.sleeping.pop();
            let peer = &mut self.peers[p];
            if peer.alarm != Some(at) {
                continue;
            }
            peer.alarm = None;
            match peer.asleep_until {
                Some(until) if until <= now => self.wake(p),
                Some(until) => self.set_alarm(p, until),
                None => {}
            }
        }
        let probe_after = self.config.rom.announce_interval * 4;
        for _ in 0..self.ready.len() {
            let Some(p) = self.ready.pop_front() else {
                break;
            };
            if let Some(len) = self.transmit_peer(now, p, buf) {
                self.ready.push_back(p);
                self.stats.frames_sent += 1;
                let peer = &mut self.peers[p];
                peer.idle_pass = false;
                peer.counters.frames_sent += 1;
                return Some((peer.endpoint, len));
            }
            // The pass that ends a busy iteration finds nothing as a rule;
            // only a second one in a row (the next iteration, after the
            // flush) pays for the timers, off the critical path.
            let peer = &mut self.peers[p];
            if peer.idle_pass {
                let at = peer.poll_timeout(probe_after).min(now + ASLEEP_AT_MOST);
                peer.asleep_until = Some(at);
                self.set_alarm(p, at);
            } else {
                peer.idle_pass = true;
                self.ready.push_back(p);
            }
        }
        None
    }

    /// Peer `p` may have something to send now: the next
    /// [`Node::poll_transmit`] asks it.
    fn wake(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        peer.idle_pass = false;
        if peer.asleep_until.take().is_some() {
            self.ready.push_back(p);
        }
    }

    /// Makes sure peer `p` is looked at by `at`: an alarm it already has
    /// at that time or sooner does.
    fn set_alarm(&mut self, p: usize, at: Instant) {
        let peer = &mut self.peers[p];
        if peer.alarm.is_none_or(|alarm| alarm > at) {
            peer.alarm = Some(at);
            if self.sleeping.len() >= ALARMS_PER_PEER * self.peers.len() {
                let peers = &self.peers;
                self.sleeping
                    .retain(|&Reverse((at, p))| peers[p].alarm == Some(at));
            }
            self.sleeping.push(Reverse((at, p)));
        }
    }

    /// [`Node::wake`] for every peer (changes that concern them all).
    fn wake_all(&mut self) {
        for p in 0..self.peers.len() {
            self.wake(p);
        }
    }

    fn transmit_peer(&mut self, now: Instant, p: usize, buf: &mut [u8]) -> Option<usize> {
        self.peer_events(now, p);
        let peer = &mut self.peers[p];
        peer.expire_unconfirmed(now);
        if let Some(heartbeat) = peer.liveness.poll_transmit(now) {
            return peer.out.emit(0, Message::Heartbeat(heartbeat), buf);
        }
        if let Some((channel, control)) = peer.control.pop_front() {
            let message = match control {
                Control::Reply { open_id, status } => {
                    Message::SessionReply(SessionReply { open_id, status })
                }
                Control::Close { reason, origin } => {
                    Message::SessionClose(SessionClose { reason, origin })
                }
            };
            return peer.out.emit(channel, message, buf);
        }
        if peer.liveness.state() != PeerState::Down {
            let due = peer.closing.iter_mut().find(|(_, c)| c.next <= now);
            if let Some((&channel, closing)) = due {
                closing.next = now + CLOSE_RETRY;
                closing.tries += 1;
                if closing.tries >= CLOSE_TRIES {
                    peer.closing.remove(&channel);
                }
                let message = Message::SessionClose(SessionClose {
                    reason: CloseReason::Normal,
                    origin: Origin::Client,
                });
                return peer.out.emit(channel, message, buf);
            }
        }
        // Client and served sessions take turns going first, so a long
        // upload cannot hold back replies and ROM chunks.
        peer.served_first = !peer.served_first;
        if peer.served_first {
            if let Some(len) = self.transmit_served(now, p, buf) {
                return Some(len);
            }
            self.transmit_clients(now, p, buf)
        } else {
            if let Some(len) = self.transmit_clients(now, p, buf) {
                return Some(len);
            }
            self.transmit_served(now, p, buf)
        }
    }

    fn transmit_clients(&mut self, now: Instant, p: usize, buf: &mut [u8]) -> Option<usize> {
        let Peer {
            liveness,
            out,
            clients,
            client_turn,
            latency,
            ..
        } = &mut self.peers[p];
        if clients.is_empty() {
            return None;
        }
        let down = liveness.state() == PeerState::Down;
        let turn = *client_turn;
        let probe_after = self.config.rom.announce_interval * 4;
        for range in [
            (Bound::Included(turn), Bound::Unbounded),
            (Bound::Unbounded, Bound::Excluded(turn)),
        ] {
            for (&id, client) in clients.range_mut(range) {
                let len = match &mut client.phase {
                    Phase::Opening {
                        open_id,
                        next_send,
                        backoff,
                        ..
                    } => {
                        if down || now < *next_send {
                            continue;
                        }
                        *next_send = now + *backoff;
                        *backoff = (*backoff * 2).min(MAX_OPEN_BACKOFF);
                        let message = Message::SessionOpen(SessionOpen {
                            open_id: *open_id,
                            service: client.service,
                            label: &client.label,
                        });
                        out.emit(0, message, buf)
                    }
                    Phase::Open { channel } => {
                        let channel = *channel;
                        let len = match client.poll_transmit(now) {
                            Some(message) => out.emit(channel, message, buf),
                            None => client
                                .probe(now, probe_after)
                                .and_then(|message| out.emit(channel, message, buf)),
                        };
                        // Timers may have ended calls (deadlines).
                        if let ClientEngine::Rpc(rpc) = &mut client.engine {
                            while let Some(outcome) = rpc.poll_event() {
                                call_done(&mut self.events, latency, now, id, outcome);
                            }
                        }
                        if len.is_none() {
                            continue;
                        }
                        len
                    }
                    Phase::Closed => continue,
                };
                *client_turn = SessionId(id.0 + 1);
                return len;
            }
        }
        None
    }

    fn transmit_served(&mut self, now: Instant, p: usize, buf: &mut [u8]) -> Option<usize> {
        let Peer {
            out,
            served,
            served_turn,
            assembling,
            ..
        } = &mut self.peers[p];
        if served.is_empty() {
            return None;
        }
        let turn = *served_turn;
        for range in [
            (Bound::Included(turn), Bound::Unbounded),
            (Bound::Unbounded, Bound::Excluded(turn)),
        ] {
            for (&channel, session) in served.range_mut(range) {
                // Nothing goes out on a session before the client has used
                // it: only then does it surely know the channel (our
                // SESSION_REPLY may still be on its way, or be overtaken).
                if !session.confirmed {
                    continue;
                }
                if let ServedEngine::Rpc(server) = &mut session.engine {
                    // Frees calls whose fragments stopped coming.
                    let before = server.assembling_bytes();
                    server.expire(now);
                    *assembling -= before - server.assembling_bytes();
                }
                if let Some(message) = session.poll_transmit(now) {
                    let len = out.emit(channel, message, buf);
                    *served_turn = channel.wrapping_add(1);
                    return len;
                }
            }
        }
        None
    }

    /// When [`Node::poll_transmit`] next has something to send without
    /// new input (a heartbeat, a retransmission, a deadline).
    ///
    /// A contract, not a hint: a peer with nothing to send is not looked
    /// at again before its own share of this time, unless something wakes
    /// it (housekeeping that sends nothing and raises no event excepted,
    /// which runs within 100 ms), so every timer that can produce a frame
    /// or an event must be counted here, never late.
    pub fn poll_timeout(&self) -> Instant {
        let probe_after = self.config.rom.announce_interval * 4;
        // A sleeping peer wakes at its timer (or earlier: a stale entry
        // only makes the caller look once more).
        let asleep = self
            .sleeping
            .peek()
            .map_or(Instant::from_nanos(u64::MAX), |&Reverse((at, _))| at);
        self.ready
            .iter()
            .map(|&p| self.peers[p].poll_timeout(probe_after))
            .fold(asleep, Instant::min)
    }
}

/// What a node sends one peer: the next sequence number and the keys.
struct Outbound {
    sequence: u64,
    /// Frame keys of the pair; `None`: frames are not authenticated.
    keys: Option<FrameKeys>,
}

impl Outbound {
    /// Emits one frame into the front of `buf` (sealed when the peer has
    /// keys); `None` (and nothing sent) if it does not fit, which the
    /// sizes derived in [`Node::new`] rule out.
    fn emit(&mut self, channel: u32, message: Message<'_>, buf: &mut [u8]) -> Option<usize> {
        let frame = Frame {
            flags: if self.keys.is_some() {
                Flags::AUTH
            } else {
                Flags::NONE
            },
            channel,
            sequence: self.sequence,
            message,
        };
        let len = frame.buffer_len();
        if len > buf.len() {
            return None;
        }
        frame.emit(&mut buf[..len]);
        if let Some(keys) = &self.keys {
            // The trailer was reserved by `Frame::emit`; a failure here is
            // a frame too short to seal, which `buffer_len` rules out.
            keys.seal(&mut buf[..len], self.sequence).ok()?;
        }
        self.sequence = self.sequence.wrapping_add(1);
        Some(len)
    }
}

fn fail_calls(
    events: &mut VecDeque<NodeEvent>,
    session: SessionId,
    client: &mut ClientSession,
    error: &CallError,
) {
    if let ClientEngine::Rpc(rpc) = &mut client.engine {
        rpc.fail_all(error);
        while let Some(outcome) = rpc.poll_event() {
            events.push_back(NodeEvent::CallDone { session, outcome });
        }
    }
}

/// Reports a finished call and records the round trip of a successful one.
fn call_done(
    events: &mut VecDeque<NodeEvent>,
    latency: &mut PeerLatency,
    now: Instant,
    session: SessionId,
    outcome: CallOutcome,
) {
    if outcome.result.is_ok() {
        latency
            .rpc_call
            .record(now.saturating_since(outcome.sent_at));
    }
    events.push_back(NodeEvent::CallDone { session, outcome });
}

fn rom_events(events: &mut VecDeque<NodeEvent>, session: SessionId, receiver: &mut RomReceiver) {
    while let Some(version) = receiver.poll_event() {
        events.push_back(NodeEvent::RomChanged { session, version });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_in_the_ready_queue_once_however_often_it_is_woken() {
        let mut node = Node::new(NodeConfig::new(1472)).unwrap();
        for k in 0..2u8 {
            let at = Endpoint {
                ip: Ipv4Addr::new(198, 18, 9, k + 1),
                ..Endpoint::ethernet(EthernetAddress::default())
            };
            node.add_peer(Instant::ZERO, &format!("p{k}"), at).unwrap();
        }
        let mut buf = vec![0u8; 1472];
        let now = Instant::from_nanos(1_000);
        for round in 0..3 {
            // Heartbeats go out, then two empty passes put both to sleep.
            while node.poll_transmit(now, &mut buf).is_some() {}
            assert_eq!(node.poll_transmit(now, &mut buf), None);
            assert!(node.ready.is_empty(), "round {round}: {:?}", node.ready);
            for _ in 0..3 {
                node.wake(1);
            }
            assert_eq!(node.ready, [1], "round {round}");
        }
    }

    #[test]
    fn the_alarm_heap_stays_within_its_reserved_room_and_keeps_the_earliest_alarm() {
        let mut node = Node::new(NodeConfig::new(1472)).unwrap();
        for k in 0..3u8 {
            let at = Endpoint {
                ip: Ipv4Addr::new(198, 18, 9, k + 1),
                ..Endpoint::ethernet(EthernetAddress::default())
            };
            node.add_peer(Instant::ZERO, &format!("p{k}"), at).unwrap();
        }
        let room = node.sleeping.capacity();
        assert!(room >= ALARMS_PER_PEER * 3, "{room}");
        // Ever earlier wake times: each adds an entry and leaves the one
        // before stale.
        for step in 0..1000u64 {
            for p in 0..3 {
                let at = Instant::from_nanos(1_000_000_000 - step * 1000 - p as u64);
                node.set_alarm(p, at);
                assert_eq!(node.peers[p].alarm, Some(at));
            }
            assert!(node.sleeping.len() <= ALARMS_PER_PEER * 3);
        }
        assert_eq!(node.sleeping.capacity(), room, "the heap grew");
        // The live alarms are all there, earliest first.
        let Reverse((first, _)) = *node.sleeping.peek().unwrap();
        assert_eq!(Some(first), node.peers[2].alarm);
        for p in 0..3 {
            let alarm = node.peers[p].alarm.unwrap();
            assert!(node
                .sleeping
                .iter()
                .any(|&Reverse(entry)| entry == (alarm, p)));
        }
    }
}
