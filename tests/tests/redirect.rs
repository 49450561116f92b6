//! The SDK follows a fleet's `Redirect` (SPEC section 5.3) over real QUIC: a scripted relay
//! answers every `Join` or `Rejoin` with a `Redirect`, and the peer ends up in the real relay
//! the redirect names, with the same trust, the redirect's server name and the same request.
//! A second redirect, a redirect back to the same relay, one to an address where nothing
//! answers, or one naming a server name the target's certificate does not cover, fail with a
//! typed error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_client::{
    AllocationOptions, CertificateDer, ClientConfig, Error, Event, Host, Peer, PeerId, Trust,
};
use baton_protocol::frame::{check_len, DEFAULT_MAX_FRAME_LEN};
use baton_protocol::{ClientMessage, CloseCode, ServerMessage};
use baton_tests::{event_matching, recv, TestRelay, WAIT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use tokio::sync::mpsc;

/// The name in the scripted relay's certificate. The real relay's development certificate does
/// not cover it, and the scripted relay's does not cover `localhost`: a client that reaches
/// the real relay after a redirect must have used the redirect's server name.
const REDIRECTOR_NAME: &str = "redirector.test";

/// What the scripted relay saw of one connection: the request, and the close code the client
/// closed with after the redirect (`None` if it ended otherwise).
#[derive(Debug)]
struct Seen {
    request: ClientMessage,
    close: Option<CloseCode>,
}

/// A scripted relay of a fleet that holds nothing: every connection's first request is
/// answered with a `Redirect`.
struct Redirector {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    /// The certificate's private key (PKCS #8 DER), for a second node with the same identity.
    key: Vec<u8>,
    /// Connection attempts accepted so far, counted before their handshake runs (so before
    /// the client can learn anything from them).
    accepted: Arc<AtomicUsize>,
}

impl Redirector {
    /// Listens on loopback with a fresh self-signed certificate for [`REDIRECTOR_NAME`] and
    /// Baton's ALPN.
    fn bind() -> Redirector {
        let generated =
            rcgen::generate_simple_self_signed(vec![REDIRECTOR_NAME.into()]).expect("cert");
        Self::bind_as(
            generated.cert.der().clone(),
            generated.key_pair.serialize_der(),
        )
    }

    /// Another node with the same certificate as `self` (as the nodes of a fleet that pinning
    /// clients use share one), listening on an address of its own.
    fn bind_beside(&self) -> Redirector {
        Self::bind_as(self.cert.clone(), self.key.clone())
    }

    fn bind_as(cert: CertificateDer<'static>, key_der: Vec<u8>) -> Redirector {
        let key = PrivatePkcs8KeyDer::from(key_der.clone());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())
            .expect("server certificate");
        tls.alpn_protocols = vec![baton_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC TLS");
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint =
            quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = endpoint.local_addr().expect("local address");
        Redirector {
            endpoint,
            addr,
            cert,
            key: key_der,
            accepted: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Answers every connection's first request with a `Redirect` to `to`, presenting
    /// `server_name`; reports each connection once the client has closed it.
    fn redirect_to(&self, to: SocketAddr, server_name: &str) -> mpsc::UnboundedReceiver<Seen> {
        let (tx, rx) = mpsc::unbounded_channel();
        let endpoint = self.endpoint.clone();
        let server_name = server_name.to_owned();
        let accepted = self.accepted.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let conn = incoming.await.expect("handshake");
                let (mut send, mut recv) = conn.accept_bi().await.expect("control stream");
                let request = read_request(&mut recv).await;
                let redirect = ServerMessage::Redirect {
                    request_id: request.request_id(),
                    address: to,
                    server_name: server_name.clone(),
                };
                send.write_all(&redirect.to_frame()).await.expect("write");
                let close = match conn.closed().await {
                    quinn::ConnectionError::ApplicationClosed(close) => {
                        Some(CloseCode::from_u64(close.error_code.into_inner()))
                    }
                    _ => None,
                };
                let _ = tx.send(Seen { request, close });
            }
        });
        rx
    }
}

/// Reads one framed client request.
async fn read_request(recv: &mut quinn::RecvStream) -> ClientMessage {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.expect("length prefix");
    let len = check_len(prefix, DEFAULT_MAX_FRAME_LEN).expect("frame length");
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.expect("frame body");
    ClientMessage::decode(&body).expect("decodable request")
}

/// The next connection a redirector saw, or a panic after [`WAIT`].
async fn seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the redirector saw a connection in time")
        .expect("redirector running")
}

/// The real relay's development certificate.
fn relay_cert(relay: &TestRelay) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(relay.relay().cert_path())
        .expect("relay certificate file")
        .next()
        .expect("a certificate")
        .expect("readable certificate")
}

/// A client configuration aimed at `redirector`, trusting its certificate and the real
/// relay's as roots (the same trust is used after a redirect), checking certificates for
/// [`REDIRECTOR_NAME`].
fn client_of(redirector: &Redirector, relay: &TestRelay) -> ClientConfig {
    ClientConfig::new(
        redirector.addr,
        Trust::Certificates(vec![redirector.cert.clone(), relay_cert(relay)]),
    )
    .server_name(REDIRECTOR_NAME)
    .connect_timeout(Duration::from_secs(3))
    .request_timeout(Duration::from_secs(3))
}

/// A 4-character base64url stand-in credential: the open test relay ignores it, but the SDK
/// must send it again after the redirect.
const CREDENTIAL: &str = "AQ-_";

#[tokio::test]
async fn a_redirected_join_lands_on_the_relay_holding_the_allocation() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create allocation");
    // A first peer joins directly, so the redirected one gets id 2, not the first free id.
    let first = Peer::join(&relay.client(), host.join_code())
        .await
        .expect("direct join");
    assert_eq!(first.local_peer(), PeerId(1));

    let redirector = Redirector::bind();
    let mut seen_rx = redirector.redirect_to(relay.addr(), "localhost");
    let config = client_of(&redirector, &relay).credential(CREDENTIAL);
    let peer = Peer::join(&config, host.join_code())
        .await
        .expect("join through the redirect");

    // The redirector got the join, and the client closed that connection normally.
    let seen = seen(&mut seen_rx).await;
    assert_eq!(
        seen.request,
        ClientMessage::Join {
            request_id: 1,
            code: host.join_code(),
            credential: Some(CREDENTIAL.into()),
        }
    );
    assert_eq!(seen.close, Some(CloseCode::Normal));

    // The session is the real relay's, with the id it gave out.
    assert_eq!(peer.relay_addr(), relay.addr());
    assert_eq!(peer.local_peer(), PeerId(2));
    assert_eq!(peer.allocation(), host.allocation());
    assert_eq!(peer.members(), vec![PeerId::HOST, PeerId(1), PeerId(2)]);
    event_matching(
        &host,
        WAIT,
        |e| matches!(e, Event::PeerJoined { peer } if *peer == PeerId(2)),
    )
    .await;

    // Datagrams flow both ways through the real relay.
    peer.send_to_host(b"via redirect").expect("send");
    assert_eq!(recv(&host).await, (PeerId(2), b"via redirect"[..].into()));
    host.send_to(PeerId(2), b"welcome").expect("send");
    assert_eq!(recv(&peer).await, (PeerId::HOST, b"welcome"[..].into()));
}

#[tokio::test]
async fn a_redirected_rejoin_takes_the_peer_id_back_on_the_relay_holding_it() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create allocation");
    let peer = Peer::join(&relay.client(), host.join_code())
        .await
        .expect("direct join");
    let token = peer.reconnect_token();
    peer.close().await;
    event_matching(
        &host,
        WAIT,
        |e| matches!(e, Event::PeerLeft { peer, .. } if *peer == token.peer),
    )
    .await;

    let redirector = Redirector::bind();
    let mut seen_rx = redirector.redirect_to(relay.addr(), "127.0.0.1");
    let back = Peer::rejoin(&client_of(&redirector, &relay), &token)
        .await
        .expect("rejoin through the redirect");
    let seen = seen(&mut seen_rx).await;
    assert_eq!(
        seen.request,
        ClientMessage::Rejoin {
            request_id: 1,
            allocation: token.allocation,
            peer: token.peer,
            reconnect_token: token.token,
            credential: None,
        }
    );
    assert_eq!(seen.close, Some(CloseCode::Normal));

    assert_eq!(back.relay_addr(), relay.addr());
    assert_eq!(back.local_peer(), token.peer);
    event_matching(
        &host,
        WAIT,
        |e| matches!(e, Event::PeerRejoined { peer } if *peer == token.peer),
    )
    .await;
    back.send_to_host(b"back").expect("send");
    assert_eq!(recv(&host).await, (token.peer, b"back"[..].into()));
}

#[tokio::test]
async fn a_second_redirect_is_a_redirect_loop() {
    let relay = TestRelay::start().await;
    let first = Redirector::bind();
    let second = first.bind_beside();
    let mut first_rx = first.redirect_to(second.addr, REDIRECTOR_NAME);
    let mut second_rx = second.redirect_to(first.addr, REDIRECTOR_NAME);

    let result = Peer::join(&client_of(&first, &relay), "BCDF78").await;
    match result {
        Err(Error::RedirectLoop { relay, target }) => {
            assert_eq!((relay, target), (second.addr, first.addr));
        }
        other => panic!("expected a redirect loop, got {other:?}"),
    }
    // Each was asked once, and each connection was closed normally.
    for rx in [&mut first_rx, &mut second_rx] {
        let seen = seen(rx).await;
        assert!(matches!(seen.request, ClientMessage::Join { .. }));
        assert_eq!(seen.close, Some(CloseCode::Normal));
    }
    assert_eq!(
        first.accepted.load(Ordering::SeqCst),
        1,
        "the first relay was asked again"
    );
    assert_eq!(second.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_back_to_the_same_relay_is_a_redirect_loop() {
    let relay = TestRelay::start().await;
    let redirector = Redirector::bind();
    let mut seen_rx = redirector.redirect_to(redirector.addr, REDIRECTOR_NAME);

    let result = Peer::join(&client_of(&redirector, &relay), "BCDF78").await;
    match result {
        Err(Error::RedirectLoop { relay, target }) => {
            assert_eq!((relay, target), (redirector.addr, redirector.addr));
        }
        other => panic!("expected a redirect loop, got {other:?}"),
    }
    assert_eq!(seen(&mut seen_rx).await.close, Some(CloseCode::Normal));
    // The SDK did not connect again.
    assert_eq!(redirector.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_to_an_unreachable_address_fails_within_the_connect_timeout() {
    let relay = TestRelay::start().await;
    // A UDP socket that is bound but never read: nothing answers and no ICMP error comes back.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("local address");
    let redirector = Redirector::bind();
    let _seen_rx = redirector.redirect_to(silent_addr, "localhost");
    let connect_timeout = Duration::from_secs(1);
    let config = client_of(&redirector, &relay).connect_timeout(connect_timeout);

    let started = Instant::now();
    let result = Peer::join(&config, "BCDF78").await;
    let elapsed = started.elapsed();
    match result {
        Err(Error::RelayUnreachable { addr, .. }) => assert_eq!(addr, silent_addr),
        other => panic!("expected the redirect target to be unreachable, got {other:?}"),
    }
    // One handshake and request to the redirector (loopback, well under a second), then the
    // connect timeout towards the silent address, and no longer.
    assert!(elapsed >= connect_timeout, "gave up early: {elapsed:?}");
    assert!(
        elapsed < connect_timeout + Duration::from_secs(2),
        "took {elapsed:?} with a connect timeout of {connect_timeout:?}"
    );
}

#[tokio::test]
async fn a_redirect_naming_a_server_name_the_target_is_not_certified_for_is_refused() {
    let relay = TestRelay::start().await;
    let host = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create allocation");
    let redirector = Redirector::bind();
    // The real relay's certificate covers localhost and 127.0.0.1, not this name.
    let _seen_rx = redirector.redirect_to(relay.addr(), "elsewhere.test");
    let result = Peer::join(&client_of(&redirector, &relay), host.join_code()).await;
    assert!(
        matches!(result, Err(Error::UntrustedCertificate(_))),
        "{result:?}"
    );
}
