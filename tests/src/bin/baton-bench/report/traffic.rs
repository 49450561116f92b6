//! One traffic run as reported: [`TrafficReport`] with its correctness counters, generator
//! health and the relay's own counts, derived from the raw [`RunFigures`] a run measured
//! (`load::Target::run`, on the generator runtime, after the run's window closed).

use std::collections::BTreeMap;

use serde::Serialize;

use super::saturation::verdict;
use super::{Latency, LOSS_THRESHOLD_PCT};
use crate::probe::{Cpu, KernelUdp};
use crate::traffic::{Pattern, RecvStats, RunSpec, SendStats};

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
    /// `baton`, `udp-forwarder` or `coturn`.
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
    /// `baton`, `udp-forwarder` or `coturn`.
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
