//! Membership: joining by code (expiry, rate limits), timeouts, kicks and peer ids.

use super::*;

#[test]
fn create_then_join_routes_both_and_tells_the_host() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    assert_eq!(code.len(), 6);
    let lower = JoinCode::parse(&code.as_str().to_lowercase()).unwrap();
    let (reply, out) = h.join(2, lower);
    let ServerMessage::Joined {
        request_id,
        allocation,
        peer,
        max_payload,
        host,
        reconnect_token,
        host_loss_timeout_ms: _,
        members,
    } = reply
    else {
        panic!("not joined: {reply:?}");
    };
    assert_eq!(
        (request_id, allocation, peer, max_payload, host, members),
        (
            h.next_request,
            id,
            PeerId(1),
            1150,
            PeerId::HOST,
            vec![PeerId::HOST]
        )
    );
    assert_ne!(reconnect_token, [0; 16]);
    assert_eq!(
        replies_to(&out, HOST),
        vec![ServerMessage::PeerJoined { peer: PeerId(1) }]
    );
    assert_eq!(
        last_route(&out),
        Some(vec![(PeerId(0), HOST), (PeerId(1), 2)])
    );
    // Routing is installed before the joiner hears it joined.
    let bound = out
        .iter()
        .position(|o| matches!(o, Output::Bound { conn: 2, .. }))
        .expect("the joiner is routed");
    let joined = out
        .iter()
        .position(|o| {
            matches!(
                o,
                Output::Send {
                    conn: 2,
                    msg: ServerMessage::Joined { .. }
                }
            )
        })
        .expect("the joiner is told");
    assert!(bound < joined, "routed at {bound}, told at {joined}");
    assert_eq!(h.join_ok(3, code), PeerId(2));
    assert_eq!(h.cp.allocations(h.now)[0].members.len(), 3);
}

#[test]
fn join_codes_expire_and_tombstones_are_forgotten_later() {
    let mut h = Harness::new();
    let (id, code) = h.create_with(HOST, 0, 30);
    h.advance(Duration::from_secs(29));
    assert_eq!(h.join_ok(2, code), PeerId(1));
    h.advance(Duration::from_secs(1));
    assert_eq!(h.refusal(3, code).0, ErrorCode::Expired);
    // Members stay: only new joins need a fresh code.
    assert_eq!(h.cp.allocation(h.now, id).unwrap().members.len(), 2);
    assert_eq!(h.cp.allocation(h.now, id).unwrap().code_state, "expired");
    h.advance(defaults::CODE_TOMBSTONE_TTL);
    assert_eq!(h.refusal(4, code).0, ErrorCode::NotFound);
}

#[test]
fn failed_joins_are_rate_limited_per_address() {
    let mut h = Harness::new();
    let bad = JoinCode::parse("BCDFGH").unwrap();
    // Connections 100, 350, 600... share an address in this harness.
    let conns: Vec<ConnId> = (0..12).map(|i| 100 + 250 * i).collect();
    for conn in &conns[..10] {
        assert_eq!(h.refusal(*conn, bad).0, ErrorCode::NotFound);
    }
    let (code, retry_ms) = h.refusal(conns[10], bad);
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(retry_ms > 0 && retry_ms <= 1000, "{retry_ms}");
    // Another address is unaffected.
    assert_eq!(h.refusal(101, bad).0, ErrorCode::NotFound);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.refusal(conns[11], bad).0, ErrorCode::NotFound);
}

#[test]
fn a_silent_peer_is_reported_to_the_others_as_timed_out() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    let peer = h.join_ok(2, code);
    h.join_ok(3, code);
    let out = h.disconnect(2, LeaveReason::TimedOut);
    let left = ServerMessage::PeerLeft {
        peer,
        reason: LeaveReason::TimedOut,
    };
    assert_eq!(replies_to(&out, HOST), vec![left.clone()]);
    assert_eq!(replies_to(&out, 3), vec![left]);
    assert_eq!(
        last_route(&out),
        Some(vec![(PeerId(0), HOST), (PeerId(2), 3)])
    );
    assert!(closes(&out).is_empty());
}

#[test]
fn a_connection_that_never_binds_is_closed_at_the_bind_deadline() {
    let mut h = Harness::new();
    h.connect(5);
    assert!(closes(&h.advance(Duration::from_millis(9_999))).is_empty());
    assert_eq!(
        closes(&h.advance(Duration::from_millis(1))),
        vec![(5, CloseCode::BindTimeout)]
    );
    assert_eq!(h.cp.connection_count(), 0);
    // A bound connection is not affected by its old bind deadline.
    let (_, _) = h.create();
    assert!(closes(&h.advance(Duration::from_secs(60))).is_empty());
}

#[test]
fn kick_removes_the_peer_with_its_reason() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    let p1 = h.join_ok(2, code);
    h.join_ok(3, code);
    let request_id = h.rid();
    let out = h.request(
        HOST,
        ClientMessage::Kick {
            request_id,
            peer: p1,
        },
    );
    assert_eq!(closes(&out), vec![(2, CloseCode::Kicked)]);
    assert!(replies_to(&out, HOST).contains(&ServerMessage::Done { request_id }));
    assert_eq!(
        replies_to(&out, 3),
        vec![ServerMessage::PeerLeft {
            peer: p1,
            reason: LeaveReason::Kicked
        }]
    );
    // Kicking again, kicking the host, or a peer kicking: each refused precisely.
    let out = h.request(
        HOST,
        ClientMessage::Kick {
            request_id: 50,
            peer: p1,
        },
    );
    assert_eq!(refused(&out, HOST), (ErrorCode::UnknownPeer, 1));
    let out = h.request(
        HOST,
        ClientMessage::Kick {
            request_id: 51,
            peer: PeerId::HOST,
        },
    );
    assert_eq!(refused(&out, HOST).0, ErrorCode::InvalidRequest);
    let out = h.request(
        3,
        ClientMessage::Kick {
            request_id: 52,
            peer: PeerId::HOST,
        },
    );
    assert_eq!(refused(&out, 3).0, ErrorCode::NotHost);
    // The kicked peer's transport disconnect is not reported twice.
    assert!(h.disconnect(2, LeaveReason::Closed).is_empty());
}

#[test]
fn peer_ids_are_not_reused_while_their_holder_could_return() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    assert_eq!(h.join_ok(2, code), PeerId(1));
    h.disconnect(2, LeaveReason::Closed);
    assert_eq!(h.join_ok(3, code), PeerId(2));
    assert_eq!(h.join_ok(4, code), PeerId(3));
}

#[test]
fn a_kicked_peer_cannot_rejoin_with_its_token_but_may_join_again_as_a_new_peer() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    let (kicked, kicked_token) = h.join_with_token(2, code);
    let (stays, stays_token) = h.join_with_token(3, code);
    h.kick(HOST, kicked);
    h.connect(12);
    assert_eq!(
        h.rejoin_result(12, id, kicked, kicked_token),
        Err((ErrorCode::Unauthorized, 0))
    );

    // An ordinary disconnected peer still rejoins with its token.
    h.disconnect(3, LeaveReason::TimedOut);
    h.connect(13);
    assert_eq!(h.rejoin_result(13, id, stays, stays_token), Ok(id));

    // The kicked player may join again by code, as a new peer, and its new token works.
    let (again, again_token) = h.join_with_token(14, code);
    assert_eq!(again, PeerId(3));
    assert_ne!(again_token, kicked_token);
    h.disconnect(14, LeaveReason::ConnectionLost);
    h.connect(15);
    assert_eq!(h.rejoin_result(15, id, again, again_token), Ok(id));
    // The kicked id's old token stays dead.
    assert_eq!(
        h.rejoin_result(12, id, kicked, kicked_token),
        Err((ErrorCode::Unauthorized, 0))
    );
}

/// Peer ids come back only after the 16-bit space wraps; whoever gets one then gets a token
/// of its own, and the id's earlier holders (kicked or merely gone) cannot take it over.
#[test]
fn a_reused_peer_id_comes_with_a_fresh_token() {
    let mut h = Harness::new();
    let (id, code) = h.create();
    let (kicked, kicked_token) = h.join_with_token(2, code);
    let (gone, gone_token) = h.join_with_token(3, code);
    assert_eq!((kicked, gone), (PeerId(1), PeerId(2)));
    h.kick(HOST, kicked);
    h.disconnect(3, LeaveReason::Closed);
    // Ids 3..=0xFFFE, each joined and left, until the space wraps back to 1.
    for expected in 3..baton_protocol::datagram::BROADCAST {
        assert_eq!(h.join_ok(100, code), PeerId(expected));
        h.disconnect(100, LeaveReason::Closed);
    }
    let (one, one_token) = h.join_with_token(4, code);
    let (two, two_token) = h.join_with_token(5, code);
    assert_eq!((one, two), (kicked, gone));
    assert_ne!(one_token, kicked_token);
    assert_ne!(two_token, gone_token);
    h.disconnect(4, LeaveReason::Closed);
    h.disconnect(5, LeaveReason::Closed);
    h.connect(12);
    assert_eq!(
        h.rejoin_result(12, id, one, kicked_token),
        Err((ErrorCode::Unauthorized, 0))
    );
    assert_eq!(
        h.rejoin_result(12, id, two, gone_token),
        Err((ErrorCode::Unauthorized, 0))
    );
    assert_eq!(h.rejoin_result(12, id, one, one_token), Ok(id));
    h.connect(13);
    assert_eq!(h.rejoin_result(13, id, two, two_token), Ok(id));
    // Only the ids given out again or kicked are remembered, not every id ever used.
    let alloc = &h.cp.allocations[&id];
    assert_eq!(
        alloc.token_generations.keys().copied().collect::<Vec<_>>(),
        [one, two]
    );
}
