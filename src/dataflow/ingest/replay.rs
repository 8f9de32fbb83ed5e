//! Ingest's side of `explain`: a record that cannot be the user's only moves its
//! partition's clock, read without a full decode wherever that is safe.

use std::time::Instant;

use super::decode::{Decoder, MAX_EVENT_TIME, Rejection};
use super::fast::leading_number;
use super::watermark::Clocks;
use crate::model::event::Millis;
use crate::replay::explain::Outcome;

/// Records of other users not decoded yet whose event time, read without a decode,
/// is above their partition's clock: they may move it, if they are valid.
///
/// In a log in time order nearly every record is such a one. Decoding each would cost
/// what a full run's decode costs, so they wait here, and the clock is settled only
/// when it matters: before one of the user's events is judged against it, when the
/// partition ends, and once per batch (so the watermark moves). Settling decodes the
/// waiting records from the highest time down until one is valid: its time is then
/// the clock, and every other waiting record is at or below it. So the clock is
/// exact wherever it decides anything, at about one decode per batch.
pub(super) struct Unverified {
    waiting: Vec<Waiting>,
}

/// One partition's waiting records: their light times and byte ranges in one buffer.
#[derive(Default, Clone)]
struct Waiting {
    times: Vec<(f64, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
}

/// Waiting records per partition before they are settled regardless.
pub(super) const MAX_WAITING: usize = 4096;

impl Unverified {
    /// Nothing waiting in any of `partitions` partitions.
    pub(super) fn new(partitions: usize) -> Unverified {
        Unverified {
            waiting: vec![Waiting::default(); partitions],
        }
    }

    /// A record of another user: its time moves `partition`'s clock now (when it could
    /// not be read without a decode), later (when it may), or never (when it cannot).
    /// Returns its event time when it has one.
    pub(super) fn note(
        &mut self,
        decoder: &Decoder<'_>,
        clocks: &mut Clocks,
        partition: usize,
        bytes: &[u8],
        now: Instant,
    ) -> Option<f64> {
        let Some(t) = light_event_time(bytes) else {
            let time = decoder.decode(bytes).event_time();
            match time {
                Some(t) => drop(clocks.observe(partition, t, now)),
                None => clocks.touch(partition, now),
            }
            return time;
        };
        clocks.touch(partition, now);
        if clocks.clock(partition).is_none_or(|c| t > c) {
            let waiting = &mut self.waiting[partition];
            let start = waiting.bytes.len();
            waiting.bytes.extend_from_slice(bytes);
            waiting.times.push((t, start..waiting.bytes.len()));
            if waiting.times.len() >= MAX_WAITING {
                self.settle(decoder, clocks, partition, now);
            }
        }
        Some(t)
    }

    /// Makes `partition`'s clock exact: the waiting records are decoded from the
    /// highest time down until one is valid (nearly always the first).
    pub(super) fn settle(
        &mut self,
        decoder: &Decoder<'_>,
        clocks: &mut Clocks,
        partition: usize,
        now: Instant,
    ) {
        let Waiting { times, bytes } = &mut self.waiting[partition];
        if times.is_empty() {
            return;
        }
        let Ok(found) = settle(times, clocks.clock(partition), |range| {
            Ok::<_, std::convert::Infallible>(decoder.decode(&bytes[range.clone()]).event_time())
        });
        if let Some(t) = found {
            clocks.observe(partition, t, now);
        }
        bytes.clear();
    }

    /// Settles every partition.
    pub(super) fn settle_all(&mut self, decoder: &Decoder<'_>, clocks: &mut Clocks, now: Instant) {
        for partition in 0..self.waiting.len() {
            self.settle(decoder, clocks, partition, now);
        }
    }
}

/// Settles a clock over waiting records, each its light time and where to find it:
/// from the highest light time down, `event_time` reads a record's valid time (or
/// `None` when it is not valid) until one above `clock` is valid. Returns that time
/// (`None` when none moves the clock) and leaves `waiting` empty.
pub(super) fn settle<W, E>(
    waiting: &mut Vec<(f64, W)>,
    clock: Option<f64>,
    mut event_time: impl FnMut(&W) -> Result<Option<f64>, E>,
) -> Result<Option<f64>, E> {
    let mut found = None;
    while let Some((at, (light, record))) = waiting.iter().enumerate().max_by(|a, b| a.1.0.total_cmp(&b.1.0))
    {
        if clock.is_some_and(|c| *light <= c) {
            break;
        }
        if let Some(t) = event_time(record)? {
            found = Some(t);
            break;
        }
        waiting.swap_remove(at);
    }
    waiting.clear();
    Ok(found)
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
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    if memchr::memchr(b'\\', bytes).is_some() {
        return None;
    }
    let mut found = FINDER.find_iter(bytes);
    let at = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let rest = &bytes[at + KEY.len()..];
    let rest = rest.trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
    // Read as the decode reads it: its exact shortcut, else the standard parser.
    let number = leading_number(rest)?;
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
