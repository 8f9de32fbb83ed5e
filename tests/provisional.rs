//! Provisional online views (DESIGN.md section 6), at the fold: at every flush, the
//! view of each user is the batch fold of that user's on-time events received so far,
//! whatever order they arrived in, and once the watermark has passed them it is the
//! final view. The fold runs in a real timely worker, fed as the ingest operator
//! feeds it (events leave at the watermark, late ones flagged).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use proptest::prelude::*;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::capture::{Capture, Event as Captured};
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use skewless::dataflow::fold::{FlushPolicy, FoldContext, FoldFeatures};
use skewless::dataflow::ingest::ClockReport;
use skewless::dataflow::ingest::decode::{Decoded, Decoder};
use skewless::job::Job;
use skewless::model::event::{Event, LateRecord, Millis, Origin, Position, to_millis};
use skewless::model::features::{Interner, UserState, render_features, render_state};
use skewless::model::view::ViewRecord;

const LATENESS: f64 = 5.0;

fn job() -> Arc<Job> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/feature-materializer.toml");
    let job = Job::load(path.as_ref()).unwrap();
    assert_eq!(job.allowed_lateness_secs(), LATENESS);
    assert_eq!(job.sinks.online, skewless::job::OnlineViews::Provisional);
    Arc::new(job)
}

/// One generated event: user, kind (0 view, 1 purchase, 2 session start), event time,
/// id, item.
#[derive(Debug, Clone)]
struct Spec {
    user: u8,
    kind: u8,
    time: f64,
    id: u8,
    item: u8,
}

fn text(spec: &Spec) -> String {
    let (user, id, item) = (spec.user, spec.id, spec.item);
    let head = |kind: &str, version: &str| {
        format!(
            r#""event_id":"e{id}","event_type":"{kind}","event_version":"{version}","event_time":{},"user_id":"u{user}""#,
            spec.time
        )
    };
    match spec.kind {
        0 => format!(
            r#"{{{},"payload":{{"item_id":"i{item}","category":"c{}"}}}}"#,
            head("ecommerce.item_viewed", "1.0"),
            item % 3
        ),
        1 => format!(
            r#"{{{},"payload":{{"item_id":"i{item}","price":{}.25,"category":"c{}"}}}}"#,
            head("ecommerce.purchase_completed", "2.0"),
            item,
            item % 3
        ),
        _ => format!("{{{}}}", head("session.started", "1.0")),
    }
}

/// An event as the ingest operator of one partition sends it: the watermark it leaves
/// at, the event (late ones flagged), and the watermark after it.
type Arrival = (Millis, Event, Millis);

fn arrive(job: &Job, specs: &[Spec]) -> Vec<Arrival> {
    let decoder = Decoder::new(&job.registry, job.max_event_bytes);
    let mut max_seen: Option<f64> = None;
    let mut watermark: Millis = 0;
    specs
        .iter()
        .enumerate()
        .map(|(offset, spec)| {
            let line = text(spec);
            let Decoded::Event(decoded) = decoder.decode(line.as_bytes()) else {
                panic!("{line} decodes")
            };
            let mut event = Event::accepted(
                decoded,
                Position {
                    partition: 0,
                    offset: offset as i64,
                },
            );
            event.late =
                max_seen.is_some_and(|m| spec.time < m - LATENESS) || to_millis(spec.time) < watermark;
            if event.late {
                event.late_record = Some(Box::new(LateRecord {
                    text: line.clone(),
                    origin: Origin {
                        topic: "events".into(),
                        partition: Some(0),
                        offset: offset as i64,
                        key: None,
                        broker_timestamp_ms: None,
                    },
                }));
            }
            let sent_at = watermark;
            max_seen = Some(max_seen.map_or(spec.time, |m| m.max(spec.time)));
            watermark = watermark.max(to_millis((max_seen.unwrap() - LATENESS).max(0.0)));
            (sent_at, event, watermark)
        })
        .collect()
}

/// The batch fold of a user's on-time events (deduplicated, in apply order), as the
/// view's `features` and `state` texts; `None` when no event the features read.
fn batch_fold(job: &Job, events: &[&Event]) -> Option<(String, String)> {
    let mut on_time: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| !e.late && job.features.reads(e.event_type))
        .collect();
    on_time.sort_by(|a, b| a.apply_order(b));
    let mut seen = HashSet::new();
    let mut state = UserState::new(&job.features);
    let mut interner = Interner::default();
    let mut any = false;
    for event in on_time {
        if seen.insert(event.id_key) {
            state.apply(&job.features, &mut interner, event);
            any = true;
        }
    }
    any.then(|| {
        (
            render_features(&job.features, &interner, &state),
            render_state(&job.features, &interner, &state),
        )
    })
}

/// Runs the fold over `arrivals`, stepping (a flush) after each index in `flush_after`
/// and at the end. Returns, per flush, the events sent so far and the views written.
fn run_fold(job: Arc<Job>, arrivals: Vec<Arrival>, flush_after: Vec<bool>) -> Vec<(usize, Vec<ViewRecord>)> {
    timely::execute_directly(move |worker| {
        let mut events_in = InputHandle::<Millis, CapacityContainerBuilder<Vec<Event>>>::new();
        let mut clocks_in = InputHandle::<Millis, CapacityContainerBuilder<Vec<ClockReport>>>::new();
        let probe = ProbeHandle::new();
        let views: Receiver<Captured<Millis, Vec<ViewRecord>>> = worker.dataflow(|scope| {
            let events = scope.input_from(&mut events_in);
            let clocks = scope.input_from(&mut clocks_in);
            let context = FoldContext {
                job: Arc::clone(&job),
                counts: Default::default(),
                flush: FlushPolicy::Every(Duration::ZERO),
                metrics: None,
                checkpointing: Default::default(),
                restored: Vec::new(),
                restored_counts: Default::default(),
                hold_unflushed: false,
                spine_rows: None,
                replay: None,
                skew: None,
            };
            let views = events.fold_features(clocks, context).views;
            views.probe_with(&probe).capture()
        });
        let mut flushes = Vec::new();
        let mut take = |worker: &mut timely::worker::Worker, sent: usize| {
            for _ in 0..8 {
                worker.step();
            }
            let written: Vec<ViewRecord> = views
                .try_iter()
                .flat_map(|c| match c {
                    Captured::Messages(_, views) => views,
                    Captured::Progress(_) => Vec::new(),
                })
                .collect();
            flushes.push((sent, written));
        };
        let mut max_seen = f64::NEG_INFINITY;
        for (i, ((sent_at, event, after), flush)) in arrivals.into_iter().zip(flush_after).enumerate() {
            assert_eq!(sent_at, *events_in.time());
            if event.event_time > max_seen {
                max_seen = event.event_time;
                clocks_in.send(ClockReport::MaxSeen(max_seen));
            }
            events_in.send(event);
            if after > sent_at {
                events_in.advance_to(after);
                clocks_in.advance_to(after);
            }
            if flush {
                // An input handle buffers what it is sent until it advances or flushes.
                events_in.flush();
                clocks_in.flush();
                take(worker, i + 1);
            }
        }
        events_in.close();
        clocks_in.close();
        while !probe.done() {
            worker.step();
        }
        take(worker, usize::MAX);
        flushes
    })
}

/// Checks every flush: each view written equals the batch fold of its user's on-time
/// events sent so far, and each user's latest view is up to date with them.
fn check(job: &Job, arrivals: &[Arrival], flushes: &[(usize, Vec<ViewRecord>)]) {
    let mut latest: BTreeMap<String, ViewRecord> = BTreeMap::new();
    for (sent, views) in flushes {
        let sent = (*sent).min(arrivals.len());
        let by_user = |user: &str| -> Vec<&Event> {
            arrivals[..sent]
                .iter()
                .map(|(_, e, _)| e)
                .filter(|e| e.user_id == user)
                .collect()
        };
        for view in views {
            let expected = batch_fold(job, &by_user(&view.user_id));
            let got = (view.features.clone(), view.state.clone());
            assert_eq!(
                Some(got),
                expected,
                "the view of {} after {sent} events (provisional_through {:?})",
                view.user_id,
                view.provisional_through
            );
            latest.insert(view.user_id.to_string(), view.clone());
        }
        let users: HashSet<&str> = arrivals[..sent]
            .iter()
            .map(|(_, e, _)| e.user_id.as_str())
            .collect();
        for user in users {
            let expected = batch_fold(job, &by_user(user));
            let got = latest.get(user).map(|v| (v.features.clone(), v.state.clone()));
            assert_eq!(got, expected, "the latest view of {user} after {sent} events");
        }
    }
    // At the end every view is final.
    for view in latest.values() {
        assert_eq!(view.provisional_through, None, "{view:?}");
    }
}

fn spec(user: u8, kind: u8, time: f64, id: u8, item: u8) -> Spec {
    Spec {
        user,
        kind,
        time,
        id,
        item,
    }
}

#[test]
fn out_of_order_events_inside_the_bound_give_the_final_view_provisionally() {
    let job = job();
    // A purchase at 100.5 arrives first, then a view at 98 (inside the 5 s bound), then
    // another user's event far ahead, which moves the watermark past both.
    let specs = [
        spec(1, 1, 100.5, 1, 7),
        spec(1, 0, 98.0, 2, 8),
        spec(2, 2, 200.0, 3, 0),
    ];
    let arrivals = arrive(&job, &specs);
    assert!(arrivals.iter().all(|(_, e, _)| !e.late));
    let flushes = run_fold(Arc::clone(&job), arrivals.clone(), vec![true, true, true]);
    check(&job, &arrivals, &flushes);

    let of = |flush: usize| -> &ViewRecord {
        let views: Vec<&ViewRecord> = flushes[flush].1.iter().filter(|v| v.user_id == "u1").collect();
        assert_eq!(
            views.len(),
            1,
            "one view of u1 at flush {flush}: {:?}",
            flushes[flush].1
        );
        views[0]
    };
    // One flush after each event, u1's view has it, ahead of the watermark (0).
    let first = of(0);
    assert_eq!(first.provisional_through, Some(100.5));
    assert_eq!(first.as_of, 0.0);
    assert!(
        first.state.contains(r#""purchased_items":["i7"]"#),
        "{}",
        first.state
    );
    let both = of(1);
    assert_eq!(
        both.provisional_through,
        Some(100.5),
        "the late-arriving view is older"
    );
    assert!(both.state.contains(r#""viewed_items":["i8"]"#), "{}", both.state);
    // The watermark passes both: the final view, equal to the provisional one.
    let last = of(2);
    assert_eq!(last.provisional_through, None);
    assert_eq!(last.as_of, 195.0);
    assert_eq!((&last.features, &last.state), (&both.features, &both.state));
    assert_eq!(
        Some((last.features.clone(), last.state.clone())),
        batch_fold(
            &job,
            &arrivals
                .iter()
                .map(|(_, e, _)| e)
                .filter(|e| e.user_id == "u1")
                .collect::<Vec<_>>()
        )
    );
}

#[test]
fn late_events_and_copies_never_reach_a_provisional_view() {
    let job = job();
    let specs = [
        spec(1, 1, 100.0, 1, 1),
        spec(1, 1, 100.0, 1, 1), // a copy: not counted twice
        spec(1, 0, 120.0, 2, 2),
        spec(1, 0, 110.0, 3, 3), // late: 10 s behind the clock
        spec(1, 0, 119.0, 2, 4), // a copy of e2 earlier in apply order: it wins
    ];
    let arrivals = arrive(&job, &specs);
    assert!(arrivals[3].1.late);
    let flushes = run_fold(Arc::clone(&job), arrivals.clone(), vec![true; specs.len()]);
    check(&job, &arrivals, &flushes);
    let last = flushes[4].1.iter().find(|v| v.user_id == "u1").unwrap();
    assert!(!last.state.contains("\"i3\""), "late: {}", last.state);
    assert!(last.state.contains(r#""viewed_items":["i4"]"#), "{}", last.state);
    assert_eq!(last.provisional_through, Some(119.0));
}

fn specs() -> impl Strategy<Value = (Vec<Spec>, Vec<bool>)> {
    prop::collection::vec(
        (0u8..3, 0u8..3, 0u32..80, 0u8..12, 0u8..6).prop_map(|(user, kind, t, id, item)| Spec {
            user,
            kind,
            time: 1000.0 + f64::from(t) / 4.0,
            id,
            item,
        }),
        1..40,
    )
    .prop_flat_map(|specs| {
        let n = specs.len();
        (Just(specs), prop::collection::vec(any::<bool>(), n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// For random arrival orders (some late, some copies) and random flush points, at
    /// every flush each user's view is the batch fold of its on-time events so far.
    #[test]
    fn every_flush_shows_the_batch_fold_of_what_was_received((specs, flush_after) in specs()) {
        let job = job();
        let arrivals = arrive(&job, &specs);
        let flushes = run_fold(Arc::clone(&job), arrivals.clone(), flush_after);
        check(&job, &arrivals, &flushes);
    }
}
