//! The fold's part of the training export (DESIGN.md section 10): at each applied
//! spine event, the user's features as the view renders them; each applied outcome
//! of a user with open rows goes to that user's outcome logs; rows leave once the
//! frontier has passed `ts + max W` (or at the end of a bounded input), their labels
//! read off the logs from where each row began.
//!
//! Memory is the open rows and the outcomes since the oldest of them: at most the
//! longest window's worth of a user's spine events and outcomes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use compact_str::CompactString;
use hashbrown::HashMap;

use crate::model::event::{Event, Millis, Value, to_millis};
use crate::model::features::{FeatureValue, Interner, UserState, feature_values};
use crate::model::schema::FieldRef;
use crate::model::training::{
    ExportSpec, ItemLogs, LabelValue, OpenRow, OutcomeLog, SpineRows, UserOutcomes,
};

/// One user's open rows, oldest first, and the outcomes they may count.
#[derive(Default)]
pub(super) struct UserRows {
    pub(super) rows: VecDeque<OpenRow>,
    pub(super) outcomes: UserOutcomes,
    /// Rows closed since the logs were last trimmed.
    closed_since_trim: usize,
}

/// A user's logs are trimmed once its rows closed since the last time, times this,
/// reach its number of item logs: trimming visits every log of the user (a busy
/// user has thousands of items), so its cost per closed row stays bounded.
const TRIM_RATIO: usize = 8;

/// The open rows of one worker's users.
pub(super) struct Spine {
    /// Open rows by user.
    pub(super) open: HashMap<CompactString, UserRows>,
    /// When each spine event's rows may leave: `(deadline, user)`.
    deadlines: BinaryHeap<Reverse<(Millis, CompactString)>>,
    /// The state of a user with no history.
    empty: UserState,
    /// How many rows are open.
    pub(super) rows: usize,
    /// The users whose rows the end of the input is closing, once it began.
    closing: Option<Vec<CompactString>>,
}

fn value(event: &Event, field: FieldRef) -> &Value {
    match field {
        FieldRef::Slot(slot) => &event.values[slot],
        FieldRef::EventTime => &Value::Null,
    }
}

impl Spine {
    pub(super) fn new(empty: UserState) -> Spine {
        Spine {
            open: HashMap::new(),
            deadlines: BinaryHeap::new(),
            empty,
            rows: 0,
            closing: None,
        }
    }

    /// When `row`'s labels are final.
    fn deadline(spec: &ExportSpec, ts: f64) -> Millis {
        to_millis(ts + spec.max_window)
    }

    /// Logs an applied event as an outcome for the user's open rows (they precede
    /// it: they were opened by events applied before it). A user with no open row
    /// logs nothing: every later row begins after it.
    pub(super) fn outcome(&mut self, spec: &ExportSpec, event: &Event) {
        if !spec.outcome_types[event.event_type as usize] {
            return;
        }
        let Some(user) = self.open.get_mut(&event.user_id) else {
            return;
        };
        let UserOutcomes { next, all, by_item } = &mut user.outcomes;
        let seq = *next;
        *next += 1;
        // The item logs last looked up, and by which field: labels matching on the
        // same field share one lookup.
        let mut shown: Option<(FieldRef, Option<&mut ItemLogs>)> = None;
        for (l, label) in spec.labels.iter().enumerate() {
            let Some(fields) = &label.per_type[event.event_type as usize] else {
                continue;
            };
            let amount = match fields.sum.map(|f| value(event, f)) {
                Some(Value::Num(n)) => *n,
                _ => 0.0,
            };
            let log = match fields.matches {
                None => &mut all[l],
                Some(field) => {
                    if shown.as_ref().is_none_or(|(f, _)| *f != field) {
                        // Only the items open rows show: no other row can read it.
                        let logs = match value(event, field) {
                            Value::Str(item) => by_item.get_mut(item),
                            _ => None,
                        };
                        shown = Some((field, logs));
                    }
                    match shown.as_mut().and_then(|(_, logs)| logs.as_deref_mut()) {
                        Some(logs) => {
                            if logs.logs.is_empty() {
                                logs.logs = vec![OutcomeLog::default(); spec.labels.len()];
                            }
                            &mut logs.logs[l]
                        }
                        None => continue,
                    }
                }
            };
            log.push(seq, event.event_time, amount);
        }
    }

    /// The features a user with `state` (none: no history) has: the values a view
    /// renders.
    pub(super) fn render(
        &self,
        features: &crate::model::features::FeatureSpec,
        interner: &Interner,
        state: Option<&UserState>,
    ) -> Arc<[FeatureValue]> {
        feature_values(features, interner, state.unwrap_or(&self.empty)).into()
    }

    /// Opens the rows of an applied spine event, with the features `state` renders.
    pub(super) fn open(
        &mut self,
        spec: &ExportSpec,
        features: &crate::model::features::FeatureSpec,
        interner: &Interner,
        state: Option<&UserState>,
        event: &Event,
    ) {
        let rendered = self.render(features, interner, state);
        let row_id = match value(event, spec.row_id) {
            Value::Str(s) => s.clone(),
            _ => CompactString::default(),
        };
        let items = spec.explode.map(|f| match value(event, f) {
            Value::List(items) => items.clone(),
            _ => Vec::new(),
        });
        let snapshot = spec.snapshot.and_then(|f| match value(event, f) {
            Value::Json(text) => Some(Arc::from(text.as_str())),
            _ => None,
        });
        let carried: Arc<[Value]> = spec.carry.iter().map(|c| value(event, c.field).clone()).collect();
        self.push(
            spec,
            OpenRow {
                row_id,
                user_id: event.user_id.clone(),
                ts: event.event_time,
                event_id: event.event_id.clone(),
                carried,
                items,
                features: rendered,
                snapshot,
                start: 0,
            },
        );
    }

    /// Opens a row of a spine file, with the features `state` renders. Its columns
    /// that come from a spine event are empty: `event_id` "", carried fields null; with
    /// `explode`, one row at position 0 for its `item_id` ("" when it has none).
    pub(super) fn open_file_row(
        &mut self,
        spec: &ExportSpec,
        features: &crate::model::features::FeatureSpec,
        interner: &Interner,
        state: Option<&UserState>,
        row: &crate::source::spine::SpineRow,
    ) {
        let features = self.render(features, interner, state);
        let items = match (&row.item_id, spec.explode) {
            (Some(item), _) => Some(vec![item.clone()]),
            (None, Some(_)) => Some(vec![CompactString::default()]),
            (None, None) => None,
        };
        self.push(
            spec,
            OpenRow {
                row_id: row.row_id.clone(),
                user_id: row.user_id.clone(),
                ts: row.ts,
                event_id: CompactString::default(),
                carried: spec.carry.iter().map(|_| Value::Null).collect(),
                items,
                features,
                snapshot: None,
                start: 0,
            },
        );
    }

    /// Opens `row`: its outcomes are those logged from now on.
    fn push(&mut self, spec: &ExportSpec, mut row: OpenRow) {
        let n = row.items.as_ref().map_or(1, Vec::len);
        let user = self.open.entry(row.user_id.clone()).or_default();
        if user.outcomes.all.is_empty() {
            user.outcomes.all = vec![OutcomeLog::default(); spec.labels.len()];
        }
        row.start = user.outcomes.next;
        Self::show(spec, &mut user.outcomes, &row);
        self.rows += n;
        self.deadlines
            .push(Reverse((Self::deadline(spec, row.ts), row.user_id.clone())));
        user.rows.push_back(row);
    }

    /// Counts `row`'s items as shown by one more row (labels with `match` log the
    /// outcomes of shown items only).
    fn show(spec: &ExportSpec, outcomes: &mut UserOutcomes, row: &OpenRow) {
        let (Some(items), true) = (&row.items, spec.labels.iter().any(|l| l.per_item)) else {
            return;
        };
        for item in items {
            // No logs until the item's first outcome: most shown items get none.
            let logs = outcomes.by_item.entry(item.clone()).or_insert_with(|| ItemLogs {
                logs: Vec::new(),
                shown: 0,
            });
            logs.shown += 1;
        }
    }

    /// A closing row's labels, row by row, label by label, read off the logs; each of
    /// its items is then shown by one row fewer, and an item no open row shows loses
    /// its logs. One lookup per item.
    fn close_row(spec: &ExportSpec, outcomes: &mut UserOutcomes, row: &OpenRow) -> Vec<LabelValue> {
        let per_item = spec.labels.iter().any(|l| l.per_item);
        let n = row.items.as_ref().map_or(1, Vec::len);
        let mut labels = Vec::with_capacity(n * spec.labels.len());
        let UserOutcomes { all, by_item, .. } = outcomes;
        // Labels without `match` are the same for every row of the event: read once
        // (a sum over a busy user's day of purchases is a long walk).
        let shared: smallvec::SmallVec<[Option<LabelValue>; 8]> = spec
            .labels
            .iter()
            .enumerate()
            .map(|(l, label)| {
                (!label.per_item).then(|| match all.get(l) {
                    Some(log) => log.label(label.func, row.start, row.ts, row.ts + label.window),
                    None => LabelValue::empty(label.func),
                })
            })
            .collect();
        for r in 0..n {
            let entry = match (&row.items, per_item) {
                (Some(items), true) => match by_item.entry_ref(&items[r]) {
                    hashbrown::hash_map::EntryRef::Occupied(entry) => Some(entry),
                    hashbrown::hash_map::EntryRef::Vacant(_) => None,
                },
                _ => None,
            };
            for (l, label) in spec.labels.iter().enumerate() {
                let log = entry.as_ref().and_then(|e| e.get().logs.get(l));
                labels.push(match (shared[l], log) {
                    (Some(value), _) => value,
                    (None, Some(log)) => log.label(label.func, row.start, row.ts, row.ts + label.window),
                    (None, None) => LabelValue::empty(label.func),
                });
            }
            if let Some(mut entry) = entry {
                entry.get_mut().shown -= 1;
                if entry.get().shown == 0 {
                    entry.remove();
                }
            }
        }
        labels
    }

    /// Drops what no open row of `user` reads any more (outcomes before its oldest
    /// open row's, and the items left with none).
    fn trim(user: &mut UserRows) {
        let Some(oldest) = user.rows.iter().map(|r| r.start).min() else {
            return;
        };
        for log in user.outcomes.all.iter_mut() {
            log.drop_before(oldest);
        }
        for logs in user.outcomes.by_item.values_mut() {
            for log in logs.logs.iter_mut() {
                log.drop_before(oldest);
            }
        }
    }

    /// Moves the rows whose deadline is before `frontier` to `out`, complete.
    pub(super) fn close_before(&mut self, spec: &ExportSpec, frontier: Millis, out: &mut Vec<SpineRows>) {
        while let Some(Reverse((deadline, _))) = self.deadlines.peek()
            && *deadline < frontier
        {
            let Some(Reverse((_, user))) = self.deadlines.pop() else {
                break;
            };
            let Some(entry) = self.open.get_mut(&user) else {
                continue;
            };
            let closed = entry
                .rows
                .iter()
                .take_while(|r| Self::deadline(spec, r.ts) < frontier)
                .count();
            for row in entry.rows.drain(..closed) {
                self.rows -= row.items.as_ref().map_or(1, Vec::len);
                let labels = Self::close_row(spec, &mut entry.outcomes, &row);
                out.push(SpineRows::new(row, labels, true));
            }
            if entry.rows.is_empty() {
                self.open.remove(&user);
            } else {
                entry.closed_since_trim += closed;
                if entry.closed_since_trim * TRIM_RATIO >= entry.outcomes.by_item.len() + TRIM_RATIO {
                    entry.closed_since_trim = 0;
                    Self::trim(entry);
                }
            }
        }
    }

    /// The open rows, at the end of a bounded input whose largest event time is
    /// `max_clock`: complete when `ts + max W` is not past it. At most `limit` spine
    /// events per call (and a user's rows together), so that the rows in flight to
    /// the writers stay bounded; true once every row is closed.
    pub(super) fn close_all(
        &mut self,
        spec: &ExportSpec,
        max_clock: Option<f64>,
        limit: usize,
        out: &mut Vec<SpineRows>,
    ) -> bool {
        if self.closing.is_none() {
            self.deadlines.clear();
            self.closing = Some(self.open.keys().cloned().collect());
        }
        let closing = self.closing.as_mut().expect("set above");
        let mut closed = 0;
        while closed < limit
            && let Some(user) = closing.pop()
        {
            let Some(UserRows {
                rows, mut outcomes, ..
            }) = self.open.remove(&user)
            else {
                continue;
            };
            for row in rows {
                closed += 1;
                self.rows -= row.items.as_ref().map_or(1, Vec::len);
                let complete = max_clock.is_some_and(|m| row.ts + spec.max_window <= m);
                if complete || !spec.complete_only {
                    let labels = Self::close_row(spec, &mut outcomes, &row);
                    out.push(SpineRows::new(row, labels, complete));
                }
            }
        }
        closing.is_empty()
    }

    /// Takes over rows from a checkpoint.
    pub(super) fn restore(
        &mut self,
        spec: &ExportSpec,
        rows: Vec<OpenRow>,
        outcomes: Vec<(CompactString, UserOutcomes)>,
    ) {
        for (user, logs) in outcomes {
            self.open.entry(user).or_default().outcomes = logs;
        }
        for row in rows {
            self.rows += row.items.as_ref().map_or(1, Vec::len);
            self.deadlines
                .push(Reverse((Self::deadline(spec, row.ts), row.user_id.clone())));
            let user = self.open.entry(row.user_id.clone()).or_default();
            Self::show(spec, &mut user.outcomes, &row);
            user.rows.push_back(row);
        }
        for user in self.open.values_mut() {
            user.outcomes.by_item.retain(|_, logs| logs.shown > 0);
            user.rows
                .make_contiguous()
                .sort_by(|a, b| a.ts.total_cmp(&b.ts).then_with(|| a.event_id.cmp(&b.event_id)));
        }
    }

    /// The open rows, for a checkpoint.
    pub(super) fn all(&self) -> impl Iterator<Item = &OpenRow> {
        self.open.values().flat_map(|u| u.rows.iter())
    }

    /// `(users with open rows, open rows, logged outcomes, items with logs)`, for the
    /// footprint the fold logs.
    pub(super) fn footprint(&self) -> (usize, usize, usize, usize) {
        let mut logged = 0;
        let mut items = 0;
        for user in self.open.values() {
            logged += user.outcomes.all.iter().map(OutcomeLog::len).sum::<usize>();
            items += user.outcomes.by_item.len();
            logged += user
                .outcomes
                .by_item
                .values()
                .flat_map(|logs| logs.logs.iter().map(OutcomeLog::len))
                .sum::<usize>();
        }
        (self.open.len(), self.rows, logged, items)
    }

    /// The outcome logs, for a checkpoint.
    pub(super) fn outcomes(&self) -> impl Iterator<Item = (&CompactString, &UserOutcomes)> {
        self.open.iter().map(|(user, u)| (user, &u.outcomes))
    }
}
