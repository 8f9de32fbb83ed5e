//! Agreeing on a cut: how the workers of a run (of every process) take one checkpoint.
//!
//! Worker 0 coordinates over a small control dataflow of its own (messages broadcast
//! to every worker, or sent to worker 0):
//!
//! 1. `Request(k)`: every ingest operator stops reading and acks the time its
//!    capability is at, and its safe time: its watermark, or its capability when that
//!    is earlier (none of its unread records is earlier, unless late).
//! 2. `Cut(k, B)`, with `B` after every acked time: every ingest reads on as before
//!    until its watermark reaches `B`; then, before it sends anything at `B`, it
//!    snapshots its partitions (positions, clocks) and counts, and reads on while
//!    holding its capability at `B`. Nothing sent before its snapshot is at `B` or
//!    later; everything sent after is. No capability is pushed ahead of its watermark,
//!    so taking a checkpoint changes neither when nor in which order events apply.
//! 3. Every fold waits for its input frontier to be exactly `B` (every event sent
//!    before the cut has arrived, none after it has been applied), snapshots its state
//!    (leaving out what was sent at `B` or later) and writes the worker's part. The
//!    ingest then lets go of `B`. A worker that stops reading (a stopped backfill)
//!    holds its capability at `B` at once, ahead of its watermark, and a record it has
//!    not read may precede, at an equal time, one the fold would apply before `B`: so
//!    the part applies only what is before the earliest acked safe time, and keeps the
//!    rest pending. The fold goes on applying only that much until its frontier passes
//!    `B`: a stop may need one more checkpoint, whose part must not hold what was
//!    applied ahead of an unread record. A checkpoint is thus at a watermark boundary:
//!    it completes once the slowest worker's watermark has reached `B`.
//! 4. `Done(k)` once the part is written and every output before `B` is durable
//!    (the probe after the sinks has passed `B`); worker 0 then writes the manifest and
//!    broadcasts `Complete(k)`, after which Kafka offsets are committed from the
//!    checkpoint. Views of users that changed before the cut but were not yet written
//!    are in the checkpoint (their `dirty` flag), so restore writes them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Manifest, PartEntry, PartitionState};
use crate::model::event::Millis;
use crate::summary::Counts;

/// A message of the control dataflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// Worker 0 asks for checkpoint `epoch`.
    Request {
        /// The epoch.
        epoch: u64,
    },
    /// A worker has stopped reading; its capability is at `at`, and no record it has
    /// not read is earlier than `safe`.
    Ack {
        /// The epoch.
        epoch: u64,
        /// The worker.
        worker: usize,
        /// Its capability's time.
        at: Millis,
        /// Its watermark, or its capability when that is earlier: a worker that
        /// stopped reading holds its capability at a cut, ahead of its watermark, and
        /// its unread records are only known to be at or after the watermark.
        safe: Millis,
    },
    /// Worker 0 fixes the cut.
    Cut {
        /// The epoch.
        epoch: u64,
        /// The cut's time.
        at: Millis,
        /// The earliest acked time: no record still unread by any worker is earlier,
        /// so the folds' parts apply only what is before it (see the module's step 3).
        safe: Millis,
    },
    /// A worker's part is written and its outputs before the cut are durable (or, with
    /// `None`, it could not take its part).
    Done {
        /// The epoch.
        epoch: u64,
        /// The worker.
        worker: usize,
        /// The part's manifest entry.
        entry: Option<PartEntry>,
    },
    /// The checkpoint is complete.
    Complete {
        /// The epoch.
        epoch: u64,
    },
    /// A worker's final counts, for the run's summary (sent to worker 0 at the end).
    Stats {
        /// The worker.
        worker: usize,
        /// Its counts.
        counts: Counts,
        /// The largest event time its partitions saw.
        max_event_time: Option<f64>,
        /// The watermark (seconds) it stopped at, when a stop request ended its
        /// reading before the end of a bounded input.
        stopped_at: Option<f64>,
        /// Why it failed, when it did.
        error: Option<String>,
    },
}

/// What the ingest operator snapshotted at a cut.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestCut {
    /// The epoch.
    pub epoch: u64,
    /// The cut's time.
    pub at: Millis,
    /// The worker's partitions.
    pub partitions: Vec<PartitionState>,
    /// The ingest counts at the cut.
    pub counts: Counts,
}

/// What the ingest operator should do in this activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Read; while a cut is open, never let the capability pass its time.
    Run {
        /// The open cut, if any.
        cut: Option<OpenCut>,
    },
    /// Do not read: a checkpoint is being agreed.
    Pause,
}

/// A cut the fold has not yet taken its part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCut {
    /// The epoch.
    pub epoch: u64,
    /// The cut's time.
    pub at: Millis,
    /// Whether this worker's ingest has snapshotted for it: it does when its
    /// watermark reaches the cut, before sending anything at the cut's time.
    pub snapshotted: bool,
}

/// One worker's part in the checkpoint protocol, shared by its operators and its
/// main loop.
#[derive(Debug, Default)]
pub struct Checkpointing {
    /// The checkpoint directory; `None` when the run takes no checkpoints.
    pub dir: Option<PathBuf>,
    /// The job's name.
    pub job: String,
    /// This worker.
    pub worker: usize,
    /// All workers.
    pub workers: usize,
    /// The latest request received.
    pub request: Option<u64>,
    /// The epoch acked, the capability's time and the safe time acked.
    pub acked: Option<(u64, Millis, Millis)>,
    ack_sent: Option<u64>,
    /// The latest cut received.
    pub cut: Option<(u64, Millis)>,
    /// The latest cut's earliest acked time.
    pub cut_safe: Millis,
    /// The ingest's snapshot at the latest cut.
    pub ingest: Option<IngestCut>,
    /// The fold's part for an epoch: its manifest entry, or why it could not be taken.
    pub part: Option<(u64, Result<PartEntry, String>)>,
    done_sent: Option<u64>,
    /// The newest complete epoch whose positions this worker has not committed yet.
    pub complete: Option<u64>,
    /// The newest epoch this worker has seen complete.
    pub last_complete: Option<u64>,
    /// The ingest's partitions and counts when it stopped reading for good (a worker
    /// with nothing left to read still takes part in checkpoints).
    pub finished: Option<(Vec<PartitionState>, Counts)>,
    /// Positions snapshotted per epoch, to commit once complete.
    pub positions: BTreeMap<u64, Vec<(usize, i64)>>,
    /// Operators to wake when a request or a cut arrives (the fold may already be at
    /// the cut's time when it learns of the cut).
    pub wake: Vec<timely::scheduling::Activator>,
}

impl Checkpointing {
    /// Worker `worker` of `workers` of job `job`, checkpointing to `dir` (or not).
    pub fn new(dir: Option<PathBuf>, job: &str, worker: usize, workers: usize) -> Checkpointing {
        Checkpointing {
            dir,
            job: job.to_owned(),
            worker,
            workers,
            ..Checkpointing::default()
        }
    }

    /// Whether the run takes checkpoints.
    pub fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// What the ingest should do, given where its capability is and its watermark.
    pub fn gate(&mut self, capability: Millis, watermark: Millis) -> Gate {
        if let Some((epoch, at)) = self.cut
            && self.part.as_ref().map(|p| p.0) != Some(epoch)
        {
            let snapshotted = self.ingest.as_ref().map(|i| i.epoch) == Some(epoch);
            return Gate::Run {
                cut: Some(OpenCut {
                    epoch,
                    at,
                    snapshotted,
                }),
            };
        }
        if let Some(epoch) = self.request
            && self.cut.map(|c| c.0) != Some(epoch)
        {
            if self.acked.map(|a| a.0) != Some(epoch) {
                self.acked = Some((epoch, capability, capability.min(watermark)));
            }
            return Gate::Pause;
        }
        Gate::Run { cut: None }
    }

    /// Records the ingest's snapshot for `cut`: its partitions and counts.
    pub fn snapshot(&mut self, cut: OpenCut, partitions: Vec<PartitionState>, counts: Counts) {
        self.positions.insert(
            cut.epoch,
            partitions
                .iter()
                .enumerate()
                .map(|(p, s)| (p, s.position))
                .collect(),
        );
        self.ingest = Some(IngestCut {
            epoch: cut.epoch,
            at: cut.at,
            partitions,
            counts,
        });
    }

    /// The time before which the fold may apply events, given its input frontier and
    /// the limit it last applied up to: the frontier, except around a cut.
    ///
    /// A worker that stopped reading holds its capability at a cut as soon as it learns
    /// of it, ahead of its watermark, so the frontier may pass records it has not read
    /// (step 3). From this worker's ack until it learns the cut nothing more is applied
    /// (another worker may have learnt it first); until the frontier passes the cut,
    /// only what is before the earliest acked safe time. Otherwise a part, this one or
    /// the next (which a stop may need), would hold events applied out of order.
    pub fn apply_limit(&self, frontier: Millis, applied: Millis) -> Millis {
        if self.request.is_some() && self.request != self.cut.map(|(epoch, _)| epoch) {
            return frontier.min(applied);
        }
        match self.cut {
            Some((_, at)) if frontier <= at => frontier.min(self.cut_safe),
            _ => frontier,
        }
    }

    /// Handles a message from the control dataflow.
    pub fn receive(&mut self, message: &Control) {
        if matches!(message, Control::Request { .. } | Control::Cut { .. }) {
            self.wake.iter().for_each(timely::scheduling::Activator::activate);
        }
        match *message {
            Control::Request { epoch } => {
                self.request = Some(epoch);
                if self.finished.is_some() && self.acked.map(|a| a.0) != Some(epoch) {
                    // It reads no more in this run, but a stopped one (not at the end of
                    // its input) has records left for the run that resumes it, at times
                    // not known here: its safe time is the earliest there is.
                    self.acked = Some((epoch, 0, 0));
                }
            }
            Control::Cut { epoch, at, safe } => {
                self.cut = Some((epoch, at));
                self.cut_safe = safe;
                if let Some((partitions, counts)) = &self.finished {
                    self.ingest = Some(IngestCut {
                        epoch,
                        at,
                        partitions: partitions.clone(),
                        counts: counts.clone(),
                    });
                }
            }
            Control::Complete { epoch } => {
                self.complete = Some(epoch);
                self.last_complete = self.last_complete.max(Some(epoch));
            }
            _ => {}
        }
    }

    /// Messages this worker owes worker 0: an ack, or a done once `durable` (whether
    /// every output before the cut is durable) holds.
    pub fn outgoing(&mut self, durable: impl Fn(Millis) -> bool) -> Vec<Control> {
        let mut out = Vec::new();
        if let Some((epoch, at, safe)) = self.acked
            && self.ack_sent != Some(epoch)
        {
            self.ack_sent = Some(epoch);
            out.push(Control::Ack {
                epoch,
                worker: self.worker,
                at,
                safe,
            });
        }
        if let (Some((epoch, result)), Some((cut_epoch, at))) = (&self.part, self.cut) {
            let failed = result.is_err();
            if *epoch == cut_epoch && self.done_sent != Some(*epoch) && (failed || durable(at)) {
                self.done_sent = Some(*epoch);
                out.push(Control::Done {
                    epoch: *epoch,
                    worker: self.worker,
                    entry: result.as_ref().ok().cloned(),
                });
            }
        }
        out
    }
}

/// Worker 0's side: when to ask for a checkpoint, and how to finish one.
#[derive(Debug)]
pub struct Coordinator {
    dir: PathBuf,
    job: String,
    features: String,
    time: String,
    workers: usize,
    interval: Duration,
    keep: usize,
    epoch: u64,
    last: Instant,
    /// Take the next checkpoint without waiting for the interval.
    soon: bool,
    /// A stop is waiting for a checkpoint: the next one is taken at once after each.
    hurried: bool,
    current: Option<InProgress>,
}

#[derive(Debug)]
struct InProgress {
    epoch: u64,
    started: Instant,
    /// Each worker's acked capability and safe time.
    acks: BTreeMap<usize, (Millis, Millis)>,
    cut: Option<Millis>,
    done: BTreeMap<usize, Option<PartEntry>>,
}

impl Coordinator {
    /// A coordinator for `workers` workers; epochs continue after `last_epoch`.
    pub fn new(
        dir: PathBuf,
        job: &crate::job::Job,
        workers: usize,
        interval: Duration,
        keep: usize,
        last_epoch: u64,
    ) -> Coordinator {
        Coordinator {
            dir,
            job: job.name.clone(),
            features: super::fingerprint(job),
            time: super::time_settings(job),
            workers,
            interval,
            keep,
            epoch: last_epoch,
            last: Instant::now(),
            soon: false,
            hurried: false,
            current: None,
        }
    }

    /// Takes the next checkpoint now rather than at the end of the interval (a bounded
    /// run that was asked to stop checkpoints where it stopped).
    pub fn hurry(&mut self) {
        self.soon = true;
        self.hurried = true;
    }

    /// Handles messages from workers; returns messages to broadcast.
    pub fn step(&mut self, incoming: &[Control], now: Instant) -> Vec<Control> {
        let mut out = Vec::new();
        for message in incoming {
            let Some(current) = self.current.as_mut() else {
                continue;
            };
            match message {
                Control::Ack {
                    epoch,
                    worker,
                    at,
                    safe,
                } if *epoch == current.epoch => {
                    current.acks.insert(*worker, (*at, *safe));
                    if current.acks.len() == self.workers && current.cut.is_none() {
                        let at = current.acks.values().map(|a| a.0).max().unwrap_or(0) + 1;
                        let safe = current.acks.values().map(|a| a.1).min().unwrap_or(0);
                        current.cut = Some(at);
                        out.push(Control::Cut {
                            epoch: current.epoch,
                            at,
                            safe,
                        });
                    }
                }
                Control::Done { epoch, worker, entry } if *epoch == current.epoch => {
                    current.done.insert(*worker, entry.clone());
                }
                _ => {}
            }
        }
        if let Some(current) = &self.current {
            if current.done.len() == self.workers {
                let current = self.current.take().expect("checked above");
                self.last = now;
                // While a stop waits, checkpoints follow one another: a worker that
                // acked this one before it saw the stop needs a newer one.
                self.soon |= self.hurried;
                match self.finish(current, now) {
                    Ok(epoch) => out.push(Control::Complete { epoch }),
                    Err(problem) => tracing::info!(%problem, "checkpoint abandoned"),
                }
            }
        } else if self.soon || now.duration_since(self.last) >= self.interval {
            self.soon = false;
            self.epoch += 1;
            self.current = Some(InProgress {
                epoch: self.epoch,
                started: now,
                acks: BTreeMap::new(),
                cut: None,
                done: BTreeMap::new(),
            });
            out.push(Control::Request { epoch: self.epoch });
        }
        out
    }

    fn finish(&self, current: InProgress, now: Instant) -> Result<u64, String> {
        let mut parts = Vec::with_capacity(self.workers);
        for (worker, entry) in current.done {
            parts.push(entry.ok_or_else(|| {
                format!(
                    "worker {worker} could not take its part of epoch {}",
                    current.epoch
                )
            })?);
        }
        let manifest = Manifest {
            job: self.job.clone(),
            epoch: current.epoch,
            cut: current.cut.unwrap_or(0),
            workers: self.workers,
            completed_at: crate::dlq::letter::wall_clock_seconds(),
            took_s: now.duration_since(current.started).as_secs_f64(),
            features: self.features.clone(),
            time: self.time.clone(),
            parts,
        };
        super::write_manifest(&self.dir, &manifest).map_err(|e| crate::error_chain(&e))?;
        tracing::info!(
            epoch = manifest.epoch,
            seconds = manifest.took_s,
            "checkpoint complete"
        );
        super::prune(&self.dir, self.keep).map_err(|e| crate::error_chain(&e))?;
        Ok(current.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worker `worker` of two, checkpointing.
    fn worker(worker: usize) -> Checkpointing {
        Checkpointing::new(Some("/tmp".into()), "", worker, 2)
    }

    /// What a worker sends when it acks.
    fn ack(epoch: u64, worker: usize, at: Millis, safe: Millis) -> Vec<Control> {
        vec![Control::Ack {
            epoch,
            worker,
            at,
            safe,
        }]
    }

    #[test]
    fn a_worker_pauses_acks_cuts_holds_and_reports() {
        let mut cp = worker(1);
        assert_eq!(cp.gate(10, 10), Gate::Run { cut: None });
        cp.receive(&Control::Request { epoch: 1 });
        assert_eq!(cp.gate(10, 12), Gate::Pause);
        assert_eq!(cp.gate(11, 12), Gate::Pause, "the ack keeps the first time");
        assert_eq!(cp.outgoing(|_| true), ack(1, 1, 10, 10));
        assert!(cp.outgoing(|_| true).is_empty(), "acked once");
        cp.receive(&Control::Cut {
            epoch: 1,
            at: 21,
            safe: 20,
        });
        let open = OpenCut {
            epoch: 1,
            at: 21,
            snapshotted: false,
        };
        assert_eq!(cp.gate(10, 12), Gate::Run { cut: Some(open) });
        cp.snapshot(open, vec![], Counts::default());
        assert_eq!(cp.positions[&1], vec![]);
        let snapshotted = OpenCut {
            snapshotted: true,
            ..open
        };
        assert_eq!(
            cp.gate(21, 21),
            Gate::Run {
                cut: Some(snapshotted)
            }
        );
        let entry = PartEntry {
            worker: 1,
            file: "f".into(),
            bytes: 1,
            checksum: "0".into(),
            users: 0,
            partitions: vec![],
        };
        cp.part = Some((1, Ok(entry.clone())));
        assert_eq!(cp.gate(21, 21), Gate::Run { cut: None });
        assert!(
            cp.outgoing(|_| false).is_empty(),
            "not done until outputs before the cut are durable"
        );
        assert_eq!(
            cp.outgoing(|at| at == 21),
            vec![Control::Done {
                epoch: 1,
                worker: 1,
                entry: Some(entry)
            }]
        );
    }

    #[test]
    fn a_worker_holding_its_capability_ahead_of_its_watermark_acks_the_watermark_as_safe() {
        // A stopped worker's capability was held at the last cut (21), ahead of the
        // watermark its unread records are at or after (15).
        let mut cp = worker(0);
        cp.receive(&Control::Request { epoch: 2 });
        assert_eq!(cp.gate(21, 15), Gate::Pause);
        assert_eq!(cp.outgoing(|_| true), ack(2, 0, 21, 15));
    }

    #[test]
    fn the_fold_applies_nothing_between_its_ack_and_the_cut_and_only_the_safe_part_until_the_cut_passes() {
        let mut cp = worker(0);
        assert_eq!(cp.apply_limit(50, 10), 50, "no checkpoint: the frontier");
        cp.receive(&Control::Request { epoch: 1 });
        // Another worker learnt the cut first and moved its capability to it: the
        // frontier moved, but this worker does not yet know what is safe.
        assert_eq!(cp.apply_limit(60, 50), 50, "acked, no cut: nothing more");
        cp.receive(&Control::Cut {
            epoch: 1,
            at: 71,
            safe: 55,
        });
        assert_eq!(cp.apply_limit(60, 50), 55);
        assert_eq!(cp.apply_limit(71, 55), 55, "at the cut: only the safe part");
        assert_eq!(cp.apply_limit(52, 50), 52, "below the safe time: the frontier");
        assert_eq!(cp.apply_limit(72, 55), 72, "past the cut: the frontier");
        // The next request freezes again until its cut.
        cp.receive(&Control::Request { epoch: 2 });
        assert_eq!(cp.apply_limit(80, 72), 72);
        cp.receive(&Control::Cut {
            epoch: 2,
            at: 90,
            safe: 85,
        });
        assert_eq!(cp.apply_limit(80, 72), 80);
        assert_eq!(cp.apply_limit(90, 80), 85);
    }

    #[test]
    fn a_worker_that_stopped_reading_acks_at_once_and_safe_from_the_start() {
        // It stopped before the end of its input (or reached it): what it left unread
        // for the next run may be at any time, so nothing is safe to apply ahead of it.
        let mut cp = worker(0);
        cp.finished = Some((
            vec![],
            Counts {
                read: 5,
                ..Counts::default()
            },
        ));
        cp.receive(&Control::Request { epoch: 3 });
        assert_eq!(cp.outgoing(|_| true), ack(3, 0, 0, 0));
        cp.receive(&Control::Cut {
            epoch: 3,
            at: 9,
            safe: 8,
        });
        assert_eq!(cp.ingest.as_ref().unwrap().counts.read, 5);
    }

    #[test]
    fn the_coordinator_cuts_after_every_ack_and_completes_after_every_part() {
        let dir = tempfile::tempdir().unwrap();
        let job = crate::job::Job::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/jobs/recsys.toml"
        )))
        .unwrap();
        let mut co = Coordinator::new(dir.path().to_owned(), &job, 2, Duration::ZERO, 2, 7);
        let now = Instant::now();
        assert_eq!(co.step(&[], now), vec![Control::Request { epoch: 8 }]);
        assert!(
            co.step(
                &[Control::Ack {
                    epoch: 8,
                    worker: 0,
                    at: 5,
                    safe: 5
                }],
                now
            )
            .is_empty()
        );
        assert_eq!(
            co.step(
                &[Control::Ack {
                    epoch: 8,
                    worker: 1,
                    at: 9,
                    safe: 3
                }],
                now
            ),
            vec![Control::Cut {
                epoch: 8,
                at: 10,
                safe: 3
            }]
        );
        let entry = |w| {
            let part = super::super::WorkerPart {
                epoch: 8,
                cut: 10,
                worker: w,
                workers: 2,
                partitions: vec![],
                ingest_counts: Counts::default(),
                fold: Default::default(),
                fold_counts: Counts::default(),
            };
            super::super::write_part(dir.path(), &part).unwrap()
        };
        let done = [
            Control::Done {
                epoch: 8,
                worker: 0,
                entry: Some(entry(0)),
            },
            Control::Done {
                epoch: 8,
                worker: 1,
                entry: Some(entry(1)),
            },
        ];
        assert_eq!(co.step(&done, now), vec![Control::Complete { epoch: 8 }]);
        assert_eq!(super::super::load(dir.path(), 8).unwrap().parts.len(), 2);
    }
}
