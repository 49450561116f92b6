//! Raw QUIC clients of the relay, without the SDK: many connections per quinn endpoint, the
//! control stream spoken directly with `baton_protocol` frames (SPEC.md §3 and §5).
//!
//! A client connects, opens its control stream and sends its one binding request
//! (`CreateAllocation` or `Join`); the reply binds it. Afterwards a small task per client
//! drains the control stream (the relay's events must be read, or its per-client control queue
//! fills and it closes the connection) and counts what matters to a benchmark: the relay's
//! `DatagramsDropped` reports and unexpected membership changes. The send side of the control
//! stream is kept open for the client's life: finishing it would end the session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use baton_protocol::{frame, ClientMessage, DecodeError, JoinCode, ServerMessage};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::task::JoinSet;

use crate::relay::Relay;
use crate::traffic::{Receiver, Shared};

/// How long one connection attempt or one request may take before it counts as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The host-loss timeout bench allocations ask for unless a bench measures heartbeats: the
/// relay's default keepalive timeout (10 s), the longest it grants.
pub const NO_FAST_HOST_LOSS_MS: u16 = 10_000;

/// Keepalive interval of bench clients: the SDK's (2 s), well inside the relay's 10 s timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Incoming datagrams quinn buffers per bench connection before dropping; generous, so a
/// briefly descheduled receiver task does not show up as relay loss.
const DATAGRAM_RECV_BUFFER: usize = 1024 * 1024;

/// A pool of client endpoints (one UDP socket each) sharing one client configuration.
pub struct Clients {
    endpoints: Vec<Endpoint>,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: String,
}

impl Clients {
    /// `endpoints` client endpoints on loopback that trust the relay's certificate.
    pub fn new(relay: &Relay, endpoints: usize) -> anyhow::Result<Clients> {
        Clients::with_resumption(relay, endpoints, true)
    }

    /// Like [`Clients::new`]; `resume` false makes every handshake a full one (no TLS session
    /// resumption), as from clients that keep no tickets.
    pub fn with_resumption(
        relay: &Relay,
        endpoints: usize,
        resume: bool,
    ) -> anyhow::Result<Clients> {
        let config = client_config_with(&relay.cert, resume)?;
        let endpoints = (0..endpoints.max(1))
            .map(|_| {
                let socket = crate::sockets::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
                Endpoint::new(
                    quinn::EndpointConfig::default(),
                    None,
                    socket,
                    std::sync::Arc::new(quinn::TokioRuntime),
                )
                .context("binding a client endpoint")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Clients {
            endpoints,
            config,
            addr: relay.addr,
            server_name: relay.server_name.clone(),
        })
    }

    /// Opens a connection on endpoint `index % endpoints`.
    pub async fn connect(&self, index: usize) -> anyhow::Result<Connection> {
        let endpoint = &self.endpoints[index % self.endpoints.len()];
        let connecting = endpoint
            .connect_with(self.config.clone(), self.addr, &self.server_name)
            .context("starting a connection")?;
        tokio::time::timeout(STEP_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow!("handshake timed out"))?
            .context("handshake")
    }

    /// Connects on endpoint `index % endpoints` and sends the binding request `msg`.
    async fn bind(&self, index: usize, msg: &ClientMessage) -> anyhow::Result<Binding> {
        let start = Instant::now();
        let conn = self.connect(index).await?;
        let connect = start.elapsed();
        let (send, recv, reply, request) = request(&conn, msg).await?;
        Ok(Binding {
            conn,
            send,
            recv,
            reply,
            connect,
            request,
        })
    }

    /// Connects and creates an allocation for up to `max_peers` members. Bench clients send
    /// no heartbeats (only QUIC keepalives, every 2 s), so the allocation asks for the longest
    /// host-loss timeout, [`NO_FAST_HOST_LOSS_MS`]: an idle bench host is not lost.
    pub async fn create(&self, index: usize, max_peers: u16) -> anyhow::Result<Created> {
        self.create_with(index, max_peers, NO_FAST_HOST_LOSS_MS)
            .await
    }

    /// [`Clients::create`] asking for a host-loss timeout of `host_loss_timeout_ms` (0: the
    /// relay's default).
    pub async fn create_with(
        &self,
        index: usize,
        max_peers: u16,
        host_loss_timeout_ms: u16,
    ) -> anyhow::Result<Created> {
        let msg = ClientMessage::CreateAllocation {
            request_id: 1,
            max_peers,
            code_ttl_secs: 0,
            host_loss_timeout_ms,
            credential: None,
        };
        let b = self.bind(index, &msg).await?;
        match b.reply {
            ServerMessage::AllocationCreated { code, .. } => Ok(Created {
                code,
                connect: b.connect,
                request: b.request,
                client: b.into_client(0),
            }),
            ref other => Err(refusal("create", other)),
        }
    }

    /// Connects and joins the allocation `code` names.
    pub async fn join(&self, index: usize, code: JoinCode) -> anyhow::Result<Joined> {
        let msg = ClientMessage::Join {
            request_id: 1,
            code,
            credential: None,
        };
        let b = self.bind(index, &msg).await?;
        match b.reply {
            ServerMessage::Joined { peer, .. } => Ok(Joined {
                connect: b.connect,
                request: b.request,
                client: b.into_client(peer.0),
            }),
            ref other => Err(refusal("join", other)),
        }
    }

    /// Waits (at most 3 s) until every endpoint has finished closing its connections.
    pub async fn wait_idle(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            for endpoint in &self.endpoints {
                endpoint.wait_idle().await;
            }
        })
        .await;
    }
}

/// A bound client connection.
pub struct Client {
    /// The QUIC connection.
    pub conn: Connection,
    /// The control stream's send side, only kept: dropping it would finish the stream, and
    /// that ends the session.
    _control: SendStream,
    /// The control stream's receive side, until a reader task takes it.
    pub recv: Option<RecvStream>,
    /// The peer id the relay gave this client.
    pub peer: u16,
}

impl Client {
    /// Leaves normally (close code 0).
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bench done");
    }
}

/// A connection whose binding request (`CreateAllocation` or `Join`) got its reply.
struct Binding {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    reply: ServerMessage,
    /// Time to connect (QUIC + TLS handshake).
    connect: Duration,
    /// Time from sending the request to reading its reply.
    request: Duration,
}

impl Binding {
    /// The bound client, with the peer id the reply gave it.
    fn into_client(self, peer: u16) -> Client {
        Client {
            conn: self.conn,
            _control: self.send,
            recv: Some(self.recv),
            peer,
        }
    }
}

/// A client that created an allocation, and how long that took.
pub struct Created {
    /// The host's connection.
    pub client: Client,
    /// The allocation's join code.
    pub code: JoinCode,
    /// Time to connect (QUIC + TLS handshake).
    pub connect: Duration,
    /// Time from sending `CreateAllocation` to reading `AllocationCreated`.
    pub request: Duration,
}

/// A client that joined an allocation, and how long that took.
pub struct Joined {
    /// The peer's connection.
    pub client: Client,
    /// Time to connect (QUIC + TLS handshake).
    pub connect: Duration,
    /// Time from sending `Join` to reading `Joined`.
    pub request: Duration,
}

/// Why a request was refused, as an error ("join refused: full (value 5)").
fn refusal(what: &str, reply: &ServerMessage) -> anyhow::Error {
    match reply {
        ServerMessage::Refused { code, value, .. } => {
            anyhow!("{what} refused: {code} (value {value})")
        }
        other => anyhow!("{what}: unexpected reply {other:?}"),
    }
}

/// Opens the control stream, sends `msg` and reads its reply (skipping events and unknown
/// messages). Returns the stream halves, the reply and the request's round-trip time.
async fn request(
    conn: &Connection,
    msg: &ClientMessage,
) -> anyhow::Result<(SendStream, RecvStream, ServerMessage, Duration)> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        let (mut send, mut recv) = conn.open_bi().await.context("opening the control stream")?;
        let start = Instant::now();
        send.write_all(&msg.to_frame())
            .await
            .context("writing the request")?;
        loop {
            match read_message(&mut recv).await? {
                Some(
                    reply @ (ServerMessage::AllocationCreated { .. }
                    | ServerMessage::Joined { .. }
                    | ServerMessage::Refused { .. }),
                ) => return anyhow::Ok((send, recv, reply, start.elapsed())),
                // Events before the reply (none are expected on an unbound connection) and
                // message types newer than this bench.
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no reply within {STEP_TIMEOUT:?}"))?
}

/// Reads one control frame. `None` for a message type this bench does not know, which the
/// spec says to skip.
pub async fn read_message(recv: &mut RecvStream) -> anyhow::Result<Option<ServerMessage>> {
    let mut prefix = [0u8; frame::LEN_PREFIX];
    recv.read_exact(&mut prefix)
        .await
        .context("reading a frame length")?;
    let len = frame::check_len(prefix, frame::DEFAULT_MAX_FRAME_LEN)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .context("reading a frame")?;
    match ServerMessage::decode(&body) {
        Ok(msg) => Ok(Some(msg)),
        Err(DecodeError::UnknownType(_)) => Ok(None),
        Err(e) => bail!("undecodable control message: {e}"),
    }
}

/// What the relay said on the clients' control streams, summed over clients.
#[derive(Debug, Default)]
pub struct ControlEvents {
    dropped: Mutex<BTreeMap<String, u64>>,
    membership: AtomicU64,
}

impl ControlEvents {
    /// Datagrams the relay reported dropping (`DatagramsDropped`), by reason, since the last
    /// call; resets the counts.
    pub fn take_dropped(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Membership events (`PeerLeft`, `HostLost`, ...) since the last call; resets the count.
    pub fn take_membership(&self) -> u64 {
        self.membership.swap(0, Ordering::Relaxed)
    }
}

/// Spawns, into `tasks`, each client's two readers: its control stream's (the first time; see
/// [`spawn_control_reader`]) and its datagrams', which feeds them to `shared` as client `g`
/// (its index in `clients`). Returns how many connections ended other than by the bench's own
/// close while their datagrams were read: lost connections, which a benchmark reports.
pub fn spawn_receivers(
    tasks: &mut JoinSet<()>,
    clients: &mut [Client],
    shared: &Arc<Shared>,
    events: &Arc<ControlEvents>,
) -> Arc<AtomicU64> {
    let lost = Arc::new(AtomicU64::new(0));
    for (g, client) in clients.iter_mut().enumerate() {
        if let Some(recv) = client.recv.take() {
            spawn_control_reader(tasks, recv, events.clone());
        }
        let conn = client.conn.clone();
        let mut receiver = Receiver::new(shared.clone(), g as u32);
        let lost = lost.clone();
        tasks.spawn(async move {
            loop {
                match conn.read_datagram().await {
                    Ok(d) => receiver.on_datagram(&d),
                    Err(quinn::ConnectionError::LocallyClosed) => return,
                    Err(_) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }
    lost
}

/// Spawns, into `tasks`, the task that drains a client's control stream until it ends.
/// `PeerJoined` is expected (set-up); departures and migrations are counted, since none should
/// happen while a benchmark runs.
pub fn spawn_control_reader(
    tasks: &mut JoinSet<()>,
    mut recv: RecvStream,
    events: Arc<ControlEvents>,
) {
    tasks.spawn(async move {
        loop {
            let msg = match read_message(&mut recv).await {
                Ok(Some(msg)) => msg,
                Ok(None) => continue,
                Err(_) => return,
            };
            match msg {
                ServerMessage::DatagramsDropped { reason, count, .. } => {
                    let mut dropped = events.dropped.lock().unwrap_or_else(|e| e.into_inner());
                    *dropped.entry(reason.as_str().to_owned()).or_default() += u64::from(count);
                }
                ServerMessage::PeerLeft { .. }
                | ServerMessage::HostLost { .. }
                | ServerMessage::Promote { .. }
                | ServerMessage::Migrated { .. }
                | ServerMessage::PeerRejoined { .. } => {
                    events.membership.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
}

/// A quinn client configuration trusting the certificates in `cert` (PEM), TLS 1.3 with the
/// ring provider and Baton's ALPN, and the SDK's transport settings; TLS sessions resumed (as
/// the SDK does within one configuration) or never (`resume` false).
fn client_config_with(cert: &std::path::Path, resume: bool) -> anyhow::Result<quinn::ClientConfig> {
    let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let crypto = baton_tests::tls::quic_crypto_with(&pem, resume)
        .with_context(|| cert.display().to_string())?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).context("idle timeout")?,
        ))
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(1u32.into())
        .datagram_receive_buffer_size(Some(DATAGRAM_RECV_BUFFER))
        .mtu_discovery_config(None);
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
