//! The session's reader and writer tasks. [`run_reader`] reads relay frames off the control
//! stream ([`read_message`]) and hands each to [`Shared::dispatch`]: a reply completes the
//! pending request with its request id ([`reply_id`]), an event updates the member set and goes
//! into the bounded event queue ([`Shared::emit`]: drop-and-count when full); host-migration
//! messages go to `take_over.rs`; `Relocate` starts a move to another node (`resume.rs`), and
//! once the move has swapped connections the reader reads the new one on. When the connection
//! ends unexpectedly and the session has fallback relays, the reader resumes it (`resume.rs`)
//! and reads the new connection on;
//! otherwise it records why the session ended, once ([`Shared::end`]). [`run_writer`] writes
//! queued request frames, on the new connection's control stream after a resume.
//!
//! `run_reader` and `dispatch` run on the session's reader task (`dispatch` also on the
//! connecting task, for the messages that came before the bind reply), `run_writer` on its
//! writer task; `emit` is also called by the snapshot stager, and `read_message` by
//! `connect.rs`. Calls `shared.rs` (requests, the end of the connection), `take_over.rs` and
//! [`crate::snapshot`] (upload replies).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::datagram;
use baton_protocol::frame::{self, DEFAULT_MAX_FRAME_LEN, LEN_PREFIX};
use baton_protocol::{DecodeError, ServerMessage};
use bytes::Bytes;
use quinn::{ConnectionError, ReadError, ReadExactError, RecvStream, SendStream, WriteError};
use tokio::sync::mpsc;

use super::paths::Signal;
use super::resume::Resume;
use super::shared::{lock, Shared};
use crate::error::refusal;
use crate::snapshot::{Delivered, UploadError};
use crate::{defaults, DisconnectReason, Event};

/// What the reader needs besides the shared state.
pub(super) struct ReaderIo {
    /// The event queue.
    pub(super) events: mpsc::Sender<Event>,
    /// The writer's queue, for `MigrateAllocation`.
    pub(super) requests: mpsc::Sender<Bytes>,
    /// Snapshots the snapshot receiver got, tagged with the take-over they belong to.
    pub(super) snapshots: mpsc::Receiver<Delivered>,
    /// How long to wait for the snapshot after the take-over reply.
    pub(super) wait: Duration,
}

/// Reads the control stream until the session ends. When the session moved to another node
/// (`Relocate`), or its connection ended unexpectedly and it resumes (`resume`), reads the new
/// connection's control stream on.
pub(super) async fn run_reader(
    shared: Arc<Shared>,
    mut recv: RecvStream,
    mut io: ReaderIo,
    resume: Arc<Resume>,
) {
    let mut buf = Vec::new();
    let reason = loop {
        let (reason, err) =
            match read_until_end(&shared, &mut recv, &mut io, &mut buf, &resume).await {
                StreamEnd::Moved(next, early) => {
                    for message in early {
                        shared.dispatch(message, &mut io).await;
                    }
                    recv = next;
                    continue;
                }
                StreamEnd::Ended(reason, err) => (reason, err),
            };
        if let Some(err) = &err {
            if shared.may_resume(err) {
                if let Some(next) = resume.run(&shared, &reason, &mut io).await {
                    recv = next;
                    continue;
                }
                // The application closed the session while it was resuming.
                if shared.closing.load(Ordering::Relaxed) {
                    break DisconnectReason::ClosedLocally;
                }
            }
        }
        break reason;
    };
    tracing::info!(%reason, "disconnected from relay");
    shared.end(reason);
    // Dropping `io.events` (and the stager's clone, which stops with the session) ends the
    // queue; `next_event` then yields the terminal events.
}

/// How one connection's control stream ended.
enum StreamEnd {
    /// The session moved to another node: its control stream, and the messages that came
    /// before the rejoin's reply.
    Moved(RecvStream, Vec<ServerMessage>),
    /// The connection ended: why, and quinn's error when the connection itself ended (`None`
    /// when this side aborted it).
    Ended(DisconnectReason, Option<ConnectionError>),
}

/// Reads one connection's control stream until it ends. `Relocate` starts a move to another
/// node (`resume`), which goes on while this stream is read.
async fn read_until_end(
    shared: &Arc<Shared>,
    recv: &mut RecvStream,
    io: &mut ReaderIo,
    buf: &mut Vec<u8>,
    resume: &Arc<Resume>,
) -> StreamEnd {
    loop {
        let failure = match read_message(recv, buf).await {
            Ok(ServerMessage::Relocate {
                address,
                server_name,
            }) => {
                resume.start_relocation(shared, address, server_name, io.events.clone());
                continue;
            }
            Ok(message) => {
                shared.dispatch(message, io).await;
                continue;
            }
            Err(failure) => failure,
        };
        // The move closes the old connection once the new one is installed.
        if let Some((next, early)) = shared.take_moved() {
            return StreamEnd::Moved(next, early);
        }
        return match failure {
            ReadFailure::Connection(e) => StreamEnd::Ended(shared.reason(&e), Some(e)),
            ReadFailure::Ended(detail) => match close_after_stream_end(&shared.conn()).await {
                Some(e) => StreamEnd::Ended(shared.reason(&e), Some(e)),
                None => StreamEnd::Ended(shared.abort(detail), None),
            },
            ReadFailure::Invalid(detail) => StreamEnd::Ended(shared.abort(detail), None),
        };
    }
}

/// Writes queued request frames to the control stream; after a resume or a move, to the new
/// connection's (`streams` brings it), finishing the previous one. A frame whose connection
/// ended under it is written again on the next connection.
pub(super) async fn run_writer(
    shared: Arc<Shared>,
    mut send: SendStream,
    mut frames: mpsc::Receiver<Bytes>,
    mut streams: mpsc::Receiver<SendStream>,
) {
    loop {
        let frame = tokio::select! {
            biased;
            Some(stream) = streams.recv() => {
                // The previous connection is gone, or (after a move to another node) still
                // delivers datagrams: finishing its control stream tells that node this
                // member has moved. Nothing more is written there.
                let _ = send.finish();
                send = stream;
                continue;
            }
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                None => return,
            },
        };
        loop {
            match send.write_all(&frame).await {
                Ok(()) => break,
                // The reader reports the connection's end, and hands over the next
                // connection's stream if the session resumes; it drops its sender when the
                // session ends.
                Err(WriteError::ConnectionLost(_)) => match streams.recv().await {
                    Some(stream) => send = stream,
                    None => return,
                },
                Err(other) => {
                    shared.abort(format!("cannot write the control stream: {other}"));
                    return;
                }
            }
        }
    }
}

impl Shared {
    /// Handles one relay message after binding.
    pub(super) async fn dispatch(&self, message: ServerMessage, io: &mut ReaderIo) {
        // What may change the direct paths' pairs or candidates (`paths.rs`).
        let paths_changed = matches!(
            message,
            ServerMessage::PeerJoined { .. }
                | ServerMessage::PeerLeft { .. }
                | ServerMessage::PeerRejoined { .. }
                | ServerMessage::HostLost { .. }
                | ServerMessage::Migrated { .. }
                | ServerMessage::AllocationCreated { .. }
                | ServerMessage::ObservedAddress { .. }
        );
        self.handle(message, io).await;
        if paths_changed {
            self.paths_changed();
        }
    }

    async fn handle(&self, message: ServerMessage, io: &mut ReaderIo) {
        match message {
            ServerMessage::Done { request_id } => self.resolve(request_id, Ok(())),
            ServerMessage::Refused {
                request_id,
                code,
                value,
            } => match self.finish_take_over(request_id) {
                Some(take_over) => self.take_over_refused(take_over, code, value),
                None => self.resolve(request_id, Err(refusal(code, value))),
            },
            ServerMessage::PeerJoined { peer } => {
                lock(&self.members).insert(peer);
                tracing::debug!(%peer, "peer joined");
                self.emit(&io.events, Event::PeerJoined { peer });
            }
            ServerMessage::PeerLeft { peer, reason } => {
                lock(&self.members).remove(&peer);
                self.path_signal(Signal::Left(peer));
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
                self.promoted(allocation, ticket, deadline_ms, &io.requests)
                    .await;
            }
            ServerMessage::AllocationCreated {
                request_id,
                allocation,
                code,
                reconnect_token,
                host_loss_timeout_ms,
                ..
            } => match self.finish_take_over(request_id) {
                Some(take_over) => {
                    lock(&self.role).host_loss_timeout =
                        super::shared::host_loss_timeout(host_loss_timeout_ms);
                    self.took_over(take_over, allocation, code, reconnect_token, io)
                        .await;
                }
                None => tracing::warn!(request_id, "ignoring an unsolicited AllocationCreated"),
            },
            ServerMessage::Migrated { allocation, host } => {
                self.moved_to_new_host(allocation, host, &io.events);
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
            // A relay redirects only a Join or Rejoin, which `connect` follows before the
            // session exists; here it answers some other request (SPEC section 5.3).
            ServerMessage::Redirect { request_id, .. } => {
                self.abort(format!(
                    "the relay answered request {request_id} with Redirect"
                ));
            }
            ServerMessage::ObservedAddress {
                address,
                probe_port,
            } => {
                tracing::debug!(%address, probe_port, "the relay sees this client at");
                *lock(&self.observed) = Some(address);
                let relay_ip = self.conn().remote_address().ip();
                if let Some(measurement) = self.nat.observed(address, probe_port, relay_ip) {
                    // Bounded by its timeout; it records the kind in `self.nat`.
                    tokio::spawn(measurement.run());
                }
                // A new candidate, or (no probe port) the offers waiting for it may go.
                self.paths_changed();
            }
            ServerMessage::PathOffer { from, .. } if self.direct.is_none() => {
                self.report_policy_never(from, &io.requests);
            }
            ServerMessage::PathOffer {
                from,
                nat,
                fingerprint,
                candidates,
            } => self.path_signal(Signal::Offer {
                from,
                nat,
                fingerprint,
                candidates,
            }),
            ServerMessage::Punch { peer, delay_ms } => self.path_signal(Signal::Punch {
                peer,
                delay: Duration::from_millis(u64::from(delay_ms)),
                at: std::time::Instant::now(),
            }),
            // Messages added to the protocol after this SDK version.
            other => tracing::debug!(message = ?other, "ignoring message this SDK does not handle"),
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

/// The request id a reply answers (`None` for events).
pub(super) fn reply_id(message: &ServerMessage) -> Option<u32> {
    match message {
        ServerMessage::AllocationCreated { request_id, .. }
        | ServerMessage::Joined { request_id, .. }
        | ServerMessage::Refused { request_id, .. }
        | ServerMessage::Done { request_id }
        | ServerMessage::Redirect { request_id, .. } => Some(*request_id),
        _ => None,
    }
}

/// Why reading the control stream stopped.
#[derive(Debug)]
pub(super) enum ReadFailure {
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
pub(super) async fn read_message(
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
pub(super) async fn close_after_stream_end(conn: &quinn::Connection) -> Option<ConnectionError> {
    tokio::time::timeout(defaults::STREAM_END_GRACE, conn.closed())
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use baton_protocol::PeerId;

    use super::*;

    #[test]
    fn replies_are_told_apart_from_events() {
        assert_eq!(reply_id(&ServerMessage::Done { request_id: 7 }), Some(7));
        assert_eq!(
            reply_id(&ServerMessage::Redirect {
                request_id: 8,
                address: "127.0.0.1:7700".parse().unwrap(),
                server_name: "localhost".into(),
            }),
            Some(8)
        );
        assert_eq!(
            reply_id(&ServerMessage::PeerJoined { peer: PeerId(3) }),
            None
        );
    }
}
