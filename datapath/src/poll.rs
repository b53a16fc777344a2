//! The datapath's polling loop, one iteration at a time: run to completion
//! over the protocol engines with a work budget per iteration, so a flood
//! in one direction never starves the other. A datapath thread (one per
//! queue, pinned with [`pin_to_core`]) calls [`poll_once`] in a loop; the
//! application runtime ([`crate::runtime`]) does, and so do the benchmarks
//! and tests that drive nodes by hand.

use crate::node::Node;
use crate::time::Instant;
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
    poll_once_with(node, link, now, budget, &mut |_, _| false)
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
    let received = link.recv(now, budget.rx, &mut |from, bytes| {
        if !node.handle_known(now, from, bytes) && !elsewhere(from, bytes) {
            node.unknown_frame();
        }
    })?;
    let mut sent = 0;
    let mut full = 0;
    while sent < budget.tx {
        let mut produced = false;
        let room = link.send(&mut |buf| {
            let out = node.poll_transmit(now, buf);
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
    link.flush(now)?;
    Ok(Work { received, sent })
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
