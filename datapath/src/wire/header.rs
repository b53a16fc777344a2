//! The relay header: the 20 bytes every relay frame starts with, and the
//! [`RelayPacket`] view that checks a whole frame's lengths (header, body,
//! authentication trailer) before anything reads the body.
//!
//! ```text
//!  0      2       3          4     5      6          8         12          20
//!  | "XR" | version | hdr_len | kind | flags | body_len | channel | sequence |
//! ```
//!
//! All multi-byte fields are little-endian (docs/wire.md, "Relay header").

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Error, Fixed, Result};

/// The two magic bytes that open every relay frame: ASCII `XR`.
pub const MAGIC: [u8; 2] = *b"XR";
/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// The length of the relay header defined by version 1.
pub const HEADER_LEN: usize = HEADER_LEN_FIELD as usize;
/// [`HEADER_LEN`] as the header's length field holds it.
const HEADER_LEN_FIELD: u8 = 20;
/// The length of the authentication tag that follows the body when
/// [`Flags::AUTH`] is set.
pub const TAG_LEN: usize = 16;

/// The relay header as it lies on the wire.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct RelayHeader {
    /// [`MAGIC`].
    pub magic: [u8; 2],
    /// [`VERSION`].
    pub version: u8,
    /// Length of the header in bytes: at least [`HEADER_LEN`], a multiple of 4.
    pub header_len: u8,
    /// The frame kind, see [`Kind`].
    pub kind: u8,
    /// Flag bits, see [`Flags`].
    pub flags: u8,
    /// Length of the body in bytes (excluding header and trailer).
    pub body_len: U16,
    /// The session this frame belongs to; 0 for the peer link itself.
    pub channel: U32,
    /// The sender's frame counter towards this peer (the nonce when authenticated).
    pub sequence: U64,
}

const _: () = assert!(size_of::<RelayHeader>() == HEADER_LEN);

/// Frame kinds. A kind this implementation does not know parses as
/// `Unknown`, so a newer peer's frames are data to count, not a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Client asks a server to open a session for a label.
    SessionOpen,
    /// Server accepts (with a channel) or refuses a session.
    SessionReply,
    /// Either side ends a session.
    SessionClose,
    /// A fragment of an RPC call's arguments.
    RpcCall,
    /// A fragment of an RPC reply.
    RpcReply,
    /// Selective acknowledgement of call or reply fragments.
    RpcAck,
    /// A signal context's cumulative submission count.
    Signal,
    /// The highest cumulative signal count the receiver holds.
    SignalAck,
    /// A ROM module's current version, size and content hash.
    RomAnnounce,
    /// A subscriber asks for the current version of a module.
    RomRequest,
    /// A piece of a ROM module's content.
    RomChunk,
    /// Selective acknowledgement of ROM chunks, with flow-control credit.
    RomAck,
    /// Peer liveness and round-trip measurement.
    Heartbeat,
    /// A kind this implementation does not know.
    Unknown(u8),
}

impl Kind {
    /// Every kind this implementation knows, in code order.
    pub const ALL: [Kind; 13] = [
        Kind::SessionOpen,
        Kind::SessionReply,
        Kind::SessionClose,
        Kind::RpcCall,
        Kind::RpcReply,
        Kind::RpcAck,
        Kind::Signal,
        Kind::SignalAck,
        Kind::RomAnnounce,
        Kind::RomRequest,
        Kind::RomChunk,
        Kind::RomAck,
        Kind::Heartbeat,
    ];

    /// The kind's name as docs/wire.md spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::SessionOpen => "SESSION_OPEN",
            Kind::SessionReply => "SESSION_REPLY",
            Kind::SessionClose => "SESSION_CLOSE",
            Kind::RpcCall => "RPC_CALL",
            Kind::RpcReply => "RPC_REPLY",
            Kind::RpcAck => "RPC_ACK",
            Kind::Signal => "SIGNAL",
            Kind::SignalAck => "SIGNAL_ACK",
            Kind::RomAnnounce => "ROM_ANNOUNCE",
            Kind::RomRequest => "ROM_REQUEST",
            Kind::RomChunk => "ROM_CHUNK",
            Kind::RomAck => "ROM_ACK",
            Kind::Heartbeat => "HEARTBEAT",
            Kind::Unknown(_) => "UNKNOWN",
        }
    }
}

impl From<u8> for Kind {
    fn from(code: u8) -> Self {
        match code {
            0x01 => Kind::SessionOpen,
            0x02 => Kind::SessionReply,
            0x03 => Kind::SessionClose,
            0x10 => Kind::RpcCall,
            0x11 => Kind::RpcReply,
            0x12 => Kind::RpcAck,
            0x20 => Kind::Signal,
            0x21 => Kind::SignalAck,
            0x30 => Kind::RomAnnounce,
            0x31 => Kind::RomRequest,
            0x32 => Kind::RomChunk,
            0x33 => Kind::RomAck,
            0x40 => Kind::Heartbeat,
            other => Kind::Unknown(other),
        }
    }
}

impl From<Kind> for u8 {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::SessionOpen => 0x01,
            Kind::SessionReply => 0x02,
            Kind::SessionClose => 0x03,
            Kind::RpcCall => 0x10,
            Kind::RpcReply => 0x11,
            Kind::RpcAck => 0x12,
            Kind::Signal => 0x20,
            Kind::SignalAck => 0x21,
            Kind::RomAnnounce => 0x30,
            Kind::RomRequest => 0x31,
            Kind::RomChunk => 0x32,
            Kind::RomAck => 0x33,
            Kind::Heartbeat => 0x40,
            Kind::Unknown(other) => other,
        }
    }
}

/// The header's flag bits. Unknown bits make a frame invalid: a flag may
/// change how the rest of the frame is read, so it must be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// A [`TAG_LEN`]-byte authentication tag follows the body.
    pub const AUTH: Flags = Flags(0x01);
    /// The body is encrypted (requires [`Flags::AUTH`]).
    pub const ENCRYPTED: Flags = Flags(0x02);
    const KNOWN: u8 = 0x03;

    /// Checks raw flag bits: unknown bits and ENCRYPTED without AUTH are errors.
    pub fn from_bits(bits: u8) -> Result<Flags> {
        if bits & !Self::KNOWN != 0 {
            return Err(Error::UnknownFlags(bits & !Self::KNOWN));
        }
        let flags = Flags(bits);
        if flags.contains(Flags::ENCRYPTED) && !flags.contains(Flags::AUTH) {
            return Err(Error::Malformed("ENCRYPTED flag without AUTH"));
        }
        Ok(flags)
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two flag sets.
    #[must_use]
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// The length of the trailer these flags announce.
    pub const fn trailer_len(self) -> usize {
        if self.contains(Flags::AUTH) {
            TAG_LEN
        } else {
            0
        }
    }
}

/// A checked view of one whole relay frame: header, body and trailer. After
/// [`RelayPacket::new_checked`] the magic, version, header length, flags and
/// all lengths are known to be valid and inside the buffer.
#[derive(Debug, Clone, Copy)]
pub struct RelayPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RelayPacket<T> {
    /// Wraps a buffer this process built; accessors may panic on a short one.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps and checks a received buffer. The buffer may be longer than the
    /// frame (raw Ethernet pads short frames); [`RelayPacket::frame_len`]
    /// says where the frame ends.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Wraps and checks the payload of a UDP datagram, which must be
    /// exactly one frame (docs/wire.md, section 2.1): unlike raw Ethernet,
    /// nothing may follow it.
    pub fn new_datagram(buffer: T) -> Result<Self> {
        let packet = Self::new_checked(buffer)?;
        if packet.frame_len() != packet.buffer.as_ref().len() {
            return Err(Error::Malformed(
                "bytes after the relay frame in a UDP datagram",
            ));
        }
        Ok(packet)
    }

    fn check(&self) -> Result<()> {
        let bytes = self.buffer.as_ref();
        let (header, _) = RelayHeader::ref_from_prefix(bytes).map_err(|_| Error::Truncated)?;
        if header.magic != MAGIC {
            return Err(Error::BadMagic);
        }
        if header.version != VERSION {
            return Err(Error::UnsupportedVersion(header.version));
        }
        let header_len = usize::from(header.header_len);
        if header_len < HEADER_LEN || !header_len.is_multiple_of(4) {
            return Err(Error::BadHeaderLength(header.header_len));
        }
        let flags = Flags::from_bits(header.flags)?;
        let total = header_len + usize::from(header.body_len.get()) + flags.trailer_len();
        if bytes.len() < total {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    fn header(&self) -> &RelayHeader {
        match RelayHeader::ref_from_prefix(self.buffer.as_ref()) {
            Ok((header, _)) => header,
            Err(_) => panic!("RelayPacket on a buffer shorter than the relay header"),
        }
    }

    /// The frame kind.
    pub fn kind(&self) -> Kind {
        Kind::from(self.header().kind)
    }

    /// The flags (unchecked bits are masked to the known ones).
    pub fn flags(&self) -> Flags {
        Flags(self.header().flags & Flags::KNOWN)
    }

    /// The channel (session) this frame belongs to.
    pub fn channel(&self) -> u32 {
        self.header().channel.get()
    }

    /// The sender's sequence number.
    pub fn sequence(&self) -> u64 {
        self.header().sequence.get()
    }

    /// The header length in bytes (20 in version 1; more from a newer
    /// revision that appended fields, which this implementation skips).
    pub fn header_len(&self) -> usize {
        usize::from(self.header().header_len)
    }

    /// The whole header including any appended fields: the authenticated
    /// data of an AEAD tag.
    pub fn header_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        let start = self.header_len();
        &self.buffer.as_ref()[start..start + usize::from(self.header().body_len.get())]
    }

    /// The authentication tag, empty without [`Flags::AUTH`].
    pub fn trailer(&self) -> &[u8] {
        let start = self.header_len() + usize::from(self.header().body_len.get());
        &self.buffer.as_ref()[start..start + self.flags().trailer_len()]
    }

    /// Header, body and trailer together.
    pub fn frame_len(&self) -> usize {
        self.header_len() + usize::from(self.header().body_len.get()) + self.flags().trailer_len()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RelayPacket<T> {
    /// The body, writable in place (the TX path builds bodies here).
    pub fn body_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let end = start + usize::from(self.header().body_len.get());
        &mut self.buffer.as_mut()[start..end]
    }

    /// The trailer, writable in place (where the tag is written).
    pub fn trailer_mut(&mut self) -> &mut [u8] {
        let start = self.header_len() + usize::from(self.header().body_len.get());
        let end = start + self.flags().trailer_len();
        &mut self.buffer.as_mut()[start..end]
    }
}

/// The parsed relay header of a version-1 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    /// Frame kind.
    pub kind: Kind,
    /// Flags.
    pub flags: Flags,
    /// Channel (session), 0 for the peer link.
    pub channel: u32,
    /// Sender's sequence number.
    pub sequence: u64,
    /// Body length in bytes.
    pub body_len: u16,
}

impl HeaderRepr {
    /// Reads the header of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &RelayPacket<T>) -> HeaderRepr {
        let header = packet.header();
        HeaderRepr {
            kind: packet.kind(),
            flags: packet.flags(),
            channel: header.channel.get(),
            sequence: header.sequence.get(),
            body_len: header.body_len.get(),
        }
    }

    /// Writes a version-1 header (20 bytes) into the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let header = RelayHeader {
            magic: MAGIC,
            version: VERSION,
            header_len: HEADER_LEN_FIELD,
            kind: self.kind.into(),
            flags: self.flags.bits(),
            body_len: U16::new(self.body_len),
            channel: U32::new(self.channel),
            sequence: U64::new(self.sequence),
        };
        buf[..RelayHeader::LEN].copy_from_slice(header.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, poisoned};

    // A HEARTBEAT header: channel 0, sequence 0x0102030405060708, 24-byte body.
    const HEADER: &str = "5852 01 14 40 00 1800 00000000 0807060504030201";

    #[test]
    fn header_golden_vector() {
        let mut bytes = hex(HEADER);
        bytes.extend_from_slice(&[0u8; 24]);
        let packet = RelayPacket::new_checked(&bytes[..]).unwrap();
        let repr = HeaderRepr::parse(&packet);
        assert_eq!(repr.kind, Kind::Heartbeat);
        assert_eq!(repr.flags, Flags::NONE);
        assert_eq!(repr.channel, 0);
        assert_eq!(repr.sequence, 0x0102_0304_0506_0708);
        assert_eq!(repr.body_len, 24);
        assert_eq!(packet.body().len(), 24);
        assert_eq!(packet.frame_len(), 44);

        let mut out = poisoned(HEADER_LEN);
        repr.emit(&mut out);
        assert_eq!(out, hex(HEADER));
    }

    #[test]
    fn rejects_bad_magic_version_and_lengths() {
        let mut bytes = hex(HEADER);
        bytes.extend_from_slice(&[0u8; 24]);

        let mut bad = bytes.clone();
        bad[0] = b'Y';
        assert_eq!(
            RelayPacket::new_checked(&bad[..]).unwrap_err(),
            Error::BadMagic
        );

        let mut bad = bytes.clone();
        bad[2] = 2;
        assert_eq!(
            RelayPacket::new_checked(&bad[..]).unwrap_err(),
            Error::UnsupportedVersion(2)
        );

        for header_len in [0u8, 16, 22] {
            let mut bad = bytes.clone();
            bad[3] = header_len;
            assert_eq!(
                RelayPacket::new_checked(&bad[..]).unwrap_err(),
                Error::BadHeaderLength(header_len)
            );
        }

        // The body length points one byte past the buffer.
        let mut bad = bytes.clone();
        bad[6] = 25;
        assert_eq!(
            RelayPacket::new_checked(&bad[..]).unwrap_err(),
            Error::Truncated
        );

        // AUTH announces a 16-byte tag the buffer does not have.
        let mut bad = bytes.clone();
        bad[5] = Flags::AUTH.bits();
        assert_eq!(
            RelayPacket::new_checked(&bad[..]).unwrap_err(),
            Error::Truncated
        );

        let mut bad = bytes.clone();
        bad[5] = 0x80;
        assert_eq!(
            RelayPacket::new_checked(&bad[..]).unwrap_err(),
            Error::UnknownFlags(0x80)
        );

        let mut bad = bytes;
        bad[5] = Flags::ENCRYPTED.bits();
        assert!(matches!(
            RelayPacket::new_checked(&bad[..]).unwrap_err(),
            Error::Malformed(_)
        ));

        assert_eq!(
            RelayPacket::new_checked(&hex("5852 01")[..]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn longer_header_from_a_newer_revision_is_skipped() {
        // header_len 24: four appended bytes this implementation ignores.
        let mut bytes = hex("5852 01 18 20 00 0400 07000000 0100000000000000 deadbeef");
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        let packet = RelayPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.body(), &[1, 2, 3, 4]);
        assert_eq!(packet.channel(), 7);
    }

    #[test]
    fn kind_codes_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from(u8::from(kind)), kind);
        }
        assert_eq!(Kind::from(0xee), Kind::Unknown(0xee));
        assert_eq!(u8::from(Kind::Unknown(0xee)), 0xee);
    }
}
