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

use std::collections::HashMap;
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

use crate::config::{self, Config, EncapChoice, ModeChoice, ServiceChoice, TransportChoice};
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

/// The endpoints of the configured peers. On AF_XDP (`neighbours` names
/// the interface) a peer without a configured MAC gets the one in the
/// kernel's neighbour table; UDP needs none.
fn peer_endpoints(
    config: &Config,
    neighbours: Option<&str>,
) -> Result<Vec<(String, Endpoint)>, String> {
    let port = node_port(config);
    config
        .peers
        .iter()
        .map(|peer| {
            let name = peer.name.get_ref();
            let ip = peer
                .address
                .get_ref()
                .parse()
                .map_err(|e| format!("peer address: {e}"))?;
            let mac = match (peer.mac.as_ref().and_then(|m| mac(m.get_ref())), neighbours) {
                (Some(mac), _) => mac,
                (None, Some(interface)) => {
                    neighbour_mac(name, interface, ip).map_err(|e| e.to_string())?
                }
                (None, None) => EthernetAddress::default(),
            };
            let endpoint = Endpoint {
                mac,
                ip,
                port: peer.port.as_ref().map_or(port, |p| *p.get_ref()),
            };
            Ok((name.clone(), endpoint))
        })
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

/// Starts the datapath on the configured transport; returns it and the
/// transport's name.
fn start_datapath(config: &Config) -> Result<(Runtime, &'static str), String> {
    let node = &config.node;
    let ip = node
        .address
        .get_ref()
        .parse()
        .map_err(|e| format!("node.address: {e}"))?;
    let port = node_port(config);
    let mut runtime_config = RuntimeConfig::new(peer_endpoints(config, None)?);
    runtime_config.log_peers = true;
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
    let spawn_udp = |config: RuntimeConfig| {
        Runtime::spawn("xrelay-datapath", config, move || {
            UdpTransport::bind(SocketAddrV4::new(ip, port), UdpConfig::default())
        })
    };
    let spawn_xdp = |mut runtime: RuntimeConfig, xdp: XdpConfig| {
        runtime.peers =
            peer_endpoints(config, Some(&xdp.interface)).map_err(RuntimeError::Transport)?;
        Runtime::spawn("xrelay-datapath", runtime, move || {
            let transport = XdpTransport::new(xdp)?;
            let (attach, bind) = transport.modes();
            eprintln!("xrelay: AF_XDP: {attach:?} XDP, {bind:?} bind");
            Ok::<_, TransportError>(transport)
        })
    };
    let failed = |e: RuntimeError| e.to_string();
    match (node.transport, xdp) {
        (TransportChoice::Udp, _) | (TransportChoice::Auto, None) => {
            Ok((spawn_udp(runtime_config).map_err(failed)?, "udp"))
        }
        (TransportChoice::Xdp, Some(xdp)) => {
            Ok((spawn_xdp(runtime_config, xdp).map_err(failed)?, "xdp"))
        }
        (TransportChoice::Xdp, None) => Err("transport \"xdp\" needs node.interface".into()),
        (TransportChoice::Auto, Some(xdp)) => match spawn_xdp(runtime_config.clone(), xdp) {
            Ok(runtime) => Ok((runtime, "xdp")),
            Err(error) => {
                eprintln!("xrelay: AF_XDP is not available here ({error}); using udp");
                Ok((spawn_udp(runtime_config).map_err(failed)?, "udp"))
            }
        },
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Holders only swap whole values in; a panic cannot leave them torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The configuration in effect.
struct Snapshot {
    config: Config,
    routes: Arc<Routes>,
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

/// A running node and its control state.
pub struct Daemon {
    path: PathBuf,
    runtime: Runtime,
    transport: &'static str,
    name: String,
    snapshot: Mutex<Snapshot>,
    /// Held for a whole reload: SIGHUP and `xrelay reload` may come at once.
    reloading: Mutex<()>,
    roms: Mutex<HashMap<String, Arc<RomPublisher>>>,
    signals: Mutex<HashMap<String, SignalHandler>>,
    /// The control plane's counters.
    pub counters: ControlCounters,
}

impl Daemon {
    /// Starts the datapath for the checked configuration read from
    /// `path`, serves its exports and applies keys and policy.
    pub fn start(path: &Path, config: Config) -> Result<Daemon, String> {
        let (runtime, transport) = start_datapath(&config)?;
        let daemon = Daemon {
            path: path.to_owned(),
            runtime,
            transport,
            name: config.node.name.get_ref().clone(),
            snapshot: Mutex::new(Snapshot {
                routes: Arc::new(Routes::new(&config)),
                config: config.clone(),
            }),
            reloading: Mutex::new(()),
            roms: Mutex::new(HashMap::new()),
            signals: Mutex::new(HashMap::new()),
            counters: ControlCounters::default(),
        };
        daemon.export_new(&config, None)?;
        daemon
            .runtime
            .reconfigure(Reconfiguration {
                add_peers: Vec::new(),
                keys: keys(&config),
                policy: Some(policy(&config)),
            })
            .map_err(|e| e.to_string())?;
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

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the configuration in effect.
    pub fn config(&self) -> Config {
        lock(&self.snapshot).config.clone()
    }

    /// Serves the exports of `new` that `old` did not have (all of them
    /// without `old`); a ROM module whose `file` changed is published
    /// again from it.
    fn export_new(&self, new: &Config, old: Option<&Config>) -> Result<(), String> {
        let had = |items: &dyn Fn(&Config) -> &Vec<config::ExportItem>, label: &str| {
            old.and_then(|old| {
                items(old)
                    .iter()
                    .find(|i| i.label.get_ref() == label)
                    .cloned()
            })
        };
        let failed = |label: &str, e: RuntimeError| format!("exporting {label:?}: {e}");
        for item in &new.export.rpc {
            let label = item.label.get_ref();
            if had(&|c| &c.export.rpc, label).is_none() {
                // `xrelay check` admits only interfaces this binary serves.
                self.runtime
                    .export_rpc(label, KvStoreServer(MemoryStore::new(100_000)))
                    .map_err(|e| failed(label, e))?;
            }
        }
        for item in &new.export.rom {
            let label = item.label.get_ref();
            let before = had(&|c| &c.export.rom, label);
            if before.is_none() {
                let publisher = self
                    .runtime
                    .export_rom(label)
                    .map_err(|e| failed(label, e))?;
                lock(&self.roms).insert(label.clone(), Arc::new(publisher));
            }
            let file_changed = before.is_none_or(|b| b.file != item.file);
            if let Some(file) = item.file.as_ref().filter(|_| file_changed) {
                let file = file.get_ref();
                let content = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
                self.publish(label, content)?;
            }
        }
        for item in &new.export.signal {
            let label = item.label.get_ref();
            if had(&|c| &c.export.signal, label).is_none() {
                let handler = self
                    .runtime
                    .export_signal(label)
                    .map_err(|e| failed(label, e))?;
                lock(&self.signals).insert(label.clone(), handler);
            }
        }
        Ok(())
    }

    /// Re-reads the configuration file. On success returns what was
    /// applied and what waits for a restart; an invalid file changes
    /// nothing and its errors are returned.
    pub fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let _one_at_a_time = lock(&self.reloading);
        let refused = |errors: Vec<String>| {
            self.counters
                .reloads_refused
                .fetch_add(1, Ordering::Relaxed);
            Err(errors)
        };
        let new = match config::load(&self.path) {
            Ok(checked) => checked.config,
            Err(errors) => return refused(errors.iter().map(ToString::to_string).collect()),
        };
        let old = self.config();
        let mut notes = Vec::new();
        if new.node != old.node {
            notes.push("[node] changed: takes effect at the next start".to_owned());
        }
        let neighbours = (self.transport == "xdp")
            .then(|| old.node.interface.as_ref().map(|i| i.get_ref().as_str()))
            .flatten();
        let endpoints = match peer_endpoints(&new, neighbours) {
            Ok(endpoints) => endpoints,
            Err(error) => return refused(vec![error]),
        };
        let mut add_peers = Vec::new();
        for ((name, endpoint), section) in endpoints.into_iter().zip(&new.peers) {
            match old.peers.iter().find(|p| p.name.get_ref() == &name) {
                None => {
                    notes.push(format!("peer {name:?} added"));
                    add_peers.push((name, endpoint));
                }
                Some(before)
                    if before.address != section.address
                        || before.port != section.port
                        || before.mac != section.mac =>
                {
                    notes.push(format!(
                        "peer {name:?}: new address takes effect at the next start"
                    ));
                }
                Some(_) => {}
            }
        }
        for gone in old
            .peers
            .iter()
            .filter(|p| !new.peers.iter().any(|n| n.name == p.name))
        {
            notes.push(format!(
                "peer {:?} removed: the policy grants it nothing; forgotten at the next start",
                gone.name.get_ref()
            ));
        }
        // Exports first: the new policy may grant them.
        if let Err(error) = self.export_new(&new, Some(&old)) {
            return refused(vec![error]);
        }
        for (kind, before, after) in [
            ("rpc", &old.export.rpc, &new.export.rpc),
            ("rom", &old.export.rom, &new.export.rom),
            ("signal", &old.export.signal, &new.export.signal),
        ] {
            for gone in before
                .iter()
                .filter(|b| !after.iter().any(|a| a.label == b.label))
            {
                notes.push(format!(
                    "{kind} export {:?} removed: closed to every peer by the policy; served until the next start",
                    gone.label.get_ref()
                ));
            }
        }
        let change = Reconfiguration {
            add_peers,
            keys: keys(&new),
            policy: Some(policy(&new)),
        };
        if let Err(error) = self.runtime.reconfigure(change) {
            return refused(vec![error.to_string()]);
        }
        notes.push("keys, policy and routes applied".to_owned());
        *lock(&self.snapshot) = Snapshot {
            routes: Arc::new(Routes::new(&new)),
            config: new,
        };
        self.counters.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(notes)
    }

    /// Where a local request for `service` labelled `label` goes; a
    /// request no route matches is counted and refused.
    pub fn route(&self, service: ServiceChoice, label: &str) -> Result<Target, String> {
        let routes = Arc::clone(&lock(&self.snapshot).routes);
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
