//! The async driver: the QUIC endpoints, one task per connection, the control task that owns the
//! [`ControlPlane`], and the datagram forwarding path. One file per concern:
//!
//! - this module: [`Relay`] (bind, run, shutdown), [`RelayError`], [`transport_config`], and
//!   the state every task shares ([`Shared`], one [`ConnShared`] per connection);
//! - `socket`: the UDP sockets and connection-ID steering ([`steering`]) across endpoints;
//! - `lane`: one single-threaded runtime per endpoint, where its connections run;
//! - `accept`: the accept loop; `admission`: the connection, handshake and per-address
//!   limits it applies;
//! - `connection`: one task per connection, running with a `biased` select, in priority order,
//!   1. datagrams (the hot path, `forward`): read, look up the allocation's routing table
//!      (`routing`), send;
//!   2. the control stream (`control_stream`): frames in, bounded and decoded, to the control
//!      task; messages from the control task out;
//!   3. migration snapshot uploads (`snapshot`) and RTT reports;
//!   4. while it hosts its allocation, the host watch (`liveness`): a host silent for its
//!      allocation's host-loss timeout is closed with code 9 and its allocation migrates;
//! - `control_task`: the only owner of the control plane and of the routing tables' write side;
//!   it carries out the control plane's outputs and hands lifecycle events to `events` (metrics,
//!   logs, hooks);
//! - `handle`: [`RelayHandle`], which runs admin calls on the control task;
//! - `probe`: the NAT probe endpoint (`probe_listen`), its own accept loop on the caller's
//!   runtime, apart from the control plane.
//!
//! [`Relay::bind`] and [`Relay::shutdown`] run on the caller's task, and the control task on the
//! caller's runtime; a connection's task, and all it runs, on its endpoint's lane. Datagram
//! forwarding only reads an [`ArcSwap`](arc_swap::ArcSwap)ed table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use baton_protocol::{CloseCode, ServerMessage};
use dashmap::DashMap;
use quinn::VarInt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::control::{ConnId, ControlPlane, Input};
use crate::metrics::Metrics;
use crate::{defaults, tls, RelayConfig};

mod accept;
mod admission;
mod bucket;
mod connection;
mod control_stream;
mod control_task;
mod events;
mod fleet;
mod forward;
pub(crate) mod handle;
mod held;
mod lane;
mod liveness;
mod probe;
mod routing;
mod snapshot;
mod socket;
pub mod steering;

use accept::accept_loop;
use bucket::{Clock, Rate};
use control_task::control_task;
use handle::AdminCall;
pub use handle::RelayHandle;
use lane::Lane;
use routing::Route;
use snapshot::SNAPSHOT_INFLIGHT;

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
    /// Fleet mode could not start: a bad node id, or the directory could not be reached.
    #[error("{0}")]
    Fleet(String),
    /// `probe_listen` names no address it can bind (`auto` after listen port 65535).
    #[error("{0}")]
    ProbeListen(#[source] crate::ConfigError),
}

/// What every part of the relay knows about one connection.
struct ConnShared {
    conn: quinn::Connection,
    control_tx: mpsc::Sender<ServerMessage>,
    /// Set by the control task once the connection is in an allocation; read by `forward`.
    route: ArcSwapOption<Route>,
    /// Whether the connection hosts its allocation now: set by the control task at every
    /// routing update, read by `snapshot` before it reads an upload.
    host: AtomicBool,
    /// The code the relay closed the connection with, plus one; 0 while the relay has not
    /// closed it. Read when the departure is reported (`connection::leave_reason`).
    closed_with: AtomicU32,
    /// The client's address as last reported to the control plane (`connection::AddressWatch`).
    address: connection::AddressWatch,
    /// Its allocation's host-loss timeout and the wake-up for when it becomes host
    /// (`connection::HostWatch`).
    host_watch: connection::HostWatch,
}

/// State shared by all tasks.
struct Shared {
    metrics: Arc<Metrics>,
    conns: DashMap<ConnId, Arc<ConnShared>>,
    inputs: mpsc::Sender<Input>,
    max_payload: usize,
    max_control_frame: usize,
    /// Credential secrets; each control request's credential is checked against them on its
    /// connection's task.
    auth: crate::auth::AuthSecrets,
    /// Who may start a handshake: connection, handshake and per-address limits.
    admission: Arc<admission::Admission>,
    max_snapshot: usize,
    /// Bytes of snapshot uploads being read, across all connections; a reader waits for
    /// permits chunk by chunk, so uploads cannot exhaust memory before they are stored.
    snapshot_inflight: Arc<tokio::sync::Semaphore>,
    next_conn: AtomicU64,
    /// The per-client limits' clock.
    clock: Clock,
    /// Datagrams and payload bytes each connection may send (`ClientLimits` in `forward`).
    client_datagrams: Rate,
    client_bytes: Rate,
    /// Payload bytes each allocation may have delivered, if capped (its routing entry's
    /// bucket).
    allocation_bytes: Option<Rate>,
    /// Control requests each connection may make (paced in `control_stream`).
    client_requests: Rate,
    /// Fleet mode's link to the directory; `None` on a relay standing alone.
    fleet: Option<fleet::FleetLink>,
    /// Payload bytes that datagrams held for members on their way may still take (`held`).
    held_budget: Arc<held::HeldBudget>,
}

/// A running relay. Call [`Relay::shutdown`] for a graceful stop. Dropping it instead stops its
/// data-plane threads at once: connections end without a close, and clients see them time out.
pub struct Relay {
    /// The QUIC endpoints, all on the same port (one unless `endpoints` is set higher).
    endpoints: Vec<quinn::Endpoint>,
    /// One data-plane thread per endpoint, serving its connections.
    lanes: Vec<Lane>,
    /// The NAT probe endpoint, unless `probe_listen` is off.
    probe: Option<probe::ProbeEndpoint>,
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
        .datagram_send_buffer_size(defaults::DATAGRAM_SEND_BUFFER)
        // No path-MTU probing: every datagram fits QUIC's 1200-byte minimum (the payload limit
        // is chosen for it) and control messages are small, so a larger MTU would only shorten
        // the rare snapshot transfer, while the probes (about five padded packets per
        // connection each way, each parsed as some 1,400 one-byte PADDING frames) were a
        // quarter of the relay's instructions per connection set-up.
        .mtu_discovery_config(None);
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
        let metrics = Arc::new(Metrics::new());
        let crypto = tls::server_crypto(&material, metrics.tls_tickets.clone())?;
        let quic_crypto = Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
                .map_err(|e| RelayError::Quic(e.to_string()))?,
        );
        let mut server_config = quinn::ServerConfig::with_crypto(quic_crypto.clone());
        server_config.transport_config(Arc::new(transport_config(&config)?));
        server_config
            .max_incoming(defaults::INCOMING_QUEUE)
            .incoming_buffer_size(defaults::INCOMING_BUFFER)
            .incoming_buffer_size_total(defaults::INCOMING_BUFFER_TOTAL);
        let bind_error = |source| RelayError::Bind {
            addr: config.listen,
            source,
        };
        let sockets = socket::bind_udp(config.listen, config.endpoints(), config.udp_buffer())
            .map_err(bind_error)?;
        socket::steer(&sockets);
        let count = sockets.len();
        let mut endpoints = Vec::with_capacity(count);
        let mut lanes = Vec::with_capacity(count);
        for (index, udp) in sockets.into_iter().enumerate() {
            let lane = Lane::start(index).map_err(RelayError::Thread)?;
            let endpoint = quinn::Endpoint::new(
                socket::endpoint_config(index),
                Some(server_config.clone()),
                udp,
                lane.quinn_runtime(),
            )
            .map_err(bind_error)?;
            endpoints.push(endpoint);
            lanes.push(lane);
        }

        // The probe endpoint, on the IP clients reach the relay at (port 0 stays 0: auto on an
        // ephemeral listen port takes another ephemeral port).
        let probe = match config
            .probe_listen()
            .resolve(config.listen)
            .map_err(RelayError::ProbeListen)?
        {
            Some(addr) => Some(probe::ProbeEndpoint(probe::bind(
                addr,
                quic_crypto.clone(),
            )?)),
            None => None,
        };
        let probe_port = probe
            .as_ref()
            .and_then(|e| e.0.local_addr().ok())
            .map_or(0, |a| a.port());

        if config.auth_secrets.is_open() && !config.listen.ip().is_loopback() {
            warn!(
                listen = %config.listen,
                "no --auth-secret: this relay is open; anyone who can reach it may create \
                 allocations and relay traffic through it"
            );
        }
        let (input_tx, input_rx) = mpsc::channel(4096);
        let (admin_tx, admin_rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        // The admin listener is bound before fleet mode starts, so a fleet node publishes the
        // admin address it was given (port 0 included) from its first heartbeat.
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| RelayError::Bind { addr, source })?,
            ),
            None => None,
        };
        let mut first_codes = Vec::new();
        let mut placement = None;
        let fleet = match &config.fleet {
            Some(fleet) => {
                // Port 0 (an in-process relay on a port the kernel picks) announces the port
                // it was given.
                let mut fleet = fleet.clone();
                if fleet.public_addr.port() == 0 {
                    if let Ok(bound) = endpoints[0].local_addr() {
                        fleet.public_addr.set_port(bound.port());
                    }
                }
                let admin_addr = match &admin_listener {
                    Some(listener) => {
                        let bound = listener.local_addr().map_err(|source| RelayError::Bind {
                            addr: fleet.public_addr,
                            source,
                        })?;
                        let advertised = crate::admin::placement::advertise(
                            config.admin_advertise.as_deref(),
                            bound,
                            fleet.public_addr,
                        )
                        .map_err(RelayError::Fleet)?;
                        Some(advertised)
                    }
                    None => None,
                };
                let (link, codes) = fleet::FleetLink::start(
                    &config,
                    &fleet,
                    admin_addr,
                    input_tx.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                    &tasks,
                )
                .await
                .map_err(|e| RelayError::Fleet(e.to_string()))?;
                first_codes = codes;
                let me = crate::directory::NodeId::parse(&fleet.node_id)
                    .map_err(|e| RelayError::Fleet(format!("--node-id: {e}")))?;
                placement = Some(
                    crate::admin::placement::Placement::new(
                        link.directory().clone(),
                        me,
                        fleet.public_addr,
                        fleet.server_name.clone(),
                        config.admin_token.clone(),
                    )
                    .map_err(|e| RelayError::Fleet(format!("the placement HTTP client: {e}")))?,
                );
                Some(link)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            metrics: metrics.clone(),
            conns: DashMap::new(),
            inputs: input_tx,
            max_payload: config.max_datagram_payload(),
            max_control_frame: config.max_control_frame(),
            auth: config.auth_secrets.clone(),
            admission: admission::Admission::new(&config, metrics.clone()),
            max_snapshot: config.max_snapshot(),
            snapshot_inflight: Arc::new(tokio::sync::Semaphore::new(
                config.snapshot_budget().min(SNAPSHOT_INFLIGHT),
            )),
            next_conn: AtomicU64::new(1),
            clock: Clock::start(),
            client_datagrams: per_second(config.client_datagrams_per_second(), 0),
            // A byte budget smaller than one datagram would stop the largest ones for good.
            client_bytes: per_second(
                config.client_bytes_per_second(),
                config.max_datagram_payload(),
            ),
            allocation_bytes: match config.allocation_bytes_per_second() {
                0 => None,
                cap => Some(per_second(cap, config.max_datagram_payload())),
            },
            client_requests: Rate::new(
                config.client_requests_per_second() as u64,
                defaults::REQUEST_BURST,
            ),
            fleet,
            held_budget: Arc::new(held::HeldBudget::new(held::HELD_BUDGET)),
        });

        let node = config.fleet.as_ref().map(|f| f.node_id.clone());
        let hooks = crate::hooks::spawn(
            &config.hooks,
            node,
            metrics.clone(),
            shutdown.clone(),
            &tasks,
        );
        if let Some(fleet) = &config.fleet {
            metrics.set_node(&fleet.node_id, &fleet.region);
        }
        // 256-bit token key and RNG seed from the OS RNG: no 64-bit seed to search offline.
        // A fleet node's token key comes from the fleet secret instead, so every node issues
        // and verifies the same reconnect tokens and migration tickets.
        let mut secrets = crate::control::Secrets::from_os_rng();
        if let Some(fleet) = &config.fleet {
            secrets.hmac_key =
                crate::crypto::hmac_sha256(fleet.fleet_secret.as_bytes(), &[b"baton token key"]);
        }
        let mut cp = ControlPlane::new(&config, secrets, Instant::now());
        cp.set_probe_port(probe_port);
        if config.fleet.is_some() {
            cp.set_unix_clock(Instant::now(), crate::auth::unix_now());
            // Before anyone can connect: a new node can place allocations at once.
            cp.handle(Instant::now(), Input::CodesClaimed { codes: first_codes });
        }
        let control_done = tokio::spawn(
            control_task(cp, input_rx, admin_rx, shared.clone(), hooks.clone())
                .instrument(info_span!("control")),
        );

        let metrics_for_probe = metrics.clone();
        let handle = RelayHandle {
            admin: admin_tx.clone(),
            metrics,
        };
        let admin_addr = match admin_listener {
            Some(listener) => {
                let addr = config.admin_listen.unwrap_or(defaults::ADMIN_LISTEN);
                let (bound, task) = crate::admin::spawn(
                    listener,
                    handle.clone(),
                    config.admin_token.clone(),
                    config.admin_limits.clone(),
                    hooks,
                    placement,
                    shutdown.clone(),
                )
                .map_err(|source| RelayError::Bind { addr, source })?;
                tasks.spawn(async move {
                    let _ = task.await;
                });
                Some(bound)
            }
            None => None,
        };

        for (endpoint, lane) in endpoints.iter().zip(&lanes) {
            let delay = shared.metrics.lane_delay.clone();
            lane.spawn_probe(move |late| delay.observe(late.as_secs_f64()));
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
        if let Some(endpoint) = &probe {
            tasks.spawn(probe::probe_loop(
                endpoint.0.clone(),
                Arc::new(probe::ProbeLimiter::new(
                    probe::SOURCE_BURST,
                    probe::SOURCE_PER_SECOND,
                    probe::MAX_SOURCES,
                )),
                metrics_for_probe,
                tasks.clone(),
                shutdown.clone(),
            ));
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
            probe,
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

    /// The NAT probe endpoint's address (SPEC section 17.5), unless `probe_listen` is off.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe.as_ref().and_then(|e| e.0.local_addr().ok())
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
        let probe = self.probe.as_ref().map(|p| &p.0);
        for endpoint in self.endpoints.iter().chain(probe) {
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

/// A rate of `per_second` whose burst is one second's worth, and at least `min_burst`.
fn per_second(per_second: usize, min_burst: usize) -> Rate {
    let per_second = per_second as u64;
    Rate::new(per_second, per_second.max(min_burst as u64))
}

/// Sleeps until `at`, or forever if there is none.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
