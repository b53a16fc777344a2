//! RPC frames: RPC_CALL and RPC_REPLY carry one fragment each of a call's
//! marshalled arguments or of its result; RPC_ACK acknowledges fragments
//! selectively. docs/wire.md, "RPC".

use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{check_reserved, emit_fixed, split_fixed, Body, Error, Fixed, Kind, Result};

/// The largest marshalled argument or result accepted, in bytes.
pub const MAX_MESSAGE_LEN: u32 = 16 * 1024 * 1024;
/// The longest acknowledgement bitmap accepted, in bytes (8192 fragments).
pub const MAX_BITMAP_LEN: usize = 1024;

/// The fragment placement shared by calls and replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Index of this fragment, from 0.
    pub index: u16,
    /// Number of fragments of the whole message, at least 1.
    pub count: u16,
    /// Byte offset of this fragment's data in the whole message.
    pub offset: u32,
    /// Length of the whole message in bytes.
    pub total_len: u32,
}

impl Fragment {
    /// The placement of a message that fits into one frame.
    pub const fn whole(len: u32) -> Fragment {
        Fragment {
            index: 0,
            count: 1,
            offset: 0,
            total_len: len,
        }
    }

    /// Checks the placement against the fragment's data length.
    fn check(&self, data_len: usize) -> Result<()> {
        if self.count == 0 || self.index >= self.count {
            return Err(Error::Malformed("fragment index not below fragment count"));
        }
        if self.total_len > MAX_MESSAGE_LEN {
            return Err(Error::Malformed("message longer than 16 MiB"));
        }
        let end = u64::from(self.offset) + data_len as u64;
        if end > u64::from(self.total_len) {
            return Err(Error::Malformed("fragment ends past the message length"));
        }
        if self.count == 1 && (self.offset != 0 || end != u64::from(self.total_len)) {
            return Err(Error::Malformed(
                "a single fragment must carry the whole message",
            ));
        }
        Ok(())
    }
}

/// Fixed part of an RPC_CALL body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CallFixed {
    /// The client's request id, unique per session.
    pub request_id: U64,
    /// The interface id.
    pub interface: U32,
    /// The function's position in the interface declaration.
    pub opcode: U16,
    /// Fragment index.
    pub frag_index: U16,
    /// Fragment count.
    pub frag_count: U16,
    /// Zero.
    pub reserved: U16,
    /// Byte offset of this fragment in the arguments.
    pub offset: U32,
    /// Length of all arguments.
    pub total_len: U32,
}

/// RPC_CALL: one fragment of a call's marshalled arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcCall<'a> {
    /// Request id.
    pub request_id: u64,
    /// Interface id.
    pub interface: u32,
    /// Opcode.
    pub opcode: u16,
    /// Where `data` lies in the arguments.
    pub fragment: Fragment,
    /// The fragment's bytes.
    pub data: &'a [u8],
}

impl<'a> Body<'a> for RpcCall<'a> {
    const KIND: Kind = Kind::RpcCall;

    fn parse(body: &'a [u8]) -> Result<Self> {
        let (fixed, data) = split_fixed::<CallFixed>(body)?;
        check_reserved(fixed.reserved.as_bytes())?;
        let fragment = Fragment {
            index: fixed.frag_index.get(),
            count: fixed.frag_count.get(),
            offset: fixed.offset.get(),
            total_len: fixed.total_len.get(),
        };
        fragment.check(data.len())?;
        Ok(RpcCall {
            request_id: fixed.request_id.get(),
            interface: fixed.interface.get(),
            opcode: fixed.opcode.get(),
            fragment,
            data,
        })
    }

    fn buffer_len(&self) -> usize {
        CallFixed::LEN + self.data.len()
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = CallFixed {
            request_id: U64::new(self.request_id),
            interface: U32::new(self.interface),
            opcode: U16::new(self.opcode),
            frag_index: U16::new(self.fragment.index),
            frag_count: U16::new(self.fragment.count),
            reserved: U16::ZERO,
            offset: U32::new(self.fragment.offset),
            total_len: U32::new(self.fragment.total_len),
        };
        emit_fixed(&fixed, self.data, buf);
    }
}

/// Fixed part of an RPC_REPLY body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReplyFixed {
    /// The request this answers.
    pub request_id: U64,
    /// Exception code: 0 success, negative otherwise (docs/wire.md).
    pub exception: I32,
    /// Fragment index.
    pub frag_index: U16,
    /// Fragment count.
    pub frag_count: U16,
    /// Byte offset of this fragment in the result.
    pub offset: U32,
    /// Length of the whole result.
    pub total_len: U32,
}

/// RPC_REPLY: one fragment of a call's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcReply<'a> {
    /// The request this answers.
    pub request_id: u64,
    /// Exception code; 0 is success.
    pub exception: i32,
    /// Where `data` lies in the result.
    pub fragment: Fragment,
    /// The fragment's bytes.
    pub data: &'a [u8],
}

impl<'a> Body<'a> for RpcReply<'a> {
    const KIND: Kind = Kind::RpcReply;

    fn parse(body: &'a [u8]) -> Result<Self> {
        let (fixed, data) = split_fixed::<ReplyFixed>(body)?;
        let fragment = Fragment {
            index: fixed.frag_index.get(),
            count: fixed.frag_count.get(),
            offset: fixed.offset.get(),
            total_len: fixed.total_len.get(),
        };
        fragment.check(data.len())?;
        Ok(RpcReply {
            request_id: fixed.request_id.get(),
            exception: fixed.exception.get(),
            fragment,
            data,
        })
    }

    fn buffer_len(&self) -> usize {
        ReplyFixed::LEN + self.data.len()
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = ReplyFixed {
            request_id: U64::new(self.request_id),
            exception: I32::new(self.exception),
            frag_index: U16::new(self.fragment.index),
            frag_count: U16::new(self.fragment.count),
            offset: U32::new(self.fragment.offset),
            total_len: U32::new(self.fragment.total_len),
        };
        emit_fixed(&fixed, self.data, buf);
    }
}

/// Which message of a request an RPC_ACK acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Acked {
    /// The call's argument fragments (sent by the server).
    Call,
    /// The reply's fragments (sent by the client).
    Reply,
}

/// Fixed part of an RPC_ACK body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AckFixed {
    /// The request whose fragments are acknowledged.
    pub request_id: U64,
    /// 0: call fragments, 1: reply fragments.
    pub acked: u8,
    /// Zero.
    pub reserved: u8,
    /// Every fragment below this index has arrived.
    pub base: U16,
}

/// RPC_ACK: which fragments of a call or reply the sender holds. Every
/// fragment with index below `base` has arrived; bit `i` of the bitmap
/// (least significant bit of byte 0 first) says whether fragment
/// `base + i` has. `base` at or past the fragment count means complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcAck<'a> {
    /// The request.
    pub request_id: u64,
    /// Call or reply fragments.
    pub acked: Acked,
    /// Cumulative acknowledgement.
    pub base: u16,
    /// Selective acknowledgement above `base`.
    pub bitmap: &'a [u8],
}

impl RpcAck<'_> {
    /// Whether fragment `index` is acknowledged.
    pub fn has(&self, index: u16) -> bool {
        bitmap_has(u64::from(self.base), self.bitmap, u64::from(index))
    }
}

/// Whether `index` is covered by a cumulative `base` plus a bitmap whose bit
/// `i` stands for `base + i` (shared by RPC_ACK and ROM_ACK).
pub(crate) fn bitmap_has(base: u64, bitmap: &[u8], index: u64) -> bool {
    if index < base {
        return true;
    }
    let bit = index - base;
    let Ok(byte) = usize::try_from(bit / 8) else {
        return false;
    };
    bitmap.get(byte).is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

impl<'a> Body<'a> for RpcAck<'a> {
    const KIND: Kind = Kind::RpcAck;

    fn parse(body: &'a [u8]) -> Result<Self> {
        let (fixed, bitmap) = split_fixed::<AckFixed>(body)?;
        check_reserved(&[fixed.reserved])?;
        let acked = match fixed.acked {
            0 => Acked::Call,
            1 => Acked::Reply,
            _ => return Err(Error::Malformed("acked must be 0 (call) or 1 (reply)")),
        };
        if bitmap.len() > MAX_BITMAP_LEN {
            return Err(Error::Malformed("ack bitmap longer than 1024 bytes"));
        }
        Ok(RpcAck {
            request_id: fixed.request_id.get(),
            acked,
            base: fixed.base.get(),
            bitmap,
        })
    }

    fn buffer_len(&self) -> usize {
        AckFixed::LEN + self.bitmap.len()
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = AckFixed {
            request_id: U64::new(self.request_id),
            acked: match self.acked {
                Acked::Call => 0,
                Acked::Reply => 1,
            },
            reserved: 0,
            base: U16::new(self.base),
        };
        emit_fixed(&fixed, self.bitmap, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, round_trip};

    #[test]
    fn rpc_call_golden_vector() {
        // Request 42 to interface 0x4b560001, opcode 1 (put), one fragment
        // with the 10 bytes of put("k", [0x76]).
        let bytes = hex(
            "2a00000000000000 0100564b 0100 0000 0100 0000 00000000 0a000000 01000000 6b 01000000 76",
        );
        let call = RpcCall::parse(&bytes).unwrap();
        assert_eq!(call.request_id, 42);
        assert_eq!(call.interface, 0x4b56_0001);
        assert_eq!(call.opcode, 1);
        assert_eq!(call.fragment, Fragment::whole(10));
        assert_eq!(call.data, &hex("01000000 6b 01000000 76")[..]);
        round_trip(&bytes, &call);
    }

    #[test]
    fn rpc_reply_golden_vector() {
        // Second of three fragments of a 10-byte result, exception 0.
        let bytes = hex("2a00000000000000 00000000 0100 0300 04000000 0a000000 aabbccdd");
        let reply = RpcReply::parse(&bytes).unwrap();
        assert_eq!(reply.request_id, 42);
        assert_eq!(reply.exception, 0);
        assert_eq!(
            reply.fragment,
            Fragment {
                index: 1,
                count: 3,
                offset: 4,
                total_len: 10
            }
        );
        assert_eq!(reply.data, &[0xaa, 0xbb, 0xcc, 0xdd]);
        round_trip(&bytes, &reply);

        // An exception reply: -1000 (the first declared exception), no data.
        let bytes = hex("2a00000000000000 18fcffff 0000 0100 00000000 00000000");
        assert_eq!(RpcReply::parse(&bytes).unwrap().exception, -1000);
    }

    #[test]
    fn rpc_ack_golden_vector() {
        // Reply fragments 0..5 arrived, plus 7 and 9.
        let bytes = hex("2a00000000000000 01 00 0500 0a");
        let ack = RpcAck::parse(&bytes).unwrap();
        assert_eq!(ack.acked, Acked::Reply);
        assert_eq!(ack.base, 5);
        let held: Vec<u16> = (0..16).filter(|&i| ack.has(i)).collect();
        assert_eq!(held, vec![0, 1, 2, 3, 4, 6, 8]);
        round_trip(&bytes, &ack);
    }

    #[test]
    fn fragment_rules_are_enforced() {
        let call = |frag: &str, data: &str| {
            let bytes = hex(&format!("2a00000000000000 0100564b 0100 {frag} {data}"));
            RpcCall::parse(&bytes).map(|_| ())
        };
        // count 0
        assert!(call("0000 0000 0000 00000000 00000000", "").is_err());
        // index == count
        assert!(call("0200 0200 0000 00000000 08000000", "00").is_err());
        // fragment past the end: offset 7 + 2 bytes > total 8
        assert!(call("0100 0200 0000 07000000 08000000", "0000").is_err());
        // single fragment shorter than the total
        assert!(call("0000 0100 0000 00000000 08000000", "00").is_err());
        // total over 16 MiB
        assert!(call("0000 0200 0000 00000000 01000001", "00").is_err());
        // offset near u32::MAX must not overflow
        assert!(call("0100 0200 0000 ffffffff ffffffff", "0000").is_err());
        // reserved set
        assert!(call("0000 0100 0100 00000000 00000000", "").is_err());
        // truncated fixed part
        assert_eq!(RpcCall::parse(&hex("2a00")).unwrap_err(), Error::Truncated);
        // a valid middle fragment
        assert!(call("0100 0300 0000 04000000 0a000000", "00112233").is_ok());
    }

    #[test]
    fn ack_rejects_bad_fields() {
        assert!(RpcAck::parse(&hex("2a00000000000000 02 00 0000")).is_err());
        let mut long = hex("2a00000000000000 00 00 0000");
        long.resize(12 + MAX_BITMAP_LEN + 1, 0);
        assert!(RpcAck::parse(&long).is_err());
    }

    #[test]
    fn bitmap_has_handles_large_indices() {
        assert!(bitmap_has(10, &[], 3));
        assert!(!bitmap_has(10, &[0xff], 18));
        assert!(bitmap_has(10, &[0x00, 0x01], 18));
        assert!(!bitmap_has(0, &[0xff], u64::MAX));
    }
}
