//! Rendering a user's state and features as the JSON of a view (DESIGN.md section 6).
//!
//! Sets are written sorted, score maps sorted by group, lists oldest first, so a
//! view's text depends only on the events applied, never on interning order.

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

use super::FeatureFn;
use super::{Agg, FeatureSpec, GroupScore, Interner, Scalar, UserState};

/// The view's `state` object.
pub fn render_state(spec: &FeatureSpec, interner: &Interner, state: &UserState) -> String {
    serde_json::to_string(&StateJson {
        spec,
        interner,
        state,
    })
    .expect("state serializes")
}

/// The view's `features` object.
pub fn render_features(spec: &FeatureSpec, interner: &Interner, state: &UserState) -> String {
    serde_json::to_string(&FeaturesJson {
        spec,
        interner,
        state,
    })
    .expect("features serialize")
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

struct AggJson<'a> {
    agg: &'a Agg,
    interner: &'a Interner,
}

impl Serialize for AggJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let interner = self.interner;
        match self.agg {
            Agg::Distinct(set) => {
                let mut names: Vec<&str> = set.iter().map(|&id| interner.resolve(id)).collect();
                names.sort_unstable();
                serializer.collect_seq(names)
            }
            Agg::LastK(list) => serializer.collect_seq(list.iter().map(|id| interner.resolve(id))),
            Agg::Sum(sum) => serializer.serialize_f64(*sum),
            Agg::Count(count) => serializer.serialize_u64(*count),
            Agg::Latest(scalar) => ScalarJson(*scalar, interner).serialize(serializer),
            Agg::Decayed(scores) => {
                let mut sorted: Vec<(&str, f64)> = scores
                    .iter()
                    .map(|e| (interner.resolve(e.group), e.score))
                    .collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut map = serializer.serialize_map(Some(sorted.len()))?;
                for (group, score) in sorted {
                    map.serialize_entry(group, &score)?;
                }
                map.end()
            }
        }
    }
}

struct ScalarJson<'a>(Scalar, &'a Interner);

impl Serialize for ScalarJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Scalar::Null => serializer.serialize_none(),
            Scalar::Num(n) => serializer.serialize_f64(n),
            Scalar::Bool(b) => serializer.serialize_bool(b),
            Scalar::Str(id) => serializer.serialize_str(self.1.resolve(id)),
        }
    }
}

struct FeaturesJson<'a> {
    spec: &'a FeatureSpec,
    interner: &'a Interner,
    state: &'a UserState,
}

impl Serialize for FeaturesJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.spec.features.len()))?;
        for feature in &self.spec.features {
            let agg = &self.state.aggs[feature.state];
            match feature.func {
                FeatureFn::Count => map.serialize_entry(&feature.name, &size(agg))?,
                FeatureFn::Present => map.serialize_entry(&feature.name, &present(agg))?,
                FeatureFn::Value => map.serialize_entry(
                    &feature.name,
                    &AggJson {
                        agg,
                        interner: self.interner,
                    },
                )?,
                FeatureFn::TopK => {
                    let Agg::Decayed(scores) = agg else {
                        unreachable!("checked at compile")
                    };
                    let top = TopK {
                        scores,
                        k: feature.k,
                        interner: self.interner,
                    };
                    map.serialize_entry(&feature.name, &top)?
                }
            }
        }
        map.end()
    }
}

fn size(agg: &Agg) -> u64 {
    match agg {
        Agg::Distinct(set) => set.len() as u64,
        Agg::LastK(list) => list.len() as u64,
        Agg::Decayed(scores) => scores.len() as u64,
        Agg::Count(count) => *count,
        Agg::Sum(_) | Agg::Latest(_) => 0,
    }
}

fn present(agg: &Agg) -> bool {
    match agg {
        Agg::Latest(scalar) => *scalar != Scalar::Null,
        Agg::Count(count) => *count > 0,
        other => size(other) > 0,
    }
}

/// The `k` best `[group, score]` pairs: score descending, ties by group ascending.
struct TopK<'a> {
    scores: &'a [GroupScore],
    k: usize,
    interner: &'a Interner,
}

impl Serialize for TopK<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut ranked: Vec<(&str, f64)> = self
            .scores
            .iter()
            .map(|e| (self.interner.resolve(e.group), e.score))
            .collect();
        ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked.truncate(self.k);
        let mut seq = serializer.serialize_seq(Some(ranked.len()))?;
        for pair in ranked {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}
