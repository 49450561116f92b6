//! The fleet directory against a real `redis-server` on loopback: node heartbeats and their
//! expiry, fleet-wide join codes under concurrent claims, ownership checks, allocation records,
//! corrupt values, and a store that goes away and comes back.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_relay::directory::{
    CodeRecord, DirectoryError, NodeId, NodeInfo, NodeState, RedisDirectory, OP_TIMEOUT,
};
use baton_relay::metrics::Metrics;
use baton_tests::redis_server::{RedisOptions, RedisServer, RedisTls};
use baton_tests::relay_process::Metrics as ParsedMetrics;
use baton_tests::WAIT;

/// Long enough that no record expires during a test unless the test means it to.
const LONG: Duration = Duration::from_secs(60);

fn id(s: &str) -> NodeId {
    NodeId::parse(s).expect("node id")
}

fn info(node: &str, port: u16) -> NodeInfo {
    NodeInfo {
        id: id(node),
        addr: ([10, 0, 0, 1], port).into(),
        server_name: format!("{node}.relay.example"),
        region: "eu-west".into(),
        state: NodeState::Active,
        allocations: 3,
        connections: 7,
        cpu_pct: 12.5,
        admin_addr: Some(format!("{node}.relay.example:7701")),
    }
}

async fn setup() -> (RedisServer, RedisDirectory, Arc<Metrics>) {
    let server = RedisServer::start().expect("redis-server starts");
    let metrics = Arc::new(Metrics::new());
    let dir = RedisDirectory::connect(&server.url(), metrics.clone())
        .await
        .expect("directory connects");
    (server, dir, metrics)
}

/// A raw command on the server, for planting or checking values the directory wrote.
fn raw<T: redis::FromRedisValue>(server: &RedisServer, cmd: &mut redis::Cmd) -> T {
    let mut conn = server.connection().expect("raw connection");
    cmd.query(&mut conn).expect("raw command")
}

/// Polls `check` until it returns true, panicking after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(metrics: &Metrics, line_start: &str) -> f64 {
    ParsedMetrics::parse(&metrics.encode())
        .get(line_start)
        .unwrap_or_else(|| panic!("no metric {line_start}"))
}

#[tokio::test]
async fn heartbeats_list_nodes_and_a_clean_exit_removes_one() {
    let (server, dir, metrics) = setup().await;
    assert_eq!(dir.nodes().await.unwrap(), vec![]);

    let mut b = info("relay-b", 4434);
    b.state = NodeState::Draining;
    b.cpu_pct = 250.25;
    let a = info("relay-a", 4433);
    dir.heartbeat(&b, LONG).await.unwrap();
    dir.heartbeat(&a, LONG).await.unwrap();
    assert_eq!(dir.nodes().await.unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(dir.node(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(dir.node(&id("relay-z")).await.unwrap(), None);

    // The record carries the heartbeat's TTL, and a new heartbeat rewrites every field.
    let pttl: i64 = raw(&server, redis::cmd("PTTL").arg("baton:node:relay-a"));
    assert!(pttl > 0 && pttl <= 60_000, "PTTL {pttl}");
    let mut a2 = a.clone();
    a2.allocations = 0;
    a2.state = NodeState::Draining;
    dir.heartbeat(&a2, LONG).await.unwrap();
    assert_eq!(dir.node(&a.id).await.unwrap(), Some(a2.clone()));

    dir.remove_node(&a.id).await.unwrap();
    assert_eq!(dir.nodes().await.unwrap(), vec![b.clone()]);
    assert_eq!(dir.node(&a.id).await.unwrap(), None);
    let members: BTreeSet<String> = raw(&server, redis::cmd("SMEMBERS").arg("baton:nodes"));
    assert_eq!(members, BTreeSet::from(["relay-b".to_owned()]));

    assert_eq!(
        metric(
            &metrics,
            "baton_directory_op_seconds_count{op=\"heartbeat\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&metrics, "baton_directory_errors_total{op=\"nodes\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_node_whose_heartbeat_lapses_disappears_and_is_pruned() {
    let (server, dir, _) = setup().await;
    let short = info("short-lived", 1);
    let long = info("long-lived", 2);
    dir.heartbeat(&short, Duration::from_millis(300))
        .await
        .unwrap();
    dir.heartbeat(&long, LONG).await.unwrap();
    assert_eq!(dir.nodes().await.unwrap().len(), 2);

    wait_until("the lapsed node leaves the listing", || async {
        dir.nodes().await.unwrap() == vec![long.clone()]
    })
    .await;
    assert_eq!(dir.node(&short.id).await.unwrap(), None);
    // The listing removed the expired id from the set; the live one stays.
    let members: BTreeSet<String> = raw(&server, redis::cmd("SMEMBERS").arg("baton:nodes"));
    assert_eq!(members, BTreeSet::from(["long-lived".to_owned()]));

    // A heartbeat brings it back.
    dir.heartbeat(&short, LONG).await.unwrap();
    assert_eq!(dir.nodes().await.unwrap(), vec![long, short]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_give_each_code_to_exactly_one_node() {
    let server = RedisServer::start().expect("redis-server starts");
    let metrics = Arc::new(Metrics::new());
    // Two clients with their own connections, as two relay nodes would have.
    let dir_a = RedisDirectory::connect(&server.url(), metrics.clone())
        .await
        .unwrap();
    let dir_b = RedisDirectory::connect(&server.url(), metrics.clone())
        .await
        .unwrap();
    let (a, b) = (id("node-a"), id("node-b"));
    let (mut wins_a, mut wins_b, mut split_rounds) = (0usize, 0usize, 0usize);
    for round in 0..200 {
        let codes: Vec<String> = (0..16).map(|i| format!("R{round}C{i}")).collect();
        // Each node claims the codes in four calls of four, in opposite orders, all eight calls
        // released at once: they meet in the middle, on two connections.
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut claims = Vec::new();
        for (dir, node, order) in [
            (&dir_a, &a, codes.clone()),
            (&dir_b, &b, codes.iter().rev().cloned().collect()),
        ] {
            for chunk in order.chunks(4) {
                let (dir, node, chunk) = (dir.clone(), node.clone(), chunk.to_vec());
                let barrier = barrier.clone();
                claims.push(tokio::spawn(async move {
                    barrier.wait().await;
                    let won = dir.claim_codes(&node, &chunk, LONG).await;
                    (node, won)
                }));
            }
        }
        let (mut won_a, mut won_b) = (BTreeSet::new(), BTreeSet::new());
        for claim in claims {
            let (node, won) = claim.await.unwrap();
            let side = if node == a { &mut won_a } else { &mut won_b };
            side.extend(won.unwrap());
        }
        assert!(
            won_a.is_disjoint(&won_b),
            "round {round}: both won {:?}",
            won_a.intersection(&won_b).collect::<Vec<_>>()
        );
        let all: BTreeSet<String> = codes.iter().cloned().collect();
        let union: BTreeSet<String> = won_a.union(&won_b).cloned().collect();
        assert_eq!(union, all, "round {round}: a code nobody won");
        for code in &codes {
            let owner = if won_a.contains(code) { &a } else { &b };
            assert_eq!(
                dir_a.lookup_code(code).await.unwrap(),
                Some(CodeRecord {
                    node: owner.clone(),
                    allocation: None
                }),
                "round {round}: {code}"
            );
        }
        wins_a += won_a.len();
        wins_b += won_b.len();
        split_rounds += usize::from(!won_a.is_empty() && !won_b.is_empty());
    }
    println!("node-a won {wins_a} codes, node-b {wins_b}; {split_rounds} of 200 rounds split");
    // The claims did interleave: in some rounds each node won part of the codes.
    assert!(
        split_rounds > 0,
        "one node won every round whole: no race was run"
    );

    // A held code is not won again, not even by its holder; fresh ones in the same call are.
    let again = dir_a
        .claim_codes(&a, &["R0C0".into(), "FRESH1".into(), "R0C15".into()], LONG)
        .await
        .unwrap();
    assert_eq!(again, vec!["FRESH1".to_owned()]);
    // Duplicates in one call are won once.
    let dup = dir_b
        .claim_codes(&b, &["DUP1".into(), "DUP1".into()], LONG)
        .await
        .unwrap();
    assert_eq!(dup, vec!["DUP1".to_owned()]);
}

#[tokio::test]
async fn codes_bind_and_release_only_for_their_owner() {
    let (server, dir, _) = setup().await;
    let (owner, other) = (id("owner"), id("other"));
    let won = dir
        .claim_codes(&owner, &["BCDF78".into(), "GHJK99".into()], LONG)
        .await
        .unwrap();
    assert_eq!(won.len(), 2);
    let pttl: i64 = raw(&server, redis::cmd("PTTL").arg("baton:code:BCDF78"));
    assert!(pttl > 0 && pttl <= 60_000, "PTTL {pttl}");

    // Claimed form.
    assert_eq!(
        dir.lookup_code("BCDF78").await.unwrap(),
        Some(CodeRecord {
            node: owner.clone(),
            allocation: None
        })
    );
    // Another node cannot bind it.
    assert!(!dir.bind_code("BCDF78", &other, 7, LONG).await.unwrap());
    // The owner can; bound form, stored as 16 hex digits.
    let alloc = 0x0123_4567_89ab_cdef;
    assert!(dir
        .bind_code("BCDF78", &owner, alloc, Duration::from_secs(30))
        .await
        .unwrap());
    let bound = Some(CodeRecord {
        node: owner.clone(),
        allocation: Some(alloc),
    });
    assert_eq!(dir.lookup_code("BCDF78").await.unwrap(), bound);
    let stored: String = raw(&server, redis::cmd("GET").arg("baton:code:BCDF78"));
    assert_eq!(stored, "owner 0123456789abcdef");
    let pttl: i64 = raw(&server, redis::cmd("PTTL").arg("baton:code:BCDF78"));
    assert!(pttl > 0 && pttl <= 30_000, "the bind set the TTL: {pttl}");
    // Binding again (the owner) refreshes it; another node still cannot.
    assert!(dir.bind_code("BCDF78", &owner, alloc, LONG).await.unwrap());
    assert!(!dir.bind_code("BCDF78", &other, 1, LONG).await.unwrap());
    assert_eq!(dir.lookup_code("BCDF78").await.unwrap(), bound);
    // A node whose id is a prefix of the owner's is not the owner.
    assert!(!dir.bind_code("BCDF78", &id("own"), 1, LONG).await.unwrap());
    assert!(!dir.release_code("BCDF78", &id("own")).await.unwrap());
    // Nobody binds a code nobody holds.
    assert!(!dir.bind_code("MNPQ66", &owner, 1, LONG).await.unwrap());
    assert_eq!(dir.lookup_code("MNPQ66").await.unwrap(), None);

    // Release: refused to another node, done for the owner, claimed or bound.
    assert!(!dir.release_code("BCDF78", &other).await.unwrap());
    assert_eq!(dir.lookup_code("BCDF78").await.unwrap(), bound);
    assert!(dir.release_code("BCDF78", &owner).await.unwrap());
    assert_eq!(dir.lookup_code("BCDF78").await.unwrap(), None);
    assert!(!dir.release_code("BCDF78", &owner).await.unwrap());
    assert!(dir.release_code("GHJK99", &owner).await.unwrap());
    assert_eq!(dir.lookup_code("GHJK99").await.unwrap(), None);

    // A released code can be claimed by another node.
    let won = dir
        .claim_codes(&other, &["BCDF78".into()], LONG)
        .await
        .unwrap();
    assert_eq!(won, vec!["BCDF78".to_owned()]);
}

#[tokio::test]
async fn a_claimed_code_expires_with_its_ttl() {
    let (_server, dir, _) = setup().await;
    let node = id("n1");
    let won = dir
        .claim_codes(&node, &["TTL1".into()], Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(won, vec!["TTL1".to_owned()]);
    wait_until("the code expires", || async {
        dir.lookup_code("TTL1").await.unwrap().is_none()
    })
    .await;
    assert!(!dir.bind_code("TTL1", &node, 1, LONG).await.unwrap());
}

#[tokio::test]
async fn allocation_records() {
    let (server, dir, _) = setup().await;
    let (holder, other) = (id("holder"), id("other"));
    assert_eq!(dir.lookup_allocation(42).await.unwrap(), None);
    dir.bind_allocation(42, &holder, LONG).await.unwrap();
    assert_eq!(
        dir.lookup_allocation(42).await.unwrap(),
        Some(holder.clone())
    );
    let stored: String = raw(
        &server,
        redis::cmd("GET").arg("baton:alloc:000000000000002a"),
    );
    assert_eq!(stored, "holder");
    let pttl: i64 = raw(
        &server,
        redis::cmd("PTTL").arg("baton:alloc:000000000000002a"),
    );
    assert!(pttl > 0 && pttl <= 60_000, "PTTL {pttl}");

    assert!(!dir.release_allocation(42, &other).await.unwrap());
    assert_eq!(
        dir.lookup_allocation(42).await.unwrap(),
        Some(holder.clone())
    );
    // Binding replaces the holder (the record follows the allocation).
    dir.bind_allocation(42, &other, LONG).await.unwrap();
    assert_eq!(
        dir.lookup_allocation(42).await.unwrap(),
        Some(other.clone())
    );
    assert!(!dir.release_allocation(42, &holder).await.unwrap());
    assert!(dir.release_allocation(42, &other).await.unwrap());
    assert_eq!(dir.lookup_allocation(42).await.unwrap(), None);
    assert!(!dir.release_allocation(42, &other).await.unwrap());

    dir.bind_allocation(u64::MAX, &holder, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        dir.lookup_allocation(u64::MAX).await.unwrap(),
        Some(holder.clone())
    );
    wait_until("the allocation record expires", || async {
        dir.lookup_allocation(u64::MAX).await.unwrap().is_none()
    })
    .await;
}

/// The key a `Corrupt` error names; panics on anything else.
fn corrupt_key<T: std::fmt::Debug>(r: Result<T, DirectoryError>) -> String {
    match r {
        Err(DirectoryError::Corrupt { key, .. }) => key,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn corrupt_values_are_reported_with_their_key() {
    let (server, dir, metrics) = setup().await;
    // Codes: bad shapes, an over-long value, the wrong type.
    for bad in [
        &b"owner 12"[..],
        b"owner 0123456789ABCDEF",
        b"own er",
        b"",
        &[b'a'; 300],
    ] {
        let _: () = raw(&server, redis::cmd("SET").arg("baton:code:BAD1").arg(bad));
        assert_eq!(
            corrupt_key(dir.lookup_code("BAD1").await),
            "baton:code:BAD1"
        );
    }
    let _: () = raw(&server, redis::cmd("DEL").arg("baton:code:BAD1"));
    let _: () = raw(&server, redis::cmd("RPUSH").arg("baton:code:BAD1").arg("x"));
    assert_eq!(
        corrupt_key(dir.lookup_code("BAD1").await),
        "baton:code:BAD1"
    );
    assert_eq!(
        corrupt_key(dir.bind_code("BAD1", &id("x"), 1, LONG).await),
        "baton:code:BAD1"
    );
    assert_eq!(
        corrupt_key(dir.release_code("BAD1", &id("x")).await),
        "baton:code:BAD1"
    );

    // Allocations.
    let _: () = raw(
        &server,
        redis::cmd("SET")
            .arg("baton:alloc:0000000000000001")
            .arg("no spaces allowed"),
    );
    assert_eq!(
        corrupt_key(dir.lookup_allocation(1).await),
        "baton:alloc:0000000000000001"
    );
    let _: () = raw(
        &server,
        redis::cmd("SADD")
            .arg("baton:alloc:0000000000000002")
            .arg("n"),
    );
    assert_eq!(
        corrupt_key(dir.lookup_allocation(2).await),
        "baton:alloc:0000000000000002"
    );

    // Nodes: a bad field, a missing field, the wrong type. `node` reports each; `nodes`
    // leaves them out and still lists the good one.
    let good = info("good", 1);
    dir.heartbeat(&good, LONG).await.unwrap();
    for (name, plant) in [
        ("badcpu", vec!["cpu_pct", "NaN"]),
        ("badaddr", vec!["addr", "nowhere"]),
        ("badstate", vec!["state", "ACTIVE"]),
    ] {
        dir.heartbeat(&info(name, 2), LONG).await.unwrap();
        let _: () = raw(
            &server,
            redis::cmd("HSET")
                .arg(format!("baton:node:{name}"))
                .arg(plant[0])
                .arg(plant[1]),
        );
        assert_eq!(
            corrupt_key(dir.node(&id(name)).await),
            format!("baton:node:{name}")
        );
    }
    dir.heartbeat(&info("partial", 3), LONG).await.unwrap();
    let _: () = raw(
        &server,
        redis::cmd("HDEL").arg("baton:node:partial").arg("region"),
    );
    assert_eq!(
        corrupt_key(dir.node(&id("partial")).await),
        "baton:node:partial"
    );
    let _: () = raw(&server, redis::cmd("SET").arg("baton:node:string").arg("x"));
    let _: () = raw(&server, redis::cmd("SADD").arg("baton:nodes").arg("string"));
    assert_eq!(
        corrupt_key(dir.node(&id("string")).await),
        "baton:node:string"
    );
    // A member of the set that is not a node id is skipped too; no bad record hides the good
    // one, and none of them is pruned as expired.
    let _: () = raw(
        &server,
        redis::cmd("SADD").arg("baton:nodes").arg("not an id"),
    );
    assert_eq!(dir.nodes().await.unwrap(), vec![good]);
    let members: i64 = raw(&server, redis::cmd("SCARD").arg("baton:nodes"));
    assert_eq!(members, 7);

    assert!(metric(&metrics, "baton_directory_errors_total{op=\"lookup_code\"}") >= 6.0);
}

#[tokio::test]
async fn invalid_arguments_are_refused_before_the_store() {
    let (_server, dir, metrics) = setup().await;
    let node = id("n");
    for code in ["", "has space", "a:b", &"A".repeat(33)] {
        assert!(
            matches!(
                dir.claim_codes(&node, &[code.to_owned()], LONG).await,
                Err(DirectoryError::Invalid(_))
            ),
            "{code:?}"
        );
        assert!(matches!(
            dir.lookup_code(code).await,
            Err(DirectoryError::Invalid(_))
        ));
    }
    let too_many: Vec<String> = (0..257).map(|i| format!("C{i}")).collect();
    assert!(matches!(
        dir.claim_codes(&node, &too_many, LONG).await,
        Err(DirectoryError::Invalid(_))
    ));
    assert!(matches!(
        dir.claim_codes(&node, &["OK1".into()], Duration::ZERO)
            .await,
        Err(DirectoryError::Invalid(_))
    ));
    let mut bad = info("n", 1);
    bad.region = "eu west".into();
    assert!(matches!(
        dir.heartbeat(&bad, LONG).await,
        Err(DirectoryError::Invalid(_))
    ));
    assert_eq!(
        dir.claim_codes(&node, &[], LONG).await.unwrap(),
        Vec::<String>::new()
    );
    // Nothing reached the store, so nothing was recorded as an operation.
    assert_eq!(
        metric(
            &metrics,
            "baton_directory_op_seconds_count{op=\"claim_codes\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn each_fleet_uses_the_database_in_its_url() {
    let server = RedisServer::start().expect("redis-server starts");
    let metrics = Arc::new(Metrics::new());
    let fleet3 = RedisDirectory::connect(&server.url_db(3), metrics.clone())
        .await
        .unwrap();
    let fleet0 = RedisDirectory::connect(&server.url(), metrics)
        .await
        .unwrap();
    fleet3.heartbeat(&info("n3", 1), LONG).await.unwrap();
    assert_eq!(fleet0.nodes().await.unwrap(), vec![]);
    assert_eq!(fleet3.nodes().await.unwrap().len(), 1);
    let keys: i64 = raw(&server, &mut redis::cmd("DBSIZE"));
    assert_eq!(keys, 0, "database 0 is untouched");
}

/// Runs `op`, asserting it fails as `Unavailable` within the operation timeout (plus
/// scheduling slack) instead of hanging.
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    op: impl Future<Output = Result<T, DirectoryError>>,
) {
    let start = Instant::now();
    let result = tokio::time::timeout(WAIT, op)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"));
    let took = start.elapsed();
    assert!(
        matches!(result, Err(DirectoryError::Unavailable(_))),
        "{what}: {result:?}"
    );
    assert!(took <= OP_TIMEOUT * 2, "{what} took {took:?}");
}

#[tokio::test]
async fn a_stopped_store_fails_fast_and_a_restarted_one_is_used_again() {
    let (mut server, dir, metrics) = setup().await;
    let node = id("n");
    dir.heartbeat(&info("n", 1), LONG).await.unwrap();

    server.stop();
    // Twice each: the first call finds the connection lost, the next ones run while the client
    // tries to reconnect to nothing.
    for _ in 0..2 {
        assert_unavailable("heartbeat", dir.heartbeat(&info("n", 1), LONG)).await;
        assert_unavailable("nodes", dir.nodes()).await;
        assert_unavailable("node", dir.node(&node)).await;
        assert_unavailable("claim_codes", dir.claim_codes(&node, &["X1".into()], LONG)).await;
        assert_unavailable("bind_code", dir.bind_code("X1", &node, 1, LONG)).await;
        assert_unavailable("lookup_code", dir.lookup_code("X1")).await;
        assert_unavailable("release_code", dir.release_code("X1", &node)).await;
        assert_unavailable("bind_allocation", dir.bind_allocation(1, &node, LONG)).await;
        assert_unavailable("lookup_allocation", dir.lookup_allocation(1)).await;
        assert_unavailable("release_allocation", dir.release_allocation(1, &node)).await;
        assert_unavailable("remove_node", dir.remove_node(&node)).await;
    }
    assert_eq!(
        metric(&metrics, "baton_directory_errors_total{op=\"lookup_code\"}"),
        2.0
    );

    // A new client cannot connect either, within its connect timeout.
    let start = Instant::now();
    match RedisDirectory::connect(&server.url(), metrics.clone()).await {
        Err(DirectoryError::Unavailable(_)) => {}
        other => panic!("connect to a stopped server: {other:?}"),
    }
    assert!(
        start.elapsed() <= baton_relay::directory::CONNECT_TIMEOUT + Duration::from_millis(300)
    );

    // Back on the same port (empty: nothing is persisted): the same client recovers.
    server.restart().expect("server restarts");
    wait_until("the directory reconnects", || async {
        dir.heartbeat(&info("n", 1), LONG).await.is_ok()
    })
    .await;
    assert_eq!(dir.nodes().await.unwrap(), vec![info("n", 1)]);
    let won = dir.claim_codes(&node, &["X1".into()], LONG).await.unwrap();
    assert_eq!(won, vec!["X1".to_owned()]);
}

#[tokio::test]
async fn the_password_comes_from_the_url() {
    let server = RedisServer::start_with(RedisOptions {
        password: Some("fleet-secret".into()),
        tls: None,
    })
    .expect("redis-server starts");
    let metrics = Arc::new(Metrics::new());
    let dir = RedisDirectory::connect(&server.url(), metrics.clone())
        .await
        .expect("connects with the password");
    dir.heartbeat(&info("n", 1), LONG).await.unwrap();
    assert_eq!(dir.nodes().await.unwrap(), vec![info("n", 1)]);

    let wrong = server.url().replace("fleet-secret", "guess");
    match RedisDirectory::connect(&wrong, metrics.clone()).await {
        Err(DirectoryError::Unavailable(e)) => {
            assert!(!e.contains("guess"), "the password is not echoed: {e}")
        }
        other => panic!("a wrong password: {other:?}"),
    }
    // Without a password the connection opens but nothing is served.
    let without = server.url().replace(":fleet-secret@", "");
    if let Ok(dir) = RedisDirectory::connect(&without, metrics).await {
        assert!(matches!(
            dir.nodes().await,
            Err(DirectoryError::Unavailable(_))
        ));
    }
}

/// A self-signed certificate for 127.0.0.1, as the server's certificate and its CA.
fn self_signed() -> RedisTls {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    RedisTls {
        cert_pem: certified.cert.pem(),
        key_pem: certified.key_pair.serialize_pem(),
    }
}

#[tokio::test]
async fn rediss_verifies_the_server_against_the_given_ca() {
    let tls = self_signed();
    let server = RedisServer::start_with(RedisOptions {
        password: Some("tls-secret".into()),
        tls: Some(tls.clone()),
    })
    .expect("redis-server starts with TLS");
    assert!(server.url().starts_with("rediss://"));
    let metrics = Arc::new(Metrics::new());

    let dir =
        RedisDirectory::connect_with_ca(&server.url(), tls.cert_pem.as_bytes(), metrics.clone())
            .await
            .expect("connects over TLS");
    let won = dir
        .claim_codes(&id("n"), &["TLS1".into()], LONG)
        .await
        .unwrap();
    assert_eq!(won, vec!["TLS1".to_owned()]);
    assert_eq!(
        dir.lookup_code("TLS1").await.unwrap().map(|r| r.node),
        Some(id("n"))
    );

    // Another CA, or the system's roots: the server's certificate is refused.
    let stranger = self_signed();
    for (what, result) in [
        (
            "another CA",
            RedisDirectory::connect_with_ca(
                &server.url(),
                stranger.cert_pem.as_bytes(),
                metrics.clone(),
            )
            .await,
        ),
        (
            "the system's roots",
            RedisDirectory::connect(&server.url(), metrics.clone()).await,
        ),
    ] {
        match result {
            Err(DirectoryError::Unavailable(e)) if e.contains("certificate") => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    // A CA only makes sense with TLS.
    let plain = server.url().replacen("rediss://", "redis://", 1);
    assert!(matches!(
        RedisDirectory::connect_with_ca(&plain, tls.cert_pem.as_bytes(), metrics).await,
        Err(DirectoryError::InvalidUrl(_))
    ));
}
