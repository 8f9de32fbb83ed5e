//! The serving-skew counters as a differential collection: each training row that
//! opens a spine event with served features becomes one update per feature, keyed
//! by (feature, model version, hour, staleness) with its counters as the difference;
//! `consolidate` reduces them per key as rows arrive and emits the changes at the
//! frontier, which worker 0 gathers into the run's totals (and, when the run serves
//! metrics, the mismatch-rate gauges). The rows pass through on their way to the
//! export's writers, so they are read in place rather than copied for a second reader.

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
use crate::skew::{Example, SkewKey, SkewStats, SkewTotals, observe};

/// Up to this many example mismatches are kept per feature, for the HTML report.
pub const EXAMPLES_PER_FEATURE: usize = 5;

/// What the skew operators gather, shared by a process's workers.
#[derive(Debug, Default)]
pub struct SkewShared {
    /// The counters by key (on worker 0's process).
    pub totals: SkewTotals,
    /// Example mismatches.
    pub examples: Vec<Example>,
}

/// Counts the serving skew of `rows` into `shared`, and passes the rows on
/// unchanged: they are observed where they pass, never copied for it.
pub fn count_skew<'s>(
    rows: Stream<'s, Millis, Vec<SpineRows>>,
    spec: Arc<ExportSpec>,
    features: Arc<[String]>,
    shared: Arc<Mutex<SkewShared>>,
    metrics: Option<Arc<Metrics>>,
) -> Stream<'s, Millis, Vec<SpineRows>> {
    let examples = Arc::clone(&shared);
    let names = Arc::clone(&features);
    let mut builder = OperatorBuilder::new("SkewObserve".to_owned(), rows.scope());
    let mut input = builder.new_input(rows, Pipeline);
    let (rows_out, passed) = builder.new_output::<Vec<SpineRows>>();
    let mut rows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<SpineRows>>>::from(rows_out);
    let (updates_out, updates) = builder.new_output::<Vec<(SkewKey, Millis, SkewStats)>>();
    let mut updates_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<(SkewKey, Millis, SkewStats)>>>::from(updates_out);
    builder.build(move |_| {
        // Features whose examples are all kept: their mismatches take no lock.
        let mut kept = vec![false; names.len()];
        // In key order, so the totals add up in the same order on every run.
        let mut sums: std::collections::BTreeMap<SkewKey, SkewStats> = Default::default();
        move |_frontiers| {
            let mut rows_handle = rows_out.activate();
            let mut updates_handle = updates_out.activate();
            input.for_each(|time, rows| {
                let at = *time.least().expect("totally ordered time");
                // Summed here first: a batch's rows share few keys (one hour, a few
                // model versions and staleness buckets), so the collection gets a
                // handful of updates per batch, not one per row and feature.
                for row in rows.iter_mut() {
                    for (key, stats) in observe(&spec, &names, row) {
                        let feature = key.feature as usize;
                        if stats.mismatches > 0 && !kept[feature] {
                            kept[feature] = keep_example(&examples, feature, &names, row);
                        }
                        sums.entry(key).or_default().plus_equals(&stats);
                    }
                }
                let mut session = updates_handle.session(&time);
                for (key, stats) in std::mem::take(&mut sums) {
                    session.give((key, at, stats));
                }
                rows_handle.session(&time).give_container(rows);
            });
        }
    });
    updates.as_collection().consolidate().inner.sink(
        Exchange::new(|_| 0),
        "SkewTotals",
        move |(input, _frontier)| {
            let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
            let mut changed = false;
            input.for_each(|_, updates| {
                for (key, _, stats) in updates.drain(..) {
                    shared.totals.entry(key).or_default().plus_equals(&stats);
                    changed = true;
                }
            });
            if let (true, Some(metrics)) = (changed, &metrics) {
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

/// Keeps `row` as an example mismatch of `feature` unless the feature has its
/// examples; true once it has them.
fn keep_example(shared: &Mutex<SkewShared>, feature: usize, names: &[String], row: &SpineRows) -> bool {
    let name = &names[feature];
    let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
    let kept = shared.examples.iter().filter(|e| &e.feature == name).count();
    if kept >= EXAMPLES_PER_FEATURE {
        return true;
    }
    let parsed = row.parsed.as_deref().expect("observed rows are parsed");
    shared.examples.push(Example {
        feature: name.clone(),
        row_id: row.spine.row_id.to_string(),
        user_id: row.spine.user_id.to_string(),
        ts: row.spine.ts,
        served: parsed.served[feature]
            .as_ref()
            .map_or(serde_json::Value::Null, Served::to_json),
        computed: row.spine.features[feature].to_json(),
    });
    kept + 1 >= EXAMPLES_PER_FEATURE
}
