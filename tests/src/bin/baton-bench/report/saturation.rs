//! "What saturated first": the verdict of one traffic run (its `saturated` field), from its
//! loss, the generator's shortfall, CPU use, kernel socket-buffer overflows and the relay's own
//! drop counts. Pure; called by [`TrafficReport::new`](super::TrafficReport::new).

use std::fmt::Write as _;

use super::{ServerMetrics, LOSS_THRESHOLD_PCT};
use crate::probe::{Cpu, KernelUdp};

/// Which side ran out first, in words.
pub(super) fn verdict(
    loss_pct: f64,
    shortfall_pct: f64,
    late_pct: f64,
    cpu: &Cpu,
    kernel: Option<&KernelUdp>,
    metrics: Option<&ServerMetrics>,
) -> String {
    let pct = |x: Option<f64>| x.map_or_else(|| "?".to_owned(), |v| format!("{:.0}%", v * 100.0));
    let usage = format!(
        "server at {} of its cores, generator {:.2} cores, machine {} busy",
        pct(cpu.server_utilisation()),
        cpu.generator_cores.unwrap_or(0.0),
        pct(cpu.machine_utilisation()),
    );
    let mut causes = Vec::new();
    if shortfall_pct >= LOSS_THRESHOLD_PCT || late_pct >= 1.0 {
        causes.push(format!(
            "load generator ({shortfall_pct:.2}% of the schedule not sent, {late_pct:.1}% late)"
        ));
    }
    if loss_pct >= LOSS_THRESHOLD_PCT {
        let mut why = format!("server ({loss_pct:.2}% loss");
        if let Some(m) = metrics {
            let dropped: u64 = m.dropped.values().sum();
            if dropped > 0 {
                let _ = write!(why, "; relay dropped {dropped}: {:?}", m.dropped);
            }
        }
        if let Some(k) = kernel.filter(|k| k.rcvbuf_errors > 0) {
            let _ = write!(
                why,
                "; {} kernel socket-buffer overflows, {} at the server's socket",
                k.rcvbuf_errors,
                k.server_socket_drops
                    .map_or_else(|| "?".to_owned(), |d| d.to_string())
            );
        }
        if cpu.server_utilisation().is_some_and(|u| u >= 0.9) {
            why.push_str("; server CPU-bound");
        }
        why.push(')');
        causes.push(why);
    }
    if !causes.is_empty() && cpu.machine_utilisation().is_some_and(|u| u >= 0.9) {
        causes.push(format!(
            "machine CPU ({} cores all busy; server and generator share them)",
            cpu.cpus
        ));
    }
    if causes.is_empty() {
        format!("none: offered load carried ({usage})")
    } else {
        format!("{} [{usage}]", causes.join(" + "))
    }
}
