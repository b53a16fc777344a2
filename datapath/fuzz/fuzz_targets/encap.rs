//! Ethernet frames in both encapsulations: parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xrelay_datapath::wire::encap::{self, Encapsulation, ETHERTYPE_RELAY};
use xrelay_datapath::wire::Frame;

fuzz_target!(|data: &[u8]| {
    for encapsulation in [
        Encapsulation::default(),
        Encapsulation::Ethernet { ethertype: ETHERTYPE_RELAY },
    ] {
        if let Ok((_, _, relay)) = encap::parse(data, encapsulation) {
            let _ = Frame::parse(relay);
        }
    }
});
