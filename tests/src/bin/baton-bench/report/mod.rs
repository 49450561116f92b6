//! What the bench reports, as JSON (`--json`) and as human tables, and the progress line it
//! writes on stderr while it runs.
//!
//! The report is plain data: the benchmarks (`load`, `churn`, `idle`, on the generator
//! runtime) fill in their sections of one [`Report`], and `main` prints it once at the end,
//! with `serde_json` or [`print_human`]. By concern:
//!
//! - this module: the whole [`Report`], the [`Machine`], and the [`Latency`] percentiles every
//!   section uses;
//! - `traffic`: one traffic run, [`TrafficReport`], derived from raw [`RunFigures`];
//! - `saturation`: which side ran out first (a run's `saturated` field);
//! - `load`: the load section, [`LoadReport`]: cases, ceiling ratios, `--find-max` steps;
//! - `churn` and `idle`: the control-plane sections ([`ChurnReport`], [`JoinReport`]) and the
//!   idle-client one ([`IdleReport`]);
//! - `fleet`: the fleet section ([`FleetReport`]): joins through a redirect, relocation and
//!   drain times, with its own human rendering;
//! - `human`: the tables printed without `--json`;
//! - `progress`: the [`Progress`] line and [`note`]s on stderr.

mod churn;
mod fleet;
mod human;
mod idle;
mod load;
mod progress;
mod saturation;
mod traffic;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use self::churn::{ChurnReport, JoinReport};
pub use self::fleet::{in_units, DrainCpu, DrainReport, FleetJoinReport, FleetReport};
pub use self::human::print_human;
pub use self::idle::{HeartbeatCost, IdleReport, IdleRound};
pub use self::load::{CaseReport, FindMaxReport, LoadReport, MaxSearch, Ratio, Step};
pub use self::progress::{note, Progress};
pub use self::traffic::{RunFigures, ServerMetrics, TrafficReport};

/// Loss below this (percent) passes; `--find-max` looks for the highest rate under it.
pub const LOSS_THRESHOLD_PCT: f64 = 0.1;

/// The whole report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Where and when it ran.
    pub machine: Machine,
    /// The load run, with its ceiling comparison and `--find-max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadReport>,
    /// `table` only: the load run again at half of Baton's loss-free rate from `load`'s
    /// `--find-max` (the operating point of the latency target), all relays at that rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_at_half_max: Option<LoadReport>,
    /// Allocation churn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnReport>,
    /// Join-by-code latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinReport>,
    /// Idle clients held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleReport>,
    /// A fleet of nodes: joins through a redirect, relocation and drain times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
    /// Correctness problems found (misdelivery, duplicates, spoofed sources, failed set-ups,
    /// memory growing from round to round); any makes the exit status 1.
    pub errors: Vec<String>,
    /// Findings that do not fail the run (e.g. relay memory not returning to its start).
    pub warnings: Vec<String>,
}

/// The machine the bench ran on.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    /// CPUs available.
    pub cpus: usize,
    /// 1-minute load average when the bench started (other work on the machine).
    pub load_average_at_start: Option<f64>,
    /// Worker threads of the load generator's runtime.
    pub generator_threads: usize,
    /// QUIC client endpoints (UDP sockets) of the load generator.
    pub generator_endpoints: usize,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Values recorded.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}
