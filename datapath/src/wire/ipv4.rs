//! IPv4 headers (RFC 791). Relay frames are sent with a 20-byte header, DF
//! set and never fragmented; received headers may carry options (skipped),
//! and fragments are refused. Fields are big-endian, as on every IP network.

use core::net::Ipv4Addr;

use zerocopy::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::checksum::checksum;
use super::{split_fixed, Error, Fixed, Result};

/// IP protocol number of UDP.
pub const PROTOCOL_UDP: u8 = 17;
/// The time to live relay frames are sent with.
pub const DEFAULT_TTL: u8 = 64;

/// The fixed 20 bytes of an IPv4 header.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Ipv4Header {
    /// Version (high nibble, 4) and header length in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub dscp_ecn: u8,
    /// Header plus payload length.
    pub total_len: U16,
    /// Identification (0: relay frames are never fragmented).
    pub ident: U16,
    /// Flags (DF = 0x4000, MF = 0x2000) and fragment offset.
    pub flags_fragment: U16,
    /// Time to live.
    pub ttl: u8,
    /// Payload protocol.
    pub protocol: u8,
    /// Header checksum.
    pub checksum: U16,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
}

/// Length of the IPv4 header relay frames are sent with.
pub const HEADER_LEN: usize = Ipv4Header::LEN;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// A parsed IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Payload protocol.
    pub protocol: u8,
    /// Payload length in bytes.
    pub payload_len: u16,
    /// Time to live.
    pub ttl: u8,
}

impl Ipv4Repr {
    /// Parses and verifies the header at the start of `packet`; returns it
    /// and the payload, cut to the header's total length (Ethernet padding
    /// after it is dropped).
    pub fn parse(packet: &[u8]) -> Result<(Ipv4Repr, &[u8])> {
        let (header, _) = split_fixed::<Ipv4Header>(packet)?;
        if header.version_ihl >> 4 != 4 {
            return Err(Error::Malformed("IP version is not 4"));
        }
        let header_len = usize::from(header.version_ihl & 0x0f) * 4;
        if header_len < HEADER_LEN {
            return Err(Error::Malformed("IPv4 header length below 20"));
        }
        let total_len = usize::from(header.total_len.get());
        if total_len < header_len {
            return Err(Error::Malformed("IPv4 total length below header length"));
        }
        if packet.len() < total_len {
            return Err(Error::Truncated);
        }
        if checksum(&packet[..header_len]) != 0 {
            return Err(Error::Checksum);
        }
        let flags = header.flags_fragment.get();
        if flags & FLAG_MF != 0 || flags & FRAGMENT_OFFSET != 0 {
            return Err(Error::Malformed("IPv4 fragment"));
        }
        let payload = &packet[header_len..total_len];
        Ok((
            Ipv4Repr {
                src: Ipv4Addr::from(header.src),
                dst: Ipv4Addr::from(header.dst),
                protocol: header.protocol,
                payload_len: u16::try_from(payload.len()).map_err(|_| Error::Truncated)?,
                ttl: header.ttl,
            },
            payload,
        ))
    }

    /// Writes a 20-byte header with DF set and its checksum into the first
    /// [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter, or the payload does not fit the 16-bit total length.
    pub fn emit(&self, buf: &mut [u8]) {
        let total_len = u16::try_from(HEADER_LEN + usize::from(self.payload_len))
            .expect("IPv4 payload too long for one packet");
        let mut header = Ipv4Header {
            version_ihl: 0x45,
            dscp_ecn: 0,
            total_len: U16::new(total_len),
            ident: U16::ZERO,
            flags_fragment: U16::new(FLAG_DF),
            ttl: self.ttl,
            protocol: self.protocol,
            checksum: U16::ZERO,
            src: self.src.octets(),
            dst: self.dst.octets(),
        };
        header.checksum = U16::new(checksum(header.as_bytes()));
        buf[..HEADER_LEN].copy_from_slice(header.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, poisoned};

    // 198.18.0.1 -> 198.18.0.2, UDP, 36 bytes of payload.
    const HEADER: &str = "45 00 0038 0000 4000 40 11 ae8d c6120001 c6120002";

    #[test]
    fn ipv4_golden_vector() {
        let mut bytes = hex(HEADER);
        bytes.resize(HEADER_LEN + 36, 0);
        let (repr, payload) = Ipv4Repr::parse(&bytes).unwrap();
        assert_eq!(repr.src, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(repr.dst, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(repr.protocol, PROTOCOL_UDP);
        assert_eq!(repr.payload_len, 36);
        assert_eq!(repr.ttl, 64);
        assert_eq!(payload.len(), 36);
        let mut out = poisoned(HEADER_LEN);
        repr.emit(&mut out);
        assert_eq!(out, hex(HEADER));
    }

    #[test]
    fn padding_after_total_length_is_cut() {
        let mut bytes = hex(HEADER);
        bytes.resize(HEADER_LEN + 36 + 6, 0xee);
        let (_, payload) = Ipv4Repr::parse(&bytes).unwrap();
        assert_eq!(payload.len(), 36);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut good = hex(HEADER);
        good.resize(HEADER_LEN + 36, 0);

        let mut bad = good.clone();
        bad[11] ^= 1;
        assert_eq!(Ipv4Repr::parse(&bad).unwrap_err(), Error::Checksum);

        let mut bad = good.clone();
        bad.truncate(40);
        assert_eq!(Ipv4Repr::parse(&bad).unwrap_err(), Error::Truncated);

        let mut bad = good.clone();
        bad[0] = 0x65;
        assert!(matches!(
            Ipv4Repr::parse(&bad).unwrap_err(),
            Error::Malformed(_)
        ));

        let mut bad = good.clone();
        bad[0] = 0x44;
        assert!(matches!(
            Ipv4Repr::parse(&bad).unwrap_err(),
            Error::Malformed(_)
        ));

        // A first fragment (MF set), with a checksum that verifies.
        let mut bad = good;
        bad[6] = 0x20;
        bad[10] = 0;
        bad[11] = 0;
        let sum = checksum(&bad[..HEADER_LEN]);
        bad[10..12].copy_from_slice(&sum.to_be_bytes());
        assert!(matches!(
            Ipv4Repr::parse(&bad).unwrap_err(),
            Error::Malformed(_)
        ));
    }
}
