//! HEARTBEAT: peer liveness, restart detection and round-trip measurement on
//! channel 0. docs/wire.md, "Heartbeat".

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{emit_fixed, split_fixed, Body, Error, Fixed, Kind, Result};

/// The HEARTBEAT body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct HeartbeatFixed {
    /// Random value chosen at the sender's start; a new value means the
    /// peer restarted and lost all session state.
    pub incarnation: U64,
    /// The sender's clock when it sent this frame, in nanoseconds.
    pub send_time: U64,
    /// The `send_time` of the last heartbeat received from this peer, 0 if none.
    pub echo_time: U64,
}

/// HEARTBEAT: "I am alive as `incarnation`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's incarnation.
    pub incarnation: u64,
    /// Sender's clock at send, ns.
    pub send_time: u64,
    /// Echo of the peer's last `send_time`, 0 if none.
    pub echo_time: u64,
}

impl Body<'_> for Heartbeat {
    const KIND: Kind = Kind::Heartbeat;

    fn parse(body: &[u8]) -> Result<Self> {
        let (fixed, rest) = split_fixed::<HeartbeatFixed>(body)?;
        if !rest.is_empty() {
            return Err(Error::Malformed("bytes after HEARTBEAT"));
        }
        if fixed.incarnation.get() == 0 {
            return Err(Error::Malformed("incarnation 0 is reserved"));
        }
        Ok(Heartbeat {
            incarnation: fixed.incarnation.get(),
            send_time: fixed.send_time.get(),
            echo_time: fixed.echo_time.get(),
        })
    }

    fn buffer_len(&self) -> usize {
        HeartbeatFixed::LEN
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = HeartbeatFixed {
            incarnation: U64::new(self.incarnation),
            send_time: U64::new(self.send_time),
            echo_time: U64::new(self.echo_time),
        };
        emit_fixed(&fixed, &[], buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, round_trip};

    #[test]
    fn heartbeat_golden_vector() {
        let bytes = hex("efcdab8967452301 00ca9a3b00000000 0094357700000000");
        let heartbeat = Heartbeat::parse(&bytes).unwrap();
        assert_eq!(heartbeat.incarnation, 0x0123_4567_89ab_cdef);
        assert_eq!(heartbeat.send_time, 1_000_000_000);
        assert_eq!(heartbeat.echo_time, 2_000_000_000);
        round_trip(&bytes, &heartbeat);
    }

    #[test]
    fn rejects_zero_incarnation_and_wrong_length() {
        assert!(
            Heartbeat::parse(&hex("0000000000000000 0000000000000000 0000000000000000")).is_err()
        );
        assert_eq!(Heartbeat::parse(&hex("01")).unwrap_err(), Error::Truncated);
        assert!(Heartbeat::parse(&hex(
            "0100000000000000 0000000000000000 0000000000000000 00"
        ))
        .is_err());
    }
}
