//! The Parquet writer's floor: the rows of a dataset the export wrote, read back into
//! memory as the writers' 2048-row batches, then written again through the export's
//! own [`ParquetFile`] (its zstd, dictionaries, statistics and 16k-row groups), one
//! file per input file, on one thread. No fold, no rows to lay out, no channel: what
//! is left is what this crate's encoder takes for these rows, the least the export's
//! writer threads can cost without a different encoder.
//!
//! `cargo bench --bench export_write -- DIR` (default `out/bench/training`, which
//! `scripts/bench.sh --export` leaves behind); `EXPORT_WRITE_ROUNDS` rounds (3).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use skewless::sinks::training::parquet::ParquetFile;

// The same allocator as the `skewless` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One file's batches, as the writers receive them (2048 rows), and its metadata.
struct Input {
    batches: Vec<RecordBatch>,
    metadata: Vec<(String, String)>,
}

/// The `.parquet` files under `dir`, in name order.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
}

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "out/bench/training".into());
    let rounds: usize = std::env::var("EXPORT_WRITE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut paths = Vec::new();
    files(Path::new(&dir), &mut paths);
    assert!(
        !paths.is_empty(),
        "no .parquet files under {dir}: run `scripts/bench.sh --export` first"
    );

    let inputs: Vec<Input> = paths
        .iter()
        .map(|path| {
            let file = std::fs::File::open(path).expect("an export file");
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("a Parquet file");
            let metadata = builder
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .into_iter()
                .flatten()
                .filter(|kv| kv.key != "ARROW:schema")
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect();
            let batches = builder
                .with_batch_size(2048)
                .build()
                .expect("a reader")
                .collect::<Result<Vec<_>, _>>()
                .expect("batches");
            Input { batches, metadata }
        })
        .filter(|input| !input.batches.is_empty())
        .collect();
    let rows: usize = inputs
        .iter()
        .flat_map(|i| &i.batches)
        .map(RecordBatch::num_rows)
        .sum();
    let input_bytes: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    println!(
        "{} files, {rows} rows, {:.1} B/row as read",
        paths.len(),
        input_bytes as f64 / rows as f64
    );

    for _ in 0..rounds {
        let out = tempfile::tempdir().expect("a temporary directory");
        let (mut encode, mut close) = (Duration::ZERO, Duration::ZERO);
        let mut bytes = 0;
        for (i, Input { batches, metadata }) in inputs.iter().enumerate() {
            let schema = batches[0].schema();
            let path = out.path().join(format!("part-{i}.parquet"));
            let start = Instant::now();
            let mut file = ParquetFile::create(path, &schema, metadata).expect("create");
            for batch in batches {
                file.write(batch).expect("write");
            }
            let middle = Instant::now();
            let written = file.close().expect("close");
            close += middle.elapsed();
            encode += middle - start;
            bytes += std::fs::metadata(written).map_or(0, |m| m.len());
        }
        println!(
            "encode {:.2} s ({:.0} rows/s, {:.2} us/row), close and fsync {:.2} s, {:.1} B/row",
            encode.as_secs_f64(),
            rows as f64 / encode.as_secs_f64(),
            encode.as_secs_f64() * 1e6 / rows as f64,
            close.as_secs_f64(),
            bytes as f64 / rows as f64
        );
    }
}
