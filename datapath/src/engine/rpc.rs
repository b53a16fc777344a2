//! RPC, sans-IO: the client proxy's and the server proxy's state for one
//! session (docs/wire.md, "RPC").
//!
//! * The client gives every call a fresh request id, sends its argument
//!   fragments, and retransmits with exponential backoff until the reply is
//!   complete, skipping fragments the server acknowledged. A call fails
//!   with [`CallError::Timeout`] at its deadline, and every pending call
//!   fails with the caller's error when the peer goes down.
//! * The server reassembles calls, hands each request id to the
//!   application **at most once**, caches the reply until the client
//!   acknowledges it, answers a retransmitted call from that cache (or with
//!   "received, working" while it executes), and remembers executed ids
//!   long after their replies are gone, so a late duplicate never runs
//!   again.
//!
//! # Driving
//!
//! Client: [`RpcClient::call`]; feed RPC_REPLY and RPC_ACK frames to
//! [`RpcClient::handle_reply`] / [`RpcClient::handle_ack`]; per iteration
//! send [`RpcClient::poll_transmit`] until `None`, collect
//! [`RpcClient::poll_event`]; wake at [`RpcClient::poll_timeout`].
//! Server: feed RPC_CALL and RPC_ACK to [`RpcServer::handle_call`] /
//! [`RpcServer::handle_ack`]; run what [`RpcServer::poll_call`] returns and
//! give the result to [`RpcServer::complete`]; send
//! [`RpcServer::poll_transmit`] until `None`.

use core::time::Duration;
use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap;

use super::reassembly::{fragment_count, fragment_of, FragmentQueue, Reassembly, Spares};
use crate::marshal::CallError;
use crate::time::Instant;
use crate::wire::rpc::{Acked, RpcAck, RpcCall, RpcReply, MAX_BITMAP_LEN, MAX_MESSAGE_LEN};
use crate::wire::Message;

/// Timing and limits of the RPC engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcConfig {
    /// First retransmission after this long without a reply, until the
    /// round-trip time has been measured.
    pub initial_rto: Duration,
    /// The retransmission timeout derived from measured round trips
    /// (RFC 6298: smoothed RTT + 4 x its variation) is at least this.
    pub min_rto: Duration,
    /// Backoff stops doubling here.
    pub max_rto: Duration,
    /// A call without a complete reply fails after this long.
    pub call_timeout: Duration,
    /// Fragment payload size in bytes (the link's frame size minus headers).
    pub max_fragment: usize,
    /// Calls a client may have outstanding per session.
    pub max_outstanding: usize,
    /// Bytes of incomplete messages a server or client holds per session.
    pub max_reassembly_bytes: usize,
    /// How far below the newest request id a server remembers executed
    /// ids individually (a bit each). Ids below those of calls that arrived
    /// whole more than [`REMEMBER_FOR`] or twice the call timeout ago,
    /// whichever is longer, count as executed wholesale (the client has
    /// given up on them), and so do ids this far below the newest one
    /// executed, whatever their age: a bound on memory (256 KiB per
    /// session by default) that only a client above 35 k calls/s on one
    /// session reaches, or one that skips ids.
    pub remembered_ids: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            initial_rto: Duration::from_millis(5),
            min_rto: Duration::from_millis(1),
            max_rto: Duration::from_millis(200),
            call_timeout: Duration::from_secs(5),
            max_fragment: 1400,
            max_outstanding: 256,
            max_reassembly_bytes: 64 * 1024 * 1024,
            remembered_ids: 1 << 21,
        }
    }
}

/// The end of one call, as the client application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    /// The request.
    pub request_id: u64,
    /// When the call was first sent (its round trip ends now).
    pub sent_at: Instant,
    /// Exception code and result bytes, or why there are none.
    pub result: Result<(i32, Vec<u8>), CallError>,
}

#[derive(Debug)]
struct PendingCall {
    interface: u32,
    opcode: u16,
    args: Vec<u8>,
    /// Argument fragments the server holds (from its call ACKs).
    server_has: Reassembly,
    /// Fragments to send next.
    queue: FragmentQueue,
    deadline: Instant,
    retransmit_at: Instant,
    rto: Duration,
    /// When the call was first sent (for a round-trip sample).
    sent_at: Instant,
    /// Sent more than once: its reply gives no round-trip sample (Karn).
    retransmitted: bool,
    reply: Option<(i32, Reassembly)>,
    /// A reply ACK is due (the reply is partial and the timer fired, or it completed).
    ack_due: bool,
    /// The call's id is in the client's send queue.
    scheduled: bool,
}

impl PendingCall {
    fn has_output(&self) -> bool {
        self.ack_due || !self.queue.is_empty()
    }
}

/// Puts `id` into the send queue unless it is there already.
fn schedule(sendable: &mut VecDeque<u64>, call: &mut PendingCall, id: u64) {
    if !call.scheduled && call.has_output() {
        call.scheduled = true;
        sendable.push_back(id);
    }
}

/// The client side of one RPC session. The work per frame and per event
/// does not grow with the number of outstanding calls: calls with
/// something to send wait in a queue, final acknowledgements in another,
/// and the timers are scanned only when the earliest of them is due.
#[derive(Debug)]
pub struct RpcClient {
    config: RpcConfig,
    next_request: u64,
    /// Outstanding calls by request id (a hash map: it keeps its memory,
    /// so calls coming and going allocate nothing, and moves no values
    /// around; order comes from the ids where it matters).
    calls: FxHashMap<u64, PendingCall>,
    /// Buffers of finished calls' arguments, reused for replies.
    spares: Spares,
    /// Scratch list of the calls whose timer fired (see `fire_timers`).
    fired: Vec<u64>,
    /// Calls with fragments or an ACK to send, served round robin.
    sendable: VecDeque<u64>,
    /// Replies complete here whose final acknowledgement (which frees the
    /// server's reply cache) is still to be sent: request id and fragment
    /// count. Sent after any call fragments, so that a caller's next
    /// request leaves first.
    final_acks: VecDeque<(u64, u16)>,
    /// No timer of any call is due before this.
    next_timer: Instant,
    events: VecDeque<CallOutcome>,
    bitmap: Vec<u8>,
    reply_bytes: usize,
    /// Smoothed round-trip time and its variation, once measured.
    srtt: Option<(Duration, Duration)>,
}

const NEVER: Instant = Instant::from_nanos(u64::MAX);

/// With this many final acknowledgements waiting, they go before call
/// fragments.
const FINAL_ACKS_FIRST: usize = 16;

impl RpcClient {
    /// A client with no calls.
    pub fn new(config: RpcConfig) -> Self {
        RpcClient {
            config,
            next_request: 1,
            calls: FxHashMap::default(),
            spares: Spares::new(),
            fired: Vec::new(),
            sendable: VecDeque::new(),
            final_acks: VecDeque::new(),
            next_timer: NEVER,
            events: VecDeque::new(),
            bitmap: Vec::new(),
            reply_bytes: 0,
            srtt: None,
        }
    }

    /// The retransmission timeout for a new call.
    pub fn rto(&self) -> Duration {
        match self.srtt {
            None => self.config.initial_rto,
            Some((srtt, rttvar)) => (srtt + 4 * rttvar)
                .max(self.config.min_rto)
                .min(self.config.max_rto),
        }
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(|(srtt, _)| srtt)
    }

    fn sample_rtt(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => (sample, sample / 2),
            Some((srtt, rttvar)) => {
                let delta = srtt.abs_diff(sample);
                (srtt * 7 / 8 + sample / 8, rttvar * 3 / 4 + delta / 4)
            }
        });
    }

    /// A client whose first request id is `first` (a session re-opened
    /// after its server lost it keeps counting, so ids stay unique for the
    /// application).
    pub fn starting_at(config: RpcConfig, first: u64) -> Self {
        RpcClient {
            next_request: first.max(1),
            ..RpcClient::new(config)
        }
    }

    /// The id the next call will get.
    pub fn next_request_id(&self) -> u64 {
        self.next_request
    }

    /// Calls outstanding.
    pub fn outstanding(&self) -> usize {
        self.calls.len()
    }

    /// Starts a call; returns its request id.
    pub fn call(
        &mut self,
        now: Instant,
        interface: u32,
        opcode: u16,
        args: Vec<u8>,
    ) -> Result<u64, CallError> {
        if args.len() > MAX_MESSAGE_LEN as usize {
            return Err(CallError::TooLarge(args.len()));
        }
        // Replies not yet acknowledged count: the server caches them.
        if self.calls.len() + self.final_acks.len() >= self.config.max_outstanding {
            return Err(CallError::Busy);
        }
        let request_id = self.next_request;
        self.next_request += 1;
        let count = fragment_count(args.len(), self.config.max_fragment);
        let (first, _) = fragment_of(args.len(), self.config.max_fragment, 0);
        let rto = self.rto();
        let retransmit_at = now + rto;
        self.next_timer = self.next_timer.min(retransmit_at);
        self.calls.insert(
            request_id,
            PendingCall {
                interface,
                opcode,
                server_has: Reassembly::new_empty(&first),
                args,
                queue: FragmentQueue::all(count),
                deadline: now + self.config.call_timeout,
                retransmit_at,
                rto,
                sent_at: now,
                retransmitted: false,
                reply: None,
                ack_due: false,
                scheduled: true,
            },
        );
        self.sendable.push_back(request_id);
        Ok(request_id)
    }

    /// Takes a reply fragment into account.
    pub fn handle_reply(&mut self, now: Instant, reply: &RpcReply<'_>) {
        let Some(call) = self.calls.get_mut(&reply.request_id) else {
            // A reply to a call that already finished here: the final
            // acknowledgement was lost; send it again so that the server
            // frees its cache now rather than at its expiry.
            let queued = self
                .final_acks
                .iter()
                .any(|&(id, _)| id == reply.request_id);
            if reply.request_id < self.next_request && !queued && self.final_acks.len() < 1024 {
                self.final_acks
                    .push_back((reply.request_id, reply.fragment.count));
            }
            return;
        };
        call.queue.clear();
        if call.reply.is_none() && !call.retransmitted {
            let sample = now.saturating_since(call.sent_at);
            self.sample_rtt(sample);
        }
        let Some(call) = self.calls.get_mut(&reply.request_id) else {
            return;
        };
        if call.reply.is_none() {
            let len = reply.fragment.total_len as usize;
            if self.reply_bytes + len > self.config.max_reassembly_bytes {
                return;
            }
            self.reply_bytes += len;
            let buffer = self.spares.zeroed(len);
            call.reply = Some((reply.exception, Reassembly::new_in(&reply.fragment, buffer)));
        }
        let Some((exception, reassembly)) = call.reply.as_mut() else {
            return;
        };
        if *exception != reply.exception || reassembly.is_complete() {
            return;
        }
        match reassembly.insert(&reply.fragment, reply.data) {
            Ok(true) => {
                // Complete: the call ends now and its caller hears of it
                // at once; the final acknowledgement follows.
                let count = reply.fragment.count;
                if let Some(mut call) = self.calls.remove(&reply.request_id) {
                    self.release(&call);
                    self.spares.give(core::mem::take(&mut call.args));
                    if let Some((exception, reassembly)) = call.reply {
                        self.events.push_back(CallOutcome {
                            request_id: reply.request_id,
                            sent_at: call.sent_at,
                            result: Ok((exception, reassembly.into_data())),
                        });
                    }
                }
                self.final_acks.push_back((reply.request_id, count));
            }
            // The reply is streaming in: ask for missing fragments only
            // once it stalls for a retransmission timeout.
            Ok(false) => call.retransmit_at = now + call.rto,
            Err(_) => {}
        }
    }

    /// Takes the server's acknowledgement of argument fragments into account.
    pub fn handle_ack(&mut self, ack: &RpcAck<'_>) {
        if ack.acked != Acked::Call {
            return;
        }
        if let Some(call) = self.calls.get_mut(&ack.request_id) {
            for index in 0..call.server_has.count() {
                if ack.has(index) {
                    call.server_has.mark(index);
                }
            }
            call.queue.retain(|i| !ack.has(i));
        }
    }

    /// Fails every outstanding call with `error` (the peer went down or the
    /// session closed).
    pub fn fail_all(&mut self, error: &CallError) {
        let mut calls: Vec<(u64, PendingCall)> = self.calls.drain().collect();
        calls.sort_unstable_by_key(|&(id, _)| id);
        for (request_id, call) in calls {
            self.events.push_back(CallOutcome {
                request_id,
                sent_at: call.sent_at,
                result: Err(error.clone()),
            });
        }
        self.sendable.clear();
        self.final_acks.clear();
        self.next_timer = NEVER;
        self.reply_bytes = 0;
    }

    /// Retransmissions and deadlines; scans the calls only when the
    /// earliest timer is due.
    fn fire_timers(&mut self, now: Instant) {
        if now < self.next_timer {
            return;
        }
        let mut next_timer = NEVER;
        // The calls whose timer fired, oldest first whatever the map's
        // order, in a list kept between firings.
        let mut fired = core::mem::take(&mut self.fired);
        fired.clear();
        for (&request_id, call) in &self.calls {
            if now >= call.retransmit_at.min(call.deadline) {
                fired.push(request_id);
            } else {
                next_timer = next_timer.min(call.retransmit_at).min(call.deadline);
            }
        }
        fired.sort_unstable();
        for &request_id in &fired {
            let Some(call) = self.calls.get_mut(&request_id) else {
                continue;
            };
            if now >= call.deadline {
                if let Some(call) = self.calls.remove(&request_id) {
                    self.release(&call);
                    self.events.push_back(CallOutcome {
                        request_id,
                        sent_at: call.sent_at,
                        result: Err(CallError::Timeout),
                    });
                }
                continue;
            }
            call.retransmitted = true;
            call.rto = (call.rto * 2).min(self.config.max_rto);
            call.retransmit_at = now + call.rto;
            if call.reply.is_some() {
                // Part of the reply is here: tell the server what is missing.
                call.ack_due = true;
            } else if call.server_has.is_complete() {
                // "Received, working": probe with the first fragment.
                call.queue.set(core::iter::once(0));
            } else {
                let count = call.server_has.count();
                let server_has = &call.server_has;
                call.queue.set((0..count).filter(|&i| !server_has.has(i)));
            }
            schedule(&mut self.sendable, call, request_id);
            next_timer = next_timer.min(call.retransmit_at).min(call.deadline);
        }
        self.fired = fired;
        self.next_timer = next_timer;
    }

    fn release(&mut self, call: &PendingCall) {
        if let Some((_, reassembly)) = &call.reply {
            self.reply_bytes -= reassembly.total_len();
        }
    }

    /// The next frame body to send, if any.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message<'_>> {
        self.fire_timers(now);
        let max_fragment = self.config.max_fragment;
        // Final acknowledgements go after call fragments, so that a
        // caller's next call leaves first, but not after many: each one
        // keeps a reply in the server's cache.
        if self.final_acks.len() >= FINAL_ACKS_FIRST {
            return self.final_ack();
        }
        let RpcClient {
            calls,
            sendable,
            bitmap,
            final_acks,
            ..
        } = self;
        // Find the next call with output (stale entries are skipped), then
        // build its frame from a fresh borrow.
        let (request_id, fragment) = loop {
            let Some(request_id) = sendable.pop_front() else {
                // Nothing else to send: a final acknowledgement.
                let (request_id, count) = final_acks.pop_front()?;
                return Some(Message::RpcAck(RpcAck {
                    request_id,
                    acked: Acked::Reply,
                    base: count,
                    bitmap: &[],
                }));
            };
            let Some(call) = calls.get_mut(&request_id) else {
                continue;
            };
            call.scheduled = false;
            if call.ack_due {
                call.ack_due = false;
                schedule(sendable, call, request_id);
                break (request_id, None);
            }
            if let Some(index) = call.queue.pop_front() {
                schedule(sendable, call, request_id);
                break (request_id, Some(index));
            }
        };
        let call = calls.get(&request_id)?;
        match fragment {
            None => {
                let (_, reassembly) = call.reply.as_ref()?;
                let base = reassembly.ack(MAX_BITMAP_LEN, bitmap);
                Some(Message::RpcAck(RpcAck {
                    request_id,
                    acked: Acked::Reply,
                    base,
                    bitmap,
                }))
            }
            Some(index) => {
                let (fragment, range) = fragment_of(call.args.len(), max_fragment, index);
                Some(Message::RpcCall(RpcCall {
                    request_id,
                    interface: call.interface,
                    opcode: call.opcode,
                    fragment,
                    data: &call.args[range],
                }))
            }
        }
    }

    /// The next finished call, if any. A call finishes when its reply is
    /// complete (its final acknowledgement, which frees the server's cache,
    /// is sent after) or when it fails.
    pub fn poll_event(&mut self) -> Option<CallOutcome> {
        self.events.pop_front()
    }

    /// The oldest final acknowledgement due.
    fn final_ack(&mut self) -> Option<Message<'_>> {
        let (request_id, count) = self.final_acks.pop_front()?;
        Some(Message::RpcAck(RpcAck {
            request_id,
            acked: Acked::Reply,
            base: count,
            bitmap: &[],
        }))
    }

    /// When a retransmission or a deadline may next be due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.calls.is_empty()).then_some(self.next_timer)
    }
}

/// A call ready to execute, handed to the application once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCall {
    /// The request, to pass back to [`RpcServer::complete`].
    pub request_id: u64,
    /// Interface id.
    pub interface: u32,
    /// Opcode.
    pub opcode: u16,
    /// The marshalled arguments.
    pub args: Vec<u8>,
}

#[derive(Debug)]
enum ServerCall {
    /// Fragments arriving.
    Assembling {
        interface: u32,
        opcode: u16,
        reassembly: Reassembly,
        /// When the first fragment arrived.
        started: Instant,
    },
    /// Handed to the application, no reply yet.
    Executing,
    /// Reply cached until the client acknowledges it.
    Replied {
        exception: i32,
        data: Vec<u8>,
        client_has: Reassembly,
        queue: FragmentQueue,
        at: Instant,
    },
}

/// Queues every reply fragment the client does not hold for sending;
/// returns whether the queue went from empty to non-empty.
fn resend_missing(queue: &mut FragmentQueue, client_has: &Reassembly) -> bool {
    let was_empty = queue.is_empty();
    queue.set((0..client_has.count()).filter(|&i| !client_has.has(i)));
    was_empty && !queue.is_empty()
}

/// A server remembers executed request ids individually for at least
/// this long (and twice its call timeout if that is longer), so that a
/// client whose call timeout is longer than the server's still has its
/// late calls answered, up to a minute.
pub const REMEMBER_FOR: Duration = Duration::from_secs(60);

/// How long a server remembers executed ids individually after a higher
/// call arrived: [`REMEMBER_FOR`], or twice its call timeout if longer.
fn horizon(config: &RpcConfig) -> Duration {
    (config.call_timeout * 2).max(REMEMBER_FOR)
}

/// A remembered id more than this many bitmap words (64 ids each) above
/// the last one is a jump no conforming client makes (its ids grow by one
/// per call, and only its outstanding calls lie between): everything
/// below it is then forgotten at once, so a jump costs no more than a
/// call.
const MAX_FILL_WORDS: u64 = 1024;

/// The request ids a server has executed, for at-most-once execution:
/// a bit per id from `base` up, and every id below `below` counts as
/// executed.
///
/// `below` moves up only past ids the client can no longer send for the
/// first time. A client numbers its calls in increasing order and gives up
/// on each a call timeout after making it, so once a call has arrived
/// whole, every lower id is settled a call timeout later: the server forgets
/// individually (counts as executed) the ids below what had arrived a
/// horizon ago (`horizon`, longer than any call timeout it expects), never
/// a call that is merely late. A fixed count of remembered ids would
/// instead take a call whose frames were lost while thousands of later
/// ones ran for executed, and never answer it.
#[derive(Debug, Default)]
struct Executed {
    below: u64,
    /// A multiple of 64, at most `below`: bit `i` of word `w` is id
    /// `base + 64 w + i`.
    base: u64,
    words: VecDeque<u64>,
    /// (when, one past the highest id of a call that had arrived whole by
    /// then), one per epoch, oldest first.
    marks: VecDeque<(Instant, u64)>,
}

impl Executed {
    fn contains(&self, id: u64) -> bool {
        if id < self.below {
            return true;
        }
        let word = (id - self.base) / 64;
        usize::try_from(word)
            .ok()
            .and_then(|w| self.words.get(w))
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Notes that call `id` arrived whole at `now` (epochs of `epoch`).
    /// First fragments alone do not count: a peer sending fragments of
    /// calls it never completes moves nothing.
    fn seen(&mut self, now: Instant, id: u64, epoch: Duration) {
        let end = id.saturating_add(1);
        match self.marks.back_mut() {
            Some((since, high)) if now < *since + epoch => *high = (*high).max(end),
            Some((_, high)) if *high >= end => {}
            _ => self.marks.push_back((now, end)),
        }
    }

    /// Counts as executed, wholesale, the ids below what had been seen
    /// `after` ago.
    fn forget_older(&mut self, now: Instant, after: Duration) {
        while let Some(&(since, high)) = self.marks.front() {
            if now < since + after {
                break;
            }
            self.marks.pop_front();
            self.forget_below(high);
        }
    }

    fn forget_below(&mut self, id: u64) {
        if id <= self.below {
            return;
        }
        self.below = id;
        // The words wholly below the new base go (`base` never passes
        // `below`, so this cannot underflow, and nothing here overflows
        // near `u64::MAX`).
        let base = id - id % 64;
        let gone = usize::try_from((base - self.base) / 64).unwrap_or(usize::MAX);
        self.words.drain(..gone.min(self.words.len()));
        self.base = base;
    }

    /// Remembers `id` as executed, in at most `span` words: ids further
    /// below the newest are forgotten (count as executed) first, and all
    /// below it after a jump.
    fn insert(&mut self, id: u64, span: usize) {
        if id < self.below {
            return;
        }
        let word = (id - self.base) / 64;
        let span = span as u64;
        if word >= self.words.len() as u64 + MAX_FILL_WORDS {
            self.forget_below(id - id % 64);
        } else if word >= span {
            self.forget_below((self.base + (word + 1 - span) * 64).min(id));
        }
        let word = usize::try_from((id - self.base) / 64).unwrap_or(usize::MAX);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        if let Some(w) = self.words.get_mut(word) {
            *w |= 1 << (id % 64);
        }
    }
}

/// The server side of one RPC session. As on the client, the work per
/// frame does not grow with the number of calls: replies with fragments to
/// send wait in a queue, and the scan for stale replies runs at most once
/// per call timeout.
#[derive(Debug)]
pub struct RpcServer {
    config: RpcConfig,
    /// Calls held, by request id (a hash map, as the client's).
    calls: FxHashMap<u64, ServerCall>,
    /// Buffers of executed calls' arguments and acknowledged replies,
    /// reused for new ones.
    spares: Spares,
    ready: VecDeque<ReadyCall>,
    /// Request ids executed (their calls no longer held).
    executed: Executed,
    /// Calls owed a call ACK.
    acks_due: BTreeSet<u64>,
    /// Replies with fragments queued, served round robin.
    replies_due: VecDeque<u64>,
    /// The next [`RpcServer::expire`] scan.
    next_expiry: Instant,
    assembling_bytes: usize,
    bitmap: Vec<u8>,
    /// Frames refused: inconsistent fragments or over the memory budget.
    pub dropped: u64,
    /// Calls whose fragments never all arrived, dropped by [`RpcServer::expire`].
    pub abandoned: u64,
}

impl RpcServer {
    /// A server with no calls.
    pub fn new(config: RpcConfig) -> Self {
        RpcServer {
            config,
            calls: FxHashMap::default(),
            spares: Spares::new(),
            ready: VecDeque::new(),
            executed: Executed::default(),
            acks_due: BTreeSet::new(),
            replies_due: VecDeque::new(),
            next_expiry: Instant::ZERO,
            assembling_bytes: 0,
            bitmap: Vec::new(),
            dropped: 0,
            abandoned: 0,
        }
    }

    /// Bytes held for calls still being reassembled.
    pub fn assembling_bytes(&self) -> usize {
        self.assembling_bytes
    }

    /// Whether the server holds any state for `request_id` (assembling,
    /// executing, replied or remembered as executed).
    pub fn knows(&self, request_id: u64) -> bool {
        self.executed.contains(request_id) || self.calls.contains_key(&request_id)
    }

    /// Takes a call fragment into account.
    pub fn handle_call(&mut self, now: Instant, call: &RpcCall<'_>) {
        let id = call.request_id;
        // A call still held (assembling, executing, replied) is looked up
        // first: "executed" only matters for ids no longer held.
        match self.calls.get_mut(&id) {
            None => {
                if self.executed.contains(id) {
                    return;
                }
                let len = call.fragment.total_len as usize;
                if self.assembling_bytes + len > self.config.max_reassembly_bytes {
                    self.dropped += 1;
                    return;
                }
                self.assembling_bytes += len;
                let reassembly = Reassembly::new_in(&call.fragment, self.spares.zeroed(len));
                self.calls.insert(
                    id,
                    ServerCall::Assembling {
                        interface: call.interface,
                        opcode: call.opcode,
                        reassembly,
                        started: now,
                    },
                );
            }
            Some(ServerCall::Executing) => {
                self.acks_due.insert(id);
                return;
            }
            Some(ServerCall::Replied {
                client_has, queue, ..
            }) => {
                // The client missed (part of) the reply: send what it lacks.
                if queue.is_empty() && resend_missing(queue, client_has) {
                    self.replies_due.push_back(id);
                }
                return;
            }
            Some(ServerCall::Assembling { .. }) => {}
        }
        let Some(ServerCall::Assembling {
            interface,
            opcode,
            reassembly,
            ..
        }) = self.calls.get_mut(&id)
        else {
            return;
        };
        match reassembly.insert(&call.fragment, call.data) {
            Ok(true) => {
                // Complete: the client made this call, so every lower id.
                self.executed.seen(now, id, horizon(&self.config) / 32);
                let (interface, opcode) = (*interface, *opcode);
                let Some(ServerCall::Assembling { reassembly, .. }) =
                    self.calls.insert(id, ServerCall::Executing)
                else {
                    return;
                };
                self.assembling_bytes -= reassembly.total_len();
                self.ready.push_back(ReadyCall {
                    request_id: id,
                    interface,
                    opcode,
                    args: reassembly.into_data(),
                });
            }
            Ok(false) => {
                self.acks_due.insert(id);
            }
            Err(_) => self.dropped += 1,
        }
    }

    /// The next call to execute, exactly once per request id.
    pub fn poll_call(&mut self) -> Option<ReadyCall> {
        self.ready.pop_front()
    }

    /// Takes back an executed call's argument buffer for later messages.
    pub fn recycle(&mut self, args: Vec<u8>) {
        self.spares.give(args);
    }

    /// An empty buffer for a reply (a recycled one when there is one), to
    /// hand to [`RpcServer::complete`].
    pub fn reply_buffer(&mut self) -> Vec<u8> {
        self.spares.take()
    }

    /// The application's result for `request_id`: cached and sent until
    /// the client acknowledges it.
    pub fn complete(
        &mut self,
        now: Instant,
        request_id: u64,
        exception: i32,
        data: Vec<u8>,
    ) -> Result<(), CallError> {
        if data.len() > MAX_MESSAGE_LEN as usize {
            return Err(CallError::TooLarge(data.len()));
        }
        if !matches!(self.calls.get(&request_id), Some(ServerCall::Executing)) {
            return Ok(());
        }
        let (first, _) = fragment_of(data.len(), self.config.max_fragment, 0);
        let count = first.count;
        self.calls.insert(
            request_id,
            ServerCall::Replied {
                exception,
                data,
                client_has: Reassembly::new_empty(&first),
                queue: FragmentQueue::all(count),
                at: now,
            },
        );
        self.replies_due.push_back(request_id);
        Ok(())
    }

    /// Drops cached replies the client never acknowledged within twice the
    /// call timeout (it gave up or its acknowledgement was lost); their ids
    /// stay remembered as executed. Cheap to call every iteration: it scans
    /// at most once per call timeout, so a reply goes within three.
    /// Calls whose fragments stopped arriving (the client gave up at its
    /// deadline) are dropped the same way, freeing their memory; they were
    /// never executed, so they are not remembered.
    pub fn expire(&mut self, now: Instant) {
        self.executed.forget_older(now, horizon(&self.config));
        if now < self.next_expiry {
            return;
        }
        self.next_expiry = now + self.config.call_timeout;
        let limit = self.config.call_timeout * 2;
        let stale: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| match c {
                ServerCall::Replied { at, .. } | ServerCall::Assembling { started: at, .. } => {
                    now.saturating_since(*at) > limit
                }
                ServerCall::Executing => false,
            })
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            match self.calls.remove(&id) {
                Some(ServerCall::Assembling { reassembly, .. }) => {
                    self.assembling_bytes -= reassembly.total_len();
                    self.abandoned += 1;
                }
                _ => self.remember(id),
            }
        }
    }

    /// Takes the client's acknowledgement of reply fragments into account;
    /// a complete one frees the cached reply (the id stays remembered).
    pub fn handle_ack(&mut self, ack: &RpcAck<'_>) {
        if ack.acked != Acked::Reply {
            return;
        }
        let Some(ServerCall::Replied {
            client_has, queue, ..
        }) = self.calls.get_mut(&ack.request_id)
        else {
            return;
        };
        for index in 0..client_has.count() {
            if ack.has(index) {
                client_has.mark(index);
            }
        }
        if client_has.is_complete() {
            if let Some(ServerCall::Replied { data, .. }) = self.calls.remove(&ack.request_id) {
                self.spares.give(data);
            }
            self.remember(ack.request_id);
        } else if resend_missing(queue, client_has) {
            self.replies_due.push_back(ack.request_id);
        }
    }

    fn remember(&mut self, request_id: u64) {
        let span = self.config.remembered_ids.div_ceil(64).max(1);
        self.executed.insert(request_id, span);
    }

    /// The next frame body to send, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Message<'_>> {
        while let Some(id) = self.acks_due.pop_first() {
            let base = match self.calls.get(&id) {
                Some(ServerCall::Assembling { reassembly, .. }) => {
                    reassembly.ack(MAX_BITMAP_LEN, &mut self.bitmap)
                }
                Some(ServerCall::Executing) => {
                    self.bitmap.clear();
                    u16::MAX
                }
                _ => continue,
            };
            return Some(Message::RpcAck(RpcAck {
                request_id: id,
                acked: Acked::Call,
                base,
                bitmap: &self.bitmap,
            }));
        }
        let max_fragment = self.config.max_fragment;
        // Find the next reply with a fragment queued (stale entries are
        // skipped), then build the frame from a fresh borrow.
        let (request_id, index) = loop {
            let request_id = self.replies_due.pop_front()?;
            if let Some(ServerCall::Replied { queue, .. }) = self.calls.get_mut(&request_id) {
                if let Some(index) = queue.pop_front() {
                    if !queue.is_empty() {
                        self.replies_due.push_back(request_id);
                    }
                    break (request_id, index);
                }
            }
        };
        let Some(ServerCall::Replied {
            exception, data, ..
        }) = self.calls.get(&request_id)
        else {
            return None;
        };
        let (fragment, range) = fragment_of(data.len(), max_fragment, index);
        Some(Message::RpcReply(RpcReply {
            request_id,
            exception: *exception,
            fragment,
            data: &data[range],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Emits `message` and parses it back, as the wire would.
    fn across<'b>(message: Message<'_>, buf: &'b mut Vec<u8>) -> Message<'b> {
        buf.clear();
        buf.resize(message.buffer_len(), 0);
        message.emit(buf);
        Message::parse(message.kind(), buf).unwrap()
    }

    /// One call from `client` to `server`, answered `delay` later; the
    /// client's retransmission timer runs at the call time plus `wait`
    /// first.
    fn round_trip(
        client: &mut RpcClient,
        server: &mut RpcServer,
        now: &mut Instant,
        wait: Duration,
        delay: Duration,
    ) {
        let mut buf = Vec::new();
        let id = client.call(*now, 1, 0, vec![1, 2, 3]).unwrap();
        while let Some(message) = client.poll_transmit(*now) {
            if let Message::RpcCall(call) = across(message, &mut buf) {
                server.handle_call(*now, &call);
            }
        }
        // Frames the client sends after `wait` (retransmissions) are lost.
        while client.poll_transmit(*now + wait).is_some() {}
        let ready = server.poll_call().unwrap();
        server.complete(*now, ready.request_id, 0, vec![9]).unwrap();
        *now += delay;
        while let Some(message) = server.poll_transmit() {
            if let Message::RpcReply(reply) = across(message, &mut buf) {
                client.handle_reply(*now, &reply);
            }
        }
        // The reply ACK ends the call (and frees the server's cached reply).
        while let Some(message) = client.poll_transmit(*now) {
            if let Message::RpcAck(ack) = across(message, &mut buf) {
                server.handle_ack(&ack);
            }
        }
        let outcome = client.poll_event().unwrap();
        assert_eq!(outcome.request_id, id);
        assert_eq!(outcome.result, Ok((0, vec![9])));
    }

    /// `count` calls, each answered at once with nothing lost.
    fn instant_round_trips(
        client: &mut RpcClient,
        server: &mut RpcServer,
        now: &mut Instant,
        count: usize,
    ) {
        for _ in 0..count {
            round_trip(client, server, now, Duration::ZERO, Duration::ZERO);
        }
    }

    #[test]
    fn a_complete_reply_ends_the_call_at_once_and_the_final_ack_frees_the_server() {
        let config = RpcConfig::default();
        let (mut client, mut server) = (RpcClient::new(config), RpcServer::new(config));
        let now = Instant::ZERO;
        let mut buf = Vec::new();
        let id = client.call(now, 1, 0, vec![1]).unwrap();
        while let Some(message) = client.poll_transmit(now) {
            if let Message::RpcCall(call) = across(message, &mut buf) {
                server.handle_call(now, &call);
            }
        }
        let ready = server.poll_call().unwrap();
        server.complete(now, ready.request_id, 0, vec![9]).unwrap();
        let mut replies = Vec::new();
        while let Some(message) = server.poll_transmit() {
            let mut bytes = Vec::new();
            let kind = message.kind();
            across(message, &mut bytes);
            replies.push((kind, bytes));
        }
        let reply = replies
            .iter()
            .find_map(|(kind, bytes)| match Message::parse(*kind, bytes) {
                Ok(Message::RpcReply(reply)) => Some(reply),
                _ => None,
            })
            .expect("a reply");
        client.handle_reply(now, &reply);
        // The caller hears at once, before anything is sent.
        let outcome = client.poll_event().expect("the call ended");
        assert_eq!((outcome.request_id, outcome.result), (id, Ok((0, vec![9]))));
        assert_eq!(client.outstanding(), 0);
        // A next call leaves before the final acknowledgement.
        let next = client.call(now, 1, 0, vec![2]).unwrap();
        let first = client.poll_transmit(now).map(|m| match m {
            Message::RpcCall(call) => ("call", call.request_id),
            Message::RpcAck(ack) => ("ack", ack.request_id),
            _ => ("other", 0),
        });
        assert_eq!(first, Some(("call", next)));
        let Some(Message::RpcAck(ack)) = client.poll_transmit(now) else {
            panic!("the final acknowledgement");
        };
        assert_eq!(ack.request_id, id);
        assert!(server.calls.contains_key(&id), "cached until acknowledged");
        server.handle_ack(&ack);
        assert!(!server.calls.contains_key(&id), "the cache is freed");
        // A duplicate of the reply (the server did not hear the first
        // acknowledgement) is acknowledged again.
        client.handle_reply(now, &reply);
        let Some(Message::RpcAck(again)) = client.poll_transmit(now) else {
            panic!("a second final acknowledgement");
        };
        assert_eq!(again.request_id, id);
        assert!(client.poll_transmit(now).is_none());
    }

    #[test]
    fn unsent_final_acks_count_as_outstanding_and_go_first_when_many() {
        let config = RpcConfig {
            max_outstanding: 20,
            ..RpcConfig::default()
        };
        let (mut client, mut server) = (RpcClient::new(config), RpcServer::new(config));
        let now = Instant::ZERO;
        let mut buf = Vec::new();
        // Twenty calls answered, none of their final acks sent yet.
        for _ in 0..20 {
            client.call(now, 1, 0, vec![1]).unwrap();
        }
        assert_eq!(client.call(now, 1, 0, vec![1]), Err(CallError::Busy));
        while let Some(message) = client.poll_transmit(now) {
            if let Message::RpcCall(call) = across(message, &mut buf) {
                server.handle_call(now, &call);
            }
            if client.final_acks.is_empty() && client.sendable.is_empty() {
                break;
            }
        }
        while let Some(ready) = server.poll_call() {
            server.complete(now, ready.request_id, 0, vec![9]).unwrap();
        }
        let mut replies = Vec::new();
        while let Some(message) = server.poll_transmit() {
            let kind = message.kind();
            let mut bytes = Vec::new();
            across(message, &mut bytes);
            replies.push((kind, bytes));
        }
        for (kind, bytes) in &replies {
            if let Ok(Message::RpcReply(reply)) = Message::parse(*kind, bytes) {
                client.handle_reply(now, &reply);
            }
        }
        assert_eq!(client.outstanding(), 0);
        assert_eq!(client.final_acks.len(), 20);
        // The server caches twenty replies: no new call until acks leave.
        assert_eq!(client.call(now, 1, 0, vec![1]), Err(CallError::Busy));
        // Many waiting: an ack goes before anything else.
        let Some(Message::RpcAck(_)) = client.poll_transmit(now) else {
            panic!("a final ack first");
        };
        assert!(client.call(now, 1, 0, vec![1]).is_ok());
    }

    /// Server side of one whole call `id`: arrives at `now`, runs, its
    /// reply is acknowledged.
    fn serve(server: &mut RpcServer, now: Instant, id: u64, args: &[u8]) -> Option<ReadyCall> {
        let call = RpcCall {
            request_id: id,
            interface: 1,
            opcode: 0,
            fragment: fragment_of(args.len(), 1400, 0).0,
            data: args,
        };
        server.handle_call(now, &call);
        let ready = server.poll_call()?;
        server.complete(now, id, 0, Vec::new()).unwrap();
        server.handle_ack(&RpcAck {
            request_id: id,
            acked: Acked::Reply,
            base: 1,
            bitmap: &[],
        });
        Some(ready)
    }

    #[test]
    fn a_call_lost_while_thousands_of_later_ones_run_still_runs_when_it_arrives() {
        let mut server = RpcServer::new(RpcConfig::default());
        let mut now = Instant::ZERO;
        // Call 1's frames are lost; calls 2 to 10001 run within half a
        // second: more than any fixed count of remembered ids.
        for id in 2..=10_001 {
            now += Duration::from_micros(50);
            server.expire(now);
            assert!(serve(&mut server, now, id, &id.to_le_bytes()).is_some());
        }
        // Call 1's retransmission arrives: it runs, once.
        let ready = serve(&mut server, now, 1, &[5; 10]).expect("taken for executed");
        assert_eq!((ready.request_id, ready.args), (1, vec![5; 10]));
        assert!(serve(&mut server, now, 1, &[5; 10]).is_none());
        assert!(serve(&mut server, now, 5000, &[0]).is_none());
    }

    #[test]
    fn executed_ids_are_forgotten_only_after_a_minute() {
        let config = RpcConfig::default();
        let (mut client, mut server) = (RpcClient::new(config), RpcServer::new(config));
        let mut now = Instant::ZERO;
        instant_round_trips(&mut client, &mut server, &mut now, 5000);
        let held = server.executed.words.len();
        assert!(held >= 5000 / 64, "{held} words for 5000 ids");
        // Within a minute (more than twice the call timeout) nothing is
        // forgotten.
        server.expire(now + (REMEMBER_FOR - Duration::from_millis(1)));
        assert_eq!(server.executed.words.len(), held);
        // After it, all of them are, and still count as executed.
        let later = now + REMEMBER_FOR + Duration::from_millis(1);
        server.expire(later);
        assert!(
            server.executed.words.len() <= 1,
            "{:?}",
            server.executed.words.len()
        );
        assert!((1..=5000).all(|id| server.knows(id)));
        // A very late duplicate of an executed call never runs again.
        let call = RpcCall {
            request_id: 17,
            interface: 1,
            opcode: 0,
            fragment: fragment_of(3, config.max_fragment, 0).0,
            data: &[1, 2, 3],
        };
        server.handle_call(later, &call);
        assert!(server.poll_call().is_none());
    }

    #[test]
    fn a_hostile_jump_of_ids_keeps_the_memory_bounded() {
        let config = RpcConfig {
            remembered_ids: 64 * 16,
            ..RpcConfig::default()
        };
        let mut server = RpcServer::new(config);
        let now = Instant::ZERO;
        for id in [1, u64::MAX / 2, u64::MAX - 1] {
            let call = RpcCall {
                request_id: id,
                interface: 1,
                opcode: 0,
                fragment: fragment_of(1, config.max_fragment, 0).0,
                data: &[0],
            };
            server.handle_call(now, &call);
            let ready = server.poll_call().unwrap();
            server
                .complete(now, ready.request_id, 0, Vec::new())
                .unwrap();
            let ack = RpcAck {
                request_id: id,
                acked: Acked::Reply,
                base: 1,
                bitmap: &[],
            };
            server.handle_ack(&ack);
            assert!(server.executed.words.len() <= 16);
            assert!(server.knows(id));
        }
        // With the default bound too, a jump costs one word, not the span.
        let mut server = RpcServer::new(RpcConfig::default());
        for id in [1, 1 << 30, (1 << 30) + 64 * 1000] {
            assert!(serve(&mut server, now, id, &[0]).is_some());
        }
        assert!(server.knows(5) && server.knows(1 << 30));
        assert!(
            server.executed.words.len() <= 1001,
            "{}",
            server.executed.words.len()
        );
        let mut server = {
            let mut server = RpcServer::new(config);
            for id in [1, u64::MAX / 2, u64::MAX - 1] {
                serve(&mut server, now, id, &[0]);
            }
            server
        };
        // Forgetting up to the top of the id space later stays in bounds.
        server.expire(now + REMEMBER_FOR * 2);
        assert!(server.knows(u64::MAX - 1) && server.knows(7));
        assert!(server.executed.words.len() <= 1);
    }

    #[test]
    fn a_call_still_assembling_survives_many_later_calls_being_forgotten() {
        let config = RpcConfig {
            remembered_ids: 4,
            max_fragment: 100,
            ..RpcConfig::default()
        };
        let (mut client, mut server) = (RpcClient::new(config), RpcServer::new(config));
        let mut buf = Vec::new();
        let now = Instant::ZERO;
        // A large call whose fragments after the first are held back.
        let big = client.call(now, 1, 0, vec![7; 1000]).unwrap();
        let mut held = Vec::new();
        while let Some(message) = client.poll_transmit(now) {
            let bytes = {
                buf.clear();
                buf.resize(message.buffer_len(), 0);
                message.emit(&mut buf);
                buf.clone()
            };
            held.push(bytes);
        }
        let first = Message::parse(crate::wire::Kind::RpcCall, &held[0]).unwrap();
        if let Message::RpcCall(call) = first {
            server.handle_call(now, &call);
        }
        // Ten small calls complete and are forgotten individually.
        let mut now = now;
        instant_round_trips(&mut client, &mut server, &mut now, 10);
        // The rest of the large call arrives: it still executes, once.
        for bytes in &held[1..] {
            if let Ok(Message::RpcCall(call)) = Message::parse(crate::wire::Kind::RpcCall, bytes) {
                server.handle_call(now, &call);
            }
        }
        let ready = server.poll_call().expect("the large call was dropped");
        assert_eq!(ready.request_id, big);
        assert_eq!(ready.args, vec![7; 1000]);
        assert!(server.poll_call().is_none());
    }

    #[test]
    fn the_retransmission_timeout_follows_measured_round_trips() {
        let config = RpcConfig::default();
        let (mut client, mut server) = (RpcClient::new(config), RpcServer::new(config));
        let mut now = Instant::ZERO;
        assert_eq!(client.rto(), config.initial_rto);
        let ms = Duration::from_millis;
        round_trip(&mut client, &mut server, &mut now, Duration::ZERO, ms(2));
        // First sample: SRTT 2 ms, variation 1 ms.
        assert_eq!(client.srtt(), Some(ms(2)));
        assert_eq!(client.rto(), ms(6));
        round_trip(&mut client, &mut server, &mut now, Duration::ZERO, ms(2));
        assert_eq!(client.rto(), ms(5));
        // A fast link drives the timeout down to the floor, never below.
        for _ in 0..50 {
            round_trip(
                &mut client,
                &mut server,
                &mut now,
                Duration::ZERO,
                Duration::from_micros(20),
            );
        }
        assert_eq!(client.rto(), config.min_rto);
        // Karn: a reply after a retransmission is no sample, however late.
        let before = client.srtt();
        round_trip(&mut client, &mut server, &mut now, ms(3), ms(40));
        assert_eq!(client.srtt(), before);
    }
}
