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
    received: Vec<u64>,
    missing: u16,
}

impl Reassembly {
    /// Starts a message announced by `first` (any of its fragments).
    /// Allocates the announced length, which the caller has already
    /// charged against its memory budget.
    pub fn new(first: &Fragment) -> Self {
        let words = usize::from(first.count).div_ceil(64);
        Reassembly {
            data: vec![0; first.total_len as usize],
            count: first.count,
            received: vec![0; words],
            missing: first.count,
        }
    }

    /// Tracks which fragments of a message the *peer* holds, without
    /// storing data (the sender's view of the receiver's acks).
    pub fn new_empty(first: &Fragment) -> Self {
        let words = usize::from(first.count).div_ceil(64);
        Reassembly {
            data: Vec::new(),
            count: first.count,
            received: vec![0; words],
            missing: first.count,
        }
    }

    /// The number of fragments.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Records fragment `index` as held, without data.
    pub fn mark(&mut self, index: u16) {
        let (word, bit) = (usize::from(index) / 64, index % 64);
        if let Some(w) = self.received.get_mut(word) {
            if *w & (1 << bit) == 0 {
                *w |= 1 << bit;
                self.missing -= 1;
            }
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
        let (word, bit) = (usize::from(fragment.index) / 64, fragment.index % 64);
        if self.received[word] & (1 << bit) == 0 {
            self.received[word] |= 1 << bit;
            self.missing -= 1;
            self.data[start..end].copy_from_slice(data);
        }
        Ok(self.missing == 0)
    }

    /// Whether fragment `index` has arrived.
    pub fn has(&self, index: u16) -> bool {
        let (word, bit) = (usize::from(index) / 64, index % 64);
        self.received.get(word).is_some_and(|w| w & (1 << bit) != 0)
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
