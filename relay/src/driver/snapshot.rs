//! Migration snapshots, on unidirectional streams (`0x01` then the bytes until the stream ends).
//! [`receive_snapshots`] reads a client's uploads, bounded per upload by `max_snapshot` and
//! across the relay by [`SNAPSHOT_INFLIGHT`] bytes being read, and hands each to the control
//! task; [`deliver`] writes one to the member the control plane names.
//!
//! `receive_snapshots` runs inside each connection's task on the endpoint's data-plane lane
//! thread. `deliver` is called by the control task and spawns its own task on the caller's
//! runtime.

use std::sync::atomic::Ordering;

use baton_protocol::{stream_kind, CloseCode, ErrorCode, ServerMessage};
use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::gauge::Gauge;
use quinn::VarInt;
use tokio::sync::SemaphorePermit;
use tracing::debug;

use super::{ConnShared, Shared};
use crate::control::{ConnId, Input};

/// Bytes of snapshot uploads read concurrently across the relay, at most.
pub(super) const SNAPSHOT_INFLIGHT: usize = 256 * 1024 * 1024;

/// The application error code of the relay's `STOP_SENDING` on an upload it will not read
/// (too large, or not from the host): SPEC section 2.5.
const STOP_CODE: u32 = 0;

/// Reads migration snapshots the client uploads on unidirectional streams, one at a time:
/// `0x01` then the snapshot bytes until the stream ends.
pub(super) async fn receive_snapshots(
    conn: &quinn::Connection,
    me: &ConnShared,
    shared: &Shared,
    id: ConnId,
) {
    while let Ok(mut stream) = conn.accept_uni().await {
        let mut kind = [0u8; 1];
        match stream.read_exact(&mut kind).await {
            Ok(()) if kind[0] == stream_kind::SNAPSHOT => {}
            // An unknown kind, or a stream that ends before saying what it carries (SPEC 2.5).
            Ok(()) | Err(quinn::ReadExactError::FinishedEarly(_)) => {
                me.close(CloseCode::ProtocolViolation);
                return;
            }
            // Reset by the client before its kind byte: nothing to read, discard it.
            Err(quinn::ReadExactError::ReadError(_)) => continue,
        }
        if !me.host.load(Ordering::Acquire) {
            // Only the host's uploads are read: anyone else's is stopped before a byte of it
            // is buffered. A bound non-host is told why; an unbound connection is not.
            let _ = stream.stop(VarInt::from_u32(STOP_CODE));
            if me.route.load().is_some() {
                let _ = me.control_tx.try_send(ServerMessage::SnapshotRejected {
                    code: ErrorCode::NotHost,
                    value: 0,
                });
            }
            continue;
        }
        let mut data = BytesMut::new();
        let mut too_large = false;
        let mut reset = false;
        // Held only while reading (once stored, the control plane's budget applies), and
        // given back however the read ends, even when the connection's task is dropped.
        let mut permits = UploadPermits::new(&shared.metrics.snapshot_upload_bytes);
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
                let _ = stream.stop(VarInt::from_u32(STOP_CODE));
                break;
            }
            let Ok(more) = shared
                .snapshot_inflight
                .acquire_many(u32::try_from(chunk.len()).unwrap_or(u32::MAX))
                .await
            else {
                return;
            };
            permits.add(more);
            data.extend_from_slice(&chunk);
        }
        drop(permits);
        if reset {
            continue;
        }
        if too_large {
            let limit = u32::try_from(shared.max_snapshot).unwrap_or(u32::MAX);
            let _ = me.control_tx.try_send(ServerMessage::SnapshotRejected {
                code: ErrorCode::PayloadTooLarge,
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

/// The permits of the relay-wide upload budget ([`SNAPSHOT_INFLIGHT`]) one upload holds while
/// it is read, mirrored in the `snapshot_upload_bytes` gauge. Dropping it gives them all back,
/// however the read ends: stored, rejected, reset, or cut off when the connection's task is
/// dropped mid-upload.
struct UploadPermits<'a> {
    held: Option<SemaphorePermit<'a>>,
    gauge: &'a Gauge,
}

impl<'a> UploadPermits<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        UploadPermits { held: None, gauge }
    }

    /// Holds `more` permits too, until the guard is dropped.
    fn add(&mut self, more: SemaphorePermit<'a>) {
        self.gauge.inc_by(more.num_permits() as i64);
        match &mut self.held {
            Some(held) => held.merge(more),
            None => self.held = Some(more),
        }
    }
}

impl Drop for UploadPermits<'_> {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            self.gauge.dec_by(held.num_permits() as i64);
        }
    }
}

/// Sends snapshot `data` to connection `conn` (`c`) on a stream of its own.
pub(super) fn deliver(conn: ConnId, c: quinn::Connection, data: Bytes) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upload_permits_go_back_when_the_guard_is_dropped() {
        let budget = tokio::sync::Semaphore::new(1000);
        let gauge = Gauge::default();
        let mut permits = UploadPermits::new(&gauge);
        permits.add(budget.acquire_many(300).await.unwrap());
        permits.add(budget.acquire_many(200).await.unwrap());
        assert_eq!(budget.available_permits(), 500);
        assert_eq!(gauge.get(), 500);
        drop(permits);
        assert_eq!(budget.available_permits(), 1000);
        assert_eq!(gauge.get(), 0);
    }
}
