//! The fold's part of a checkpoint: written straight from the live state through
//! borrowing views that serialize exactly as the owned snapshot types, and restored
//! from a snapshot.

use compact_str::CompactString;

use super::state::{Fold, Pending, UserEntry};
use crate::checkpoint::protocol::Checkpointing;
use crate::checkpoint::{FoldSnapshot, PartEntry};
use crate::model::event::{Event, Millis};
use crate::summary::Counts;

/// A worker's part of a checkpoint, borrowing the live state: serializes exactly as
/// [`crate::checkpoint::WorkerPart`] (same fields, same order).
#[derive(serde::Serialize)]
pub(super) struct PartView<'a> {
    pub(super) epoch: u64,
    pub(super) cut: Millis,
    pub(super) worker: usize,
    pub(super) workers: usize,
    pub(super) partitions: &'a [crate::checkpoint::PartitionState],
    pub(super) ingest_counts: &'a Counts,
    pub(super) fold: FoldView<'a>,
    pub(super) fold_counts: Counts,
}

/// The fold's state at a cut, borrowed: serializes exactly as [`FoldSnapshot`].
#[derive(serde::Serialize)]
pub(super) struct FoldView<'a> {
    pub(super) strings: &'a [CompactString],
    pub(super) users: &'a [UserEntry],
    pub(super) seen: Vec<crate::checkpoint::SeenEntry>,
    pub(super) seen_late: Vec<crate::checkpoint::SeenEntry>,
    pub(super) pending: Vec<(Millis, &'a Event)>,
    pub(super) max_clock: Option<f64>,
    pub(super) open_rows: Vec<&'a crate::model::training::OpenRow>,
    pub(super) spine_before: Millis,
    pub(super) outcomes: Vec<(&'a CompactString, &'a crate::model::training::UserOutcomes)>,
    pub(super) skew: Vec<(crate::skew::SkewKey, crate::skew::SkewStats)>,
    pub(super) skew_examples: crate::skew::Examples,
}

impl Fold {
    /// The fold's state at a cut: everything applied, and the pending events that
    /// were sent before the cut.
    #[cfg(test)]
    pub(super) fn snapshot(&self, cut: Millis) -> FoldSnapshot {
        use crate::checkpoint::UserSnapshot;
        let (skew, skew_examples) = self.skew_part();
        FoldSnapshot {
            strings: self.interner.strings().to_vec(),
            users: self
                .users
                .entries
                .iter()
                .map(|e| UserSnapshot {
                    user_id: e.user_id.clone(),
                    hash: e.hash,
                    state: e.state.clone(),
                    has_view: e.has_view,
                    dirty: e.dirty,
                })
                .collect(),
            seen: self.seen.entries().collect(),
            seen_late: self.seen_late.entries().collect(),
            pending: self
                .pending
                .iter()
                .filter(|batch| batch.sent_at < cut)
                .flat_map(|batch| batch.events.iter().map(move |e| (batch.sent_at, e.clone())))
                .collect(),
            max_clock: self.max_clock,
            open_rows: self.spine.iter().flat_map(|s| s.all().cloned()).collect(),
            spine_before: cut,
            outcomes: self
                .spine
                .iter()
                .flat_map(|s| s.outcomes().map(|(u, o)| (u.clone(), o.clone())))
                .collect(),
            skew,
            skew_examples,
        }
    }

    /// Takes over state from a checkpoint.
    pub(super) fn restore(&mut self, snapshot: FoldSnapshot) {
        let ids: Vec<u32> = snapshot.strings.iter().map(|s| self.interner.intern(s)).collect();
        for user in snapshot.users {
            let slot = self.users.slot(user.hash, &user.user_id, &self.job);
            let entry = &mut self.users.entries[slot as usize];
            entry.state = user.state;
            entry.state.remap(|id| ids[id as usize]);
            entry.has_view = user.has_view;
            if user.dirty && !entry.dirty {
                entry.dirty = true;
                self.dirty.push(slot);
            }
        }
        if !self.dirty.is_empty() {
            self.unflushed_since = Some(0);
        }
        snapshot.seen.into_iter().for_each(|e| self.seen.restore(e));
        snapshot
            .seen_late
            .into_iter()
            .for_each(|e| self.seen_late.restore(e));
        // Pending events were sent before the cut, in another run: they keep the time
        // they were sent at, so each waits for what it waited for before (its own
        // event time; a late event, or one a cut held back, the time it was sent).
        let mut by_time: std::collections::BTreeMap<Millis, Vec<Event>> = std::collections::BTreeMap::new();
        for (sent_at, event) in snapshot.pending {
            by_time.entry(sent_at).or_default().push(event);
        }
        for (sent_at, events) in by_time {
            self.pending.push(Pending::new(sent_at, events));
        }
        if let (Some(spine), Some(export)) = (self.spine.as_mut(), self.job.export.as_ref()) {
            spine.restore(export, snapshot.open_rows, snapshot.outcomes);
        }
        if let Some(counter) = &self.skew {
            counter
                .borrow_mut()
                .restore(snapshot.skew, &snapshot.skew_examples);
        }
        self.spine_before = self.spine_before.max(snapshot.spine_before);
        self.max_clock = match (self.max_clock, snapshot.max_clock) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Writes this worker's part of checkpoint `epoch`, cut at `at`.
    pub(super) fn write_part(
        &self,
        checkpointing: &Checkpointing,
        epoch: u64,
        at: Millis,
    ) -> Result<PartEntry, String> {
        let dir = checkpointing.dir.as_ref().ok_or("no checkpoint directory")?;
        let ingest = checkpointing
            .ingest
            .as_ref()
            .filter(|i| i.epoch == epoch)
            .ok_or_else(|| format!("the ingest has no snapshot for epoch {epoch}"))?;
        let mut fold_counts = self.total.clone();
        fold_counts.merge(&self.counts);
        let part = PartView {
            epoch,
            cut: at,
            worker: checkpointing.worker,
            workers: checkpointing.workers,
            partitions: &ingest.partitions,
            ingest_counts: &ingest.counts,
            fold: self.snapshot_view(at),
            fold_counts,
        };
        crate::checkpoint::write_part_as(
            dir,
            epoch,
            checkpointing.worker,
            &part,
            self.users.entries.len() as u64,
            &ingest.partitions,
        )
        .map_err(|e| crate::error_chain(&e))
    }

    /// The state at the cut as a view that serializes exactly as a [`FoldSnapshot`].
    pub(super) fn snapshot_view(&self, cut: Millis) -> FoldView<'_> {
        let (skew, skew_examples) = self.skew_part();
        FoldView {
            strings: self.interner.strings(),
            users: &self.users.entries,
            seen: self.seen.entries().collect(),
            seen_late: self.seen_late.entries().collect(),
            pending: self
                .pending
                .iter()
                .filter(|batch| batch.sent_at < cut)
                .flat_map(|batch| batch.events.iter().map(move |e| (batch.sent_at, e)))
                .collect(),
            max_clock: self.max_clock,
            open_rows: self.spine.iter().flat_map(|s| s.all()).collect(),
            spine_before: cut,
            outcomes: self.spine.iter().flat_map(|s| s.outcomes()).collect(),
            skew,
            skew_examples,
        }
    }

    /// The skew counters of the rows closed so far, and the examples kept of them.
    fn skew_part(
        &self,
    ) -> (
        Vec<(crate::skew::SkewKey, crate::skew::SkewStats)>,
        crate::skew::Examples,
    ) {
        self.skew.as_ref().map(|c| c.borrow().part()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::checkpoint::{PartitionState, UserSnapshot, WorkerPart};
    use crate::job::Job;
    use crate::model::features::UserState;

    /// A checkpoint is written from a view of the live state; it must be byte for
    /// byte what the owned snapshot would serialize to, or restores would fail.
    #[test]
    fn the_part_view_serializes_as_the_owned_part() {
        let job = Arc::new(
            Job::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/recsys.toml")).unwrap(),
        );
        let mut fold = Fold::new(job);
        let empty = UserState::new(&fold.job.features);
        let users = ["u1", "u2", "u3"].map(|u| UserSnapshot {
            user_id: u.into(),
            hash: crate::model::event::key_hash(u),
            state: empty.clone(),
            has_view: u != "u2",
            dirty: u == "u3",
        });
        let seen = crate::dataflow::fold::dedup::id_key(crate::model::event::key_hash("u1"), "e1");
        fold.restore(FoldSnapshot {
            strings: vec!["books".into(), "music".into()],
            users: users.to_vec(),
            seen: vec![(seen, 10.0, 0)],
            seen_late: Vec::new(),
            pending: Vec::new(),
            max_clock: Some(12.5),
            open_rows: Vec::new(),
            spine_before: 0,
            outcomes: Vec::new(),
            skew: Vec::new(),
            skew_examples: Default::default(),
        });
        let partitions = vec![PartitionState {
            name: "p0".into(),
            position: 7,
            max_seen: Some(12.5),
            finished: false,
            digest: None,
        }];
        let counts = Counts {
            read: 9,
            ..Counts::default()
        };
        let owned = WorkerPart {
            epoch: 3,
            cut: 11_000,
            worker: 1,
            workers: 2,
            partitions: partitions.clone(),
            ingest_counts: counts.clone(),
            fold: fold.snapshot(11_000),
            fold_counts: counts.clone(),
        };
        let view = PartView {
            epoch: 3,
            cut: 11_000,
            worker: 1,
            workers: 2,
            partitions: &partitions,
            ingest_counts: &counts,
            fold: fold.snapshot_view(11_000),
            fold_counts: counts.clone(),
        };
        assert_eq!(owned.fold.users.len(), 3);
        assert_eq!(owned.fold.seen.len(), 1);
        assert_eq!(
            bincode::serialize(&view).unwrap(),
            bincode::serialize(&owned).unwrap()
        );
    }
}
