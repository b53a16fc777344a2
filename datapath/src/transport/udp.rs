//! Relay frames over a kernel UDP socket (IPv4). This module owns the socket
//! and every buffer the transport needs, all allocated once in
//! [`UdpTransport::bind`]:
//!
//! * RX: `batch` buffers of `max_frame_len` bytes (and one byte more, so
//!   that a single `recvfrom` sees a datagram that is too long) that one
//!   `recvmmsg` call, or one `recvfrom` into the first, fills per
//!   [`Transport::recv`];
//! * TX: a pool of `batch` slots of `max_frame_len` bytes, handed out by
//!   [`Transport::send`] and sent oldest first by [`Transport::flush`] with
//!   `sendmmsg`, or `sendto` when one frame waits.
//!
//! One datagram at a time costs less with the plain calls: an idle socket
//! is polled with one `recvfrom` (a `recvmmsg` also sets up a header per
//! buffer and, after a datagram, tries the next one before it returns),
//! and a flush of a single frame is one `sendto`. So `recv` batches only
//! while datagrams keep coming: after a `recvfrom` that found one, the
//! next call is a `recvmmsg`, and a `recvmmsg` that finds fewer than two
//! goes back to `recvfrom`. A request and response exchange pays the
//! single-datagram price; a stream is read in batches.
//!
//! A datagram's payload is exactly one relay frame (docs/wire.md, section
//! 2.1), so these nodes speak to AF_XDP nodes. The kernel owns the outer
//! headers, so the Ethernet address of every [`Endpoint`] here is all zeros.
//!
//! On receive, a datagram longer than `max_frame_len` (the kernel sets
//! `MSG_TRUNC`) or one that is not exactly one well-formed relay frame is
//! dropped and counted in [`UdpStats`], never delivered.
//!
//! The socket is non-blocking: an empty socket means no frames, and a full
//! send buffer leaves the unsent frames queued for the next flush.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};

use super::{Deliver, Fill, Transport, TransportError};
use crate::time::Instant;
use crate::wire::encap::Endpoint;
use crate::wire::ethernet::EthernetAddress;
use crate::wire::RelayPacket;

/// The most datagrams one `recvmmsg` or `sendmmsg` call moves: Linux caps
/// the vector length at `UIO_MAXIOV`. This bounds [`UdpConfig::batch`].
pub const MAX_BATCH: usize = 1024;

/// Up to this many datagrams, a `recvmmsg` or `sendmmsg` call sets up its
/// I/O vectors in a small array (a large one costs its initialisation on
/// every call, idle polls included).
const SMALL_BATCH: usize = 64;

/// The largest UDP payload over IPv4 (65535 - 20 - 8 bytes). This bounds
/// [`UdpConfig::max_frame_len`].
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// How a [`UdpTransport`] is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    /// Datagrams per `recvmmsg` call and TX slots per flush,
    /// 1..=[`MAX_BATCH`].
    pub batch: usize,
    /// The longest relay frame carried, in bytes, 1..=[`MAX_UDP_PAYLOAD`]:
    /// 1472 fits a 1500-byte IP MTU.
    pub max_frame_len: usize,
    /// Asks for `SO_BUSY_POLL`. Currently a no-op: nix exposes no safe
    /// setter for it and this crate allows no `unsafe` outside AF_XDP.
    pub busy_poll: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            batch: 64,
            max_frame_len: 1472,
            busy_poll: false,
        }
    }
}

/// What a [`UdpTransport`] has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpStats {
    /// Frames delivered to the caller.
    pub received: u64,
    /// Frames the kernel accepted for sending.
    pub sent: u64,
    /// Datagrams longer than `max_frame_len`, dropped.
    pub dropped_truncated: u64,
    /// Datagrams that are not exactly one well-formed relay frame, dropped.
    pub dropped_malformed: u64,
    /// Flushes cut short by a full socket send buffer; their unsent frames
    /// stayed queued.
    pub would_block: u64,
    /// Frames the kernel refused for their destination (no route,
    /// firewall, bad address), dropped; the others go on.
    pub send_errors: u64,
}

/// A [`Transport`] over one non-blocking IPv4 UDP socket.
///
/// Not `Send`: nix's preallocated `mmsghdr` arrays hold raw pointers, so
/// create the transport on the thread that drives it.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    local: Endpoint,
    config: UdpConfig,
    stats: UdpStats,
    /// `batch` receive buffers of `max_frame_len` bytes, back to back, and
    /// one byte more: a single `recvfrom` reads into the first buffer and
    /// that byte, so a datagram longer than `max_frame_len` shows.
    rx_buffers: Vec<u8>,
    rx_headers: MultiHeaders<SockaddrIn>,
    /// The next `recv` reads with `recvmmsg` (datagrams are coming one
    /// after another) rather than one `recvfrom`.
    rx_batching: bool,
    /// `batch` send slots of `max_frame_len` bytes, back to back, used as
    /// a ring: the queued frames are the `tx_queued` slots from `tx_head`.
    tx_buffers: Vec<u8>,
    tx_lens: Vec<usize>,
    tx_dests: Vec<SockaddrIn>,
    tx_head: usize,
    tx_queued: usize,
    /// The queued frames' destinations in queue order, rebuilt per
    /// `sendmmsg` call (capacity `batch`, so never reallocated).
    tx_addrs: Vec<Option<SockaddrIn>>,
    tx_headers: MultiHeaders<SockaddrIn>,
}

fn syscall(call: &'static str, source: io::Error) -> TransportError {
    TransportError::Syscall { call, source }
}

fn errno(call: &'static str, errno: Errno) -> TransportError {
    syscall(call, io::Error::from(errno))
}

fn endpoint(addr: SockaddrIn) -> Endpoint {
    Endpoint {
        mac: EthernetAddress::default(),
        ip: addr.ip(),
        port: addr.port(),
    }
}

impl UdpTransport {
    /// Binds a non-blocking UDP socket to `addr` (port 0 picks a free
    /// port) and allocates every buffer the transport will use.
    pub fn bind(addr: SocketAddrV4, config: UdpConfig) -> Result<Self, TransportError> {
        if !(1..=MAX_BATCH).contains(&config.batch) {
            return Err(TransportError::Config(format!(
                "UDP batch {} is not in 1..={MAX_BATCH}",
                config.batch
            )));
        }
        if !(1..=MAX_UDP_PAYLOAD).contains(&config.max_frame_len) {
            return Err(TransportError::Config(format!(
                "UDP max_frame_len {} is not in 1..={MAX_UDP_PAYLOAD}",
                config.max_frame_len
            )));
        }
        let socket = UdpSocket::bind(addr).map_err(|source| syscall("bind", source))?;
        socket
            .set_nonblocking(true)
            .map_err(|source| syscall("ioctl(FIONBIO)", source))?;
        let local = match socket
            .local_addr()
            .map_err(|source| syscall("getsockname", source))?
        {
            SocketAddr::V4(local) => local,
            SocketAddr::V6(local) => {
                return Err(TransportError::Config(format!(
                    "{local} is not an IPv4 address"
                )))
            }
        };
        let frames = config.batch * config.max_frame_len;
        Ok(UdpTransport {
            socket,
            local: endpoint(SockaddrIn::from(local)),
            config,
            stats: UdpStats::default(),
            rx_buffers: vec![0; frames + 1],
            rx_headers: MultiHeaders::preallocate(config.batch, None),
            rx_batching: false,
            tx_buffers: vec![0; frames],
            tx_lens: vec![0; config.batch],
            tx_dests: vec![SockaddrIn::new(0, 0, 0, 0, 0); config.batch],
            tx_head: 0,
            tx_queued: 0,
            tx_addrs: Vec::with_capacity(config.batch),
            tx_headers: MultiHeaders::preallocate(config.batch, None),
        })
    }

    /// What this transport has done so far.
    pub fn stats(&self) -> UdpStats {
        self.stats
    }

    /// Frames queued by [`Transport::send`] that no flush has sent yet.
    pub fn queued(&self) -> usize {
        self.tx_queued
    }

    /// Forgets the `count` oldest queued frames, which frees their slots.
    fn release(&mut self, count: usize) {
        self.tx_head = (self.tx_head + count) % self.config.batch;
        self.tx_queued -= count;
    }
}

impl Transport for UdpTransport {
    fn counters(&self) -> super::TransportCounters {
        let stats = self.stats;
        super::TransportCounters {
            kind: "udp",
            received: stats.received,
            sent: stats.sent,
            dropped: stats.dropped_truncated + stats.dropped_malformed,
            send_stalls: stats.would_block,
            send_errors: stats.send_errors,
            wakeups: 0,
        }
    }

    fn max_frame_len(&self) -> usize {
        self.config.max_frame_len
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
        let want = budget.min(self.config.batch);
        if want == 0 {
            return Ok(0);
        }
        if want == 1 || !self.rx_batching {
            let (delivered, came) = self.recv_one(deliver)?;
            self.rx_batching = came && want > 1;
            return Ok(delivered);
        }
        let (delivered, datagrams) = if want <= SMALL_BATCH {
            self.recv_batch::<SMALL_BATCH>(want, deliver)?
        } else {
            self.recv_batch::<MAX_BATCH>(want, deliver)?
        };
        self.rx_batching = datagrams > 1;
        Ok(delivered)
    }

    fn send(&mut self, fill: &mut Fill<'_>) -> Result<bool, TransportError> {
        let batch = self.config.batch;
        if self.tx_queued == batch {
            return Ok(false);
        }
        let slot = (self.tx_head + self.tx_queued) % batch;
        let max = self.config.max_frame_len;
        let buffer = &mut self.tx_buffers[slot * max..(slot + 1) * max];
        let Some((dst, len)) = fill(buffer) else {
            return Ok(true);
        };
        if len > max {
            return Err(TransportError::Config(format!(
                "frame of {len} bytes over the {max} byte limit"
            )));
        }
        self.tx_lens[slot] = len;
        self.tx_dests[slot] = SockaddrIn::from(SocketAddrV4::new(dst.ip, dst.port));
        self.tx_queued += 1;
        Ok(true)
    }

    /// Sends the queued frames oldest first, retrying the rest when the
    /// kernel takes only part. A full socket buffer ends the flush with the
    /// unsent frames still queued. Any other error drops the frame the
    /// kernel refused (so one bad destination cannot wedge the queue),
    /// keeps the rest queued and is returned.
    fn flush(&mut self, _now: Instant) -> Result<(), TransportError> {
        while self.tx_queued > 0 {
            let (call, result) = if self.tx_queued == 1 {
                ("sendto", self.send_one())
            } else if self.tx_queued <= SMALL_BATCH {
                ("sendmmsg", self.send_batch::<SMALL_BATCH>())
            } else {
                ("sendmmsg", self.send_batch::<MAX_BATCH>())
            };
            match result {
                Ok(0) => {
                    // The kernel reports a failure to send even one
                    // frame as an error; never spin on a zero anyway.
                    self.stats.would_block += 1;
                    return Ok(());
                }
                Ok(sent) => {
                    self.stats.sent += sent as u64;
                    self.release(sent);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                    self.stats.would_block += 1;
                    return Ok(());
                }
                // The socket itself is broken: nothing will ever go out.
                Err(fatal @ (Errno::EBADF | Errno::ENOTSOCK | Errno::EFAULT)) => {
                    self.release(1);
                    return Err(errno(call, fatal));
                }
                // The first queued frame's destination is refused (route
                // gone, firewall, unusable address): drop that frame, count
                // it and go on, so one bad peer never stops the others.
                Err(_) => {
                    self.release(1);
                    self.stats.send_errors += 1;
                }
            }
        }
        Ok(())
    }
}

impl UdpTransport {
    /// One `recvfrom` into the first buffer; delivers what it read if that
    /// is one relay frame. Returns the frames delivered and whether a
    /// datagram came at all.
    fn recv_one(&mut self, deliver: &mut Deliver<'_>) -> Result<(usize, bool), TransportError> {
        let max = self.config.max_frame_len;
        let buffer = &mut self.rx_buffers[..=max];
        let (len, sender) = match self.socket.recv_from(buffer) {
            Ok(read) => read,
            Err(error) if is_transient(&error) => return Ok((0, false)),
            Err(error) => return Err(syscall("recvfrom", error)),
        };
        if len > max {
            self.stats.dropped_truncated += 1;
            return Ok((0, true));
        }
        let sender = match sender {
            SocketAddr::V4(sender) => Some(SockaddrIn::from(sender)),
            SocketAddr::V6(_) => None,
        };
        let delivered = take(&mut self.stats, sender, &buffer[..len], deliver);
        Ok((usize::from(delivered), true))
    }

    /// One `recvmmsg` of up to `want` (at most `N`) datagrams; delivers
    /// the relay frames. Returns the frames delivered and the datagrams
    /// read.
    fn recv_batch<const N: usize>(
        &mut self,
        want: usize,
        deliver: &mut Deliver<'_>,
    ) -> Result<(usize, usize), TransportError> {
        let want = want.min(N);
        // nix ties the I/O vectors' lifetime to the headers' borrow, so they
        // cannot live in `self`; an array on the stack, no larger than the
        // call needs, keeps this call free of allocation.
        let mut iovs: [Option<[IoSliceMut<'_>; 1]>; N] = [const { None }; N];
        let buffers = self.rx_buffers.chunks_exact_mut(self.config.max_frame_len);
        for (iov, buffer) in iovs.iter_mut().zip(buffers).take(want) {
            *iov = Some([IoSliceMut::new(buffer)]);
        }
        let messages = match recvmmsg(
            self.socket.as_raw_fd(),
            &mut self.rx_headers,
            iovs[..want].iter_mut().flatten(),
            MsgFlags::empty(),
            None,
        ) {
            Ok(messages) => messages,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok((0, 0)),
            Err(other) => return Err(errno("recvmmsg", other)),
        };
        let (mut delivered, mut datagrams) = (0usize, 0usize);
        for message in messages {
            datagrams += 1;
            if message.flags.contains(MsgFlags::MSG_TRUNC) {
                self.stats.dropped_truncated += 1;
                continue;
            }
            // The iterator ends early on an empty payload.
            let payload = message.iovs().next().unwrap_or_default();
            delivered += usize::from(take(&mut self.stats, message.address, payload, deliver));
        }
        Ok((delivered, datagrams))
    }

    /// One `sendto` of the oldest queued frame: how many went (0 or 1).
    fn send_one(&mut self) -> Result<usize, Errno> {
        let slot = self.tx_head;
        let start = slot * self.config.max_frame_len;
        let frame = &self.tx_buffers[start..start + self.tx_lens[slot]];
        let to = SocketAddrV4::from(self.tx_dests[slot]);
        match self.socket.send_to(frame, to) {
            Ok(_) => Ok(1),
            Err(error) => Err(error.raw_os_error().map_or(Errno::EIO, Errno::from_raw)),
        }
    }

    /// One `sendmmsg` of the oldest queued frames (at most `N`): how many
    /// the kernel took.
    fn send_batch<const N: usize>(&mut self) -> Result<usize, Errno> {
        let batch = self.config.batch;
        let max = self.config.max_frame_len;
        let count = self.tx_queued.min(N);
        let order = (0..count).map(|k| (self.tx_head + k) % batch);
        self.tx_addrs.clear();
        self.tx_addrs
            .extend(order.clone().map(|slot| Some(self.tx_dests[slot])));
        // As in `recv_batch`: the I/O vectors live on the stack.
        let mut iovs: [Option<[IoSlice<'_>; 1]>; N] = [const { None }; N];
        for (iov, slot) in iovs.iter_mut().zip(order) {
            let start = slot * max;
            *iov = Some([IoSlice::new(
                &self.tx_buffers[start..start + self.tx_lens[slot]],
            )]);
        }
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        sendmmsg(
            self.socket.as_raw_fd(),
            &mut self.tx_headers,
            iovs[..count].iter().flatten(),
            &self.tx_addrs[..],
            no_cmsgs,
            MsgFlags::empty(),
        )
        .map(|results| results.count())
    }
}

/// Delivers a datagram from `sender` if it is exactly one relay frame from
/// an IPv4 address (counted as received), else counts a malformed drop;
/// returns whether it was delivered.
fn take(
    stats: &mut UdpStats,
    sender: Option<SockaddrIn>,
    payload: &[u8],
    deliver: &mut Deliver<'_>,
) -> bool {
    match sender {
        Some(sender) if RelayPacket::new_datagram(payload).is_ok() => {
            deliver(endpoint(sender), payload);
            stats.received += 1;
            true
        }
        _ => {
            stats.dropped_malformed += 1;
            false
        }
    }
}

/// Whether a receive error only means "nothing now".
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant as StdInstant};

    use super::*;
    use crate::transport::test_frames::{number_of, numbered};

    fn loopback(config: UdpConfig) -> UdpTransport {
        UdpTransport::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), config).unwrap()
    }

    fn small(batch: usize) -> UdpConfig {
        UdpConfig {
            batch,
            ..UdpConfig::default()
        }
    }

    /// Calls `step` until it returns true; fails after 2 s, since loopback
    /// delivery is fast but not promised to be instant.
    fn poll_until(what: &str, mut step: impl FnMut() -> bool) {
        let deadline = StdInstant::now() + Duration::from_secs(2);
        while !step() {
            assert!(StdInstant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Queues frame `n` to `dst`; panics if the pool is full.
    fn queue(t: &mut UdpTransport, dst: Endpoint, n: u32) {
        assert!(t.send(&mut |buf| Some((dst, numbered(n, buf)))).unwrap());
    }

    fn flush_all(t: &mut UdpTransport) {
        poll_until("flush", || {
            t.flush(Instant::ZERO).unwrap();
            t.queued() == 0
        });
    }

    #[test]
    fn a_refused_destination_drops_its_frame_and_the_rest_go_out() {
        let mut a = loopback(UdpConfig::default());
        let mut b = loopback(UdpConfig::default());
        // Linux refuses UDP to port 0 with EINVAL: counted, not an error.
        let nowhere = Endpoint {
            port: 0,
            ..b.local_endpoint()
        };
        queue(&mut a, nowhere, 1);
        queue(&mut a, b.local_endpoint(), 2);
        queue(&mut a, nowhere, 3);
        queue(&mut a, b.local_endpoint(), 4);
        flush_all(&mut a);
        assert_eq!(a.stats().send_errors, 2);
        let mut got = Vec::new();
        poll_until("2 frames", || {
            b.recv(Instant::ZERO, 64, &mut |_, bytes| {
                got.push(number_of(bytes))
            })
            .unwrap();
            got.len() == 2
        });
        assert_eq!(got, [2, 4]);
        // A flush of one frame takes the single-datagram path: the same
        // refusal is counted and the frame dropped.
        queue(&mut a, nowhere, 5);
        flush_all(&mut a);
        assert_eq!(a.stats().send_errors, 3);
        assert_eq!(a.queued(), 0);
    }

    #[test]
    fn a_burst_is_read_in_batches_and_a_lone_datagram_by_itself() {
        let mut a = loopback(UdpConfig::default());
        let mut b = loopback(UdpConfig::default());
        for n in 0..10 {
            queue(&mut a, b.local_endpoint(), n);
        }
        flush_all(&mut a);
        let mut got = Vec::new();
        let mut per_call = Vec::new();
        poll_until("10 frames", || {
            let n = b
                .recv(Instant::ZERO, 64, &mut |_, bytes| {
                    got.push(number_of(bytes))
                })
                .unwrap();
            if n > 0 {
                per_call.push(n);
            }
            got.len() == 10
        });
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        // An idle socket's first datagram comes alone (one recvfrom); the
        // ones behind it in one batch.
        assert_eq!(per_call.first(), Some(&1), "{per_call:?}");
        assert!(per_call.iter().any(|&n| n > 1), "{per_call:?}");
        // Back to idle, then one frame: read alone again, in order.
        assert_eq!(b.recv(Instant::ZERO, 64, &mut |_, _| {}).unwrap(), 0);
        queue(&mut a, b.local_endpoint(), 10);
        flush_all(&mut a);
        poll_until("frame 10", || {
            b.recv(Instant::ZERO, 64, &mut |_, bytes| {
                got.push(number_of(bytes))
            })
            .unwrap();
            got.len() == 11
        });
        assert_eq!(got[10], 10);
        assert_eq!(b.stats().received, 11);
    }

    #[test]
    fn two_transports_exchange_numbered_frames_in_batches() {
        const COUNT: u32 = 1000;
        let mut a = loopback(UdpConfig::default());
        let mut b = loopback(UdpConfig::default());
        let (at_a, at_b) = (a.local_endpoint(), b.local_endpoint());
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        let mut next = 0;
        while next < COUNT {
            let end = (next + 64).min(COUNT);
            for n in next..end {
                queue(&mut a, at_b, n);
                queue(&mut b, at_a, n);
            }
            flush_all(&mut a);
            flush_all(&mut b);
            let want = usize::try_from(end).unwrap();
            poll_until("a batch", || {
                a.recv(Instant::ZERO, usize::MAX, &mut |src, bytes| {
                    assert_eq!(src, at_b);
                    got_a.push(number_of(bytes));
                })
                .unwrap();
                b.recv(Instant::ZERO, usize::MAX, &mut |src, bytes| {
                    assert_eq!(src, at_a);
                    got_b.push(number_of(bytes));
                })
                .unwrap();
                got_a.len() >= want && got_b.len() >= want
            });
            next = end;
        }
        // Loopback keeps order in practice; exactly-once is what matters.
        got_a.sort_unstable();
        got_b.sort_unstable();
        let all: Vec<u32> = (0..COUNT).collect();
        assert_eq!(got_a, all);
        assert_eq!(got_b, all);
        for t in [&a, &b] {
            let stats = t.stats();
            assert_eq!((stats.sent, stats.received), (1000, 1000), "{stats:?}");
            assert_eq!(stats.dropped_truncated + stats.dropped_malformed, 0);
        }
        assert_eq!(at_a.mac, EthernetAddress::default());
    }

    #[test]
    fn budget_and_batch_limit_how_many_frames_recv_delivers() {
        let mut a = loopback(UdpConfig::default());
        let mut b = loopback(small(4));
        for n in 0..10 {
            queue(&mut a, b.local_endpoint(), n);
        }
        flush_all(&mut a);
        let mut nothing = 0;
        assert_eq!(
            b.recv(Instant::ZERO, 0, &mut |_, _| nothing += 1).unwrap(),
            0
        );
        assert_eq!(nothing, 0);
        let mut got = Vec::new();
        let mut calls = 0;
        poll_until("10 frames, 3 at a time", || {
            let before = got.len();
            let n = b
                .recv(Instant::ZERO, 3, &mut |_, bytes| got.push(number_of(bytes)))
                .unwrap();
            assert_eq!(n, got.len() - before);
            assert!(n <= 3, "budget 3 gave {n}");
            calls += usize::from(n > 0);
            got.len() == 10
        });
        assert!(calls >= 4, "{calls} calls");
        for n in 0..10 {
            queue(&mut a, b.local_endpoint(), n);
        }
        flush_all(&mut a);
        let mut total = 0;
        poll_until("10 frames, at most a batch of 4 at a time", || {
            let n = b.recv(Instant::ZERO, 100, &mut |_, _| {}).unwrap();
            assert!(n <= 4, "batch 4 gave {n}");
            total += n;
            total == 10
        });
    }

    #[test]
    fn send_refuses_when_the_pool_is_full_and_works_again_after_flush() {
        let mut a = loopback(small(4));
        let mut b = loopback(UdpConfig::default());
        let to_b = b.local_endpoint();
        for n in 0..4 {
            queue(&mut a, to_b, n);
        }
        let mut called = false;
        let accepted = a
            .send(&mut |_| {
                called = true;
                None
            })
            .unwrap();
        assert!(!accepted && !called, "a full pool must not call fill");
        assert_eq!(a.queued(), 4);
        flush_all(&mut a);
        assert_eq!(a.stats().sent, 4);
        queue(&mut a, to_b, 4);
        flush_all(&mut a);
        let mut got = Vec::new();
        poll_until("5 frames", || {
            b.recv(Instant::ZERO, 64, &mut |_, bytes| {
                got.push(number_of(bytes))
            })
            .unwrap();
            got.len() == 5
        });
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_fill_that_writes_nothing_leaves_the_slot_free() {
        let mut a = loopback(small(2));
        for _ in 0..5 {
            assert!(a.send(&mut |_| None).unwrap());
        }
        assert_eq!(a.queued(), 0);
        a.flush(Instant::ZERO).unwrap();
        assert_eq!(a.stats().sent, 0);
    }

    #[test]
    fn an_oversized_frame_length_is_an_error_and_queues_nothing() {
        let mut a = loopback(small(2));
        let to_self = a.local_endpoint();
        assert!(a.send(&mut |_| Some((to_self, 1473))).is_err());
        assert_eq!(a.queued(), 0);
    }

    #[test]
    fn an_oversized_datagram_is_dropped_and_counted() {
        let mut b = loopback(UdpConfig::default());
        let to_b = SocketAddrV4::new(b.local_endpoint().ip, b.local_endpoint().port);
        let plain = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        plain.send_to(&[0x58; 2000], to_b).unwrap();
        let mut frame = [0; 64];
        let len = numbered(7, &mut frame);
        plain.send_to(&frame[..len], to_b).unwrap();
        let mut got = Vec::new();
        poll_until("both datagrams", || {
            b.recv(Instant::ZERO, 64, &mut |_, bytes| {
                got.push(number_of(bytes))
            })
            .unwrap();
            got.len() + usize::try_from(b.stats().dropped_truncated).unwrap() == 2
        });
        assert_eq!(got, [7]);
        assert_eq!(b.stats().dropped_truncated, 1);
        assert_eq!(b.stats().received, 1);
        // Oversized datagrams in a burst (read with recvmmsg): the same.
        let len8 = numbered(8, &mut frame);
        plain.send_to(&frame[..len8], to_b).unwrap();
        plain.send_to(&[0x58; 1473], to_b).unwrap();
        let len9 = numbered(9, &mut frame);
        plain.send_to(&frame[..len9], to_b).unwrap();
        poll_until("three more datagrams", || {
            b.recv(Instant::ZERO, 64, &mut |_, bytes| {
                got.push(number_of(bytes))
            })
            .unwrap();
            got.len() + usize::try_from(b.stats().dropped_truncated).unwrap() == 5
        });
        assert_eq!(got, [7, 8, 9]);
        assert_eq!(b.stats().dropped_truncated, 2);
    }

    #[test]
    fn a_datagram_that_is_not_exactly_one_frame_is_dropped_and_counted() {
        let mut b = loopback(UdpConfig::default());
        let to_b = SocketAddrV4::new(b.local_endpoint().ip, b.local_endpoint().port);
        let plain = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut frame = [0; 64];
        let len = numbered(7, &mut frame);
        plain.send_to(&frame[..len + 1], to_b).unwrap();
        plain.send_to(b"hello", to_b).unwrap();
        plain.send_to(&[], to_b).unwrap();
        let mut delivered = 0;
        poll_until("three drops", || {
            b.recv(Instant::ZERO, 64, &mut |_, _| delivered += 1)
                .unwrap();
            b.stats().dropped_malformed == 3
        });
        assert_eq!(delivered, 0);
    }

    #[test]
    fn recv_on_an_empty_socket_returns_zero_immediately() {
        let mut b = loopback(UdpConfig::default());
        let start = StdInstant::now();
        let mut delivered = 0;
        let n = b
            .recv(Instant::ZERO, 64, &mut |_, _| delivered += 1)
            .unwrap();
        assert_eq!((n, delivered), (0, 0));
        assert!(start.elapsed() < Duration::from_millis(500), "recv blocked");
    }

    #[test]
    fn local_endpoint_names_the_port_the_kernel_picked() {
        let a = loopback(UdpConfig::default());
        let local = a.local_endpoint();
        assert_eq!(local.ip, Ipv4Addr::LOCALHOST);
        assert_ne!(local.port, 0);
        assert_eq!(a.max_frame_len(), 1472);
    }

    #[test]
    fn a_bad_config_or_address_is_an_error() {
        let any = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        for config in [
            small(0),
            small(MAX_BATCH + 1),
            UdpConfig {
                max_frame_len: 0,
                ..UdpConfig::default()
            },
            UdpConfig {
                max_frame_len: MAX_UDP_PAYLOAD + 1,
                ..UdpConfig::default()
            },
        ] {
            assert!(matches!(
                UdpTransport::bind(any, config),
                Err(TransportError::Config(_))
            ));
        }
        let a = loopback(UdpConfig::default());
        let taken = SocketAddrV4::new(Ipv4Addr::LOCALHOST, a.local_endpoint().port);
        match UdpTransport::bind(taken, UdpConfig::default()) {
            Err(TransportError::Syscall { call, .. }) => assert_eq!(call, "bind"),
            other => panic!("expected a bind error, got {other:?}"),
        }
    }
}
