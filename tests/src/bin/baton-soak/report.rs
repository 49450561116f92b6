//! What the soak prints: a progress line now and then, and at the end a summary with every
//! check's verdict, as text or JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::relay::{LogScan, Relay};
use crate::state::{lock, Check, Ctx};
use crate::util::median;
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
    fn from_samples(samples: &[(f64, u64)], churn_s: f64, settings: &Settings) -> Option<Memory> {
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
    /// Judges the run and prepares both forms of the summary.
    pub fn build(
        ctx: &Ctx,
        settings: &Settings,
        monitor: &Monitor,
        drain: &Drain,
        churn_s: f64,
        relay_stopped: String,
        kept_dir: Option<std::path::PathBuf>,
    ) -> Summary {
        let s = &ctx.stats;
        let received = s.received.get();
        let lost = s.lost_steady.get();
        let loss = if received + lost == 0 {
            0.0
        } else {
            lost as f64 / (received + lost) as f64
        };
        if loss > settings.max_loss {
            ctx.fail(
                Check::Loss,
                format!(
                    "{:.3}% of datagrams lost between membership changes ({lost} of {}), above {:.3}%; first: {:?}",
                    loss * 100.0,
                    received + lost,
                    settings.max_loss * 100.0,
                    lock(&ctx.loss_examples)
                ),
            );
        }
        let memory = Memory::from_samples(&monitor.rss, churn_s, settings);
        match &memory {
            Some(m) if !m.ok => ctx.fail(
                Check::Memory,
                format!(
                    "relay RSS grew from a median of {} KiB (first third) to {} KiB (last third), above the limit {} KiB",
                    m.first_third_median_kib, m.last_third_median_kib, m.limit_kib
                ),
            ),
            Some(_) => {}
            None => ctx.fail(Check::Memory, "no RSS sample of the relay could be taken"),
        }
        if churn_s >= COVERAGE_MIN_S {
            let mut missing = Vec::new();
            if s.migrations.get() == 0 {
                missing.push("a host migration");
            }
            if settings.process_fraction > 0.0 && s.host_crashes.get() == 0 {
                missing.push("a killed host");
            }
            if s.bind_expiries.get() == 0 {
                missing.push("a bind timeout");
            }
            if s.code_expiries.get() == 0 {
                missing.push("an expired join code");
            }
            if s.reservation_expiries.get() == 0 {
                missing.push("an expired reservation");
            }
            if s.joins.get() == 0 || s.leaves.get() == 0 {
                missing.push("joins and leaves");
            }
            if !missing.is_empty() {
                ctx.fail(
                    Check::Coverage,
                    format!(
                        "a {churn_s:.0} s run should have exercised: {}",
                        missing.join(", ")
                    ),
                );
            }
        }
        let migration_ms = lock(&ctx.migration_ms).clone();
        let latency = lock(&ctx.latency).clone();
        let relay_drops = lock(&s.relay_drops).clone();
        let metrics = drain.metrics.clone().unwrap_or_default();
        let relay_counts = json!({
            "members_left": metrics.by_label("baton_members_left_total", "reason"),
            "requests_refused": metrics.by_label("baton_requests_refused_total", "reason"),
            "datagrams_dropped": metrics.by_label("baton_datagrams_dropped_total", "reason"),
            "datagrams_forwarded": metrics.get("baton_datagrams_forwarded_total"),
            "allocations_created": metrics.get("baton_allocations_created_total"),
            "connections_accepted": metrics.get("baton_connections_accepted_total"),
            "joins": metrics.get("baton_joins_total"),
        });

        let counters = compare_counters(ctx, &metrics);
        for problem in &counters.1 {
            ctx.fail(Check::Counters, problem.clone());
        }
        let mut checks = BTreeMap::new();
        let detail = |check: Check| -> String {
            match check {
                Check::Migration => format!(
                    "{} completed, {} failed; time p50/p99/max {} ms",
                    s.migrations.get(),
                    s.migrations_failed.get(),
                    hist_triplet(&migration_ms)
                ),
                Check::Routing => format!("{received} datagrams checked"),
                Check::Loss => format!(
                    "{:.4}% lost between membership changes (max {:.2}%); {} stall checks",
                    loss * 100.0,
                    settings.max_loss * 100.0,
                    s.flow_checks.get()
                ),
                Check::Membership => format!(
                    "{} joins, {} leaves, {} crashes, {} rejoins",
                    s.joins.get(),
                    s.leaves.get() + s.host_closes.get(),
                    s.host_crashes.get() + s.peer_crashes.get(),
                    s.rejoins.get()
                ),
                Check::Expiry => format!(
                    "{} bind timeouts, {} expired codes, {} expired reservations",
                    s.bind_expiries.get(),
                    s.code_expiries.get(),
                    s.reservation_expiries.get()
                ),
                Check::Drain => match drain.took_s {
                    Some(t) => format!(
                        "admin API and metrics show 0 allocations, 0 connections after {t:.1} s"
                    ),
                    None => drain.describe(),
                },
                Check::Memory => match &memory {
                    Some(m) => format!(
                        "median RSS {:.1} MiB -> {:.1} MiB (limit {:.1} MiB, {} samples)",
                        mib(m.first_third_median_kib),
                        mib(m.last_third_median_kib),
                        mib(m.limit_kib),
                        m.trend_samples
                    ),
                    None => "no samples".to_owned(),
                },
                Check::RelayHealth => format!(
                    "{} error lines, {} stderr lines; {}",
                    monitor.scan.error_count,
                    monitor.scan.stderr.len(),
                    monitor
                        .relay_exited
                        .clone()
                        .unwrap_or_else(|| format!("stopped: {relay_stopped}"))
                ),
                Check::Counters => counters.0.clone(),
                Check::Coverage => "scenarios exercised".to_owned(),
            }
        };
        for check in Check::ALL {
            checks.insert(check, (ctx.failures.count(check) == 0, detail(check)));
        }
        let ok = checks.values().all(|(ok, _)| *ok);
        let failures = ctx.failures.kept();

        let json = json!({
            "ok": ok,
            "settings": settings,
            "checks": checks.iter().map(|(c, (ok, d))| json!({"name": c.name(), "ok": ok, "detail": d, "failures": ctx.failures.count(*c)})).collect::<Vec<_>>(),
            "failures": failures,
            "counts": {
                "games_started": s.games_started.get(),
                "games_ended": s.games_ended.get(),
                "joins": s.joins.get(),
                "leaves": s.leaves.get(),
                "host_closes": s.host_closes.get(),
                "host_crashes": s.host_crashes.get(),
                "peer_crashes": s.peer_crashes.get(),
                "rejoins": s.rejoins.get(),
                "player_processes": s.processes.get(),
                "migrations": s.migrations.get(),
                "migrations_failed": s.migrations_failed.get(),
                "host_losses_without_members": s.closed_without_members.get(),
                "snapshots_delivered": s.snapshots.get(),
            },
            "migration_ms": percentiles(&migration_ms),
            "datagrams": {
                "sent": s.sent.get(),
                "deliveries_expected": s.deliveries.get(),
                "received": received,
                "lost_steady": lost,
                "lost_around_churn": s.lost_churn.get(),
                "late": s.late.get(),
                "loss_steady": loss,
                "relay_reported_drops": relay_drops,
                "sdk_events_dropped": s.dropped_events.get(),
                "stall_checks": s.flow_checks.get(),
                "latency_us": percentiles(&latency),
                "loss_examples": lock(&ctx.loss_examples).clone(),
            },
            "expiry": {
                "bind_timeouts": s.bind_expiries.get(),
                "codes_expired": s.code_expiries.get(),
                "reservations_expired": s.reservation_expiries.get(),
            },
            "relay": {
                "command": monitor.relay.command,
                "memory": memory,
                "log_levels": monitor.scan.by_level,
                "warnings": monitor.scan.warnings,
                "errors": monitor.scan.errors,
                "stderr": monitor.scan.stderr,
                "stopped": relay_stopped,
                "counters_at_end": relay_counts,
                "data_dir": kept_dir.as_ref().map(|d| d.display().to_string()),
            },
            "drain": drain,
            "elapsed_s": ctx.elapsed_s(),
        });

        let mut t = String::new();
        let verdict = if ok {
            "PASS".to_owned()
        } else {
            let failed: Vec<&str> = checks
                .iter()
                .filter(|(_, (ok, _))| !ok)
                .map(|(c, _)| c.name())
                .collect();
            format!("FAIL ({})", failed.join(", "))
        };
        let line = |t: &mut String, label: &str, text: String| {
            t.push_str(&format!("  {label:<11}{text}\n"));
        };
        t.push_str(&format!("baton-soak: {verdict}\n"));
        line(
            &mut t,
            "run",
            format!(
                "{churn_s:.0} s of churn, {:.1} s in all; seed {}; {} games x (1 host + {} peers) at {} Hz, {} B payloads",
                ctx.elapsed_s(),
                settings.seed,
                settings.allocations,
                settings.peers,
                settings.rate,
                settings.payload
            ),
        );
        line(&mut t, "relay", monitor.relay.command.clone());
        line(
            &mut t,
            "games",
            format!(
                "{} started, {} ended by everyone leaving; {} player processes",
                s.games_started.get(),
                s.games_ended.get(),
                s.processes.get()
            ),
        );
        line(
            &mut t,
            "churn",
            format!(
                "{} joins, {} leaves, {} host exits, {} crashes ({} hosts, {} peers), {} rejoins",
                s.joins.get(),
                s.leaves.get(),
                s.host_closes.get(),
                s.host_crashes.get() + s.peer_crashes.get(),
                s.host_crashes.get(),
                s.peer_crashes.get(),
                s.rejoins.get()
            ),
        );
        line(
            &mut t,
            "migrations",
            format!(
                "{} completed, {} failed, {} host losses with no member left; {} snapshots delivered; time p50/p99/max {} ms",
                s.migrations.get(),
                s.migrations_failed.get(),
                s.closed_without_members.get(),
                s.snapshots.get(),
                hist_triplet(&migration_ms)
            ),
        );
        line(
            &mut t,
            "datagrams",
            format!(
                "{} sent ({} deliveries, some to members killed or leaving), {} received; lost {} between membership changes ({:.4}%, max {:.2}%), {} around them; {} late; relay-reported drops {:?}",
                s.sent.get(),
                s.deliveries.get(),
                received,
                lost,
                loss * 100.0,
                settings.max_loss * 100.0,
                s.lost_churn.get(),
                s.late.get(),
                relay_drops
            ),
        );
        line(
            &mut t,
            "latency",
            format!(
                "p50/p99/max {} us (one way, in-process receivers)",
                hist_triplet(&latency)
            ),
        );
        line(
            &mut t,
            "expiry",
            format!(
                "{} unbound connections closed, {} codes expired, {} reservations expired",
                s.bind_expiries.get(),
                s.code_expiries.get(),
                s.reservation_expiries.get()
            ),
        );
        if let Some(m) = &memory {
            line(
                &mut t,
                "relay RSS",
                format!(
                    "start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB; steady median first third {:.1} MiB, last third {:.1} MiB (limit {:.1} MiB)",
                    mib(m.start_kib),
                    mib(m.peak_kib),
                    mib(m.end_kib),
                    mib(m.first_third_median_kib),
                    mib(m.last_third_median_kib),
                    mib(m.limit_kib)
                ),
            );
        }
        line(
            &mut t,
            "relay logs",
            format!(
                "{:?}; warnings {:?}",
                monitor.scan.by_level, monitor.scan.warnings
            ),
        );
        line(&mut t, "relay says", relay_counts.to_string());
        if let Some(dir) = &kept_dir {
            line(&mut t, "data dir", dir.display().to_string());
        }
        t.push_str("  checks\n");
        for (check, (ok, detail)) in &checks {
            t.push_str(&format!(
                "    {:<13}{:<5} {detail}\n",
                check.name(),
                if *ok { "ok" } else { "FAIL" }
            ));
        }
        if !failures.is_empty() {
            t.push_str(&format!("  failures ({} in all)\n", ctx.failures.total()));
            for f in &failures {
                t.push_str(&format!(
                    "    [{:>7.1}s] {}: {}\n",
                    f.at_s,
                    f.check.name(),
                    f.what
                ));
            }
        }
        Summary { ok, json, text: t }
    }

    /// The summary as JSON.
    pub fn to_json(&self) -> Value {
        self.json.clone()
    }

    /// The summary as text.
    pub fn to_text(&self) -> String {
        self.text.trim_end().to_owned()
    }
}

/// Compares the relay's counters at the end with what the soak did: every join, rejoin,
/// allocation, departure (by reason) and refusal must be accounted for exactly. Returns a
/// one-line comparison and the mismatches.
fn compare_counters(ctx: &Ctx, metrics: &Metrics) -> (String, Vec<String>) {
    let s = &ctx.stats;
    let left = metrics.by_label("baton_members_left_total", "reason");
    let refused = metrics.by_label("baton_requests_refused_total", "reason");
    let left_of = |reason: &str| left.get(reason).copied().unwrap_or(0);
    let rows: [(&str, Option<f64>, u64); 6] = [
        (
            "joins by code",
            metrics.get("baton_joins_total"),
            s.joins.get() + s.probe_joins.get(),
        ),
        (
            "rejoins",
            metrics.get("baton_rejoins_total"),
            s.rejoins.get(),
        ),
        (
            "allocations created",
            metrics.get("baton_allocations_created_total"),
            s.games_started.get() + s.probe_allocations.get(),
        ),
        (
            "members left (closed)",
            Some(left_of("closed") as f64),
            s.leaves.get() + s.host_closes.get() + s.end_closes.get() + s.probe_closes.get(),
        ),
        (
            "members left (timed_out)",
            Some(left_of("timed_out") as f64),
            s.host_crashes.get() + s.peer_crashes.get() + s.end_kills.get(),
        ),
        (
            "requests refused",
            Some(refused.values().sum::<u64>() as f64),
            s.code_expiries.get() + s.probe_late_joins.get(),
        ),
    ];
    let mut problems = Vec::new();
    let mut parts = Vec::new();
    for (name, relay, soak) in rows {
        parts.push(format!("{name} {}", relay.map_or(-1.0, |v| v)));
        match relay {
            Some(v) if v == soak as f64 => {}
            Some(v) => problems.push(format!(
                "the relay counted {v} {name}, the soak made {soak} (refusals {refused:?}, departures {left:?})"
            )),
            None => problems.push(format!("/metrics lacks the counter of {name}")),
        }
    }
    let other: BTreeMap<&String, &u64> = left
        .iter()
        .filter(|(r, _)| r.as_str() != "closed" && r.as_str() != "timed_out")
        .collect();
    if !other.is_empty() {
        problems.push(format!(
            "the relay counted departures for unexpected reasons: {other:?}"
        ));
    }
    (
        format!("relay counters match: {}", parts.join(", ")),
        problems,
    )
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
