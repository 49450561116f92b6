//! The host-loss timeout (SPEC section 11.1): what a host asks for is clamped into the relay's
//! bounds, reported to the host and every member, handed to the data plane with each binding,
//! and kept across migrations and takeovers.

use super::*;

const UNIX: u64 = 1_800_000_000;

/// `conn` creates an allocation asking for `ms`; returns its id, code and the granted value.
fn create_asking(h: &mut Harness, conn: ConnId, ms: u16) -> (AllocationId, JoinCode, u16) {
    h.connect(conn);
    let request_id = h.rid();
    let out = h.request(
        conn,
        ClientMessage::CreateAllocation {
            request_id,
            max_peers: 0,
            code_ttl_secs: 0,
            host_loss_timeout_ms: ms,
            credential: None,
        },
    );
    let bound = bound_timeouts(&out);
    let created = replies_to(&out, conn)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::AllocationCreated {
                allocation,
                code,
                host_loss_timeout_ms,
                ..
            } => Some((allocation, code, host_loss_timeout_ms)),
            _ => None,
        })
        .expect("created");
    // The data plane hears the same value with the host's binding.
    assert_eq!(
        bound,
        vec![(conn, Duration::from_millis(u64::from(created.2)))]
    );
    created
}

/// Every `Output::Bound` in `out`: the connection and its host-loss timeout.
fn bound_timeouts(out: &[Output]) -> Vec<(ConnId, Duration)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Bound {
                conn,
                host_loss_timeout,
                ..
            } => Some((*conn, *host_loss_timeout)),
            _ => None,
        })
        .collect()
}

#[test]
fn requests_are_clamped_into_the_relays_bounds() {
    let mut h = Harness::new();
    // 0: the default, 1.5 s.
    assert_eq!(create_asking(&mut h, 1, 0).2, 1500);
    // Within bounds: as asked.
    assert_eq!(create_asking(&mut h, 2, 800).2, 800);
    // Below the minimum (500 ms): raised to it.
    assert_eq!(create_asking(&mut h, 3, 100).2, 500);
    // Above the keepalive timeout (10 s): lowered to it.
    assert_eq!(create_asking(&mut h, 4, 60_000).2, 10_000);

    // An operator's bounds: a 1 s keepalive caps the default too; a lower minimum admits
    // shorter requests.
    let mut config = RelayConfig::default();
    config
        .set_keepalive_timeout(Duration::from_secs(1))
        .unwrap()
        .set_host_loss_timeout_min(Duration::from_millis(200))
        .unwrap();
    let mut h = Harness::with(config);
    assert_eq!(create_asking(&mut h, 1, 0).2, 1000);
    assert_eq!(create_asking(&mut h, 2, 250).2, 250);
    assert_eq!(create_asking(&mut h, 3, 150).2, 200);
    // A minimum above the keepalive: the keepalive wins (a host is never watched past it).
    let mut config = RelayConfig::default();
    config
        .set_keepalive_timeout(Duration::from_secs(1))
        .unwrap()
        .set_host_loss_timeout_min(Duration::from_secs(2))
        .unwrap();
    let mut h = Harness::with(config);
    assert_eq!(create_asking(&mut h, 1, 0).2, 1000);
}

#[test]
fn every_member_learns_it_and_a_successor_keeps_it() {
    let mut h = Harness::new();
    let (old, code, granted) = create_asking(&mut h, HOST, 900);
    assert_eq!(granted, 900);
    for conn in [2, 3] {
        let (reply, out) = h.join(conn, code);
        match reply {
            ServerMessage::Joined {
                host_loss_timeout_ms,
                ..
            } => assert_eq!(host_loss_timeout_ms, 900),
            other => panic!("not joined: {other:?}"),
        }
        assert_eq!(
            bound_timeouts(&out),
            vec![(conn, Duration::from_millis(900))]
        );
    }
    // The host is lost (the relay's host watch reports it as timed out): conn 2 takes over.
    let out = h.disconnect(HOST, LeaveReason::TimedOut);
    let lost: Vec<_> = replies_to(&out, 3)
        .into_iter()
        .filter(|m| matches!(m, ServerMessage::HostLost { .. }))
        .collect();
    assert_eq!(
        lost,
        vec![ServerMessage::HostLost {
            host: PeerId::HOST,
            reason: LeaveReason::TimedOut,
            elected: PeerId(1),
        }]
    );
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
    let new = replies_to(&out, 2)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::AllocationCreated {
                allocation,
                host_loss_timeout_ms,
                ..
            } => {
                assert_eq!(host_loss_timeout_ms, 900);
                Some(allocation)
            }
            _ => None,
        })
        .expect("migrated");
    // Every member is bound to the successor with the same timeout; the new host's included.
    let mut bound = bound_timeouts(&out);
    bound.sort();
    assert_eq!(
        bound,
        vec![
            (2, Duration::from_millis(900)),
            (3, Duration::from_millis(900))
        ]
    );
    // A newcomer to the successor hears it too.
    match h.join(4, code).0 {
        ServerMessage::Joined {
            allocation,
            host_loss_timeout_ms,
            ..
        } => {
            assert_eq!(allocation, new);
            assert_eq!(host_loss_timeout_ms, 900);
        }
        other => panic!("not joined: {other:?}"),
    }
}

#[test]
fn a_record_carries_it_and_an_old_record_takes_the_adopters_default() {
    let mut a = Harness::new();
    let (id, _, _) = create_asking(&mut a, HOST, 700);
    let record = a.cp.export(id, a.now, UNIX).expect("exported");
    assert_eq!(record.host_loss_timeout_ms, 700);
    let mut b = Harness::new();
    b.cp.adopt(b.now, UNIX, &record).unwrap();
    assert_eq!(
        b.cp.allocations.get(&id).map(|a| a.host_loss_timeout),
        Some(Duration::from_millis(700))
    );

    // A record written before the field existed decodes, and gets the adopting node's
    // default.
    let mut json: serde_json::Value = serde_json::to_value(&record).unwrap();
    json.as_object_mut().unwrap().remove("host_loss_timeout_ms");
    let old: AllocationRecord = serde_json::from_value(json).unwrap();
    assert_eq!(old.host_loss_timeout_ms, 0);
    let mut c = Harness::new();
    c.cp.adopt(c.now, UNIX, &old).unwrap();
    assert_eq!(
        c.cp.allocations.get(&id).map(|a| a.host_loss_timeout),
        Some(RelayConfig::default().host_loss_timeout())
    );
}
