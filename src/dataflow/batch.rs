//! Containers of many records per message.
//!
//! Timely's default builder sizes `Vec` containers to 8 KiB, which is a few dozen of
//! our events; [`Batcher`] fills containers of [`BATCH`] records instead, so the
//! per-message costs of exchange and progress tracking are paid per thousand records.
//! Consumers hand emptied containers back to a [`Pool`], from which producers take
//! them again: a full container of events is about a quarter MiB, and allocating one
//! per thousand events (to be freed on another worker) kept the allocator faulting in
//! and zeroing fresh pages.

use std::collections::VecDeque;
use std::sync::Mutex;

use timely::container::{ContainerBuilder, LengthPreservingContainerBuilder, PushInto};

/// Records per container.
pub const BATCH: usize = 1024;

/// Emptied containers shared by a process's workers.
pub struct Pool<T> {
    free: Mutex<Vec<Vec<T>>>,
}

/// Containers a pool keeps at most (the rest are freed): enough for the containers one
/// read batch of 16k records fills for each of a few workers; for events at most about
/// 30 MiB, held for the life of the process.
const POOL_MAX: usize = 128;

impl<T> Pool<T> {
    /// An empty pool.
    pub const fn new() -> Pool<T> {
        Pool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// An empty container with room for [`BATCH`] records, if the pool has one.
    pub fn take(&self) -> Option<Vec<T>> {
        self.free.lock().ok()?.pop()
    }

    /// Hands a container back (its records are dropped).
    pub fn give(&self, mut container: Vec<T>) {
        container.clear();
        if container.capacity() >= BATCH
            && let Ok(mut free) = self.free.lock()
            && free.len() < POOL_MAX
        {
            free.push(container);
        }
    }
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool::new()
    }
}

/// Records whose containers are recycled through a process-wide [`Pool`].
pub trait Pooled: Sized + 'static {
    /// The pool of this record type's containers.
    fn pool() -> &'static Pool<Self>;
}

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

impl<T: Pooled> PushInto<T> for Batcher<T> {
    #[inline]
    fn push_into(&mut self, item: T) {
        if self.current.capacity() == 0 {
            // The container timely handed back (empty when it went to another
            // operator), else one from the pool, else a new one.
            self.current = self
                .empty
                .take()
                .filter(|c| c.capacity() > 0)
                .or_else(|| T::pool().take())
                .unwrap_or_default();
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

static CONTAINERS: Pool<crate::model::event::Event> = Pool::new();

impl Pooled for crate::model::event::Event {
    fn pool() -> &'static Pool<crate::model::event::Event> {
        &CONTAINERS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NUMBERS: Pool<usize> = Pool::new();

    impl Pooled for usize {
        fn pool() -> &'static Pool<usize> {
            &NUMBERS
        }
    }

    #[test]
    fn reuses_pooled_containers() {
        let pool = Pool::<u8>::new();
        let container = Vec::with_capacity(BATCH);
        let address = container.as_ptr();
        pool.give(container);
        pool.give(Vec::with_capacity(1));
        let reused = pool.take().expect("the full-size container was kept");
        assert_eq!(reused.as_ptr(), address);
        assert!(pool.take().is_none(), "small containers are not kept");
    }

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
