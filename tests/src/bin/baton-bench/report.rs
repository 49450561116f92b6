//! What the bench reports, as JSON (`--json`) and as human tables, and the progress line it
//! writes on stderr while it runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::probe::{Cpu, KernelUdp};
use crate::traffic::{Pattern, RecvStats, RunSpec, SendStats};

/// Loss below this (percent) passes; `--find-max` looks for the highest rate under it.
pub const LOSS_THRESHOLD_PCT: f64 = 0.1;

/// The whole report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Where and when it ran.
    pub machine: Machine,
    /// The load run, with its ceiling comparison and `--find-max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadReport>,
    /// Allocation churn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnReport>,
    /// Join-by-code latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinReport>,
    /// Idle clients held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleReport>,
    /// Correctness problems found (misdelivery, duplicates, spoofed sources, failed set-ups,
    /// memory growing from round to round); any makes the exit status 1.
    pub errors: Vec<String>,
    /// Findings that do not fail the run (e.g. relay memory not returning to its start).
    pub warnings: Vec<String>,
}

/// The machine the bench ran on.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    /// CPUs available.
    pub cpus: usize,
    /// 1-minute load average when the bench started (other work on the machine).
    pub load_average_at_start: Option<f64>,
    /// Worker threads of the load generator's runtime.
    pub generator_threads: usize,
    /// QUIC client endpoints (UDP sockets) of the load generator.
    pub generator_endpoints: usize,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Values recorded.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// Correctness counters of a traffic run; all should be zero.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TrafficErrors {
    /// Datagrams that reached a client they were not addressed to.
    pub misdelivered: u64,
    /// Datagrams received twice.
    pub duplicates: u64,
    /// Datagrams whose relay-stamped source was not their sender.
    pub source_mismatch: u64,
    /// Datagrams too short to carry a header and a stamp.
    pub malformed: u64,
}

impl TrafficErrors {
    /// Whether any counter is non-zero.
    pub fn any(&self) -> bool {
        self.misdelivered + self.duplicates + self.source_mismatch + self.malformed > 0
    }
}

/// How well the load generator kept its schedule.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GeneratorHealth {
    /// Datagrams due that the client's send buffer could not take.
    pub local_drops: u64,
    /// Datagrams never sent because the sender fell more than 100 ms behind.
    pub skipped: u64,
    /// Datagrams sent more than 5 ms late.
    pub late: u64,
    /// Furthest behind schedule, milliseconds.
    pub max_lag_ms: f64,
}

/// What the server said about the same window (the relay's `/metrics`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerMetrics {
    /// Datagrams the relay delivered (`baton_datagrams_forwarded_total`).
    pub forwarded: u64,
    /// Datagrams it dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// One traffic run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    /// `baton` or `udp-forwarder`.
    pub target: &'static str,
    /// Who sent to whom.
    pub pattern: Pattern,
    /// Payload bytes per datagram.
    pub payload_bytes: usize,
    /// Datagrams per second per flow.
    pub rate_per_flow: f64,
    /// Flows.
    pub flows: usize,
    /// Length of the measurement window, seconds.
    pub window_s: f64,
    /// Datagrams per second the schedule offered (sent side).
    pub offered_per_s: f64,
    /// Datagrams handed to the transport in the window.
    pub sent: u64,
    /// Deliveries those should produce (a broadcast counts once per receiver).
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// Deliveries per second: the relayed throughput.
    pub delivered_per_s: f64,
    /// Payload bytes delivered per second.
    pub payload_bytes_per_s: f64,
    /// `100 × (1 - received / expected)`.
    pub loss_pct: f64,
    /// One-way latency, sender to receiver through the server.
    pub latency: Latency,
    /// Correctness counters.
    pub errors: TrafficErrors,
    /// Load-generator health.
    pub generator: GeneratorHealth,
    /// The relay's own counts for the window, when its admin server is reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_metrics: Option<ServerMetrics>,
    /// `DatagramsDropped` reports clients got, by reason.
    pub reported_drops: BTreeMap<String, u64>,
    /// Membership events (departures, migrations) clients saw; should be 0.
    pub membership_events: u64,
    /// Kernel UDP buffer overflows machine-wide during the window.
    pub kernel_udp: Option<KernelUdp>,
    /// CPU use during the window.
    pub cpu: Cpu,
    /// Server CPU-seconds per 100,000 deliveries: the headline cost figure.
    pub server_cpu_s_per_100k: Option<f64>,
    /// Deliveries per server CPU-second.
    pub datagrams_per_server_cpu_s: Option<f64>,
    /// Server resident memory at the end of the window, MiB.
    pub server_rss_mib: Option<f64>,
    /// Server peak resident memory so far, MiB.
    pub server_peak_rss_mib: Option<f64>,
    /// Which side ran out first, in words.
    pub saturated: String,
    /// Loss under 0.1 % and the generator kept its schedule.
    pub pass: bool,
}

/// What a run measured, before it is turned into a [`TrafficReport`].
pub struct RunFigures<'a> {
    /// `baton` or `udp-forwarder`.
    pub target: &'static str,
    /// The run's parameters.
    pub spec: &'a RunSpec,
    /// Flows in the run.
    pub flows: usize,
    /// Sender counts.
    pub send: SendStats,
    /// Receiver counts.
    pub recv: RecvStats,
    /// CPU use in the window.
    pub cpu: Cpu,
    /// Kernel UDP errors in the window.
    pub kernel_udp: Option<KernelUdp>,
    /// The relay's counts in the window.
    pub server_metrics: Option<ServerMetrics>,
    /// `DatagramsDropped` reports by reason.
    pub reported_drops: BTreeMap<String, u64>,
    /// Membership events seen.
    pub membership_events: u64,
    /// Server RSS and peak RSS at the end, KiB.
    pub server_mem_kib: Option<(u64, u64)>,
}

impl TrafficReport {
    /// Derives rates, loss, costs and the verdict from raw figures.
    pub fn new(f: RunFigures<'_>) -> TrafficReport {
        let window_s = f.spec.duration.as_secs_f64().max(1e-9);
        let loss_pct = if f.send.expected == 0 {
            0.0
        } else {
            (100.0 * (1.0 - f.recv.received as f64 / f.send.expected as f64)).max(0.0)
        };
        let delivered = f.recv.received as f64;
        let server_cpu_s_per_100k = f
            .cpu
            .server_cpu_s
            .filter(|_| delivered > 0.0)
            .map(|s| s / delivered * 100_000.0);
        let datagrams_per_server_cpu_s = f
            .cpu
            .server_cpu_s
            .filter(|s| *s > 0.0)
            .map(|s| delivered / s);
        let generator = GeneratorHealth {
            local_drops: f.send.local_drops,
            skipped: f.send.skipped,
            late: f.send.late,
            max_lag_ms: f.send.max_lag_ns as f64 / 1e6,
        };
        let errors = TrafficErrors {
            misdelivered: f.recv.misdelivered,
            duplicates: f.recv.duplicates,
            source_mismatch: f.recv.source_mismatch,
            malformed: f.recv.malformed,
        };
        let offered = f.send.offered().max(1) as f64;
        let shortfall_pct = 100.0 * (f.send.local_drops + f.send.skipped) as f64 / offered;
        let late_pct = 100.0 * f.send.late as f64 / offered;
        let saturated = verdict(
            loss_pct,
            shortfall_pct,
            late_pct,
            &f.cpu,
            f.kernel_udp.as_ref(),
            f.server_metrics.as_ref(),
        );
        TrafficReport {
            target: f.target,
            pattern: f.spec.pattern,
            payload_bytes: f.spec.payload,
            rate_per_flow: f.spec.rate,
            flows: f.flows,
            window_s,
            offered_per_s: f.send.offered() as f64 / window_s,
            sent: f.send.sent,
            expected: f.send.expected,
            received: f.recv.received,
            delivered_per_s: delivered / window_s,
            payload_bytes_per_s: f.recv.bytes as f64 / window_s,
            loss_pct,
            latency: Latency::from_ns(&f.recv.latency),
            errors,
            generator,
            server_metrics: f.server_metrics,
            reported_drops: f.reported_drops,
            membership_events: f.membership_events,
            kernel_udp: f.kernel_udp,
            cpu: f.cpu,
            server_cpu_s_per_100k,
            datagrams_per_server_cpu_s,
            server_rss_mib: f.server_mem_kib.map(|(rss, _)| rss as f64 / 1024.0),
            server_peak_rss_mib: f.server_mem_kib.map(|(_, hwm)| hwm as f64 / 1024.0),
            saturated,
            pass: loss_pct < LOSS_THRESHOLD_PCT && shortfall_pct < LOSS_THRESHOLD_PCT,
        }
    }
}

/// Which side ran out first, in words.
fn verdict(
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

/// Baton's figures as a multiple of the UDP forwarder's, measured in the same run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratio {
    /// Delivered datagrams/s, Baton ÷ UDP.
    pub throughput: f64,
    /// Median latency, Baton ÷ UDP.
    pub latency_p50: f64,
    /// 99th-percentile latency, Baton ÷ UDP.
    pub latency_p99: f64,
    /// Server CPU per delivered datagram, Baton ÷ UDP.
    pub cpu_per_datagram: Option<f64>,
}

impl Ratio {
    /// Baton ÷ UDP.
    pub fn of(baton: &TrafficReport, udp: &TrafficReport) -> Ratio {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Ratio {
            throughput: div(baton.delivered_per_s, udp.delivered_per_s),
            latency_p50: div(baton.latency.p50_us, udp.latency.p50_us),
            latency_p99: div(baton.latency.p99_us, udp.latency.p99_us),
            cpu_per_datagram: match (baton.server_cpu_s_per_100k, udp.server_cpu_s_per_100k) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            },
        }
    }
}

/// One pattern and payload, on Baton and on the ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// Through the relay.
    pub baton: TrafficReport,
    /// Through the plain UDP forwarder.
    pub ceiling: Option<TrafficReport>,
    /// Baton ÷ ceiling.
    pub ratio: Option<Ratio>,
}

/// The load run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// How the relay was run.
    pub relay: String,
    /// Allocations.
    pub allocations: usize,
    /// Members per allocation, host included.
    pub members: usize,
    /// Clients in all.
    pub clients: usize,
    /// Seconds to connect and bind every client.
    pub setup_s: f64,
    /// Relay RSS before any client connected, MiB.
    pub relay_rss_before_mib: Option<f64>,
    /// Relay RSS with every client connected and bound, MiB.
    pub relay_rss_connected_mib: Option<f64>,
    /// Relay memory per connected client, KiB.
    pub relay_kib_per_client: Option<f64>,
    /// Each pattern × payload.
    pub cases: Vec<CaseReport>,
    /// `--find-max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub find_max: Option<FindMaxReport>,
}

/// One step of `--find-max`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Datagrams per second per flow.
    pub rate_per_flow: f64,
    /// Datagrams per second offered.
    pub offered_per_s: f64,
    /// Deliveries per second.
    pub delivered_per_s: f64,
    /// Loss.
    pub loss_pct: f64,
    /// 99th-percentile latency.
    pub p99_us: f64,
    /// Server cores busy.
    pub server_cores: Option<f64>,
    /// Generator cores busy.
    pub generator_cores: Option<f64>,
    /// Cores other processes kept busy.
    pub other_cores: Option<f64>,
    /// Datagrams the relay counted as dropped (its `/metrics`).
    pub server_dropped: Option<u64>,
    /// Datagrams the kernel dropped at the server's socket.
    pub server_socket_drops: Option<u64>,
    /// Whether it passed.
    pub pass: bool,
    /// Which side ran out first.
    pub saturated: String,
}

impl Step {
    /// A step's summary of a run.
    pub fn of(r: &TrafficReport) -> Step {
        Step {
            rate_per_flow: r.rate_per_flow,
            offered_per_s: r.offered_per_s,
            delivered_per_s: r.delivered_per_s,
            loss_pct: r.loss_pct,
            p99_us: r.latency.p99_us,
            server_cores: r.cpu.server_cores,
            generator_cores: r.cpu.generator_cores,
            other_cores: r.cpu.other_cores,
            server_dropped: r.server_metrics.as_ref().map(|m| m.dropped.values().sum()),
            server_socket_drops: r.kernel_udp.and_then(|k| k.server_socket_drops),
            pass: r.pass,
            saturated: r.saturated.clone(),
        }
    }
}

/// `--find-max` against one target.
#[derive(Debug, Clone, Serialize)]
pub struct MaxSearch {
    /// `baton` or `udp-forwarder`.
    pub target: &'static str,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// Highest passing rate per flow.
    pub max_rate_per_flow: Option<f64>,
    /// Deliveries per second at that rate.
    pub max_delivered_per_s: Option<f64>,
    /// Why the search stopped.
    pub stopped: String,
}

/// `--find-max` on both targets.
#[derive(Debug, Clone, Serialize)]
pub struct FindMaxReport {
    /// The pattern searched.
    pub pattern: Pattern,
    /// The payload searched.
    pub payload_bytes: usize,
    /// Baton.
    pub baton: MaxSearch,
    /// The UDP forwarder.
    pub ceiling: Option<MaxSearch>,
    /// Baton's maximum ÷ the forwarder's.
    pub ratio: Option<f64>,
}

/// Allocation churn.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// How the relay was run.
    pub relay: String,
    /// Cycles attempted (create, one join, close).
    pub attempted: usize,
    /// Cycles that completed.
    pub completed: usize,
    /// Cycles run at once.
    pub concurrency: usize,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
    /// Completed cycles per second: allocations created (and closed) per second.
    pub allocations_per_s: f64,
    /// Host handshake.
    pub host_connect: Latency,
    /// `CreateAllocation` → `AllocationCreated`.
    pub create: Latency,
    /// Peer handshake.
    pub peer_connect: Latency,
    /// `Join` → `Joined`.
    pub join: Latency,
    /// Peer closes → host reads `PeerLeft`.
    pub leave_notice: Latency,
    /// Whole cycle.
    pub cycle: Latency,
    /// Failures by stage and reason.
    pub failures: BTreeMap<String, u64>,
    /// Relay CPU-seconds per 1000 cycles.
    pub relay_cpu_s_per_1000: Option<f64>,
    /// CPU use during the churn.
    pub cpu: Cpu,
    /// Kernel UDP drops during the churn (a lost handshake packet costs a 1 s retransmission;
    /// a lost close leaves the relay holding the connection until its idle timeout).
    pub kernel_udp: Option<KernelUdp>,
    /// Seconds after the last close until the relay reported no connections and no
    /// allocations (`None`: it did not, within 15 s, or has no admin server).
    pub drained_s: Option<f64>,
    /// Relay RSS before and after, MiB.
    pub relay_rss_before_mib: Option<f64>,
    /// Relay RSS after the churn, MiB.
    pub relay_rss_after_mib: Option<f64>,
}

/// Join-by-code latency.
#[derive(Debug, Clone, Serialize)]
pub struct JoinReport {
    /// How the relay was run.
    pub relay: String,
    /// Joins attempted.
    pub attempted: usize,
    /// Joins that succeeded.
    pub completed: usize,
    /// Joins at once.
    pub concurrency: usize,
    /// Allocations joined into.
    pub allocations: usize,
    /// Handshake of the joining connection.
    pub connect: Latency,
    /// `Join` → `Joined`: join by code on an established connection.
    pub join: Latency,
    /// Handshake plus join.
    pub total: Latency,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Kernel UDP drops during the joins.
    pub kernel_udp: Option<KernelUdp>,
}

/// Idle clients held.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// How the relay was run.
    pub relay: String,
    /// Clients asked for.
    pub clients: usize,
    /// Clients connected and bound.
    pub connected: usize,
    /// Members per allocation.
    pub members: usize,
    /// Seconds to connect them all.
    pub connect_s: f64,
    /// Clients connected per second.
    pub connects_per_s: f64,
    /// Seconds held.
    pub hold_s: f64,
    /// Relay RSS before any client, MiB.
    pub relay_rss_before_mib: Option<f64>,
    /// Highest relay RSS while they were connected, MiB.
    pub relay_rss_peak_mib: Option<f64>,
    /// Relay RSS after every client left, MiB.
    pub relay_rss_after_mib: Option<f64>,
    /// Relay memory per connected client, KiB.
    pub relay_kib_per_client: Option<f64>,
    /// Whether RSS came back within 10 % of where it started (after the last round).
    pub rss_returned_within_10pct: Option<bool>,
    /// Whether RSS after the last round is within 10 % of RSS after the first (no growth
    /// from round to round, so no leak).
    pub rss_steady_across_rounds: Option<bool>,
    /// Relay cores busy just keeping the idle clients (keepalives).
    pub relay_idle_cores: Option<f64>,
    /// Load-generator memory per client, KiB.
    pub generator_kib_per_client: Option<f64>,
    /// Seconds until the relay reported no connections after they all left.
    pub drained_s: Option<f64>,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Each round of connect, hold, leave.
    pub rounds: Vec<IdleRound>,
}

/// One round of the idle benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRound {
    /// Clients connected.
    pub connected: usize,
    /// Seconds to connect them.
    pub connect_s: f64,
    /// Highest relay RSS, MiB.
    pub relay_rss_peak_mib: Option<f64>,
    /// Relay RSS after they all left, MiB.
    pub relay_rss_after_mib: Option<f64>,
    /// Seconds after they left until relay RSS was back within 10 % of its start (none: it was
    /// not, within the watch).
    pub relay_rss_returned_s: Option<f64>,
    /// Seconds until the relay reported no connections.
    pub drained_s: Option<f64>,
    /// Kernel UDP drops while they left (a lost close leaves the relay holding the connection
    /// until its idle timeout).
    pub kernel_udp_at_close: Option<KernelUdp>,
}

/// Prints the human-readable report.
pub fn print_human(report: &Report) {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "baton-bench: {} CPUs, load average {} at start, generator {} threads / {} endpoints",
        m.cpus,
        m.load_average_at_start
            .map_or_else(|| "?".to_owned(), |l| format!("{l:.2}")),
        m.generator_threads,
        m.generator_endpoints
    );
    if let Some(load) = &report.load {
        human_load(&mut out, load);
    }
    if let Some(c) = &report.churn {
        human_churn(&mut out, c);
    }
    if let Some(j) = &report.join {
        human_join(&mut out, j);
    }
    if let Some(i) = &report.idle {
        human_idle(&mut out, i);
    }
    if !report.warnings.is_empty() {
        out.push_str("\nWARNINGS:\n");
        for w in &report.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    if report.errors.is_empty() {
        out.push_str(
            "\ncorrectness: no misdelivered, duplicated or spoofed datagrams, no failed set-ups\n",
        );
    } else {
        out.push_str("\nERRORS:\n");
        for e in &report.errors {
            let _ = writeln!(out, "  - {e}");
        }
    }
    print!("{out}");
}

/// A number with `decimals` decimals, or `-`.
fn opt(v: Option<f64>, decimals: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// MiB with one decimal, or `-`.
fn mib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1} MiB"))
}

/// The load section.
fn human_load(out: &mut String, load: &LoadReport) {
    let _ = writeln!(out, "\n== load: {}", load.relay);
    let _ = writeln!(
        out,
        "{} allocations x {} members = {} clients, set up in {:.1} s; relay RSS {} before, {} connected ({} KiB per client)",
        load.allocations,
        load.members,
        load.clients,
        load.setup_s,
        mib(load.relay_rss_before_mib),
        mib(load.relay_rss_connected_mib),
        opt(load.relay_kib_per_client, 1)
    );
    for case in &load.cases {
        human_case(out, case);
    }
    if let Some(fm) = &load.find_max {
        let _ = writeln!(
            out,
            "\n-- find-max: {}, {} B payload (highest rate with loss < {LOSS_THRESHOLD_PCT} %)",
            fm.pattern.name(),
            fm.payload_bytes
        );
        for search in std::iter::once(&fm.baton).chain(fm.ceiling.as_ref()) {
            let _ = writeln!(out, "  {}:", search.target);
            for s in &search.steps {
                let _ = writeln!(
                    out,
                    "    {:>8.1}/s/flow offered {:>7.0}/s delivered {:>7.0}/s loss {:>7.3}% p99 {:>8.1}us | cores: server {} gen {} other {} | drops: relay {} socket {} | {}",
                    s.rate_per_flow,
                    s.offered_per_s,
                    s.delivered_per_s,
                    s.loss_pct,
                    s.p99_us,
                    opt(s.server_cores, 2),
                    opt(s.generator_cores, 2),
                    opt(s.other_cores, 2),
                    s.server_dropped.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    s.server_socket_drops.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    if s.pass { "pass" } else { "FAIL" }
                );
            }
            let _ = writeln!(
                out,
                "    max: {} /s per flow = {} deliveries/s ({})",
                opt(search.max_rate_per_flow, 1),
                opt(search.max_delivered_per_s, 0),
                search.stopped
            );
        }
        if let Some(r) = fm.ratio {
            let _ = writeln!(out, "  baton max / udp max = {r:.2}");
        }
    }
}

/// One case: Baton and the ceiling side by side.
fn human_case(out: &mut String, case: &CaseReport) {
    let b = &case.baton;
    let _ = writeln!(
        out,
        "\n-- {}, {} B payload, {}/s per flow ({} flows), {:.0} s window",
        b.pattern.name(),
        b.payload_bytes,
        b.rate_per_flow,
        b.flows,
        b.window_s
    );
    let c = case.ceiling.as_ref();
    let r = case.ratio.as_ref();
    if let Some(cost) = b.server_cpu_s_per_100k {
        let _ = write!(
            out,
            "  HEADLINE: relay {cost:.3} CPU-s per 100k datagrams ({} datagrams per CPU-second)",
            opt(b.datagrams_per_server_cpu_s, 0)
        );
        match r.and_then(|r| r.cpu_per_datagram) {
            Some(x) => {
                let _ = writeln!(out, ", {x:.2}x the plain UDP forwarder's");
            }
            None => out.push('\n'),
        }
    }
    let _ = writeln!(
        out,
        "  {:<34}{:>16}{:>16}{:>12}",
        "",
        b.target,
        c.map_or("", |c| c.target),
        if c.is_some() { "baton/udp" } else { "" }
    );
    let mut row = |name: &str, f: &dyn Fn(&TrafficReport) -> String, ratio: Option<f64>| {
        let _ = writeln!(
            out,
            "  {:<34}{:>16}{:>16}{:>12}",
            name,
            f(b),
            c.map_or_else(String::new, f),
            ratio.map_or_else(String::new, |x| opt(Some(x), 2))
        );
    };
    row(
        "offered datagrams/s",
        &|t| format!("{:.0}", t.offered_per_s),
        None,
    );
    row(
        "delivered datagrams/s",
        &|t| format!("{:.0}", t.delivered_per_s),
        r.map(|r| r.throughput),
    );
    row(
        "payload MB/s",
        &|t| format!("{:.2}", t.payload_bytes_per_s / 1e6),
        None,
    );
    row("loss %", &|t| format!("{:.3}", t.loss_pct), None);
    row(
        "latency p50 us",
        &|t| format!("{:.1}", t.latency.p50_us),
        r.map(|r| r.latency_p50),
    );
    row(
        "latency p99 us",
        &|t| format!("{:.1}", t.latency.p99_us),
        r.map(|r| r.latency_p99),
    );
    row(
        "latency p99.9 us",
        &|t| format!("{:.1}", t.latency.p999_us),
        None,
    );
    row(
        "latency max us",
        &|t| format!("{:.1}", t.latency.max_us),
        None,
    );
    row("server CPU cores", &|t| opt(t.cpu.server_cores, 3), None);
    row(
        "server CPU-s per 100k datagrams",
        &|t| opt(t.server_cpu_s_per_100k, 4),
        r.and_then(|r| r.cpu_per_datagram),
    );
    row(
        "datagrams per server CPU-s",
        &|t| opt(t.datagrams_per_server_cpu_s, 0),
        None,
    );
    row(
        "server RSS / peak MiB",
        &|t| {
            format!(
                "{}/{}",
                opt(t.server_rss_mib, 1),
                opt(t.server_peak_rss_mib, 1)
            )
        },
        None,
    );
    row(
        "generator CPU cores",
        &|t| opt(t.cpu.generator_cores, 3),
        None,
    );
    row(
        "other processes, cores",
        &|t| opt(t.cpu.other_cores, 3),
        None,
    );
    row(
        "gen drops/skipped/late",
        &|t| {
            format!(
                "{}/{}/{}",
                t.generator.local_drops, t.generator.skipped, t.generator.late
            )
        },
        None,
    );
    row(
        "misdelivered/dup/src-mismatch",
        &|t| {
            format!(
                "{}/{}/{}",
                t.errors.misdelivered, t.errors.duplicates, t.errors.source_mismatch
            )
        },
        None,
    );
    if let Some(m) = &b.server_metrics {
        let _ = writeln!(
            out,
            "  relay metrics: forwarded {} in the window, dropped {:?}; drop reports to clients {:?}",
            m.forwarded, m.dropped, b.reported_drops
        );
    }
    for t in std::iter::once(b).chain(c) {
        if let Some(k) = t.kernel_udp.filter(|k| k.rcvbuf_errors > 0) {
            kernel_line(out, &format!("{}: ", t.target), Some(&k));
        }
    }
    let _ = writeln!(out, "  saturated first (baton): {}", b.saturated);
    if let Some(c) = c {
        let _ = writeln!(out, "  saturated first (udp):   {}", c.saturated);
    }
}

/// One latency histogram's percentiles.
fn latency_line(out: &mut String, name: &str, l: &Latency) {
    let _ = writeln!(
        out,
        "  {:<22} p50 {:>9.1} us  p99 {:>9.1} us  p99.9 {:>9.1} us  max {:>9.1} us  (n={})",
        name, l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
    );
}

/// The churn section.
fn human_churn(out: &mut String, c: &ChurnReport) {
    let _ = writeln!(out, "\n== churn: {}", c.relay);
    let _ = writeln!(
        out,
        "  {} of {} cycles (connect host, create, connect peer, join, peer leaves, host leaves) at concurrency {} in {:.2} s: {:.1} allocations/s",
        c.completed, c.attempted, c.concurrency, c.elapsed_s, c.allocations_per_s
    );
    latency_line(out, "host handshake", &c.host_connect);
    latency_line(out, "create", &c.create);
    latency_line(out, "peer handshake", &c.peer_connect);
    latency_line(out, "join by code", &c.join);
    latency_line(out, "peer left -> host told", &c.leave_notice);
    latency_line(out, "whole cycle", &c.cycle);
    let _ = writeln!(
        out,
        "  relay CPU-s per 1000 cycles {}, relay {} cores, generator {} cores, other {} cores",
        opt(c.relay_cpu_s_per_1000, 3),
        opt(c.cpu.server_cores, 2),
        opt(c.cpu.generator_cores, 2),
        opt(c.cpu.other_cores, 2)
    );
    kernel_line(out, "", c.kernel_udp.as_ref());
    let _ = writeln!(
        out,
        "  relay RSS {} before, {} after; empty again after {} s; failures {:?}",
        mib(c.relay_rss_before_mib),
        mib(c.relay_rss_after_mib),
        opt(c.drained_s, 2),
        c.failures
    );
}

/// The join section.
fn human_join(out: &mut String, j: &JoinReport) {
    let _ = writeln!(out, "\n== join by code: {}", j.relay);
    let _ = writeln!(
        out,
        "  {} of {} joins into {} allocations at concurrency {}; failures {:?}",
        j.completed, j.attempted, j.allocations, j.concurrency, j.failures
    );
    latency_line(out, "handshake", &j.connect);
    latency_line(out, "join (Join->Joined)", &j.join);
    latency_line(out, "handshake + join", &j.total);
    kernel_line(out, "", j.kernel_udp.as_ref());
}

/// Kernel UDP drops, if known.
fn kernel_line(out: &mut String, prefix: &str, k: Option<&KernelUdp>) {
    if let Some(k) = k {
        let _ = writeln!(
            out,
            "  {prefix}kernel UDP receive-buffer overflows: {} machine-wide, {} at the server's socket",
            k.rcvbuf_errors,
            k.server_socket_drops
                .map_or_else(|| "?".to_owned(), |d| d.to_string())
        );
    }
}

/// The idle section.
fn human_idle(out: &mut String, i: &IdleReport) {
    let _ = writeln!(out, "\n== idle clients: {}", i.relay);
    let _ = writeln!(
        out,
        "  {} of {} clients ({} per allocation) connected in {:.1} s ({:.0}/s), held {:.0} s; failures {:?}",
        i.connected, i.clients, i.members, i.connect_s, i.connects_per_s, i.hold_s, i.failures
    );
    let _ = writeln!(
        out,
        "  relay RSS: before {}, peak {}, after all left {} -> {} KiB per client; back within 10 %: {}",
        mib(i.relay_rss_before_mib),
        mib(i.relay_rss_peak_mib),
        mib(i.relay_rss_after_mib),
        opt(i.relay_kib_per_client, 1),
        i.rss_returned_within_10pct
            .map_or("-", |ok| if ok { "yes" } else { "NO" })
    );
    let _ = writeln!(
        out,
        "  relay CPU holding them: {} cores; generator {} KiB per client; relay empty {} s after they left",
        opt(i.relay_idle_cores, 3),
        opt(i.generator_kib_per_client, 1),
        opt(i.drained_s, 2)
    );
    for (n, r) in i.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "  round {}: {} clients in {:.1} s, relay RSS peak {}, after {} ({}), empty after {} s, kernel drops at close {} (relay socket {})",
            n + 1,
            r.connected,
            r.connect_s,
            mib(r.relay_rss_peak_mib),
            mib(r.relay_rss_after_mib),
            r.relay_rss_returned_s.map_or_else(
                || "not back within 10 % of the start".to_owned(),
                |s| format!("back within 10 % of the start in {s:.1} s")
            ),
            opt(r.drained_s, 2),
            r.kernel_udp_at_close.map_or_else(|| "-".to_owned(), |k| k.rcvbuf_errors.to_string()),
            r.kernel_udp_at_close
                .and_then(|k| k.server_socket_drops)
                .map_or_else(|| "-".to_owned(), |d| d.to_string())
        );
    }
    if let Some(steady) = i.rss_steady_across_rounds {
        let _ = writeln!(
            out,
            "  RSS after the last round within 10 % of after the first (no growth): {}",
            if steady { "yes" } else { "NO" }
        );
    }
}

/// A progress line on stderr: rewritten in place on a terminal, one line per update
/// otherwise (CI logs).
pub struct Progress {
    tty: bool,
    last: Option<Instant>,
    every: Duration,
    dirty: bool,
}

impl Progress {
    /// A progress writer updating at most once a second.
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
            every: Duration::from_secs(1),
            dirty: false,
        }
    }

    /// Shows `line` if the last update is old enough.
    pub fn update(&mut self, line: impl FnOnce() -> String) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        let line = line();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.dirty = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Ends the line in place, so later output starts on a fresh one.
    pub fn done(&mut self) {
        if self.dirty {
            let _ = writeln!(std::io::stderr());
            self.dirty = false;
        }
        self.last = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

/// A note on stderr (set-up steps), ending any progress line first.
pub fn note(progress: &mut Progress, text: impl std::fmt::Display) {
    progress.done();
    eprintln!("{text}");
}
