//! `xrelay run CONFIG`: the daemon. Checks the configuration (nothing
//! starts on an error: exit 2), starts the datapath thread on the
//! configured transport, serves the exports, applies the peers' keys and
//! the policy, and runs until SIGINT or SIGTERM. SIGHUP reloads: a valid
//! new configuration's policy and keys are applied (sessions it no longer
//! allows are revoked, the others go on); an invalid one is reported and
//! the old one keeps running.
//!
//! With `node.control_socket` set, the daemon answers `xrelay stats` and
//! `xrelay reload` there ([`crate::operator`]). Still to come (issue 5):
//! the ROM, signal and RPC commands, and changes of peers, exports and
//! transport on reload.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};
use xrelay_datapath::auth::FrameKeys;
use xrelay_datapath::example::{KvStoreServer, MemoryStore};
use xrelay_datapath::runtime::{Runtime, RuntimeConfig, RuntimeError};
use xrelay_datapath::transport::udp::{UdpConfig, UdpTransport};
use xrelay_datapath::transport::xdp::{AttachMode, BindMode, XdpConfig, XdpTransport};
use xrelay_datapath::transport::TransportError;
use xrelay_datapath::wire::encap::{Encapsulation, Endpoint, DEFAULT_UDP_PORT};
use xrelay_datapath::wire::ethernet::EthernetAddress;
use xrelay_datapath::wire::session::Service;

use crate::config::{self, Config, EncapChoice, ModeChoice, ServiceChoice, TransportChoice};
use crate::operator::ControlSocket;

/// Options of `xrelay run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    config: PathBuf,
}

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

fn encapsulation(config: &Config) -> Encapsulation {
    match config.node.encapsulation {
        EncapChoice::Udp => Encapsulation::Udp {
            port: config
                .node
                .port
                .as_ref()
                .map_or(DEFAULT_UDP_PORT, |p| *p.get_ref()),
        },
        EncapChoice::Ethernet => Encapsulation::Ethernet {
            ethertype: config
                .node
                .ethertype
                .as_ref()
                .map_or(xrelay_datapath::wire::ethernet::ETHERTYPE_RELAY, |e| {
                    *e.get_ref()
                }),
        },
    }
}

/// Starts the datapath on the configured transport.
fn start(config: &Config) -> Result<(Runtime, &'static str), String> {
    let node = &config.node;
    let ip = node
        .address
        .get_ref()
        .parse()
        .map_err(|e| format!("node.address: {e}"))?;
    let port = node
        .port
        .as_ref()
        .map_or(DEFAULT_UDP_PORT, |p| *p.get_ref());
    let mut peers = Vec::new();
    for peer in &config.peers {
        let endpoint = Endpoint {
            mac: peer
                .mac
                .as_ref()
                .and_then(|m| mac(m.get_ref()))
                .unwrap_or_default(),
            ip: peer
                .address
                .get_ref()
                .parse()
                .map_err(|e| format!("peer address: {e}"))?,
            port: peer.port.as_ref().map_or(port, |p| *p.get_ref()),
        };
        peers.push((peer.name.get_ref().clone(), endpoint));
    }
    let mut runtime_config = RuntimeConfig::new(peers);
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
    let spawn_xdp = |config: RuntimeConfig, xdp: XdpConfig| {
        Runtime::spawn("xrelay-datapath", config, move || {
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

/// Applies the keys and the policy of `config`.
fn apply(runtime: &Runtime, config: &Config) -> Result<(), String> {
    let local = config.node.name.get_ref();
    for peer in &config.peers {
        let keys = peer
            .key
            .as_ref()
            .filter(|_| *peer.authenticate.get_ref())
            .and_then(|key| hex_key(key.get_ref()))
            .map(|key| FrameKeys::derive(&key, local, peer.name.get_ref()));
        runtime
            .set_peer_keys(peer.name.get_ref(), keys)
            .map_err(|e| e.to_string())?;
    }
    runtime
        .set_policy(Some(policy(config)))
        .map_err(|e| e.to_string())
}

/// `xrelay run CONFIG`.
pub fn run(args: &RunArgs) -> ExitCode {
    let checked = match config::load(&args.config) {
        Ok(checked) => checked,
        Err(errors) => {
            for error in errors {
                eprintln!("{error}");
            }
            return ExitCode::from(2);
        }
    };
    for warning in &checked.warnings {
        eprintln!("{warning}");
    }
    // Signals are taken synchronously by this thread; block them before
    // any other thread starts so none of them gets one.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("xrelay: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let config = checked.config;
    let (runtime, transport) = match start(&config) {
        Ok(started) => started,
        Err(error) => {
            eprintln!("xrelay: starting the datapath: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = Arc::new(runtime);
    let exports = || -> Result<(), RuntimeError> {
        for item in &config.export.rpc {
            // `xrelay check` admits only interfaces this binary serves.
            runtime.export_rpc(
                item.label.get_ref(),
                KvStoreServer(MemoryStore::new(100_000)),
            )?;
        }
        for item in &config.export.rom {
            let publisher = runtime.export_rom(item.label.get_ref())?;
            if let Some(file) = &item.file {
                let content = std::fs::read(file)
                    .map_err(|e| RuntimeError::Transport(format!("{file}: {e}")))?;
                publisher.publish(content)?;
            }
            // The module stays exported for the node's lifetime.
            std::mem::forget(publisher);
        }
        for item in &config.export.signal {
            let _handler = runtime.export_signal(item.label.get_ref())?;
        }
        Ok(())
    };
    if let Err(error) = exports()
        .map_err(|e| e.to_string())
        .and_then(|()| apply(&runtime, &config))
    {
        eprintln!("xrelay: {error}");
        return ExitCode::FAILURE;
    }
    // `xrelay reload` over the control socket does what SIGHUP does.
    let control = match &config.node.control_socket {
        Some(path) => {
            let reload = || {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), Signal::SIGHUP);
            };
            match ControlSocket::start(Path::new(path), Arc::clone(&runtime), reload) {
                Ok(socket) => Some(socket),
                Err(error) => {
                    eprintln!("xrelay: control socket {path}: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    eprintln!(
        "xrelay: node {:?} running on {transport} at {} ({} peers, {} exports)",
        config.node.name.get_ref(),
        config.node.address.get_ref(),
        config.peers.len(),
        config.export.rpc.len() + config.export.rom.len() + config.export.signal.len()
    );
    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => match config::load(&args.config) {
                Ok(new) => match apply(&runtime, &new.config) {
                    Ok(()) => eprintln!(
                        "xrelay: reloaded {}: keys and policy applied",
                        args.config.display()
                    ),
                    Err(error) => eprintln!(
                        "xrelay: reload refused: {error}; the old configuration keeps running"
                    ),
                },
                Err(errors) => {
                    for error in errors {
                        eprintln!("xrelay: reload refused: {error}");
                    }
                    eprintln!("xrelay: the old configuration keeps running");
                }
            },
            Ok(signal) => {
                eprintln!("xrelay: {signal:?}: stopping");
                break;
            }
            Err(e) => {
                eprintln!("xrelay: waiting for signals: {e}");
                break;
            }
        }
    }
    drop(control);
    let Ok(runtime) = Arc::try_unwrap(runtime) else {
        eprintln!("xrelay: stopping: the datapath is still in use");
        return ExitCode::FAILURE;
    };
    match runtime.shutdown() {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xrelay: stopping: {error}");
            ExitCode::FAILURE
        }
    }
}
