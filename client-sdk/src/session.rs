//! A session: one QUIC connection to the relay, bound to one allocation (and, after a host
//! migration, to its successor: the connection moves in place).
//!
//! ## Connecting
//! [`connect`] builds a fresh quinn endpoint, completes the QUIC handshake within the connect
//! timeout, opens the control stream, sends the bind request (`CreateAllocation`, `ClaimHost`,
//! `Join` or `Rejoin`) at once (quinn only tells the relay about a stream when data is sent on
//! it) and reads frames until the reply carrying the bind request's id.
//!
//! ## Concurrency model
//! A [`Session`] owns its background tasks in a [`JoinSet`], so all are aborted when it is
//! dropped:
//! - the **reader** reads relay frames from the control stream. Replies complete the pending
//!   request with the same request id; events update the member set and the session's role
//!   and go into a bounded event queue (drop-and-count when full). It also drives a host
//!   migration: on `Promote` it sends `MigrateAllocation` by itself, and on the reply it waits
//!   (bounded) for the snapshot stream before reading on, so [`Event::HostMigrated`] comes
//!   before the [`Event::PeerRejoined`]s that follow it on the wire. When the connection ends
//!   it records the reason once, fails every pending request with it and ends the queue, after
//!   which [`Session::next_event`] yields the terminal events.
//! - the **writer** owns the send half of the control stream and writes queued request frames,
//!   so a request future dropped half-way can never leave half a frame on the stream.
//! - the **snapshot receiver** accepts the relay's unidirectional streams (one at a time) and
//!   hands a delivered snapshot to the reader ([`crate::snapshot`]).
//! - the **snapshot stager** uploads the latest snapshot staged with
//!   [`Session::stage_snapshot`] at most once per snapshot interval while this client is host.
//!
//! Datagrams bypass all of them: [`Session::send_to`] and [`Session::recv`] use the quinn
//! connection directly.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_protocol::datagram::{self, Destination};
use baton_protocol::frame::{self, DEFAULT_MAX_FRAME_LEN, LEN_PREFIX};
use baton_protocol::{
    AllocationId, ClientMessage, CloseCode, DecodeError, ErrorCode, JoinCode, LeaveReason, PeerId,
    ServerMessage,
};
use bytes::Bytes;
use quinn::{
    ConnectError, ConnectionError, ReadError, ReadExactError, RecvStream, SendDatagramError,
    SendStream, VarInt, WriteError,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::error::{check_payload, disconnect_reason, handshake_error, refusal};
use crate::snapshot::{self, Delivered, UploadError, Uploads};
use crate::{defaults, ClientConfig, DisconnectReason, Error, Event, ReconnectToken};

/// Request id of the bind request (`CreateAllocation`, `ClaimHost`, `Join` or `Rejoin`); later
/// requests count up from the next value.
pub(crate) const BIND_REQUEST_ID: u32 = 1;

/// What the relay granted in answer to the bind request.
#[derive(Debug)]
pub(crate) enum Bound {
    /// Answer to `CreateAllocation` or `ClaimHost`.
    Created {
        code: JoinCode,
        code_ttl_secs: u32,
        max_peers: u16,
    },
    /// Answer to `Join` or `Rejoin`.
    Joined,
}

/// An established connection to the relay, bound to one allocation: datagrams, events, the
/// member set and the host role. Obtained through [`Host`](crate::Host) or
/// [`Peer`](crate::Peer), which dereference to it.
///
/// The host role can move: when the host is lost the relay elects another member, whose SDK
/// takes over by itself ([`Event::HostLost`], then [`Event::HostMigrated`]). Host operations
/// ([`Session::kick`], [`Session::revoke_join_code`], [`Session::upload_snapshot`]) are
/// therefore on every session and work whenever [`Session::is_host`] is true.
///
/// All methods take `&self`, so a session can be shared (for example in an `Arc`) and
/// [`recv`](Session::recv) and [`next_event`](Session::next_event) can be awaited
/// concurrently, in separate tasks or in one `tokio::select!` (both are cancel-safe).
///
/// Dropping a session closes its connection (as [`Session::close`] does, without waiting).
pub struct Session {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    requests: mpsc::Sender<Bytes>,
    events: tokio::sync::Mutex<EventQueue>,
    local_peer: PeerId,
    max_payload: usize,
    request_timeout: Duration,
    _tasks: JoinSet<()>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("relay", &self.shared.conn.remote_address())
            .field("allocation", &self.allocation())
            .field("local_peer", &self.local_peer)
            .field("host", &self.host())
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// This client's peer id in the allocation. It never changes, across host migrations too.
    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    /// The allocation this session belongs to: the one it joined, or its successor after a
    /// host migration.
    pub fn allocation(&self) -> AllocationId {
        lock(&self.shared.role).allocation
    }

    /// The current host's peer id, or `None` while the host is lost and another member is
    /// taking over.
    pub fn host(&self) -> Option<PeerId> {
        lock(&self.shared.role).host
    }

    /// Whether this client is the host (it created the allocation, or took over in a host
    /// migration).
    pub fn is_host(&self) -> bool {
        self.shared.is_host()
    }

    /// The join code of the allocation, when this session knows it: always on the host, on a
    /// peer that joined by code; `None` on a session that came back with
    /// [`Peer::rejoin`](crate::Peer::rejoin). A host migration keeps the code.
    pub fn join_code(&self) -> Option<JoinCode> {
        lock(&self.shared.role).join_code
    }

    /// What this client needs to come back under its peer id after losing its connection
    /// (a crash, a network change): pass it to [`Peer::rejoin`](crate::Peer::rejoin). It stays
    /// valid across host migrations; keep it somewhere that survives the client.
    pub fn reconnect_token(&self) -> ReconnectToken {
        let role = lock(&self.shared.role);
        ReconnectToken {
            allocation: role.allocation,
            peer: self.local_peer,
            token: role.reconnect_token,
        }
    }

    /// The largest datagram payload the relay carries, in bytes; larger payloads are refused
    /// locally with [`Error::PayloadTooLarge`].
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The relay's address.
    pub fn relay_addr(&self) -> SocketAddr {
        self.shared.conn.remote_address()
    }

    /// The current members of the allocation, this client and the host included, in id
    /// order. Kept up to date from membership events as the session reads them (independently
    /// of whether the application reads [`Session::next_event`]).
    pub fn members(&self) -> Vec<PeerId> {
        lock(&self.shared.members).iter().copied().collect()
    }

    /// The current round-trip time estimate to the relay.
    pub fn rtt(&self) -> Duration {
        self.shared.conn.rtt()
    }

    /// Why the connection ended, or `None` while it is up.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.shared
            .conn
            .close_reason()
            .map(|e| self.shared.reason(&e))
    }

    /// Datagrams received from the relay that were too short to carry a header and were
    /// skipped by [`Session::recv`].
    pub fn malformed_datagrams(&self) -> u64 {
        self.shared.malformed_datagrams.load(Ordering::Relaxed)
    }

    /// Events dropped because the application did not read [`Session::next_event`] and the
    /// queue ([`defaults::EVENT_QUEUE`]) was full. [`Session::members`] stays accurate
    /// regardless.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped_events.load(Ordering::Relaxed)
    }

    /// Sends `payload` to one member of the allocation as an unreliable QUIC datagram.
    ///
    /// Returns once the datagram is queued; like any datagram it may be lost, and the relay
    /// reports datagrams it dropped as [`Event::DatagramsDropped`] (for example those sent to
    /// a host just lost).
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`] if `payload` exceeds [`Session::max_payload`] (nothing is
    /// sent), [`Error::UnknownPeer`] for the reserved broadcast id, [`Error::Disconnected`] once
    /// the connection has ended.
    pub fn send_to(&self, peer: PeerId, payload: &[u8]) -> Result<(), Error> {
        if peer.0 == datagram::BROADCAST {
            return Err(Error::UnknownPeer(peer));
        }
        self.send(Destination::Peer(peer), payload)
    }

    /// Sends `payload` to the current host, as [`Session::send_to`] with [`Session::host`]. After
    /// a host migration this goes to the new host.
    ///
    /// # Errors
    /// [`Error::HostMigrating`] while the host is lost and no member has taken over yet
    /// (nothing is sent, so nothing can reach a member that is not the host); otherwise as
    /// [`Session::send_to`].
    pub fn send_to_host(&self, payload: &[u8]) -> Result<(), Error> {
        let host = self.host().ok_or(Error::HostMigrating)?;
        self.send_to(host, payload)
    }

    /// Sends `payload` to every other member of the allocation, as [`Session::send_to`] does.
    ///
    /// # Errors
    /// As [`Session::send_to`].
    pub fn broadcast(&self, payload: &[u8]) -> Result<(), Error> {
        self.send(Destination::Broadcast, payload)
    }

    fn send(&self, destination: Destination, payload: &[u8]) -> Result<(), Error> {
        check_payload(payload.len(), self.max_payload)?;
        // One copy: header and payload into the buffer quinn takes ownership of.
        let datagram = Bytes::from(datagram::encode(destination.to_u16(), payload));
        self.shared
            .conn
            .send_datagram(datagram)
            .map_err(|e| match e {
                SendDatagramError::TooLarge => Error::PayloadTooLarge {
                    len: payload.len(),
                    limit: self
                        .shared
                        .conn
                        .max_datagram_size()
                        .map_or(0, |max| max.saturating_sub(datagram::HEADER_LEN)),
                },
                SendDatagramError::UnsupportedByPeer => {
                    Error::Protocol("the relay does not accept QUIC datagrams".into())
                }
                SendDatagramError::Disabled => {
                    Error::Config("QUIC datagrams are disabled locally".into())
                }
                SendDatagramError::ConnectionLost(e) => Error::Disconnected(self.shared.reason(&e)),
            })
    }

    /// Receives the next datagram: the sender's peer id (stamped by the relay, so it cannot be
    /// spoofed) and the payload. Datagrams too short to carry a header are skipped and counted
    /// ([`Session::malformed_datagrams`]).
    ///
    /// Cancel-safe: dropping the future loses no datagram.
    ///
    /// # Errors
    /// [`Error::Disconnected`] once the connection has ended.
    pub async fn recv(&self) -> Result<(PeerId, Bytes), Error> {
        loop {
            let datagram = self
                .shared
                .conn
                .read_datagram()
                .await
                .map_err(|e| Error::Disconnected(self.shared.reason(&e)))?;
            match datagram::split(&datagram) {
                Ok((source, _)) => {
                    return Ok((PeerId(source), datagram.slice(datagram::HEADER_LEN..)));
                }
                Err(_) => {
                    self.shared
                        .malformed_datagrams
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        len = datagram.len(),
                        "skipping datagram shorter than its header"
                    );
                }
            }
        }
    }

    /// The next event, waiting for one if necessary. After the connection ends this yields the
    /// queued events, then [`Event::HostLost`] if the host was lost and that had not been
    /// reported yet, then [`Event::Disconnected`] exactly once, then `None` forever.
    ///
    /// Cancel-safe: dropping the future loses no event. Concurrent callers take turns.
    pub async fn next_event(&self) -> Option<Event> {
        let mut queue = self.events.lock().await;
        if queue.terminal.is_none() {
            if let Some(event) = queue.rx.recv().await {
                return Some(event);
            }
            let reason = self.shared.final_reason();
            let mut terminal = VecDeque::with_capacity(2);
            if let DisconnectReason::HostLost(reason) = reason {
                let role = lock(&self.shared.role);
                if !role.heard_host_lost {
                    terminal.push_back(Event::HostLost {
                        host: role.last_host,
                        reason,
                        elected: None,
                    });
                }
            }
            terminal.push_back(Event::Disconnected { reason });
            queue.terminal = Some(terminal);
        }
        queue.terminal.as_mut().and_then(VecDeque::pop_front)
    }

    /// (Host) Removes `peer` from the allocation; its connection is closed with
    /// [`DisconnectReason::Kicked`] and the others see [`Event::PeerLeft`].
    ///
    /// # Errors
    /// [`Error::NotHost`] unless this client is the host, [`Error::UnknownPeer`] if `peer` is
    /// not a member, [`Error::RequestTimedOut`], [`Error::Disconnected`].
    pub async fn kick(&self, peer: PeerId) -> Result<(), Error> {
        self.request(|request_id| ClientMessage::Kick { request_id, peer })
            .await
    }

    /// (Host) Revokes the join code: later joins with it fail with [`Error::CodeRevoked`].
    /// Members already in stay.
    ///
    /// # Errors
    /// [`Error::NotHost`] unless this client is the host, [`Error::RequestTimedOut`],
    /// [`Error::Disconnected`].
    pub async fn revoke_join_code(&self) -> Result<(), Error> {
        self.request(|request_id| ClientMessage::RevokeCode { request_id })
            .await?;
        self.shared.code_revoked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the join code was revoked, by [`Session::revoke_join_code`] or by an operator
    /// ([`Event::JoinCodeRevoked`]).
    pub fn join_code_revoked(&self) -> bool {
        self.shared.code_revoked.load(Ordering::Relaxed)
    }

    /// (Host) Uploads a migration snapshot now and waits until the relay stored it: the game
    /// state a new host resumes from if this host is lost. It replaces the previous one. The
    /// upload runs on a stream of its own, so it does not hold up datagrams.
    ///
    /// Returns the stored size. An empty snapshot clears the stored one. Uploads are sent one
    /// at a time; dropping the future cancels this one (the relay keeps the previous
    /// snapshot).
    ///
    /// # Errors
    /// [`Error::NotHost`] unless this client is the host (nothing is sent),
    /// [`Error::PayloadTooLarge`] over the relay's limit (`limit` says what it is),
    /// [`Error::RelayFull`] when the relay's snapshot memory is spent,
    /// [`Error::RequestTimedOut`], [`Error::Disconnected`].
    pub async fn upload_snapshot(&self, snapshot: impl Into<Bytes>) -> Result<usize, Error> {
        let snapshot: Bytes = snapshot.into();
        let len = snapshot.len();
        match self.shared.upload(snapshot, self.request_timeout).await {
            Ok(stored) => Ok(stored),
            Err(UploadError::Rejected {
                code: ErrorCode::PayloadTooLarge,
                value,
            }) => Err(Error::PayloadTooLarge {
                len,
                limit: value as usize,
            }),
            Err(UploadError::Rejected { code, value }) => Err(refusal(code, value)),
            Err(UploadError::Failed(e)) => Err(e),
        }
    }

    /// Stages `snapshot` to be uploaded in the background: while this client is host, the
    /// latest staged snapshot is uploaded at most once per
    /// [`ClientConfig::snapshot_interval`], and only if it changed. Cheap enough to call every
    /// tick. A snapshot the relay refuses is reported as [`Event::SnapshotRejected`] and not
    /// retried until a new one is staged.
    ///
    /// A member that is not host may stage too: its snapshots start going up when it becomes
    /// host.
    pub fn stage_snapshot(&self, snapshot: impl Into<Bytes>) {
        self.shared.uploads.stage(snapshot.into());
    }

    /// Takes over as host of `allocation` with a migration `ticket` a lobby handed out (from
    /// the relay's `POST /v1/allocations/{id}/elect`), for lobbies that run their own
    /// election. The SDK does this by itself when the relay elects this client (`Promote`),
    /// so a game using the relay's election never calls it.
    ///
    /// Returns once this client is host of the successor allocation (after
    /// [`Event::HostMigrated`] is queued).
    ///
    /// # Errors
    /// [`Error::Unauthorized`] if the ticket is not valid for this client and this election
    /// round, or the allocation is not migrating; [`Error::RequestTimedOut`];
    /// [`Error::Disconnected`].
    pub async fn take_over(&self, allocation: AllocationId, ticket: [u8; 16]) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .begin_take_over(allocation, ticket, &self.requests, Some(tx))
            .await?;
        // Two bounded waits: the relay's reply, then the snapshot stream (the reader waits at
        // most the request timeout for it).
        match tokio::time::timeout(self.request_timeout * 2, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected(self.shared.final_reason())),
            Err(_) => Err(Error::RequestTimedOut {
                timeout: self.request_timeout * 2,
            }),
        }
    }

    /// Leaves the allocation: closes the connection with the normal close code, then waits
    /// briefly ([`defaults::CLOSE_WAIT`] at most) for the relay to acknowledge, so it learns at
    /// once rather than after its idle timeout. Afterwards [`Session::recv`] fails with
    /// [`DisconnectReason::ClosedLocally`] (unless the connection had already ended for another
    /// reason).
    ///
    /// If this client is the host, the relay starts a host migration for the others.
    pub async fn close(&self) {
        close_normally(&self.shared.conn);
        if tokio::time::timeout(defaults::CLOSE_WAIT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("relay did not acknowledge the close in time");
        }
    }

    /// Sends a request and waits for its `Done` or `Refused`.
    pub(crate) async fn request(
        &self,
        make: impl FnOnce(u32) -> ClientMessage,
    ) -> Result<(), Error> {
        let (id, reply) = self.shared.register()?;
        // Removes the entry if this future is dropped or times out.
        let _pending = PendingGuard {
            shared: &self.shared,
            id,
        };
        let message = make(id);
        tracing::debug!(
            request_id = id,
            kind = message.type_byte(),
            "sending request"
        );
        if self.requests.send(message.to_frame()).await.is_err() {
            return Err(Error::Disconnected(self.shared.final_reason()));
        }
        match tokio::time::timeout(self.request_timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected(self.shared.final_reason())),
            Err(_) => Err(Error::RequestTimedOut {
                timeout: self.request_timeout,
            }),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        close_normally(&self.shared.conn);
    }
}

fn close_normally(conn: &quinn::Connection) {
    let code = CloseCode::Normal;
    conn.close(
        VarInt::from_u32(code.to_u32()),
        code.description().as_bytes(),
    );
}

/// Connects to the relay, sends `bind` (which must carry [`BIND_REQUEST_ID`]) and returns the
/// session with what the relay granted.
pub(crate) async fn connect(
    config: &ClientConfig,
    bind: ClientMessage,
) -> Result<(Session, Bound), Error> {
    let (quinn_config, verify_log) = config.quinn_config()?;
    let relay = config.relay;
    let endpoint = quinn::Endpoint::client(config.local_addr())?;
    let connecting = endpoint
        .connect_with(quinn_config, relay, &config.server_name)
        .map_err(|e| match e {
            ConnectError::InvalidServerName(name) => {
                Error::Config(format!("invalid server name {name:?}"))
            }
            other => Error::RelayUnreachable {
                addr: relay,
                detail: other.to_string(),
            },
        })?;
    let conn = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            let err = handshake_error(&e, relay, verify_log.take());
            tracing::debug!(%relay, cause = %e, error = %err, "handshake failed");
            return Err(err);
        }
        Err(_) => {
            return Err(match verify_log.take() {
                Some(failure) => failure.into_error(),
                None => Error::RelayUnreachable {
                    addr: relay,
                    detail: format!("no QUIC handshake within {:?}", config.connect_timeout),
                },
            })
        }
    };
    tracing::debug!(%relay, rtt = ?conn.rtt(), "connected to relay");

    let (send, recv, reply, early) = match bind_on(&conn, &bind, config.request_timeout).await {
        Ok(bound) => bound,
        Err(err) => {
            close_normally(&conn);
            return Err(err);
        }
    };
    let join_code = match &bind {
        ClientMessage::Join { code, .. } => Some(*code),
        _ => None,
    };
    let (role, local_peer, max_payload, members, bound) = match (bind, reply) {
        (
            ClientMessage::CreateAllocation { .. } | ClientMessage::ClaimHost { .. },
            ServerMessage::AllocationCreated {
                allocation,
                code,
                code_ttl_secs,
                max_peers,
                max_payload,
                reconnect_token,
                ..
            },
        ) => (
            Role::new(allocation, PeerId::HOST, Some(code), reconnect_token),
            PeerId::HOST,
            max_payload,
            Vec::new(),
            Bound::Created {
                code,
                code_ttl_secs,
                max_peers,
            },
        ),
        (
            ClientMessage::Join { .. } | ClientMessage::Rejoin { .. },
            ServerMessage::Joined {
                allocation,
                peer,
                max_payload,
                host,
                reconnect_token,
                members,
                ..
            },
        ) => (
            Role::new(allocation, host, join_code, reconnect_token),
            peer,
            max_payload,
            members,
            Bound::Joined,
        ),
        (_, ServerMessage::Refused { code, value, .. }) => {
            close_normally(&conn);
            let err = refusal(code, value);
            tracing::debug!(%relay, %code, value, error = %err, "bind refused");
            return Err(err);
        }
        (bind, reply) => {
            close_normally(&conn);
            return Err(Error::Protocol(format!(
                "relay answered request type 0x{:02x} with message type 0x{:02x}",
                bind.type_byte(),
                reply.type_byte()
            )));
        }
    };

    let allocation = role.allocation;
    let mut member_set: BTreeSet<PeerId> = members.into_iter().collect();
    if let Some(host) = role.host {
        member_set.insert(host);
    }
    member_set.insert(local_peer);
    let shared = Arc::new(Shared {
        conn,
        local_peer,
        pending: Mutex::new(Pending {
            ended: None,
            waiting: HashMap::new(),
            next_id: BIND_REQUEST_ID.wrapping_add(1),
        }),
        members: Mutex::new(member_set),
        role: Mutex::new(role),
        uploads: Uploads::default(),
        local_close: Mutex::new(None),
        malformed_datagrams: AtomicU64::new(0),
        dropped_events: AtomicU64::new(0),
        code_revoked: AtomicBool::new(false),
    });
    let (event_tx, event_rx) = mpsc::channel(defaults::EVENT_QUEUE);
    let (request_tx, request_rx) = mpsc::channel(defaults::REQUEST_QUEUE);
    let (snapshot_tx, snapshot_rx) = mpsc::channel(1);
    let mut reader = ReaderIo {
        events: event_tx.clone(),
        requests: request_tx.clone(),
        snapshots: snapshot_rx,
        wait: config.request_timeout,
    };
    for message in early {
        shared.dispatch(message, &mut reader).await;
    }
    let span = tracing::info_span!("baton", alloc = %allocation, peer = %local_peer);
    let mut tasks = JoinSet::new();
    tasks.spawn(run_reader(shared.clone(), recv, reader).instrument(span.clone()));
    tasks.spawn(run_writer(shared.clone(), send, request_rx).instrument(span.clone()));
    tasks.spawn(
        snapshot::receive(shared.clone(), snapshot_tx, config.max_snapshot)
            .instrument(span.clone()),
    );
    tasks.spawn(
        snapshot::stage(
            shared.clone(),
            event_tx,
            config.snapshot_interval,
            config.request_timeout,
        )
        .instrument(span.clone()),
    );
    span.in_scope(|| tracing::info!(%relay, max_payload, "bound to allocation"));

    let session = Session {
        shared,
        endpoint,
        requests: request_tx,
        events: tokio::sync::Mutex::new(EventQueue {
            rx: event_rx,
            terminal: None,
        }),
        local_peer,
        max_payload: usize::from(max_payload),
        request_timeout: config.request_timeout,
        _tasks: tasks,
    };
    Ok((session, bound))
}

/// Runs `attempt` again while the relay answers [`Error::Migrating`], for at most `window`: an
/// allocation is migrating for a moment, and its join code then resolves to the successor.
pub(crate) async fn retry_while_migrating<T, F, Fut>(
    window: Duration,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match attempt().await {
            Err(Error::Migrating { retry_after }) => {
                let wait =
                    retry_after.clamp(defaults::MIGRATION_POLL_MIN, defaults::MIGRATION_POLL_MAX);
                if tokio::time::Instant::now() + wait > deadline {
                    return Err(Error::Migrating { retry_after });
                }
                tracing::debug!(?wait, "allocation migrating; retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// The control stream halves, the bind reply, and any other messages that came before it.
type BindResult = (SendStream, RecvStream, ServerMessage, Vec<ServerMessage>);

/// Opens the control stream, sends `bind` and reads until its reply.
async fn bind_on(
    conn: &quinn::Connection,
    bind: &ClientMessage,
    timeout: Duration,
) -> Result<BindResult, Error> {
    let disconnected = |e: &ConnectionError| Error::Disconnected(disconnect_reason(e));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| disconnected(&e))?;
    // The relay learns of the stream only when data arrives on it: send the request at once.
    send.write_all(&bind.to_frame())
        .await
        .map_err(|e| match e {
            WriteError::ConnectionLost(e) => disconnected(&e),
            other => Error::Protocol(format!("cannot write the control stream: {other}")),
        })?;
    let id = bind.request_id();
    let read_reply = async {
        let mut early = Vec::new();
        let mut buf = Vec::new();
        loop {
            let message = match read_message(&mut recv, &mut buf).await {
                Ok(message) => message,
                Err(ReadFailure::Connection(e)) => return Err(disconnected(&e)),
                Err(ReadFailure::Ended(detail)) => {
                    return Err(match close_after_stream_end(conn).await {
                        Some(e) => disconnected(&e),
                        None => Error::Protocol(detail),
                    })
                }
                Err(ReadFailure::Invalid(detail)) => return Err(Error::Protocol(detail)),
            };
            if reply_id(&message) == Some(id) {
                return Ok((message, early));
            }
            if early.len() >= defaults::EVENT_QUEUE {
                return Err(Error::Protocol(
                    "too many control messages before the bind reply".into(),
                ));
            }
            early.push(message);
        }
    };
    let (reply, early) = tokio::time::timeout(timeout, read_reply)
        .await
        .map_err(|_| Error::RequestTimedOut { timeout })??;
    Ok((send, recv, reply, early))
}

/// The request id a reply answers (`None` for events).
fn reply_id(message: &ServerMessage) -> Option<u32> {
    match message {
        ServerMessage::AllocationCreated { request_id, .. }
        | ServerMessage::Joined { request_id, .. }
        | ServerMessage::Refused { request_id, .. }
        | ServerMessage::Done { request_id } => Some(*request_id),
        _ => None,
    }
}

/// Why reading the control stream stopped.
#[derive(Debug)]
enum ReadFailure {
    /// The connection ended.
    Connection(ConnectionError),
    /// The relay finished or reset the control stream (normally just before closing).
    Ended(String),
    /// The relay sent something that is not a valid frame.
    Invalid(String),
}

impl From<ReadExactError> for ReadFailure {
    fn from(e: ReadExactError) -> Self {
        match e {
            ReadExactError::FinishedEarly(0) => {
                ReadFailure::Ended("the relay ended the control stream".into())
            }
            ReadExactError::FinishedEarly(_) => {
                ReadFailure::Ended("the relay ended the control stream inside a frame".into())
            }
            ReadExactError::ReadError(ReadError::ConnectionLost(e)) => ReadFailure::Connection(e),
            ReadExactError::ReadError(ReadError::Reset(code)) => {
                ReadFailure::Ended(format!("the relay reset the control stream (code {code})"))
            }
            ReadExactError::ReadError(other) => {
                ReadFailure::Invalid(format!("cannot read the control stream: {other}"))
            }
        }
    }
}

/// Reads one relay message: the length prefix is checked before anything is buffered.
/// Message types this SDK version does not know are skipped (the frame length says how far).
async fn read_message(
    recv: &mut RecvStream,
    buf: &mut Vec<u8>,
) -> Result<ServerMessage, ReadFailure> {
    loop {
        let mut prefix = [0u8; LEN_PREFIX];
        recv.read_exact(&mut prefix).await?;
        let len = frame::check_len(prefix, DEFAULT_MAX_FRAME_LEN)
            .map_err(|e| ReadFailure::Invalid(e.to_string()))?;
        buf.clear();
        buf.resize(len, 0);
        recv.read_exact(buf).await?;
        match ServerMessage::decode(buf) {
            Ok(message) => return Ok(message),
            Err(DecodeError::UnknownType(ty)) => {
                tracing::debug!(ty, len, "skipping control message of unknown type");
            }
            Err(e) => {
                return Err(ReadFailure::Invalid(format!(
                    "undecodable control frame: {e}"
                )))
            }
        }
    }
}

/// The connection's end, if it comes within [`defaults::STREAM_END_GRACE`] of the control
/// stream ending: the relay ends both together, in either order.
async fn close_after_stream_end(conn: &quinn::Connection) -> Option<ConnectionError> {
    tokio::time::timeout(defaults::STREAM_END_GRACE, conn.closed())
        .await
        .ok()
}

/// What the reader needs besides the shared state.
struct ReaderIo {
    /// The event queue.
    events: mpsc::Sender<Event>,
    /// The writer's queue, for `MigrateAllocation`.
    requests: mpsc::Sender<Bytes>,
    /// Snapshots the snapshot receiver got, tagged with the take-over they belong to.
    snapshots: mpsc::Receiver<Delivered>,
    /// How long to wait for the snapshot after the take-over reply.
    wait: Duration,
}

/// Reads the control stream until the connection ends.
async fn run_reader(shared: Arc<Shared>, mut recv: RecvStream, mut io: ReaderIo) {
    let mut buf = Vec::new();
    let reason = loop {
        match read_message(&mut recv, &mut buf).await {
            Ok(message) => shared.dispatch(message, &mut io).await,
            Err(ReadFailure::Connection(e)) => break shared.reason(&e),
            Err(ReadFailure::Ended(detail)) => match close_after_stream_end(&shared.conn).await {
                Some(e) => break shared.reason(&e),
                None => break shared.abort(detail),
            },
            Err(ReadFailure::Invalid(detail)) => break shared.abort(detail),
        }
    };
    tracing::info!(%reason, "disconnected from relay");
    shared.end(reason);
    // Dropping `io.events` (and the stager's clone, which stops with the connection) ends the
    // queue; `next_event` then yields the terminal events.
}

/// Writes queued request frames to the control stream.
async fn run_writer(shared: Arc<Shared>, mut send: SendStream, mut frames: mpsc::Receiver<Bytes>) {
    while let Some(frame) = frames.recv().await {
        match send.write_all(&frame).await {
            Ok(()) => {}
            // The reader reports the connection's end.
            Err(WriteError::ConnectionLost(_)) => return,
            Err(other) => {
                shared.abort(format!("cannot write the control stream: {other}"));
                return;
            }
        }
    }
}

/// What the session knows of its allocation and the host role; a host migration changes it.
#[derive(Debug)]
pub(crate) struct Role {
    /// The allocation the connection is bound to.
    pub(crate) allocation: AllocationId,
    /// The current host, `None` while a lost host is being replaced.
    pub(crate) host: Option<PeerId>,
    /// The last host known (the lost one during a migration).
    last_host: PeerId,
    /// The join code, when known.
    join_code: Option<JoinCode>,
    /// This client's reconnect token.
    reconnect_token: [u8; 16],
    /// Whether a `HostLost` was reported, so the terminal events do not repeat it.
    heard_host_lost: bool,
    /// The `MigrateAllocation` in flight, if any.
    take_over: Option<TakeOver>,
    /// The take-over whose snapshot stream is still expected (set when it is sent, cleared
    /// once the snapshot arrived or the wait for it ended); delivered snapshots are tagged
    /// with it.
    pub(crate) awaiting_snapshot: Option<u32>,
}

impl Role {
    fn new(
        allocation: AllocationId,
        host: PeerId,
        join_code: Option<JoinCode>,
        reconnect_token: [u8; 16],
    ) -> Self {
        Role {
            allocation,
            host: Some(host),
            last_host: host,
            join_code,
            reconnect_token,
            heard_host_lost: false,
            take_over: None,
            awaiting_snapshot: None,
        }
    }
}

/// A `MigrateAllocation` request in flight.
#[derive(Debug)]
pub(crate) struct TakeOver {
    /// Its request id.
    request_id: u32,
    /// Callers of [`Session::take_over`] waiting for the outcome.
    waiters: Vec<oneshot::Sender<Result<(), Error>>>,
}

/// State shared by a session and its tasks.
pub(crate) struct Shared {
    pub(crate) conn: quinn::Connection,
    local_peer: PeerId,
    pending: Mutex<Pending>,
    members: Mutex<BTreeSet<PeerId>>,
    pub(crate) role: Mutex<Role>,
    pub(crate) uploads: Uploads,
    /// Why this side closed the connection, when it was not the application's choice.
    local_close: Mutex<Option<DisconnectReason>>,
    malformed_datagrams: AtomicU64,
    dropped_events: AtomicU64,
    code_revoked: AtomicBool,
}

/// Requests waiting for their reply.
struct Pending {
    /// Set once, when the connection has ended.
    ended: Option<DisconnectReason>,
    waiting: HashMap<u32, oneshot::Sender<Result<(), Error>>>,
    next_id: u32,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Whether this client holds the host role.
    pub(crate) fn is_host(&self) -> bool {
        lock(&self.role).host == Some(self.local_peer)
    }

    /// Why the connection ended, given quinn's error.
    pub(crate) fn reason(&self, err: &ConnectionError) -> DisconnectReason {
        if matches!(err, ConnectionError::LocallyClosed) {
            if let Some(reason) = lock(&self.local_close).clone() {
                return reason;
            }
        }
        disconnect_reason(err)
    }

    /// The reason the connection ended, as best known.
    pub(crate) fn final_reason(&self) -> DisconnectReason {
        if let Some(reason) = lock(&self.pending).ended.clone() {
            return reason;
        }
        match self.conn.close_reason() {
            Some(e) => self.reason(&e),
            None => DisconnectReason::ConnectionLost("the control stream stopped".into()),
        }
    }

    /// Closes the connection because the relay broke the protocol.
    pub(crate) fn abort(&self, detail: String) -> DisconnectReason {
        tracing::warn!(%detail, "relay broke the protocol; closing the connection");
        *lock(&self.local_close) = Some(DisconnectReason::InvalidRelayMessage(detail.clone()));
        let code = CloseCode::ProtocolViolation;
        self.conn.close(
            VarInt::from_u32(code.to_u32()),
            code.description().as_bytes(),
        );
        match self.conn.close_reason() {
            Some(e) => self.reason(&e),
            None => DisconnectReason::InvalidRelayMessage(detail),
        }
    }

    /// Records the end of the connection and fails every pending request.
    fn end(&self, reason: DisconnectReason) {
        let (reason, waiting) = {
            let mut pending = lock(&self.pending);
            let reason = pending.ended.get_or_insert(reason).clone();
            (reason, std::mem::take(&mut pending.waiting))
        };
        for tx in waiting.into_values() {
            let _ = tx.send(Err(Error::Disconnected(reason.clone())));
        }
        let take_over = lock(&self.role).take_over.take();
        for tx in take_over.into_iter().flat_map(|t| t.waiters) {
            let _ = tx.send(Err(Error::Disconnected(reason.clone())));
        }
        self.uploads.end(&reason);
    }

    /// A request id not in use (nor the bind request's).
    fn next_request_id(&self, pending: &mut Pending) -> u32 {
        let take_over = lock(&self.role).take_over.as_ref().map(|t| t.request_id);
        let mut id = pending.next_id;
        // Skip ids still in use after a wrap-around.
        while id == BIND_REQUEST_ID || pending.waiting.contains_key(&id) || Some(id) == take_over {
            id = id.wrapping_add(1);
        }
        pending.next_id = id.wrapping_add(1);
        id
    }

    /// Allocates a request id and registers for its reply.
    fn register(&self) -> Result<(u32, oneshot::Receiver<Result<(), Error>>), Error> {
        let mut pending = lock(&self.pending);
        if let Some(reason) = &pending.ended {
            return Err(Error::Disconnected(reason.clone()));
        }
        let id = self.next_request_id(&mut pending);
        let (tx, rx) = oneshot::channel();
        pending.waiting.insert(id, tx);
        Ok((id, rx))
    }

    /// Completes the request `id`; replies nobody waits for (timed out, cancelled) are dropped.
    fn resolve(&self, id: u32, result: Result<(), Error>) {
        match lock(&self.pending).waiting.remove(&id) {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => tracing::debug!(request_id = id, "reply to a request nobody waits for"),
        }
    }

    /// Sends `MigrateAllocation` for `allocation` with `ticket`. A take-over already in flight
    /// (with an older ticket) is superseded; its waiters wait for this one.
    async fn begin_take_over(
        &self,
        allocation: AllocationId,
        ticket: [u8; 16],
        requests: &mpsc::Sender<Bytes>,
        waiter: Option<oneshot::Sender<Result<(), Error>>>,
    ) -> Result<(), Error> {
        let request_id = {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.ended {
                return Err(Error::Disconnected(reason.clone()));
            }
            self.next_request_id(&mut pending)
        };
        {
            let mut role = lock(&self.role);
            let mut waiters = role.take_over.take().map(|t| t.waiters).unwrap_or_default();
            waiters.extend(waiter);
            role.take_over = Some(TakeOver {
                request_id,
                waiters,
            });
            role.awaiting_snapshot = Some(request_id);
        }
        tracing::info!(%allocation, request_id, "taking over as host");
        let message = ClientMessage::MigrateAllocation {
            request_id,
            allocation,
            ticket,
        };
        if requests.send(message.to_frame()).await.is_err() {
            return Err(Error::Disconnected(self.final_reason()));
        }
        Ok(())
    }

    /// The take-over `request_id` answers, removed from the role, if it is the one in flight.
    fn finish_take_over(&self, request_id: u32) -> Option<TakeOver> {
        let mut role = lock(&self.role);
        match &role.take_over {
            Some(t) if t.request_id == request_id => role.take_over.take(),
            _ => None,
        }
    }

    /// Stops expecting the snapshot of take-over `request_id`.
    fn stop_awaiting_snapshot(&self, request_id: u32) {
        let mut role = lock(&self.role);
        if role.awaiting_snapshot == Some(request_id) {
            role.awaiting_snapshot = None;
        }
    }

    /// Handles one relay message after binding.
    async fn dispatch(&self, message: ServerMessage, io: &mut ReaderIo) {
        match message {
            ServerMessage::Done { request_id } => self.resolve(request_id, Ok(())),
            ServerMessage::Refused {
                request_id,
                code,
                value,
            } => match self.finish_take_over(request_id) {
                Some(take_over) => {
                    self.stop_awaiting_snapshot(request_id);
                    tracing::warn!(%code, value, "the relay refused the take-over");
                    for tx in take_over.waiters {
                        let _ = tx.send(Err(refusal(code, value)));
                    }
                }
                None => self.resolve(request_id, Err(refusal(code, value))),
            },
            ServerMessage::PeerJoined { peer } => {
                lock(&self.members).insert(peer);
                tracing::debug!(%peer, "peer joined");
                self.emit(&io.events, Event::PeerJoined { peer });
            }
            ServerMessage::PeerLeft { peer, reason } => {
                lock(&self.members).remove(&peer);
                tracing::debug!(%peer, %reason, "peer left");
                self.emit(&io.events, Event::PeerLeft { peer, reason });
            }
            ServerMessage::CodeRevoked { code } => {
                self.code_revoked.store(true, Ordering::Relaxed);
                tracing::info!(%code, "join code revoked");
                self.emit(&io.events, Event::JoinCodeRevoked { code });
            }
            ServerMessage::DatagramsDropped {
                reason,
                count,
                value,
            } => {
                tracing::debug!(%reason, count, value, "relay dropped datagrams");
                self.emit(
                    &io.events,
                    Event::DatagramsDropped {
                        reason,
                        count,
                        value,
                    },
                );
            }
            ServerMessage::HostLost {
                host,
                reason,
                elected,
            } => {
                // 0xFFFF: the relay waits for a lobby to name the next host.
                let elected = (elected.0 != datagram::BROADCAST).then_some(elected);
                self.host_lost(host, reason, elected, &io.events);
            }
            ServerMessage::Promote {
                allocation,
                ticket,
                deadline_ms,
            } => {
                tracing::info!(%allocation, deadline_ms, "elected to take over as host");
                if let Err(e) = self
                    .begin_take_over(allocation, ticket, &io.requests, None)
                    .await
                {
                    tracing::warn!(error = %e, "cannot take over as host");
                }
            }
            ServerMessage::AllocationCreated {
                request_id,
                allocation,
                code,
                reconnect_token,
                ..
            } => match self.finish_take_over(request_id) {
                Some(take_over) => {
                    let snapshot = self.await_snapshot(request_id, io).await;
                    {
                        let mut role = lock(&self.role);
                        role.allocation = allocation;
                        role.host = Some(self.local_peer);
                        role.last_host = self.local_peer;
                        role.join_code = Some(code);
                        role.reconnect_token = reconnect_token;
                    }
                    lock(&self.members).insert(self.local_peer);
                    tracing::info!(
                        %allocation,
                        snapshot_len = snapshot.as_ref().map_or(0, Bytes::len),
                        "took over as host"
                    );
                    self.emit(
                        &io.events,
                        Event::HostMigrated {
                            allocation,
                            new_host: self.local_peer,
                            you_are_host: true,
                            snapshot,
                        },
                    );
                    for tx in take_over.waiters {
                        let _ = tx.send(Ok(()));
                    }
                }
                None => tracing::warn!(request_id, "ignoring an unsolicited AllocationCreated"),
            },
            ServerMessage::Migrated { allocation, host } => {
                {
                    let mut role = lock(&self.role);
                    role.allocation = allocation;
                    role.host = Some(host);
                    role.last_host = host;
                }
                lock(&self.members).insert(host);
                tracing::info!(%allocation, %host, "moved to the new host");
                self.emit(
                    &io.events,
                    Event::HostMigrated {
                        allocation,
                        new_host: host,
                        you_are_host: host == self.local_peer,
                        snapshot: None,
                    },
                );
            }
            ServerMessage::PeerRejoined { peer } => {
                lock(&self.members).insert(peer);
                tracing::debug!(%peer, "peer rejoined");
                self.emit(&io.events, Event::PeerRejoined { peer });
            }
            ServerMessage::SnapshotStored { len } => self.uploads.reply(Ok(len as usize)),
            ServerMessage::SnapshotRejected { code, value } => {
                self.uploads
                    .reply(Err(UploadError::Rejected { code, value }));
            }
            other @ ServerMessage::Joined { .. } => {
                tracing::warn!(message = ?other, "ignoring a second bind reply");
            }
            // Messages added to the protocol after this SDK version.
            other => tracing::debug!(message = ?other, "ignoring message this SDK does not handle"),
        }
    }

    /// The host was lost: no host until a member takes over.
    fn host_lost(
        &self,
        host: PeerId,
        reason: LeaveReason,
        elected: Option<PeerId>,
        events: &mpsc::Sender<Event>,
    ) {
        {
            let mut role = lock(&self.role);
            role.host = None;
            role.last_host = host;
            role.heard_host_lost = true;
        }
        lock(&self.members).remove(&host);
        tracing::info!(%host, %reason, ?elected, "host lost");
        self.emit(
            events,
            Event::HostLost {
                host,
                reason,
                elected,
            },
        );
    }

    /// The snapshot delivered for take-over `request_id` (the relay always sends one, empty if
    /// none is stored), waiting at most the request timeout for it.
    async fn await_snapshot(&self, request_id: u32, io: &mut ReaderIo) -> Option<Bytes> {
        let wait = async {
            while let Some(delivered) = io.snapshots.recv().await {
                if delivered.take_over == Some(request_id) {
                    return delivered.snapshot;
                }
                tracing::debug!("discarding a snapshot from an earlier take-over");
            }
            None
        };
        let result = tokio::time::timeout(io.wait, wait).await;
        self.stop_awaiting_snapshot(request_id);
        match result {
            Ok(snapshot) => snapshot.filter(|s| !s.is_empty()),
            Err(_) => {
                tracing::warn!("no snapshot stream after taking over; going on without one");
                None
            }
        }
    }

    pub(crate) fn emit(&self, events: &mpsc::Sender<Event>, event: Event) {
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.dropped_events.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%event, "event queue full; event dropped");
            }
            // The session is gone.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Unregisters a request when its future ends, however it ends.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).waiting.remove(&self.id);
    }
}

/// The receiving end of the event queue, and the terminal events once it has ended.
struct EventQueue {
    rx: mpsc::Receiver<Event>,
    terminal: Option<VecDeque<Event>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<Session>();
        assert_send_sync::<crate::Host>();
        assert_send_sync::<crate::Peer>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn replies_are_told_apart_from_events() {
        assert_eq!(reply_id(&ServerMessage::Done { request_id: 7 }), Some(7));
        assert_eq!(
            reply_id(&ServerMessage::PeerJoined { peer: PeerId(3) }),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn joins_retry_while_migrating_within_the_window() {
        let mut calls = 0;
        let result: Result<u32, Error> = retry_while_migrating(Duration::from_secs(2), || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(Error::Migrating {
                        retry_after: Duration::from_millis(300),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);

        let start = tokio::time::Instant::now();
        let result: Result<(), Error> = retry_while_migrating(Duration::from_secs(2), || async {
            Err(Error::Migrating {
                retry_after: Duration::from_millis(700),
            })
        })
        .await;
        assert!(matches!(result, Err(Error::Migrating { .. })));
        assert!(start.elapsed() <= Duration::from_secs(2));
        // Other errors are not retried.
        let mut calls = 0;
        let result: Result<(), Error> = retry_while_migrating(Duration::from_secs(2), || {
            calls += 1;
            async { Err(Error::Unauthorized) }
        })
        .await;
        assert!(matches!(result, Err(Error::Unauthorized)));
        assert_eq!(calls, 1);
    }
}
