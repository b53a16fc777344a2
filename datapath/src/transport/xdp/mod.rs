//! The AF_XDP transport: relay frames move through UMEM frames and the
//! fill, RX, TX and completion rings of one AF_XDP socket, bypassing the
//! kernel's network stack; our own XDP program (see [`program`]) steers
//! relay frames to the socket and passes everything else to the kernel.
//!
//! * **UMEM**: `frame_count` frames of `frame_size` bytes. Half start in the
//!   fill ring (for receiving), half in the transport's free pool (for
//!   sending). Every frame is, at any time, in exactly one place: the
//!   kernel (fill or TX ring, in flight), the RX batch being handed to the
//!   caller, the queue of read frames waiting for room on the fill ring,
//!   the free pool, or the batch queued for TX.
//! * **Receive**: a batch of RX descriptors; each frame is parsed in place
//!   (Ethernet, IPv4 and UDP checksums verified), the relay frame is handed
//!   to the caller as a slice of the UMEM, and the frame goes straight back
//!   to the fill ring.
//! * **Send**: [`Transport::send`] offers the caller the relay-frame part
//!   of a free UMEM frame; the outer headers and checksums are written in
//!   place around it. [`Transport::flush`] puts the batch on the TX ring
//!   and kicks the kernel only when the ring asks for a wakeup.
//! * No allocation, lock or syscall per frame: the batches are
//!   preallocated; syscalls are one `sendto` kick per flush (when needed)
//!   and a fill-ring wakeup when the driver sleeps.
//!
//! Modes: the XDP program attaches `native`, `generic` or `auto` (native,
//! else generic); the socket binds `zerocopy`, `copy` or `auto` (zero-copy,
//! else copy; veth only does copy). [`XdpTransport::modes`] says what was
//! obtained.
#![expect(
    unsafe_code,
    reason = "AF_XDP rings and UMEM frames are shared with the kernel; xsk-rs marks their use unsafe"
)]

pub mod program;

use core::time::Duration;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

pub use self::program::{ProgramStats, XdpProgram};
use super::{Deliver, Fill, Transport, TransportError};
use crate::time::Instant;
use crate::wire::encap::{self, Encapsulation, Endpoint};
use crate::wire::ethernet::EthernetAddress;

/// How the XDP program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (fastest; veth supports it).
    Native,
    /// In the kernel's generic path (works everywhere).
    Generic,
    /// Native if the driver can, else generic.
    Auto,
}

/// How the AF_XDP socket binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// The NIC DMAs straight into UMEM (needs driver support).
    ZeroCopy,
    /// The kernel copies between its buffers and UMEM.
    Copy,
    /// Zero-copy if the driver can, else copy.
    Auto,
}

/// A UMEM frame owned by user space: the move-only token of one slot.
///
/// It is neither `Clone` nor `Copy`, and only this module makes one: from
/// a frame the UMEM hands out at creation, or one the kernel gives back on
/// the completion ring. Handing a frame to the kernel (the TX ring)
/// consumes its token (`Slot::into_kernel`), so the compiler rejects a
/// second use of a slot the kernel owns; RX frames go back to the fill ring
/// within [`Transport::recv`] and never get a token.
#[derive(Debug)]
#[repr(transparent)]
pub struct Slot(FrameDesc);

impl Slot {
    /// The descriptors of `slots`, for the rings.
    fn descs(slots: &[Slot]) -> &[FrameDesc] {
        // SAFETY: `Slot` is `repr(transparent)` over `FrameDesc`, so a
        // slice of slots is a slice of descriptors with the same layout
        // and length, borrowed for as long as the slots are.
        unsafe { core::slice::from_raw_parts(slots.as_ptr().cast::<FrameDesc>(), slots.len()) }
    }

    /// Gives a batch of slots to the kernel's TX ring: all or none. On
    /// success the tokens are gone (the completion ring returns the frames
    /// as new tokens); on failure they come back.
    fn into_kernel(slots: &mut Vec<Slot>, tx: &mut TxQueue) -> usize {
        let descs = Slot::descs(slots);
        // SAFETY: every descriptor is one of this UMEM's frames, owned by
        // its token (so by nobody else, kernel included); once produced
        // the tokens are dropped below and the frames are the kernel's.
        let produced = unsafe { tx.produce(descs) };
        if produced == slots.len() {
            slots.clear();
        }
        produced
    }
}

/// Configuration of an [`XdpTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpConfig {
    /// The interface (in the calling thread's network namespace).
    pub interface: String,
    /// The receive queue to bind.
    pub queue: u32,
    /// This node's IPv4 address (UDP encapsulation).
    pub ip: Ipv4Addr,
    /// Outer encapsulation; its port or EtherType is what the XDP program
    /// redirects.
    pub encap: Encapsulation,
    /// The interface's MTU (IP packet size).
    pub mtu: usize,
    /// Bytes per UMEM frame (2048 or 4096).
    pub frame_size: u32,
    /// UMEM frames (a power of two).
    pub frame_count: u32,
    /// Frames per receive and send batch.
    pub batch: usize,
    /// XDP attach mode.
    pub attach: AttachMode,
    /// Socket bind mode.
    pub bind: BindMode,
    /// Busy polling: the kernel polls the driver for this many
    /// microseconds from the socket's syscalls (`SO_PREFER_BUSY_POLL`,
    /// `SO_BUSY_POLL`, with a budget of `batch`); `None` leaves it off.
    /// Only drivers with NAPI ids profit (not veth).
    pub busy_poll: Option<u32>,
}

impl XdpConfig {
    /// Defaults for `interface` with address `ip`.
    pub fn new(interface: &str, ip: Ipv4Addr) -> XdpConfig {
        XdpConfig {
            interface: interface.to_owned(),
            queue: 0,
            ip,
            encap: Encapsulation::default(),
            mtu: 1500,
            frame_size: 2048,
            frame_count: 4096,
            batch: 64,
            attach: AttachMode::Auto,
            bind: BindMode::Auto,
            busy_poll: None,
        }
    }
}

/// What an [`XdpTransport`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Relay frames handed to the caller.
    pub received: u64,
    /// Frames put on the TX ring.
    pub sent: u64,
    /// Received frames that are not a relay frame for this endpoint
    /// (checksums, addresses, lengths), dropped.
    pub dropped: u64,
    /// `send` calls refused because every frame was in flight.
    pub tx_full: u64,
    /// Kicks of the kernel (TX `sendto`, fill-ring wakeups).
    pub wakeups: u64,
}

/// Batches on the TX ring (frames, when handed over), oldest first, and
/// the completion delays measured (profiling only).
type CompletionTracking = (
    std::collections::VecDeque<(usize, std::time::Instant)>,
    Vec<Duration>,
);

/// A [`Transport`] over one AF_XDP socket (see the module documentation).
/// Not `Send`: create it on the thread that drives it.
pub struct XdpTransport {
    config: XdpConfig,
    local: Endpoint,
    umem: Umem,
    fill: FillQueue,
    comp: CompQueue,
    tx: TxQueue,
    rx: RxQueue,
    /// Frames owned by user space, free for sending.
    free: Vec<Slot>,
    /// Frames written by `send`, waiting for `flush`.
    pending: Vec<Slot>,
    /// Frames on the TX ring the completion ring has not returned yet.
    in_flight: usize,
    /// With completion tracking on: batches on the TX ring (frames, when
    /// handed over), oldest first, and the completion delays measured.
    tracking: Option<CompletionTracking>,
    /// Received frames waiting for room on the fill ring.
    refill: Vec<Slot>,
    /// Scratch for RX and completion descriptors.
    batch: Vec<FrameDesc>,
    max_frame_len: usize,
    /// Shared by the transports of all queues of the interface; locked
    /// only at setup and to read counters, never per frame.
    program: Arc<Mutex<XdpProgram>>,
    attach: AttachMode,
    bind: BindMode,
    stats: XdpStats,
}

impl std::fmt::Debug for XdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpTransport")
            .field("interface", &self.config.interface)
            .field("queue", &self.config.queue)
            .field("local", &self.local)
            .field("modes", &self.modes())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn config_error(what: &str, detail: impl std::fmt::Display) -> TransportError {
    TransportError::Config(format!("{what}: {detail}"))
}

/// The Ethernet address of `interface` in the calling thread's network
/// namespace.
pub fn interface_mac(interface: &str) -> Result<EthernetAddress, TransportError> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| config_error("listing interfaces (getifaddrs)", e))?;
    for ifaddr in addrs {
        if ifaddr.interface_name != interface {
            continue;
        }
        if let Some(link) = ifaddr.address.as_ref().and_then(|a| a.as_link_addr()) {
            if let Some(mac) = link.addr() {
                return Ok(EthernetAddress(mac));
            }
        }
    }
    Err(config_error(
        &format!("interface {interface}"),
        "not found in this network namespace (or it has no Ethernet address)",
    ))
}

/// The Ethernet address of `peer` (named `name` in errors) from the
/// kernel's neighbour table for `interface`, in the calling thread's
/// network namespace. An entry the kernel has not resolved (no reply to
/// ARP) is an error naming the peer; configure the MAC instead, or let the
/// kernel resolve it first (e.g. one ping).
pub fn neighbour_mac(
    name: &str,
    interface: &str,
    peer: Ipv4Addr,
) -> Result<EthernetAddress, TransportError> {
    let unresolved = |detail: String| {
        config_error(
            &format!("peer {name} ({peer}) on {interface}"),
            format!("no Ethernet address: {detail}"),
        )
    };
    let out = std::process::Command::new("ip")
        .args(["neigh", "show", "to", &peer.to_string(), "dev", interface])
        .output()
        .map_err(|e| unresolved(format!("running `ip neigh`: {e}")))?;
    if !out.status.success() {
        return Err(unresolved(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == "lladdr" {
            if let Some(mac) = words.next().and_then(|w| w.parse().ok()) {
                return Ok(mac);
            }
        }
    }
    Err(unresolved(format!(
        "not in the neighbour table ({})",
        if text.trim().is_empty() {
            "no entry"
        } else {
            text.trim()
        }
    )))
}

/// Socket options of the busy-poll family (linux/asm-generic/socket.h).
const SO_PREFER_BUSY_POLL: i32 = 69;
const SO_BUSY_POLL_BUDGET: i32 = 70;

/// Sets an integer `SOL_SOCKET` option on `fd`.
fn set_socket_option(fd: i32, option: i32, value: i32) -> std::io::Result<()> {
    let len = nix::libc::socklen_t::try_from(size_of::<i32>()).unwrap_or(nix::libc::socklen_t::MAX);
    // SAFETY: `fd` is an open socket of ours; the value pointer and length
    // describe one live `i32` for the duration of the call.
    let result = unsafe {
        nix::libc::setsockopt(
            fd,
            nix::libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            len,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl XdpTransport {
    /// Attaches the XDP program to the interface, creates the UMEM and the
    /// socket, and binds it to the configured queue. For several queues of
    /// one interface, attach once with [`XdpProgram::attach_for`] and
    /// create one transport per queue with [`XdpTransport::with_program`].
    pub fn new(config: XdpConfig) -> Result<XdpTransport, TransportError> {
        let program = XdpProgram::attach_for(
            &config.interface,
            config.attach,
            config.encap,
            &[config.queue],
        )?;
        XdpTransport::with_program(config, Arc::new(Mutex::new(program)))
    }

    /// Like [`XdpTransport::new`] with the interface's program already
    /// attached (shared by the transports of its queues).
    pub fn with_program(
        config: XdpConfig,
        program: Arc<Mutex<XdpProgram>>,
    ) -> Result<XdpTransport, TransportError> {
        let frame_count = NonZeroU32::new(config.frame_count)
            .filter(|n| n.is_power_of_two() && n.get() >= 64)
            .ok_or_else(|| config_error("frame_count", "must be a power of two, at least 64"))?;
        let ring =
            QueueSize::new(frame_count.get() / 2).map_err(|e| config_error("ring size", e))?;
        let frame_size =
            FrameSize::new(config.frame_size).map_err(|e| config_error("frame_size", e))?;
        let mac = interface_mac(&config.interface)?;
        let local = Endpoint {
            mac,
            ip: config.ip,
            port: match config.encap {
                Encapsulation::Udp { port } => port,
                Encapsulation::Ethernet { .. } => 0,
            },
        };
        let header_len = config.encap.header_len();
        // The relay frame must fit the MTU (IP packet) and the UMEM frame.
        let ip_overhead = header_len - crate::wire::ethernet::HEADER_LEN;
        let max_frame_len = config
            .mtu
            .checked_sub(ip_overhead)
            .ok_or_else(|| config_error("mtu", "too small"))?
            .min(config.frame_size as usize - header_len - 256);

        let umem_config = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| config_error("UMEM configuration", e))?;
        let (umem, mut frames) = Umem::new(umem_config, frame_count, false).map_err(|e| {
            config_error(
                "creating the UMEM (locked memory: raise RLIMIT_MEMLOCK or run as root)",
                e,
            )
        })?;
        let interface = Interface::new(
            CString::new(config.interface.clone())
                .map_err(|e| config_error("interface name", e))?,
        );
        let binds: &[(BindMode, BindFlags)] = match config.bind {
            BindMode::ZeroCopy => &[(BindMode::ZeroCopy, BindFlags::XDP_ZEROCOPY)],
            BindMode::Copy => &[(BindMode::Copy, BindFlags::XDP_COPY)],
            BindMode::Auto => &[
                (BindMode::ZeroCopy, BindFlags::XDP_ZEROCOPY),
                (BindMode::Copy, BindFlags::XDP_COPY),
            ],
        };
        let mut last = None;
        let mut created = None;
        for &(mode, flags) in binds {
            let socket_config = SocketConfig::builder()
                .rx_queue_size(ring)
                .tx_queue_size(ring)
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .xdp_flags(XdpFlags::empty())
                .bind_flags(flags | BindFlags::XDP_USE_NEED_WAKEUP)
                .build();
            // SAFETY: the UMEM is fresh and used by this socket only; its
            // frames are handed out below, each to exactly one place.
            match unsafe { Socket::new(socket_config, &umem, &interface, config.queue) } {
                Ok(socket) => {
                    created = Some((mode, socket));
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some((bind, (tx, rx, Some((mut fill, comp))))) = created else {
            return Err(config_error(
                &format!(
                    "binding an AF_XDP socket to {} queue {}",
                    config.interface, config.queue
                ),
                last.map_or_else(
                    || "no fill and completion rings".to_owned(),
                    |e| e.to_string(),
                ),
            ));
        };
        if let Some(micros) = config.busy_poll {
            let fd = std::os::fd::AsRawFd::as_raw_fd(rx.fd());
            let budget = i32::try_from(config.batch).unwrap_or(64);
            let micros = i32::try_from(micros).unwrap_or(i32::MAX);
            for (option, value, name) in [
                (SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"),
                (nix::libc::SO_BUSY_POLL, micros, "SO_BUSY_POLL"),
                (SO_BUSY_POLL_BUDGET, budget, "SO_BUSY_POLL_BUDGET"),
            ] {
                set_socket_option(fd, option, value).map_err(|e| {
                    config_error(&format!("setting {name} (needs CAP_NET_ADMIN)"), e)
                })?;
            }
        }
        let attach = {
            let mut program = program
                .lock()
                .map_err(|_| config_error("the XDP program", "a holder panicked"))?;
            program.register(config.queue, std::os::fd::AsRawFd::as_raw_fd(rx.fd()))?;
            program.mode()
        };

        let half = frames.len() / 2;
        let free: Vec<Slot> = frames.split_off(half).into_iter().map(Slot).collect();
        // SAFETY: these frames belong to this UMEM and nobody else holds
        // them; from here they are the kernel's until RX returns them.
        let filled = unsafe { fill.produce(&frames) };
        if filled != frames.len() {
            return Err(config_error("the fill ring", "refused the initial frames"));
        }
        let batch_len = config.batch.clamp(1, half);
        Ok(XdpTransport {
            local,
            umem,
            fill,
            comp,
            tx,
            rx,
            pending: Vec::with_capacity(free.len()),
            in_flight: 0,
            tracking: None,
            refill: Vec::with_capacity(half),
            free,
            batch: vec![FrameDesc::default(); batch_len],
            max_frame_len,
            program,
            attach,
            bind,
            stats: XdpStats::default(),
            config,
        })
    }

    /// The attach and bind modes obtained.
    pub fn modes(&self) -> (AttachMode, BindMode) {
        (self.attach, self.bind)
    }

    /// Counters of this socket.
    pub fn stats(&self) -> XdpStats {
        self.stats
    }

    /// Counters of the XDP program (all queues of the interface).
    pub fn program_stats(&self) -> Result<ProgramStats, TransportError> {
        self.program
            .lock()
            .map_err(|_| config_error("the XDP program", "a holder panicked"))?
            .stats()
    }

    /// Puts as many `refill` frames on the fill ring as it has room for.
    fn return_to_fill_ring(&mut self) {
        let waiting = self.refill.len();
        if waiting == 0 {
            return;
        }
        let room = self
            .fill
            .nb_free(u32::try_from(waiting).unwrap_or(u32::MAX)) as usize;
        let count = room.min(waiting);
        if count == 0 {
            return;
        }
        let start = waiting - count;
        let descs = Slot::descs(&self.refill[start..]);
        // SAFETY: these frames are ours (read and done with); the fill ring
        // has room for all of them, so they all go, and their tokens are
        // dropped below.
        let produced = unsafe { self.fill.produce(descs) };
        if produced == count {
            self.refill.truncate(start);
        }
    }

    /// Sends up to `budget` received relay frames back to their senders
    /// from the frames they arrived in: the Ethernet addresses, and with
    /// UDP encapsulation the IPv4 addresses and UDP ports, are swapped in
    /// place (a swap leaves the IPv4 and UDP checksums valid), and the
    /// frame goes on the TX ring as it is. No copy and no relay logic: the
    /// floor of a request and response over AF_XDP, for benchmarks.
    /// Frames that are no relay frame for this endpoint are dropped and
    /// counted. Returns how many went back.
    pub fn reflect(&mut self, now: Instant, budget: usize) -> Result<usize, TransportError> {
        self.reclaim();
        // Each reflected frame leaves the receive side: a free frame takes
        // its place on the fill ring, so only as many as are free.
        let want = budget.min(self.batch.len()).min(self.free.len());
        // SAFETY: the RX ring returns frames of this UMEM that the kernel
        // has filled; they are ours until we hand them back to a ring.
        let n = unsafe { self.rx.consume(&mut self.batch[..want]) };
        let encap = self.config.encap;
        let mut reflected = 0;
        for i in 0..n {
            let mut slot = Slot(self.batch[i]);
            // SAFETY: `slot` holds the only token of a frame just taken
            // from the RX ring; nothing else refers to it.
            let mut data = unsafe { self.umem.data_mut(&mut slot.0) };
            let ours = matches!(
                encap::parse(data.contents(), encap),
                Ok((_, dst, _)) if dst.same_address(&self.local)
            );
            // The swaps below assume an IPv4 header without options.
            let plain_ipv4 = match encap {
                Encapsulation::Udp { .. } => data.contents().get(14).is_some_and(|b| b & 0x0f == 5),
                Encapsulation::Ethernet { .. } => true,
            };
            let ours = ours && plain_ipv4;
            if !ours {
                self.stats.dropped += 1;
                self.refill.push(slot);
                continue;
            }
            let frame = data.contents_mut();
            let swap = |frame: &mut [u8], a: usize, b: usize, len: usize| {
                for k in 0..len {
                    frame.swap(a + k, b + k);
                }
            };
            swap(frame, 0, 6, 6);
            if let Encapsulation::Udp { .. } = encap {
                swap(frame, 26, 30, 4);
                swap(frame, 34, 36, 2);
            }
            self.pending.push(slot);
            if let Some(spare) = self.free.pop() {
                self.refill.push(spare);
            }
            reflected += 1;
        }
        self.return_to_fill_ring();
        self.wake_fill_ring()?;
        self.stats.received += reflected as u64;
        self.flush(now)?;
        Ok(reflected)
    }

    /// Wakes the kernel when the fill ring asks for it (NEED_WAKEUP).
    fn wake_fill_ring(&mut self) -> Result<(), TransportError> {
        if self.fill.needs_wakeup() {
            self.stats.wakeups += 1;
            self.fill
                .wakeup(self.rx.fd_mut(), 0)
                .map_err(|source| TransportError::Syscall {
                    call: "poll",
                    source,
                })?;
        }
        Ok(())
    }

    /// Takes back the frames the kernel has finished sending.
    fn reclaim(&mut self) {
        let batch = self.batch.len();
        loop {
            // SAFETY: the completion ring only returns frames of this
            // UMEM that we put on the TX ring; they are ours again.
            let n = unsafe { self.comp.consume(&mut self.batch[..batch]) };
            self.free.extend(self.batch[..n].iter().copied().map(Slot));
            self.in_flight = self.in_flight.saturating_sub(n);
            if let Some((batches, delays)) = &mut self.tracking {
                let now = std::time::Instant::now();
                let mut left = n;
                while left > 0 {
                    let Some((count, since)) = batches.front_mut() else {
                        break;
                    };
                    let done = left.min(*count);
                    delays.extend(std::iter::repeat_n(now - *since, done));
                    *count -= done;
                    left -= done;
                    if *count == 0 {
                        batches.pop_front();
                    }
                }
            }
            if n < batch {
                break;
            }
        }
    }
}

impl Transport for XdpTransport {
    fn track_completions(&mut self, on: bool) {
        self.tracking = on.then(Default::default);
    }

    fn completion_times(&mut self, sink: &mut dyn FnMut(Duration)) {
        if let Some((_, delays)) = &mut self.tracking {
            for delay in delays.drain(..) {
                sink(delay);
            }
        }
    }

    fn counters(&self) -> crate::transport::TransportCounters {
        let stats = self.stats;
        crate::transport::TransportCounters {
            kind: "xdp",
            received: stats.received,
            sent: stats.sent,
            dropped: stats.dropped,
            send_stalls: stats.tx_full,
            send_errors: 0,
            wakeups: stats.wakeups,
        }
    }

    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local
    }

    fn recv(
        &mut self,
        _now: Instant,
        budget: usize,
        deliver: &mut Deliver<'_>,
    ) -> Result<usize, TransportError> {
        let want = budget.min(self.batch.len());
        // SAFETY: the RX ring returns frames of this UMEM that the kernel
        // has filled; they are ours until we put them on the fill ring.
        let n = unsafe { self.rx.consume(&mut self.batch[..want]) };
        let mut delivered = 0;
        for desc in &self.batch[..n] {
            // SAFETY: `desc` came from our RX ring (above) and is read
            // only here, before it goes back to the fill ring.
            let data = unsafe { self.umem.data(desc) };
            match encap::parse(data.contents(), self.config.encap) {
                Ok((src, dst, relay)) if dst.same_address(&self.local) => {
                    deliver(src, relay);
                    delivered += 1;
                }
                _ => self.stats.dropped += 1,
            }
        }
        // Read frames go back to the fill ring. The kernel may release
        // fill-ring entries later than it fills RX entries, so the ring can
        // look full for a moment: what does not fit waits in `refill` and
        // goes first next time, never to another pool.
        self.refill
            .extend(self.batch[..n].iter().copied().map(Slot));
        self.return_to_fill_ring();
        self.wake_fill_ring()?;
        self.stats.received += delivered as u64;
        Ok(delivered)
    }

    fn send(&mut self, fill: &mut Fill<'_>) -> Result<bool, TransportError> {
        if self.free.is_empty() {
            self.reclaim();
        }
        let Some(mut slot) = self.free.pop() else {
            self.stats.tx_full += 1;
            return Ok(false);
        };
        let header_len = self.config.encap.header_len();
        // SAFETY: `slot` is the token of a free frame: no ring and no
        // other reference holds it.
        let mut data = unsafe { self.umem.data_mut(&mut slot.0) };
        let mut cursor = data.cursor();
        let capacity = cursor.buf_len();
        cursor.set_pos(capacity);
        let buf = data.contents_mut();
        let end = (header_len + self.max_frame_len).min(buf.len());
        let Some((dst, len)) = fill(&mut buf[header_len..end]) else {
            self.free.push(slot);
            return Ok(true);
        };
        if len > self.max_frame_len {
            self.free.push(slot);
            return Err(config_error(
                "send",
                format!(
                    "frame of {len} bytes over the {} byte limit",
                    self.max_frame_len
                ),
            ));
        }
        let frame_len = self.config.encap.frame_len(len);
        encap::emit(
            self.config.encap,
            &self.local,
            &dst,
            len,
            &mut buf[..frame_len],
        );
        data.cursor().set_pos(frame_len);
        self.pending.push(slot);
        Ok(true)
    }

    fn flush(&mut self, _now: Instant) -> Result<(), TransportError> {
        if !self.pending.is_empty() {
            let produced = Slot::into_kernel(&mut self.pending, &mut self.tx);
            self.stats.sent += produced as u64;
            self.in_flight += produced;
            if let Some((batches, _)) = &mut self.tracking {
                batches.push_back((produced, std::time::Instant::now()));
            }
            // Else the TX ring is full: they go with the next flush.
        }
        // Kick only while frames wait on the TX ring: an idle receiver
        // makes no syscall. In copy mode one kick sends a limited batch
        // (the kernel's TX budget), so kick again while kicks make
        // progress, a few times at most.
        let mut kicks = 0;
        while self.in_flight > 0 && kicks < 4 && self.tx.needs_wakeup() {
            kicks += 1;
            self.stats.wakeups += 1;
            if let Err(source) = self.tx.wakeup() {
                return Err(TransportError::Syscall {
                    call: "sendto",
                    source,
                });
            }
            let before = self.in_flight;
            self.reclaim();
            if self.in_flight == before {
                break;
            }
        }
        self.reclaim();
        Ok(())
    }
}
