//! The node configuration (TOML, documented in docs/config.md): parsing
//! and validation. Every error names the file, the line and the field;
//! unknown keys are errors; a configuration is either valid as a whole or
//! refused, so nothing starts half-configured.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use xrelay_datapath::wire::ethernet::EthernetAddress;

/// A configuration error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when the error is about the file as a whole.
    pub line: usize,
    /// The field (dotted path), empty when the parser could not tell.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Which transport the node runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// AF_XDP where the process may, else UDP.
    #[default]
    Auto,
    /// AF_XDP.
    Xdp,
    /// Kernel UDP sockets.
    Udp,
}

/// The outer encapsulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapChoice {
    /// Ethernet + IPv4 + UDP.
    #[default]
    Udp,
    /// Raw Ethernet with the relay's EtherType.
    Ethernet,
}

/// A mode with an `auto` choice (XDP attach or socket bind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeChoice {
    /// Let the node pick the best the driver offers.
    #[default]
    Auto,
    /// XDP in the driver.
    Native,
    /// XDP in the generic (skb) path.
    Generic,
    /// Zero-copy bind.
    Zerocopy,
    /// Copy-mode bind.
    Copy,
}

/// A session service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceChoice {
    /// RPC sessions.
    Rpc,
    /// ROM modules.
    Rom,
    /// Signal contexts.
    Signal,
}

/// One datapath queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    /// The NIC queue.
    pub queue: u32,
    /// The CPU core its thread is pinned to.
    pub core: Option<usize>,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's name.
    pub name: Spanned<String>,
    /// The interface (needed for AF_XDP).
    pub interface: Option<Spanned<String>>,
    /// This node's IPv4 address.
    pub address: Spanned<String>,
    /// The transport.
    #[serde(default)]
    pub transport: TransportChoice,
    /// The encapsulation.
    #[serde(default)]
    pub encapsulation: EncapChoice,
    /// The relay's UDP port.
    pub port: Option<Spanned<u16>>,
    /// The relay's EtherType (raw Ethernet).
    pub ethertype: Option<Spanned<u16>>,
    /// XDP attach mode: auto, native, generic.
    #[serde(default = "auto")]
    pub xdp_mode: Spanned<ModeChoice>,
    /// Socket bind mode: auto, zerocopy, copy.
    #[serde(default = "auto")]
    pub bind_mode: Spanned<ModeChoice>,
    /// Queues and their cores (default: queue 0, unpinned).
    #[serde(default)]
    pub queues: Vec<Spanned<QueueSection>>,
    /// The operator's control socket.
    pub control_socket: Option<String>,
    /// Prometheus text exposition at `http://ADDRESS/metrics`, on a
    /// loopback address only.
    pub metrics: Option<Spanned<String>>,
}

/// `[[peer]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The peer's name.
    pub name: Spanned<String>,
    /// Its IPv4 address.
    pub address: Spanned<String>,
    /// Its relay port (default: this node's).
    pub port: Option<Spanned<u16>>,
    /// Its Ethernet address; absent: from the kernel's neighbour table.
    pub mac: Option<Spanned<String>>,
    /// The key of the pair, 64 hex digits (32 bytes).
    pub key: Option<Spanned<String>>,
    /// `false` turns frame authentication off for this peer (benchmarks
    /// on a trusted link only).
    #[serde(default = "yes")]
    pub authenticate: Spanned<bool>,
}

fn auto() -> Spanned<ModeChoice> {
    Spanned::new(0..0, ModeChoice::Auto)
}

fn yes() -> Spanned<bool> {
    Spanned::new(0..0, true)
}

/// One exported service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportItem {
    /// The label peers open it by.
    pub label: Spanned<String>,
    /// RPC: the interface served.
    pub interface: Option<String>,
    /// ROM: a file whose content is published at start.
    pub file: Option<Spanned<String>>,
}

/// `[export]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSection {
    /// RPC sessions.
    #[serde(default)]
    pub rpc: Vec<ExportItem>,
    /// ROM modules.
    #[serde(default)]
    pub rom: Vec<ExportItem>,
    /// Signal receivers.
    #[serde(default)]
    pub signal: Vec<ExportItem>,
}

/// `[[route]]`: where a local session request goes, by label.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The service routed.
    pub service: ServiceChoice,
    /// Exact label.
    pub label: Option<Spanned<String>>,
    /// Label prefix.
    pub label_prefix: Option<Spanned<String>>,
    /// Label suffix.
    pub label_suffix: Option<Spanned<String>>,
    /// The default route of the service.
    pub default: Option<Spanned<bool>>,
    /// The peer.
    pub peer: Spanned<String>,
    /// The label on the peer (default: the request's label).
    pub remote: Option<String>,
}

/// `[[policy]]`: what a peer may open here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// The peer.
    pub peer: Spanned<String>,
    /// RPC labels it may open.
    #[serde(default)]
    pub rpc: Vec<Spanned<String>>,
    /// ROM modules it may subscribe.
    #[serde(default)]
    pub rom: Vec<Spanned<String>>,
    /// Signal receivers it may signal.
    #[serde(default)]
    pub signal: Vec<Spanned<String>>,
}

/// A whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`.
    pub node: NodeSection,
    /// `[[peer]]`.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSection>,
    /// `[export]`.
    #[serde(default)]
    pub export: ExportSection,
    /// `[[route]]`.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
    /// `[[policy]]`.
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicySection>,
}

/// The interfaces a node can serve by name (`export.rpc[].interface`).
pub const KNOWN_INTERFACES: &[&str] = &["kv-store"];

/// A configuration that passed every check, with its warnings.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The configuration.
    pub config: Config,
    /// Things an operator must know (authentication off).
    pub warnings: Vec<String>,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<Checked, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    parse(path, &text)
}

/// Parses and checks `text` (read from `path`).
pub fn parse(path: &Path, text: &str) -> Result<Checked, Vec<ConfigError>> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let config: Config = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(s.start));
        vec![ConfigError {
            file: path.to_owned(),
            line,
            field: String::new(),
            message: e.message().trim().to_owned(),
        }]
    })?;
    let mut check = Checker {
        path,
        line_of: &line_of,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    check.all(&config);
    if check.errors.is_empty() {
        Ok(Checked {
            warnings: check.warnings,
            config,
        })
    } else {
        Err(check.errors)
    }
}

struct Checker<'a> {
    path: &'a Path,
    line_of: &'a dyn Fn(usize) -> usize,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Checker<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) {
        let line = if at.span().is_empty() && at.span().start == 0 {
            0
        } else {
            (self.line_of)(at.span().start)
        };
        self.errors.push(ConfigError {
            file: self.path.to_owned(),
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    fn address(&mut self, at: &Spanned<String>, field: &str) -> Option<Ipv4Addr> {
        match at.get_ref().parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error(
                    at,
                    field,
                    format!("{:?} is not an IPv4 address", at.get_ref()),
                );
                None
            }
        }
    }

    fn all(&mut self, config: &Config) {
        let node = &config.node;
        let own = self.address(&node.address, "node.address");
        if node.name.get_ref().is_empty() {
            self.error(&node.name, "node.name", "must not be empty");
        }
        let port = node.port.as_ref().map_or(9555, |p| *p.get_ref());
        if let Some(p) = &node.port {
            if *p.get_ref() == 0 {
                self.error(p, "node.port", "must not be 0");
            }
        }
        if node.transport == TransportChoice::Xdp && node.interface.is_none() {
            self.error(
                &node.name,
                "node.interface",
                "transport \"xdp\" needs an interface",
            );
        }
        if matches!(
            node.xdp_mode.get_ref(),
            ModeChoice::Zerocopy | ModeChoice::Copy
        ) {
            self.error(
                &node.xdp_mode,
                "node.xdp_mode",
                "must be auto, native or generic",
            );
        }
        if matches!(
            node.bind_mode.get_ref(),
            ModeChoice::Native | ModeChoice::Generic
        ) {
            self.error(
                &node.bind_mode,
                "node.bind_mode",
                "must be auto, zerocopy or copy",
            );
        }
        match (node.encapsulation, &node.ethertype) {
            (EncapChoice::Udp, Some(ethertype)) => {
                self.error(
                    ethertype,
                    "node.ethertype",
                    "only with encapsulation = \"ethernet\"",
                );
            }
            (EncapChoice::Ethernet, Some(ethertype)) if *ethertype.get_ref() < 0x0600 => {
                self.error(
                    ethertype,
                    "node.ethertype",
                    "an EtherType is at least 0x0600",
                );
            }
            _ => {}
        }
        if let Some(socket) = &node.control_socket {
            if !socket.starts_with('/') {
                self.error(
                    &node.name,
                    "node.control_socket",
                    format!("{socket:?} is not an absolute path"),
                );
            }
        }
        if let Some(metrics) = &node.metrics {
            match metrics.get_ref().parse::<std::net::SocketAddr>() {
                Ok(address) if address.ip().is_loopback() => {}
                Ok(address) => self.error(
                    metrics,
                    "node.metrics",
                    format!(
                        "{address} is not a loopback address (metrics are served on loopback only)"
                    ),
                ),
                Err(_) => self.error(
                    metrics,
                    "node.metrics",
                    format!("{:?} is not an address:port", metrics.get_ref()),
                ),
            }
        }
        if let Some(second) = node.queues.get(1) {
            if node.transport == TransportChoice::Udp || node.interface.is_none() {
                self.error(
                    second,
                    "node.queues[1]",
                    "several queues need AF_XDP (an interface, transport \"xdp\" or \"auto\")",
                );
            }
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut queues = BTreeSet::new();
        for (i, queue) in node.queues.iter().enumerate() {
            let q = queue.get_ref();
            if !queues.insert(q.queue) {
                self.error(
                    queue,
                    format!("node.queues[{i}].queue"),
                    format!("queue {} is listed twice", q.queue),
                );
            }
            if let Some(core) = q.core.filter(|&c| c >= cores) {
                self.error(
                    queue,
                    format!("node.queues[{i}].core"),
                    format!("core {core} does not exist (this machine has {cores})"),
                );
            }
        }

        // Peers: unique names and addresses, well-formed MACs and keys.
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut endpoints: BTreeMap<(Ipv4Addr, u16), &str> = BTreeMap::new();
        if let Some(ip) = own {
            endpoints.insert((ip, port), node.name.get_ref());
        }
        for (i, peer) in config.peers.iter().enumerate() {
            let name = peer.name.get_ref().as_str();
            if name == node.name.get_ref() {
                self.error(
                    &peer.name,
                    format!("peer[{i}].name"),
                    format!("{name:?} is this node's own name"),
                );
            } else if let Some(first) = names.insert(name, i) {
                self.error(
                    &peer.name,
                    format!("peer[{i}].name"),
                    format!("{name:?} is already peer[{first}]"),
                );
            }
            let peer_port = peer.port.as_ref().map_or(port, |p| *p.get_ref());
            if let Some(ip) = self.address(&peer.address, &format!("peer[{i}].address")) {
                if let Some(other) = endpoints.insert((ip, peer_port), name) {
                    self.error(
                        &peer.address,
                        format!("peer[{i}].address"),
                        format!("{ip}:{peer_port} is already {other:?}'s"),
                    );
                }
            }
            if let Some(mac) = &peer.mac {
                if mac.get_ref().parse::<EthernetAddress>().is_err() {
                    self.error(
                        mac,
                        format!("peer[{i}].mac"),
                        format!(
                            "{:?} is not an Ethernet address (xx:xx:xx:xx:xx:xx)",
                            mac.get_ref()
                        ),
                    );
                }
            }
            match (&peer.key, *peer.authenticate.get_ref()) {
                (Some(key), _) => {
                    let text = key.get_ref();
                    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                        self.error(
                            key,
                            format!("peer[{i}].key"),
                            "must be 64 hex digits (a 32-byte key)",
                        );
                    }
                }
                (None, true) => self.error(
                    &peer.name,
                    format!("peer[{i}].key"),
                    "missing: frames are authenticated unless `authenticate = false`",
                ),
                (None, false) => {}
            }
            if !*peer.authenticate.get_ref() {
                self.warnings.push(format!(
                    "WARNING: authentication is OFF for peer {name:?}: anyone on the link can forge its frames (benchmarking on a trusted link only)"
                ));
            }
        }

        // Exports: labels unique per service.
        let mut exported: BTreeSet<(ServiceChoice, &str)> = BTreeSet::new();
        for (service, items, key) in [
            (ServiceChoice::Rpc, &config.export.rpc, "rpc"),
            (ServiceChoice::Rom, &config.export.rom, "rom"),
            (ServiceChoice::Signal, &config.export.signal, "signal"),
        ] {
            for (i, item) in items.iter().enumerate() {
                let label = item.label.get_ref().as_str();
                match (service, &item.interface, &item.file) {
                    (ServiceChoice::Rpc, Some(interface), None) => {
                        if !KNOWN_INTERFACES.contains(&interface.as_str()) {
                            self.error(
                                &item.label,
                                format!("export.{key}[{i}].interface"),
                                format!(
                                    "unknown interface {interface:?} (known: {})",
                                    KNOWN_INTERFACES.join(", ")
                                ),
                            );
                        }
                    }
                    (ServiceChoice::Rpc, None, _) => {
                        self.error(
                            &item.label,
                            format!("export.{key}[{i}].interface"),
                            "missing",
                        );
                    }
                    (ServiceChoice::Rom, None, Some(file)) => {
                        let limit = xrelay_datapath::wire::rom::MAX_ROM_SIZE;
                        match std::fs::File::open(file.get_ref()).and_then(|f| f.metadata()) {
                            Err(e) => self.error(
                                file,
                                format!("export.{key}[{i}].file"),
                                format!("{}: {e}", file.get_ref()),
                            ),
                            Ok(meta) if meta.len() > limit => self.error(
                                file,
                                format!("export.{key}[{i}].file"),
                                format!(
                                    "{}: {} bytes is more than a ROM module holds ({limit})",
                                    file.get_ref(),
                                    meta.len()
                                ),
                            ),
                            Ok(_) => {}
                        }
                    }
                    (ServiceChoice::Rom | ServiceChoice::Signal, None, None) => {}
                    _ => self.error(
                        &item.label,
                        format!("export.{key}[{i}]"),
                        "interface is for rpc exports, file for rom exports",
                    ),
                }
                if label.is_empty() || label.len() > 1024 {
                    self.error(
                        &item.label,
                        format!("export.{key}[{i}].label"),
                        "must be 1 to 1024 bytes",
                    );
                }
                if !exported.insert((service, label)) {
                    self.error(
                        &item.label,
                        format!("export.{key}[{i}].label"),
                        format!("{label:?} is exported twice"),
                    );
                }
            }
        }

        // Routes: one selector each, a known peer.
        let mut defaults = BTreeSet::new();
        for (i, route) in config.routes.iter().enumerate() {
            let selectors = usize::from(route.label.is_some())
                + usize::from(route.label_prefix.is_some())
                + usize::from(route.label_suffix.is_some())
                + usize::from(route.default.as_ref().is_some_and(|d| *d.get_ref()));
            if selectors != 1 {
                self.error(
                    &route.peer,
                    format!("route[{i}]"),
                    "needs exactly one of label, label_prefix, label_suffix or default = true",
                );
            }
            if route.default.as_ref().is_some_and(|d| *d.get_ref())
                && !defaults.insert(route.service)
            {
                self.error(
                    &route.peer,
                    format!("route[{i}].default"),
                    format!("a second default route for {:?}", route.service),
                );
            }
            if !names.contains_key(route.peer.get_ref().as_str()) {
                self.error(
                    &route.peer,
                    format!("route[{i}].peer"),
                    format!("no peer named {:?}", route.peer.get_ref()),
                );
            }
            if route
                .remote
                .as_ref()
                .is_some_and(|r| r.is_empty() || r.len() > 1024)
            {
                self.error(
                    &route.peer,
                    format!("route[{i}].remote"),
                    "must be 1 to 1024 bytes",
                );
            }
        }

        // Policy: known peers, exported labels.
        for (i, policy) in config.policies.iter().enumerate() {
            if !names.contains_key(policy.peer.get_ref().as_str()) {
                self.error(
                    &policy.peer,
                    format!("policy[{i}].peer"),
                    format!("no peer named {:?}", policy.peer.get_ref()),
                );
            }
            for (service, labels, key) in [
                (ServiceChoice::Rpc, &policy.rpc, "rpc"),
                (ServiceChoice::Rom, &policy.rom, "rom"),
                (ServiceChoice::Signal, &policy.signal, "signal"),
            ] {
                for (j, label) in labels.iter().enumerate() {
                    if !exported.contains(&(service, label.get_ref().as_str())) {
                        self.error(
                            label,
                            format!("policy[{i}].{key}[{j}]"),
                            format!("{:?} is not exported", label.get_ref()),
                        );
                    }
                }
            }
        }
    }
}

/// Options of `xrelay check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    config: PathBuf,
}

/// `xrelay check CONFIG`: exit 0 with a summary, or 2 with every error.
pub fn check(args: &CheckArgs) -> std::process::ExitCode {
    match load(&args.config) {
        Ok(checked) => {
            for warning in &checked.warnings {
                eprintln!("{warning}");
            }
            let c = &checked.config;
            println!(
                "{}: ok: node {:?}, {} peers, {} exports, {} routes, {} policies",
                args.config.display(),
                c.node.name.get_ref(),
                c.peers.len(),
                c.export.rpc.len() + c.export.rom.len() + c.export.signal.len(),
                c.routes.len(),
                c.policies.len()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in errors {
                eprintln!("{error}");
            }
            std::process::ExitCode::from(2)
        }
    }
}
