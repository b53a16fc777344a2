//! Peer liveness, sans-IO: heartbeats on channel 0, restart detection by
//! incarnation, round-trip measurement and peer-down detection within a
//! configured time (docs/wire.md, "HEARTBEAT").
//!
//! Any valid frame from the peer proves it alive; heartbeats are sent at
//! `interval` regardless, so an idle link is still watched. A peer silent
//! for `dead_after` is declared down, and everything pending on it must
//! fail with an unreachable error: the node reacts to [`PeerEvent::Down`].
//!
//! # Driving
//!
//! Feed every frame from the peer to [`PeerLiveness::handle_frame`] and
//! heartbeats also to [`PeerLiveness::handle_heartbeat`]; per iteration send
//! what [`PeerLiveness::poll_transmit`] returns and collect
//! [`PeerLiveness::poll_event`] until `None`; wake at
//! [`PeerLiveness::poll_timeout`].

use core::time::Duration;
use std::collections::VecDeque;

use crate::time::Instant;
use crate::wire::heartbeat::Heartbeat;

/// Timing of liveness detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// How often a heartbeat is sent.
    pub interval: Duration,
    /// How long the peer may be silent before it is declared down.
    pub dead_after: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(500),
        }
    }
}

/// What changed about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// The peer was heard from for the first time, or again after being down.
    Up {
        /// Its incarnation.
        incarnation: u64,
    },
    /// The peer restarted (new incarnation): its sessions are gone.
    Restarted {
        /// The new incarnation.
        incarnation: u64,
    },
    /// The peer was silent for `dead_after`.
    Down,
}

/// Whether a peer is considered reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Never heard from.
    Unknown,
    /// Heard from within `dead_after`.
    Up,
    /// Silent for `dead_after`.
    Down,
}

/// Liveness of one peer.
#[derive(Debug, Clone)]
pub struct PeerLiveness {
    config: LivenessConfig,
    local_incarnation: u64,
    remote_incarnation: Option<u64>,
    state: PeerState,
    started: Instant,
    last_heard: Option<Instant>,
    next_heartbeat: Instant,
    /// The peer's last `send_time`, and when it arrived here: the echo
    /// carries it plus the time it was held here, so that the peer's
    /// round trip excludes our heartbeat interval.
    echo: Option<(u64, Instant)>,
    rtt: Option<Duration>,
    events: VecDeque<PeerEvent>,
}

impl PeerLiveness {
    /// Liveness for one peer, as `local_incarnation` (non-zero), starting at `now`.
    ///
    /// # Panics
    /// If `local_incarnation` is 0 (reserved on the wire).
    pub fn new(config: LivenessConfig, local_incarnation: u64, now: Instant) -> Self {
        assert_ne!(local_incarnation, 0, "incarnation 0 is reserved");
        PeerLiveness {
            config,
            local_incarnation,
            remote_incarnation: None,
            state: PeerState::Unknown,
            started: now,
            last_heard: None,
            next_heartbeat: now,
            echo: None,
            rtt: None,
            events: VecDeque::new(),
        }
    }

    /// The peer's state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The last measured round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Records that a valid frame arrived from the peer: it keeps a peer
    /// that is up from being declared down. Only a heartbeat brings a peer
    /// (back) up, because only a heartbeat says which incarnation is
    /// talking: a restarted peer must be reported as restarted, never as
    /// the old one coming back.
    pub fn handle_frame(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// Takes a heartbeat into account (after [`PeerLiveness::handle_frame`]);
    /// returns the round trip it measured, if it echoed one of ours.
    pub fn handle_heartbeat(&mut self, now: Instant, heartbeat: &Heartbeat) -> Option<Duration> {
        self.last_heard = Some(now);
        self.echo = Some((heartbeat.send_time, now));
        let mut sample = None;
        if heartbeat.echo_time != 0 {
            let sent = Instant::from_nanos(heartbeat.echo_time);
            if sent <= now {
                sample = Some(now - sent);
                self.rtt = sample;
            }
        }
        match self.remote_incarnation {
            Some(known) if known == heartbeat.incarnation => {
                if self.state != PeerState::Up {
                    self.state = PeerState::Up;
                    self.events.push_back(PeerEvent::Up { incarnation: known });
                }
            }
            Some(_) => {
                self.remote_incarnation = Some(heartbeat.incarnation);
                self.state = PeerState::Up;
                self.events.push_back(PeerEvent::Restarted {
                    incarnation: heartbeat.incarnation,
                });
            }
            None => {
                self.remote_incarnation = Some(heartbeat.incarnation);
                self.state = PeerState::Up;
                self.events.push_back(PeerEvent::Up {
                    incarnation: heartbeat.incarnation,
                });
            }
        }
        sample
    }

    /// The heartbeat to send now, if one is due.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Heartbeat> {
        if now < self.next_heartbeat {
            return None;
        }
        self.next_heartbeat = now + self.config.interval;
        let echo_time = self.echo.map_or(0, |(sent, arrived)| {
            let held = u64::try_from(now.saturating_since(arrived).as_nanos()).unwrap_or(u64::MAX);
            sent.saturating_add(held)
        });
        Some(Heartbeat {
            incarnation: self.local_incarnation,
            send_time: now.as_nanos().max(1),
            echo_time,
        })
    }

    /// The next change of state, if any. Checks for silence first: a peer
    /// never heard from is down `dead_after` after this side started.
    pub fn poll_event(&mut self, now: Instant) -> Option<PeerEvent> {
        let silent_since = self.last_heard.unwrap_or(self.started);
        if self.state != PeerState::Down && now >= silent_since + self.config.dead_after {
            self.state = PeerState::Down;
            self.events.push_back(PeerEvent::Down);
        }
        self.events.pop_front()
    }

    /// When the next heartbeat or the down deadline is due.
    pub fn poll_timeout(&self) -> Instant {
        let deadline = self.last_heard.unwrap_or(self.started) + self.config.dead_after;
        if self.state == PeerState::Down {
            self.next_heartbeat
        } else {
            self.next_heartbeat.min(deadline)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn heartbeat(incarnation: u64, send_ms: u64, echo: u64) -> Heartbeat {
        Heartbeat {
            incarnation,
            send_time: ms(send_ms).as_nanos(),
            echo_time: echo,
        }
    }

    #[test]
    fn heartbeats_are_sent_at_the_interval_and_echo_the_peer() {
        let mut peer = PeerLiveness::new(LivenessConfig::default(), 7, ms(0));
        let first = peer.poll_transmit(ms(0)).unwrap();
        assert_eq!((first.incarnation, first.echo_time), (7, 0));
        assert_eq!(peer.poll_transmit(ms(50)), None);
        peer.handle_heartbeat(ms(60), &heartbeat(9, 55, first.send_time));
        assert_eq!(
            peer.rtt(),
            Some(Duration::from_millis(60) - Duration::from_nanos(1))
        );
        // The echo carries the peer's send time plus the 40 ms it was held.
        let second = peer.poll_transmit(ms(100)).unwrap();
        assert_eq!(second.echo_time, ms(95).as_nanos());
    }

    #[test]
    fn round_trips_exclude_the_time_each_side_holds_the_echo() {
        // One-way delay 3 ms; the two sides beat at different, unrelated
        // moments, yet every sample is exactly the 6 ms round trip.
        let config = LivenessConfig::default();
        let mut a = PeerLiveness::new(config, 1, ms(0));
        let mut b = PeerLiveness::new(config, 2, ms(0));
        let mut samples = Vec::new();
        // Steps of 7 ms keep every event in causal order: A sends at t,
        // B gets it at t+3 and sends at t+4, A gets that at t+7.
        for step in 1..200u64 {
            let now = ms(step * 7);
            if let Some(beat) = a.poll_transmit(now) {
                samples.extend(b.handle_heartbeat(now + Duration::from_millis(3), &beat));
            }
            let later = now + Duration::from_millis(4);
            if let Some(beat) = b.poll_transmit(later) {
                samples.extend(a.handle_heartbeat(later + Duration::from_millis(3), &beat));
            }
        }
        assert!(samples.len() > 20, "{}", samples.len());
        for sample in samples {
            assert_eq!(sample, Duration::from_millis(6));
        }
    }

    #[test]
    fn up_restart_and_down_are_reported_once_each() {
        let config = LivenessConfig::default();
        let mut peer = PeerLiveness::new(config, 1, ms(0));
        peer.handle_heartbeat(ms(10), &heartbeat(42, 10, 0));
        assert_eq!(
            peer.poll_event(ms(10)),
            Some(PeerEvent::Up { incarnation: 42 })
        );
        assert_eq!(peer.poll_event(ms(10)), None);
        peer.handle_heartbeat(ms(20), &heartbeat(42, 20, 0));
        assert_eq!(peer.poll_event(ms(20)), None, "same incarnation: no news");

        peer.handle_heartbeat(ms(30), &heartbeat(43, 30, 0));
        assert_eq!(
            peer.poll_event(ms(30)),
            Some(PeerEvent::Restarted { incarnation: 43 })
        );

        let _ = peer.poll_transmit(ms(30));
        assert_eq!(
            peer.poll_timeout(),
            ms(130),
            "the next heartbeat comes first"
        );
        let _ = peer.poll_transmit(ms(130));
        let _ = peer.poll_transmit(ms(230));
        let _ = peer.poll_transmit(ms(330));
        let _ = peer.poll_transmit(ms(430));
        assert_eq!(
            peer.poll_timeout(),
            ms(30) + config.dead_after,
            "then the deadline"
        );
        assert_eq!(peer.poll_event(ms(529)), None);
        assert_eq!(peer.poll_event(ms(530)), Some(PeerEvent::Down));
        assert_eq!(peer.state(), PeerState::Down);
        assert_eq!(peer.poll_event(ms(900)), None, "down is reported once");

        peer.handle_frame(ms(1000));
        assert_eq!(
            peer.poll_event(ms(1000)),
            None,
            "data alone does not say who is back"
        );
        peer.handle_heartbeat(ms(1001), &heartbeat(43, 1001, 0));
        assert_eq!(
            peer.poll_event(ms(1001)),
            Some(PeerEvent::Up { incarnation: 43 })
        );
    }

    #[test]
    fn a_peer_never_heard_from_is_down_after_the_dead_time() {
        let mut peer = PeerLiveness::new(LivenessConfig::default(), 1, ms(100));
        assert_eq!(peer.poll_event(ms(599)), None);
        assert_eq!(peer.poll_event(ms(600)), Some(PeerEvent::Down));
    }
}
