//! A session: one QUIC connection to the relay, bound to one allocation.
//!
//! ## Connecting
//! [`connect`] builds a fresh quinn endpoint, completes the QUIC handshake within the connect
//! timeout, opens the control stream, sends the bind request (`CreateAllocation` or `Join`)
//! at once (quinn only tells the relay about a stream when data is sent on it) and reads frames
//! until the reply carrying the bind request's id.
//!
//! ## Concurrency model
//! A [`Session`] owns two background tasks in a [`JoinSet`], so both are aborted when it is
//! dropped:
//! - the **reader** reads relay frames from the control stream. Replies complete the pending
//!   request with the same request id; events update the member set and go into a bounded event
//!   queue (drop-and-count when full). When the connection ends it records the reason once, fails
//!   every pending request with it and ends the queue, after which
//!   [`Session::next_event`] yields the terminal events.
//! - the **writer** owns the send half of the control stream and writes queued request frames,
//!   so a request future dropped half-way can never leave half a frame on the stream.
//!
//! Datagrams bypass both tasks: [`Session::send_to`] and [`Session::recv`] use the quinn
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
    AllocationId, ClientMessage, CloseCode, DecodeError, JoinCode, PeerId, ServerMessage,
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
use crate::{defaults, ClientConfig, DisconnectReason, Error, Event};

/// Request id of the bind request (`CreateAllocation` or `Join`); later requests count up from
/// the next value.
pub(crate) const BIND_REQUEST_ID: u32 = 1;

/// What the relay granted in answer to the bind request.
#[derive(Debug)]
pub(crate) enum Bound {
    /// Answer to `CreateAllocation`.
    Created {
        code: JoinCode,
        code_ttl_secs: u32,
        max_peers: u16,
    },
    /// Answer to `Join`.
    Joined,
}

/// An established connection to the relay, bound to one allocation: datagrams, events and the
/// member set. Obtained through [`Host`](crate::Host) or [`Peer`](crate::Peer), which
/// dereference to it.
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
    allocation: AllocationId,
    max_payload: usize,
    request_timeout: Duration,
    _tasks: JoinSet<()>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("relay", &self.shared.conn.remote_address())
            .field("allocation", &self.allocation)
            .field("local_peer", &self.local_peer)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// This client's peer id in the allocation ([`PeerId::HOST`] for the host).
    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    /// The allocation this session belongs to.
    pub fn allocation(&self) -> AllocationId {
        self.allocation
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
    /// reports datagrams it dropped as [`Event::DatagramsDropped`].
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
    /// queued events, then [`Event::HostLost`] if the host was lost, then
    /// [`Event::Disconnected`] exactly once, then `None` forever.
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
                terminal.push_back(Event::HostLost { reason });
            }
            terminal.push_back(Event::Disconnected { reason });
            queue.terminal = Some(terminal);
        }
        queue.terminal.as_mut().and_then(VecDeque::pop_front)
    }

    /// Leaves the allocation: closes the connection with the normal close code, then waits
    /// briefly ([`defaults::CLOSE_WAIT`] at most) for the relay to acknowledge, so it learns at
    /// once rather than after its idle timeout. Afterwards [`Session::recv`] fails with
    /// [`DisconnectReason::ClosedLocally`] (unless the connection had already ended for another
    /// reason).
    pub async fn close(&self) {
        close_normally(&self.shared.conn);
        if tokio::time::timeout(defaults::CLOSE_WAIT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("relay did not acknowledge the close in time");
        }
    }

    /// Sends a host request and waits for its `Done` or `Refused`.
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
    let (allocation, local_peer, max_payload, members, bound) = match (bind, reply) {
        (
            ClientMessage::CreateAllocation { .. } | ClientMessage::ClaimHost { .. },
            ServerMessage::AllocationCreated {
                allocation,
                code,
                code_ttl_secs,
                max_peers,
                max_payload,
                ..
            },
        ) => (
            allocation,
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
            ClientMessage::Join { .. },
            ServerMessage::Joined {
                allocation,
                peer,
                max_payload,
                members,
                ..
            },
        ) => (allocation, peer, max_payload, members, Bound::Joined),
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

    let mut member_set: BTreeSet<PeerId> = members.into_iter().collect();
    member_set.insert(PeerId::HOST);
    member_set.insert(local_peer);
    let shared = Arc::new(Shared {
        conn,
        pending: Mutex::new(Pending {
            ended: None,
            waiting: HashMap::new(),
            next_id: BIND_REQUEST_ID.wrapping_add(1),
        }),
        members: Mutex::new(member_set),
        local_close: Mutex::new(None),
        malformed_datagrams: AtomicU64::new(0),
        dropped_events: AtomicU64::new(0),
        code_revoked: AtomicBool::new(false),
    });
    let (event_tx, event_rx) = mpsc::channel(defaults::EVENT_QUEUE);
    for message in early {
        shared.dispatch(message, &event_tx);
    }
    let (request_tx, request_rx) = mpsc::channel(defaults::REQUEST_QUEUE);
    let span = tracing::info_span!("baton", alloc = %allocation, peer = %local_peer);
    let mut tasks = JoinSet::new();
    tasks.spawn(run_reader(shared.clone(), recv, event_tx).instrument(span.clone()));
    tasks.spawn(run_writer(shared.clone(), send, request_rx).instrument(span.clone()));
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
        allocation,
        max_payload: usize::from(max_payload),
        request_timeout: config.request_timeout,
        _tasks: tasks,
    };
    Ok((session, bound))
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

/// Reads the control stream until the connection ends.
async fn run_reader(shared: Arc<Shared>, mut recv: RecvStream, events: mpsc::Sender<Event>) {
    let mut buf = Vec::new();
    let reason = loop {
        match read_message(&mut recv, &mut buf).await {
            Ok(message) => shared.dispatch(message, &events),
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
    // Dropping `events` ends the queue; `next_event` then yields the terminal events.
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

/// State shared by a session and its tasks.
struct Shared {
    conn: quinn::Connection,
    pending: Mutex<Pending>,
    members: Mutex<BTreeSet<PeerId>>,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Why the connection ended, given quinn's error.
    fn reason(&self, err: &ConnectionError) -> DisconnectReason {
        if matches!(err, ConnectionError::LocallyClosed) {
            if let Some(reason) = lock(&self.local_close).clone() {
                return reason;
            }
        }
        disconnect_reason(err)
    }

    /// The reason the connection ended, as best known.
    fn final_reason(&self) -> DisconnectReason {
        if let Some(reason) = lock(&self.pending).ended.clone() {
            return reason;
        }
        match self.conn.close_reason() {
            Some(e) => self.reason(&e),
            None => DisconnectReason::ConnectionLost("the control stream stopped".into()),
        }
    }

    /// Closes the connection because the relay broke the protocol.
    fn abort(&self, detail: String) -> DisconnectReason {
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
    }

    /// Allocates a request id and registers for its reply.
    fn register(&self) -> Result<(u32, oneshot::Receiver<Result<(), Error>>), Error> {
        let mut pending = lock(&self.pending);
        if let Some(reason) = &pending.ended {
            return Err(Error::Disconnected(reason.clone()));
        }
        let mut id = pending.next_id;
        // Skip ids still in use after a wrap-around (and the bind request's).
        while id == BIND_REQUEST_ID || pending.waiting.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        pending.next_id = id.wrapping_add(1);
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

    /// Handles one relay message after binding.
    fn dispatch(&self, message: ServerMessage, events: &mpsc::Sender<Event>) {
        match message {
            ServerMessage::Done { request_id } => self.resolve(request_id, Ok(())),
            ServerMessage::Refused {
                request_id,
                code,
                value,
            } => self.resolve(request_id, Err(refusal(code, value))),
            ServerMessage::PeerJoined { peer } => {
                lock(&self.members).insert(peer);
                tracing::debug!(%peer, "peer joined");
                self.emit(events, Event::PeerJoined { peer });
            }
            ServerMessage::PeerLeft { peer, reason } => {
                lock(&self.members).remove(&peer);
                tracing::debug!(%peer, %reason, "peer left");
                self.emit(events, Event::PeerLeft { peer, reason });
            }
            ServerMessage::CodeRevoked { code } => {
                self.code_revoked.store(true, Ordering::Relaxed);
                tracing::info!(%code, "join code revoked");
                self.emit(events, Event::JoinCodeRevoked { code });
            }
            ServerMessage::DatagramsDropped {
                reason,
                count,
                value,
            } => {
                tracing::debug!(%reason, count, value, "relay dropped datagrams");
                self.emit(
                    events,
                    Event::DatagramsDropped {
                        reason,
                        count,
                        value,
                    },
                );
            }
            other @ (ServerMessage::AllocationCreated { .. } | ServerMessage::Joined { .. }) => {
                tracing::warn!(message = ?other, "ignoring a second bind reply");
            }
            other => tracing::debug!(message = ?other, "ignoring message this SDK does not handle"),
        }
    }

    fn emit(&self, events: &mpsc::Sender<Event>, event: Event) {
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

impl Session {
    /// Whether the join code was revoked (by [`Host::revoke_join_code`](crate::Host) or an
    /// operator).
    pub(crate) fn code_revoked(&self) -> bool {
        self.shared.code_revoked.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_code_revoked(&self) {
        self.shared.code_revoked.store(true, Ordering::Relaxed);
    }
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
}
