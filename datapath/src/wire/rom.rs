//! ROM frames: ROM_ANNOUNCE (the publisher's current version of a module),
//! ROM_REQUEST (a subscriber asks for it), ROM_CHUNK (a piece of content) and
//! ROM_ACK (selective acknowledgement with flow-control credit).
//! docs/wire.md, "ROM modules".

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::rpc::{bitmap_has, MAX_BITMAP_LEN};
use super::{check_reserved, emit_fixed, split_fixed, Body, Error, Fixed, Kind, Result};

/// The largest module accepted, in bytes (1 GiB).
pub const MAX_ROM_SIZE: u64 = 1 << 30;
/// The length of a content hash (BLAKE3, 256 bits).
pub const HASH_LEN: usize = 32;

/// Whether a module has content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RomState {
    /// The module has content (possibly empty).
    Valid,
    /// The module was removed: readers see no content at all.
    Removed,
}

/// Fixed part (and whole) of a ROM_ANNOUNCE body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AnnounceFixed {
    /// The publisher's module id.
    pub module: U32,
    /// 0: valid, 1: removed.
    pub state: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// Version, increasing with every change; never 0.
    pub version: U64,
    /// Content length in bytes.
    pub size: U64,
    /// Length of every chunk but the last.
    pub chunk_size: U32,
    /// Zero.
    pub reserved2: U32,
    /// BLAKE3 hash of the content.
    pub hash: [u8; HASH_LEN],
}

/// ROM_ANNOUNCE: module `module` is at `version`, `size` bytes long, content
/// hash `hash`, transferred in chunks of `chunk_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RomAnnounce {
    /// Module id.
    pub module: u32,
    /// Valid or removed.
    pub state: RomState,
    /// Version.
    pub version: u64,
    /// Content length.
    pub size: u64,
    /// Chunk length.
    pub chunk_size: u32,
    /// Content hash.
    pub hash: [u8; HASH_LEN],
}

impl RomAnnounce {
    /// The number of chunks the content is sent in (0 for empty content).
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size.max(1)))
    }
}

impl Body<'_> for RomAnnounce {
    const KIND: Kind = Kind::RomAnnounce;

    fn parse(body: &[u8]) -> Result<Self> {
        let (fixed, rest) = split_fixed::<AnnounceFixed>(body)?;
        if !rest.is_empty() {
            return Err(Error::Malformed("bytes after ROM_ANNOUNCE"));
        }
        check_reserved(&fixed.reserved)?;
        check_reserved(fixed.reserved2.as_bytes())?;
        let state = match fixed.state {
            0 => RomState::Valid,
            1 => RomState::Removed,
            _ => {
                return Err(Error::Malformed(
                    "ROM state must be 0 (valid) or 1 (removed)",
                ))
            }
        };
        let (version, size, chunk_size) = (
            fixed.version.get(),
            fixed.size.get(),
            fixed.chunk_size.get(),
        );
        if version == 0 {
            return Err(Error::Malformed("ROM version 0 is reserved"));
        }
        if size > MAX_ROM_SIZE {
            return Err(Error::Malformed("ROM module larger than 1 GiB"));
        }
        if chunk_size == 0 || chunk_size > u32::from(u16::MAX) {
            return Err(Error::Malformed("ROM chunk size must be 1..=65535"));
        }
        if state == RomState::Removed && size != 0 {
            return Err(Error::Malformed("a removed ROM module has size 0"));
        }
        Ok(RomAnnounce {
            module: fixed.module.get(),
            state,
            version,
            size,
            chunk_size,
            hash: fixed.hash,
        })
    }

    fn buffer_len(&self) -> usize {
        AnnounceFixed::LEN
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = AnnounceFixed {
            module: U32::new(self.module),
            state: match self.state {
                RomState::Valid => 0,
                RomState::Removed => 1,
            },
            reserved: [0; 3],
            version: U64::new(self.version),
            size: U64::new(self.size),
            chunk_size: U32::new(self.chunk_size),
            reserved2: U32::ZERO,
            hash: self.hash,
        };
        emit_fixed(&fixed, &[], buf);
    }
}

/// Fixed part (and whole) of a ROM_REQUEST body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RequestFixed {
    /// Module id, or 0 when the subscriber does not know it yet.
    pub module: U32,
    /// Zero.
    pub reserved: U32,
    /// The version the subscriber holds completely, 0 for none.
    pub have_version: U64,
}

/// ROM_REQUEST: send me your current version unless it is `have_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RomRequest {
    /// Module id (0: the session's module, id not known yet).
    pub module: u32,
    /// The version held, 0 for none.
    pub have_version: u64,
}

impl Body<'_> for RomRequest {
    const KIND: Kind = Kind::RomRequest;

    fn parse(body: &[u8]) -> Result<Self> {
        let (fixed, rest) = split_fixed::<RequestFixed>(body)?;
        if !rest.is_empty() {
            return Err(Error::Malformed("bytes after ROM_REQUEST"));
        }
        check_reserved(fixed.reserved.as_bytes())?;
        Ok(RomRequest {
            module: fixed.module.get(),
            have_version: fixed.have_version.get(),
        })
    }

    fn buffer_len(&self) -> usize {
        RequestFixed::LEN
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = RequestFixed {
            module: U32::new(self.module),
            reserved: U32::ZERO,
            have_version: U64::new(self.have_version),
        };
        emit_fixed(&fixed, &[], buf);
    }
}

/// Fixed part of a ROM_CHUNK body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkFixed {
    /// Module id.
    pub module: U32,
    /// Zero.
    pub reserved: U32,
    /// The version this chunk belongs to.
    pub version: U64,
    /// Byte offset in the content: a multiple of the announced chunk size.
    pub offset: U64,
}

/// ROM_CHUNK: bytes `offset..offset + data.len()` of `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RomChunk<'a> {
    /// Module id.
    pub module: u32,
    /// Version.
    pub version: u64,
    /// Byte offset.
    pub offset: u64,
    /// Content bytes.
    pub data: &'a [u8],
}

impl<'a> Body<'a> for RomChunk<'a> {
    const KIND: Kind = Kind::RomChunk;

    fn parse(body: &'a [u8]) -> Result<Self> {
        let (fixed, data) = split_fixed::<ChunkFixed>(body)?;
        check_reserved(fixed.reserved.as_bytes())?;
        let offset = fixed.offset.get();
        // The engine checks against the announced size; this bound keeps the
        // arithmetic of any receiver far from overflow.
        if offset.saturating_add(data.len() as u64) > MAX_ROM_SIZE {
            return Err(Error::Malformed("ROM chunk past 1 GiB"));
        }
        Ok(RomChunk {
            module: fixed.module.get(),
            version: fixed.version.get(),
            offset,
            data,
        })
    }

    fn buffer_len(&self) -> usize {
        ChunkFixed::LEN + self.data.len()
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = ChunkFixed {
            module: U32::new(self.module),
            reserved: U32::ZERO,
            version: U64::new(self.version),
            offset: U64::new(self.offset),
        };
        emit_fixed(&fixed, self.data, buf);
    }
}

/// Fixed part of a ROM_ACK body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AckFixed {
    /// Module id.
    pub module: U32,
    /// Credit: the publisher may have chunks up to `base + window` in flight.
    pub window: U32,
    /// The version being acknowledged.
    pub version: U64,
    /// Every chunk with an index below `base` has arrived.
    pub base: U32,
    /// Zero.
    pub reserved: U32,
}

/// ROM_ACK: every chunk below `base` has arrived; bit `i` of `bitmap`
/// (least significant bit of byte 0 first) says whether chunk `base + i`
/// has; the publisher may send chunks with index below `base + window`.
/// `base` equal to the chunk count means the transfer is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RomAck<'a> {
    /// Module id.
    pub module: u32,
    /// Version.
    pub version: u64,
    /// Cumulative acknowledgement (chunk index).
    pub base: u32,
    /// Flow-control credit in chunks past `base`.
    pub window: u32,
    /// Selective acknowledgement.
    pub bitmap: &'a [u8],
}

impl RomAck<'_> {
    /// Whether chunk `index` is acknowledged.
    pub fn has(&self, index: u32) -> bool {
        bitmap_has(u64::from(self.base), self.bitmap, u64::from(index))
    }
}

impl<'a> Body<'a> for RomAck<'a> {
    const KIND: Kind = Kind::RomAck;

    fn parse(body: &'a [u8]) -> Result<Self> {
        let (fixed, bitmap) = split_fixed::<AckFixed>(body)?;
        check_reserved(fixed.reserved.as_bytes())?;
        if bitmap.len() > MAX_BITMAP_LEN {
            return Err(Error::Malformed("ack bitmap longer than 1024 bytes"));
        }
        Ok(RomAck {
            module: fixed.module.get(),
            version: fixed.version.get(),
            base: fixed.base.get(),
            window: fixed.window.get(),
            bitmap,
        })
    }

    fn buffer_len(&self) -> usize {
        AckFixed::LEN + self.bitmap.len()
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = AckFixed {
            module: U32::new(self.module),
            window: U32::new(self.window),
            version: U64::new(self.version),
            base: U32::new(self.base),
            reserved: U32::ZERO,
        };
        emit_fixed(&fixed, self.bitmap, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, round_trip};

    /// BLAKE3 of the three bytes "abc".
    const ABC_HASH: &str = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";

    #[test]
    fn rom_announce_golden_vector() {
        let bytes = hex(&format!(
            "05000000 00 000000 0200000000000000 0300000000000000 78050000 00000000 {ABC_HASH}"
        ));
        let announce = RomAnnounce::parse(&bytes).unwrap();
        assert_eq!(announce.module, 5);
        assert_eq!(announce.state, RomState::Valid);
        assert_eq!(announce.version, 2);
        assert_eq!(announce.size, 3);
        assert_eq!(announce.chunk_size, 1400);
        assert_eq!(announce.hash[..], hex(ABC_HASH)[..]);
        assert_eq!(announce.chunk_count(), 1);
        round_trip(&bytes, &announce);
    }

    #[test]
    fn rom_request_golden_vector() {
        let bytes = hex("05000000 00000000 0100000000000000");
        let expected = RomRequest {
            module: 5,
            have_version: 1,
        };
        round_trip(&bytes, &expected);
    }

    #[test]
    fn rom_chunk_golden_vector() {
        let bytes = hex("05000000 00000000 0200000000000000 0000000000000000 616263");
        let chunk = RomChunk::parse(&bytes).unwrap();
        assert_eq!(chunk.module, 5);
        assert_eq!(chunk.version, 2);
        assert_eq!(chunk.offset, 0);
        assert_eq!(chunk.data, b"abc");
        round_trip(&bytes, &chunk);
    }

    #[test]
    fn rom_ack_golden_vector() {
        // Chunks below 16 arrived, and 17; credit for 64 chunks past 16.
        let bytes = hex("05000000 40000000 0200000000000000 10000000 00000000 02");
        let ack = RomAck::parse(&bytes).unwrap();
        assert_eq!(
            (ack.module, ack.version, ack.base, ack.window),
            (5, 2, 16, 64)
        );
        assert!(ack.has(15) && !ack.has(16) && ack.has(17) && !ack.has(18));
        round_trip(&bytes, &ack);
    }

    #[test]
    fn announce_rejects_invalid_fields() {
        let announce = |state: &str, version: &str, size: &str, chunk: &str| {
            RomAnnounce::parse(&hex(&format!(
                "05000000 {state} 000000 {version} {size} {chunk} 00000000 {ABC_HASH}"
            )))
        };
        let ok = ("00", "0200000000000000", "0300000000000000", "78050000");
        assert!(announce(ok.0, ok.1, ok.2, ok.3).is_ok());
        assert!(announce("02", ok.1, ok.2, ok.3).is_err(), "unknown state");
        assert!(
            announce(ok.0, "0000000000000000", ok.2, ok.3).is_err(),
            "version 0"
        );
        assert!(
            announce(ok.0, ok.1, "0100004000000000", ok.3).is_err(),
            "size over 1 GiB"
        );
        assert!(
            announce(ok.0, ok.1, ok.2, "00000000").is_err(),
            "chunk size 0"
        );
        assert!(
            announce(ok.0, ok.1, ok.2, "00000100").is_err(),
            "chunk size over 65535"
        );
        assert!(
            announce("01", ok.1, ok.2, ok.3).is_err(),
            "removed with content"
        );
        assert!(announce("01", ok.1, "0000000000000000", ok.3).is_ok());
    }

    #[test]
    fn chunk_rejects_offsets_past_the_limit() {
        let bytes = hex("05000000 00000000 0200000000000000 ffffffffffffffff 61");
        assert!(RomChunk::parse(&bytes).is_err());
    }
}
