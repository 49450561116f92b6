//! The traffic both targets carry (Baton over QUIC, and the plain UDP forwarder of the ceiling
//! run): who sends to whom, when, and what each receiver checks.
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
//! per timer tick, not per datagram. A sender that falls more than [`MAX_LAG`] behind skips
//! events and counts them: that is the load generator saturating, never hidden as relay loss.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_protocol::datagram::{self, HEADER_LEN};
use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Bytes of [`Stamp`] at the start of every payload; payloads are at least this long.
pub const STAMP_LEN: usize = 32;

/// [`Stamp::target`] of a broadcast.
pub const BROADCAST_TARGET: u32 = u32::MAX;

/// A sender more than this far behind its schedule skips events instead of bursting them.
pub const MAX_LAG: Duration = Duration::from_millis(100);

/// A datagram sent more than this late counts as late (the generator could not keep time).
const LATE: Duration = Duration::from_millis(5);

/// Bytes of send buffer allocated at once and shared by the datagrams cut from it, so quinn
/// sends do not allocate per datagram.
const SEND_CHUNK: usize = 64 * 1024;

/// Longest one-way latency the histograms hold (longer ones are clamped).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

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

/// What a payload starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The run it belongs to; receivers ignore other runs' stragglers.
    pub run: u32,
    /// The sending client.
    pub sender: u32,
    /// The intended receiving client, or [`BROADCAST_TARGET`].
    pub target: u32,
    /// The sender's allocation.
    pub alloc: u32,
    /// Sequence number within the flow.
    pub seq: u64,
    /// Send time, nanoseconds since the shared base.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the 32 bytes.
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_u32(self.run);
        out.put_u32(self.sender);
        out.put_u32(self.target);
        out.put_u32(self.alloc);
        out.put_u64(self.seq);
        out.put_u64(self.sent_ns);
    }

    /// Reads a stamp from the start of a payload, `None` if it is too short.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let b = payload.get(..STAMP_LEN)?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Some(Stamp {
            run: u32_at(0),
            sender: u32_at(4),
            target: u32_at(8),
            alloc: u32_at(12),
            seq: u64_at(16),
            sent_ns: u64_at(24),
        })
    }
}

/// What receivers counted, merged over clients.
#[derive(Debug, Clone)]
pub struct RecvStats {
    /// Datagrams received whose send time is inside the measurement window (unique).
    pub received: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Datagrams of this run sent outside the window (warm-up, or after it).
    pub outside_window: u64,
    /// Datagrams received a second time.
    pub duplicates: u64,
    /// Datagrams that reached a client they were not addressed to.
    pub misdelivered: u64,
    /// Datagrams whose relay-stamped source is not their sender's peer id.
    pub source_mismatch: u64,
    /// Datagrams too short to hold a header and a stamp.
    pub malformed: u64,
    /// Datagrams from an earlier run.
    pub stale: u64,
    /// Datagrams older than the duplicate window can judge (accepted, not checked).
    pub too_old: u64,
    /// One-way latency of the datagrams in `received`, nanoseconds.
    pub latency: Histogram<u64>,
}

impl RecvStats {
    /// Empty counters.
    pub fn new() -> RecvStats {
        RecvStats {
            received: 0,
            bytes: 0,
            outside_window: 0,
            duplicates: 0,
            misdelivered: 0,
            source_mismatch: 0,
            malformed: 0,
            stale: 0,
            too_old: 0,
            latency: new_histogram(),
        }
    }

    fn merge(&mut self, other: &RecvStats) {
        self.received += other.received;
        self.bytes += other.bytes;
        self.outside_window += other.outside_window;
        self.duplicates += other.duplicates;
        self.misdelivered += other.misdelivered;
        self.source_mismatch += other.source_mismatch;
        self.malformed += other.malformed;
        self.stale += other.stale;
        self.too_old += other.too_old;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

/// A latency histogram: 1 ns to 60 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("constant histogram bounds are valid")
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

/// Per-flow duplicate detection over the last 64 sequence numbers.
#[derive(Debug, Clone, Copy, Default)]
struct SeqWindow {
    /// Highest sequence number seen plus one; 0 before the first.
    top: u64,
    /// Bit `i` set: sequence number `top - 1 - i` was seen.
    mask: u64,
}

/// What a sequence number turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    New,
    Duplicate,
    TooOld,
}

impl SeqWindow {
    fn check(&mut self, seq: u64) -> Seen {
        if seq >= self.top {
            let shift = seq + 1 - self.top;
            self.mask = if shift >= 64 { 0 } else { self.mask << shift };
            self.mask |= 1;
            self.top = seq + 1;
            return Seen::New;
        }
        let offset = self.top - 1 - seq;
        if offset >= 64 {
            return Seen::TooOld;
        }
        let bit = 1u64 << offset;
        if self.mask & bit != 0 {
            Seen::Duplicate
        } else {
            self.mask |= bit;
            Seen::New
        }
    }
}

/// One client's receiving side: checks every datagram and counts it.
pub struct Receiver {
    shared: Arc<Shared>,
    me: u32,
    alloc: u32,
    my_peer: u16,
    run: u32,
    /// Duplicate windows by sender's member index in the allocation.
    windows: Vec<SeqWindow>,
}

impl Receiver {
    /// The receiver of client `me`.
    pub fn new(shared: Arc<Shared>, me: u32) -> Receiver {
        let alloc = shared.topo.alloc_of(me);
        let my_peer = shared.topo.peer_ids[me as usize];
        let members = shared.topo.members;
        Receiver {
            shared,
            me,
            alloc,
            my_peer,
            run: 0,
            windows: vec![SeqWindow::default(); members],
        }
    }

    /// Handles one datagram as delivered (source header, then payload).
    pub fn on_datagram(&mut self, datagram: &[u8]) {
        let now = self.shared.now_ns();
        let shared = &*self.shared;
        let mut stats = shared.shard(self.me as usize);
        let (src, payload) = match datagram::split(datagram) {
            Ok(parts) => parts,
            Err(_) => {
                stats.malformed += 1;
                return;
            }
        };
        let Some(stamp) = Stamp::read(payload) else {
            stats.malformed += 1;
            return;
        };
        let run = shared.run.load(Ordering::Relaxed);
        if stamp.run != run {
            stats.stale += 1;
            return;
        }
        if self.run != run {
            self.run = run;
            self.windows.fill(SeqWindow::default());
        }
        let addressed = stamp.target == self.me
            || (stamp.target == BROADCAST_TARGET && stamp.sender != self.me);
        let topo = &shared.topo;
        if !addressed
            || stamp.alloc != self.alloc
            || topo.alloc_of(stamp.sender) != self.alloc
            || stamp.sender as usize >= topo.clients()
        {
            stats.misdelivered += 1;
            return;
        }
        let sender_peer = topo.peer_ids[stamp.sender as usize];
        if src != sender_peer || src == self.my_peer {
            stats.source_mismatch += 1;
        }
        let index = stamp.sender as usize % topo.members;
        match self.windows[index].check(stamp.seq) {
            Seen::Duplicate => {
                stats.duplicates += 1;
                return;
            }
            Seen::TooOld => stats.too_old += 1,
            Seen::New => {}
        }
        let start = shared.win_start.load(Ordering::Relaxed);
        let end = shared.win_end.load(Ordering::Relaxed);
        if (start..end).contains(&stamp.sent_ns) {
            stats.received += 1;
            stats.bytes += payload.len() as u64;
            stats
                .latency
                .saturating_record(now.saturating_sub(stamp.sent_ns).max(1));
        } else {
            stats.outside_window += 1;
        }
    }
}

/// Where a target's clients send from.
pub enum Transport {
    /// Baton: one QUIC connection per client.
    Quic(Vec<quinn::Connection>),
    /// The ceiling: one UDP socket per client, connected to the forwarder.
    Udp(Vec<Arc<tokio::net::UdpSocket>>),
}

/// What one sender task did.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendStats {
    /// Datagrams handed to the transport inside the window.
    pub sent: u64,
    /// Receivers those datagrams were meant for (a broadcast counts once per peer).
    pub expected: u64,
    /// Datagrams due inside the window that the transport could not take (send buffer full).
    pub local_drops: u64,
    /// Datagrams due inside the window that were never sent: the sender fell behind.
    pub skipped: u64,
    /// Datagrams sent inside the window more than 5 ms after they were due.
    pub late: u64,
    /// The furthest behind schedule any send was, nanoseconds.
    pub max_lag_ns: u64,
}

impl SendStats {
    /// Sums two tasks' counts.
    pub fn merge(&mut self, other: &SendStats) {
        self.sent += other.sent;
        self.expected += other.expected;
        self.local_drops += other.local_drops;
        self.skipped += other.skipped;
        self.late += other.late;
        self.max_lag_ns = self.max_lag_ns.max(other.max_lag_ns);
    }

    /// Datagrams the schedule offered inside the window.
    pub fn offered(&self) -> u64 {
        self.sent + self.local_drops + self.skipped
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

/// Time after the last send that receivers get before their counts are taken; datagrams later
/// than this count as lost (a game has no use for them either).
pub const DRAIN: Duration = Duration::from_secs(1);

/// A run in progress.
pub struct Running {
    shared: Arc<Shared>,
    senders: Vec<tokio::task::JoinHandle<SendStats>>,
    /// Sent so far, for progress lines.
    pub sent_progress: Arc<AtomicU64>,
    /// When the measurement window opens.
    pub window_start: Instant,
    /// When it closes and the senders stop.
    pub window_end: Instant,
}

impl Running {
    /// Waits for the senders, lets stragglers arrive, and takes the counts.
    pub async fn finish(self) -> (SendStats, RecvStats) {
        let mut send = SendStats::default();
        for handle in self.senders {
            if let Ok(stats) = handle.await {
                send.merge(&stats);
            }
        }
        tokio::time::sleep(DRAIN).await;
        (send, self.shared.collect())
    }
}

/// Starts a run: a new run id, the window, and `tasks` sender tasks sharing `flows`.
pub fn start(
    shared: &Arc<Shared>,
    transport: &Arc<Transport>,
    flows: &[Flow],
    spec: &RunSpec,
    tasks: usize,
) -> Running {
    let run = shared.run.fetch_add(1, Ordering::Relaxed) + 1;
    // Traffic starts shortly, so every task is spawned before its first event is due.
    let start_ns = shared.now_ns() + 50_000_000;
    let win_start = start_ns + spec.warmup.as_nanos() as u64;
    let win_end = win_start + spec.duration.as_nanos() as u64;
    shared.win_start.store(win_start, Ordering::Relaxed);
    shared.win_end.store(win_end, Ordering::Relaxed);
    // Counts of the previous run's stragglers go.
    drop(shared.collect());
    let period_ns = (1e9 / spec.rate.clamp(0.001, 1e6)) as u64;
    let plan = Plan {
        run,
        period_ns,
        payload: spec.payload.max(STAMP_LEN),
        start_ns,
        win_start,
        win_end,
    };
    let tasks = tasks.clamp(1, flows.len().max(1));
    let sent_progress = Arc::new(AtomicU64::new(0));
    let senders = (0..tasks)
        .map(|t| {
            let mut mine: Vec<Flow> = flows.iter().skip(t).step_by(tasks).copied().collect();
            mine.sort_by(|a, b| a.phase.total_cmp(&b.phase));
            tokio::spawn(send_flows(
                mine,
                transport.clone(),
                plan,
                shared.clone(),
                sent_progress.clone(),
            ))
        })
        .collect();
    Running {
        shared: shared.clone(),
        senders,
        sent_progress,
        window_start: shared.instant(win_start),
        window_end: shared.instant(win_end),
    }
}

/// A run's schedule as the senders see it.
#[derive(Debug, Clone, Copy)]
struct Plan {
    run: u32,
    period_ns: u64,
    payload: usize,
    start_ns: u64,
    win_start: u64,
    win_end: u64,
}

/// Sends `flows` (sorted by phase) on schedule until the window closes.
async fn send_flows(
    mut flows: Vec<Flow>,
    transport: Arc<Transport>,
    plan: Plan,
    shared: Arc<Shared>,
    progress: Arc<AtomicU64>,
) -> SendStats {
    let mut stats = SendStats::default();
    if flows.is_empty() {
        return stats;
    }
    let phases: Vec<u64> = flows
        .iter()
        .map(|f| (f.phase * plan.period_ns as f64) as u64)
        .collect();
    let window = plan.win_start..plan.win_end;
    let max_lag = MAX_LAG.as_nanos() as u64;
    let late = LATE.as_nanos() as u64;
    let mut chunk = BytesMut::new();
    let mut udp_buf = vec![0u8; HEADER_LEN + plan.payload];
    let (mut cursor, mut cycle) = (0usize, 0u64);
    let mut burst = 0u32;
    loop {
        let due = plan.start_ns + cycle * plan.period_ns + phases[cursor];
        if due >= plan.win_end {
            break;
        }
        let mut now = shared.now_ns();
        if due > now {
            progress.fetch_add(u64::from(burst), Ordering::Relaxed);
            burst = 0;
            tokio::time::sleep_until(shared.instant(due).into()).await;
            now = shared.now_ns();
        }
        let lag = now.saturating_sub(due);
        let flow = &mut flows[cursor];
        if lag > max_lag {
            if window.contains(&due) {
                stats.skipped += 1;
            }
        } else {
            let stamp = Stamp {
                run: plan.run,
                sender: flow.client,
                target: flow.target,
                alloc: shared.topo.alloc_of(flow.client),
                seq: flow.seq,
                sent_ns: now,
            };
            flow.seq += 1;
            let ok = send_one(
                &transport,
                flow,
                &stamp,
                plan.payload,
                &mut chunk,
                &mut udp_buf,
            );
            if window.contains(&now) {
                if ok {
                    stats.sent += 1;
                    stats.expected += u64::from(flow.fanout);
                } else {
                    stats.local_drops += 1;
                }
                if lag > late {
                    stats.late += 1;
                }
                stats.max_lag_ns = stats.max_lag_ns.max(lag);
            }
            burst += 1;
            // A sender catching up must not starve the receivers sharing its thread.
            if burst >= 256 {
                progress.fetch_add(u64::from(burst), Ordering::Relaxed);
                burst = 0;
                tokio::task::yield_now().await;
            }
        }
        cursor += 1;
        if cursor == flows.len() {
            cursor = 0;
            cycle += 1;
        }
    }
    progress.fetch_add(u64::from(burst), Ordering::Relaxed);
    stats
}

/// Sends one datagram of `flow`; `false` if the transport could not take it.
fn send_one(
    transport: &Transport,
    flow: &Flow,
    stamp: &Stamp,
    payload: usize,
    chunk: &mut BytesMut,
    udp_buf: &mut [u8],
) -> bool {
    let len = HEADER_LEN + payload;
    match transport {
        Transport::Quic(conns) => {
            let conn = &conns[flow.client as usize];
            // quinn would make room by silently dropping the oldest queued datagram; a full
            // buffer is the generator's problem and is counted as such.
            if conn.datagram_send_buffer_space() < len {
                return false;
            }
            if chunk.capacity() < len {
                *chunk = BytesMut::with_capacity(SEND_CHUNK.max(len));
            }
            chunk.put_u16(flow.header);
            stamp.write(chunk);
            chunk.put_bytes(0, payload - STAMP_LEN);
            conn.send_datagram(chunk.split().freeze()).is_ok()
        }
        Transport::Udp(sockets) => {
            let Some(buf) = udp_buf.get_mut(..len) else {
                return false;
            };
            let mut head = &mut buf[..HEADER_LEN + STAMP_LEN];
            head.put_u16(flow.header);
            stamp.write(&mut head);
            // The padding after the stamp stays zero: nothing else writes there.
            sockets[flow.client as usize].try_send(buf).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(allocations: usize, members: usize) -> Topology {
        Topology {
            allocations,
            members,
            peer_ids: (0..allocations * members)
                .map(|g| (g % members) as u16)
                .collect(),
        }
    }

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            run: 7,
            sender: 3,
            target: BROADCAST_TARGET,
            alloc: 9,
            seq: 1 << 40,
            sent_ns: 123_456_789_012,
        };
        let mut buf = Vec::new();
        stamp.write(&mut buf);
        assert_eq!(buf.len(), STAMP_LEN);
        assert_eq!(Stamp::read(&buf), Some(stamp));
        assert_eq!(Stamp::read(&buf[..STAMP_LEN - 1]), None);
    }

    #[test]
    fn sequence_window_finds_duplicates() {
        let mut w = SeqWindow::default();
        assert_eq!(w.check(0), Seen::New);
        assert_eq!(w.check(2), Seen::New);
        assert_eq!(w.check(1), Seen::New);
        assert_eq!(w.check(1), Seen::Duplicate);
        assert_eq!(w.check(200), Seen::New);
        assert_eq!(w.check(2), Seen::TooOld);
        assert_eq!(w.check(200), Seen::Duplicate);
        assert_eq!(w.check(199), Seen::New);
    }

    #[test]
    fn flows_cover_each_pattern() {
        let t = topo(2, 4);
        let count = |p| flows(&t, p).len();
        assert_eq!(count(Pattern::PeerToHost), 6);
        assert_eq!(count(Pattern::HostToPeer), 6);
        assert_eq!(count(Pattern::Broadcast), 2);
        assert_eq!(count(Pattern::Game), 8);
        let expected: u32 = flows(&t, Pattern::Game).iter().map(|f| f.fanout).sum();
        assert_eq!(expected, 12);
    }

    #[test]
    fn receiver_flags_misdelivery_and_duplicates() {
        let shared = Shared::new(topo(2, 3), 1);
        shared.run.store(1, Ordering::Relaxed);
        shared.win_start.store(0, Ordering::Relaxed);
        shared.win_end.store(u64::MAX, Ordering::Relaxed);
        let mut host = Receiver::new(shared.clone(), 0);
        let datagram = |src: u16, stamp: Stamp| {
            let mut d = src.to_be_bytes().to_vec();
            stamp.write(&mut d);
            d
        };
        let good = Stamp {
            run: 1,
            sender: 1,
            target: 0,
            alloc: 0,
            seq: 0,
            sent_ns: 1,
        };
        host.on_datagram(&datagram(1, good));
        host.on_datagram(&datagram(1, good));
        host.on_datagram(&datagram(1, Stamp { target: 2, ..good }));
        host.on_datagram(&datagram(
            1,
            Stamp {
                sender: 4,
                alloc: 1,
                ..good
            },
        ));
        host.on_datagram(&datagram(2, Stamp { seq: 1, ..good }));
        host.on_datagram(&datagram(1, Stamp { run: 0, ..good }));
        host.on_datagram(&[0]);
        let stats = shared.collect();
        assert_eq!(stats.received, 2);
        assert_eq!(stats.duplicates, 1);
        assert_eq!(stats.misdelivered, 2);
        assert_eq!(stats.source_mismatch, 1);
        assert_eq!(stats.stale, 1);
        assert_eq!(stats.malformed, 1);
    }
}
