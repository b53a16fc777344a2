//! Test hosts in network namespaces: two namespaces joined by a veth pair
//! ([`VethPair`]), or any number on one bridged segment ([`Lan`]), for the
//! demo, the tests and the benchmarks of the AF_XDP transport.
//!
//! Names are unique per process and topology (`xr<pid>n<k>a`, `xr<pid>n<k>b`),
//! so tests can run in parallel; addresses come from 198.18.0.0/15 (the
//! range reserved for benchmarking) and live only inside the namespaces
//! created here. Everything is removed when the [`VethPair`] is dropped,
//! also when a test fails. The commands are `ip` (iproute2) and `ethtool`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::wire::encap::Endpoint;
use crate::wire::ethernet::EthernetAddress;

/// Why a topology could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or the reason it did not run.
        detail: String,
    },
    /// Entering a namespace failed.
    #[error("entering network namespace {name}: {detail}")]
    Enter {
        /// The namespace.
        name: String,
        /// Why.
        detail: String,
    },
}

/// Runs a command; its failure is an error with the command's stderr.
pub fn run(args: &[&str]) -> Result<String, NetnsError> {
    let command = args.join(" ");
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            detail: format!("{e} (is iproute2 installed? scripts/setup)"),
        })?;
    if !output.status.success() {
        return Err(NetnsError::Command {
            command,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A network namespace created here; deleted on drop.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Namespace, NetnsError> {
        run(&["ip", "netns", "add", name])?;
        let ns = Namespace {
            name: name.to_owned(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Moves the calling thread into the namespace (sockets it creates
    /// from now on live there).
    pub fn enter(&self) -> Result<(), NetnsError> {
        enter(&self.name)
    }
}

/// Moves the calling thread into the network namespace `name`.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let error = |detail: String| NetnsError::Enter {
        name: name.to_owned(),
        detail,
    };
    let file = File::open(format!("/var/run/netns/{name}")).map_err(|e| error(e.to_string()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| error(format!("setns: {e} (needs CAP_SYS_ADMIN)")))
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// One end of a [`VethPair`].
#[derive(Debug)]
pub struct Host {
    /// Its namespace.
    pub ns: Namespace,
    /// The veth interface inside it.
    pub interface: String,
    /// Its address (UDP port left 0).
    pub endpoint: Endpoint,
}

/// Two namespaces joined by a veth pair: `a` at 198.18.0.1, `b` at
/// 198.18.0.2, with fixed Ethernet addresses and TX checksum offload off
/// (so kernel senders produce complete checksums for XDP receivers).
#[derive(Debug)]
pub struct VethPair {
    /// The first host.
    pub a: Host,
    /// The second host.
    pub b: Host,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl VethPair {
    /// Builds the topology with `queues` channels on each veth end.
    pub fn new(queues: u32) -> Result<VethPair, NetnsError> {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = |side: char| format!("xr{pid}n{k}{side}");
        let (ns_a, ns_b) = (
            Namespace::create(&name('a'))?,
            Namespace::create(&name('b'))?,
        );
        let (if_a, if_b) = (name('a'), name('b'));
        let queues = queues.max(1).to_string();
        run(&[
            "ip",
            "link",
            "add",
            &if_a,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "netns",
            ns_a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &if_b,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "netns",
            ns_b.name(),
        ])?;
        let a = Host::configure(ns_a, if_a, 1)?;
        let b = Host::configure(ns_b, if_b, 2)?;
        introduce(&[&a, &b])?;
        Ok(VethPair { a, b })
    }
}

/// Hosts on one Ethernet segment: each host namespace has one veth whose
/// other end is a port of a bridge in a namespace of its own (the
/// switch). Host `n` (from 1) is at 198.18.0.`n` with Ethernet address
/// 02:78:72:00:00:`n`; every host knows every other's address without ARP,
/// and TX checksum offload is off on the host ends. Names are
/// `xr<pid>l<k>h<n>` (host namespace and its interface), `xr<pid>l<k>p<n>`
/// (its switch port) and `xr<pid>l<k>s` (the switch namespace). Dropping
/// the LAN removes everything.
#[derive(Debug)]
pub struct Lan {
    /// The hosts, host `n` at index `n - 1`.
    pub hosts: Vec<Host>,
    /// The switch ports, in the order of the hosts (in `switch`).
    pub ports: Vec<String>,
    /// The namespace holding the bridge and its ports. Declared last:
    /// removed after the hosts.
    pub switch: Namespace,
}

impl Lan {
    /// Builds a segment of `hosts` hosts (1 to 250), each veth end with
    /// `queues` channels.
    pub fn new(hosts: u8, queues: u32) -> Result<Lan, NetnsError> {
        let queues = queues.max(1).to_string();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let switch = Namespace::create(&format!("xr{pid}l{k}s"))?;
        switch.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.exec(&["ip", "link", "set", "br0", "up"])?;
        let mut lan = Lan {
            hosts: Vec::new(),
            ports: Vec::new(),
            switch,
        };
        for n in 1..=hosts.clamp(1, 250) {
            let name = format!("xr{pid}l{k}h{n}");
            let port = format!("xr{pid}l{k}p{n}");
            let ns = Namespace::create(&name)?;
            run(&[
                "ip",
                "link",
                "add",
                &name,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "netns",
                ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "netns",
                lan.switch.name(),
            ])?;
            lan.switch
                .exec(&["ip", "link", "set", &port, "master", "br0", "up"])?;
            lan.hosts.push(Host::configure(ns, name, n)?);
            lan.ports.push(port);
        }
        introduce(&lan.hosts.iter().collect::<Vec<_>>())?;
        Ok(lan)
    }
}

impl Host {
    /// Host `n` on `interface` in `ns`: 198.18.0.`n`/24 and Ethernet
    /// address 02:78:72:00:00:`n`, the link up, TX checksum offload off.
    fn configure(ns: Namespace, interface: String, n: u8) -> Result<Host, NetnsError> {
        let ip = Ipv4Addr::new(198, 18, 0, n);
        let mac = EthernetAddress([0x02, 0x78, 0x72, 0, 0, n]);
        ns.exec(&["ip", "link", "set", &interface, "address", &mac.to_string()])?;
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &interface])?;
        ns.exec(&["ip", "link", "set", &interface, "up"])?;
        ns.exec(&["ethtool", "-K", &interface, "tx", "off"])?;
        Ok(Host {
            ns,
            interface,
            endpoint: Endpoint { mac, ip, port: 0 },
        })
    }
}

/// Every host learns every other's Ethernet address without ARP.
fn introduce(hosts: &[&Host]) -> Result<(), NetnsError> {
    for from in hosts {
        for to in hosts.iter().filter(|h| h.endpoint.ip != from.endpoint.ip) {
            from.ns.exec(&[
                "ip",
                "neigh",
                "replace",
                &to.endpoint.ip.to_string(),
                "lladdr",
                &to.endpoint.mac.to_string(),
                "dev",
                &from.interface,
            ])?;
        }
    }
    Ok(())
}

/// Whether an XDP program is attached to `interface` in namespace `ns`.
pub fn xdp_attached(ns: &Namespace, interface: &str) -> Result<bool, NetnsError> {
    let out = ns.exec(&["ip", "link", "show", "dev", interface])?;
    Ok(out.contains(" xdp") || out.contains("prog/xdp"))
}
