//! Opening allocations: requested limits, and a lobby's reservation claimed (or not) by its
//! host.

use super::*;

#[test]
fn requested_limits_are_clamped_and_reported() {
    let mut config = RelayConfig::default();
    config.set_join_code_ttl(Duration::from_secs(60)).unwrap();
    let mut h = Harness::with(config);
    h.connect(HOST);
    let out = h.request(
        HOST,
        ClientMessage::CreateAllocation {
            request_id: 9,
            max_peers: 60_000,
            code_ttl_secs: 3600,
            host_loss_timeout_ms: 0,
            credential: None,
        },
    );
    assert!(matches!(
        replies_to(&out, HOST)[..],
        [ServerMessage::AllocationCreated {
            max_peers: 150,
            code_ttl_secs: 60,
            ..
        }]
    ));
}

#[test]
fn a_reserved_allocation_whose_host_never_binds_expires() {
    let mut h = Harness::new();
    let r = h.cp.reserve_allocation(h.now, Some(4)).unwrap();
    h.drain();
    let code = JoinCode::parse(&r.join_code).unwrap();
    // Peers may join before the host arrives; the host's seat is held.
    assert_eq!(h.join_ok(2, code), PeerId(1));
    let info = &h.cp.allocations(h.now)[0];
    assert!(!info.host_bound);
    let out = h.advance(Duration::from_secs(60));
    assert_eq!(closes(&out), vec![(2, CloseCode::AllocationClosed)]);
    assert!(events(&out).iter().any(|e| matches!(
        e,
        Event::AllocationClosed {
            reason: CloseReason::HostNeverBound,
            ..
        }
    )));
    assert_eq!(h.cp.allocation_count(), 0);
}

#[test]
fn a_reserved_allocation_is_claimed_with_its_token_only() {
    let mut h = Harness::new();
    let r = h.cp.reserve_allocation(h.now, None).unwrap();
    h.drain();
    let id: AllocationId = r.allocation_id.parse().unwrap();
    let token: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&r.host_token[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let token: [u8; 16] = token.try_into().unwrap();
    let code = JoinCode::parse(&r.join_code).unwrap();
    h.join_ok(2, code);

    h.connect(HOST);
    let mut wrong = token;
    wrong[0] ^= 1;
    let out = h.request(
        HOST,
        ClientMessage::ClaimHost {
            request_id: 1,
            allocation: id,
            host_token: wrong,
        },
    );
    assert_eq!(refused(&out, HOST).0, ErrorCode::Unauthorized);
    let out = h.request(
        HOST,
        ClientMessage::ClaimHost {
            request_id: 2,
            allocation: id,
            host_token: token,
        },
    );
    assert!(matches!(
        replies_to(&out, HOST)[..],
        [
            ServerMessage::AllocationCreated { request_id: 2, .. },
            ServerMessage::PeerJoined { peer: PeerId(1) }
        ]
    ));
    assert_eq!(
        replies_to(&out, 2),
        vec![ServerMessage::PeerJoined { peer: PeerId::HOST }]
    );
    // Claimed: the host bind deadline no longer applies, and the token is spent.
    assert!(closes(&h.advance(Duration::from_secs(120))).is_empty());
    h.connect(9);
    let out = h.request(
        9,
        ClientMessage::ClaimHost {
            request_id: 3,
            allocation: id,
            host_token: token,
        },
    );
    assert_eq!(refused(&out, 9).0, ErrorCode::Unauthorized);
}

/// The `PeerLeft` events of the members an allocation closes on: one reason per cause.
fn left_reasons(out: &[Output]) -> Vec<(PeerId, LeaveReason)> {
    events(out)
        .into_iter()
        .filter_map(|e| match e {
            Event::PeerLeft { peer, reason, .. } => Some((peer, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn each_close_cause_gives_the_members_its_own_leave_reason() {
    // Closed by an operator.
    let mut h = Harness::new();
    let (id, code) = h.create();
    h.join_ok(2, code);
    h.cp.close_by_admin(h.now, id).unwrap();
    let mut left = left_reasons(&h.drain());
    left.sort_by_key(|(peer, _)| *peer);
    assert_eq!(
        left,
        vec![
            (PeerId::HOST, LeaveReason::AllocationClosed),
            (PeerId(1), LeaveReason::AllocationClosed)
        ]
    );

    // A lobby's reservation whose host never bound.
    let r = h.cp.reserve_allocation(h.now, None).unwrap();
    h.drain();
    h.join_ok(3, JoinCode::parse(&r.join_code).unwrap());
    let out = h.advance(defaults::HOST_BIND_TIMEOUT);
    assert_eq!(
        left_reasons(&out),
        vec![(PeerId(1), LeaveReason::HostNeverBound)]
    );

    // A migration no one completed.
    let (_, code) = h.create_with(20, 0, 0);
    h.join_ok(21, code);
    let out = h.disconnect(20, LeaveReason::TimedOut);
    assert_eq!(
        left_reasons(&out),
        vec![(PeerId::HOST, LeaveReason::TimedOut)]
    );
    let out = h.advance(defaults::MIGRATION_TIMEOUT);
    assert_eq!(
        left_reasons(&out),
        vec![(PeerId(1), LeaveReason::MigrationFailed)]
    );

    // The relay shutting down.
    let (_, code) = h.create_with(30, 0, 0);
    h.join_ok(31, code);
    h.cp.shutdown(h.now);
    let mut left = left_reasons(&h.drain());
    left.sort_by_key(|(peer, _)| *peer);
    assert_eq!(
        left,
        vec![
            (PeerId::HOST, LeaveReason::RelayShuttingDown),
            (PeerId(1), LeaveReason::RelayShuttingDown)
        ]
    );
}
