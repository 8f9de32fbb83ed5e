//! Partition clocks, lateness and the watermark (DESIGN.md section 4).
//!
//! Each partition has a clock: the largest `event_time` seen in it. An event is late
//! when it is earlier than its partition's clock (before it) minus the allowed
//! lateness, or earlier than the watermark this worker holds. The watermark is the
//! minimum over active partitions of (clock - allowed lateness); idle partitions
//! (wall clock) and finished ones stop holding it back.

use std::time::{Duration, Instant};

use crate::model::event::{Millis, to_millis};

/// Whether a partition still holds the watermark back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionStatus {
    /// Records may still come, and it holds the watermark.
    Active,
    /// No records for the idle timeout: it does not hold the watermark until it wakes.
    Idle,
    /// It will never produce again.
    Finished,
}

#[derive(Debug, Clone)]
struct Clock {
    max_seen: Option<f64>,
    status: PartitionStatus,
    last_record: Instant,
    /// Its last read said records may be waiting for it (not fetched yet, or the
    /// broker unreachable): not idle, however long since its last record.
    waiting: bool,
}

/// The clocks of the partitions one worker reads.
#[derive(Debug, Clone)]
pub struct Clocks {
    clocks: Vec<Clock>,
    allowed_lateness: f64,
    idle_timeout: Duration,
    /// The watermark this worker has published, in milliseconds; never goes back.
    watermark: Millis,
}

impl Clocks {
    /// Clocks for `partitions` partitions, none seen yet.
    pub fn new(partitions: usize, allowed_lateness: f64, idle_timeout: Duration) -> Clocks {
        let now = Instant::now();
        Clocks {
            clocks: vec![
                Clock {
                    max_seen: None,
                    status: PartitionStatus::Active,
                    last_record: now,
                    // Not read yet: nothing says it has nothing.
                    waiting: true,
                };
                partitions
            ],
            allowed_lateness,
            idle_timeout,
            watermark: 0,
        }
    }

    /// Records an event time seen in `partition` and says whether that event is late.
    /// Call for every record that passed the envelope checks, in partition order.
    pub fn observe(&mut self, partition: usize, event_time: f64, now: Instant) -> bool {
        let clock = &mut self.clocks[partition];
        let behind_partition = clock
            .max_seen
            .is_some_and(|max| event_time < max - self.allowed_lateness);
        let behind_watermark = to_millis(event_time) < self.watermark;
        clock.max_seen = Some(clock.max_seen.map_or(event_time, |max| max.max(event_time)));
        clock.last_record = now;
        clock.waiting = false;
        if clock.status == PartitionStatus::Idle {
            clock.status = PartitionStatus::Active;
        }
        behind_partition || behind_watermark
    }

    /// Notes that `partition` had no record to give at `now`; it turns idle once the
    /// idle timeout has passed since its last record.
    pub fn poll_empty(&mut self, partition: usize, now: Instant) {
        let clock = &mut self.clocks[partition];
        clock.waiting = false;
        if clock.status == PartitionStatus::Active
            && now.duration_since(clock.last_record) >= self.idle_timeout
        {
            clock.status = PartitionStatus::Idle;
        }
    }

    /// Notes that `partition` gave no record but may have some waiting (not fetched
    /// yet, or its broker unreachable): it is not idle until a read finds it empty.
    pub fn touch(&mut self, partition: usize, now: Instant) {
        let clock = &mut self.clocks[partition];
        clock.last_record = now;
        clock.waiting = true;
    }

    /// Marks every partition that is not finished as [`Clocks::touch`] does: they
    /// were not read, so nothing says they are idle.
    pub fn touch_all(&mut self, now: Instant) {
        for partition in 0..self.clocks.len() {
            if self.clocks[partition].status != PartitionStatus::Finished {
                self.touch(partition, now);
            }
        }
    }

    /// How long since any partition that is not finished gave a record (the shortest
    /// such wait; zero while one may have records waiting); `Duration::MAX` when every
    /// partition is finished.
    pub fn idle_for(&self, now: Instant) -> Duration {
        self.clocks
            .iter()
            .filter(|c| c.status != PartitionStatus::Finished)
            .map(|c| match c.waiting {
                true => Duration::ZERO,
                false => now.saturating_duration_since(c.last_record),
            })
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// A partition's clock and whether it is finished, for a checkpoint.
    pub fn snapshot(&self, partition: usize) -> (Option<f64>, bool) {
        let clock = &self.clocks[partition];
        (clock.max_seen, clock.status == PartitionStatus::Finished)
    }

    /// Restores a partition's clock from a checkpoint.
    pub fn restore(&mut self, partition: usize, max_seen: Option<f64>, finished: bool) {
        let clock = &mut self.clocks[partition];
        clock.max_seen = max_seen;
        if finished {
            clock.status = PartitionStatus::Finished;
        }
    }

    /// Marks `partition` finished: it no longer holds the watermark back.
    pub fn finish(&mut self, partition: usize) {
        self.clocks[partition].status = PartitionStatus::Finished;
    }

    /// A partition's status.
    pub fn status(&self, partition: usize) -> PartitionStatus {
        self.clocks[partition].status
    }

    /// Whether every partition is finished.
    pub fn all_finished(&self) -> bool {
        self.clocks.iter().all(|c| c.status == PartitionStatus::Finished)
    }

    /// The largest event time seen in any partition.
    pub fn max_seen(&self) -> Option<f64> {
        self.clocks.iter().filter_map(|c| c.max_seen).reduce(f64::max)
    }

    /// A partition's clock.
    pub fn clock(&self, partition: usize) -> Option<f64> {
        self.clocks[partition].max_seen
    }

    /// Recomputes the watermark and returns it (milliseconds). It never goes back.
    ///
    /// With no active partition left but some idle, the watermark moves up to the
    /// largest (clock - allowed lateness) of any partition.
    pub fn advance(&mut self) -> Millis {
        let lateness = self.allowed_lateness;
        let bound = |c: &Clock| c.max_seen.map_or(0, |max| to_millis((max - lateness).max(0.0)));
        let active = self
            .clocks
            .iter()
            .filter(|c| c.status == PartitionStatus::Active)
            .map(bound)
            .min();
        let next = match active {
            Some(min) => min,
            None => self
                .clocks
                .iter()
                .filter(|c| c.status == PartitionStatus::Idle)
                .map(bound)
                .max()
                .unwrap_or(self.watermark),
        };
        self.watermark = self.watermark.max(next);
        self.watermark
    }

    /// The watermark last computed by [`Clocks::advance`].
    pub fn watermark(&self) -> Millis {
        self.watermark
    }

    /// Whether `partition` runs more than `skew` seconds ahead of the slowest active
    /// partition (the watermark plus the allowed lateness), and so should wait. The
    /// slowest active partition itself never waits, nor does any partition when none
    /// is active, so this never stops the watermark from moving.
    pub fn ahead(&self, partition: usize, skew: f64) -> bool {
        let limit = self.watermark as f64 / 1000.0 + self.allowed_lateness + skew;
        self.clocks[partition].max_seen.is_some_and(|clock| clock > limit)
    }

    /// Partitions in the order they should be read: active and idle ones with the
    /// smallest clock first (unseen first), so the watermark keeps moving.
    pub fn reading_order(&self, order: &mut Vec<usize>) {
        order.clear();
        order.extend((0..self.clocks.len()).filter(|&p| self.clocks[p].status != PartitionStatus::Finished));
        order.sort_by(|&a, &b| {
            let key = |p: usize| self.clocks[p].max_seen.unwrap_or(f64::NEG_INFINITY);
            key(a).total_cmp(&key(b))
        });
    }
}

/// The largest value seen lately: it halves every second after it was seen.
#[derive(Debug, Default)]
pub(super) struct RecentMax {
    value: f64,
    at: Option<Instant>,
}

impl RecentMax {
    pub(super) fn at(&self, now: Instant) -> f64 {
        match self.at {
            Some(at) => self.value * 0.5f64.powf(now.saturating_duration_since(at).as_secs_f64()),
            None => 0.0,
        }
    }

    pub(super) fn observe(&mut self, value: f64, now: Instant) {
        let decayed = self.at(now);
        if value >= decayed {
            self.value = value;
            self.at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks(partitions: usize) -> Clocks {
        Clocks::new(partitions, 5.0, Duration::from_secs(10))
    }

    #[test]
    fn late_is_relative_to_the_clock_before_the_event() {
        let mut c = clocks(1);
        let now = Instant::now();
        assert!(!c.observe(0, 100.0, now));
        assert!(!c.observe(0, 95.0, now), "exactly at the bound is on time");
        assert!(c.observe(0, 94.999, now));
        assert!(!c.observe(0, 200.0, now));
        assert!(c.observe(0, 100.0, now));
        assert_eq!(c.clock(0), Some(200.0));
    }

    #[test]
    fn watermark_is_the_minimum_over_active_partitions() {
        let mut c = clocks(2);
        let now = Instant::now();
        c.observe(0, 100.0, now);
        assert_eq!(c.advance(), 0, "an unseen active partition holds it at zero");
        c.observe(1, 50.0, now);
        assert_eq!(c.advance(), 45_000);
        c.finish(1);
        assert_eq!(c.advance(), 95_000);
        c.finish(0);
        assert!(c.all_finished());
        assert_eq!(
            c.advance(),
            95_000,
            "never goes back, holds when all are finished"
        );
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark_and_wake_up_late() {
        let mut c = clocks(2);
        let start = Instant::now();
        c.observe(0, 100.0, start);
        c.observe(1, 20.0, start);
        assert_eq!(c.advance(), 15_000);
        c.poll_empty(1, start + Duration::from_secs(11));
        assert_eq!(c.status(1), PartitionStatus::Idle);
        assert_eq!(c.advance(), 95_000);
        // Partition 1 wakes with an event behind the watermark: late, though its own
        // clock would allow it.
        assert!(c.observe(1, 21.0, start + Duration::from_secs(12)));
        assert_eq!(c.status(1), PartitionStatus::Active);
        assert!(!c.observe(1, 96.0, start + Duration::from_secs(12)));
    }

    #[test]
    fn a_partition_with_records_waiting_is_not_idle_until_a_read_finds_it_empty() {
        let mut c = clocks(2);
        let start = Instant::now();
        c.observe(0, 100.0, start);
        c.poll_empty(0, start + Duration::from_secs(1));
        c.touch(1, start);
        let later = start + Duration::from_secs(60);
        assert_eq!(c.idle_for(later), Duration::ZERO, "partition 1 is waiting");
        c.poll_empty(1, start + Duration::from_secs(30));
        assert_eq!(c.idle_for(later), Duration::from_secs(60));
        c.touch_all(later);
        assert_eq!(c.idle_for(later + Duration::from_secs(60)), Duration::ZERO);
        c.observe(0, 101.0, later);
        c.finish(1);
        assert_eq!(c.idle_for(later + Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn a_partition_far_ahead_of_the_slowest_waits_for_it() {
        let mut c = clocks(3);
        let now = Instant::now();
        c.observe(0, 100.0, now);
        c.observe(1, 160.0, now);
        c.observe(2, 160.001, now);
        assert_eq!(c.advance(), 95_000);
        assert!(!c.ahead(0, 60.0), "the slowest partition never waits");
        assert!(!c.ahead(1, 60.0), "exactly at the bound is not ahead");
        assert!(c.ahead(2, 60.0));
        assert!(!c.ahead(0, 0.0), "even with no skew allowed");
        // Once the slowest one goes idle, the watermark moves and nothing waits.
        c.poll_empty(0, now + Duration::from_secs(11));
        c.advance();
        assert!(!c.ahead(2, 60.0));
    }

    #[test]
    fn reads_the_partition_furthest_behind_first() {
        let mut c = clocks(3);
        let now = Instant::now();
        c.observe(0, 30.0, now);
        c.observe(2, 10.0, now);
        let mut order = Vec::new();
        c.reading_order(&mut order);
        assert_eq!(order, vec![1, 2, 0]);
    }
}
