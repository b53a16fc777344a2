//! Marshalling: decoding arbitrary bytes never panics, and the example
//! interface's dispatcher answers every opcode with a code.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use xrelay_datapath::example::{KvStoreServer, MemoryStore, StoreStats};
use xrelay_datapath::marshal::{from_slice, to_vec, Dispatch};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = from_slice::<(String, Vec<u8>, Option<BTreeMap<u16, char>>)>(data) {
        assert_eq!(to_vec(&value), data, "accepted input is canonical");
    }
    let _ = from_slice::<Vec<Vec<StoreStats>>>(data);
    let mut server = KvStoreServer(MemoryStore::new(16));
    let mut reply = Vec::new();
    if let Some((&opcode, args)) = data.split_first() {
        let code = server.dispatch(u16::from(opcode % 6), args, &mut reply);
        assert!(code <= 0);
    }
});
