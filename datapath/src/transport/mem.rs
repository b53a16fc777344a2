//! An in-process network for deterministic protocol tests and the `mem`
//! demo: hosts attached to one [`MemNetwork`] exchange real Ethernet +
//! IPv4 + UDP frames (built and checked by [`crate::wire::encap`]), delayed
//! and damaged by a seeded fault injector. Time is whatever the callers
//! pass as `now`: virtual time in simulations, a monotonic clock in the
//! threaded demo.
//!
//! Faults act per frame at [`Transport::flush`], in this order: a frame to
//! or from a host that is down is lost; otherwise it is lost with
//! probability `loss`; it is corrupted (one bit of the IP packet flipped)
//! with probability `corrupt`, which the receiver's IPv4 or UDP checksum
//! turns into a counted drop, as on a real link; it is delayed by `latency` plus a uniform share of
//! `jitter`, and with probability `reorder` by a further `reorder_delay`,
//! so later frames overtake it; and with probability `duplicate` a second
//! copy travels with its own delay.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Deliver, Fill, Transport, TransportError};
use crate::time::Instant;
use crate::wire::encap::{self, Encapsulation, Endpoint, DEFAULT_UDP_PORT};
use crate::wire::ethernet::{EthernetAddress, HEADER_LEN as ETHERNET_HEADER_LEN};

/// What the network does to frames. The default is a perfect link with no
/// delay.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame arrives twice.
    pub duplicate: f64,
    /// Probability that a frame is held back by `reorder_delay`.
    pub reorder: f64,
    /// Probability that one bit of a frame is flipped.
    pub corrupt: f64,
    /// Base one-way delay.
    pub latency: Duration,
    /// Up to this much more delay, uniformly.
    pub jitter: Duration,
    /// The extra delay of a reordered frame.
    pub reorder_delay: Duration,
}

impl Faults {
    /// A lossy, reordering, duplicating link: `loss` with 5 % duplicates,
    /// 10 % reordering and 100-300 µs delay.
    pub fn lossy(loss: f64) -> Faults {
        Faults {
            loss,
            duplicate: 0.05,
            reorder: 0.10,
            corrupt: 0.0,
            latency: Duration::from_micros(100),
            jitter: Duration::from_micros(200),
            reorder_delay: Duration::from_micros(500),
        }
    }
}

/// What the network did, summed over all hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemStats {
    /// Frames handed to the network.
    pub sent: u64,
    /// Frames handed to a receiving host (duplicates counted).
    pub delivered: u64,
    /// Frames lost (random loss or a host down).
    pub lost: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Frames with a flipped bit.
    pub corrupted: u64,
    /// Frames held back to be overtaken.
    pub reordered: u64,
}

/// A frame on its way: ordered by arrival time, then by send order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    arrival: Instant,
    order: u64,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Net {
    rng: fastrand::Rng,
    faults: Faults,
    mtu: usize,
    order: u64,
    down: Vec<u8>,
    queues: HashMap<u8, BinaryHeap<Reverse<InFlight>>>,
    stats: MemStats,
}

impl Net {
    fn delay(&mut self) -> Duration {
        let jitter = self.faults.jitter.mul_f64(self.rng.f64());
        self.faults.latency + jitter
    }

    fn enqueue(&mut self, dst: u8, arrival: Instant, bytes: Vec<u8>) {
        self.order += 1;
        let order = self.order;
        self.queues.entry(dst).or_default().push(Reverse(InFlight {
            arrival,
            order,
            bytes,
        }));
    }

    fn transmit(&mut self, now: Instant, src: u8, dst: u8, mut bytes: Vec<u8>) {
        self.stats.sent += 1;
        if self.down.contains(&src) || self.down.contains(&dst) || self.rng.f64() < self.faults.loss
        {
            self.stats.lost += 1;
            return;
        }
        // Corruption hits the IP packet, as a faulty router that rewrites
        // the Ethernet FCS would; damage to the Ethernet header itself is
        // caught by the FCS on a real link and is then plain loss.
        if self.rng.f64() < self.faults.corrupt && bytes.len() > ETHERNET_HEADER_LEN {
            let at = self.rng.usize(ETHERNET_HEADER_LEN..bytes.len());
            bytes[at] ^= 1 << self.rng.u8(..8);
            self.stats.corrupted += 1;
        }
        if self.rng.f64() < self.faults.duplicate {
            self.stats.duplicated += 1;
            let arrival = now + self.delay();
            self.enqueue(dst, arrival, bytes.clone());
        }
        let mut arrival = now + self.delay();
        if self.rng.f64() < self.faults.reorder {
            self.stats.reordered += 1;
            arrival += self.faults.reorder_delay;
        }
        self.enqueue(dst, arrival, bytes);
    }
}

/// The shared medium. Cheap to clone; every clone is the same network.
#[derive(Debug, Clone)]
pub struct MemNetwork {
    net: Arc<Mutex<Net>>,
}

/// The endpoint of host `host`: MAC 02:00:00:00:00:host, IP 198.18.0.host.
pub fn host_endpoint(host: u8) -> Endpoint {
    Endpoint {
        mac: EthernetAddress([2, 0, 0, 0, 0, host]),
        ip: Ipv4Addr::new(198, 18, 0, host),
        port: DEFAULT_UDP_PORT,
    }
}

fn host_of(endpoint: &Endpoint) -> Option<u8> {
    let [a, b, c, d] = endpoint.ip.octets();
    ((a, b, c) == (198, 18, 0) && endpoint.mac == host_endpoint(d).mac).then_some(d)
}

impl MemNetwork {
    /// A network with the given faults; `seed` makes every run with the
    /// same inputs take the same course. `mtu` is the IP MTU.
    pub fn new(seed: u64, faults: Faults, mtu: usize) -> Self {
        MemNetwork {
            net: Arc::new(Mutex::new(Net {
                rng: fastrand::Rng::with_seed(seed),
                faults,
                mtu,
                order: 0,
                down: Vec::new(),
                queues: HashMap::new(),
                stats: MemStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        // A panic while holding the lock can only come from a test's own
        // assertion; the network's state is still consistent then.
        self.net
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Attaches host `host` (1..=254) and returns its transport.
    ///
    /// # Panics
    /// If `host` is 0 or 255.
    pub fn attach(&self, host: u8) -> MemTransport {
        assert!((1..=254).contains(&host), "host numbers are 1..=254");
        let mtu = self.lock().mtu;
        MemTransport {
            network: self.clone(),
            host,
            endpoint: host_endpoint(host),
            encap: Encapsulation::default(),
            max_frame_len: mtu.saturating_sub(28),
            outbox: Vec::new(),
            tx_capacity: 256,
            drops: 0,
        }
    }

    /// Changes the faults from now on (frames in flight keep their fate).
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Takes a host off the network (every frame to or from it is lost) or
    /// puts it back.
    pub fn set_host_up(&self, host: u8, up: bool) {
        let mut net = self.lock();
        net.down.retain(|&h| h != host);
        if !up {
            net.down.push(host);
        }
    }

    /// The earliest arrival of a frame in flight, for simulators that
    /// advance virtual time.
    pub fn next_arrival(&self) -> Option<Instant> {
        let net = self.lock();
        net.queues
            .values()
            .filter_map(|q| q.peek().map(|f| f.0.arrival))
            .min()
    }

    /// What the network has done so far.
    pub fn stats(&self) -> MemStats {
        self.lock().stats
    }
}

/// One host's attachment to a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    network: MemNetwork,
    host: u8,
    endpoint: Endpoint,
    encap: Encapsulation,
    max_frame_len: usize,
    outbox: Vec<(u8, Vec<u8>)>,
    tx_capacity: usize,
    drops: u64,
}

impl MemTransport {
    /// Frames this host received but dropped: damaged (checksum), not
    /// addressed to it, or malformed outside the relay frame.
    pub fn drops(&self) -> u64 {
        self.drops
    }
}

impl Transport for MemTransport {
    fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    fn local_endpoint(&self) -> Endpoint {
        self.endpoint
    }

    fn recv(
        &mut self,
        now: Instant,
        budget: usize,
        deliver: &mut Deliver<'_>,
    ) -> Result<usize, TransportError> {
        let mut arrived = Vec::new();
        {
            let mut net = self.network.lock();
            if let Some(queue) = net.queues.get_mut(&self.host) {
                while arrived.len() < budget && queue.peek().is_some_and(|f| f.0.arrival <= now) {
                    if let Some(Reverse(frame)) = queue.pop() {
                        arrived.push(frame.bytes);
                    }
                }
            }
            net.stats.delivered += arrived.len() as u64;
        }
        let mut delivered = 0;
        for bytes in &arrived {
            match encap::parse(bytes, self.encap) {
                Ok((src, dst, relay)) if dst == self.endpoint => {
                    deliver(src, relay);
                    delivered += 1;
                }
                _ => self.drops += 1,
            }
        }
        Ok(delivered)
    }

    fn send(&mut self, fill: &mut Fill<'_>) -> Result<bool, TransportError> {
        if self.outbox.len() >= self.tx_capacity {
            return Ok(false);
        }
        let start = self.encap.header_len();
        let mut buf = vec![0u8; start + self.max_frame_len];
        let Some((dst, len)) = fill(&mut buf[start..]) else {
            return Ok(true);
        };
        let host = host_of(&dst).ok_or_else(|| {
            TransportError::Config(format!(
                "{}:{} is not a host of this network",
                dst.ip, dst.port
            ))
        })?;
        if len > self.max_frame_len {
            return Err(TransportError::Config(format!(
                "frame of {len} bytes over the {} byte limit",
                self.max_frame_len
            )));
        }
        buf.truncate(start + len);
        buf.resize(self.encap.frame_len(len), 0);
        encap::emit(self.encap, &self.endpoint, &dst, len, &mut buf);
        self.outbox.push((host, buf));
        Ok(true)
    }

    fn flush(&mut self, now: Instant) -> Result<(), TransportError> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let mut net = self.network.lock();
        for (dst, bytes) in self.outbox.drain(..) {
            net.transmit(now, self.host, dst, bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_frames::{number_of, numbered};

    /// Sends `count` numbered frames from host 1 to host 2 and returns the
    /// numbers host 2 receives, in arrival order.
    fn exchange(faults: Faults, count: u32) -> (Vec<u32>, MemStats, u64) {
        let network = MemNetwork::new(7, faults, 1500);
        let mut a = network.attach(1);
        let mut b = network.attach(2);
        let mut now = Instant::ZERO;
        for n in 0..count {
            let sent = a
                .send(&mut |buf| Some((host_endpoint(2), numbered(n, buf))))
                .unwrap();
            assert!(sent);
            a.flush(now).unwrap();
            now += Duration::from_micros(10);
        }
        now += Duration::from_secs(1);
        let mut received = Vec::new();
        b.recv(now, usize::MAX, &mut |src, bytes| {
            assert_eq!(src, host_endpoint(1));
            received.push(number_of(bytes));
        })
        .unwrap();
        (received, network.stats(), b.drops())
    }

    #[test]
    fn a_perfect_link_delivers_everything_in_order() {
        let (received, stats, drops) = exchange(Faults::default(), 100);
        assert_eq!(received, (0..100).collect::<Vec<_>>());
        assert_eq!(
            (stats.sent, stats.delivered, stats.lost, drops),
            (100, 100, 0, 0)
        );
    }

    #[test]
    fn faults_lose_duplicate_reorder_and_corrupt() {
        let faults = Faults {
            corrupt: 0.1,
            ..Faults::lossy(0.2)
        };
        let (received, stats, drops) = exchange(faults, 2000);
        assert!(stats.lost > 300 && stats.lost < 500, "{stats:?}");
        assert!(stats.duplicated > 50, "{stats:?}");
        assert!(stats.reordered > 100, "{stats:?}");
        assert!(stats.corrupted > 100, "{stats:?}");
        // Corrupted frames (and their duplicates) fail a checksum and never
        // reach the caller: everything delivered is intact.
        assert!(
            drops >= stats.corrupted && drops <= 2 * stats.corrupted,
            "{drops} {stats:?}"
        );
        assert_eq!(received.len() as u64, stats.delivered - drops);
        assert!(received.iter().all(|&n| n < 2000));
        assert!(
            received.windows(2).any(|w| w[0] > w[1]),
            "some frames overtaken"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_course() {
        let faults = Faults::lossy(0.2);
        assert_eq!(exchange(faults, 500).0, exchange(faults, 500).0);
    }

    #[test]
    fn frames_arrive_only_when_their_time_has_come() {
        let network = MemNetwork::new(
            1,
            Faults {
                latency: Duration::from_millis(1),
                ..Faults::default()
            },
            1500,
        );
        let mut a = network.attach(1);
        let mut b = network.attach(2);
        a.send(&mut |buf| Some((host_endpoint(2), numbered(9, buf))))
            .unwrap();
        a.flush(Instant::ZERO).unwrap();
        assert_eq!(network.next_arrival(), Some(Instant::from_nanos(1_000_000)));
        let mut count = 0;
        b.recv(Instant::from_nanos(999_999), 8, &mut |_, _| count += 1)
            .unwrap();
        assert_eq!(count, 0);
        b.recv(Instant::from_nanos(1_000_000), 8, &mut |_, bytes| {
            assert_eq!(number_of(bytes), 9);
            count += 1;
        })
        .unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn a_host_that_is_down_loses_everything() {
        let network = MemNetwork::new(1, Faults::default(), 1500);
        let mut a = network.attach(1);
        network.set_host_up(2, false);
        a.send(&mut |buf| Some((host_endpoint(2), numbered(1, buf))))
            .unwrap();
        a.flush(Instant::ZERO).unwrap();
        assert_eq!(network.stats().lost, 1);
        assert_eq!(network.next_arrival(), None);
    }

    #[test]
    fn sending_to_a_stranger_is_an_error_not_a_panic() {
        let network = MemNetwork::new(1, Faults::default(), 1500);
        let mut a = network.attach(1);
        let stranger = Endpoint {
            ip: Ipv4Addr::new(198, 19, 0, 1),
            ..host_endpoint(3)
        };
        assert!(a.send(&mut |_| Some((stranger, 1))).is_err());
        assert!(a.send(&mut |_| Some((host_endpoint(2), 100_000))).is_err());
    }
}
