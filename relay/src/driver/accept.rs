//! The accept loop, one per endpoint: refuses connections over `max_connections` (counted by
//! [`OpenGuard`]) and spawns one task per connection, which runs [`serve_connection`].
//!
//! Runs on the endpoint's data-plane lane thread (`Relay::bind` spawns it there), and so do the
//! connection tasks it spawns. Calls only [`connection`](super::connection); never the control
//! plane.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use baton_protocol::CloseCode;
use quinn::VarInt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, Instrument};

use super::connection::serve_connection;
use super::Shared;

/// Accepts `endpoint`'s connections until `shutdown` or the endpoint closes.
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if shared.open.load(Ordering::Relaxed) >= shared.max_connections {
            shared.metrics.connections_refused.inc();
            incoming.refuse();
            continue;
        }
        shared.open.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", id, remote = %incoming.remote_address());
        let shared = shared.clone();
        tasks.spawn(
            async move {
                let _open = OpenGuard(&shared.open);
                match incoming.await {
                    Ok(conn) if !speaks_current_version(&conn) => {
                        debug!("retired protocol version; closing");
                        let code = CloseCode::UnsupportedVersion;
                        conn.close(
                            VarInt::from_u32(code.to_u32()),
                            code.description().as_bytes(),
                        );
                    }
                    Ok(conn) => serve_connection(id, conn, &shared).await,
                    Err(e) => debug!(cause = %e, "handshake failed"),
                }
            }
            .instrument(span),
        );
    }
}

/// Whether `conn` negotiated the current protocol version: the TLS config also accepts the
/// retired ones, only so that they can be closed with a reason (SPEC section 2.2).
fn speaks_current_version(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|alpn| alpn == baton_protocol::ALPN)
}

/// Decrements the open-connection count however the connection task ends.
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
