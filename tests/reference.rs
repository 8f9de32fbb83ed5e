//! Incremental equals from-scratch: random event logs, run through the job with 1, 2
//! and 4 workers, give exactly the views of a plain batch fold written straight from
//! DESIGN.md sections 4 and 5 (no code shared with the job's engine).
//!
//! Logs have several partitions, out-of-order arrival inside the lateness bound, some
//! late events, exact duplicates in the same and in other partitions, event ids reused
//! with another time and content (by the same user and by others, inside and across
//! the 24 h dedup horizon), v1 and v2 purchases, prices that overflow a sum, sessions,
//! impressions, unknown types, integral times, -0.0, and ties in event time. Dead
//! letters are compared by reason and origin where the contract decides them.
//! The training rows (DESIGN.md section 10: point-in-time features at each applied
//! impression, one row per shown item, labels from the outcomes that follow within
//! their windows, completeness against the largest time seen) are compared whole.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{Value, json};

const T0: f64 = 1_767_225_600.0;
const LATENESS: f64 = 5.0;
const HORIZON: f64 = 86_400.0;
const ITEMS: [&str; 6] = ["i1", "i2", "i3", "i4", "i5", "i6"];
const CATEGORIES: [Option<&str>; 5] = [Some("books"), Some("toys"), Some("music"), Some("auto"), None];

#[derive(Debug, Clone)]
enum Kind {
    View {
        item: usize,
        category: usize,
    },
    Purchase {
        item: usize,
        category: usize,
        cents: u32,
        v1: bool,
        /// A price of 1e308: a second one overflows the user's total.
        huge: bool,
    },
    Session,
    Impression,
    Unknown,
}

#[derive(Debug, Clone)]
struct Draw {
    user: u8,
    kind: Kind,
    /// Seconds the partition's base time moves on before this event.
    step: f64,
    /// How far before the base time the event says it happened (inside the bound).
    jitter: f64,
    /// A late event instead: how far behind the bound.
    late_by: Option<f64>,
    /// Repeat an earlier record (by index into all records so far) instead.
    repeat: Option<prop::sample::Index>,
    /// Take its id from a small pool instead of its own: ids reused with another time
    /// and content, by the same user or by another.
    shared_id: Option<u8>,
    /// Say a whole number of seconds.
    integral: bool,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => (0..ITEMS.len(), 0..CATEGORIES.len()).prop_map(|(item, category)| Kind::View { item, category }),
        3 => (0..ITEMS.len(), 0..CATEGORIES.len(), 1u32..20_000, any::<bool>(), prop::bool::weighted(0.05))
            .prop_map(|(item, category, cents, v1, huge)| Kind::Purchase { item, category, cents, v1, huge }),
        1 => Just(Kind::Session),
        1 => Just(Kind::Impression),
        1 => Just(Kind::Unknown),
    ]
}

fn draw() -> impl Strategy<Value = Draw> {
    (
        0u8..5,
        kind(),
        // Now and then a jump of more than the dedup horizon.
        prop_oneof![8 => Just(0.0), 8 => Just(0.5), 8 => Just(1.0), 8 => 0.0..3.0f64, 1 => Just(HORIZON + 7.0)],
        prop_oneof![3 => Just(0.0), 1 => 0.0..(LATENESS - 0.5)],
        prop::option::weighted(0.05, 0.1..60.0f64),
        prop::option::weighted(0.1, any::<prop::sample::Index>()),
        prop::option::weighted(0.1, 0u8..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(user, kind, step, jitter, late_by, repeat, shared_id, integral)| Draw {
            user,
            kind,
            step,
            jitter,
            late_by,
            repeat,
            shared_id,
            integral,
        })
}

/// One partition's records, in arrival order.
type Log = Vec<Vec<String>>;

fn render(id: usize, draw: &Draw, time: f64) -> String {
    let user = format!("u{}", draw.user);
    let (event_type, version, payload) = match &draw.kind {
        Kind::View { item, category } => {
            let mut p = json!({ "item_id": ITEMS[*item] });
            if let Some(c) = CATEGORIES[*category] {
                p["category"] = json!(c);
            }
            ("ecommerce.item_viewed", "1.0", Some(p))
        }
        Kind::Purchase {
            item,
            category,
            cents,
            v1,
            huge,
        } => {
            let price = if *huge { 1e308 } else { f64::from(*cents) / 100.0 };
            let mut p = json!({ "item_id": ITEMS[*item] });
            p[if *v1 { "amount" } else { "price" }] = json!(price);
            if let Some(c) = CATEGORIES[*category] {
                p["category"] = json!(c);
            }
            (
                "ecommerce.purchase_completed",
                if *v1 { "1.2" } else { "2.0" },
                Some(p),
            )
        }
        Kind::Session => ("session.started", "1.0", None),
        Kind::Impression => (
            "recommendation.items_shown",
            "1.0",
            Some(
                json!({ "impression_id": format!("m{id}"), "recommended_items": ["i1", "i2"], "model_version": "m" }),
            ),
        ),
        Kind::Unknown => ("ecommerce.cart_updated", "1.0", Some(json!({}))),
    };
    let event_id = match draw.shared_id {
        Some(shared) => format!("s{shared}"),
        None => format!("e{id:04}"),
    };
    let mut event = json!({
        "event_id": event_id,
        "event_type": event_type,
        "event_version": version,
        "event_time": time,
        "user_id": user,
    });
    if let Some(payload) = payload {
        event["payload"] = payload;
    }
    event.to_string()
}

/// Lays the draws out over partitions: each partition's base time moves forward,
/// events may say a time a little earlier (out of order, inside the bound), a few say a
/// time far behind (late), and some repeat an earlier record, maybe of another partition.
fn layout(draws: &[(usize, Draw)], partitions: usize) -> Log {
    let mut log: Log = vec![Vec::new(); partitions];
    let mut base = vec![T0; partitions];
    let mut clock = vec![T0; partitions];
    let mut all: Vec<String> = Vec::new();
    for (id, (partition, draw)) in draws.iter().enumerate() {
        let p = partition % partitions;
        let line = match (&draw.repeat, all.is_empty()) {
            (Some(index), false) => all[index.index(all.len())].clone(),
            _ => {
                base[p] += draw.step;
                let time = match draw.late_by {
                    Some(by) => clock[p] - LATENESS - by,
                    None => base[p] - draw.jitter,
                };
                let time = if draw.integral {
                    time.round()
                } else {
                    (time * 1000.0).round() / 1000.0
                };
                clock[p] = clock[p].max(time);
                render(id, draw, time)
            }
        };
        all.push(line.clone());
        log[p].push(line);
    }
    log
}

/// What the batch fold expects.
struct Expected {
    views: Vec<Value>,
    /// The training rows of `jobs/recsys.toml`'s export, in the JSONL form's order.
    rows: Vec<Value>,
    read: u64,
    applied: u64,
    ignored: u64,
    not_applied: u64,
    /// `(path, line)` of the events whose price would overflow the user's total.
    overflowed: BTreeSet<(String, u64)>,
    /// `(path, line)` of the late records whose (user, id) no other record has: these
    /// are dead-lettered as late whatever order the dataflow meets records in.
    late_letters: BTreeSet<(String, u64)>,
    /// The (user, id) keys that occur once in the whole log.
    unique: BTreeSet<(String, String)>,
}

/// An accepted record: the event, whether it was late, where it was read (path,
/// 1-based line) and the rank of that position (partition name hash, offset).
type Accepted = (Value, bool, Origin, (u64, u64));

/// Where a record was read: its file and 1-based line.
type Origin = (String, u64);

/// The plain batch fold of DESIGN.md sections 4 and 5, over the partitions written at
/// `paths`.
fn reference(log: &Log, paths: &[PathBuf]) -> Expected {
    // Step 6 per partition: late against the partition's clock before the record.
    // Each accepted record keeps where it was read: (path, 1-based line, the rank of
    // its position: partition name hash, then offset).
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut read = 0;
    let mut ignored = 0;
    let mut max_time = f64::NEG_INFINITY;
    let mut copies: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (partition, path) in log.iter().zip(paths) {
        let name = path.display().to_string();
        let hash = skewless::model::event::key_hash(&name);
        let mut clock: Option<f64> = None;
        for (offset, line) in partition.iter().enumerate() {
            read += 1;
            let event: Value = serde_json::from_str(line).unwrap();
            let time = event["event_time"].as_f64().unwrap();
            max_time = max_time.max(time);
            let late = clock.is_some_and(|c| time < c - LATENESS);
            clock = Some(clock.map_or(time, |c: f64| c.max(time)));
            if event["event_type"] == "ecommerce.cart_updated" {
                ignored += 1;
                continue;
            }
            *copies.entry(key_of(&event)).or_default() += 1;
            accepted.push((
                event,
                late,
                (name.clone(), offset as u64 + 1),
                (hash, offset as u64),
            ));
        }
    }
    let unique: BTreeSet<(String, String)> = copies
        .into_iter()
        .filter(|(_, n)| *n == 1)
        .map(|(k, _)| k)
        .collect();
    let late_letters = accepted
        .iter()
        .filter(|(event, late, _, _)| *late && unique.contains(&key_of(event)))
        .map(|(_, _, origin, _)| origin.clone())
        .collect();
    // Step 5: on-time records in apply order (event time, event id, position); a copy
    // is a duplicate when the last copy of its (user, id) taken is within the horizon.
    let mut on_time: Vec<&Accepted> = accepted.iter().filter(|(_, late, _, _)| !late).collect();
    on_time.sort_by(|a, b| {
        let t = |e: &Value| e["event_time"].as_f64().unwrap();
        t(&a.0)
            .total_cmp(&t(&b.0))
            .then_with(|| a.0["event_id"].as_str().cmp(&b.0["event_id"].as_str()))
            .then_with(|| a.3.cmp(&b.3))
    });
    let mut last_taken: HashMap<(String, String), f64> = HashMap::new();
    let mut taken: Vec<(&Value, &Origin)> = Vec::new();
    for (event, _, origin, _) in on_time {
        let time = event["event_time"].as_f64().unwrap();
        let key = key_of(event);
        if last_taken
            .get(&key)
            .is_some_and(|&last| (time - last).abs() <= HORIZON)
        {
            continue;
        }
        last_taken.insert(key, time);
        taken.push((event, origin));
    }
    let not_applied = accepted.len() as u64 - taken.len() as u64;
    let mut overflowed = BTreeSet::new();
    // Section 5: each user's events in apply order (as taken above).
    let mut per_user: BTreeMap<String, Vec<(&Value, &Origin)>> = BTreeMap::new();
    for (event, origin) in &taken {
        per_user
            .entry(event["user_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((event, origin));
    }
    let mut views = Vec::new();
    let mut rows = Vec::new();
    for (user, events) in per_user {
        // Impressions seen so far: (event, features then), for their labels later.
        let mut impressions: Vec<(&Value, Value)> = Vec::new();
        // The user's applied events, for the labels.
        let mut applied: Vec<&Value> = Vec::new();
        let mut purchased = BTreeSet::new();
        let mut viewed: Vec<String> = Vec::new();
        let mut interests: HashMap<String, f64> = HashMap::new();
        let mut spend = 0.0;
        let mut session_start: Option<f64> = None;
        let mut last_active: Option<f64> = None;
        let mut has_view = false;
        for (event, origin) in events {
            let time = event["event_time"].as_f64().unwrap();
            let payload = &event["payload"];
            if event["event_type"] == "recommendation.items_shown" {
                let features =
                    features_of(&purchased, &viewed, &interests, spend, session_start, last_active);
                impressions.push((event, features));
            }
            let category = payload["category"].as_str().unwrap_or("unknown").to_owned();
            match event["event_type"].as_str().unwrap() {
                "ecommerce.purchase_completed" => {
                    let price = payload
                        .get("price")
                        .or(payload.get("amount"))
                        .unwrap()
                        .as_f64()
                        .unwrap();
                    // A total that would overflow refuses the event (dead-lettered).
                    if !(spend + price).is_finite() {
                        overflowed.insert(origin.clone());
                        continue;
                    }
                    purchased.insert(payload["item_id"].as_str().unwrap().to_owned());
                    spend += price;
                    let old = interests.get(&category).copied().unwrap_or(0.0);
                    interests.insert(category, old * 0.9 + 1.0);
                    last_active = Some(time);
                    has_view = true;
                }
                "ecommerce.item_viewed" => {
                    viewed.push(payload["item_id"].as_str().unwrap().to_owned());
                    if viewed.len() > 100 {
                        viewed.remove(0);
                    }
                    let old = interests.get(&category).copied().unwrap_or(0.0);
                    interests.insert(category, old * 0.95 + 0.3);
                    last_active = Some(time);
                    has_view = true;
                }
                "session.started" => {
                    session_start = Some(time);
                    has_view = true;
                }
                _ => {}
            }
            applied.push(event);
        }
        rows.extend(training_rows(&impressions, &applied, max_time));
        if !has_view {
            continue;
        }
        let features = features_of(&purchased, &viewed, &interests, spend, session_start, last_active);
        let interests: BTreeMap<String, f64> = interests.into_iter().collect();
        views.push(json!({
            "user_id": user,
            "as_of": max_time,
            "features": features,
            "state": {
                "purchased_items": purchased,
                "viewed_items": viewed,
                "category_interests": interests,
                "total_spend": spend,
                "session_start_time": session_start,
                "last_active_time": last_active,
            },
        }));
    }
    rows.sort_by(|a, b| {
        let key = |r: &Value| {
            (
                r["user_id"].as_str().unwrap().to_owned(),
                r["ts"].as_f64().unwrap().to_bits(),
                r["event_id"].as_str().unwrap().to_owned(),
                r["position"].as_i64().unwrap(),
            )
        };
        key(a).cmp(&key(b))
    });
    Expected {
        views,
        rows,
        read,
        applied: taken.len() as u64 - overflowed.len() as u64,
        ignored,
        not_applied,
        overflowed,
        late_letters,
        unique,
    }
}

/// A view's `features` object from a user's state (section 5's table).
fn features_of(
    purchased: &BTreeSet<String>,
    viewed: &[String],
    interests: &HashMap<String, f64>,
    spend: f64,
    session_start: Option<f64>,
    last_active: Option<f64>,
) -> Value {
    let mut top: Vec<(String, f64)> = interests.iter().map(|(c, s)| (c.clone(), *s)).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(5);
    json!({
        "n_purchased_items": purchased.len(),
        "n_viewed_items": viewed.len(),
        "total_spend": spend,
        "top_categories": top.iter().map(|(c, s)| json!([c, s])).collect::<Vec<_>>(),
        "session_active": session_start.is_some(),
        "last_active_time": last_active,
    })
}

/// The rows of one user's impressions: one per shown item, with the features the
/// user had before it and the labels of `jobs/recsys.toml` from the applied events
/// after it (`applied` is in apply order and holds the impressions themselves).
fn training_rows(impressions: &[(&Value, Value)], applied: &[&Value], max_time: f64) -> Vec<Value> {
    let mut rows = Vec::new();
    for (impression, features) in impressions {
        let ts = impression["event_time"].as_f64().unwrap();
        let at = applied
            .iter()
            .position(|e| std::ptr::eq(*e, *impression))
            .expect("an impression is applied");
        let after = &applied[at + 1..];
        let items = impression["payload"]["recommended_items"].as_array().unwrap();
        for (position, item) in items.iter().enumerate() {
            let within = |e: &&&Value, kind: &str, window: f64| {
                e["event_type"] == kind && e["event_time"].as_f64().unwrap() <= ts + window
            };
            let viewed = after
                .iter()
                .any(|e| within(&e, "ecommerce.item_viewed", 1800.0) && e["payload"]["item_id"] == *item);
            let purchased = after.iter().any(|e| {
                within(&e, "ecommerce.purchase_completed", 86_400.0) && e["payload"]["item_id"] == *item
            });
            let spend: f64 = after
                .iter()
                .filter(|e| within(e, "ecommerce.purchase_completed", 86_400.0))
                .map(|e| {
                    let p = &e["payload"];
                    p.get("price").or(p.get("amount")).unwrap().as_f64().unwrap()
                })
                .sum();
            let mut row = json!({
                "row_id": impression["payload"]["impression_id"],
                "user_id": impression["user_id"],
                "ts": ts,
                "event_id": impression["event_id"],
                "model_version": impression["payload"]["model_version"],
                "position": position,
                "item_id": item,
            });
            for (name, value) in features.as_object().unwrap() {
                row[name] = value.clone();
            }
            row["label_viewed_30m"] = json!(viewed);
            row["label_purchased_24h"] = json!(purchased);
            row["label_spend_24h"] = json!(spend);
            row["labels_complete"] = json!(ts + 86_400.0 <= max_time);
            for name in features.as_object().unwrap().keys() {
                row[format!("served__{name}")] = Value::Null;
            }
            row["served_as_of"] = Value::Null;
            rows.push(row);
        }
    }
    rows
}

fn key_of(event: &Value) -> (String, String) {
    (
        event["user_id"].as_str().unwrap().to_owned(),
        event["event_id"].as_str().unwrap().to_owned(),
    )
}

fn write_log(log: &Log) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = log
        .iter()
        .enumerate()
        .map(|(i, lines)| {
            let path = dir.path().join(format!("p{i}.jsonl"));
            std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
            path
        })
        .collect();
    (dir, paths)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_batch_fold(
        partitions in 1usize..=4,
        draws in prop::collection::vec((0usize..4, draw()), 1..150),
    ) {
        let log = layout(&draws, partitions);
        let (_dir, inputs) = write_log(&log);
        let expected = reference(&log, &inputs);
        let job = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("jobs/recsys.toml");
        // 1, 2 and 4 workers, and 2 and 3 workers reading every file in byte ranges
        // of a few records each (a range starts with the file's clock at its start).
        for (workers, split) in [(1, None), (2, None), (4, None), (2, Some(400)), (3, Some(900))] {
            let outputs = common::run_job_split(&job, &inputs, workers, split);
            prop_assert_eq!(&outputs.views, &expected.views, "views with {} workers", workers);
            prop_assert_eq!(&outputs.rows, &expected.rows, "training rows with {} workers", workers);
            let s = &outputs.summary;
            prop_assert_eq!(s.read, expected.read);
            prop_assert_eq!(s.applied, expected.applied, "applied with {} workers", workers);
            prop_assert_eq!(s.ignored, expected.ignored);
            // A late copy of an on-time event is a duplicate or late depending on which
            // copy the fold meets first; either way it is not applied.
            prop_assert_eq!(s.duplicates + s.late, expected.not_applied);
            prop_assert_eq!(s.users, expected.views.len() as u64);
            // Dead letters, by reason and origin.
            let origins = |reason: &str, only_unique: bool| -> BTreeSet<(String, u64)> {
                outputs
                    .dead_letters
                    .iter()
                    .filter(|l| l["failure_reason"] == reason)
                    .filter(|l| !only_unique || expected.unique.contains(&key_of(&l["event"])))
                    .map(|l| {
                        (
                            l["original_topic"].as_str().unwrap().to_owned(),
                            l["original_offset"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            };
            prop_assert_eq!(&origins("invalid_field_type", false), &expected.overflowed);
            prop_assert_eq!(&origins("late_event", true), &expected.late_letters);
            prop_assert_eq!(
                outputs.dead_letters.len() as u64,
                s.dlq_total,
                "every dead letter is in the file"
            );
        }
    }
}
