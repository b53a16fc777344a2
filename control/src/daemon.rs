//! The daemon's state, owned by its control thread: the running datapath,
//! the configuration in effect and its routes (an immutable snapshot,
//! swapped whole on reload), the handles of what this node exports, and
//! the control plane's own counters.
//!
//! A reload checks the new file first; an invalid one changes nothing.
//! A valid one is applied as one step between two datapath batches (new
//! peers, every peer's keys and the policy: [`Runtime::reconfigure`]),
//! then new exports are served and the new routes swapped in. What needs
//! a new datapath (the `[node]` section, a changed peer address) is
//! reported and takes effect at the next start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use xrelay_datapath::auth::FrameKeys;
use xrelay_datapath::example::{KvError, KvStore, KvStoreServer, MemoryStore, StoreStats};
use xrelay_datapath::runtime::{
    Handoff, Reconfiguration, Report, RomPublisher, Runtime, RuntimeConfig, RuntimeError,
    SignalHandler,
};
use xrelay_datapath::transport::udp::{UdpConfig, UdpTransport};
use xrelay_datapath::transport::xdp::{
    neighbour_mac, AttachMode, BindMode, XdpConfig, XdpProgram, XdpTransport,
};
use xrelay_datapath::transport::TransportError;
use xrelay_datapath::wire::encap::{Encapsulation, Endpoint, DEFAULT_UDP_PORT};
use xrelay_datapath::wire::ethernet::{EthernetAddress, ETHERTYPE_RELAY};
use xrelay_datapath::wire::rom::MAX_ROM_SIZE;
use xrelay_datapath::wire::session::Service;

use crate::config::{
    self, Config, EncapChoice, ModeChoice, NodeSection, PeerSection, ServiceChoice, TransportChoice,
};
use crate::routes::{Routes, Target};

fn service(choice: ServiceChoice) -> Service {
    match choice {
        ServiceChoice::Rpc => Service::Rpc,
        ServiceChoice::Rom => Service::Rom,
        ServiceChoice::Signal => Service::Signal,
    }
}

/// A pair key: 64 hex digits (`xrelay check` has verified them).
fn hex_key(text: &str) -> Option<[u8; 32]> {
    crate::decode::parse_hex(&[text.to_owned()])
        .ok()?
        .try_into()
        .ok()
}

fn node_port(config: &Config) -> u16 {
    config
        .node
        .port
        .as_ref()
        .map_or(DEFAULT_UDP_PORT, |p| *p.get_ref())
}

/// The endpoint of one configured peer. On AF_XDP (`neighbours` names
/// the interface) a peer without a configured MAC gets the one in the
/// kernel's neighbour table; UDP needs none.
fn peer_endpoint(
    config: &Config,
    peer: &PeerSection,
    neighbours: Option<&str>,
) -> Result<(String, Endpoint), String> {
    let name = peer.name.get_ref();
    let ip = peer
        .address
        .get_ref()
        .parse()
        .map_err(|e| format!("peer address: {e}"))?;
    let mac = match (
        peer.mac.as_ref().and_then(|m| m.get_ref().parse().ok()),
        neighbours,
    ) {
        (Some(mac), _) => mac,
        (None, Some(interface)) => neighbour_mac(name, interface, ip).map_err(|e| e.to_string())?,
        (None, None) => EthernetAddress::default(),
    };
    let endpoint = Endpoint {
        mac,
        ip,
        port: peer
            .port
            .as_ref()
            .map_or(node_port(config), |p| *p.get_ref()),
    };
    Ok((name.clone(), endpoint))
}

/// The endpoints of every configured peer (see [`peer_endpoint`]).
fn peer_endpoints(
    config: &Config,
    neighbours: Option<&str>,
) -> Result<Vec<(String, Endpoint)>, String> {
    config
        .peers
        .iter()
        .map(|peer| peer_endpoint(config, peer, neighbours))
        .collect()
}

/// The policy of `config` as (peer, service, label) triples. Without any
/// `[[policy]]` nothing is allowed: capabilities are granted, not assumed.
fn policy(config: &Config) -> Vec<(String, Service, String)> {
    let mut allowed = Vec::new();
    for rule in &config.policies {
        let peer = rule.peer.get_ref().clone();
        for (choice, labels) in [
            (ServiceChoice::Rpc, &rule.rpc),
            (ServiceChoice::Rom, &rule.rom),
            (ServiceChoice::Signal, &rule.signal),
        ] {
            for label in labels {
                allowed.push((peer.clone(), service(choice), label.get_ref().clone()));
            }
        }
    }
    allowed
}

/// Every configured peer's frame keys.
fn keys(config: &Config) -> Vec<(String, Option<FrameKeys>)> {
    let local = config.node.name.get_ref();
    config
        .peers
        .iter()
        .map(|peer| {
            let keys = peer
                .key
                .as_ref()
                .filter(|_| *peer.authenticate.get_ref())
                .and_then(|key| hex_key(key.get_ref()))
                .map(|key| FrameKeys::derive(&key, local, peer.name.get_ref()));
            (peer.name.get_ref().clone(), keys)
        })
        .collect()
}

fn encapsulation(config: &Config) -> Encapsulation {
    match config.node.encapsulation {
        EncapChoice::Udp => Encapsulation::Udp {
            port: node_port(config),
        },
        EncapChoice::Ethernet => Encapsulation::Ethernet {
            ethertype: config
                .node
                .ethertype
                .as_ref()
                .map_or(ETHERTYPE_RELAY, |e| *e.get_ref()),
        },
    }
}

/// Which of `queues` queues owns peer `peer` of node `local`: the same on
/// both sides of a pair with as many queues, so that on links that keep
/// the queue (veth) a peer's frames arrive where its state is.
pub fn owner(local: &str, peer: &str, queues: usize) -> usize {
    if queues <= 1 {
        return 0;
    }
    let (first, second) = if local <= peer {
        (local, peer)
    } else {
        (peer, local)
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(first.as_bytes());
    hasher.update(&[0]);
    hasher.update(second.as_bytes());
    let mut word = [0u8; 8];
    word.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    let n = u64::from_le_bytes(word) % u64::try_from(queues).unwrap_or(1);
    usize::try_from(n).unwrap_or(0)
}

/// Warns when `interface` has receive queues the daemon does not serve:
/// the XDP program passes relay frames that arrive there to the kernel,
/// which has no socket for them.
fn warn_uncovered(interface: &str, served: impl Iterator<Item = u32>) {
    let served: BTreeSet<u32> = served.collect();
    let Ok(entries) = std::fs::read_dir(format!("/sys/class/net/{interface}/queues")) else {
        return;
    };
    let uncovered: Vec<u32> = entries
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("rx-")?
                .parse()
                .ok()
        })
        .filter(|q| !served.contains(q))
        .collect();
    if !uncovered.is_empty() {
        eprintln!(
            "xrelay: WARNING: {interface} has receive queues {uncovered:?} that node.queues does \
             not list: relay frames the NIC steers there are not served (list them, or reduce \
             the channels with `ethtool -L {interface} combined N`)"
        );
    }
}

/// One datapath queue of the daemon.
pub struct Queue {
    /// The NIC queue (0 on UDP).
    pub queue: u32,
    /// Its datapath.
    pub runtime: Runtime,
}

/// The datapath's start: one runtime per queue, the transport's name, the
/// peers' endpoints and the queues' handoff group.
struct Started {
    queues: Vec<Queue>,
    transport: &'static str,
    peers: Vec<(String, Endpoint)>,
    handoff: Option<Handoff>,
}

/// Starts one datapath thread per configured queue on the configured
/// transport (several queues need AF_XDP; UDP runs one), each with the
/// peers it owns and their keys in force and a policy that allows nothing.
fn start_datapath(config: &Config) -> Result<Started, String> {
    let node = &config.node;
    let local = node.name.get_ref();
    let ip = node
        .address
        .get_ref()
        .parse()
        .map_err(|e| format!("node.address: {e}"))?;
    let port = node_port(config);
    let all_keys: Vec<(String, FrameKeys)> = keys(config)
        .into_iter()
        .filter_map(|(name, keys)| Some((name, keys?)))
        .collect();
    let queues: Vec<(u32, Option<usize>)> = if node.queues.is_empty() {
        vec![(0, None)]
    } else {
        node.queues
            .iter()
            .map(|q| (q.get_ref().queue, q.get_ref().core))
            .collect()
    };
    // The runtime of queue `index` of `count`, owning its share of `peers`.
    let runtime_config =
        |index: usize, count: usize, peers: &[(String, Endpoint)], handoff: Option<Handoff>| {
            let owned = |name: &String| owner(local, name, count) == index;
            let mut runtime =
                RuntimeConfig::new(peers.iter().filter(|(n, _)| owned(n)).cloned().collect());
            runtime.log_peers = true;
            runtime.deny_all = true;
            runtime.keys = all_keys.iter().filter(|(n, _)| owned(n)).cloned().collect();
            runtime.core = queues[index].1;
            runtime.handoff = handoff;
            runtime
        };
    let spawn_udp = || {
        let peers = peer_endpoints(config, None)?;
        let runtime = Runtime::spawn(
            "xrelay-datapath",
            runtime_config(0, 1, &peers, None),
            move || UdpTransport::bind(SocketAddrV4::new(ip, port), UdpConfig::default()),
        )
        .map_err(|e| e.to_string())?;
        Ok::<_, String>(Started {
            queues: vec![Queue { queue: 0, runtime }],
            transport: "udp",
            peers,
            handoff: None,
        })
    };
    let spawn_xdp = |interface: &str| {
        let peers = peer_endpoints(config, Some(interface))?;
        warn_uncovered(interface, queues.iter().map(|q| q.0));
        let encap = encapsulation(config);
        let attach = match node.xdp_mode.get_ref() {
            ModeChoice::Native => AttachMode::Native,
            ModeChoice::Generic => AttachMode::Generic,
            _ => AttachMode::Auto,
        };
        let served: Vec<u32> = queues.iter().map(|q| q.0).collect();
        let program =
            XdpProgram::attach_for(interface, attach, encap, &served).map_err(|e| e.to_string())?;
        let program = Arc::new(Mutex::new(program));
        let group = Handoff::group(queues.len());
        for (name, endpoint) in &peers {
            group[0].assign(endpoint, owner(local, name, queues.len()));
        }
        let mut started = Vec::new();
        for (index, handoff) in group.iter().enumerate() {
            let xdp = XdpConfig {
                queue: queues[index].0,
                encap,
                attach,
                bind: match node.bind_mode.get_ref() {
                    ModeChoice::Zerocopy => BindMode::ZeroCopy,
                    ModeChoice::Copy => BindMode::Copy,
                    _ => BindMode::Auto,
                },
                ..XdpConfig::new(interface, ip)
            };
            let program = Arc::clone(&program);
            let handoff = (queues.len() > 1).then(|| handoff.clone());
            let config = runtime_config(index, queues.len(), &peers, handoff);
            let queue = queues[index].0;
            let name = format!("xrelay-q{queue}");
            let runtime = Runtime::spawn(&name, config, move || {
                let transport = XdpTransport::with_program(xdp, program)?;
                let (attach, bind) = transport.modes();
                eprintln!("xrelay: AF_XDP queue {queue}: {attach:?} XDP, {bind:?} bind");
                Ok::<_, TransportError>(transport)
            })
            .map_err(|e| e.to_string())?;
            started.push(Queue {
                queue: queues[index].0,
                runtime,
            });
        }
        Ok::<_, String>(Started {
            queues: started,
            transport: "xdp",
            peers,
            handoff: group.into_iter().next(),
        })
    };
    let interface = node.interface.as_ref().map(|i| i.get_ref().as_str());
    match (node.transport, interface) {
        (TransportChoice::Udp, _) | (TransportChoice::Auto, None) => spawn_udp(),
        (TransportChoice::Xdp, Some(interface)) => spawn_xdp(interface),
        (TransportChoice::Xdp, None) => Err("transport \"xdp\" needs node.interface".into()),
        (TransportChoice::Auto, Some(interface)) => spawn_xdp(interface).or_else(|error| {
            eprintln!("xrelay: AF_XDP is not available here ({error}); using udp (one queue)");
            spawn_udp()
        }),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Holders only swap whole values in; a panic cannot leave them torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters of the control plane itself.
#[derive(Debug, Default)]
pub struct ControlCounters {
    /// Operator requests served.
    pub requests: AtomicU64,
    /// Local session requests no route matched (refused).
    pub no_route: AtomicU64,
    /// Reloads applied.
    pub reloads: AtomicU64,
    /// Reloads refused (invalid configuration).
    pub reloads_refused: AtomicU64,
}

/// What the running datapath holds. It can be more than the configuration
/// in effect: removed exports and peers stay registered until a restart.
struct Registered {
    /// The `[node]` section the datapath was started with.
    node: NodeSection,
    /// Peers by name.
    peers: BTreeMap<String, Endpoint>,
    /// Exports, with the ROM file last published from.
    exports: BTreeMap<(ServiceChoice, String), Option<String>>,
}

/// A key-value store shared by the queues of a daemon: a peer's calls go
/// to the queue that owns it, and every peer sees the same store.
struct SharedStore(Arc<Mutex<MemoryStore>>);

impl KvStore for SharedStore {
    fn get(&mut self, key: String) -> Result<Vec<u8>, KvError> {
        lock(&self.0).get(key)
    }
    fn put(&mut self, key: String, value: Vec<u8>) -> Result<Option<Vec<u8>>, KvError> {
        lock(&self.0).put(key, value)
    }
    fn delete(&mut self, key: String) -> Result<(), KvError> {
        lock(&self.0).delete(key)
    }
    fn stats(&self) -> StoreStats {
        lock(&self.0).stats()
    }
}

/// A running node and its control state.
pub struct Daemon {
    path: PathBuf,
    /// One datapath per queue; each peer is owned by one of them.
    queues: Vec<Queue>,
    /// The queues' handoff group (several queues only).
    handoff: Option<Handoff>,
    transport: &'static str,
    name: String,
    /// The routes in effect, swapped whole by a reload.
    routes: Mutex<Arc<Routes>>,
    /// Held for a whole reload (SIGHUP and `xrelay reload` may come at
    /// once), with what the datapath holds.
    registered: Mutex<Registered>,
    /// Each module's publisher on every queue.
    roms: Mutex<HashMap<String, Arc<Vec<RomPublisher>>>>,
    /// Held while a version goes to every queue.
    publishing: Mutex<()>,
    signals: Mutex<HashMap<String, SignalHandler>>,
    /// The control plane's counters.
    pub counters: ControlCounters,
}

impl Daemon {
    /// Starts the datapath for the checked configuration read from
    /// `path` (keys in force and nothing allowed from the first frame),
    /// serves its exports, then applies the policy.
    pub fn start(path: &Path, config: Config) -> Result<Daemon, String> {
        let started = start_datapath(&config)?;
        let daemon = Daemon {
            path: path.to_owned(),
            queues: started.queues,
            handoff: started.handoff,
            transport: started.transport,
            name: config.node.name.get_ref().clone(),
            routes: Mutex::new(Arc::new(Routes::new(&config))),
            registered: Mutex::new(Registered {
                node: config.node.clone(),
                peers: started.peers.into_iter().collect(),
                exports: BTreeMap::new(),
            }),
            roms: Mutex::new(HashMap::new()),
            publishing: Mutex::new(()),
            signals: Mutex::new(HashMap::new()),
            counters: ControlCounters::default(),
        };
        let mut registered = lock(&daemon.registered);
        daemon
            .apply(&mut registered, &config)
            .map_err(|errors| errors.join("; "))?;
        drop(registered);
        Ok(daemon)
    }

    /// The queues and their datapaths.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// Every queue's report, with its NIC queue (or why it has none: its
    /// datapath stopped).
    pub fn reports(&self) -> Vec<(u32, Result<Report, String>)> {
        self.queues
            .iter()
            .map(|q| (q.queue, q.runtime.report().map_err(|e| e.to_string())))
            .collect()
    }

    /// The queue that owns peer `peer`.
    fn owner(&self, peer: &str) -> usize {
        owner(&self.name, peer, self.queues.len())
    }

    /// The datapath that owns peer `peer`: where sessions on it are opened.
    pub fn runtime_for(&self, peer: &str) -> &Runtime {
        &self.queues[self.owner(peer)].runtime
    }

    /// `xdp` or `udp`.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the datapath to `new` as far as it can without a restart;
    /// returns notes on what waits for one. Nothing is published and no
    /// policy, key or route changes unless every step before succeeded;
    /// exports registered on the way are recorded, and stay closed to
    /// peers until a policy grants them.
    fn apply(&self, registered: &mut Registered, new: &Config) -> Result<Vec<String>, Vec<String>> {
        let mut notes = Vec::new();
        if new.node != registered.node {
            notes.push("[node] changed: takes effect at the next start".to_owned());
        }
        // Peers: new ones are added; a changed address waits for a restart.
        let neighbours = (self.transport == "xdp")
            .then(|| {
                registered
                    .node
                    .interface
                    .as_ref()
                    .map(|i| i.get_ref().as_str())
            })
            .flatten();
        let mut add_peers = Vec::new();
        let mut usable = BTreeSet::new();
        for peer in &new.peers {
            let name = peer.name.get_ref();
            if let Some(endpoint) = registered.peers.get(name) {
                usable.insert(name.clone());
                let (_, wanted) = peer_endpoint(new, peer, None).map_err(|e| vec![e])?;
                if (wanted.ip, wanted.port) != (endpoint.ip, endpoint.port)
                    || peer
                        .mac
                        .as_ref()
                        .is_some_and(|_| wanted.mac != endpoint.mac)
                {
                    notes.push(format!(
                        "peer {name:?}: its new address takes effect at the next start"
                    ));
                }
                continue;
            }
            let (_, endpoint) = peer_endpoint(new, peer, neighbours).map_err(|e| vec![e])?;
            let holder = registered
                .peers
                .iter()
                .find(|(_, e)| e.same_address(&endpoint));
            if let Some((holder, _)) = holder {
                notes.push(format!(
                    "peer {name:?}: its address is {holder:?}'s in the running datapath; \
                     takes effect at the next start (granted nothing until then)"
                ));
                continue;
            }
            notes.push(format!("peer {name:?} added"));
            usable.insert(name.clone());
            add_peers.push((name.clone(), endpoint));
        }
        for gone in registered
            .peers
            .keys()
            .filter(|r| !new.peers.iter().any(|p| p.name.get_ref() == *r))
        {
            notes.push(format!(
                "peer {gone:?} removed: granted nothing; forgotten at the next start"
            ));
        }

        // ROM files are read before anything changes.
        let mut contents = Vec::new();
        for item in &new.export.rom {
            let label = item.label.get_ref();
            let file = item.file.as_ref().map(|f| f.get_ref().clone());
            let known = registered.exports.get(&(ServiceChoice::Rom, label.clone()));
            if let Some(path) = file.as_ref().filter(|_| known != Some(&file)) {
                let content = std::fs::read(path).map_err(|e| vec![format!("{path}: {e}")])?;
                if content.len() as u64 > MAX_ROM_SIZE {
                    return Err(vec![format!(
                        "{path}: {} bytes is more than a ROM module holds ({MAX_ROM_SIZE})",
                        content.len()
                    )]);
                }
                contents.push((label.clone(), file.clone(), content));
            }
        }

        // New exports: registered now, granted by the policy below.
        let failed = |label: &str, e: RuntimeError| vec![format!("exporting {label:?}: {e}")];
        let runtimes = || self.queues.iter().map(|q| &q.runtime);
        for (service, items) in [
            (ServiceChoice::Rpc, &new.export.rpc),
            (ServiceChoice::Rom, &new.export.rom),
            (ServiceChoice::Signal, &new.export.signal),
        ] {
            for item in items {
                let label = item.label.get_ref();
                let key = (service, label.clone());
                if registered.exports.contains_key(&key) {
                    continue;
                }
                match service {
                    // `xrelay check` admits only interfaces this binary serves.
                    ServiceChoice::Rpc => {
                        let store = Arc::new(Mutex::new(MemoryStore::new(100_000)));
                        for runtime in runtimes() {
                            let server = KvStoreServer(SharedStore(Arc::clone(&store)));
                            runtime
                                .export_rpc(label, server)
                                .map_err(|e| failed(label, e))?;
                        }
                    }
                    ServiceChoice::Rom => {
                        let publishers = runtimes()
                            .map(|runtime| runtime.export_rom(label))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| failed(label, e))?;
                        lock(&self.roms).insert(label.clone(), Arc::new(publishers));
                    }
                    ServiceChoice::Signal => {
                        let first = &self.queues[0].runtime;
                        let handler = first.export_signal(label).map_err(|e| failed(label, e))?;
                        for runtime in runtimes().skip(1) {
                            runtime
                                .export_signal_to(label, &handler)
                                .map_err(|e| failed(label, e))?;
                        }
                        lock(&self.signals).insert(label.clone(), handler);
                    }
                }
                registered.exports.insert(key, None);
            }
        }
        for ((service, label), _) in registered.exports.iter() {
            let items = match service {
                ServiceChoice::Rpc => &new.export.rpc,
                ServiceChoice::Rom => &new.export.rom,
                ServiceChoice::Signal => &new.export.signal,
            };
            if !items.iter().any(|i| i.label.get_ref() == label) {
                notes.push(format!(
                    "{service:?} export {label:?} removed: closed to every peer; \
                     registered until the next start"
                ));
            }
        }

        // Keys and policy in one step between two batches of each queue's
        // datapath, each for the peers it owns.
        for (name, endpoint) in &add_peers {
            if let Some(handoff) = &self.handoff {
                handoff.assign(endpoint, self.owner(name));
            }
        }
        let mut new_keys: Vec<_> = keys(new)
            .into_iter()
            .filter(|(name, _)| usable.contains(name))
            .collect();
        let new_policy: Vec<_> = policy(new)
            .into_iter()
            .filter(|(peer, _, _)| usable.contains(peer))
            .collect();
        let mut changes = Vec::new();
        for index in 0..self.queues.len() {
            let owned = |name: &String| self.owner(name) == index;
            let (mine, rest) = new_keys.into_iter().partition(|(name, _)| owned(name));
            new_keys = rest;
            changes.push(Reconfiguration {
                add_peers: add_peers
                    .iter()
                    .filter(|(n, _)| owned(n))
                    .cloned()
                    .collect(),
                keys: mine,
                policy: Some(
                    new_policy
                        .iter()
                        .filter(|(p, _, _)| owned(p))
                        .cloned()
                        .collect(),
                ),
            });
        }
        // Every queue checks its part before any applies.
        for (queue, change) in self.queues.iter().zip(&changes) {
            queue
                .runtime
                .check_reconfigure(change)
                .map_err(|e| vec![format!("queue {}: {e}", queue.queue)])?;
        }
        for (queue, change) in self.queues.iter().zip(changes) {
            queue
                .runtime
                .reconfigure(change)
                .map_err(|e| vec![format!("queue {}: {e}", queue.queue)])?;
        }
        registered.peers.extend(add_peers);
        for (label, file, content) in contents {
            self.publish(&label, content).map_err(|e| vec![e])?;
            registered.exports.insert((ServiceChoice::Rom, label), file);
        }
        *lock(&self.routes) = Arc::new(Routes::new(new));
        Ok(notes)
    }

    /// Re-reads the configuration file. On success returns what was
    /// applied and what waits for a restart; an invalid file changes
    /// nothing and its errors are returned.
    pub fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let mut registered = lock(&self.registered);
        let result = config::load(&self.path)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
            .and_then(|checked| self.apply(&mut registered, &checked.config));
        match result {
            Ok(mut notes) => {
                notes.push("keys, policy and routes applied".to_owned());
                self.counters.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(notes)
            }
            Err(errors) => {
                self.counters
                    .reloads_refused
                    .fetch_add(1, Ordering::Relaxed);
                Err(errors)
            }
        }
    }

    /// Where a local request for `service` labelled `label` goes; a
    /// request no route matches is counted and refused.
    pub fn route(&self, service: ServiceChoice, label: &str) -> Result<Target, String> {
        let routes = Arc::clone(&lock(&self.routes));
        routes.resolve(service, label).ok_or_else(|| {
            self.counters.no_route.fetch_add(1, Ordering::Relaxed);
            format!(
                "no route for {} {label:?} (see [[route]] in {})",
                match service {
                    ServiceChoice::Rpc => "rpc",
                    ServiceChoice::Rom => "rom",
                    ServiceChoice::Signal => "signal",
                },
                self.path.display()
            )
        })
    }

    /// Publishes `content` as the newest version of exported ROM module
    /// `name`; returns the version.
    pub fn publish(&self, name: &str, content: Vec<u8>) -> Result<u64, String> {
        if content.len() as u64 > MAX_ROM_SIZE {
            return Err(format!(
                "{} bytes is more than a ROM module holds ({MAX_ROM_SIZE})",
                content.len()
            ));
        }
        let publishers = lock(&self.roms)
            .get(name)
            .cloned()
            .ok_or_else(|| format!("this node exports no ROM module {name:?}"))?;
        // Every queue serves the module to the peers it owns. One publish
        // at a time across all of them, so that every queue has the same
        // content under the same version.
        let _in_order = lock(&self.publishing);
        let hash = *blake3::hash(&content).as_bytes();
        let (last, others) = publishers.split_last().ok_or("no queue")?;
        for publisher in others {
            publisher
                .publish_hashed(content.clone(), hash)
                .map_err(|e| e.to_string())?;
        }
        last.publish_hashed(content, hash)
            .map_err(|e| e.to_string())
    }

    /// The handler of exported signal context `name`.
    pub fn signal_handler(&self, name: &str) -> Result<SignalHandler, String> {
        lock(&self.signals)
            .get(name)
            .cloned()
            .ok_or_else(|| format!("this node exports no signal context {name:?}"))
    }

    /// Stops the datapath; returns whether it stopped cleanly.
    pub fn shutdown(self) -> Result<(), String> {
        // The publishers hold the runtimes' command channels, not the runtimes.
        drop(self.roms);
        let mut result = Ok(());
        for queue in self.queues {
            if let Err(e) = queue.runtime.shutdown() {
                result = Err(format!("queue {}: {e}", queue.queue));
            }
        }
        result
    }
}
