//! A whole relay frame as one value: the header's fields and a typed body
//! ([`Message`]). This is what the engines consume and produce; the bytes
//! around it (Ethernet, IPv4, UDP) belong to [`super::encap`].

use super::header::{HeaderRepr, RelayPacket};
use super::heartbeat::Heartbeat;
use super::rom::{RomAck, RomAnnounce, RomChunk, RomRequest};
use super::rpc::{RpcAck, RpcCall, RpcReply};
use super::session::{SessionClose, SessionOpen, SessionReply};
use super::signal::{Signal, SignalAck};
use super::{Body, Error, Flags, Kind, Result, HEADER_LEN};

/// The typed body of a frame, one arm per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// SESSION_OPEN.
    SessionOpen(SessionOpen<'a>),
    /// SESSION_REPLY.
    SessionReply(SessionReply),
    /// SESSION_CLOSE.
    SessionClose(SessionClose),
    /// RPC_CALL.
    RpcCall(RpcCall<'a>),
    /// RPC_REPLY.
    RpcReply(RpcReply<'a>),
    /// RPC_ACK.
    RpcAck(RpcAck<'a>),
    /// SIGNAL.
    Signal(Signal),
    /// SIGNAL_ACK.
    SignalAck(SignalAck),
    /// ROM_ANNOUNCE.
    RomAnnounce(RomAnnounce),
    /// ROM_REQUEST.
    RomRequest(RomRequest),
    /// ROM_CHUNK.
    RomChunk(RomChunk<'a>),
    /// ROM_ACK.
    RomAck(RomAck<'a>),
    /// HEARTBEAT.
    Heartbeat(Heartbeat),
}

/// Calls `$body.$method($($arg),*)` on whichever body a message holds.
macro_rules! each_body {
    ($message:expr, $body:ident => $call:expr) => {
        match $message {
            Message::SessionOpen($body) => $call,
            Message::SessionReply($body) => $call,
            Message::SessionClose($body) => $call,
            Message::RpcCall($body) => $call,
            Message::RpcReply($body) => $call,
            Message::RpcAck($body) => $call,
            Message::Signal($body) => $call,
            Message::SignalAck($body) => $call,
            Message::RomAnnounce($body) => $call,
            Message::RomRequest($body) => $call,
            Message::RomChunk($body) => $call,
            Message::RomAck($body) => $call,
            Message::Heartbeat($body) => $call,
        }
    };
}

impl<'a> Message<'a> {
    /// Parses a body of the given kind.
    pub fn parse(kind: Kind, body: &'a [u8]) -> Result<Message<'a>> {
        Ok(match kind {
            Kind::SessionOpen => Message::SessionOpen(Body::parse(body)?),
            Kind::SessionReply => Message::SessionReply(Body::parse(body)?),
            Kind::SessionClose => Message::SessionClose(Body::parse(body)?),
            Kind::RpcCall => Message::RpcCall(Body::parse(body)?),
            Kind::RpcReply => Message::RpcReply(Body::parse(body)?),
            Kind::RpcAck => Message::RpcAck(Body::parse(body)?),
            Kind::Signal => Message::Signal(Body::parse(body)?),
            Kind::SignalAck => Message::SignalAck(Body::parse(body)?),
            Kind::RomAnnounce => Message::RomAnnounce(Body::parse(body)?),
            Kind::RomRequest => Message::RomRequest(Body::parse(body)?),
            Kind::RomChunk => Message::RomChunk(Body::parse(body)?),
            Kind::RomAck => Message::RomAck(Body::parse(body)?),
            Kind::Heartbeat => Message::Heartbeat(Body::parse(body)?),
            Kind::Unknown(code) => return Err(Error::UnknownKind(code)),
        })
    }

    /// The kind written into the header.
    pub fn kind(&self) -> Kind {
        fn kind_of<'b, B: Body<'b>>(_: &B) -> Kind {
            B::KIND
        }
        each_body!(self, body => kind_of(body))
    }

    /// The body's length in bytes.
    pub fn buffer_len(&self) -> usize {
        each_body!(self, body => body.buffer_len())
    }

    /// Writes the body into `buf` of exactly [`Message::buffer_len`] bytes.
    ///
    /// # Panics
    /// If `buf` has another length.
    pub fn emit(&self, buf: &mut [u8]) {
        each_body!(self, body => body.emit(buf))
    }
}

/// One relay frame: header fields and body. The trailer (authentication
/// tag) is not part of the value: [`Frame::emit`] leaves it zeroed for the
/// authentication layer to fill, and [`Frame::parse`] does not look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Flags.
    pub flags: Flags,
    /// Channel (session), 0 for the peer link.
    pub channel: u32,
    /// Sender's sequence number.
    pub sequence: u64,
    /// Typed body.
    pub message: Message<'a>,
}

/// The largest body a frame can carry (the width of `body_len`).
pub const MAX_BODY_LEN: usize = u16::MAX as usize;

impl<'a> Frame<'a> {
    /// Parses a frame from the start of `bytes`; bytes past the frame's end
    /// (raw Ethernet padding) are ignored. Returns the frame and its length.
    pub fn parse(bytes: &'a [u8]) -> Result<(Frame<'a>, usize)> {
        let packet = RelayPacket::new_checked(bytes)?;
        let header = HeaderRepr::parse(&packet);
        let frame_len = packet.frame_len();
        let start = packet.header_len();
        let body = &bytes[start..start + usize::from(header.body_len)];
        let message = Message::parse(header.kind, body)?;
        Ok((
            Frame {
                flags: header.flags,
                channel: header.channel,
                sequence: header.sequence,
                message,
            },
            frame_len,
        ))
    }

    /// Header, body and trailer length in bytes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.message.buffer_len() + self.flags.trailer_len()
    }

    /// Writes the frame into `buf` of exactly [`Frame::buffer_len`] bytes;
    /// the trailer, if any, is zeroed.
    ///
    /// # Panics
    /// If `buf` has another length, or the body is longer than
    /// [`MAX_BODY_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        assert_eq!(
            buf.len(),
            self.buffer_len(),
            "emit buffer must be exactly buffer_len() bytes"
        );
        let body_len = self.message.buffer_len();
        let header = HeaderRepr {
            kind: self.message.kind(),
            flags: self.flags,
            channel: self.channel,
            sequence: self.sequence,
            body_len: u16::try_from(body_len).expect("body longer than MAX_BODY_LEN"),
        };
        header.emit(buf);
        let (body, trailer) = buf[HEADER_LEN..].split_at_mut(body_len);
        self.message.emit(body);
        trailer.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rpc::Fragment;
    use crate::wire::session::Service;
    use crate::wire::test_util::{hex, poisoned};

    #[test]
    fn whole_frame_round_trip() {
        let frame = Frame {
            flags: Flags::NONE,
            channel: 0,
            sequence: 1,
            message: Message::SessionOpen(SessionOpen {
                open_id: 7,
                service: Service::Rpc,
                label: "app -> kv",
            }),
        };
        let expected = hex("5852 01 14 01 00 1100 00000000 0100000000000000 07000000 01 00 0900 617070202d3e206b76");
        let mut out = poisoned(frame.buffer_len());
        frame.emit(&mut out);
        assert_eq!(out, expected);
        let (parsed, len) = Frame::parse(&expected).unwrap();
        assert_eq!(parsed, frame);
        assert_eq!(len, expected.len());
    }

    #[test]
    fn auth_trailer_is_reserved_and_skipped() {
        let frame = Frame {
            flags: Flags::AUTH,
            channel: 9,
            sequence: 2,
            message: Message::RpcCall(RpcCall {
                request_id: 1,
                interface: 2,
                opcode: 3,
                fragment: Fragment::whole(2),
                data: &[0xde, 0xad],
            }),
        };
        let mut out = poisoned(frame.buffer_len());
        frame.emit(&mut out);
        assert_eq!(&out[out.len() - 16..], &[0u8; 16]);
        // Padding after the frame (raw Ethernet minimum size) is ignored.
        out.extend_from_slice(&[0; 10]);
        let (parsed, len) = Frame::parse(&out).unwrap();
        assert_eq!(parsed, frame);
        assert_eq!(len, out.len() - 10);
    }

    #[test]
    fn unknown_kind_is_an_error_not_a_panic() {
        let bytes = hex("5852 01 14 7f 00 0000 00000000 0100000000000000");
        assert_eq!(Frame::parse(&bytes).unwrap_err(), Error::UnknownKind(0x7f));
    }
}
