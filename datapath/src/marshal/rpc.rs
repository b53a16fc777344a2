//! The runtime side of an interface declaration: the [`Caller`] a client
//! stub sends through, the [`Dispatch`] a server dispatcher implements, the
//! exception codes on the wire and the errors a caller sees.

use super::codec::{Decode, DecodeError, Reader};

/// Exception codes of RPC_REPLY (docs/wire.md, "Exception codes").
pub mod codes {
    /// The call returned normally; the reply holds the encoded result.
    pub const SUCCESS: i32 = 0;
    /// No such object: the session or interface is unknown to the server.
    pub const INVALID_OBJECT: i32 = -1;
    /// The interface has no function with this opcode.
    pub const INVALID_OPCODE: i32 = -2;
    /// The arguments did not decode as the function's parameters.
    pub const BAD_ARGUMENTS: i32 = -3;
    /// The code of a function's first declared exception; the `i`-th is
    /// `FIRST_EXCEPTION - i`.
    pub const FIRST_EXCEPTION: i32 = -1000;
}

/// A function's typed exceptions, mapped to wire codes
/// (`#[derive(Exception)]`: variant `i` is `-1000 - i`).
pub trait Exception: Sized {
    /// The wire code of this exception.
    fn code(&self) -> i32;
    /// The exception with wire code `code`, if this type declares one.
    fn from_code(code: i32) -> Option<Self>;
}

/// The exception type of functions that declare none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoException {}

impl Exception for NoException {
    fn code(&self) -> i32 {
        match *self {}
    }

    fn from_code(_code: i32) -> Option<Self> {
        None
    }
}

impl core::fmt::Display for NoException {
    fn fmt(&self, _f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {}
    }
}

/// Why a call did not complete at the transport level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The peer did not answer within the configured time (or was declared down).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The call got no reply within its deadline.
    #[error("call timed out")]
    Timeout,
    /// The session was closed (by either side or by policy).
    #[error("session closed: {0}")]
    Closed(String),
    /// The session has as many calls outstanding as it allows.
    #[error("too many calls outstanding")]
    Busy,
    /// The arguments or the reply exceed the message size limit.
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// What a client stub's call can end in besides its result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError<E> {
    /// The function raised one of its declared exceptions.
    #[error("exception {0:?}")]
    Exception(E),
    /// The server does not know the session or interface.
    #[error("invalid object")]
    InvalidObject,
    /// The server's interface has no such function.
    #[error("invalid opcode")]
    InvalidOpcode,
    /// The server could not decode the arguments (mismatched interface versions).
    #[error("the server could not decode the arguments")]
    BadArguments,
    /// An exception code the function does not declare.
    #[error("undeclared exception code {0}")]
    UnknownException(i32),
    /// The reply did not decode as the function's result.
    #[error("malformed reply: {0}")]
    BadReply(DecodeError),
    /// The transport failed.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Sends one marshalled call and waits for its reply: the interface a
/// client stub talks through. The RPC engine implements it over the
/// network; [`Local`] calls a dispatcher in the same process.
pub trait Caller {
    /// Calls `opcode` of `interface` with encoded `args`; on return `reply`
    /// holds the encoded result (empty unless the code is 0) and the result
    /// is the exception code.
    fn call(
        &mut self,
        interface: u32,
        opcode: u16,
        args: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<i32, CallError>;
}

/// A server-side interface: decodes a call, runs it and encodes the
/// result. Object safe, so a server can keep `Box<dyn Dispatch>` per session.
pub trait Dispatch {
    /// The interface id this dispatcher serves.
    fn interface_id(&self) -> u32;

    /// Runs `opcode` with encoded `args`, writes the encoded result into
    /// `reply` (cleared first) and returns the exception code. Never panics
    /// on bad input: unknown opcodes and undecodable arguments are codes.
    fn dispatch(&mut self, opcode: u16, args: &[u8], reply: &mut Vec<u8>) -> i32;
}

impl<D: Dispatch + ?Sized> Dispatch for Box<D> {
    fn interface_id(&self) -> u32 {
        (**self).interface_id()
    }

    fn dispatch(&mut self, opcode: u16, args: &[u8], reply: &mut Vec<u8>) -> i32 {
        (**self).dispatch(opcode, args, reply)
    }
}

/// Turns an exception code and reply bytes into a client's result.
pub fn decode_reply<T: Decode, E: Exception>(code: i32, reply: &[u8]) -> Result<T, RpcError<E>> {
    match code {
        codes::SUCCESS => {
            let mut reader = Reader::new(reply);
            let value = T::decode(&mut reader).map_err(RpcError::BadReply)?;
            reader.finish().map_err(RpcError::BadReply)?;
            Ok(value)
        }
        codes::INVALID_OBJECT => Err(RpcError::InvalidObject),
        codes::INVALID_OPCODE => Err(RpcError::InvalidOpcode),
        codes::BAD_ARGUMENTS => Err(RpcError::BadArguments),
        other => {
            Err(E::from_code(other).map_or(RpcError::UnknownException(other), RpcError::Exception))
        }
    }
}

/// A [`Caller`] that dispatches in the same process, with no wire between:
/// the reference the networked callers are tested against.
#[derive(Debug)]
pub struct Local<D> {
    dispatcher: D,
}

impl<D: Dispatch> Local<D> {
    /// Calls go straight to `dispatcher`.
    pub fn new(dispatcher: D) -> Self {
        Local { dispatcher }
    }

    /// The dispatcher, to look at the server's state.
    pub fn dispatcher(&self) -> &D {
        &self.dispatcher
    }
}

impl<D: Dispatch> Caller for Local<D> {
    fn call(
        &mut self,
        interface: u32,
        opcode: u16,
        args: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<i32, CallError> {
        if interface != self.dispatcher.interface_id() {
            reply.clear();
            return Ok(codes::INVALID_OBJECT);
        }
        Ok(self.dispatcher.dispatch(opcode, args, reply))
    }
}
