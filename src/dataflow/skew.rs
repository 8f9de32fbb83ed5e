//! The serving-skew counters as a differential collection: each spine event with
//! served features, observed by the fold as it closes the event's rows, adds counters
//! per feature keyed by (feature, model version, hour, staleness); `consolidate`
//! reduces them per key as rows arrive and emits the changes at the frontier, which
//! worker 0 gathers into the run's totals (and, when the run serves metrics, the
//! mismatch-rate gauges). Each worker also keeps each feature's first mismatches in
//! event time and sends them to worker 0, which merges them into the examples of the
//! HTML report. Each worker's counters and examples so far are part of its
//! checkpoint, so a resumed run counts every spine event once and shows the examples
//! an uninterrupted run does. The rows pass through on their way to the export's
//! writers, which reuse the served values parsed for the comparison.

use std::sync::{Arc, Mutex};

use differential_dataflow::AsCollection;
use differential_dataflow::difference::Semigroup;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Operator;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::metrics::Metrics;
use crate::model::event::Millis;
use crate::model::served::Served;
use crate::model::training::{ExportSpec, SpineRows};
use crate::skew::{Example, Examples, SkewKey, SkewStats, SkewTotals, observe};

/// What the skew counting gathers on worker 0 (and a restored checkpoint's counters
/// and examples seed), shared by a process's workers.
#[derive(Debug, Default)]
pub struct SkewShared {
    /// The counters by key (on worker 0's process).
    pub totals: SkewTotals,
    /// Each feature's first mismatches (on worker 0's process).
    pub examples: Examples,
}

/// A worker's skew counting, shared by its fold and its `SkewCounters` operator. The
/// fold observes each spine event as it closes its rows, so the counters and examples
/// of every row closed before a checkpoint's cut are in that worker's part
/// ([`SkewCounter::part`]) and a resumed run reports every spine event once; the
/// operator emits what was observed as updates of the collection, and the examples
/// kept to worker 0.
pub struct SkewCounter {
    spec: Arc<ExportSpec>,
    names: Arc<[String]>,
    shared: Arc<Mutex<SkewShared>>,
    /// This worker's first mismatches of each feature (and, on worker 0, those a
    /// checkpoint carried over).
    examples: Examples,
    /// Per feature, [`Examples::bound`]: a mismatch after it is not kept.
    bounds: Vec<f64>,
    /// Examples kept and not yet emitted.
    unsent_examples: Vec<Example>,
    /// Observed and not yet emitted, summed per key: a batch's rows share few keys
    /// (one hour, a few model versions and staleness buckets), so the collection gets
    /// a handful of updates per batch, not one per row and feature.
    unsent: std::collections::BTreeMap<SkewKey, SkewStats>,
    /// What was emitted (and, on worker 0, what a checkpoint carried over).
    running: SkewTotals,
}

impl SkewCounter {
    /// A counter of `spec`'s skew over the job's `names` features, whose totals and
    /// examples worker 0 gathers into `shared`.
    pub fn new(spec: Arc<ExportSpec>, names: Arc<[String]>, shared: Arc<Mutex<SkewShared>>) -> SkewCounter {
        SkewCounter {
            examples: Examples::default(),
            bounds: vec![f64::INFINITY; names.len()],
            unsent_examples: Vec::new(),
            spec,
            names,
            shared,
            unsent: Default::default(),
            running: Default::default(),
        }
    }

    /// Counts the spine events of `rows` (parsing their served features, which the
    /// writers then reuse).
    pub fn observe(&mut self, rows: &mut [SpineRows]) {
        for row in rows.iter_mut() {
            for (key, stats) in observe(&self.spec, &self.names, row) {
                let feature = key.feature as usize;
                if stats.mismatches > 0 && row.spine.ts <= self.bounds[feature] {
                    let example = example(&self.names[feature], feature, row);
                    self.keep(feature, example);
                }
                self.unsent.entry(key).or_default().plus_equals(&stats);
            }
        }
    }

    /// Takes over counters and examples from a checkpoint: into this worker's part,
    /// and into the run's totals and examples (they are not emitted again).
    pub fn restore(&mut self, totals: Vec<(SkewKey, SkewStats)>, examples: &Examples) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for (key, stats) in totals {
            shared.totals.entry(key.clone()).or_default().plus_equals(&stats);
            self.running.entry(key).or_default().plus_equals(&stats);
        }
        for example in examples.all() {
            shared.examples.keep(example.clone());
            self.examples.keep(example.clone());
        }
        for (bound, name) in self.bounds.iter_mut().zip(self.names.iter()) {
            *bound = self.examples.bound(name);
        }
    }

    /// Keeps `example`, a mismatch of feature number `feature`, among this worker's
    /// examples (and those to emit) if it is among the feature's first.
    fn keep(&mut self, feature: usize, example: Example) {
        if self.examples.keep(example.clone()) {
            self.bounds[feature] = self.examples.bound(&example.feature);
            self.unsent_examples.push(example);
        }
    }

    /// Everything this worker observed and the examples it kept, for its part of a
    /// checkpoint.
    pub fn part(&self) -> (Vec<(SkewKey, SkewStats)>, Examples) {
        let mut totals = self.running.clone();
        for (key, stats) in &self.unsent {
            totals.entry(key.clone()).or_default().plus_equals(stats);
        }
        (totals.into_iter().collect(), self.examples.clone())
    }

    /// What was observed since the last call (counters, examples kept), now counted
    /// as part of this worker's running totals.
    fn take(&mut self) -> (std::collections::BTreeMap<SkewKey, SkewStats>, Vec<Example>) {
        for (key, stats) in &self.unsent {
            self.running.entry(key.clone()).or_default().plus_equals(stats);
        }
        (
            std::mem::take(&mut self.unsent),
            std::mem::take(&mut self.unsent_examples),
        )
    }
}

/// Emits what `counter` observed of `rows` as updates of the counters' collection,
/// gathers them into the totals the counter shares on worker 0, sends the examples
/// it kept to worker 0, which merges them into the shared examples, and passes the
/// rows on unchanged.
///
/// # Contract
/// The fold observes rows with [`SkewCounter::observe`] just before it sends them on
/// `rows`, never otherwise: what was observed is emitted when they arrive here (at
/// their time, or an earlier one's), so nothing stays unsent once the rows are in.
pub fn count_skew<'s>(
    rows: Stream<'s, Millis, Vec<SpineRows>>,
    counter: std::rc::Rc<std::cell::RefCell<SkewCounter>>,
    metrics: Option<Arc<Metrics>>,
) -> Stream<'s, Millis, Vec<SpineRows>> {
    let (features, shared) = {
        let counter = counter.borrow();
        (Arc::clone(&counter.names), Arc::clone(&counter.shared))
    };
    let mut builder = OperatorBuilder::new("SkewCounters".to_owned(), rows.scope());
    let mut input = builder.new_input(rows, Pipeline);
    let (rows_out, passed) = builder.new_output::<Vec<SpineRows>>();
    let mut rows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SpineRows>>>::from(rows_out);
    let (updates_out, updates) = builder.new_output::<Vec<(SkewKey, Millis, SkewStats)>>();
    let mut updates_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(SkewKey, Millis, SkewStats)>>>::from(updates_out);
    let (examples_out, examples) = builder.new_output::<Vec<Example>>();
    let mut examples_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Example>>>::from(examples_out);
    builder.build(move |_| {
        move |_frontiers| {
            let mut rows_handle = rows_out.activate();
            let mut updates_handle = updates_out.activate();
            let mut examples_handle = examples_out.activate();
            input.for_each(|time, rows| {
                let at = *time.least().expect("totally ordered time");
                // The fold observed these rows (and perhaps later ones, whose time is
                // no earlier) before sending them.
                let (counters, mut kept) = counter.borrow_mut().take();
                let mut session = updates_handle.session(&time);
                for (key, stats) in counters {
                    session.give((key, at, stats));
                }
                if !kept.is_empty() {
                    examples_handle.session(&time).give_container(&mut kept);
                }
                rows_handle.session(&time).give_container(rows);
            });
        }
    });
    let examples_shared = Arc::clone(&shared);
    examples.sink(Exchange::new(|_| 0), "SkewExamples", move |(input, _frontier)| {
        input.for_each(|_, examples| {
            let mut shared = examples_shared.lock().unwrap_or_else(|p| p.into_inner());
            for example in examples.drain(..) {
                shared.examples.keep(example);
            }
        });
    });
    let mut published = false;
    updates.as_collection().consolidate().inner.sink(
        Exchange::new(|_| 0),
        "SkewTotals",
        // Counters a checkpoint carried over are in the totals before any update:
        // the gauges show them from the first activation.
        move |(input, _frontier)| {
            let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
            let mut changed = false;
            input.for_each(|_, updates| {
                for (key, _, stats) in updates.drain(..) {
                    shared.totals.entry(key).or_default().plus_equals(&stats);
                    changed = true;
                }
            });
            if let (true, Some(metrics)) = (changed || (!published && !shared.totals.is_empty()), &metrics) {
                published = true;
                let mut per_feature = vec![SkewStats::default(); features.len()];
                for (key, stats) in &shared.totals {
                    per_feature[key.feature as usize].plus_equals(stats);
                }
                for (name, stats) in features.iter().zip(&per_feature) {
                    metrics.skew_mismatch_rate(name, stats.mismatch_rate());
                }
            }
        },
    );
    passed
}

/// `row`'s mismatch of `feature` (whose name is `name`), as the report shows it.
fn example(name: &str, feature: usize, row: &SpineRows) -> Example {
    let parsed = row.parsed.as_deref().expect("observed rows are parsed");
    Example {
        feature: name.to_owned(),
        row_id: row.spine.row_id.to_string(),
        user_id: row.spine.user_id.to_string(),
        ts: row.spine.ts,
        served: parsed.served[feature]
            .as_ref()
            .map_or(serde_json::Value::Null, Served::to_json)
            .to_string(),
        computed: row.spine.features[feature].to_json().to_string(),
    }
}
