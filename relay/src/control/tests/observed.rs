//! Address discovery (`control/observed.rs`): a member is told its observed address after the
//! reply that bound it, and again when it changes.

use super::*;

/// The `ObservedAddress` messages sent to `conn` in `out`.
fn observed(out: &[Output], conn: ConnId) -> Vec<SocketAddr> {
    sent_to(out, conn)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::ObservedAddress { address, .. } => Some(address),
            _ => None,
        })
        .collect()
}

#[test]
fn a_member_learns_its_address_after_its_bind_reply_and_again_when_it_changes() {
    let mut h = Harness::new();
    h.connect(HOST);
    let request_id = h.rid();
    let out = h.request(
        HOST,
        ClientMessage::CreateAllocation {
            request_id,
            max_peers: 0,
            code_ttl_secs: 0,
            host_loss_timeout_ms: 0,
            credential: None,
        },
    );
    let replies = sent_to(&out, HOST);
    assert!(
        matches!(
            replies[..],
            [
                ServerMessage::AllocationCreated { .. },
                ServerMessage::ObservedAddress { address, probe_port: 0 }
            ] if address == Harness::addr(HOST)
        ),
        "{replies:?}"
    );
    let code = match replies[0] {
        ServerMessage::AllocationCreated { code, .. } => code,
        _ => unreachable!(),
    };
    // A peer: the same, after its `Joined`; the host hears nothing of the peer's address.
    let (reply, out) = h.join(2, code);
    assert!(matches!(reply, ServerMessage::Joined { .. }));
    assert_eq!(observed(&out, 2), [Harness::addr(2)]);
    assert!(observed(&out, HOST).is_empty());

    // The peer's NAT rebinds: it is told the new address, once.
    let rebound: SocketAddr = "198.51.100.7:61000".parse().unwrap();
    h.cp.handle(
        h.now,
        Input::AddressChanged {
            conn: 2,
            addr: rebound,
        },
    );
    let out = h.drain();
    assert_eq!(observed(&out, 2), [rebound]);
    assert!(observed(&out, HOST).is_empty());
    h.cp.handle(
        h.now,
        Input::AddressChanged {
            conn: 2,
            addr: rebound,
        },
    );
    assert!(h.drain().is_empty());
    // An IPv4 client seen through a dual-stack socket is told its IPv4 address.
    let mapped: SocketAddr = "[::ffff:198.51.100.7]:61001".parse().unwrap();
    h.cp.handle(
        h.now,
        Input::AddressChanged {
            conn: 2,
            addr: mapped,
        },
    );
    assert_eq!(
        observed(&h.drain(), 2),
        ["198.51.100.7:61001".parse::<SocketAddr>().unwrap()]
    );
    h.check();
}

#[test]
fn an_unbound_connection_is_told_nothing_until_it_binds_at_its_latest_address() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    h.connect(2);
    let moved: SocketAddr = "203.0.113.9:5000".parse().unwrap();
    h.cp.handle(
        h.now,
        Input::AddressChanged {
            conn: 2,
            addr: moved,
        },
    );
    assert!(h.drain().is_empty());
    let request_id = h.rid();
    let out = h.request(
        2,
        ClientMessage::Join {
            request_id,
            code,
            credential: None,
        },
    );
    assert!(matches!(
        sent_to(&out, 2)[..],
        [ServerMessage::Joined { .. }, ServerMessage::ObservedAddress { address, .. }] if address == moved
    ));
    // A refused join binds nothing, and tells nothing.
    h.connect(3);
    let (refusal, _) = h.refusal(3, "BCDFGH".parse().unwrap());
    assert_eq!(refusal, ErrorCode::NotFound);
    h.check();
}

#[test]
fn a_migration_moves_members_without_telling_them_again() {
    let (mut h, id, _, ticket, _) = host_lost_among_three();
    let out = h.request(
        3,
        ClientMessage::MigrateAllocation {
            request_id: 77,
            allocation: id,
            ticket,
        },
    );
    assert!(
        out.iter().all(|o| !matches!(
            o,
            Output::Send {
                msg: ServerMessage::ObservedAddress { .. },
                ..
            }
        )),
        "{out:?}"
    );
    h.check();
}

#[test]
fn every_observed_address_names_the_probe_port() {
    let mut h = Harness::new();
    h.cp.set_probe_port(3479);
    let (_, code) = h.create();
    let (_, out) = h.join(2, code);
    let told: Vec<ServerMessage> = sent_to(&out, 2)
        .into_iter()
        .filter(|m| matches!(m, ServerMessage::ObservedAddress { .. }))
        .collect();
    assert_eq!(
        told,
        [ServerMessage::ObservedAddress {
            address: Harness::addr(2),
            probe_port: 3479,
        }]
    );
    let rebound: SocketAddr = "198.51.100.7:61000".parse().unwrap();
    h.cp.handle(
        h.now,
        Input::AddressChanged {
            conn: 2,
            addr: rebound,
        },
    );
    assert_eq!(
        sent_to(&h.drain(), 2),
        [ServerMessage::ObservedAddress {
            address: rebound,
            probe_port: 3479,
        }]
    );
    h.check();
}

#[test]
fn probe_on_the_main_port_is_refused_bound_or_not() {
    let mut h = Harness::new();
    let (_, _code) = h.create();
    h.connect(2);
    for conn in [2, HOST] {
        let out = h.request(conn, ClientMessage::Probe);
        assert_eq!(
            sent_to(&out, conn),
            [ServerMessage::Refused {
                request_id: 0,
                code: ErrorCode::InvalidRequest,
                value: 0,
            }]
        );
    }
    h.check();
}
