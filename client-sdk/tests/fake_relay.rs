//! The SDK against a scripted, in-process fake relay over loopback QUIC: each test plays the
//! relay's side of the protocol by hand (using `baton-protocol`'s codec), so the SDK's
//! connection, framing, request matching, events and close handling are tested without the real
//! relay.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_client::{
    AllocationOptions, ClientConfig, DisconnectReason, DropReason, Error, Event, Host, Peer, Trust,
};
use baton_protocol::frame::{check_len, DEFAULT_MAX_FRAME_LEN};
use baton_protocol::{
    AllocationId, ClientMessage, CloseCode, ErrorCode, JoinCode, LeaveReason, PeerId, ServerMessage,
};
use bytes::Bytes;
use quinn::rustls;
use quinn::VarInt;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// Fails the test instead of hanging it.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("test step timed out")
}

struct FakeRelay {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    pem: String,
}

impl FakeRelay {
    fn start() -> Self {
        Self::start_with_alpn(baton_protocol::ALPN)
    }

    fn start_with_alpn(alpn: &[u8]) -> Self {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = generated.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())
            .unwrap();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        FakeRelay {
            endpoint,
            addr,
            cert,
            pem: generated.cert.pem(),
        }
    }

    fn config(&self) -> ClientConfig {
        ClientConfig::new(self.addr, Trust::fingerprint_of(&self.cert))
            .connect_timeout(Duration::from_secs(3))
            .request_timeout(Duration::from_secs(3))
    }

    /// Accepts one client and its control stream.
    async fn accept(&self) -> RelayConn {
        let incoming = self.endpoint.accept().await.unwrap();
        let conn = incoming.await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        RelayConn { conn, send, recv }
    }

    /// Accepts one connection attempt and lets its handshake run (and fail).
    fn accept_failing(&self) {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            if let Some(incoming) = endpoint.accept().await {
                let _ = incoming.await;
            }
        });
    }
}

struct RelayConn {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl RelayConn {
    async fn read(&mut self) -> ClientMessage {
        let mut prefix = [0u8; 4];
        self.recv.read_exact(&mut prefix).await.unwrap();
        let len = check_len(prefix, DEFAULT_MAX_FRAME_LEN).unwrap();
        let mut body = vec![0u8; len];
        self.recv.read_exact(&mut body).await.unwrap();
        ClientMessage::decode(&body).unwrap()
    }

    async fn write(&mut self, message: ServerMessage) {
        self.send.write_all(&message.to_frame()).await.unwrap();
    }

    fn close(&self, code: CloseCode) {
        self.conn.close(
            VarInt::from_u32(code.to_u32()),
            code.description().as_bytes(),
        );
    }

    /// The application close code the client closed with.
    async fn client_close_code(&self) -> CloseCode {
        match self.conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                CloseCode::from_u64(close.error_code.into_inner())
            }
            other => panic!("client did not close with a code: {other:?}"),
        }
    }
}

fn code() -> JoinCode {
    JoinCode::parse("BCDF78").unwrap()
}

const ALLOCATION: AllocationId = AllocationId(0xba70_0000_0000_0001);

/// A host bound through the fake relay, with the relay's end of its connection.
async fn bound_host(relay: &FakeRelay, config: &ClientConfig) -> (Host, RelayConn) {
    let client = Host::create(config, AllocationOptions::default().max_peers(4));
    let server = async {
        let mut conn = relay.accept().await;
        let request_id = match conn.read().await {
            ClientMessage::CreateAllocation {
                request_id,
                max_peers: 4,
                code_ttl_secs: 0,
                host_loss_timeout_ms: _,
                credential: None,
            } => request_id,
            other => panic!("unexpected {other:?}"),
        };
        conn.write(ServerMessage::AllocationCreated {
            request_id,
            allocation: ALLOCATION,
            code: code(),
            code_ttl_secs: 300,
            max_peers: 4,
            max_payload: 1150,
            reconnect_token: [7; 16],
            host_loss_timeout_ms: 1500,
        })
        .await;
        conn
    };
    let (host, conn) = within(async { tokio::join!(client, server) }).await;
    (host.unwrap(), conn)
}

/// A peer bound through the fake relay as peer 2, with host 0 and peer 1 present.
async fn bound_peer(relay: &FakeRelay) -> (Peer, RelayConn) {
    let config = relay.config();
    let client = Peer::join(&config, "bcdf78");
    let server = async {
        let mut conn = relay.accept().await;
        let request_id = match conn.read().await {
            ClientMessage::Join {
                request_id,
                code: c,
                credential: None,
            } if c == code() => request_id,
            other => panic!("unexpected {other:?}"),
        };
        conn.write(ServerMessage::Joined {
            request_id,
            allocation: ALLOCATION,
            peer: PeerId(2),
            max_payload: 1000,
            host: PeerId::HOST,
            reconnect_token: [9; 16],
            host_loss_timeout_ms: 1500,
            members: vec![PeerId(0), PeerId(1)],
        })
        .await;
        conn
    };
    let (peer, conn) = within(async { tokio::join!(client, server) }).await;
    (peer.unwrap(), conn)
}

#[tokio::test]
async fn host_creates_an_allocation_and_exchanges_datagrams() {
    let relay = FakeRelay::start();
    let (host, mut conn) = bound_host(&relay, &relay.config()).await;
    assert_eq!(host.join_code(), code());
    assert_eq!(host.code_ttl(), Duration::from_secs(300));
    assert_eq!(host.max_peers(), 4);
    assert_eq!(host.local_peer(), PeerId::HOST);
    assert_eq!(host.allocation(), ALLOCATION);
    assert_eq!(host.max_payload(), 1150);
    assert_eq!(host.members(), vec![PeerId::HOST]);

    conn.write(ServerMessage::PeerJoined { peer: PeerId(1) })
        .await;
    assert_eq!(
        within(host.next_event()).await,
        Some(Event::PeerJoined { peer: PeerId(1) })
    );
    assert_eq!(host.members(), vec![PeerId(0), PeerId(1)]);

    // Relay → client: source header + payload; too-short datagrams are skipped and counted.
    conn.conn.send_datagram(Bytes::from_static(&[7])).unwrap();
    conn.conn
        .send_datagram(Bytes::from_static(&[0, 1, b'h', b'i']))
        .unwrap();
    let (from, payload) = within(host.recv()).await.unwrap();
    assert_eq!((from, &payload[..]), (PeerId(1), &b"hi"[..]));
    assert_eq!(host.malformed_datagrams(), 1);

    // Client → relay: destination header + payload.
    host.send_to(PeerId(1), b"yo").unwrap();
    assert_eq!(
        &within(conn.conn.read_datagram()).await.unwrap()[..],
        &[0, 1, b'y', b'o']
    );
    host.broadcast(b"all").unwrap();
    assert_eq!(
        &within(conn.conn.read_datagram()).await.unwrap()[..],
        &[0xFF, 0xFF, b'a', b'l', b'l']
    );
    host.send_to(PeerId(1), &[0; 1150]).unwrap();
    assert!(matches!(
        host.send_to(PeerId(1), &[0; 1151]),
        Err(Error::PayloadTooLarge {
            len: 1151,
            limit: 1150
        })
    ));
    assert!(matches!(
        host.send_to(PeerId(0xFFFF), b"x"),
        Err(Error::UnknownPeer(PeerId(0xFFFF)))
    ));

    conn.write(ServerMessage::DatagramsDropped {
        reason: DropReason::Congested,
        count: 3,
        value: 1,
    })
    .await;
    assert_eq!(
        within(host.next_event()).await,
        Some(Event::DatagramsDropped {
            reason: DropReason::Congested,
            count: 3,
            value: 1
        })
    );

    host.close().await;
    assert_eq!(within(conn.client_close_code()).await, CloseCode::Normal);
    assert_eq!(
        within(host.next_event()).await,
        Some(Event::Disconnected {
            reason: DisconnectReason::ClosedLocally
        })
    );
    assert_eq!(within(host.next_event()).await, None);
    assert!(matches!(
        within(host.recv()).await,
        Err(Error::Disconnected(DisconnectReason::ClosedLocally))
    ));
    assert!(matches!(
        host.send_to(PeerId(1), b"late"),
        Err(Error::Disconnected(DisconnectReason::ClosedLocally))
    ));
}

#[tokio::test]
async fn host_requests_are_matched_to_replies() {
    let relay = FakeRelay::start();
    let (host, mut conn) = bound_host(&relay, &relay.config()).await;

    // Kick: the event and the reply share the stream; the reply completes the request.
    let server = async {
        let request_id = match conn.read().await {
            ClientMessage::Kick {
                request_id,
                peer: PeerId(1),
            } => request_id,
            other => panic!("unexpected {other:?}"),
        };
        conn.write(ServerMessage::PeerLeft {
            peer: PeerId(1),
            reason: LeaveReason::Kicked,
        })
        .await;
        conn.write(ServerMessage::Done { request_id }).await;
    };
    let (kicked, ()) = within(async { tokio::join!(host.kick(PeerId(1)), server) }).await;
    kicked.unwrap();
    assert_eq!(
        within(host.next_event()).await,
        Some(Event::PeerLeft {
            peer: PeerId(1),
            reason: LeaveReason::Kicked
        })
    );

    // Two requests in flight, answered in reverse order.
    let server = async {
        let first = conn.read().await;
        let second = conn.read().await;
        let (kick_id, revoke_id) = match (first, second) {
            (
                ClientMessage::Kick { request_id: k, .. },
                ClientMessage::RevokeCode { request_id: r },
            )
            | (
                ClientMessage::RevokeCode { request_id: r },
                ClientMessage::Kick { request_id: k, .. },
            ) => (k, r),
            other => panic!("unexpected {other:?}"),
        };
        assert_ne!(kick_id, revoke_id);
        conn.write(ServerMessage::Done {
            request_id: revoke_id,
        })
        .await;
        conn.write(ServerMessage::Refused {
            request_id: kick_id,
            code: ErrorCode::UnknownPeer,
            value: 9,
        })
        .await;
    };
    let (kicked, revoked, ()) =
        within(async { tokio::join!(host.kick(PeerId(9)), host.revoke_join_code(), server) }).await;
    assert!(
        matches!(kicked, Err(Error::UnknownPeer(PeerId(9)))),
        "{kicked:?}"
    );
    revoked.unwrap();
    assert!(host.join_code_revoked());
}

#[tokio::test]
async fn unanswered_requests_time_out_and_late_replies_are_ignored() {
    let relay = FakeRelay::start();
    let config = relay.config().request_timeout(Duration::from_millis(300));
    let (host, mut conn) = bound_host(&relay, &config).await;

    let result = within(host.kick(PeerId(1))).await;
    assert!(
        matches!(result, Err(Error::RequestTimedOut { timeout }) if timeout == Duration::from_millis(300)),
        "{result:?}"
    );
    let late_id = match conn.read().await {
        ClientMessage::Kick { request_id, .. } => request_id,
        other => panic!("unexpected {other:?}"),
    };
    conn.write(ServerMessage::Refused {
        request_id: late_id,
        code: ErrorCode::NotHost,
        value: 0,
    })
    .await;

    // The late reply must not complete the next request.
    let server = async {
        let request_id = match conn.read().await {
            ClientMessage::RevokeCode { request_id } => request_id,
            other => panic!("unexpected {other:?}"),
        };
        assert_ne!(request_id, late_id);
        conn.write(ServerMessage::Done { request_id }).await;
    };
    let (revoked, ()) = within(async { tokio::join!(host.revoke_join_code(), server) }).await;
    revoked.unwrap();
}

#[tokio::test]
async fn pending_requests_fail_with_the_disconnect_reason() {
    let relay = FakeRelay::start();
    let (host, mut conn) = bound_host(&relay, &relay.config()).await;
    let server = async {
        conn.read().await;
        conn.close(CloseCode::RelayShuttingDown);
    };
    let (kicked, ()) = within(async { tokio::join!(host.kick(PeerId(1)), server) }).await;
    assert!(
        matches!(
            kicked,
            Err(Error::Disconnected(DisconnectReason::RelayShuttingDown))
        ),
        "{kicked:?}"
    );
    assert_eq!(
        within(host.next_event()).await,
        Some(Event::Disconnected {
            reason: DisconnectReason::RelayShuttingDown
        })
    );
    // Requests after the end fail at once.
    assert!(matches!(
        within(host.revoke_join_code()).await,
        Err(Error::Disconnected(DisconnectReason::RelayShuttingDown))
    ));
}

#[tokio::test]
async fn peer_joins_and_learns_that_the_host_was_lost() {
    let relay = FakeRelay::start();
    let (peer, mut conn) = bound_peer(&relay).await;
    assert_eq!(peer.local_peer(), PeerId(2));
    assert_eq!(peer.max_payload(), 1000);
    assert_eq!(peer.members(), vec![PeerId(0), PeerId(1), PeerId(2)]);

    peer.send_to_host(b"ping").unwrap();
    assert_eq!(
        &within(conn.conn.read_datagram()).await.unwrap()[..],
        &[0, 0, b'p', b'i', b'n', b'g']
    );

    conn.write(ServerMessage::PeerLeft {
        peer: PeerId(1),
        reason: LeaveReason::Closed,
    })
    .await;
    // Let the event arrive before the close, as a relay would send it.
    assert_eq!(
        within(peer.next_event()).await,
        Some(Event::PeerLeft {
            peer: PeerId(1),
            reason: LeaveReason::Closed
        })
    );
    assert_eq!(peer.members(), vec![PeerId(0), PeerId(2)]);
    conn.close(CloseCode::HostLost(LeaveReason::TimedOut));

    assert_eq!(
        within(peer.next_event()).await,
        Some(Event::HostLost {
            host: PeerId(0),
            reason: LeaveReason::TimedOut,
            elected: None,
        })
    );
    let lost = DisconnectReason::HostLost(LeaveReason::TimedOut);
    assert_eq!(
        within(peer.next_event()).await,
        Some(Event::Disconnected {
            reason: lost.clone()
        })
    );
    assert_eq!(within(peer.next_event()).await, None);
    assert!(matches!(within(peer.recv()).await, Err(Error::Disconnected(r)) if r == lost));
    assert_eq!(peer.disconnect_reason(), Some(lost));
}

#[tokio::test]
async fn join_refusals_are_typed() {
    let relay = FakeRelay::start();
    type Case = (ErrorCode, u32, fn(&Error) -> bool);
    let cases: [Case; 5] = [
        (ErrorCode::NotFound, 0, |e| matches!(e, Error::CodeNotFound)),
        (ErrorCode::Expired, 0, |e| matches!(e, Error::CodeExpired)),
        (ErrorCode::Revoked, 0, |e| matches!(e, Error::CodeRevoked)),
        (ErrorCode::Closed, 0, |e| {
            matches!(e, Error::AllocationClosed)
        }),
        (ErrorCode::Full, 8, |e| {
            matches!(e, Error::AllocationFull { max_peers: 8 })
        }),
    ];
    for (code, value, expected) in cases {
        let config = relay.config();
        let client = Peer::join(&config, "BCDF78");
        let server = async {
            let mut conn = relay.accept().await;
            let request_id = conn.read().await.request_id();
            conn.write(ServerMessage::Refused {
                request_id,
                code,
                value,
            })
            .await;
            // The SDK closes a refused connection normally.
            assert_eq!(conn.client_close_code().await, CloseCode::Normal);
        };
        let (result, ()) = within(async { tokio::join!(client, server) }).await;
        let err = result.expect_err("join was refused");
        assert!(expected(&err), "{code}: {err:?}");
    }
}

#[tokio::test]
async fn a_close_before_the_bind_reply_is_a_disconnect() {
    let relay = FakeRelay::start();
    let config = relay.config();
    let client = Host::create(&config, AllocationOptions::default());
    let server = async {
        let mut conn = relay.accept().await;
        conn.read().await;
        conn.close(CloseCode::BindTimeout);
    };
    let (result, ()) = within(async { tokio::join!(client, server) }).await;
    assert!(
        matches!(
            result,
            Err(Error::Disconnected(DisconnectReason::BindTimeout))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn unknown_messages_are_skipped_and_bad_frames_close_the_connection() {
    let relay = FakeRelay::start();
    let (host, mut conn) = bound_host(&relay, &relay.config()).await;

    // A message type from a newer protocol: skipped.
    conn.send
        .write_all(&[0, 0, 0, 2, 0xEE, 0x01])
        .await
        .unwrap();
    conn.write(ServerMessage::PeerJoined { peer: PeerId(1) })
        .await;
    assert_eq!(
        within(host.next_event()).await,
        Some(Event::PeerJoined { peer: PeerId(1) })
    );

    // A frame longer than any message: the SDK closes with ProtocolViolation.
    conn.send.write_all(&[0, 1, 0, 0]).await.unwrap();
    assert_eq!(
        within(conn.client_close_code()).await,
        CloseCode::ProtocolViolation
    );
    match within(host.next_event()).await {
        Some(Event::Disconnected {
            reason: DisconnectReason::InvalidRelayMessage(detail),
        }) => assert!(detail.contains("65536"), "{detail}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_fingerprint_is_a_certificate_mismatch() {
    let relay = FakeRelay::start();
    relay.accept_failing();
    let config = ClientConfig::new(relay.addr, Trust::Fingerprint([0xAB; 32]));
    match within(Host::create(&config, AllocationOptions::default())).await {
        Err(Error::CertificateMismatch { expected, actual }) => {
            assert_eq!(expected, "ab".repeat(32));
            assert_eq!(
                actual,
                baton_client::format_fingerprint(&baton_client::fingerprint(&relay.cert))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn certificate_trust_accepts_the_relay_certificate_and_rejects_others() {
    let relay = FakeRelay::start();
    let dir = std::env::temp_dir().join(format!("baton-client-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.pem");
    std::fs::write(&path, &relay.pem).unwrap();
    let config = ClientConfig::new(relay.addr, Trust::CertificateFile(path));
    let (host, _conn) = bound_host(&relay, &config).await;
    assert_eq!(host.join_code(), code());
    std::fs::remove_dir_all(&dir).unwrap();

    relay.accept_failing();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let config = ClientConfig::new(
        relay.addr,
        Trust::Certificates(vec![other.cert.der().clone()]),
    );
    let result = within(Host::create(&config, AllocationOptions::default())).await;
    assert!(
        matches!(result, Err(Error::UntrustedCertificate(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_alpn_mismatch_is_a_protocol_version_mismatch() {
    let relay = FakeRelay::start();
    relay.accept_failing();
    let config = relay.config().alpn(b"baton/0".to_vec());
    let result = within(Host::create(&config, AllocationOptions::default())).await;
    assert!(
        matches!(result, Err(Error::ProtocolVersionMismatch)),
        "{result:?}"
    );

    // And the other way round: a relay of another version.
    let relay = FakeRelay::start_with_alpn(b"baton/4");
    relay.accept_failing();
    let result = within(Host::create(&relay.config(), AllocationOptions::default())).await;
    assert!(
        matches!(result, Err(Error::ProtocolVersionMismatch)),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_silent_address_is_unreachable() {
    // A UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let config = ClientConfig::new(addr, Trust::Fingerprint([0; 32]))
        .connect_timeout(Duration::from_millis(300));
    let result = within(Host::create(&config, AllocationOptions::default())).await;
    assert!(
        matches!(result, Err(Error::RelayUnreachable { addr: a, .. }) if a == addr),
        "{result:?}"
    );
}
