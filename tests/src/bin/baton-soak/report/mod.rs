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

/// A node taking one allocation over more often than this is looping (one takeover per
/// member coming back is expected).
const TAKEOVER_LIMIT: u64 = 64;
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

/// What became of a relay node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Running and taking clients.
    Live,
    /// Told to drain; it exits by itself once empty.
    Draining,
    /// Drained and exited, with this status.
    Drained(String),
    /// Killed by the soak (SIGKILL).
    Killed,
    /// Exited on its own during the run: a failure.
    Died(String),
}

/// One relay process (a node of the fleet, or the relay alone) and what was seen of it.
pub struct NodeMon {
    /// Its node id (`relay` for a relay alone).
    pub id: String,
    /// The process.
    pub relay: Relay,
    /// Its logs so far.
    pub scan: LogScan,
    /// RSS samples: seconds into the run, KiB.
    pub rss: Vec<(f64, u64)>,
    /// When it started, seconds into the run.
    pub started_s: f64,
    /// What became of it.
    pub fate: Fate,
    /// How it ended when the soak stopped it at the end.
    pub stopped: Option<String>,
    /// Allocations already reported as taken over too often.
    pub takeover_loops: Vec<String>,
}

impl NodeMon {
    /// A node that has just started.
    pub fn new(id: String, relay: Relay, started_s: f64) -> NodeMon {
        NodeMon {
            id,
            relay,
            scan: LogScan::default(),
            rss: Vec::new(),
            started_s,
            fate: Fate::Live,
            stopped: None,
            takeover_loops: Vec::new(),
        }
    }

    /// Why it exited during the run, if it did so on its own.
    pub fn died(&self) -> Option<&str> {
        match &self.fate {
            Fate::Died(what) => Some(what),
            _ => None,
        }
    }

    /// Whether it is still running at the end (neither drained nor killed nor dead).
    pub fn surviving(&self) -> bool {
        self.fate == Fate::Live
    }
}

/// The monitor's findings: the relay processes, their logs, their memory.
pub struct Monitor {
    /// Every relay process started, in order (one without a fleet).
    pub nodes: Vec<NodeMon>,
    /// Whether they form a fleet.
    pub fleet: bool,
}

impl Monitor {
    /// The first relay started (the relay, without a fleet).
    pub fn primary(&self) -> &NodeMon {
        &self.nodes[0]
    }

    /// Checks every node is up (unless drained or killed), and notes how drained ones exited.
    pub async fn check_alive(&mut self, ctx: &Ctx) {
        let fleet = self.fleet;
        for node in &mut self.nodes {
            match node.fate {
                Fate::Live if !node.relay.alive() => {
                    let status = node.relay.stop().await;
                    let what = if fleet {
                        format!("node {} exited during the run ({status})", node.id)
                    } else {
                        format!("the relay process exited during the run ({status})")
                    };
                    ctx.fail(Check::RelayHealth, what.clone());
                    node.fate = Fate::Died(what);
                    ctx.abort();
                }
                Fate::Draining => {
                    if let Some(status) = node.relay.exit_status() {
                        if !status.success() {
                            ctx.fail(
                                Check::RelayHealth,
                                format!("drained node {} exited with {status}", node.id),
                            );
                        }
                        node.fate = Fate::Drained(status.to_string());
                    }
                }
                _ => {}
            }
        }
    }

    /// Takes one RSS sample of every running node.
    pub fn sample_rss(&mut self, ctx: &Ctx) {
        for node in &mut self.nodes {
            if node.rss.len() < MAX_RSS_SAMPLES && matches!(node.fate, Fate::Live) {
                if let Some(kib) = node.relay.rss_kib() {
                    node.rss.push((ctx.elapsed_s(), kib));
                }
            }
        }
    }

    /// Reads new log lines; every unexpected one is a failure, and so is a node taking one
    /// allocation over again and again.
    pub fn scan_logs(&mut self, ctx: &Ctx) {
        let fleet = self.fleet;
        for node in &mut self.nodes {
            for line in node.scan.scan(&node.relay) {
                if fleet {
                    ctx.fail(
                        Check::RelayHealth,
                        format!("node {} logged: {line}", node.id),
                    );
                } else {
                    ctx.fail(Check::RelayHealth, format!("relay logged: {line}"));
                }
            }
            let looping: Vec<(String, u64)> = node
                .scan
                .takeovers
                .iter()
                .filter(|(a, n)| **n > TAKEOVER_LIMIT && !node.takeover_loops.contains(a))
                .map(|(a, n)| (a.clone(), *n))
                .collect();
            for (alloc, n) in looping {
                ctx.fail(
                    Check::RelayHealth,
                    format!(
                        "node {} logged \"{}\" for allocation {alloc} {n} times so far (a takeover loop)",
                        node.id,
                        crate::relay::TAKEOVER_MESSAGE
                    ),
                );
                node.takeover_loops.push(alloc);
            }
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

    /// One drain of the relays' drains (`(node id, drain)`): sums, every node's leftovers and
    /// errors named by node. The relay's own metrics are kept only for a relay alone.
    pub fn merge(drains: Vec<(String, Drain)>, fleet: bool) -> Drain {
        if !fleet {
            return drains
                .into_iter()
                .next()
                .map(|(_, d)| d)
                .unwrap_or_default();
        }
        let mut out = Drain {
            admin_allocations: Some(0),
            metrics_allocations: Some(0.0),
            metrics_connections: Some(0.0),
            ..Drain::default()
        };
        let mut errors = Vec::new();
        for (id, d) in drains {
            out.admin_allocations = out
                .admin_allocations
                .zip(d.admin_allocations)
                .map(|(a, b)| a + b);
            out.metrics_allocations = out
                .metrics_allocations
                .zip(d.metrics_allocations)
                .map(|(a, b)| a + b);
            out.metrics_connections = out
                .metrics_connections
                .zip(d.metrics_connections)
                .map(|(a, b)| a + b);
            out.leftovers.extend(d.leftovers.into_iter().take(5));
            if let Some(e) = d.error {
                errors.push(format!("node {id}: {e}"));
            }
        }
        if !errors.is_empty() {
            out.error = Some(errors.join("; "));
        }
        out
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

/// What became of a node, in a few words.
fn fate_text(node: &NodeMon) -> String {
    match &node.fate {
        Fate::Live => match &node.stopped {
            Some(how) => format!("ran to the end, stopped: {how}"),
            None => "running".to_owned(),
        },
        Fate::Draining => "draining".to_owned(),
        Fate::Drained(status) => format!("drained, exited: {status}"),
        Fate::Killed => "killed (SIGKILL)".to_owned(),
        Fate::Died(what) => what.clone(),
    }
}

/// KiB to MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One progress line.
pub async fn progress_line(ctx: &Ctx, monitor: &Monitor) -> String {
    let s = &ctx.stats;
    let mut relay = Vec::new();
    for node in ctx.live_nodes() {
        let label = if ctx.fleet {
            format!("node {} ", node.id)
        } else {
            "relay ".to_owned()
        };
        relay.push(match node.api.metrics().await {
            Ok(m) => format!(
                "{label}{} allocs {} conns",
                m.get("baton_allocations").unwrap_or(-1.0),
                m.get("baton_connections").unwrap_or(-1.0)
            ),
            Err(_) => format!("{label}metrics unavailable"),
        });
    }
    let relay = relay.join(", ");
    let rss = monitor
        .nodes
        .iter()
        .filter(|n| n.surviving())
        .map(|n| {
            n.rss
                .last()
                .map_or_else(|| "?".to_owned(), |(_, kib)| format!("{:.1}", mib(*kib)))
        })
        .collect::<Vec<_>>()
        .join("/");
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
    ) + &fleet_progress(ctx)
}

/// The fleet's part of a progress line (empty without a fleet).
fn fleet_progress(ctx: &Ctx) -> String {
    if !ctx.fleet {
        return String::new();
    }
    let s = &ctx.stats;
    format!(
        " | nodes: {} drained, {} killed; games relocated {}, resumed {}",
        s.node_drains.get(),
        s.node_kills.get(),
        s.relocations.get(),
        s.resumes.get()
    )
}
