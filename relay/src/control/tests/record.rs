//! Allocation records (`control/record.rs`): one node exports, another adopts, and members
//! come back with their reconnect tokens; the host is awaited, then lost if it does not come.

use super::*;

/// A unix clock for the records: any fixed value works, both nodes read the same.
const UNIX: u64 = 1_800_000_000;

/// A node with a host and two peers (subjects on an open relay are `None`), and their
/// reconnect tokens, exported. Both harnesses share the token key (`7`), as fleet nodes do.
fn exported() -> (AllocationRecord, JoinCode, Vec<[u8; 16]>) {
    let mut a = Harness::new();
    let (id, code, host_token) = a.create_with_token(HOST, 0, 0);
    let (_, t1) = a.join_with_token(2, code);
    let (_, t2) = a.join_with_token(3, code);
    let record =
        a.cp.export(id, a.now, UNIX)
            .expect("a hosted allocation exports");
    (record, code, vec![host_token, t1, t2])
}

#[test]
fn a_record_carries_what_a_takeover_needs() {
    let (record, code, _) = exported();
    assert_eq!(record.version, RECORD_VERSION);
    assert_eq!(record.code, code.to_string());
    assert_eq!(record.host, 0);
    assert_eq!(
        record.members.iter().map(|m| m.peer).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(record.next_peer, 3);
    assert_eq!(record.code_state, "active");
    assert_eq!(
        record.code_expires_unix,
        UNIX + RelayConfig::default().join_code_ttl().as_secs()
    );
    // It survives the directory's JSON.
    let json = serde_json::to_string(&record).unwrap();
    assert_eq!(
        serde_json::from_str::<AllocationRecord>(&json).unwrap(),
        record
    );
}

#[test]
fn members_rejoin_an_adopted_allocation_and_the_host_hosts_again() {
    let (record, code, tokens) = exported();
    let id = AllocationId(record.allocation);
    let mut b = Harness::new();
    assert_eq!(b.cp.adopt(b.now, UNIX, &record), Ok(id));
    assert_eq!(b.cp.adopt(b.now, UNIX, &record), Err(AdoptError::Held));
    b.check();

    // A newcomer by code waits for the members to come back.
    let (refusal, _) = b.refusal(9, code);
    assert_eq!(refusal, ErrorCode::Migrating);
    // A peer comes back first: seated with its id; no host yet.
    b.connect(12);
    assert_eq!(b.rejoin_result(12, id, PeerId(1), tokens[1]), Ok(id));
    // The host comes back: it hosts again, and the peer hears it rejoined.
    b.connect(11);
    let out = b.rejoin(11, id, PeerId::HOST, tokens[0]);
    assert!(matches!(
        replies_to(&out, 11)[..],
        [
            ServerMessage::Joined {
                peer: PeerId::HOST,
                ..
            },
            ..
        ]
    ));
    assert!(replies_to(&out, 12).contains(&ServerMessage::PeerRejoined { peer: PeerId::HOST }));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Route { allocation, host: Some(PeerId::HOST), .. } if *allocation == id
    )));
    // A wrong token is refused as anywhere else.
    b.connect(13);
    assert_eq!(
        b.rejoin_result(13, id, PeerId(2), tokens[1]),
        Err((ErrorCode::Unauthorized, 0))
    );
    // Newcomers are welcome again, with the next id after the adopted ones.
    assert_eq!(b.join_ok(14, code), PeerId(3));
    // Nothing fires at the old deadline.
    let out = b.advance(RelayConfig::default().keepalive_timeout() * 2);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Event(Event::HostDisconnected { .. }))),
        "{out:?}"
    );
}

#[test]
fn members_back_before_their_host_are_told_who_it_is() {
    // A game whose host is peer 1 (it migrated once) is taken over; peer 2 is back first.
    let (mut record, _, tokens) = exported();
    record.host = 1;
    let id = AllocationId(record.allocation);
    let mut b = Harness::new();
    b.cp.adopt(b.now, UNIX, &record).unwrap();
    b.connect(13);
    let out = b.rejoin(13, id, PeerId(2), tokens[2]);
    assert!(
        matches!(
            replies_to(&out, 13)[..],
            [ServerMessage::Joined {
                peer: PeerId(2),
                host: PeerId(1),
                ..
            }]
        ),
        "{out:?}"
    );
    b.check();
}

#[test]
fn a_host_that_does_not_come_back_is_lost_and_a_returned_member_elected() {
    let (record, _, tokens) = exported();
    let id = AllocationId(record.allocation);
    let mut b = Harness::new();
    b.cp.adopt(b.now, UNIX, &record).unwrap();
    b.connect(12);
    assert_eq!(b.rejoin_result(12, id, PeerId(1), tokens[1]), Ok(id));
    let out = b.advance(RelayConfig::default().keepalive_timeout() + Duration::from_millis(1));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::HostDisconnected {
            host: PeerId::HOST,
            reason: LeaveReason::TimedOut,
            ..
        })
    )));
    assert!(
        promote_of(&out, 12).is_some(),
        "the returned peer is elected: {out:?}"
    );
}

#[test]
fn an_allocation_no_one_returns_to_closes() {
    let (record, code, _) = exported();
    let mut b = Harness::new();
    b.cp.adopt(b.now, UNIX, &record).unwrap();
    b.advance(RelayConfig::default().keepalive_timeout() + Duration::from_millis(1));
    assert_eq!(b.cp.allocation_count(), 0);
    let (refusal, _) = b.refusal(5, code);
    assert_eq!(refusal, ErrorCode::Closed);
}

/// The `Output::Awaiting` lists of allocation `id` in `out`.
fn awaiting(out: &[Output], id: AllocationId) -> Vec<Vec<PeerId>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Awaiting { allocation, peers } if *allocation == id => Some(peers.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_adoption_awaits_every_member_until_the_host_wait_ends() {
    let (record, _, tokens) = exported();
    let id = AllocationId(record.allocation);
    let mut b = Harness::new();
    b.cp.adopt(b.now, UNIX, &record).unwrap();
    let out = b.drain();
    assert_eq!(
        awaiting(&out, id),
        [vec![PeerId::HOST, PeerId(1), PeerId(2)]]
    );
    // Arrivals are routed (the data plane hands each its held datagrams); the list is not
    // sent again.
    b.connect(12);
    let out = b.rejoin(12, id, PeerId(1), tokens[1]);
    assert!(awaiting(&out, id).is_empty(), "{out:?}");
    assert_eq!(last_route(&out), Some(vec![(PeerId(1), 12)]));
    b.connect(11);
    b.rejoin(11, id, PeerId::HOST, tokens[0]);
    // The wait ends with the host's: members not back by then are no longer awaited.
    let keepalive = RelayConfig::default().keepalive_timeout();
    let out = b.advance(keepalive - Duration::from_millis(1));
    assert!(awaiting(&out, id).is_empty());
    let out = b.advance(Duration::from_millis(2));
    assert_eq!(awaiting(&out, id), [Vec::<PeerId>::new()]);
    b.check();
}

#[test]
fn a_closed_adoption_stops_awaiting_with_its_route() {
    let (record, _, _) = exported();
    let id = AllocationId(record.allocation);
    let mut b = Harness::new();
    b.cp.adopt(b.now, UNIX, &record).unwrap();
    b.drain();
    // No one comes back: the allocation closes at the host's deadline, and with it the wait
    // (its timer is cancelled; nothing is awaited after the close).
    let out = b.advance(RelayConfig::default().keepalive_timeout() + Duration::from_millis(1));
    assert_eq!(b.cp.allocation_count(), 0);
    assert!(awaiting(&out, id).is_empty(), "{out:?}");
    assert_eq!(
        last_route(&out),
        Some(vec![]),
        "the data plane drops its queues"
    );
    // (`check` finds no timer left watching the closed allocation.)
    b.check();
}

/// A change that makes a record bad.
type Spoil = fn(&mut AllocationRecord);

#[test]
fn bad_records_are_refused() {
    let (record, _, _) = exported();
    let mut b = Harness::new();
    let cases: Vec<(Spoil, AdoptError)> = vec![
        (|r| r.version = 9, AdoptError::Invalid("version")),
        (|r| r.code = "AEIOU!".into(), AdoptError::Invalid("code")),
        (
            |r| r.code_state = "odd".into(),
            AdoptError::Invalid("code_state"),
        ),
        (|r| r.max_peers = 1, AdoptError::Invalid("limits")),
        (|r| r.max_peers = u16::MAX, AdoptError::Invalid("limits")),
        (|r| r.next_peer = 0, AdoptError::Invalid("limits")),
        (|r| r.host = 0xFFFF, AdoptError::Invalid("limits")),
        (
            |r| r.members[1].subject = Some("x".repeat(65)),
            AdoptError::Invalid("limits"),
        ),
    ];
    for (spoil, want) in cases {
        let mut bad = record.clone();
        spoil(&mut bad);
        assert_eq!(b.cp.adopt(b.now, UNIX, &bad), Err(want), "{bad:?}");
    }
    assert_eq!(b.cp.allocation_count(), 0);
    b.check();
}

#[test]
fn an_expired_code_stays_expired_after_a_takeover() {
    let (mut record, code, tokens) = exported();
    record.code_state = "expired".into();
    let id = AllocationId(record.allocation);
    let mut b = Harness::new();
    b.cp.adopt(b.now, UNIX, &record).unwrap();
    let (refusal, _) = b.refusal(9, code);
    assert_eq!(refusal, ErrorCode::Expired);
    // Members still come back: tokens, not the code, bring them.
    b.connect(11);
    assert_eq!(b.rejoin_result(11, id, PeerId::HOST, tokens[0]), Ok(id));
}

#[test]
fn a_member_that_missed_migrations_rejoins_by_any_earlier_id_after_a_takeover() {
    // Node a: host 0 with peers 1, 2, 3; the host is lost twice (peer 1, then peer 2 hosts).
    let mut a = Harness::new();
    let (first, code, _) = a.create_with_token(HOST, 0, 0);
    a.join_ok(2, code);
    a.join_ok(3, code);
    let (_, t3) = a.join_with_token(4, code);
    let out = a.disconnect(HOST, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 2).expect("conn 2 promoted");
    let second = a.migrate(2, first, ticket);
    let out = a.disconnect(2, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 3).expect("conn 3 promoted");
    let third = a.migrate(3, second, ticket);
    let record = a.cp.export(third, a.now, UNIX).expect("exported");
    assert_eq!(record.lineage, first.0);
    assert_eq!(record.ancestors, vec![second.0]);
    a.check();

    // Node b takes it over; peer 3 (conn 4 on a) missed both migrations' news and rejoins by
    // the second allocation's id, then another member by the first's.
    let mut b = Harness::new();
    assert_eq!(b.cp.adopt(b.now, UNIX, &record), Ok(third));
    b.connect(14);
    assert_eq!(b.rejoin_result(14, second, PeerId(3), t3), Ok(third));
    b.disconnect(14, LeaveReason::Closed);
    b.connect(15);
    assert_eq!(b.rejoin_result(15, first, PeerId(3), t3), Ok(third));
    // A record naming ids this node already serves is not adopted twice.
    let mut twin = record.clone();
    twin.allocation = 0x4242;
    twin.code = "BCDFGH".into();
    assert_eq!(b.cp.adopt(b.now, UNIX, &twin), Err(AdoptError::Held));
    b.check();
    // Closing it forgets every id.
    b.cp.close_allocation(b.now, third, CloseReason::Admin);
    b.check();
}
