//! xrelay's datapath: everything on the hot path of the relay.
//!
//! * [`wire`]: the normative wire format (docs/wire.md) as zero-copy views
//!   and `Repr` values: encapsulation headers, the relay header and every
//!   frame kind.
//! * [`marshal`]: the canonical, architecture-independent encoding of RPC
//!   arguments and results, with derive and interface macros so nobody
//!   marshals by hand.
//! * [`example`]: a worked example interface (a key-value store) used by
//!   tests, the demo and the documentation.
//! * [`auth`]: frame authentication (ChaCha20-Poly1305 tags) and the
//!   anti-replay window.
//! * [`engine`]: sans-IO protocol engines (peer liveness, signals, RPC, ROM).
//! * [`netns`]: test hosts in network namespaces joined by veth (demo,
//!   tests, benchmarks).
//! * [`hint`]: a prefetch hint to the CPU (the one `unsafe` outside AF_XDP).
//! * [`node`]: a relay node, sans-IO: every engine of every session with
//!   every peer behind one receive call and one transmit call.
//! * [`poll`]: one iteration of the datapath loop, with a work budget.
//! * [`runtime`]: the application API: a datapath thread driving a node,
//!   and handles for RPC sessions, signals and ROM modules.
//! * [`time`]: the engines' notion of time (no clock inside an engine).
//! * [`transport`]: links that move relay frames in batches (`mem`, `udp`,
//!   `xdp`).
#![deny(unsafe_code)]

// The macros of xrelay-macros name this crate by its path; this lets them
// work inside the crate too (for the example interface and the tests).
extern crate self as xrelay_datapath;

pub mod auth;
pub mod engine;
pub mod example;
pub mod hint;
pub mod marshal;
pub mod netns;
pub mod node;
pub mod poll;
pub mod runtime;
pub mod time;
pub mod transport;
pub mod wire;

pub use xrelay_macros::{interface, Decode, Encode, Exception};
