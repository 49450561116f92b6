//! Shared fixtures for Baton's end-to-end tests: a real relay on loopback with a throw-away
//! data directory, SDK configurations that trust it, and bounded waits.
//!
//! Every test binary in `tests/tests/` uses these, so a relay is started the same way
//! everywhere: QUIC and admin on `127.0.0.1:0`, dev certificate pinned by fingerprint.

pub mod attack_known;
pub mod migration_run;
pub mod natlab;
pub mod pathbench;
pub mod player;
pub mod procstat;
pub mod redis_server;
pub mod relay_process;
pub mod seq_window;
pub mod tls;
pub mod udp_tap;

use std::net::SocketAddr;
use std::time::Duration;

use baton_client::{AllocationOptions, ClientConfig, Event, Host, PeerId, Session, Trust};
use baton_relay::{Relay, RelayConfig, TlsSource};
use bytes::Bytes;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

/// The fleet secret of test fleets.
pub const TEST_FLEET_SECRET: &str = "baton-test-fleet-secret-0123456789abcdef";

/// A relay running in this process on loopback, with its own data directory.
pub struct TestRelay {
    relay: Option<Relay>,
    _dir: tempfile::TempDir,
}

impl TestRelay {
    /// A relay with the default settings (10 s keepalive) on loopback.
    pub async fn start() -> TestRelay {
        Self::start_with(|_| {}).await
    }

    /// A relay on loopback whose configuration `tweak` may change.
    pub async fn start_with(tweak: impl FnOnce(&mut RelayConfig)) -> TestRelay {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = RelayConfig::default();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.tls = TlsSource::SelfSigned {
            data_dir: dir.path().to_owned(),
            extra_names: Vec::new(),
        };
        tweak(&mut config);
        let relay = Relay::bind(config).await.expect("relay starts");
        TestRelay {
            relay: Some(relay),
            _dir: dir,
        }
    }

    /// Node `node` of a fleet whose directory is at `directory`, on loopback, with `tweak`
    /// applied. Its development certificate is kept in `cert_dir`: give every node of a fleet
    /// the same one, so that a client pinning its fingerprint trusts them all (as it must to
    /// follow a redirect), and start the first node alone (it generates the certificate).
    pub async fn start_fleet_node(
        node: &str,
        directory: &str,
        cert_dir: &std::path::Path,
        tweak: impl FnOnce(&mut RelayConfig),
    ) -> TestRelay {
        Self::start_with(|config| {
            config.tls = TlsSource::SelfSigned {
                data_dir: cert_dir.to_owned(),
                extra_names: Vec::new(),
            };
            config.fleet = Some(baton_relay::config::FleetConfig {
                directory: directory.to_owned(),
                node_id: node.to_owned(),
                // Port 0: the port the node binds.
                public_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                server_name: "localhost".to_owned(),
                region: "default".to_owned(),
                fleet_secret: TEST_FLEET_SECRET.to_owned(),
            });
            tweak(config);
        })
        .await
    }

    /// A relay on loopback that posts its webhooks, signed with `secret`, to `url`, with
    /// `tweak` applied.
    pub async fn start_with_webhook(
        url: &str,
        secret: &str,
        tweak: impl FnOnce(&mut RelayConfig),
    ) -> TestRelay {
        Self::start_with(|config| {
            config
                .hooks
                .set_webhooks(vec![url.parse().expect("webhook URL")], secret)
                .expect("webhook settings");
            tweak(config);
        })
        .await
    }

    /// A relay that removes members silent for `timeout`, and a host on it that pings every
    /// `ping` (so that only the members under test time out).
    pub async fn start_with_keepalive(timeout: Duration, ping: Duration) -> (TestRelay, Host) {
        let relay = Self::start_with(|c| {
            c.set_keepalive_timeout(timeout).expect("keepalive timeout");
        })
        .await;
        let config = relay.client().keep_alive_interval(ping);
        let host = Host::create(&config, AllocationOptions::default())
            .await
            .expect("create allocation");
        (relay, host)
    }

    /// The running relay.
    pub fn relay(&self) -> &Relay {
        self.relay.as_ref().expect("relay running")
    }

    /// The relay's QUIC address.
    pub fn addr(&self) -> SocketAddr {
        self.relay().local_addr()
    }

    /// Base URL of the admin server, e.g. `http://127.0.0.1:40123`.
    pub fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.relay().admin_addr().expect("admin server enabled")
        )
    }

    /// The admin server's `/metrics`, parsed: look samples up by their exact name and labels
    /// (`baton_connections`, `baton_datagrams_dropped_total{reason="malformed"}`), never by
    /// substring.
    pub async fn metrics(&self) -> relay_process::Metrics {
        let text = reqwest::get(format!("{}/metrics", self.admin_url()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        relay_process::Metrics::parse(&text)
    }

    /// An SDK configuration that pins this relay's certificate.
    pub fn client(&self) -> ClientConfig {
        ClientConfig::new(self.addr(), Trust::Fingerprint(self.relay().fingerprint()))
    }

    /// Stops the relay gracefully.
    pub async fn shutdown(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The next datagram a session receives, or a panic after [`WAIT`].
pub async fn recv(session: &Session) -> (PeerId, Bytes) {
    tokio::time::timeout(WAIT, session.recv())
        .await
        .expect("datagram within the wait")
        .expect("session open")
}

/// Whether a datagram arrives within `within` (for asserting that one does not). Panics if the
/// session has ended: a dead session receives nothing, which must not pass for isolation.
pub async fn try_recv(session: &Session, within: Duration) -> Option<(PeerId, Bytes)> {
    match tokio::time::timeout(within, session.recv()).await {
        Err(_elapsed) => None,
        Ok(Ok(datagram)) => Some(datagram),
        Ok(Err(e)) => panic!("the session ended while waiting for a datagram: {e}"),
    }
}

/// The next event matching `pred`, skipping others, or a panic after `within`.
pub async fn event_matching(
    session: &Session,
    within: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    tokio::time::timeout(within, async {
        loop {
            match session.next_event().await {
                Some(e) if pred(&e) => return e,
                Some(_) => continue,
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .expect("expected event within the wait")
}

/// A raw QUIC connection to the relay, bypassing the SDK (for sending what the SDK never
/// would). `transport` may adjust the client's transport settings (e.g. pin the MTU).
pub async fn raw_connection(
    relay: &TestRelay,
    transport: impl FnOnce(&mut quinn::TransportConfig),
) -> quinn::Connection {
    raw_client(relay, transport).await.1
}

/// Like [`raw_connection`], with the client's endpoint too (to rebind it to a new address).
pub async fn raw_client(
    relay: &TestRelay,
    transport: impl FnOnce(&mut quinn::TransportConfig),
) -> (quinn::Endpoint, quinn::Connection) {
    let pem = std::fs::read(relay.relay().cert_path()).expect("relay certificate");
    let crypto = tls::quic_crypto(&pem).expect("QUIC TLS");
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    transport(&mut t);
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    config.transport_config(std::sync::Arc::new(t));
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let conn = endpoint
        .connect_with(config, relay.addr(), "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    (endpoint, conn)
}

/// A raw control stream's two halves (keep them: dropping them closes the stream) and the
/// reply to its first request.
pub type RawControl = (
    quinn::SendStream,
    quinn::RecvStream,
    baton_protocol::ServerMessage,
);

/// Opens a raw connection's control stream with `CreateAllocation` (request 1, default
/// limits).
pub async fn raw_create(conn: &quinn::Connection) -> RawControl {
    raw_open(
        conn,
        &baton_protocol::ClientMessage::CreateAllocation {
            request_id: 1,
            max_peers: 0,
            code_ttl_secs: 0,
            host_loss_timeout_ms: 0,
            credential: None,
        },
    )
    .await
}

/// Opens a raw connection's control stream with `Join` (request 1) by `code`.
pub async fn raw_join(conn: &quinn::Connection, code: baton_protocol::JoinCode) -> RawControl {
    raw_open(
        conn,
        &baton_protocol::ClientMessage::Join {
            request_id: 1,
            code,
            credential: None,
        },
    )
    .await
}

/// Opens a raw connection's control stream and sends `first` on it.
async fn raw_open(conn: &quinn::Connection, first: &baton_protocol::ClientMessage) -> RawControl {
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let reply = raw_request(&mut send, &mut recv, first).await;
    (send, recv, reply)
}

/// Sends a control message on a raw connection's control stream and reads the reply.
pub async fn raw_request(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    msg: &baton_protocol::ClientMessage,
) -> baton_protocol::ServerMessage {
    send.write_all(&msg.to_frame()).await.expect("write");
    raw_read(recv).await
}

/// Reads one control message from a raw connection's control stream, skipping
/// `ObservedAddress` (which follows every bind reply and every address change; read it with
/// [`raw_read_any`]).
pub async fn raw_read(recv: &mut quinn::RecvStream) -> baton_protocol::ServerMessage {
    loop {
        match raw_read_any(recv).await {
            baton_protocol::ServerMessage::ObservedAddress { .. } => {}
            other => return other,
        }
    }
}

/// Reads the next control message from a raw connection's control stream, whatever it is.
pub async fn raw_read_any(recv: &mut quinn::RecvStream) -> baton_protocol::ServerMessage {
    let mut prefix = [0u8; 4];
    tokio::time::timeout(WAIT, recv.read_exact(&mut prefix))
        .await
        .expect("reply in time")
        .expect("read");
    let len = baton_protocol::frame::check_len(prefix, 1 << 16).expect("frame length");
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.expect("read body");
    baton_protocol::ServerMessage::decode(&body).expect("decodable reply")
}

/// The migration snapshot test hosts upload: `len` bytes of a fixed pattern, so whoever
/// receives it can check it byte for byte.
pub fn snapshot_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) % 251) as u8).collect()
}
