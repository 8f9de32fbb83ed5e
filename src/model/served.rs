//! A served feature value: one value of a spine event's `features_snapshot`, parsed
//! into the shapes features take (numbers, strings, bools, `top_k`'s `[key, score]`
//! pairs) without building JSON objects for them; any other value stays JSON.
//!
//! It reads back as exactly the JSON it was parsed from ([`Served::to_json`], and
//! its `Serialize`): the skew report and the `served__*` columns see the same values
//! as if the snapshot had been parsed into `serde_json::Value`.

use compact_str::CompactString;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Number, Value as Json};

/// A served feature value.
#[derive(Debug, Clone, PartialEq)]
pub enum Served {
    /// `null`.
    Null,
    /// A bool.
    Bool(bool),
    /// A number, as JSON holds it (an integer stays one).
    Number(Number),
    /// A string.
    Str(CompactString),
    /// A list whose elements are all `[string, number]` pairs, as a view writes
    /// `top_k` (the empty list too).
    Pairs(Vec<(CompactString, Number)>),
    /// Any other value (other lists, objects).
    Other(Json),
}

impl Served {
    /// The JSON value it was parsed from.
    pub fn to_json(&self) -> Json {
        match self {
            Served::Null => Json::Null,
            Served::Bool(b) => Json::Bool(*b),
            Served::Number(n) => Json::Number(n.clone()),
            Served::Str(s) => Json::String(s.to_string()),
            Served::Pairs(pairs) => Json::Array(
                pairs
                    .iter()
                    .map(|(key, score)| pair_json(key.clone(), score.clone()))
                    .collect(),
            ),
            Served::Other(value) => value.clone(),
        }
    }

    /// [`Served::to_json`], consuming it.
    pub fn into_json(self) -> Json {
        match self {
            Served::Other(value) => value,
            other => other.to_json(),
        }
    }

    /// The number, when it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Served::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// Whether it is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Served::Null)
    }
}

impl From<Json> for Served {
    fn from(value: Json) -> Served {
        Served::deserialize(value).expect("a JSON value reads as a served value")
    }
}

impl Serialize for Served {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Served::Null => serializer.serialize_unit(),
            Served::Bool(b) => serializer.serialize_bool(*b),
            Served::Number(n) => n.serialize(serializer),
            Served::Str(s) => serializer.serialize_str(s),
            Served::Pairs(pairs) => {
                let mut seq = serializer.serialize_seq(Some(pairs.len()))?;
                for (key, score) in pairs {
                    seq.serialize_element(&Pair(key, score))?;
                }
                seq.end()
            }
            Served::Other(value) => value.serialize(serializer),
        }
    }
}

/// A `[key, score]` pair as JSON writes it.
struct Pair<'a>(&'a str, &'a Number);

impl Serialize for Pair<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(self.0)?;
        tuple.serialize_element(self.1)?;
        tuple.end()
    }
}

/// A value being parsed: a served value, or a `[string, number]` pair that a list
/// of pairs gathers (alone it is a two-element list).
enum Node {
    Value(Served),
    Pair(CompactString, Number),
}

impl Node {
    fn into_served(self) -> Served {
        match self {
            Node::Value(served) => served,
            Node::Pair(key, score) => Served::Other(pair_json(key, score)),
        }
    }

    fn into_json(self) -> Json {
        match self {
            Node::Value(served) => served.into_json(),
            Node::Pair(key, score) => pair_json(key, score),
        }
    }
}

/// A `[key, score]` pair as a JSON value.
fn pair_json(key: CompactString, score: Number) -> Json {
    Json::Array(vec![Json::String(key.into_string()), Json::Number(score)])
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Value(Served::Null))
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Value(Served::Null))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
        Ok(Node::Value(Served::Bool(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
        Ok(Node::Value(Served::Number(n.into())))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
        Ok(Node::Value(Served::Number(n.into())))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Node, E> {
        // As serde_json's own `Value` does: a float JSON cannot hold is null.
        Ok(Node::Value(
            Number::from_f64(n).map_or(Served::Null, Served::Number),
        ))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node, E> {
        Ok(Node::Value(Served::Str(s.into())))
    }

    fn visit_string<E>(self, s: String) -> Result<Node, E> {
        Ok(Node::Value(Served::Str(s.into())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        // Read without a list of nodes in the common shapes: a pair, a list of pairs.
        let Some(first) = seq.next_element_seed(NodeSeed)? else {
            return Ok(Node::Value(Served::Pairs(Vec::new())));
        };
        let mut pairs = Vec::new();
        let mut rest: Vec<Json> = match first {
            Node::Value(Served::Str(key)) => match seq.next_element_seed(NodeSeed)? {
                None => vec![Json::String(key.into_string())],
                Some(Node::Value(Served::Number(score))) => match seq.next_element_seed(NodeSeed)? {
                    None => return Ok(Node::Pair(key, score)),
                    Some(third) => vec![
                        Json::String(key.into_string()),
                        Json::Number(score),
                        third.into_json(),
                    ],
                },
                Some(second) => vec![Json::String(key.into_string()), second.into_json()],
            },
            Node::Pair(key, score) => {
                pairs.push((key, score));
                loop {
                    match seq.next_element_seed(NodeSeed)? {
                        None => return Ok(Node::Value(Served::Pairs(pairs))),
                        Some(Node::Pair(key, score)) => pairs.push((key, score)),
                        Some(other) => {
                            let mut items: Vec<Json> = pairs
                                .drain(..)
                                .map(|(key, score)| pair_json(key, score))
                                .collect();
                            items.push(other.into_json());
                            break items;
                        }
                    }
                }
            }
            other => vec![other.into_json()],
        };
        while let Some(item) = seq.next_element_seed(NodeSeed)? {
            rest.push(item.into_json());
        }
        Ok(Node::Value(Served::Other(Json::Array(rest))))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Node, A::Error> {
        let value = Json::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Node::Value(Served::Other(value)))
    }
}

struct NodeSeed;

impl<'de> serde::de::DeserializeSeed<'de> for NodeSeed {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

impl<'de> Deserialize<'de> for Served {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Served, D::Error> {
        deserializer.deserialize_any(NodeVisitor).map(Node::into_served)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn parse(text: &str) -> Served {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn shapes_are_typed_and_everything_else_stays_json() {
        assert_eq!(parse("null"), Served::Null);
        assert_eq!(parse("3"), Served::Number(3u64.into()));
        assert_eq!(parse("-3"), Served::Number((-3i64).into()));
        assert_eq!(parse("\"a\\n\""), Served::Str("a\n".into()));
        assert_eq!(
            parse(r#"[["a", 1.5], ["b", 2]]"#),
            Served::Pairs(vec![
                ("a".into(), Number::from_f64(1.5).expect("finite")),
                ("b".into(), 2u64.into())
            ])
        );
        assert_eq!(parse("[]"), Served::Pairs(Vec::new()));
        // A pair alone is a list of a string and a number, not a list of pairs.
        assert_eq!(parse(r#"["a", 1]"#), Served::Other(json!(["a", 1])));
        assert_eq!(
            parse(r#"[["a", 1], ["b"]]"#),
            Served::Other(json!([["a", 1], ["b"]]))
        );
        assert_eq!(parse(r#"[[["a", 1]]]"#), Served::Other(json!([[["a", 1]]])));
        assert_eq!(
            parse(r#"{"a": [["b", 1]]}"#),
            Served::Other(json!({"a": [["b", 1]]}))
        );
    }

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            (-1e6f64..1e6).prop_map(Json::from),
            "[a-c\"\\\\]{0,3}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                ("[a-c]{0,2}", inner.clone()).prop_map(|(k, v)| json!([k, v])),
                prop::collection::vec(("[a-c]{1,2}", -10.0f64..10.0), 0..4).prop_map(|pairs| json!(pairs)),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..3)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any JSON text reads back as the value `serde_json` parses from it, and
        /// writes the same text.
        #[test]
        fn reads_back_as_the_json_it_was_parsed_from(value in json_value()) {
            let text = value.to_string();
            let served = parse(&text);
            prop_assert_eq!(served.to_json(), value.clone());
            prop_assert_eq!(serde_json::to_string(&served).expect("serializes"), text);
            prop_assert_eq!(Served::from(value.clone()), served);
        }
    }
}
