//! The soak's summary as JSON (`--json`): settings, every check, counts, datagrams, expiry,
//! the relay's memory, logs and counters, the drain. Runs once at the end.

use serde_json::{json, Value};

use super::judge::Findings;
use super::{fate_text, percentiles};
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
        "fleet": fleet(f),
        "relay": {
            "command": f.monitor.primary().relay.command,
            "memory": f.memory,
            "log_levels": f.monitor.primary().scan.by_level,
            "warnings": f.monitor.primary().scan.warnings,
            "errors": f.monitor.primary().scan.errors,
            "stderr": f.monitor.primary().scan.stderr,
            "stopped": f.relay_stopped,
            "counters_at_end": f.relay_counts,
            "data_dir": f.kept_dir.as_ref().map(|d| d.display().to_string()),
        },
        "drain": f.drain,
        "elapsed_s": f.ctx.elapsed_s(),
    })
}

/// The fleet's part (`null` without a fleet): each node, the node events and their loss.
fn fleet(f: &Findings<'_>) -> Value {
    if !f.monitor.fleet {
        return Value::Null;
    }
    let s = &f.ctx.stats;
    let nodes: Vec<Value> = f
        .monitor
        .nodes
        .iter()
        .map(|n| {
            let memory = f
                .node_memory
                .iter()
                .find(|(id, _)| *id == n.id)
                .map(|(_, m)| match m {
                    Ok(m) => serde_json::to_value(m).unwrap_or(Value::Null),
                    Err(why) => json!({ "not_judged": why }),
                });
            json!({
                "id": n.id,
                "command": n.relay.command,
                "started_s": n.started_s,
                "fate": fate_text(n),
                "memory": memory,
                "log_levels": n.scan.by_level,
                "warnings": n.scan.warnings,
                "errors": n.scan.errors,
                "stderr": n.scan.stderr,
            })
        })
        .collect();
    json!({
        "nodes": nodes,
        "drains": s.node_drains.get(),
        "drain_ms_mean": s.drain_ms_total.get().checked_div(s.node_drains.get()),
        "kills": s.node_kills.get(),
        "replacements": s.node_replacements.get(),
        "games_relocated": s.relocations.get(),
        "members_relocated": s.members_relocated.get(),
        "relocation_ms": percentiles(&lock(&f.ctx.relocation_ms)),
        "games_resumed": s.resumes.get(),
        "members_resumed": s.members_resumed.get(),
        "resume_ms": percentiles(&lock(&f.ctx.resume_ms)),
        "resumes_with_election": s.resume_elections.get(),
        "lost_around_relocations": s.lost_relocation.get(),
        "lost_around_resumes": s.lost_resume.get(),
        "rejoin_events_in_relocations": s.relocation_echoes.get(),
        "rejoin_events_in_resumes": s.resume_echoes.get(),
    })
}
