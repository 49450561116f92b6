//! The load section of the report: each pattern × payload on Baton, on the ceiling and on
//! coturn ([`CaseReport`], [`Ratio`]), and the `--find-max` search ([`FindMaxReport`],
//! [`Step`]).
//! Assembled by `load::run` on the generator runtime.

use serde::Serialize;

use super::TrafficReport;
use crate::traffic::Pattern;

/// Baton's figures as a multiple of another target's (the UDP forwarder or coturn), measured
/// in the same run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratio {
    /// Delivered datagrams/s, Baton ÷ other.
    pub throughput: f64,
    /// Median latency, Baton ÷ other.
    pub latency_p50: f64,
    /// 99th-percentile latency, Baton ÷ other.
    pub latency_p99: f64,
    /// Server CPU per delivered datagram, Baton ÷ other.
    pub cpu_per_datagram: Option<f64>,
}

impl Ratio {
    /// Baton ÷ `udp` (the other target).
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

/// One pattern and payload, on Baton, on the ceiling and on coturn.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// Through the relay.
    pub baton: TrafficReport,
    /// Through the plain UDP forwarder.
    pub ceiling: Option<TrafficReport>,
    /// Baton ÷ ceiling.
    pub ratio: Option<Ratio>,
    /// Through coturn (`--compare coturn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coturn: Option<TrafficReport>,
    /// Baton ÷ coturn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coturn_ratio: Option<Ratio>,
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
    /// How coturn ran for `--compare coturn`, or why it was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coturn: Option<String>,
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
    /// `baton`, `udp-forwarder` or `coturn`.
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

/// `--find-max` on every target.
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
    /// coturn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coturn: Option<MaxSearch>,
    /// Baton's maximum ÷ coturn's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coturn_ratio: Option<f64>,
}
