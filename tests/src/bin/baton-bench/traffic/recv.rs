//! The receiving side: each client's receiving task feeds every datagram to its [`Receiver`],
//! which checks it (misdelivery, source, duplicates, stale runs) and counts it, with its
//! one-way latency, into the target's [`RecvStats`] shards in [`Shared`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_protocol::datagram;
use baton_tests::seq_window::Seen;
use hdrhistogram::Histogram;

use super::{Shared, Stamp, BROADCAST_TARGET};

/// Longest one-way latency the histograms hold (longer ones are clamped).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

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

    pub(super) fn merge(&mut self, other: &RecvStats) {
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

/// Per-flow duplicate detection over the last 64 sequence numbers.
type SeqWindow = baton_tests::seq_window::SeqWindow<64>;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
