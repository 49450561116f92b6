//! Small helpers: the clock the soak stamps everything with, a seeded random number generator
//! (so a failing run can be repeated with `--seed`), and parsers for durations and percentages
//! on the command line.

use std::time::Duration;

pub use baton_tests::player::now_us;

/// A small, fast, seeded PRNG (SplitMix64). Not for cryptography: it only decides what the
/// soak does next, reproducibly for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniform index below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `base` scaled by a uniform factor in `[lo, hi)`.
    pub fn jitter(&mut self, base: Duration, lo: f64, hi: f64) -> Duration {
        base.mul_f64(lo + (hi - lo) * self.unit())
    }

    /// An index into `weights` chosen with probability proportional to its weight, or `None`
    /// if every weight is zero.
    pub fn weighted(&mut self, weights: &[f64]) -> Option<usize> {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total <= 0.0 {
            return None;
        }
        let mut pick = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if *w <= 0.0 {
                continue;
            }
            if pick < *w {
                return Some(i);
            }
            pick -= w;
        }
        weights.iter().rposition(|w| *w > 0.0)
    }
}

/// Parses a duration with a unit: `500ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s, 2m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || !(0.0..=30.0 * 24.0 * 3600.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a percentage, `1%` or `1` (both one percent), into a fraction (0.01).
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches('%').trim();
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage like 1% or 0.5%"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{text:?} is not between 0% and 100%"));
    }
    Ok(value / 100.0)
}

/// Parses a fraction between 0 and 1 (`0.3`), or a percentage (`30%`).
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    if text.trim().ends_with('%') {
        return parse_percent(text);
    }
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a fraction like 0.3 or 30%"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{text:?} is not between 0 and 1"));
    }
    Ok(value)
}

/// The median of `values` (0 for none); sorts a copy.
pub fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => 0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_percentages_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(parse_percent("1%"), Ok(0.01));
        assert_eq!(parse_percent("0.5"), Ok(0.005));
        assert!(parse_percent("150%").is_err());
        assert_eq!(parse_fraction("0.3"), Ok(0.3));
        assert_eq!(parse_fraction("30%"), Ok(0.3));
        assert!(parse_fraction("2").is_err());
    }

    #[test]
    fn rng_is_reproducible_and_weighted_choice_respects_zeros() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            assert_eq!(a.weighted(&[0.0, 2.0, 0.0]), Some(1));
            assert!(a.below(3) < 3);
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(a.weighted(&[0.0, 0.0]), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0);
        assert_eq!(median(&[3, 1, 2]), 2);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
    }
}
