//! Decode, validate and upcast one record: steps 1-4 of DESIGN.md section 4.
//!
//! A record is bytes; it leaves as a [`DecodedEvent`] in canonical (upcast) form, as
//! `Ignored` (a type the job does not know), or as a [`Rejection`] that names the
//! contract's reason. Checks run in the contract's order and the first failure
//! decides. Parsing borrows from the input wherever the JSON allows it: the fast path
//! (`fast.rs`) reads the envelope of a well-formed record, and the serde visitors here
//! read every record it is not sure of, and word the parser's messages.

use std::fmt;

use compact_str::CompactString;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::json::{Checked, CheckedVisitor, Key, Keys, Loose};
use crate::dlq::letter::Reason;
use crate::model::event::{Event, Position, Value, Values, id_key, key_hash};
use crate::model::schema::FieldType;
use crate::model::schema::{Registry, VersionSchema};

/// `event_time` must be before year 10000: 9999-12-31T23:59:59Z is 253402300799.
pub const MAX_EVENT_TIME: f64 = 253_402_300_800.0;

/// A record that passed steps 1-4.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    /// Index of its type in the registry.
    pub event_type: u16,
    /// Seconds since the epoch.
    pub event_time: f64,
    /// The key.
    pub user_id: CompactString,
    /// The dedup key.
    pub event_id: CompactString,
    /// Carried values in slot order, upcast.
    pub values: Values,
}

/// A record that failed a check.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The contract's reason.
    pub reason: Reason,
    /// What exactly: the field's name, the parser's message.
    pub detail: String,
    /// The event time, when the record passed step 2 (so it advances its clock).
    pub event_time: Option<f64>,
    /// Whether the record parsed as JSON (its DLQ record then embeds it).
    pub parsed: bool,
}

/// The outcome of decoding one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Valid and known.
    Event(DecodedEvent),
    /// Valid envelope, unknown type: counted as ignored.
    Ignored {
        /// Its event time (it still advances its partition's clock).
        event_time: f64,
    },
    /// Failed a check.
    Rejected(Rejection),
}

impl Decoded {
    /// The record's event time, when it passed step 2 (and so moves its clock).
    pub fn event_time(&self) -> Option<f64> {
        match self {
            Decoded::Event(event) => Some(event.event_time),
            Decoded::Ignored { event_time } => Some(*event_time),
            Decoded::Rejected(rejection) => rejection.event_time,
        }
    }
}

/// Decodes records against a job's registry.
#[derive(Debug, Clone, Copy)]
pub struct Decoder<'r> {
    registry: &'r Registry,
    max_event_bytes: usize,
}

/// The envelope's fields; everything else is checked and dropped.
#[derive(Debug, Default)]
pub(super) struct Envelope<'a> {
    pub(super) event_id: Loose<'a>,
    pub(super) event_type: Loose<'a>,
    pub(super) event_version: Loose<'a>,
    pub(super) event_time: Loose<'a>,
    pub(super) user_id: Loose<'a>,
    pub(super) payload: Payload<'a>,
}

/// A payload's declared fields, by index in the schema (inline: schemas are small).
pub(super) type Found<'a> = smallvec::SmallVec<[Loose<'a>; 6]>;

/// The payload as the envelope's pass left it.
#[derive(Debug, Default)]
pub(super) enum Payload<'a> {
    /// Absent or null.
    #[default]
    Absent,
    /// Kept as text: it came before the type and version that choose its schema.
    Raw(&'a RawValue),
    /// Parsed against the schema its type and version chose: the declared fields, by
    /// index. In the envelope's pass when they came first, as producers write them.
    Fields(Found<'a>),
    /// Valid JSON, but not an object.
    NotAnObject,
}

pub(super) const ENVELOPE_FIELDS: [&str; 6] = [
    "event_id",
    "event_type",
    "event_version",
    "event_time",
    "user_id",
    "payload",
];

/// Reads the envelope in one pass over the record; a repeated envelope field is an
/// error, as JSON objects with duplicate keys are refused.
struct EnvelopeVisitor<'r> {
    registry: &'r Registry,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_> {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope::default();
        let mut seen = [false; ENVELOPE_FIELDS.len()];
        let mut others = Keys::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let Some(field) = ENVELOPE_FIELDS.iter().position(|f| *f == key) else {
                others.insert::<A::Error>(key)?;
                map.next_value::<Checked>()?;
                continue;
            };
            if std::mem::replace(&mut seen[field], true) {
                return Err(de::Error::duplicate_field(ENVELOPE_FIELDS[field]));
            }
            let slot = match field {
                0 => &mut envelope.event_id,
                1 => &mut envelope.event_type,
                2 => &mut envelope.event_version,
                3 => &mut envelope.event_time,
                4 => &mut envelope.user_id,
                _ => {
                    envelope.payload = match schema_of(self.registry, &envelope) {
                        Some(schema) => map.next_value_seed(PayloadSeed(schema))?,
                        None => match map.next_value::<Option<&'de RawValue>>()? {
                            Some(raw) => {
                                // Read later against its schema; checked now, as the
                                // rest of the record is.
                                serde_json::from_str::<Checked>(raw.get()).map_err(de::Error::custom)?;
                                Payload::Raw(raw)
                            }
                            None => Payload::Absent,
                        },
                    };
                    continue;
                }
            };
            *slot = map.next_value()?;
        }
        Ok(envelope)
    }
}

/// The schema the envelope's fields read so far choose, when the record would get as
/// far as checking its payload against one.
pub(super) fn schema_of<'r>(registry: &'r Registry, envelope: &Envelope<'_>) -> Option<&'r VersionSchema> {
    let (Loose::Str(event_type), Loose::Str(version)) = (&envelope.event_type, &envelope.event_version)
    else {
        return None;
    };
    let type_index = registry.type_index(event_type)?;
    registry.version(type_index, parse_version(version)??)
}

/// The envelope as serde reads it: the path for every record the fast path is not
/// sure of, and the one that words the parser's messages.
pub(super) fn serde_envelope<'a>(
    text: &'a str,
    registry: &Registry,
) -> Result<Envelope<'a>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer
        .deserialize_map(EnvelopeVisitor { registry })
        .and_then(|envelope| deserializer.end().map(|()| envelope))
}

fn reject(reason: Reason, detail: impl Into<String>, event_time: Option<f64>, parsed: bool) -> Decoded {
    Decoded::Rejected(Rejection {
        reason,
        detail: detail.into(),
        event_time,
        parsed,
    })
}

impl<'r> Decoder<'r> {
    /// A decoder for `registry` that refuses records above `max_event_bytes`.
    pub fn new(registry: &'r Registry, max_event_bytes: usize) -> Decoder<'r> {
        Decoder {
            registry,
            max_event_bytes,
        }
    }

    /// Runs steps 1-4 on one record.
    pub fn decode(&self, bytes: &[u8]) -> Decoded {
        // Step 1: size, UTF-8, JSON, object.
        if bytes.len() > self.max_event_bytes {
            return reject(
                Reason::Oversized,
                format!(
                    "{} bytes, more than max_event_bytes = {}",
                    bytes.len(),
                    self.max_event_bytes
                ),
                None,
                false,
            );
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                return reject(
                    Reason::InvalidUtf8,
                    format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                    None,
                    false,
                );
            }
        };
        if !text.trim_start().starts_with('{') {
            return match serde_json::from_str::<Checked>(text) {
                Ok(_) => reject(Reason::NotAnObject, describe_non_object(text), None, true),
                Err(e) => reject(Reason::InvalidJson, e.to_string(), None, false),
            };
        }
        let mut envelope = Envelope::default();
        if super::fast::read(text, self.registry, &mut envelope).is_none() {
            envelope = match serde_envelope(text, self.registry) {
                Ok(envelope) => envelope,
                Err(e) => return reject(Reason::InvalidJson, e.to_string(), None, false),
            };
        }

        // Step 2: the envelope, in the contract's field order.
        let event_id = match envelope.event_id {
            ref v if v.is_absent() => return Decoded::Rejected(missing("event_id", None)),
            Loose::Str(s) if !s.is_empty() => s,
            _ => return Decoded::Rejected(invalid("event_id", None)),
        };
        let event_type = match envelope.event_type {
            ref v if v.is_absent() => return Decoded::Rejected(missing("event_type", None)),
            Loose::Str(s) => s,
            _ => return Decoded::Rejected(invalid("event_type", None)),
        };
        let major = match envelope.event_version {
            ref v if v.is_absent() => return Decoded::Rejected(missing("event_version", None)),
            Loose::Str(ref s) => match parse_version(s) {
                Some(major) => major,
                None => return Decoded::Rejected(invalid("event_version", None)),
            },
            _ => return Decoded::Rejected(invalid("event_version", None)),
        };
        let event_time = match envelope.event_time {
            ref v if v.is_absent() => return Decoded::Rejected(missing("event_time", None)),
            Loose::Num(t) => t,
            _ => return Decoded::Rejected(invalid("event_time", None)),
        };
        if !event_time.is_finite() || !(0.0..MAX_EVENT_TIME).contains(&event_time) {
            return reject(
                Reason::InvalidEventTime,
                format!("event_time {event_time} is not between 0 and year 10000"),
                None,
                true,
            );
        }
        // -0.0 is 0: it must order (and dedup, and render) as 0 does.
        let event_time = event_time + 0.0;
        let at = Some(event_time);

        // Step 3: unknown types are someone else's.
        let Some(type_index) = self.registry.type_index(&event_type) else {
            return Decoded::Ignored { event_time };
        };

        // Step 4: the schema of this version.
        let Some(schema) = major.and_then(|m| self.registry.version(type_index, m)) else {
            let version = match &envelope.event_version {
                Loose::Str(s) => s.as_ref(),
                _ => "",
            };
            return reject(
                Reason::UnsupportedSchemaVersion,
                format!("{event_type} version {version}"),
                at,
                true,
            );
        };
        let user_id = match envelope.user_id {
            ref v if v.is_absent() => return Decoded::Rejected(missing("user_id", at)),
            Loose::Str(s) if !s.is_empty() => s,
            _ => return Decoded::Rejected(invalid("user_id", at)),
        };
        let carried = self.registry.types()[type_index as usize].carried.len();
        let values = match self.payload(schema, &envelope.payload, carried, at) {
            Ok(values) => values,
            Err(rejected) => return Decoded::Rejected(rejected),
        };
        Decoded::Event(DecodedEvent {
            event_type: type_index,
            event_time,
            user_id: CompactString::from(user_id.as_ref()),
            event_id: CompactString::from(event_id.as_ref()),
            values,
        })
    }

    /// Checks the payload against `schema` and upcasts the carried fields.
    fn payload(
        &self,
        schema: &VersionSchema,
        payload: &Payload<'_>,
        carried: usize,
        at: Option<f64>,
    ) -> Result<Values, Rejection> {
        let mut values: Values = (0..carried).map(|_| Value::Null).collect();
        if schema.fields.is_empty() {
            return Ok(values);
        }
        let (reparsed, absent);
        let payload = match payload {
            // Valid JSON (the envelope's pass checked it): only its shape can fail.
            Payload::Raw(raw) => {
                reparsed = PayloadSeed(schema)
                    .deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
                    .unwrap_or(Payload::NotAnObject);
                &reparsed
            }
            other => other,
        };
        let found = match payload {
            Payload::Absent if schema.payload_required() => return Err(missing("payload", at)),
            Payload::Absent => {
                absent = absent_fields(schema);
                &absent
            }
            Payload::Fields(found) => found,
            Payload::Raw(_) | Payload::NotAnObject => return Err(invalid("payload", at)),
        };
        for (field, value) in schema.fields.iter().zip(found) {
            if value.is_absent() {
                if field.required {
                    return Err(missing(&field.path, at));
                }
                if let (Some(slot), Some(default)) = (field.slot, &field.default) {
                    values[slot] = default.clone();
                }
                continue;
            }
            let typed = match (field.ty, value) {
                (FieldType::String, Loose::Str(_))
                | (FieldType::Number, Loose::Num(_))
                | (FieldType::Bool, Loose::Bool(_))
                | (FieldType::StringList, Loose::List(Some(_)))
                | (FieldType::Any, Loose::Raw(_)) => true,
                (FieldType::Object, Loose::Raw(text)) => text.starts_with('{'),
                _ => false,
            };
            if !typed {
                return Err(invalid(&field.path, at));
            }
            // A field no feature reads is validated and never built (no copy of an
            // impression's item list or of a purchase's payment method).
            let Some(slot) = field.slot else { continue };
            values[slot] = match value {
                Loose::Str(s) => Value::Str(CompactString::from(s.as_ref())),
                Loose::Num(n) => Value::Num(*n),
                Loose::Bool(b) => Value::Bool(*b),
                Loose::List(Some(items)) => {
                    Value::List(items.iter().map(|s| CompactString::from(s.as_ref())).collect())
                }
                Loose::Raw(text) => Value::Json((*text).to_owned()),
                _ => unreachable!("checked against the field's type above"),
            };
        }
        Ok(values)
    }
}

fn missing(field: &str, at: Option<f64>) -> Rejection {
    Rejection {
        reason: Reason::MissingRequiredField,
        detail: field.to_owned(),
        event_time: at,
        parsed: true,
    }
}

fn invalid(field: &str, at: Option<f64>) -> Rejection {
    Rejection {
        reason: Reason::InvalidFieldType,
        detail: field.to_owned(),
        event_time: at,
        parsed: true,
    }
}

fn describe_non_object(text: &str) -> String {
    let kind = match text.trim_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a bool",
        Some(b'n') => "null",
        _ => "a number",
    };
    format!("the record is {kind}, not an object")
}

/// `"MAJOR.MINOR"` with digits on both sides; `Some(None)` when MAJOR overflows.
/// (A loop over bytes: it runs twice for every record.)
fn parse_version(version: &str) -> Option<Option<u32>> {
    let bytes = version.as_bytes();
    let dot = bytes.iter().position(|&b| b == b'.')?;
    let (major, minor) = (&bytes[..dot], &bytes[dot + 1..]);
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !digits(major) || !digits(minor) {
        return None;
    }
    Some(
        major
            .iter()
            .try_fold(0u32, |n, &d| n.checked_mul(10)?.checked_add(u32::from(d - b'0'))),
    )
}

pub(super) fn absent_fields<'a>(schema: &VersionSchema) -> Found<'a> {
    (0..schema.fields.len()).map(|_| Loose::Absent).collect()
}

/// Reads a payload, parsing only the fields the schema declares. Any JSON value is
/// accepted (a syntax error is the record's); one that is not an object is reported as
/// such, and null as absent.
struct PayloadSeed<'s>(&'s VersionSchema);

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_> {
    type Value = Payload<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_> {
    type Value = Payload<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a payload")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let schema = self.0;
        let mut found = absent_fields(schema);
        let mut keys = Keys::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let field = schema.fields.iter().position(|f| f.name == key);
            keys.insert::<A::Error>(key)?;
            match field {
                Some(index) => found[index] = map.next_value_seed(FieldSeed(schema.fields[index].ty))?,
                None => {
                    map.next_value::<Checked>()?;
                }
            }
        }
        Ok(Payload::Fields(found))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        CheckedVisitor.visit_seq(seq).map(|_| Payload::NotAnObject)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Payload::Absent)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Payload::NotAnObject)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Payload::NotAnObject)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Payload::NotAnObject)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Payload::NotAnObject)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Payload::NotAnObject)
    }
}

/// Parses one payload field: as text for `object` and `any`, by type otherwise.
struct FieldSeed(FieldType);

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Loose<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        match self.0 {
            FieldType::Object | FieldType::Any => {
                let raw = <&'de RawValue>::deserialize(deserializer)?;
                // Kept as text, but checked as every other value is.
                serde_json::from_str::<Checked>(raw.get()).map_err(de::Error::custom)?;
                Ok(match raw.get() {
                    "null" => Loose::Null,
                    text => Loose::Raw(text),
                })
            }
            _ => Loose::deserialize(deserializer),
        }
    }
}

impl Event {
    /// An event that passed decoding at `position`, on time.
    pub fn accepted(decoded: DecodedEvent, position: Position) -> Event {
        let user_hash = key_hash(&decoded.user_id);
        Event {
            event_time: decoded.event_time,
            event_type: decoded.event_type,
            late: false,
            id_key: id_key(user_hash, &decoded.event_id),
            user_hash,
            user_id: decoded.user_id,
            event_id: decoded.event_id,
            position,
            values: decoded.values,
            late_record: None,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The recsys job, whose registry the decode tests read against.
    pub(in crate::dataflow::ingest) fn recsys() -> crate::job::Job {
        crate::job::Job::load(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/recsys.toml").as_ref())
            .expect("the recsys job loads")
    }

    fn decode_both_orders(payload: &str) -> (Decoded, Decoded) {
        let job = recsys();
        let decoder = Decoder::new(&job.registry, job.max_event_bytes);
        let envelope = r#""event_id":"e1","event_type":"ecommerce.purchase_completed","event_version":"2.0","event_time":10,"user_id":"u1""#;
        // Producers write the payload last, where it is parsed in the envelope's pass;
        // before the type and version it is kept as text and parsed afterwards.
        let last = format!("{{{envelope},\"payload\":{payload}}}");
        let first = format!("{{\"payload\":{payload},{envelope}}}");
        (decoder.decode(last.as_bytes()), decoder.decode(first.as_bytes()))
    }

    fn reason(decoded: &Decoded) -> Option<(Reason, &str)> {
        match decoded {
            Decoded::Rejected(r) => Some((r.reason, r.detail.as_str())),
            _ => None,
        }
    }

    #[test]
    fn a_field_no_feature_reads_is_still_checked() {
        let job = recsys();
        let decoder = Decoder::new(&job.registry, job.max_event_bytes);
        let impression = |items: &str| {
            format!(
                r#"{{"event_id":"e1","event_type":"recommendation.items_shown","event_version":"1.0","event_time":10,"user_id":"u1","payload":{{"impression_id":"i","model_version":"m","recommended_items":{items}}}}}"#
            )
        };
        let decoded = decoder.decode(impression(r#"["a","b"]"#).as_bytes());
        assert!(matches!(decoded, Decoded::Event(_)), "{decoded:?}");
        for items in ["[\"a\",1]", "\"a\"", "{}", "[[\"a\"]]"] {
            let decoded = decoder.decode(impression(items).as_bytes());
            assert_eq!(
                reason(&decoded),
                Some((Reason::InvalidFieldType, "payload.recommended_items")),
                "{items}"
            );
        }
        let decoded = decoder.decode(impression("null").as_bytes());
        assert_eq!(
            reason(&decoded),
            Some((Reason::MissingRequiredField, "payload.recommended_items"))
        );
    }

    #[test]
    fn the_payload_decodes_the_same_wherever_it_stands() {
        let (last, first) =
            decode_both_orders(r#"{"item_id":"i1","category":"books","price":9.5,"extra":[1]}"#);
        assert!(matches!(last, Decoded::Event(_)), "{last:?}");
        assert_eq!(last, first);
        for (payload, expected) in [
            ("[1,2]", Some((Reason::InvalidFieldType, "payload"))),
            (r#""text""#, Some((Reason::InvalidFieldType, "payload"))),
            ("7", Some((Reason::InvalidFieldType, "payload"))),
            ("true", Some((Reason::InvalidFieldType, "payload"))),
            ("null", Some((Reason::MissingRequiredField, "payload"))),
            (
                r#"{"item_id":"i1"}"#,
                Some((Reason::MissingRequiredField, "payload.price")),
            ),
            (
                r#"{"item_id":1,"category":"c","price":1}"#,
                Some((Reason::InvalidFieldType, "payload.item_id")),
            ),
        ] {
            let (last, first) = decode_both_orders(payload);
            assert_eq!(reason(&last), expected, "{payload}");
            assert_eq!(last, first, "{payload}");
        }
        let (last, first) = decode_both_orders(r#"{"item_id":"i1",}"#);
        assert_eq!(reason(&last).map(|r| r.0), Some(Reason::InvalidJson));
        assert_eq!(reason(&first).map(|r| r.0), Some(Reason::InvalidJson));
    }

    #[test]
    fn a_repeated_envelope_field_is_invalid_json() {
        let job = recsys();
        let decoder = Decoder::new(&job.registry, job.max_event_bytes);
        let record = br#"{"event_id":"a","event_id":"b","event_type":"session.started","event_version":"1.0","event_time":1,"user_id":"u"}"#;
        let decoded = decoder.decode(record);
        let Decoded::Rejected(rejection) = &decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!(rejection.reason, Reason::InvalidJson);
        assert!(
            rejection.detail.contains("duplicate field `event_id`"),
            "{}",
            rejection.detail
        );
    }

    #[test]
    fn a_key_repeated_in_any_object_is_invalid_json() {
        for payload in [
            r#"{"item_id":"i1","price":1,"price":2}"#,
            r#"{"item_id":"i1","price":1,"extra":1,"extra":2}"#,
            r#"{"item_id":"i1","price":1,"extra":{"a":1,"a":1}}"#,
            r#"{"item_id":"i1","price":1,"extra":[{"a":[{"b":1,"b":1}]}]}"#,
        ] {
            let (last, first) = decode_both_orders(payload);
            assert_eq!(reason(&last).map(|r| r.0), Some(Reason::InvalidJson), "{payload}");
            assert!(reason(&last).unwrap().1.contains("duplicate field"), "{last:?}");
            assert_eq!(
                reason(&first).map(|r| r.0),
                Some(Reason::InvalidJson),
                "{payload}"
            );
        }
        let job = recsys();
        let decoder = Decoder::new(&job.registry, job.max_event_bytes);
        for record in [
            r#"{"event_id":"a","x":1,"x":2,"event_type":"session.started","event_version":"1.0","event_time":1,"user_id":"u"}"#,
            r#"[{"a":1,"a":2}]"#,
            r#"{"event_id":"a","event_type":"recommendation.items_shown","event_version":"1.0","event_time":1,"user_id":"u","payload":{"impression_id":"i","model_version":"m","recommended_items":[],"features_snapshot":{"n":1,"n":2}}}"#,
        ] {
            assert_eq!(
                reason(&decoder.decode(record.as_bytes())).map(|r| r.0),
                Some(Reason::InvalidJson),
                "{record}"
            );
        }
    }

    #[test]
    fn minus_zero_is_zero() {
        let job = recsys();
        let decoder = Decoder::new(&job.registry, job.max_event_bytes);
        let record = br#"{"event_id":"a","event_type":"session.started","event_version":"1.0","event_time":-0.0,"user_id":"u"}"#;
        let Decoded::Event(event) = decoder.decode(record) else {
            panic!("-0.0 is a valid time")
        };
        assert!(event.event_time.is_sign_positive(), "-0.0 orders as 0 does");
    }

    #[test]
    fn versions_are_digits_dot_digits() {
        assert_eq!(parse_version("1.0"), Some(Some(1)));
        assert_eq!(parse_version("10.25"), Some(Some(10)));
        assert_eq!(parse_version("99999999999.0"), Some(None));
        for bad in ["1", "1.", ".1", "v1.0", "1.0.0", "1.x", "", " 1.0"] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }
}
