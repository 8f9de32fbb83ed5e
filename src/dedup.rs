//! Deduplication by `event_id` within the dedup horizon (DESIGN.md section 4, step 5).
//!
//! Ids are kept per user (the key is a 128-bit hash of the user and the event id), with
//! the event time of the copy that won. An id is forgotten once the watermark has
//! passed its event time plus the horizon, so memory holds only the ids still inside
//! the horizon.

use std::collections::VecDeque;

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use serde::{Deserialize, Serialize};

/// The dedup key: a 128-bit hash of (user id, event id).
pub type IdKey = u128;

/// The dedup key of an event of the user whose key hash is `user_hash`.
pub fn id_key(user_hash: u64, event_id: &str) -> IdKey {
    xxhash_rust::xxh3::xxh3_128_with_seed(event_id.as_bytes(), user_hash)
}

/// Hashes an [`IdKey`], which is a hash already, by taking its low bits.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdKeyHasher(u64);

impl std::hash::Hasher for IdKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

type IdMap = HashMap<IdKey, f64, std::hash::BuildHasherDefault<IdKeyHasher>>;

/// One remembered id: its key, the event time of the copy that won, and the key hash
/// of its user (so a checkpoint can hand it to the worker that owns the user).
pub type SeenEntry = (IdKey, f64, u64);

/// The ids a worker has seen inside the horizon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeenIds {
    horizon: f64,
    seen: IdMap,
    /// Ids in the order they were recorded, for expiry.
    order: VecDeque<SeenEntry>,
}

impl SeenIds {
    /// Remembers ids for `horizon` seconds of event time.
    pub fn new(horizon: f64) -> SeenIds {
        SeenIds {
            horizon,
            ..SeenIds::default()
        }
    }

    /// Whether an event with this key and time is a copy of one already seen; if
    /// not, remembers it for the user whose key hash is `user_hash`.
    pub fn check_and_insert(&mut self, key: IdKey, event_time: f64, user_hash: u64) -> bool {
        // One probe: the entry either holds a copy inside the horizon, or takes this one.
        match self.seen.entry(key) {
            Entry::Occupied(first) if (event_time - *first.get()).abs() <= self.horizon => return true,
            Entry::Occupied(mut first) => {
                first.insert(event_time);
            }
            Entry::Vacant(slot) => {
                slot.insert(event_time);
            }
        }
        self.order.push_back((key, event_time, user_hash));
        false
    }

    /// Whether this key is already remembered (without recording it).
    pub fn contains(&self, key: IdKey, event_time: f64) -> bool {
        self.seen
            .get(&key)
            .is_some_and(|&first| (event_time - first).abs() <= self.horizon)
    }

    /// Forgets ids whose event time is more than the horizon before `watermark` (seconds).
    pub fn expire(&mut self, watermark: f64) {
        let limit = watermark - self.horizon;
        while let Some(&(key, time, _)) = self.order.front() {
            if time >= limit {
                break;
            }
            self.order.pop_front();
            if let Entry::Occupied(entry) = self.seen.entry(key)
                && *entry.get() == time
            {
                entry.remove();
            }
        }
    }

    /// The remembered ids, oldest first (for a checkpoint).
    pub fn entries(&self) -> impl Iterator<Item = &SeenEntry> {
        self.order
            .iter()
            .filter(|(key, time, _)| self.seen.get(key) == Some(time))
    }

    /// Remembers an id taken from a checkpoint.
    pub fn restore(&mut self, (key, time, user_hash): SeenEntry) {
        if self.seen.insert(key, time).is_none() {
            self.order.push_back((key, time, user_hash));
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_copy_inside_the_horizon_is_a_duplicate() {
        let mut seen = SeenIds::new(60.0);
        let key = id_key(1, "e1");
        assert!(!seen.check_and_insert(key, 100.0, 0));
        assert!(seen.check_and_insert(key, 100.0, 0));
        assert!(seen.check_and_insert(key, 160.0, 0));
        assert!(!seen.contains(key, 160.5));
        assert!(
            !seen.check_and_insert(id_key(2, "e1"), 100.0, 0),
            "ids are per user"
        );
    }

    #[test]
    fn ids_expire_behind_the_watermark() {
        let mut seen = SeenIds::new(60.0);
        seen.check_and_insert(id_key(7, "a"), 10.0, 0);
        seen.check_and_insert(id_key(7, "b"), 50.0, 0);
        seen.expire(70.0 + 0.5);
        assert_eq!(seen.len(), 1);
        assert!(seen.contains(id_key(7, "b"), 50.0));
    }

    #[test]
    fn the_hasher_uses_the_low_bits_of_the_key() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<IdKeyHasher>::default();
        assert_eq!(build.hash_one(0xdead_beef_u128 | (7u128 << 64)), 0xdead_beef);
    }
}
