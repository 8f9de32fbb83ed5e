//! A user's features as typed values (DESIGN.md section 6): what a view's `features`
//! object says, before it is text. Views are rendered from these values, and the
//! training export reads the same values at each spine event, so the two agree by
//! construction and the export never parses a view back.

use compact_str::CompactString;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::{Agg, FeatureFn, FeatureOut, FeatureSpec, GroupScore, Interner, Scalar, UserState};

/// One feature's value, its strings owned ([`CompactString`], as the training export
/// keeps it) or borrowed from the interner (`&str`, as a view is written). Its JSON
/// form ([`AsJson`]) is the view's, byte for byte; its derived serde form is the
/// checkpoint's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeatureValue<S = CompactString> {
    /// `null`: a latest value not set yet.
    Null,
    /// A size or a count.
    UInt(u64),
    /// A sum or a latest number (JSON writes a non-finite one as `null`).
    Num(f64),
    /// `present`, or a latest bool.
    Bool(bool),
    /// A latest string.
    Str(S),
    /// The value of a distinct set (sorted) or a last-k list (oldest first).
    List(Vec<S>),
    /// The value of a decayed score map: `(group, score)` sorted by group.
    Scores(Vec<(S, f64)>),
    /// `top_k`: `(group, score)`, score descending, ties by group ascending.
    TopK(Vec<(S, f64)>),
}

impl<S: AsRef<str>> FeatureValue<S> {
    /// The number, when the value is one JSON would write as a number.
    pub fn number(&self) -> Option<f64> {
        match *self {
            FeatureValue::UInt(n) => Some(n as f64),
            FeatureValue::Num(x) if x.is_finite() => Some(x),
            _ => None,
        }
    }

    /// Whether JSON writes it as `null`.
    pub fn is_null(&self) -> bool {
        match *self {
            FeatureValue::Null => true,
            FeatureValue::Num(x) => !x.is_finite(),
            _ => false,
        }
    }

    /// Its JSON text.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(&AsJson(self)).expect("a feature value serializes")
    }

    /// Its JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(AsJson(self)).expect("a feature value serializes")
    }

    /// The value with its strings owned.
    pub fn to_owned_value(&self) -> FeatureValue {
        let own = |s: &S| CompactString::from(s.as_ref());
        match self {
            FeatureValue::Null => FeatureValue::Null,
            FeatureValue::UInt(n) => FeatureValue::UInt(*n),
            FeatureValue::Num(x) => FeatureValue::Num(*x),
            FeatureValue::Bool(b) => FeatureValue::Bool(*b),
            FeatureValue::Str(s) => FeatureValue::Str(own(s)),
            FeatureValue::List(items) => FeatureValue::List(items.iter().map(own).collect()),
            FeatureValue::Scores(pairs) => {
                FeatureValue::Scores(pairs.iter().map(|(g, x)| (own(g), *x)).collect())
            }
            FeatureValue::TopK(pairs) => {
                FeatureValue::TopK(pairs.iter().map(|(g, x)| (own(g), *x)).collect())
            }
        }
    }
}

/// A feature value as the view writes it.
pub struct AsJson<'a, S>(pub &'a FeatureValue<S>);

impl<S: AsRef<str>> Serialize for AsJson<'_, S> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        match self.0 {
            FeatureValue::Null => serializer.serialize_none(),
            FeatureValue::UInt(n) => serializer.serialize_u64(*n),
            FeatureValue::Num(x) => serializer.serialize_f64(*x),
            FeatureValue::Bool(b) => serializer.serialize_bool(*b),
            FeatureValue::Str(s) => serializer.serialize_str(s.as_ref()),
            FeatureValue::List(items) => serializer.collect_seq(items.iter().map(AsRef::as_ref)),
            FeatureValue::Scores(scores) => {
                let mut map = serializer.serialize_map(Some(scores.len()))?;
                for (group, score) in scores {
                    map.serialize_entry(group.as_ref(), score)?;
                }
                map.end()
            }
            FeatureValue::TopK(pairs) => {
                let mut seq = serializer.serialize_seq(Some(pairs.len()))?;
                for (group, score) in pairs {
                    seq.serialize_element(&(group.as_ref(), score))?;
                }
                seq.end()
            }
        }
    }
}

/// The value of `feature` for a user with `state`, its strings borrowed from the
/// interner.
pub fn feature_value<'a>(
    feature: &FeatureOut,
    interner: &'a Interner,
    state: &UserState,
) -> FeatureValue<&'a str> {
    let agg = &state.aggs[feature.state];
    match feature.func {
        FeatureFn::Count => FeatureValue::UInt(size(agg)),
        FeatureFn::Present => FeatureValue::Bool(present(agg)),
        FeatureFn::Value => agg_value(agg, interner),
        FeatureFn::TopK => {
            let Agg::Decayed(scores) = agg else {
                unreachable!("checked at compile")
            };
            let mut ranked: Vec<(&str, f64)> = scores
                .iter()
                .map(|e| (interner.resolve(e.group), e.score))
                .collect();
            ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            ranked.truncate(feature.k);
            FeatureValue::TopK(ranked)
        }
    }
}

/// The features of a user with `state`, in the spec's order, owned (as the training
/// export keeps them).
pub fn feature_values(spec: &FeatureSpec, interner: &Interner, state: &UserState) -> Vec<FeatureValue> {
    spec.features
        .iter()
        .map(|feature| feature_value(feature, interner, state).to_owned_value())
        .collect()
}

/// A distinct set's members, sorted.
pub(super) fn sorted_members<'a>(set: &[u32], interner: &'a Interner) -> Vec<&'a str> {
    let mut names: Vec<&str> = set.iter().map(|&id| interner.resolve(id)).collect();
    names.sort_unstable();
    names
}

/// A decayed score map's `(group, score)` pairs, sorted by group.
pub(super) fn scores_by_group<'a>(scores: &[GroupScore], interner: &'a Interner) -> Vec<(&'a str, f64)> {
    let mut sorted: Vec<(&str, f64)> = scores
        .iter()
        .map(|e| (interner.resolve(e.group), e.score))
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    sorted
}

/// A latest value.
pub(super) fn scalar_value(scalar: Scalar, interner: &Interner) -> FeatureValue<&str> {
    match scalar {
        Scalar::Null => FeatureValue::Null,
        Scalar::Num(n) => FeatureValue::Num(n),
        Scalar::Bool(b) => FeatureValue::Bool(b),
        Scalar::Str(id) => FeatureValue::Str(interner.resolve(id)),
    }
}

/// A state's own value, as `fn = "value"` gives it.
fn agg_value<'a>(agg: &Agg, interner: &'a Interner) -> FeatureValue<&'a str> {
    match agg {
        Agg::Distinct(set) => FeatureValue::List(sorted_members(set, interner)),
        Agg::LastK(list) => FeatureValue::List(list.iter().map(|id| interner.resolve(id)).collect()),
        Agg::Sum(sum) => FeatureValue::Num(*sum),
        Agg::Count(count) => FeatureValue::UInt(*count),
        Agg::Latest(scalar) => scalar_value(*scalar, interner),
        Agg::Decayed(scores) => FeatureValue::Scores(scores_by_group(scores, interner)),
    }
}

/// A set's, list's or score map's size; a count's value.
fn size(agg: &Agg) -> u64 {
    match agg {
        Agg::Distinct(set) => set.len() as u64,
        Agg::LastK(list) => list.len() as u64,
        Agg::Decayed(scores) => scores.len() as u64,
        Agg::Count(count) => *count,
        Agg::Sum(_) | Agg::Latest(_) => 0,
    }
}

/// Whether a state holds anything.
fn present(agg: &Agg) -> bool {
    match agg {
        Agg::Latest(scalar) => *scalar != Scalar::Null,
        Agg::Count(count) => *count > 0,
        other => size(other) > 0,
    }
}

/// The view's `features` object of a user with `state`: each feature's value
/// ([`feature_value`]) written as JSON.
pub fn render_features(spec: &FeatureSpec, interner: &Interner, state: &UserState) -> String {
    struct Object<'a>(&'a FeatureSpec, &'a Interner, &'a UserState);
    impl Serialize for Object<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let Object(spec, interner, state) = *self;
            let mut map = serializer.serialize_map(Some(spec.features.len()))?;
            for feature in &spec.features {
                map.serialize_entry(&feature.name, &AsJson(&feature_value(feature, interner, state)))?;
            }
            map.end()
        }
    }
    serde_json::to_string(&Object(spec, interner, state)).expect("features serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_the_views_and_owned_values_write_the_same() {
        let cases: Vec<(FeatureValue<&str>, &str)> = vec![
            (FeatureValue::Null, "null"),
            (FeatureValue::UInt(3), "3"),
            (FeatureValue::Num(2.5), "2.5"),
            (FeatureValue::Num(3.0), "3.0"),
            (FeatureValue::Num(f64::INFINITY), "null"),
            (FeatureValue::Bool(true), "true"),
            (FeatureValue::Str("a\"b"), r#""a\"b""#),
            (FeatureValue::List(vec!["x", "y"]), r#"["x","y"]"#),
            (
                FeatureValue::Scores(vec![("a", 1.0), ("b", 0.5)]),
                r#"{"a":1.0,"b":0.5}"#,
            ),
            (
                FeatureValue::TopK(vec![("b", 2.0), ("a", 1.0)]),
                r#"[["b",2.0],["a",1.0]]"#,
            ),
        ];
        for (value, json) in cases {
            assert_eq!(value.to_json_string(), json);
            let owned = value.to_owned_value();
            assert_eq!(owned.to_json_string(), json);
            assert_eq!(owned.is_null(), json == "null");
            // The checkpoint's form round-trips.
            let bytes = bincode::serialize(&owned).expect("serializes");
            assert_eq!(
                bincode::deserialize::<FeatureValue>(&bytes).expect("deserializes"),
                owned
            );
        }
        assert_eq!(FeatureValue::<&str>::UInt(7).number(), Some(7.0));
        assert_eq!(FeatureValue::<&str>::Num(f64::NAN).number(), None);
        assert_eq!(FeatureValue::Str("7").number(), None);
    }
}
