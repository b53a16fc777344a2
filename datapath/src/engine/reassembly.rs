//! Reassembly of a message sent in fragments (RPC arguments and results),
//! with the bookkeeping a selective acknowledgement needs. Every placement
//! a peer sends is checked against the first fragment's announcement, so a
//! confused or hostile peer can make a reassembly fail but never write
//! outside it or change its size.

use crate::wire::rpc::Fragment;

/// Why a fragment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    /// Fragment count or total length differ from the message's first fragment.
    #[error("fragment disagrees with the message's count or length")]
    Inconsistent,
    /// The fragment lies (partly) outside the message.
    #[error("fragment outside the message")]
    OutOfBounds,
}

/// A message being put back together.
#[derive(Debug, Clone)]
pub struct Reassembly {
    data: Vec<u8>,
    count: u16,
    received: Received,
    missing: u16,
}

/// Which fragments arrived, one bit each: the first 64 inline, so a
/// message of up to 64 fragments (90 KB at the default fragment size)
/// allocates nothing for its bookkeeping.
#[derive(Debug, Clone)]
struct Received {
    first: u64,
    rest: Vec<u64>,
}

impl Received {
    fn new(count: u16) -> Received {
        let words = usize::from(count).div_ceil(64);
        Received {
            first: 0,
            rest: vec![0; words.saturating_sub(1)],
        }
    }

    fn word(&self, index: u16) -> Option<&u64> {
        match usize::from(index) / 64 {
            0 => Some(&self.first),
            word => self.rest.get(word - 1),
        }
    }

    fn word_mut(&mut self, index: u16) -> Option<&mut u64> {
        match usize::from(index) / 64 {
            0 => Some(&mut self.first),
            word => self.rest.get_mut(word - 1),
        }
    }

    /// Sets the bit of `index`; whether it was clear.
    fn set(&mut self, index: u16) -> bool {
        let bit = 1u64 << (index % 64);
        match self.word_mut(index) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }

    fn get(&self, index: u16) -> bool {
        self.word(index)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }
}

/// Spare message buffers of an engine, so that steady traffic of small
/// messages allocates nothing: a finished message's buffer (call
/// arguments, a cached reply) comes back here and holds the next one.
/// Bounded in number, in size and in bytes together (what a session can
/// hold outside its peer's reassembly budget); anything else is freed.
#[derive(Debug)]
pub struct Spares {
    buffers: Vec<Vec<u8>>,
    /// Capacity of the buffers held, in bytes.
    held: usize,
}

impl Spares {
    /// Buffers kept at most.
    pub const COUNT: usize = 32;
    /// Largest capacity kept, in bytes: bigger buffers are freed (a large
    /// message is rare, and a fresh zeroed allocation of it costs no more).
    pub const CAPACITY: usize = 64 * 1024;
    /// Capacity kept at most, all buffers together.
    pub const BYTES: usize = 128 * 1024;

    /// No spares yet (room for [`Spares::COUNT`] reserved).
    pub fn new() -> Spares {
        Spares {
            buffers: Vec::with_capacity(Self::COUNT),
            held: 0,
        }
    }

    /// An empty buffer, spare if one is left.
    pub fn take(&mut self) -> Vec<u8> {
        let buffer = self.buffers.pop().unwrap_or_default();
        self.held -= buffer.capacity();
        buffer
    }

    /// A buffer of `len` zero bytes, spare if it fits one.
    pub fn zeroed(&mut self, len: usize) -> Vec<u8> {
        if len > Self::CAPACITY {
            return vec![0; len];
        }
        let mut buffer = self.take();
        buffer.resize(len, 0);
        buffer
    }

    /// Keeps `buffer` for a later message, if it is worth keeping.
    pub fn give(&mut self, mut buffer: Vec<u8>) {
        if buffer.capacity() == 0
            || buffer.capacity() > Self::CAPACITY
            || self.buffers.len() >= Self::COUNT
            || self.held + buffer.capacity() > Self::BYTES
        {
            return;
        }
        buffer.clear();
        self.held += buffer.capacity();
        self.buffers.push(buffer);
    }
}

impl Default for Spares {
    fn default() -> Self {
        Spares::new()
    }
}

impl Reassembly {
    /// Starts a message announced by `first` (any of its fragments).
    /// Allocates the announced length, which the caller has already
    /// charged against its memory budget.
    pub fn new(first: &Fragment) -> Self {
        Reassembly::new_in(first, vec![0; first.total_len as usize])
    }

    /// [`Reassembly::new`] in `buffer`, whose length must be the announced
    /// length (from [`Spares::zeroed`]).
    pub fn new_in(first: &Fragment, buffer: Vec<u8>) -> Self {
        debug_assert_eq!(buffer.len(), first.total_len as usize);
        Reassembly {
            data: buffer,
            count: first.count,
            received: Received::new(first.count),
            missing: first.count,
        }
    }

    /// Tracks which fragments of a message the *peer* holds, without
    /// storing data (the sender's view of the receiver's acks).
    pub fn new_empty(first: &Fragment) -> Self {
        Reassembly {
            data: Vec::new(),
            count: first.count,
            received: Received::new(first.count),
            missing: first.count,
        }
    }

    /// The number of fragments.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Records fragment `index` as held, without data.
    pub fn mark(&mut self, index: u16) {
        if index < self.count && self.received.set(index) {
            self.missing -= 1;
        }
    }

    /// The announced length in bytes.
    pub fn total_len(&self) -> usize {
        self.data.len()
    }

    /// Adds a fragment; duplicates are harmless. Returns whether the
    /// message is now complete.
    pub fn insert(&mut self, fragment: &Fragment, data: &[u8]) -> Result<bool, FragmentError> {
        if fragment.count != self.count || fragment.total_len as usize != self.data.len() {
            return Err(FragmentError::Inconsistent);
        }
        let start = fragment.offset as usize;
        let end = start
            .checked_add(data.len())
            .ok_or(FragmentError::OutOfBounds)?;
        if fragment.index >= self.count || end > self.data.len() {
            return Err(FragmentError::OutOfBounds);
        }
        if self.received.set(fragment.index) {
            self.missing -= 1;
            self.data[start..end].copy_from_slice(data);
        }
        Ok(self.missing == 0)
    }

    /// Whether fragment `index` has arrived.
    pub fn has(&self, index: u16) -> bool {
        self.received.get(index)
    }

    /// Whether every fragment has arrived.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// The selective acknowledgement of what has arrived: `(base, bitmap)`
    /// with every fragment below `base` received and bit `i` of the bitmap
    /// standing for fragment `base + i`, at most `max_bitmap` bytes.
    pub fn ack(&self, max_bitmap: usize, bitmap: &mut Vec<u8>) -> u16 {
        let base = (0..self.count)
            .find(|&i| !self.has(i))
            .unwrap_or(self.count);
        bitmap.clear();
        let mut index = base;
        while index < self.count && bitmap.len() < max_bitmap {
            let mut byte = 0u8;
            for bit in 0..8 {
                if index < self.count && self.has(index) {
                    byte |= 1 << bit;
                }
                index = index.saturating_add(1);
            }
            bitmap.push(byte);
        }
        while bitmap.last() == Some(&0) {
            bitmap.pop();
        }
        base
    }

    /// The complete message.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

/// The fragment indexes a sender will send next, in order: a run
/// `next..end` (a whole message, sent once) after a list of single indexes
/// (retransmissions, which only loss makes). A message sent without loss
/// allocates nothing here.
#[derive(Debug, Clone, Default)]
pub struct FragmentQueue {
    singles: std::collections::VecDeque<u16>,
    next: u16,
    end: u16,
}

impl FragmentQueue {
    /// Every fragment of a message of `count` fragments.
    pub fn all(count: u16) -> FragmentQueue {
        FragmentQueue {
            singles: std::collections::VecDeque::new(),
            next: 0,
            end: count,
        }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.singles.is_empty() && self.next >= self.end
    }

    /// The next index to send.
    pub fn pop_front(&mut self) -> Option<u16> {
        if let Some(index) = self.singles.pop_front() {
            return Some(index);
        }
        (self.next < self.end).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Queues nothing.
    pub fn clear(&mut self) {
        self.singles.clear();
        self.next = 0;
        self.end = 0;
    }

    /// Queues exactly `indexes`, in their order.
    pub fn set(&mut self, indexes: impl Iterator<Item = u16>) {
        self.clear();
        self.singles.extend(indexes);
    }

    /// Keeps the queued indexes `keep` accepts, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(u16) -> bool) {
        // The run is what has not been sent yet, which an acknowledgement
        // rarely names: it becomes a list only if some of it goes.
        if !(self.next..self.end).all(&mut keep) {
            let run = self.next..self.end;
            self.next = self.end;
            self.singles.extend(run);
        }
        self.singles.retain(|&i| keep(i));
    }
}

/// Splits a message of `len` bytes into fragments of at most `max` bytes:
/// the placement of fragment `index` of the message.
///
/// # Panics
/// If `max` is 0, or the message needs more than 65535 fragments or is
/// longer than `u32::MAX` (callers check against the 16 MiB limit first).
pub fn fragment_of(len: usize, max: usize, index: u16) -> (Fragment, core::ops::Range<usize>) {
    let count = fragment_count(len, max);
    let start = usize::from(index) * max;
    let end = (start + max).min(len);
    let fragment = Fragment {
        index,
        count,
        offset: u32::try_from(start).expect("message within u32"),
        total_len: u32::try_from(len).expect("message within u32"),
    };
    (fragment, start..end)
}

/// The number of fragments of at most `max` bytes a message of `len` bytes needs (at least 1).
///
/// # Panics
/// As [`fragment_of`].
pub fn fragment_count(len: usize, max: usize) -> u16 {
    assert!(max > 0, "fragments carry at least one byte");
    u16::try_from(len.div_ceil(max).max(1)).expect("at most 65535 fragments")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_queue_sends_a_run_then_retransmissions() {
        let mut queue = FragmentQueue::all(4);
        assert_eq!(queue.pop_front(), Some(0));
        // An ACK naming nothing queued leaves the run a run (no list).
        queue.retain(|i| i != 0);
        assert!(queue.singles.is_empty());
        // An ACK for fragment 2 takes it out of the run.
        queue.retain(|i| i != 2);
        let rest: Vec<u16> = core::iter::from_fn(|| queue.pop_front()).collect();
        assert_eq!(rest, [1, 3]);
        assert!(queue.is_empty());
        queue.set([3, 1].into_iter());
        assert_eq!(queue.pop_front(), Some(3));
        queue.clear();
        assert!(queue.is_empty());
        assert_eq!(queue.pop_front(), None);
        assert!(FragmentQueue::all(0).is_empty());
    }

    #[test]
    fn spares_keep_small_buffers_only_and_hand_them_out_zeroed() {
        let mut spares = Spares::new();
        let mut used = spares.zeroed(100);
        assert_eq!(used, vec![0; 100]);
        used.fill(7);
        let at = used.as_ptr();
        spares.give(used);
        let again = spares.zeroed(50);
        assert_eq!(again.as_ptr(), at, "the buffer is reused");
        assert_eq!(again, vec![0; 50]);
        spares.give(vec![0; Spares::CAPACITY + 1]);
        spares.give(Vec::new());
        assert!(spares.take().capacity() == 0, "neither kept");
        for _ in 0..Spares::COUNT + 5 {
            spares.give(vec![1; 8]);
        }
        assert_eq!(spares.buffers.len(), Spares::COUNT);
        // Big buffers stop at the byte bound.
        let mut spares = Spares::new();
        for _ in 0..Spares::COUNT {
            spares.give(vec![0; Spares::CAPACITY]);
        }
        assert_eq!(spares.buffers.len(), Spares::BYTES / Spares::CAPACITY);
        assert_eq!(spares.take().capacity(), Spares::CAPACITY);
        assert_eq!(spares.held, Spares::BYTES - Spares::CAPACITY);
    }

    #[test]
    fn more_than_64_fragments_are_tracked() {
        let (first, _) = fragment_of(130 * 10, 10, 0);
        let mut reassembly = Reassembly::new(&first);
        for index in (0..130).rev() {
            let (fragment, range) = fragment_of(1300, 10, index);
            let done = reassembly.insert(&fragment, &vec![1; range.len()]).unwrap();
            assert_eq!(done, index == 0);
        }
        assert!((0..130).all(|i| reassembly.has(i)) && !reassembly.has(130));
        let mut peer = Reassembly::new_empty(&first);
        peer.mark(129);
        peer.mark(129);
        peer.mark(500);
        assert!(peer.has(129) && !peer.has(128) && !peer.is_complete());
    }

    #[test]
    fn fragments_reassemble_in_any_order_with_duplicates() {
        let message: Vec<u8> = (0..1000u32).map(|i| i.to_le_bytes()[0]).collect();
        let count = fragment_count(message.len(), 64);
        assert_eq!(count, 16);
        let (first, _) = fragment_of(message.len(), 64, 0);
        let mut reassembly = Reassembly::new(&first);
        let order: Vec<u16> = (0..count).rev().chain([3, 3, 0]).collect();
        let mut done = false;
        for index in order {
            let (fragment, range) = fragment_of(message.len(), 64, index);
            done = reassembly.insert(&fragment, &message[range]).unwrap();
        }
        assert!(done);
        assert_eq!(reassembly.into_data(), message);
    }

    #[test]
    fn acks_describe_what_arrived() {
        let (first, _) = fragment_of(20 * 10, 10, 0);
        let mut reassembly = Reassembly::new(&first);
        for index in [0, 1, 2, 4, 6, 19] {
            let (fragment, range) = fragment_of(200, 10, index);
            reassembly.insert(&fragment, &vec![0; range.len()]).unwrap();
        }
        let mut bitmap = Vec::new();
        let base = reassembly.ack(1024, &mut bitmap);
        assert_eq!(base, 3);
        // Fragments 4 and 6 (bits 1 and 3), then 19 (bit 16).
        assert_eq!(bitmap, vec![0b0000_1010, 0, 0b0000_0001]);
    }

    #[test]
    fn inconsistent_or_outside_fragments_are_refused() {
        let (first, _) = fragment_of(100, 10, 0);
        let mut reassembly = Reassembly::new(&first);
        let mut other = first;
        other.total_len = 99;
        assert_eq!(
            reassembly.insert(&other, &[0; 10]),
            Err(FragmentError::Inconsistent)
        );
        let mut outside = first;
        outside.offset = 95;
        assert_eq!(
            reassembly.insert(&outside, &[0; 10]),
            Err(FragmentError::OutOfBounds)
        );
        assert!(!reassembly.is_complete());
    }

    #[test]
    fn empty_messages_are_one_empty_fragment() {
        assert_eq!(fragment_count(0, 100), 1);
        let (fragment, range) = fragment_of(0, 100, 0);
        assert_eq!(fragment, Fragment::whole(0));
        let mut reassembly = Reassembly::new(&fragment);
        assert!(reassembly.insert(&fragment, &[][range]).unwrap());
    }
}
