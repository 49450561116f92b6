//! Baton's keepalive rule, "a client silent for 10 s is gone", checked on a real QUIC
//! client/server pair with a simulated clock.
//!
//! The rule is enforced as QUIC's idle timeout: the relay's transport config
//! ([`baton_relay::transport_config`]) sets `max_idle_timeout = keepalive_timeout` and sends no
//! keep-alive pings of its own; the SDK pings every 2 s with a 10 s idle timeout. These tests run
//! quinn's sans-IO core (`quinn-proto`, the same crate and version `quinn` uses) with both
//! endpoints in memory and a hand-advanced `Instant`, so nothing sleeps and every instant is
//! exact and reproducible.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_relay::RelayConfig;
use bytes::BytesMut;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, EndpointConfig, TransportConfig};
use quinn_proto::{Connection, ConnectionHandle, DatagramEvent, Endpoint, Event};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Size of the simulated clock's steps when a test advances time.
const STEP: Duration = Duration::from_millis(100);
/// The SDK's keep-alive interval.
const SDK_KEEP_ALIVE: Duration = baton_client::defaults::KEEP_ALIVE_INTERVAL;
/// Upper bound on loop iterations anywhere in the driver, so a bug fails instead of hanging.
const MAX_ITERATIONS: usize = 100_000;

/// One side of the simulated link: a sans-IO endpoint, its single connection, and what it has
/// observed.
struct Node {
    endpoint: Endpoint,
    addr: SocketAddr,
    conn: Option<(ConnectionHandle, Connection)>,
    /// Datagrams delivered to this node, not yet handed to [`Endpoint::handle`].
    inbound: VecDeque<BytesMut>,
    /// Datagrams this node sent, not yet routed.
    outbound: Vec<BytesMut>,
    /// Whether `Event::Connected` was reported.
    connected: bool,
    /// The first `Event::ConnectionLost`, with the simulated instant it was reported at.
    lost: Option<(Instant, ConnectionError)>,
}

impl Node {
    fn new(endpoint: Endpoint, addr: SocketAddr) -> Self {
        Node {
            endpoint,
            addr,
            conn: None,
            inbound: VecDeque::new(),
            outbound: Vec::new(),
            connected: false,
            lost: None,
        }
    }

    /// Queues every datagram of `transmit` (written into `buf`) for routing.
    fn push_transmit(&mut self, transmit: &quinn::Transmit, buf: &[u8]) {
        let data = &buf[..transmit.size];
        let segment = transmit.segment_size.unwrap_or(transmit.size).max(1);
        self.outbound
            .extend(data.chunks(segment).map(BytesMut::from));
    }

    /// Runs this node at `now`: feeds it the delivered datagrams, fires expired timers, passes
    /// events between endpoint and connection, collects what it wants to send and what it
    /// reports.
    fn drive(&mut self, now: Instant, remote: SocketAddr) {
        let mut buf = Vec::new();
        while let Some(datagram) = self.inbound.pop_front() {
            buf.clear();
            match self
                .endpoint
                .handle(now, remote, None, None, datagram, &mut buf)
            {
                Some(DatagramEvent::NewConnection(incoming)) => {
                    assert!(
                        self.conn.is_none(),
                        "second connection on a one-client link"
                    );
                    buf.clear();
                    match self.endpoint.accept(incoming, now, &mut buf, None) {
                        Ok(accepted) => self.conn = Some(accepted),
                        Err(e) => {
                            if let Some(t) = e.response {
                                self.push_transmit(&t, &buf);
                            }
                            panic!("server refused the connection: {:?}", e.cause);
                        }
                    }
                }
                Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                    if let Some((own, conn)) = self.conn.as_mut() {
                        assert_eq!(*own, ch);
                        conn.handle_event(event);
                    }
                }
                Some(DatagramEvent::Response(t)) => self.push_transmit(&t, &buf),
                None => {}
            }
        }

        let Some((ch, conn)) = self.conn.as_mut() else {
            return;
        };
        let ch = *ch;
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        for _ in 0..MAX_ITERATIONS {
            let mut progressed = false;
            while let Some(event) = conn.poll_endpoint_events() {
                progressed = true;
                if let Some(back) = self.endpoint.handle_event(ch, event) {
                    conn.handle_event(back);
                }
            }
            buf.clear();
            while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
                progressed = true;
                let data = &buf[..t.size];
                let segment = t.segment_size.unwrap_or(t.size).max(1);
                self.outbound
                    .extend(data.chunks(segment).map(BytesMut::from));
                buf.clear();
            }
            while let Some(event) = conn.poll() {
                progressed = true;
                match event {
                    Event::Connected => self.connected = true,
                    Event::ConnectionLost { reason } => {
                        self.lost.get_or_insert((now, reason));
                    }
                    _ => {}
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("connection kept producing output at one instant");
    }

    fn next_timeout(&mut self) -> Option<Instant> {
        self.conn.as_mut().and_then(|(_, c)| c.poll_timeout())
    }
}

/// An in-memory QUIC client/server pair on a simulated clock, after quinn-proto's own test
/// `Pair` (src/tests/util.rs), reduced to what these tests need.
///
/// The link has zero latency and never loses or reorders packets, except that
/// client→server delivery can be cut (`client_to_server_open = false`): from then on every
/// datagram the client sends is dropped, as if the client had frozen or its network had
/// vanished. Time only moves in [`Pair::advance`]; timers fire exactly at their deadlines.
struct Pair {
    client: Node,
    server: Node,
    /// Simulated start of the test.
    epoch: Instant,
    /// Simulated current time.
    now: Instant,
    /// Whether datagrams from the client reach the server.
    client_to_server_open: bool,
    /// Instants at which a client datagram was delivered to the server.
    c2s_delivered: Vec<Instant>,
    /// Client datagrams dropped because the link was cut.
    c2s_dropped: usize,
    /// Server datagrams delivered to the client.
    s2c_delivered: usize,
}

impl Pair {
    /// Starts a client connecting to a server running `server_transport`; the client uses
    /// `client_transport`. Nothing moves until [`Pair::advance`] is called.
    fn new(server_transport: TransportConfig, client_transport: TransportConfig) -> Self {
        let (server_crypto, client_crypto) = tls_pair();

        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(Arc::new(server_transport));
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(Arc::new(client_transport));

        let endpoint_config = Arc::new(EndpointConfig::default());
        let server_endpoint = Endpoint::new(
            endpoint_config.clone(),
            Some(Arc::new(server_config)),
            true,
            Some([1; 32]),
        );
        let mut client_endpoint = Endpoint::new(endpoint_config, None, true, Some([2; 32]));

        let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 4433));
        let client_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 50_000));
        let epoch = Instant::now();
        let conn = client_endpoint
            .connect(epoch, client_config, server_addr, "localhost")
            .expect("client connect");

        let mut client = Node::new(client_endpoint, client_addr);
        client.conn = Some(conn);
        Pair {
            client,
            server: Node::new(server_endpoint, server_addr),
            epoch,
            now: epoch,
            client_to_server_open: true,
            c2s_delivered: Vec::new(),
            c2s_dropped: 0,
            s2c_delivered: 0,
        }
    }

    /// Simulated time since the start.
    fn elapsed(&self, at: Instant) -> Duration {
        at - self.epoch
    }

    /// Runs both sides at the current instant until no datagram moves any more.
    fn settle(&mut self) {
        for _ in 0..MAX_ITERATIONS {
            self.client.drive(self.now, self.server.addr);
            self.server.drive(self.now, self.client.addr);

            let mut moved = false;
            for datagram in self.client.outbound.drain(..) {
                moved = true;
                if self.client_to_server_open {
                    self.c2s_delivered.push(self.now);
                    self.server.inbound.push_back(datagram);
                } else {
                    self.c2s_dropped += 1;
                }
            }
            for datagram in self.server.outbound.drain(..) {
                moved = true;
                self.s2c_delivered += 1;
                self.client.inbound.push_back(datagram);
            }
            if !moved {
                return;
            }
        }
        panic!("the pair kept exchanging datagrams at one instant");
    }

    /// Advances simulated time by `by`, stopping at every timer deadline on the way (so each
    /// timer fires at exactly its deadline) and running both sides there.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..MAX_ITERATIONS {
            self.settle();
            let next = [self.client.next_timeout(), self.server.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= target => self.now = self.now.max(t),
                _ => {
                    self.now = target;
                    self.settle();
                    return;
                }
            }
        }
        panic!("timers kept firing without time reaching the target");
    }

    /// Advances in [`STEP`]s until the handshake has completed on both sides (bounded).
    fn handshake(&mut self) {
        for _ in 0..50 {
            if self.client.connected && self.server.connected {
                return;
            }
            self.advance(STEP);
        }
        panic!(
            "handshake did not complete in 5 simulated seconds (client lost: {:?}, server lost: {:?})",
            self.client.lost, self.server.lost
        );
    }

    /// Advances in [`STEP`]s for `total`, or until the server reports its connection lost.
    fn run_until_server_lost(&mut self, total: Duration) -> Option<(Instant, ConnectionError)> {
        let steps = total.as_millis() / STEP.as_millis();
        for _ in 0..steps {
            if self.server.lost.is_some() {
                break;
            }
            self.advance(STEP);
        }
        self.server.lost.clone()
    }

    /// When the server last received anything from the client.
    fn last_heard_from_client(&self) -> Instant {
        *self
            .c2s_delivered
            .last()
            .expect("server never heard from the client")
    }
}

/// Self-signed "localhost" certificate; server and client TLS 1.3 configs (ring provider,
/// Baton's ALPN), the client trusting exactly that certificate.
fn tls_pair() -> (QuicServerConfig, QuicClientConfig) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("generate cert");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server certificate");
    server.alpn_protocols = vec![baton_protocol::ALPN.to_vec()];

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("trust the certificate");
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![baton_protocol::ALPN.to_vec()];

    (
        QuicServerConfig::try_from(server).expect("QUIC server crypto"),
        QuicClientConfig::try_from(client).expect("QUIC client crypto"),
    )
}

/// The SDK's QUIC transport settings, exactly as a default `ClientConfig` builds them for its
/// connections (a ping every 2 s, idle timeout 10 s).
fn sdk_transport() -> TransportConfig {
    let relay = std::net::SocketAddr::from(([127, 0, 0, 1], 7700));
    baton_client::ClientConfig::new(relay, baton_client::Trust::Fingerprint([0; 32]))
        .transport_config()
        .expect("the SDK's transport config")
}

fn relay_transport(config: &RelayConfig) -> TransportConfig {
    baton_relay::transport_config(config).expect("relay transport config")
}

/// Connects with the SDK's settings to a relay with `config`, lets the pair run normally for
/// 5 s, then cuts client→server delivery. Returns how long after the server last heard from the
/// client it reported the connection lost, and why.
fn silent_client_lost_after(config: &RelayConfig) -> (Duration, ConnectionError, Pair) {
    let mut pair = Pair::new(relay_transport(config), sdk_transport());
    pair.handshake();
    // Normal operation first, so the handshake and path-MTU probing are long over and the
    // server is quiet (only ACKing pings) when the client falls silent.
    pair.advance(Duration::from_secs(5));
    assert!(
        pair.server.lost.is_none(),
        "lost during normal operation: {:?}",
        pair.server.lost
    );

    pair.client_to_server_open = false;
    let cut_at = pair.now;
    let last_heard = pair.last_heard_from_client();
    let (lost_at, reason) = pair
        .run_until_server_lost(Duration::from_secs(30))
        .expect("server never gave up on a silent client within 30 simulated seconds");
    println!(
        "relay keepalive {:?}: last heard at {:?}, cut at {:?}, lost at {:?} ({:?} after last \
         heard), {} client datagrams dropped meanwhile",
        config.keepalive_timeout(),
        pair.elapsed(last_heard),
        pair.elapsed(cut_at),
        pair.elapsed(lost_at),
        lost_at - last_heard,
        pair.c2s_dropped,
    );
    (lost_at - last_heard, reason, pair)
}

#[test]
fn silent_client_is_gone_after_ten_seconds() {
    let (silence, reason, pair) = silent_client_lost_after(&RelayConfig::default());
    assert!(
        matches!(reason, ConnectionError::TimedOut),
        "expected an idle timeout, got {reason:?}"
    );
    // quinn arms the idle timer at max(idle timeout, 3 × PTO) from the last packet received
    // (the server sent nothing ack-eliciting since, which would also restart it). On this
    // zero-latency link PTO is ~26 ms, so the 10 s applies, and timers fire exactly at their
    // deadline in this simulation: the connection is lost exactly 10 s after the last packet.
    assert_eq!(silence, Duration::from_secs(10));
    // The client was still trying (its 2 s pings were dropped), so this is the server's own
    // timer, not the client closing.
    assert!(
        pair.c2s_dropped >= 4,
        "only {} client datagrams dropped",
        pair.c2s_dropped
    );
}

#[test]
fn pinging_client_stays_alive() {
    let mut pair = Pair::new(relay_transport(&RelayConfig::default()), sdk_transport());
    pair.handshake();
    let start = pair.now;
    let before = pair.c2s_delivered.len();

    // No application data at all: only the client's keep-alive pings carry the connection.
    if let Some((at, reason)) = pair.run_until_server_lost(Duration::from_secs(60)) {
        panic!(
            "server lost a pinging client {:?} after the handshake: {reason:?}",
            at - start
        );
    }
    assert!(
        pair.client.lost.is_none(),
        "client lost its connection: {:?}",
        pair.client.lost
    );
    assert_eq!(pair.now - start, Duration::from_secs(60));

    let window: Vec<Instant> = pair.c2s_delivered[before..].to_vec();
    let mut max_gap = Duration::ZERO;
    let mut prev = start;
    for &t in window.iter().chain(std::iter::once(&pair.now)) {
        max_gap = max_gap.max(t - prev);
        prev = t;
    }
    println!(
        "60 s idle: {} client→server datagrams, {} server→client datagrams in total, longest \
         client silence {:?}",
        window.len(),
        pair.s2c_delivered,
        max_gap
    );
    // ~30 pings in 60 s: the 2 s keep-alive, not a busy loop and not nothing.
    assert!(
        (20..=100).contains(&window.len()),
        "{} client→server datagrams in 60 s",
        window.len()
    );
    // The server never went longer than one keep-alive interval (plus ACK delay slack) without
    // hearing from the client.
    assert!(
        max_gap <= SDK_KEEP_ALIVE + STEP,
        "the server went {max_gap:?} without hearing from the client"
    );
}

#[test]
fn configured_timeout_applies() {
    let mut config = RelayConfig::default();
    config
        .set_keepalive_timeout(Duration::from_secs(3))
        .expect("3 s keepalive timeout");
    let (silence, reason, _) = silent_client_lost_after(&config);
    assert!(
        matches!(reason, ConnectionError::TimedOut),
        "expected an idle timeout, got {reason:?}"
    );
    // QUIC uses the smaller of both sides' idle timeouts: the relay's 3 s, not the SDK's 10 s.
    assert_eq!(silence, Duration::from_secs(3));
}
