//! Typed durations for job files and flags: `"250ms"`, `"5s"`, `"10m"`, `"24h"`, `"7d"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A non-negative span of time written with a unit, as job files and flags take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

impl Span {
    /// A span of whole seconds.
    pub const fn secs(secs: u64) -> Span {
        Span(Duration::from_secs(secs))
    }

    /// The span in (fractional) seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }

    /// The span as a standard duration.
    pub fn duration(self) -> Duration {
        self.0
    }
}

/// The longest span taken: 10,000 years, longer than any event time can be apart
/// (event times end before the year 10000), and short enough that every
/// millisecond computation on it stays exact.
pub const MAX_SPAN_SECS: f64 = 10_000.0 * 365.25 * 86_400.0;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    /// Not a number and a unit.
    #[error(
        "invalid duration `{0}`: write a number and a unit, as in \"250ms\", \"5s\", \"10m\", \"24h\" or \"7d\""
    )]
    Invalid(String),
    /// Longer than [`MAX_SPAN_SECS`].
    #[error("duration `{0}` is longer than 10000 years")]
    TooLong(String),
}

impl FromStr for Span {
    type Err = SpanError;

    fn from_str(text: &str) -> Result<Span, SpanError> {
        let err = || SpanError::Invalid(text.to_owned());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let (number, unit) = trimmed.split_at(split);
        let number: f64 = number.parse().map_err(|_| err())?;
        let scale = match unit.trim() {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(err()),
        };
        let secs = number * scale;
        if !secs.is_finite() || secs < 0.0 {
            return Err(err());
        }
        if secs > MAX_SPAN_SECS {
            return Err(SpanError::TooLong(text.to_owned()));
        }
        Duration::try_from_secs_f64(secs).map(Span).map_err(|_| err())
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(86_400_000) && ms > 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        struct SpanVisitor;
        impl Visitor<'_> for SpanVisitor {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(SpanVisitor)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_nonsense() {
        assert_eq!("5s".parse::<Span>().unwrap(), Span::secs(5));
        assert_eq!("250ms".parse::<Span>().unwrap().0, Duration::from_millis(250));
        assert_eq!("24h".parse::<Span>().unwrap(), Span::secs(86_400));
        assert_eq!("1.5m".parse::<Span>().unwrap(), Span::secs(90));
        assert_eq!("7d".parse::<Span>().unwrap(), Span::secs(7 * 86_400));
        for bad in ["5", "s", "5x", "-1s", "", "1..2s"] {
            assert!(bad.parse::<Span>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn huge_spans_are_refused_not_a_panic() {
        for huge in [
            "99999999999999999999d",
            "1e400s",
            "3660000d",
            "18446744073709551616s",
        ] {
            let error = huge.parse::<Span>().unwrap_err().to_string();
            assert!(error.contains(huge), "{error}");
        }
        assert_eq!(
            "99999999999999999999d".parse::<Span>(),
            Err(SpanError::TooLong("99999999999999999999d".into()))
        );
        assert!(
            "3650000d".parse::<Span>().is_ok(),
            "10000 years minus a little is fine"
        );
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(Span::secs(86_400).to_string(), "1d");
        assert_eq!(Span::secs(5).to_string(), "5s");
        assert_eq!(Span(Duration::from_millis(1500)).to_string(), "1500ms");
    }
}
