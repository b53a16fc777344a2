//! The worked example interface: a small key-value store. Tests, the demo
//! and the documentation use it; it shows an interface declaration, a
//! derived exception enum and a derived result struct.

use std::collections::BTreeMap;

use crate::{interface, Decode, Encode, Exception};

/// The exceptions of [`KvStore`]'s functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Exception)]
pub enum KvError {
    /// The key is not in the store (code -1000).
    NotFound,
    /// The store is at its capacity (code -1001).
    Full,
}

/// Summary figures of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Encode, Decode)]
pub struct StoreStats {
    /// Number of keys.
    pub keys: u64,
    /// Bytes of values held.
    pub value_bytes: u64,
}

/// A key-value store, callable over the relay.
#[interface(id = 0x4b56_0001)]
pub trait KvStore {
    /// The value stored under `key`.
    fn get(&mut self, key: String) -> Result<Vec<u8>, KvError>;
    /// Stores `value` under `key`; returns the value it replaced.
    fn put(&mut self, key: String, value: Vec<u8>) -> Result<Option<Vec<u8>>, KvError>;
    /// Removes `key`.
    fn delete(&mut self, key: String) -> Result<(), KvError>;
    /// Counts keys and bytes.
    fn stats(&self) -> StoreStats;
}

/// An in-memory [`KvStore`] holding at most `capacity` keys.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    entries: BTreeMap<String, Vec<u8>>,
    capacity: usize,
}

impl MemoryStore {
    /// An empty store for up to `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            entries: BTreeMap::new(),
            capacity,
        }
    }
}

impl KvStore for MemoryStore {
    fn get(&mut self, key: String) -> Result<Vec<u8>, KvError> {
        self.entries.get(&key).cloned().ok_or(KvError::NotFound)
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> Result<Option<Vec<u8>>, KvError> {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            return Err(KvError::Full);
        }
        Ok(self.entries.insert(key, value))
    }

    fn delete(&mut self, key: String) -> Result<(), KvError> {
        self.entries.remove(&key).map(drop).ok_or(KvError::NotFound)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.entries.len() as u64,
            value_bytes: self.entries.values().map(|v| v.len() as u64).sum(),
        }
    }
}
