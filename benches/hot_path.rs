//! Hot-path micro-benchmarks: each stage of the pipeline timed on its own, over the
//! same synthetic log, processed in pipeline-sized chunks (as the job does, so buffers
//! are reused). An optimisation of one stage shows up here without the noise of a
//! whole run.
//!
//! `cargo bench --bench hot_path` (`HOT_PATH_EVENTS` sets the log size).

use std::time::{Duration, Instant};

use hashbrown::HashMap;
use skewless::dataflow::ingest::decode::{Decoded, Decoder};
use skewless::job::Job;
use skewless::model::event::{Event, Position};
use skewless::model::features::{Interner, UserState, render_features, render_state};
use skewless::source::lines::{Line, LineReader};
use skewless::synthetic::{GenOptions, generate};

// The same allocator as the `skewless` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHUNK: usize = 1 << 16;

fn report(stage: &str, items: usize, unit: &str, time: Duration) {
    let seconds = time.as_secs_f64();
    println!(
        "{stage:<24} {:>10.0} {unit}/s  {:>7.1} ns/{unit}",
        items as f64 / seconds,
        seconds * 1e9 / items as f64
    );
}

fn main() {
    let events: u64 = std::env::var("HOT_PATH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let options = GenOptions {
        out: dir.path().to_owned(),
        events,
        users: events / 10,
        partitions: 1,
        span: 86_400.0 * 2.0,
        v1: 0.2,
        duplicates: 0.005,
        late: 0.001,
        malformed: 0.001,
        unknown: 0.02,
        seed: 42,
        ..GenOptions::default()
    };
    let path = generate(&options).unwrap().files.remove(0);
    let job = Job::load(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/recsys.toml").as_ref()).unwrap();
    let decoder = Decoder::new(&job.registry, job.max_event_bytes);

    let file = std::fs::File::open(&path).unwrap();
    let mut reader = LineReader::new(
        flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)),
        1 << 20,
    );
    let mut users: HashMap<compact_str::CompactString, UserState> = HashMap::new();
    let mut interner = Interner::default();
    let (mut lines, mut decoded, mut built) = (Vec::new(), Vec::new(), Vec::<Event>::new());
    let (mut t_read, mut t_decode, mut t_build, mut t_fold) = Default::default();
    let (mut n_lines, mut n_events, mut bytes) = (0, 0, 0);
    loop {
        // Stage 1: gunzip and split lines (copied out, as the bench needs them later).
        let start = Instant::now();
        lines.clear();
        while lines.len() < CHUNK {
            match reader.next_line().unwrap() {
                Some(Line::Full(line)) => {
                    bytes += line.len();
                    lines.push(line.to_vec());
                }
                Some(Line::Oversized { .. }) => {}
                None => break,
            }
        }
        t_read += start.elapsed();
        if lines.is_empty() {
            break;
        }
        n_lines += lines.len();
        // Stage 2: decode, validate, upcast.
        let start = Instant::now();
        decoded.extend(lines.iter().map(|line| decoder.decode(line)));
        t_decode += start.elapsed();
        // Stage 3: build events (key hash, position).
        let start = Instant::now();
        for (offset, d) in decoded.drain(..).enumerate() {
            if let Decoded::Event(e) = d {
                built.push(Event::accepted(
                    e,
                    Position {
                        partition: 0,
                        offset: offset as i64,
                    },
                ));
            }
        }
        t_build += start.elapsed();
        n_events += built.len();
        // Stage 4: apply order, then fold into per-user state.
        let start = Instant::now();
        built.sort_unstable_by(Event::apply_order);
        for event in built.drain(..) {
            if job.features.reads(event.event_type) {
                let state = users
                    .entry_ref(event.user_id.as_str())
                    .or_insert_with(|| UserState::new(&job.features));
                state.apply(&job.features, &mut interner, &event);
            }
        }
        t_fold += start.elapsed();
    }
    // Stage 5: render every view.
    let start = Instant::now();
    let mut rendered = 0;
    for state in users.values() {
        rendered += render_features(&job.features, &interner, state).len();
        rendered += render_state(&job.features, &interner, state).len();
    }
    let t_render = start.elapsed();

    println!(
        "{n_lines} lines ({} MB), {n_events} events, {} users, {} MB of views",
        bytes >> 20,
        users.len(),
        rendered >> 20
    );
    report("gunzip + split", n_lines, "line", t_read);
    report("decode", n_lines, "line", t_decode);
    report("event build", n_events, "event", t_build);
    report("sort + fold", n_events, "event", t_fold);
    report("render", users.len(), "view", t_render);
    let total = t_read + t_decode + t_build + t_fold;
    report("all but render", n_lines, "line", total);
}
