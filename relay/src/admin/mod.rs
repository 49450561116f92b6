//! The admin HTTP server: health, readiness, Prometheus metrics and the allocation API a lobby
//! or an operator uses.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 `ready` while the control plane answers, 503 otherwise |
//! | `GET /metrics` | Prometheus/OpenMetrics text |
//! | `GET /v1/allocations` | `{"allocations": [AllocationInfo, ..]}` |
//! | `GET /v1/allocations/{id}` | `AllocationInfo` |
//! | `POST /v1/allocations` | 201 `Reservation`; optional body `{"max_peers": n, "node": "<id>", "region": "<label>"}` (n ≥ 2, capped at the relay's maximum; `node` and `region` on fleet nodes only, one of them). On a fleet node it is placed (see below) and the answer adds `node`, `address` and `server_name` |
//! | `POST /v1/allocations/{id}/revoke-code` | `{"revoked": "CODE"}` |
//! | `POST /v1/allocations/{id}/elect` `{"peer": n, "notify": true}` | `{"elected": n, "allocation_id", "ticket", "deadline_ms"}`: the member is sent `Promote` unless `notify` is false, when the lobby hands it the ticket itself; 409 unless migrating |
//! | `DELETE /v1/allocations/{id}` | 204; members are closed with `AllocationClosed` |
//! | `GET /v1/events` | `text/event-stream` of lifecycle events (see [`crate::hooks`]); resumes after `Last-Event-ID` (header) or `?last_event_id=` |
//!
//! Errors are JSON, `{"error": "<message>", "code": "<machine-readable code>"}`, built in one
//! place (`ApiError`, in `error`). When an admin token is configured every `/v1/` route requires
//! `Authorization: Bearer <token>`; the probes and `/metrics` stay open for orchestrators and
//! scrapers. `/v1/events` requires the event stream's own token instead when one is configured
//! (so a lobby can read events without being able to close allocations).
//!
//! ## Placement in a fleet
//! On a fleet node `POST /v1/allocations` reserves on the node named by `node`, else on the
//! least-loaded active node of `region`, else on the least-loaded active node of the fleet
//! (allocations, then connections, then CPU in whole percent, then node id), forwarding to that
//! node's admin API (its `admin_addr` in the directory) with this node's admin token, so every
//! node of a fleet must have the same admin token. The answer is the chosen node's, with
//! `node`, `address` (its QUIC address, where the host claims the reservation) and
//! `server_name`; `Location` is the allocation's URL on that node's admin API. Errors, all
//! with `"node"` when one node is concerned:
//!
//! | status | code | when |
//! |---|---|---|
//! | 409 | `not_a_fleet_node` | `node` or `region` on a relay standing alone |
//! | 404 | `unknown_node` | the named node has no live record in the directory |
//! | 409 | `node_unavailable` | the named node is draining, or publishes no admin address |
//! | 503 | `no_node_in_region` | no active node (with an admin address) in the region |
//! | 503 | `no_active_node` | no active node (with an admin address) in the fleet |
//! | 503 | `node_unreachable` | forwarding to the chosen node failed (refused, timed out after 2 s, an answer over 16 KiB or not Baton's) |
//! | 502 | `forward_unauthorized` | the chosen node refused this node's admin token |
//! | 503 | `directory_unavailable` | the directory does not answer |
//!
//! The chosen node's own refusals (`relay_full`, `shutting_down`, ...) are passed on with its
//! status. Without `node`, a node refusing the connection, or refusing as draining, shutting
//! down or full, is passed over for the next (at most three tries); a forward that times out is
//! not retried elsewhere (the node may have reserved). A forwarded request carries
//! `Baton-Forwarded-By` and names its node: it is served there or refused, never forwarded
//! again. See `placement`.
//!
//! Limits ([`AdminLimits`]): a client has `header_timeout` to send each request's headers (on
//! a new connection and between requests on a kept-alive one), or its connection is closed;
//! connections beyond `max_connections` are closed at accept; event streams beyond the hooks'
//! `max_subscribers` are answered 503 `too_many_subscribers`.
//!
//! Each stream event is `id: <id>`, `event: <type>`, `data: <LobbyEvent JSON>`; a
//! `replay.gap` event (no `id`) says some events were missed; a comment every 15 s keeps idle
//! streams open. Streams end [`crate::hooks::SHUTDOWN_FLUSH`] after shutdown begins, so the
//! server's graceful stop is bounded.
//!
//! Concurrency: the server and its handlers run on the relay's (main) runtime, never on a
//! data-plane lane. Handlers read metrics directly and reach the control plane only through
//! [`RelayHandle`], so a slow HTTP client never holds control-plane state. The server task is
//! owned by whoever calls `spawn` (the relay) and stops when its cancellation token fires.
//!
//! ## Code map
//! - this module: `spawn` and the router (which route goes to which handler, behind which
//!   token), and [`MAX_BODY`];
//! - `serve`: the accept loop: hyper HTTP/1 connections with the header-read timeout, the
//!   connection limit and graceful shutdown;
//! - `auth`: bearer tokens, compared as SHA-256 digests in constant time (`crate::crypto`);
//! - `probes`: `/healthz`, `/readyz` and `/metrics`;
//! - `allocations`: the `/v1/allocations` routes and their JSON bodies;
//! - `placement`: where a fleet node places a reservation, and forwarding it to that node;
//! - `events`: `GET /v1/events`, the SSE stream with `Last-Event-ID` resume, fed by
//!   [`HookSender::subscribe`];
//! - `error`: `ApiError`, the JSON error answer, and the mapping of `AdminError` to statuses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use crate::config::AdminLimits;
use crate::hooks::HookSender;
use crate::RelayHandle;

mod allocations;
mod auth;
mod error;
mod events;
pub(crate) mod placement;
mod probes;
mod serve;

use allocations::{
    allocation, close_allocation, drain, elect_host, list_allocations, reserve_allocation,
    revoke_code,
};
use auth::{digest, require_stream_token, require_token};
use error::ApiError;
use events::events;
use placement::Placement;
use probes::{healthz, metrics, readyz};

/// Largest request body accepted. The bodies are a few small JSON fields; this just bounds what
/// a client can make the relay buffer.
pub const MAX_BODY: usize = 16 * 1024;

/// Serves the admin server on `listener` within `limits` until `shutdown` is cancelled, then
/// lets in-flight requests finish (event streams end [`crate::hooks::SHUTDOWN_FLUSH`] later).
/// `hooks` feeds `GET /v1/events`; `placement` is a fleet node's (`None` standing alone).
/// The caller binds the listener first, so a fleet node can publish the bound address before
/// serving. Returns the bound address and the server task.
pub(crate) fn spawn(
    listener: TcpListener,
    handle: RelayHandle,
    token: Option<String>,
    limits: AdminLimits,
    hooks: HookSender,
    placement: Option<Placement>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let metrics = handle.metrics.clone();
    let app = router(handle, token, hooks, placement.map(Arc::new));
    let task = tokio::spawn(
        serve::serve(listener, app, limits, metrics, shutdown)
            .instrument(info_span!("admin", %addr)),
    );
    Ok((addr, task))
}

#[derive(Clone)]
struct AdminState {
    handle: RelayHandle,
    /// SHA-256 of the admin token. Comparing digests keeps the comparison constant-time and
    /// independent of the token's length.
    token_digest: Option<Arc<[u8; 32]>>,
    hooks: HookSender,
    /// SHA-256 of the token `/v1/events` requires: its own when set, else the admin token.
    stream_token_digest: Option<Arc<[u8; 32]>>,
    /// A fleet node's placement of reservations; `None` on a relay standing alone.
    placement: Option<Arc<Placement>>,
}

/// The admin API's routes, with auth and the body limit applied.
fn router(
    handle: RelayHandle,
    token: Option<String>,
    hooks: HookSender,
    placement: Option<Arc<Placement>>,
) -> Router {
    let token_digest = token.as_deref().map(digest);
    let stream_token_digest = match hooks.stream_token() {
        Some(t) => Some(digest(t)),
        None => token_digest.clone(),
    };
    let state = AdminState {
        handle,
        token_digest,
        hooks,
        stream_token_digest,
        placement,
    };
    let stream =
        Router::new()
            .route("/v1/events", get(events))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_stream_token,
            ));
    let api = Router::new()
        .route(
            "/v1/allocations",
            get(list_allocations).post(reserve_allocation),
        )
        .route(
            "/v1/allocations/{id}",
            get(allocation).delete(close_allocation),
        )
        .route("/v1/allocations/{id}/revoke-code", post(revoke_code))
        .route("/v1/allocations/{id}/elect", post(elect_host))
        .route("/v1/drain", post(drain))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(stream)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[cfg(test)]
mod tests;
