//! Fleet mode (`control/fleet.rs`): codes from the directory-claimed pool, refusals while the
//! directory is away, and joins and rejoins located on other nodes, all in simulated time.

use rand::SeedableRng;

use super::*;
use crate::config::FleetConfig;

pub(super) fn fleet_config() -> RelayConfig {
    let mut config = RelayConfig::default();
    config.fleet = Some(FleetConfig {
        directory: "redis://127.0.0.1:1/0".into(),
        node_id: "node-a".into(),
        public_addr: "127.0.0.1:7700".parse().unwrap(),
        server_name: "localhost".into(),
        region: "default".into(),
        fleet_secret: "x".repeat(32),
    });
    config
}

/// The `ClaimCodes` outputs in `out`, as (count, len).
fn claims(out: &[Output]) -> Vec<(usize, usize)> {
    out.iter()
        .filter_map(|o| match o {
            Output::ClaimCodes { count, len } => Some((*count, *len)),
            _ => None,
        })
        .collect()
}

/// The `Locate` outputs in `out`.
fn locates(out: &[Output]) -> Vec<(ConnId, u32, Locate)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Locate {
                conn,
                request_id,
                what,
            } => Some((*conn, *request_id, what.clone())),
            _ => None,
        })
        .collect()
}

/// A full pool's worth of codes.
pub(super) fn codes_for_pool() -> Vec<JoinCode> {
    codes(POOL_TARGET)
}

/// `n` distinct codes, as the directory would hand out.
fn codes(n: usize) -> Vec<JoinCode> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut out: Vec<JoinCode> = Vec::new();
    while out.len() < n {
        let code = JoinCode::random(&mut rng, 6);
        if !out.contains(&code) {
            out.push(code);
        }
    }
    out
}

/// A fleet harness with `n` codes in its pool.
fn with_pool(n: usize) -> (Harness, Vec<JoinCode>) {
    let mut h = Harness::with(fleet_config());
    assert!(h.drain().is_empty(), "the driver claims the first pool");
    let pool = codes(n);
    h.cp.handle(
        h.now,
        Input::CodesClaimed {
            codes: pool.clone(),
        },
    );
    h.drain();
    (h, pool)
}

fn create_request(h: &mut Harness, conn: ConnId) -> Vec<Output> {
    h.connect(conn);
    let request_id = h.rid();
    h.request(
        conn,
        ClientMessage::CreateAllocation {
            request_id,
            max_peers: 0,
            code_ttl_secs: 0,
            host_loss_timeout_ms: 0,
            credential: None,
        },
    )
}

#[test]
fn a_new_allocation_takes_a_claimed_code_and_none_without_one() {
    let mut h = Harness::with(fleet_config());
    assert!(h.drain().is_empty(), "the driver claims the first pool");
    // Nothing claimed yet: refused, and a claim asked for, once.
    let out = create_request(&mut h, HOST);
    assert_eq!(refused(&out, HOST), (ErrorCode::DirectoryUnavailable, 1000));
    assert_eq!(claims(&out), vec![(POOL_TARGET, 6)]);
    let out = create_request(&mut h, 9);
    assert_eq!(refused(&out, 9).0, ErrorCode::DirectoryUnavailable);
    assert!(claims(&out).is_empty(), "{out:?}");
    assert_eq!(h.cp.allocation_count(), 0);

    let pool = codes(POOL_TARGET);
    h.cp.handle(
        h.now,
        Input::CodesClaimed {
            codes: pool.clone(),
        },
    );
    assert!(claims(&h.drain()).is_empty(), "the pool is full");
    assert_eq!(h.cp.pooled_codes(), POOL_TARGET);
    let (_, code) = h.create_with(2, 0, 0);
    assert_eq!(code, pool[0], "codes are taken oldest first");
    assert_eq!(h.cp.pooled_codes(), POOL_TARGET - 1);
}

#[test]
fn the_pool_is_refilled_once_when_it_runs_low() {
    let (mut h, pool) = with_pool(POOL_LOW + 1);
    // Taking one code leaves POOL_LOW: no refill yet.
    let out = create_request(&mut h, 10);
    assert!(claims(&out).is_empty());
    // The next leaves one below: one refill, to the target.
    let out = create_request(&mut h, 11);
    assert_eq!(claims(&out), vec![(POOL_TARGET - (POOL_LOW - 1), 6)]);
    // Outstanding: more creates do not ask again.
    let out = create_request(&mut h, 12);
    assert!(claims(&out).is_empty());
    // An answer that leaves the pool still low (the directory gave fewer than asked) asks
    // again at once.
    assert_eq!(h.cp.pooled_codes(), POOL_LOW - 2);
    h.cp.handle(
        h.now,
        Input::CodesClaimed {
            codes: codes(POOL_TARGET + 1)[POOL_TARGET..].to_vec(),
        },
    );
    let out = h.drain();
    assert_eq!(claims(&out), vec![(POOL_TARGET - (POOL_LOW - 1), 6)]);
    // One that fills it does not.
    h.cp.handle(
        h.now,
        Input::CodesClaimed {
            codes: codes(2 * POOL_TARGET)[POOL_TARGET..].to_vec(),
        },
    );
    assert!(claims(&h.drain()).is_empty());
    assert_eq!(h.cp.pooled_codes(), POOL_TARGET);
    assert!(!pool.is_empty());
}

#[test]
fn a_code_that_waited_too_long_in_the_pool_is_not_used() {
    let (mut h, pool) = with_pool(2);
    h.advance(POOL_MAX_AGE + Duration::from_secs(1));
    let out = create_request(&mut h, HOST);
    assert_eq!(refused(&out, HOST).0, ErrorCode::DirectoryUnavailable);
    assert_eq!(h.cp.pooled_codes(), 0);
    // Fresh ones are.
    let fresh = codes(POOL_TARGET + 1)[POOL_TARGET..].to_vec();
    h.cp.handle(
        h.now,
        Input::CodesClaimed {
            codes: fresh.clone(),
        },
    );
    h.drain();
    let (_, code) = h.create_with(2, 0, 0);
    assert_eq!(code, fresh[0]);
    assert!(!pool.contains(&code));
}

#[test]
fn while_the_directory_is_away_creates_reservations_and_lookups_are_refused() {
    let (mut h, _) = with_pool(POOL_TARGET);
    h.cp.handle(h.now, Input::DirectoryHealth { reachable: false });
    let out = create_request(&mut h, HOST);
    assert_eq!(refused(&out, HOST), (ErrorCode::DirectoryUnavailable, 1000));
    assert_eq!(
        h.cp.reserve_allocation(h.now, None),
        Err(AdminError::DirectoryUnavailable)
    );
    let (code, _) = h.refusal(5, codes(1)[0]);
    assert_eq!(code, ErrorCode::DirectoryUnavailable);

    // Back: the old pool is dropped (the directory may have lost its claims) and claimed
    // afresh.
    h.cp.handle(h.now, Input::DirectoryHealth { reachable: true });
    assert_eq!(claims(&h.drain()), vec![(POOL_TARGET, 6)]);
    assert_eq!(h.cp.pooled_codes(), 0);
    let fresh = codes(POOL_TARGET + 1)[POOL_TARGET..].to_vec();
    h.cp.handle(
        h.now,
        Input::CodesClaimed {
            codes: fresh.clone(),
        },
    );
    h.drain();
    let (_, code) = h.create_with(6, 0, 0);
    assert_eq!(code, fresh[0]);
    assert_eq!(h.join_ok(7, code), PeerId(1), "local joins never needed it");
}

#[test]
fn a_join_for_a_code_held_elsewhere_is_redirected() {
    let (mut h, _) = with_pool(POOL_TARGET);
    let elsewhere = JoinCode::random(&mut rand::rngs::StdRng::seed_from_u64(5), 6);
    h.connect(2);
    let request_id = h.rid();
    let out = h.request(
        2,
        ClientMessage::Join {
            request_id,
            code: elsewhere,
            credential: None,
        },
    );
    assert!(
        replies_to(&out, 2).is_empty(),
        "no answer before the lookup"
    );
    assert_eq!(
        locates(&out),
        vec![(2, request_id, Locate::Code(elsewhere))]
    );
    let address: SocketAddr = "127.0.0.2:7700".parse().unwrap();
    h.cp.handle(
        h.now,
        Input::Located {
            conn: 2,
            request_id,
            location: Location::Node {
                address,
                server_name: "relay-b.example".into(),
            },
        },
    );
    let out = h.drain();
    assert_eq!(
        replies_to(&out, 2),
        vec![ServerMessage::Redirect {
            request_id,
            address,
            server_name: "relay-b.example".into(),
        }]
    );
}

/// `conn` connects and asks to join `code`, which is not held here; returns the request id.
fn ask(h: &mut Harness, conn: ConnId, code: JoinCode) -> u32 {
    h.connect(conn);
    let request_id = h.rid();
    let out = h.request(
        conn,
        ClientMessage::Join {
            request_id,
            code,
            credential: None,
        },
    );
    assert_eq!(locates(&out).len(), 1, "{out:?}");
    request_id
}

#[test]
fn a_code_no_node_holds_is_not_found_and_charged_as_a_guess() {
    let (mut h, _) = with_pool(POOL_TARGET);
    let burst = RelayConfig::default().join_failure_burst();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    // Every guess from one address is looked up, found nowhere, and charged.
    for i in 0..burst as u64 {
        let conn = 100 + i * 250; // Harness::addr: one address for all of them
        let code = JoinCode::random(&mut rng, 6);
        let request_id = ask(&mut h, conn, code);
        h.cp.handle(
            h.now,
            Input::Located {
                conn,
                request_id,
                location: Location::Nowhere,
            },
        );
        let out = h.drain();
        assert_eq!(refused(&out, conn), (ErrorCode::NotFound, 0));
    }
    // The budget is spent: the next guess is refused before any lookup.
    let conn = 100 + burst as u64 * 250;
    let (code, _) = h.refusal(conn, JoinCode::random(&mut rng, 6));
    assert_eq!(code, ErrorCode::RateLimited);
}

#[test]
fn an_unanswerable_lookup_is_refused_directory_unavailable_and_not_charged() {
    let (mut h, _) = with_pool(POOL_TARGET);
    let burst = RelayConfig::default().join_failure_burst() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for i in 0..burst + 3 {
        let conn = 100 + i * 250;
        let request_id = ask(&mut h, conn, JoinCode::random(&mut rng, 6));
        h.cp.handle(
            h.now,
            Input::Located {
                conn,
                request_id,
                location: Location::Unavailable,
            },
        );
        let out = h.drain();
        assert_eq!(refused(&out, conn), (ErrorCode::DirectoryUnavailable, 1000));
    }
}

#[test]
fn one_lookup_per_connection_and_none_after_it_ends() {
    let (mut h, _) = with_pool(POOL_TARGET);
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    let first = ask(&mut h, 2, JoinCode::random(&mut rng, 6));
    // A second join while the first is being looked up.
    let second = h.rid();
    let out = h.request(
        2,
        ClientMessage::Join {
            request_id: second,
            code: JoinCode::random(&mut rng, 6),
            credential: None,
        },
    );
    assert!(locates(&out).is_empty());
    assert_eq!(refused(&out, 2), (ErrorCode::RateLimited, 1000));
    // An answer to the wrong request is ignored.
    h.cp.handle(
        h.now,
        Input::Located {
            conn: 2,
            request_id: second,
            location: Location::Nowhere,
        },
    );
    assert!(h.drain().is_empty());
    // The connection ends: the late answer finds no one.
    h.disconnect(2, LeaveReason::Closed);
    h.cp.handle(
        h.now,
        Input::Located {
            conn: 2,
            request_id: first,
            location: Location::Nowhere,
        },
    );
    assert!(h.drain().is_empty());
}

#[test]
fn a_connection_bound_while_its_lookup_runs_is_not_redirected() {
    let (mut h, _) = with_pool(POOL_TARGET);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let request_id = ask(&mut h, 2, JoinCode::random(&mut rng, 6));
    // It creates an allocation meanwhile (its own choice), and is bound.
    let create = h.rid();
    let out = h.request(
        2,
        ClientMessage::CreateAllocation {
            request_id: create,
            max_peers: 0,
            code_ttl_secs: 0,
            host_loss_timeout_ms: 0,
            credential: None,
        },
    );
    assert!(matches!(
        replies_to(&out, 2)[..],
        [ServerMessage::AllocationCreated { .. }]
    ));
    h.cp.handle(
        h.now,
        Input::Located {
            conn: 2,
            request_id,
            location: Location::Node {
                address: "127.0.0.2:7700".parse().unwrap(),
                server_name: "localhost".into(),
            },
        },
    );
    assert!(h.drain().is_empty());
}

#[test]
fn a_bind_timeout_forgets_the_lookup() {
    let (mut h, _) = with_pool(POOL_TARGET);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let request_id = ask(&mut h, 2, JoinCode::random(&mut rng, 6));
    let out = h.advance(RelayConfig::default().bind_timeout() + Duration::from_millis(1));
    assert_eq!(closes(&out), vec![(2, CloseCode::BindTimeout)]);
    h.cp.handle(
        h.now,
        Input::Located {
            conn: 2,
            request_id,
            location: Location::Nowhere,
        },
    );
    assert!(h.drain().is_empty());
}

#[test]
fn a_rejoin_for_an_allocation_held_elsewhere_is_located() {
    let (mut h, _) = with_pool(POOL_TARGET);
    h.connect(2);
    let elsewhere = AllocationId(0x1234);
    let out = h.rejoin(2, elsewhere, PeerId(3), [0; 16]);
    assert_eq!(locates(&out).len(), 1);
    assert_eq!(locates(&out)[0].2, Locate::Allocation(elsewhere));
    assert!(replies_to(&out, 2).is_empty());
}

#[test]
fn without_a_directory_nothing_is_claimed_or_located() {
    let mut h = Harness::new();
    assert!(claims(&h.drain()).is_empty());
    let (code, _) = h.refusal(2, codes(1)[0]);
    assert_eq!(code, ErrorCode::NotFound);
    h.connect(3);
    let out = h.rejoin(3, AllocationId(7), PeerId(1), [0; 16]);
    assert_eq!(refused(&out, 3), (ErrorCode::NotFound, 0));
    assert!(locates(&out).is_empty());
}

#[test]
fn a_flood_of_lookups_is_capped_relay_wide() {
    let (mut h, _) = with_pool(POOL_TARGET);
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut asked = 0;
    let mut capped = 0;
    for conn in 0..(MAX_LOCATING as u64 + 20) {
        let conn = 1000 + conn;
        // Each from its own address, so per-address budgets do not stop it first.
        let addr = SocketAddr::from((
            [10, (conn >> 16) as u8, (conn >> 8) as u8, conn as u8],
            4000,
        ));
        h.cp.handle(h.now, Input::Connected { conn, addr });
        let request_id = h.rid();
        let out = h.request(
            conn,
            ClientMessage::Join {
                request_id,
                code: JoinCode::random(&mut rng, 6),
                credential: None,
            },
        );
        if locates(&out).len() == 1 {
            asked += 1;
        } else if refused(&out, conn).0 == ErrorCode::RateLimited {
            capped += 1;
        }
    }
    assert_eq!(asked, MAX_LOCATING);
    assert_eq!(capped, 20);
}

/// A game that migrated on node `a` (host lost, peer 1 took over), handed to a fleet node
/// `b`: members rejoin by the id they knew first (the lineage), which `b` never held, and a
/// stale record of that first allocation does not make `b` look it up again and again.
#[test]
fn a_lineage_handed_over_is_rejoined_by_its_first_id_and_a_stale_record_ends_the_lookup() {
    const UNIX: u64 = 1_800_000_000;
    let mut a = Harness::new();
    let (first, code, _) = a.create_with_token(HOST, 0, 0);
    let (_, t1) = a.join_with_token(2, code);
    let (_, t2) = a.join_with_token(3, code);
    let stale = a.cp.export(first, a.now, UNIX).expect("exported");
    let out = a.disconnect(HOST, LeaveReason::TimedOut);
    let (_, ticket) = promote_of(&out, 2).expect("conn 2 promoted");
    let latest = a.migrate(2, first, ticket);
    let record = a.cp.export(latest, a.now, UNIX).expect("exported");
    assert_eq!(record.lineage, first.0);

    let (mut b, _) = with_pool(POOL_TARGET);
    assert_eq!(b.cp.adopt(b.now, UNIX, &record), Ok(latest));
    // Peer 2 (the new host is peer 1) rejoins naming the first allocation: seated in the
    // latest, without a lookup.
    b.connect(13);
    let out = b.rejoin(13, first, PeerId(2), t2);
    assert!(locates(&out).is_empty(), "{out:?}");
    assert!(
        matches!(
            replies_to(&out, 13)[..],
            [ServerMessage::Joined { allocation, peer: PeerId(2), host: PeerId(1), .. }]
                if allocation == latest
        ),
        "{out:?}"
    );
    // A lookup for an id `b` does not know that ends in the stale record of the first
    // allocation (its lineage is held here): the request is served here once, and not looked
    // up a second time.
    b.connect(14);
    let out = b.rejoin(14, AllocationId(0x5151), PeerId(1), t1);
    let (_, request_id, _) = locates(&out)[0].clone();
    b.cp.handle(
        b.now,
        Input::Located {
            conn: 14,
            request_id,
            location: Location::Adopt(Box::new(stale.clone())),
        },
    );
    let out = b.drain();
    assert!(locates(&out).is_empty(), "looked up again: {out:?}");
    assert_eq!(refused(&out, 14), (ErrorCode::NotFound, 0));

    // A stale record whose code another lineage holds here: refused, not looked up again.
    let mut other = stale;
    other.lineage = 0x7777;
    other.allocation = 0x7777;
    b.connect(15);
    let out = b.rejoin(15, AllocationId(0x7777), PeerId(1), t1);
    let (_, request_id, _) = locates(&out)[0].clone();
    b.cp.handle(
        b.now,
        Input::Located {
            conn: 15,
            request_id,
            location: Location::Adopt(Box::new(other)),
        },
    );
    let out = b.drain();
    assert!(locates(&out).is_empty(), "looked up again: {out:?}");
    assert_eq!(refused(&out, 15), (ErrorCode::NotFound, 0));
    b.check();
}
