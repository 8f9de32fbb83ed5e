//! Per-user state: one compact accumulator per declared aggregation, and the fold
//! that applies one event to it.

use serde::{Deserialize, Serialize};

use super::last_ids::LastIds;
use super::{FeatureSpec, Interner, StateKind};
use crate::model::event::{Event, Value};
use crate::model::schema::FieldRef;

/// A latest value: strings are interned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// Nothing yet.
    Null,
    /// A number.
    Num(f64),
    /// A bool.
    Bool(bool),
    /// An interned string.
    Str(u32),
}

/// One group's decayed score, 12 bytes: a `(u32, f64)` pads to 16, and these scores
/// are the part of a user's state that grows most as the user's history grows (a
/// user's categories in the recsys job). Serialized as the pair it was.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[repr(C, packed(4))]
pub struct GroupScore {
    /// The interned group.
    pub group: u32,
    /// Its score.
    pub score: f64,
}

/// One aggregation's accumulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Agg {
    /// Distinct interned strings, sorted by id.
    Distinct(Vec<u32>),
    /// The last k interned strings, oldest first.
    LastK(LastIds),
    /// A sum.
    Sum(f64),
    /// A count.
    Count(u64),
    /// The latest value.
    Latest(Scalar),
    /// Score per interned group, in first-seen order.
    Decayed(Vec<GroupScore>),
}

/// A user's folded state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// One accumulator per state, in the spec's order.
    pub aggs: Box<[Agg]>,
}

impl UserState {
    /// Rewrites interned ids (state restored from another worker's string table).
    pub fn remap(&mut self, id: impl Fn(u32) -> u32) {
        for agg in self.aggs.iter_mut() {
            match agg {
                Agg::Distinct(set) => {
                    for v in set.iter_mut() {
                        *v = id(*v);
                    }
                    set.sort_unstable();
                }
                Agg::LastK(list) => list.remap(&id),
                Agg::Latest(Scalar::Str(v)) => *v = id(*v),
                Agg::Decayed(scores) => {
                    for entry in scores.iter_mut() {
                        entry.group = id(entry.group);
                    }
                }
                _ => {}
            }
        }
    }

    /// Bytes this state holds on the heap (for memory reporting).
    pub fn heap_bytes(&self) -> usize {
        let aggs = self.aggs.len() * std::mem::size_of::<Agg>();
        aggs + self
            .aggs
            .iter()
            .map(|agg| match agg {
                Agg::Distinct(set) => set.capacity() * 4,
                Agg::LastK(list) => list.heap_bytes(),
                Agg::Decayed(scores) => scores.capacity() * std::mem::size_of::<GroupScore>(),
                _ => 0,
            })
            .sum::<usize>()
    }

    /// The empty state for `spec`.
    pub fn new(spec: &FeatureSpec) -> UserState {
        let aggs = spec
            .states
            .iter()
            .map(|s| match s.kind {
                StateKind::Distinct => Agg::Distinct(Vec::new()),
                StateKind::LastK(_) => Agg::LastK(LastIds::default()),
                StateKind::Sum => Agg::Sum(0.0),
                StateKind::Count => Agg::Count(0),
                StateKind::Latest => Agg::Latest(Scalar::Null),
                StateKind::Decayed => Agg::Decayed(Vec::new()),
            })
            .collect();
        UserState { aggs }
    }

    /// Why applying `event` would make a sum overflow to infinity, if it
    /// would (only events with huge numbers can; see [`crate::model::event::HUGE_NUMBER`]).
    pub fn overflow(&self, spec: &FeatureSpec, event: &Event) -> Option<String> {
        for update in &spec.per_type[event.event_type as usize] {
            let Some(FieldRef::Slot(slot)) = update.field else {
                continue;
            };
            if let (Agg::Sum(sum), Value::Num(n)) = (&self.aggs[update.state], &event.values[slot])
                && !(sum + n).is_finite()
            {
                return Some(format!(
                    "adding {n} to `{}` ({sum}) overflows",
                    spec.states[update.state].name
                ));
            }
        }
        None
    }

    /// Applies one accepted event. Events must come in (event time, event id) order.
    pub fn apply(&mut self, spec: &FeatureSpec, interner: &mut Interner, event: &Event) {
        for update in &spec.per_type[event.event_type as usize] {
            let value = match update.field {
                None => &Value::Null,
                Some(FieldRef::EventTime) => &Value::Num(event.event_time),
                Some(FieldRef::Slot(slot)) => &event.values[slot],
            };
            match (&mut self.aggs[update.state], value) {
                (Agg::Distinct(set), Value::Str(s)) => {
                    let id = interner.intern(s);
                    if let Err(at) = set.binary_search(&id) {
                        grow(set.len(), set.capacity(), usize::MAX, |n| set.reserve_exact(n));
                        set.insert(at, id);
                    }
                }
                (Agg::LastK(list), Value::Str(s)) => {
                    let StateKind::LastK(k) = spec.states[update.state].kind else {
                        unreachable!()
                    };
                    list.push(interner.intern(s), k);
                }
                (Agg::Sum(sum), Value::Num(n)) => *sum += n,
                (Agg::Count(count), _) => *count += 1,
                // An absent (or null) optional value leaves `latest` as it was, as it
                // leaves every other aggregation.
                (Agg::Latest(_), Value::Null) => {}
                (Agg::Latest(latest), value) => {
                    *latest = match value {
                        Value::Num(n) => Scalar::Num(*n),
                        Value::Bool(b) => Scalar::Bool(*b),
                        Value::Str(s) => Scalar::Str(interner.intern(s)),
                        _ => Scalar::Null,
                    }
                }
                (Agg::Decayed(scores), Value::Str(group)) => {
                    let id = interner.intern(group);
                    let (decay, increment) = update.weight;
                    match scores.iter_mut().find(|entry| entry.group == id) {
                        Some(entry) => entry.score = entry.score * decay + increment,
                        None => {
                            // Exactly one more: a user meets a new group rarely (at
                            // most once per group), and the allocator mostly grows
                            // the block in place.
                            scores.reserve_exact(1);
                            scores.push(GroupScore {
                                group: id,
                                score: increment,
                            });
                        }
                    }
                }
                // An absent optional value leaves the state as it was.
                _ => {}
            }
        }
    }
}

/// Grows a full collection by half (at least to 4, at most to `limit` elements) rather
/// than doubling: per-user state is most of a job's memory, and a last-100 list that
/// doubled would hold room for 128.
pub(super) fn grow(len: usize, capacity: usize, limit: usize, reserve_exact: impl FnOnce(usize)) {
    if len == capacity {
        let target = (capacity + capacity / 2).max(4).min(limit.max(len + 1));
        reserve_exact(target - len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::{Position, Values};
    use crate::model::features::{StateSpec, Update, render_state};

    #[test]
    fn latest_keeps_its_value_when_the_field_is_absent() {
        let spec = FeatureSpec {
            states: vec![StateSpec {
                name: "last_payment".into(),
                kind: StateKind::Latest,
            }],
            features: Vec::new(),
            per_type: vec![vec![Update {
                state: 0,
                field: Some(FieldRef::Slot(0)),
                weight: (1.0, 0.0),
            }]],
        };
        let event = |value: Value| Event {
            event_time: 1.0,
            event_type: 0,
            late: false,
            user_id: "u".into(),
            user_hash: 1,
            event_id: "e".into(),
            id_key: 1,
            position: Position {
                partition: 0,
                offset: 0,
            },
            values: Values::from_iter([value]),
            late_record: None,
        };
        let mut interner = Interner::default();
        let mut state = UserState::new(&spec);
        state.apply(&spec, &mut interner, &event(Value::Str("card".into())));
        state.apply(&spec, &mut interner, &event(Value::Null));
        assert_eq!(
            render_state(&spec, &interner, &state),
            r#"{"last_payment":"card"}"#
        );
    }

    #[test]
    fn grows_by_half_and_stops_at_the_limit() {
        let mut v: Vec<u32> = Vec::new();
        let mut capacities = Vec::new();
        for i in 0..100 {
            grow(v.len(), v.capacity(), 100, |n| v.reserve_exact(n));
            v.push(i);
            capacities.push(v.capacity());
        }
        assert_eq!(capacities[0], 4);
        assert_eq!(*capacities.last().unwrap(), 100);
        assert!(capacities.iter().all(|&c| c <= 100));
    }
}
