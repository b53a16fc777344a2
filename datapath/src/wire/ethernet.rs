//! Ethernet II headers: destination, source, EtherType (big-endian, as on
//! every Ethernet). No VLAN tags: a tagged frame is not a relay frame.

use zerocopy::network_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{split_fixed, Fixed, Result};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of raw relay frames: IEEE 802 Local Experimental EtherType 1.
pub const ETHERTYPE_RELAY: u16 = 0x88b5;
/// The smallest Ethernet frame without FCS; shorter frames are padded.
pub const MIN_FRAME_LEN: usize = 60;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl core::fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl core::str::FromStr for EthernetAddress {
    type Err = &'static str;

    fn from_str(text: &str) -> core::result::Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or("a MAC address has six parts")?;
            if part.len() != 2 {
                return Err("each part of a MAC address is two hex digits");
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| "MAC address parts are hex")?;
        }
        if parts.next().is_some() {
            return Err("a MAC address has six parts");
        }
        Ok(EthernetAddress(bytes))
    }
}

/// The Ethernet II header as it lies on the wire.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EthernetHeader {
    /// Destination address.
    pub dst: [u8; 6],
    /// Source address.
    pub src: [u8; 6],
    /// EtherType.
    pub ethertype: U16,
}

/// Length of an Ethernet II header.
pub const HEADER_LEN: usize = EthernetHeader::LEN;

/// A parsed Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source address.
    pub src: EthernetAddress,
    /// Destination address.
    pub dst: EthernetAddress,
    /// EtherType.
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Parses the header at the start of `frame`; returns it and the payload.
    pub fn parse(frame: &[u8]) -> Result<(EthernetRepr, &[u8])> {
        let (header, payload) = split_fixed::<EthernetHeader>(frame)?;
        Ok((
            EthernetRepr {
                src: EthernetAddress(header.src),
                dst: EthernetAddress(header.dst),
                ethertype: header.ethertype.get(),
            },
            payload,
        ))
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter.
    pub fn emit(&self, buf: &mut [u8]) {
        let header = EthernetHeader {
            dst: self.dst.0,
            src: self.src.0,
            ethertype: U16::new(self.ethertype),
        };
        buf[..HEADER_LEN].copy_from_slice(header.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, poisoned};

    #[test]
    fn ethernet_golden_vector() {
        let bytes = hex("020000000002 020000000001 88b5");
        let (repr, payload) = EthernetRepr::parse(&bytes).unwrap();
        assert_eq!(repr.dst, EthernetAddress([2, 0, 0, 0, 0, 2]));
        assert_eq!(repr.src, EthernetAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(repr.ethertype, ETHERTYPE_RELAY);
        assert!(payload.is_empty());
        let mut out = poisoned(HEADER_LEN);
        repr.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn mac_addresses_parse_and_print() {
        let mac: EthernetAddress = "02:00:00:00:00:0a".parse().unwrap();
        assert_eq!(mac, EthernetAddress([2, 0, 0, 0, 0, 10]));
        assert_eq!(mac.to_string(), "02:00:00:00:00:0a");
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:00:00:00:00:00",
            "zz:00:00:00:00:00",
        ] {
            assert!(bad.parse::<EthernetAddress>().is_err(), "{bad}");
        }
    }
}
