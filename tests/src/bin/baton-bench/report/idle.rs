//! The idle-client section of the report: relay memory per connected idle client and
//! whether it comes back ([`IdleReport`], one [`IdleRound`] per round), filled in by
//! `idle::run` on the generator runtime.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::probe::KernelUdp;

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
    /// What hosts' heartbeats cost (SPEC section 11.1): idle two-member allocations held
    /// with the default host-loss timeout, then with one equal to the keepalive timeout.
    pub heartbeats: Vec<HeartbeatCost>,
}

/// Idle allocations (a host and one peer, no game traffic) held with one host-loss timeout,
/// their hosts sending heartbeats as the SDK does (an empty datagram every sixth of the timeout
/// unless anything else was sent since the last one).
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatCost {
    /// The host-loss timeout the allocations asked for, ms.
    pub host_loss_timeout_ms: u16,
    /// Interval between the hosts' heartbeat checks, ms.
    pub heartbeat_interval_ms: u64,
    /// Allocations held.
    pub allocations: usize,
    /// Seconds held.
    pub hold_s: f64,
    /// Relay cores busy holding them.
    pub relay_cores: Option<f64>,
    /// UDP payload bytes the relay received and sent for one allocation (host and peer, both
    /// ways, QUIC keepalives and acknowledgements included) per second.
    pub bytes_per_allocation_per_s: f64,
    /// UDP datagrams the relay received and sent for one allocation per second.
    pub datagrams_per_allocation_per_s: f64,
    /// Heartbeats the hosts sent, per host per second.
    pub heartbeats_per_host_per_s: f64,
    /// Members that left while held (a host lost to its timeout would count): should be 0.
    pub departures: u64,
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
