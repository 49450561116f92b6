//! The soak's summary as JSON (`--json`): settings, every check, counts, datagrams, expiry,
//! the relay's memory, logs and counters, the drain. Runs once at the end.

use serde_json::{json, Value};

use super::judge::Findings;
use super::percentiles;
use crate::state::lock;

/// The summary of `f` as JSON.
pub(super) fn render(f: &Findings<'_>) -> Value {
    let Findings {
        ctx,
        settings,
        monitor,
        drain,
        relay_stopped,
        kept_dir,
        received,
        lost,
        loss,
        memory,
        migration_ms,
        latency,
        relay_drops,
        relay_counts,
        checks,
        failures,
        ok,
        ..
    } = f;
    let s = &ctx.stats;
    json!({
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
        "migration_ms": percentiles(migration_ms),
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
            "latency_us": percentiles(latency),
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
    })
}
