//! Resuming a session whose relay was lost, through another relay of its fleet
//! ([`ClientConfig::fallback_relays`]), and moving it to another node when its relay drains
//! (`Relocate`).
//!
//! When the connection ends unexpectedly ([`Shared::may_resume`]), the reader calls
//! [`Resume::run`] instead of ending the session: the session is marked resuming (datagrams
//! sent meanwhile are dropped and counted), the take-over and snapshot uploads in flight on the
//! lost relay are failed (nothing will answer them), and the session sends `Rejoin` with its
//! own reconnect token to each candidate relay in turn ([`Resume::candidates`]), following one
//! redirect per attempt, retrying the list with a backoff ([`defaults::RESUME_BACKOFF_MIN`] to
//! [`defaults::RESUME_BACKOFF_MAX`]) until the resume window runs out. The first round gives
//! each relay a short handshake timeout (a few round trips of the lost connection, 250 ms to
//! [`defaults::RESUME_HANDSHAKE_TIMEOUT`], doubling each round), so a fallback relay that is down too does not hold up the rest; a relay that
//! redirects to the lost relay itself (the fleet's directory has not noticed its loss yet) is
//! asked again after [`defaults::LOST_RELAY_POLL`]. A refusal that no other
//! relay would answer differently (wrong token or credential, allocation closed, unsupported
//! version) stops at once, and so does a round in which every relay says the allocation does
//! not exist; `migrating` is retried at the same relay after its delay.
//!
//! On success the new connection replaces the old one in [`Shared`] ([`Resume::swap`]: the
//! application's calls, the snapshot tasks and the datagram receivers move to it), the writer
//! gets the new control stream, the role and member set become what the relay granted,
//! [`Event::Resumed`] is queued and the reader reads on from the new control stream.
//!
//! ## Relocating (make-before-break)
//! On `Relocate` ([`Resume::start_relocation`], called by the reader) a task of its own sends
//! `Rejoin` to the named node (its server name, the session's trust, credential, endpoint and
//! timeouts; one redirect followed, `migrating` retried) within
//! [`defaults::RELOCATE_TIMEOUT`], while the reader goes on reading the old control stream
//! and datagrams go on flowing on the old connection. On `Joined` the same [`Resume::swap`]
//! installs the new connection (sends go there from then on) and [`Event::Relocated`] is
//! queued; the writer finishes the old control stream, which tells the old node this member
//! has moved; the old connection still delivers datagrams (members that have not moved yet send
//! through the old node) until the old node closes it, once every member has moved, or for at
//! most [`defaults::RELOCATE_LINGER`], and is then closed normally; the reader, whose old
//! stream ends with it, reads on from the new one
//! ([`Shared::take_moved`]). A failed move leaves the session on the old
//! relay; a `Relocate` while one is under way is ignored; a move still under way when the old
//! connection ends is called off (the reader resumes or ends the session as usual). Requests
//! sent on the old connection and not answered before the swap time out; snapshot uploads in
//! flight there are failed and the background uploader goes on on the new connection.
//!
//! Runs on the session's reader task (a move on a task of its own). Calls `connect.rs` (one
//! rejoin attempt), `shared.rs` and [`Shared::dispatch`] for the messages that came before the
//! rejoin's reply.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::{AllocationId, ClientMessage, PeerId, ServerMessage};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::close_normally;
use super::connect::{rebind, retry_while_migrating, BIND_REQUEST_ID};
use super::dispatch::ReaderIo;
use super::shared::{lock, Link, LinkState, Relocation, Shared};
use crate::error::refusal;
use crate::{defaults, ClientConfig, DisconnectReason, Error, Event};

/// What a session needs to rejoin elsewhere: to resume (with fallback relays and a resume
/// window that is not 0) and to move on `Relocate` (always).
pub(crate) struct Resume {
    /// The configuration the session was created with: trust, server name, timings, the
    /// credential, the relay and the fallback relays.
    config: ClientConfig,
    /// The session's endpoint (its local socket), reused for every attempt.
    endpoint: quinn::Endpoint,
    /// Hands the writer the control stream of each new connection.
    streams: mpsc::Sender<SendStream>,
}

/// What a successful rejoin brought.
struct Rebound {
    conn: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
    reply: ServerMessage,
    early: Vec<ServerMessage>,
}

impl Resume {
    /// The rejoin plan of a session connected with `config` on `endpoint`, whose writer takes
    /// new control streams from `streams`.
    pub(super) fn new(
        config: &ClientConfig,
        endpoint: &quinn::Endpoint,
        streams: mpsc::Sender<SendStream>,
    ) -> Self {
        Resume {
            config: config.clone(),
            endpoint: endpoint.clone(),
            streams,
        }
    }

    /// The relays to try after losing `lost`, in order: the relay the session was created
    /// with (unless it is the one lost), then the fallback relays, each once.
    fn candidates(&self, lost: SocketAddr, fallbacks: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut list = Vec::new();
        for relay in std::iter::once(self.config.relay).chain(fallbacks.iter().copied()) {
            if relay != lost && !list.contains(&relay) {
                list.push(relay);
            }
        }
        list
    }

    /// Resumes the session, whose connection ended with `reason`, within the resume window:
    /// the new connection's control stream, or `None` if the session ends.
    pub(super) async fn run(
        &self,
        shared: &Shared,
        reason: &DisconnectReason,
        io: &mut ReaderIo,
    ) -> Option<RecvStream> {
        let lost = shared.conn().remote_address();
        let window = self.config.effective_resume_window();
        shared.set_resuming();
        tracing::warn!(%lost, %reason, ?window, "relay lost; resuming through another relay");
        // The lost relay will answer none of these; replies on the next connection are not
        // theirs.
        shared.fail_take_over(reason);
        shared.uploads.interrupt(reason);

        let started = Instant::now();
        let rebound = match tokio::time::timeout(window, self.attempts(shared, lost)).await {
            Ok(Some(rebound)) => rebound,
            Ok(None) => return None,
            Err(_) => {
                tracing::warn!(?window, "no relay took the session back within the window");
                return None;
            }
        };
        let relay = rebound.conn.remote_address();
        if shared.closing.load(Ordering::Relaxed) {
            close_normally(&rebound.conn);
            return None;
        }
        let (recv, early, allocation, host) = self.swap(shared, rebound)?;
        tracing::info!(
            %relay,
            %allocation,
            %host,
            elapsed = ?started.elapsed(),
            "resumed through another relay"
        );
        shared.emit(&io.events, Event::Resumed { relay });
        for message in early {
            shared.dispatch(message, io).await;
        }
        Some(recv)
    }

    /// Installs the connection a rejoin made in place of the session's current one: the role
    /// and member set become what the relay granted, the application's calls and the session's
    /// tasks move to it, the writer gets its control stream. Returns that connection's control
    /// stream, the messages that came before the reply, the allocation and the host; `None`
    /// (the connection closed) if the reply is not `Joined`.
    fn swap(
        &self,
        shared: &Shared,
        rebound: Rebound,
    ) -> Option<(RecvStream, Vec<ServerMessage>, AllocationId, PeerId)> {
        let ServerMessage::Joined {
            allocation,
            host,
            reconnect_token,
            host_loss_timeout_ms,
            members,
            ..
        } = rebound.reply
        else {
            // `attempt_at` returns only a `Joined` reply.
            close_normally(&rebound.conn);
            return None;
        };
        {
            let mut role = lock(&shared.role);
            role.allocation = allocation;
            role.host = Some(host);
            role.last_host = host;
            role.reconnect_token = reconnect_token;
            role.host_loss_timeout = super::shared::host_loss_timeout(host_loss_timeout_ms);
            role.heard_host_lost = false;
        }
        {
            let mut set: BTreeSet<_> = members.into_iter().collect();
            set.insert(host);
            set.insert(shared.local_peer);
            *lock(&shared.members) = set;
        }
        shared.install(rebound.conn);
        // The writer takes each stream as soon as it is not writing (the queue holds two); it
        // is gone only if the session is being dropped.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.streams.try_send(rebound.send) {
            tracing::warn!("the writer did not take the previous control stream; requests stall");
        }
        Some((rebound.recv, rebound.early, allocation, host))
    }

    /// `Relocate`: starts moving the session to the node at `address` (TLS name
    /// `server_name`) on a task of its own, unless a move is under way already.
    pub(super) fn start_relocation(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        address: SocketAddr,
        server_name: String,
        events: mpsc::Sender<Event>,
    ) {
        let link = shared.link();
        {
            let mut relocation = lock(&shared.relocation);
            if !matches!(*relocation, Relocation::Idle) || link.state != LinkState::Up {
                tracing::debug!(%address, "already moving; Relocate ignored");
                return;
            }
            *relocation = Relocation::Moving(link.generation);
        }
        tracing::info!(%address, %server_name, "relay draining; moving to another node");
        let this = Arc::clone(self);
        let shared = Arc::clone(shared);
        tokio::spawn(
            async move {
                this.relocate(&shared, link, address, server_name, &events)
                    .await;
            }
            .in_current_span(),
        );
    }

    /// Moves the session, whose connection `from` carries the game meanwhile, to the node at
    /// `address`, or leaves it where it is if that fails within [`defaults::RELOCATE_TIMEOUT`].
    async fn relocate(
        &self,
        shared: &Shared,
        from: Link,
        address: SocketAddr,
        server_name: String,
        events: &mpsc::Sender<Event>,
    ) {
        let (old, generation) = (from.conn, from.generation);
        let was_host = shared.is_host();
        let started = Instant::now();
        let window = defaults::RELOCATE_TIMEOUT;
        let attempt = retry_while_migrating(window, || {
            self.attempt_at(shared, address, Some(&server_name), None)
        });
        let rebound = match tokio::time::timeout(window, attempt).await {
            Ok(Ok(rebound)) => rebound,
            Ok(Err(e)) => {
                tracing::warn!(%address, error = %e, "cannot move to the new node; staying");
                relocation_over(shared, generation);
                return;
            }
            Err(_) => {
                tracing::warn!(%address, ?window, "new node did not take the session; staying");
                relocation_over(shared, generation);
                return;
            }
        };
        let conn = rebound.conn.clone();
        let relay = conn.remote_address();
        let moved = {
            let mut relocation = lock(&shared.relocation);
            let link = shared.link();
            if !matches!(*relocation, Relocation::Moving(g) if g == generation)
                || link.generation != generation
                || link.state != LinkState::Up
                || shared.closing.load(Ordering::Relaxed)
            {
                // Called off: the old connection ended, or the application closed.
                None
            } else {
                match self.swap(shared, rebound) {
                    Some((recv, early, allocation, host)) => {
                        *relocation = Relocation::Moved(recv, early);
                        shared.emit(events, Event::Relocated { relay });
                        Some((allocation, host))
                    }
                    None => {
                        *relocation = Relocation::Idle;
                        return;
                    }
                }
            }
        };
        let Some((allocation, host)) = moved else {
            tracing::debug!(%relay, "move called off; closing the new connection");
            close_normally(&conn);
            return;
        };
        if was_host && host != shared.local_peer {
            // A host rejoins as host (SPEC section 14.3); should a relay decide otherwise, the
            // session follows the relay.
            tracing::warn!(%host, "this host rejoined the new node as a peer");
        }
        // Replies to uploads sent on the old connection will not come on the new one.
        shared.uploads.interrupt(&DisconnectReason::ClosedLocally);
        tracing::info!(
            %relay,
            %allocation,
            %host,
            elapsed = ?started.elapsed(),
            "moved to another node"
        );
        // Members that have not moved yet still send through the old node for a moment: until
        // it closes this connection, when every member has moved (the writer finished the old
        // control stream, which tells it this one has).
        shared.linger(old.clone());
        tokio::select! {
            () = tokio::time::sleep(defaults::RELOCATE_LINGER) => {}
            _ = old.closed() => {}
        }
        shared.end_linger(&old);
        // The reader's old control stream ends with it; it then reads the new one.
        close_normally(&old);
    }

    /// Tries the candidate relays in rounds until one takes the session back (`Some`), a
    /// refusal says none will, every relay of a round says the allocation does not exist, or
    /// the application closes the session (`None`). Unbounded: the caller bounds it with the
    /// window.
    async fn attempts(&self, shared: &Shared, lost: SocketAddr) -> Option<Rebound> {
        // The list as it is now: the game may have replaced it since the session started.
        let fallbacks = lock(&shared.fallback_relays).clone();
        let candidates = self.candidates(lost, &fallbacks);
        let mut backoff = defaults::RESUME_BACKOFF_MIN;
        // A candidate that is down too costs a whole handshake timeout: the first rounds give
        // each a short one, so a live relay later in the list is reached soon.
        let mut handshake =
            first_handshake_timeout(shared.conn().rtt(), self.config.connect_timeout);
        loop {
            // Whether every relay of this round said the allocation does not exist.
            let mut gone_everywhere = true;
            let mut i = 0;
            while let Some(&relay) = candidates.get(i) {
                if shared.closing.load(Ordering::Relaxed) {
                    return None;
                }
                match self
                    .attempt_at(shared, relay, None, Some((lost, handshake)))
                    .await
                {
                    Ok(rebound) => return Some(rebound),
                    Err(Error::Migrating { retry_after }) => {
                        let wait = retry_after
                            .clamp(defaults::MIGRATION_POLL_MIN, defaults::MIGRATION_POLL_MAX);
                        tracing::debug!(%relay, ?wait, "allocation migrating; retrying");
                        tokio::time::sleep(wait).await;
                        // The same relay again.
                        continue;
                    }
                    Err(e) if is_final(&e) => {
                        tracing::warn!(%relay, error = %e, "rejoin refused; not resuming");
                        return None;
                    }
                    Err(e) => {
                        gone_everywhere &= matches!(e, Error::CodeNotFound);
                        tracing::debug!(%relay, error = %e, "rejoin failed; next relay");
                    }
                }
                i += 1;
            }
            if gone_everywhere {
                // A relay that closed its allocations (a graceful shutdown does) left nothing
                // to come back to.
                tracing::warn!("no relay knows the allocation; not resuming");
                return None;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(defaults::RESUME_BACKOFF_MAX);
            handshake = (handshake * 2).min(self.config.connect_timeout);
        }
    }

    /// One rejoin at `relay` (following one redirect), verified for `server_name` (default: the
    /// session's): the new connection, or why not.
    async fn attempt_at(
        &self,
        shared: &Shared,
        relay: SocketAddr,
        server_name: Option<&str>,
        resuming: Option<(SocketAddr, Duration)>,
    ) -> Result<Rebound, Error> {
        let bind = {
            let role = lock(&shared.role);
            ClientMessage::Rejoin {
                request_id: BIND_REQUEST_ID,
                allocation: role.allocation,
                peer: shared.local_peer,
                reconnect_token: role.reconnect_token,
                credential: self.config.credential.clone(),
            }
        };
        let mut config = self.config.clone();
        config.relay = relay;
        let lost = resuming.map(|(lost, handshake)| {
            config.connect_timeout = handshake;
            lost
        });
        if let Some(name) = server_name {
            config = config.server_name(name);
            // The name decoded as a DNS name or IP literal.
            config.validate()?;
            if self.endpoint.local_addr()?.is_ipv4() != relay.is_ipv4() {
                return Err(Error::Config(format!(
                    "{relay} is of another address family than this session"
                )));
            }
        }
        let (conn, (send, recv, reply, early)) =
            rebind(&config, &self.endpoint, &bind, lost).await?;
        match reply {
            ServerMessage::Joined { peer, .. } if peer == shared.local_peer => Ok(Rebound {
                conn,
                send,
                recv,
                reply,
                early,
            }),
            ServerMessage::Refused { code, value, .. } => {
                close_normally(&conn);
                Err(refusal(code, value))
            }
            other => {
                close_normally(&conn);
                Err(Error::Protocol(format!(
                    "relay answered a rejoin with message type 0x{:02x}",
                    other.type_byte()
                )))
            }
        }
    }
}

/// The handshake timeout of a resume's first round: [`defaults::RESUME_HANDSHAKE_RTTS`] round
/// trips of the lost connection (`rtt`), within [`defaults::RESUME_HANDSHAKE_MIN`] and
/// [`defaults::RESUME_HANDSHAKE_TIMEOUT`], and never over the connect timeout.
fn first_handshake_timeout(rtt: Duration, connect_timeout: Duration) -> Duration {
    rtt.saturating_mul(defaults::RESUME_HANDSHAKE_RTTS)
        .clamp(
            defaults::RESUME_HANDSHAKE_MIN,
            defaults::RESUME_HANDSHAKE_TIMEOUT,
        )
        .min(connect_timeout)
}

/// Ends a move that failed, so that a later `Relocate` is heeded.
fn relocation_over(shared: &Shared, generation: u64) {
    let mut relocation = lock(&shared.relocation);
    if matches!(*relocation, Relocation::Moving(g) if g == generation) {
        *relocation = Relocation::Idle;
    }
}

/// Whether a rejoin refused with `err` would be refused by every relay of the fleet alike, so
/// that resuming stops at once.
fn is_final(err: &Error) -> bool {
    matches!(
        err,
        Error::Unauthorized
            | Error::CredentialRefused(_)
            | Error::AllocationClosed
            | Error::ProtocolVersionMismatch
            | Error::Config(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Trust;

    #[test]
    fn a_first_round_gives_each_relay_a_few_round_trips_within_bounds() {
        let ms = Duration::from_millis;
        let connect = Duration::from_secs(5);
        // Loopback or a near relay: the floor.
        assert_eq!(first_handshake_timeout(ms(1), connect), ms(250));
        // 100 ms away: four round trips.
        assert_eq!(first_handshake_timeout(ms(100), connect), ms(400));
        // Far away: the ceiling.
        assert_eq!(first_handshake_timeout(ms(600), connect), ms(1000));
        // Never longer than the connect timeout.
        assert_eq!(first_handshake_timeout(ms(100), ms(300)), ms(300));
    }

    #[tokio::test]
    async fn candidates_skip_the_lost_relay_and_repeats() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let config = ClientConfig::new(addr(1), Trust::WebPki).fallback_relays(vec![
            addr(2),
            addr(1),
            addr(3),
            addr(2),
        ]);
        let endpoint = quinn::Endpoint::client(config.local_addr()).unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let resume = Resume::new(&config, &endpoint, tx);
        let fallbacks = &config.fallback_relays;
        // Lost the first relay: the others, in order.
        assert_eq!(
            resume.candidates(addr(1), fallbacks),
            vec![addr(2), addr(3)]
        );
        // Lost a relay the session moved to: the first relay comes first.
        assert_eq!(
            resume.candidates(addr(2), fallbacks),
            vec![addr(1), addr(3)]
        );
        assert_eq!(
            resume.candidates(addr(9), fallbacks),
            vec![addr(1), addr(2), addr(3)]
        );
        // A list the game replaced since.
        assert_eq!(
            resume.candidates(addr(1), &[addr(4), addr(1)]),
            vec![addr(4)]
        );
    }

    #[test]
    fn only_accidental_ends_are_resumed() {
        use baton_protocol::{CloseCode, LeaveReason};
        use quinn::{ApplicationClose, ConnectionError, VarInt};

        use crate::session::shared::resumable;

        let app_close = |code: CloseCode| {
            ConnectionError::ApplicationClosed(ApplicationClose {
                error_code: VarInt::from_u32(code.to_u32()),
                reason: bytes::Bytes::new(),
            })
        };
        assert!(resumable(&ConnectionError::TimedOut));
        assert!(resumable(&ConnectionError::Reset));
        assert!(resumable(&app_close(CloseCode::RelayShuttingDown)));
        assert!(!resumable(&ConnectionError::LocallyClosed));
        for deliberate in [
            CloseCode::Normal,
            CloseCode::Kicked,
            CloseCode::AllocationClosed,
            CloseCode::UnsupportedVersion,
            CloseCode::ProtocolViolation,
            CloseCode::HostLost(LeaveReason::TimedOut),
        ] {
            assert!(!resumable(&app_close(deliberate)), "{deliberate:?}");
        }
    }
}
