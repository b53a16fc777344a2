//! Frame authentication (docs/wire.md section 11): a ChaCha20-Poly1305 tag
//! (`ring`'s implementation)
//! over the relay header and body of every frame, under a key per
//! direction of a peer pair, with the frame's sequence number as the
//! 64-bit counter nonce; and the receiver's anti-replay window, checked
//! only after the tag verifies.
//!
//! Keys per direction are derived from the pair's configured 32-byte key
//! with BLAKE3's key derivation, so the two directions never share a
//! key-nonce pair: `derive_key("xrelay 2026-11 frame key", key || sender
//! || 0x00 || receiver)` with the two nodes' names (docs/config.md).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use crate::wire::header::{HEADER_LEN, TAG_LEN};

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The frame is too short to carry a header and a tag.
    #[error("too short for an authenticated frame")]
    Truncated,
    /// The tag does not verify: wrong key or altered frame.
    #[error("authentication tag does not verify")]
    BadTag,
    /// The sequence was seen already or is older than the window.
    #[error("replayed or too old")]
    Replayed,
}

const CONTEXT: &str = "xrelay 2026-11 frame key";

fn derive(key: &[u8; 32], sender: &str, receiver: &str) -> LessSafeKey {
    let mut material = Vec::with_capacity(32 + sender.len() + 1 + receiver.len());
    material.extend_from_slice(key);
    material.extend_from_slice(sender.as_bytes());
    material.push(0);
    material.extend_from_slice(receiver.as_bytes());
    let derived = blake3::derive_key(CONTEXT, &material);
    // A 32-byte key is exactly what CHACHA20_POLY1305 takes.
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &derived)
        .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 keys are 32 bytes"));
    LessSafeKey::new(unbound)
}

fn nonce(sequence: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&sequence.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The keys of one peer pair, seen from this node.
#[derive(Clone)]
pub struct FrameKeys {
    send: LessSafeKey,
    receive: LessSafeKey,
}

impl core::fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FrameKeys(..)")
    }
}

impl FrameKeys {
    /// Keys for frames between `local` and `peer` (node names) under the
    /// pair's `key`.
    pub fn derive(key: &[u8; 32], local: &str, peer: &str) -> FrameKeys {
        FrameKeys {
            send: derive(key, local, peer),
            receive: derive(key, peer, local),
        }
    }

    /// Writes the tag of the frame in `frame` (header, body, then
    /// [`TAG_LEN`] bytes of trailer) with `sequence`.
    pub fn seal(&self, frame: &mut [u8], sequence: u64) -> Result<(), AuthError> {
        let len = frame.len();
        if len < HEADER_LEN + TAG_LEN {
            return Err(AuthError::Truncated);
        }
        let (covered, trailer) = frame.split_at_mut(len - TAG_LEN);
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(sequence), Aad::from(&*covered), &mut [])
            .map_err(|_| AuthError::BadTag)?;
        trailer.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Verifies the tag of a received frame (header, body, trailer).
    pub fn verify(&self, frame: &[u8], sequence: u64) -> Result<(), AuthError> {
        let len = frame.len();
        if len < HEADER_LEN + TAG_LEN {
            return Err(AuthError::Truncated);
        }
        let (covered, trailer) = frame.split_at(len - TAG_LEN);
        // An empty plaintext: the "ciphertext" to open is the tag alone.
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(trailer);
        self.receive
            .open_in_place(nonce(sequence), Aad::from(covered), &mut tag)
            .map(|_| ())
            .map_err(|_| AuthError::BadTag)
    }
}

/// Sequences remembered behind the newest.
pub const REPLAY_WINDOW: u64 = 1024;

/// The anti-replay window of one peer: the newest sequence seen and a
/// bitmap of the [`REPLAY_WINDOW`] before it.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    newest: Option<u64>,
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn bit(&mut self, sequence: u64) -> (&mut u64, u64) {
        let slot = sequence % REPLAY_WINDOW;
        (&mut self.seen[(slot / 64) as usize], 1 << (slot % 64))
    }

    /// Accepts `sequence` once: true if it is new and within the window
    /// (and marks it), false if seen or too old. Call only for frames whose
    /// tag verified.
    pub fn accept(&mut self, sequence: u64) -> bool {
        let Some(newest) = self.newest else {
            self.newest = Some(sequence);
            let (word, mask) = self.bit(sequence);
            *word |= mask;
            return true;
        };
        if sequence > newest {
            // Slide: clear the slots between the old newest and this one.
            let advance = sequence - newest;
            if advance >= REPLAY_WINDOW {
                self.seen = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                for s in newest + 1..=sequence {
                    let (word, mask) = self.bit(s);
                    *word &= !mask;
                }
            }
            self.newest = Some(sequence);
            let (word, mask) = self.bit(sequence);
            *word |= mask;
            return true;
        }
        if newest - sequence >= REPLAY_WINDOW {
            return false;
        }
        let (word, mask) = self.bit(sequence);
        if *word & mask != 0 {
            return false;
        }
        *word |= mask;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Vec<u8> {
        let mut f: Vec<u8> = (0..36u8).collect();
        f.extend_from_slice(&[0; TAG_LEN]);
        f
    }

    #[test]
    fn a_sealed_frame_verifies_only_unaltered_under_the_right_key() {
        let key = [7u8; 32];
        let (a, b) = (
            FrameKeys::derive(&key, "a", "b"),
            FrameKeys::derive(&key, "b", "a"),
        );
        let mut f = frame();
        a.seal(&mut f, 42).unwrap();
        assert_eq!(b.verify(&f, 42), Ok(()));
        // Another sequence, a flipped bit, the reverse direction, another key.
        assert_eq!(b.verify(&f, 43), Err(AuthError::BadTag));
        let mut altered = f.clone();
        altered[21] ^= 1;
        assert_eq!(b.verify(&altered, 42), Err(AuthError::BadTag));
        assert_eq!(a.verify(&f, 42), Err(AuthError::BadTag));
        let other = FrameKeys::derive(&[8u8; 32], "b", "a");
        assert_eq!(other.verify(&f, 42), Err(AuthError::BadTag));
        assert_eq!(b.verify(&f[..20], 42), Err(AuthError::Truncated));
    }

    #[test]
    fn the_window_accepts_each_sequence_once_and_nothing_too_old() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(5000));
        assert!(!w.accept(5000));
        // Reordered within the window: once each.
        assert!(w.accept(4990));
        assert!(!w.accept(4990));
        assert!(w.accept(5001));
        assert!(w.accept(5001 - 1023));
        // Older than the window.
        assert!(!w.accept(5001 - 1024));
        // A jump clears the old bits: sequences behind it are new if in range.
        assert!(w.accept(9000));
        assert!(w.accept(8999));
        assert!(!w.accept(8999));
        assert!(!w.accept(5001));
        // Wrap of the bitmap slots: 9000 - 1024 + 1 shares no slot with 9000.
        assert!(w.accept(9000 - 1023));
    }
}
