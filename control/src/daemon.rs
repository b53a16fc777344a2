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
use xrelay_datapath::example::{KvStoreServer, MemoryStore};
use xrelay_datapath::runtime::{
    Reconfiguration, RomPublisher, Runtime, RuntimeConfig, RuntimeError, SignalHandler,
};
use xrelay_datapath::transport::udp::{UdpConfig, UdpTransport};
use xrelay_datapath::transport::xdp::{
    neighbour_mac, AttachMode, BindMode, XdpConfig, XdpTransport,
};
use xrelay_datapath::transport::TransportError;
use xrelay_datapath::wire::encap::{Encapsulation, Endpoint, DEFAULT_UDP_PORT};
use xrelay_datapath::wire::ethernet::{EthernetAddress, ETHERTYPE_RELAY};
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

fn hex_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

fn mac(text: &str) -> Option<EthernetAddress> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(EthernetAddress(bytes))
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
    let mac = match (peer.mac.as_ref().and_then(|m| mac(m.get_ref())), neighbours) {
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

/// The datapath's start: the runtime, the transport's name and the peers'
/// endpoints.
type Started = (Runtime, &'static str, Vec<(String, Endpoint)>);

/// Starts the datapath on the configured transport, with the peers' keys
/// in force and a policy that allows nothing.
fn start_datapath(config: &Config) -> Result<Started, String> {
    let node = &config.node;
    let ip = node
        .address
        .get_ref()
        .parse()
        .map_err(|e| format!("node.address: {e}"))?;
    let port = node_port(config);
    let mut runtime_config = RuntimeConfig::new(peer_endpoints(config, None)?);
    runtime_config.log_peers = true;
    runtime_config.deny_all = true;
    runtime_config.keys = keys(config)
        .into_iter()
        .filter_map(|(name, keys)| Some((name, keys?)))
        .collect();
    runtime_config.core = node.queues.first().and_then(|q| q.get_ref().core);
    let queue = node.queues.first().map_or(0, |q| q.get_ref().queue);
    let xdp = node.interface.as_ref().map(|interface| XdpConfig {
        queue,
        encap: encapsulation(config),
        attach: match node.xdp_mode.get_ref() {
            ModeChoice::Native => AttachMode::Native,
            ModeChoice::Generic => AttachMode::Generic,
            _ => AttachMode::Auto,
        },
        bind: match node.bind_mode.get_ref() {
            ModeChoice::Zerocopy => BindMode::ZeroCopy,
            ModeChoice::Copy => BindMode::Copy,
            _ => BindMode::Auto,
        },
        ..XdpConfig::new(interface.get_ref(), ip)
    });
    let spawn_udp = |runtime: RuntimeConfig| {
        let peers = runtime.peers.clone();
        Runtime::spawn("xrelay-datapath", runtime, move || {
            UdpTransport::bind(SocketAddrV4::new(ip, port), UdpConfig::default())
        })
        .map(|r| (r, "udp", peers))
        .map_err(|e| e.to_string())
    };
    let spawn_xdp = |mut runtime: RuntimeConfig, xdp: XdpConfig| {
        runtime.peers = peer_endpoints(config, Some(&xdp.interface))?;
        let peers = runtime.peers.clone();
        Runtime::spawn("xrelay-datapath", runtime, move || {
            let transport = XdpTransport::new(xdp)?;
            let (attach, bind) = transport.modes();
            eprintln!("xrelay: AF_XDP: {attach:?} XDP, {bind:?} bind");
            Ok::<_, TransportError>(transport)
        })
        .map(|r| (r, "xdp", peers))
        .map_err(|e| e.to_string())
    };
    match (node.transport, xdp) {
        (TransportChoice::Udp, _) | (TransportChoice::Auto, None) => spawn_udp(runtime_config),
        (TransportChoice::Xdp, Some(xdp)) => spawn_xdp(runtime_config, xdp),
        (TransportChoice::Xdp, None) => Err("transport \"xdp\" needs node.interface".into()),
        (TransportChoice::Auto, Some(xdp)) => match spawn_xdp(runtime_config.clone(), xdp) {
            Ok(started) => Ok(started),
            Err(error) => {
                eprintln!("xrelay: AF_XDP is not available here ({error}); using udp");
                spawn_udp(runtime_config)
            }
        },
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

/// A running node and its control state.
pub struct Daemon {
    path: PathBuf,
    runtime: Runtime,
    transport: &'static str,
    name: String,
    /// The queue the datapath serves.
    queue: u32,
    /// The routes in effect, swapped whole by a reload.
    routes: Mutex<Arc<Routes>>,
    /// Held for a whole reload (SIGHUP and `xrelay reload` may come at
    /// once), with what the datapath holds.
    registered: Mutex<Registered>,
    roms: Mutex<HashMap<String, Arc<RomPublisher>>>,
    signals: Mutex<HashMap<String, SignalHandler>>,
    /// The control plane's counters.
    pub counters: ControlCounters,
}

impl Daemon {
    /// Starts the datapath for the checked configuration read from
    /// `path` (keys in force and nothing allowed from the first frame),
    /// serves its exports, then applies the policy.
    pub fn start(path: &Path, config: Config) -> Result<Daemon, String> {
        let (runtime, transport, peers) = start_datapath(&config)?;
        let daemon = Daemon {
            path: path.to_owned(),
            runtime,
            transport,
            name: config.node.name.get_ref().clone(),
            queue: config.node.queues.first().map_or(0, |q| q.get_ref().queue),
            routes: Mutex::new(Arc::new(Routes::new(&config))),
            registered: Mutex::new(Registered {
                node: config.node.clone(),
                peers: peers.into_iter().collect(),
                exports: BTreeMap::new(),
            }),
            roms: Mutex::new(HashMap::new()),
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

    /// The datapath.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// `xdp` or `udp`.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NIC queue the datapath serves.
    pub fn queue(&self) -> u32 {
        self.queue
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
                .find(|(_, e)| (e.ip, e.port) == (endpoint.ip, endpoint.port));
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
                contents.push((label.clone(), file.clone(), content));
            }
        }

        // New exports: registered now, granted by the policy below.
        let failed = |label: &str, e: RuntimeError| vec![format!("exporting {label:?}: {e}")];
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
                    ServiceChoice::Rpc => self
                        .runtime
                        .export_rpc(label, KvStoreServer(MemoryStore::new(100_000)))
                        .map_err(|e| failed(label, e))?,
                    ServiceChoice::Rom => {
                        let publisher = self
                            .runtime
                            .export_rom(label)
                            .map_err(|e| failed(label, e))?;
                        lock(&self.roms).insert(label.clone(), Arc::new(publisher));
                    }
                    ServiceChoice::Signal => {
                        let handler = self
                            .runtime
                            .export_signal(label)
                            .map_err(|e| failed(label, e))?;
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

        // Keys and policy in one step between two datapath batches.
        let change = Reconfiguration {
            add_peers: add_peers.clone(),
            keys: keys(new)
                .into_iter()
                .filter(|(name, _)| usable.contains(name))
                .collect(),
            policy: Some(
                policy(new)
                    .into_iter()
                    .filter(|(peer, _, _)| usable.contains(peer))
                    .collect(),
            ),
        };
        self.runtime
            .reconfigure(change)
            .map_err(|e| vec![e.to_string()])?;
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
        let publisher = lock(&self.roms)
            .get(name)
            .cloned()
            .ok_or_else(|| format!("this node exports no ROM module {name:?}"))?;
        publisher.publish(content).map_err(|e| e.to_string())
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
        // The publishers hold the runtime's command channel, not the runtime.
        drop(self.roms);
        self.runtime
            .shutdown()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
