//! Containers of many records per message.
//!
//! Timely's default builder sizes `Vec` containers to 8 KiB, which is a few dozen of
//! our events; [`Batcher`] fills containers of [`BATCH`] records instead, so the
//! per-message costs of exchange and progress tracking are paid per thousand records.

use std::collections::VecDeque;

use timely::container::{ContainerBuilder, LengthPreservingContainerBuilder, PushInto};

/// Records per container.
pub const BATCH: usize = 1024;

/// Builds `Vec` containers of up to [`BATCH`] records, in FIFO order.
#[derive(Debug)]
pub struct Batcher<T> {
    current: Vec<T>,
    empty: Option<Vec<T>>,
    pending: VecDeque<Vec<T>>,
}

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Batcher {
            current: Vec::new(),
            empty: None,
            pending: VecDeque::new(),
        }
    }
}

impl<T> PushInto<T> for Batcher<T> {
    #[inline]
    fn push_into(&mut self, item: T) {
        if self.current.capacity() == 0 {
            self.current = self.empty.take().unwrap_or_default();
            self.current.clear();
            self.current.reserve(BATCH);
        }
        self.current.push(item);
        if self.current.len() >= BATCH {
            self.pending.push_back(std::mem::take(&mut self.current));
        }
    }
}

impl<T: 'static> ContainerBuilder for Batcher<T> {
    type Container = Vec<T>;

    #[inline]
    fn extract(&mut self) -> Option<&mut Vec<T>> {
        let container = self.pending.pop_front()?;
        self.empty = Some(container);
        self.empty.as_mut()
    }

    #[inline]
    fn finish(&mut self) -> Option<&mut Vec<T>> {
        if !self.current.is_empty() {
            self.pending.push_back(std::mem::take(&mut self.current));
        }
        self.empty = self.pending.pop_front();
        self.empty.as_mut()
    }
}

impl<T: 'static> LengthPreservingContainerBuilder for Batcher<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_batches_in_order() {
        let mut builder = Batcher::default();
        for i in 0..(BATCH + 3) {
            builder.push_into(i);
        }
        let first = builder.extract().unwrap().clone();
        assert_eq!(first.len(), BATCH);
        assert_eq!(first[0], 0);
        assert!(builder.extract().is_none());
        let last = builder.finish().unwrap().clone();
        assert_eq!(last, vec![BATCH, BATCH + 1, BATCH + 2]);
    }
}
