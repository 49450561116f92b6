//! Tests of the traffic checks: stamps, flows per pattern, and what a [`Receiver`] counts.

use std::sync::atomic::Ordering;

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
