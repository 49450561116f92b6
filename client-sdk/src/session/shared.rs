//! The state a session shares with its tasks ([`Shared`], behind an `Arc`): the connection
//! ([`Link`]: which one, and whether the session is up, resuming through another relay or
//! ended), the member set, the [`Role`] (allocation and host, which a host migration changes), the
//! requests waiting for their reply ([`Pending`], request ids, [`PendingGuard`],
//! [`Shared::send_request`], [`Shared::await_reply`]) and how the connection ended
//! ([`Shared::end`], [`Shared::reason`], [`Shared::abort`]).
//!
//! Plain state behind `std` mutexes ([`lock`]), each held briefly and never across an
//! `.await`; used from every task of the session and from the application's calls. Calls
//! nothing else in the session: only `crate::error` (disconnect reasons) and, when the
//! connection ends, [`Uploads`] ([`crate::snapshot`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_protocol::{AllocationId, ClientMessage, CloseCode, JoinCode, PeerId, ServerMessage};
use bytes::Bytes;
use quinn::{ConnectionError, RecvStream, VarInt};
use tokio::sync::{mpsc, oneshot, watch};

use super::connect::BIND_REQUEST_ID;
use super::paths::DirectShared;
use super::take_over::TakeOver;
use crate::error::disconnect_reason;
use crate::snapshot::Uploads;
use crate::{DisconnectReason, Error};

/// What the session knows of its allocation and the host role; a host migration changes it.
#[derive(Debug)]
pub(crate) struct Role {
    /// The allocation the connection is bound to.
    pub(crate) allocation: AllocationId,
    /// The current host, `None` while a lost host is being replaced.
    pub(crate) host: Option<PeerId>,
    /// The last host known (the lost one during a migration).
    pub(super) last_host: PeerId,
    /// The join code, when known.
    pub(super) join_code: Option<JoinCode>,
    /// This client's reconnect token.
    pub(super) reconnect_token: [u8; 16],
    /// Whether a `HostLost` was reported, so the terminal events do not repeat it.
    pub(super) heard_host_lost: bool,
    /// The `MigrateAllocation` in flight, if any.
    pub(super) take_over: Option<TakeOver>,
    /// The allocation's host-loss timeout, from `AllocationCreated` or `Joined`: how often the
    /// heartbeat task checks while this client hosts (`heartbeat.rs`).
    pub(crate) host_loss_timeout: Duration,
    /// The take-over whose snapshot stream is still expected (set when it is sent, cleared
    /// once the snapshot arrived or the wait for it ended); delivered snapshots are tagged
    /// with it.
    pub(crate) awaiting_snapshot: Option<u32>,
}

impl Role {
    pub(super) fn new(
        allocation: AllocationId,
        host: PeerId,
        join_code: Option<JoinCode>,
        reconnect_token: [u8; 16],
        host_loss_timeout_ms: u16,
    ) -> Self {
        Role {
            allocation,
            host: Some(host),
            last_host: host,
            join_code,
            reconnect_token,
            host_loss_timeout: host_loss_timeout(host_loss_timeout_ms),
            heard_host_lost: false,
            take_over: None,
            awaiting_snapshot: None,
        }
    }
}

/// The session's current connection and what the session is doing with it.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    /// The connection to the relay: the first one, or the last one a resume or a move made.
    pub(crate) conn: quinn::Connection,
    /// Just after a move to another node, the previous connection, which still delivers the
    /// datagrams of members that have not moved yet, until the old node closes it (at most
    /// [`defaults::RELOCATE_LINGER`]); nothing is sent on it.
    ///
    /// [`defaults::RELOCATE_LINGER`]: crate::defaults::RELOCATE_LINGER
    pub(crate) lingering: Option<quinn::Connection>,
    /// Counts the connections the session had: 0 for the first, one more per resume or move.
    pub(crate) generation: u64,
    /// What the session is doing.
    pub(crate) state: LinkState,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Bound to its allocation through [`Link::conn`] (which may have just ended, before the
    /// reader noticed).
    Up,
    /// [`Link::conn`] ended unexpectedly; the reader is looking for another relay.
    Resuming,
    /// The session has ended for good.
    Ended,
}

/// Where the session is in moving to another node on `Relocate` (`resume.rs`).
#[derive(Debug)]
pub(super) enum Relocation {
    /// Not moving.
    Idle,
    /// Rejoining at the new node while the connection of this generation carries the game.
    Moving(u64),
    /// Moved: the new connection is installed; the reader reads its control stream (and the
    /// messages that came before the rejoin's reply) once the old one has ended.
    Moved(RecvStream, Vec<ServerMessage>),
}

/// State shared by a session and its tasks.
pub(crate) struct Shared {
    /// The connection, replaced when the session resumes; watched by the tasks that wait for
    /// a resume to finish ([`Shared::await_new_link`]).
    link: watch::Sender<Link>,
    /// Whether the configuration lets the session resume at all (its resume window is not 0).
    resume_window_open: bool,
    /// The other relays of the fleet to resume through when the connection is lost
    /// unexpectedly (`ClientConfig::fallback_relays`, replaced by
    /// [`Session::set_fallback_relays`](super::Session::set_fallback_relays)); none: no resume.
    pub(super) fallback_relays: Mutex<Vec<std::net::SocketAddr>>,
    /// Set by [`Session::close`](super::Session::close): a resume in progress stops.
    pub(super) closing: AtomicBool,
    /// Datagrams dropped because they were sent while the session was resuming.
    pub(super) dropped_while_resuming: AtomicU64,
    pub(super) local_peer: PeerId,
    pub(super) pending: Mutex<Pending>,
    pub(super) members: Mutex<BTreeSet<PeerId>>,
    pub(crate) role: Mutex<Role>,
    pub(crate) uploads: Uploads,
    /// Why this side closed the connection, when it was not the application's choice.
    local_close: Mutex<Option<DisconnectReason>>,
    pub(super) malformed_datagrams: AtomicU64,
    pub(super) dropped_events: AtomicU64,
    pub(super) code_revoked: AtomicBool,
    /// Moving to another node on `Relocate`.
    pub(super) relocation: Mutex<Relocation>,
    /// This client's address as the relay last said it sees it (`ObservedAddress`).
    pub(super) observed: Mutex<Option<std::net::SocketAddr>>,
    /// The NAT kind and its measurement (`nat.rs`).
    pub(crate) nat: super::nat::Nat,
    /// Direct paths (`paths.rs`), with [`DirectPolicy::Prefer`](crate::DirectPolicy::Prefer)
    /// only.
    pub(crate) direct: Option<DirectShared>,
}

/// Requests waiting for their reply.
pub(super) struct Pending {
    /// Set once, when the connection has ended.
    ended: Option<DisconnectReason>,
    waiting: HashMap<u32, oneshot::Sender<Result<(), Error>>>,
    next_id: u32,
}

/// The host-loss timeout a relay reported in milliseconds; 0 (which a relay does not send)
/// falls back to the SDK's default.
pub(crate) fn host_loss_timeout(ms: u16) -> Duration {
    match ms {
        0 => crate::defaults::HOST_LOSS_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    }
}

/// Closes `conn` with `code`, its description as the reason phrase.
pub(super) fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(
        VarInt::from_u32(code.to_u32()),
        code.description().as_bytes(),
    );
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The state of a session just bound to its allocation, with `members` as the member set.
    pub(super) fn new(
        conn: quinn::Connection,
        local_peer: PeerId,
        role: Role,
        members: BTreeSet<PeerId>,
        (resume_window_open, fallback_relays): (bool, Vec<std::net::SocketAddr>),
        direct: Option<DirectShared>,
    ) -> Self {
        Shared {
            link: watch::Sender::new(Link {
                conn,
                lingering: None,
                generation: 0,
                state: LinkState::Up,
            }),
            resume_window_open,
            fallback_relays: Mutex::new(fallback_relays),
            closing: AtomicBool::new(false),
            dropped_while_resuming: AtomicU64::new(0),
            local_peer,
            pending: Mutex::new(Pending {
                ended: None,
                waiting: HashMap::new(),
                next_id: BIND_REQUEST_ID.wrapping_add(1),
            }),
            members: Mutex::new(members),
            role: Mutex::new(role),
            uploads: Uploads::default(),
            local_close: Mutex::new(None),
            malformed_datagrams: AtomicU64::new(0),
            dropped_events: AtomicU64::new(0),
            code_revoked: AtomicBool::new(false),
            relocation: Mutex::new(Relocation::Idle),
            observed: Mutex::new(None),
            nat: super::nat::Nat::default(),
            direct,
        }
    }

    /// The current connection.
    pub(crate) fn conn(&self) -> quinn::Connection {
        self.link.borrow().conn.clone()
    }

    /// The current connection, its generation and state.
    pub(crate) fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    /// Waits until the session has ended for good. Cancel-safe.
    pub(crate) async fn ended(&self) {
        let mut rx = self.link.subscribe();
        // An error cannot happen: `self` holds the sender.
        let _ = rx.wait_for(|l| l.state == LinkState::Ended).await;
    }

    /// Marks the session as resuming (its connection was lost unexpectedly).
    pub(super) fn set_resuming(&self) {
        self.link
            .send_modify(|link| link.state = LinkState::Resuming);
    }

    /// Installs `conn`, the connection a resume made, and marks the session up again.
    pub(super) fn install(&self, conn: quinn::Connection) {
        self.link.send_modify(|link| {
            link.conn = conn;
            link.lingering = None;
            link.generation += 1;
            link.state = LinkState::Up;
        });
    }

    /// Keeps delivering the datagrams `old`, the connection a move replaced, still brings.
    pub(super) fn linger(&self, old: quinn::Connection) {
        self.link.send_modify(|link| link.lingering = Some(old));
    }

    /// Stops reading datagrams from `old`, the lingering connection (if it still is).
    pub(crate) fn end_linger(&self, old: &quinn::Connection) {
        self.link.send_if_modified(|link| {
            let ends = link
                .lingering
                .as_ref()
                .is_some_and(|l| l.stable_id() == old.stable_id());
            if ends {
                link.lingering = None;
            }
            ends
        });
    }

    /// Whether a connection that ended with `err` is resumed rather than ending the session:
    /// fallback relays are configured, the application did not close the session, and the
    /// end was not deliberate ([`resumable`]).
    pub(crate) fn may_resume(&self, err: &ConnectionError) -> bool {
        self.resume_window_open
            && !lock(&self.fallback_relays).is_empty()
            && !self.closing.load(Ordering::Relaxed)
            && resumable(err)
    }

    /// Waits until the session has a connection newer than `generation` (true) or has ended
    /// (false). Cancel-safe.
    pub(crate) async fn await_new_link(&self, generation: u64) -> bool {
        let mut rx = self.link.subscribe();
        let newer = rx
            .wait_for(|l| l.generation != generation || l.state == LinkState::Ended)
            .await
            .map(|link| link.state != LinkState::Ended);
        // An error cannot happen: `self` holds the sender.
        newer.unwrap_or(false)
    }

    /// For the reader, whose control stream just ended: the new connection's control stream
    /// and early messages if the session moved to another node, else `None`, and a move still
    /// under way is called off (the connection it started from is gone).
    pub(super) fn take_moved(&self) -> Option<(RecvStream, Vec<ServerMessage>)> {
        match std::mem::replace(&mut *lock(&self.relocation), Relocation::Idle) {
            Relocation::Moved(recv, early) => Some((recv, early)),
            Relocation::Idle | Relocation::Moving(_) => None,
        }
    }

    /// Counts a datagram dropped while resuming.
    pub(crate) fn drop_while_resuming(&self) {
        self.dropped_while_resuming.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether this client holds the host role.
    pub(crate) fn is_host(&self) -> bool {
        lock(&self.role).host == Some(self.local_peer)
    }

    /// Whether this client must prove itself alive to the relay as a host does: it holds the
    /// host role, or is taking it over (the relay watches it from its `MigrateAllocation` on,
    /// before the SDK has its snapshot and calls itself host).
    pub(super) fn watched_as_host(&self) -> bool {
        let role = lock(&self.role);
        role.host == Some(self.local_peer)
            || role.take_over.is_some()
            || role.awaiting_snapshot.is_some()
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

    /// Why the session ended, for a call that found its connection ended with `err`: the
    /// session's final reason once recorded, closed locally if the application closed it
    /// while it was resuming, otherwise what `err` means.
    pub(crate) fn ended_reason(&self, err: &ConnectionError) -> DisconnectReason {
        if let Some(reason) = lock(&self.pending).ended.clone() {
            return reason;
        }
        if self.link.borrow().state == LinkState::Resuming && self.closing.load(Ordering::Relaxed) {
            return DisconnectReason::ClosedLocally;
        }
        self.reason(err)
    }

    /// The reason the connection ended, as best known.
    pub(crate) fn final_reason(&self) -> DisconnectReason {
        if let Some(reason) = lock(&self.pending).ended.clone() {
            return reason;
        }
        match self.conn().close_reason() {
            Some(e) => self.reason(&e),
            None => DisconnectReason::ConnectionLost("the control stream stopped".into()),
        }
    }

    /// Closes the connection because the relay broke the protocol.
    pub(crate) fn abort(&self, detail: String) -> DisconnectReason {
        tracing::warn!(%detail, "relay broke the protocol; closing the connection");
        *lock(&self.local_close) = Some(DisconnectReason::InvalidRelayMessage(detail.clone()));
        let conn = self.conn();
        close(&conn, CloseCode::ProtocolViolation);
        match conn.close_reason() {
            Some(e) => self.reason(&e),
            None => DisconnectReason::InvalidRelayMessage(detail),
        }
    }

    /// Records the end of the session and fails every pending request.
    pub(super) fn end(&self, reason: DisconnectReason) {
        let (reason, waiting) = {
            let mut pending = lock(&self.pending);
            let reason = pending.ended.get_or_insert(reason).clone();
            (reason, std::mem::take(&mut pending.waiting))
        };
        for tx in waiting.into_values() {
            let _ = tx.send(Err(Error::Disconnected(reason.clone())));
        }
        self.fail_take_over(&reason);
        self.uploads.end(&reason);
        self.link.send_modify(|link| link.state = LinkState::Ended);
    }

    /// Fails the take-over in flight, if any: the connection it was sent on ended.
    pub(super) fn fail_take_over(&self, reason: &DisconnectReason) {
        let take_over = {
            let mut role = lock(&self.role);
            role.awaiting_snapshot = None;
            role.take_over.take()
        };
        for tx in take_over.into_iter().flat_map(|t| t.waiters) {
            let _ = tx.send(Err(Error::Disconnected(reason.clone())));
        }
    }

    /// A request id not in use (nor the bind request's), or [`Error::Disconnected`] once the
    /// connection has ended.
    pub(super) fn next_request_id(&self, pending: &mut Pending) -> Result<u32, Error> {
        if let Some(reason) = &pending.ended {
            return Err(Error::Disconnected(reason.clone()));
        }
        let take_over = lock(&self.role).take_over.as_ref().map(|t| t.request_id);
        let mut id = pending.next_id;
        // Skip ids still in use after a wrap-around.
        while id == BIND_REQUEST_ID || pending.waiting.contains_key(&id) || Some(id) == take_over {
            id = id.wrapping_add(1);
        }
        pending.next_id = id.wrapping_add(1);
        Ok(id)
    }

    /// Allocates a request id and registers for its reply.
    pub(super) fn register(&self) -> Result<(u32, oneshot::Receiver<Result<(), Error>>), Error> {
        let mut pending = lock(&self.pending);
        let id = self.next_request_id(&mut pending)?;
        let (tx, rx) = oneshot::channel();
        pending.waiting.insert(id, tx);
        Ok((id, rx))
    }

    /// Queues `message` for the writer; [`Error::Disconnected`] once the writer has stopped.
    pub(super) async fn send_request(
        &self,
        requests: &mpsc::Sender<Bytes>,
        message: ClientMessage,
    ) -> Result<(), Error> {
        if requests.send(message.to_frame()).await.is_err() {
            return Err(Error::Disconnected(self.final_reason()));
        }
        Ok(())
    }

    /// What `reply` brings within `timeout`: [`Error::RequestTimedOut`] after it,
    /// [`Error::Disconnected`] if the connection ends first.
    pub(crate) async fn await_reply<T>(
        &self,
        reply: oneshot::Receiver<T>,
        timeout: Duration,
    ) -> Result<T, Error> {
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::Disconnected(self.final_reason())),
            Err(_) => Err(Error::RequestTimedOut { timeout }),
        }
    }

    /// Completes the request `id`; replies nobody waits for (timed out, cancelled) are dropped.
    pub(super) fn resolve(&self, id: u32, result: Result<(), Error>) {
        match lock(&self.pending).waiting.remove(&id) {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => tracing::debug!(request_id = id, "reply to a request nobody waits for"),
        }
    }
}

/// Whether a connection that ended with `err` ended by accident, so that a session with
/// fallback relays resumes: the relay went silent (idle timeout), reset or aborted the
/// connection, or closed it because it is shutting down. Every other close is deliberate
/// (this side closed, kicked, allocation closed, host lost, unsupported version, ...) or a
/// local failure, and ends the session.
pub(crate) fn resumable(err: &ConnectionError) -> bool {
    match err {
        ConnectionError::TimedOut
        | ConnectionError::Reset
        | ConnectionError::ConnectionClosed(_) => true,
        ConnectionError::ApplicationClosed(close) => {
            CloseCode::from_u64(close.error_code.into_inner()) == CloseCode::RelayShuttingDown
        }
        ConnectionError::LocallyClosed
        | ConnectionError::TransportError(_)
        | ConnectionError::VersionMismatch
        | ConnectionError::CidsExhausted => false,
    }
}

/// Unregisters a request when its future ends, however it ends.
pub(super) struct PendingGuard<'a> {
    pub(super) shared: &'a Shared,
    pub(super) id: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).waiting.remove(&self.id);
    }
}
