//! What the soak's tasks share: the settings of the run, the relay's addresses, counters, the
//! failures found so far, and which allocation belongs to which game.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton_client::{ClientConfig, Trust};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::gate::Gate;
use crate::relay::RelayApi;

/// Settings of the run that the games and probes use.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Peers per game besides the host, at the start of a game.
    pub peers: usize,
    /// Ticks per second.
    pub rate: u32,
    /// Payload bytes.
    pub payload: usize,
    /// A member sends to another non-host member every this many ticks.
    pub p2p_every: u64,
    /// Mean time between membership actions of one game.
    pub churn_every: Duration,
    /// Share of clients that run as their own process (the ones that can be killed).
    pub process_fraction: f64,
    /// Clients' keepalive interval.
    pub keepalive_interval: Duration,
    /// The relay's keepalive timeout.
    pub keepalive_timeout: Duration,
    /// The relay's bind timeout.
    pub bind_timeout: Duration,
    /// The relay's host bind timeout (reservations).
    pub host_bind_timeout: Duration,
    /// Join-code lifetime asked for by the expiry probe.
    pub code_ttl: Duration,
    /// Mean time between expiry probes.
    pub expiry_every: Duration,
    /// Time a migration may take once the relay knows the host is gone.
    pub migration_bound: Duration,
    /// With a fleet: how long clients try to resume through the other nodes (0: no fleet,
    /// no fallback relays).
    pub resume_window: Duration,
    /// With a fleet: time every member of a game on a killed node has to resume.
    pub resume_bound: Duration,
    /// With a fleet: time every member of a game on a drained node has to relocate.
    pub relocate_bound: Duration,
    /// The SDK log filter of player processes and the directory their logs go to.
    pub player_log: Option<(String, std::path::PathBuf)>,
}

/// A relay (a node of the fleet) as clients and probes reach it.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    /// Its node id (`relay` for a relay alone).
    pub id: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its admin API.
    pub api: RelayApi,
}

/// Everything shared by the soak's tasks.
pub struct Ctx {
    /// Settings.
    pub opts: Opts,
    /// The relay's certificate fingerprint (one certificate for every node of a fleet).
    pub fingerprint: String,
    /// Its certificate (PEM), for raw QUIC connections.
    pub cert: PathBuf,
    /// Whether the run is against a fleet (`--nodes` of 2 or more).
    pub fleet: bool,
    /// Pauses the games around a node drain or kill, and tells them which it was.
    pub gate: Gate,
    /// Relocation times, ms: a node's drain started to the last member of a game relocated.
    pub relocation_ms: Mutex<Histogram<u64>>,
    /// Resume times, ms: a node killed to the last member of a game resumed.
    pub resume_ms: Mutex<Histogram<u64>>,
    /// This executable (re-run as `player` for clients in their own process).
    pub exe: PathBuf,
    /// When the run started.
    pub started: Instant,
    /// When churn stops and everyone leaves.
    pub churn_end: Instant,
    /// Counters.
    pub stats: Stats,
    /// Failures found.
    pub failures: Failures,
    /// One-way datagram latency at in-process receivers, µs.
    pub latency: Arc<Mutex<Histogram<u64>>>,
    /// Migration times, ms (host loss to every member migrated).
    pub migration_ms: Mutex<Histogram<u64>>,
    /// The first few steady-loss gaps, described.
    pub loss_examples: Mutex<Vec<String>>,
    allocs: Mutex<HashMap<u64, u32>>,
    /// Every node started, and whether it takes new clients (not draining, killed or gone).
    nodes: Mutex<Vec<(NodeAddr, bool)>>,
    next_uid: AtomicU64,
    next_game: AtomicU32,
    aborted: AtomicBool,
}

impl Ctx {
    /// The shared state of a run.
    pub fn new(
        opts: Opts,
        nodes: Vec<NodeAddr>,
        (fingerprint, cert): (String, PathBuf),
        exe: PathBuf,
        duration: Duration,
    ) -> anyhow::Result<Ctx> {
        let started = Instant::now();
        let hist = || Histogram::new_with_bounds(1, 600_000, 3);
        Ok(Ctx {
            opts,
            fingerprint,
            cert,
            fleet: nodes.len() > 1,
            gate: Gate::default(),
            relocation_ms: Mutex::new(hist()?),
            resume_ms: Mutex::new(hist()?),
            nodes: Mutex::new(nodes.into_iter().map(|n| (n, true)).collect()),
            exe,
            started,
            churn_end: started + duration,
            stats: Stats::default(),
            failures: Failures::default(),
            latency: Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?)),
            migration_ms: Mutex::new(Histogram::new_with_bounds(1, 600_000, 3)?),
            loss_examples: Mutex::new(Vec::new()),
            allocs: Mutex::new(HashMap::new()),
            next_uid: AtomicU64::new(1),
            next_game: AtomicU32::new(1),
            aborted: AtomicBool::new(false),
        })
    }

    /// Whether the churn phase is still on.
    pub fn churning(&self) -> bool {
        Instant::now() < self.churn_end && !self.aborted.load(Ordering::Relaxed)
    }

    /// Ends the churn phase early (the relay died: nothing more to learn).
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed);
    }

    /// Whether the run was cut short.
    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }

    /// Seconds since the start, for messages.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// A fresh client uid.
    pub fn next_uid(&self) -> u64 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh game id.
    pub fn next_game(&self) -> u32 {
        self.next_game.fetch_add(1, Ordering::Relaxed)
    }

    /// Records that allocation `alloc` belongs to game `game`.
    pub fn register_alloc(&self, alloc: u64, game: u32) {
        lock(&self.allocs).insert(alloc, game);
    }

    /// The game allocation `alloc` belongs to, if known.
    pub fn alloc_game(&self, alloc: u64) -> Option<u32> {
        lock(&self.allocs).get(&alloc).copied()
    }

    /// An SDK configuration for probes connecting to `relay`.
    pub fn client_config(&self, relay: SocketAddr) -> anyhow::Result<ClientConfig> {
        Ok(
            ClientConfig::new(relay, Trust::fingerprint_hex(&self.fingerprint)?)
                .keep_alive_interval(self.opts.keepalive_interval),
        )
    }

    /// The nodes that take new clients, in the order they were started.
    pub fn live_nodes(&self) -> Vec<NodeAddr> {
        lock(&self.nodes)
            .iter()
            .filter(|(_, live)| *live)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The `i`-th node that takes new clients (modulo their number), and the others (a
    /// client's fallback relays). `None` only if every node is gone.
    pub fn node_at(&self, i: usize) -> Option<(NodeAddr, Vec<SocketAddr>)> {
        let live = self.live_nodes();
        if live.is_empty() {
            return None;
        }
        let pick = live[i % live.len()].clone();
        let others = live
            .iter()
            .filter(|n| n.addr != pick.addr)
            .map(|n| n.addr)
            .collect();
        Some((pick, others))
    }

    /// Any node ever started, by QUIC address.
    pub fn node_by_addr(&self, addr: SocketAddr) -> Option<NodeAddr> {
        lock(&self.nodes)
            .iter()
            .find(|(n, _)| n.addr == addr)
            .map(|(n, _)| n.clone())
    }

    /// Adds a node that takes new clients.
    pub fn add_node(&self, node: NodeAddr) {
        lock(&self.nodes).push((node, true));
    }

    /// A node takes no more new clients (it drains, is killed, or the run ends).
    pub fn retire_node(&self, addr: SocketAddr) {
        for (n, live) in lock(&self.nodes).iter_mut() {
            if n.addr == addr {
                *live = false;
            }
        }
    }

    /// Records a failure.
    pub fn fail(&self, check: Check, what: impl Into<String>) {
        self.failures.record(check, self.elapsed_s(), what.into());
    }
}

/// Locks a mutex, going on with the data if a panicking thread poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The checks a run makes; every failure belongs to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Every host loss with members left migrates, on every member, within the bound.
    Migration,
    /// No datagram reaches a wrong peer or allocation, carries a wrong sender, or arrives
    /// corrupted or twice.
    Routing,
    /// Loss between membership changes under the threshold; no flow stalls.
    Loss,
    /// Joins, leaves, crashes and rejoins are seen by every member as they should be.
    Membership,
    /// Unbound connections, short-lived codes and unclaimed reservations expire.
    Expiry,
    /// After everyone leaves the relay holds nothing (admin API and metrics agree).
    Drain,
    /// The relay's counters (joins, rejoins, allocations, departures and refusals by reason)
    /// equal what the soak did.
    Counters,
    /// The relay's memory shows no growth trend.
    Memory,
    /// The relay logs no errors, writes nothing to stderr and stays up.
    RelayHealth,
    /// The soak could exercise what it claims (scenarios happened, clients could enter).
    Coverage,
    /// With a fleet: every game on a drained node relocates, every game on a killed node
    /// resumes, with ids and codes kept and datagrams flowing again.
    Fleet,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 11] = [
        Check::Migration,
        Check::Routing,
        Check::Loss,
        Check::Membership,
        Check::Expiry,
        Check::Drain,
        Check::Counters,
        Check::Memory,
        Check::RelayHealth,
        Check::Coverage,
        Check::Fleet,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Check::Migration => "migration",
            Check::Routing => "routing",
            Check::Loss => "loss",
            Check::Membership => "membership",
            Check::Expiry => "expiry",
            Check::Drain => "drain",
            Check::Counters => "counters",
            Check::Memory => "memory",
            Check::RelayHealth => "relay_health",
            Check::Coverage => "coverage",
            Check::Fleet => "fleet",
        }
    }
}

/// One failure.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Which check.
    pub check: Check,
    /// Seconds into the run.
    pub at_s: f64,
    /// What happened.
    pub what: String,
}

/// Failures kept verbatim per check; the rest are only counted.
const KEEP_PER_CHECK: usize = 25;

/// The failures of a run: the first few of each check verbatim, all counted. Each kept
/// failure is also printed to stderr as it is found.
#[derive(Debug, Default)]
pub struct Failures {
    inner: Mutex<FailuresInner>,
}

#[derive(Debug, Default)]
struct FailuresInner {
    kept: Vec<Failure>,
    counts: BTreeMap<Check, u64>,
}

impl Failures {
    /// Counts a failure, keeping and printing it if it is among the first of its check.
    fn record(&self, check: Check, at_s: f64, what: String) {
        let mut inner = lock(&self.inner);
        let count = inner.counts.entry(check).or_default();
        *count += 1;
        if *count <= KEEP_PER_CHECK as u64 {
            eprintln!("FAIL [{:>7.1}s] {}: {what}", at_s, check.name());
            inner.kept.push(Failure { check, at_s, what });
        } else if *count == KEEP_PER_CHECK as u64 + 1 {
            eprintln!(
                "FAIL {}: more failures of this check are counted, not printed",
                check.name()
            );
        }
    }

    /// Failures of `check` so far.
    pub fn count(&self, check: Check) -> u64 {
        lock(&self.inner).counts.get(&check).copied().unwrap_or(0)
    }

    /// All failures so far.
    pub fn total(&self) -> u64 {
        lock(&self.inner).counts.values().sum()
    }

    /// The failures kept verbatim.
    pub fn kept(&self) -> Vec<Failure> {
        lock(&self.inner).kept.clone()
    }
}

/// A counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the run did and saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Games (allocations created by a host) started.
    pub games_started: Counter,
    /// Games ended by everyone leaving during the churn phase.
    pub games_ended: Counter,
    /// Peers that joined by code.
    pub joins: Counter,
    /// Peers that left cleanly.
    pub leaves: Counter,
    /// Hosts that left cleanly.
    pub host_closes: Counter,
    /// Hosts killed (SIGKILL of their process).
    pub host_crashes: Counter,
    /// Non-host members killed.
    pub peer_crashes: Counter,
    /// Members that came back with a reconnect token.
    pub rejoins: Counter,
    /// Members that left cleanly when their game ended (or the run did).
    pub end_closes: Counter,
    /// Members killed when their game ended (or the run did).
    pub end_kills: Counter,
    /// Joins by the expiry probe (within a code's lifetime).
    pub probe_joins: Counter,
    /// Clean departures of the expiry probe's clients.
    pub probe_closes: Counter,
    /// Allocations the expiry probes created or reserved.
    pub probe_allocations: Counter,
    /// Joins of the expiry probe meant to be within a code's lifetime that a slow machine
    /// made too late (refused with `expired`, which is right).
    pub probe_late_joins: Counter,
    /// Client processes started.
    pub processes: Counter,
    /// Migrations completed on every member.
    pub migrations: Counter,
    /// Migrations that failed or missed the bound.
    pub migrations_failed: Counter,
    /// Host losses with no member left (the allocation closes instead).
    pub closed_without_members: Counter,
    /// New hosts that received a snapshot.
    pub snapshots: Counter,
    /// Datagrams handed to QUIC.
    pub sent: Counter,
    /// Deliveries those should make.
    pub deliveries: Counter,
    /// Soak datagrams received.
    pub received: Counter,
    /// Datagrams missing from flows between membership changes.
    pub lost_steady: Counter,
    /// Datagrams missing around membership changes (not counted against the threshold).
    pub lost_churn: Counter,
    /// Datagrams that arrived after a later one of their flow.
    pub late: Counter,
    /// (Receiver, sender) pairs checked for stalls.
    pub flow_checks: Counter,
    /// SDK events dropped because a client's queue was full.
    pub dropped_events: Counter,
    /// Drops the relay reported to senders, by reason.
    pub relay_drops: Mutex<BTreeMap<String, u64>>,
    /// Unbound connections the relay closed at the bind timeout.
    pub bind_expiries: Counter,
    /// Joins refused with `expired` after the code's ttl.
    pub code_expiries: Counter,
    /// Reservations dropped at the host bind timeout.
    pub reservation_expiries: Counter,
    /// Nodes drained (`POST /v1/drain`).
    pub node_drains: Counter,
    /// Nodes killed (SIGKILL).
    pub node_kills: Counter,
    /// Nodes started to replace a drained or killed one.
    pub node_replacements: Counter,
    /// Games whose node drained and that relocated on every member.
    pub relocations: Counter,
    /// Games whose node was killed and that resumed on every member.
    pub resumes: Counter,
    /// Games whose node was killed whose host did not come back in time, so the members
    /// who resumed elected a new one (accounted for, not a failure).
    pub resume_elections: Counter,
    /// Members that saw `Relocated`.
    pub members_relocated: Counter,
    /// Members that saw `Resumed`.
    pub members_resumed: Counter,
    /// `PeerRejoined` heard by members of a relocating game about members that moved after
    /// them (no `PeerLeft` came before).
    pub relocation_echoes: Counter,
    /// `PeerRejoined` heard by members of a resuming game about members that came back after
    /// them.
    pub resume_echoes: Counter,
    /// Datagrams missing around a node's drain (relocation windows).
    pub lost_relocation: Counter,
    /// Datagrams missing around a node's kill (resume windows).
    pub lost_resume: Counter,
    /// Milliseconds from `POST /v1/drain` to the drained node's exit, summed.
    pub drain_ms_total: Counter,
}
