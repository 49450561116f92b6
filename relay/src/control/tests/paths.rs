//! Direct-path signalling (`control/paths.rs`): every refusal of `PathOffer` and
//! `PathReport`, forwarding, `Punch` timing from injected RTTs, and the pending offers' window,
//! bounds and clearing.

use baton_protocol::path::{NatKind, PathOutcome, PathReason};

use super::*;

/// Host `HOST` (peer 0) with peers on connections 2 and 3 (peer ids 1 and 2).
fn game_of_three_with(config: RelayConfig) -> (Harness, AllocationId) {
    let mut h = Harness::with(config);
    let (id, code) = h.create();
    h.join_ok(2, code);
    h.join_ok(3, code);
    (h, id)
}

fn game_of_three() -> (Harness, AllocationId) {
    game_of_three_with(RelayConfig::default())
}

fn candidate(conn: ConnId) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, conn as u8], 50_000))
}

/// `conn` offers a direct path to `peer`, with fingerprint bytes all `conn`.
fn offer(h: &mut Harness, conn: ConnId, peer: u16) -> Vec<Output> {
    let request_id = h.rid();
    h.request(
        conn,
        ClientMessage::PathOffer {
            request_id,
            peer: PeerId(peer),
            nat: NatKind::EndpointIndependent,
            fingerprint: [conn as u8; 32],
            candidates: vec![candidate(conn)],
        },
    )
}

/// `conn` reports its path to `peer`.
fn report(
    h: &mut Harness,
    conn: ConnId,
    peer: u16,
    outcome: PathOutcome,
    reason: PathReason,
) -> Vec<Output> {
    let request_id = h.rid();
    h.request(
        conn,
        ClientMessage::PathReport {
            request_id,
            peer: PeerId(peer),
            outcome,
            reason,
        },
    )
}

fn rtt(h: &mut Harness, conn: ConnId, ms: u64) {
    h.cp.handle(
        h.now,
        Input::Rtt {
            conn,
            rtt: Duration::from_millis(ms),
        },
    );
    h.drain();
}

/// The `Punch` messages sent to `conn`.
fn punches(out: &[Output], conn: ConnId) -> Vec<(PeerId, u16)> {
    sent_to(out, conn)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Punch { peer, delay_ms } => Some((peer, delay_ms)),
            _ => None,
        })
        .collect()
}

fn pending(h: &Harness, id: AllocationId) -> usize {
    h.cp.allocations[&id].paths.pending.len()
}

#[test]
fn offers_are_forwarded_and_a_pair_that_offered_both_ways_punches_together() {
    let (mut h, id) = game_of_three();
    rtt(&mut h, HOST, 40);
    rtt(&mut h, 2, 100);

    // Peer 1 offers to the host: Done, and the host gets the offer from 1, unchanged.
    let out = offer(&mut h, 2, 0);
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Done { .. }]
    ));
    assert_eq!(
        replies_to(&out, HOST),
        [ServerMessage::PathOffer {
            from: PeerId(1),
            nat: NatKind::EndpointIndependent,
            fingerprint: [2; 32],
            candidates: vec![candidate(2)],
        }]
    );
    assert!(sent_to(&out, 3).is_empty(), "other members hear nothing");
    assert_eq!(pending(&h, id), 1);

    // The host answers: Done, the offer to peer 1, then Punch to both, timed so that both
    // start 50 + 20 = 70 ms from now: the host's arrives after 20 ms, peer 1's after 50 ms.
    let out = offer(&mut h, HOST, 1);
    assert_eq!(
        replies_to(&out, HOST),
        [
            ServerMessage::Done {
                request_id: h.next_request
            },
            ServerMessage::Punch {
                peer: PeerId(1),
                delay_ms: 50
            }
        ]
    );
    assert_eq!(
        replies_to(&out, 2),
        [
            ServerMessage::PathOffer {
                from: PeerId::HOST,
                nat: NatKind::EndpointIndependent,
                fingerprint: [HOST as u8; 32],
                candidates: vec![candidate(HOST)],
            },
            ServerMessage::Punch {
                peer: PeerId::HOST,
                delay_ms: 20
            }
        ]
    );
    assert_eq!(pending(&h, id), 0, "the round is complete");

    // A later offer starts a new round: no Punch until the other side answers it.
    let out = offer(&mut h, HOST, 1);
    assert!(punches(&out, HOST).is_empty() && punches(&out, 2).is_empty());
    let out = offer(&mut h, 2, 0);
    assert_eq!(punches(&out, HOST), [(PeerId(1), 50)]);
    assert_eq!(punches(&out, 2), [(PeerId::HOST, 20)]);
}

#[test]
fn unknown_rtts_count_as_zero() {
    let (mut h, _) = game_of_three();
    offer(&mut h, HOST, 2);
    let out = offer(&mut h, 3, 0);
    assert_eq!(punches(&out, HOST), [(PeerId(2), 20)]);
    assert_eq!(punches(&out, 3), [(PeerId::HOST, 20)]);
}

#[test]
fn offers_more_than_the_window_apart_do_not_punch() {
    let (mut h, id) = game_of_three();
    offer(&mut h, 2, 0);
    h.advance(Duration::from_millis(10_001));
    let out = offer(&mut h, HOST, 1);
    assert!(punches(&out, HOST).is_empty() && punches(&out, 2).is_empty());
    // The stale offer was dropped; the host's is pending.
    assert_eq!(
        h.cp.allocations[&id]
            .paths
            .pending
            .keys()
            .collect::<Vec<_>>(),
        [&(PeerId::HOST, PeerId(1))]
    );
    // Exactly at the window's end still counts.
    h.advance(Duration::from_secs(10));
    let out = offer(&mut h, 2, 0);
    assert_eq!(punches(&out, 2).len(), 1);
}

#[test]
fn every_offer_refusal() {
    let (mut h, _) = game_of_three();
    // Not bound.
    h.connect(9);
    assert_eq!(refused(&offer(&mut h, 9, 0), 9), (ErrorCode::NotBound, 0));
    // Not a member, or itself.
    assert_eq!(
        refused(&offer(&mut h, HOST, 7), HOST),
        (ErrorCode::UnknownPeer, 7)
    );
    assert_eq!(
        refused(&offer(&mut h, 2, 1), 2),
        (ErrorCode::UnknownPeer, 1)
    );
    // Peer to peer: neither is the host.
    assert_eq!(refused(&offer(&mut h, 2, 2), 2), (ErrorCode::NotHost, 0));
    // Four offers per pair, then one every 2.5 s; other pairs are not held up.
    for _ in 0..4 {
        assert!(matches!(
            replies_to(&offer(&mut h, 2, 0), 2)[..],
            [ServerMessage::Done { .. }]
        ));
    }
    assert_eq!(
        refused(&offer(&mut h, 2, 0), 2),
        (ErrorCode::RateLimited, 2500)
    );
    assert!(matches!(
        replies_to(&offer(&mut h, HOST, 1), HOST)[..],
        [ServerMessage::Done { .. }, ..]
    ));
    h.advance(Duration::from_millis(1000));
    assert_eq!(
        refused(&offer(&mut h, 2, 0), 2),
        (ErrorCode::RateLimited, 1500)
    );
    h.advance(Duration::from_millis(1500));
    assert!(matches!(
        replies_to(&offer(&mut h, 2, 0), 2)[..],
        [ServerMessage::Done { .. }, ..]
    ));
    // A refused offer forwards nothing.
    let out = offer(&mut h, 2, 0);
    assert!(sent_to(&out, HOST).is_empty());
}

#[test]
fn a_relay_without_direct_paths_refuses_every_offer_but_takes_reports() {
    let mut config = RelayConfig::default();
    config.set_allow_direct(false).unwrap();
    let (mut h, _) = game_of_three_with(config);
    let out = offer(&mut h, 2, 0);
    assert_eq!(refused(&out, 2), (ErrorCode::DirectDisabled, 0));
    assert!(sent_to(&out, HOST).is_empty());
    assert_eq!(
        refused(&offer(&mut h, HOST, 1), HOST),
        (ErrorCode::DirectDisabled, 0)
    );
    let out = report(
        &mut h,
        2,
        0,
        PathOutcome::Relayed,
        PathReason::RelayDeclined,
    );
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Done { .. }]
    ));
}

#[test]
fn offers_during_a_migration_are_refused_and_pending_ones_are_forgotten() {
    let (mut h, old, _, _, ticket) = host_lost_among_three();
    // The host is gone (its offers with it); the allocation is migrating.
    assert_eq!(pending(&h, old), 0);
    let (code, ms) = refused(&offer(&mut h, 3, 1), 3);
    assert_eq!(code, ErrorCode::Migrating);
    assert!(ms >= 1);
    let new = h.migrate(2, old, ticket);
    // Conn 2 (peer 1) hosts now: peer 2 offers to it.
    let out = offer(&mut h, 3, 1);
    assert!(matches!(
        replies_to(&out, 3)[..],
        [ServerMessage::Done { .. }]
    ));
    assert_eq!(pending(&h, new), 1);
}

#[test]
fn a_migration_starts_direct_paths_over() {
    let (mut h, old) = game_of_three();
    offer(&mut h, 2, 0);
    for _ in 0..8 {
        report(
            &mut h,
            3,
            0,
            PathOutcome::Relayed,
            PathReason::PunchTimedOut,
        );
    }
    assert_eq!(pending(&h, old), 1);
    // The host leaves: its pending offers go with it; the members' report limits stay until
    // the successor opens.
    let out = h.disconnect(HOST, LeaveReason::Closed);
    let (_, ticket) = promote_of(&out, 2).expect("conn 2 is promoted");
    assert_eq!(pending(&h, old), 0);
    assert!(!h.cp.allocations[&old].paths.report_buckets.is_empty());
    let new = h.migrate(2, old, ticket);
    let paths = &h.cp.allocations[&new].paths;
    assert!(paths.pending.is_empty() && paths.offer_buckets.is_empty());
    assert!(paths.report_buckets.is_empty());
    let out = report(
        &mut h,
        3,
        1,
        PathOutcome::Relayed,
        PathReason::PunchTimedOut,
    );
    assert!(matches!(
        replies_to(&out, 3)[..],
        [ServerMessage::Done { .. }]
    ));
}

#[test]
fn pending_offers_go_when_a_member_leaves_and_stay_bounded() {
    let (mut h, id) = game_of_three();
    offer(&mut h, 2, 0);
    offer(&mut h, HOST, 2);
    assert_eq!(pending(&h, id), 2);
    h.disconnect(2, LeaveReason::Closed);
    let paths = &h.cp.allocations[&id].paths;
    assert_eq!(
        paths.pending.keys().collect::<Vec<_>>(),
        [&(PeerId::HOST, PeerId(2))]
    );
    assert!(paths
        .offer_buckets
        .keys()
        .all(|(a, b)| *a != PeerId(1) && *b != PeerId(1)));

    // Many members, each offering to the host and the host to each, many times: at most one
    // pending offer per direction of each host pair.
    let code = h.cp.allocations[&id].code;
    for conn in 10..20 {
        h.join_ok(conn, code);
    }
    let members: Vec<(PeerId, ConnId)> = h.cp.allocations[&id].route();
    for _ in 0..3 {
        for (peer, conn) in &members {
            if *peer != PeerId::HOST {
                offer(&mut h, *conn, 0);
            }
        }
    }
    let peers = members.len() - 1;
    assert_eq!(pending(&h, id), peers);
    assert!(h.cp.allocations[&id].paths.offer_buckets.len() <= 2 * peers);
    // The host leaving (a migration starts) leaves nothing behind.
    h.disconnect(HOST, LeaveReason::Closed);
    let paths = &h.cp.allocations[&id].paths;
    assert!(paths.pending.is_empty() && paths.offer_buckets.is_empty());
}

#[test]
fn reports_are_counted_and_checked() {
    let (mut h, id) = game_of_three();
    let out = report(&mut h, 2, 0, PathOutcome::Direct, PathReason::Direct);
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Done { .. }]
    ));
    assert_eq!(
        events(&out),
        [Event::PathReported {
            allocation: id,
            peer: PeerId(1),
            to: PeerId::HOST,
            reason: PathReason::Direct,
        }]
    );
    // Not bound; not a member, or itself; a reason that does not go with the outcome.
    h.connect(9);
    let out = report(&mut h, 9, 0, PathOutcome::Direct, PathReason::Direct);
    assert_eq!(refused(&out, 9), (ErrorCode::NotBound, 0));
    let out = report(
        &mut h,
        2,
        5,
        PathOutcome::Relayed,
        PathReason::PunchTimedOut,
    );
    assert_eq!(refused(&out, 2), (ErrorCode::UnknownPeer, 5));
    let out = report(
        &mut h,
        2,
        1,
        PathOutcome::Relayed,
        PathReason::PunchTimedOut,
    );
    assert_eq!(refused(&out, 2), (ErrorCode::UnknownPeer, 1));
    for (outcome, reason) in [
        (PathOutcome::Direct, PathReason::DirectLost),
        (PathOutcome::Relayed, PathReason::Direct),
    ] {
        let out = report(&mut h, 2, 0, outcome, reason);
        assert_eq!(refused(&out, 2), (ErrorCode::InvalidRequest, 0));
        assert!(!events(&out)
            .iter()
            .any(|e| matches!(e, Event::PathReported { .. })));
    }
    // Eight per member (one used above), then one every 1.25 s.
    for _ in 0..7 {
        let out = report(&mut h, 2, 0, PathOutcome::Relayed, PathReason::RelayFaster);
        assert!(matches!(
            replies_to(&out, 2)[..],
            [ServerMessage::Done { .. }]
        ));
    }
    let out = report(&mut h, 2, 0, PathOutcome::Relayed, PathReason::RelayFaster);
    assert_eq!(refused(&out, 2), (ErrorCode::RateLimited, 1250));
    // Peer-to-peer reports are fine (a report names any member).
    let out = report(&mut h, 3, 1, PathOutcome::Relayed, PathReason::PolicyNever);
    assert!(matches!(
        replies_to(&out, 3)[..],
        [ServerMessage::Done { .. }]
    ));
    h.advance(Duration::from_millis(1250));
    let out = report(&mut h, 2, 0, PathOutcome::Relayed, PathReason::RelayFaster);
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::Done { .. }]
    ));
}
