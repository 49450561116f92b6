//! What the soak prints: a progress line now and then, and at the end a summary with every
//! check's verdict, as text or JSON.
//!
//! Files: [`judge`] (the verdicts, [`Summary::build`]), [`memory`] (the RSS trend), `json` and `text` (the two
//! forms). The monitor ([`Monitor`]) samples on its own task; the rest runs at the end.

mod json;
mod judge;
mod memory;
mod text;

use serde::Serialize;
use serde_json::{json, Value};

use crate::relay::{LogScan, Relay};
use crate::state::{Check, Ctx};
use baton_tests::relay_process::Metrics;

/// RSS samples kept at most (one a second: more than a day).
const MAX_RSS_SAMPLES: usize = 100_000;
/// RSS samples of the first part of the run are left out of the trend: the relay is still
/// filling up with the first games (at least this many seconds, or a tenth of the run).
const WARM_UP_S: f64 = 5.0;
/// Fewer samples than this in the steady part make no trend.
const MIN_TREND_SAMPLES: usize = 6;
/// Points of the RSS series in the JSON summary.
const SERIES_POINTS: usize = 120;
/// A run at least this long must have exercised migrations, crashes and every expiry.
const COVERAGE_MIN_S: f64 = 30.0;

/// The monitor's findings: the relay itself, its logs, its memory.
pub struct Monitor {
    /// The relay process.
    pub relay: Relay,
    /// Its logs so far.
    pub scan: LogScan,
    /// RSS samples: seconds into the run, KiB.
    pub rss: Vec<(f64, u64)>,
    /// Set if the relay exited during the run.
    pub relay_exited: Option<String>,
}

impl Monitor {
    /// Takes one RSS sample.
    pub fn sample_rss(&mut self, ctx: &Ctx) {
        if self.rss.len() < MAX_RSS_SAMPLES && self.relay_exited.is_none() {
            if let Some(kib) = self.relay.rss_kib() {
                self.rss.push((ctx.elapsed_s(), kib));
            }
        }
    }

    /// Reads new log lines; every unexpected one is a failure.
    pub fn scan_logs(&mut self, ctx: &Ctx) {
        for line in self.scan.scan(&self.relay) {
            ctx.fail(Check::RelayHealth, format!("relay logged: {line}"));
        }
    }
}

/// The relay's state after everyone left.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Drain {
    /// Allocations `GET /v1/allocations` listed.
    pub admin_allocations: Option<usize>,
    /// `baton_allocations`.
    pub metrics_allocations: Option<f64>,
    /// `baton_connections`.
    pub metrics_connections: Option<f64>,
    /// Seconds until both showed nothing, if they did.
    pub took_s: Option<f64>,
    /// The first allocations still listed.
    pub leftovers: Vec<Value>,
    /// Why an answer could not be read.
    pub error: Option<String>,
    /// Counters by label from the last metrics read.
    #[serde(skip)]
    pub metrics: Option<Metrics>,
}

impl Drain {
    /// From one round of answers.
    pub fn from_answers(
        allocations: anyhow::Result<Vec<Value>>,
        metrics: anyhow::Result<Metrics>,
    ) -> Drain {
        let mut drain = Drain::default();
        let mut errors = Vec::new();
        match allocations {
            Ok(list) => {
                drain.admin_allocations = Some(list.len());
                drain.leftovers = list.into_iter().take(5).collect();
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
        match metrics {
            Ok(m) => {
                drain.metrics_allocations = m.get("baton_allocations");
                drain.metrics_connections = m.get("baton_connections");
                if drain.metrics_allocations.is_none() || drain.metrics_connections.is_none() {
                    errors.push("/metrics lacks baton_allocations or baton_connections".to_owned());
                }
                drain.metrics = Some(m);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
        if !errors.is_empty() {
            drain.error = Some(errors.join("; "));
        }
        drain
    }

    /// Whether the admin API and the metrics agree the relay holds nothing.
    pub fn empty(&self) -> bool {
        self.admin_allocations == Some(0)
            && self.metrics_allocations == Some(0.0)
            && self.metrics_connections == Some(0.0)
    }

    /// What the relay still holds, for a failure message.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "admin API: {:?} allocations; metrics: baton_allocations {:?}, baton_connections {:?}",
            self.admin_allocations, self.metrics_allocations, self.metrics_connections
        );
        if !self.leftovers.is_empty() {
            out.push_str(&format!(
                "; first listed: {}",
                Value::from(self.leftovers.clone())
            ));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("; errors: {e}"));
        }
        out
    }
}

/// The run's settings, as the summary shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Random seed.
    pub seed: u64,
    /// Churn phase, s.
    pub duration_s: f64,
    /// Games at once.
    pub allocations: usize,
    /// Peers per game at its start.
    pub peers: usize,
    /// Ticks per second.
    pub rate: u32,
    /// Payload bytes.
    pub payload: usize,
    /// Mean time between membership actions per game, s.
    pub churn_every_s: f64,
    /// Share of clients in their own process.
    pub process_fraction: f64,
    /// Relay keepalive timeout, s.
    pub keepalive_timeout_s: f64,
    /// Loss threshold (fraction).
    pub max_loss: f64,
    /// RSS tolerance (fraction).
    pub rss_tolerance: f64,
    /// RSS slack, MiB.
    pub rss_slack_mib: u64,
    /// Migration bound, s.
    pub migration_bound_s: f64,
    /// Mean time between expiry probes, s.
    pub expiry_every_s: f64,
}

/// Percentiles of a histogram.
fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!(null);
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
    })
}

/// The end of a run.
pub struct Summary {
    /// Whether every check passed.
    pub ok: bool,
    json: Value,
    text: String,
}

impl Summary {
    /// The summary as JSON.
    pub fn to_json(&self) -> Value {
        self.json.clone()
    }

    /// The summary as text.
    pub fn to_text(&self) -> String {
        self.text.trim_end().to_owned()
    }
}

/// `p50/p99/max` of a histogram, or `-`.
fn hist_triplet(h: &hdrhistogram::Histogram<u64>) -> String {
    if h.is_empty() {
        "-".to_owned()
    } else {
        format!(
            "{}/{}/{}",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        )
    }
}

/// KiB to MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One progress line.
pub async fn progress_line(ctx: &Ctx, monitor: &Monitor) -> String {
    let s = &ctx.stats;
    let relay = match ctx.api.metrics().await {
        Ok(m) => format!(
            "relay {} allocs {} conns",
            m.get("baton_allocations").unwrap_or(-1.0),
            m.get("baton_connections").unwrap_or(-1.0)
        ),
        Err(_) => "relay metrics unavailable".to_owned(),
    };
    let rss = monitor
        .rss
        .last()
        .map_or_else(|| "?".to_owned(), |(_, kib)| format!("{:.1}", mib(*kib)));
    let received = s.received.get();
    let lost = s.lost_steady.get();
    let loss = if received + lost == 0 {
        0.0
    } else {
        lost as f64 * 100.0 / (received + lost) as f64
    };
    format!(
        "[{:>7.1}s] games {} | joins {} leaves {} host exits {} crashes {} rejoins {} | migrations {} | datagrams sent {} recv {} lost {} ({loss:.3}%) +{} churn | expiries {} | {relay}, RSS {rss} MiB | failures {}",
        ctx.elapsed_s(),
        s.games_started.get(),
        s.joins.get(),
        s.leaves.get(),
        s.host_closes.get(),
        s.host_crashes.get() + s.peer_crashes.get(),
        s.rejoins.get(),
        s.migrations.get(),
        s.sent.get(),
        received,
        lost,
        s.lost_churn.get(),
        s.bind_expiries.get() + s.code_expiries.get() + s.reservation_expiries.get(),
        ctx.failures.total()
    )
}
