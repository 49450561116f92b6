//! Migration snapshots: uploading them as host (on demand and staged in the background) and
//! receiving the last one on taking over (protocol section 2.5).
//!
//! Uploads go one at a time (the relay grants one unidirectional stream at a time) and the
//! relay answers each finished upload on the control stream, in order, without a request id.
//! So every upload registers a reply slot before it writes anything, and the reader completes
//! slots front to back. An upload cancelled before it finished resets its stream (no reply
//! comes) and removes its slot; one the relay already stopped or that finished keeps its slot,
//! because the relay answers it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_protocol::{stream_kind, ErrorCode};
use bytes::Bytes;
use quinn::{ReadToEndError, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;

use crate::session::{lock, Shared};
use crate::{DisconnectReason, Error, Event};

/// Why an upload did not get stored.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The relay answered `SnapshotRejected`.
    Rejected {
        /// Its code.
        code: ErrorCode,
        /// Its value.
        value: u32,
    },
    /// The upload could not be made or answered.
    Failed(Error),
}

/// A reply to one upload: the stored size, or why not.
type Reply = Result<usize, UploadError>;

/// Upload bookkeeping of one session.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    /// Held for the whole of an upload: one at a time.
    serial: tokio::sync::Mutex<()>,
    replies: Mutex<Replies>,
    staged: Mutex<Staged>,
}

/// Uploads the relay will answer, oldest first.
#[derive(Debug, Default)]
struct Replies {
    next_id: u64,
    slots: VecDeque<(u64, oneshot::Sender<Reply>)>,
    /// Set when the connection ended: no reply will come.
    ended: Option<DisconnectReason>,
}

/// The latest snapshot staged for background upload.
#[derive(Debug, Default)]
struct Staged {
    /// Counts up with every staged snapshot; 0 means none was staged.
    generation: u64,
    data: Bytes,
}

impl Uploads {
    /// Replaces the staged snapshot.
    pub(crate) fn stage(&self, data: Bytes) {
        let mut staged = lock(&self.staged);
        staged.generation += 1;
        staged.data = data;
    }

    /// The staged snapshot and its generation, if one newer than `uploaded` was staged.
    fn staged_after(&self, uploaded: u64) -> Option<(u64, Bytes)> {
        let staged = lock(&self.staged);
        (staged.generation > uploaded).then(|| (staged.generation, staged.data.clone()))
    }

    /// Registers for the reply to the upload about to be written.
    fn expect_reply(&self) -> Result<(u64, oneshot::Receiver<Reply>), Error> {
        let mut replies = lock(&self.replies);
        if let Some(reason) = &replies.ended {
            return Err(Error::Disconnected(reason.clone()));
        }
        let id = replies.next_id;
        replies.next_id += 1;
        let (tx, rx) = oneshot::channel();
        replies.slots.push_back((id, tx));
        Ok((id, rx))
    }

    /// Forgets the reply slot of an upload the relay will not answer.
    fn forget(&self, id: u64) {
        lock(&self.replies).slots.retain(|(slot, _)| *slot != id);
    }

    /// Completes the oldest upload with the relay's answer.
    pub(crate) fn reply(&self, result: Reply) {
        match lock(&self.replies).slots.pop_front() {
            Some((_, tx)) => {
                // The uploader may have given up waiting.
                let _ = tx.send(result);
            }
            None => tracing::warn!(?result, "snapshot reply without an upload"),
        }
    }

    /// Fails every upload waiting for a reply: the session ended.
    pub(crate) fn end(&self, reason: &DisconnectReason) {
        lock(&self.replies).ended = Some(reason.clone());
        self.interrupt(reason);
    }

    /// Fails every upload waiting for a reply: the connection they were sent on ended (the
    /// session resumes on another one, whose replies must not be taken for theirs).
    pub(crate) fn interrupt(&self, reason: &DisconnectReason) {
        let slots = std::mem::take(&mut lock(&self.replies).slots);
        for (_, tx) in slots {
            let _ = tx.send(Err(UploadError::Failed(Error::Disconnected(
                reason.clone(),
            ))));
        }
    }
}

/// An upload's stream: reset, and its reply slot forgotten, if it is dropped before the
/// relay has the whole snapshot.
struct Upload<'a> {
    uploads: &'a Uploads,
    send: SendStream,
    id: u64,
    /// Whether the relay will answer (finished, or stopped by the relay).
    answered: bool,
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        // A reset fails if the relay already stopped the stream, and then it answers.
        if !self.answered && self.send.reset(VarInt::from_u32(0)).is_ok() {
            self.uploads.forget(self.id);
        }
    }
}

impl Shared {
    /// Uploads `data` as the allocation's snapshot and waits up to `timeout` after sending it
    /// for the relay's answer.
    pub(crate) async fn upload(
        &self,
        data: Bytes,
        timeout: Duration,
    ) -> Result<usize, UploadError> {
        let failed = UploadError::Failed;
        if !self.is_host() {
            return Err(failed(Error::NotHost));
        }
        let _one_at_a_time = self.uploads.serial.lock().await;
        let send = self
            .conn()
            .open_uni()
            .await
            .map_err(|e| failed(Error::Disconnected(self.reason(&e))))?;
        let (id, reply) = self.uploads.expect_reply().map_err(failed)?;
        let mut upload = Upload {
            uploads: &self.uploads,
            send,
            id,
            answered: false,
        };
        let len = data.len();
        let written = match upload.send.write_all(&[stream_kind::SNAPSHOT]).await {
            Ok(()) => upload.send.write_chunk(data).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                upload.answered = true;
                // Cannot fail: the stream is open and was not finished.
                let _ = upload.send.finish();
            }
            // The relay stopped reading: the snapshot is over its limit, and it says so.
            Err(WriteError::Stopped(code)) => {
                tracing::debug!(%code, len, "relay stopped reading the snapshot");
                upload.answered = true;
            }
            Err(WriteError::ConnectionLost(e)) => {
                return Err(failed(Error::Disconnected(self.reason(&e))))
            }
            Err(other) => {
                return Err(failed(Error::Protocol(format!(
                    "cannot write the snapshot stream: {other}"
                ))))
            }
        }
        self.await_reply(reply, timeout).await.map_err(failed)?
    }
}

/// A snapshot stream the relay sent, tagged with the take-over it arrived during.
#[derive(Debug)]
pub(crate) struct Delivered {
    /// The take-over request it belongs to (`None`: none was in flight).
    pub(crate) take_over: Option<u32>,
    /// The snapshot; `None` if it could not be read whole.
    pub(crate) snapshot: Option<Bytes>,
}

/// Accepts the relay's unidirectional streams until the session ends (on each connection in
/// turn when it resumes) and hands snapshot streams to the reader. At most `max` bytes are
/// buffered per stream.
pub(crate) async fn receive(shared: Arc<Shared>, snapshots: mpsc::Sender<Delivered>, max: usize) {
    loop {
        let link = shared.link();
        if !receive_on(&shared, &link.conn, &snapshots, max).await
            || !shared.await_new_link(link.generation).await
        {
            return;
        }
    }
}

/// [`receive`] on one connection, until it ends (true) or the reader is gone (false).
async fn receive_on(
    shared: &Shared,
    conn: &quinn::Connection,
    snapshots: &mpsc::Sender<Delivered>,
    max: usize,
) -> bool {
    while let Ok(mut recv) = conn.accept_uni().await {
        let snapshot = match read_snapshot(&mut recv, max).await {
            Received::Snapshot(bytes) => Some(bytes),
            Received::Unusable(detail) => {
                tracing::warn!(%detail, "snapshot stream unusable; the take-over goes on without it");
                None
            }
            Received::Skipped => continue,
        };
        let take_over = lock(&shared.role).awaiting_snapshot;
        if take_over.is_none() {
            tracing::debug!("snapshot stream outside a take-over; discarded");
            continue;
        }
        if snapshots
            .send(Delivered {
                take_over,
                snapshot,
            })
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// What one unidirectional stream carried.
enum Received {
    /// A whole snapshot.
    Snapshot(Bytes),
    /// A snapshot stream that could not be read whole.
    Unusable(String),
    /// A stream of a kind this SDK does not know (stopped, as the protocol says).
    Skipped,
}

/// Reads one stream: its kind byte, then, for a snapshot, everything up to `max` bytes.
async fn read_snapshot(recv: &mut RecvStream, max: usize) -> Received {
    let mut kind = [0u8; 1];
    if let Err(e) = recv.read_exact(&mut kind).await {
        return Received::Unusable(format!("no stream kind: {e}"));
    }
    if kind[0] != stream_kind::SNAPSHOT {
        tracing::debug!(kind = kind[0], "stopping a stream of unknown kind");
        let _ = recv.stop(VarInt::from_u32(0));
        return Received::Skipped;
    }
    match recv.read_to_end(max).await {
        Ok(bytes) => Received::Snapshot(Bytes::from(bytes)),
        Err(ReadToEndError::TooLong) => {
            let _ = recv.stop(VarInt::from_u32(0));
            Received::Unusable(format!("snapshot larger than the {max}-byte limit"))
        }
        Err(ReadToEndError::Read(e)) => Received::Unusable(e.to_string()),
    }
}

/// Uploads the latest staged snapshot at most once per `interval` while this client is host,
/// until the session ends (pausing while it resumes). Refusals become
/// [`Event::SnapshotRejected`].
pub(crate) async fn stage(
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    interval: Duration,
    timeout: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut uploaded = 0;
    loop {
        let link = shared.link();
        let lost = tokio::select! {
            _ = ticker.tick() => false,
            _ = link.conn.closed() => true,
        };
        if lost {
            if shared.await_new_link(link.generation).await {
                continue;
            }
            return;
        }
        let Some((generation, data)) = shared.uploads.staged_after(uploaded) else {
            continue;
        };
        if !shared.is_host() {
            continue;
        }
        match shared.upload(data, timeout).await {
            Ok(len) => {
                uploaded = generation;
                tracing::debug!(len, generation, "staged snapshot stored");
            }
            Err(UploadError::Rejected { code, value }) => {
                // Not retried: the same bytes would be refused again.
                uploaded = generation;
                tracing::warn!(%code, value, "staged snapshot rejected");
                shared.emit(&events, Event::SnapshotRejected { code, value });
            }
            Err(UploadError::Failed(Error::Disconnected(_))) => {
                // The connection ended: go on on the next one, if the session resumes.
                if !shared.await_new_link(link.generation).await {
                    return;
                }
            }
            Err(UploadError::Failed(e)) => {
                tracing::warn!(error = %e, "staged snapshot upload failed; retrying");
            }
        }
    }
}
