//! Session frames: SESSION_OPEN (client asks for a session by label),
//! SESSION_REPLY (server accepts with a channel, or refuses) and
//! SESSION_CLOSE (either side ends it). docs/wire.md, "Sessions".

use zerocopy::little_endian::{I32, U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{check_reserved, emit_fixed, split_fixed, Body, Error, Fixed, Kind, Result};

/// The longest session label accepted, in bytes of UTF-8.
pub const MAX_LABEL_LEN: usize = 1024;

/// The kind of service a session is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Remote procedure calls.
    Rpc,
    /// A ROM module subscription.
    Rom,
    /// A signal context.
    Signal,
    /// A service code this implementation does not know.
    Unknown(u8),
}

impl From<u8> for Service {
    fn from(code: u8) -> Self {
        match code {
            1 => Service::Rpc,
            2 => Service::Rom,
            3 => Service::Signal,
            other => Service::Unknown(other),
        }
    }
}

impl From<Service> for u8 {
    fn from(service: Service) -> Self {
        match service {
            Service::Rpc => 1,
            Service::Rom => 2,
            Service::Signal => 3,
            Service::Unknown(other) => other,
        }
    }
}

/// The outcome of a SESSION_OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenStatus {
    /// The session is open on the reply's channel.
    Accepted,
    /// The server's policy does not allow this peer this session.
    Denied,
    /// No service or route matches the label.
    NoRoute,
    /// The server has no room for another session.
    Exhausted,
    /// A status code this implementation does not know (treated as refusal).
    Unknown(i32),
}

impl From<i32> for OpenStatus {
    fn from(code: i32) -> Self {
        match code {
            0 => OpenStatus::Accepted,
            -1 => OpenStatus::Denied,
            -2 => OpenStatus::NoRoute,
            -3 => OpenStatus::Exhausted,
            other => OpenStatus::Unknown(other),
        }
    }
}

impl From<OpenStatus> for i32 {
    fn from(status: OpenStatus) -> Self {
        match status {
            OpenStatus::Accepted => 0,
            OpenStatus::Denied => -1,
            OpenStatus::NoRoute => -2,
            OpenStatus::Exhausted => -3,
            OpenStatus::Unknown(other) => other,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The application closed it.
    Normal,
    /// Policy withdrew the permission (for example after a reload).
    Revoked,
    /// The closing side lost its state for the session (restart, unknown channel).
    Unknown,
    /// A reason code this implementation does not know.
    Other(i32),
}

impl From<i32> for CloseReason {
    fn from(code: i32) -> Self {
        match code {
            0 => CloseReason::Normal,
            -1 => CloseReason::Revoked,
            -2 => CloseReason::Unknown,
            other => CloseReason::Other(other),
        }
    }
}

impl From<CloseReason> for i32 {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::Normal => 0,
            CloseReason::Revoked => -1,
            CloseReason::Unknown => -2,
            CloseReason::Other(other) => other,
        }
    }
}

/// Which end of a session sent a frame whose kind travels both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The side that opened the session.
    Client,
    /// The side that accepted it.
    Server,
}

impl Origin {
    pub(crate) fn parse(code: u8) -> Result<Origin> {
        match code {
            0 => Ok(Origin::Client),
            1 => Ok(Origin::Server),
            _ => Err(Error::Malformed("origin must be 0 (client) or 1 (server)")),
        }
    }

    pub(crate) const fn code(self) -> u8 {
        match self {
            Origin::Client => 0,
            Origin::Server => 1,
        }
    }
}

/// Fixed part of a SESSION_OPEN body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct OpenFixed {
    /// The client's identifier for this request, echoed by the reply.
    pub open_id: U32,
    /// [`Service`] code.
    pub service: u8,
    /// Zero.
    pub reserved: u8,
    /// Length of the label that follows, in bytes.
    pub label_len: U16,
}

/// SESSION_OPEN: a client asks for a session of `service` named by `label`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOpen<'a> {
    /// The client's identifier for this request.
    pub open_id: u32,
    /// The service asked for.
    pub service: Service,
    /// The session label (Genode style, elements joined by `" -> "`).
    pub label: &'a str,
}

impl<'a> Body<'a> for SessionOpen<'a> {
    const KIND: Kind = Kind::SessionOpen;

    fn parse(body: &'a [u8]) -> Result<Self> {
        let (fixed, rest) = split_fixed::<OpenFixed>(body)?;
        check_reserved(&[fixed.reserved])?;
        let label_len = usize::from(fixed.label_len.get());
        if label_len > MAX_LABEL_LEN {
            return Err(Error::Malformed("label longer than 1024 bytes"));
        }
        if rest.len() != label_len {
            return Err(if rest.len() < label_len {
                Error::Truncated
            } else {
                Error::Malformed("bytes after the label")
            });
        }
        let label =
            core::str::from_utf8(rest).map_err(|_| Error::Malformed("label is not UTF-8"))?;
        Ok(SessionOpen {
            open_id: fixed.open_id.get(),
            service: Service::from(fixed.service),
            label,
        })
    }

    fn buffer_len(&self) -> usize {
        OpenFixed::LEN + self.label.len()
    }

    /// # Panics
    /// Also if the label is longer than [`MAX_LABEL_LEN`].
    fn emit(&self, buf: &mut [u8]) {
        assert!(
            self.label.len() <= MAX_LABEL_LEN,
            "label longer than MAX_LABEL_LEN"
        );
        let label_len = u16::try_from(self.label.len()).expect("MAX_LABEL_LEN fits in u16");
        let fixed = OpenFixed {
            open_id: U32::new(self.open_id),
            service: self.service.into(),
            reserved: 0,
            label_len: U16::new(label_len),
        };
        emit_fixed(&fixed, self.label.as_bytes(), buf);
    }
}

/// Fixed part (and whole) of a SESSION_REPLY body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReplyFixed {
    /// The `open_id` of the SESSION_OPEN this answers.
    pub open_id: U32,
    /// [`OpenStatus`] code.
    pub status: I32,
}

/// SESSION_REPLY: the server's answer; the header's channel is the new
/// session's channel when accepted, 0 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionReply {
    /// The request this answers.
    pub open_id: u32,
    /// Accepted or why not.
    pub status: OpenStatus,
}

impl Body<'_> for SessionReply {
    const KIND: Kind = Kind::SessionReply;

    fn parse(body: &[u8]) -> Result<Self> {
        let (fixed, rest) = split_fixed::<ReplyFixed>(body)?;
        if !rest.is_empty() {
            return Err(Error::Malformed("bytes after SESSION_REPLY"));
        }
        Ok(SessionReply {
            open_id: fixed.open_id.get(),
            status: OpenStatus::from(fixed.status.get()),
        })
    }

    fn buffer_len(&self) -> usize {
        ReplyFixed::LEN
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = ReplyFixed {
            open_id: U32::new(self.open_id),
            status: I32::new(self.status.into()),
        };
        emit_fixed(&fixed, &[], buf);
    }
}

/// Fixed part (and whole) of a SESSION_CLOSE body.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CloseFixed {
    /// [`CloseReason`] code.
    pub reason: I32,
    /// 0 when the client closes, 1 when the server does.
    pub origin: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// SESSION_CLOSE: the session on the header's channel is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionClose {
    /// Why.
    pub reason: CloseReason,
    /// Which end closed it.
    pub origin: Origin,
}

impl Body<'_> for SessionClose {
    const KIND: Kind = Kind::SessionClose;

    fn parse(body: &[u8]) -> Result<Self> {
        let (fixed, rest) = split_fixed::<CloseFixed>(body)?;
        if !rest.is_empty() {
            return Err(Error::Malformed("bytes after SESSION_CLOSE"));
        }
        check_reserved(&fixed.reserved)?;
        Ok(SessionClose {
            reason: CloseReason::from(fixed.reason.get()),
            origin: Origin::parse(fixed.origin)?,
        })
    }

    fn buffer_len(&self) -> usize {
        CloseFixed::LEN
    }

    fn emit(&self, buf: &mut [u8]) {
        let fixed = CloseFixed {
            reason: I32::new(self.reason.into()),
            origin: self.origin.code(),
            reserved: [0; 3],
        };
        emit_fixed(&fixed, &[], buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{hex, round_trip};

    #[test]
    fn session_open_golden_vector() {
        let bytes = hex("07000000 01 00 0900 617070202d3e206b76");
        let open = SessionOpen::parse(&bytes).unwrap();
        assert_eq!(open.open_id, 7);
        assert_eq!(open.service, Service::Rpc);
        assert_eq!(open.label, "app -> kv");
        round_trip(&bytes, &open);
    }

    #[test]
    fn session_reply_golden_vector() {
        let bytes = hex("07000000 00000000");
        let expected = SessionReply {
            open_id: 7,
            status: OpenStatus::Accepted,
        };
        round_trip(&bytes, &expected);
        let denied = hex("07000000 ffffffff");
        assert_eq!(
            SessionReply::parse(&denied).unwrap().status,
            OpenStatus::Denied
        );
    }

    #[test]
    fn session_close_golden_vector() {
        let bytes = hex("ffffffff 01 000000");
        let expected = SessionClose {
            reason: CloseReason::Revoked,
            origin: Origin::Server,
        };
        round_trip(&bytes, &expected);
    }

    #[test]
    fn session_open_rejects_bad_labels() {
        // Label length points past the body.
        assert_eq!(
            SessionOpen::parse(&hex("07000000 01 00 0a00 617070202d3e206b76")).unwrap_err(),
            Error::Truncated
        );
        // Trailing byte after the label.
        assert!(matches!(
            SessionOpen::parse(&hex("07000000 01 00 0100 61 62")).unwrap_err(),
            Error::Malformed(_)
        ));
        // Not UTF-8.
        assert!(matches!(
            SessionOpen::parse(&hex("07000000 01 00 0200 c328")).unwrap_err(),
            Error::Malformed(_)
        ));
        // Over the limit, even when the bytes are there.
        let mut long = hex("07000000 01 00 0104");
        long.resize(8 + 1025, b'a');
        assert!(matches!(
            SessionOpen::parse(&long).unwrap_err(),
            Error::Malformed(_)
        ));
        // Reserved byte set.
        assert!(matches!(
            SessionOpen::parse(&hex("07000000 01 01 0000")).unwrap_err(),
            Error::Malformed(_)
        ));
    }

    #[test]
    fn session_close_rejects_bad_origin() {
        assert!(matches!(
            SessionClose::parse(&hex("00000000 02 000000")).unwrap_err(),
            Error::Malformed(_)
        ));
    }

    #[test]
    fn unknown_codes_are_data() {
        assert_eq!(Service::from(9), Service::Unknown(9));
        assert_eq!(u8::from(Service::Unknown(9)), 9);
        assert_eq!(OpenStatus::from(-77), OpenStatus::Unknown(-77));
        assert_eq!(i32::from(CloseReason::from(5)), 5);
    }
}
