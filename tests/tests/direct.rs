//! Direct host–peer paths (SPEC section 17) end to end over loopback: a real relay, the real
//! SDK on both sides. The relay's `/metrics` tell whether datagrams went through it.

use std::time::{Duration, Instant};

use baton_client::{
    AllocationOptions, ClientConfig, DirectPolicy, Event, Host, Path, Peer, PeerId, Session,
};
use baton_tests::{event_matching, recv, try_recv, TestRelay, WAIT};

/// Datagrams the relay delivered to members.
const FORWARDED: &str = "baton_datagrams_forwarded_total";

/// The relay's count of `PathReport`s with `reason`.
fn reports(reason: &str) -> String {
    let outcome = if reason == "direct" {
        "direct"
    } else {
        "relayed"
    };
    format!("baton_direct_paths_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}")
}

async fn metric(relay: &TestRelay, series: &str) -> f64 {
    relay
        .metrics()
        .await
        .get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

/// Waits until `series` reaches at least `at_least`.
async fn metric_reaches(relay: &TestRelay, series: &str, at_least: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(relay, series).await;
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {value}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `PathChanged` event for `peer`, skipping others.
async fn path_changed(session: &Session, peer: PeerId, within: Duration) -> (Path, Duration) {
    match event_matching(
        session,
        within,
        |e| matches!(e, Event::PathChanged { peer: p, .. } if *p == peer),
    )
    .await
    {
        Event::PathChanged { path, rtt, .. } => (path, rtt),
        other => unreachable!("{other:?}"),
    }
}

/// A host and a peer on `relay`, each with policy `host_policy` / `peer_policy`.
async fn pair(
    relay: &TestRelay,
    host_policy: DirectPolicy,
    peer_policy: DirectPolicy,
) -> (Host, Peer) {
    let config = |p| relay.client().direct(p);
    let host = Host::create(&config(host_policy), AllocationOptions::default())
        .await
        .expect("create");
    let peer = Peer::join(&config(peer_policy), host.join_code())
        .await
        .expect("join");
    (host, peer)
}

/// Sends `n` numbered datagrams each way and checks they all arrive, attributed right.
async fn exchange(host: &Session, peer: &Session, n: u32) {
    let peer_id = peer.local_peer();
    for i in 0..n {
        let payload = i.to_be_bytes();
        peer.send_to_host(&payload).expect("peer sends");
        let (from, got) = recv(host).await;
        assert_eq!((from, &got[..]), (peer_id, &payload[..]));
        host.send_to(peer_id, &payload).expect("host sends");
        let (from, got) = recv(peer).await;
        assert_eq!((from, &got[..]), (PeerId::HOST, &payload[..]));
    }
}

#[tokio::test]
async fn host_and_peer_go_direct_and_datagrams_bypass_the_relay() {
    let relay = TestRelay::start().await;
    let (host, peer) = pair(&relay, DirectPolicy::Prefer, DirectPolicy::Prefer).await;
    let peer_id = peer.local_peer();

    let (path, _) = path_changed(&peer, PeerId::HOST, WAIT).await;
    assert_eq!(path, Path::Direct);
    let (path, _) = path_changed(&host, peer_id, WAIT).await;
    assert_eq!(path, Path::Direct);
    assert_eq!(peer.path(PeerId::HOST), Path::Direct);
    assert_eq!(host.path(peer_id), Path::Direct);

    let before = metric(&relay, FORWARDED).await;
    exchange(&host, &peer, 50).await;
    // A host broadcast goes direct to its only member.
    host.broadcast(b"all").expect("broadcast");
    assert_eq!(&recv(&peer).await.1[..], b"all");
    assert_eq!(
        metric(&relay, FORWARDED).await,
        before,
        "datagrams went through the relay"
    );
    let (hs, ps) = (host.path_stats(), peer.path_stats());
    assert!(hs.datagrams_sent_direct >= 51, "{hs:?}");
    assert!(ps.datagrams_received_direct >= 51, "{ps:?}");
    assert!(ps.punch_packets_sent >= 1 && hs.punch_packets_sent >= 1);
    assert!(hs.direct_established >= 1 && ps.direct_established >= 1);
    // Both sides reported the direct path.
    metric_reaches(&relay, &reports("direct"), 2.0).await;

    peer.close().await;
    host.close().await;
}

#[tokio::test]
async fn without_prefer_everything_stays_relayed() {
    let relay = TestRelay::start().await;
    let (host, peer) = pair(&relay, DirectPolicy::Prefer, DirectPolicy::Never).await;
    let peer_id = peer.local_peer();
    let before = metric(&relay, FORWARDED).await;
    exchange(&host, &peer, 10).await;
    assert_eq!(metric(&relay, FORWARDED).await, before + 20.0);
    // The host offers, the peer does not offer back: no punch, no direct path.
    assert!(try_recv(&peer, Duration::from_millis(500)).await.is_none());
    assert_eq!(host.path(peer_id), Path::Relayed);
    assert_eq!(peer.path(PeerId::HOST), Path::Relayed);
    assert_eq!(peer.path_stats(), Default::default());
    assert_eq!(host.path_stats().punch_packets_sent, 0);
    // The peer reported that its policy keeps it relayed, and nobody reported a direct path.
    metric_reaches(&relay, &reports("policy_never"), 1.0).await;
    let metrics = relay.metrics().await;
    assert_eq!(
        metrics
            .by_label("baton_direct_paths_total", "outcome")
            .into_iter()
            .collect::<Vec<_>>(),
        [("relayed".to_owned(), 1)]
    );
    peer.close().await;
    host.close().await;
}

#[tokio::test]
async fn a_relay_without_direct_paths_keeps_them_relayed() {
    let relay = TestRelay::start_with(|c| {
        c.set_allow_direct(false).expect("allow_direct");
    })
    .await;
    let (host, peer) = pair(&relay, DirectPolicy::Prefer, DirectPolicy::Prefer).await;
    // Both offers are refused: each side reports relay_declined.
    metric_reaches(&relay, &reports("relay_declined"), 2.0).await;
    let before = metric(&relay, FORWARDED).await;
    exchange(&host, &peer, 10).await;
    assert_eq!(metric(&relay, FORWARDED).await, before + 20.0);
    assert_eq!(host.path(peer.local_peer()), Path::Relayed);
    assert_eq!(peer.path(PeerId::HOST), Path::Relayed);
    assert_eq!(host.path_stats().punch_packets_sent, 0);
    peer.close().await;
    host.close().await;
}

#[tokio::test]
async fn a_broken_direct_path_falls_back_to_the_relay() {
    let relay = TestRelay::start().await;
    let (host, peer) = pair(&relay, DirectPolicy::Prefer, DirectPolicy::Prefer).await;
    let peer_id = peer.local_peer();
    assert_eq!(
        path_changed(&peer, PeerId::HOST, WAIT).await.0,
        Path::Direct
    );
    assert_eq!(path_changed(&host, peer_id, WAIT).await.0, Path::Direct);
    exchange(&host, &peer, 5).await;

    let broken = Instant::now();
    host.break_direct_paths();
    let within = Duration::from_secs(2);
    assert_eq!(path_changed(&host, peer_id, within).await.0, Path::Relayed);
    assert_eq!(
        path_changed(&peer, PeerId::HOST, within).await.0,
        Path::Relayed
    );
    assert!(broken.elapsed() < within);

    let before = metric(&relay, FORWARDED).await;
    exchange(&host, &peer, 10).await;
    assert_eq!(metric(&relay, FORWARDED).await, before + 20.0);
    assert!(host.disconnect_reason().is_none() && peer.disconnect_reason().is_none());
    assert!(host.path_stats().fallbacks >= 1 && peer.path_stats().fallbacks >= 1);
    metric_reaches(&relay, &reports("direct_lost"), 1.0).await;
    peer.close().await;
    host.close().await;
}

#[tokio::test]
async fn broadcasts_go_direct_where_they_can_and_through_the_relay_elsewhere() {
    let relay = TestRelay::start().await;
    let host = Host::create(
        &config(&relay, DirectPolicy::Prefer),
        AllocationOptions::default(),
    )
    .await
    .expect("create");
    let direct = Peer::join(&config(&relay, DirectPolicy::Prefer), host.join_code())
        .await
        .expect("join");
    let relayed = Peer::join(&config(&relay, DirectPolicy::Never), host.join_code())
        .await
        .expect("join");
    assert_eq!(
        path_changed(&direct, PeerId::HOST, WAIT).await.0,
        Path::Direct
    );
    assert_eq!(
        path_changed(&host, direct.local_peer(), WAIT).await.0,
        Path::Direct
    );

    // The host's broadcast: direct to one member, through the relay to the other.
    let before = metric(&relay, FORWARDED).await;
    host.broadcast(b"from host").expect("broadcast");
    assert_eq!(recv(&direct).await, (PeerId::HOST, "from host".into()));
    assert_eq!(recv(&relayed).await, (PeerId::HOST, "from host".into()));
    assert_eq!(metric(&relay, FORWARDED).await, before + 1.0);

    // A peer's broadcast: direct to the host, through the relay to the other peer.
    direct.broadcast(b"from peer").expect("broadcast");
    let from_peer = (direct.local_peer(), "from peer".into());
    assert_eq!(recv(&host).await, from_peer);
    assert_eq!(recv(&relayed).await, from_peer);
    assert_eq!(metric(&relay, FORWARDED).await, before + 2.0);
    // Two peers never go direct.
    assert_eq!(direct.path(relayed.local_peer()), Path::Relayed);
    relayed.close().await;
    direct.close().await;
    host.close().await;
}

/// The new host a host migration named, from `session`'s events.
async fn migrated(session: &Session) -> PeerId {
    match event_matching(session, WAIT, |e| matches!(e, Event::HostMigrated { .. })).await {
        Event::HostMigrated { new_host, .. } => new_host,
        other => unreachable!("{other:?}"),
    }
}

/// Builds a config for `relay` with `policy` (for sessions made by hand).
fn config(relay: &TestRelay, policy: DirectPolicy) -> ClientConfig {
    relay.client().direct(policy)
}

#[tokio::test]
async fn after_a_host_migration_the_new_host_goes_direct_with_the_others() {
    let relay = TestRelay::start().await;
    let prefer = config(&relay, DirectPolicy::Prefer);
    let host = Host::create(&prefer, AllocationOptions::default())
        .await
        .expect("create");
    let a = Peer::join(&prefer, host.join_code()).await.expect("join a");
    let b = Peer::join(&prefer, host.join_code()).await.expect("join b");
    let a_id = a.local_peer();
    for session in [&*a, &*b] {
        assert_eq!(
            path_changed(session, PeerId::HOST, WAIT).await.0,
            Path::Direct
        );
    }

    host.close().await;
    // One of the two takes over; the other moves to it.
    let (new_a, new_b) = tokio::join!(migrated(&a), migrated(&b));
    assert_eq!(new_a, new_b);
    let (new_host, other) = if new_a == a_id { (&a, &b) } else { (&b, &a) };
    let other_id = other.local_peer();
    assert!(new_host.is_host());
    assert_eq!(
        path_changed(other, new_host.local_peer(), WAIT).await.0,
        Path::Direct
    );
    assert_eq!(path_changed(new_host, other_id, WAIT).await.0, Path::Direct);
    // Nobody has a direct path to the old host.
    for session in [&*a, &*b] {
        assert_eq!(session.path(PeerId::HOST), Path::Relayed);
    }
    let before = metric(&relay, FORWARDED).await;
    for i in 0..10u32 {
        other.send_to_host(&i.to_be_bytes()).expect("send");
        let (from, got) = recv(new_host).await;
        assert_eq!((from, &got[..]), (other_id, &i.to_be_bytes()[..]));
    }
    assert_eq!(metric(&relay, FORWARDED).await, before);
    a.close().await;
    b.close().await;
}

/// The `baton-relay` binary beside this test's (`cargo build -p baton-relay` builds it).
/// A host and a peer with a direct path, on fleet node `a` (a process): when `a` is killed,
/// the game goes on over the direct path while both sessions resume through node `b`, and
/// the direct path stays in use afterwards (`b` forwards nothing between them).
#[tokio::test]
async fn a_direct_path_carries_the_game_while_the_relay_is_lost_and_stays_after_the_resume() {
    use baton_client::Trust;
    use baton_tests::redis_server::RedisServer;

    let redis = RedisServer::start().expect("redis-server starts (install redis-server)");
    let (mut node_a, running, data) =
        baton_tests::relay_process::spawn_fleet_node(&redis.url(), "a", WAIT)
            .await
            .expect("node a runs");
    let b = TestRelay::start_fleet_node("b", &redis.url(), data.dir.path(), |_| {}).await;
    let trust = Trust::Fingerprint(b.relay().fingerprint());
    let config = ClientConfig::new(running.quic, trust)
        .keep_alive_interval(Duration::from_millis(250))
        .idle_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_millis(500))
        .fallback_relays(vec![b.addr()])
        .direct(DirectPolicy::Prefer);
    let host = Host::create(&config, AllocationOptions::default())
        .await
        .expect("create on a");
    let peer = Peer::join(&config, host.join_code())
        .await
        .expect("join on a");
    let peer_id = peer.local_peer();
    assert_eq!(
        path_changed(&peer, PeerId::HOST, WAIT).await.0,
        Path::Direct
    );
    assert_eq!(path_changed(&host, peer_id, WAIT).await.0, Path::Direct);

    node_a.start_kill().expect("SIGKILL node a");
    node_a.wait().await.expect("node a reaped");
    // Until both have resumed (2 to 3 s: node a's heartbeat must lapse first), datagrams keep
    // flowing both ways over the direct path; none is dropped for the lost relay.
    let resumed = |s: &Session| s.disconnect_reason().is_none() && s.relay_addr() == b.addr();
    let mut during = 0u32;
    let deadline = Instant::now() + 3 * WAIT;
    while !(resumed(&host) && resumed(&peer)) {
        assert!(Instant::now() < deadline, "not resumed on b");
        let payload = during.to_be_bytes();
        peer.send_to_host(&payload).expect("peer sends");
        assert_eq!(recv(&host).await, (peer_id, payload[..].to_vec().into()));
        host.send_to(peer_id, &payload).expect("host sends");
        assert_eq!(
            recv(&peer).await,
            (PeerId::HOST, payload[..].to_vec().into())
        );
        during += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{during} round trips over the direct path while the relay was lost");
    assert!(during >= 50, "only {during} round trips");
    assert_eq!(host.dropped_while_resuming(), 0);
    assert_eq!(peer.dropped_while_resuming(), 0);

    // On b, the pair is still direct: b forwards nothing between them.
    assert_eq!(host.path(peer_id), Path::Direct);
    assert_eq!(peer.path(PeerId::HOST), Path::Direct);
    let before = metric(&b, FORWARDED).await;
    exchange(&host, &peer, 20).await;
    assert_eq!(metric(&b, FORWARDED).await, before);
    peer.close().await;
    host.close().await;
}

/// Nodes `a` and `b` of a fleet, in this process: `a` with `tweak_a` applied. Returns once
/// both are registered in the directory, so that a drain of `a` has somewhere to go.
async fn two_nodes(
    redis: &baton_tests::redis_server::RedisServer,
    certs: &std::path::Path,
    tweak_a: impl FnOnce(&mut baton_relay::config::RelayConfig),
) -> (TestRelay, TestRelay) {
    use baton_relay::directory::RedisDirectory;
    use baton_relay::metrics::Metrics;

    let a = TestRelay::start_fleet_node("a", &redis.url(), certs, tweak_a).await;
    let b = TestRelay::start_fleet_node("b", &redis.url(), certs, |_| {}).await;
    let dir = RedisDirectory::connect(&redis.url(), std::sync::Arc::new(Metrics::new()))
        .await
        .expect("directory");
    let deadline = Instant::now() + WAIT;
    while dir.nodes().await.map(|n| n.len()) != Ok(2) {
        assert!(Instant::now() < deadline, "nodes not registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (a, b)
}

/// Drains `node` and waits until `sessions` have all moved to `to`; with `steady_paths`, no
/// session may report a `PathChanged` on the way.
async fn drain_to(node: &TestRelay, to: &TestRelay, sessions: [&Session; 2], steady_paths: bool) {
    let drain = reqwest::Client::new()
        .post(format!("{}/v1/drain", node.admin_url()))
        .send()
        .await
        .expect("POST /v1/drain");
    assert_eq!(drain.status(), reqwest::StatusCode::ACCEPTED);
    for session in sessions {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, session.next_event()).await {
                Ok(Some(Event::Relocated { relay })) => {
                    assert_eq!(relay, to.addr());
                    break;
                }
                Ok(Some(e @ Event::PathChanged { .. })) if steady_paths => {
                    panic!("path changed during the relocation: {e}")
                }
                Ok(Some(e @ Event::Disconnected { .. })) => panic!("not relocated: {e}"),
                Ok(Some(_)) => {}
                Ok(None) => panic!("the session ended"),
                Err(_) => panic!("not relocated within {WAIT:?}"),
            }
        }
    }
}

/// A pair with a direct path on node `a`, which drains: both sessions move to node `b` and
/// the direct path stays up and in use throughout (no `PathChanged`, `b` forwards nothing
/// between them).
#[tokio::test]
async fn a_direct_path_stays_in_use_across_a_relocation() {
    let redis = baton_tests::redis_server::RedisServer::start()
        .expect("redis-server starts (install redis-server)");
    let certs = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_nodes(&redis, certs.path(), |_| {}).await;
    let (host, peer) = pair(&a, DirectPolicy::Prefer, DirectPolicy::Prefer).await;
    let peer_id = peer.local_peer();
    assert_eq!(
        path_changed(&peer, PeerId::HOST, WAIT).await.0,
        Path::Direct
    );
    assert_eq!(path_changed(&host, peer_id, WAIT).await.0, Path::Direct);

    drain_to(&a, &b, [&host, &peer], true).await;
    assert_eq!(host.path(peer_id), Path::Direct);
    assert_eq!(peer.path(PeerId::HOST), Path::Direct);
    let before = metric(&b, FORWARDED).await;
    exchange(&host, &peer, 20).await;
    assert_eq!(
        metric(&b, FORWARDED).await,
        before,
        "b forwarded the pair's datagrams"
    );
    peer.close().await;
    host.close().await;
}

/// A pair kept relayed by its node (`--allow-direct false` on `a`) starts over when the game
/// moves to a node that allows direct paths, and goes direct there.
#[tokio::test]
async fn a_pair_refused_direct_paths_goes_direct_after_moving_to_a_node_that_allows_them() {
    let redis = baton_tests::redis_server::RedisServer::start()
        .expect("redis-server starts (install redis-server)");
    let certs = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_nodes(&redis, certs.path(), |c| {
        c.set_allow_direct(false).expect("allow_direct");
    })
    .await;
    let (host, peer) = pair(&a, DirectPolicy::Prefer, DirectPolicy::Prefer).await;
    let peer_id = peer.local_peer();
    metric_reaches(&a, &reports("relay_declined"), 2.0).await;
    assert_eq!(host.path(peer_id), Path::Relayed);

    drain_to(&a, &b, [&host, &peer], false).await;
    assert_eq!(
        path_changed(&peer, PeerId::HOST, WAIT).await.0,
        Path::Direct
    );
    assert_eq!(path_changed(&host, peer_id, WAIT).await.0, Path::Direct);
    metric_reaches(&b, &reports("direct"), 2.0).await;
    let before = metric(&b, FORWARDED).await;
    exchange(&host, &peer, 20).await;
    assert_eq!(metric(&b, FORWARDED).await, before);
    peer.close().await;
    host.close().await;
}
