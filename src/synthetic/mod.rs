//! Deterministic synthetic event logs for samples, tests and benchmarks.
//!
//! Each partition is generated from its own seeded generator, so the output depends
//! only on the options. Users are keyed to partitions (as a producer keyed by user
//! would do); each user appears once early on, then users are drawn with optional
//! Zipf skew; event times advance evenly over `span`, with
//! small out-of-order jitter inside the lateness bound, and optional late, duplicate,
//! malformed, v1-schema and unknown-type records.
//!
//! Impressions (`recommendation.items_shown`, five items each) lead to views and
//! purchases of the shown items (`ctr`, `purchase_rate` per item), and carry a
//! `features_snapshot`: what a feature store lagging `serving_lag` behind would have
//! served ([`serving`]), with a share of deliberately wrong values.

pub mod serving;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::{RngExt, SeedableRng};
use serde_json::Value as Json;

use self::serving::{Effect, ServingStore};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    /// Output directory; one file per partition.
    pub out: PathBuf,
    /// Records in all.
    pub events: u64,
    /// Distinct users.
    pub users: u64,
    /// Zipf exponent of user activity; 0 for uniform.
    pub zipf: f64,
    /// Partitions (files).
    pub partitions: usize,
    /// Distinct items.
    pub items: u64,
    /// Event time of the first record, seconds since the epoch.
    pub start: f64,
    /// Event time the records cover, seconds.
    pub span: f64,
    /// The job's allowed lateness, seconds: jitter stays inside it, late records beyond it.
    pub lateness: f64,
    /// Fraction of records that arrive late.
    pub late: f64,
    /// Fraction of records that repeat an earlier record.
    pub duplicates: f64,
    /// Fraction of records that are malformed.
    pub malformed: f64,
    /// Fraction of purchases in the v1 schema (`amount` instead of `price`).
    pub v1: f64,
    /// Fraction of records of a type the job does not know.
    pub unknown: f64,
    /// Seed.
    pub seed: u64,
    /// Write `.jsonl.gz` or `.jsonl.zst` rather than `.jsonl`.
    pub compression: Option<crate::sinks::archive::ArchiveCompression>,
    /// Chance that a shown item is viewed within about half an hour.
    pub ctr: f64,
    /// Chance that a shown item is bought within about a day.
    pub purchase_rate: f64,
    /// How far the simulated feature store lags, seconds: `(least, most)`.
    pub serving_lag: (f64, f64),
    /// Chance that a snapshot holds one wrong value.
    pub wrong_values: f64,
}

impl GenOptions {
    /// Refuses fractions outside [0, 1] (and their sum above 1), non-finite or
    /// negative times and exponents, naming the flag.
    pub fn check(&self) -> Result<(), GenError> {
        let refuse =
            |flag: &str, value: f64, rule: &str| Err(GenError::Options(format!("--{flag} {value}: {rule}")));
        let fractions = [
            ("late", self.late),
            ("duplicates", self.duplicates),
            ("malformed", self.malformed),
            ("v1", self.v1),
            ("unknown", self.unknown),
            ("ctr", self.ctr),
            ("purchase-rate", self.purchase_rate),
            ("wrong-values", self.wrong_values),
        ];
        for (flag, value) in fractions {
            if !(0.0..=1.0).contains(&value) {
                return refuse(flag, value, "a fraction must be between 0 and 1");
            }
        }
        let special = self.late + self.duplicates + self.malformed + self.unknown;
        if special > 1.0 {
            return Err(GenError::Options(format!(
                "--late, --duplicates, --malformed and --unknown add up to {special}: at most 1"
            )));
        }
        // Event times end before the year 10000 (DESIGN.md section 4).
        let max_time = 253_402_300_800.0;
        if !(self.start.is_finite() && (0.0..max_time).contains(&self.start)) {
            return refuse(
                "start",
                self.start,
                "a time in seconds since the epoch, before the year 10000",
            );
        }
        if !(self.span.is_finite() && self.span >= 0.0 && self.start + self.span < max_time) {
            return refuse("span", self.span, "the records must end before the year 10000");
        }
        if !(self.lateness.is_finite() && self.lateness >= 0.0) {
            return refuse("lateness", self.lateness, "a duration");
        }
        let (least, most) = self.serving_lag;
        if !(least.is_finite() && most.is_finite() && 0.0 <= least && least <= most) {
            return Err(GenError::Options(format!(
                "--serving-lag {least}..{most}: two durations, the least first"
            )));
        }
        if !(self.zipf.is_finite() && self.zipf >= 0.0) {
            return refuse("zipf", self.zipf, "an exponent of 0 or more");
        }
        Ok(())
    }
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            out: PathBuf::from("data/generated"),
            events: 10_000,
            users: 1_000,
            zipf: 1.0,
            partitions: 4,
            items: 5_000,
            start: 1_767_225_600.0, // 2026-01-01T00:00:00Z
            span: 86_400.0,
            lateness: 5.0,
            late: 0.0,
            duplicates: 0.0,
            malformed: 0.0,
            v1: 0.0,
            unknown: 0.0,
            seed: 1,
            compression: Some(crate::sinks::archive::ArchiveCompression::Gzip),
            ctr: 0.1,
            purchase_rate: 0.02,
            serving_lag: (0.5, 45.0),
            wrong_values: 0.01,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenReport {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Records written.
    pub records: u64,
}

const CATEGORIES: [&str; 16] = [
    "electronics",
    "books",
    "home",
    "garden",
    "toys",
    "sports",
    "beauty",
    "grocery",
    "fashion",
    "music",
    "movies",
    "games",
    "health",
    "auto",
    "office",
    "pets",
];

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// An output file could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The options do not make sense.
    #[error("{0}")]
    Options(String),
}

/// Generates the logs described by `options`.
pub fn generate(options: &GenOptions) -> Result<GenReport, GenError> {
    if options.partitions == 0 || options.users == 0 || options.items == 0 {
        return Err(GenError::Options(
            "partitions, users and items must be at least 1".into(),
        ));
    }
    if (options.users as usize) < options.partitions {
        return Err(GenError::Options("need at least one user per partition".into()));
    }
    options.check()?;
    std::fs::create_dir_all(&options.out).map_err(|source| GenError::Io {
        path: options.out.display().to_string(),
        source,
    })?;
    let results: Vec<Result<(PathBuf, u64), GenError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..options.partitions)
            .map(|p| scope.spawn(move || generate_partition(options, p)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator thread panicked"))
            .collect()
    });
    let mut report = GenReport::default();
    for result in results {
        let (file, records) = result?;
        report.files.push(file);
        report.records += records;
    }
    Ok(report)
}

fn generate_partition(options: &GenOptions, partition: usize) -> Result<(PathBuf, u64), GenError> {
    let parts = options.partitions as u64;
    let p = partition as u64;
    let count = options.events / parts + u64::from(p < options.events % parts);
    // A user's records go to the partition a producer keyed by user would choose, so a
    // file published with `skewless produce` to as many partitions lands whole in one.
    let users_here: Vec<u64> = (0..options.users)
        .filter(|&u| {
            crate::kafka::produce::partition_for(Some(&user_name(u)), options.partitions as i32, 0) as u64
                == p
        })
        .collect();
    if users_here.is_empty() {
        return Err(GenError::Options(format!(
            "no user hashes to partition {partition}: use more users"
        )));
    }
    use crate::sinks::archive::ArchiveCompression;
    let name = format!(
        "part-{partition:03}.jsonl{}",
        match options.compression {
            Some(ArchiveCompression::Gzip) => ".gz",
            Some(ArchiveCompression::Zstd) => ".zst",
            None => "",
        }
    );
    let path = options.out.join(name);
    let io = |source| GenError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io)?);
    let mut out: Box<dyn Write> = match options.compression {
        Some(ArchiveCompression::Gzip) => {
            Box::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()))
        }
        Some(ArchiveCompression::Zstd) => Box::new(zstd::Encoder::new(file, 3).map_err(io)?.auto_finish()),
        None => Box::new(file),
    };
    let mut g = PartitionGen::new(options, partition, users_here);
    let mut line = Vec::with_capacity(512);
    for i in 0..count {
        line.clear();
        g.record(i, count, &mut line);
        line.push(b'\n');
        out.write_all(&line).map_err(io)?;
    }
    out.flush().map_err(io)?;
    drop(out);
    Ok((path, count))
}

/// The `user_id` of user `u`.
fn user_name(u: u64) -> String {
    format!("user-{u}")
}

struct PartitionGen<'o> {
    o: &'o GenOptions,
    rng: ChaCha8Rng,
    users: Option<Zipf<f64>>,
    users_here: Vec<u64>,
    introduced: usize,
    items: Zipf<f64>,
    clock: f64,
    recent: Vec<Vec<u8>>,
    /// Events that others lead to: `(due, sequence, user, item, kind)`, kind 0 a
    /// view and 1 a purchase of a shown item, 2 an impression right after activity.
    outcomes: BinaryHeap<Reverse<Scheduled>>,
    scheduled: u64,
    store: ServingStore,
}

/// An event another leads to: `(due as f64 bits, sequence, user, item, kind)`.
type Scheduled = (u64, u64, u64, u64, u8);

/// What a generated record is, before it is written.
enum Kind {
    View(u64),
    Purchase(u64),
    Session,
    Shown,
    Unknown,
}

impl<'o> PartitionGen<'o> {
    fn new(o: &'o GenOptions, partition: usize, users_here: Vec<u64>) -> Self {
        PartitionGen {
            o,
            rng: ChaCha8Rng::seed_from_u64(o.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ partition as u64),
            users: (o.zipf > 0.0).then(|| Zipf::new(users_here.len() as f64, o.zipf).expect("valid zipf")),
            users_here,
            introduced: 0,
            items: Zipf::new(o.items as f64, 1.1).expect("valid zipf"),
            clock: o.start,
            recent: Vec::new(),
            outcomes: BinaryHeap::new(),
            scheduled: 0,
            store: ServingStore::default(),
        }
    }

    /// The next event's user: each of the partition's users once, then by the
    /// distribution, so a log of N users really holds N users.
    fn user(&mut self) -> u64 {
        if self.introduced < self.users_here.len() {
            self.introduced += 1;
            return self.users_here[self.introduced - 1];
        }
        let rank = match &self.users {
            Some(zipf) => zipf.sample(&mut self.rng) as usize - 1,
            None => self.rng.random_range(0..self.users_here.len()),
        };
        self.users_here[rank]
    }

    fn uuid(&mut self) -> String {
        let v: u128 = self.rng.random();
        let h = format!("{v:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn record(&mut self, i: u64, count: u64, line: &mut Vec<u8>) {
        let o = self.o;
        let base = o.start + o.span * i as f64 / count.max(1) as f64;
        if !self.recent.is_empty() && self.rng.random_bool(o.duplicates) {
            let pick = self.rng.random_range(0..self.recent.len());
            line.extend_from_slice(&self.recent[pick]);
            return;
        }
        let late = self.rng.random_bool(o.late);
        let clock_before = self.clock;
        let time = if late {
            self.clock - o.lateness - self.rng.random_range(1.0..120.0)
        } else {
            (base
                - self
                    .rng
                    .random_range(0.0..(o.lateness * 0.4).max(0.0) + f64::EPSILON))
            .max(o.start)
        };
        let mut time = (time * 1000.0).round() / 1000.0;
        if !late {
            self.clock = self.clock.max(time);
        }
        // An outcome an earlier impression led to, once it is due; else a fresh event.
        let due = self
            .outcomes
            .peek()
            .is_some_and(|Reverse((due, ..))| f64::from_bits(*due) <= base && !late);
        let (user, kind) = if due {
            let Some(Reverse((due, _, user, item, kind))) = self.outcomes.pop() else {
                unreachable!("peeked")
            };
            // At its own time when that is still on time here (sparse logs step
            // further than an outcome's delay).
            let due = (f64::from_bits(due) * 1000.0).round() / 1000.0;
            if due >= clock_before - o.lateness * 0.4 {
                time = due;
                self.clock = self.clock.max(time);
            }
            let kind = match kind {
                0 => Kind::View(item),
                1 => Kind::Purchase(item),
                _ => Kind::Shown,
            };
            (user, kind)
        } else {
            let user = self.user();
            let roll: f64 = self.rng.random();
            let kind = if self.rng.random_bool(o.unknown) {
                Kind::Unknown
            } else if roll < 0.60 {
                Kind::View(self.item())
            } else if roll < 0.75 {
                Kind::Purchase(self.item())
            } else if roll < 0.93 {
                Kind::Session
            } else {
                Kind::Shown
            };
            (user, kind)
        };
        let user_id = user_name(user);
        let id = self.uuid();
        let session = self.rng.random_range(0..1_000_000u32);
        let instance = self.rng.random_range(0..8u32);
        let mut payload = String::new();
        let mut effect = None;
        let (event_type, version) = match kind {
            Kind::Unknown => ("ecommerce.cart_updated", "1.0".to_owned()),
            Kind::View(item) => {
                payload = format!(r#"{{"item_id":"item-{item}","category":"{}"}}"#, category(item));
                effect = Some(Effect::View(item, category(item)));
                ("ecommerce.item_viewed", "1.0".to_owned())
            }
            Kind::Purchase(item) => {
                let price = (self.rng.random_range(1.0..500.0f64) * 100.0).round() / 100.0;
                let with_category = self.rng.random_bool(0.9);
                let cat = if with_category {
                    format!(r#","category":"{}""#, category(item))
                } else {
                    String::new()
                };
                effect = Some(Effect::Purchase(
                    item,
                    if with_category { category(item) } else { "unknown" },
                    price,
                ));
                if self.rng.random_bool(o.v1) {
                    payload = format!(r#"{{"item_id":"item-{item}","amount":{price}{cat}}}"#);
                    (
                        "ecommerce.purchase_completed",
                        format!("1.{}", self.rng.random_range(0..3)),
                    )
                } else {
                    payload = format!(
                        r#"{{"item_id":"item-{item}","price":{price}{cat},"payment_method":"card"}}"#
                    );
                    (
                        "ecommerce.purchase_completed",
                        format!("2.{}", self.rng.random_range(0..3)),
                    )
                }
            }
            Kind::Session => {
                effect = Some(Effect::Session);
                ("session.started", "1.0".to_owned())
            }
            Kind::Shown => {
                let shown: Vec<u64> = (0..5).map(|_| self.item()).collect();
                if !late {
                    for &item in &shown {
                        self.schedule(time, user, item);
                    }
                }
                let items: Vec<String> = shown.iter().map(|i| format!("\"item-{i}\"")).collect();
                let snapshot = self.snapshot(user, time);
                payload = format!(
                    r#"{{"impression_id":"{}","recommended_items":[{}],"model_version":"m-{}","features_snapshot":{snapshot}}}"#,
                    self.uuid(),
                    items.join(","),
                    7 + u32::from(self.rng.random_bool(0.3)),
                );
                ("recommendation.items_shown", "1.0".to_owned())
            }
        };
        let user_key = user;
        let user = user_id;
        let payload_field = if payload.is_empty() {
            String::new()
        } else {
            format!(r#","payload":{payload}"#)
        };
        let text = format!(
            r#"{{"event_id":"{id}","event_type":"{event_type}","event_version":"{version}","event_time":{time},"ingestion_time":{ingest},"source_service":"web","source_instance":"web-{instance}","session_id":"s-{session}","user_id":"{user}"{payload_field}}}"#,
            ingest = ((time + 0.25) * 1000.0).round() / 1000.0,
        );
        if self.rng.random_bool(o.malformed) {
            self.malform(text, time, line);
            return;
        }
        if let (Some(effect), false) = (effect, late) {
            // Activity draws recommendations: sometimes an impression follows
            // seconds later, before a lagging store has seen the activity.
            if matches!(effect, Effect::View(..) | Effect::Purchase(..)) && self.rng.random_bool(0.05) {
                let due = time + self.rng.random_range(0.5..3.0);
                self.scheduled += 1;
                self.outcomes
                    .push(Reverse((due.to_bits(), self.scheduled, user_key, 0, 2)));
            }
            self.store.apply(user_key, time, &id, effect);
        }
        line.extend_from_slice(text.as_bytes());
        if self.recent.len() < 64 {
            self.recent.push(text.into_bytes());
        } else {
            let slot = self.rng.random_range(0..64);
            self.recent[slot] = text.into_bytes();
        }
    }

    /// Schedules what an impression of `item` at `time` leads to.
    fn schedule(&mut self, time: f64, user: u64, item: u64) {
        let o = self.o;
        let after = |mean: f64, most: f64, rng: &mut ChaCha8Rng| {
            let u: f64 = rng.random_range(f64::EPSILON..1.0);
            (-u.ln() * mean).clamp(5.0, most)
        };
        if self.rng.random_bool(o.ctr) {
            let due = time + after(300.0, 1800.0, &mut self.rng);
            self.scheduled += 1;
            self.outcomes
                .push(Reverse((due.to_bits(), self.scheduled, user, item, 0)));
        }
        if self.rng.random_bool(o.purchase_rate) {
            let due = time + after(7200.0, 86_400.0, &mut self.rng);
            self.scheduled += 1;
            self.outcomes
                .push(Reverse((due.to_bits(), self.scheduled, user, item, 1)));
        }
    }

    /// What the lagging store serves for `user` at `time`: its features as of
    /// `time - lag`, sometimes with one value wrong.
    fn snapshot(&mut self, user: u64, time: f64) -> String {
        let (least, most) = self.o.serving_lag;
        let lag = if most > least {
            self.rng.random_range(least..most)
        } else {
            least
        };
        let as_of = ((time - lag) * 1000.0).round() / 1000.0;
        let mut features = self.store.snapshot(user, as_of);
        if self.rng.random_bool(self.o.wrong_values) {
            let wrong = |v: &Json| match v {
                Json::Number(n) if n.is_u64() => Json::from(n.as_u64().unwrap_or(0) + 1),
                Json::Number(n) => Json::from(n.as_f64().unwrap_or(0.0) * 1.1 + 1.0),
                Json::Bool(b) => Json::Bool(!b),
                Json::Array(a) if !a.is_empty() => Json::Array(a[..a.len() - 1].to_vec()),
                Json::Array(_) => serde_json::json!([["unknown", 1.0]]),
                _ => Json::from(time),
            };
            let names = [
                "n_purchased_items",
                "n_viewed_items",
                "total_spend",
                "top_categories",
                "session_active",
                "last_active_time",
            ];
            let name = names[self.rng.random_range(0..names.len())];
            let value = match (name, features[name].as_f64()) {
                // A stale clock in the store: an hour behind.
                ("last_active_time", Some(t)) => Json::from(t - 3600.0),
                _ => wrong(&features[name]),
            };
            features.insert(name.into(), value);
        }
        Json::Object(features).to_string()
    }

    fn item(&mut self) -> u64 {
        self.items.sample(&mut self.rng) as u64
    }

    fn malform(&mut self, text: String, time: f64, line: &mut Vec<u8>) {
        let broken = match self.rng.random_range(0..8u32) {
            0 => text[..text.len() / 2].to_owned(),
            1 => "[1,2,3]".to_owned(),
            2 => {
                line.extend_from_slice(b"{\"event_id\":\"\xff\xfe\"}");
                return;
            }
            3 => text.replacen(r#""event_id":"#, r#""event_idx":"#, 1),
            4 => text.replacen(r#""user_id":"#, r#""user":"#, 1),
            5 => text.replacen(
                &format!(r#""event_time":{time}"#),
                &format!(r#""event_time":"{time}""#),
                1,
            ),
            6 => text.replacen(r#""event_time":"#, r#""event_time":-"#, 1),
            _ => text.replacen(r#""event_version":""#, r#""event_version":"9"#, 1),
        };
        line.extend_from_slice(broken.as_bytes());
    }
}

fn category(item: u64) -> &'static str {
    // Items keep one category; lower item numbers (more popular) spread over all.
    let h = item.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
    CATEGORIES[h as usize % CATEGORIES.len()]
}

/// The files a generated directory holds, sorted.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused_naming_the_flag_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let with = |change: &dyn Fn(&mut GenOptions)| {
            let mut options = GenOptions {
                out: dir.path().join("out"),
                ..GenOptions::default()
            };
            change(&mut options);
            generate(&options).unwrap_err().to_string()
        };
        assert!(with(&|o| o.malformed = 2.0).contains("--malformed 2"));
        assert!(with(&|o| o.late = f64::NAN).contains("--late NaN"));
        assert!(with(&|o| o.v1 = 1.5).contains("--v1 1.5"));
        assert!(with(&|o| o.start = f64::NAN).contains("--start NaN"));
        assert!(with(&|o| o.span = 1e300).contains("--span"));
        assert!(
            with(&|o| {
                o.late = 0.6;
                o.duplicates = 0.6
            })
            .contains("add up to")
        );
        assert!(!dir.path().join("out").exists(), "nothing is written");
    }

    #[test]
    fn same_options_same_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let options = |out: &Path| GenOptions {
            out: out.to_owned(),
            events: 500,
            users: 20,
            partitions: 2,
            late: 0.05,
            duplicates: 0.05,
            malformed: 0.05,
            v1: 0.3,
            unknown: 0.05,
            compression: None,
            ..GenOptions::default()
        };
        let report = generate(&options(a.path())).unwrap();
        generate(&options(b.path())).unwrap();
        assert_eq!(report.records, 500);
        for (x, y) in files_in(a.path()).iter().zip(files_in(b.path())) {
            assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
        }
    }
}
