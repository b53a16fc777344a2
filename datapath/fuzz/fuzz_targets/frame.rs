//! Relay frames: parsing never panics, and an accepted frame re-emits to
//! the bytes it was parsed from (header and body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xrelay_datapath::wire::{Frame, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok((frame, len)) = Frame::parse(data) {
        let mut out = vec![0u8; frame.buffer_len()];
        frame.emit(&mut out);
        if usize::from(data[3]) == HEADER_LEN {
            let covered = len - frame.flags.trailer_len();
            assert_eq!(&out[..covered], &data[..covered]);
        }
    }
});
