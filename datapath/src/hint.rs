//! Hints to the CPU that change no result, only when memory is fetched.
//!
//! The one place outside the AF_XDP module with `unsafe`: the prefetch
//! instruction, which reads nothing, cannot fault and takes any address.
#![expect(
    unsafe_code,
    reason = "the x86 prefetch intrinsic is an unsafe fn though it dereferences nothing; std's safe prefetch is not stable"
)]

/// Bytes per cache line (x86-64).
const LINE: usize = 64;

/// Asks the CPU to bring `bytes` into its caches: data a loop is about to
/// copy, so that its cache misses overlap with other work (the ROM sender
/// prefetches the chunk after next while the kernel sends the current
/// one). A no-op on other architectures.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes.len()).step_by(LINE) {
        let line = bytes[offset..].as_ptr();
        // SAFETY: `_mm_prefetch` needs SSE, which every x86-64 CPU has;
        // a prefetch neither reads into the program nor faults, and
        // `line` points into `bytes` anyway.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(line.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_slice_may_be_prefetched() {
        let data: Vec<u8> = (0..=255).collect();
        for start in [0, 1, 63, 64, 200, 256] {
            for len in [0, 1, 63, 64, 65] {
                let end = (start + len).min(data.len());
                prefetch(&data[start..end]);
            }
        }
        assert_eq!(data[255], 255, "a hint changes nothing");
    }
}
