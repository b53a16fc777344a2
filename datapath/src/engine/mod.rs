//! The protocol engines, sans-IO in the style of quinn-proto: no socket and
//! no clock inside. Inputs are `handle_*(now, ...)` calls with parsed
//! frames; outputs are `poll_transmit` / `poll_event` calls that return
//! `#[must_use]` values; `poll_timeout` says when to call again. Every
//! behaviour is therefore testable deterministically with virtual time and
//! the fault-injecting [`crate::transport::mem`] network.
//!
//! * [`peer`]: liveness, restart detection and round-trip time per peer.
//! * [`signal`]: counted signals with cumulative counts.
//! * [`reassembly`]: fragmented messages put back together, with selective acks.
//! * [`rpc`]: client and server proxies of one RPC session, at-most-once.
//! * [`rom`]: publisher and subscriber of one ROM session: the newest
//!   version of a module in chunks, verified before it becomes visible.

pub mod peer;
pub mod reassembly;
pub mod rom;
pub mod rpc;
pub mod signal;
