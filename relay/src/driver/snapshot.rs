//! Migration snapshots, on unidirectional streams (`0x01` then the bytes until the stream ends).
//! [`receive_snapshots`] reads a client's uploads, bounded per upload by `max_snapshot` and
//! across the relay by [`SNAPSHOT_INFLIGHT`] bytes being read, and hands each to the control
//! task; [`deliver`] writes one to the member the control plane names.
//!
//! `receive_snapshots` runs inside each connection's task on the endpoint's data-plane lane
//! thread. `deliver` is called by the control task and spawns its own task on the caller's
//! runtime.

use baton_protocol::{stream_kind, CloseCode, ServerMessage};
use bytes::{Bytes, BytesMut};
use quinn::VarInt;
use tracing::debug;

use super::connection::close;
use super::{ConnShared, Shared};
use crate::control::{ConnId, Input};

/// Bytes of snapshot uploads read concurrently across the relay, at most.
pub(super) const SNAPSHOT_INFLIGHT: usize = 256 * 1024 * 1024;

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
