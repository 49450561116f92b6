//! A session: one QUIC connection to the relay, bound to one allocation (and, after a host
//! migration, to its successor: the connection moves in place).
//!
//! This file holds [`Session`] and its public API, called on the application's tasks. The
//! rest, one concern a file:
//! - `connect.rs`: connecting and binding ([`connect()`], [`retry_while_migrating`]);
//! - `shared.rs`: the state the session shares with its tasks ([`Shared`]): member set, role,
//!   pending requests and their ids, how the connection ended;
//! - `dispatch.rs`: the reader and writer tasks, and what the reader does with each relay
//!   message;
//! - `take_over.rs`: host migration, this client's take-over as host included;
//! - `resume.rs`: resuming through another relay of the fleet when the relay is lost, and
//!   moving to another node when the relay drains (`Relocate`);
//! - `paths.rs`: direct host–peer paths (with
//!   [`DirectPolicy::Prefer`](crate::DirectPolicy::Prefer) only).
//!
//! ## Connecting
//! [`connect()`] builds a fresh quinn endpoint on the session's own UDP socket, completes the QUIC handshake within the connect
//! timeout, opens the control stream, sends the bind request (`CreateAllocation`, `ClaimHost`,
//! `Join` or `Rejoin`) at once (quinn only tells the relay about a stream when data is sent on
//! it) and reads frames until the reply carrying the bind request's id. A relay of a fleet may
//! answer a `Join` or `Rejoin` with `Redirect`: [`connect()`] closes that connection normally
//! and sends the same request to the named relay (same trust and settings, the redirect's
//! server name), following at most one redirect per request.
//!
//! ## Resuming after losing the relay
//! With [`ClientConfig::fallback_relays`](crate::ClientConfig::fallback_relays) configured, a
//! connection that ends unexpectedly (idle timeout, reset or aborted connection, the relay
//! shutting down) does not end the session. The reader marks the session resuming and sends
//! `Rejoin` with the session's own reconnect token and credential to the other relays in turn
//! (following one redirect each, retrying the list with a short backoff) until one takes it
//! back or [`ClientConfig::resume_window`](crate::ClientConfig::resume_window) runs out; then
//! the session ends as it would have, with the reason the relay was lost. Meanwhile:
//! - [`Session::send_to`], [`Session::send_to_host`] and [`Session::broadcast`] drop the
//!   datagram, count it ([`Session::dropped_while_resuming`]) and return `Ok`;
//! - [`Session::recv`] waits, and goes on with the new relay's datagrams;
//! - requests ([`Session::kick`], ...) wait for the new relay within their timeout; one the
//!   lost relay had received but not answered times out; a take-over or snapshot upload in
//!   flight fails with [`Error::Disconnected`].
//!
//! On success the new connection replaces the old one (the same [`Session`], [`Host`] or
//! [`Peer`]), the peer id and role are kept (a host comes back as peer 0, host again), and
//! [`Event::Resumed`] is queued. The connection a session ends deliberately never resumes: it
//! closed, was kicked, its allocation closed, its host was lost (that is a host migration),
//! or the relay refused it.
//!
//! ## Moving when the relay drains
//! A node of a fleet that is draining (scaled in, upgraded) hands each allocation to another
//! node and sends every member `Relocate`. The session moves make-before-break, with or without
//! fallback relays: the old connection goes on carrying datagrams, events and requests while a
//! task sends `Rejoin` to the named node (its server name, the session's trust, credential and
//! timeouts, one redirect followed, `migrating` retried; at most
//! [`defaults::RELOCATE_TIMEOUT`]). Once the new node answers `Joined`, the new connection
//! replaces the old one as after a resume (same peer id and role: a host stays host; datagrams
//! are sent on the new connection from then on) and [`Event::Relocated`] is queued; the
//! session finishes its control stream on the old connection, which goes on delivering
//! datagrams (members that have not moved yet send through the old node) until the old node
//! closes it once every member has moved, or for at most [`defaults::RELOCATE_LINGER`], then is
//! closed normally. A request the old relay had not answered by then times out.
//! If the new node cannot be reached the session stays on the old relay, which closes it with
//! `relay_shutting_down` when its drain ends: the session then resumes through its fallback
//! relays, or ends, as above. A second `Relocate` during a move is ignored.
//!
//! [`Host`]: crate::Host
//! [`Peer`]: crate::Peer
//!
//! ## Concurrency model
//! A [`Session`] owns its background tasks in a [`JoinSet`], so all are aborted when it is
//! dropped:
//! - the **reader** (`dispatch.rs`) reads relay frames from the control stream (and resumes
//!   the session when the relay is lost, `resume.rs`). Replies
//!   complete the pending request with the same request id; events update the member set and
//!   the session's role and go into a bounded event queue (drop-and-count when full). It also
//!   drives a host migration (`take_over.rs`): on `Promote` it sends `MigrateAllocation` by
//!   itself, and on the reply it waits (bounded) for the snapshot stream before reading on, so
//!   [`Event::HostMigrated`] comes before the [`Event::PeerRejoined`]s that follow it on the
//!   wire. When the connection ends it records the reason once, fails every pending request
//!   with it and ends the queue, after which [`Session::next_event`] yields the terminal
//!   events.
//! - the **writer** (`dispatch.rs`) owns the send half of the control stream and writes queued
//!   request frames, so a request future dropped half-way can never leave half a frame on the
//!   stream; after a resume the reader hands it the new connection's stream.
//! - the **snapshot receiver** accepts the relay's unidirectional streams (one at a time) and
//!   hands a delivered snapshot to the reader ([`crate::snapshot`]).
//! - the **snapshot stager** uploads the latest snapshot staged with
//!   [`Session::stage_snapshot`] at most once per snapshot interval while this client is host.
//!
//! - with [`DirectPolicy::Prefer`](crate::DirectPolicy::Prefer) only, the **direct-path
//!   driver** (`paths.rs`) owns one path state machine per member a direct path may lead to
//!   (every other member on the host, the host on a peer). The reader hands it forwarded
//!   offers and `Punch` (a bounded queue, dropped when full) and wakes it when the member set,
//!   the role or the observed address changed; it sends offers and reports through the
//!   writer, punches and dials from the session's one socket, and keeps the route table that
//!   sends read. A **watcher** task per direct connection delivers its datagrams to a bounded
//!   queue that [`Session::recv`] reads too (drop-and-count when full), samples its RTT and
//!   liveness for the driver and reports its end; the **accept loop** completes incoming
//!   direct handshakes (bounded), which the certificate pin admits only from members whose
//!   offer named them.
//!
//! The session has one UDP socket (one quinn endpoint) for its relay connection and its direct
//! paths, so the relay observes the NAT mapping the direct paths punch.
//!
//! Datagrams bypass all of them: [`Session::send_to`] and [`Session::recv`] use the quinn
//! connection directly (the current one, which a resume replaces), or, while a member's path is
//! direct, its direct connection (a brief lock of the route table, skipped while no path is
//! direct).
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::datagram::{self, Destination};
use baton_protocol::{AllocationId, ClientMessage, CloseCode, ErrorCode, JoinCode, PeerId};
use bytes::Bytes;
use quinn::SendDatagramError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::error::{check_payload, refusal};
use crate::snapshot::UploadError;
use crate::{defaults, DisconnectReason, Error, Event, NatKind, Path, ReconnectToken};

mod connect;
mod dispatch;
mod heartbeat;
mod nat;
mod paths;
mod resume;
mod shared;
mod take_over;

pub(crate) use connect::{connect, retry_while_migrating, Bound, BIND_REQUEST_ID};
pub use paths::PathStats;
use shared::PendingGuard;
pub(crate) use shared::{lock, Shared};
use shared::{Link, LinkState};

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
            .field("relay", &self.shared.conn().remote_address())
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

    /// The allocation's host-loss timeout, as the relay granted it (SPEC section 11.1): while
    /// this session hosts, the relay treats it as lost after this long without hearing from
    /// it, and the session sends a heartbeat every sixth of it when it sends nothing else.
    /// See [`AllocationOptions::host_loss_timeout`](crate::AllocationOptions::host_loss_timeout).
    pub fn host_loss_timeout(&self) -> Duration {
        shared::lock(&self.shared.role).host_loss_timeout
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

    /// The relay's address: after [`Event::Resumed`], the relay the session resumed through;
    /// after [`Event::Relocated`], the node it moved to.
    pub fn relay_addr(&self) -> SocketAddr {
        self.shared.conn().remote_address()
    }

    /// This client's address as the relay sees it: its IP address and UDP port after any NAT,
    /// as the relay last told it (`ObservedAddress`, SPEC section 5.3; again after a NAT
    /// rebinding). `None` until the relay has said (just after binding).
    pub fn observed_addr(&self) -> Option<SocketAddr> {
        *lock(&self.shared.observed)
    }

    /// How this client's NAT maps its UDP socket, as the session measured it against the
    /// relay's probe port (SPEC section 17.5): [`NatKind::EndpointIndependent`] ("cone": hole
    /// punching can work), [`NatKind::EndpointDependent`] ("symmetric": a direct path needs
    /// the other member's NAT to be endpoint-independent), or [`NatKind::Unknown`] (not
    /// measured: [`DirectPolicy::Never`](crate::DirectPolicy::Never), a relay without a probe
    /// port, a probe that failed or is still under way). Measured again after the observed
    /// address changes.
    pub fn nat(&self) -> NatKind {
        self.shared.nat.kind()
    }

    /// Replaces the relays this session resumes through when its relay is lost
    /// ([`ClientConfig::fallback_relays`](crate::ClientConfig::fallback_relays)): a fleet's nodes
    /// come and go (scale-in, upgrades, losses), so a long game should be told the nodes as they
    /// are now, typically by its lobby, or its list may name only nodes that are gone when it
    /// needs one. Takes effect for the next resume (one under way keeps its list); an empty list
    /// turns resuming off. A resume also needs a resume window that is not 0
    /// ([`ClientConfig::resume_window`](crate::ClientConfig::resume_window)).
    pub fn set_fallback_relays(&self, relays: Vec<SocketAddr>) {
        *lock(&self.shared.fallback_relays) = relays;
    }

    /// The current members of the allocation, this client and the host included, in id
    /// order. Kept up to date from membership events as the session reads them (independently
    /// of whether the application reads [`Session::next_event`]).
    pub fn members(&self) -> Vec<PeerId> {
        lock(&self.shared.members).iter().copied().collect()
    }

    /// The current round-trip time estimate to the relay.
    pub fn rtt(&self) -> Duration {
        self.shared.conn().rtt()
    }

    /// Why the session ended, or `None` while it is up (or resuming after losing its relay).
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        let link = self.shared.link();
        match link.state {
            LinkState::Ended => Some(self.shared.final_reason()),
            LinkState::Resuming => None,
            LinkState::Up => link
                .conn
                .close_reason()
                .filter(|e| !self.shared.may_resume(e))
                .map(|e| self.shared.reason(&e)),
        }
    }

    /// Datagrams [`Session::send_to`], [`Session::send_to_host`] and [`Session::broadcast`]
    /// dropped because the session was resuming after losing its relay (see
    /// [`ClientConfig::fallback_relays`](crate::ClientConfig::fallback_relays)).
    pub fn dropped_while_resuming(&self) -> u64 {
        self.shared.dropped_while_resuming.load(Ordering::Relaxed)
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

    /// Which path datagrams to and from `peer` take: [`Path::Direct`] while a direct
    /// connection to it is up and in use (only with
    /// [`DirectPolicy::Prefer`](crate::DirectPolicy::Prefer), and only between the host and
    /// another member), [`Path::Relayed`] otherwise. Changes are reported as
    /// [`Event::PathChanged`].
    pub fn path(&self, peer: PeerId) -> Path {
        match &self.shared.direct {
            Some(d) if d.has_route(peer) => Path::Direct,
            _ => Path::Relayed,
        }
    }

    /// What this session's direct paths did so far (all zero with
    /// [`DirectPolicy::Never`](crate::DirectPolicy::Never)).
    pub fn path_stats(&self) -> PathStats {
        self.shared
            .direct
            .as_ref()
            .map(|d| d.stats())
            .unwrap_or_default()
    }

    /// Closes this session's direct connections from this side, as a network failure would
    /// end them: datagrams fall back to the relay (on both sides) and the next attempt waits
    /// for the usual backoff. For tests of the fallback; not part of the stable API.
    #[doc(hidden)]
    pub fn break_direct_paths(&self) {
        if let Some(direct) = &self.shared.direct {
            direct.close_routes();
        }
    }

    /// Sends `payload` to one member of the allocation as an unreliable QUIC datagram:
    /// through the relay, or on the direct connection to `peer` while its
    /// [`path`](Session::path) is [`Path::Direct`] (see
    /// [`ClientConfig::direct`](crate::ClientConfig::direct)).
    ///
    /// Returns once the datagram is queued; like any datagram it may be lost, and the relay
    /// reports datagrams it dropped as [`Event::DatagramsDropped`] (for example those sent to
    /// a host just lost).
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`] if `payload` exceeds [`Session::max_payload`] (nothing is
    /// sent), [`Error::UnknownPeer`] for the reserved broadcast id, [`Error::Disconnected`] once
    /// the session has ended. While the session is resuming after losing its relay, the
    /// datagram is dropped and counted ([`Session::dropped_while_resuming`]) and this returns
    /// `Ok`: datagrams are unreliable anyway, and a game loop goes on unchanged.
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

    /// Sends `payload` to every other member of the allocation, as [`Session::send_to`] does:
    /// one relay broadcast, or, when some members have a direct path, directly to those and
    /// through the relay (one unicast each) to the others.
    ///
    /// # Errors
    /// As [`Session::send_to`].
    pub fn broadcast(&self, payload: &[u8]) -> Result<(), Error> {
        self.send(Destination::Broadcast, payload)
    }

    fn send(&self, destination: Destination, payload: &[u8]) -> Result<(), Error> {
        check_payload(payload.len(), self.max_payload)?;
        if let Some(direct) = &self.shared.direct {
            if direct.any_route() {
                // One copy of the payload, shared by every direct send.
                let bare = Bytes::copy_from_slice(payload);
                match destination {
                    Destination::Peer(peer) => {
                        if direct.send_direct(peer, &bare) {
                            return Ok(());
                        }
                    }
                    Destination::Broadcast => {
                        // Direct to each member with a direct path, through the relay (as
                        // unicasts) to the others.
                        let mut result = Ok(());
                        for member in self.members() {
                            if member == self.local_peer || direct.send_direct(member, &bare) {
                                continue;
                            }
                            let sent = self.send_relayed(Destination::Peer(member), payload);
                            if result.is_ok() {
                                result = sent;
                            }
                        }
                        return result;
                    }
                }
            }
        }
        self.send_relayed(destination, payload)
    }

    /// Sends `payload` to `destination` through the relay.
    fn send_relayed(&self, destination: Destination, payload: &[u8]) -> Result<(), Error> {
        // One copy: header and payload into the buffer quinn takes ownership of.
        let datagram = Bytes::from(datagram::encode(destination.to_u16(), payload));
        let mut link = self.shared.link();
        let mut result = self.send_on(&link, datagram.clone());
        if matches!(result, Err(SendDatagramError::ConnectionLost(_))) {
            let now = self.shared.link();
            // The session moved to another node a moment ago and closed this connection.
            if now.generation != link.generation {
                link = now;
                result = self.send_on(&link, datagram);
            }
        }
        let conn = link.conn;
        match result {
            // Lost a moment ago: the reader is about to resume.
            Err(SendDatagramError::ConnectionLost(e))
                if link.state == LinkState::Up && self.shared.may_resume(&e) =>
            {
                self.shared.drop_while_resuming();
                Ok(())
            }
            other => other.map_err(|e| match e {
                SendDatagramError::TooLarge => Error::PayloadTooLarge {
                    len: payload.len(),
                    limit: conn
                        .max_datagram_size()
                        .map_or(0, |max| max.saturating_sub(datagram::HEADER_LEN)),
                },
                SendDatagramError::UnsupportedByPeer => {
                    Error::Protocol("the relay does not accept QUIC datagrams".into())
                }
                SendDatagramError::Disabled => {
                    Error::Config("QUIC datagrams are disabled locally".into())
                }
                SendDatagramError::ConnectionLost(e) => {
                    Error::Disconnected(self.shared.ended_reason(&e))
                }
            }),
        }
    }

    /// Sends `datagram` on `link`'s connection, or drops and counts it (`Ok`) while resuming.
    fn send_on(&self, link: &Link, datagram: Bytes) -> Result<(), SendDatagramError> {
        if link.state == LinkState::Resuming {
            self.shared.drop_while_resuming();
            return Ok(());
        }
        link.conn.send_datagram(datagram)
    }

    /// Receives the next datagram: the sender's peer id (stamped by the relay, so it cannot be
    /// spoofed; on a direct path, the member whose certificate the connection authenticated)
    /// and the payload. Datagrams too short to carry a header are skipped and counted
    /// ([`Session::malformed_datagrams`]).
    ///
    /// Cancel-safe: dropping the future loses no datagram. While the session resumes after
    /// losing its relay this waits, and goes on with the new relay's datagrams.
    ///
    /// # Errors
    /// [`Error::Disconnected`] once the session has ended.
    pub async fn recv(&self) -> Result<(PeerId, Bytes), Error> {
        let Some(direct) = &self.shared.direct else {
            return self.recv_relayed().await;
        };
        let mut received = direct.received.lock().await;
        tokio::select! {
            Some(datagram) = received.recv() => Ok(datagram),
            relayed = self.recv_relayed() => relayed,
        }
    }

    /// The next datagram from the relay.
    async fn recv_relayed(&self) -> Result<(PeerId, Bytes), Error> {
        loop {
            let link = self.shared.link();
            let read = match &link.lingering {
                None => link.conn.read_datagram().await,
                // Just moved to another node: members that have not moved yet still send
                // through the old one.
                Some(old) => tokio::select! {
                    read = link.conn.read_datagram() => read,
                    read = old.read_datagram() => match read {
                        Ok(datagram) => Ok(datagram),
                        Err(_) => {
                            self.shared.end_linger(old);
                            continue;
                        }
                    },
                },
            };
            let datagram = match read {
                Ok(datagram) => datagram,
                // The session moved to another node and closed this connection.
                Err(_) if self.shared.link().generation != link.generation => continue,
                Err(e) if self.shared.may_resume(&e) => {
                    if self.shared.await_new_link(link.generation).await {
                        continue;
                    }
                    return Err(Error::Disconnected(self.shared.final_reason()));
                }
                Err(e) => return Err(Error::Disconnected(self.shared.ended_reason(&e))),
            };
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
    /// [`ClientConfig::snapshot_interval`](crate::ClientConfig::snapshot_interval), and only if
    /// it changed. Cheap enough to call every tick. A snapshot the relay refuses is reported as
    /// [`Event::SnapshotRejected`] and not retried until a new one is staged.
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
        self.shared
            .await_reply(rx, self.request_timeout * 2)
            .await?
    }

    /// Leaves the allocation: closes the connection with the normal close code, then waits
    /// briefly ([`defaults::CLOSE_WAIT`] at most) for the relay to acknowledge, so it learns at
    /// once rather than after its idle timeout. Afterwards [`Session::recv`] fails with
    /// [`DisconnectReason::ClosedLocally`] (unless the connection had already ended for another
    /// reason).
    ///
    /// If this client is the host, the relay starts a host migration for the others.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        close_normally(&self.shared.conn());
        if self.shared.direct.is_some() {
            // Direct connections share the endpoint: close them too, or it never goes idle.
            self.endpoint.close(0u32.into(), b"");
        }
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
        self.shared.send_request(&self.requests, message).await?;
        self.shared.await_reply(reply, self.request_timeout).await?
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        close_normally(&self.shared.conn());
        if let Some(direct) = &self.shared.direct {
            // The driver's own handles go with its task.
            direct.close_routes();
        }
    }
}

fn close_normally(conn: &quinn::Connection) {
    shared::close(conn, CloseCode::Normal);
}

/// The receiving end of the event queue, and the terminal events once it has ended.
struct EventQueue {
    rx: mpsc::Receiver<Event>,
    terminal: Option<VecDeque<Event>>,
}

impl EventQueue {
    fn new(rx: mpsc::Receiver<Event>) -> Self {
        EventQueue { rx, terminal: None }
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
}
