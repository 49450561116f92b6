//! Draining a fleet node (`control/drain.rs`), in simulated time.

use super::fleet::{codes_for_pool, fleet_config};
use super::*;

/// Outputs asking to relocate, as allocation ids.
fn relocations(out: &[Output]) -> Vec<AllocationId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Relocate { record } => Some(AllocationId(record.allocation)),
            _ => None,
        })
        .collect()
}

/// A fleet node with a code pool, hosting one allocation with two peers (conns 1, 2, 3).
fn hosting() -> (Harness, AllocationId, JoinCode) {
    let mut h = Harness::with(fleet_config());
    h.cp.handle(
        h.now,
        Input::CodesClaimed {
            codes: codes_for_pool(),
        },
    );
    h.drain();
    let (id, code) = h.create();
    h.join_ok(2, code);
    h.join_ok(3, code);
    (h, id, code)
}

const B: &str = "127.0.0.2:7700";

fn ready(h: &mut Harness, id: AllocationId) -> Vec<Output> {
    h.cp.handle(
        h.now,
        Input::RelocationReady {
            allocation: id,
            address: B.parse().unwrap(),
            server_name: "localhost".into(),
            node: "b".into(),
        },
    );
    h.drain()
}

#[test]
fn a_relay_standing_alone_has_nothing_to_drain_to() {
    let mut h = Harness::new();
    assert_eq!(h.cp.drain(h.now), Err(AdminError::NotAFleetNode));
    assert!(!h.cp.is_draining());
}

#[test]
fn draining_moves_every_allocation_and_tells_every_member() {
    let (mut h, id, code) = hosting();
    assert_eq!(h.cp.drain(h.now), Ok(1));
    let out = h.drain();
    assert!(out.contains(&Output::Draining));
    assert_eq!(relocations(&out), vec![id]);
    // No new allocations here any more.
    let request_id = h.rid();
    h.connect(9);
    let out = h.request(
        9,
        ClientMessage::CreateAllocation {
            request_id,
            max_peers: 0,
            code_ttl_secs: 0,
            host_loss_timeout_ms: 0,
            credential: None,
        },
    );
    assert_eq!(refused(&out, 9), (ErrorCode::ShuttingDown, 0));
    assert_eq!(
        h.cp.reserve_allocation(h.now, None),
        Err(AdminError::ShuttingDown)
    );

    let out = ready(&mut h, id);
    let relocate = ServerMessage::Relocate {
        address: B.parse().unwrap(),
        server_name: "localhost".into(),
    };
    for conn in [HOST, 2, 3] {
        assert_eq!(
            replies_to(&out, conn),
            vec![relocate.clone()],
            "conn {conn}"
        );
    }
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::AllocationRelocated { allocation, to_node }) if *allocation == id && to_node == "b"
    )));
    // A join reaching this node now follows the allocation.
    h.connect(10);
    let request_id = h.rid();
    let out = h.request(
        10,
        ClientMessage::Join {
            request_id,
            code,
            credential: None,
        },
    );
    assert!(matches!(
        replies_to(&out, 10)[..],
        [ServerMessage::Redirect { address, .. }] if address == B.parse().unwrap()
    ));
}

#[test]
fn members_leave_quietly_and_the_last_one_closes_it_as_relocated() {
    let (mut h, id, code) = hosting();
    h.cp.drain(h.now).unwrap();
    h.drain();
    ready(&mut h, id);
    // The host moves first: nobody is told, and no migration starts.
    let out = h.disconnect(HOST, LeaveReason::Closed);
    assert!(replies_to(&out, 2).is_empty(), "{out:?}");
    assert!(
        !out.iter().any(|o| matches!(
            o,
            Output::Event(Event::HostDisconnected { .. } | Event::PeerLeft { .. })
        )),
        "{out:?}"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Publish { .. })));
    h.disconnect(2, LeaveReason::Closed);
    let out = h.disconnect(3, LeaveReason::Closed);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Event(Event::AllocationClosed {
            reason: CloseReason::Relocated,
            ..
        })
    )));
    assert_eq!(h.cp.allocation_count(), 0);
    // Its code is not tombstoned here: a join is looked up in the directory, which sends it on.
    h.connect(20);
    let request_id = h.rid();
    let out = h.request(
        20,
        ClientMessage::Join {
            request_id,
            code,
            credential: None,
        },
    );
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Locate { what: Locate::Code(c), .. } if *c == code
        )),
        "{out:?}"
    );
}

/// `conn` finishes its control stream.
fn finish(h: &mut Harness, conn: ConnId) -> Vec<Output> {
    h.cp.handle(h.now, Input::Finished { conn });
    h.drain()
}

#[test]
fn moved_members_keep_receiving_until_every_member_has_moved() {
    let (mut h, id, _) = hosting();
    h.cp.drain(h.now).unwrap();
    h.drain();
    ready(&mut h, id);
    // The host is seated at the new node and finishes its control stream here: it stays in
    // the routing table, as host (peers not moved yet still send to it), and no one is told
    // anything.
    let out = finish(&mut h, HOST);
    assert!(out.is_empty(), "{out:?}");
    // A peer moves too; the last one's move closes everyone here.
    let out = finish(&mut h, 2);
    assert!(out.is_empty(), "{out:?}");
    let out = finish(&mut h, 3);
    assert_eq!(
        closes_by_conn(&out),
        vec![
            (HOST, CloseCode::RelayShuttingDown),
            (2, CloseCode::RelayShuttingDown),
            (3, CloseCode::RelayShuttingDown)
        ]
    );
    assert!(events(&out).iter().all(|e| matches!(
        e,
        Event::PeerLeft { .. }
            | Event::AllocationClosed {
                reason: CloseReason::Relocated,
                ..
            }
    )));
    assert_eq!(h.cp.allocation_count(), 0);
    h.check();
}

#[test]
fn a_moved_member_leaving_or_a_straggler_leaving_ends_the_move_too() {
    let (mut h, id, _) = hosting();
    h.cp.drain(h.now).unwrap();
    h.drain();
    ready(&mut h, id);
    finish(&mut h, HOST);
    finish(&mut h, 2);
    // A moved member closes its old connection before the others moved: it just leaves.
    let out = h.disconnect(2, LeaveReason::Closed);
    assert!(closes(&out).is_empty(), "{out:?}");
    assert_eq!(
        last_route(&out),
        Some(vec![(PeerId::HOST, HOST), (PeerId(2), 3)])
    );
    // The last one not moved gives up here: no one is left to move.
    let out = h.disconnect(3, LeaveReason::Closed);
    assert_eq!(
        closes_by_conn(&out),
        vec![(HOST, CloseCode::RelayShuttingDown)]
    );
    assert_eq!(h.cp.allocation_count(), 0);
    h.check();
}

#[test]
fn a_finished_control_stream_elsewhere_ends_the_session() {
    let (mut h, id, _) = hosting();
    // Not draining: a peer that finishes its control stream leaves, `closed`, and its
    // connection is closed normally.
    let out = finish(&mut h, 2);
    assert_eq!(closes_by_conn(&out), vec![(2, CloseCode::Normal)]);
    assert!(replies_to(&out, HOST).contains(&ServerMessage::PeerLeft {
        peer: PeerId(1),
        reason: LeaveReason::Closed,
    }));
    assert_eq!(
        last_route(&out),
        Some(vec![(PeerId::HOST, HOST), (PeerId(2), 3)])
    );
    // Its later disconnection is not a second departure.
    assert!(h.disconnect(2, LeaveReason::Closed).is_empty());
    // Draining, an allocation not handed over yet: the same.
    h.cp.drain(h.now).unwrap();
    h.drain();
    let out = finish(&mut h, 3);
    assert_eq!(closes_by_conn(&out), vec![(3, CloseCode::Normal)]);
    // An unbound connection: closed normally.
    h.connect(30);
    assert_eq!(
        closes_by_conn(&finish(&mut h, 30)),
        vec![(30, CloseCode::Normal)]
    );
    assert!(h.cp.allocation(h.now, id).is_some());
    h.check();
}

#[test]
fn stragglers_are_closed_a_keepalive_after_the_moved_host_left() {
    let (mut h, id, _) = hosting();
    h.cp.drain(h.now).unwrap();
    h.drain();
    ready(&mut h, id);
    finish(&mut h, HOST);
    finish(&mut h, 2);
    // The host stops receiving here (its client bounds how long it does).
    h.disconnect(HOST, LeaveReason::Closed);
    let out = h.advance(RelayConfig::default().keepalive_timeout() + Duration::from_millis(1));
    assert_eq!(
        closes_by_conn(&out),
        vec![
            (2, CloseCode::RelayShuttingDown),
            (3, CloseCode::RelayShuttingDown)
        ]
    );
    assert_eq!(h.cp.allocation_count(), 0);
    h.check();
}

#[test]
fn stragglers_are_closed_a_keepalive_after_the_host_moved() {
    let (mut h, id, _) = hosting();
    h.cp.drain(h.now).unwrap();
    h.drain();
    ready(&mut h, id);
    h.disconnect(HOST, LeaveReason::Closed);
    let out = h.advance(RelayConfig::default().keepalive_timeout() + Duration::from_millis(1));
    assert_eq!(
        closes_by_conn(&out),
        vec![
            (2, CloseCode::RelayShuttingDown),
            (3, CloseCode::RelayShuttingDown)
        ]
    );
    assert_eq!(h.cp.allocation_count(), 0);
}

#[test]
fn a_failed_handover_is_tried_again_on_the_next_sweep() {
    let (mut h, id, _) = hosting();
    h.cp.drain(h.now).unwrap();
    h.drain();
    h.cp.handle(h.now, Input::RelocationFailed { allocation: id });
    assert!(relocations(&h.drain()).is_empty());
    let out = h.advance(DRAIN_SWEEP);
    assert_eq!(relocations(&out), vec![id]);
    // Asked once per sweep at most: while it is being handed over, not again.
    let out = h.advance(DRAIN_SWEEP);
    assert!(relocations(&out).is_empty());
}

#[test]
fn an_allocation_between_hosts_moves_once_its_new_host_took_over() {
    let (mut h, id, _) = hosting();
    // The host is lost; a member is elected and has not taken over yet.
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let (elected, ticket) = [2, 3]
        .into_iter()
        .find_map(|conn| promote_of(&out, conn).map(|(_, t)| (conn, t)))
        .expect("someone is promoted");
    h.cp.drain(h.now).unwrap();
    assert!(
        relocations(&h.drain()).is_empty(),
        "migrating: nothing to move yet"
    );
    let successor = h.migrate(elected, id, ticket);
    let out = h.advance(DRAIN_SWEEP);
    assert_eq!(relocations(&out), vec![successor]);
}
