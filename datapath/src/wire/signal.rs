//! Signal frames: SIGNAL carries a context's *cumulative* submission count,
//! SIGNAL_ACK the highest cumulative count the receiver holds. Because the
//! count is cumulative, a lost frame loses nothing (the next one carries the
//! total) and a duplicated one doubles nothing (the receiver delivers only
//! the increase). docs/wire.md, "Signals".

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{check_reserved, emit_fixed, split_fixed, Body, Error, Fixed, Kind, Result};

/// The body of SIGNAL and of SIGNAL_ACK.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CountFixed {
    /// The signal context within the session.
    pub context: U32,
    /// Zero.
    pub reserved: U32,
    /// Cumulative count since the session opened.
    pub count: U64,
}

fn parse_count(body: &[u8]) -> Result<(u32, u64)> {
    let (fixed, rest) = split_fixed::<CountFixed>(body)?;
    if !rest.is_empty() {
        return Err(Error::Malformed("bytes after a signal count"));
    }
    check_reserved(fixed.reserved.as_bytes())?;
    Ok((fixed.context.get(), fixed.count.get()))
}

fn emit_count(context: u32, count: u64, buf: &mut [u8]) {
    let fixed = CountFixed {
        context: U32::new(context),
        reserved: U32::ZERO,
        count: U64::new(count),
    };
    emit_fixed(&fixed, &[], buf);
}

/// SIGNAL: the transmitter has submitted `count` signals to `context` since
/// the session opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// Signal context.
    pub context: u32,
    /// Cumulative submissions.
    pub count: u64,
}

impl Body<'_> for Signal {
    const KIND: Kind = Kind::Signal;

    fn parse(body: &[u8]) -> Result<Self> {
        let (context, count) = parse_count(body)?;
        Ok(Signal { context, count })
    }

    fn buffer_len(&self) -> usize {
        CountFixed::LEN
    }

    fn emit(&self, buf: &mut [u8]) {
        emit_count(self.context, self.count, buf);
    }
}

/// SIGNAL_ACK: the receiver holds every submission up to `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalAck {
    /// Signal context.
    pub context: u32,
    /// Highest cumulative count received.
    pub count: u64,
}

impl Body<'_> for SignalAck {
    const KIND: Kind = Kind::SignalAck;

    fn parse(body: &[u8]) -> Result<Self> {
        let (context, count) = parse_count(body)?;
        Ok(SignalAck { context, count })
    }

    fn buffer_len(&self) -> usize {
        CountFixed::LEN
    }

    fn emit(&self, buf: &mut [u8]) {
        emit_count(self.context, self.count, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, round_trip};

    #[test]
    fn signal_golden_vector() {
        let bytes = hex("03000000 00000000 e803000000000000");
        let signal = Signal::parse(&bytes).unwrap();
        assert_eq!(signal.context, 3);
        assert_eq!(signal.count, 1000);
        round_trip(&bytes, &signal);
    }

    #[test]
    fn signal_ack_golden_vector() {
        let bytes = hex("03000000 00000000 0000000001000000");
        let ack = SignalAck::parse(&bytes).unwrap();
        assert_eq!(ack.context, 3);
        assert_eq!(ack.count, 1 << 32);
        round_trip(&bytes, &ack);
    }

    #[test]
    fn rejects_wrong_lengths_and_reserved() {
        assert_eq!(
            Signal::parse(&hex("03000000")).unwrap_err(),
            Error::Truncated
        );
        assert!(Signal::parse(&hex("03000000 00000000 0100000000000000 00")).is_err());
        assert!(SignalAck::parse(&hex("03000000 01000000 0100000000000000")).is_err());
    }
}
