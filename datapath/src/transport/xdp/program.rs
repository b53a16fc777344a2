//! The XDP program (`xdp-prog/xrelay.bpf.c`, compiled by `build.rs`):
//! loading it with the relay's port or EtherType, attaching it to an
//! interface through bpf_link (so it goes away with the process), handing
//! it the AF_XDP sockets, and reading its counters.

use std::os::fd::AsRawFd;

use aya::maps::{MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};

use super::AttachMode;
use crate::transport::TransportError;
use crate::wire::encap::Encapsulation;

/// The compiled program.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xrelay.bpf.o"));

/// What the program has done, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Relay frames redirected to a socket.
    pub redirected: u64,
    /// Frames passed to the kernel (not ours).
    pub passed: u64,
    /// Relay frames for a queue without a socket (passed to the kernel).
    pub no_socket: u64,
}

/// The program, loaded and attached to one interface. Dropping it detaches
/// it.
#[derive(Debug)]
pub struct XdpProgram {
    ebpf: Ebpf,
    mode: AttachMode,
}

fn error(what: &str, detail: impl std::fmt::Display) -> TransportError {
    TransportError::Config(format!("{what}: {detail}"))
}

/// Drivers whose native XDP hook gains nothing for AF_XDP in copy mode:
/// veth runs its native hook on the socket buffers a sender's kernel made,
/// converting (and, short of headroom, copying) each one first, so the
/// generic hook is cheaper. Measured on veth (docs/xdp.md): generic gives
/// about 5 % more frames per second and a round trip 0.6-0.8 µs shorter.
const GENERIC_IS_FASTER: &[&str] = &["veth"];

/// Whether `Auto` attaches `interface`, whose receive `queues` get AF_XDP
/// sockets, in generic mode: its driver is one whose native hook costs
/// more than the generic one (today: veth), and queue 0 alone is served.
/// The generic hook sees every frame of a veth on receive queue 0, where
/// the native hook keeps the sender's queue: several queues keep native
/// XDP to spread the work, and a socket on another queue alone would see
/// nothing in generic mode.
pub fn auto_prefers_generic(interface: &str, queues: &[u32]) -> bool {
    queues == [0]
        && driver(interface).is_some_and(|name| GENERIC_IS_FASTER.contains(&name.as_str()))
}

/// `struct ethtool_drvinfo` of linux/ethtool.h, the answer to
/// `ETHTOOL_GDRVINFO`.
#[repr(C)]
#[derive(Default)]
struct DriverInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `ETHTOOL_GDRVINFO` (linux/ethtool.h).
const ETHTOOL_GDRVINFO: u32 = 3;

/// The name of `interface`'s driver in the calling thread's network
/// namespace (what `ethtool -i` prints), or `None` when the interface does
/// not exist or the driver does not say.
pub fn driver(interface: &str) -> Option<String> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= nix::libc::IFNAMSIZ {
        return None;
    }
    // Any socket of the namespace answers interface ioctls; this one is
    // never bound and sends nothing.
    let probe = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let mut info = DriverInfo {
        cmd: ETHTOOL_GDRVINFO,
        ..DriverInfo::default()
    };
    // SAFETY: `ifreq` is plain old data, valid all zeros.
    let mut request: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, &from) in request.ifr_name.iter_mut().zip(name) {
        *to = nix::libc::c_char::from_ne_bytes([from]);
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: `probe` is an open socket; `request` names the interface
    // (NUL-terminated: shorter than IFNAMSIZ, rest zero) and points at
    // `info`, a live `ethtool_drvinfo` the kernel fills, for the duration
    // of the call.
    let result =
        unsafe { nix::libc::ioctl(probe.as_raw_fd(), nix::libc::SIOCETHTOOL, &raw mut request) };
    if result != 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    std::str::from_utf8(&info.driver[..len])
        .ok()
        .map(str::to_owned)
}

impl XdpProgram {
    /// Loads the program for `encap` and attaches it to `interface` in
    /// `mode`, for a socket on queue 0. `Auto` is generic on veth (see
    /// [`auto_prefers_generic`]), else native, falling back to generic.
    pub fn attach(
        interface: &str,
        mode: AttachMode,
        encap: Encapsulation,
    ) -> Result<XdpProgram, TransportError> {
        XdpProgram::attach_for(interface, mode, encap, &[0])
    }

    /// [`XdpProgram::attach`] for an interface whose receive `queues` each
    /// get a socket: `Auto` keeps native XDP on veth unless `queues` is
    /// queue 0 alone.
    pub fn attach_for(
        interface: &str,
        mode: AttachMode,
        encap: Encapsulation,
        queues: &[u32],
    ) -> Result<XdpProgram, TransportError> {
        let (port, ethertype): (u16, u16) = match encap {
            Encapsulation::Udp { port } => (port, 0),
            Encapsulation::Ethernet { ethertype } => (0, ethertype),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("relay_port", &port, true)
            .override_global("relay_ethertype", &ethertype, true)
            .load(OBJECT)
            .map_err(|e| {
                error(
                    "loading the XDP program (needs CAP_BPF and CAP_NET_ADMIN, or root)",
                    e,
                )
            })?;
        let program: &mut Xdp = ebpf
            .program_mut("xrelay")
            .ok_or_else(|| error("the XDP object", "has no program `xrelay`"))?
            .try_into()
            .map_err(|e| error("the XDP object", e))?;
        program
            .load()
            .map_err(|e| error("the kernel refused the XDP program", e))?;
        let tries: &[(AttachMode, XdpMode)] = match mode {
            AttachMode::Native => &[(AttachMode::Native, XdpMode::Driver)],
            AttachMode::Generic => &[(AttachMode::Generic, XdpMode::Skb)],
            AttachMode::Auto if auto_prefers_generic(interface, queues) => {
                &[(AttachMode::Generic, XdpMode::Skb)]
            }
            AttachMode::Auto => &[
                (AttachMode::Native, XdpMode::Driver),
                (AttachMode::Generic, XdpMode::Skb),
            ],
        };
        let mut last = None;
        for &(obtained, xdp_mode) in tries {
            match program.attach(interface, xdp_mode) {
                Ok(_) => {
                    return Ok(XdpProgram {
                        ebpf,
                        mode: obtained,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(error(
            &format!("attaching the XDP program to {interface} ({mode:?} mode)"),
            last.map_or_else(|| "no mode to try".to_owned(), |e| e.to_string()),
        ))
    }

    /// The attach mode obtained.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Directs relay frames arriving on `queue` to the socket `fd`.
    pub fn register(&mut self, queue: u32, fd: impl AsRawFd) -> Result<(), TransportError> {
        let map = self
            .ebpf
            .map_mut("xsks")
            .ok_or_else(|| error("the XDP object", "has no map `xsks`"))?;
        let mut xsks: XskMap<&mut MapData> =
            XskMap::try_from(map).map_err(|e| error("the XSKMAP", e))?;
        xsks.set(queue, fd, 0)
            .map_err(|e| error(&format!("registering the socket of queue {queue}"), e))
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> Result<ProgramStats, TransportError> {
        let map = self
            .ebpf
            .map("stats")
            .ok_or_else(|| error("the XDP object", "has no map `stats`"))?;
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|e| error("the stats map", e))?;
        let sum = |index: u32| -> Result<u64, TransportError> {
            let values = stats
                .get(&index, 0)
                .map_err(|e| error("reading the stats map", e))?;
            Ok(values.iter().sum())
        };
        Ok(ProgramStats {
            redirected: sum(0)?,
            passed: sum(1)?,
            no_socket: sum(2)?,
        })
    }
}
