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
}

/// Everything shared by the soak's tasks.
pub struct Ctx {
    /// Settings.
    pub opts: Opts,
    /// The relay's QUIC address.
    pub relay_addr: SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// Its certificate (PEM), for raw QUIC connections.
    pub cert: PathBuf,
    /// Its admin API.
    pub api: RelayApi,
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
    next_uid: AtomicU64,
    next_game: AtomicU32,
    aborted: AtomicBool,
}

impl Ctx {
    /// The shared state of a run.
    pub fn new(
        opts: Opts,
        relay: (SocketAddr, String, PathBuf, RelayApi),
        exe: PathBuf,
        duration: Duration,
    ) -> anyhow::Result<Ctx> {
        let (relay_addr, fingerprint, cert, api) = relay;
        let started = Instant::now();
        Ok(Ctx {
            opts,
            relay_addr,
            fingerprint,
            cert,
            api,
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

    /// An SDK configuration for in-process clients and probes.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        Ok(
            ClientConfig::new(self.relay_addr, Trust::fingerprint_hex(&self.fingerprint)?)
                .keep_alive_interval(self.opts.keepalive_interval),
        )
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
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 10] = [
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
}
