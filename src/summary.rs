//! Run counters and the run summary (DESIGN.md section 7).
//!
//! Every record read ends in exactly one outcome; [`Counts::conserved`] checks
//! `read = applied + duplicates + ignored + late_dropped + sum(dlq)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dlq::letter::Reason;

/// Outcome counters of one worker, or of a whole run once merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Records read.
    pub read: u64,
    /// Events applied.
    pub applied: u64,
    /// Copies of an event id already seen.
    pub duplicates: u64,
    /// Events of types the job does not know.
    pub ignored: u64,
    /// Late events, whatever the policy did with them.
    pub late: u64,
    /// Late events dropped (policy `drop`).
    pub late_dropped: u64,
    /// Dead letters per reason, indexed by [`Reason::index`].
    pub dlq: [u64; Reason::ALL.len()],
    /// Users with a view.
    pub users: u64,
    /// Records only archived (jobs that only archive do not decode).
    pub archived: u64,
}

impl Counts {
    /// Adds another worker's counters.
    pub fn merge(&mut self, other: &Counts) {
        self.read += other.read;
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.ignored += other.ignored;
        self.late += other.late;
        self.late_dropped += other.late_dropped;
        for (a, b) in self.dlq.iter_mut().zip(other.dlq.iter()) {
            *a += b;
        }
        self.users += other.users;
        self.archived += other.archived;
    }

    /// All dead letters.
    pub fn dlq_total(&self) -> u64 {
        self.dlq.iter().sum()
    }

    /// Counts one dead letter.
    pub fn dead_letter(&mut self, reason: Reason) {
        self.dlq[reason.index()] += 1;
    }

    /// Whether every record read has exactly one outcome.
    pub fn conserved(&self) -> bool {
        self.read == self.accounted()
    }

    /// Records with an outcome: `applied + duplicates + ignored + late_dropped +
    /// sum(dlq)`, plus those only archived.
    pub fn accounted(&self) -> u64 {
        self.applied + self.duplicates + self.ignored + self.late_dropped + self.dlq_total() + self.archived
    }

    /// Dead letters by reason name.
    pub fn dlq_by_reason(&self) -> BTreeMap<&'static str, u64> {
        Reason::ALL
            .iter()
            .map(|r| (r.as_str(), self.dlq[r.index()]))
            .collect()
    }
}

/// What became of a spine file's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpineRows {
    /// Rows read.
    pub read: u64,
    /// Rows dead-lettered as `invalid_spine_row`.
    pub dead_lettered: u64,
}

/// The summary every run ends with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// The job's name.
    pub job: String,
    /// Records read.
    pub read: u64,
    /// Events applied.
    pub applied: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Ignored (unknown types).
    pub ignored: u64,
    /// Late events (either policy).
    pub late: u64,
    /// Late events dropped.
    pub late_dropped: u64,
    /// Dead letters per reason.
    pub dlq: BTreeMap<String, u64>,
    /// All dead letters.
    pub dlq_total: u64,
    /// Users with a view.
    pub users: u64,
    /// Records only archived (archive-only jobs).
    pub archived: u64,
    /// The final watermark, in event-time seconds; `null` when nothing was read.
    pub watermark: Option<f64>,
    /// A stop request (SIGINT, SIGTERM) ended a run over files before the end of its
    /// input: the counts and views cover what was read, `watermark` is where the run
    /// stopped, and running the same command again resumes from its last checkpoint.
    /// (A streaming run's stop is its normal end, never an interruption.)
    pub interrupted: bool,
    /// Whether `read = applied + duplicates + ignored + late_dropped + dlq_total`
    /// (`+ archived` for archive-only jobs).
    pub conserved: bool,
    /// Worker threads, over all processes.
    pub workers: usize,
    /// Wall-clock seconds the run took.
    pub wall_time_s: f64,
    /// Records read per wall-clock second.
    pub events_per_s: f64,
    /// Where outputs went.
    pub outputs: BTreeMap<String, String>,
    /// The checkpoint the run resumed from; the counts are the whole job's since its
    /// fresh start, and `events_per_s` is this run's own rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_checkpoint: Option<u64>,
    /// Processes of a cluster run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<usize>,
    /// This process, on processes of a cluster other than 0: their summary holds
    /// only their own workers' counts (process 0's holds the run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<usize>,
    /// Training rows this run wrote (DESIGN.md section 10); a resumed run counts its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_rows: Option<u64>,
    /// Rows of the spine file (`--spine`) read and dead-lettered (as
    /// `invalid_spine_row`, in the dead-letter file; not counted in `dlq`, which
    /// accounts for the log's records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spine_rows: Option<SpineRows>,
    /// Features whose serving-skew mismatch rate is over their threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_failed: Option<Vec<String>>,
    /// The serving-skew report, for the table the command line prints.
    #[serde(skip)]
    pub skew: Option<crate::skew::Report>,
}

impl Summary {
    /// Builds a summary from merged counters.
    pub fn new(
        job: &str,
        counts: &Counts,
        watermark: Option<f64>,
        workers: usize,
        wall_time_s: f64,
    ) -> Summary {
        Summary {
            job: job.to_owned(),
            read: counts.read,
            applied: counts.applied,
            duplicates: counts.duplicates,
            ignored: counts.ignored,
            late: counts.late,
            late_dropped: counts.late_dropped,
            dlq: counts
                .dlq_by_reason()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            dlq_total: counts.dlq_total(),
            users: counts.users,
            archived: counts.archived,
            watermark,
            interrupted: false,
            conserved: counts.conserved(),
            workers,
            wall_time_s,
            events_per_s: if wall_time_s > 0.0 {
                counts.read as f64 / wall_time_s
            } else {
                0.0
            },
            outputs: BTreeMap::new(),
            resumed_from_checkpoint: None,
            processes: None,
            process: None,
            training_rows: None,
            spine_rows: None,
            skew_failed: None,
            skew: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conservation_counts_every_outcome_once() {
        let mut counts = Counts {
            read: 10,
            applied: 4,
            duplicates: 1,
            ignored: 2,
            late: 2,
            late_dropped: 1,
            ..Counts::default()
        };
        counts.dead_letter(Reason::InvalidJson);
        assert!(!counts.conserved());
        counts.dead_letter(Reason::LateEvent);
        assert!(counts.conserved());
        let mut total = Counts::default();
        total.merge(&counts);
        total.merge(&counts);
        assert_eq!(total.read, 20);
        assert_eq!(total.dlq_total(), 4);
        assert!(total.conserved());
    }
}
