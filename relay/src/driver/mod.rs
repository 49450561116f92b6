//! The async driver: the QUIC endpoint, one task per connection, the control task that owns the
//! [`ControlPlane`], and the datagram forwarding path.
//!
//! Per connection, one task runs three things at once, with a `biased` select:
//! 1. datagrams (the hot path): read, look up the allocation's routing table, send;
//! 2. the control stream reader: frames in, bounded and decoded, to the control task;
//! 3. the control stream writer: messages from the control task out.
//!
//! The control task is the only owner of the control plane and of the routing tables'
//! write side. Datagram forwarding only reads an [`ArcSwap`]ed table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use baton_protocol::datagram::{self, Destination};
use baton_protocol::{
    frame, stream_kind, AllocationId, ClientMessage, CloseCode, DropReason, LeaveReason, PeerId,
    ServerMessage,
};
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use quinn::{ConnectionError, VarInt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::control::{ConnId, ControlPlane, Event, Input, JoinedVia, Output};
use crate::hooks::HookSender;
use crate::metrics::Metrics;
use crate::{defaults, tls, RelayConfig};

pub(crate) mod handle;
mod lane;
pub mod steering;

use handle::AdminCall;
pub use handle::RelayHandle;
use lane::Lane;

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// TLS material could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The QUIC or admin socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The transport configuration was rejected.
    #[error("QUIC configuration: {0}")]
    Quic(String),
    /// A data-plane thread or its runtime could not be started.
    #[error("starting a data-plane thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// One member's datagram destination.
struct Member {
    peer: PeerId,
    conn: quinn::Connection,
}

/// An allocation's routing table: its members sorted by peer id.
#[derive(Default)]
struct Table {
    members: Vec<Member>,
}

impl Table {
    fn get(&self, peer: PeerId) -> Option<&quinn::Connection> {
        self.members
            .binary_search_by_key(&peer, |m| m.peer)
            .ok()
            .and_then(|i| self.members.get(i))
            .map(|m| &m.conn)
    }
}

/// Where a bound connection's datagrams go: its own peer id and its allocation's table.
struct Route {
    me: PeerId,
    table: Arc<ArcSwap<Table>>,
}

/// What every part of the relay knows about one connection.
struct ConnShared {
    conn: quinn::Connection,
    control_tx: mpsc::Sender<ServerMessage>,
    route: ArcSwapOption<Route>,
}

/// State shared by all tasks.
struct Shared {
    metrics: Arc<Metrics>,
    conns: DashMap<ConnId, Arc<ConnShared>>,
    inputs: mpsc::Sender<Input>,
    max_payload: usize,
    max_control_frame: usize,
    max_connections: usize,
    max_snapshot: usize,
    /// Bytes of snapshot uploads being read, across all connections; a reader waits for
    /// permits chunk by chunk, so uploads cannot exhaust memory before they are stored.
    snapshot_inflight: Arc<tokio::sync::Semaphore>,
    open: AtomicUsize,
    next_conn: AtomicU64,
}

/// A running relay. Call [`Relay::shutdown`] for a graceful stop. Dropping it instead stops its
/// data-plane threads at once: connections end without a close, and clients see them time out.
pub struct Relay {
    /// The QUIC endpoints, all on the same port (one unless `endpoints` is set higher).
    endpoints: Vec<quinn::Endpoint>,
    /// One data-plane thread per endpoint, serving its connections.
    lanes: Vec<Lane>,
    handle: RelayHandle,
    admin_addr: Option<SocketAddr>,
    fingerprint: [u8; 32],
    cert_path: PathBuf,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    control_done: tokio::task::JoinHandle<()>,
    admin_calls: mpsc::Sender<AdminCall>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("local_addr", &self.local_addr())
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// The relay's QUIC transport settings. The idle timeout *is* the keepalive rule: a client
/// silent for `keepalive_timeout` is gone.
pub fn transport_config(config: &RelayConfig) -> Result<quinn::TransportConfig, RelayError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.keepalive_timeout())
        .map_err(|e| RelayError::Quic(e.to_string()))?;
    t.max_idle_timeout(Some(idle))
        // Clients must prove they are alive; the relay does not keep them alive.
        .keep_alive_interval(None)
        // One control stream per client, nothing else (bounds what a client can open).
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        // One migration-snapshot upload at a time.
        .max_concurrent_uni_streams(VarInt::from_u32(1))
        .stream_receive_window(VarInt::from_u32(64 * 1024))
        .receive_window(VarInt::from_u32(256 * 1024))
        .datagram_receive_buffer_size(Some(defaults::DATAGRAM_RECV_BUFFER))
        .datagram_send_buffer_size(defaults::DATAGRAM_SEND_BUFFER);
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(defaults::ACK_ELICITING_THRESHOLD))
        .max_ack_delay(Some(defaults::MAX_ACK_DELAY));
    t.ack_frequency_config(Some(ack));
    Ok(t)
}

impl Relay {
    /// Loads TLS material, binds the QUIC endpoint and the admin server, and starts serving.
    pub async fn bind(config: RelayConfig) -> Result<Relay, RelayError> {
        let material = tls::load(&config.tls)?;
        let fingerprint = material.fingerprint();
        let crypto = tls::server_crypto(&material)?;
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| RelayError::Quic(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server_config.transport_config(Arc::new(transport_config(&config)?));
        let bind_error = |source| RelayError::Bind {
            addr: config.listen,
            source,
        };
        let sockets =
            bind_udp(config.listen, config.endpoints(), config.udp_buffer()).map_err(bind_error)?;
        // At most 64 endpoints (the config's bound), so indexes fit the connection ID's byte.
        let count = sockets.len();
        if let Some(first) = sockets.first().filter(|_| count > 1) {
            match steering::attach(first, u8::try_from(count).unwrap_or(u8::MAX)) {
                Ok(()) => debug!(endpoints = count, "connection-ID steering attached"),
                Err(e) => warn!(
                    cause = %e,
                    "connection-ID steering unavailable: the kernel spreads packets by address, \
                     so a client whose address changes may lose its connection"
                ),
            }
        }
        let mut endpoints = Vec::with_capacity(count);
        let mut lanes = Vec::with_capacity(count);
        for (index, socket) in sockets.into_iter().enumerate() {
            let lane = Lane::start(index).map_err(RelayError::Thread)?;
            let mut endpoint_config = quinn::EndpointConfig::default();
            let cids = steering::LaneCids::new(u8::try_from(index).unwrap_or(u8::MAX));
            endpoint_config.cid_generator(move || Box::new(cids));
            let endpoint = quinn::Endpoint::new(
                endpoint_config,
                Some(server_config.clone()),
                socket,
                lane.quinn_runtime(),
            )
            .map_err(bind_error)?;
            endpoints.push(endpoint);
            lanes.push(lane);
        }

        let metrics = Arc::new(Metrics::new());
        let (input_tx, input_rx) = mpsc::channel(4096);
        let (admin_tx, admin_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            metrics: metrics.clone(),
            conns: DashMap::new(),
            inputs: input_tx,
            max_payload: config.max_datagram_payload(),
            max_control_frame: config.max_control_frame(),
            max_connections: config.max_connections(),
            max_snapshot: config.max_snapshot(),
            snapshot_inflight: Arc::new(tokio::sync::Semaphore::new(
                config.snapshot_budget().min(SNAPSHOT_INFLIGHT),
            )),
            open: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let hooks = crate::hooks::spawn(&config.hooks, metrics.clone(), shutdown.clone(), &tasks);
        let seed = rand::random();
        let cp = ControlPlane::new(&config, seed, Instant::now());
        let control_done = tokio::spawn(
            control_task(cp, input_rx, admin_rx, shared.clone(), hooks.clone())
                .instrument(info_span!("control")),
        );

        let handle = RelayHandle {
            admin: admin_tx.clone(),
            metrics,
        };
        let admin_addr = match config.admin_listen {
            Some(addr) => {
                let (bound, task) = crate::admin::spawn(
                    addr,
                    handle.clone(),
                    config.admin_token.clone(),
                    hooks,
                    shutdown.clone(),
                )
                .await
                .map_err(|source| RelayError::Bind { addr, source })?;
                tasks.spawn(async move {
                    let _ = task.await;
                });
                Some(bound)
            }
            None => None,
        };

        for (endpoint, lane) in endpoints.iter().zip(&lanes) {
            tasks.spawn_on(
                accept_loop(
                    endpoint.clone(),
                    shared.clone(),
                    tasks.clone(),
                    shutdown.clone(),
                ),
                lane.handle(),
            );
        }
        info!(
            listen = %endpoints[0].local_addr().map(|a| a.to_string()).unwrap_or_default(),
            endpoints = endpoints.len(),
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "disabled".into()),
            "relay started"
        );
        Ok(Relay {
            endpoints,
            lanes,
            handle,
            admin_addr,
            fingerprint,
            cert_path: material.cert_path,
            shutdown,
            tasks,
            control_done,
            admin_calls: admin_tx,
        })
    }

    /// The QUIC endpoint's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoints
            .first()
            .and_then(|e| e.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The admin server's address, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// SHA-256 of the relay's leaf certificate, what clients pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The PEM file holding the relay's certificate.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A handle for admin queries and metrics.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Graceful shutdown: stops accepting, closes every connection with
    /// [`CloseCode::RelayShuttingDown`], waits up to [`defaults::SHUTDOWN_GRACE`] for clients
    /// to acknowledge, and stops every task.
    pub async fn shutdown(self) {
        info!("relay shutting down");
        for endpoint in &self.endpoints {
            endpoint.set_server_config(None);
        }
        self.shutdown.cancel();
        let call: AdminCall = Box::new(|cp, now| cp.shutdown(now));
        let _ = self.admin_calls.send(call).await;
        // Let the control task send its closes, then give clients a moment to acknowledge.
        let _ = tokio::time::timeout(defaults::SHUTDOWN_GRACE, async {
            while self
                .handle
                .counts()
                .await
                .map(|(_, c)| c > 0)
                .unwrap_or(false)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for endpoint in &self.endpoints {
                endpoint.wait_idle().await;
            }
        })
        .await;
        for endpoint in &self.endpoints {
            endpoint.close(
                VarInt::from_u32(CloseCode::RelayShuttingDown.to_u32()),
                CloseCode::RelayShuttingDown.description().as_bytes(),
            );
        }
        self.tasks.close();
        let _ = tokio::time::timeout(defaults::SHUTDOWN_GRACE, self.tasks.wait()).await;
        drop(self.admin_calls);
        drop(self.handle);
        self.control_done.abort();
        for lane in self.lanes {
            lane.stop().await;
        }
        info!("relay stopped");
    }
}

/// Binds `count` UDP sockets to `listen` (the first picks the port if `listen` has port 0, the
/// others share it with `SO_REUSEPORT`), each with kernel buffers of `buffer` bytes requested.
fn bind_udp(
    listen: SocketAddr,
    count: usize,
    buffer: usize,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = listen;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Accept IPv4 too on the unspecified address, as the kernel default usually does.
            let _ = socket.set_only_v6(false);
        }
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        // Best effort: the kernel caps the request; what it granted is logged.
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
        socket.bind(&addr.into())?;
        if let Some(bound) = socket.local_addr()?.as_socket() {
            addr = bound;
        }
        info!(
            %addr,
            recv_buffer = socket.recv_buffer_size().unwrap_or(0),
            send_buffer = socket.send_buffer_size().unwrap_or(0),
            "QUIC socket bound"
        );
        sockets.push(socket.into());
    }
    Ok(sockets)
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if shared.open.load(Ordering::Relaxed) >= shared.max_connections {
            shared.metrics.connections_refused.inc();
            incoming.refuse();
            continue;
        }
        shared.open.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", id, remote = %incoming.remote_address());
        let shared = shared.clone();
        tasks.spawn(
            async move {
                let _open = OpenGuard(&shared.open);
                match incoming.await {
                    Ok(conn) => serve_connection(id, conn, &shared).await,
                    Err(e) => debug!(cause = %e, "handshake failed"),
                }
            }
            .instrument(span),
        );
    }
}

/// Decrements the open-connection count however the connection task ends.
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reports a connection's end to the control plane exactly once, whichever way its task ends
/// (normal return, early error, panic).
struct DisconnectGuard {
    id: ConnId,
    shared: Arc<Shared>,
    reason: LeaveReason,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        self.shared.conns.remove(&self.id);
        self.shared.metrics.connections.dec();
        let input = Input::Disconnected {
            conn: self.id,
            reason: self.reason,
        };
        if let Err(mpsc::error::TrySendError::Full(input)) = self.shared.inputs.try_send(input) {
            let inputs = self.shared.inputs.clone();
            tokio::spawn(async move {
                let _ = inputs.send(input).await;
            });
        }
    }
}

/// Maps how a connection ended to the reason the others are told.
fn leave_reason(err: &ConnectionError) -> LeaveReason {
    match err {
        ConnectionError::TimedOut => LeaveReason::TimedOut,
        ConnectionError::ApplicationClosed(close) => {
            match CloseCode::from_u64(close.error_code.into_inner()) {
                CloseCode::ProtocolViolation => LeaveReason::ProtocolViolation,
                _ => LeaveReason::Closed,
            }
        }
        ConnectionError::LocallyClosed => LeaveReason::Closed,
        _ => LeaveReason::ConnectionLost,
    }
}

async fn serve_connection(id: ConnId, conn: quinn::Connection, shared: &Arc<Shared>) {
    let (control_tx, control_rx) = mpsc::channel(defaults::CONTROL_QUEUE);
    let conn_shared = Arc::new(ConnShared {
        conn: conn.clone(),
        control_tx,
        route: ArcSwapOption::empty(),
    });
    shared.conns.insert(id, conn_shared.clone());
    shared.metrics.connections.inc();
    shared.metrics.connections_accepted.inc();
    let mut guard = DisconnectGuard {
        id,
        shared: shared.clone(),
        reason: LeaveReason::ConnectionLost,
    };
    if shared
        .inputs
        .send(Input::Connected {
            conn: id,
            addr: conn.remote_address(),
        })
        .await
        .is_err()
    {
        return;
    }
    debug!("connected");

    let control = control_stream(&conn, shared, id, control_rx);
    let datagrams = forward_datagrams(&conn_shared, shared);
    let snapshots = receive_snapshots(&conn, &conn_shared, shared, id);
    let rtt = report_rtt(&conn, shared, id);
    tokio::pin!(control, datagrams, snapshots, rtt);
    let err = tokio::select! {
        // Game traffic first, then control messages; snapshots and RTT samples can wait.
        biased;
        err = &mut datagrams => err,
        err = &mut control => err,
        () = &mut snapshots => None,
        () = &mut rtt => None,
    };
    if let Some(code) = err {
        close(&conn, code);
    }
    let reason = conn.closed().await;
    guard.reason = leave_reason(&reason);
    debug!(cause = %reason, reason = %guard.reason, "disconnected");
}

fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(
        VarInt::from_u32(code.to_u32()),
        code.description().as_bytes(),
    );
}

/// Serves the control stream until the connection ends. Returns a close code if the client
/// broke the protocol.
async fn control_stream(
    conn: &quinn::Connection,
    shared: &Shared,
    id: ConnId,
    mut outgoing: mpsc::Receiver<ServerMessage>,
) -> Option<CloseCode> {
    let (mut send, mut recv) = match conn.accept_bi().await {
        Ok(streams) => streams,
        Err(_) => return None,
    };
    let reader = async {
        // A client has little to say; a token bucket keeps a chatty one from monopolising
        // the control task (it is slowed down, not cut off).
        let mut budget = RequestBudget::new();
        loop {
            let mut prefix = [0u8; frame::LEN_PREFIX];
            match recv.read_exact(&mut prefix).await {
                Ok(()) => {}
                Err(quinn::ReadExactError::FinishedEarly(0)) => return Some(CloseCode::Normal),
                Err(quinn::ReadExactError::FinishedEarly(_)) => {
                    return Some(CloseCode::ProtocolViolation)
                }
                Err(quinn::ReadExactError::ReadError(_)) => return None,
            }
            let len = match frame::check_len(prefix, shared.max_control_frame) {
                Ok(len) => len,
                Err(e) => {
                    warn!(cause = %e, "bad control frame");
                    return Some(CloseCode::ProtocolViolation);
                }
            };
            let mut body = vec![0u8; len];
            if recv.read_exact(&mut body).await.is_err() {
                return Some(CloseCode::ProtocolViolation);
            }
            let msg = match ClientMessage::decode(&body) {
                Ok(msg) => msg,
                Err(e) => {
                    warn!(cause = %e, "undecodable control message");
                    return Some(CloseCode::ProtocolViolation);
                }
            };
            budget.take().await;
            if shared
                .inputs
                .send(Input::Request { conn: id, msg })
                .await
                .is_err()
            {
                return None;
            }
        }
    };
    let writer = async {
        let mut buf = BytesMut::new();
        while let Some(msg) = outgoing.recv().await {
            buf.clear();
            msg.encode_frame(&mut buf);
            // Batch whatever else is queued into the same write.
            while let Ok(more) = outgoing.try_recv() {
                more.encode_frame(&mut buf);
            }
            if send.write_all(&buf).await.is_err() {
                break;
            }
        }
        None
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// Bytes of snapshot uploads read concurrently across the relay, at most.
const SNAPSHOT_INFLIGHT: usize = 256 * 1024 * 1024;

/// How often a connection's RTT is reported to the control plane for host election.
const RTT_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Reads migration snapshots the client uploads on unidirectional streams, one at a time:
/// `0x01` then the snapshot bytes until the stream ends.
async fn receive_snapshots(conn: &quinn::Connection, me: &ConnShared, shared: &Shared, id: ConnId) {
    while let Ok(mut stream) = conn.accept_uni().await {
        let mut kind = [0u8; 1];
        match stream.read_exact(&mut kind).await {
            Ok(()) if kind[0] == stream_kind::SNAPSHOT => {}
            Ok(()) => {
                close(conn, CloseCode::ProtocolViolation);
                return;
            }
            // Reset or ended before saying what it carries: discard it.
            Err(_) => continue,
        }
        let mut data = BytesMut::new();
        let mut too_large = false;
        let mut reset = false;
        loop {
            let chunk = match stream.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => break,
                Err(_) => {
                    // A reset upload is discarded without a reply; later uploads still work.
                    reset = true;
                    break;
                }
            };
            if data.len() + chunk.len() > shared.max_snapshot {
                too_large = true;
                let _ = stream.stop(VarInt::from_u32(0));
                break;
            }
            let Ok(permits) = shared
                .snapshot_inflight
                .acquire_many(u32::try_from(chunk.len()).unwrap_or(u32::MAX))
                .await
            else {
                return;
            };
            // Held only while reading: once stored, the control plane's budget applies.
            permits.forget();
            data.extend_from_slice(&chunk);
        }
        shared.snapshot_inflight.add_permits(data.len());
        if reset {
            continue;
        }
        if too_large {
            let limit = u32::try_from(shared.max_snapshot).unwrap_or(u32::MAX);
            let _ = me.control_tx.try_send(ServerMessage::SnapshotRejected {
                code: baton_protocol::ErrorCode::PayloadTooLarge,
                value: limit,
            });
            continue;
        }
        let input = Input::Snapshot {
            conn: id,
            data: data.freeze(),
        };
        if shared.inputs.send(input).await.is_err() {
            return;
        }
    }
}

/// Reports the connection's RTT to the control plane now and then.
async fn report_rtt(conn: &quinn::Connection, shared: &Shared, id: ConnId) {
    let mut tick = tokio::time::interval(RTT_REPORT_INTERVAL);
    loop {
        tick.tick().await;
        let input = Input::Rtt {
            conn: id,
            rtt: conn.rtt(),
        };
        if shared.inputs.send(input).await.is_err() {
            return;
        }
    }
}

/// Control requests a connection may make in a burst, and their refill interval.
const REQUEST_BURST: u32 = 32;
const REQUEST_REFILL: Duration = Duration::from_millis(50);

struct RequestBudget {
    tokens: u32,
    last: tokio::time::Instant,
}

impl RequestBudget {
    fn new() -> Self {
        RequestBudget {
            tokens: REQUEST_BURST,
            last: tokio::time::Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = tokio::time::Instant::now();
        let earned =
            (now.duration_since(self.last).as_millis() / REQUEST_REFILL.as_millis()) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(REQUEST_BURST);
            self.last = now;
        }
        if self.tokens == 0 {
            tokio::time::sleep(REQUEST_REFILL).await;
            self.last = tokio::time::Instant::now();
            self.tokens = 1;
        }
        self.tokens -= 1;
    }
}

/// Drops a client caused, reported back to it at most once a second per reason.
#[derive(Default)]
struct DropReport {
    counts: [u32; 5],
    values: [u32; 5],
}

impl DropReport {
    const REASONS: [DropReason; 5] = [
        DropReason::TooLarge,
        DropReason::UnknownPeer,
        DropReason::Congested,
        DropReason::NotBound,
        DropReason::Malformed,
    ];

    fn add(&mut self, reason: DropReason, value: u32) {
        if let Some(i) = Self::REASONS.iter().position(|r| *r == reason) {
            self.counts[i] = self.counts[i].saturating_add(1);
            self.values[i] = value;
        }
    }

    fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    fn flush(&mut self, tx: &mpsc::Sender<ServerMessage>) {
        for (i, reason) in Self::REASONS.iter().enumerate() {
            if self.counts[i] > 0 {
                // Best effort: a full control queue means the client is not listening anyway.
                let _ = tx.try_send(ServerMessage::DatagramsDropped {
                    reason: *reason,
                    count: self.counts[i],
                    value: self.values[i],
                });
                self.counts[i] = 0;
            }
        }
    }
}

const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The data plane for one connection: runs until the connection ends.
async fn forward_datagrams(me: &ConnShared, shared: &Shared) -> Option<CloseCode> {
    let mut report = DropReport::default();
    let mut report_at: Option<tokio::time::Instant> = None;
    loop {
        let datagram = tokio::select! {
            biased;
            d = me.conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => return None,
            },
            _ = sleep_until_opt(report_at) => {
                report.flush(&me.control_tx);
                report_at = None;
                continue;
            }
        };
        if let Err((reason, value)) = forward(me, shared, datagram) {
            shared.metrics.dropped(reason).inc();
            report.add(reason, value);
            if report_at.is_none() {
                report_at = Some(tokio::time::Instant::now() + DROP_REPORT_INTERVAL);
            }
        }
        debug_assert!(report_at.is_some() || report.is_empty());
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Forwards one datagram. On a drop, returns the reason and its detail value.
fn forward(me: &ConnShared, shared: &Shared, datagram: Bytes) -> Result<(), (DropReason, u32)> {
    let (dest, payload) = datagram::split(&datagram).map_err(|_| (DropReason::Malformed, 0))?;
    let payload_len = payload.len();
    if payload_len > shared.max_payload {
        return Err((DropReason::TooLarge, shared.max_payload as u32));
    }
    let route = me.route.load();
    let Some(route) = route.as_ref() else {
        return Err((DropReason::NotBound, 0));
    };
    let table = route.table.load();
    // Turn the destination header into a source header. quinn hands out datagrams that share
    // their packet's buffer, so this is usually one small copy.
    let mut buf = match datagram.try_into_mut() {
        Ok(buf) => buf,
        Err(shared_buf) => BytesMut::from(&shared_buf[..]),
    };
    datagram::write_header(&mut buf, route.me.0);
    let out = buf.freeze();
    match Destination::from_u16(dest) {
        Destination::Peer(peer) => {
            let target = (peer != route.me).then(|| table.get(peer)).flatten();
            let Some(target) = target else {
                return Err((DropReason::UnknownPeer, u32::from(peer.0)));
            };
            send(shared, peer, target, out, payload_len)
        }
        Destination::Broadcast => {
            let mut result = Ok(());
            for m in table.members.iter().filter(|m| m.peer != route.me) {
                if let Err(drop) = send(shared, m.peer, &m.conn, out.clone(), payload_len) {
                    result = Err(drop);
                }
            }
            result
        }
    }
}

/// Sends one datagram to `target` (peer `peer`). On a drop, returns the reason and its value.
fn send(
    shared: &Shared,
    peer: PeerId,
    target: &quinn::Connection,
    datagram: Bytes,
    payload_len: usize,
) -> Result<(), (DropReason, u32)> {
    // Drop the newest rather than let quinn silently discard the oldest queued datagrams.
    if target.datagram_send_buffer_space() < datagram.len() {
        return Err((DropReason::Congested, u32::from(peer.0)));
    }
    match target.send_datagram(datagram) {
        Ok(()) => {
            shared.metrics.datagrams_forwarded.inc();
            shared.metrics.bytes_forwarded.inc_by(payload_len as u64);
            Ok(())
        }
        // The receiver is leaving; its departure is reported through the control plane.
        Err(quinn::SendDatagramError::ConnectionLost(_)) => {
            Err((DropReason::UnknownPeer, u32::from(peer.0)))
        }
        // The receiver's transport takes less than Baton promises (a non-conforming client):
        // report the limit that applies to it.
        Err(_) => {
            let limit = target
                .max_datagram_size()
                .map_or(0, |max| max.saturating_sub(datagram::HEADER_LEN));
            Err((
                DropReason::TooLarge,
                u32::try_from(limit).unwrap_or(u32::MAX),
            ))
        }
    }
}

/// Owns the control plane: feeds it inputs, admin calls and timeouts, and carries out its
/// outputs.
async fn control_task(
    mut cp: ControlPlane,
    mut inputs: mpsc::Receiver<Input>,
    mut admin: mpsc::Receiver<AdminCall>,
    shared: Arc<Shared>,
    hooks: HookSender,
) {
    let mut lobby = Lobby {
        hooks,
        codes: std::collections::HashMap::new(),
    };
    let mut tables: std::collections::HashMap<AllocationId, Arc<ArcSwap<Table>>> =
        std::collections::HashMap::new();
    loop {
        let deadline = cp.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            input = inputs.recv() => match input {
                Some(input) => cp.handle(Instant::now(), input),
                None => break,
            },
            call = admin.recv() => match call {
                Some(call) => call(&mut cp, Instant::now()),
                None => break,
            },
            _ = sleep_until_opt(deadline) => cp.handle_timeout(Instant::now()),
        }
        while let Some(output) = cp.poll_output() {
            apply(output, &shared, &mut tables, &mut lobby);
        }
        shared.metrics.allocations.set(cp.allocation_count() as i64);
    }
}

fn apply(
    output: Output,
    shared: &Shared,
    tables: &mut std::collections::HashMap<AllocationId, Arc<ArcSwap<Table>>>,
    lobby: &mut Lobby,
) {
    match output {
        Output::Send { conn, msg } => {
            let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) else {
                return;
            };
            match c.control_tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(conn, "control queue full; closing");
                    close(&c.conn, CloseCode::ControlBacklog);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        Output::Close { conn, code } => {
            if let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) {
                c.route.store(None);
                close(&c.conn, code);
            }
        }
        Output::Bound {
            conn,
            allocation,
            peer,
        } => {
            let table = tables.entry(allocation).or_default().clone();
            if let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) {
                c.route.store(Some(Arc::new(Route { me: peer, table })));
            }
        }
        Output::Route {
            allocation,
            members,
        } => {
            if members.is_empty() {
                if let Some(table) = tables.remove(&allocation) {
                    table.store(Arc::new(Table::default()));
                }
                return;
            }
            let members = members
                .into_iter()
                .filter_map(|(peer, conn)| {
                    shared.conns.get(&conn).map(|c| Member {
                        peer,
                        conn: c.conn.clone(),
                    })
                })
                .collect();
            tables
                .entry(allocation)
                .or_default()
                .store(Arc::new(Table { members }));
        }
        Output::DeliverSnapshot { conn, data } => {
            let Some(c) = shared.conns.get(&conn).map(|c| c.conn.clone()) else {
                return;
            };
            // Its own stream and task: a large snapshot never holds up the control task,
            // datagrams or control messages. The task ends with the connection.
            tokio::spawn(async move {
                let result = async {
                    let mut stream = c.open_uni().await?;
                    stream.write_all(&[stream_kind::SNAPSHOT]).await?;
                    stream.write_all(&data).await?;
                    stream.finish()?;
                    stream.stopped().await?;
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = result {
                    debug!(conn, cause = %e, "snapshot delivery failed");
                }
            });
        }
        Output::Event(event) => {
            record(&event, &shared.metrics);
            lobby.publish(event);
        }
    }
}

/// Turns lifecycle events into lobby events, remembering each allocation's join code (lobby
/// events carry it; the control plane's events name only the allocation).
struct Lobby {
    hooks: HookSender,
    codes: std::collections::HashMap<AllocationId, baton_protocol::JoinCode>,
}

impl Lobby {
    fn publish(&mut self, event: Event) {
        use crate::hooks::LobbyEventKind as Kind;
        let (allocation, kind) = match event {
            Event::AllocationCreated { allocation, code } => {
                self.codes.insert(allocation, code);
                (allocation, Kind::AllocationCreated {})
            }
            Event::PeerJoined {
                allocation, peer, ..
            } => (allocation, Kind::PeerJoined { peer: peer.0 }),
            Event::PeerLeft {
                allocation,
                peer,
                reason,
            } => (
                allocation,
                Kind::PeerLeft {
                    peer: peer.0,
                    reason: reason.as_str().to_owned(),
                },
            ),
            Event::HostDisconnected {
                allocation,
                host,
                reason,
            } => (
                allocation,
                Kind::HostDisconnected {
                    host: host.0,
                    reason: reason.as_str().to_owned(),
                },
            ),
            Event::HostElected {
                allocation,
                host,
                by,
            } => (
                allocation,
                Kind::HostElected {
                    host: host.0,
                    by: by.as_str().to_owned(),
                },
            ),
            Event::AllocationMigrated { from, to, host } => {
                if let Some(code) = self.codes.remove(&from) {
                    self.codes.insert(to, code);
                }
                (
                    to,
                    Kind::AllocationMigrated {
                        from: from.to_string(),
                        to: to.to_string(),
                        host: host.0,
                    },
                )
            }
            Event::AllocationClosed { allocation, reason } => {
                let kind = Kind::AllocationClosed {
                    reason: reason.as_str().to_owned(),
                };
                if let Some(code) = self.codes.remove(&allocation) {
                    self.hooks.publish(kind, allocation, code);
                }
                return;
            }
            Event::Refused { .. } => return,
        };
        if let Some(code) = self.codes.get(&allocation) {
            self.hooks.publish(kind, allocation, *code);
        }
    }
}

/// Logs a lifecycle event and counts it.
fn record(event: &Event, metrics: &Metrics) {
    match event {
        Event::AllocationCreated { allocation, code } => {
            metrics.allocations_created.inc();
            info!(%allocation, %code, "allocation created");
        }
        Event::PeerJoined {
            allocation,
            peer,
            via,
        } => {
            match via {
                JoinedVia::Code => {
                    metrics.joins.inc();
                }
                JoinedVia::Rejoin => {
                    metrics.rejoins.inc();
                }
                JoinedVia::Host => {}
            }
            info!(%allocation, %peer, ?via, "peer joined");
        }
        Event::PeerLeft {
            allocation,
            peer,
            reason,
        } => {
            metrics.left(*reason).inc();
            info!(%allocation, %peer, %reason, "peer left");
        }
        Event::HostDisconnected {
            allocation,
            host,
            reason,
        } => {
            info!(%allocation, %host, %reason, "host disconnected");
        }
        Event::HostElected {
            allocation,
            host,
            by,
        } => {
            info!(%allocation, %host, by = by.as_str(), "host elected");
        }
        Event::AllocationMigrated { from, to, host } => {
            info!(%from, %to, %host, "allocation migrated");
        }
        Event::AllocationClosed { allocation, reason } => {
            info!(%allocation, reason = reason.as_str(), "allocation closed");
        }
        Event::Refused { code } => {
            metrics.refused(*code).inc();
            debug!(%code, "request refused");
        }
    }
}
