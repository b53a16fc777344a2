//! Transports move relay frames (docs/wire.md, header + body + trailer)
//! between nodes, in batches, without blocking. The engines neither know
//! nor care which one runs under them:
//!
//! * [`mem`]: an in-process network with virtual time and a seeded fault
//!   injector (loss, duplication, reordering, corruption, delay) for
//!   deterministic protocol tests;
//! * [`udp`]: kernel UDP sockets with `sendmmsg`/`recvmmsg` batches; the
//!   datagram payload is exactly the relay frame, so UDP and AF_XDP nodes
//!   interoperate;
//! * [`xdp`]: AF_XDP rings and UMEM frames with the project's own XDP
//!   program, bypassing the kernel's network stack.
//!
//! # Driving a transport
//!
//! Per iteration a driver calls [`Transport::recv`] (frames go to the
//! engines), then [`Transport::send`] until the engines have nothing more
//! or the transport has no room, then [`Transport::flush`] once, which
//! hands the whole batch to the link. Buffers belong to the transport: a
//! frame is written in place into the buffer `send` offers, so a zero-copy
//! transport can offer its own memory.

use crate::time::Instant;
use crate::wire::encap::Endpoint;

pub mod mem;
pub mod udp;
pub mod xdp;

/// Why a transport operation failed. Each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Syscall {
        /// The call, e.g. `"sendmmsg"`.
        call: &'static str,
        /// The error the kernel returned.
        #[source]
        source: std::io::Error,
    },
    /// The transport cannot be used as configured.
    #[error("{0}")]
    Config(String),
}

/// Writes one relay frame into the offered buffer and says where it goes
/// and how long it is, or `None` to send nothing (see [`Transport::send`]).
pub type Fill<'a> = dyn FnMut(&mut [u8]) -> Option<(Endpoint, usize)> + 'a;

/// Receives one relay frame and its sender (see [`Transport::recv`]).
pub type Deliver<'a> = dyn FnMut(Endpoint, &[u8]) + 'a;

/// What a transport has done so far, in the same terms for every kind (for
/// the operator; each transport's own stats type has the details).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// `xdp`, `udp` or `mem`.
    pub kind: &'static str,
    /// Relay frames handed to the node.
    pub received: u64,
    /// Frames handed to the link.
    pub sent: u64,
    /// Received frames dropped before the node saw them (not a relay
    /// frame for this endpoint, truncated).
    pub dropped: u64,
    /// Sends refused or cut short because the link had no room.
    pub send_stalls: u64,
    /// Frames the link refused for their destination.
    pub send_errors: u64,
    /// Kernel wake-ups (system calls made to move frames).
    pub wakeups: u64,
}

/// A link that carries relay frames.
pub trait Transport {
    /// Counters for the operator.
    fn counters(&self) -> TransportCounters {
        TransportCounters::default()
    }

    /// Turns measuring TX completions on or off (profiling; costs a clock
    /// read per batch). Transports that complete sends synchronously
    /// (kernel UDP) have nothing to measure.
    fn track_completions(&mut self, _on: bool) {}

    /// Hands over the TX completion delays measured since the last call:
    /// from a frame's handing to the link to the link giving it back.
    fn completion_times(&mut self, _sink: &mut dyn FnMut(core::time::Duration)) {}

    /// The longest relay frame this transport carries, in bytes.
    fn max_frame_len(&self) -> usize;

    /// This node's address on the link.
    fn local_endpoint(&self) -> Endpoint;

    /// Hands up to `budget` received frames to `deliver` with their
    /// sender's address, oldest first; returns how many. Never blocks.
    /// The slice is only valid during the call.
    fn recv(
        &mut self,
        now: Instant,
        budget: usize,
        deliver: &mut Deliver<'_>,
    ) -> Result<usize, TransportError>;

    /// Offers a buffer of [`Transport::max_frame_len`] bytes to `fill`,
    /// which writes one relay frame at its start and returns the
    /// destination and the frame's length, or `None` to send nothing.
    /// Returns `Ok(false)` without calling `fill` when the transport has no
    /// room until the next [`Transport::flush`].
    fn send(&mut self, fill: &mut Fill<'_>) -> Result<bool, TransportError>;

    /// Hands every frame queued by [`Transport::send`] to the link.
    fn flush(&mut self, now: Instant) -> Result<(), TransportError>;
}

#[cfg(test)]
pub(crate) mod test_frames {
    //! Numbered relay frames for the transports' tests.

    use crate::wire::signal::Signal;
    use crate::wire::{Flags, Frame, Message};

    /// Writes a SIGNAL frame carrying `n` into `buf`; returns its length.
    pub fn numbered(n: u32, buf: &mut [u8]) -> usize {
        let frame = Frame {
            flags: Flags::NONE,
            channel: 1,
            sequence: u64::from(n),
            message: Message::Signal(Signal {
                context: 0,
                count: u64::from(n),
            }),
        };
        let len = frame.buffer_len();
        frame.emit(&mut buf[..len]);
        len
    }

    /// The number a frame carries, after checking that its bytes are
    /// exactly what [`numbered`] wrote.
    pub fn number_of(bytes: &[u8]) -> u32 {
        let n = match Frame::parse(bytes).unwrap().0.message {
            Message::Signal(signal) => u32::try_from(signal.count).unwrap(),
            other => panic!("unexpected {other:?}"),
        };
        let mut expected = [0; 256];
        let len = numbered(n, &mut expected);
        assert_eq!(bytes, &expected[..len], "frame {n} damaged");
        n
    }
}
