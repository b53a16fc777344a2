//! The Internet checksum (RFC 1071) used by the IPv4 header and UDP: the
//! ones' complement of the ones' complement sum of 16-bit big-endian words.

use core::net::Ipv4Addr;

/// Adds `data` to a running ones' complement sum. Words are read four bytes
/// at a time into a 64-bit accumulator (the sum is associative, so wider
/// words fold to the same result); an odd trailing byte is the high byte of
/// a final word padded with zero.
pub fn accumulate(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        sum += u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(u32::from_be_bytes(tail))
}

/// Folds a running sum to 16 bits and complements it: the checksum value.
pub fn finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
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
