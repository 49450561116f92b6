//! The admin calls: revoking a code, closing an allocation, a full relay and shutdown.

use super::*;

#[test]
fn admin_revocation_tells_the_host_and_admin_close_closes_everyone() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    h.join_ok(2, code);
    assert_eq!(h.cp.revoke_code(h.now, id), Ok(code));
    let out = h.drain();
    assert_eq!(
        replies_to(&out, HOST),
        vec![ServerMessage::CodeRevoked { code }]
    );
    assert_eq!(h.refusal(3, code).0, ErrorCode::Revoked);
    h.cp.close_by_admin(h.now, id).unwrap();
    assert_eq!(
        closes_by_conn(&h.drain()),
        vec![
            (HOST, CloseCode::AllocationClosed),
            (2, CloseCode::AllocationClosed)
        ]
    );
    assert_eq!(
        h.cp.close_by_admin(h.now, id),
        Err(AdminError::NotFound(id))
    );
}

#[test]
fn admin_revocation_after_a_migration_tells_the_new_host_not_peer_0() {
    // Peer 1 (conn 2) takes over; the old host comes back as an ordinary peer 0 (conn 10).
    let (mut h, old, code, reconnect_token, ticket) = host_lost_among_three();
    let new = h.migrate(2, old, ticket);
    h.connect(10);
    let out = h.rejoin(10, old, PeerId::HOST, reconnect_token);
    assert!(matches!(
        &replies_to(&out, 10)[..],
        [ServerMessage::Joined {
            peer: PeerId(0),
            host: PeerId(1),
            ..
        }]
    ));

    assert_eq!(h.cp.revoke_code(h.now, new), Ok(code));
    let out = h.drain();
    assert_eq!(
        replies_to(&out, 2),
        vec![ServerMessage::CodeRevoked { code }]
    );
    assert_eq!(replies_to(&out, 10), vec![], "peer 0 is no longer the host");
    assert_eq!(replies_to(&out, 3), vec![]);
    assert_eq!(h.refusal(4, code).0, ErrorCode::Revoked);
}

#[test]
fn relay_full_and_shutdown() {
    let mut config = RelayConfig::default();
    config.set_max_allocations(1).unwrap();
    let mut h = Harness::with(config);
    h.create();
    h.connect(2);
    let out = h.request(
        2,
        ClientMessage::CreateAllocation {
            request_id: 1,
            max_peers: 0,
            code_ttl_secs: 0,
            host_loss_timeout_ms: 0,
            credential: None,
        },
    );
    assert_eq!(refused(&out, 2), (ErrorCode::RelayFull, 1));
    h.cp.shutdown(h.now);
    assert_eq!(
        closes_by_conn(&h.drain()),
        vec![
            (HOST, CloseCode::RelayShuttingDown),
            (2, CloseCode::RelayShuttingDown)
        ]
    );
    assert_eq!((h.cp.allocation_count(), h.cp.connection_count()), (0, 0));
    h.connect(3);
    assert_eq!(closes(&h.drain()), vec![(3, CloseCode::RelayShuttingDown)]);
}

#[test]
fn shutdown_leaves_no_bind_deadline_of_a_connection_it_forgot() {
    let mut h = Harness::new();
    let baseline = h.cp.pending_timers();
    h.connect(2);
    h.cp.shutdown(h.now);
    assert_eq!(closes(&h.drain()), vec![(2, CloseCode::RelayShuttingDown)]);
    assert_eq!(
        h.cp.pending_timers(),
        baseline,
        "the unbound connection's bind window is cancelled with it"
    );
}

/// Once an expired code's tombstone is forgotten, `fresh_code` may draw that code for another
/// allocation; revoking the first allocation's code afterwards must leave the second's alone.
#[test]
fn revoking_an_expired_code_spares_the_allocation_that_holds_it_now() {
    let mut h = Harness::new();
    let (first, code) = h.create_with(HOST, 0, 5);
    h.advance(Duration::from_secs(5) + defaults::CODE_TOMBSTONE_TTL);
    assert!(!h.cp.codes.contains_key(&code), "the code is free again");
    // The next allocation draws it: its own draw is swapped for `code`, as a draw may give.
    let (second, drawn) = h.create_with(2, 0, 0);
    h.cp.codes.remove(&drawn);
    h.cp.codes.insert(code, CodeEntry::Live(second));
    h.cp.allocations.get_mut(&second).unwrap().code = code;

    assert_eq!(h.cp.revoke_code(h.now, first), Ok(code));
    h.drain();
    assert_eq!(h.cp.allocation(h.now, first).unwrap().code_state, "revoked");
    let (reply, _) = h.join(3, code);
    assert!(
        matches!(reply, ServerMessage::Joined { allocation, .. } if allocation == second),
        "{reply:?}"
    );
}
