//! Rendering a user's state as the JSON of a view's `state` (DESIGN.md section 6);
//! its `features` are rendered from typed values (`value.rs`).
//!
//! Sets are written sorted, score maps sorted by group, lists oldest first, so a
//! view's text depends only on the events applied, never on interning order.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::value::{AsJson, scalar_value, scores_by_group, sorted_members};
use super::{Agg, FeatureSpec, Interner, UserState};

/// The view's `state` object.
pub fn render_state(spec: &FeatureSpec, interner: &Interner, state: &UserState) -> String {
    serde_json::to_string(&StateJson {
        spec,
        interner,
        state,
    })
    .expect("state serializes")
}

struct StateJson<'a> {
    spec: &'a FeatureSpec,
    interner: &'a Interner,
    state: &'a UserState,
}

impl Serialize for StateJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.spec.states.len()))?;
        for (spec, agg) in self.spec.states.iter().zip(self.state.aggs.iter()) {
            map.serialize_entry(
                &spec.name,
                &AggJson {
                    agg,
                    interner: self.interner,
                },
            )?;
        }
        map.end()
    }
}

/// A state written straight from the fold's representation (no typed value built:
/// a state holds whole sets and lists).
struct AggJson<'a> {
    agg: &'a Agg,
    interner: &'a Interner,
}

impl Serialize for AggJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let interner = self.interner;
        match self.agg {
            Agg::Distinct(set) => serializer.collect_seq(sorted_members(set, interner)),
            Agg::LastK(list) => serializer.collect_seq(list.iter().map(|id| interner.resolve(id))),
            Agg::Sum(sum) => serializer.serialize_f64(*sum),
            Agg::Count(count) => serializer.serialize_u64(*count),
            Agg::Latest(scalar) => AsJson(&scalar_value(*scalar, interner)).serialize(serializer),
            Agg::Decayed(scores) => serializer.collect_map(scores_by_group(scores, interner)),
        }
    }
}
