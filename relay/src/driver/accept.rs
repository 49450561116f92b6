//! The accept loop, one per endpoint: asks [`Admission`] about each new connection attempt
//! before any handshake state is kept, answers with a QUIC Retry or a refusal, or spawns one
//! task per connection, which runs [`serve_connection`] once the handshake completes.
//!
//! A refusal is `Incoming::refuse`, not `ignore`: the client learns at once (a small
//! CONNECTION_CLOSE, smaller than the padded 1200-byte Initial that caused it, so it cannot
//! amplify traffic towards a spoofed source) instead of retrying until its timeout.
//!
//! A handshake's costliest step is its first: the server's key exchange and certificate
//! signature, done when the attempt is accepted. The loop accepts one attempt per turn of its
//! lane and then yields, so the lane's ready tasks (datagrams of established connections) run
//! between two handshakes instead of queueing behind a burst of them: a flood of handshakes
//! adds at most one handshake's work to a datagram's wait. Attempts waiting meanwhile are
//! bounded by quinn's incoming queue ([`defaults::INCOMING_QUEUE`](crate::defaults)).
//!
//! Runs on the endpoint's data-plane lane thread (`Relay::bind` spawns it there), and so do the
//! connection tasks it spawns. Calls only [`connection`](super::connection) and
//! [`admission`](super::admission); never the control plane.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_protocol::CloseCode;
use quinn::VarInt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, Instrument, Level};

use super::admission::Decision;
use super::connection::serve_connection;
use super::Shared;

/// `endpoint`'s next incoming connection; `None` once `shutdown` is cancelled or the endpoint
/// closed.
pub(super) async fn next_incoming(
    endpoint: &quinn::Endpoint,
    shutdown: &CancellationToken,
) -> Option<quinn::Incoming> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        incoming = endpoint.accept() => incoming,
    }
}

/// Accepts `endpoint`'s connections until `shutdown` or the endpoint closes.
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let Some(incoming) = next_incoming(&endpoint, &shutdown).await else {
            break;
        };
        let remote = incoming.remote_address();
        let handshake = match shared
            .admission
            .admit(remote.ip(), incoming.remote_address_validated())
        {
            Decision::Accept(handshake) => handshake,
            Decision::Retry => {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                continue;
            }
            Decision::Refuse(reason) => {
                debug!(%remote, ?reason, "connection refused");
                incoming.refuse();
                continue;
            }
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", id, %remote);
        // The handshake's first flight is computed here, on this task. quinn runs the
        // connection's driver inside the span current at `accept`, entering it on every poll
        // (every packet): with an enabled span that cost 2.6 % of the data plane's instructions.
        // The driver carries the connection's span only when quinn's own debug logs would
        // print it; this task (the connection's control, snapshots and timers) always does.
        let connecting = if quinn_debug_enabled() {
            span.in_scope(|| incoming.accept())
        } else {
            incoming.accept()
        };
        let shared = shared.clone();
        tasks.spawn(
            async move {
                let connecting = match connecting {
                    Ok(connecting) => connecting,
                    Err(e) => {
                        debug!(cause = %e, "handshake failed at its first packet");
                        return;
                    }
                };
                match connecting.await {
                    Ok(conn) if !speaks_current_version(&conn) => {
                        debug!("retired protocol version; closing");
                        let code = CloseCode::UnsupportedVersion;
                        conn.close(
                            VarInt::from_u32(code.to_u32()),
                            code.description().as_bytes(),
                        );
                    }
                    Ok(conn) => match handshake.established() {
                        Ok(_established) => serve_connection(id, conn, &shared).await,
                        Err(reason) => {
                            debug!(?reason, "established over max_connections; closing");
                            let code = CloseCode::RelayFull;
                            conn.close(
                                VarInt::from_u32(code.to_u32()),
                                code.description().as_bytes(),
                            );
                        }
                    },
                    Err(e) => debug!(cause = %e, "handshake failed"),
                }
            }
            .instrument(span),
        );
        // Let every task that became ready meanwhile run, and the lane poll its sockets,
        // before the next handshake.
        tokio::task::yield_now().await;
    }
}

/// Whether quinn logs at debug level (its connection-level logs), where a connection's span
/// names the connection they are about.
fn quinn_debug_enabled() -> bool {
    tracing::enabled!(target: "quinn", Level::DEBUG)
        || tracing::enabled!(target: "quinn_proto", Level::DEBUG)
}

/// Whether `conn` negotiated the current protocol version: the TLS config also accepts the
/// retired ones, only so that they can be closed with a reason (SPEC section 2.2).
pub(super) fn speaks_current_version(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|alpn| alpn == baton_protocol::ALPN)
}
