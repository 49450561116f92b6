//! Bad input from one client never harms another: garbage on the control stream, malformed and
//! oversize datagrams, the payload promise at QUIC's minimum MTU, and no path-MTU probing.

use std::time::Duration;

use baton_client::{AllocationOptions, Event, Host, Peer, PeerId};
use baton_protocol::{CloseCode, DropReason, ErrorCode, LeaveReason, ServerMessage};
use baton_tests::udp_tap::UdpTap;
use baton_tests::{
    event_matching, raw_connection, raw_create, raw_join, raw_read, recv, TestRelay, WAIT,
};

/// An allocation whose traffic must carry on undisturbed while others misbehave.
async fn bystanders(relay: &TestRelay) -> (Host, Peer) {
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .unwrap();
    let peer = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    (host, peer)
}

async fn still_fine(host: &Host, peer: &Peer, round: u8) {
    peer.send_to_host(&[round; 32]).unwrap();
    assert_eq!(recv(host).await, (PeerId(1), vec![round; 32].into()));
    host.broadcast(&[round; 8]).unwrap();
    assert_eq!(recv(peer).await, (PeerId::HOST, vec![round; 8].into()));
}

async fn closed_with(conn: &quinn::Connection) -> CloseCode {
    match tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(close) => {
            CloseCode::from_u64(close.error_code.into_inner())
        }
        other => panic!("closed otherwise: {other}"),
    }
}

#[tokio::test]
async fn garbage_on_the_control_stream_closes_only_that_client() {
    let relay = TestRelay::start().await;
    let (host, peer) = bystanders(&relay).await;
    still_fine(&host, &peer, 1).await;

    let cases: Vec<Vec<u8>> = vec![
        // A length prefix far beyond the maximum frame: refused before buffering.
        vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3],
        // An empty frame.
        vec![0, 0, 0, 0],
        // An unknown message type.
        vec![0, 0, 0, 5, 0x7E, 0, 0, 0, 1],
        // A known type with a truncated body.
        vec![0, 0, 0, 3, 0x02, 0, 0],
        // A join code with characters outside the alphabet.
        vec![
            0, 0, 0, 12, 0x02, 0, 0, 0, 1, 6, b'A', b'E', b'I', b'O', b'U', b'0',
        ],
    ];
    for (i, bytes) in cases.into_iter().enumerate() {
        let conn = raw_connection(&relay, |_| {}).await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        assert_eq!(
            closed_with(&conn).await,
            CloseCode::ProtocolViolation,
            "case {i}"
        );
        still_fine(&host, &peer, i as u8 + 2).await;
    }
    let metrics = relay.metrics().await;
    assert_eq!(metrics.get("baton_connections"), Some(2.0), "{metrics:?}");
}

#[tokio::test]
async fn malformed_and_oversize_datagrams_are_dropped_counted_and_reported() {
    let relay = TestRelay::start().await;
    let (host, peer) = bystanders(&relay).await;

    // A raw host: create an allocation by hand, then send what the SDK refuses to.
    let conn = raw_connection(&relay, |_| {}).await;
    let (_send, mut recv_stream, created) = raw_create(&conn).await;
    let ServerMessage::AllocationCreated {
        code, max_payload, ..
    } = created
    else {
        panic!("not created: {created:?}");
    };
    assert_eq!(max_payload, 1150);
    let victim = Peer::join(&relay.client(), code).await.unwrap();

    // Oversize: 1151 bytes of payload. The relay drops it and reports the limit.
    let mut big = vec![0u8, 1];
    big.extend(std::iter::repeat_n(0xAB, 1151));
    conn.send_datagram(big.into()).unwrap();
    // A heartbeat (empty) is dropped without a report; a 1-byte datagram is malformed
    // (shorter than the header), reported once.
    conn.send_datagram(bytes::Bytes::new()).unwrap();
    conn.send_datagram(vec![0u8].into()).unwrap();
    let mut reports = Vec::new();
    while reports.len() < 2 {
        match raw_read(&mut recv_stream).await {
            ServerMessage::DatagramsDropped {
                reason,
                count,
                value,
            } => reports.push((reason, count, value)),
            ServerMessage::PeerJoined { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    reports.sort_by_key(|r| r.0.to_u8());
    assert_eq!(
        reports,
        vec![
            (DropReason::TooLarge, 1, 1150),
            (DropReason::Malformed, 1, 0)
        ]
    );
    // The legitimate peer of that allocation got neither.
    assert!(baton_tests::try_recv(&victim, Duration::from_millis(200))
        .await
        .is_none());
    // And a well-formed datagram from the same client still goes through.
    conn.send_datagram(vec![0u8, 1, 42].into()).unwrap();
    assert_eq!(recv(&victim).await, (PeerId::HOST, vec![42].into()));
    still_fine(&host, &peer, 9).await;

    let metrics = relay.metrics().await;
    let dropped = metrics.by_label("baton_datagrams_dropped_total", "reason");
    assert_eq!(dropped.get("too_large"), Some(&1), "{metrics:?}");
    assert_eq!(dropped.get("malformed"), Some(&1), "{metrics:?}");
}

#[tokio::test]
async fn the_payload_limit_holds_at_the_minimum_quic_mtu() {
    let relay = TestRelay::start().await;
    // Both clients pinned to QUIC's minimum MTU, no path-MTU discovery.
    let pin = |t: &mut quinn::TransportConfig| {
        t.initial_mtu(1200).mtu_discovery_config(None);
    };
    let host = raw_connection(&relay, pin).await;
    let (_hs, _hr, created) = raw_create(&host).await;
    let ServerMessage::AllocationCreated { code, .. } = created else {
        panic!("create failed");
    };
    let peer = raw_connection(&relay, pin).await;
    let (_ps, _pr, joined) = raw_join(&peer, code).await;
    assert!(matches!(
        joined,
        ServerMessage::Joined {
            max_payload: 1150,
            ..
        }
    ));
    assert!(
        host.max_datagram_size().unwrap() >= 1150 + 2,
        "quinn allows {:?} at MTU 1200",
        host.max_datagram_size()
    );
    let payload: Vec<u8> = (0..1150u32).map(|i| (i % 251) as u8).collect();
    let mut datagram = vec![0u8, 1];
    datagram.extend_from_slice(&payload);
    host.send_datagram(datagram.into()).unwrap();
    let got = tokio::time::timeout(WAIT, peer.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..2], &[0, 0], "source stamped as the host");
    assert_eq!(&got[2..], &payload[..]);
}

#[tokio::test]
async fn a_client_that_never_creates_or_joins_is_closed_at_the_bind_deadline() {
    let relay = TestRelay::start_with(|c| {
        c.set_bind_timeout(Duration::from_millis(300)).unwrap();
    })
    .await;
    let conn = raw_connection(&relay, |_| {}).await;
    assert_eq!(closed_with(&conn).await, CloseCode::BindTimeout);
}

#[tokio::test]
async fn a_lobby_reserved_allocation_is_claimed_by_its_host() {
    let relay = TestRelay::start().await;
    let http = reqwest::Client::new();
    let reservation: serde_json::Value = http
        .post(format!("{}/v1/allocations", relay.admin_url()))
        .json(&serde_json::json!({ "max_peers": 4 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = reservation["join_code"].as_str().unwrap().to_owned();
    // A peer may join before the host has bound.
    let early = Peer::join(&relay.client(), code.as_str()).await.unwrap();
    assert_eq!(early.local_peer(), PeerId(1));
    let host = Host::claim(
        &relay.client(),
        reservation["allocation_id"].as_str().unwrap(),
        reservation["host_token"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(host.join_code().as_str(), code);
    let joined = event_matching(&early, WAIT, |e| matches!(e, Event::PeerJoined { .. })).await;
    assert_eq!(joined, Event::PeerJoined { peer: PeerId::HOST });
    early.send_to_host(b"you made it").unwrap();
    assert_eq!(recv(&host).await, (PeerId(1), b"you made it"[..].into()));
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_counted() {
    let relay = TestRelay::start_with(|c| {
        c.set_max_connections(2).unwrap();
    })
    .await;
    let (host, peer) = bystanders(&relay).await;
    let third = Peer::join(
        &relay.client().connect_timeout(Duration::from_secs(2)),
        host.join_code(),
    )
    .await;
    assert!(
        matches!(third, Err(baton_client::Error::RelayUnreachable { .. })),
        "{third:?}"
    );
    still_fine(&host, &peer, 1).await;
    let metrics = relay.metrics().await;
    assert_eq!(
        metrics.get("baton_connections_refused_total{reason=\"max_connections\"}"),
        Some(1.0),
        "{metrics:?}"
    );
    // A slot frees when a member leaves: once the relay counts one connection, a join works.
    peer.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.metrics().await.get("baton_connections") != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed peer's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Peer::join(&relay.client(), host.join_code()).await.unwrap();
}

/// Reads the `baton_snapshot_upload_bytes` gauge until `done` accepts it (bounded by `WAIT`);
/// returns the last value read.
async fn upload_bytes_until(relay: &TestRelay, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = relay
            .metrics()
            .await
            .get("baton_snapshot_upload_bytes")
            .expect("baton_snapshot_upload_bytes in /metrics") as i64;
        if done(value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_upload_cut_off_by_its_connection_gives_its_budget_back() {
    let relay = TestRelay::start().await;
    for round in 0..3u8 {
        let conn = raw_connection(&relay, |_| {}).await;
        let (_send, _recv, created) = raw_create(&conn).await;
        assert!(matches!(created, ServerMessage::AllocationCreated { .. }));
        // Half an upload, within the stream's window, then the connection dies.
        let mut upload = conn.open_uni().await.unwrap();
        upload.write_all(&[0x01]).await.unwrap();
        upload.write_all(&[round; 40_000]).await.unwrap();
        assert_eq!(upload_bytes_until(&relay, |v| v == 40_000).await, 40_000);
        conn.close(0u32.into(), b"gone");
        assert_eq!(
            upload_bytes_until(&relay, |v| v == 0).await,
            0,
            "round {round}: the aborted upload's budget is given back"
        );
    }
    // Uploads still work.
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .unwrap();
    assert_eq!(
        host.upload_snapshot(vec![7u8; 100_000]).await.unwrap(),
        100_000
    );
    assert_eq!(upload_bytes_until(&relay, |v| v == 0).await, 0);
}

/// Uploads `len` bytes of snapshot on `conn`; returns how the write ended.
async fn try_upload(conn: &quinn::Connection, len: usize) -> Result<(), quinn::WriteError> {
    let mut upload = conn.open_uni().await.unwrap();
    upload.write_all(&[0x01]).await?;
    upload.write_all(&vec![9u8; len]).await?;
    upload.finish().unwrap();
    Ok(())
}

/// Reads control messages until one that `want` accepts (at most 8).
async fn read_until(
    recv: &mut quinn::RecvStream,
    want: impl Fn(&ServerMessage) -> bool,
) -> ServerMessage {
    for _ in 0..8 {
        let msg = raw_read(recv).await;
        if want(&msg) {
            return msg;
        }
    }
    panic!("no matching control message");
}

#[tokio::test]
async fn snapshot_uploads_from_anyone_but_the_host_are_stopped_unread() {
    let relay = TestRelay::start().await;
    let host = raw_connection(&relay, |_| {}).await;
    let (_host_send, mut host_recv, created) = raw_create(&host).await;
    let ServerMessage::AllocationCreated { code, .. } = created else {
        panic!("{created:?}")
    };
    let peer = raw_connection(&relay, |_| {}).await;
    let (_peer_send, mut peer_recv, joined) = raw_join(&peer, code).await;
    assert!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    let unbound = raw_connection(&relay, |_| {}).await;

    // More than the stream's window: the writes can only end if the relay reads or stops.
    for (who, conn) in [("peer", &peer), ("unbound", &unbound)] {
        let written = tokio::time::timeout(WAIT, try_upload(conn, 1 << 20))
            .await
            .expect("upload ends in time");
        assert!(
            matches!(written, Err(quinn::WriteError::Stopped(code)) if code == 0u32.into()),
            "{who}: {written:?}"
        );
    }
    let rejected = read_until(&mut peer_recv, |m| {
        matches!(m, ServerMessage::SnapshotRejected { .. })
    })
    .await;
    assert_eq!(
        rejected,
        ServerMessage::SnapshotRejected {
            code: ErrorCode::NotHost,
            value: 0
        }
    );
    assert_eq!(upload_bytes_until(&relay, |v| v == 0).await, 0);

    // The host's upload is read and stored.
    try_upload(&host, 100_000).await.unwrap();
    let stored = read_until(&mut host_recv, |m| {
        matches!(
            m,
            ServerMessage::SnapshotStored { .. } | ServerMessage::SnapshotRejected { .. }
        )
    })
    .await;
    assert_eq!(stored, ServerMessage::SnapshotStored { len: 100_000 });
}

#[tokio::test]
async fn a_member_closed_for_a_protocol_violation_is_reported_as_one() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .unwrap();
    let conn = raw_connection(&relay, |_| {}).await;
    let (mut send, _recv, joined) = raw_join(&conn, host.join_code()).await;
    let ServerMessage::Joined { peer, .. } = joined else {
        panic!("join failed: {joined:?}");
    };
    // A frame of an unknown message type: the relay closes the connection for it.
    send.write_all(&[0, 0, 0, 5, 0x7E, 0, 0, 0, 1])
        .await
        .unwrap();
    assert_eq!(closed_with(&conn).await, CloseCode::ProtocolViolation);
    let left = event_matching(&host, WAIT, |e| matches!(e, Event::PeerLeft { .. })).await;
    assert_eq!(
        left,
        Event::PeerLeft {
            peer,
            reason: LeaveReason::ProtocolViolation
        }
    );
}

#[tokio::test]
async fn a_unidirectional_stream_that_ends_before_its_kind_byte_is_a_violation() {
    let relay = TestRelay::start().await;
    let (host, peer) = bystanders(&relay).await;
    let conn = raw_connection(&relay, |_| {}).await;
    let (_send, _recv, created) = raw_create(&conn).await;
    assert!(matches!(created, ServerMessage::AllocationCreated { .. }));
    let mut stream = conn.open_uni().await.unwrap();
    stream.finish().unwrap();
    assert_eq!(closed_with(&conn).await, CloseCode::ProtocolViolation);
    still_fine(&host, &peer, 1).await;
}

#[tokio::test]
async fn a_client_that_finishes_its_control_stream_leaves_and_is_closed_normally() {
    let relay = TestRelay::start().await;
    let (host, peer) = bystanders(&relay).await;
    let conn = raw_connection(&relay, |_| {}).await;
    let (mut send, _recv, joined) = raw_join(&conn, host.join_code()).await;
    let ServerMessage::Joined { peer: me, .. } = joined else {
        panic!("{joined:?}");
    };
    event_matching(
        &host,
        WAIT,
        |e| matches!(e, Event::PeerJoined { peer } if *peer == me),
    )
    .await;
    // A FIN at a frame boundary ends the session (SPEC section 2.3).
    send.finish().unwrap();
    assert_eq!(closed_with(&conn).await, CloseCode::Normal);
    assert_eq!(
        event_matching(&host, WAIT, |e| matches!(e, Event::PeerLeft { .. })).await,
        Event::PeerLeft {
            peer: me,
            reason: LeaveReason::Closed
        }
    );
    still_fine(&host, &peer, 1).await;
}

/// Receives datagrams on `session` until none comes for `quiet`, counting them by sender; panics
/// after [`WAIT`].
async fn count_until_quiet(
    session: &baton_client::Session,
    quiet: Duration,
) -> std::collections::HashMap<PeerId, usize> {
    let mut counts = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Some((from, _)) = baton_tests::try_recv(session, quiet).await {
        *counts.entry(from).or_default() += 1;
        assert!(tokio::time::Instant::now() < deadline, "no quiet moment");
    }
    counts
}

/// Waits for `rate_limited` reports on `session` until they count `total` drops, checking each
/// report's value; panics after [`WAIT`].
async fn rate_limited_reports(session: &baton_client::Session, total: u64, limit: u32) {
    let mut reported = 0;
    while reported < total {
        let event = event_matching(session, WAIT, |e| {
            matches!(
                e,
                Event::DatagramsDropped {
                    reason: DropReason::RateLimited,
                    ..
                }
            )
        })
        .await;
        let Event::DatagramsDropped { count, value, .. } = event else {
            unreachable!()
        };
        assert_eq!(value, limit, "the report names the limit hit");
        reported += u64::from(count);
    }
    assert_eq!(reported, total, "every rate-limited drop is reported once");
}

#[tokio::test]
async fn a_client_over_its_datagram_rate_is_limited_alone() {
    const LIMIT: usize = 100;
    const SENT: usize = 1000;
    const FAIR: usize = 50;
    let relay = TestRelay::start_with(|c| {
        c.set_client_datagrams_per_second(LIMIT).unwrap();
    })
    .await;
    let (host, member) = bystanders(&relay).await;
    let flooder = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    let (other_host, other_peer) = bystanders(&relay).await;

    // The flooder sends ten times its rate in one go; everyone else sends within theirs.
    let start = tokio::time::Instant::now();
    for i in 0..SENT as u32 {
        flooder.send_to_host(&i.to_be_bytes()).unwrap();
    }
    for round in 0..FAIR as u8 {
        member.send_to_host(&[round]).unwrap();
        host.broadcast(&[round]).unwrap();
        other_peer.send_to_host(&[round]).unwrap();
        other_host.broadcast(&[round]).unwrap();
    }
    let at_host = count_until_quiet(&host, Duration::from_millis(500)).await;
    let took = start.elapsed().as_secs_f64();

    // The same allocation's other member, and the other allocation, lost nothing.
    assert_eq!(
        at_host.get(&member.local_peer()),
        Some(&FAIR),
        "{at_host:?}"
    );
    let at_member = count_until_quiet(&member, Duration::from_millis(200)).await;
    assert_eq!(at_member.get(&PeerId::HOST), Some(&FAIR), "{at_member:?}");
    let at_other_host = count_until_quiet(&other_host, Duration::from_millis(200)).await;
    assert_eq!(at_other_host.get(&PeerId(1)), Some(&FAIR));
    let at_other_peer = count_until_quiet(&other_peer, Duration::from_millis(200)).await;
    assert_eq!(at_other_peer.get(&PeerId::HOST), Some(&FAIR));

    // The flooder got its burst and what refilled while it was being read, no more.
    let delivered = at_host.get(&flooder.local_peer()).copied().unwrap_or(0);
    let most = LIMIT + (LIMIT as f64 * took).ceil() as usize;
    assert!(
        (LIMIT..=most).contains(&delivered),
        "{delivered} delivered of {SENT}, expected {LIMIT} to {most}"
    );

    // Every other datagram was dropped, counted and reported to the flooder as rate_limited.
    let dropped = (SENT - delivered) as u64;
    let metrics = relay.metrics().await;
    let by_limit = metrics.by_label("baton_rate_limited_total", "limit");
    assert_eq!(
        by_limit.get("client_datagrams"),
        Some(&dropped),
        "{metrics:?}"
    );
    assert_eq!(
        metrics.get("baton_rate_limited_total{limit=\"client_bytes\"}"),
        Some(0.0),
        "{metrics:?}"
    );
    let by_reason = metrics.by_label("baton_datagrams_dropped_total", "reason");
    assert_eq!(by_reason.get("rate_limited"), Some(&dropped), "{metrics:?}");
    rate_limited_reports(&flooder, dropped, LIMIT as u32).await;
    // Nothing else was dropped: the relay forwarded the flooder's share and every one of the
    // others' datagrams (the host's broadcasts reach two members).
    assert_eq!(
        metrics.get("baton_datagrams_forwarded_total"),
        Some((delivered + 5 * FAIR) as f64),
        "{metrics:?}"
    );
}

#[tokio::test]
async fn an_allocation_over_its_bandwidth_cap_is_limited_alone() {
    const CAP: usize = 10_000;
    const PAYLOAD: usize = 1000;
    const EACH: usize = 20;
    let relay = TestRelay::start_with(|c| {
        c.set_allocation_bytes_per_second(CAP).unwrap();
    })
    .await;
    let (host, first) = bystanders(&relay).await;
    let second = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    let (other_host, other_peer) = bystanders(&relay).await;

    // Two members send 40,000 bytes together, four times the cap's burst; each is far within
    // its own limits. The other allocation, with a cap of its own, sends within it.
    const OTHER: usize = 8;
    let start = tokio::time::Instant::now();
    for i in 0..EACH {
        first.send_to_host(&[1; PAYLOAD]).unwrap();
        second.send_to_host(&[2; PAYLOAD]).unwrap();
        if i < OTHER {
            other_peer.send_to_host(&[3; PAYLOAD]).unwrap();
        }
    }
    let at_host = count_until_quiet(&host, Duration::from_millis(500)).await;
    let took = start.elapsed().as_secs_f64();
    let delivered: usize = at_host.values().sum();
    let most = (CAP + (CAP as f64 * took).ceil() as usize) / PAYLOAD;
    assert!(
        (CAP / PAYLOAD..=most).contains(&delivered),
        "{delivered} of {} delivered, expected {} to {most}: {at_host:?}",
        2 * EACH,
        CAP / PAYLOAD
    );
    // The other allocation's bucket is its own: all of its traffic passed.
    let at_other_host = count_until_quiet(&other_host, Duration::from_millis(200)).await;
    assert_eq!(at_other_host.get(&PeerId(1)), Some(&OTHER));

    let dropped = (2 * EACH - delivered) as u64;
    let metrics = relay.metrics().await;
    let by_limit = metrics.by_label("baton_rate_limited_total", "limit");
    assert_eq!(
        by_limit.get("allocation_bytes"),
        Some(&dropped),
        "{metrics:?}"
    );
    let by_reason = metrics.by_label("baton_datagrams_dropped_total", "reason");
    assert_eq!(by_reason.get("rate_limited"), Some(&dropped), "{metrics:?}");
    // Each sender is told of its own drops, with the cap as the value.
    let first_dropped = (EACH - at_host.get(&first.local_peer()).copied().unwrap_or(0)) as u64;
    let second_dropped = (EACH - at_host.get(&second.local_peer()).copied().unwrap_or(0)) as u64;
    assert_eq!(first_dropped + second_dropped, dropped);
    for (sender, dropped) in [(&first, first_dropped), (&second, second_dropped)] {
        if dropped > 0 {
            rate_limited_reports(sender, dropped, CAP as u32).await;
        }
    }
}

/// A QUIC client configuration that trusts `relay`'s certificate.
fn quic_client_config(relay: &TestRelay) -> quinn::ClientConfig {
    let pem = std::fs::read(relay.relay().cert_path()).unwrap();
    let crypto = baton_tests::tls::quic_crypto(&pem).unwrap();
    quinn::ClientConfig::new(std::sync::Arc::new(crypto))
}

/// A QUIC client endpoint bound to `ip` (any 127.0.0.0/8 address routes to loopback on Linux).
fn endpoint_at(ip: [u8; 4]) -> quinn::Endpoint {
    quinn::Endpoint::client(std::net::SocketAddr::from((ip, 0))).unwrap()
}

/// Whether a QUIC handshake from `endpoint` to `relay` completes.
async fn handshake(relay: &TestRelay, endpoint: &quinn::Endpoint) -> Option<quinn::Connection> {
    let connecting = endpoint
        .connect_with(quic_client_config(relay), relay.addr(), "localhost")
        .unwrap();
    tokio::time::timeout(WAIT, connecting).await.unwrap().ok()
}

#[tokio::test]
async fn connections_are_capped_per_address_and_per_24_and_released_when_they_end() {
    let relay = TestRelay::start_with(|c| {
        c.set_max_connections_per_ipv4_address(2).unwrap();
        c.set_max_connections_per_ipv4_24(3).unwrap();
    })
    .await;
    let (a, b, c) = (
        endpoint_at([127, 0, 0, 2]),
        endpoint_at([127, 0, 0, 3]),
        endpoint_at([127, 0, 0, 4]),
    );
    let first = handshake(&relay, &a).await.expect("first from .2");
    let _second = handshake(&relay, &a).await.expect("second from .2");
    assert!(handshake(&relay, &a).await.is_none(), "third from .2");
    let _third = handshake(&relay, &b).await.expect("one from .3");
    assert!(handshake(&relay, &c).await.is_none(), "the /24 is full");
    let metrics = relay.metrics().await;
    let refused = metrics.by_label("baton_connections_refused_total", "reason");
    assert_eq!(refused.get("per_address"), Some(&1), "{refused:?}");
    assert_eq!(refused.get("per_prefix"), Some(&1), "{refused:?}");
    // A connection that ends gives its slots back, once.
    first.close(0u32.into(), b"bye");
    let deadline = tokio::time::Instant::now() + WAIT;
    let again = loop {
        if let Some(conn) = handshake(&relay, &c).await {
            break conn;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        handshake(&relay, &a).await.is_none(),
        "the /24 is full again"
    );
    drop(again);
}

/// Captures the first Initial datagram of `count` QUIC connection attempts (each with its own
/// connection id) by pointing a client at a plain UDP socket that never answers.
async fn capture_initials(relay: &TestRelay, count: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = endpoint_at([127, 0, 0, 1]);
    let _attempts: Vec<_> = (0..count)
        .map(|_| {
            client
                .connect_with(
                    quic_client_config(relay),
                    sink.local_addr().unwrap(),
                    "localhost",
                )
                .unwrap()
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 2048];
    while initials.len() < count {
        let (n, _) = tokio::time::timeout(WAIT, sink.recv_from(&mut buf))
            .await
            .expect("an Initial")
            .unwrap();
        let packet = &buf[..n];
        // Long header: form bit, then version (4), DCID length (1), DCID.
        assert!(packet[0] & 0x80 != 0 && n >= 1200, "not an Initial");
        let dcid = packet[6..6 + usize::from(packet[5])].to_vec();
        if seen.insert(dcid) {
            initials.push(packet.to_vec());
        }
    }
    client.close(0u32.into(), b"");
    initials
}

#[tokio::test]
async fn half_open_handshakes_get_a_retry_and_hold_no_connection_slot() {
    const HALF_OPEN: usize = 12;
    let relay = TestRelay::start_with(|c| {
        c.set_max_connections(3).unwrap();
        c.set_handshake_retry_threshold(2).unwrap();
    })
    .await;
    // Initials that are never followed up, each from its own source address and port.
    let initials = capture_initials(&relay, HALF_OPEN).await;
    let mut sockets = Vec::new();
    for (i, initial) in initials.iter().enumerate() {
        let socket =
            std::net::UdpSocket::bind(("127.0.0.".to_owned() + &(10 + i).to_string(), 0)).unwrap();
        socket.send_to(initial, relay.addr()).unwrap();
        sockets.push(socket);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = relay.metrics().await;
        let (in_flight, retries) = (
            m.value("baton_handshakes_in_flight"),
            m.value("baton_retries_sent_total"),
        );
        if in_flight == 2.0 && retries == (HALF_OPEN - 2) as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "in flight {in_flight}, retries {retries}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Real clients still get in: they pass the Retry, and half-open handshakes hold none of
    // the three connection slots.
    let (host, peer) = bystanders(&relay).await;
    still_fine(&host, &peer, 1).await;
    let m = relay.metrics().await;
    assert_eq!(m.value("baton_handshakes_in_flight"), 2.0);
    assert!(m.value("baton_retries_sent_total") >= (HALF_OPEN) as f64);
    assert_eq!(m.value("baton_connections"), 2.0);
}

/// Neither side probes the path MTU (SPEC 2.1): every packet between the SDK and the relay,
/// handshake, control, datagrams and a snapshot upload, stays within QUIC's 1200 bytes. The
/// same tap shows that a client with quinn's default transport does probe, so the tap sees
/// probes and the waiting window is long enough.
#[tokio::test]
async fn neither_the_relay_nor_the_sdk_probes_the_path_mtu() {
    let relay = TestRelay::start().await;

    // Control: quinn's defaults probe upwards right after the handshake.
    let control_tap = UdpTap::start(relay.addr()).await.unwrap();
    let pem = std::fs::read(relay.relay().cert_path()).unwrap();
    let crypto = baton_tests::tls::quic_crypto(&pem).unwrap();
    let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let started = std::time::Instant::now();
    let control = endpoint
        .connect_with(config, control_tap.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while control_tap.largest_up() <= 1200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a client with quinn's defaults never sent a datagram over 1200 bytes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let probe_after = started.elapsed();
    control.close(0u32.into(), b"done");

    // The SDK through its own tap: create, a peer joins, datagrams both ways, a 64 KiB
    // snapshot upload, then at least four times as long as the control took to probe.
    let tap = UdpTap::start(relay.addr()).await.unwrap();
    let via_tap = baton_client::ClientConfig::new(
        tap.addr,
        baton_client::Trust::Fingerprint(relay.relay().fingerprint()),
    );
    let started = std::time::Instant::now();
    let host = Host::create(&via_tap, AllocationOptions::default())
        .await
        .unwrap();
    let peer = Peer::join(&relay.client(), host.join_code()).await.unwrap();
    for round in 0..10u8 {
        still_fine(&host, &peer, round).await;
    }
    let snapshot: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8).collect();
    host.upload_snapshot(snapshot).await.unwrap();
    let window = (probe_after * 4).max(Duration::from_millis(500));
    if let Some(rest) = window.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    still_fine(&host, &peer, 99).await;
    assert!(
        tap.largest_up() <= 1200,
        "SDK sent {} bytes",
        tap.largest_up()
    );
    assert!(
        tap.largest_down() <= 1200,
        "relay sent {} bytes",
        tap.largest_down()
    );
    // The tap saw real traffic: the snapshot upload filled packets to the MTU.
    assert!(tap.largest_up() >= 1100, "largest {}", tap.largest_up());
}
