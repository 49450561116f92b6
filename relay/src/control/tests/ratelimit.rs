//! The failed-join rate limit (`control/ratelimit.rs`): per IPv4 address, per IPv6 /64, and
//! relay-wide, with injected time.

use super::*;

/// A code that is well formed but was never issued.
fn unknown() -> JoinCode {
    JoinCode::parse("BCDFGH").unwrap()
}

/// Whether `conn` joining from `ip` by `code` is refused `rate_limited`.
fn limited(h: &mut Harness, conn: ConnId, ip: &str, code: JoinCode) -> bool {
    let addr = SocketAddr::new(ip.parse().unwrap(), 40000);
    match h.join_from(conn, addr, code).0 {
        ServerMessage::Refused { code, .. } => code == ErrorCode::RateLimited,
        _ => false,
    }
}

#[test]
fn an_ipv6_64_shares_one_budget() {
    let mut h = Harness::new();
    let burst = defaults::JOIN_FAILURE_BURST as u64;
    for i in 0..burst {
        // Every guess from a different address, all in one /64.
        let ip = format!("2001:db8:1:2::{:x}", i + 1);
        assert!(!limited(&mut h, 100 + i, &ip, unknown()), "guess {i}");
    }
    assert!(limited(&mut h, 200, "2001:db8:1:2:ffff::1", unknown()));
    // The next /64 has its own budget.
    assert!(!limited(&mut h, 201, "2001:db8:1:3::1", unknown()));
}

#[test]
fn two_ipv4_addresses_do_not_share_a_budget_and_a_mapped_one_counts_as_ipv4() {
    let mut h = Harness::new();
    let burst = defaults::JOIN_FAILURE_BURST as u64;
    for i in 0..burst {
        assert!(
            !limited(&mut h, 100 + i, "192.0.2.1", unknown()),
            "guess {i}"
        );
    }
    assert!(limited(&mut h, 200, "192.0.2.1", unknown()));
    assert!(limited(&mut h, 201, "::ffff:192.0.2.1", unknown()));
    assert!(!limited(&mut h, 202, "192.0.2.2", unknown()));
}

#[test]
fn a_limited_address_is_refused_even_a_valid_code() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    for i in 0..defaults::JOIN_FAILURE_BURST as u64 {
        assert!(!limited(&mut h, 100 + i, "192.0.2.1", unknown()));
    }
    // Answering it would tell a guesser which of its guesses hit.
    assert!(limited(&mut h, 200, "192.0.2.1", code));
    h.advance(defaults::JOIN_FAILURE_REFILL);
    let addr = SocketAddr::from(([192, 0, 2, 1], 40000));
    assert!(matches!(
        h.join_from(201, addr, code).0,
        ServerMessage::Joined { .. }
    ));
}

#[test]
fn the_relay_wide_budget_bounds_guessing_from_many_addresses() {
    let mut h = Harness::new();
    let (_, code) = h.create();
    let burst = defaults::RELAY_JOIN_FAILURE_BURST as u64;
    // One failed guess from each of `burst` addresses: none is over its own limit.
    for i in 0..burst {
        let ip = format!("10.{}.{}.1", i / 250, i % 250);
        assert!(!limited(&mut h, 1000 + i, &ip, unknown()), "guess {i}");
    }
    // A fresh address's guess, even a valid one, is refused now...
    assert!(limited(&mut h, 5000, "198.51.100.7", code));
    assert!(limited(&mut h, 5001, "2001:db8:9::1", unknown()));
    // ...and the budget comes back at its rate.
    let per_second = defaults::RELAY_JOIN_FAILURES_PER_SECOND as u32;
    h.advance(Duration::from_secs(1) / per_second);
    assert!(!limited(&mut h, 5002, "198.51.100.8", unknown()));
    assert!(limited(&mut h, 5003, "198.51.100.9", unknown()));
    h.advance(Duration::from_secs(1) / per_second);
    let addr = SocketAddr::from(([198, 51, 100, 10], 40000));
    assert!(matches!(
        h.join_from(5004, addr, code).0,
        ServerMessage::Joined { .. }
    ));
}

#[test]
fn the_limits_are_settings() {
    let mut config = RelayConfig::default();
    config
        .set_join_failure_burst(2)
        .unwrap()
        .set_join_failure_refill(Duration::from_secs(5))
        .unwrap()
        .set_relay_join_failure_burst(3)
        .unwrap()
        .set_relay_join_failures_per_second(1)
        .unwrap();
    let mut h = Harness::with(config);
    assert!(!limited(&mut h, 100, "192.0.2.1", unknown()));
    assert!(!limited(&mut h, 101, "192.0.2.1", unknown()));
    assert!(limited(&mut h, 102, "192.0.2.1", unknown()));
    assert!(!limited(&mut h, 103, "192.0.2.2", unknown()));
    assert!(limited(&mut h, 104, "192.0.2.3", unknown()));
    h.advance(Duration::from_secs(1));
    assert!(!limited(&mut h, 105, "192.0.2.3", unknown()));
    assert!(limited(&mut h, 106, "192.0.2.1", unknown()));
    h.advance(Duration::from_secs(4));
    assert!(!limited(&mut h, 107, "192.0.2.1", unknown()));
}

#[test]
fn buckets_are_swept_once_refilled() {
    let mut h = Harness::new();
    for i in 0..50u64 {
        let ip = format!("2001:db8:{i:x}::1");
        limited(&mut h, 100 + i, &ip, unknown());
    }
    assert_eq!(h.cp.join_buckets.len(), 50);
    h.advance(SWEEP_INTERVAL * 2);
    assert!(h.cp.join_buckets.is_empty());
}
