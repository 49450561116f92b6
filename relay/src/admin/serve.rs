//! The admin server's accept loop, on hyper directly so it can bound what a client holds:
//! - a **header-read timeout** ([`AdminLimits::header_timeout`]): a connection that has not sent
//!   a whole request head within it is closed. hyper starts the timer when it waits for a head,
//!   so it bounds a new connection's first request (a slowloris client dribbling its headers)
//!   and a kept-alive connection's idle time between requests alike;
//! - a **connection limit** ([`AdminLimits::max_connections`]): a connection accepted over it is
//!   closed at once, before a byte is read.
//!
//! Both are counted in `baton_admin_connections_refused_total{reason}`; open connections are
//! `baton_admin_connections`.
//!
//! Concurrency: one task runs the loop and one task serves each connection, on the relay's
//! (main) runtime. When `shutdown` fires the loop stops accepting, tells every connection to
//! finish its request in flight and close, and returns once they have (event streams end
//! [`crate::hooks::SHUTDOWN_FLUSH`] after shutdown).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::AdminLimits;
use crate::metrics::Metrics;

/// Pause after a failed accept (out of file descriptors, say) before the next, so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` within `limits` until `shutdown` fires, then lets every
/// connection finish its request in flight.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: AdminLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections()));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(cause = %err, "admin server cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Over the limit: closed before a byte is read.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.admin.refused_at_limit.inc();
            debug!(%remote, "admin connection refused: connection limit");
            continue;
        };
        let open = OpenConnection::new(slot, metrics.clone());
        // Answers are small and streamed events should leave at once.
        let _ = stream.set_nodelay(true);
        let connection = graceful.watch(
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())),
        );
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                if err.is_timeout() {
                    open.metrics.admin.refused_header_timeout.inc();
                    debug!(%remote, "admin connection closed: header timeout");
                } else {
                    debug!(%remote, cause = %err, "admin connection ended");
                }
            }
            drop(open);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One connection's slot under the limit and its place in `baton_admin_connections`, both
/// given back when the connection's task ends, however it ends.
struct OpenConnection {
    metrics: Arc<Metrics>,
    _slot: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.admin.connections.inc();
        OpenConnection {
            metrics,
            _slot: slot,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.admin.connections.dec();
    }
}
