//! The canonical event: what a record becomes once it is decoded, validated and upcast,
//! and what travels between workers to the per-user fold.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// The most bytes of an unparsable record kept in a dead letter's `raw` field.
pub const MAX_RAW_BYTES: usize = 64 * 1024;

/// A field value carried on an event, after upcasting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Absent or null.
    Null,
    /// A bool.
    Bool(bool),
    /// A number.
    Num(f64),
    /// A string.
    Str(CompactString),
    /// An array of strings.
    List(Vec<CompactString>),
    /// Any other JSON, as text.
    Json(String),
}

/// The values an event carries, in the slot order of its type.
pub type Values = SmallVec<[Value; 4]>;

/// Milliseconds since the epoch: the dataflow's timestamp.
pub type Millis = u64;

/// Event time in seconds to the dataflow's millisecond timestamp (rounded down).
pub fn to_millis(seconds: f64) -> Millis {
    // `event_time` is validated finite, >= 0 and below year 10000, so this fits.
    (seconds * 1000.0).floor() as Millis
}

/// A position in the source: which partition, and where in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// A stable hash of the partition's name (not of its place on the command line).
    pub partition: u64,
    /// The record's sequence in its partition (the source record's `sequence`).
    pub offset: i64,
}

/// Where a record came from: enough to find it again and to re-publish it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// The Kafka topic, or the path of the file the record was read from.
    pub topic: String,
    /// The Kafka partition; `None` for files.
    pub partition: Option<i32>,
    /// The Kafka offset, or the 1-based line number in the file.
    pub offset: i64,
    /// The Kafka message key, when there was one (lossy UTF-8).
    pub key: Option<String>,
    /// The broker's timestamp of the message, in milliseconds, when there was one.
    pub broker_timestamp_ms: Option<i64>,
}

/// A decoded, upcast event on its way to the fold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the epoch, as the event said.
    pub event_time: f64,
    /// Index of the event type in the job's registry.
    pub event_type: u16,
    /// Whether the source found it behind its partition's lateness bound.
    pub late: bool,
    /// The key.
    pub user_id: CompactString,
    /// Hash of `user_id`: routes the event to its worker and finds its state.
    pub user_hash: u64,
    /// The event's id.
    pub event_id: CompactString,
    /// The dedup key: [`id_key`] of the user and the id, computed where
    /// the id was just parsed rather than in the fold, where reading it again was a
    /// cache miss per event.
    pub id_key: IdKey,
    /// Where it was read.
    pub position: Position,
    /// The values its type carries, in slot order.
    pub values: Values,
    /// What a dead letter needs (the record's text and origin), for the events the
    /// fold may still dead-letter: late events, and events carrying a number so large
    /// ([`HUGE_NUMBER`]) that adding it to a sum could overflow.
    pub late_record: Option<Box<LateRecord>>,
}

/// What a late event keeps so the fold can dead-letter it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    /// The record's JSON text.
    pub text: String,
    /// Where it came from.
    pub origin: Origin,
}

/// The stable hash that routes a key to its worker.
pub fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// The dedup key: a 128-bit hash of (user id, event id).
pub type IdKey = u128;

/// The dedup key of an event of the user whose key hash is `user_hash`.
pub fn id_key(user_hash: u64, event_id: &str) -> IdKey {
    xxhash_rust::xxh3::xxh3_128_with_seed(event_id.as_bytes(), user_hash)
}

/// Numbers above this magnitude (about 2^960) are kept with their record: only such
/// a number can make a sum overflow (2^64 numbers below it cannot), and the fold then
/// dead-letters the event instead of writing an infinite sum as `null`.
pub const HUGE_NUMBER: f64 = 1e289;

impl Event {
    /// Whether the event carries a number above [`HUGE_NUMBER`] in magnitude.
    pub fn has_huge_number(&self) -> bool {
        self.values
            .iter()
            .any(|v| matches!(v, Value::Num(n) if n.abs() > HUGE_NUMBER))
    }

    /// The order in which a user's events are applied: event time, then event id,
    /// then source position (which decides between copies of one id).
    pub fn apply_order(&self, other: &Event) -> std::cmp::Ordering {
        self.event_time
            .total_cmp(&other.event_time)
            .then_with(|| self.event_id.cmp(&other.event_id))
            .then_with(|| self.position.cmp(&other.position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_down_and_keep_order() {
        assert_eq!(to_millis(1.0), 1000);
        assert_eq!(to_millis(1.0009), 1000);
        assert_eq!(to_millis(1.0015), 1001);
        assert!(to_millis(1_700_000_000.123) <= to_millis(1_700_000_000.124));
    }

    #[test]
    fn key_hash_is_stable() {
        // Routing, partitioning and checkpoints depend on these values never changing:
        // pinned, so that a new hash function or seed cannot slip in unnoticed.
        assert_eq!(key_hash("user-1"), 8_968_379_626_967_066_057);
        assert_eq!(
            id_key(key_hash("user-1"), "event-1"),
            263_080_620_216_941_734_497_912_734_272_053_127_859
        );
        assert_ne!(key_hash("user-1"), key_hash("user-2"));
    }
}
