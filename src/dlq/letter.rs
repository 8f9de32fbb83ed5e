//! Dead letters: why a record could not be used, and the DLQ record that carries it.
//!
//! Every rejection is data. A [`Reason`] names the contract's failure reasons
//! (DESIGN.md section 3) and knows whether a retry can help; a [`DeadLetter`] is the
//! record written to the dead-letter queue, with the record's origin so it can be
//! found and re-published.

use serde::{Deserialize, Serialize};

use crate::model::event::{MAX_RAW_BYTES, Origin};

/// Why a record was dead-lettered. The names are the contract's `failure_reason` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The bytes are not UTF-8.
    InvalidUtf8,
    /// The bytes are not JSON.
    InvalidJson,
    /// The JSON value is not an object.
    NotAnObject,
    /// The record is larger than `max_event_bytes`.
    Oversized,
    /// A required field is absent or null.
    MissingRequiredField,
    /// A field has the wrong JSON type or form.
    InvalidFieldType,
    /// `event_time` is negative or too large.
    InvalidEventTime,
    /// The event type is known but this major version is not.
    UnsupportedSchemaVersion,
    /// The event arrived after the lateness bound (late policy `dlq`).
    LateEvent,
    /// An external call timed out.
    Timeout,
    /// A sink could not be written.
    SinkUnavailable,
    /// The broker could not be reached.
    BrokerUnavailable,
    /// A row of a spine file (`--spine`) cannot be used: a missing column, an
    /// unparsable time, an empty user.
    InvalidSpineRow,
}

impl Reason {
    /// Every reason, in the order summaries list them.
    pub const ALL: [Reason; 13] = [
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::Oversized,
        Reason::MissingRequiredField,
        Reason::InvalidFieldType,
        Reason::InvalidEventTime,
        Reason::UnsupportedSchemaVersion,
        Reason::LateEvent,
        Reason::Timeout,
        Reason::SinkUnavailable,
        Reason::BrokerUnavailable,
        Reason::InvalidSpineRow,
    ];

    /// The contract's name for this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::Oversized => "oversized",
            Reason::MissingRequiredField => "missing_required_field",
            Reason::InvalidFieldType => "invalid_field_type",
            Reason::InvalidEventTime => "invalid_event_time",
            Reason::UnsupportedSchemaVersion => "unsupported_schema_version",
            Reason::LateEvent => "late_event",
            Reason::Timeout => "timeout",
            Reason::SinkUnavailable => "sink_unavailable",
            Reason::BrokerUnavailable => "broker_unavailable",
            Reason::InvalidSpineRow => "invalid_spine_row",
        }
    }

    /// Parses a contract name back into a reason.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether retrying the same record later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Reason::Timeout | Reason::SinkUnavailable | Reason::BrokerUnavailable
        )
    }

    /// The position of this reason in [`Reason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One dead-letter record (DESIGN.md section 3).
///
/// `event` holds the record's JSON text when the record parsed; `raw` holds the
/// original bytes (lossy UTF-8, cut at [`MAX_RAW_BYTES`]) when it did not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job that rejected the record.
    pub job: String,
    /// Where the record came from.
    pub origin: Origin,
    /// The record's JSON text, when it parsed.
    pub event: Option<String>,
    /// The record's bytes, when it did not parse.
    pub raw: Option<String>,
    /// Why it was rejected.
    pub reason: Reason,
    /// Details, such as the name of the missing field.
    pub detail: String,
    /// How many times the record was retried before it was dead-lettered.
    pub retry_count: u32,
    /// Wall-clock seconds of each attempt.
    pub attempt_timestamps: Vec<f64>,
    /// Wall-clock seconds of the failure.
    pub failure_timestamp: f64,
}

/// The deepest nesting of a record kept as a letter's `event`. The letter adds a
/// level, and JSON readers stop at 128 (serde_json, and the DLQ tools with it).
pub const MAX_EVENT_NESTING: usize = 64;

/// How deeply the arrays and objects of a JSON text nest (brackets inside strings
/// do not count).
pub fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl DeadLetter {
    /// A dead letter for a record that failed on its first and only attempt.
    pub fn first_attempt(
        job: &str,
        origin: Origin,
        bytes: &[u8],
        parsed: bool,
        reason: Reason,
        detail: String,
    ) -> DeadLetter {
        let now = wall_clock_seconds();
        // A record nested deeper than a reader will follow is kept as text, never as
        // `event`: one such record must not make the whole queue unreadable.
        let parsed = parsed && nesting_depth(bytes) <= MAX_EVENT_NESTING;
        let (event, raw) = if parsed {
            (
                Some(String::from_utf8_lossy(trim_ascii(bytes)).into_owned()),
                None,
            )
        } else {
            let cut = &bytes[..bytes.len().min(MAX_RAW_BYTES)];
            (None, Some(String::from_utf8_lossy(cut).into_owned()))
        };
        DeadLetter {
            job: job.to_owned(),
            origin,
            event,
            raw,
            reason,
            detail,
            retry_count: 0,
            attempt_timestamps: vec![now],
            failure_timestamp: now,
        }
    }

    /// What identifies this dead letter across re-runs: its origin and reason. A record
    /// re-read after a restore gives the same key. Dead letters of sink failures (no
    /// source position) have none: each is its own.
    pub fn key(&self) -> Option<LetterKey> {
        (self.origin.offset >= 0).then(|| {
            (
                self.origin.topic.clone(),
                self.origin.partition,
                self.origin.offset,
                self.reason.as_str().to_owned(),
            )
        })
    }

    /// The DLQ record as one line of JSON, in the contract's field names.
    pub fn to_json(&self) -> String {
        let event = self
            .event
            .as_deref()
            .and_then(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).ok());
        let record = DeadLetterJson {
            job: &self.job,
            original_topic: &self.origin.topic,
            original_partition: self.origin.partition,
            original_offset: self.origin.offset,
            original_key: self.origin.key.as_deref(),
            original_timestamp_ms: self.origin.broker_timestamp_ms,
            event,
            raw: self.raw.as_deref(),
            failure_reason: self.reason.as_str(),
            failure_detail: &self.detail,
            retryable: self.reason.retryable(),
            retry_count: self.retry_count,
            attempt_timestamps: &self.attempt_timestamps,
            failure_timestamp: self.failure_timestamp,
        };
        serde_json::to_string(&record).expect("a dead letter always serializes")
    }
}

/// The wire form of a dead letter: the contract's field names, `event` embedded as JSON.
#[derive(Serialize)]
struct DeadLetterJson<'a> {
    job: &'a str,
    original_topic: &'a str,
    original_partition: Option<i32>,
    original_offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_timestamp_ms: Option<i64>,
    event: Option<&'a serde_json::value::RawValue>,
    raw: Option<&'a str>,
    failure_reason: &'a str,
    failure_detail: &'a str,
    retryable: bool,
    retry_count: u32,
    attempt_timestamps: &'a [f64],
    failure_timestamp: f64,
}

/// A dead letter's identity: original topic, partition, offset, reason.
pub type LetterKey = (String, Option<i32>, i64, String);

/// The identity of a dead letter read back as JSON (see [`DeadLetter::key`]).
pub fn key_of(record: &serde_json::Value) -> Option<LetterKey> {
    let offset = record["original_offset"].as_i64().filter(|&o| o >= 0)?;
    Some((
        record["original_topic"].as_str()?.to_owned(),
        record["original_partition"].as_i64().map(|p| p as i32),
        offset,
        record["failure_reason"].as_str()?.to_owned(),
    ))
}

/// Wall-clock time in seconds since the epoch.
pub fn wall_clock_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deeply_nested_record_is_kept_as_raw_text_and_the_letter_reads_back() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":"[[[{"}]]}"#), 3);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let origin = Origin {
            topic: "f.jsonl".into(),
            partition: None,
            offset: 1,
            key: None,
            broker_timestamp_ms: None,
        };
        let letter = DeadLetter::first_attempt(
            "j",
            origin,
            deep.as_bytes(),
            true,
            Reason::NotAnObject,
            "x".into(),
        );
        assert_eq!(letter.event, None);
        assert_eq!(letter.raw.as_deref(), Some(deep.as_str()));
        let back: serde_json::Value = serde_json::from_str(&letter.to_json()).expect("the letter reads back");
        assert_eq!(back["failure_reason"], "not_an_object");
    }

    fn origin() -> Origin {
        Origin {
            topic: "events.jsonl".into(),
            partition: None,
            offset: 7,
            key: None,
            broker_timestamp_ms: None,
        }
    }

    #[test]
    fn names_round_trip_and_retryability_follows_the_contract() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_name(reason.as_str()), Some(reason));
            assert_eq!(Reason::ALL[reason.index()], reason);
        }
        assert!(!Reason::InvalidJson.retryable());
        assert!(!Reason::LateEvent.retryable());
        assert!(Reason::SinkUnavailable.retryable());
        assert!(Reason::Timeout.retryable());
        assert!(Reason::BrokerUnavailable.retryable());
    }

    #[test]
    fn parsed_records_embed_the_event_and_unparsed_ones_keep_raw_bytes() {
        let parsed = DeadLetter::first_attempt(
            "recsys",
            origin(),
            br#" {"event_id":"a"} "#,
            true,
            Reason::MissingRequiredField,
            "event_type".into(),
        );
        let json: serde_json::Value = serde_json::from_str(&parsed.to_json()).unwrap();
        assert_eq!(json["event"]["event_id"], "a");
        assert!(json["raw"].is_null());
        assert_eq!(json["failure_reason"], "missing_required_field");
        assert_eq!(json["failure_detail"], "event_type");
        assert_eq!(json["original_offset"], 7);
        assert!(json["original_partition"].is_null());
        assert_eq!(json["retryable"], false);
        assert_eq!(json["retry_count"], 0);
        assert_eq!(json["attempt_timestamps"].as_array().unwrap().len(), 1);

        let big = vec![b'x'; MAX_RAW_BYTES + 10];
        let unparsed =
            DeadLetter::first_attempt("recsys", origin(), &big, false, Reason::Oversized, String::new());
        let json: serde_json::Value = serde_json::from_str(&unparsed.to_json()).unwrap();
        assert!(json["event"].is_null());
        assert_eq!(json["raw"].as_str().unwrap().len(), MAX_RAW_BYTES);
    }
}
