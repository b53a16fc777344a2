//! The two encapsulations of a relay frame (docs/wire.md, "Encapsulation"):
//!
//! * [`Encapsulation::Udp`]: Ethernet II + IPv4 (20 bytes, DF) + UDP to a
//!   configured port (default [`DEFAULT_UDP_PORT`]). Routable; the UDP
//!   payload is exactly one relay frame, so a kernel UDP socket speaks it too.
//! * [`Encapsulation::Ethernet`]: Ethernet II with the experimental EtherType
//!   [`ETHERTYPE_RELAY`] and the relay frame right after it, padded with
//!   zeros to the 60-byte Ethernet minimum.
//!
//! The TX path writes the relay frame at [`Encapsulation::header_len`] into
//! a buffer and then calls [`emit`], which fills in the outer headers and
//! checksums in place.

use core::net::Ipv4Addr;

pub use super::ethernet::ETHERTYPE_RELAY;
use super::ethernet::{EthernetAddress, EthernetRepr, ETHERTYPE_IPV4, MIN_FRAME_LEN};
use super::ipv4::{Ipv4Repr, DEFAULT_TTL, PROTOCOL_UDP};
use super::udp::UdpRepr;
use super::{ethernet, ipv4, udp, Error, RelayPacket, Result};

/// The UDP port relay frames are sent to unless configured otherwise.
pub const DEFAULT_UDP_PORT: u16 = 9555;

/// How relay frames travel on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// Ethernet + IPv4 + UDP; frames are accepted on destination `port`.
    Udp {
        /// The relay's UDP port.
        port: u16,
    },
    /// Raw Ethernet with `ethertype`.
    Ethernet {
        /// The relay's EtherType.
        ethertype: u16,
    },
}

impl Default for Encapsulation {
    fn default() -> Self {
        Encapsulation::Udp {
            port: DEFAULT_UDP_PORT,
        }
    }
}

impl Encapsulation {
    /// Bytes of outer headers before the relay frame.
    pub const fn header_len(self) -> usize {
        match self {
            Encapsulation::Udp { .. } => ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN,
            Encapsulation::Ethernet { .. } => ethernet::HEADER_LEN,
        }
    }

    /// The length of the Ethernet frame that carries a relay frame of
    /// `relay_len` bytes, padding included.
    pub const fn frame_len(self, relay_len: usize) -> usize {
        let len = self.header_len() + relay_len;
        if len < MIN_FRAME_LEN {
            MIN_FRAME_LEN
        } else {
            len
        }
    }
}

/// The addresses of one end of a link. With raw Ethernet only `mac` is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Ethernet address.
    pub mac: EthernetAddress,
    /// IPv4 address (UDP encapsulation).
    pub ip: Ipv4Addr,
    /// UDP port (UDP encapsulation).
    pub port: u16,
}

impl Endpoint {
    /// Whether `self` and `other` name the same node: by IPv4 address and
    /// port when both know them, else (raw Ethernet) by Ethernet address.
    pub fn same_address(&self, other: &Endpoint) -> bool {
        if self.ip.is_unspecified() || other.ip.is_unspecified() {
            self.mac == other.mac
        } else {
            self.ip == other.ip && self.port == other.port
        }
    }

    /// An endpoint known only by its Ethernet address.
    pub const fn ethernet(mac: EthernetAddress) -> Endpoint {
        Endpoint {
            mac,
            ip: Ipv4Addr::UNSPECIFIED,
            port: 0,
        }
    }
}

/// Parses an Ethernet frame; if it carries a relay frame for this endpoint,
/// returns the sender's and receiver's addresses and exactly the relay
/// frame's bytes (checked with [`RelayPacket::new_checked`]).
///
/// Frames that are well formed but not ours (ARP, other ports, other
/// protocols) give [`Error::NotForUs`], so the caller can tell them from
/// damaged ones.
pub fn parse(frame: &[u8], encap: Encapsulation) -> Result<(Endpoint, Endpoint, &[u8])> {
    let (eth, payload) = EthernetRepr::parse(frame)?;
    let (src, dst, relay) = match encap {
        Encapsulation::Udp { port } => {
            if eth.ethertype != ETHERTYPE_IPV4 {
                return Err(Error::NotForUs);
            }
            let (ip, ip_payload) = Ipv4Repr::parse(payload)?;
            if ip.protocol != PROTOCOL_UDP {
                return Err(Error::NotForUs);
            }
            let (udp, relay) = UdpRepr::parse(ip_payload, ip.src, ip.dst)?;
            if udp.dst_port != port {
                return Err(Error::NotForUs);
            }
            let src = Endpoint {
                mac: eth.src,
                ip: ip.src,
                port: udp.src_port,
            };
            let dst = Endpoint {
                mac: eth.dst,
                ip: ip.dst,
                port: udp.dst_port,
            };
            (src, dst, relay)
        }
        Encapsulation::Ethernet { ethertype } => {
            if eth.ethertype != ethertype {
                return Err(Error::NotForUs);
            }
            (
                Endpoint::ethernet(eth.src),
                Endpoint::ethernet(eth.dst),
                payload,
            )
        }
    };
    let frame_len = RelayPacket::new_checked(relay)?.frame_len();
    if let Encapsulation::Udp { .. } = encap {
        // A datagram carries exactly one frame; only Ethernet pads.
        if frame_len != relay.len() {
            return Err(Error::Malformed(
                "bytes after the relay frame in a UDP datagram",
            ));
        }
    }
    Ok((src, dst, &relay[..frame_len]))
}

/// Writes the outer headers for a relay frame of `relay_len` bytes that is
/// already in place at `buf[encap.header_len()..]`, computes the checksums
/// and zeroes any padding. `buf` must be exactly
/// [`Encapsulation::frame_len`]`(relay_len)` bytes long.
///
/// # Panics
/// If `buf` has another length, or the frame is too long for one datagram.
pub fn emit(
    encap: Encapsulation,
    src: &Endpoint,
    dst: &Endpoint,
    relay_len: usize,
    buf: &mut [u8],
) {
    assert_eq!(
        buf.len(),
        encap.frame_len(relay_len),
        "emit buffer must be frame_len() bytes"
    );
    let header_len = encap.header_len();
    buf[header_len + relay_len..].fill(0);
    let ethertype = match encap {
        Encapsulation::Udp { .. } => ETHERTYPE_IPV4,
        Encapsulation::Ethernet { ethertype } => ethertype,
    };
    EthernetRepr {
        src: src.mac,
        dst: dst.mac,
        ethertype,
    }
    .emit(buf);
    if let Encapsulation::Udp { .. } = encap {
        let ip_start = ethernet::HEADER_LEN;
        let udp_start = ip_start + ipv4::HEADER_LEN;
        let datagram_len = udp::HEADER_LEN + relay_len;
        Ipv4Repr {
            src: src.ip,
            dst: dst.ip,
            protocol: PROTOCOL_UDP,
            payload_len: u16::try_from(datagram_len).expect("relay frame too long for UDP"),
            ttl: DEFAULT_TTL,
        }
        .emit(&mut buf[ip_start..]);
        UdpRepr {
            src_port: src.port,
            dst_port: dst.port,
        }
        .emit(
            &mut buf[udp_start..udp_start + datagram_len],
            src.ip,
            dst.ip,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{Frame, Message};
    use crate::wire::signal::Signal;
    use crate::wire::test_util::{hex, poisoned};
    use crate::wire::Flags;

    fn endpoints() -> (Endpoint, Endpoint) {
        let a = Endpoint {
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ip: Ipv4Addr::new(198, 18, 0, 1),
            port: DEFAULT_UDP_PORT,
        };
        let b = Endpoint {
            mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ip: Ipv4Addr::new(198, 18, 0, 2),
            port: DEFAULT_UDP_PORT,
        };
        (a, b)
    }

    fn signal_frame() -> Frame<'static> {
        Frame {
            flags: Flags::NONE,
            channel: 1,
            sequence: 5,
            message: Message::Signal(Signal {
                context: 3,
                count: 1000,
            }),
        }
    }

    fn build(encap: Encapsulation) -> Vec<u8> {
        let (a, b) = endpoints();
        let frame = signal_frame();
        let relay_len = frame.buffer_len();
        let mut buf = poisoned(encap.frame_len(relay_len));
        let start = encap.header_len();
        frame.emit(&mut buf[start..start + relay_len]);
        emit(encap, &a, &b, relay_len, &mut buf);
        buf
    }

    #[test]
    fn udp_encapsulation_golden_vector() {
        let expected = hex("020000000002 020000000001 0800
             45 00 0040 0000 4000 40 11 ae85 c6120001 c6120002
             2553 2553 002c ae5d
             5852 01 14 20 00 1000 01000000 0500000000000000
             03000000 00000000 e803000000000000");
        let built = build(Encapsulation::default());
        assert_eq!(built, expected);
        let (src, dst, relay) = parse(&built, Encapsulation::default()).unwrap();
        assert_eq!((src, dst), endpoints());
        let (frame, _) = Frame::parse(relay).unwrap();
        assert_eq!(frame, signal_frame());
    }

    #[test]
    fn raw_ethernet_encapsulation_golden_vector() {
        let encap = Encapsulation::Ethernet {
            ethertype: ETHERTYPE_RELAY,
        };
        let expected = hex("020000000002 020000000001 88b5
             5852 01 14 20 00 1000 01000000 0500000000000000
             03000000 00000000 e803000000000000
             00000000000000000000");
        let built = build(encap);
        assert_eq!(built, expected);
        let (src, _, relay) = parse(&built, encap).unwrap();
        assert_eq!(src.mac, endpoints().0.mac);
        assert_eq!(relay.len(), 36);
    }

    #[test]
    fn short_raw_frames_are_padded_and_padding_is_ignored() {
        let encap = Encapsulation::Ethernet {
            ethertype: ETHERTYPE_RELAY,
        };
        let (a, b) = endpoints();
        // An empty-bodied frame: 14 + 20 bytes, padded to 60.
        let mut buf = poisoned(encap.frame_len(20));
        assert_eq!(buf.len(), MIN_FRAME_LEN);
        buf[14..34].copy_from_slice(&hex("5852 01 14 40 00 0000 00000000 0100000000000000"));
        emit(encap, &a, &b, 20, &mut buf);
        assert!(buf[34..].iter().all(|&b| b == 0));
        let (_, _, relay) = parse(&buf, encap).unwrap();
        assert_eq!(relay.len(), 20);
    }

    #[test]
    fn other_traffic_is_not_for_us() {
        let built = build(Encapsulation::default());
        // Another destination port.
        assert_eq!(
            parse(&built, Encapsulation::Udp { port: 9556 }).unwrap_err(),
            Error::NotForUs
        );
        // Raw Ethernet listener sees an IPv4 frame.
        let raw = Encapsulation::Ethernet {
            ethertype: ETHERTYPE_RELAY,
        };
        assert_eq!(parse(&built, raw).unwrap_err(), Error::NotForUs);
        // An ARP frame.
        let mut arp = built.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            parse(&arp, Encapsulation::default()).unwrap_err(),
            Error::NotForUs
        );
    }

    #[test]
    fn damaged_frames_are_errors() {
        let built = build(Encapsulation::default());
        let mut corrupt = built.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(
            parse(&corrupt, Encapsulation::default()).unwrap_err(),
            Error::Checksum
        );
        assert_eq!(
            parse(&built[..30], Encapsulation::default()).unwrap_err(),
            Error::Truncated
        );
    }
}
