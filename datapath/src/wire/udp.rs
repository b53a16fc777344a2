//! UDP headers (RFC 768) with the checksum over the IPv4 pseudo-header.
//! Senders always compute the checksum; receivers verify it unless it is
//! zero ("not computed", allowed by RFC 768 for IPv4).

use core::net::Ipv4Addr;

use zerocopy::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::checksum::{accumulate, finish, pseudo_header};
use super::ipv4::PROTOCOL_UDP;
use super::{split_fixed, Error, Fixed, Result};

/// The UDP header as it lies on the wire.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct UdpHeader {
    /// Source port.
    pub src_port: U16,
    /// Destination port.
    pub dst_port: U16,
    /// Header plus payload length.
    pub length: U16,
    /// Checksum over pseudo-header, header and payload; 0 = not computed.
    pub checksum: U16,
}

/// Length of a UDP header.
pub const HEADER_LEN: usize = UdpHeader::LEN;

/// A parsed UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl UdpRepr {
    /// Parses the datagram `packet` (the IPv4 payload) and verifies its
    /// checksum; returns the header and the payload.
    pub fn parse(packet: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<(UdpRepr, &[u8])> {
        let (header, _) = split_fixed::<UdpHeader>(packet)?;
        let length = usize::from(header.length.get());
        if length < HEADER_LEN {
            return Err(Error::Malformed("UDP length below 8"));
        }
        if length > packet.len() {
            return Err(Error::Truncated);
        }
        let datagram = &packet[..length];
        if header.checksum.get() != 0 {
            let sum = pseudo_header(src, dst, PROTOCOL_UDP, header.length.get());
            if finish(accumulate(sum, datagram)) != 0 {
                return Err(Error::Checksum);
            }
        }
        Ok((
            UdpRepr {
                src_port: header.src_port.get(),
                dst_port: header.dst_port.get(),
            },
            &datagram[HEADER_LEN..],
        ))
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `datagram`
    /// and the checksum over everything after it: call this after the
    /// payload is in place.
    ///
    /// # Panics
    /// If `datagram` is shorter than the header or longer than 65535 bytes.
    pub fn emit(&self, datagram: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
        let length = u16::try_from(datagram.len()).expect("UDP datagram longer than 65535 bytes");
        let mut header = UdpHeader {
            src_port: U16::new(self.src_port),
            dst_port: U16::new(self.dst_port),
            length: U16::new(length),
            checksum: U16::ZERO,
        };
        datagram[..HEADER_LEN].copy_from_slice(header.as_bytes());
        let sum = accumulate(pseudo_header(src, dst, PROTOCOL_UDP, length), datagram);
        // A computed zero is sent as all ones (RFC 768).
        let checksum = match finish(sum) {
            0 => 0xffff,
            other => other,
        };
        header.checksum = U16::new(checksum);
        datagram[..HEADER_LEN].copy_from_slice(header.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, poisoned};

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    #[test]
    fn udp_golden_vector() {
        // Port 9555 to 9555, payload "XR".
        let bytes = hex("2553 2553 000a d0b9 5852");
        let (repr, payload) = UdpRepr::parse(&bytes, SRC, DST).unwrap();
        assert_eq!(
            repr,
            UdpRepr {
                src_port: 9555,
                dst_port: 9555
            }
        );
        assert_eq!(payload, b"XR");
        let mut out = poisoned(bytes.len());
        out[HEADER_LEN..].copy_from_slice(b"XR");
        repr.emit(&mut out, SRC, DST);
        assert_eq!(out, bytes);
    }

    #[test]
    fn checksum_covers_pseudo_header_and_payload() {
        let bytes = hex("2553 2553 000a d0b9 5852");
        assert_eq!(
            UdpRepr::parse(&bytes, SRC, Ipv4Addr::new(198, 18, 0, 3)).unwrap_err(),
            Error::Checksum
        );
        let mut corrupt = bytes.clone();
        corrupt[9] ^= 0x40;
        assert_eq!(
            UdpRepr::parse(&corrupt, SRC, DST).unwrap_err(),
            Error::Checksum
        );
        // Zero means "not computed": accepted.
        let mut unchecked = bytes;
        unchecked[6] = 0;
        unchecked[7] = 0;
        assert!(UdpRepr::parse(&unchecked, SRC, DST).is_ok());
    }

    #[test]
    fn rejects_bad_lengths() {
        assert!(UdpRepr::parse(&hex("2553 2553 0007 0000"), SRC, DST).is_err());
        assert_eq!(
            UdpRepr::parse(&hex("2553 2553 000b 0000 5852"), SRC, DST).unwrap_err(),
            Error::Truncated
        );
    }
}
