//! ROM modules, sans-IO: the publisher's and the subscriber's state for one
//! ROM session (docs/wire.md, "ROM modules").
//!
//! Genode's ROM semantics over a lossy link: a module has one current
//! version; a reader only ever sees complete versions whose BLAKE3 hash
//! matches the announce, never partial content; intermediate versions may
//! be skipped. So the publisher only ever sends its newest version and
//! abandons an unfinished transfer of an older one the moment the module
//! changes, and the subscriber assembles the newest announced version into
//! a fresh buffer and swaps it in (as an [`Arc`]) once it verifies.
//!
//! * [`RomSender`] (publisher side of one subscriber session) announces the
//!   current version at once and every `announce_interval`, starts a
//!   transfer when a ROM_REQUEST shows the subscriber lacks it, and sends
//!   chunks in index order within the subscriber's credit.
//! * [`RomReceiver`] (subscriber side) follows the announces, assembles,
//!   acknowledges selectively, verifies and publishes; it re-requests when
//!   a transfer stalls.
//!
//! # Retransmission
//!
//! Selective repeat, no go-back-N. The sender keeps, for the chunks from
//! the first unacknowledged one up to [`MAX_WINDOW`] past it (no ack
//! describes, and no credit allows, a chunk further on), one bit each
//! (acknowledged) and a record of the last transmission (when, and
//! whether it was a resend), in rings indexed by chunk index; a record
//! names its chunk, so a slot's previous chunk is never taken for its
//! current one, and a chunk past the ring is never sent:
//!
//! * **Credit.** Chunk `i` is sent (first time or again) only if
//!   `i < base + window`, with `base` and `window` from the subscriber's
//!   newest ROM_ACK of this version (the one with the highest `base`);
//!   before any ack `base = 0` and `window = config.window`. A `window`
//!   is taken as at least 1 (chunk `base` may always be in flight, so a
//!   zero window cannot stall the transfer for good) and at most
//!   [`MAX_WINDOW`] (what an ack bitmap can describe).
//! * **Holes.** Every ack is merged (`base` and bitmap) into the sender's
//!   bits. An unacknowledged chunk below the highest acknowledged one is a
//!   hole, resent once its last transmission is at least the *reorder
//!   delay* old: 9/8 of the smoothed round-trip time (QUIC's time
//!   threshold; the sample is the most recently sent chunk an ack newly
//!   covers, unless it was sent more than once), at most
//!   `retransmit_after / 4`, which is also the value before the first
//!   sample. The delay lets a merely reordered chunk arrive, and since a
//!   resend restarts the age, a hole is resent at most once per reorder
//!   delay however many acks reveal it. Holes still too young when an ack
//!   reveals them arm a hole timer, so their repair does not wait for
//!   another ack (after a window's burst there may be none). A scan covers
//!   the unacknowledged span, at most [`MAX_WINDOW`] chunks, a word of
//!   bits at a time.
//! * **Tail loss.** When no ack has acknowledged anything new for
//!   `retransmit_after`, the highest unacknowledged chunk below the send
//!   frontier (and within the credit) sent at least `retransmit_after`
//!   ago is resent as a probe (TCP's tail loss probe), and the timer
//!   re-arms. The subscriber acknowledges whatever arrives, new or
//!   duplicate, so the probe's ack shows what is really missing and the
//!   hole rule repairs it; resending every outstanding chunk instead
//!   would send a window twice whenever the one ack of a burst is lost.
//!   After [`MAX_SILENT_ROUNDS`] such rounds in a row the subscriber is
//!   taken to have lost interest (it refused the size, or is gone) and the
//!   transfer is given up; its next ROM_REQUEST starts a new one.
//! * **Resends first.** Queued resends go out before new chunks.
//! * **Completion.** An ack with `base` equal to the chunk count ends the
//!   transfer; so does a ROM_REQUEST saying the subscriber holds the
//!   version (the final ack was lost).
//! * **Restart.** A subscriber's acknowledgements only grow while it keeps
//!   its assembly, so the first chunk missing from all its acks together
//!   is the `base` of its newest ack (the highest `base` seen), however
//!   the acks were reordered. If the acks add up to more than that, the
//!   subscriber has thrown away what it acknowledged (a hash failure, or
//!   [`RomReceiver::reset`] mid-transfer): the transfer restarts from
//!   chunk 0.
//!
//! The subscriber acknowledges after `ack_every` new chunks, `ack_delay`
//! after the first unacknowledged one (or duplicate), and at once on
//! completion and when a chunk fills a gap below the highest one received
//! (most likely a resend the publisher is waiting on, so its ack should
//! not wait `ack_delay` and outlast the reorder delay). It answers a chunk
//! of the version it already completed with a complete ack, and re-sends
//! its ROM_REQUEST when no new chunk arrived for `retransmit_after`
//! (doubling up to `announce_interval` while nothing changes).
//!
//! Memory per transfer: the content (shared by all sessions through the
//! [`Arc`]), plus on the sender state bounded by the window, not by the
//! module size: with `r` the smaller of the chunk count and
//! [`MAX_WINDOW`], 16 bytes and 1 bit per chunk of the ring and a resend
//! queue of at most `r` chunks: below `24.125 r + 24` bytes in all, about
//! 193 KiB per session at most ([`RomSender::state_bytes`]), however
//! large the module a subscriber asks for on however many sessions. On
//! the subscriber: the assembly buffer and 1 bit per chunk. Work per frame
//! is bounded by [`MAX_WINDOW`], never by the module size (hashing the
//! content once on completion aside).
//!
//! # Driving
//!
//! Publisher: [`RomSender::new`] per subscriber session with the module's
//! current [`RomVersion`]; [`RomSender::update`] on every change; feed
//! ROM_REQUEST and ROM_ACK frames to [`RomSender::handle_request`] /
//! [`RomSender::handle_ack`]; after every input and at
//! [`RomSender::poll_timeout`], send [`RomSender::poll_transmit`] until
//! `None` (it returns at most one frame per call and stops when the
//! subscriber's credit is used up).
//! Subscriber: [`RomReceiver::new`]; feed ROM_ANNOUNCE and ROM_CHUNK frames
//! to [`RomReceiver::handle_announce`] / [`RomReceiver::handle_chunk`];
//! after every input and at [`RomReceiver::poll_timeout`], send
//! [`RomReceiver::poll_transmit`] until `None`, then take
//! [`RomReceiver::poll_event`]. Call [`RomReceiver::reset`] when the
//! session is re-opened, and feed it no frames of the old session after
//! that (the session layer tells them apart by channel).

use core::ops::Range;
use core::time::Duration;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::time::Instant;
use crate::wire::frame::MAX_BODY_LEN;
use crate::wire::rom::{
    ChunkFixed, RomAck, RomAnnounce, RomChunk, RomRequest, RomState, HASH_LEN, MAX_ROM_SIZE,
};
use crate::wire::rpc::MAX_BITMAP_LEN;
use crate::wire::{Fixed, Message};

/// The largest credit in chunks: what a ROM_ACK bitmap of
/// [`MAX_BITMAP_LEN`] bytes can describe.
pub const MAX_WINDOW: u32 = 8192;
const _: () = assert!(MAX_WINDOW as usize == 8 * MAX_BITMAP_LEN);

/// The largest chunk a sender uses: a ROM_CHUNK body (fixed part plus
/// data) must fit the 16-bit body length, so this is a little below the
/// 65535 an announce may name.
pub const MAX_CHUNK_PAYLOAD: u32 = 65511;
const _: () = assert!(MAX_CHUNK_PAYLOAD as usize + ChunkFixed::LEN == MAX_BODY_LEN);

/// Tail-loss timer rounds in a row without any acknowledgement progress
/// after which a sender gives a transfer up.
pub const MAX_SILENT_ROUNDS: u32 = 8;

/// The shortest interval the engines accept, so that a zero in the
/// configuration cannot make a timer fire forever at the same instant.
const MIN_INTERVAL: Duration = Duration::from_micros(1);

/// Timing and limits of the ROM engine. Values outside the documented
/// ranges are clamped into them when an engine is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RomConfig {
    /// Payload bytes per ROM_CHUNK the publisher sends (and announces), 1
    /// to [`MAX_CHUNK_PAYLOAD`]. A subscriber follows whatever the announce
    /// names.
    pub chunk_size: u32,
    /// Credit in chunks a subscriber grants, 1 to [`MAX_WINDOW`].
    pub window: u32,
    /// A subscriber acknowledges after this many new chunks (at least 1) ...
    pub ack_every: u32,
    /// ... or at most this long after an unacknowledged chunk arrived.
    pub ack_delay: Duration,
    /// After this long without acknowledgement progress the publisher
    /// sends a tail-loss probe (a quarter of it caps the reorder delay); a
    /// subscriber re-sends its ROM_REQUEST when nothing new arrived for
    /// this long.
    pub retransmit_after: Duration,
    /// The publisher re-announces the current version this often.
    pub announce_interval: Duration,
    /// The largest content a subscriber accepts, at most [`MAX_ROM_SIZE`].
    pub max_size: u64,
}

impl Default for RomConfig {
    fn default() -> Self {
        RomConfig {
            chunk_size: 1400,
            window: 128,
            ack_every: 32,
            ack_delay: Duration::from_millis(1),
            retransmit_after: Duration::from_millis(20),
            announce_interval: Duration::from_millis(250),
            max_size: 256 * 1024 * 1024,
        }
    }
}

impl RomConfig {
    /// The configuration with every value clamped into its range.
    fn normalized(self) -> Self {
        RomConfig {
            chunk_size: self.chunk_size.clamp(1, MAX_CHUNK_PAYLOAD),
            window: self.window.clamp(1, MAX_WINDOW),
            ack_every: self.ack_every.max(1),
            ack_delay: self.ack_delay,
            retransmit_after: self.retransmit_after.max(MIN_INTERVAL),
            announce_interval: self.announce_interval.max(MIN_INTERVAL),
            max_size: self.max_size.min(MAX_ROM_SIZE),
        }
    }
}

/// One version of a module's content, shared ([`Arc`]) by all sessions;
/// immutable once built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RomVersion {
    /// Version number, increasing with every change; never 0.
    pub version: u64,
    /// Valid content (possibly empty) or removed.
    pub state: RomState,
    /// The content; empty when removed.
    pub data: Vec<u8>,
    /// BLAKE3-256 of `data`.
    pub hash: [u8; HASH_LEN],
}

impl RomVersion {
    /// Valid content; computes its BLAKE3 hash.
    pub fn valid(version: u64, data: Vec<u8>) -> Self {
        let hash = content_hash(&data);
        RomVersion {
            version,
            state: RomState::Valid,
            data,
            hash,
        }
    }

    /// The module removed: no content, the hash of the empty string.
    pub fn removed(version: u64) -> Self {
        RomVersion {
            version,
            state: RomState::Removed,
            data: Vec::new(),
            hash: content_hash(&[]),
        }
    }

    /// The content length on the wire: 0 when removed, whatever `data` holds.
    fn size(&self) -> u64 {
        match self.state {
            RomState::Removed => 0,
            RomState::Valid => u64::try_from(self.data.len()).unwrap_or(u64::MAX),
        }
    }

    /// Whether this is exactly what `announce` describes.
    fn matches(&self, announce: &RomAnnounce) -> bool {
        self.version == announce.version
            && self.state == announce.state
            && self.size() == announce.size
            && self.hash == announce.hash
    }
}

/// Counters of a [`RomSender`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RomSenderStats {
    /// ROM_CHUNK frames sent, resends included.
    pub chunks_sent: u64,
    /// Of those, resends.
    pub chunks_resent: u64,
    /// ROM_ANNOUNCE frames sent.
    pub announces_sent: u64,
    /// Transfers started (restarts not included).
    pub transfers_started: u64,
    /// Transfers the subscriber confirmed complete.
    pub transfers_completed: u64,
    /// Unfinished transfers dropped because the module changed.
    pub transfers_abandoned: u64,
    /// Transfers given up after [`MAX_SILENT_ROUNDS`] without progress.
    pub transfers_given_up: u64,
    /// Transfers restarted from chunk 0 because the subscriber lost what
    /// it had acknowledged.
    pub transfers_restarted: u64,
    /// Requests and acks ignored: another module, another version, no
    /// transfer running, or a `base` beyond the chunk count.
    pub dropped: u64,
}

/// The publisher side of one subscriber session.
#[derive(Debug)]
pub struct RomSender {
    config: RomConfig,
    module: u32,
    current: Arc<RomVersion>,
    /// The next announce goes out at this time (now, after a change or a request).
    next_announce: Instant,
    transfer: Option<Transfer>,
    /// Smoothed round-trip time from chunk to ack, kept across transfers.
    srtt: Option<Duration>,
    stats: RomSenderStats,
}

/// The sender's state of one transfer of the current version.
///
/// Everything per chunk covers only the chunks from the first
/// unacknowledged one (`acked.below()`) up to [`MAX_WINDOW`] past it, in
/// rings indexed by chunk index: acks describe no chunk further on (a
/// bitmap covers [`MAX_WINDOW`] chunks past its `base`, and the newest
/// `base` is the first unacknowledged chunk), nor does the credit let one
/// be sent. So the state is bounded by the window, never by the module
/// size (see [`RomSender::state_bytes`]).
#[derive(Debug)]
struct Transfer {
    count: u32,
    /// Chunks the subscriber acknowledged; `acked.below()` is the first
    /// one it has not.
    acked: AckedChunks,
    /// One past the highest chunk acknowledged: unacknowledged chunks
    /// below it are holes.
    acked_end: u32,
    /// Chunks below this have been sent at least once (or were
    /// acknowledged before they were).
    frontier: u32,
    /// The last transmission of each chunk in flight.
    sent: SendLog,
    /// Chunks to send again, in the order their loss became known; only
    /// unacknowledged ones once an ack is merged, so at most one entry per
    /// chunk of the ring.
    resend: VecDeque<u32>,
    /// Credit from the newest ack: chunks below `credit_base + window` may be in flight.
    credit_base: u32,
    window: u32,
    /// The tail-loss timer.
    retransmit_at: Instant,
    /// Tail-loss rounds since the last acknowledgement progress.
    silent_rounds: u32,
    /// When the next known hole becomes old enough to resend.
    hole_at: Option<Instant>,
}

impl Transfer {
    fn new(count: u32, config: &RomConfig, now: Instant) -> Self {
        Transfer {
            count,
            acked: AckedChunks::new(count),
            acked_end: 0,
            frontier: 0,
            sent: SendLog::new(count),
            resend: VecDeque::new(),
            credit_base: 0,
            window: config.window,
            retransmit_at: now + config.retransmit_after,
            silent_rounds: 0,
            hole_at: None,
        }
    }

    /// One past the highest chunk index the credit allows in flight.
    fn limit(&self) -> u64 {
        u64::from(self.credit_base) + u64::from(self.window)
    }

    /// One past the highest chunk index that may be sent: the credit, and
    /// never beyond the send log's ring from the first unacknowledged
    /// chunk (the credit never reaches that far, since the newest `base`
    /// is the first unacknowledged chunk and the window is at most
    /// [`MAX_WINDOW`]; this keeps a send from overwriting the record of
    /// a chunk still in flight whatever the acks said).
    fn send_limit(&self) -> u64 {
        let ring_end = u64::from(self.acked.below()) + self.sent.ring_len();
        self.limit().min(ring_end)
    }

    /// Heap bytes held.
    fn state_bytes(&self) -> usize {
        self.acked.heap_bytes() + self.sent.heap_bytes() + self.resend.capacity() * size_of::<u32>()
    }

    /// Queues for resending every unacknowledged, not yet queued chunk
    /// from the first unacknowledged one up to `end` (and the frontier)
    /// last sent at least `age` ago. Returns when the youngest of the
    /// others is that old. Work: the span (at most [`MAX_WINDOW`] chunks),
    /// a word of bits at a time, plus one step per unacknowledged chunk.
    fn queue_older_than(&mut self, now: Instant, end: u32, age: Duration) -> Option<Instant> {
        let end = end.min(self.frontier);
        let mut youngest_due: Option<Instant> = None;
        let mut index = self.acked.next_zero(self.acked.below());
        while index < end {
            // Every unacknowledged chunk below the frontier was sent, and
            // its record is still in the ring: see `send_limit`.
            if let Some(sent) = self.sent.get_mut(index) {
                if !sent.queued {
                    let due = sent.at + age;
                    if due <= now {
                        sent.queued = true;
                        self.resend.push_back(index);
                    } else {
                        youngest_due = Some(youngest_due.map_or(due, |at| at.min(due)));
                    }
                }
            }
            index = self.acked.next_zero(index + 1);
        }
        youngest_due
    }

    /// Queues the tail-loss probe: the highest unacknowledged chunk within
    /// the credit last sent at least `age` ago. Its acknowledgement shows
    /// what else is missing; resending every outstanding chunk instead
    /// would send a window twice whenever the ack of a burst is lost.
    fn queue_probe(&mut self, now: Instant, age: Duration) {
        let end = u32::try_from(self.limit())
            .unwrap_or(u32::MAX)
            .min(self.frontier);
        let mut probe = None;
        let mut index = self.acked.next_zero(self.acked.below());
        while index < end {
            let sent_at = self.sent.get(index).map(|sent| sent.at);
            if sent_at.is_some_and(|at| at + age <= now) {
                probe = Some(index);
            }
            index = self.acked.next_zero(index + 1);
        }
        if let Some(sent) = probe.and_then(|index| self.sent.get_mut(index)) {
            if !sent.queued {
                sent.queued = true;
                self.resend.push_back(sent.chunk);
            }
        }
    }

    /// The chunk to send now, if the credit allows one, and whether it is
    /// a resend.
    fn next_chunk(&mut self, now: Instant) -> Option<(u32, bool)> {
        let limit = self.send_limit();
        while let Some(&index) = self.resend.front() {
            if self.acked.get(index) {
                self.resend.pop_front();
                if let Some(sent) = self.sent.get_mut(index) {
                    sent.queued = false;
                }
                continue;
            }
            if u64::from(index) >= limit {
                // Everything after it is further right: wait for credit.
                return None;
            }
            self.resend.pop_front();
            self.sent.record(index, now, true);
            return Some((index, true));
        }
        // Skip chunks acknowledged before they were sent (only a confused
        // or hostile subscriber does that).
        while self.frontier < self.count && self.acked.get(self.frontier) {
            self.frontier += 1;
        }
        if self.frontier < self.count && u64::from(self.frontier) < limit {
            let index = self.frontier;
            self.frontier += 1;
            self.sent.record(index, now, false);
            return Some((index, false));
        }
        None
    }
}

impl RomSender {
    /// The publisher side of a new session for `module`, whose content is
    /// `current`; the first [`RomSender::poll_transmit`] announces it.
    ///
    /// # Panics
    /// If `current` has version 0 or content longer than [`MAX_ROM_SIZE`]
    /// (neither can be announced).
    pub fn new(config: RomConfig, module: u32, current: Arc<RomVersion>, now: Instant) -> Self {
        check_publishable(&current);
        RomSender {
            config: config.normalized(),
            module,
            current,
            next_announce: now,
            transfer: None,
            srtt: None,
            stats: RomSenderStats::default(),
        }
    }

    /// The module changed to `current` (a greater version than before;
    /// subscribers ignore a lower one): it is announced at once, and an
    /// unfinished transfer of the older version is abandoned, since only
    /// the newest version is ever sent. The subscriber's ROM_REQUEST for
    /// the new version starts its transfer.
    ///
    /// # Panics
    /// As [`RomSender::new`].
    pub fn update(&mut self, now: Instant, current: Arc<RomVersion>) {
        check_publishable(&current);
        self.current = current;
        self.next_announce = now;
        if self.transfer.take().is_some() {
            self.stats.transfers_abandoned += 1;
        }
    }

    /// The module's current version.
    pub fn current(&self) -> &Arc<RomVersion> {
        &self.current
    }

    /// Takes a ROM_REQUEST into account. Every request of this module (or
    /// of module 0, "the session's module") is answered with an announce,
    /// since the subscriber may have missed the last one. A request for
    /// another version than the current one starts a transfer unless one
    /// is running; a request saying the subscriber holds the current
    /// version ends a running transfer (its final ack was lost).
    pub fn handle_request(&mut self, now: Instant, request: &RomRequest) {
        if request.module != 0 && request.module != self.module {
            self.stats.dropped += 1;
            return;
        }
        self.next_announce = self.next_announce.min(now);
        if request.have_version == self.current.version {
            if self.transfer.take().is_some() {
                self.stats.transfers_completed += 1;
            }
            return;
        }
        let count = self.chunk_count();
        if count > 0 && self.transfer.is_none() {
            self.transfer = Some(Transfer::new(count, &self.config, now));
            self.stats.transfers_started += 1;
        }
    }

    /// Takes a ROM_ACK into account: credit, completion, RTT, and the
    /// chunks it shows lost (see the module documentation).
    pub fn handle_ack(&mut self, now: Instant, ack: &RomAck<'_>) {
        let version = self.current.version;
        let Some(transfer) = self.transfer.as_mut() else {
            self.stats.dropped += 1;
            return;
        };
        if ack.module != self.module || ack.version != version || ack.base > transfer.count {
            self.stats.dropped += 1;
            return;
        }
        if ack.base == transfer.count {
            self.transfer = None;
            self.stats.transfers_completed += 1;
            return;
        }
        // The highest chunk this ack acknowledges for the first time.
        let mut newest = None;
        // Cumulative part: every chunk below `base` has arrived.
        if ack.base > transfer.acked.below() {
            newest = transfer.acked.last_zero_below(ack.base);
            transfer.acked.advance(ack.base);
        }
        // Selective part: bit i stands for chunk base + i.
        for (byte_index, &byte) in ack.bitmap.iter().take(MAX_BITMAP_LEN).enumerate() {
            if byte == 0 {
                continue;
            }
            for bit in 0..8u32 {
                if byte & (1 << bit) == 0 {
                    continue;
                }
                let index = u64::from(ack.base) + 8 * byte_index as u64 + u64::from(bit);
                let Ok(index) = u32::try_from(index) else {
                    continue;
                };
                if transfer.acked.set(index) {
                    newest = Some(index);
                }
            }
        }
        let first_missing = transfer.acked.next_zero(transfer.acked.below());
        transfer.acked.advance(first_missing);
        if ack.base >= transfer.credit_base {
            transfer.credit_base = ack.base;
            transfer.window = ack.window.clamp(1, MAX_WINDOW);
        }
        let Some(newest) = newest else {
            return;
        };
        transfer.acked_end = transfer.acked_end.max(newest + 1);
        transfer.silent_rounds = 0;
        transfer.retransmit_at = now + self.config.retransmit_after;
        if transfer.acked.below() > transfer.credit_base {
            // The acks add up to more than any one of them says: the
            // subscriber threw away what it had acknowledged. Start over.
            *transfer = Transfer::new(transfer.count, &self.config, now);
            self.stats.transfers_restarted += 1;
            return;
        }
        // The most recently sent chunk acknowledged gives an RTT sample,
        // unless it was sent more than once (whose ack would it be?). A
        // chunk newly acknowledged was in flight, so its record is in the
        // ring if it was sent at all.
        if let Some(sent) = transfer.sent.get(newest).filter(|sent| !sent.resent) {
            let sample = now.saturating_since(sent.at);
            self.srtt = Some(self.srtt.map_or(sample, |srtt| (srtt * 7 + sample) / 8));
        }
        // Resends this ack made unnecessary would only be skipped later;
        // dropping them now keeps the queue within the ring.
        let acked = &transfer.acked;
        transfer.resend.retain(|&index| !acked.get(index));
        let delay = reorder_delay(self.srtt, self.config.retransmit_after);
        let end = transfer.acked_end;
        transfer.hole_at = transfer.queue_older_than(now, end, delay);
    }

    /// The next frame body to send, if any: a due announce first, then a
    /// resend, then the next new chunk within the credit.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message<'_>> {
        if now >= self.next_announce {
            self.next_announce = now + self.config.announce_interval;
            self.stats.announces_sent += 1;
            return Some(Message::RomAnnounce(self.announce()));
        }
        self.fire_timers(now);
        let delay = reorder_delay(self.srtt, self.config.retransmit_after);
        let transfer = self.transfer.as_mut()?;
        let (index, resend) = transfer.next_chunk(now)?;
        self.stats.chunks_sent += 1;
        if resend {
            self.stats.chunks_resent += 1;
            // Should the resend be lost too, its hole is found again.
            let again = now + delay;
            transfer.hole_at = Some(transfer.hole_at.map_or(again, |at| at.min(again)));
        }
        let chunk_size = self.config.chunk_size;
        let range = chunk_range(self.current.size(), chunk_size, index);
        if !resend {
            // A large module is mostly not in the cache: fetch what comes
            // a few chunks later while this one goes through the kernel.
            let later = index.saturating_add(PREFETCH_AHEAD);
            let later = chunk_range(self.current.size(), chunk_size, later);
            if let Some(bytes) = self.current.data.get(in_memory(&later)) {
                crate::hint::prefetch(bytes);
            }
        }
        let data = self.current.data.get(in_memory(&range))?;
        Some(Message::RomChunk(RomChunk {
            module: self.module,
            version: self.current.version,
            offset: range.start,
            data,
        }))
    }

    /// The hole timer and the tail-loss timer: see the module documentation.
    fn fire_timers(&mut self, now: Instant) {
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        if transfer.hole_at.is_some_and(|at| now >= at) {
            let delay = reorder_delay(self.srtt, self.config.retransmit_after);
            let end = transfer.acked_end;
            transfer.hole_at = transfer.queue_older_than(now, end, delay);
        }
        if now < transfer.retransmit_at {
            return;
        }
        transfer.silent_rounds += 1;
        if transfer.silent_rounds > MAX_SILENT_ROUNDS {
            self.transfer = None;
            self.stats.transfers_given_up += 1;
            return;
        }
        let after = self.config.retransmit_after;
        transfer.retransmit_at = now + after;
        transfer.queue_probe(now, after);
    }

    /// When [`RomSender::poll_transmit`] next has something to send without
    /// new input: the periodic announce, the hole timer or the tail-loss
    /// timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = self.next_announce;
        if let Some(transfer) = &self.transfer {
            at = at.min(transfer.retransmit_at);
            if let Some(hole_at) = transfer.hole_at {
                at = at.min(hole_at);
            }
        }
        Some(at)
    }

    /// Whether no transfer is in progress.
    pub fn is_idle(&self) -> bool {
        self.transfer.is_none()
    }

    /// The memory (heap bytes) this sender holds for its transfer besides
    /// the shared content; 0 when idle. It depends on the window, not on
    /// the module size: with `r` the smaller of the chunk count and
    /// [`MAX_WINDOW`], `16 r` bytes of send records, `8 ⌈r / 64⌉` bytes of
    /// acknowledgement bits, and 4 bytes per slot of the resend queue,
    /// which holds at most `r` chunks in a buffer that grows by doubling
    /// (so fewer than `2 r + 4` slots): below `24.125 r + 24` bytes, about
    /// 193 KiB for `r = MAX_WINDOW` (161 KiB with the queue full, 129 KiB
    /// without resends).
    pub fn state_bytes(&self) -> usize {
        self.transfer.as_ref().map_or(0, Transfer::state_bytes)
    }

    /// Counters.
    pub fn stats(&self) -> RomSenderStats {
        self.stats
    }

    fn announce(&self) -> RomAnnounce {
        RomAnnounce {
            module: self.module,
            state: self.current.state,
            version: self.current.version,
            size: self.current.size(),
            chunk_size: self.config.chunk_size,
            hash: self.current.hash,
        }
    }

    fn chunk_count(&self) -> u32 {
        chunk_count(self.current.size(), self.config.chunk_size)
    }
}

/// A sender's caller may only publish what can be announced.
fn check_publishable(version: &RomVersion) {
    assert!(version.version != 0, "ROM version 0 is reserved");
    assert!(
        version.size() <= MAX_ROM_SIZE,
        "ROM content longer than MAX_ROM_SIZE"
    );
}

/// Counters of a [`RomReceiver`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RomReceiverStats {
    /// New chunks stored into an assembly.
    pub chunks_received: u64,
    /// Chunks already held (of the assembly, or of the completed version).
    pub duplicates: u64,
    /// Chunks refused: a version or module not being assembled, an offset
    /// that is no chunk boundary or past the end, or a wrong length.
    pub dropped_chunks: u64,
    /// Complete assemblies (or empty/removed announces) whose hash did not
    /// match the announce.
    pub hash_failures: u64,
    /// Announced versions larger than `max_size`, refused.
    pub too_large: u64,
    /// Versions that became current.
    pub versions_completed: u64,
    /// Announces ignored: an older version than the one held or assembled,
    /// another module, or fields the format forbids.
    pub ignored_announces: u64,
    /// ROM_REQUEST frames sent.
    pub requests_sent: u64,
    /// ROM_ACK frames sent.
    pub acks_sent: u64,
}

/// The subscriber side of one session.
#[derive(Debug)]
pub struct RomReceiver {
    config: RomConfig,
    /// The publisher's module id, from the last accepted announce.
    module: u32,
    /// The next announce is accepted whatever its version and module (a
    /// fresh session, or one re-opened by [`RomReceiver::reset`]).
    authoritative: bool,
    /// The newest version held, being assembled or refused as too large:
    /// announces of older versions are stale.
    newest: u64,
    current: Option<Arc<RomVersion>>,
    /// The content buffer of a replaced version nobody holds any more,
    /// kept to assemble the next one in: its pages are already mapped, so
    /// a large module is not faulted in afresh for every version.
    spare: Vec<u8>,
    /// Module, version and chunk count of the version completed last, to
    /// answer its chunks with a complete ack.
    completed: Option<(u32, u64, u32)>,
    complete_ack_due: bool,
    assembly: Option<Assembly>,
    request_at: Option<Instant>,
    request_interval: Duration,
    /// The newest current version the application has not taken.
    event: Option<Arc<RomVersion>>,
    bitmap: Vec<u8>,
    stats: RomReceiverStats,
}

/// A version being put together.
#[derive(Debug)]
struct Assembly {
    announce: RomAnnounce,
    data: Vec<u8>,
    count: u32,
    received: ChunkBits,
    /// The first missing chunk.
    base: u32,
    /// One past the highest chunk received.
    end: u32,
    /// New chunks since the last ack.
    unacked: u32,
    ack_at: Option<Instant>,
    /// The hash of the contiguous prefix received so far, advanced in
    /// steps of [`HASH_STEP`] bytes while chunks arrive, so that
    /// completing a large version leaves only the tail to hash.
    hasher: blake3::Hasher,
    /// Bytes of `data` in `hasher`.
    hashed: usize,
}

/// Buffers of replaced versions up to this size are kept for the next.
const SPARE_MAX: usize = 64 * 1024 * 1024;

/// The sender prefetches the chunk this many places after the one it
/// sends. Measured on 16 MiB updates over veth (`xrelay-bench run --only
/// rom_update_16MiB`): without it the copy of each chunk out of a module
/// that is not in the cache took a third of the publisher's time; 1, 2, 4
/// and 8 ahead all gave 1.28-1.35 GB/s against 1.14-1.18 without.
const PREFETCH_AHEAD: u32 = 2;

/// The prefix hash advances in steps this large (large enough for
/// BLAKE3's SIMD, small enough to spread the work over the transfer).
const HASH_STEP: usize = 64 * 1024;

impl Assembly {
    /// The index of `chunk` if it is exactly a chunk of this version.
    fn index_of(&self, chunk: &RomChunk<'_>) -> Option<u32> {
        let chunk_size = u64::from(self.announce.chunk_size);
        if !chunk.offset.is_multiple_of(chunk_size) {
            return None;
        }
        let index = u32::try_from(chunk.offset / chunk_size).ok()?;
        if index >= self.count {
            return None;
        }
        let range = chunk_range(self.announce.size, self.announce.chunk_size, index);
        let len = u64::try_from(chunk.data.len()).ok()?;
        (len == range.end - range.start).then_some(index)
    }

    /// Forgets every chunk (after a hash failure).
    fn clear(&mut self) {
        self.hasher.reset();
        self.hashed = 0;
        self.received.clear();
        self.base = 0;
        self.end = 0;
        self.unacked = 0;
        self.ack_at = None;
    }

    /// The selective acknowledgement: bit `i` for chunk `base + i`, up to
    /// the highest chunk received, at most [`MAX_BITMAP_LEN`] bytes, no
    /// trailing zero bytes.
    fn fill_bitmap(&self, bitmap: &mut Vec<u8>) {
        bitmap.clear();
        let span = self.end.saturating_sub(self.base);
        let len = (span.div_ceil(8) as usize).min(MAX_BITMAP_LEN);
        let mut start = self.base;
        for _ in 0..len {
            bitmap.push(self.received.byte_at(start));
            start = start.saturating_add(8);
        }
        while bitmap.last() == Some(&0) {
            bitmap.pop();
        }
    }
}

impl RomReceiver {
    /// The subscriber side of a new session; the first
    /// [`RomReceiver::poll_transmit`] sends `ROM_REQUEST{module: 0,
    /// have_version: 0}`.
    pub fn new(config: RomConfig, now: Instant) -> Self {
        let config = config.normalized();
        RomReceiver {
            config,
            module: 0,
            authoritative: true,
            newest: 0,
            current: None,
            spare: Vec::new(),
            completed: None,
            complete_ack_due: false,
            assembly: None,
            request_at: Some(now),
            request_interval: config.retransmit_after,
            event: None,
            bitmap: Vec::new(),
            stats: RomReceiverStats::default(),
        }
    }

    /// The session was re-opened (reconnect, publisher restart): keeps the
    /// current content, forgets any assembly, requests again (module 0,
    /// `have_version` the current version), and accepts the next announce
    /// even if its version is lower, since a restarted publisher may count
    /// from 1 again. Content is compared by hash, so a restarted publisher
    /// reusing the held version number with other content is fetched too.
    pub fn reset(&mut self, now: Instant) {
        self.assembly = None;
        self.authoritative = true;
        self.completed = None;
        self.complete_ack_due = false;
        self.request_at = Some(now);
        self.request_interval = self.config.retransmit_after;
    }

    /// Takes a ROM_ANNOUNCE into account. A fresh (or reset) session
    /// accepts the first; afterwards only greater versions than the one
    /// held or assembled. Removed and empty content become current at
    /// once; other content is assembled into a fresh buffer, dropping any
    /// older assembly, and requested.
    pub fn handle_announce(&mut self, now: Instant, announce: &RomAnnounce) {
        if !well_formed(announce) {
            self.stats.ignored_announces += 1;
            return;
        }
        if self.authoritative {
            if self.current.as_ref().is_some_and(|c| c.matches(announce)) {
                // The publisher has exactly what is held: nothing to fetch.
                self.authoritative = false;
                self.module = announce.module;
                self.newest = announce.version;
                let count = chunk_count(announce.size, announce.chunk_size);
                self.completed = Some((announce.module, announce.version, count));
                self.request_at = None;
                return;
            }
        } else if announce.module != self.module || announce.version < self.newest {
            self.stats.ignored_announces += 1;
            return;
        } else if announce.version == self.newest {
            // The periodic repeat of what is held or assembled.
            return;
        }
        self.adopt(now, announce);
    }

    /// Follows an accepted announce.
    fn adopt(&mut self, now: Instant, announce: &RomAnnounce) {
        if announce.state == RomState::Removed || announce.size == 0 {
            let version = match announce.state {
                RomState::Removed => RomVersion::removed(announce.version),
                RomState::Valid => RomVersion::valid(announce.version, Vec::new()),
            };
            if version.hash != announce.hash {
                self.stats.hash_failures += 1;
                return;
            }
            self.authoritative = false;
            self.module = announce.module;
            self.become_current(Arc::new(version), 0);
            return;
        }
        self.authoritative = false;
        self.module = announce.module;
        self.newest = announce.version;
        // Only the newest version matters: an older assembly is obsolete
        // (the publisher abandoned it), whether or not this one fits.
        self.assembly = None;
        let len = usize::try_from(announce.size)
            .ok()
            .filter(|_| announce.size <= self.config.max_size);
        let Some(len) = len else {
            self.stats.too_large += 1;
            self.request_at = None;
            return;
        };
        let count = chunk_count(announce.size, announce.chunk_size);
        // Reuse the spare buffer when it is large enough: every byte is
        // rewritten by the chunks before the version completes.
        let data = if len > 0 && self.spare.capacity() >= len {
            let mut data = std::mem::take(&mut self.spare);
            data.resize(len, 0);
            data
        } else {
            vec![0; len]
        };
        self.assembly = Some(Assembly {
            announce: *announce,
            data,
            count,
            received: ChunkBits::new(count),
            base: 0,
            end: 0,
            unacked: 0,
            ack_at: None,
            hasher: blake3::Hasher::new(),
            hashed: 0,
        });
        self.request_at = Some(now);
        self.request_interval = self.config.retransmit_after;
    }

    fn become_current(&mut self, version: Arc<RomVersion>, count: u32) {
        self.newest = version.version;
        self.completed = Some((self.module, version.version, count));
        self.assembly = None;
        self.request_at = None;
        if let Some(old) = self.current.replace(Arc::clone(&version)) {
            if let Ok(old) = Arc::try_unwrap(old) {
                if old.data.capacity() <= SPARE_MAX {
                    self.spare = old.data;
                }
            }
        }
        self.event = Some(version);
        self.stats.versions_completed += 1;
    }

    /// Takes a ROM_CHUNK into account: stored if it is exactly a chunk of
    /// the version being assembled, answered with a complete ack if it
    /// belongs to the version completed last, dropped otherwise.
    pub fn handle_chunk(&mut self, now: Instant, chunk: &RomChunk<'_>) {
        let config = self.config;
        if let Some(assembly) = self.assembly.as_mut() {
            let announce = &assembly.announce;
            if chunk.module == announce.module && chunk.version == announce.version {
                let Some(index) = assembly.index_of(chunk) else {
                    self.stats.dropped_chunks += 1;
                    return;
                };
                let range = chunk_range(announce.size, announce.chunk_size, index);
                // index_of checked the length against this very range.
                let Some(slot) = assembly.data.get_mut(in_memory(&range)) else {
                    self.stats.dropped_chunks += 1;
                    return;
                };
                if !assembly.received.set(index) {
                    self.stats.duplicates += 1;
                    // The publisher seems not to know: tell it, unhurried.
                    assembly.ack_at.get_or_insert(now + config.ack_delay);
                    return;
                }
                slot.copy_from_slice(chunk.data);
                self.stats.chunks_received += 1;
                // A chunk below the highest one received fills a gap: most
                // likely a resend the publisher is waiting on.
                let fills_gap = index < assembly.end;
                assembly.end = assembly.end.max(index + 1);
                if index == assembly.base {
                    assembly.base = assembly.received.next_zero(index);
                    // Hash the contiguous prefix as it grows.
                    let prefix =
                        chunk_range(announce.size, announce.chunk_size, assembly.base).start;
                    let prefix = usize::try_from(prefix).unwrap_or(usize::MAX);
                    if prefix >= assembly.hashed + HASH_STEP {
                        if let Some(bytes) = assembly.data.get(assembly.hashed..prefix) {
                            assembly.hasher.update(bytes);
                            assembly.hashed = prefix;
                        }
                    }
                }
                assembly.unacked += 1;
                self.request_at = Some(now + config.retransmit_after);
                self.request_interval = config.retransmit_after;
                if assembly.received.is_full() {
                    self.finish(now);
                } else if fills_gap || assembly.unacked >= config.ack_every {
                    assembly.ack_at = Some(now);
                } else {
                    assembly.ack_at.get_or_insert(now + config.ack_delay);
                }
                return;
            }
        }
        if self
            .completed
            .is_some_and(|(module, version, _)| chunk.module == module && chunk.version == version)
        {
            self.stats.duplicates += 1;
            self.complete_ack_due = true;
            return;
        }
        self.stats.dropped_chunks += 1;
    }

    /// Every chunk is in: verify and publish, or start over.
    fn finish(&mut self, now: Instant) {
        let Some(mut assembly) = self.assembly.take() else {
            return;
        };
        let rest = assembly.data.get(assembly.hashed..).unwrap_or_default();
        let hash: [u8; HASH_LEN] = assembly.hasher.update(rest).finalize().into();
        if hash != assembly.announce.hash {
            self.stats.hash_failures += 1;
            // The buffer need not be zeroed again: the chunks partition
            // the content, so every byte is rewritten before it completes.
            assembly.clear();
            self.assembly = Some(assembly);
            self.request_at = Some(now);
            self.request_interval = self.config.retransmit_after;
            return;
        }
        let version = RomVersion {
            version: assembly.announce.version,
            state: RomState::Valid,
            data: assembly.data,
            hash,
        };
        self.become_current(Arc::new(version), assembly.count);
        self.complete_ack_due = true;
    }

    /// The next frame body to send, if any: a complete ack, a due ack of
    /// the assembly, then a due ROM_REQUEST.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message<'_>> {
        let window = self.config.window;
        if std::mem::take(&mut self.complete_ack_due) {
            if let Some((module, version, count)) = self.completed {
                self.stats.acks_sent += 1;
                self.bitmap.clear();
                return Some(Message::RomAck(RomAck {
                    module,
                    version,
                    base: count,
                    window,
                    bitmap: &self.bitmap,
                }));
            }
        }
        if let Some(assembly) = self.assembly.as_mut() {
            if assembly.ack_at.is_some_and(|at| now >= at) {
                assembly.ack_at = None;
                assembly.unacked = 0;
                assembly.fill_bitmap(&mut self.bitmap);
                self.stats.acks_sent += 1;
                return Some(Message::RomAck(RomAck {
                    module: assembly.announce.module,
                    version: assembly.announce.version,
                    base: assembly.base,
                    window,
                    bitmap: &self.bitmap,
                }));
            }
        }
        if self.request_at.is_some_and(|at| now >= at) {
            self.request_at = Some(now + self.request_interval);
            let cap = self
                .config
                .announce_interval
                .max(self.config.retransmit_after);
            self.request_interval = (self.request_interval * 2).min(cap);
            self.stats.requests_sent += 1;
            return Some(Message::RomRequest(self.request()));
        }
        None
    }

    /// The ROM_REQUEST to send: module 0 until an announce named it,
    /// `have_version` the held version (0 when the version being assembled
    /// has the same number, from a restarted publisher).
    fn request(&self) -> RomRequest {
        let held = self.current.as_ref().map_or(0, |c| c.version);
        let assembling = self.assembly.as_ref().map(|a| a.announce.version);
        RomRequest {
            module: if self.authoritative { 0 } else { self.module },
            have_version: if assembling == Some(held) { 0 } else { held },
        }
    }

    /// The newest version that became current since the last call, if
    /// any. Each version is returned at most once, and never an older one
    /// after a newer one (a reset aside); a version superseded before the
    /// application took it is skipped, as Genode's ROM sessions do.
    pub fn poll_event(&mut self) -> Option<Arc<RomVersion>> {
        self.event.take()
    }

    /// The current version: complete and verified, never partial.
    pub fn current(&self) -> Option<&Arc<RomVersion>> {
        self.current.as_ref()
    }

    /// When [`RomReceiver::poll_transmit`] next has something to send
    /// without new input: a delayed ack or a repeated request.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ack = self.assembly.as_ref().and_then(|a| a.ack_at);
        match (ack, self.request_at) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RomReceiverStats {
        self.stats
    }
}

/// Whether an announce holds only values the format allows (the parser
/// checks them too; the engine does not rely on it).
fn well_formed(announce: &RomAnnounce) -> bool {
    announce.version != 0
        && announce.size <= MAX_ROM_SIZE
        && (1..=u32::from(u16::MAX)).contains(&announce.chunk_size)
        && (announce.state == RomState::Valid || announce.size == 0)
}

/// The number of chunks of `chunk_size` bytes content of `size` bytes
/// needs (0 when empty). `size` is at most [`MAX_ROM_SIZE`], so this fits.
fn chunk_count(size: u64, chunk_size: u32) -> u32 {
    u32::try_from(size.div_ceil(u64::from(chunk_size.max(1)))).unwrap_or(u32::MAX)
}

/// The bytes chunk `index` covers: `index * chunk_size` up to the next
/// chunk or the end. The caller checks `index` against the chunk count.
fn chunk_range(size: u64, chunk_size: u32, index: u32) -> Range<u64> {
    let chunk_size = u64::from(chunk_size.max(1));
    let start = (u64::from(index) * chunk_size).min(size);
    start..(start + chunk_size).min(size)
}

/// A chunk's byte range as indices into content held in memory (whose
/// length is a `usize`, so a range within it fits; one that does not
/// becomes an out-of-bounds range that `get` refuses).
fn in_memory(range: &Range<u64>) -> Range<usize> {
    let index = |offset: u64| usize::try_from(offset).unwrap_or(usize::MAX);
    index(range.start)..index(range.end)
}

/// How long a hole may be a reordered chunk still on its way: 9/8 of the
/// smoothed RTT (QUIC's time threshold), at most a quarter of
/// `retransmit_after`, which is also the value before the first sample.
fn reorder_delay(srtt: Option<Duration>, retransmit_after: Duration) -> Duration {
    let cap = retransmit_after / 4;
    srtt.map_or(cap, |srtt| (srtt + srtt / 8).min(cap))
        .max(MIN_INTERVAL)
}

/// One bit per chunk, with a count of the bits set: the chunks a
/// subscriber holds.
#[derive(Debug, Clone)]
struct ChunkBits {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl ChunkBits {
    fn new(len: u32) -> Self {
        ChunkBits {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            ones: 0,
        }
    }

    /// Sets bit `index`; returns whether it was clear (and in range).
    fn set(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let word = &mut self.words[(index / 64) as usize];
        let bit = 1 << (index % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.ones += 1;
        true
    }

    /// Clears bit `index`. The subscriber only ever sets bits (or clears
    /// them all); its tests clear single ones.
    #[cfg(test)]
    fn unset(&mut self, index: u32) {
        if index < self.len {
            let word = &mut self.words[(index / 64) as usize];
            let bit = 1 << (index % 64);
            if *word & bit != 0 {
                *word &= !bit;
                self.ones -= 1;
            }
        }
    }

    fn is_full(&self) -> bool {
        self.ones == self.len
    }

    fn clear(&mut self) {
        self.words.fill(0);
        self.ones = 0;
    }

    /// The first clear bit at or after `from`, or `len`; a word at a time.
    fn next_zero(&self, from: u32) -> u32 {
        let mut index = from;
        while index < self.len {
            let offset = index % 64;
            let word = self.words[(index / 64) as usize] | ((1u64 << offset) - 1);
            if word != u64::MAX {
                return (index - offset + (!word).trailing_zeros()).min(self.len);
            }
            index = (index - offset).saturating_add(64);
        }
        self.len
    }

    /// Bits `start..start + 8` as a byte, bit `start` least significant;
    /// bits past the end read as 0.
    fn byte_at(&self, start: u32) -> u8 {
        let word = (start / 64) as usize;
        let offset = start % 64;
        let low = self.words.get(word).copied().unwrap_or(0) >> offset;
        let high = match offset {
            0 => 0,
            _ => self.words.get(word + 1).copied().unwrap_or(0) << (64 - offset),
        };
        (low | high).to_le_bytes()[0]
    }
}

/// The chunks a subscriber acknowledged, as its sender needs them: every
/// chunk below `below`, and one bit each for the chunks from `below` up
/// to the ring's capacity past it (at least [`MAX_WINDOW`], or all chunks
/// of a smaller module), in a ring of words indexed by chunk index. No
/// chunk further on is acknowledged: a merged ack's bitmap reaches at
/// most [`MAX_WINDOW`] chunks past its `base`, which is at most `below`.
#[derive(Debug)]
struct AckedChunks {
    len: u32,
    below: u32,
    words: Box<[u64]>,
}

impl AckedChunks {
    fn new(len: u32) -> Self {
        let bits = len.min(MAX_WINDOW) as usize;
        AckedChunks {
            len,
            below: 0,
            words: vec![0; bits.div_ceil(64)].into_boxed_slice(),
        }
    }

    /// The first chunk not acknowledged (or the chunk count).
    fn below(&self) -> u32 {
        self.below
    }

    /// One past the last chunk the ring describes (or the chunk count).
    fn ring_end(&self) -> u32 {
        let capacity = 64 * self.words.len() as u64;
        u32::try_from(u64::from(self.below) + capacity)
            .unwrap_or(u32::MAX)
            .min(self.len)
    }

    /// The word holding chunk `index`'s bit, at bit `index % 64`; the
    /// capacity is a multiple of 64, so a word holds 64 consecutive chunks.
    fn word(&self, index: u32) -> usize {
        (index / 64) as usize % self.words.len()
    }

    fn get(&self, index: u32) -> bool {
        if index < self.below {
            return true;
        }
        index < self.ring_end() && self.words[self.word(index)] & (1 << (index % 64)) != 0
    }

    /// Acknowledges `index`; returns whether it was not yet. A chunk past
    /// the ring cannot be acknowledged (no ack reaches it).
    fn set(&mut self, index: u32) -> bool {
        if index < self.below || index >= self.ring_end() {
            return false;
        }
        let word = self.word(index);
        let bit = 1 << (index % 64);
        let was_clear = self.words[word] & bit == 0;
        self.words[word] |= bit;
        was_clear
    }

    /// Acknowledges every chunk below `to`, moving the ring on: the bits
    /// of the chunks it passes are cleared for the chunks that take their
    /// place.
    fn advance(&mut self, to: u32) {
        let to = to.min(self.len);
        if to <= self.below {
            return;
        }
        let end = to.min(self.ring_end());
        let mut index = self.below;
        while index < end {
            let offset = index % 64;
            let bits = (64 - offset).min(end - index);
            let mask = (u64::MAX >> (64 - bits)) << offset;
            let word = self.word(index);
            self.words[word] &= !mask;
            index += bits;
        }
        self.below = to;
    }

    /// The first chunk at or after `from` not acknowledged, or the chunk
    /// count; a word at a time.
    fn next_zero(&self, from: u32) -> u32 {
        let end = self.ring_end();
        let mut index = from.max(self.below);
        if index >= end {
            // Past the ring nothing is acknowledged.
            return index.min(self.len);
        }
        while index < end {
            let offset = index % 64;
            let word = self.words[self.word(index)] | ((1u64 << offset) - 1);
            if word != u64::MAX {
                // A bit past `end` in this word belongs to a chunk at the
                // start of the ring; past the ring nothing is acknowledged.
                return (index - offset + (!word).trailing_zeros()).min(end);
            }
            index = index - offset + 64;
        }
        end
    }

    /// The last chunk below `end` not acknowledged, if any; a word at a
    /// time.
    fn last_zero_below(&self, end: u32) -> Option<u32> {
        let end = end.min(self.len);
        if end <= self.below {
            return None;
        }
        if end > self.ring_end() {
            // Past the ring nothing is acknowledged.
            return Some(end - 1);
        }
        let mut top = end - 1;
        loop {
            let offset = top % 64;
            let first = (top - offset).max(self.below);
            // Bits `first % 64 ..= offset` of the word: the chunks
            // `first..=top`.
            let mask = (u64::MAX >> (63 - offset)) & (u64::MAX << (first % 64));
            let zeros = !self.words[self.word(top)] & mask;
            if zeros != 0 {
                return Some(top - offset + (63 - zeros.leading_zeros()));
            }
            if first == self.below {
                return None;
            }
            top = first - 1;
        }
    }

    fn heap_bytes(&self) -> usize {
        size_of_val(&*self.words)
    }
}

/// What a sender remembers of a chunk's last transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    /// The chunk this record belongs to: a ring slot is shared by every
    /// chunk index with the same remainder.
    chunk: u32,
    /// When it was sent last.
    at: Instant,
    /// It was sent more than once: its ack gives no RTT sample (Karn).
    resent: bool,
    /// It is in the resend queue.
    queued: bool,
}

/// The last transmission of each chunk in flight, in a ring of records
/// indexed by chunk index modulo its length: the smaller of the chunk
/// count and [`MAX_WINDOW`], which covers every chunk that may be in
/// flight (from the first unacknowledged one, within the credit). A
/// record names its chunk, so the record of a chunk that has left the
/// window is never taken for that of the chunk now in its slot.
#[derive(Debug)]
struct SendLog {
    ring: Box<[Option<Sent>]>,
}

/// 16 bytes a record: the flags share the padding, `None` a niche.
const _: () = assert!(size_of::<Option<Sent>>() == 16);

impl SendLog {
    fn new(count: u32) -> Self {
        SendLog {
            ring: vec![None; count.min(MAX_WINDOW) as usize].into_boxed_slice(),
        }
    }

    fn ring_len(&self) -> u64 {
        self.ring.len() as u64
    }

    fn slot(&self, index: u32) -> usize {
        index as usize % self.ring.len().max(1)
    }

    /// The record of chunk `index`, if it was sent and its slot has not
    /// been taken by a later chunk since.
    fn get(&self, index: u32) -> Option<&Sent> {
        self.ring
            .get(self.slot(index))?
            .as_ref()
            .filter(|sent| sent.chunk == index)
    }

    fn get_mut(&mut self, index: u32) -> Option<&mut Sent> {
        let slot = self.slot(index);
        self.ring
            .get_mut(slot)?
            .as_mut()
            .filter(|sent| sent.chunk == index)
    }

    /// Chunk `index` is sent now (not queued any more). A resend stays
    /// marked as one.
    fn record(&mut self, index: u32, now: Instant, resend: bool) {
        let slot = self.slot(index);
        let Some(entry) = self.ring.get_mut(slot) else {
            return;
        };
        let resent = resend || entry.is_some_and(|sent| sent.chunk == index && sent.resent);
        *entry = Some(Sent {
            chunk: index,
            at: now,
            resent,
            queued: false,
        });
    }

    fn heap_bytes(&self) -> usize {
        size_of_val(&*self.ring)
    }
}

/// BLAKE3-256 of `data`.
fn content_hash(data: &[u8]) -> [u8; HASH_LEN] {
    blake3::hash(data).into()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::wire::test_util::hex;
    use crate::wire::Kind;

    const MS: Duration = Duration::from_millis(1);

    fn content(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        fastrand::Rng::with_seed(seed).fill(&mut data);
        data
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    /// What the link does to every frame, both ways.
    #[derive(Debug, Clone, Copy, Default)]
    struct Faults {
        loss: f64,
        duplicate: f64,
        /// Probability of up to `REORDER_DELAY` extra delay.
        reorder: f64,
    }

    const LATENCY: Duration = Duration::from_micros(500);
    const REORDER_DELAY: Duration = Duration::from_millis(2);

    /// A frame in flight, as bytes: every frame goes through emit and parse.
    #[derive(Debug)]
    struct Packet {
        kind: Kind,
        body: Vec<u8>,
        to_receiver: bool,
    }

    /// A publisher and a subscriber joined by a faulty link, in virtual time.
    struct Sim {
        now: Instant,
        config: RomConfig,
        tx: RomSender,
        rx: RomReceiver,
        rng: fastrand::Rng,
        faults: Faults,
        in_flight: BTreeMap<(Instant, u64), Packet>,
        seq: u64,
        /// Every version the application saw, in order.
        events: Vec<Arc<RomVersion>>,
        /// Per version, the credit acks delivered to the sender granted: (base, window).
        credit: HashMap<u64, (u32, u32)>,
        /// Chunks sent outside the credit.
        credit_violations: u64,
        /// The most chunks ahead of the acknowledged base ever sent.
        max_ahead: u64,
        /// Corrupt the chunk at (version, offset) once, keeping its length.
        corrupt: Option<(u64, u64)>,
        /// Lose this many complete acks (base = chunk count).
        lose_complete_acks: u32,
        /// The time of the last step (`now` has moved on to the next event).
        stepped_at: Instant,
    }

    impl Sim {
        fn new(config: RomConfig, tx: RomSender, rx: RomReceiver, now: Instant, seed: u64) -> Sim {
            Sim {
                now,
                config,
                tx,
                rx,
                rng: fastrand::Rng::with_seed(seed),
                faults: Faults::default(),
                in_flight: BTreeMap::new(),
                seq: 0,
                events: Vec::new(),
                credit: HashMap::new(),
                credit_violations: 0,
                max_ahead: 0,
                corrupt: None,
                lose_complete_acks: 0,
                stepped_at: now,
            }
        }

        fn start(config: RomConfig, first: &Arc<RomVersion>, seed: u64) -> Sim {
            let tx = RomSender::new(config, 5, Arc::clone(first), Instant::ZERO);
            let rx = RomReceiver::new(config, Instant::ZERO);
            Sim::new(config, tx, rx, Instant::ZERO, seed)
        }

        /// Puts a frame on the link, through the fault injector.
        fn send(&mut self, (kind, body): (Kind, Vec<u8>), to_receiver: bool) {
            if self.rng.f64() < self.faults.loss {
                return;
            }
            let copies = if self.rng.f64() < self.faults.duplicate {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let mut delay = LATENCY;
                if self.rng.f64() < self.faults.reorder {
                    delay += Duration::from_nanos(
                        self.rng
                            .u64(0..=u64::try_from(REORDER_DELAY.as_nanos()).unwrap()),
                    );
                }
                self.seq += 1;
                let packet = Packet {
                    kind,
                    body: body.clone(),
                    to_receiver,
                };
                self.in_flight.insert((self.now + delay, self.seq), packet);
            }
        }

        fn deliver(&mut self, mut packet: Packet) {
            let now = self.now;
            let hit = match (self.corrupt, Message::parse(packet.kind, &packet.body)) {
                (Some(target), Ok(Message::RomChunk(chunk))) => {
                    (chunk.version, chunk.offset) == target
                }
                _ => false,
            };
            if hit {
                self.corrupt = None;
                packet.body[ChunkFixed::LEN] ^= 0xff;
            }
            let message = Message::parse(packet.kind, &packet.body).expect("frames parse");
            match (packet.to_receiver, message) {
                (true, Message::RomAnnounce(announce)) => self.rx.handle_announce(now, &announce),
                (true, Message::RomChunk(chunk)) => self.rx.handle_chunk(now, &chunk),
                (false, Message::RomRequest(request)) => self.tx.handle_request(now, &request),
                (false, Message::RomAck(ack)) => {
                    let credit = self
                        .credit
                        .entry(ack.version)
                        .or_insert((0, self.config.window));
                    if ack.base >= credit.0 {
                        *credit = (ack.base, ack.window.clamp(1, MAX_WINDOW));
                    }
                    self.tx.handle_ack(now, &ack);
                }
                (to_receiver, message) => panic!("{message:?} to the wrong side ({to_receiver})"),
            }
        }

        /// Delivers what is due, sends what the engines have, collects
        /// events, and advances time to the next arrival or timer.
        fn step(&mut self) {
            self.stepped_at = self.now;
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let packet = entry.remove();
                self.deliver(packet);
            }
            let now = self.now;
            while let Some(message) = self.tx.poll_transmit(now) {
                let chunk = match message {
                    Message::RomChunk(chunk) => Some((chunk.version, chunk.offset)),
                    _ => None,
                };
                let frame = owned(&message);
                if let Some(chunk) = chunk {
                    self.check_credit(chunk);
                }
                self.send(frame, true);
            }
            while let Some(message) = self.rx.poll_transmit(now) {
                let complete_ack = match message {
                    Message::RomAck(ack) if ack.base > 0 && ack.bitmap.is_empty() => {
                        Some(ack.version)
                    }
                    _ => None,
                };
                let frame = owned(&message);
                let completed = self.rx.current().map(|c| c.version);
                if self.lose_complete_acks > 0
                    && complete_ack.is_some()
                    && complete_ack == completed
                {
                    self.lose_complete_acks -= 1;
                    continue;
                }
                self.send(frame, false);
            }
            while let Some(version) = self.rx.poll_event() {
                self.events.push(version);
            }
            let timers = [
                self.in_flight.first_key_value().map(|(key, _)| key.0),
                self.tx.poll_timeout(),
                self.rx.poll_timeout(),
            ];
            let next = timers
                .into_iter()
                .flatten()
                .min()
                .expect("a sender always has a timer");
            self.now = next.max(self.now + Duration::from_nanos(1));
        }

        /// Checks a chunk the sender sent against the credit it was granted.
        fn check_credit(&mut self, (version, offset): (u64, u64)) {
            let index = offset / u64::from(self.config.chunk_size);
            let (base, window) = self
                .credit
                .get(&version)
                .copied()
                .unwrap_or((0, self.config.window));
            if index >= u64::from(base) + u64::from(window) {
                self.credit_violations += 1;
            }
            self.max_ahead = self
                .max_ahead
                .max(index + 1 - u64::from(base).min(index + 1));
        }

        /// Steps until `done` holds (true) or virtual time passes `limit` (false).
        fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> bool {
            let deadline = self.now + limit;
            while self.now <= deadline {
                self.step();
                if done(self) {
                    return true;
                }
            }
            false
        }

        fn run_for(&mut self, duration: Duration) {
            let deadline = self.now + duration;
            while self.now < deadline {
                self.step();
            }
        }

        fn holds(&self, version: &RomVersion) -> bool {
            self.rx.current().is_some_and(|c| **c == *version)
        }
    }

    /// A frame body as bytes, so that it travels like a real one.
    fn owned(message: &Message<'_>) -> (Kind, Vec<u8>) {
        let mut body = vec![0; message.buffer_len()];
        message.emit(&mut body);
        (message.kind(), body)
    }

    fn assert_events_increase(events: &[Arc<RomVersion>]) {
        for pair in events.windows(2) {
            assert!(
                pair[0].version < pair[1].version,
                "event for v{} after v{}",
                pair[1].version,
                pair[0].version
            );
        }
    }

    #[test]
    fn versions_carry_the_blake3_of_their_content() {
        // The golden vector of docs/wire.md, "ROM modules": BLAKE3 of "abc".
        let abc = RomVersion::valid(2, b"abc".to_vec());
        assert_eq!(
            abc.hash[..],
            hex("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85")[..]
        );
        // Removed and empty content carry the hash of the empty string.
        let empty = hex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
        assert_eq!(RomVersion::removed(3).hash[..], empty[..]);
        assert_eq!(RomVersion::valid(4, Vec::new()).hash[..], empty[..]);
    }

    #[test]
    fn lossless_1mib_transfer_completes_without_resends_within_the_window() {
        let config = RomConfig::default();
        let v1 = Arc::new(RomVersion::valid(1, content(10, 1 << 20)));
        let mut sim = Sim::start(config, &v1, 1);
        assert!(sim.run_until(Duration::from_secs(5), |s| s.holds(&v1) && s.tx.is_idle()));

        let current = sim.rx.current().unwrap();
        assert_eq!(current.data, v1.data);
        assert_eq!(current.hash, *blake3::hash(&v1.data).as_bytes());
        assert_eq!(sim.events.len(), 1);
        assert!(Arc::ptr_eq(&sim.events[0], current));

        let count = u64::from(chunk_count(1 << 20, config.chunk_size));
        let tx = sim.tx.stats();
        assert_eq!(tx.chunks_sent, count, "every chunk exactly once");
        assert_eq!(tx.chunks_resent, 0);
        assert_eq!((tx.transfers_started, tx.transfers_completed), (1, 1));
        assert_eq!(sim.credit_violations, 0);
        assert_eq!(
            sim.max_ahead,
            u64::from(config.window),
            "the credit is used, never exceeded"
        );
        // 749 chunks in windows of 128: six round trips of 1 ms.
        assert!(sim.stepped_at <= at(8), "took {:?}", sim.stepped_at);
        let rx = sim.rx.stats();
        assert_eq!(rx.chunks_received, count);
        assert_eq!(
            (rx.duplicates, rx.dropped_chunks, rx.hash_failures),
            (0, 0, 0)
        );
        assert_eq!(rx.versions_completed, 1);
    }

    #[test]
    fn lossy_2mib_transfer_with_duplicates_and_reordering_converges() {
        let config = RomConfig::default();
        let v1 = Arc::new(RomVersion::valid(1, content(11, 2 << 20)));
        let mut sim = Sim::start(config, &v1, 2);
        sim.faults = Faults {
            loss: 0.20,
            duplicate: 0.05,
            reorder: 0.20,
        };
        assert!(sim.run_until(Duration::from_secs(60), |s| s.holds(&v1) && s.tx.is_idle()));
        assert_eq!(sim.rx.current().unwrap().data, v1.data);
        assert_eq!(sim.events.len(), 1);
        assert!(sim.tx.stats().chunks_resent > 0, "losses were repaired");
        assert!(sim.rx.stats().duplicates > 0);
        assert_eq!(sim.rx.stats().hash_failures, 0);
        assert_eq!(sim.credit_violations, 0);
    }

    #[test]
    fn eight_mib_transfers_lossless_and_with_5_percent_loss() {
        let config = RomConfig::default();
        let v1 = Arc::new(RomVersion::valid(1, content(12, 8 << 20)));
        for (seed, loss) in [(3, 0.0), (4, 0.05)] {
            let mut sim = Sim::start(config, &v1, seed);
            sim.faults.loss = loss;
            assert!(sim.run_until(Duration::from_secs(60), |s| s.holds(&v1) && s.tx.is_idle()));
            assert_eq!(sim.rx.current().unwrap().data, v1.data);
            assert_eq!(sim.credit_violations, 0);
            let resent = sim.tx.stats().chunks_resent;
            let duplicates = sim.rx.stats().duplicates;
            if loss == 0.0 {
                assert_eq!(resent, 0);
                // 5992 chunks in windows of 128: 47 round trips of 1 ms.
                assert!(sim.stepped_at <= at(50), "took {:?}", sim.stepped_at);
            } else {
                // Losses are repaired within round trips, not timeouts,
                // and few resends were unnecessary.
                let count = u64::from(chunk_count(8 << 20, config.chunk_size));
                assert!(
                    resent > 0 && resent < count / 10,
                    "{resent} resends for {count} chunks"
                );
                assert!(
                    duplicates < resent / 5,
                    "{duplicates} of {resent} resends were not needed"
                );
                assert!(sim.stepped_at <= at(300), "took {:?}", sim.stepped_at);
            }
        }
    }

    #[test]
    fn updates_faster_than_transfers_end_at_the_newest_version() {
        let config = RomConfig::default();
        let versions: Vec<Arc<RomVersion>> = (1..=5u8)
            .map(|v| {
                let data = content(20 + u64::from(v), (1 << 20) + 1000 * usize::from(v));
                Arc::new(RomVersion::valid(u64::from(v), data))
            })
            .collect();
        let mut sim = Sim::start(config, &versions[0], 5);
        sim.faults = Faults {
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.10,
        };
        for version in &versions[1..] {
            sim.run_for(2 * MS);
            let now = sim.now;
            sim.tx.update(now, Arc::clone(version));
        }
        let newest = &versions[4];
        assert!(sim.run_until(Duration::from_secs(30), |s| s.holds(newest)
            && s.tx.is_idle()));
        sim.run_for(Duration::from_secs(1));

        assert!(
            sim.tx.stats().transfers_abandoned >= 1,
            "{:?}",
            sim.tx.stats()
        );
        assert_eq!(sim.rx.current().unwrap().version, 5);
        assert_events_increase(&sim.events);
        assert_eq!(sim.events.last().unwrap().version, 5);
        for event in &sim.events {
            let published = &versions[usize::try_from(event.version).unwrap() - 1];
            assert_eq!(**event, **published, "only complete, verified versions");
        }
        assert!(
            sim.rx.stats().versions_completed < 5,
            "intermediate versions were skipped"
        );
    }

    #[test]
    fn a_released_version_lends_its_buffer_to_a_later_one() {
        let versions: Vec<Arc<RomVersion>> = (1..=3u8)
            .map(|v| {
                let data = content(40 + u64::from(v), 200_000);
                Arc::new(RomVersion::valid(u64::from(v), data))
            })
            .collect();
        let mut sim = Sim::start(RomConfig::default(), &versions[0], 9);
        let limit = Duration::from_secs(5);
        assert!(sim.run_until(limit, |s| s.holds(&versions[0])));
        let first = sim.rx.current().unwrap().data.as_ptr();
        for version in &versions[1..] {
            // The application lets go of what it was given.
            sim.events.clear();
            let now = sim.now;
            sim.tx.update(now, Arc::clone(version));
            assert!(sim.run_until(limit, |s| s.holds(version)));
        }
        // Version 3 was assembled in version 1's buffer, and is intact.
        let current = sim.rx.current().unwrap();
        assert_eq!(current.data.as_ptr(), first);
        assert_eq!(**current, *versions[2]);
    }

    #[test]
    fn empty_and_removed_content_become_current_at_once() {
        let config = RomConfig::default();
        // By hand: an announce alone makes removed or empty content current.
        let mut rx = RomReceiver::new(config, at(0));
        let removed = RomVersion::removed(7);
        rx.handle_announce(at(1), &announce_of(3, &removed, 1400));
        assert_eq!(rx.current().map(|c| &**c), Some(&removed));
        assert_eq!(rx.poll_event().map(|c| c.state), Some(RomState::Removed));
        let empty = RomVersion::valid(8, Vec::new());
        rx.handle_announce(at(2), &announce_of(3, &empty, 1400));
        assert_eq!(rx.current().map(|c| &**c), Some(&empty));
        assert_eq!(rx.poll_event().map(|c| c.version), Some(8));
        assert_eq!(rx.poll_event(), None, "each version once");

        // Over the link: empty, removed, valid again, empty again.
        let versions = [
            Arc::new(RomVersion::valid(1, Vec::new())),
            Arc::new(RomVersion::removed(2)),
            Arc::new(RomVersion::valid(3, content(30, 10_000))),
            Arc::new(RomVersion::valid(4, Vec::new())),
        ];
        let mut sim = Sim::start(config, &versions[0], 6);
        for (i, version) in versions.iter().enumerate() {
            if i > 0 {
                let now = sim.now;
                sim.tx.update(now, Arc::clone(version));
            }
            assert!(sim.run_until(Duration::from_secs(1), |s| s.holds(version)
                && s.tx.is_idle()));
        }
        let seen: Vec<u64> = sim.events.iter().map(|v| v.version).collect();
        assert_eq!(seen, [1, 2, 3, 4]);
        assert_eq!(sim.events[1].state, RomState::Removed);
        assert_eq!(sim.events[2].data, versions[2].data);
        let chunks = u64::from(chunk_count(10_000, config.chunk_size));
        assert_eq!(
            sim.tx.stats().chunks_sent,
            chunks,
            "only the valid content travels in chunks"
        );
    }

    #[test]
    fn a_corrupted_chunk_is_a_hash_failure_and_heals() {
        let config = RomConfig::default();
        let v1 = Arc::new(RomVersion::valid(1, content(40, 300_000)));
        let mut sim = Sim::start(config, &v1, 7);
        sim.corrupt = Some((1, 3 * u64::from(config.chunk_size)));
        assert!(sim.run_until(Duration::from_secs(5), |s| s.holds(&v1) && s.tx.is_idle()));
        assert!(sim.corrupt.is_none(), "the chunk was corrupted");
        assert_eq!(sim.rx.stats().hash_failures, 1);
        assert_eq!(
            sim.events.len(),
            1,
            "the corrupt assembly was never published"
        );
        assert_eq!(sim.events[0].data, v1.data);
        assert_eq!(
            sim.tx.stats().transfers_restarted,
            1,
            "the publisher started over"
        );
    }

    #[test]
    fn a_late_subscriber_gets_the_current_version_only() {
        let config = RomConfig::default();
        let mut tx = RomSender::new(
            config,
            5,
            Arc::new(RomVersion::valid(1, content(50, 5000))),
            at(0),
        );
        let v2 = Arc::new(RomVersion::valid(2, content(51, 50_000)));
        tx.update(at(1000), Arc::clone(&v2));
        let rx = RomReceiver::new(config, at(2000));
        let mut sim = Sim::new(config, tx, rx, at(2000), 8);
        assert!(sim.run_until(Duration::from_secs(1), |s| s.holds(&v2) && s.tx.is_idle()));
        let seen: Vec<u64> = sim.events.iter().map(|v| v.version).collect();
        assert_eq!(seen, [2]);
    }

    #[test]
    fn reset_after_a_publisher_restart_converges_to_the_new_content() {
        let config = RomConfig::default();
        let v1 = Arc::new(RomVersion::valid(1, content(60, 40_000)));
        let mut sim = Sim::start(config, &v1, 9);
        assert!(sim.run_until(Duration::from_secs(1), |s| s.holds(&v1)));
        for v in 2..=3 {
            let version = Arc::new(RomVersion::valid(v, content(60 + v, 40_000)));
            let now = sim.now;
            sim.tx.update(now, Arc::clone(&version));
            assert!(sim.run_until(Duration::from_secs(1), |s| s.holds(&version)
                && s.tx.is_idle()));
        }

        // The publisher restarts (another module id, counting from 1) with
        // other content; the subscriber holds v3.
        let fresh = Arc::new(RomVersion::valid(1, content(70, 30_000)));
        let now = sim.now;
        sim.in_flight.clear();
        sim.tx = RomSender::new(config, 9, Arc::clone(&fresh), now);
        sim.rx.reset(now);
        assert_eq!(
            sim.rx.current().unwrap().version,
            3,
            "content is kept over a reset"
        );
        assert!(sim.run_until(Duration::from_secs(2), |s| s.holds(&fresh)
            && s.tx.is_idle()));
        assert_eq!(sim.events.last().unwrap().data, fresh.data);

        // Again, and this time the restarted publisher reuses the version
        // number the subscriber holds, with other content.
        let same_number = Arc::new(RomVersion::valid(1, content(71, 30_000)));
        let now = sim.now;
        sim.in_flight.clear();
        sim.tx = RomSender::new(config, 9, Arc::clone(&same_number), now);
        sim.rx.reset(now);
        assert!(
            sim.run_until(Duration::from_secs(2), |s| s.holds(&same_number)
                && s.tx.is_idle())
        );
        assert_eq!(sim.rx.current().unwrap().data, same_number.data);
    }

    #[test]
    fn reset_without_a_change_transfers_nothing() {
        let config = RomConfig::default();
        let v1 = Arc::new(RomVersion::valid(1, content(80, 100_000)));
        let mut sim = Sim::start(config, &v1, 10);
        assert!(sim.run_until(Duration::from_secs(1), |s| s.holds(&v1) && s.tx.is_idle()));
        let sent = sim.tx.stats().chunks_sent;
        let now = sim.now;
        sim.rx.reset(now);
        sim.run_for(Duration::from_secs(1));
        assert_eq!(
            sim.tx.stats().chunks_sent,
            sent,
            "the subscriber already holds it"
        );
        assert_eq!(sim.events.len(), 1, "and gets no second event");
        assert!(sim.rx.poll_timeout().is_none(), "nor keeps requesting");
    }

    #[test]
    fn a_subscriber_reset_mid_transfer_converges() {
        let config = RomConfig::default();
        let v1 = Arc::new(RomVersion::valid(1, content(90, 1 << 20)));
        let mut sim = Sim::start(config, &v1, 11);
        assert!(
            sim.run_until(Duration::from_secs(1), |s| s.rx.stats().chunks_received
                > 300)
        );
        let now = sim.now;
        sim.in_flight.clear();
        sim.rx.reset(now);
        assert!(sim.run_until(Duration::from_secs(10), |s| s.holds(&v1) && s.tx.is_idle()));
        assert_eq!(sim.rx.current().unwrap().data, v1.data);
        assert_eq!(sim.events.len(), 1);
        // The publisher sees its acks add up to more than the subscriber
        // holds, and starts over at once rather than giving up.
        let tx = sim.tx.stats();
        assert_eq!((tx.transfers_restarted, tx.transfers_given_up), (1, 0));
        assert!(
            sim.stepped_at <= now + Duration::from_millis(60),
            "took {:?}",
            sim.stepped_at
        );
    }

    #[test]
    fn a_lost_final_ack_is_answered_from_the_completed_version() {
        let config = RomConfig::default();
        let v1 = Arc::new(RomVersion::valid(1, content(100, 200_000)));
        let mut sim = Sim::start(config, &v1, 12);
        sim.lose_complete_acks = 1;
        assert!(sim.run_until(Duration::from_secs(1), |s| s.holds(&v1)));
        assert!(!sim.tx.is_idle(), "the publisher missed the final ack");
        assert!(sim.run_until(Duration::from_secs(1), |s| s.tx.is_idle()));
        assert_eq!(sim.lose_complete_acks, 0);
        let tx = sim.tx.stats();
        assert_eq!(tx.chunks_resent, 1, "one tail-loss probe");
        assert_eq!((tx.transfers_completed, tx.transfers_restarted), (1, 0));
        assert_eq!(sim.rx.stats().duplicates, 1);
        assert_eq!(sim.events.len(), 1);
    }

    #[test]
    fn acks_carry_base_credit_and_a_trimmed_bitmap() {
        let config = RomConfig {
            window: 64,
            ack_every: 4,
            ..RomConfig::default()
        };
        let data = content(110, 1000);
        let version = RomVersion::valid(1, data.clone());
        let mut rx = RomReceiver::new(config, at(0));
        rx.handle_announce(at(0), &announce_of(5, &version, 10));
        let chunk = |index: usize| RomChunk {
            module: 5,
            version: 1,
            offset: index as u64 * 10,
            data: &data[index * 10..index * 10 + 10],
        };
        for index in [0, 1, 2, 5] {
            rx.handle_chunk(at(0), &chunk(index));
        }
        let Some(Message::RomAck(ack)) = rx.poll_transmit(at(0)) else {
            panic!("an ack after ack_every chunks");
        };
        assert_eq!(
            (ack.module, ack.version, ack.base, ack.window),
            (5, 1, 3, 64)
        );
        assert_eq!(ack.bitmap, [0b0000_0100]);

        rx.handle_chunk(at(0), &chunk(7));
        while let Some(message) = rx.poll_transmit(at(0)) {
            assert!(
                !matches!(message, Message::RomAck(_)),
                "one new chunk waits for ack_delay"
            );
        }
        assert_eq!(rx.poll_timeout(), Some(at(0) + config.ack_delay));
        let Some(Message::RomAck(ack)) = rx.poll_transmit(at(1)) else {
            panic!("an ack after ack_delay");
        };
        assert_eq!((ack.base, ack.bitmap), (3, &[0b0001_0100][..]));
    }

    #[test]
    fn hostile_chunks_and_announces_are_counted_not_panicked() {
        let config = RomConfig {
            max_size: 1 << 20,
            ..RomConfig::default()
        };
        let data = content(120, 9_500);
        let version = RomVersion::valid(1, data.clone());
        let mut rx = RomReceiver::new(config, at(0));
        let announce = announce_of(7, &version, 1000);
        rx.handle_announce(at(0), &announce);

        let good = RomChunk {
            module: 7,
            version: 1,
            offset: 0,
            data: &data[..1000],
        };
        let bad = [
            RomChunk { version: 2, ..good },
            RomChunk { version: 0, ..good },
            RomChunk { module: 8, ..good },
            RomChunk { offset: 1, ..good },
            RomChunk {
                offset: 10_000,
                ..good
            },
            RomChunk {
                offset: u64::MAX,
                ..good
            },
            RomChunk {
                offset: u64::MAX - 999,
                ..good
            },
            RomChunk {
                data: &data[..999],
                ..good
            },
            RomChunk { data: &[], ..good },
            // The last chunk is 500 bytes long.
            RomChunk {
                offset: 9000,
                data: &data[..1000],
                ..good
            },
        ];
        for chunk in &bad {
            rx.handle_chunk(at(1), chunk);
        }
        assert_eq!(rx.stats().dropped_chunks, bad.len() as u64);
        rx.handle_chunk(at(1), &good);
        rx.handle_chunk(at(1), &good);
        assert_eq!((rx.stats().chunks_received, rx.stats().duplicates), (1, 1));

        let invalid = [
            RomAnnounce {
                version: 0,
                ..announce
            },
            RomAnnounce {
                chunk_size: 0,
                version: 2,
                ..announce
            },
            RomAnnounce {
                chunk_size: 70_000,
                version: 2,
                ..announce
            },
            RomAnnounce {
                size: MAX_ROM_SIZE + 1,
                version: 2,
                ..announce
            },
            RomAnnounce {
                state: RomState::Removed,
                version: 2,
                ..announce
            },
            RomAnnounce {
                module: 8,
                version: 2,
                ..announce
            },
        ];
        for bad in &invalid {
            rx.handle_announce(at(2), bad);
        }
        assert_eq!(rx.stats().ignored_announces, invalid.len() as u64);
        rx.handle_chunk(
            at(2),
            &RomChunk {
                offset: 1000,
                data: &data[1000..2000],
                ..good
            },
        );
        assert_eq!(rx.stats().chunks_received, 2, "the assembly survived");

        // Larger than max_size: refused, the held state is unchanged, the
        // obsolete assembly is dropped.
        rx.handle_announce(
            at(3),
            &RomAnnounce {
                version: 3,
                size: 2 << 20,
                ..announce
            },
        );
        assert_eq!(rx.stats().too_large, 1);
        rx.handle_chunk(
            at(3),
            &RomChunk {
                offset: 2000,
                data: &data[2000..3000],
                ..good
            },
        );
        assert_eq!(rx.stats().dropped_chunks, bad.len() as u64 + 1);
        // Stale announces are ignored.
        rx.handle_announce(
            at(4),
            &RomAnnounce {
                version: 2,
                ..announce
            },
        );
        assert_eq!(rx.stats().ignored_announces, invalid.len() as u64 + 1);
        assert!(rx.current().is_none());
        assert_eq!(rx.poll_event(), None);
        assert_eq!(rx.stats().hash_failures, 0);

        // A removed announce with a wrong hash is a hash failure.
        let mut removed = announce_of(7, &RomVersion::removed(4), 1000);
        removed.hash[0] ^= 1;
        rx.handle_announce(at(5), &removed);
        assert_eq!(rx.stats().hash_failures, 1);
        assert!(rx.current().is_none());
    }

    #[test]
    fn hostile_acks_and_requests_are_counted_not_panicked() {
        let config = RomConfig {
            chunk_size: 100,
            window: 2,
            ..RomConfig::default()
        };
        let version = Arc::new(RomVersion::valid(1, content(130, 1000)));
        let mut tx = RomSender::new(config, 5, Arc::clone(&version), at(0));
        let ack = |base: u32, window: u32, bitmap: &'static [u8]| RomAck {
            module: 5,
            version: 1,
            base,
            window,
            bitmap,
        };
        let sent = |tx: &mut RomSender, now: Instant| -> Vec<u64> {
            std::iter::from_fn(|| match tx.poll_transmit(now) {
                Some(Message::RomChunk(chunk)) => Some(Some(chunk.offset / 100)),
                Some(_) => Some(None),
                None => None,
            })
            .flatten()
            .collect()
        };
        tx.handle_ack(at(0), &ack(0, 2, &[]));
        tx.handle_request(
            at(0),
            &RomRequest {
                module: 6,
                have_version: 0,
            },
        );
        assert_eq!(
            tx.stats().dropped,
            2,
            "an ack with no transfer, a request for another module"
        );
        assert!(tx.is_idle());

        tx.handle_request(
            at(0),
            &RomRequest {
                module: 0,
                have_version: 0,
            },
        );
        assert!(!tx.is_idle());
        assert_eq!(sent(&mut tx, at(0)), [0, 1], "two chunks of credit");
        let bogus = [
            RomAck {
                version: 2,
                ..ack(1, 2, &[])
            },
            RomAck {
                module: 6,
                ..ack(1, 2, &[])
            },
            ack(11, 2, &[]),
            ack(u32::MAX, u32::MAX, &[0xff; 1024]),
        ];
        for bogus in &bogus {
            tx.handle_ack(at(1), bogus);
        }
        assert_eq!(tx.stats().dropped, 2 + bogus.len() as u64);
        // A zero window still lets chunk `base` go; a huge one is clamped.
        tx.handle_ack(at(1), &ack(2, 0, &[]));
        assert_eq!(sent(&mut tx, at(1)), [2]);
        tx.handle_ack(at(1), &ack(3, u32::MAX, &[0, 0, 0, 0xff]));
        assert_eq!(sent(&mut tx, at(1)), [3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(tx.stats().chunks_resent, 0);
        tx.handle_ack(at(2), &ack(10, 2, &[]));
        assert!(tx.is_idle());
        assert_eq!(tx.stats().transfers_completed, 1);
    }

    #[test]
    fn a_request_for_the_current_version_gets_an_announce_only() {
        let config = RomConfig::default();
        let version = Arc::new(RomVersion::valid(3, content(140, 5000)));
        let mut tx = RomSender::new(config, 5, Arc::clone(&version), at(0));
        assert!(
            matches!(tx.poll_transmit(at(0)), Some(Message::RomAnnounce(a)) if a.version == 3 && a.size == 5000)
        );
        assert!(tx.poll_transmit(at(0)).is_none());
        tx.handle_request(
            at(1),
            &RomRequest {
                module: 5,
                have_version: 3,
            },
        );
        assert!(matches!(
            tx.poll_transmit(at(1)),
            Some(Message::RomAnnounce(_))
        ));
        assert!(tx.poll_transmit(at(1)).is_none(), "no chunks");
        assert!(tx.is_idle());
        // The announce repeats on its own.
        assert_eq!(tx.poll_timeout(), Some(at(1) + config.announce_interval));
        assert!(matches!(
            tx.poll_transmit(at(251)),
            Some(Message::RomAnnounce(_))
        ));
    }

    #[test]
    fn a_silent_subscriber_is_given_up_and_can_ask_again() {
        let config = RomConfig::default();
        let version = Arc::new(RomVersion::valid(1, content(150, 1 << 20)));
        let mut tx = RomSender::new(config, 5, Arc::clone(&version), at(0));
        tx.handle_request(
            at(0),
            &RomRequest {
                module: 0,
                have_version: 0,
            },
        );
        let mut now = at(0);
        let mut chunks = 0u64;
        while !tx.is_idle() && now < at(10_000) {
            while let Some(message) = tx.poll_transmit(now) {
                chunks += u64::from(matches!(message, Message::RomChunk(_)));
            }
            now = tx.poll_timeout().unwrap();
        }
        let stats = tx.stats();
        assert!(tx.is_idle());
        assert_eq!(stats.transfers_given_up, 1);
        let rounds = u64::from(MAX_SILENT_ROUNDS);
        assert_eq!(
            chunks,
            u64::from(config.window) + rounds,
            "a window, then one probe per round"
        );
        assert_eq!(stats.chunks_resent, rounds);
        tx.handle_request(
            now,
            &RomRequest {
                module: 5,
                have_version: 0,
            },
        );
        assert!(!tx.is_idle());
    }

    #[test]
    fn content_larger_than_max_size_is_refused_and_the_publisher_stops() {
        let config = RomConfig::default();
        let rx_config = RomConfig {
            max_size: 64 * 1024,
            ..config
        };
        let big = Arc::new(RomVersion::valid(1, content(160, 1 << 20)));
        let tx = RomSender::new(config, 5, Arc::clone(&big), at(0));
        let rx = RomReceiver::new(rx_config, at(0));
        let mut sim = Sim::new(config, tx, rx, at(0), 13);
        sim.run_for(Duration::from_secs(2));
        assert_eq!(sim.rx.stats().too_large, 1);
        assert!(sim.rx.current().is_none() && sim.events.is_empty());
        assert!(sim.tx.is_idle());
        assert_eq!(sim.tx.stats().transfers_given_up, 1);
    }

    #[test]
    fn stale_announces_never_replace_a_newer_version() {
        let config = RomConfig::default();
        let mut rx = RomReceiver::new(config, at(0));
        let v3 = RomVersion::valid(3, Vec::new());
        rx.handle_announce(at(0), &announce_of(5, &v3, 1400));
        let v2 = RomVersion::removed(2);
        rx.handle_announce(at(1), &announce_of(5, &v2, 1400));
        assert_eq!(rx.current().unwrap().version, 3);
        assert_eq!(rx.poll_event().map(|v| v.version), Some(3));
        assert_eq!(rx.poll_event(), None);
        assert_eq!(rx.stats().ignored_announces, 1);
    }

    #[test]
    fn chunk_bits_scan_and_extract_across_word_boundaries() {
        let mut bits = ChunkBits::new(200);
        for index in (0..130).chain([131, 190, 199]) {
            assert!(bits.set(index));
        }
        assert!(!bits.set(5), "already set");
        assert!(!bits.set(200), "out of range");
        assert_eq!(bits.next_zero(0), 130);
        assert_eq!(bits.next_zero(131), 132);
        assert_eq!(bits.next_zero(199), 200, "none left: the length");
        // Bits 126..134: 126-129 set, 130 clear, 131 set, 132-133 clear.
        assert_eq!(bits.byte_at(126), 0b0010_1111);
        assert_eq!(
            bits.byte_at(196),
            0b0000_1000,
            "bits past the end read as 0"
        );
        bits.unset(131);
        assert_eq!(bits.next_zero(130), 130);
        assert!(!bits.is_full());
        let mut full = ChunkBits::new(64);
        (0..64).for_each(|index| {
            full.set(index);
        });
        assert!(full.is_full());
        assert_eq!(full.next_zero(0), 64);
    }

    /// The bound [`RomSender::state_bytes`] documents, for a ring of `r`
    /// chunks.
    fn state_bound(r: usize) -> usize {
        16 * r + 8 * r.div_ceil(64) + 4 * (2 * r + 4)
    }

    #[test]
    fn a_large_module_under_loss_keeps_the_sender_state_within_the_window() {
        // 131072 chunks of 16 bytes, sixteen times MAX_WINDOW, with the
        // whole credit in use: the rings wrap around many times.
        let config = RomConfig {
            chunk_size: 16,
            window: MAX_WINDOW,
            ack_every: 256,
            ..RomConfig::default()
        };
        let v1 = Arc::new(RomVersion::valid(1, content(170, 2 << 20)));
        let count = chunk_count(v1.size(), config.chunk_size);
        assert_eq!(count, 16 * MAX_WINDOW);
        let mut sim = Sim::start(config, &v1, 14);
        sim.faults = Faults {
            loss: 0.05,
            duplicate: 0.01,
            reorder: 0.10,
        };
        let most = Cell::new(0);
        assert!(sim.run_until(Duration::from_secs(30), |s| {
            most.set(most.get().max(s.tx.state_bytes()));
            s.holds(&v1) && s.tx.is_idle()
        }));
        assert_eq!(sim.rx.current().unwrap().data, v1.data);
        assert_eq!(sim.events.len(), 1);
        assert_eq!(sim.rx.stats().hash_failures, 0);
        let tx = sim.tx.stats();
        assert!(tx.chunks_resent > 0, "losses were repaired");
        assert_eq!((tx.transfers_completed, tx.transfers_restarted), (1, 0));
        assert_eq!(sim.credit_violations, 0);
        assert_eq!(sim.max_ahead, u64::from(MAX_WINDOW));
        assert_eq!(sim.tx.state_bytes(), 0, "nothing is held once idle");

        let r = MAX_WINDOW as usize;
        let most = most.get();
        assert!(most >= 16 * r, "the rings were allocated: {most}");
        assert!(most <= state_bound(r), "{most} bytes");
        // Less than a fifth of what 8 bytes of send time per chunk alone took.
        assert!(5 * state_bound(r) < 8 * count as usize);
    }

    #[test]
    fn the_sender_state_does_not_grow_with_the_module() {
        let config = RomConfig {
            chunk_size: 1,
            window: MAX_WINDOW,
            ..RomConfig::default()
        };
        // A window sent, every other chunk of it acknowledged, the rest
        // resent: the most the sender holds.
        let state_after_a_lossy_window = |len: usize| {
            let version = Arc::new(RomVersion::valid(1, content(180, len)));
            let mut tx = RomSender::new(config, 5, version, at(0));
            let request = RomRequest {
                module: 5,
                have_version: 0,
            };
            tx.handle_request(at(0), &request);
            let chunks = |tx: &mut RomSender, now: Instant| {
                let mut chunks = 0;
                while let Some(message) = tx.poll_transmit(now) {
                    chunks += usize::from(matches!(message, Message::RomChunk(_)));
                }
                chunks
            };
            let window = MAX_WINDOW.min(u32::try_from(len).unwrap()) as usize;
            assert_eq!(chunks(&mut tx, at(0)), window);
            let ack = RomAck {
                module: 5,
                version: 1,
                base: 0,
                window: MAX_WINDOW,
                bitmap: &[0b1010_1010; MAX_BITMAP_LEN],
            };
            tx.handle_ack(at(1), &ack);
            assert_eq!(chunks(&mut tx, at(10)), window / 2, "the holes");
            assert_eq!(tx.stats().chunks_resent, window as u64 / 2);
            tx.state_bytes()
        };
        // 1 MiB in 1-byte chunks: more chunks than 1 GiB has in the default
        // 1400-byte ones.
        let huge = state_after_a_lossy_window(1 << 20);
        let large = state_after_a_lossy_window(20_000);
        assert_eq!(huge, large);
        assert!(huge <= state_bound(MAX_WINDOW as usize), "{huge} bytes");
        // A module smaller than the window needs a ring only as large.
        let small = state_after_a_lossy_window(100);
        assert!(small <= state_bound(100), "{small} bytes");
    }

    #[test]
    fn sends_stop_at_the_end_of_the_ring_whatever_the_credit() {
        // A credit reaching past the ring (which no sequence of acks
        // produces: the newest base is the first unacknowledged chunk)
        // still lets no chunk past it go, which would take the slot of a
        // chunk in flight.
        let config = RomConfig {
            window: MAX_WINDOW,
            ..RomConfig::default()
        };
        let mut transfer = Transfer::new(3 * MAX_WINDOW, &config, at(0));
        transfer.credit_base = 100;
        let sent: Vec<u32> = std::iter::from_fn(|| transfer.next_chunk(at(0)))
            .map(|(index, _)| index)
            .collect();
        assert_eq!(sent, (0..MAX_WINDOW).collect::<Vec<_>>());
        assert!(transfer.sent.get(0).is_some(), "chunk 0 keeps its record");
    }

    #[test]
    fn send_records_are_never_taken_for_another_chunk() {
        let mut log = SendLog::new(3 * MAX_WINDOW);
        assert_eq!(log.ring_len(), u64::from(MAX_WINDOW));
        assert_eq!(log.get(7), None, "never sent");
        log.record(7, at(1), false);
        log.record(7, at(2), true);
        log.record(7, at(3), false);
        assert_eq!(
            log.get(7).map(|sent| (sent.at, sent.resent)),
            Some((at(3), true)),
            "a chunk once resent stays marked"
        );
        // Chunk 7 + MAX_WINDOW shares chunk 7's slot.
        let next = 7 + MAX_WINDOW;
        assert_eq!(log.get(next), None, "the slot holds chunk 7");
        assert_eq!(log.get_mut(next), None);
        log.record(next, at(4), false);
        assert_eq!(log.get(7), None, "chunk 7's record is gone");
        assert_eq!(
            log.get(next)
                .map(|sent| (sent.chunk, sent.at, sent.resent, sent.queued)),
            Some((next, at(4), false, false))
        );
        // A module smaller than MAX_WINDOW: a slot per chunk.
        let small = SendLog::new(10);
        assert_eq!(small.ring_len(), 10);
        assert_eq!(small.heap_bytes(), 10 * 16);
    }

    #[test]
    fn acked_chunks_follow_a_full_bitmap_within_the_ring() {
        let mut rng = fastrand::Rng::with_seed(190);
        let lens = [
            1,
            63,
            64,
            65,
            1000,
            MAX_WINDOW - 1,
            MAX_WINDOW,
            MAX_WINDOW + 1,
        ];
        for len in lens.into_iter().chain([5 * MAX_WINDOW + 17]) {
            let mut acked = AckedChunks::new(len);
            let mut model = vec![false; len as usize];
            let next_zero = |model: &[bool], from: u32| {
                (from..len).find(|&i| !model[i as usize]).unwrap_or(len)
            };
            for _ in 0..1500 {
                let below = acked.below();
                let ring_end = acked.ring_end();
                assert_eq!(
                    ring_end,
                    (below + MAX_WINDOW.min(len).next_multiple_of(64)).min(len)
                );
                match rng.u32(0..20) {
                    0 => {
                        // A cumulative ack, possibly past the ring.
                        let to = below.saturating_add(rng.u32(0..=3 * MAX_WINDOW)).min(len);
                        let newest = (below..to).rev().find(|&i| !model[i as usize]);
                        assert_eq!(acked.last_zero_below(to), newest);
                        acked.advance(to);
                        model[below as usize..to as usize].fill(true);
                    }
                    1..=2 => {
                        let to = acked.next_zero(below);
                        assert_eq!(to, next_zero(&model, below));
                        acked.advance(to);
                    }
                    3 => {
                        if ring_end < len {
                            assert!(!acked.set(ring_end), "past the ring");
                        }
                    }
                    _ => {
                        if ring_end > below {
                            let index = rng.u32(below..ring_end);
                            assert_eq!(acked.set(index), !model[index as usize]);
                            model[index as usize] = true;
                        }
                    }
                }
                let below = acked.below();
                assert!(model[..below as usize].iter().all(|&bit| bit));
                for _ in 0..4 {
                    let index = rng.u32(0..=len);
                    let expected = index < len && model[index as usize];
                    assert_eq!(acked.get(index), expected, "get({index})");
                    let from = if rng.bool() {
                        index
                    } else {
                        below.saturating_add(rng.u32(0..=MAX_WINDOW + 64)).min(len)
                    };
                    assert_eq!(
                        acked.next_zero(from),
                        next_zero(&model, from),
                        "next_zero({from})"
                    );
                    let end = rng.u32(0..=len);
                    let expected = (below..end).rev().find(|&i| !model[i as usize]);
                    assert_eq!(
                        acked.last_zero_below(end),
                        expected,
                        "last_zero_below({end})"
                    );
                }
            }
        }
    }

    fn announce_of(module: u32, version: &RomVersion, chunk_size: u32) -> RomAnnounce {
        RomAnnounce {
            module,
            state: version.state,
            version: version.version,
            size: version.size(),
            chunk_size,
            hash: version.hash,
        }
    }
}
