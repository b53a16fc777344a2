//! The datapath's polling loop, one iteration at a time: run to completion
//! over the protocol engines with a work budget per iteration, so a flood
//! in one direction never starves the other. A datapath thread (one per
//! queue, pinned with [`pin_to_core`]) calls [`poll_once`] in a loop; the
//! application runtime ([`crate::runtime`]) does, and so do the benchmarks
//! and tests that drive nodes by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::marshal::Dispatch;
use crate::node::Node;
use crate::time::{Instant, MonotonicClock};
use crate::transport::{Transport, TransportError};
use crate::wire::encap::Endpoint;

/// How much one iteration may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Frames received per iteration.
    pub rx: usize,
    /// Frames sent per iteration.
    pub tx: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { rx: 64, tx: 256 }
    }
}

/// What one iteration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    /// Frames received and handed to the node.
    pub received: usize,
    /// Frames the node produced and the transport took.
    pub sent: usize,
}

impl Work {
    /// Whether anything moved.
    pub fn is_busy(&self) -> bool {
        self.received > 0 || self.sent > 0
    }
}

/// One iteration: receive a batch into `node`, let it fill the transport's
/// buffers with what is due (flushing when the transport is full), flush.
/// Events stay in the node for the caller ([`Node::poll_event`]).
pub fn poll_once<T: Transport + ?Sized>(
    node: &mut Node,
    link: &mut T,
    now: Instant,
    budget: Budget,
) -> Result<Work, TransportError> {
    poll_once_then(node, link, now, budget, &mut |_, _| false, &mut |_| {})
}

/// Like [`poll_once`], but a frame from an address that is no peer of
/// `node` is first offered to `elsewhere` (which returns whether it took
/// it: another queue's node owns that peer); frames nobody takes are
/// counted as from an unknown peer.
pub fn poll_once_with<T: Transport + ?Sized>(
    node: &mut Node,
    link: &mut T,
    now: Instant,
    budget: Budget,
    elsewhere: &mut dyn FnMut(Endpoint, &[u8]) -> bool,
) -> Result<Work, TransportError> {
    poll_once_then(node, link, now, budget, elsewhere, &mut |_| {})
}

/// Like [`poll_once_with`], and `ready` runs after the node has handled
/// the received batch, *before* it produces what is due and the flush
/// hands that to the link: it takes the node's events (a reply that
/// completes a call wakes its caller now, not after the flush's system
/// call) and may give the node new work, which goes out in the same
/// flush. A closed-loop caller's next request then leaves ahead of the
/// last reply's acknowledgement, in one kick.
pub fn poll_once_then<T: Transport + ?Sized>(
    node: &mut Node,
    link: &mut T,
    now: Instant,
    budget: Budget,
    elsewhere: &mut dyn FnMut(Endpoint, &[u8]) -> bool,
    ready: &mut dyn FnMut(&mut Node),
) -> Result<Work, TransportError> {
    let received = link.recv(now, budget.rx, &mut |from, bytes| {
        if !node.handle_known(now, from, bytes) && !elsewhere(from, bytes) {
            node.unknown_frame();
        }
    })?;
    ready(node);
    let sent = transmit(node, link, now, budget.tx, &mut |node, t, buf| {
        node.poll_transmit(t, buf)
    })?;
    link.flush(now)?;
    Ok(Work { received, sent })
}

/// Writes the node's next frame into a buffer: its destination and length.
type Build<'a> = dyn FnMut(&mut Node, Instant, &mut [u8]) -> Option<(Endpoint, usize)> + 'a;

/// Produces up to `budget` frames from `node` into the transport's
/// buffers (flushing when it is full, a few times at most); returns how
/// many. `build` is the node's `poll_transmit` (timed when profiling).
fn transmit<T: Transport + ?Sized>(
    node: &mut Node,
    link: &mut T,
    now: Instant,
    budget: usize,
    build: &mut Build<'_>,
) -> Result<usize, TransportError> {
    let mut sent = 0;
    let mut full = 0;
    while sent < budget {
        let mut produced = false;
        let room = link.send(&mut |buf| {
            let out = build(node, now, buf);
            produced = out.is_some();
            out
        })?;
        if !room {
            // The transport is full: hand the batch to the link and try
            // again, a few times (completions may free room).
            link.flush(now)?;
            full += 1;
            if full > 4 {
                break;
            }
            continue;
        }
        if !produced {
            break;
        }
        sent += 1;
    }
    Ok(sent)
}

/// Pins the calling thread to CPU core `core`; false if there is no such
/// core or the kernel refused.
pub fn pin_to_core(core: usize) -> bool {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.id == core)
        .is_some_and(core_affinity::set_for_current)
}

/// Where one iteration's time went, for profiling ([`poll_once_timed`]):
/// nanoseconds per stage and the frames each stage moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// In the transport's receive call, outside the node: ring or socket
    /// reads, header checks.
    pub rx_poll: u64,
    /// In the node: parsing, authentication, sessions, the engines, and
    /// building the frames to send (handlers excluded).
    pub engine: u64,
    /// In RPC handlers run inline (as [`TimedDispatch`] measured them).
    pub handler: u64,
    /// In the transport's send and flush calls, outside the node: headers,
    /// TX ring or `sendmmsg`, kicks.
    pub tx_submit: u64,
    /// Frames received.
    pub received: usize,
    /// Frames sent.
    pub sent: usize,
}

/// An RPC dispatcher that adds the time each call takes to `spent`
/// (nanoseconds), so that [`poll_once_timed`] can tell handler time from
/// engine time.
pub struct TimedDispatch<D> {
    inner: D,
    clock: MonotonicClock,
    spent: Arc<AtomicU64>,
}

impl<D> TimedDispatch<D> {
    /// Wraps `inner`, adding to `spent`.
    pub fn new(inner: D, clock: MonotonicClock, spent: Arc<AtomicU64>) -> Self {
        TimedDispatch {
            inner,
            clock,
            spent,
        }
    }
}

impl<D: Dispatch> Dispatch for TimedDispatch<D> {
    fn interface_id(&self) -> u32 {
        self.inner.interface_id()
    }

    fn dispatch(&mut self, opcode: u16, args: &[u8], reply: &mut Vec<u8>) -> i32 {
        let start = self.clock.now();
        let code = self.inner.dispatch(opcode, args, reply);
        let took = self.clock.now().saturating_since(start);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.spent.fetch_add(ns, Ordering::Relaxed);
        code
    }
}

/// [`poll_once`] with a clock read around every stage (a few tens of
/// nanoseconds each: for profiling, not for production loops). Handler
/// time comes from `handlers` (what [`TimedDispatch`]s added), which is
/// taken and reset.
pub fn poll_once_timed<T: Transport + ?Sized>(
    node: &mut Node,
    link: &mut T,
    clock: &MonotonicClock,
    budget: Budget,
    handlers: &AtomicU64,
    ready: &mut dyn FnMut(&mut Node),
) -> Result<(Work, StageTimes), TransportError> {
    let ns = |d: core::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let mut times = StageTimes::default();
    let start = clock.now();
    let mut engine = 0u64;
    let received = link.recv(start, budget.rx, &mut |from, bytes| {
        let t = clock.now();
        node.handle_datagram(t, from, bytes);
        engine += ns(clock.now().saturating_since(t));
    })?;
    let after_rx = clock.now();
    times.rx_poll = ns(after_rx.saturating_since(start)).saturating_sub(engine);
    let mut building = 0u64;
    let mut build = |node: &mut Node, _: Instant, buf: &mut [u8]| {
        let t = clock.now();
        let out = node.poll_transmit(t, buf);
        building += ns(clock.now().saturating_since(t));
        out
    };
    ready(node);
    let in_ready = ns(clock.now().saturating_since(after_rx));
    let sent = transmit(node, link, clock.now(), budget.tx, &mut build)?;
    link.flush(clock.now())?;
    let end = clock.now();
    times.tx_submit = ns(end.saturating_since(after_rx))
        .saturating_sub(building)
        .saturating_sub(in_ready);
    times.handler = handlers.swap(0, Ordering::Relaxed);
    times.engine = (engine + building).saturating_sub(times.handler);
    times.received = received;
    times.sent = sent;
    Ok((Work { received, sent }, times))
}
