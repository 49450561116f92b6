//! The traffic every target carries (Baton over QUIC, the plain UDP forwarder of the ceiling
//! run, and coturn over TURN with `--compare coturn`): who sends to whom, when, and what each
//! receiver checks.
//!
//! ## Payload
//! Every datagram's payload starts with a 32-byte [`Stamp`] (run id, sender, intended target,
//! allocation, per-flow sequence number, send time in nanoseconds since the bench's shared
//! [`Instant`] base) and is padded with zeros to the payload size. Sender and receiver read the
//! same clock, so `receive time - send time` is the one-way latency.
//!
//! ## Checks
//! A receiver counts a datagram as misdelivered if it belongs to another allocation, names
//! another target, or comes from the receiver itself; as a source mismatch if the relay's
//! stamped source id is not the sender's peer id; as a duplicate if its sequence number was seen
//! before (a 64-entry sliding window per flow, as in DTLS replay protection). Loss is
//! `1 - received / expected`, where `expected` counts every datagram the senders handed to the
//! transport inside the measurement window once per intended receiver.
//!
//! ## Schedule
//! Each flow sends at a fixed rate with its own phase, phases spread evenly over the period, so
//! the offered load is smooth. A few sender tasks each own a share of the flows sorted by phase
//! and walk them in time order, sleeping until the next one is due: the cost is one wake-up
//! per timer tick, not per datagram. A sender that falls more than
//! [`MAX_LAG`](send::MAX_LAG) behind skips events and counts them: that is the load generator
//! saturating, never hidden as relay loss.
//!
//! ## Code map
//! - this module: the [`Pattern`]s, the [`Topology`] of clients, their [`Flow`]s, a run's
//!   [`RunSpec`], and the [`Shared`] state of one target;
//! - `stamp`: the payload encoding ([`Stamp`], [`STAMP_LEN`]);
//! - `send`: the sender tasks ([`start`], [`Running`](send::Running), [`SendStats`]) and the
//!   [`Transport`] they write to;
//! - `recv`: the checks and counts of each client's receiving task ([`Receiver`],
//!   [`RecvStats`]).

mod recv;
mod send;
mod stamp;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_protocol::datagram;
use serde::Serialize;

pub use self::recv::{new_histogram, Receiver, RecvStats};
pub use self::send::{start, SendStats, Transport};
pub use self::stamp::{Stamp, BROADCAST_TARGET, STAMP_LEN};

/// Who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Every peer sends to its host (one flow per peer).
    PeerToHost,
    /// The host sends to each of its peers (one flow per peer, all sent by the host).
    HostToPeer,
    /// The host broadcasts (one flow per allocation, delivered to every peer).
    Broadcast,
    /// A typical game: peers send to the host and the host broadcasts, both at the rate.
    Game,
}

impl Pattern {
    /// The pattern's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::PeerToHost => "peer-to-host",
            Pattern::HostToPeer => "host-to-peer",
            Pattern::Broadcast => "broadcast",
            Pattern::Game => "game",
        }
    }
}

/// Allocations of equal size; client `g` is member `g % members` of allocation `g / members`,
/// member 0 being the host.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Allocations.
    pub allocations: usize,
    /// Members per allocation, host included.
    pub members: usize,
    /// Each client's peer id, as the relay assigned it.
    pub peer_ids: Vec<u16>,
}

impl Topology {
    /// Clients in all.
    pub fn clients(&self) -> usize {
        self.allocations * self.members
    }

    /// The allocation of client `g`.
    pub fn alloc_of(&self, g: u32) -> u32 {
        g / self.members as u32
    }
}

/// One stream of datagrams from one client to one destination at the run's rate.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// The sending client.
    pub client: u32,
    /// The datagram header: the destination peer id, or broadcast.
    pub header: u16,
    /// The intended receiving client, or [`BROADCAST_TARGET`].
    pub target: u32,
    /// Receivers per datagram.
    pub fanout: u32,
    /// Where in each period this flow sends, as a fraction of the period.
    phase: f64,
    /// Next sequence number.
    seq: u64,
}

/// Every flow of `pattern` over `topo`, with phases spread evenly. No pattern has two flows
/// between the same sender and receiver, so receivers can key duplicate detection by sender.
pub fn flows(topo: &Topology, pattern: Pattern) -> Vec<Flow> {
    let members = topo.members as u32;
    let peers = members - 1;
    let mut flows = Vec::new();
    let mut flow = |client: u32, header: u16, target: u32, fanout: u32| {
        flows.push(Flow {
            client,
            header,
            target,
            fanout,
            phase: 0.0,
            seq: 0,
        })
    };
    for alloc in 0..topo.allocations as u32 {
        let host = alloc * members;
        let host_id = topo.peer_ids[host as usize];
        for peer in host + 1..host + members {
            let peer_id = topo.peer_ids[peer as usize];
            match pattern {
                Pattern::PeerToHost | Pattern::Game => flow(peer, host_id, host, 1),
                Pattern::HostToPeer => flow(host, peer_id, peer, 1),
                Pattern::Broadcast => {}
            }
        }
        if matches!(pattern, Pattern::Broadcast | Pattern::Game) {
            flow(host, datagram::BROADCAST, BROADCAST_TARGET, peers);
        }
    }
    let n = flows.len().max(1) as f64;
    for (i, f) in flows.iter_mut().enumerate() {
        f.phase = i as f64 / n;
    }
    flows
}

/// State shared by senders, receivers and the run driver of one target.
pub struct Shared {
    base: Instant,
    /// The clients and their peer ids.
    pub topo: Topology,
    run: AtomicU32,
    win_start: AtomicU64,
    win_end: AtomicU64,
    shards: Vec<Mutex<RecvStats>>,
}

impl Shared {
    /// Shared state over `topo`; receivers' counters are split into `shards` locks.
    pub fn new(topo: Topology, shards: usize) -> Arc<Shared> {
        Arc::new(Shared {
            base: Instant::now(),
            topo,
            run: AtomicU32::new(0),
            win_start: AtomicU64::new(u64::MAX),
            win_end: AtomicU64::new(u64::MAX),
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(RecvStats::new()))
                .collect(),
        })
    }

    /// Nanoseconds since the shared base.
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The instant `ns` nanoseconds after the base.
    pub fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, RecvStats> {
        self.shards[i % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Datagrams of the current run received so far (inside the window or not).
    pub fn received_so_far(&self) -> u64 {
        (0..self.shards.len())
            .map(|i| {
                let s = self.shard(i);
                s.received + s.outside_window
            })
            .sum()
    }

    /// Takes the receivers' counters, leaving them empty.
    fn collect(&self) -> RecvStats {
        let mut total = RecvStats::new();
        for i in 0..self.shards.len() {
            let taken = std::mem::replace(&mut *self.shard(i), RecvStats::new());
            total.merge(&taken);
        }
        total
    }
}

/// One run's parameters.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec {
    /// Who sends to whom.
    pub pattern: Pattern,
    /// Payload bytes per datagram (Baton's header not included).
    pub payload: usize,
    /// Datagrams per second per flow.
    pub rate: f64,
    /// Traffic before the window, not counted.
    pub warmup: Duration,
    /// The measurement window.
    pub duration: Duration,
}
