//! Deduplication by `event_id` within the dedup horizon (DESIGN.md section 4, step 5).
//!
//! Ids are kept per user (the key is a 128-bit hash of the user and the event id), with
//! the event time of the copy that won. An id is forgotten once the watermark has
//! passed its event time plus the horizon, so memory holds the ids still inside the
//! horizon (and, until the next sweep, at most a quarter as many forgotten ones).

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;

use crate::checkpoint::SeenEntry;
pub use crate::model::event::{IdKey, id_key};

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

/// What is remembered of an id: the event time of the copy that won, and the key hash
/// of its user (so a checkpoint can hand it to the worker that owns the user).
type Seen = (f64, u64);

type IdMap = HashMap<IdKey, Seen, std::hash::BuildHasherDefault<IdKeyHasher>>;

/// The ids a worker has seen inside the horizon.
///
/// Forgetting is exact but lazy: an id older than the horizon behind the watermark
/// counts as absent at once, and is swept out of the table once a quarter as many ids
/// as it holds have been added since the last sweep. A sweep is one pass over the
/// table in memory order, where removing each id as it expired cost a random access
/// per event, and a queue of 32 bytes per id to know the order.
#[derive(Debug, Clone)]
pub struct SeenIds {
    window: Window,
    seen: IdMap,
    /// Ids added since the last sweep.
    added: usize,
}

/// Which remembered ids count, and for how long.
#[derive(Debug, Clone, Copy)]
struct Window {
    horizon: f64,
    /// Ids whose event time is before this are forgotten.
    limit: f64,
}

impl Window {
    /// Whether `first`, remembered, makes a copy at `event_time` a duplicate.
    fn covers(self, first: f64, event_time: f64) -> bool {
        first >= self.limit && (event_time - first).abs() <= self.horizon
    }
}

/// Ids added between sweeps, at least.
const MIN_SWEEP: usize = 4096;

impl SeenIds {
    /// Remembers ids for `horizon` seconds of event time.
    pub fn new(horizon: f64) -> SeenIds {
        SeenIds {
            window: Window {
                horizon,
                limit: f64::NEG_INFINITY,
            },
            seen: IdMap::default(),
            added: 0,
        }
    }

    /// Whether an event with this key and time is a copy of one already seen; if
    /// not, remembers it for the user whose key hash is `user_hash`.
    pub fn check_and_insert(&mut self, key: IdKey, event_time: f64, user_hash: u64) -> bool {
        // One probe: the entry either holds a copy inside the horizon, or takes this one.
        let window = self.window;
        match self.seen.entry(key) {
            Entry::Occupied(first) if window.covers(first.get().0, event_time) => return true,
            Entry::Occupied(mut first) => {
                first.insert((event_time, user_hash));
            }
            Entry::Vacant(slot) => {
                slot.insert((event_time, user_hash));
                self.added += 1;
            }
        }
        false
    }

    /// Whether this key is already remembered (without recording it).
    pub fn contains(&self, key: IdKey, event_time: f64) -> bool {
        self.seen
            .get(&key)
            .is_some_and(|&(first, _)| self.window.covers(first, event_time))
    }

    /// Forgets ids whose event time is more than the horizon before `watermark` (seconds).
    pub fn expire(&mut self, watermark: f64) {
        let window = &mut self.window;
        window.limit = window.limit.max(watermark - window.horizon);
        if self.added >= (self.seen.len() / 4).max(MIN_SWEEP) {
            let limit = self.window.limit;
            self.seen.retain(|_, (time, _)| *time >= limit);
            self.added = 0;
        }
    }

    /// The remembered ids (for a checkpoint).
    pub fn entries(&self) -> impl Iterator<Item = SeenEntry> + '_ {
        self.seen
            .iter()
            .filter(|(_, (time, _))| *time >= self.window.limit)
            .map(|(&key, &(time, user_hash))| (key, time, user_hash))
    }

    /// Remembers an id taken from a checkpoint.
    pub fn restore(&mut self, (key, time, user_hash): SeenEntry) {
        self.seen.insert(key, (time, user_hash));
    }

    /// How many ids the table holds (forgotten ones not yet swept included).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether it holds none.
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
        assert!(
            !seen.contains(id_key(7, "a"), 10.0),
            "forgotten before it is swept"
        );
        assert!(seen.contains(id_key(7, "b"), 50.0));
        assert_eq!(seen.entries().count(), 1);
        assert!(
            !seen.check_and_insert(id_key(7, "a"), 10.0, 0),
            "a forgotten id is new again"
        );
    }

    #[test]
    fn sweeps_keep_the_table_to_the_ids_inside_the_horizon() {
        let mut seen = SeenIds::new(10.0);
        for i in 0..100_000u32 {
            let time = f64::from(i) / 100.0;
            seen.check_and_insert(id_key(1, &i.to_string()), time, 1);
            seen.expire(time);
        }
        // 10 s of ids at 100 per second are inside the horizon; a sweep is due every
        // quarter of that, so at most 1.25x as many (and the minimum batch) are held.
        assert_eq!(seen.entries().count(), 1001);
        assert!(seen.len() <= 1001 + MIN_SWEEP, "{}", seen.len());
    }

    #[test]
    fn the_hasher_uses_the_low_bits_of_the_key() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<IdKeyHasher>::default();
        assert_eq!(build.hash_one(0xdead_beef_u128 | (7u128 << 64)), 0xdead_beef);
    }
}
