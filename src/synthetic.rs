//! Deterministic synthetic event logs for samples, tests and benchmarks.
//!
//! Each partition is generated from its own seeded generator, so the output depends
//! only on the options. Users are keyed to partitions (as a producer keyed by user
//! would do); each user appears once early on, then users are drawn with optional
//! Zipf skew; event times advance evenly over `span`, with
//! small out-of-order jitter inside the lateness bound, and optional late, duplicate,
//! malformed, v1-schema and unknown-type records.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
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
    /// Write `.jsonl.gz` rather than `.jsonl`.
    pub gzip: bool,
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
            gzip: true,
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
    let name = format!(
        "part-{partition:03}.jsonl{}",
        if options.gzip { ".gz" } else { "" }
    );
    let path = options.out.join(name);
    let io = |source| GenError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io)?);
    let mut out: Box<dyn Write> = if options.gzip {
        Box::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()))
    } else {
        Box::new(file)
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
        let time = if late {
            self.clock - o.lateness - self.rng.random_range(1.0..120.0)
        } else {
            (base
                - self
                    .rng
                    .random_range(0.0..(o.lateness * 0.4).max(0.0) + f64::EPSILON))
            .max(o.start)
        };
        let time = (time * 1000.0).round() / 1000.0;
        if !late {
            self.clock = self.clock.max(time);
        }
        let user = user_name(self.user());
        let id = self.uuid();
        let session = self.rng.random_range(0..1_000_000u32);
        let instance = self.rng.random_range(0..8u32);
        let mut payload = String::new();
        let roll: f64 = self.rng.random();
        let (event_type, version) = if self.rng.random_bool(o.unknown) {
            ("ecommerce.cart_updated", "1.0".to_owned())
        } else if roll < 0.60 {
            let item = self.item();
            payload = format!(r#"{{"item_id":"item-{item}","category":"{}"}}"#, category(item));
            ("ecommerce.item_viewed", "1.0".to_owned())
        } else if roll < 0.75 {
            let item = self.item();
            let price = (self.rng.random_range(1.0..500.0f64) * 100.0).round() / 100.0;
            let with_category = self.rng.random_bool(0.9);
            let cat = if with_category {
                format!(r#","category":"{}""#, category(item))
            } else {
                String::new()
            };
            if self.rng.random_bool(o.v1) {
                payload = format!(r#"{{"item_id":"item-{item}","amount":{price}{cat}}}"#);
                (
                    "ecommerce.purchase_completed",
                    format!("1.{}", self.rng.random_range(0..3)),
                )
            } else {
                payload =
                    format!(r#"{{"item_id":"item-{item}","price":{price}{cat},"payment_method":"card"}}"#);
                (
                    "ecommerce.purchase_completed",
                    format!("2.{}", self.rng.random_range(0..3)),
                )
            }
        } else if roll < 0.85 {
            ("session.started", "1.0".to_owned())
        } else {
            let items: Vec<String> = (0..5).map(|_| format!("\"item-{}\"", self.item())).collect();
            payload = format!(
                r#"{{"impression_id":"{}","recommended_items":[{}],"model_version":"m-7"}}"#,
                self.uuid(),
                items.join(",")
            );
            ("recommendation.items_shown", "1.0".to_owned())
        };
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
        line.extend_from_slice(text.as_bytes());
        if self.recent.len() < 64 {
            self.recent.push(text.into_bytes());
        } else {
            let slot = self.rng.random_range(0..64);
            self.recent[slot] = text.into_bytes();
        }
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
            gzip: false,
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
