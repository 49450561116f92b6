//! The webhook receiver: an HTTP server taking the relay's signed POSTs on any path.
//!
//! Each request is checked before anything in it is trusted: `Baton-Timestamp` and
//! `Baton-Signature` against the raw body with [`hooks::verify_signature`] (constant-time,
//! stale timestamps refused). Then the lobby takes the event and the relay gets its answer at
//! once:
//!
//! | request | answer |
//! |---|---|
//! | signature missing, malformed, wrong, or timestamp outside the tolerance | 401 |
//! | authentic, new or already seen (the relay retried) | 204 |
//! | authentic but not a lobby event (no JSON, no id) | 400 (cannot come from a relay) |
//! | not a POST | 405 |
//!
//! Any 2xx tells the relay the event is delivered, so a duplicate is acknowledged too:
//! refusing it would only make the relay send it again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use baton_relay::hooks;
use bytes::Bytes;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::lobby::{Lobby, Source};
use crate::Shutdown;

/// Largest body accepted. Relay events are a few hundred bytes; the bound keeps a forged
/// request from making the lobby buffer megabytes before the signature check refuses it.
pub const MAX_BODY: usize = 64 * 1024;

/// What the request handler needs (no `Debug`: it holds a secret).
pub struct Receiver {
    /// The shared secret (the relay's `--webhook-secret`).
    pub secret: String,
    /// How far `Baton-Timestamp` may be from this machine's clock.
    pub tolerance: Duration,
    /// Where authentic events go.
    pub lobby: Arc<Lobby>,
}

/// Serves webhooks on `listener` until `shutdown` fires, then finishes the requests in flight
/// (so an event that triggered `--exit-after` is still acknowledged).
pub async fn serve(
    listener: TcpListener,
    receiver: Arc<Receiver>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let app = Router::new()
        .fallback(post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(receiver);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .context("webhook server failed")
}

/// One webhook request: verify, then hand the event to the lobby.
async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (
        header(hooks::TIMESTAMP_HEADER),
        header(hooks::SIGNATURE_HEADER),
    ) else {
        warn!("webhook request without Baton-Timestamp or Baton-Signature refused");
        return StatusCode::UNAUTHORIZED;
    };
    if let Err(err) = hooks::verify_signature(
        receiver.secret.as_bytes(),
        timestamp,
        &body,
        signature,
        receiver.tolerance,
        SystemTime::now(),
    ) {
        warn!(cause = %err, "webhook request refused");
        return StatusCode::UNAUTHORIZED;
    }
    match receiver.lobby.accept(Source::Webhook, &body) {
        Ok(accepted) => {
            debug!(?accepted, "webhook event acknowledged");
            StatusCode::NO_CONTENT
        }
        Err(err) => {
            warn!(cause = %err, "authentic webhook body is not a lobby event");
            StatusCode::BAD_REQUEST
        }
    }
}
