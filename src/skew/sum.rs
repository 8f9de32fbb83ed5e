//! The skew report's sums (absolute differences, SMAPE, Jaccard overlaps) held
//! exactly, so that they add up to the same value in any order: the workers' counters
//! meet in whatever order and batches the run's timing gives, and float addition is
//! not associative (summed as floats, a report's means differed in their last digit
//! from one run of the same log to the next).

use serde::{Deserialize, Serialize};

/// A sum of non-negative floats, held as a 256-bit count of 2^-128. Each term is
/// rounded to that quantum (terms from 2^-76, 1.3e-23, up are exact, so the SMAPE of
/// two numbers one bit apart still counts; smaller ones are off by at most 2^-129) and
/// the count adds exactly, so the sum is the same in any order. A term or sum of
/// 2^128 (3.4e38) or more, and a term that is infinite, NaN or negative (none of the
/// report's measures is), saturates to infinity, which no later term changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExactSum {
    hi: u128,
    lo: u128,
}

/// Fraction bits of the quantum (2^-128): `hi` holds the whole part, `lo` the fraction.
const FRACTION: i32 = 128;

impl ExactSum {
    /// The saturated sum: infinity.
    const INFINITE: ExactSum = ExactSum {
        hi: u128::MAX,
        lo: u128::MAX,
    };

    /// The sum of one term.
    pub fn of(x: f64) -> ExactSum {
        if x == 0.0 {
            return ExactSum::default();
        }
        if !x.is_finite() || x < 0.0 {
            return ExactSum::INFINITE;
        }
        // x = mantissa * 2^exponent.
        let bits = x.to_bits();
        let biased = ((bits >> 52) & 0x7ff) as i32;
        let fraction = bits & ((1 << 52) - 1);
        let (mantissa, exponent) = match biased {
            0 => (fraction, -1074),
            _ => (fraction | (1 << 52), biased - 1075),
        };
        let shift = exponent + FRACTION;
        if shift >= 0 {
            // The mantissa has 53 bits: it fits 256 bits shifted by up to 203.
            let (m, s) = (u128::from(mantissa), shift as u32);
            match s {
                0..128 => ExactSum {
                    hi: if s == 0 { 0 } else { m >> (128 - s) },
                    lo: m << s,
                },
                128..=203 => ExactSum {
                    hi: m << (s - 128),
                    lo: 0,
                },
                _ => ExactSum::INFINITE,
            }
        } else {
            // Rounded to the nearest quantum, ties to even.
            let r = -shift as u32;
            if r > 54 {
                return ExactSum::default();
            }
            let (quotient, remainder, half) = (mantissa >> r, mantissa & ((1 << r) - 1), 1 << (r - 1));
            let up = remainder > half || (remainder == half && quotient & 1 == 1);
            ExactSum {
                hi: 0,
                lo: u128::from(quotient + u64::from(up)),
            }
        }
    }

    /// Adds `other`, saturating to infinity.
    pub fn add(&mut self, other: &ExactSum) {
        let (lo, carry) = self.lo.overflowing_add(other.lo);
        *self = match self
            .hi
            .checked_add(other.hi)
            .and_then(|hi| hi.checked_add(u128::from(carry)))
        {
            Some(hi) => ExactSum { hi, lo },
            None => ExactSum::INFINITE,
        };
    }

    /// The sum as a float: the exact sum rounded once (to nearest, ties to even), so
    /// the same in any order.
    pub fn to_f64(self) -> f64 {
        if self == ExactSum::INFINITE {
            return f64::INFINITY;
        }
        if self.hi == 0 {
            return self.lo as f64 * 2f64.powi(-FRACTION);
        }
        // The top 128 bits, with any bit below them folded into the last one (it only
        // decides a tie), converted in one rounding and scaled by a power of two.
        let shift = self.hi.leading_zeros();
        let (top, rest) = match shift {
            0 => (self.hi, self.lo),
            _ => ((self.hi << shift) | (self.lo >> (128 - shift)), self.lo << shift),
        };
        (top | u128::from(rest != 0)) as f64 * 2f64.powi(128 - FRACTION - shift as i32)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sum<'a>(terms: impl IntoIterator<Item = &'a f64>) -> ExactSum {
        terms.into_iter().fold(ExactSum::default(), |mut s, x| {
            s.add(&ExactSum::of(*x));
            s
        })
    }

    #[test]
    fn terms_are_exact_down_to_the_quantum_and_round_below_it() {
        for x in [
            1.0,
            0.5,
            2.0 / 3.0,
            0.1,
            1e-3,
            1.7e9,
            123_456.789,
            1e38,
            f64::MAX / 2f64.powi(896),
            1e-13,
            3e-23,
        ] {
            assert_eq!(ExactSum::of(x).to_f64(), x, "{x}");
        }
        assert_eq!(ExactSum::of(2f64.powi(-128)).lo, 1);
        // Below half a quantum is nothing; half rounds to even; above half is one.
        assert_eq!(ExactSum::of(2f64.powi(-130)), ExactSum::default());
        assert_eq!(ExactSum::of(2f64.powi(-129)), ExactSum::default());
        assert_eq!(ExactSum::of(1.5 * 2f64.powi(-128)).lo, 2);
        assert_eq!(ExactSum::of(0.75 * 2f64.powi(-128)).lo, 1);
        assert_eq!(ExactSum::of(f64::MIN_POSITIVE), ExactSum::default());
        // What a float sum loses, the exact one keeps.
        assert_eq!((1e16 + 1.0) - 1e16, 0.0);
        assert_eq!(sum(&[1e16, 1.0, 1.0]).to_f64(), 1e16 + 2.0);
        // Rounded once: a tie broken by a bit far below it.
        let (ulp, tiny) = (2f64.powi(-52), 2f64.powi(-128));
        assert_eq!(sum(&[1.0, ulp / 2.0, tiny]).to_f64(), 1.0 + ulp);
        assert_eq!(sum(&[1.0, ulp / 2.0]).to_f64(), 1.0);
        assert_eq!(
            sum(&[2f64.powi(100), 2f64.powi(47), tiny]).to_f64(),
            2f64.powi(100) + 2f64.powi(48)
        );
    }

    #[test]
    fn too_large_infinite_and_nan_terms_saturate_and_stay_saturated() {
        for x in [2f64.powi(128), f64::MAX, f64::INFINITY, f64::NAN, -1.0] {
            assert_eq!(ExactSum::of(x).to_f64(), f64::INFINITY, "{x}");
        }
        let mut s = ExactSum::of(f64::INFINITY);
        s.add(&ExactSum::of(1.0));
        assert_eq!(s.to_f64(), f64::INFINITY);
        // Sums stay exact below 2^128 and saturate there.
        let mut s = ExactSum::default();
        for _ in 0..(1 << 10) {
            s.add(&ExactSum::of(2f64.powi(116)));
        }
        assert_eq!(s.to_f64(), 2f64.powi(126));
        let half = ExactSum { hi: 1 << 127, lo: 0 };
        assert_eq!(half.to_f64(), 2f64.powi(127));
        let mut full = half;
        full.add(&half);
        assert_eq!(full.to_f64(), f64::INFINITY);
        assert_eq!(ExactSum::of(0.0), ExactSum::default());
        assert_eq!(ExactSum::of(-0.0), ExactSum::default());
    }

    fn term() -> impl Strategy<Value = f64> {
        prop_oneof![
            0.0..2.0f64,
            (1e-30..1e-3f64),
            (1e3..1e15f64),
            Just(1.0 / 3.0),
            Just(0.1),
        ]
    }

    proptest! {
        /// The same terms give the same sum however they are ordered and grouped
        /// (a worker's batch sums, then the totals), and it is the float sum's value
        /// to within the float sum's own error.
        #[test]
        fn any_order_and_grouping_gives_the_same_sum(
            terms in proptest::collection::vec(term(), 0..200),
            seed in any::<u64>(),
            chunk in 1usize..17,
        ) {
            let whole = sum(&terms);
            let mut shuffled = terms.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let grouped = shuffled.chunks(chunk).map(sum).fold(ExactSum::default(), |mut s, c| {
                s.add(&c);
                s
            });
            prop_assert_eq!(grouped, whole);
            prop_assert_eq!(grouped.to_f64().to_bits(), whole.to_f64().to_bits());
            let float: f64 = terms.iter().sum();
            let magnitude: f64 = terms.iter().map(|x| x.abs()).sum();
            prop_assert!((whole.to_f64() - float).abs() <= 1e-12 * magnitude + 1e-15);
        }
    }
}
