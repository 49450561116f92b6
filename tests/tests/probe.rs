//! NAT detection (SPEC 17.5) over real loopback QUIC: the relay's probe port answers `Probe`
//! with the address it sees and probe port 0, closes anything else as a violation, limits
//! each source, and the main port's `ObservedAddress` names it; the SDK measures its NAT kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_client::{AllocationOptions, DirectPolicy, Host, NatKind};
use baton_protocol::{ClientMessage, ServerMessage};
use baton_relay::{ProbeListen, Relay, RelayConfig, RelayError, TlsSource};
use baton_tests::{raw_client, raw_create, raw_read_any, tls, TestRelay, WAIT};

/// The probe endpoint's address (the test relay listens on 127.0.0.1, port 0: auto gives
/// another kernel-picked port there).
fn probe_addr(relay: &TestRelay) -> SocketAddr {
    let addr = relay.relay().probe_addr().expect("the probe endpoint runs");
    assert_eq!(addr.ip(), relay.addr().ip());
    assert_ne!(addr.port(), 0);
    assert_ne!(addr.port(), relay.addr().port());
    addr
}

/// A QUIC client configuration trusting the relay's certificate.
fn trusting(relay: &TestRelay) -> quinn::ClientConfig {
    let pem = std::fs::read(relay.relay().cert_path()).expect("relay certificate");
    let crypto = tls::quic_crypto(&pem).expect("QUIC TLS");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A client endpoint on `local` and its connection to `target`, trusting the relay's
/// certificate. The handshake error, if any.
async fn dial(
    relay: &TestRelay,
    local: SocketAddr,
    target: SocketAddr,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    dial_with(trusting(relay), local, target).await
}

async fn dial_with(
    config: quinn::ClientConfig,
    local: SocketAddr,
    target: SocketAddr,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let endpoint = quinn::Endpoint::client(local).expect("bind");
    let conn = tokio::time::timeout(
        WAIT,
        endpoint
            .connect_with(config, target, "localhost")
            .expect("connect"),
    )
    .await
    .expect("handshake in time");
    (endpoint, conn)
}

/// Sends `bytes` on a new stream of `conn` and reads one frame back.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> ServerMessage {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(bytes).await.expect("write");
    raw_read_any(&mut recv).await
}

/// The application close code `conn` ends with.
async fn close_code(conn: &quinn::Connection) -> u64 {
    match tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
        other => panic!("not closed by the relay: {other}"),
    }
}

#[tokio::test]
async fn a_probe_is_answered_with_the_address_the_relay_sees_and_no_probe_port() {
    let relay = TestRelay::start().await;
    let probe = probe_addr(&relay);
    let (endpoint, conn) = dial(&relay, "127.0.0.1:0".parse().unwrap(), probe).await;
    let conn = conn.expect("probe handshake");
    let reply = exchange(&conn, &ClientMessage::Probe.to_frame()).await;
    assert_eq!(
        reply,
        ServerMessage::ObservedAddress {
            address: endpoint.local_addr().unwrap(),
            probe_port: 0,
        }
    );
    conn.close(0u32.into(), b"");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answered = relay
            .metrics()
            .await
            .by_label("baton_nat_probes_total", "result")
            .get("answered")
            .copied();
        if answered == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{answered:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_main_port_names_the_probe_port_in_observed_address() {
    let relay = TestRelay::start().await;
    let probe = probe_addr(&relay);
    let (endpoint, conn) = raw_client(&relay, |_| {}).await;
    let (mut send, mut control, created) = raw_create(&conn).await;
    assert!(matches!(created, ServerMessage::AllocationCreated { .. }));
    assert_eq!(
        raw_read_any(&mut control).await,
        ServerMessage::ObservedAddress {
            address: endpoint.local_addr().unwrap(),
            probe_port: probe.port(),
        }
    );
    // On the main port, Probe is refused like any message a connection may not send.
    send.write_all(&ClientMessage::Probe.to_frame())
        .await
        .unwrap();
    assert_eq!(
        raw_read_any(&mut control).await,
        ServerMessage::Refused {
            request_id: 0,
            code: baton_protocol::ErrorCode::InvalidRequest,
            value: 0,
        }
    );
}

#[tokio::test]
async fn anything_but_one_probe_on_the_probe_port_is_a_violation() {
    let relay = TestRelay::start().await;
    let probe = probe_addr(&relay);
    let violation = u64::from(baton_protocol::CloseCode::ProtocolViolation.to_u32());
    // Another message first.
    let (_endpoint, conn) = dial(&relay, "127.0.0.1:0".parse().unwrap(), probe).await;
    let conn = conn.expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let create = ClientMessage::CreateAllocation {
        request_id: 1,
        max_peers: 0,
        code_ttl_secs: 0,
        credential: None,
        host_loss_timeout_ms: 0,
    };
    send.write_all(&create.to_frame()).await.unwrap();
    assert_eq!(close_code(&conn).await, violation);
    // A second Probe after the first was answered.
    let (_endpoint, conn) = dial(&relay, "127.0.0.1:0".parse().unwrap(), probe).await;
    let conn = conn.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&ClientMessage::Probe.to_frame())
        .await
        .unwrap();
    assert!(matches!(
        raw_read_any(&mut recv).await,
        ServerMessage::ObservedAddress { probe_port: 0, .. }
    ));
    send.write_all(&ClientMessage::Probe.to_frame())
        .await
        .unwrap();
    assert_eq!(close_code(&conn).await, violation);
}

#[tokio::test]
async fn a_flood_from_one_address_is_refused_and_another_address_is_still_served() {
    let relay = TestRelay::start().await;
    let probe = probe_addr(&relay);
    // Burst 8, then 2 a second: 16 attempts at once cannot all get in.
    let config = trusting(&relay);
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let config = config.clone();
        attempts.spawn(async move {
            let (endpoint, conn) = dial_with(config, "127.0.0.1:0".parse().unwrap(), probe).await;
            (endpoint, conn.is_ok())
        });
    }
    let mut refused = 0u64;
    let mut endpoints = Vec::new();
    while let Some(done) = attempts.join_next().await {
        let (endpoint, admitted) = done.expect("attempt");
        refused += u64::from(!admitted);
        endpoints.push(endpoint);
    }
    assert!((4..=8).contains(&refused), "refused {refused} of 16");
    // Another source (127.0.0.2 is loopback too) has its own budget.
    let (endpoint, conn) = dial(&relay, "127.0.0.2:0".parse().unwrap(), probe).await;
    let conn = conn.expect("another source gets in");
    let reply = exchange(&conn, &ClientMessage::Probe.to_frame()).await;
    assert_eq!(
        reply,
        ServerMessage::ObservedAddress {
            address: endpoint.local_addr().unwrap(),
            probe_port: 0,
        }
    );
    let counted = relay
        .metrics()
        .await
        .by_label("baton_nat_probes_total", "result");
    assert_eq!(counted.get("refused").copied(), Some(refused));
}

#[tokio::test]
async fn probe_listen_off_runs_no_probe_port_and_a_taken_port_fails_startup() {
    let relay = TestRelay::start_with(|c| {
        c.set_probe_listen(ProbeListen::Off).unwrap();
    })
    .await;
    assert_eq!(relay.relay().probe_addr(), None);
    let (_endpoint, conn) = raw_client(&relay, |_| {}).await;
    let (_send, mut control, _) = raw_create(&conn).await;
    assert!(matches!(
        raw_read_any(&mut control).await,
        ServerMessage::ObservedAddress { probe_port: 0, .. }
    ));

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = None;
    config.tls = TlsSource::SelfSigned {
        data_dir: dir.path().to_owned(),
        extra_names: Vec::new(),
    };
    config
        .set_probe_listen(ProbeListen::Addr(taken.local_addr().unwrap()))
        .unwrap();
    match Relay::bind(config).await {
        Err(RelayError::Bind { addr, .. }) => assert_eq!(addr, taken.local_addr().unwrap()),
        other => panic!("not a bind error: {other:?}"),
    }
}

/// On loopback there is no NAT: the probe port sees the same address as the main port.
#[tokio::test]
async fn a_session_preferring_direct_paths_measures_an_endpoint_independent_nat_on_loopback() {
    let relay = TestRelay::start().await;
    let host = Host::create(
        &relay.client().direct(DirectPolicy::Prefer),
        AllocationOptions::default(),
    )
    .await
    .expect("create");
    let deadline = tokio::time::Instant::now() + WAIT;
    while host.nat() != NatKind::EndpointIndependent {
        assert!(
            tokio::time::Instant::now() < deadline,
            "NAT kind {}",
            host.nat()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without direct paths nothing is measured.
    let never = Host::create(&relay.client(), AllocationOptions::default())
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(never.nat(), NatKind::Unknown);
}

/// A relay dropped without `shutdown` lets its probe port go too.
#[tokio::test]
async fn dropping_the_relay_frees_its_probe_port() {
    let relay = TestRelay::start().await;
    let probe = probe_addr(&relay);
    drop(relay);
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::net::UdpSocket::bind(probe).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{probe} still taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
