//! The Internet checksum (RFC 1071) used by the IPv4 header and UDP: the
//! ones' complement of the ones' complement sum of 16-bit big-endian words.

use core::net::Ipv4Addr;

/// Adds `data` to a running ones' complement sum (of big-endian 16-bit
/// words, unfolded). An odd trailing byte is the high byte of a final word
/// padded with zero.
///
/// The sum is independent of byte order (RFC 1071, section 2(B)): the words
/// are added as little-endian 32-bit values into a 64-bit accumulator,
/// which needs no byte swap per word and vectorises, and the folded result
/// is swapped once. Wider words fold to the same result because 2^16 is 1
/// in ones' complement arithmetic.
pub fn accumulate(sum: u64, data: &[u8]) -> u64 {
    let mut little = 0u64;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        little += u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(fold(little).swap_bytes()) + u64::from(u32::from_be_bytes(tail))
}

/// Folds a running sum to 16 bits with end-around carries (zero only for
/// a zero sum).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Folds a running sum to 16 bits and complements it: the checksum value.
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// The checksum of `data` alone (the IPv4 header checksum).
pub fn checksum(data: &[u8]) -> u16 {
    finish(accumulate(0, data))
}

/// The running sum of the IPv4 pseudo-header that UDP's checksum covers.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u64 {
    let mut sum = accumulate(0, &src.octets());
    sum = accumulate(sum, &dst.octets());
    sum + u64::from(protocol) + u64::from(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(accumulate(0, &data)), !0xddf2);
    }

    /// RFC 1071's definition, word by word: what `accumulate` must equal.
    fn reference(data: &[u8]) -> u16 {
        let mut sum = 0u64;
        for pair in data.chunks(2) {
            let high = u64::from(pair[0]) << 8;
            sum += high | pair.get(1).copied().map_or(0, u64::from);
        }
        finish(sum)
    }

    #[test]
    fn agrees_with_the_word_by_word_definition() {
        let mut rng = fastrand::Rng::with_seed(7);
        for len in (0..200).chain([1439, 1440, 1441, 9000]) {
            for fill in [None, Some(0x00), Some(0xff)] {
                let data: Vec<u8> = (0..len)
                    .map(|_| fill.unwrap_or_else(|| rng.u8(..)))
                    .collect();
                assert_eq!(checksum(&data), reference(&data), "{len} bytes, {fill:?}");
                // As UDP does: a pseudo-header sum, then the datagram.
                let start = pseudo_header(
                    Ipv4Addr::new(198, 18, 0, 1),
                    Ipv4Addr::new(198, 18, 0, 2),
                    17,
                    u16::try_from(len).unwrap_or(u16::MAX),
                );
                let mut words = vec![198, 18, 0, 1, 198, 18, 0, 2, 0, 17];
                words.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
                words.extend_from_slice(&data);
                assert_eq!(finish(accumulate(start, &data)), reference(&words));
            }
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(
            checksum(&[0x12, 0x34, 0x56]),
            checksum(&[0x12, 0x34, 0x56, 0x00])
        );
    }

    #[test]
    fn a_correct_checksum_verifies_to_zero() {
        // A well-known IPv4 header (checksum b861 in bytes 10-11).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0);
        let mut zeroed = header;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(checksum(&zeroed), 0xb861);
    }
}
