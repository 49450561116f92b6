//! Parsers for the values settings take on the command line and in the config file:
//! [`parse_duration`] (and [`HumanDuration`], its serde form), [`parse_level`] and
//! [`parse_webhook_url`]. Pure functions; `cli::kind` plugs them into clap and serde.

use std::time::Duration;

use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use crate::hooks::Url;

/// A duration written with a unit in the config file (`"10s"`), parsed by [`parse_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a webhook URL: absolute, http or https, with a host.
pub fn parse_webhook_url(s: &str) -> Result<Url, String> {
    // The raw text is not echoed: a URL may carry a token.
    let url = Url::parse(s.trim()).map_err(|e| format!("invalid webhook URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "webhook URL {} must use http or https",
            crate::hooks::redact(&url)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "webhook URL {} has no host",
            crate::hooks::redact(&url)
        ));
    }
    Ok(url)
}

/// Parses a duration with units: `500ms`, `10s`, `2m`, `1h`, `1d`, or a sum such as `1m30s`.
/// A bare number is refused: `10` could mean seconds or milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let hint = "use a number with a unit: 500ms, 10s, 2m, 1h, 1d";
    if s.is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {s:?}; {hint}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {s:?} is too long"))?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_end].trim();
        rest = &rest[unit_end..];
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("duration {s:?} has no unit; {hint}")),
            other => return Err(format!("unknown unit {other:?} in duration {s:?}; {hint}")),
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a log level name (case-insensitive).
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::OFF),
        "error" => Ok(LevelFilter::ERROR),
        "warn" => Ok(LevelFilter::WARN),
        "info" => Ok(LevelFilter::INFO),
        "debug" => Ok(LevelFilter::DEBUG),
        "trace" => Ok(LevelFilter::TRACE),
        _ => Err(format!(
            "unknown log level {s:?}; use off, error, warn, info, debug or trace"
        )),
    }
}
