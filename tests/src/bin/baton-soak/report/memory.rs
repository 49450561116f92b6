//! The relay's memory over a run: RSS samples reduced to a trend check ([`Memory`]): the
//! median of the last third of the steady samples against the first third's plus the
//! tolerance. Pure; computed at the end of the run.

use serde::Serialize;

use super::{Settings, MIN_TREND_SAMPLES, SERIES_POINTS, WARM_UP_S};
use crate::util::median;

/// The memory trend.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// First sample, KiB.
    pub start_kib: u64,
    /// Largest sample, KiB.
    pub peak_kib: u64,
    /// Last sample (after the drain), KiB.
    pub end_kib: u64,
    /// Median of the first third of the steady samples, KiB.
    pub first_third_median_kib: u64,
    /// Median of the last third, KiB.
    pub last_third_median_kib: u64,
    /// The most the last third's median may be, KiB.
    pub limit_kib: u64,
    /// Samples in the trend.
    pub trend_samples: usize,
    /// Whether the trend stayed within the limit (true when too short to tell).
    pub ok: bool,
    /// The samples, thinned to at most [`SERIES_POINTS`]: seconds into the run, KiB.
    pub series: Vec<(u64, u64)>,
}

impl Memory {
    /// The trend of `samples` (seconds into the run, KiB) over the churn phase, after the warm-up.
    pub(super) fn from_samples(
        samples: &[(f64, u64)],
        churn_s: f64,
        settings: &Settings,
    ) -> Option<Memory> {
        let first = samples.first()?.1;
        let last = samples.last()?.1;
        let peak = samples.iter().map(|s| s.1).max()?;
        let warm = WARM_UP_S.max(churn_s / 10.0);
        let steady: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| *t >= warm && *t <= churn_s)
            .map(|s| s.1)
            .collect();
        let third = steady.len() / 3;
        let (a, b) = if steady.len() >= MIN_TREND_SAMPLES {
            (
                median(&steady[..third]),
                median(&steady[steady.len() - third..]),
            )
        } else {
            (0, 0)
        };
        let limit =
            (a as f64 * (1.0 + settings.rss_tolerance)) as u64 + settings.rss_slack_mib * 1024;
        Some(Memory {
            start_kib: first,
            peak_kib: peak,
            end_kib: last,
            first_third_median_kib: a,
            last_third_median_kib: b,
            limit_kib: limit,
            trend_samples: steady.len(),
            ok: steady.len() < MIN_TREND_SAMPLES || b <= limit,
            series: samples
                .iter()
                .step_by(samples.len().div_ceil(SERIES_POINTS).max(1))
                .map(|(t, kib)| (*t as u64, *kib))
                .collect(),
        })
    }
}
