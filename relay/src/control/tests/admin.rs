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
