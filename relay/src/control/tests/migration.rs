//! Host migration: host loss, elections (by RTT, join order or a lobby), tickets, the move
//! to the successor allocation, rejoins after it, and snapshots.

use super::*;

/// Host `HOST` with peers on connections 2, 3, 4 (peer ids 1, 2, 3).
fn game_of_four() -> (Harness, AllocationId, JoinCode) {
    game_of_four_with(RelayConfig::default())
}

/// As [`game_of_four`], on a relay configured with `config`.
fn game_of_four_with(config: RelayConfig) -> (Harness, AllocationId, JoinCode) {
    let mut h = Harness::with(config);
    let (id, code) = h.create();
    for conn in 2..=4 {
        h.join_ok(conn, code);
    }
    (h, id, code)
}

#[test]
fn host_loss_with_no_one_left_closes_the_allocation_once() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let ev = events(&out);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::HostDisconnected { .. }))
            .count(),
        1
    );
    assert!(ev.contains(&Event::AllocationClosed {
        allocation: id,
        reason: CloseReason::HostLost(LeaveReason::TimedOut)
    }));
    assert_eq!(last_route(&out), Some(vec![]));
    assert_eq!(h.cp.allocation_count(), 0);
    assert!(h.disconnect(HOST, LeaveReason::Closed).is_empty());
    assert_eq!(h.refusal(4, code).0, ErrorCode::Closed);
}

#[test]
fn host_loss_elects_by_rtt_then_join_order_and_tells_everyone_once() {
    let (mut h, id, _) = game_of_four();
    // Peer 3 (conn 4) measured the best RTT; peer 1 has none yet.
    for (conn, ms) in [(3, 40), (4, 12)] {
        h.cp.handle(
            h.now,
            Input::Rtt {
                conn,
                rtt: Duration::from_millis(ms),
            },
        );
    }
    let out = h.disconnect(HOST, LeaveReason::Closed);
    let lost = ServerMessage::HostLost {
        host: PeerId::HOST,
        reason: LeaveReason::Closed,
        elected: PeerId(3),
    };
    for conn in 2..=4 {
        assert!(replies_to(&out, conn).contains(&lost), "conn {conn}");
    }
    assert!(promote_of(&out, 4).is_some());
    assert!(promote_of(&out, 2).is_none() && promote_of(&out, 3).is_none());
    let ev = events(&out);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::HostDisconnected { .. }))
            .count(),
        1
    );
    assert!(ev.contains(&Event::HostElected {
        allocation: id,
        host: PeerId(3),
        by: ElectedBy::Relay
    }));
    assert!(closes(&out).is_empty(), "no one is disconnected");
    assert_eq!(h.cp.allocation(h.now, id).unwrap().state, "migrating");
}

#[test]
fn without_rtt_samples_the_earliest_joined_is_elected() {
    let (mut h, _, code) = game_of_four();
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    assert!(promote_of(&out, 2).is_some());
    // A join while migrating is told to retry, with the time left.
    let (code, retry_ms) = h.refusal(9, code);
    assert_eq!(code, ErrorCode::Migrating);
    assert!(retry_ms > 0 && retry_ms <= 5000, "{retry_ms}");
}

#[test]
fn migration_moves_roster_code_and_snapshot_keeping_peer_ids() {
    let (mut h, old, code) = game_of_four();
    h.cp.handle(
        h.now,
        Input::Snapshot {
            conn: HOST,
            data: Bytes::from_static(b"world state v7"),
        },
    );
    assert_eq!(
        replies_to(&h.drain(), HOST),
        vec![ServerMessage::SnapshotStored { len: 14 }]
    );
    let out = h.disconnect(HOST, LeaveReason::Closed);
    let (alloc, ticket) = promote_of(&out, 2).unwrap();
    assert_eq!(alloc, old);

    // A forged ticket and a non-elected member are refused.
    let out = h.request(
        3,
        ClientMessage::MigrateAllocation {
            request_id: 5,
            allocation: old,
            ticket,
        },
    );
    assert_eq!(refused(&out, 3).0, ErrorCode::Unauthorized);
    let mut forged = ticket;
    forged[3] ^= 0x40;
    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 6,
            allocation: old,
            ticket: forged,
        },
    );
    assert_eq!(refused(&out, 2).0, ErrorCode::Unauthorized);

    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 7,
            allocation: old,
            ticket,
        },
    );
    let replies = replies_to(&out, 2);
    let ServerMessage::AllocationCreated {
        request_id: 7,
        allocation: new,
        code: same_code,
        ..
    } = replies[0]
    else {
        panic!("not created: {replies:?}");
    };
    assert_ne!(new, old);
    assert_eq!(same_code, code);
    assert_eq!(
        replies[1..],
        [
            ServerMessage::PeerRejoined { peer: PeerId(2) },
            ServerMessage::PeerRejoined { peer: PeerId(3) }
        ]
    );
    assert!(out.contains(&Output::DeliverSnapshot {
        conn: 2,
        data: Bytes::from_static(b"world state v7")
    }));
    for conn in [3, 4] {
        assert_eq!(
            replies_to(&out, conn),
            vec![ServerMessage::Migrated {
                allocation: new,
                host: PeerId(1)
            }]
        );
    }
    // Peer ids are unchanged, and routing is in place before anyone is told.
    let route_of = |alloc: AllocationId| {
        out.iter().rev().find_map(|o| match o {
            Output::Route {
                allocation,
                members,
                ..
            } if *allocation == alloc => Some(members.clone()),
            _ => None,
        })
    };
    assert_eq!(
        route_of(new),
        Some(vec![(PeerId(1), 2), (PeerId(2), 3), (PeerId(3), 4)])
    );
    assert_eq!(route_of(old), Some(vec![]));
    let routed = out
        .iter()
        .position(|o| matches!(o, Output::Route { allocation, .. } if *allocation == new))
        .expect("the successor is routed");
    let told = out
        .iter()
        .position(|o| {
            matches!(
                o,
                Output::Send {
                    msg: ServerMessage::Migrated { .. },
                    ..
                }
            )
        })
        .expect("the members are told to move");
    assert!(routed < told, "routed at {routed}, told at {told}");
    assert!(events(&out).contains(&Event::AllocationMigrated {
        from: old,
        to: new,
        host: PeerId(1)
    }));
    let info = h.cp.allocation(h.now, new).unwrap();
    assert_eq!((info.state, info.host), ("active", Some(1)));
    assert!(h.cp.allocation(h.now, old).is_none());

    // The old code lets a late joiner into the new allocation with a fresh id.
    let (reply, _) = h.join(9, code);
    assert!(matches!(
        reply,
        ServerMessage::Joined { allocation, peer: PeerId(4), host: PeerId(1), .. } if allocation == new
    ));
    // The new host may kick; the old rules follow the role, not id 0.
    let out = h.request(
        2,
        ClientMessage::Kick {
            request_id: 8,
            peer: PeerId(4),
        },
    );
    assert!(replies_to(&out, 2).contains(&ServerMessage::Done { request_id: 8 }));
}

#[test]
fn the_old_host_rejoins_as_an_ordinary_peer_with_its_token() {
    let (mut h, old, _, reconnect_token, ticket) = host_lost_among_three();

    // While migrating, a rejoin is told to retry.
    h.connect(10);
    let out = h.rejoin(10, old, PeerId::HOST, reconnect_token);
    let (error, retry_ms) = refused(&out, 10);
    assert_eq!(error, ErrorCode::Migrating);
    assert!(retry_ms > 0, "{retry_ms}");
    let new = h.migrate(2, old, ticket);

    // A wrong token is refused; the right one, naming the OLD allocation, lands in the new one.
    let mut wrong = reconnect_token;
    wrong[0] ^= 1;
    let out = h.rejoin(10, old, PeerId::HOST, wrong);
    assert_eq!(refused(&out, 10).0, ErrorCode::Unauthorized);
    let out = h.rejoin(10, old, PeerId::HOST, reconnect_token);
    assert!(matches!(
        &replies_to(&out, 10)[..],
        [ServerMessage::Joined { allocation, peer: PeerId(0), host: PeerId(1), .. }] if *allocation == new
    ));
    assert!(replies_to(&out, 2).contains(&ServerMessage::PeerRejoined { peer: PeerId(0) }));
    assert_eq!(h.cp.allocation(h.now, new).unwrap().members.len(), 3);
    // The old host is an ordinary peer now: it may not kick.
    let out = h.request(
        10,
        ClientMessage::Kick {
            request_id: 5,
            peer: PeerId(2),
        },
    );
    assert_eq!(refused(&out, 10).0, ErrorCode::NotHost);
}

#[test]
fn a_silent_candidate_is_passed_over_and_then_the_allocation_closes() {
    let mut config = RelayConfig::default();
    config
        .set_migration_timeout(Duration::from_secs(5))
        .unwrap();
    let mut h = Harness::with(config);
    let (id, code) = h.create();
    h.join_ok(2, code);
    h.join_ok(3, code);
    let out = h.disconnect(HOST, LeaveReason::Closed);
    assert!(promote_of(&out, 2).is_some());
    assert!(h.advance(Duration::from_millis(4_999)).is_empty());
    let out = h.advance(Duration::from_millis(1));
    assert!(
        promote_of(&out, 3).is_some(),
        "the next candidate is elected"
    );
    assert!(replies_to(&out, 2).contains(&ServerMessage::HostLost {
        host: PeerId::HOST,
        reason: LeaveReason::Closed,
        elected: PeerId(2)
    }));
    let out = h.advance(Duration::from_secs(5));
    assert_eq!(
        closes_by_conn(&out),
        vec![
            (2, CloseCode::HostLost(LeaveReason::Closed)),
            (3, CloseCode::HostLost(LeaveReason::Closed))
        ]
    );
    assert!(events(&out).contains(&Event::AllocationClosed {
        allocation: id,
        reason: CloseReason::MigrationFailed
    }));
    assert_eq!(h.cp.allocation_count(), 0);
}

#[test]
fn the_elected_member_leaving_triggers_a_new_election_and_the_last_one_closes_it() {
    let (mut h, id, _) = game_of_four();
    h.disconnect(HOST, LeaveReason::Closed);
    let out = h.disconnect(2, LeaveReason::Closed);
    assert!(promote_of(&out, 3).is_some());
    h.disconnect(3, LeaveReason::Closed);
    let out = h.disconnect(4, LeaveReason::Closed);
    assert!(events(&out).contains(&Event::AllocationClosed {
        allocation: id,
        reason: CloseReason::MigrationFailed
    }));
    assert_eq!(h.cp.allocation_count(), 0);
}

#[test]
fn a_lobby_can_override_the_election_and_stale_tickets_stop_working() {
    let (mut h, id, _) = game_of_four();
    let out = h.disconnect(HOST, LeaveReason::Kicked);
    let (_, first_ticket) = promote_of(&out, 2).unwrap();
    assert_eq!(
        h.cp.elect_host(h.now, id, PeerId(9), true),
        Err(AdminError::UnknownPeer(PeerId(9)))
    );
    let promotion = h.cp.elect_host(h.now, id, PeerId(3), true).unwrap();
    let out = h.drain();
    // The lobby gets the very ticket the member is sent.
    assert_eq!(promote_of(&out, 4), Some((id, promotion.ticket)));
    assert_eq!((promotion.allocation, promotion.peer), (id, PeerId(3)));
    assert!(events(&out).contains(&Event::HostElected {
        allocation: id,
        host: PeerId(3),
        by: ElectedBy::Lobby
    }));
    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 1,
            allocation: id,
            ticket: first_ticket,
        },
    );
    assert_eq!(refused(&out, 2).0, ErrorCode::Unauthorized);
    let (_, live) = h.create_with(50, 0, 0);
    let _ = live;
    let other = h.cp.allocations(h.now)[1].id.parse().unwrap();
    assert_eq!(
        h.cp.elect_host(h.now, other, PeerId(0), true),
        Err(AdminError::NotMigrating(other))
    );
}

#[test]
fn snapshots_are_bounded_by_size_budget_and_role() {
    let mut config = RelayConfig::default();
    config.set_max_snapshot(2048).unwrap();
    config.set_snapshot_budget(3000).unwrap();
    let mut h = Harness::with(config);
    let (_, code) = h.create();
    h.join_ok(2, code);
    let snap = |h: &mut Harness, conn, len| {
        h.cp.handle(
            h.now,
            Input::Snapshot {
                conn,
                data: Bytes::from(vec![1u8; len]),
            },
        );
        replies_to(&h.drain(), conn)
    };
    assert_eq!(
        snap(&mut h, 2, 10),
        vec![ServerMessage::SnapshotRejected {
            code: ErrorCode::NotHost,
            value: 0
        }]
    );
    assert_eq!(
        snap(&mut h, HOST, 2049),
        vec![ServerMessage::SnapshotRejected {
            code: ErrorCode::PayloadTooLarge,
            value: 2048
        }]
    );
    assert_eq!(
        snap(&mut h, HOST, 2000),
        vec![ServerMessage::SnapshotStored { len: 2000 }]
    );
    // Replacing counts only the difference.
    assert_eq!(
        snap(&mut h, HOST, 2048),
        vec![ServerMessage::SnapshotStored { len: 2048 }]
    );
    let (_, code2) = h.create_with(20, 0, 0);
    let _ = code2;
    assert_eq!(
        snap(&mut h, 20, 1000),
        vec![ServerMessage::SnapshotRejected {
            code: ErrorCode::RelayFull,
            value: 0
        }]
    );
    assert_eq!(h.cp.snapshot_bytes(), 2048);
    // An empty upload clears the snapshot and frees its bytes.
    assert_eq!(
        snap(&mut h, HOST, 0),
        vec![ServerMessage::SnapshotStored { len: 0 }]
    );
    assert_eq!(h.cp.snapshot_bytes(), 0);
    assert_eq!(
        snap(&mut h, HOST, 2048),
        vec![ServerMessage::SnapshotStored { len: 2048 }]
    );
    // Closing the allocation releases its snapshot.
    h.disconnect(2, LeaveReason::Closed);
    h.disconnect(HOST, LeaveReason::Closed);
    assert_eq!(h.cp.snapshot_bytes(), 0);
    assert_eq!(
        snap(&mut h, 20, 1000),
        vec![ServerMessage::SnapshotStored { len: 1000 }]
    );
}

#[test]
fn a_migration_without_a_snapshot_delivers_an_empty_one() {
    let (mut h, old, _) = game_of_four();
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 2).unwrap();
    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id: 3,
            allocation: old,
            ticket,
        },
    );
    // The new host always gets a snapshot stream, so it knows when it has everything.
    assert!(out.contains(&Output::DeliverSnapshot {
        conn: 2,
        data: Bytes::new()
    }));
}

#[test]
fn with_a_lobby_window_the_relay_waits_for_the_lobby_then_elects_itself() {
    let mut config = RelayConfig::default();
    config
        .set_lobby_election_window(Duration::from_millis(800))
        .unwrap();
    let (mut h, id, _) = game_of_four_with(config.clone());
    let out = h.disconnect(HOST, LeaveReason::Closed);
    // Everyone hears of the loss at once, with no one elected, and no one is promoted.
    for conn in [2, 3, 4] {
        assert_eq!(
            replies_to(&out, conn),
            vec![ServerMessage::HostLost {
                host: PeerId::HOST,
                reason: LeaveReason::Closed,
                elected: PeerId(0xFFFF)
            }]
        );
    }
    assert!(events(&out).contains(&Event::HostDisconnected {
        allocation: id,
        host: PeerId::HOST,
        reason: LeaveReason::Closed
    }));
    // The lobby names peer 3 within the window; the window's end then changes nothing.
    h.advance(Duration::from_millis(300));
    let promotion = h.cp.elect_host(h.now, id, PeerId(3), true).unwrap();
    assert_eq!(promote_of(&h.drain(), 4), Some((id, promotion.ticket)));
    assert!(h
        .advance(Duration::from_millis(600))
        .iter()
        .all(|o| !matches!(
            o,
            Output::Send {
                msg: ServerMessage::Promote { .. },
                ..
            }
        )));

    // Without the lobby, the relay elects by itself when the window ends.
    let (mut h, id, _) = game_of_four_with(config);
    h.disconnect(HOST, LeaveReason::TimedOut);
    assert!(promote_of(&h.advance(Duration::from_millis(799)), 2).is_none());
    let out = h.advance(Duration::from_millis(1));
    assert!(promote_of(&out, 2).is_some());
    assert!(events(&out).contains(&Event::HostElected {
        allocation: id,
        host: PeerId(1),
        by: ElectedBy::Relay
    }));
}

#[test]
fn a_lobby_may_hand_out_the_ticket_itself() {
    let (mut h, id, _) = game_of_four();
    h.disconnect(HOST, LeaveReason::Closed);
    let promotion = h.cp.elect_host(h.now, id, PeerId(2), false).unwrap();
    let out = h.drain();
    // Everyone hears who is elected, but the relay does not promote it.
    assert!(promote_of(&out, 3).is_none());
    assert!(replies_to(&out, 3).contains(&ServerMessage::HostLost {
        host: PeerId::HOST,
        reason: LeaveReason::Closed,
        elected: PeerId(2)
    }));
    // The ticket the lobby got works.
    let out = h.request(
        3,
        ClientMessage::MigrateAllocation {
            request_id: 9,
            allocation: id,
            ticket: promotion.ticket,
        },
    );
    assert!(matches!(
        replies_to(&out, 3)[0],
        ServerMessage::AllocationCreated { request_id: 9, .. }
    ));
}

/// Every routing update names who hosts the allocation at that moment: the driver reads only
/// the host's snapshot uploads from it.
#[test]
fn routing_updates_name_the_current_host() {
    let host_of = |out: &[Output]| {
        out.iter().rev().find_map(|o| match o {
            Output::Route { host, members, .. } if !members.is_empty() => Some(*host),
            _ => None,
        })
    };
    let mut h = Harness::new();
    let (old, code, _) = h.create_with_token(HOST, 0, 0);
    let (_, out) = h.join(2, code);
    assert_eq!(host_of(&out), Some(Some(PeerId::HOST)));
    h.join_ok(3, code);
    // The host is lost: the others' routing names no host while they migrate.
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    assert_eq!(host_of(&out), Some(None));
    let (_, ticket) = promote_of(&out, 2).expect("conn 2 is promoted");
    let request_id = h.rid();
    let out = h.request(
        2,
        ClientMessage::MigrateAllocation {
            request_id,
            allocation: old,
            ticket,
        },
    );
    assert_eq!(host_of(&out), Some(Some(PeerId(1))));
}

#[test]
fn a_kick_outlives_the_migration_and_a_new_host_can_kick_too() {
    let mut h = Harness::new();
    let (old, code, host_token) = h.create_with_token(HOST, 0, 0);
    let (elected, _) = h.join_with_token(2, code);
    let (kicked, kicked_token) = h.join_with_token(3, code);
    let (stays, stays_token) = h.join_with_token(4, code);
    h.kick(HOST, kicked);
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 2).expect("conn 2 is promoted");
    let new = h.migrate(2, old, ticket);

    // Kicked before the migration: still refused, naming either allocation.
    h.connect(10);
    assert_eq!(
        h.rejoin_result(10, old, kicked, kicked_token),
        Err((ErrorCode::Unauthorized, 0))
    );
    assert_eq!(
        h.rejoin_result(10, new, kicked, kicked_token),
        Err((ErrorCode::Unauthorized, 0))
    );
    // The old host comes back as peer 0; the new host kicks it, and its token dies.
    assert_eq!(h.rejoin_result(10, old, PeerId::HOST, host_token), Ok(new));
    h.kick(2, PeerId::HOST);
    h.connect(11);
    assert_eq!(
        h.rejoin_result(11, old, PeerId::HOST, host_token),
        Err((ErrorCode::Unauthorized, 0))
    );
    // A member that was not kicked still rejoins across the migration.
    h.disconnect(4, LeaveReason::TimedOut);
    assert_eq!(h.rejoin_result(11, old, stays, stays_token), Ok(new));
    assert_eq!(h.cp.allocation(h.now, new).unwrap().host, Some(elected.0));
}

/// At the default settings: once every allocation of a lineage has closed and its successor
/// links have expired, nothing of it is left to rejoin, whichever allocation is named.
#[test]
fn a_closed_lineage_leaves_no_way_to_rejoin() {
    let (mut h, old, _, host_token, ticket) = host_lost_among_three();
    let new = h.migrate(2, old, ticket);
    h.connect(10);
    assert_eq!(h.rejoin_result(10, old, PeerId::HOST, host_token), Ok(new));
    h.disconnect(10, LeaveReason::ConnectionLost);
    h.cp.close_by_admin(h.now, new).expect("closed");
    h.drain();
    h.connect(11);
    for named in [old, new] {
        assert_eq!(
            h.rejoin_result(11, named, PeerId::HOST, host_token),
            Err((ErrorCode::NotFound, 0))
        );
    }
    h.advance(defaults::CODE_TOMBSTONE_TTL + Duration::from_secs(1));
    assert!(h.cp.successors.is_empty(), "successor links expired");
    h.connect(12);
    for named in [old, new] {
        assert_eq!(
            h.rejoin_result(12, named, PeerId::HOST, host_token),
            Err((ErrorCode::NotFound, 0))
        );
    }
}

#[test]
fn a_successor_whose_code_was_revoked_sets_no_code_expiry() {
    let mut h = Harness::new();
    let (old, code) = h.create();
    h.join_ok(2, code);
    let request_id = h.rid();
    let out = h.request(HOST, ClientMessage::RevokeCode { request_id });
    assert_eq!(
        replies_to(&out, HOST),
        vec![ServerMessage::Done { request_id }]
    );
    let out = h.disconnect(HOST, LeaveReason::Closed);
    let (_, ticket) = promote_of(&out, 2).expect("conn 2 is promoted");
    let new = h.migrate(2, old, ticket);
    assert!(
        !h.cp
            .timers
            .entries()
            .any(|(_, timer)| timer == Timer::CodeExpiry(new)),
        "a revoked code has no expiry to wait for"
    );
    assert_eq!(h.refusal(3, code).0, ErrorCode::Revoked);
}
