//! End-to-end tests over loopback QUIC: the real relay, the real SDK, real sockets.

use std::time::{Duration, Instant};

use baton_client::{
    AllocationOptions, ClientConfig, DisconnectReason, DropReason, Error, Event, Host, LeaveReason,
    Peer, PeerId, Trust,
};
use baton_tests::{event_matching, raw_client, raw_join, recv, try_recv, TestRelay, WAIT};

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
    let metrics = relay.metrics().await;
    let forwarded = metrics.get("baton_datagrams_forwarded_total");
    assert!(forwarded >= Some(14.0), "{metrics:?}");
    assert_eq!(metrics.get("baton_connections"), Some(4.0));
    assert_eq!(metrics.get("baton_allocations"), Some(1.0));
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
    let (relay, host) = TestRelay::start_with_keepalive(timeout, Duration::from_millis(100)).await;
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
async fn host_leaving_hands_the_game_to_a_peer_with_the_snapshot() {
    let relay = TestRelay::start().await;
    let (host, peers) = host_and_peers(&relay, 2).await;
    let old = host.allocation();
    let code = host.join_code();
    let snapshot = vec![7u8; 200_000];
    assert_eq!(
        host.upload_snapshot(snapshot.clone()).await.unwrap(),
        200_000
    );
    // Peers can neither upload nor kick.
    assert!(matches!(
        peers[0].upload_snapshot(&b"mine"[..]).await,
        Err(Error::NotHost)
    ));
    host.close().await;

    // Everyone hears who was lost and who takes over; one of them does.
    let mut elected = None;
    for peer in &peers {
        match event_matching(peer, WAIT, |e| matches!(e, Event::HostLost { .. })).await {
            Event::HostLost {
                host: PeerId::HOST,
                reason: LeaveReason::Closed,
                elected: Some(e),
            } => {
                assert!(elected.is_none() || elected == Some(e));
                elected = Some(e);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let elected = elected.expect("a member was elected");
    for peer in &peers {
        let migrated =
            event_matching(peer, WAIT, |e| matches!(e, Event::HostMigrated { .. })).await;
        let Event::HostMigrated {
            allocation,
            new_host,
            you_are_host,
            snapshot: got,
        } = migrated
        else {
            unreachable!()
        };
        assert_ne!(allocation, old);
        assert_eq!(new_host, elected);
        assert_eq!(you_are_host, peer.local_peer() == elected);
        assert_eq!(peer.is_host(), you_are_host);
        assert_eq!(peer.host(), Some(elected));
        assert_eq!(peer.allocation(), allocation);
        assert_eq!(peer.join_code(), Some(code));
        if you_are_host {
            assert_eq!(
                got.as_deref(),
                Some(&snapshot[..]),
                "snapshot byte for byte"
            );
        } else {
            assert_eq!(got, None);
        }
    }
    let (new_host, other) = if peers[0].local_peer() == elected {
        (&peers[0], &peers[1])
    } else {
        (&peers[1], &peers[0])
    };
    assert_eq!(
        event_matching(new_host, WAIT, |e| matches!(e, Event::PeerRejoined { .. })).await,
        Event::PeerRejoined {
            peer: other.local_peer()
        }
    );
    // Datagrams flow both ways with the new host; ids are unchanged.
    other.send_to_host(b"to the new host").unwrap();
    assert_eq!(
        recv(new_host).await,
        (
            other.local_peer(),
            bytes::Bytes::from_static(b"to the new host")
        )
    );
    new_host.send_to(other.local_peer(), b"welcome").unwrap();
    assert_eq!(recv(other).await.0, elected);
    // The new host holds the role: host operations work, and the old code admits newcomers.
    assert_eq!(new_host.upload_snapshot(&b"v2"[..]).await.unwrap(), 2);
    let late = Peer::join(&relay.client(), code).await.unwrap();
    assert_eq!(late.allocation(), new_host.allocation());
    assert_eq!(late.host(), Some(elected));
    assert_eq!(late.local_peer(), PeerId(3));
}

#[tokio::test]
async fn host_leaving_alone_closes_the_allocation() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .unwrap();
    let code = host.join_code();
    host.close().await;
    assert!(matches!(
        Peer::join(&relay.client(), code).await,
        Err(Error::AllocationClosed)
    ));
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
async fn a_kicked_peer_cannot_rejoin_with_its_token() {
    let relay = TestRelay::start().await;
    let (host, peers) = host_and_peers(&relay, 2).await;
    let kicked_token = peers[0].reconnect_token();
    let stays_token = peers[1].reconnect_token();
    host.kick(kicked_token.peer).await.unwrap();
    event_matching(&host, WAIT, |e| matches!(e, Event::PeerLeft { .. })).await;
    assert!(matches!(
        Peer::rejoin(&relay.client(), &kicked_token).await,
        Err(Error::Unauthorized)
    ));
    // The kicked player may come back by code, as a new peer with a token of its own.
    let again = Peer::join(&relay.client(), host.join_code())
        .await
        .expect("join again by code");
    assert_eq!(again.local_peer(), PeerId(3));
    assert_ne!(again.reconnect_token(), kicked_token);
    // Members that were not kicked keep their tokens: one that lost its connection rejoins.
    drop(peers);
    event_matching(
        &host,
        WAIT,
        |e| matches!(e, Event::PeerLeft { peer, .. } if *peer == stays_token.peer),
    )
    .await;
    let back = Peer::rejoin(&relay.client(), &stays_token)
        .await
        .expect("rejoin");
    assert_eq!(back.local_peer(), stays_token.peer);
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

    // A bound socket that never answers: unreachable, within the connect timeout. It stays
    // bound until the end, so no other process can take the port in between.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();
    let nowhere = ClientConfig::new(dead, Trust::Fingerprint([0; 32]))
        .connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    assert!(matches!(
        Host::create(&nowhere, AllocationOptions::default()).await,
        Err(Error::RelayUnreachable { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
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

/// With several endpoints on one port, a client whose address changes (a NAT rebinding) keeps
/// its connection: packets reach the endpoint its connection ID names, whatever their source
/// address. Without steering, each new address would hash to another of the 4 sockets 3 times
/// in 4, which answers with a stateless reset.
#[tokio::test]
async fn several_endpoints_keep_a_client_whose_address_changes() {
    use baton_protocol::{datagram, ServerMessage};
    let relay = TestRelay::start_with(|c| {
        c.set_endpoints(4).unwrap();
    })
    .await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create allocation");
    let (endpoint, peer) = raw_client(&relay, |_| {}).await;
    let (_send, _recv_stream, joined) = raw_join(&peer, host.join_code()).await;
    let ServerMessage::Joined { peer: me, .. } = joined else {
        panic!("join failed: {joined:?}");
    };
    let first_port = endpoint.local_addr().unwrap().port();
    for round in 0..8u8 {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        endpoint.rebind(socket).unwrap();
        assert_ne!(endpoint.local_addr().unwrap().port(), first_port);
        peer.send_datagram(datagram::encode(PeerId::HOST.0, &[round]).into())
            .unwrap();
        assert_eq!(
            recv(&host).await,
            (me, bytes::Bytes::copy_from_slice(&[round])),
            "round {round}: the host hears the moved peer"
        );
        host.send_to(me, &[round]).unwrap();
        let back = tokio::time::timeout(WAIT, peer.read_datagram())
            .await
            .unwrap_or_else(|_| panic!("round {round}: nothing back after the move"))
            .unwrap_or_else(|e| panic!("round {round}: connection lost after the move: {e}"));
        assert_eq!(
            datagram::split(&back).unwrap(),
            (PeerId::HOST.0, &[round][..])
        );
    }
    assert!(peer.close_reason().is_none());
}

/// SPEC 5.3 `ObservedAddress`: a member is told the address the relay sees for it after its
/// bind reply, and again after its address changes (here: the client rebinds to a new UDP
/// socket, as after a NAT rebinding) once it sends from there.
#[tokio::test]
async fn a_member_learns_the_address_the_relay_sees_and_again_after_a_rebind() {
    use baton_protocol::{datagram, ServerMessage};
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create allocation");
    let (endpoint, peer) = raw_client(&relay, |_| {}).await;
    let (_send, mut control, joined) = raw_join(&peer, host.join_code()).await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    let first = endpoint.local_addr().unwrap();
    assert_eq!(
        baton_tests::raw_read_any(&mut control).await,
        ServerMessage::ObservedAddress {
            address: first,
            probe_port: relay.relay().probe_addr().map_or(0, |a| a.port()),
        }
    );
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    endpoint.rebind(socket).unwrap();
    let moved = endpoint.local_addr().unwrap();
    assert_ne!(moved, first);
    // The relay notices on the next datagram from the new address (or its next RTT report).
    peer.send_datagram(datagram::encode(PeerId::HOST.0, b"moved").into())
        .unwrap();
    assert_eq!(recv(&host).await.1, bytes::Bytes::from_static(b"moved"));
    assert_eq!(
        baton_tests::raw_read_any(&mut control).await,
        ServerMessage::ObservedAddress {
            address: moved,
            probe_port: relay.relay().probe_addr().map_or(0, |a| a.port()),
        }
    );
    // The SDK keeps what it was told.
    let deadline = tokio::time::Instant::now() + WAIT;
    while host.observed_addr().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no observed address"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = host.observed_addr().unwrap();
    assert_eq!(seen.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_ne!(seen.port(), 0);
}

#[tokio::test]
async fn several_endpoints_on_one_port_forward_between_each_other() {
    let relay = TestRelay::start_with(|c| {
        c.set_endpoints(4).unwrap();
    })
    .await;
    // Eight clients on four sockets: the kernel spreads them by address, so members of one
    // allocation sit on different endpoints and datagrams cross between them.
    let (host, peers) = host_and_peers(&relay, 7).await;
    for peer in &peers {
        peer.send_to_host(&[peer.local_peer().0 as u8]).unwrap();
    }
    let mut from: Vec<PeerId> = Vec::new();
    for _ in &peers {
        from.push(recv(&host).await.0);
    }
    from.sort();
    let ids: Vec<PeerId> = peers.iter().map(|p| p.local_peer()).collect();
    assert_eq!(from, ids);
    host.broadcast(b"tick").unwrap();
    for peer in &peers {
        assert_eq!(
            recv(peer).await,
            (PeerId::HOST, bytes::Bytes::from_static(b"tick"))
        );
    }
}

/// A host and a peer exchange direct-path offers over raw connections: each gets the other's
/// offer, then both get `Punch`; a `PathReport` shows in `/metrics`, parsed by label.
#[tokio::test]
async fn direct_path_offers_are_forwarded_and_both_sides_get_punch() {
    use baton_protocol::path::{NatKind, PathOutcome, PathReason};
    use baton_protocol::{ClientMessage, ServerMessage};
    use baton_tests::{raw_connection, raw_create, raw_read, raw_request};

    let relay = TestRelay::start().await;
    let host = raw_connection(&relay, |_| {}).await;
    let (mut hs, mut hr, created) = raw_create(&host).await;
    let ServerMessage::AllocationCreated { code, .. } = created else {
        panic!("not created: {created:?}");
    };
    let peer = raw_connection(&relay, |_| {}).await;
    let (mut ps, mut pr, joined) = raw_join(&peer, code).await;
    assert!(
        matches!(
            joined,
            ServerMessage::Joined {
                peer: PeerId(1),
                ..
            }
        ),
        "{joined:?}"
    );
    assert_eq!(
        raw_read(&mut hr).await,
        ServerMessage::PeerJoined { peer: PeerId(1) }
    );

    let offer = |request_id, to, fp: u8, port| ClientMessage::PathOffer {
        request_id,
        peer: PeerId(to),
        nat: NatKind::EndpointIndependent,
        fingerprint: [fp; 32],
        candidates: vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
    };
    // The peer offers: Done; the host gets it, naming peer 1.
    let reply = raw_request(&mut ps, &mut pr, &offer(2, 0, 0xaa, 40001)).await;
    assert_eq!(reply, ServerMessage::Done { request_id: 2 });
    assert_eq!(
        raw_read(&mut hr).await,
        ServerMessage::PathOffer {
            from: PeerId(1),
            nat: NatKind::EndpointIndependent,
            fingerprint: [0xaa; 32],
            candidates: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 40001))],
        }
    );
    // The host answers: Done, then Punch; the peer gets the host's offer, then Punch.
    let reply = raw_request(&mut hs, &mut hr, &offer(2, 1, 0xbb, 40000)).await;
    assert_eq!(reply, ServerMessage::Done { request_id: 2 });
    match raw_read(&mut hr).await {
        ServerMessage::Punch { peer, delay_ms } => {
            assert_eq!(peer, PeerId(1));
            assert!(delay_ms <= 1000);
        }
        other => panic!("host got {other:?}, not Punch"),
    }
    match raw_read(&mut pr).await {
        ServerMessage::PathOffer {
            from, fingerprint, ..
        } => assert_eq!((from, fingerprint), (PeerId::HOST, [0xbb; 32])),
        other => panic!("peer got {other:?}, not the host's offer"),
    }
    match raw_read(&mut pr).await {
        ServerMessage::Punch { peer, delay_ms } => {
            assert_eq!(peer, PeerId::HOST);
            assert!(delay_ms <= 1000);
        }
        other => panic!("peer got {other:?}, not Punch"),
    }

    // The peer reports a direct path; the relay counts it under its outcome and reason.
    let report = ClientMessage::PathReport {
        request_id: 3,
        peer: PeerId::HOST,
        outcome: PathOutcome::Direct,
        reason: PathReason::Direct,
    };
    let reply = raw_request(&mut ps, &mut pr, &report).await;
    assert_eq!(reply, ServerMessage::Done { request_id: 3 });
    let series = "baton_direct_paths_total{outcome=\"direct\",reason=\"direct\"}";
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = relay.metrics().await;
        if metrics.get(series) == Some(1.0) {
            // Nothing else was counted; every other series of the family is there, at 0.
            let by_outcome = metrics.by_label("baton_direct_paths_total", "outcome");
            assert_eq!(
                by_outcome.into_iter().collect::<Vec<_>>(),
                [("direct".to_owned(), 1)]
            );
            assert_eq!(
                metrics.get(
                    "baton_direct_paths_total{outcome=\"relayed\",reason=\"punch_timed_out\"}"
                ),
                Some(0.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached 1: {metrics:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relay started with `--allow-direct false` refuses offers with `direct_disabled` and
/// forwards nothing.
#[tokio::test]
async fn a_relay_without_direct_paths_refuses_offers() {
    use baton_protocol::path::NatKind;
    use baton_protocol::{ClientMessage, ErrorCode, ServerMessage};
    use baton_tests::{raw_connection, raw_create, raw_read, raw_request};

    let relay = TestRelay::start_with(|c| {
        c.set_allow_direct(false).expect("allow_direct");
    })
    .await;
    let host = raw_connection(&relay, |_| {}).await;
    let (mut hs, mut hr, created) = raw_create(&host).await;
    let ServerMessage::AllocationCreated { code, .. } = created else {
        panic!("not created: {created:?}");
    };
    let peer = raw_connection(&relay, |_| {}).await;
    let (mut ps, mut pr, _) = raw_join(&peer, code).await;
    assert_eq!(
        raw_read(&mut hr).await,
        ServerMessage::PeerJoined { peer: PeerId(1) }
    );
    let offer = ClientMessage::PathOffer {
        request_id: 2,
        peer: PeerId(1),
        nat: NatKind::Unknown,
        fingerprint: [1; 32],
        candidates: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 40000))],
    };
    let reply = raw_request(&mut hs, &mut hr, &offer).await;
    assert_eq!(
        reply,
        ServerMessage::Refused {
            request_id: 2,
            code: ErrorCode::DirectDisabled,
            value: 0
        }
    );
    // The peer heard nothing: its next message answers its own request.
    let reply = raw_request(
        &mut ps,
        &mut pr,
        &ClientMessage::RevokeCode { request_id: 9 },
    )
    .await;
    assert!(
        matches!(
            reply,
            ServerMessage::Refused {
                request_id: 9,
                code: ErrorCode::NotHost,
                ..
            }
        ),
        "{reply:?}"
    );
}

/// TLS session resumption (SPEC 2.1): every handshake gets one ticket; a second connection of
/// the same client configuration (here a peer joining with the host's configuration; in a game,
/// a rejoin or a migration) resumes with it, and the relay counts the ticket it opened. A
/// fresh configuration has no ticket and runs a full handshake.
#[tokio::test]
async fn a_configuration_s_next_connection_resumes_its_tls_session() {
    // No probe port: the SDK's NAT probes (also TLS connections) would add to the counts.
    let relay = TestRelay::start_with(|c| {
        c.set_probe_listen(baton_relay::ProbeListen::Off).unwrap();
    })
    .await;
    // (issued, accepted, rejected)
    let tickets = |m: &baton_tests::relay_process::Metrics| {
        let t = m.by_label("baton_tls_tickets_total", "result");
        let n = |r: &str| t.get(r).copied().unwrap_or(0);
        (n("issued"), n("accepted"), n("rejected"))
    };
    let config = relay.client();
    let host = Host::create(&config, AllocationOptions::default())
        .await
        .unwrap();
    assert_eq!(tickets(&relay.metrics().await), (1, 0, 0));

    let resumed = Peer::join(&config, host.join_code()).await.unwrap();
    assert_eq!(tickets(&relay.metrics().await), (2, 1, 0));

    let fresh = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    assert_eq!(tickets(&relay.metrics().await), (3, 1, 0));

    // Both peers are members like any other.
    resumed.send_to_host(b"resumed").unwrap();
    fresh.send_to_host(b"fresh").unwrap();
    let mut got = vec![recv(&host).await, recv(&host).await];
    got.sort();
    assert_eq!(
        got,
        vec![
            (resumed.local_peer(), b"resumed".to_vec().into()),
            (fresh.local_peer(), b"fresh".to_vec().into())
        ]
    );
}
