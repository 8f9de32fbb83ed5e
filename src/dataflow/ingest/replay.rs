//! Ingest's side of `explain`: a record that cannot be the user's only moves its
//! partition's clock, read without a full decode wherever that is safe.

use std::time::Instant;

use super::decode::{Decoder, MAX_EVENT_TIME, Rejection};
use super::watermark::Clocks;
use crate::model::event::Millis;
use crate::replay::explain::Outcome;

/// Moves `partition`'s clock by a record of another user, and returns its event time
/// when it passed the envelope checks. The full decode runs only when the record's
/// time could move the clock (see [`light_event_time`]).
pub(super) fn clock_only(
    decoder: &Decoder<'_>,
    clocks: &mut Clocks,
    partition: usize,
    bytes: &[u8],
    now: Instant,
) -> Option<f64> {
    if let Some(t) = light_event_time(bytes)
        && clocks.clock(partition).is_some_and(|c| t <= c)
    {
        clocks.touch(partition, now);
        return Some(t);
    }
    let time = decoder.decode(bytes).event_time();
    match time {
        Some(t) => drop(clocks.observe(partition, t, now)),
        None => clocks.touch(partition, now),
    }
    time
}

/// Widens the span of event times read by `time`.
pub(super) fn widen(span: &mut (f64, f64), time: Option<f64>) {
    if let Some(t) = time {
        *span = (span.0.min(t), span.1.max(t));
    }
}

/// What a record refused before the fold came to.
pub(super) fn rejected(rejection: &Rejection) -> Outcome {
    Outcome::Rejected {
        reason: rejection.reason.as_str().to_owned(),
        detail: rejection.detail.clone(),
    }
}

/// How far a late event was behind: its partition's clock (before it) minus the
/// lateness, or the watermark, whichever is later.
pub(super) fn late_by(clock: Option<f64>, watermark: Millis, lateness: f64, event_time: f64) -> f64 {
    let bound = clock.map_or(f64::NEG_INFINITY, |c| c - lateness);
    (bound.max(watermark as f64 / 1000.0) - event_time).max(0.0)
}

/// A record's top-level `event_time`, read without decoding the record, or `None`
/// when that cannot be done safely (an escape anywhere, the key more than once or not
/// at all, a value that is not a plain number in range). When the record is valid,
/// the value is exactly what the full decode reads; when it is not, it may be
/// anything, so a caller may only use it to skip a record that could not move its
/// partition's clock (a value at or below the clock), never to move the clock.
pub(super) fn light_event_time(bytes: &[u8]) -> Option<f64> {
    const KEY: &[u8] = b"\"event_time\"";
    if memchr::memchr(b'\\', bytes).is_some() {
        return None;
    }
    let mut found = memchr::memmem::find_iter(bytes, KEY);
    let at = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let rest = &bytes[at + KEY.len()..];
    let rest = rest.trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
    let end = rest
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(rest.len());
    let number: f64 = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    (number.is_finite() && (0.0..MAX_EVENT_TIME).contains(&number)).then_some(number + 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_light_read_agrees_with_the_decode_or_declines() {
        let line = |time: &str| {
            format!(
                r#"{{"event_id":"e","event_type":"session.started","event_version":"1.0","event_time":{time},"user_id":"u"}}"#
            )
        };
        for time in ["0", "12.5", "1e3", "1700000000.123456789", "-0"] {
            let expected: f64 = time.parse().unwrap();
            assert_eq!(
                light_event_time(line(time).as_bytes()),
                Some(expected + 0.0),
                "{time}"
            );
        }
        for time in ["\"12\"", "true", "-1", "1e400", "null"] {
            assert_eq!(light_event_time(line(time).as_bytes()), None, "{time}");
        }
        // Escapes, a second key, no key: the full decode decides.
        assert_eq!(light_event_time(br#"{"event\u005ftime":1}"#), None);
        assert_eq!(
            light_event_time(br#"{"event_time":1,"payload":{"event_time":2}}"#),
            None
        );
        assert_eq!(light_event_time(br#"{"event_id":"e"}"#), None);
        assert_eq!(light_event_time(br#"{"event_time" :  7 }"#), Some(7.0));
    }
}
