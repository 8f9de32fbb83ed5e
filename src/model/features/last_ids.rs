//! Last-k lists of interned ids in a user's state, two bytes an id while every id in
//! the list fits in 16 bits and four bytes after. The interner numbers strings in order
//! of first appearance, so frequent strings (popular items) have small ids, and last-k
//! lists are the largest part of a user's state once its history is long.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::state::grow;

/// The last `k` ids, oldest first, as 16-bit words: one word an id while `wide` is
/// false, two (low, high) after. Once full, the buffer is a ring whose oldest id is at
/// `head`. At 32 bytes, with the `bool` as a niche, an [`super::Agg`] holding it stays
/// 32 bytes, as with the `VecDeque<u32>` it replaced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LastIds {
    words: Vec<u16>,
    head: u32,
    wide: bool,
}

impl LastIds {
    fn from_ids(ids: &[u32]) -> LastIds {
        let mut list = LastIds {
            wide: ids.iter().any(|&id| id > u32::from(u16::MAX)),
            ..LastIds::default()
        };
        list.words.reserve_exact(ids.len() * list.width());
        for &id in ids {
            list.append(id);
        }
        list
    }

    fn width(&self) -> usize {
        if self.wide { 2 } else { 1 }
    }

    /// How many ids.
    pub fn len(&self) -> usize {
        self.words.len() / self.width()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn get(&self, i: usize) -> u32 {
        if self.wide {
            u32::from(self.words[2 * i]) | (u32::from(self.words[2 * i + 1]) << 16)
        } else {
            u32::from(self.words[i])
        }
    }

    /// The ids, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let head = self.head as usize;
        (head..self.len()).chain(0..head).map(|i| self.get(i))
    }

    /// Appends `id`, dropping the oldest when `k` are held.
    pub fn push(&mut self, id: u32, k: usize) {
        self.admit(id);
        if self.len() < k {
            let width = self.width();
            grow(self.len(), self.words.capacity() / width, k, |n| {
                self.words.reserve_exact(n * width)
            });
            self.append(id);
        } else if k > 0 {
            let at = self.head as usize;
            if self.wide {
                self.words[2 * at..2 * at + 2].copy_from_slice(&split(id));
            } else {
                self.words[at] = id as u16;
            }
            self.head = ((at + 1) % k) as u32;
        }
    }

    /// Switches to two words an id when `id` does not fit in one.
    fn admit(&mut self, id: u32) {
        if !self.wide && id > u32::from(u16::MAX) {
            let mut words = Vec::with_capacity(self.words.len() * 2 + 2);
            for &word in &self.words {
                words.extend_from_slice(&[word, 0]);
            }
            self.words = words;
            self.wide = true;
        }
    }

    fn append(&mut self, id: u32) {
        if self.wide {
            self.words.extend_from_slice(&split(id));
        } else {
            self.words.push(id as u16);
        }
    }

    /// Rewrites every id.
    pub fn remap(&mut self, id: impl Fn(u32) -> u32) {
        let ids: Vec<u32> = self.iter().map(id).collect();
        *self = LastIds::from_ids(&ids);
    }

    /// Bytes on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * 2
    }
}

fn split(id: u32) -> [u16; 2] {
    [id as u16, (id >> 16) as u16]
}

// Serialized as the sequence of its ids, oldest first, as the `VecDeque<u32>` it
// replaced was: checkpoints do not depend on the width.

impl Serialize for LastIds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for LastIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(LastIds::from_ids(&Vec::<u32>::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn small_ids_take_two_bytes_until_a_large_one_comes() {
        let mut list = LastIds::default();
        for id in 0..10 {
            list.push(id, 100);
        }
        assert_eq!(list.words.len(), 10);
        list.push(70_000, 100);
        assert_eq!(list.words.len(), 22);
        assert_eq!(list.iter().last(), Some(70_000));
        assert_eq!(list.iter().take(3).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn the_structs_stay_small() {
        assert_eq!(std::mem::size_of::<LastIds>(), 32);
        assert_eq!(std::mem::size_of::<super::super::Agg>(), 32, "as with a VecDeque");
    }

    fn id() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..300, 65_530u32..65_540, 0u32..u32::MAX]
    }

    proptest! {
        /// The compact list behaves exactly as the bounded `VecDeque` it stands for,
        /// serializes the same and survives a round trip.
        #[test]
        fn same_as_a_bounded_deque(ids in prop::collection::vec(id(), 0..300), k in 1usize..20) {
            let mut last = LastIds::default();
            let mut plain_last = VecDeque::new();
            for &id in &ids {
                last.push(id, k);
                if plain_last.len() == k {
                    plain_last.pop_front();
                }
                plain_last.push_back(id);
            }
            prop_assert_eq!(last.iter().collect::<Vec<_>>(), plain_last.iter().copied().collect::<Vec<_>>());
            let last_bytes = bincode::serialize(&last).unwrap();
            prop_assert_eq!(&last_bytes, &bincode::serialize(&plain_last).unwrap());
            let mut last_back: LastIds = bincode::deserialize(&last_bytes).unwrap();
            last_back.push(7, k);
            last.push(7, k);
            prop_assert_eq!(last_back.iter().collect::<Vec<_>>(), last.iter().collect::<Vec<_>>());
        }
    }
}
