//! The canonical event: what a record becomes once it is decoded, validated and upcast,
//! and what travels between workers to the per-user fold.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::dead_letter::Origin;
use crate::decode::DecodedEvent;

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
    /// The record's sequence in its partition (see [`crate::source::Record::sequence`]).
    pub offset: i64,
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
    /// The dedup key: [`crate::dedup::id_key`] of the user and the id, computed where
    /// the id was just parsed rather than in the fold, where reading it again was a
    /// cache miss per event.
    pub id_key: crate::dedup::IdKey,
    /// Where it was read.
    pub position: Position,
    /// The values its type carries, in slot order.
    pub values: Values,
    /// For late events only: what a dead letter needs (the record's text and origin).
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

static CONTAINERS: crate::batch::Pool<Event> = crate::batch::Pool::new();

impl crate::batch::Pooled for Event {
    fn pool() -> &'static crate::batch::Pool<Event> {
        &CONTAINERS
    }
}

/// The stable hash that routes a key to its worker.
pub fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

impl Event {
    /// An event that passed decoding at `position`, on time.
    pub fn accepted(decoded: DecodedEvent, position: Position) -> Event {
        let user_hash = key_hash(&decoded.user_id);
        Event {
            event_time: decoded.event_time,
            event_type: decoded.event_type,
            late: false,
            id_key: crate::dedup::id_key(user_hash, &decoded.event_id),
            user_hash,
            user_id: decoded.user_id,
            event_id: decoded.event_id,
            position,
            values: decoded.values,
            late_record: None,
        }
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
        // Routing and checkpoints depend on this value never changing.
        assert_eq!(key_hash("user-1"), xxhash_rust::xxh3::xxh3_64(b"user-1"));
        assert_ne!(key_hash("user-1"), key_hash("user-2"));
    }
}
