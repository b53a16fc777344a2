//! The state of one session at either end: the engines a session runs for
//! its service, and how each end turns them into frame bodies.
//!
//! A *client* session is one this node opened on a peer (it calls, it
//! subscribes, it transmits signals); a *served* session is one a peer
//! opened here (this node executes, publishes, receives signals).

use core::time::Duration;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::rom::{RomReceiver, RomSender};
use crate::engine::rpc::{RpcClient, RpcServer};
use crate::engine::signal::{SignalReceiver, SignalSender};
use crate::time::Instant;
use crate::wire::rom::RomRequest;
use crate::wire::session::Service;
use crate::wire::Message;

use super::ExportId;

/// Where a client session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// SESSION_OPEN sent (or due at `next_send`), no answer yet.
    Opening {
        open_id: u32,
        next_send: Instant,
        backoff: Duration,
        /// Re-opening a session that was open: a refusal is not final
        /// (a restarted server may not have exported the label yet).
        reopen: bool,
    },
    /// Accepted: the server calls it `channel`.
    Open { channel: u32 },
    /// Refused or closed for good; the application was told.
    Closed,
}

/// The engines of a client session.
#[derive(Debug)]
pub(super) enum ClientEngine {
    Rpc(Box<RpcClient>),
    /// One sender per signal context.
    Signal(BTreeMap<u32, SignalSender>),
    Rom(Box<RomReceiver>),
}

/// A session this node opened on a peer.
#[derive(Debug)]
pub(super) struct ClientSession {
    pub service: Service,
    pub label: String,
    pub phase: Phase,
    pub engine: ClientEngine,
    /// When the server last sent anything on the session.
    pub heard: Instant,
}

impl ClientSession {
    /// The next frame body of this session's engine, if it has one. Only
    /// open sessions send; their timers run regardless (see
    /// [`ClientSession::poll_timers`]).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message<'_>> {
        match &mut self.engine {
            ClientEngine::Rpc(client) => client.poll_transmit(now),
            ClientEngine::Signal(senders) => senders
                .values_mut()
                .find_map(|sender| sender.poll_transmit(now))
                .map(Message::Signal),
            ClientEngine::Rom(receiver) => receiver.poll_transmit(now),
        }
    }

    /// A subscriber that has heard nothing from its publisher for
    /// `after` (announces repeat far more often) asks again: the answer
    /// is an announce, or "unknown session" if the publisher lost the
    /// session, which makes this node reopen it.
    pub fn probe(&mut self, now: Instant, after: Duration) -> Option<Message<'static>> {
        let ClientEngine::Rom(receiver) = &self.engine else {
            return None;
        };
        if now < self.heard + after {
            return None;
        }
        self.heard = now;
        Some(Message::RomRequest(RomRequest {
            module: 0,
            have_version: receiver.current().map_or(0, |v| v.version),
        }))
    }

    /// When this session's engine (or the subscriber's probe, see
    /// [`ClientSession::probe`]) next wants to run.
    pub fn poll_timeout(&self, probe_after: Duration) -> Option<Instant> {
        match &self.engine {
            ClientEngine::Rpc(client) => client.poll_timeout(),
            ClientEngine::Signal(senders) => senders
                .values()
                .filter_map(SignalSender::poll_timeout)
                .min(),
            ClientEngine::Rom(receiver) => {
                let probe = self.heard + probe_after;
                Some(receiver.poll_timeout().map_or(probe, |at| at.min(probe)))
            }
        }
    }
}

/// The engines of a served session.
#[derive(Debug)]
pub(super) enum ServedEngine {
    Rpc(Box<RpcServer>),
    /// One receiver per signal context, created on first use.
    Signal(BTreeMap<u32, SignalReceiver>),
    Rom(Box<RomSender>),
}

/// A session a peer opened on this node.
#[derive(Debug)]
pub(super) struct ServedSession {
    pub export: ExportId,
    pub open_id: u32,
    pub engine: ServedEngine,
    /// The client has sent a frame on the session, so it knows the
    /// channel: only then does its "unknown session" mean it lost it.
    pub confirmed: bool,
    /// When the session was opened.
    pub created: Instant,
}

impl ServedSession {
    /// The next frame body of this session's engine, if it has one.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message<'_>> {
        match &mut self.engine {
            ServedEngine::Rpc(server) => server.poll_transmit(),
            ServedEngine::Signal(receivers) => receivers
                .values_mut()
                .find_map(|receiver| receiver.poll_transmit(now))
                .map(Message::SignalAck),
            ServedEngine::Rom(sender) => sender.poll_transmit(now),
        }
    }

    /// When this session's engine next wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.engine {
            ServedEngine::Rpc(_) => None,
            ServedEngine::Signal(receivers) => receivers
                .values()
                .filter_map(SignalReceiver::poll_timeout)
                .min(),
            ServedEngine::Rom(sender) => sender.poll_timeout(),
        }
    }
}

/// What a served ROM session shares with the module: the newest version.
pub(super) type Content = Arc<crate::engine::rom::RomVersion>;
