//! The soak's summary as text: a verdict line, a line per area (run, games, churn,
//! migrations, datagrams, latency, expiry, relay) and every check. Runs once at the end.

use super::judge::Findings;
use super::{hist_triplet, mib};
use crate::state::lock;

/// The summary of `f` as text.
pub(super) fn render(f: &Findings<'_>) -> String {
    let s = &f.ctx.stats;
    let mut t = String::new();
    let verdict = if f.ok {
        "PASS".to_owned()
    } else {
        let failed: Vec<&str> = f
            .checks
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
            "{:.0} s of churn, {:.1} s in all; seed {}; {} games x (1 host + {} peers) at {} Hz, {} B payloads",
            f.churn_s,
            f.ctx.elapsed_s(),
            f.settings.seed,
            f.settings.allocations,
            f.settings.peers,
            f.settings.rate,
            f.settings.payload
        ),
    );
    if f.monitor.fleet {
        for node in &f.monitor.nodes {
            line(
                &mut t,
                &format!("node {}", node.id),
                format!(
                    "started at {:.1} s; {}; {}",
                    node.started_s,
                    super::fate_text(node),
                    node.relay.command
                ),
            );
        }
        line(
            &mut t,
            "fleet",
            format!(
                "{} drains ({} ms on average from POST /v1/drain to exit), {} kills, {} replacements; games relocated {} ({} members, p50/p99/max {} ms), resumed {} ({} members, p50/p99/max {} ms), {} resumed with a new host elected",
                s.node_drains.get(),
                s.drain_ms_total.get().checked_div(s.node_drains.get()).unwrap_or(0),
                s.node_kills.get(),
                s.node_replacements.get(),
                s.relocations.get(),
                s.members_relocated.get(),
                hist_triplet(&lock(&f.ctx.relocation_ms)),
                s.resumes.get(),
                s.members_resumed.get(),
                hist_triplet(&lock(&f.ctx.resume_ms)),
                s.resume_elections.get()
            ),
        );
    } else {
        line(&mut t, "relay", f.monitor.primary().relay.command.clone());
    }
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
            hist_triplet(&f.migration_ms)
        ),
    );
    line(
        &mut t,
        "datagrams",
        format!(
            "{} sent ({} deliveries, some to members killed or leaving), {} received; lost {} between membership changes ({:.4}%, max {:.2}%), {} around them; {} late; relay-reported drops {:?}",
            s.sent.get(),
            s.deliveries.get(),
            f.received,
            f.lost,
            f.loss * 100.0,
            f.settings.max_loss * 100.0,
            s.lost_churn.get(),
            s.late.get(),
            f.relay_drops
        ),
    );
    if f.monitor.fleet {
        line(
            &mut t,
            "node loss",
            format!(
                "lost {} around relocations (drains), {} around resumes (kills); PeerRejoined heard about members that moved: {} in relocations, {} in resumes",
                s.lost_relocation.get(),
                s.lost_resume.get(),
                s.relocation_echoes.get(),
                s.resume_echoes.get()
            ),
        );
    }
    line(
        &mut t,
        "latency",
        format!(
            "p50/p99/max {} us (one way, in-process receivers)",
            hist_triplet(&f.latency)
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
    if let Some(m) = &f.memory {
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
    for (id, m) in &f.node_memory {
        let text = match m {
            Ok(m) => format!(
                "start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB; steady median first third {:.1} MiB, last third {:.1} MiB (limit {:.1} MiB)",
                mib(m.start_kib),
                mib(m.peak_kib),
                mib(m.end_kib),
                mib(m.first_third_median_kib),
                mib(m.last_third_median_kib),
                mib(m.limit_kib)
            ),
            Err(why) => why.clone(),
        };
        line(&mut t, &format!("RSS {id}"), text);
    }
    for node in &f.monitor.nodes {
        let label = if f.monitor.fleet {
            format!("logs {}", node.id)
        } else {
            "relay logs".to_owned()
        };
        line(
            &mut t,
            &label,
            format!(
                "{:?}; warnings {:?}",
                node.scan.by_level, node.scan.warnings
            ),
        );
    }
    line(&mut t, "relay says", f.relay_counts.to_string());
    if let Some(dir) = &f.kept_dir {
        line(&mut t, "data dir", dir.display().to_string());
    }
    t.push_str("  checks\n");
    for (check, (ok, detail)) in &f.checks {
        t.push_str(&format!(
            "    {:<13}{:<5} {detail}\n",
            check.name(),
            if *ok { "ok" } else { "FAIL" }
        ));
    }
    if !f.failures.is_empty() {
        t.push_str(&format!("  failures ({} in all)\n", f.ctx.failures.total()));
        for failure in &f.failures {
            t.push_str(&format!(
                "    [{:>7.1}s] {}: {}\n",
                failure.at_s,
                failure.check.name(),
                failure.what
            ));
        }
    }
    t
}
