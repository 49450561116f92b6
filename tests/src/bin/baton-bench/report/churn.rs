//! The control-plane sections of the report: allocation churn ([`ChurnReport`]) and
//! join-by-code latency ([`JoinReport`]), filled in by `churn::run_churn` and
//! `churn::run_join` on the generator runtime.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Latency;
use crate::probe::{Cpu, KernelUdp};

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
    /// TLS handshakes: `resumed` (the clients keep and offer session tickets, as the SDK
    /// does) or `full` (`--churn-full-handshakes`).
    pub tls: &'static str,
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
