//! The relay's wire format: zero-copy views and small `Repr` values for every
//! header and frame kind. `docs/wire.md` is the normative description; this
//! module is its executable form, and its golden vectors are the document's
//! worked examples.
//!
//! # Contract
//!
//! Bytes that come from a peer are untrusted. They enter only through the
//! `new_checked` constructors and the `parse` functions, which check every
//! length before it is used and return an [`Error`] for anything they do not
//! understand; nothing here panics on input. `new_unchecked` exists for
//! buffers this process built itself (the TX path writes headers in place).
//!
//! Layout of the module, one file per header or frame kind:
//!
//! * [`ethernet`], [`ipv4`], [`udp`], [`checksum`]: the encapsulation headers.
//! * [`header`]: the relay header every frame starts with.
//! * [`session`], [`rpc`], [`signal`], [`rom`], [`heartbeat`]: frame bodies.
//! * [`frame`]: a whole relay frame (header, body, trailer) as one `Repr`.
//! * [`encap`]: a relay frame inside Ethernet + IPv4 + UDP or raw Ethernet.

use core::marker::PhantomData;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub mod checksum;
pub mod encap;
pub mod ethernet;
pub mod frame;
pub mod header;
pub mod heartbeat;
pub mod ipv4;
pub mod rom;
pub mod rpc;
pub mod session;
pub mod signal;
pub mod udp;

pub use frame::{Frame, Message};
pub use header::{Flags, Kind, RelayPacket, HEADER_LEN, MAGIC, TAG_LEN, VERSION};

/// Why a buffer was not accepted as a frame. Small and `Copy`, so that the
/// datapath can count drops by reason without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before a header or a length it announces.
    #[error("truncated: the buffer ends before the announced length")]
    Truncated,
    /// The relay header does not start with the magic bytes `XR`.
    #[error("bad magic: not a relay frame")]
    BadMagic,
    /// The relay header names a protocol version this implementation does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The relay header's length field is below the minimum or not a multiple of 4.
    #[error("bad relay header length {0}")]
    BadHeaderLength(u8),
    /// A flag bit this implementation does not understand is set.
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// The frame kind is not one this implementation knows.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A field holds a value the format forbids; the text names the rule.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// An IPv4 header or UDP checksum does not verify.
    #[error("checksum mismatch")]
    Checksum,
    /// The frame is well formed but not addressed to this relay (other
    /// EtherType, IP protocol, destination or port).
    #[error("not a relay frame for this endpoint")]
    NotForUs,
}

/// Shorthand for results of this module.
pub type Result<T> = core::result::Result<T, Error>;

/// The fixed-size part of a header or body, declared as a `#[repr(C)]` struct
/// of byte-order-explicit fields. `Unaligned` guarantees there is no padding
/// and no alignment requirement, so the struct can be viewed in place at any
/// offset of a received buffer.
pub trait Fixed: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned + Sized {
    /// The size of the fixed part in bytes.
    const LEN: usize = size_of::<Self>();
}

impl<H: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned> Fixed for H {}

/// A zero-copy view of a buffer that starts with the fixed part `H` followed
/// by a variable tail (smoltcp's `Packet<T>` pattern, with the field layout
/// given by a `zerocopy` struct instead of byte ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T, H> {
    buffer: T,
    fixed: PhantomData<H>,
}

impl<T: AsRef<[u8]>, H: Fixed> Packet<T, H> {
    /// Wraps a buffer without checking its length. Accessors panic if the
    /// buffer is shorter than the fixed part; use [`Packet::new_checked`] for
    /// anything that came from a peer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self {
            buffer,
            fixed: PhantomData,
        }
    }

    /// Wraps a buffer after checking that it holds the fixed part.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer is long enough for the fixed part.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < H::LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// The fixed part, viewed in place.
    ///
    /// # Panics
    /// If the buffer is shorter than the fixed part (only possible after
    /// [`Packet::new_unchecked`]).
    pub fn fixed(&self) -> &H {
        match H::ref_from_prefix(self.buffer.as_ref()) {
            Ok((fixed, _)) => fixed,
            Err(_) => panic!("Packet::fixed on a buffer shorter than its fixed part"),
        }
    }

    /// The bytes after the fixed part.
    ///
    /// # Panics
    /// As [`Packet::fixed`].
    pub fn tail(&self) -> &[u8] {
        &self.buffer.as_ref()[H::LEN..]
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>, H: Fixed> Packet<T, H> {
    /// The fixed part, writable in place.
    ///
    /// # Panics
    /// As [`Packet::fixed`].
    pub fn fixed_mut(&mut self) -> &mut H {
        match H::mut_from_prefix(self.buffer.as_mut()) {
            Ok((fixed, _)) => fixed,
            Err(_) => panic!("Packet::fixed_mut on a buffer shorter than its fixed part"),
        }
    }

    /// The bytes after the fixed part, writable in place.
    ///
    /// # Panics
    /// As [`Packet::fixed`].
    pub fn tail_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[H::LEN..]
    }
}

/// A frame body: the `Repr` of one frame kind, parsed from and emitted into
/// the bytes between the relay header and the trailer.
pub trait Body<'a>: Sized {
    /// The kind written into the relay header for this body.
    const KIND: Kind;

    /// Parses a body received from a peer, checking every field and length.
    fn parse(body: &'a [u8]) -> Result<Self>;

    /// The number of bytes [`Body::emit`] writes.
    fn buffer_len(&self) -> usize;

    /// Writes the body into `buf`, which must be exactly
    /// [`Body::buffer_len`] bytes long.
    ///
    /// # Panics
    /// If `buf` has another length.
    fn emit(&self, buf: &mut [u8]);
}

/// Splits `bytes` into its fixed part and the rest, or `Truncated`.
pub(crate) fn split_fixed<H: Fixed>(bytes: &[u8]) -> Result<(&H, &[u8])> {
    H::ref_from_prefix(bytes).map_err(|_| Error::Truncated)
}

/// Writes `fixed` followed by `tail` into `buf`, which must be exactly
/// `H::LEN + tail.len()` bytes long.
///
/// # Panics
/// If `buf` has another length: that is the caller's arithmetic, not input.
pub(crate) fn emit_fixed<H: Fixed>(fixed: &H, tail: &[u8], buf: &mut [u8]) {
    assert_eq!(
        buf.len(),
        H::LEN + tail.len(),
        "emit buffer must be exactly buffer_len() bytes"
    );
    let (head, rest) = buf.split_at_mut(H::LEN);
    head.copy_from_slice(fixed.as_bytes());
    rest.copy_from_slice(tail);
}

/// Checks that reserved bytes are zero: a sender that sets them speaks a
/// revision of the format this implementation does not know.
pub(crate) fn check_reserved(reserved: &[u8]) -> Result<()> {
    if reserved.iter().all(|&b| b == 0) {
        Ok(())
    } else {
        Err(Error::Malformed("reserved bytes must be zero"))
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for the golden-vector tests of the wire files.

    /// Decodes a hex string with optional white space, as written in docs/wire.md.
    pub fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
        digits
            .chunks(2)
            .map(|pair| {
                let s = core::str::from_utf8(pair).expect("ascii");
                u8::from_str_radix(s, 16).expect("hex digit")
            })
            .collect()
    }

    /// A buffer of `len` bytes filled with a poison value, so that a field an
    /// emitter forgets to write shows up in the comparison.
    pub fn poisoned(len: usize) -> Vec<u8> {
        vec![0xa5; len]
    }

    /// Parses `bytes` as body `B`, compares with `expected`, emits it into a
    /// poisoned buffer and compares byte for byte.
    pub fn round_trip<'a, B>(bytes: &'a [u8], expected: &B)
    where
        B: super::Body<'a> + PartialEq + core::fmt::Debug,
    {
        let parsed = B::parse(bytes).unwrap();
        assert_eq!(&parsed, expected);
        assert_eq!(parsed.buffer_len(), bytes.len());
        let mut out = poisoned(bytes.len());
        parsed.emit(&mut out);
        assert_eq!(out, bytes);
    }
}
