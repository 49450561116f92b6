//! The fleet section of the report ([`FleetReport`]): join latency through a redirect, the
//! time each allocation takes to move off a draining node, and how long a node carrying many
//! allocations takes to drain. Filled in by `fleet::run` on the generator runtime; printed by
//! [`human`] (called from `print_human`) or as JSON.
//!
//! Every time is also given in units of the same run's direct join p50 (`*_x_join`), so figures
//! from a loaded or a quiet machine can be compared.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::Latency;

/// The fleet benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// How the nodes and the directory were run.
    pub nodes: String,
    /// The client side: what made the joins and held the sessions.
    pub client: String,
    /// The unit of every `*_x_join` figure: the direct join's p50, microseconds.
    pub unit_us: f64,
    /// Join by code directly on the node holding the allocation vs through another node.
    pub join: FleetJoinReport,
    /// Per-allocation relocation time when a node with a few games drains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relocation: Option<DrainReport>,
    /// A node with many allocations drained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainReport>,
}

/// Join latency, direct and through one redirect.
#[derive(Debug, Clone, Serialize)]
pub struct FleetJoinReport {
    /// Allocations joined into (hosts on the first node).
    pub allocations: usize,
    /// `Peer::join` on the node holding the allocation, from the call to its return.
    pub direct: Latency,
    /// `Peer::join` through another node: `Redirect`, then the holding node.
    pub redirect: Latency,
    /// redirect p50 / direct p50.
    pub ratio_p50: Option<f64>,
    /// redirect p99 / direct p99.
    pub ratio_p99: Option<f64>,
    /// Failed joins by kind and reason.
    pub failures: BTreeMap<String, u64>,
}

/// One drain: a node's allocations moved to the others.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    /// The drained node's id.
    pub node: String,
    /// Allocations on it when the drain began.
    pub allocations: usize,
    /// Members of each (host included).
    pub members: usize,
    /// Seconds taken to set the allocations up (not part of any figure).
    pub setup_s: f64,
    /// From `POST /v1/drain` until each allocation's last member reported
    /// `Event::Relocated`, microseconds.
    pub per_allocation: Latency,
    /// p50, p99 and max of `per_allocation`, in direct-join p50s.
    pub per_allocation_x_join: [Option<f64>; 3],
    /// Seconds from `POST /v1/drain` until the node had handed every allocation over in the
    /// directory and told its members (its last `allocation relocated` log line).
    pub handed_over_s: Option<f64>,
    /// Seconds from `POST /v1/drain` until every session had relocated.
    pub all_relocated_s: Option<f64>,
    /// Seconds from `POST /v1/drain` until the node held no allocation: when its last
    /// allocation closed as `relocated` (the `allocation closed` line of its log).
    pub empty_s: Option<f64>,
    /// Seconds from `POST /v1/drain` until the node's `/v1/allocations` was seen empty, polled
    /// every 20 ms (`None`: the node began shutting down between two polls).
    pub admin_empty_s: Option<f64>,
    /// Seconds from `POST /v1/drain` until the node began shutting down (`relay shutting down`
    /// in its log): it looks whether it is empty every 100 ms.
    pub shutdown_s: Option<f64>,
    /// Seconds from `POST /v1/drain` until the node's process had exited: the graceful
    /// shutdown waits (up to 2 s) until its connections have closed and drained.
    pub exited_s: Option<f64>,
    /// `empty_s` (`admin_empty_s` when the node logs below `info`), in direct-join p50s.
    pub drain_x_join: Option<f64>,
    /// Allocations moved per second: `allocations / empty_s` (or `admin_empty_s`).
    pub allocations_per_s: Option<f64>,
    /// How many allocations each node holds after the drain (its `/v1/allocations`).
    pub targets: BTreeMap<String, usize>,
    /// CPU-seconds during the drain (from the POST until the node exited or the wait ended):
    /// the drained node, every other node together, and the bench (every client session).
    pub cpu_s: DrainCpu,
    /// Sessions that did not relocate, or relocated wrongly, by reason.
    pub failures: BTreeMap<String, u64>,
}

/// CPU-seconds spent during a drain.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DrainCpu {
    /// The drained node.
    pub drained: Option<f64>,
    /// The nodes receiving the allocations, together.
    pub targets: Option<f64>,
    /// The bench process: every client session (handshakes to the new nodes included).
    pub clients: Option<f64>,
}

/// A time in microseconds divided by the run's unit, when both are known.
pub fn in_units(us: f64, unit_us: f64) -> Option<f64> {
    (us.is_finite() && unit_us > 0.0).then(|| us / unit_us)
}

/// A number with `decimals` decimals, or `-`.
fn opt(v: Option<f64>, decimals: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// Milliseconds from microseconds, with two decimals.
fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

/// Renders the fleet section into `out`.
pub fn human(out: &mut String, f: &FleetReport) {
    let _ = writeln!(out, "\n== fleet: {}", f.nodes);
    let _ = writeln!(out, "  clients: {}", f.client);
    let _ = writeln!(
        out,
        "  unit: direct join p50 = {} ms (every 'x join' figure is a multiple of it)",
        ms(f.unit_us)
    );
    let j = &f.join;
    let _ = writeln!(
        out,
        "\n-- join by code into {} allocations on node a (call -> Joined), ms",
        j.allocations
    );
    let _ = writeln!(
        out,
        "  {:<34}{:>10}{:>10}{:>10}{:>10}{:>8}",
        "", "p50", "p99", "max", "mean", "n"
    );
    for (name, l) in [
        ("direct (on the holding node)", &j.direct),
        ("through another node (redirect)", &j.redirect),
    ] {
        let _ = writeln!(
            out,
            "  {:<34}{:>10}{:>10}{:>10}{:>10}{:>8}",
            name,
            ms(l.p50_us),
            ms(l.p99_us),
            ms(l.max_us),
            ms(l.mean_us),
            l.samples
        );
    }
    let _ = writeln!(
        out,
        "  redirect / direct: p50 {}x, p99 {}x; failures {:?}",
        opt(j.ratio_p50, 2),
        opt(j.ratio_p99, 2),
        j.failures
    );
    if let Some(r) = &f.relocation {
        human_drain(out, "relocation time per allocation", r, f.unit_us);
    }
    if let Some(d) = &f.drain {
        human_drain(out, "drain of a loaded node", d, f.unit_us);
    }
}

/// One drain.
fn human_drain(out: &mut String, title: &str, d: &DrainReport, unit_us: f64) {
    let _ = writeln!(
        out,
        "\n-- {title}: node {} with {} allocations x {} members (set up in {:.1} s), times from POST /v1/drain",
        d.node, d.allocations, d.members, d.setup_s
    );
    let l = &d.per_allocation;
    let [p50, p99, max] = d.per_allocation_x_join;
    let _ = writeln!(
        out,
        "  {:<44}p50 {} ms ({}x join), p99 {} ms ({}x), max {} ms ({}x), n={}",
        "per allocation: its last member relocated",
        ms(l.p50_us),
        opt(p50, 1),
        ms(l.p99_us),
        opt(p99, 1),
        ms(l.max_us),
        opt(max, 1),
        l.samples
    );
    let seconds = |s: Option<f64>| {
        format!(
            "{} s ({}x join)",
            opt(s, 3),
            opt(s.and_then(|s| in_units(s * 1e6, unit_us)), 0)
        )
    };
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<44}{value}");
    };
    row(
        "every allocation handed over, members told",
        seconds(d.handed_over_s),
    );
    row("every session relocated", seconds(d.all_relocated_s));
    row(
        "node empty (its last allocation closed)",
        seconds(d.empty_s),
    );
    row("/v1/allocations seen empty", seconds(d.admin_empty_s));
    row("allocations moved per second", opt(d.allocations_per_s, 0));
    row(
        "node shutting down / exited",
        format!("{} s / {} s", opt(d.shutdown_s, 3), opt(d.exited_s, 3)),
    );
    row(
        "allocations per node afterwards",
        format!("{:?}", d.targets),
    );
    row(
        "CPU-s during the drain",
        format!(
            "drained node {}, receiving nodes {}, clients (bench) {}",
            opt(d.cpu_s.drained, 2),
            opt(d.cpu_s.targets, 2),
            opt(d.cpu_s.clients, 2)
        ),
    );
    row("failures", format!("{:?}", d.failures));
}
