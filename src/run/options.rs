//! What a run takes from the command line: [`RunOptions`] (each overrides the job
//! file, see [`apply_overrides`]) and a process's place in a [`Cluster`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::RunError;
use crate::job::{Job, LatePolicy};
use crate::kafka::settings::StartPosition;
use crate::model::span::Span;

pub use crate::dataflow::ingest::DEFAULT_BATCH;

/// Command-line choices that override the job file. The default is one worker and
/// nothing overridden.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Input partitions (paths or globs); when set, the run reads files.
    pub inputs: Vec<String>,
    /// Worker threads.
    pub workers: usize,
    /// SQLite views file.
    pub views_sqlite: Option<PathBuf>,
    /// JSONL views snapshot.
    pub views_jsonl: Option<PathBuf>,
    /// Dead-letter file (also for runs over Kafka, instead of the DLQ topic).
    pub dlq: Option<PathBuf>,
    /// Summary file.
    pub summary: Option<PathBuf>,
    /// Allowed lateness.
    pub allowed_lateness: Option<Span>,
    /// Late policy.
    pub late_policy: Option<LatePolicy>,
    /// Records read per activation; 0 for the default.
    pub batch: usize,
    /// Show a progress line on a terminal.
    pub progress: bool,
    /// Kafka brokers.
    pub brokers: Option<String>,
    /// Kafka topics; when set, the run reads Kafka.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: Option<String>,
    /// Where to start reading Kafka.
    pub start: Option<StartPosition>,
    /// Redis URL for the view store.
    pub redis: Option<String>,
    /// End a run over Kafka once every partition has been idle this long.
    pub exit_when_idle: Option<Duration>,
    /// Set to stop a run cleanly (flush, commit, summary), as SIGTERM does.
    pub stop: Option<Arc<AtomicBool>>,
    /// Serve Prometheus metrics on this address.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Checkpoint directory; empty turns checkpoints off.
    pub checkpoint_dir: Option<PathBuf>,
    /// How often a checkpoint is taken.
    pub checkpoint_interval: Option<Span>,
    /// Start over: ignore and remove the job's checkpoints.
    pub fresh: bool,
    /// Run as one process of a cluster.
    pub cluster: Option<Cluster>,
    /// Stop, as a stop request does, once a worker has read this many records (tests
    /// use it to interrupt a run at a chosen point).
    pub stop_after: Option<u64>,
    /// What becomes of the job's training export.
    pub export: ExportMode,
    /// The export's Parquet directory (its JSONL form goes beside it as `<dir>.jsonl`).
    pub export_dir: Option<PathBuf>,
    /// The skew report's JSON file (its HTML page goes beside it as `.html`).
    pub skew_report: Option<PathBuf>,
    /// The export's formats, instead of the job's (the JSONL form at `<dir>.jsonl`).
    pub export_formats: Vec<crate::job::file::ExportFormat>,
    /// A spine file (Parquet, CSV or JSONL of `row_id, user_id, ts[, item_id]`) whose
    /// rows replace the log's spine events.
    pub spine: Option<PathBuf>,
    /// A replay (`explain`, `diff`): no outputs are written, no offsets committed;
    /// what the run learns is gathered here.
    pub replay: Option<crate::replay::Replay>,
    /// Plain `.jsonl` files over twice this size are read in byte ranges of about
    /// this size by every worker (0: never); default
    /// [`crate::dataflow::ingest::split::DEFAULT_SPLIT_BYTES`].
    pub split_bytes: Option<u64>,
}

/// What a run does with the job's `[export]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExportMode {
    /// As the job says.
    #[default]
    AsJob,
    /// No export (`run --no-export`).
    Off,
    /// Only the skew report (`skewless skew`): no training files, views or dead letters.
    SkewOnly,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            inputs: Default::default(),
            workers: 1,
            views_sqlite: Default::default(),
            views_jsonl: Default::default(),
            dlq: Default::default(),
            summary: Default::default(),
            allowed_lateness: Default::default(),
            late_policy: Default::default(),
            batch: Default::default(),
            progress: Default::default(),
            brokers: Default::default(),
            topics: Default::default(),
            group: Default::default(),
            start: Default::default(),
            redis: Default::default(),
            exit_when_idle: Default::default(),
            stop: Default::default(),
            metrics_addr: Default::default(),
            checkpoint_dir: Default::default(),
            checkpoint_interval: Default::default(),
            fresh: Default::default(),
            cluster: Default::default(),
            stop_after: Default::default(),
            export: Default::default(),
            export_dir: Default::default(),
            skew_report: Default::default(),
            export_formats: Default::default(),
            spine: Default::default(),
            replay: Default::default(),
            split_bytes: Default::default(),
        }
    }
}

/// One process's place in a cluster of processes running one job together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This process, from 0.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
}

impl Cluster {
    /// The cluster of `processes` processes whose addresses `hostfile` lists, one
    /// `host:port` per line (`#` comments and blank lines aside); without a hostfile,
    /// `127.0.0.1:2101`, `127.0.0.1:2102`, and so on.
    pub fn new(
        processes: usize,
        process: usize,
        hostfile: Option<&std::path::Path>,
    ) -> Result<Cluster, RunError> {
        if process >= processes {
            return Err(RunError::Options(format!(
                "--process {process} is not one of the {processes} processes (0 to {})",
                processes.saturating_sub(1)
            )));
        }
        let addresses = match hostfile {
            None => (0..processes)
                .map(|i| format!("127.0.0.1:{}", 2101 + i))
                .collect(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    RunError::Options(format!("cannot read hostfile {}: {e}", path.display()))
                })?;
                let mut addresses = Vec::new();
                for (number, line) in text.lines().enumerate() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if line.is_empty() {
                        continue;
                    }
                    if line
                        .rsplit_once(':')
                        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
                    {
                        return Err(RunError::Options(format!(
                            "{}:{}: `{line}` is not host:port",
                            path.display(),
                            number + 1
                        )));
                    }
                    addresses.push(line.to_owned());
                }
                if addresses.len() < processes {
                    return Err(RunError::Options(format!(
                        "{} lists {} addresses for {processes} processes",
                        path.display(),
                        addresses.len()
                    )));
                }
                addresses.truncate(processes);
                addresses
            }
        };
        Ok(Cluster { process, addresses })
    }
}

impl RunOptions {
    /// Refuses options that do not fit together, before anything is opened.
    pub fn check(&self) -> Result<(), RunError> {
        if self.workers == 0 {
            return Err(RunError::Options("--workers must be at least 1".into()));
        }
        if !self.inputs.is_empty() && !self.topics.is_empty() {
            return Err(RunError::Options(
                "--input reads files and --topic reads Kafka: name one or the other".into(),
            ));
        }
        if self.checkpoint_interval.is_some_and(|i| i.duration().is_zero()) {
            return Err(RunError::Options(
                "--checkpoint-interval must be longer than 0 s".into(),
            ));
        }
        Ok(())
    }
}

/// Applies the command line's overrides to the job.
pub fn apply_overrides(job: &mut Job, options: &RunOptions) {
    if let Some(lateness) = options.allowed_lateness {
        job.time.allowed_lateness = lateness;
    }
    if let Some(policy) = options.late_policy {
        job.time.late_policy = policy;
    }
    let sinks = &mut job.sinks;
    for (path, over) in [
        (&mut sinks.views_sqlite, &options.views_sqlite),
        (&mut sinks.views_jsonl, &options.views_jsonl),
        (&mut sinks.dlq, &options.dlq),
        (&mut sinks.summary, &options.summary),
    ] {
        if let Some(over) = over {
            *path = (!over.as_os_str().is_empty()).then(|| over.clone());
        }
    }
    if let Some(url) = &options.redis {
        let redis = sinks.redis.get_or_insert_with(crate::job::defaults::redis);
        redis.url = url.clone();
    }
    let wants_kafka = !options.topics.is_empty() || options.brokers.is_some() || options.group.is_some();
    if wants_kafka || job.kafka.is_some() {
        let name = job.name.clone();
        let kafka = job
            .kafka
            .get_or_insert_with(|| crate::job::defaults::kafka(&name));
        if let Some(brokers) = &options.brokers {
            kafka.settings.brokers = brokers.clone();
        }
        if !options.topics.is_empty() {
            kafka.topics = options.topics.clone();
        }
        if let Some(group) = &options.group {
            kafka.group = group.clone();
        }
        if options.start.is_some() {
            kafka.start = options.start;
        }
    }
    if let Some(dir) = &options.checkpoint_dir {
        job.checkpoint.dir = (!dir.as_os_str().is_empty()).then(|| dir.clone());
    }
    if let Some(interval) = options.checkpoint_interval {
        job.checkpoint.interval = interval;
    }
    if let Some(export) = &mut job.export {
        if let Some(dir) = &options.export_dir {
            export.dir = dir.clone();
            if export.formats.jsonl.is_some() {
                export.formats.jsonl = Some(crate::sinks::with_suffix(dir, ".jsonl"));
            }
        }
        if !options.export_formats.is_empty() {
            use crate::job::file::ExportFormat;
            let formats = &options.export_formats;
            export.formats.parquet = formats.contains(&ExportFormat::Parquet);
            let jsonl = formats.contains(&ExportFormat::Jsonl);
            export.formats.jsonl = match (jsonl, export.formats.jsonl.take()) {
                (false, _) => None,
                (true, Some(path)) => Some(path),
                (true, None) => Some(crate::sinks::with_suffix(&export.dir, ".jsonl")),
            };
        }
        if let Some(report) = &options.skew_report {
            export.skew.report = Some(report.clone());
            export.skew.html = Some(report.with_extension("html"));
        }
    }
    if options.replay.is_some() {
        // A replay answers a question: it writes nothing and commits nothing.
        job.export = None;
        let sinks = &mut job.sinks;
        sinks.views_sqlite = None;
        sinks.views_jsonl = None;
        sinks.dlq = None;
        sinks.summary = None;
        sinks.redis = None;
        sinks.archive = None;
        job.checkpoint.dir = None;
    }
    match options.export {
        ExportMode::AsJob => {}
        ExportMode::Off => job.export = None,
        ExportMode::SkewOnly => {
            if let Some(export) = &mut job.export {
                export.formats = Default::default();
            }
            let sinks = &mut job.sinks;
            sinks.views_sqlite = None;
            sinks.views_jsonl = None;
            sinks.dlq = None;
            sinks.summary = None;
            job.checkpoint.dir = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cluster;

    #[test]
    fn a_hostfile_names_every_process_or_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            "# the cluster\n10.0.0.1:2101\n\n10.0.0.2:2101  # second\n10.0.0.3:2101\n",
        )
        .unwrap();
        let cluster = Cluster::new(2, 1, Some(&hosts)).unwrap();
        assert_eq!(cluster.addresses, ["10.0.0.1:2101", "10.0.0.2:2101"]);
        assert_eq!(cluster.process, 1);
        assert_eq!(
            Cluster::new(3, 0, None).unwrap().addresses,
            ["127.0.0.1:2101", "127.0.0.1:2102", "127.0.0.1:2103"]
        );

        let error = Cluster::new(4, 0, Some(&hosts)).unwrap_err().to_string();
        assert!(error.contains("lists 3 addresses for 4 processes"), "{error}");
        let error = Cluster::new(2, 2, None).unwrap_err().to_string();
        assert!(
            error.contains("--process 2 is not one of the 2 processes"),
            "{error}"
        );
        std::fs::write(&hosts, "10.0.0.1:2101\n10.0.0.2\n").unwrap();
        let error = Cluster::new(2, 0, Some(&hosts)).unwrap_err().to_string();
        assert!(error.contains("hosts:2: `10.0.0.2` is not host:port"), "{error}");
    }
}
