//! Signals, sans-IO: the transmitter's and the receiver's state for one
//! signal context (docs/wire.md, "Signals").
//!
//! Genode's semantics: submitting never blocks and carries no payload;
//! submissions that arrive faster than the receiver handles them are
//! counted and delivered as one wake-up carrying the number since the last
//! one. On the wire every SIGNAL carries the *cumulative* count, so a lost
//! frame loses nothing (the next carries the total) and a duplicate or
//! reordered one doubles nothing (the receiver takes only increases). The
//! transmitter repeats its count until a SIGNAL_ACK covers it.
//!
//! # Driving
//!
//! Transmitter: [`SignalSender::submit`] any time; per iteration
//! [`SignalSender::poll_transmit`] until `None`; feed SIGNAL_ACKs to
//! [`SignalSender::handle_ack`]; wake at [`SignalSender::poll_timeout`].
//! Receiver: feed SIGNALs to [`SignalReceiver::handle_signal`]; send what
//! [`SignalReceiver::poll_transmit`] returns; hand
//! [`SignalReceiver::take`] to the application.

use core::time::Duration;

use crate::time::Instant;
use crate::wire::signal::{Signal, SignalAck};

/// The transmitting end of one signal context.
#[derive(Debug, Clone)]
pub struct SignalSender {
    context: u32,
    submitted: u64,
    acked: u64,
    sent: u64,
    last_sent: Option<Instant>,
    retransmit_after: Duration,
}

impl SignalSender {
    /// A sender for `context` that repeats an unacknowledged count every
    /// `retransmit_after`.
    pub fn new(context: u32, retransmit_after: Duration) -> Self {
        SignalSender {
            context,
            submitted: 0,
            acked: 0,
            sent: 0,
            last_sent: None,
            retransmit_after,
        }
    }

    /// Records `count` submissions. Never blocks; submissions between two
    /// transmissions travel as one frame.
    pub fn submit(&mut self, count: u64) {
        self.submitted = self.submitted.saturating_add(count);
    }

    /// The total submitted so far.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// The context this sender transmits to.
    pub fn context(&self) -> u32 {
        self.context
    }

    /// The highest count the receiver has acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.acked
    }

    /// Whether every submission is acknowledged by the receiver.
    pub fn is_acknowledged(&self) -> bool {
        self.acked >= self.submitted
    }

    /// The frame to send now, if any: new submissions go at once, an
    /// unacknowledged total again after the retransmission interval.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Signal> {
        let fresh = self.submitted > self.sent;
        let overdue = self.submitted > self.acked
            && self
                .last_sent
                .is_some_and(|at| now >= at + self.retransmit_after);
        if !(fresh || overdue) {
            return None;
        }
        self.sent = self.submitted;
        self.last_sent = Some(now);
        Some(Signal {
            context: self.context,
            count: self.submitted,
        })
    }

    /// Takes a SIGNAL_ACK into account. Acknowledgements of more than was
    /// submitted (a confused or hostile peer) count only up to the total.
    pub fn handle_ack(&mut self, ack: &SignalAck) {
        if ack.context == self.context {
            self.acked = self.acked.max(ack.count.min(self.submitted));
        }
    }

    /// When [`SignalSender::poll_transmit`] next has something to send
    /// without new submissions.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.submitted > self.acked {
            self.last_sent.map(|at| at + self.retransmit_after)
        } else {
            None
        }
    }
}

/// A receiver acknowledges at most once per this interval (a burst of
/// SIGNALs gets one SIGNAL_ACK, not one each); far below a transmitter's
/// retransmission timeout, so acknowledgements still stop repeats.
pub const ACK_INTERVAL: Duration = Duration::from_millis(1);

/// The receiving end of one signal context.
#[derive(Debug, Clone, Default)]
pub struct SignalReceiver {
    context: u32,
    received: u64,
    delivered: u64,
    ack_due: bool,
    last_ack: Option<Instant>,
}

impl SignalReceiver {
    /// A receiver for `context`.
    pub fn new(context: u32) -> Self {
        SignalReceiver {
            context,
            ..SignalReceiver::default()
        }
    }

    /// Takes a SIGNAL into account: only an increase of the cumulative
    /// count is new. Every SIGNAL is acknowledged, duplicates too, so that
    /// the transmitter stops repeating.
    pub fn handle_signal(&mut self, signal: &Signal) {
        if signal.context != self.context {
            return;
        }
        self.received = self.received.max(signal.count);
        self.ack_due = true;
    }

    /// The number of submissions since the last call (one wake-up), or
    /// `None` if there are none.
    pub fn take(&mut self) -> Option<u64> {
        let pending = self.received - self.delivered;
        self.delivered = self.received;
        (pending > 0).then_some(pending)
    }

    /// Submissions received but not yet taken.
    pub fn pending(&self) -> u64 {
        self.received - self.delivered
    }

    /// The SIGNAL_ACK to send, if one is due: at once after a quiet
    /// spell, else at most once per [`ACK_INTERVAL`].
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<SignalAck> {
        if !self.ack_due || self.last_ack.is_some_and(|at| now < at + ACK_INTERVAL) {
            return None;
        }
        self.ack_due = false;
        self.last_ack = Some(now);
        Some(SignalAck {
            context: self.context,
            count: self.received,
        })
    }

    /// When a deferred SIGNAL_ACK is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.ack_due {
            return None;
        }
        Some(self.last_ack.map_or(Instant::ZERO, |at| at + ACK_INTERVAL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTO: Duration = Duration::from_millis(10);

    #[test]
    fn a_burst_travels_as_one_frame_and_one_wake_up() {
        let mut tx = SignalSender::new(3, RTO);
        let mut rx = SignalReceiver::new(3);
        for _ in 0..5 {
            tx.submit(1);
        }
        let frame = tx.poll_transmit(Instant::ZERO).unwrap();
        assert_eq!(
            frame,
            Signal {
                context: 3,
                count: 5
            }
        );
        assert_eq!(tx.poll_transmit(Instant::ZERO), None, "nothing new");
        rx.handle_signal(&frame);
        assert_eq!(rx.take(), Some(5));
        assert_eq!(rx.take(), None);
    }

    #[test]
    fn a_lost_frame_is_healed_by_the_next_or_by_retransmission() {
        let mut tx = SignalSender::new(1, RTO);
        let mut rx = SignalReceiver::new(1);
        tx.submit(2);
        let _lost = tx.poll_transmit(Instant::ZERO).unwrap();
        assert_eq!(tx.poll_timeout(), Some(Instant::ZERO + RTO));
        assert_eq!(tx.poll_transmit(Instant::ZERO + RTO / 2), None);
        let again = tx.poll_transmit(Instant::ZERO + RTO).unwrap();
        assert_eq!(again.count, 2);
        rx.handle_signal(&again);
        tx.handle_ack(&rx.poll_transmit(Instant::ZERO).unwrap());
        assert!(tx.is_acknowledged());
        assert_eq!(tx.poll_timeout(), None);
        assert_eq!(rx.take(), Some(2));
    }

    #[test]
    fn duplicates_and_reordering_double_nothing() {
        let mut rx = SignalReceiver::new(1);
        for count in [3, 1, 3, 2, 5, 4, 5] {
            rx.handle_signal(&Signal { context: 1, count });
        }
        assert_eq!(rx.take(), Some(5));
        assert_eq!(
            rx.poll_transmit(Instant::ZERO),
            Some(SignalAck {
                context: 1,
                count: 5
            })
        );
        assert_eq!(rx.poll_transmit(Instant::ZERO), None);
    }

    #[test]
    fn a_stream_of_signals_is_acknowledged_at_a_bounded_rate() {
        let mut rx = SignalReceiver::new(1);
        let at = |us: u64| Instant::from_nanos(us * 1000);
        rx.handle_signal(&Signal {
            context: 1,
            count: 1,
        });
        assert_eq!(rx.poll_transmit(at(0)).map(|a| a.count), Some(1));
        // More arrive within the interval: one deferred ack, with the
        // latest count, when the interval is over.
        for (us, count) in [(100, 2), (200, 3), (300, 4)] {
            rx.handle_signal(&Signal { context: 1, count });
            assert_eq!(rx.poll_transmit(at(us)), None);
        }
        assert_eq!(rx.poll_timeout(), Some(at(0) + ACK_INTERVAL));
        assert_eq!(rx.poll_transmit(at(1000)).map(|a| a.count), Some(4));
        assert_eq!(rx.poll_timeout(), None);
        // After a quiet spell the next one is acknowledged at once.
        rx.handle_signal(&Signal {
            context: 1,
            count: 5,
        });
        assert_eq!(rx.poll_transmit(at(5000)).map(|a| a.count), Some(5));
    }

    #[test]
    fn other_contexts_and_excessive_acks_are_ignored() {
        let mut tx = SignalSender::new(1, RTO);
        tx.submit(4);
        let _ = tx.poll_transmit(Instant::ZERO);
        tx.handle_ack(&SignalAck {
            context: 2,
            count: 4,
        });
        assert!(!tx.is_acknowledged());
        tx.handle_ack(&SignalAck {
            context: 1,
            count: u64::MAX,
        });
        assert!(tx.is_acknowledged());
        tx.submit(1);
        assert!(
            !tx.is_acknowledged(),
            "an ack beyond the total does not cover later submissions"
        );

        let mut rx = SignalReceiver::new(1);
        rx.handle_signal(&Signal {
            context: 9,
            count: 7,
        });
        assert_eq!(rx.take(), None);
    }
}
