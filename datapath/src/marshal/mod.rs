//! Typed marshalling of RPC arguments and results, generated instead of
//! hand-written, and safe across architectures.
//!
//! * [`codec`]: the [`Encode`] / [`Decode`] traits, the bounded [`Reader`]
//!   and the encodings of the standard types.
//! * [`rpc`]: what interface declarations generate code against —
//!   [`Caller`], [`Dispatch`], [`Exception`], [`RpcError`] and the wire's
//!   exception [`codes`].
//!
//! Declare types with `#[derive(Encode, Decode)]`, exceptions with
//! `#[derive(Exception)]` and interfaces with `#[interface(id = N)]` (all
//! re-exported at the crate root); [`crate::example`] shows all three.

pub mod codec;
pub mod rpc;

pub use codec::{from_slice, to_vec, Decode, DecodeError, Encode, Limits, Reader};
pub use rpc::{
    codes, decode_reply, CallError, Caller, Dispatch, Exception, Local, NoException, RpcError,
};
