//! End-to-end tests over loopback QUIC: the real relay, the real SDK, real sockets.

use std::time::{Duration, Instant};

use baton_client::{
    AllocationOptions, ClientConfig, DisconnectReason, DropReason, Error, Event, Host, LeaveReason,
    Peer, PeerId, Trust,
};
use baton_tests::{event_matching, recv, try_recv, TestRelay, WAIT};

async fn host_and_peers(relay: &TestRelay, n: usize) -> (Host, Vec<Peer>) {
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create allocation");
    let mut peers = Vec::new();
    for _ in 0..n {
        let peer = Peer::join(&relay.client(), host.join_code())
            .await
            .expect("join");
        event_matching(
            &host,
            WAIT,
            |e| matches!(e, Event::PeerJoined { peer: p } if *p == peer.local_peer()),
        )
        .await;
        peers.push(peer);
    }
    (host, peers)
}

#[tokio::test]
async fn host_and_three_peers_exchange_datagrams_in_every_direction() {
    let relay = TestRelay::start().await;
    let (host, peers) = host_and_peers(&relay, 3).await;
    assert_eq!(host.local_peer(), PeerId::HOST);
    let ids: Vec<PeerId> = peers.iter().map(|p| p.local_peer()).collect();
    assert_eq!(ids, vec![PeerId(1), PeerId(2), PeerId(3)]);
    assert_eq!(host.max_payload(), 1150);
    assert_eq!(peers[0].max_payload(), 1150);

    // Peer -> host, with a full-size payload checked byte for byte.
    for (i, peer) in peers.iter().enumerate() {
        let payload: Vec<u8> = (0..1150).map(|b| (b * 7 + i) as u8).collect();
        peer.send_to_host(&payload).unwrap();
        let (from, got) = recv(&host).await;
        assert_eq!(from, peer.local_peer());
        assert_eq!(&got[..], &payload[..]);
    }
    // Host -> each peer.
    for peer in &peers {
        let payload = format!("to {}", peer.local_peer());
        host.send_to(peer.local_peer(), payload.as_bytes()).unwrap();
        let (from, got) = recv(peer).await;
        assert_eq!(from, PeerId::HOST);
        assert_eq!(&got[..], payload.as_bytes());
    }
    // Host broadcast reaches every peer, and not the host itself.
    host.broadcast(b"tick 1").unwrap();
    for peer in &peers {
        assert_eq!(recv(peer).await, (PeerId::HOST, b"tick 1"[..].into()));
    }
    // Peer -> peer, and a peer's broadcast reaches everyone else.
    peers[0].send_to(PeerId(2), b"psst").unwrap();
    assert_eq!(recv(&peers[1]).await, (PeerId(1), b"psst"[..].into()));
    peers[2].broadcast(b"hello all").unwrap();
    assert_eq!(recv(&host).await, (PeerId(3), b"hello all"[..].into()));
    assert_eq!(recv(&peers[0]).await, (PeerId(3), b"hello all"[..].into()));
    assert_eq!(recv(&peers[1]).await, (PeerId(3), b"hello all"[..].into()));
    assert!(try_recv(&peers[2], Duration::from_millis(200))
        .await
        .is_none());
    // An empty payload is a valid datagram.
    host.send_to(PeerId(1), b"").unwrap();
    assert_eq!(recv(&peers[0]).await, (PeerId::HOST, bytes::Bytes::new()));

    // The admin API and metrics see the same allocation and traffic.
    let body: serde_json::Value = reqwest::get(format!("{}/v1/allocations", relay.admin_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let allocations = body["allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 1);
    assert_eq!(allocations[0]["join_code"], host.join_code().as_str());
    assert_eq!(allocations[0]["members"].as_array().unwrap().len(), 4);
    let metrics = reqwest::get(format!("{}/metrics", relay.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let forwarded = metric(&metrics, "baton_datagrams_forwarded_total");
    assert!(forwarded >= 14.0, "{metrics}");
    assert_eq!(metric(&metrics, "baton_connections"), 4.0);
    assert_eq!(metric(&metrics, "baton_allocations"), 1.0);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

#[tokio::test]
async fn a_member_of_one_allocation_cannot_reach_another() {
    let relay = TestRelay::start().await;
    let (host_a, peers_a) = host_and_peers(&relay, 1).await;
    let (host_b, peers_b) = host_and_peers(&relay, 2).await;
    // Peer 2 exists in B but not in A: A's peer cannot address it.
    peers_a[0].send_to(PeerId(2), b"escape").unwrap();
    peers_a[0].broadcast(b"only A").unwrap();
    assert_eq!(recv(&host_a).await, (PeerId(1), b"only A"[..].into()));
    let dropped = event_matching(&peers_a[0], WAIT, |e| {
        matches!(e, Event::DatagramsDropped { .. })
    })
    .await;
    assert_eq!(
        dropped,
        Event::DatagramsDropped {
            reason: DropReason::UnknownPeer,
            count: 1,
            value: 2
        }
    );
    for session in [&*host_b, &*peers_b[0], &*peers_b[1]] {
        assert!(try_recv(session, Duration::from_millis(300))
            .await
            .is_none());
    }
}

#[tokio::test]
async fn every_join_refusal_has_its_own_error() {
    let relay = TestRelay::start().await;
    let client = relay.client();
    assert!(matches!(
        Peer::join(&client, "BCDFGH").await,
        Err(Error::CodeNotFound)
    ));
    assert!(matches!(
        Peer::join(&client, "AEIOU1").await,
        Err(Error::InvalidJoinCode(_))
    ));

    let full = Host::create(&client, AllocationOptions::default().max_peers(2))
        .await
        .unwrap();
    let _first = Peer::join(&client, full.join_code()).await.unwrap();
    assert!(matches!(
        Peer::join(&client, full.join_code()).await,
        Err(Error::AllocationFull { max_peers: 2 })
    ));

    let revoked = Host::create(&client, AllocationOptions::default())
        .await
        .unwrap();
    revoked.revoke_join_code().await.unwrap();
    assert!(matches!(
        Peer::join(&client, revoked.join_code()).await,
        Err(Error::CodeRevoked)
    ));

    let expiring = Host::create(
        &client,
        AllocationOptions::default().code_ttl(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    assert_eq!(expiring.code_ttl(), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        Peer::join(&client, expiring.join_code()).await,
        Err(Error::CodeExpired)
    ));

    let closed = Host::create(&client, AllocationOptions::default())
        .await
        .unwrap();
    let code = closed.join_code();
    closed.close().await;
    assert!(matches!(
        Peer::join(&client, code).await,
        Err(Error::AllocationClosed)
    ));
}

#[tokio::test]
async fn a_silent_peer_is_removed_after_the_keepalive_timeout() {
    let timeout = Duration::from_millis(800);
    let relay = TestRelay::start_with(|c| {
        c.set_keepalive_timeout(timeout).unwrap();
    })
    .await;
    let host_config = relay
        .client()
        .keep_alive_interval(Duration::from_millis(100));
    let host = Host::create(&host_config, AllocationOptions::default())
        .await
        .unwrap();
    // This peer never pings: after joining it is silent.
    let silent_config = relay
        .client()
        .keep_alive_interval(Duration::from_secs(60))
        .idle_timeout(Duration::from_secs(120));
    let silent = Peer::join(&silent_config, host.join_code()).await.unwrap();
    let joined_at = Instant::now();
    let left = event_matching(&host, WAIT, |e| matches!(e, Event::PeerLeft { .. })).await;
    let elapsed = joined_at.elapsed();
    assert_eq!(
        left,
        Event::PeerLeft {
            peer: silent.local_peer(),
            reason: LeaveReason::TimedOut
        }
    );
    assert!(elapsed >= timeout, "removed after {elapsed:?}");
    assert!(elapsed < timeout * 3, "removed after {elapsed:?}");
    // The pinging host, meanwhile, is still there.
    tokio::time::sleep(timeout * 2).await;
    assert!(host.disconnect_reason().is_none());
}

#[tokio::test]
async fn host_leaving_closes_the_allocation_and_peers_hear_why() {
    // The SDK does not act on `Promote` yet, so every elected peer misses its migration
    // deadline and the allocation closes with the host's reason.
    let relay = TestRelay::start_with(|c| {
        c.set_migration_timeout(Duration::from_millis(300)).unwrap();
    })
    .await;
    let (host, peers) = host_and_peers(&relay, 2).await;
    host.close().await;
    for peer in &peers {
        let lost = event_matching(peer, WAIT, |e| matches!(e, Event::HostLost { .. })).await;
        assert_eq!(
            lost,
            Event::HostLost {
                reason: LeaveReason::Closed
            }
        );
        let gone = event_matching(peer, WAIT, |e| matches!(e, Event::Disconnected { .. })).await;
        assert_eq!(
            gone,
            Event::Disconnected {
                reason: DisconnectReason::HostLost(LeaveReason::Closed)
            }
        );
        assert!(matches!(
            peer.send_to_host(b"anyone?"),
            Err(Error::Disconnected(_))
        ));
    }
}

#[tokio::test]
async fn the_host_can_kick_and_the_others_are_told() {
    let relay = TestRelay::start().await;
    let (host, peers) = host_and_peers(&relay, 2).await;
    host.kick(PeerId(1)).await.unwrap();
    let gone = event_matching(&peers[0], WAIT, |e| matches!(e, Event::Disconnected { .. })).await;
    assert_eq!(
        gone,
        Event::Disconnected {
            reason: DisconnectReason::Kicked
        }
    );
    let left = event_matching(&peers[1], WAIT, |e| matches!(e, Event::PeerLeft { .. })).await;
    assert_eq!(
        left,
        Event::PeerLeft {
            peer: PeerId(1),
            reason: LeaveReason::Kicked
        }
    );
    assert!(matches!(
        host.kick(PeerId(1)).await,
        Err(Error::UnknownPeer(PeerId(1)))
    ));
}

#[tokio::test]
async fn payload_limit_is_reported_not_silently_dropped() {
    let relay = TestRelay::start().await;
    let (host, _peers) = host_and_peers(&relay, 1).await;
    match host.send_to(PeerId(1), &[0u8; 1151]) {
        Err(Error::PayloadTooLarge {
            len: 1151,
            limit: 1150,
        }) => {}
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn trust_and_version_errors_are_typed() {
    let relay = TestRelay::start().await;
    let wrong = ClientConfig::new(relay.addr(), Trust::Fingerprint([7u8; 32]));
    assert!(matches!(
        Host::create(&wrong, AllocationOptions::default()).await,
        Err(Error::CertificateMismatch { .. })
    ));
    let old = relay.client().alpn(b"baton/0".to_vec());
    assert!(matches!(
        Host::create(&old, AllocationOptions::default()).await,
        Err(Error::ProtocolVersionMismatch)
    ));
    // The relay's own PEM file is an accepted trust root too.
    let by_file = ClientConfig::new(
        relay.addr(),
        Trust::CertificateFile(relay.relay().cert_path().to_owned()),
    );
    Host::create(&by_file, AllocationOptions::default())
        .await
        .expect("certificate file trust");

    // Nothing listens on this port: unreachable, within the connect timeout.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = socket.local_addr().unwrap();
    drop(socket);
    let nowhere = ClientConfig::new(dead, Trust::Fingerprint([0; 32]))
        .connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    assert!(matches!(
        Host::create(&nowhere, AllocationOptions::default()).await,
        Err(Error::RelayUnreachable { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn graceful_shutdown_tells_every_client() {
    let mut relay = TestRelay::start().await;
    let (host, peers) = host_and_peers(&relay, 1).await;
    relay.shutdown().await;
    for session in [&*host, &*peers[0]] {
        let gone = event_matching(session, WAIT, |e| matches!(e, Event::Disconnected { .. })).await;
        assert_eq!(
            gone,
            Event::Disconnected {
                reason: DisconnectReason::RelayShuttingDown
            }
        );
    }
}
