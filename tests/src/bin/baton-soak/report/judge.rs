//! The verdict of a soak run: every check judged from what the games counted, the relay's
//! memory samples, its counters and its drain ([`Summary::build`]), gathered as [`Findings`] for the
//! text and JSON forms. Runs once, on the soak's main task, at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::memory::Memory;
use super::{hist_triplet, mib, Drain, Monitor, Settings, Summary, COVERAGE_MIN_S};
use crate::state::{lock, Check, Ctx, Failure};
use baton_tests::relay_process::Metrics;

/// What the summary reports: the run's settings and results, and each check's verdict.
pub(super) struct Findings<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) settings: &'a Settings,
    pub(super) monitor: &'a Monitor,
    pub(super) drain: &'a Drain,
    pub(super) churn_s: f64,
    pub(super) relay_stopped: String,
    pub(super) kept_dir: Option<PathBuf>,
    /// Datagrams received, and lost between membership changes.
    pub(super) received: u64,
    pub(super) lost: u64,
    /// `lost` as a share of all that should have arrived.
    pub(super) loss: f64,
    pub(super) memory: Option<Memory>,
    /// With a fleet: each node's memory trend, or why it is not judged.
    pub(super) node_memory: Vec<(String, Result<Memory, String>)>,
    pub(super) migration_ms: Histogram<u64>,
    pub(super) latency: Histogram<u64>,
    pub(super) relay_drops: BTreeMap<String, u64>,
    /// The relay's own counters at the end.
    pub(super) relay_counts: Value,
    /// Per check: passed, and a one-line detail.
    pub(super) checks: BTreeMap<Check, (bool, String)>,
    pub(super) failures: Vec<Failure>,
    /// Whether every check passed.
    pub(super) ok: bool,
}

impl Summary {
    /// Judges the run: fails the checks that the totals break (loss, memory, coverage,
    /// counters), gathers every check's verdict, and prepares both forms of the summary.
    pub fn build(
        ctx: &Ctx,
        settings: &Settings,
        monitor: &Monitor,
        drain: &Drain,
        churn_s: f64,
        relay_stopped: String,
        kept_dir: Option<PathBuf>,
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
        let (memory, node_memory) = if monitor.fleet {
            (None, node_memory(ctx, monitor, churn_s, settings))
        } else {
            let memory = Memory::from_samples(&monitor.primary().rss, churn_s, settings);
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
            (memory, Vec::new())
        };
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
            if monitor.fleet {
                if s.relocations.get() == 0 && s.node_drains.get() > 0 {
                    missing.push("a game relocated by a drain");
                }
                if s.resumes.get() + s.resume_elections.get() == 0 && s.node_kills.get() > 0 {
                    missing.push("a game resumed after a node kill");
                }
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

        let counters = if monitor.fleet {
            (
                "not compared with a fleet: a killed node takes its counters with it, and relocated and resumed members count as rejoins where they land".to_owned(),
                Vec::new(),
            )
        } else {
            compare_counters(ctx, &metrics)
        };
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
                Check::Memory if monitor.fleet => node_memory
                    .iter()
                    .map(|(id, m)| match m {
                        Ok(m) => format!(
                            "node {id} {:.1} -> {:.1} MiB (limit {:.1})",
                            mib(m.first_third_median_kib),
                            mib(m.last_third_median_kib),
                            mib(m.limit_kib)
                        ),
                        Err(why) => format!("node {id} {why}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
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
                Check::RelayHealth if monitor.fleet => format!(
                    "{} error lines, {} stderr lines over {} nodes; {}",
                    monitor.nodes.iter().map(|n| n.scan.error_count).sum::<u64>(),
                    monitor.nodes.iter().map(|n| n.scan.stderr.len()).sum::<usize>(),
                    monitor.nodes.len(),
                    monitor
                        .nodes
                        .iter()
                        .map(|n| format!("{}: {}", n.id, super::fate_text(n)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Check::RelayHealth => format!(
                    "{} error lines, {} stderr lines; {}",
                    monitor.primary().scan.error_count,
                    monitor.primary().scan.stderr.len(),
                    monitor
                        .primary()
                        .died()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("stopped: {relay_stopped}"))
                ),
                Check::Fleet if !monitor.fleet => "no fleet (--nodes 1)".to_owned(),
                Check::Fleet => format!(
                    "{} drains, {} kills; games relocated {} ({} members, p50/p99/max {} ms), resumed {} ({} members, p50/p99/max {} ms), {} with a new host elected",
                    s.node_drains.get(),
                    s.node_kills.get(),
                    s.relocations.get(),
                    s.members_relocated.get(),
                    hist_triplet(&lock(&ctx.relocation_ms)),
                    s.resumes.get(),
                    s.members_resumed.get(),
                    hist_triplet(&lock(&ctx.resume_ms)),
                    s.resume_elections.get()
                ),
                Check::Counters => counters.0.clone(),
                Check::Coverage => "scenarios exercised".to_owned(),
            }
        };
        for check in Check::ALL {
            if check == Check::Fleet && !monitor.fleet {
                continue;
            }
            checks.insert(check, (ctx.failures.count(check) == 0, detail(check)));
        }
        let ok = checks.values().all(|(ok, _)| *ok);
        let failures = ctx.failures.kept();

        let f = Findings {
            ctx,
            settings,
            monitor,
            drain,
            churn_s,
            relay_stopped,
            kept_dir,
            received,
            lost,
            loss,
            memory,
            node_memory,
            migration_ms,
            latency,
            relay_drops,
            relay_counts,
            checks,
            failures,
            ok,
        };
        Summary {
            ok: f.ok,
            json: super::json::render(&f),
            text: super::text::render(&f),
        }
    }
}

/// Each node's memory trend: judged for nodes that ran from before the warm-up to the end;
/// the others say why not. A trend above its limit is a failure.
fn node_memory(
    ctx: &Ctx,
    monitor: &Monitor,
    churn_s: f64,
    settings: &Settings,
) -> Vec<(String, Result<Memory, String>)> {
    let warm = super::WARM_UP_S.max(churn_s / 10.0);
    let mut out = Vec::new();
    for node in &monitor.nodes {
        let judged = if !node.surviving() {
            Err(format!("not judged ({})", super::fate_text(node)))
        } else if node.started_s > warm {
            Err(format!(
                "not judged (started at {:.0} s, after the {warm:.0} s warm-up)",
                node.started_s
            ))
        } else {
            match Memory::from_samples(&node.rss, churn_s, settings) {
                Some(m) => {
                    if !m.ok {
                        ctx.fail(
                            Check::Memory,
                            format!(
                                "node {} RSS grew from a median of {} KiB (first third) to {} KiB (last third), above the limit {} KiB",
                                node.id, m.first_third_median_kib, m.last_third_median_kib, m.limit_kib
                            ),
                        );
                    }
                    Ok(m)
                }
                None => {
                    ctx.fail(
                        Check::Memory,
                        format!("no RSS sample of node {} could be taken", node.id),
                    );
                    Err("no samples".to_owned())
                }
            }
        };
        out.push((node.id.clone(), judged));
    }
    out
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
