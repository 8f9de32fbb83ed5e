//! A run's plan: where it reads ([`Inputs`]), which checkpoint it resumes, which
//! sinks it opens, and how it paces and flushes; built once per process and shared
//! by its workers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use super::RunError;
use super::options::{DEFAULT_BATCH, RunOptions};
use crate::dataflow::fold::FlushPolicy;
use crate::dataflow::ingest::Pacing;
use crate::error_chain as chain;
use crate::job::Job;
use crate::kafka::settings::{KafkaJob, StartPosition};
use crate::metrics::Metrics;
use crate::sinks::dlq_file::DeadLetterFile;
use crate::sinks::dlq_kafka::{DeadLetterTopics, KafkaDeadLetters};
use crate::sinks::sqlite::{Journal, SqliteViews};
use crate::sinks::training::{ExportSink, RowCount, discard_after};
use crate::source::SourceError;
use crate::source::file::{FilePartition, resolve_partitions};
use crate::summary::{Counts, Summary};

/// What one worker reports when it is done: its own counts, and on worker 0 the
/// whole run's (every worker's, gathered over the control dataflow).
pub(super) struct WorkerReport {
    pub(super) counts: Counts,
    pub(super) max_event_time: Option<f64>,
    pub(super) global: Option<RunEnd>,
}

/// The whole run's end, as worker 0 gathers it from every worker.
#[derive(Debug, Default)]
pub(super) struct RunEnd {
    /// Every worker's counts.
    pub(super) counts: Counts,
    /// The largest event time seen, or where a stopped run's watermark was.
    pub(super) watermark: Option<f64>,
    /// A stop request ended the run before the end of its input.
    pub(super) interrupted: bool,
}

/// A run's checkpoints.
pub(super) struct CheckpointPlan {
    pub(super) dir: PathBuf,
    pub(super) interval: Duration,
    pub(super) keep: usize,
    /// The newest epoch under `dir`, complete or not: new ones number on from it.
    pub(super) last_epoch: u64,
}

/// A restored checkpoint, until every local worker has taken its share.
pub(super) struct Restoring {
    pub(super) restored: Option<crate::checkpoint::Restored>,
    pub(super) left: usize,
}

/// Where a run reads from.
pub(super) enum Inputs {
    Files(Vec<FilePartition>),
    Kafka {
        kafka: KafkaJob,
        partitions: Vec<(String, i32)>,
        start: StartPosition,
    },
}

/// Where dead letters go.
#[derive(Clone)]
pub(super) enum DeadLetters {
    File(DeadLetterFile),
    Kafka(KafkaDeadLetters),
    Discard,
}

/// Everything a worker needs to build its dataflow.
pub(super) struct Plan {
    pub(super) job: Arc<Job>,
    pub(super) inputs: Inputs,
    pub(super) sqlite: Option<SqliteViews>,
    pub(super) jsonl: Option<PathBuf>,
    pub(super) dead_letters: DeadLetters,
    pub(super) flush: FlushPolicy,
    pub(super) pacing: Pacing,
    pub(super) stop: Arc<AtomicBool>,
    /// Where a worker (or the cluster's start, the last slot) may be blocked for good.
    pub(super) blocking: crate::dataflow::ingest::Blocking,
    /// Worker threads of this process.
    pub(super) workers: usize,
    pub(super) records: Arc<AtomicU64>,
    pub(super) metrics: Option<Arc<Metrics>>,
    pub(super) checkpoint: Option<CheckpointPlan>,
    pub(super) restoring: std::sync::Mutex<Restoring>,
    /// The epoch of the checkpoint the run resumes from.
    pub(super) resumed_from: Option<u64>,
    /// The training export's sink, when the job exports.
    pub(super) export: Option<ExportSink>,
    /// The tag of the export's first files: the next checkpoint's epoch.
    pub(super) export_first_tag: u64,
    /// Training rows written by this process.
    pub(super) exported: RowCount,
    /// The serving-skew counters, when the export has served features.
    pub(super) skew: Option<Arc<std::sync::Mutex<crate::dataflow::skew::SkewShared>>>,
    /// The rows of a spine file, when the run has one.
    pub(super) spine: Option<Arc<Vec<crate::source::spine::SpineRow>>>,
    /// Rows of the spine file read, and how many were dead-lettered.
    pub(super) spine_counts: Option<(u64, u64)>,
    /// What a replay gathers.
    pub(super) replay: Option<crate::replay::Replay>,
}

impl Plan {
    /// Worker `index`'s share of the restored checkpoint; the last local worker to
    /// take its share frees the checkpoint.
    pub(super) fn take_share(&self, index: usize, peers: usize) -> crate::checkpoint::Share {
        let mut restoring = self.restoring.lock().unwrap_or_else(|p| p.into_inner());
        let share = restoring
            .restored
            .as_ref()
            .map(|restored| restored.share(index, peers))
            .unwrap_or_default();
        restoring.left = restoring.left.saturating_sub(1);
        if restoring.left == 0 {
            restoring.restored = None;
        }
        share
    }

    /// Everything the run needs before its workers start: checkpoints to resume,
    /// the SQLite store, the dead-letter sink, pacing, flushing and metrics.
    pub(super) fn build(
        job: Job,
        inputs: Inputs,
        options: &RunOptions,
        workers: usize,
        process: usize,
    ) -> Result<Plan, RunError> {
        let streaming = matches!(inputs, Inputs::Kafka { .. });
        let records = Arc::new(AtomicU64::new(0));
        let (checkpoint, restored) = prepare_checkpoints(&job, &inputs, options, process)?;
        let metrics = match options.metrics_addr {
            None => None,
            Some(addr) => {
                let metrics = Arc::new(Metrics::new(&job.name));
                let bound = metrics
                    .serve(addr)
                    .map_err(|e| RunError::Options(format!("cannot serve metrics on {addr}: {e}")))?;
                tracing::info!(%bound, "serving metrics on /metrics");
                Some(metrics)
            }
        };
        // A backfill writes its views once, at the end: see `Journal::Rollback`.
        let journal = if streaming {
            Journal::Wal
        } else {
            Journal::Rollback
        };
        let sqlite = job
            .sinks
            .views_sqlite
            .as_deref()
            .map(|path| SqliteViews::open(path, journal, metrics.clone()))
            .transpose()?;
        let resuming = restored.is_some();
        let dead_letters = match (&inputs, &options.dlq, &job.sinks.dlq) {
            _ if options.replay.is_some() => DeadLetters::Discard,
            (Inputs::Kafka { kafka, .. }, None, _) if !job.archive_only() => {
                let topics = DeadLetterTopics::new(&kafka.topics, job.sinks.dlq_topic.clone());
                for topic in topics.all() {
                    kafka
                        .settings
                        .ensure_topic(&topic, 1)
                        .map_err(|e| SourceError::Broker(e.to_string()))?;
                }
                DeadLetters::Kafka(if resuming {
                    KafkaDeadLetters::resume(&kafka.settings, topics)?
                } else {
                    KafkaDeadLetters::new(&kafka.settings, topics)?
                })
            }
            // A resumed run keeps what the file holds; in a cluster, process 0 starts it.
            (_, _, Some(path)) if resuming => DeadLetters::File(DeadLetterFile::resume(path)?),
            (_, _, Some(path)) if process == 0 => DeadLetters::File(DeadLetterFile::create(path)?),
            (_, _, Some(path)) => DeadLetters::File(DeadLetterFile::append(path)?),
            (_, _, None) => DeadLetters::Discard,
        };
        let spine = match (&options.spine, &job.export) {
            (None, _) => None,
            (Some(path), None) => {
                return Err(RunError::Options(format!(
                    "--spine {}: the job has no `[export]` to take a spine",
                    path.display()
                )));
            }
            (Some(path), Some(_)) => {
                let spine = crate::source::spine::read_spine(path)?;
                if process == 0 && !spine.bad.is_empty() {
                    let letters: Vec<_> = spine
                        .bad
                        .iter()
                        .map(|bad| {
                            crate::dlq::letter::DeadLetter::first_attempt(
                                &job.name,
                                crate::model::event::Origin {
                                    topic: path.display().to_string(),
                                    partition: None,
                                    offset: bad.line as i64,
                                    key: None,
                                    broker_timestamp_ms: None,
                                },
                                bad.raw.as_bytes(),
                                false,
                                crate::dlq::letter::Reason::InvalidSpineRow,
                                bad.problem.clone(),
                            )
                        })
                        .collect();
                    write_letters(&dead_letters, &letters)?;
                }
                Some(spine)
            }
        };
        let spine_counts = spine
            .as_ref()
            .map(|s| ((s.rows.len() + s.bad.len()) as u64, s.bad.len() as u64));
        let lateness_ms = (job.allowed_lateness_secs() * 1000.0) as u64;
        let pacing = Pacing {
            batch: if options.batch == 0 {
                DEFAULT_BATCH
            } else {
                options.batch
            },
            max_skew_ms: (lateness_ms * 10).max(60_000),
            exit_when_idle: options.exit_when_idle.filter(|_| streaming),
            commit_interval: match &inputs {
                Inputs::Kafka { kafka, .. } => kafka.commit_interval.duration(),
                Inputs::Files(_) => Duration::from_secs(1),
            },
            commits: options.replay.is_none(),
            idle_poll: Duration::from_millis(20),
            stop_after: options.stop_after,
            bounded: !streaming,
            checkpoint_on_stop: !streaming && checkpoint.is_some(),
        };
        let flush = if streaming && options.replay.is_none() {
            FlushPolicy::Every(job.sinks.flush_interval.duration())
        } else {
            FlushPolicy::AtEnd
        };
        if streaming && job.export.is_some() && checkpoint.is_none() {
            return Err(RunError::Options(
                "a live export writes every row exactly once through checkpoints: give the job a `[checkpoint] dir`"
                    .into(),
            ));
        }
        let export = match job.export.as_ref().filter(|e| e.writes_files()) {
            None => None,
            Some(spec) => Some(prepare_export(
                &job,
                spec,
                streaming,
                restored.as_ref().map(|r| r.manifest.epoch),
                process,
            )?),
        };
        Ok(Plan {
            export_first_tag: checkpoint.as_ref().map_or(1, |c| c.last_epoch + 1),
            export,
            exported: RowCount::default(),
            spine: spine.map(|s| Arc::new(s.rows)),
            spine_counts,
            replay: options.replay.clone(),
            skew: job
                .export
                .as_ref()
                .filter(|e| e.snapshot.is_some())
                .map(|_| Arc::default()),
            resumed_from: restored.as_ref().map(|r| r.manifest.epoch),
            jsonl: job.sinks.views_jsonl.clone(),
            job: Arc::new(job),
            inputs,
            sqlite,
            dead_letters,
            flush,
            pacing,
            stop: options.stop.clone().unwrap_or_default(),
            blocking: crate::dataflow::ingest::Blocking::new(workers + 1),
            workers,
            records,
            metrics,
            checkpoint,
            restoring: std::sync::Mutex::new(Restoring {
                restored,
                left: workers,
            }),
        })
    }
}

/// Writes dead letters of rows the run will not read again (a spine file's).
fn write_letters(sink: &DeadLetters, letters: &[crate::dlq::letter::DeadLetter]) -> Result<(), RunError> {
    use crate::sinks::DeadLetterSink;
    let mut sink: Box<dyn DeadLetterSink> = match sink {
        DeadLetters::File(file) => Box::new(file.clone()),
        DeadLetters::Kafka(topics) => Box::new(topics.clone()),
        DeadLetters::Discard => return Ok(()),
    };
    sink.write(letters)?;
    sink.flush()?;
    Ok(())
}

/// The export's sink, with its directory made ready: a run resumed from checkpoint E
/// drops the files written after E; one that starts afresh starts the dataset over.
/// A backfill writes into `<dir>.partial`, published when it ends.
fn prepare_export(
    job: &Job,
    spec: &crate::model::training::ExportSpec,
    streaming: bool,
    resumed: Option<u64>,
    process: usize,
) -> Result<ExportSink, RunError> {
    let dir = if streaming {
        spec.dir.clone()
    } else {
        super::aside::aside_path(&spec.dir)
    };
    let io = |path: &std::path::Path, e: std::io::Error| {
        RunError::Sink(crate::sinks::SinkError::Io {
            path: path.display().to_string(),
            source: e,
        })
    };
    if process == 0 {
        let parquet = spec.formats.parquet.then_some(&dir);
        let parts = spec
            .formats
            .jsonl
            .as_deref()
            .map(crate::sinks::training::parts_dir);
        if let (Some(_), false, true) = (
            resumed,
            dir.exists(),
            spec.dir.exists() && parquet.is_some() && !streaming,
        ) {
            // The run it resumes published the dataset: go on from it.
            std::fs::rename(&spec.dir, &dir).map_err(|e| io(&dir, e))?;
        }
        for d in parquet.into_iter().chain(parts.as_ref()) {
            match resumed {
                Some(epoch) => discard_after(d, epoch).map(drop),
                None if streaming => discard_after(d, 0).map(drop),
                None if d.exists() => std::fs::remove_dir_all(d),
                None => Ok(()),
            }
            .map_err(|e| io(d, e))?;
        }
        if let Some(dir) = parquet {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
    }
    Ok(ExportSink::new(
        &job.name,
        &job.features,
        spec,
        dir,
        process,
        crate::checkpoint::fingerprint(job),
    ))
}

/// Decides whether the run takes checkpoints and which one it resumes from.
///
/// Jobs that only archive keep no state and commit offsets as they go; a job that
/// also archives commits through the archive. Neither takes checkpoints. `--fresh`
/// removes the job's checkpoints (process 0 does, in a cluster). Otherwise the newest
/// complete, intact checkpoint is restored; newer ones that are not are reported and
/// skipped. A checkpoint of another job, of other state declarations, or of inputs
/// this run does not read is refused.
pub(super) fn prepare_checkpoints(
    job: &Job,
    inputs: &Inputs,
    options: &RunOptions,
    process: usize,
) -> Result<(Option<CheckpointPlan>, Option<crate::checkpoint::Restored>), RunError> {
    let Some(dir) = job.checkpoint.dir.clone() else {
        return Ok((None, None));
    };
    if job.sinks.archive.is_some() {
        tracing::info!("no checkpoints: a job with an archive sink commits offsets through the archive");
        return Ok((None, None));
    }
    let refuse = |message: String| RunError::Checkpoint(format!("{message}; run with --fresh to start over"));
    if options.fresh && process == 0 {
        crate::checkpoint::clear(&dir).map_err(|e| RunError::Checkpoint(chain(&e)))?;
    }
    let mut load_seconds = 0.0;
    let restored = if options.fresh {
        None
    } else {
        let loading = Instant::now();
        let (restored, skipped) = crate::checkpoint::latest(&dir);
        load_seconds = loading.elapsed().as_secs_f64();
        for problem in &skipped {
            tracing::warn!(problem = %chain(problem), "skipping checkpoint: it cannot be restored");
        }
        // Incomplete checkpoints are what a crash leaves behind; a damaged one with
        // nothing intact before it means the state is gone, which no run should hide.
        let damaged = skipped
            .iter()
            .find(|p| !matches!(p, crate::checkpoint::CheckpointError::Incomplete(_)));
        if let (None, Some(problem)) = (&restored, damaged) {
            return Err(refuse(format!(
                "no intact checkpoint to resume from in {} ({})",
                dir.display(),
                chain(problem)
            )));
        }
        restored
    };
    if let Some(restored) = &restored {
        let manifest = &restored.manifest;
        let at = crate::checkpoint::epoch_dir(&dir, manifest.epoch);
        if manifest.job != job.name {
            return Err(refuse(format!(
                "checkpoint {} belongs to job `{}`, not `{}`",
                at.display(),
                manifest.job,
                job.name
            )));
        }
        if manifest.features != crate::checkpoint::fingerprint(job) {
            return Err(refuse(format!(
                "checkpoint {} holds state of other [[state]]/[[features]] declarations than {} has now",
                at.display(),
                job.path.display()
            )));
        }
        let time = crate::checkpoint::time_settings(job);
        if !manifest.time.is_empty() && manifest.time != time {
            return Err(refuse(format!(
                "checkpoint {} was taken with {}; this run has {time}, which would classify records differently",
                at.display(),
                manifest.time
            )));
        }
        let names: std::collections::BTreeSet<String> = match inputs {
            Inputs::Files(partitions) => partitions.iter().map(|p| p.name.clone()).collect(),
            Inputs::Kafka { partitions, .. } => partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect(),
        };
        if let Some(missing) = crate::checkpoint::positions(restored)
            .keys()
            .find(|n| !names.contains(*n))
        {
            return Err(refuse(format!(
                "checkpoint {} covers input `{missing}`, which this run does not read",
                at.display()
            )));
        }
        tracing::info!(
            epoch = manifest.epoch,
            cut = manifest.cut,
            workers = manifest.workers,
            users = manifest.parts.iter().map(|p| p.users).sum::<u64>(),
            load_seconds,
            "resuming from a checkpoint"
        );
    }
    let plan = CheckpointPlan {
        last_epoch: crate::checkpoint::epochs(&dir).last().copied().unwrap_or(0),
        dir,
        interval: job.checkpoint.interval.duration(),
        keep: job.checkpoint.keep,
    };
    Ok((Some(plan), restored))
}

pub(super) fn choose_inputs(job: &Job, options: &RunOptions) -> Result<Inputs, RunError> {
    let files = |inputs: &[String]| -> Result<Inputs, RunError> {
        let partitions = resolve_partitions(inputs)?;
        let workers = options.workers.max(1);
        let peers = workers * options.cluster.as_ref().map_or(1, |c| c.addresses.len());
        // Files are cut into ranges only where a worker would otherwise have none (a
        // size given on the command line always cuts, as tests do).
        let bytes = match options.split_bytes {
            Some(bytes) => bytes,
            None if partitions.len() < peers => crate::dataflow::ingest::split::DEFAULT_SPLIT_BYTES,
            None => 0,
        };
        let partitions = crate::dataflow::ingest::split::split_files(partitions, job, bytes, workers)?;
        Ok(Inputs::Files(partitions))
    };
    if !options.inputs.is_empty() {
        return files(&options.inputs);
    }
    let kafka = job.kafka.as_ref().filter(|k| !k.topics.is_empty());
    if options.topics.is_empty() && !job.inputs.is_empty() {
        return files(&job.inputs);
    }
    let Some(kafka) = kafka else {
        return Err(RunError::NoInput(job.path.display().to_string()));
    };
    let mut partitions = kafka
        .settings
        .partitions(&kafka.topics)
        .map_err(|e| SourceError::Broker(e.to_string()))?;
    if let Some(crate::replay::Replay::Explain(explaining)) = &options.replay {
        // Only the partition each topic sends the user's records to (`skewless
        // produce` keys records by user id).
        let counts = |topic: &str| partitions.iter().filter(|(t, _)| t == topic).count() as i32;
        let mine: Vec<(String, i32)> = partitions
            .iter()
            .filter(|(topic, p)| {
                *p == crate::kafka::produce::partition_for(Some(&explaining.user), counts(topic), 0)
            })
            .cloned()
            .collect();
        explaining.reading(mine.iter().map(|(t, p)| format!("{t}/{p}")).collect());
        partitions = mine;
    }
    let start = kafka.start.unwrap_or(if job.archive_only() {
        StartPosition::Committed
    } else {
        StartPosition::Earliest
    });
    Ok(Inputs::Kafka {
        kafka: kafka.clone(),
        partitions,
        start,
    })
}

pub(super) fn describe_outputs(plan: &Plan, summary: &mut Summary) {
    let job = &plan.job;
    for (name, path) in [
        ("views_sqlite", &job.sinks.views_sqlite),
        ("views_jsonl", &job.sinks.views_jsonl),
        ("summary", &job.sinks.summary),
    ] {
        if let Some(path) = path {
            summary
                .outputs
                .insert(name.to_owned(), path.display().to_string());
        }
    }
    if let Some(export) = &job.export {
        if export.formats.parquet {
            summary
                .outputs
                .insert("training_parquet".into(), export.dir.display().to_string());
        }
        if let Some(path) = &export.formats.jsonl {
            summary
                .outputs
                .insert("training_jsonl".into(), path.display().to_string());
        }
        for (name, path) in [
            ("skew_report", &export.skew.report),
            ("skew_html", &export.skew.html),
        ] {
            if let (Some(path), Some(_)) = (path, &plan.skew) {
                summary.outputs.insert(name.into(), path.display().to_string());
            }
        }
    }
    match &plan.dead_letters {
        DeadLetters::File(_) => {
            if let Some(path) = &job.sinks.dlq {
                summary.outputs.insert("dlq".into(), path.display().to_string());
            }
        }
        DeadLetters::Kafka(_) => {
            if let Inputs::Kafka { kafka, .. } = &plan.inputs {
                let topics = DeadLetterTopics::new(&kafka.topics, job.sinks.dlq_topic.clone());
                summary
                    .outputs
                    .insert("dlq_topics".into(), topics.all().join(","));
            }
        }
        DeadLetters::Discard => {}
    }
    if let Some(redis) = &job.sinks.redis {
        summary.outputs.insert(
            "views_redis".into(),
            format!("{} ({}<user_id>)", redact_url(&redis.url), redis.key_prefix),
        );
    }
    if let Some(archive) = &job.sinks.archive {
        summary
            .outputs
            .insert("archive".into(), archive.dir.display().to_string());
    }
}

/// A URL without its password.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://[redacted]@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://[redacted]@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
