//! The soak's summary as JSON (`--json`): settings, every check, counts, datagrams, expiry,
//! the relay's memory, logs and counters, the drain. Runs once at the end.

use serde_json::{json, Value};

use super::judge::Findings;
use super::percentiles;
use crate::state::lock;

/// The summary of `f` as JSON.
pub(super) fn render(f: &Findings<'_>) -> Value {
    let s = &f.ctx.stats;
    json!({
        "ok": f.ok,
        "settings": f.settings,
        "checks": f.checks.iter().map(|(c, (ok, d))| json!({"name": c.name(), "ok": ok, "detail": d, "failures": f.ctx.failures.count(*c)})).collect::<Vec<_>>(),
        "failures": f.failures,
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
        "migration_ms": percentiles(&f.migration_ms),
        "datagrams": {
            "sent": s.sent.get(),
            "deliveries_expected": s.deliveries.get(),
            "received": f.received,
            "lost_steady": f.lost,
            "lost_around_churn": s.lost_churn.get(),
            "late": s.late.get(),
            "loss_steady": f.loss,
            "relay_reported_drops": f.relay_drops,
            "sdk_events_dropped": s.dropped_events.get(),
            "stall_checks": s.flow_checks.get(),
            "latency_us": percentiles(&f.latency),
            "loss_examples": lock(&f.ctx.loss_examples).clone(),
        },
        "expiry": {
            "bind_timeouts": s.bind_expiries.get(),
            "codes_expired": s.code_expiries.get(),
            "reservations_expired": s.reservation_expiries.get(),
        },
        "relay": {
            "command": f.monitor.relay.command,
            "memory": f.memory,
            "log_levels": f.monitor.scan.by_level,
            "warnings": f.monitor.scan.warnings,
            "errors": f.monitor.scan.errors,
            "stderr": f.monitor.scan.stderr,
            "stopped": f.relay_stopped,
            "counters_at_end": f.relay_counts,
            "data_dir": f.kept_dir.as_ref().map(|d| d.display().to_string()),
        },
        "drain": f.drain,
        "elapsed_s": f.ctx.elapsed_s(),
    })
}
