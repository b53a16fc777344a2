//! Real nodes over kernel UDP sockets on 127.0.0.1, used only through the
//! application API ([`Runtime`] and its handles), as a program would:
//!
//! * RPC: hundreds of key-value calls through the generated client stub,
//!   many of them fragmented, answered byte for byte with typed
//!   exceptions, also from several threads at once on their own sessions;
//! * signals: bursts from one thread are delivered to a waiting thread
//!   exactly once, never more;
//! * ROM: a subscriber only ever sees complete versions that were
//!   published under their numbers, in increasing order, and ends at the
//!   newest (8 MiB); a late subscriber gets the current version;
//! * peer loss: calls to a vanished peer end as unreachable instead of
//!   hanging, and when the peer restarts on the same port the existing
//!   sessions reopen by themselves and a ROM subscriber converges on the
//!   new content;
//! * opening: unexported labels, unknown peer names and silent addresses
//!   are distinct, clear errors;
//! * hostile datagrams: garbage from a configured peer's address and from
//!   strangers is counted (by the transport or the node) and never
//!   disturbs an honest peer.
//!
//! Every socket is bound to 127.0.0.1. Time limits are failure guards,
//! never speed assertions: the machine may be shared and slow.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use xrelay_datapath::engine::peer::{LivenessConfig, PeerState};
use xrelay_datapath::engine::rom::RomVersion;
use xrelay_datapath::example::{
    KvError, KvStoreClient, KvStoreOpcode, KvStoreServer, MemoryStore, StoreStats,
};
use xrelay_datapath::marshal::{CallError, Caller, RpcError};
use xrelay_datapath::node::{CloseCause, NodeStats};
use xrelay_datapath::runtime::{RomSubscriber, RpcSession, Runtime, RuntimeConfig, RuntimeError};
use xrelay_datapath::time;
use xrelay_datapath::transport::udp::{UdpConfig, UdpStats, UdpTransport};
use xrelay_datapath::transport::{Deliver, Fill, Transport, TransportError};
use xrelay_datapath::wire::encap::Endpoint;
use xrelay_datapath::wire::ethernet::EthernetAddress;
use xrelay_datapath::wire::rom::RomState;
use xrelay_datapath::wire::session::{
    CloseReason, OpenStatus, Origin, Service, SessionClose, SessionOpen, SessionReply,
};
use xrelay_datapath::wire::signal::Signal;
use xrelay_datapath::wire::{Flags, Frame, Message};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The longest relay frame of the default UDP configuration: longer
/// values need several fragments.
const FRAME: usize = 1472;

// ---------------------------------------------------------------------
// Nodes on loopback
// ---------------------------------------------------------------------

/// Makes a transport bound to 127.0.0.1:`port` (0 lets the kernel pick).
fn loopback(port: u16) -> impl FnOnce() -> Result<UdpTransport, TransportError> + Send + 'static {
    move || {
        UdpTransport::bind(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            UdpConfig::default(),
        )
    }
}

/// The default configuration, with a dead time generous enough that a
/// loaded, shared machine never declares a live peer down.
fn config() -> RuntimeConfig {
    let mut config = RuntimeConfig::new(Vec::new());
    config.node.liveness = LivenessConfig {
        interval: Duration::from_millis(100),
        dead_after: Duration::from_secs(2),
    };
    config
}

fn spawn(name: &str) -> Runtime {
    Runtime::spawn(name, config(), loopback(0)).expect("spawning a runtime on 127.0.0.1")
}

/// Makes `a` and `b` peers of each other under the given names.
fn connect(a: &Runtime, a_name: &str, b: &Runtime, b_name: &str) {
    a.add_peer(b_name, b.local_endpoint()).unwrap();
    b.add_peer(a_name, a.local_endpoint()).unwrap();
}

/// Two runtimes that know each other as "a" and "b".
fn pair() -> (Runtime, Runtime) {
    let (a, b) = (spawn("udp-a"), spawn("udp-b"));
    connect(&a, "a", &b, "b");
    (a, b)
}

fn loopback_endpoint(port: u16) -> Endpoint {
    Endpoint {
        mac: EthernetAddress::default(),
        ip: Ipv4Addr::LOCALHOST,
        port,
    }
}

fn socket_addr(endpoint: Endpoint) -> SocketAddrV4 {
    SocketAddrV4::new(endpoint.ip, endpoint.port)
}

/// Calls `probe` until it gives a value; panics naming `what` after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?}: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------
// RPC
// ---------------------------------------------------------------------

fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

/// A deterministic value of `len` bytes that differs between seeds.
fn value(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (seed.wrapping_mul(131) + j * 7 + j / 251).to_le_bytes()[0])
        .collect()
}

fn store_stats(model: &BTreeMap<String, Vec<u8>>) -> StoreStats {
    StoreStats {
        keys: u64::try_from(model.len()).unwrap(),
        value_bytes: model
            .values()
            .map(|v| u64::try_from(v.len()).unwrap())
            .sum(),
    }
}

/// Checks a get against the model without printing kilobytes on failure.
fn check_get(kv: &mut KvStoreClient<RpcSession>, key: &str, model: &BTreeMap<String, Vec<u8>>) {
    let got = kv.get(key.to_owned());
    match (model.get(key), &got) {
        (Some(expected), Ok(bytes)) => assert!(
            bytes == expected,
            "get {key}: {} bytes differ from the {} stored",
            bytes.len(),
            expected.len()
        ),
        (None, Err(RpcError::Exception(KvError::NotFound))) => {}
        (expected, _) => panic!(
            "get {key}: {:?}, expected {:?}",
            got.map(|v| v.len()),
            expected.map(Vec::len)
        ),
    }
}

#[test]
fn kv_calls_over_udp_return_exactly_what_was_stored() {
    const KEYS: usize = 160;
    let (a, b) = pair();
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(KEYS)))
        .unwrap();
    let mut kv = KvStoreClient::new(a.open_rpc("b", "kv").unwrap());
    // 0 bytes up to exactly 40 KiB: most values need many fragments.
    let len_of = |i: usize| i * 40 * KIB / (KEYS - 1);
    assert!((0..KEYS).filter(|&i| len_of(i) > FRAME).count() > KEYS / 2);
    let mut model = BTreeMap::new();
    let mut calls = 0;

    for i in 0..KEYS {
        let v = value(i, len_of(i));
        let result = kv.put(key("key", i), v.clone());
        assert!(result == Ok(None), "put {i}: {:?}", result.map(|_| ()));
        model.insert(key("key", i), v);
        calls += 1;
    }
    assert_eq!(
        kv.put(key("key", KEYS), Vec::new()),
        Err(RpcError::Exception(KvError::Full)),
        "the store holds {KEYS} keys"
    );
    calls += 1;
    for i in 0..KEYS {
        check_get(&mut kv, &key("key", i), &model);
        calls += 1;
    }
    // Overwrites hand back the value they replace.
    for i in (0..KEYS).step_by(8) {
        let fresh = value(i + 1000, (KEYS - i) * 200);
        let old = kv.put(key("key", i), fresh.clone());
        let replaced = model.insert(key("key", i), fresh);
        assert!(old == Ok(replaced), "overwrite {i}");
        calls += 1;
    }
    assert_eq!(kv.stats(), Ok(store_stats(&model)));
    calls += 1;
    for i in (0..KEYS).step_by(2) {
        assert_eq!(kv.delete(key("key", i)), Ok(()), "delete {i}");
        model.remove(&key("key", i));
        calls += 1;
    }
    assert_eq!(
        kv.delete(key("key", 0)),
        Err(RpcError::Exception(KvError::NotFound))
    );
    calls += 1;
    for i in 0..KEYS {
        check_get(&mut kv, &key("key", i), &model);
        calls += 1;
    }
    assert_eq!(kv.stats(), Ok(store_stats(&model)));
    calls += 1;
    assert!(calls >= 500, "only {calls} calls");
}

/// One client thread's work on its own session; returns its number of calls.
fn client_thread(a: &Runtime, thread: usize, keys: usize) -> usize {
    let mut kv = KvStoreClient::new(a.open_rpc("b", "kv").unwrap());
    let prefix = format!("t{thread}");
    let mut model = BTreeMap::new();
    let mut calls = 0;
    for i in 0..keys {
        let seed = thread * keys + i;
        let v = value(seed, seed * 577 % (24 * KIB + 1));
        let result = kv.put(key(&prefix, i), v.clone());
        assert!(result == Ok(None), "{prefix}: put {i}");
        model.insert(key(&prefix, i), v);
        check_get(&mut kv, &key(&prefix, i), &model);
        calls += 2;
    }
    for i in (0..keys).step_by(2) {
        assert_eq!(kv.delete(key(&prefix, i)), Ok(()), "{prefix}: delete {i}");
        model.remove(&key(&prefix, i));
        calls += 1;
    }
    for i in 0..keys {
        check_get(&mut kv, &key(&prefix, i), &model);
        calls += 1;
    }
    calls
}

#[test]
fn concurrent_clients_on_their_own_sessions_get_their_own_answers() {
    const THREADS: usize = 6;
    const KEYS: usize = 30;
    let (a, b) = pair();
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(THREADS * KEYS)))
        .unwrap();
    let calls: usize = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let a = &a;
                scope.spawn(move || client_thread(a, t, KEYS))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a client thread failed"))
            .sum()
    });
    assert_eq!(calls, THREADS * KEYS * 7 / 2);
    // The store holds exactly the odd keys every thread left behind.
    let mut kv = KvStoreClient::new(a.open_rpc("b", "kv").unwrap());
    let left: u64 = (0..THREADS)
        .flat_map(|t| (1..KEYS).step_by(2).map(move |i| t * KEYS + i))
        .map(|seed| u64::try_from(seed * 577 % (24 * KIB + 1)).unwrap())
        .sum();
    assert_eq!(
        kv.stats(),
        Ok(StoreStats {
            keys: u64::try_from(THREADS * KEYS / 2).unwrap(),
            value_bytes: left,
        })
    );
}

// ---------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------

#[test]
fn every_submitted_signal_is_delivered_exactly_once_over_udp() {
    const BURSTS: u64 = 30;
    let (a, b) = pair();
    let handler = b.export_signal("events").unwrap();
    let transmitter = a.open_signal("b", "events").unwrap();
    // Burst n: 5n single submissions to context 0 and n at once to one
    // of contexts 1..=4.
    let expected: u64 = (1..=BURSTS).map(|n| 5 * n + n).sum();

    let receiver = {
        let handler = handler.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut delivered, mut wakeups) = (0u64, 0u64);
            while delivered < expected && Instant::now() < deadline {
                if let Some(count) = handler.wait_timeout(Duration::from_millis(100)) {
                    delivered += count;
                    wakeups += 1;
                }
            }
            (delivered, wakeups)
        })
    };
    for n in 1..=BURSTS {
        for _ in 0..5 * n {
            transmitter.submit().unwrap();
        }
        let context = u32::try_from(n % 4).unwrap() + 1;
        transmitter.submit_many(context, n).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    let (delivered, wakeups) = receiver.join().expect("the receiving thread failed");
    assert_eq!(delivered, expected, "in {wakeups} wake-ups");
    assert!((1..=delivered).contains(&wakeups), "{wakeups} wake-ups");
    // Anything more after a quiet period would be a signal counted twice.
    assert_eq!(handler.wait_timeout(Duration::from_millis(300)), None);
    assert_eq!(handler.poll(), None);
}

// ---------------------------------------------------------------------
// ROM
// ---------------------------------------------------------------------

/// Deterministic pseudo-random content.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    fastrand::Rng::with_seed(seed).fill(&mut data);
    data
}

/// Records every new version `subscriber` shows until `stop`.
fn watch(subscriber: &RomSubscriber, stop: &AtomicBool) -> Vec<Arc<RomVersion>> {
    let mut seen: Vec<Arc<RomVersion>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let last = seen.last().cloned();
        if let Some(version) = subscriber.wait_change(last.as_ref(), Duration::from_millis(20)) {
            if !last.is_some_and(|l| Arc::ptr_eq(&l, &version)) {
                seen.push(version);
            }
        }
    }
    seen
}

/// Waits until `subscriber` holds `version`; returns what it holds then.
fn wait_for_version(subscriber: &RomSubscriber, version: u64, limit: Duration) -> Arc<RomVersion> {
    let deadline = Instant::now() + limit;
    let mut current = subscriber.current();
    while current.as_ref().map(|v| v.version) != Some(version) {
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for version {version}, at {:?}",
            current.map(|v| v.version)
        );
        current = subscriber.wait_change(current.as_ref(), Duration::from_millis(100));
    }
    current.expect("checked above")
}

#[test]
fn rom_subscribers_over_udp_see_only_complete_published_versions() {
    let (a, b) = pair();
    let publisher = b.export_rom("config").unwrap();
    let subscriber = Arc::new(a.subscribe_rom("b", "config").unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (subscriber, stop) = (Arc::clone(&subscriber), Arc::clone(&stop));
        thread::spawn(move || watch(&subscriber, &stop))
    };

    // Version -> (state, hash) of everything published, the initial empty
    // version 1 included. Some versions are superseded before they could
    // have arrived; only the newest must.
    let mut published = HashMap::from([(1, (RomState::Valid, *blake3::hash(&[]).as_bytes()))]);
    let steps = [
        Some(KIB),
        None,
        Some(0),
        Some(300 * KIB),
        Some(2 * MIB + 5),
        Some(8 * MIB),
    ];
    let mut newest = Vec::new();
    for (seed, step) in (1u64..).zip(steps) {
        let (version, state, data) = match step {
            Some(len) => {
                let data = content(seed, len);
                (publisher.publish(data.clone()), RomState::Valid, data)
            }
            None => (publisher.remove(), RomState::Removed, Vec::new()),
        };
        let version = version.unwrap();
        published.insert(version, (state, *blake3::hash(&data).as_bytes()));
        newest = data;
        if step == Some(2 * MIB + 5) {
            // Let this transfer get under way before it is superseded.
            thread::sleep(Duration::from_millis(30));
        }
    }
    let last = u64::try_from(steps.len()).unwrap() + 1;
    assert_eq!(newest.len(), 8 * MIB);

    let current = wait_for_version(&subscriber, last, Duration::from_secs(30));
    assert_eq!(current.state, RomState::Valid);
    assert_eq!(current.hash, *blake3::hash(&newest).as_bytes());
    assert!(
        current.data == newest,
        "version {last} differs from what was published"
    );
    stop.store(true, Ordering::Release);
    let seen = watcher.join().expect("the watcher failed");

    assert_eq!(seen.last().map(|v| v.version), Some(last));
    let mut previous = 0;
    for version in &seen {
        assert!(
            version.version > previous,
            "version {} seen after {previous}",
            version.version
        );
        previous = version.version;
        assert_eq!(
            *blake3::hash(&version.data).as_bytes(),
            version.hash,
            "version {} is incomplete or damaged",
            version.version
        );
        assert_eq!(
            published.get(&version.version),
            Some(&(version.state, version.hash)),
            "version {} is not what was published under that number",
            version.version
        );
        assert!(version.state == RomState::Valid || version.data.is_empty());
    }

    // A late subscriber on a third node gets the current version.
    let c = spawn("udp-c");
    connect(&c, "c", &b, "b");
    let late = c.subscribe_rom("b", "config").unwrap();
    let current = wait_for_version(&late, last, Duration::from_secs(30));
    assert_eq!(current.hash, *blake3::hash(&newest).as_bytes());
    assert!(
        current.data == newest,
        "the late subscriber got other content"
    );
}

// ---------------------------------------------------------------------
// Peer loss and restart
// ---------------------------------------------------------------------

/// Peers are declared down after one second of silence.
fn quick_loss_config() -> RuntimeConfig {
    let mut config = config();
    config.node.liveness = LivenessConfig {
        interval: Duration::from_millis(50),
        dead_after: Duration::from_secs(1),
    };
    config
}

#[test]
fn calls_to_a_lost_peer_fail_as_unreachable_and_recover_when_it_restarts_on_its_port() {
    let a = Runtime::spawn("loss-a", quick_loss_config(), loopback(0)).unwrap();
    let b = Runtime::spawn("loss-b", quick_loss_config(), loopback(0)).unwrap();
    connect(&a, "a", &b, "b");
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(16)))
        .unwrap();
    let before = content(1, 100 * KIB);
    b.export_rom("config")
        .unwrap()
        .publish(before.clone())
        .unwrap();

    let mut kv = KvStoreClient::new(a.open_rpc("b", "kv").unwrap());
    assert_eq!(kv.put("k".into(), vec![1, 2, 3]), Ok(None));
    assert_eq!(kv.get("k".into()), Ok(vec![1, 2, 3]));
    let subscriber = a.subscribe_rom("b", "config").unwrap();
    assert!(wait_for_version(&subscriber, 2, Duration::from_secs(10)).data == before);

    let port = b.local_endpoint().port;
    let stats: NodeStats = b.shutdown().expect("b stops cleanly");
    assert!(stats.frames_received > 0);

    // A call on the open session ends as unreachable once b is declared
    // dead; it must return, not hang until its own deadline or forever.
    let started = Instant::now();
    let result = kv.get("k".into());
    assert!(
        matches!(result, Err(RpcError::Call(CallError::Unreachable(_)))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "the call hung");
    wait_for("b declared down", Duration::from_secs(10), || {
        (a.peer_state("b").unwrap() == PeerState::Down).then_some(())
    });
    // While b is down, the raw caller fails at once with the same kind.
    let mut reply = Vec::new();
    let direct = kv.caller_mut().call(
        KvStoreOpcode::INTERFACE_ID,
        KvStoreOpcode::Stats.code(),
        &[],
        &mut reply,
    );
    assert!(
        matches!(direct, Err(CallError::Unreachable(_))),
        "{direct:?}"
    );

    // b comes back on the same port, a new incarnation with an empty store
    // and new content of the ROM module at the same version number. It
    // learns of a only once its exports exist: a reopen arriving before
    // would be refused (no route), and the node takes a refused reopen as
    // final.
    let b2 = match Runtime::spawn("loss-b2", quick_loss_config(), loopback(port)) {
        Ok(b2) => b2,
        Err(error) => panic!("rebinding 127.0.0.1:{port} after b stopped: {error}"),
    };
    assert_eq!(b2.local_endpoint().port, port);
    b2.export_rpc("kv", KvStoreServer(MemoryStore::new(16)))
        .unwrap();
    let after = content(2, 150 * KIB);
    assert_eq!(
        b2.export_rom("config").unwrap().publish(after.clone()),
        Ok(2)
    );
    b2.add_peer("a", a.local_endpoint()).unwrap();

    // The same session works again after reopening by itself; until then
    // calls fail fast as unreachable, never as anything else.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match kv.put("fresh".into(), vec![7; 3000]) {
            Ok(previous) => {
                assert_eq!(previous, None, "b2's store starts empty");
                break;
            }
            Err(RpcError::Call(CallError::Unreachable(_))) => {}
            Err(other) => panic!("while b2 comes up: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the session did not reopen ({attempts} attempts)"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(kv.get("fresh".into()), Ok(vec![7; 3000]));
    assert_eq!(
        kv.get("k".into()),
        Err(RpcError::Exception(KvError::NotFound)),
        "answered by the old store"
    );
    assert_eq!(a.peer_state("b").unwrap(), PeerState::Up);

    // The subscriber converges on b2's content. Its version number equals
    // the one held before, so wait on the content, not on the number.
    let hash = *blake3::hash(&after).as_bytes();
    let current = wait_for("b2's ROM content", Duration::from_secs(10), || {
        subscriber.current().filter(|v| v.hash == hash)
    });
    assert_eq!((current.version, current.state), (2, RomState::Valid));
    assert!(current.data == after);
}

// ---------------------------------------------------------------------
// Opening sessions
// ---------------------------------------------------------------------

#[test]
fn opening_fails_clearly_for_unexported_labels_unknown_peers_and_silent_addresses() {
    let (a, b) = pair();
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(4)))
        .unwrap();

    match a.open_rpc("b", "no-such-service") {
        Err(RuntimeError::Refused { peer, label, cause }) => {
            assert_eq!((peer.as_str(), label.as_str()), ("b", "no-such-service"));
            assert_eq!(cause, CloseCause::Refused(OpenStatus::NoRoute));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A label is exported per service: "kv" is no signal service.
    assert!(matches!(
        a.open_signal("b", "kv"),
        Err(RuntimeError::Refused {
            cause: CloseCause::Refused(OpenStatus::NoRoute),
            ..
        })
    ));
    assert!(matches!(
        a.open_rpc("nobody", "kv"),
        Err(RuntimeError::UnknownPeer(name)) if name == "nobody"
    ));

    // A configured peer at an address where nothing listens: the port of
    // a socket that was just closed.
    let closed = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let ghost = closed.local_addr().unwrap().port();
    drop(closed);
    let open_timeout = Duration::from_millis(300);
    let impatient = Runtime::spawn(
        "udp-impatient",
        RuntimeConfig {
            open_timeout,
            ..config()
        },
        loopback(0),
    )
    .unwrap();
    impatient
        .add_peer("ghost", loopback_endpoint(ghost))
        .unwrap();
    match impatient.open_rpc("ghost", "kv") {
        Err(RuntimeError::OpenTimeout {
            peer,
            label,
            timeout,
        }) => {
            assert_eq!((peer.as_str(), label.as_str()), ("ghost", "kv"));
            assert_eq!(timeout, open_timeout);
        }
        other => panic!("expected an open timeout, got {other:?}"),
    }

    // None of this disturbed the working pair.
    let mut kv = KvStoreClient::new(a.open_rpc("b", "kv").unwrap());
    assert_eq!(kv.put("x".into(), vec![1]), Ok(None));
    assert!(b.stats().unwrap().refused_opens >= 2);
}

// ---------------------------------------------------------------------
// Hostile datagrams
// ---------------------------------------------------------------------

/// A UDP transport whose counters the test reads while the datapath
/// thread owns it (the runtime reports only the node's counters).
struct Observed {
    udp: UdpTransport,
    stats: Arc<Mutex<UdpStats>>,
}

impl Transport for Observed {
    fn max_frame_len(&self) -> usize {
        self.udp.max_frame_len()
    }

    fn local_endpoint(&self) -> Endpoint {
        self.udp.local_endpoint()
    }

    fn recv(
        &mut self,
        now: time::Instant,
        budget: usize,
        deliver: &mut Deliver<'_>,
    ) -> Result<usize, TransportError> {
        let received = self.udp.recv(now, budget, deliver)?;
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = self.udp.stats();
        Ok(received)
    }

    fn send(&mut self, fill: &mut Fill<'_>) -> Result<bool, TransportError> {
        self.udp.send(fill)
    }

    fn flush(&mut self, now: time::Instant) -> Result<(), TransportError> {
        self.udp.flush(now)
    }
}

fn frame(channel: u32, message: Message<'_>) -> Vec<u8> {
    let frame = Frame {
        flags: Flags::NONE,
        channel,
        sequence: 1,
        message,
    };
    let mut bytes = vec![0; frame.buffer_len()];
    frame.emit(&mut bytes);
    bytes
}

/// What one round of hostile datagrams must move.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Drops {
    transport_malformed: u64,
    transport_truncated: u64,
    unknown_kind: u64,
    unauthenticated: u64,
    malformed: u64,
    unknown_session: u64,
    refused_opens: u64,
    unknown_peer: u64,
}

impl Drops {
    fn between(before: (NodeStats, UdpStats), after: (NodeStats, UdpStats)) -> Drops {
        let ((node0, udp0), (node1, udp1)) = (before, after);
        Drops {
            transport_malformed: udp1.dropped_malformed - udp0.dropped_malformed,
            transport_truncated: udp1.dropped_truncated - udp0.dropped_truncated,
            unknown_kind: node1.unknown_kind - node0.unknown_kind,
            unauthenticated: node1.unauthenticated - node0.unauthenticated,
            malformed: node1.malformed - node0.malformed,
            unknown_session: node1.unknown_session - node0.unknown_session,
            refused_opens: node1.refused_opens - node0.refused_opens,
            unknown_peer: node1.unknown_peer - node0.unknown_peer,
        }
    }

    fn covers(&self, want: &Drops) -> bool {
        self.transport_malformed >= want.transport_malformed
            && self.transport_truncated >= want.transport_truncated
            && self.unknown_kind >= want.unknown_kind
            && self.unauthenticated >= want.unauthenticated
            && self.malformed >= want.malformed
            && self.unknown_session >= want.unknown_session
            && self.refused_opens >= want.refused_opens
            && self.unknown_peer >= want.unknown_peer
    }
}

/// Sends one round of hostile datagrams to `to`: from `mallory` (a
/// configured peer of the receiver) and from `stranger` (not one).
fn hostile_round(mallory: &UdpSocket, stranger: &UdpSocket, to: SocketAddrV4, round: u32) {
    let signal = frame(
        99,
        Message::Signal(Signal {
            context: 1,
            count: 5,
        }),
    );
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    // Refused by the transport, which checks each datagram is exactly one
    // relay frame: random bytes, a truncated relay header, trailing bytes,
    // nothing at all, an unknown protocol version, unknown flag bits, a
    // body length past the end; and one over the frame size.
    let mut garbage = content(u64::from(round), 64);
    garbage[0] = 0;
    datagrams.push(garbage);
    datagrams.push(signal[..10].to_vec());
    datagrams.push([signal.as_slice(), &[0]].concat());
    datagrams.push(Vec::new());
    let mut version = signal.clone();
    version[2] = 9;
    datagrams.push(version);
    let mut flags = signal.clone();
    flags[5] = 0x80;
    datagrams.push(flags);
    let mut long = signal.clone();
    long[6] = 0xff;
    datagrams.push(long);
    datagrams.push(vec![0x58; 2000]);
    // Refused by the node: an unknown kind, an authenticated frame while
    // no key is configured, a body too short for its kind, an open on a
    // session channel, a signal for a channel nobody opened, an open for a
    // label nobody exports.
    let mut kind = signal.clone();
    kind[4] = 0x7f;
    datagrams.push(kind);
    let mut auth = signal.clone();
    auth[5] = Flags::AUTH.bits();
    auth.extend_from_slice(&[0; 16]);
    datagrams.push(auth);
    let mut short = signal[..24].to_vec();
    short[6..8].copy_from_slice(&4u16.to_le_bytes());
    datagrams.push(short);
    let open = |open_id| {
        Message::SessionOpen(SessionOpen {
            open_id,
            service: Service::Rpc,
            label: "no-such-label",
        })
    };
    datagrams.push(frame(7, open(1)));
    datagrams.push(signal.clone());
    datagrams.push(frame(0, open(4242 + round)));
    for datagram in &datagrams {
        mallory.send_to(datagram, to).unwrap();
    }
    // From an address that is no peer: garbage, then a well-formed frame.
    stranger.send_to(b"hello", to).unwrap();
    stranger.send_to(&signal, to).unwrap();
}

const HOSTILE_ROUND: Drops = Drops {
    transport_malformed: 8,
    transport_truncated: 1,
    unknown_kind: 1,
    unauthenticated: 1,
    malformed: 2,
    unknown_session: 1,
    refused_opens: 1,
    unknown_peer: 1,
};

/// Reads what `b` sends `mallory` until it answered the signal on an
/// unknown channel with a close and the open with a refusal, each once
/// per round at least.
fn await_answers(mallory: &UdpSocket, rounds: u32) {
    mallory
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut closes, mut refusals) = (0, 0);
    let mut buf = [0; 2048];
    while closes < rounds || refusals < rounds {
        assert!(
            Instant::now() < deadline,
            "b answered {closes} closes and {refusals} refusals of {rounds} each"
        );
        let Ok(len) = mallory.recv(&mut buf) else {
            continue;
        };
        let Ok((frame, _)) = Frame::parse(&buf[..len]) else {
            panic!("b sent a frame that does not parse");
        };
        match frame.message {
            Message::SessionClose(SessionClose { reason, origin }) => {
                assert_eq!(frame.channel, 99);
                assert_eq!((reason, origin), (CloseReason::Unknown, Origin::Server));
                closes += 1;
            }
            Message::SessionReply(SessionReply { open_id, status }) => {
                assert!(open_id >= 4242, "open id {open_id}");
                assert_eq!(status, OpenStatus::NoRoute);
                refusals += 1;
            }
            _ => {}
        }
    }
}

#[test]
fn hostile_datagrams_are_counted_drops_and_never_disturb_an_honest_peer() {
    const ROUNDS: u32 = 5;
    let a = spawn("udp-honest");
    let udp_stats = Arc::new(Mutex::new(UdpStats::default()));
    let b = {
        let stats = Arc::clone(&udp_stats);
        Runtime::spawn("udp-target", config(), move || {
            let udp = loopback(0)()?;
            Ok(Observed { udp, stats })
        })
        .unwrap()
    };
    connect(&a, "a", &b, "b");
    b.export_rpc("kv", KvStoreServer(MemoryStore::new(64)))
        .unwrap();
    let mallory = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let stranger = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mallory_port = mallory.local_addr().unwrap().port();
    b.add_peer("mallory", loopback_endpoint(mallory_port))
        .unwrap();
    let to_b = socket_addr(b.local_endpoint());
    assert_eq!(*to_b.ip(), Ipv4Addr::LOCALHOST);

    let mut kv = KvStoreClient::new(a.open_rpc("b", "kv").unwrap());
    let snapshot = || {
        let udp = *udp_stats.lock().unwrap_or_else(PoisonError::into_inner);
        (b.stats().unwrap(), udp)
    };
    let before = snapshot();
    let mut model = BTreeMap::new();
    for round in 0..ROUNDS {
        hostile_round(&mallory, &stranger, to_b, round);
        // The honest peer's calls, fragmented ones too, go on correctly.
        for i in 0..4 {
            let k = format!("r{round}-{i}");
            let v = value(i, usize::try_from(round).unwrap() * 5000 + i * 1000);
            assert_eq!(kv.put(k.clone(), v.clone()), Ok(None));
            model.insert(k.clone(), v);
            check_get(&mut kv, &k, &model);
        }
    }
    await_answers(&mallory, ROUNDS);
    let want = Drops {
        transport_malformed: HOSTILE_ROUND.transport_malformed * u64::from(ROUNDS),
        transport_truncated: HOSTILE_ROUND.transport_truncated * u64::from(ROUNDS),
        unknown_kind: HOSTILE_ROUND.unknown_kind * u64::from(ROUNDS),
        unauthenticated: HOSTILE_ROUND.unauthenticated * u64::from(ROUNDS),
        malformed: HOSTILE_ROUND.malformed * u64::from(ROUNDS),
        unknown_session: HOSTILE_ROUND.unknown_session * u64::from(ROUNDS),
        refused_opens: HOSTILE_ROUND.refused_opens * u64::from(ROUNDS),
        unknown_peer: HOSTILE_ROUND.unknown_peer * u64::from(ROUNDS),
    };
    // The transport's counters are copied after each receive batch.
    let drops = wait_for(
        "every hostile datagram counted",
        Duration::from_secs(10),
        || {
            let drops = Drops::between(before, snapshot());
            drops.covers(&want).then_some(drops)
        },
    );
    assert_eq!(drops, want, "each datagram is counted once, by one reason");

    // Still serving: every key reads back, the store counts them all, and
    // garbage never brought the hostile address up as a peer.
    for k in model.keys() {
        check_get(&mut kv, k, &model);
    }
    assert_eq!(kv.stats(), Ok(store_stats(&model)));
    wait_for("b sees the honest peer up", Duration::from_secs(10), || {
        (b.peer_state("a").unwrap() == PeerState::Up).then_some(())
    });
    assert_ne!(b.peer_state("mallory").unwrap(), PeerState::Up);
}

/// A handler that uses the runtime of its own node from the datapath
/// thread: the runtime must refuse (it would wait for itself) instead of
/// hanging the node.
struct Reentrant {
    node: Arc<Mutex<Option<Runtime>>>,
    outcome: Arc<Mutex<Option<String>>>,
}

impl xrelay_datapath::marshal::Dispatch for Reentrant {
    fn interface_id(&self) -> u32 {
        7
    }

    fn dispatch(&mut self, _opcode: u16, _args: &[u8], reply: &mut Vec<u8>) -> i32 {
        reply.clear();
        let guard = self.node.lock().unwrap_or_else(PoisonError::into_inner);
        let result = guard.as_ref().map(Runtime::stats);
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!("{result:?}"));
        0
    }
}

#[test]
fn a_handler_that_calls_its_own_runtime_gets_an_error_not_a_deadlock() {
    let (a, b) = pair();
    let node = Arc::new(Mutex::new(None));
    let outcome = Arc::new(Mutex::new(None));
    b.export_rpc(
        "reentrant",
        Reentrant {
            node: Arc::clone(&node),
            outcome: Arc::clone(&outcome),
        },
    )
    .unwrap();
    *node.lock().unwrap() = Some(b);
    let mut session = a.open_rpc("b", "reentrant").unwrap();
    let mut reply = Vec::new();
    assert_eq!(session.call(7, 0, &[], &mut reply), Ok(0));
    let seen = outcome.lock().unwrap().clone().unwrap();
    assert!(seen.contains("WouldDeadlock"), "{seen}");
    // The node still works.
    assert_eq!(session.call(7, 0, &[], &mut reply), Ok(0));
    let b = node.lock().unwrap().take().unwrap();
    assert!(b.stats().is_ok());
}

#[test]
fn waiting_handles_wake_when_the_node_stops() {
    let (a, b) = pair();
    let handler = b.export_signal("events").unwrap();
    let publisher = b.export_rom("config").unwrap();
    let subscriber = a.subscribe_rom("b", "config").unwrap();
    let seen = wait_for("version 1", Duration::from_secs(10), || {
        subscriber.current()
    });
    let waiter = thread::spawn(move || handler.wait());
    let watcher = thread::spawn(move || {
        let start = Instant::now();
        let _ = subscriber.wait_change(Some(&seen), Duration::from_secs(60));
        start.elapsed()
    });
    thread::sleep(Duration::from_millis(100));
    drop(publisher);
    b.shutdown().unwrap();
    assert_eq!(waiter.join().unwrap(), Err(RuntimeError::Stopped));
    drop(a);
    assert!(watcher.join().unwrap() < Duration::from_secs(30));
}

#[test]
fn a_flood_of_submissions_coalesces_and_never_starves_the_node() {
    let (a, b) = pair();
    let handler = b.export_signal("events").unwrap();
    let transmitter = a.open_signal("b", "events").unwrap();
    let total = 2_000_000u64;
    for _ in 0..total {
        transmitter.submit().unwrap();
    }
    // The node answered in between: it is not buried under commands.
    assert!(a.stats().is_ok());
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered < total && Instant::now() < deadline {
        delivered += handler
            .wait_timeout(Duration::from_millis(100))
            .unwrap_or(0);
    }
    assert_eq!(delivered, total);
    assert_eq!(handler.wait_timeout(Duration::from_millis(200)), None);
}
