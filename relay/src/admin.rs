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
//! | `POST /v1/allocations` | 201 `Reservation`; optional body `{"max_peers": n}` (n ≥ 2, capped at the relay's maximum) |
//! | `POST /v1/allocations/{id}/revoke-code` | `{"revoked": "CODE"}` |
//! | `POST /v1/allocations/{id}/elect` `{"peer": n, "notify": true}` | `{"elected": n, "allocation_id", "ticket", "deadline_ms"}`: the member is sent `Promote` unless `notify` is false, when the lobby hands it the ticket itself; 409 unless migrating |
//! | `DELETE /v1/allocations/{id}` | 204; members are closed with `AllocationClosed` |
//! | `GET /v1/events` | `text/event-stream` of lifecycle events (see [`crate::hooks`]); resumes after `Last-Event-ID` (header) or `?last_event_id=` |
//!
//! Errors are JSON, `{"error": "<message>", "code": "<machine-readable code>"}`, built in one
//! place ([`ApiError`]). When an admin token is configured every `/v1/` route requires
//! `Authorization: Bearer <token>`; the probes and `/metrics` stay open for orchestrators and
//! scrapers. `/v1/events` requires the event stream's own token instead when one is configured
//! (so a lobby can read events without being able to close allocations).
//!
//! Each stream event is `id: <id>`, `event: <type>`, `data: <LobbyEvent JSON>`; a
//! `replay.gap` event (no `id`) says some events were missed; a comment every 15 s keeps idle
//! streams open. Streams end [`crate::hooks::SHUTDOWN_FLUSH`] after shutdown begins, so the
//! server's graceful stop is bounded.
//!
//! Concurrency: handlers read metrics directly and reach the control plane only through
//! [`RelayHandle`], so a slow HTTP client never holds control-plane state. The server task is
//! owned by whoever calls [`spawn`] and stops when its cancellation token fires.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_protocol::AllocationId;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::control::AdminError;
use crate::crypto;
use crate::hooks::{self, HookSender, StreamItem};
use crate::RelayHandle;

/// Largest request body accepted. The only body is `{"max_peers": n}`; this just bounds what a
/// client can make the relay buffer.
pub const MAX_BODY: usize = 16 * 1024;

/// How long `/readyz` waits for the control plane before calling the relay not ready. The
/// control task answers in microseconds; a second means it is stuck or overloaded.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Content type of `/metrics`: prometheus-client's text encoder writes OpenMetrics.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the admin server on `listen` and serves it until `shutdown` is cancelled, then lets
/// in-flight requests finish (event streams end [`hooks::SHUTDOWN_FLUSH`] later). `hooks`
/// feeds `GET /v1/events`. Returns the bound address (useful with port 0) and the server task.
pub(crate) async fn spawn(
    listen: SocketAddr,
    handle: RelayHandle,
    token: Option<String>,
    hooks: HookSender,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(handle, token, hooks);
    let task = tokio::spawn(
        async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(err) = served {
                warn!(cause = %err, "admin server stopped");
            }
        }
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
}

fn digest(token: &str) -> Arc<[u8; 32]> {
    Arc::new(crypto::sha256(token.as_bytes()))
}

/// The admin API's routes, with auth and the body limit applied.
fn router(handle: RelayHandle, token: Option<String>, hooks: HookSender) -> Router {
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

/// An admin API error, rendered as `{"error": .., "code": ..}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

/// The one place control-plane errors become HTTP answers.
impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        let (status, code) = match &err {
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::RelayFull(_) => (StatusCode::SERVICE_UNAVAILABLE, "relay_full"),
            AdminError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            AdminError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopped"),
            AdminError::NotMigrating(_) => (StatusCode::CONFLICT, "not_migrating"),
            AdminError::UnknownPeer(_) => (StatusCode::NOT_FOUND, "unknown_peer"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_request"
        };
        ApiError::new(rejection.status(), code, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message, "code": self.code }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Rejects `/v1/` requests without the right bearer token, when one is configured.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    check_token(state.token_digest.as_deref(), request, next).await
}

/// Rejects `/v1/events` requests without the event stream's token, when there is one.
async fn require_stream_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    check_token(state.stream_token_digest.as_deref(), request, next).await
}

async fn check_token(expected: Option<&[u8; 32]>, request: Request, next: Next) -> Response {
    if let Some(expected) = expected {
        if !bearer_matches(request.headers(), expected) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn bearer_matches(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some((scheme, token)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return false;
    };
    let presented = crypto::sha256(token.trim().as_bytes());
    // Evaluate both sides so the scheme check does not short-circuit the comparison.
    let scheme_ok = scheme.eq_ignore_ascii_case("bearer");
    let token_ok = crypto::constant_time_eq(&presented, expected);
    scheme_ok & token_ok
}

/// Parses an allocation id: exactly 16 hex digits, as the API prints them.
fn parse_id(raw: &str) -> Result<AllocationId, ApiError> {
    if raw.len() != 16 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "allocation id must be 16 hex digits, got {raw:?}"
        )));
    }
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid allocation id {raw:?}")))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, state.handle.counts()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(err)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {err}")).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: control plane did not answer",
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.handle.metrics().encode(),
    )
        .into_response()
}

async fn list_allocations(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let allocations = state.handle.allocations().await?;
    Ok(Json(serde_json::json!({ "allocations": allocations })).into_response())
}

async fn allocation(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match state.handle.allocation(id).await? {
        Some(info) => Ok(Json(info).into_response()),
        None => Err(AdminError::NotFound(id).into()),
    }
}

/// Body of `POST /v1/allocations`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveRequest {
    /// Members including the host; the relay's maximum when absent.
    max_peers: Option<u16>,
}

async fn reserve_allocation(
    State(state): State<AdminState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let request: ReserveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReserveRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?
    };
    if matches!(request.max_peers, Some(n) if n < 2) {
        return Err(ApiError::bad_request(
            "max_peers must be at least 2 (omit it for the relay's maximum)",
        ));
    }
    let reservation = state.handle.reserve_allocation(request.max_peers).await?;
    info!(alloc = %reservation.allocation_id, "allocation reserved by admin API");
    let location = format!("/v1/allocations/{}", reservation.allocation_id);
    let mut response = (StatusCode::CREATED, Json(reservation)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Body of `POST /v1/allocations/{id}/elect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElectRequest {
    /// The member to host next.
    peer: u16,
    /// Whether the relay tells the member (`Promote`); false when the lobby hands it the
    /// ticket itself.
    #[serde(default = "yes")]
    notify: bool,
}

fn yes() -> bool {
    true
}

/// A lobby overrides the relay's choice of a migrating allocation's next host.
async fn elect_host(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let body = body?;
    let request: ElectRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let promotion = state
        .handle
        .elect_host(id, baton_protocol::PeerId(request.peer), request.notify)
        .await?;
    info!(alloc = %id, peer = request.peer, "next host elected by admin API");
    Ok(Json(serde_json::json!({
        "elected": request.peer,
        "allocation_id": promotion.allocation.to_string(),
        "ticket": hex::encode(promotion.ticket),
        "deadline_ms": u64::try_from(promotion.deadline.as_millis()).unwrap_or(u64::MAX),
    }))
    .into_response())
}

async fn revoke_code(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let code = state.handle.revoke_code(id).await?;
    info!(alloc = %id, "join code revoked by admin API");
    Ok(Json(serde_json::json!({ "revoked": code.to_string() })).into_response())
}

async fn close_allocation(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.handle.close_allocation(id).await?;
    info!(alloc = %id, "allocation closed by admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/events`.
#[derive(Debug, Default, Deserialize)]
struct EventsQuery {
    /// Resume after this id, like the `Last-Event-ID` header (which wins when both are given:
    /// browsers' `EventSource` sends the header on reconnect but keeps the original URL).
    last_event_id: Option<String>,
}

fn parse_event_id(raw: &str) -> Result<Option<u64>, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "last event id must be a decimal event id, got {raw:?}"
        ))
    })
}

/// `GET /v1/events`: the lifecycle event stream. The subscription is taken before the answer's
/// headers are sent, so every event published after a client sees them reaches it.
async fn events(
    State(state): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let last = match headers.get("last-event-id") {
        Some(value) => parse_event_id(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?,
        )?,
        None => match &query.last_event_id {
            Some(raw) => parse_event_id(raw)?,
            None => None,
        },
    };
    let subscription = state.hooks.subscribe(last);
    let stream = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let item = subscription.next().await?;
        Some((Ok::<_, Infallible>(sse_event(&item)), subscription))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(hooks::STREAM_KEEPALIVE))
        .into_response();
    // Reverse proxies (nginx) must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn sse_event(item: &StreamItem) -> sse::Event {
    match item {
        StreamItem::Event(published) => sse::Event::default()
            .id(published.id().to_string())
            .event(published.event().kind.name())
            // Compact JSON has no raw newlines or carriage returns.
            .data(String::from_utf8_lossy(published.json())),
        StreamItem::Gap(gap) => sse::Event::default()
            .event(hooks::Gap::NAME)
            .data(gap.json()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use reqwest::Method;
    use serde_json::Value;
    use tokio::sync::mpsc;

    use super::*;
    use crate::control::ControlPlane;
    use crate::handle::AdminCall;
    use crate::metrics::Metrics;
    use crate::RelayConfig;

    /// A control task like the relay's, minus connections: it runs admin calls and discards
    /// the outputs. Dropping the returned task handle does not stop it; aborting it does.
    fn control_task(config: RelayConfig) -> (RelayHandle, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<AdminCall>(16);
        let task = tokio::spawn(async move {
            let mut cp = ControlPlane::new(&config, 1, Instant::now());
            while let Some(call) = rx.recv().await {
                call(&mut cp, Instant::now());
                while cp.poll_output().is_some() {}
            }
        });
        let handle = RelayHandle {
            admin: tx,
            metrics: Arc::new(Metrics::new()),
        };
        (handle, task)
    }

    struct Admin {
        base: String,
        http: reqwest::Client,
        shutdown: CancellationToken,
        server: JoinHandle<()>,
        control: JoinHandle<()>,
        hooks: HookSender,
        metrics: Arc<Metrics>,
    }

    async fn start(config: RelayConfig, token: Option<&str>) -> Admin {
        let hooks_config = config.hooks.clone();
        let (handle, control) = control_task(config);
        let metrics = handle.metrics.clone();
        let shutdown = CancellationToken::new();
        let hooks = crate::hooks::spawn(
            &hooks_config,
            handle.metrics.clone(),
            shutdown.clone(),
            &tokio_util::task::TaskTracker::new(),
        );
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (addr, server) = spawn(
            listen,
            handle,
            token.map(str::to_owned),
            hooks.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert_ne!(addr.port(), 0);
        Admin {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            shutdown,
            server,
            control,
            hooks,
            metrics,
        }
    }

    impl Admin {
        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        async fn json(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
            let response = self
                .http
                .request(method, self.url(path))
                .send()
                .await
                .unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let body = response.text().await.unwrap();
            let value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
            };
            (status, value)
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.server)
                .await
                .expect("admin server stops on cancel")
                .unwrap();
            self.control.abort();
        }
    }

    #[tokio::test]
    async fn probes_and_metrics() {
        let admin = start(RelayConfig::default(), Some("secret")).await;

        let r = admin.http.get(admin.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");

        let r = admin.http.get(admin.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), "ready");

        // Probes and metrics stay open even with a token configured.
        let r = admin.http.get(admin.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let content_type = r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let text = r.text().await.unwrap();
        assert!(text.contains("baton_connections"), "{text}");

        let (status, body) = admin.json(Method::GET, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "not_found");

        admin.stop().await;
    }

    #[tokio::test]
    async fn election_override_needs_a_migrating_allocation() {
        let admin = start(RelayConfig::default(), None).await;
        let reservation: Value = admin
            .http
            .post(admin.url("/v1/allocations"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = reservation["allocation_id"].as_str().unwrap();
        let elect = |body: Value| {
            admin
                .http
                .post(admin.url(&format!("/v1/allocations/{id}/elect")))
                .json(&body)
                .send()
        };
        let r = elect(serde_json::json!({ "peer": 1 })).await.unwrap();
        assert_eq!(r.status().as_u16(), 409);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "not_migrating");
        let r = elect(serde_json::json!({ "who": 1 })).await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let r = admin
            .http
            .post(admin.url("/v1/allocations/00000000000000ff/elect"))
            .json(&serde_json::json!({ "peer": 1 }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
    }

    #[tokio::test]
    async fn allocation_lifecycle() {
        let admin = start(RelayConfig::default(), None).await;

        let (status, body) = admin.json(Method::GET, "/v1/allocations").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["allocations"].as_array().unwrap().len(), 0);

        let r = admin
            .http
            .post(admin.url("/v1/allocations"))
            .json(&serde_json::json!({ "max_peers": 4 }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let location = r.headers()[reqwest::header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        let reservation: Value = r.json().await.unwrap();
        let id = reservation["allocation_id"].as_str().unwrap().to_owned();
        let code = reservation["join_code"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 16);
        assert_eq!(location, format!("/v1/allocations/{id}"));
        assert_eq!(reservation["host_token"].as_str().unwrap().len(), 32);
        assert_eq!(reservation["host_bind_secs"], 60);

        let (status, body) = admin.json(Method::GET, "/v1/allocations").await;
        assert_eq!(status, StatusCode::OK);
        let list = body["allocations"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["id"], id.as_str());
        assert_eq!(list[0]["host_bound"], false);
        assert_eq!(list[0]["max_peers"], 4);

        let path = format!("/v1/allocations/{id}");
        let (status, body) = admin.json(Method::GET, &path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["join_code"], code.as_str());
        assert_eq!(body["code_state"], "active");

        let (status, body) = admin
            .json(Method::POST, &format!("{path}/revoke-code"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["revoked"], code.as_str());
        let (_, body) = admin.json(Method::GET, &path).await;
        assert_eq!(body["code_state"], "revoked");
        assert_eq!(body["code_expires_in_secs"], 0);

        let (status, body) = admin.json(Method::DELETE, &path).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(body, Value::Null);

        for (method, p) in [
            (Method::GET, path.clone()),
            (Method::DELETE, path.clone()),
            (Method::POST, format!("{path}/revoke-code")),
        ] {
            let (status, body) = admin.json(method.clone(), &p).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {p}");
            assert_eq!(body["code"], "not_found");
            assert!(body["error"].as_str().unwrap().contains(&id), "{body}");
        }

        admin.stop().await;
    }

    #[tokio::test]
    async fn bad_requests_are_refused_with_json() {
        let admin = start(RelayConfig::default(), None).await;

        for bad in [
            "xyz",
            "0123456789abcdeg",
            "0123456789abcdef0",
            "+123456789abcdef",
        ] {
            let (status, body) = admin
                .json(Method::GET, &format!("/v1/allocations/{bad}"))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body["code"], "invalid_request");
        }

        let post = |body: Vec<u8>| {
            admin
                .http
                .post(admin.url("/v1/allocations"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
        };
        for bad in [
            &b"{"[..],
            b"{\"max_peers\": 1}",
            b"{\"max_peers\": 4, \"extra\": 1}",
        ] {
            let r = post(bad.to_vec()).await.unwrap();
            assert_eq!(r.status().as_u16(), 400, "{}", String::from_utf8_lossy(bad));
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "invalid_request");
        }
        let r = post(vec![b' '; MAX_BODY + 1]).await.unwrap();
        assert_eq!(r.status().as_u16(), 413);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "payload_too_large");

        // No body at all reserves with the relay's defaults.
        let r = admin
            .http
            .post(admin.url("/v1/allocations"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);

        admin.stop().await;
    }

    #[tokio::test]
    async fn full_relay_and_stopped_control_plane_answer_503() {
        let mut config = RelayConfig::default();
        config.set_max_allocations(1).unwrap();
        let admin = start(config, None).await;

        let (status, _) = admin.json(Method::POST, "/v1/allocations").await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = admin.json(Method::POST, "/v1/allocations").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "relay_full");

        let (readyz, healthz, list) = (
            admin.url("/readyz"),
            admin.url("/healthz"),
            admin.url("/v1/allocations"),
        );
        let control = admin.control;
        control.abort();
        assert!(control.await.unwrap_err().is_cancelled());
        let r = admin.http.get(readyz).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        let r = admin.http.get(healthz).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = admin.http.get(list).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "stopped");

        admin.shutdown.cancel();
        admin.server.await.unwrap();
    }

    #[tokio::test]
    async fn token_guards_the_api() {
        let admin = start(RelayConfig::default(), Some("s3cret-token")).await;
        let url = admin.url("/v1/allocations");

        let r = admin.http.get(&url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(r.headers()[reqwest::header::WWW_AUTHENTICATE], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");

        for wrong in [
            "Bearer nope",
            "Bearer s3cret-toke",
            "Basic s3cret-token",
            "s3cret-token",
        ] {
            let r = admin
                .http
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, wrong)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 401, "{wrong}");
        }
        // A rejected mutation must not have happened.
        let r = admin
            .http
            .post(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);

        let r = admin
            .http
            .get(&url)
            .bearer_auth("s3cret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["allocations"].as_array().unwrap().len(), 0);

        admin.stop().await;
    }

    /// Bound on waits for something that should happen within milliseconds.
    const WAIT: Duration = Duration::from_secs(10);

    /// One parsed SSE event.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct SseEvent {
        id: Option<String>,
        event: Option<String>,
        data: String,
    }

    impl SseEvent {
        fn lobby_event(&self) -> crate::hooks::LobbyEvent {
            serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
        }

        fn id(&self) -> u64 {
            self.id
                .as_deref()
                .expect("event has an id")
                .parse()
                .unwrap()
        }
    }

    /// A minimal SSE client over a streaming reqwest response.
    struct EventStream {
        response: reqwest::Response,
        buf: String,
    }

    impl EventStream {
        async fn open(admin: &Admin, query: &str, headers: &[(&str, &str)]) -> EventStream {
            let mut request = admin.http.get(admin.url(&format!("/v1/events{query}")));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            assert_eq!(
                response.headers()[reqwest::header::CONTENT_TYPE],
                "text/event-stream"
            );
            EventStream {
                response,
                buf: String::new(),
            }
        }

        /// The next event (comments skipped), or `None` when the stream ends.
        async fn next(&mut self) -> Option<SseEvent> {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut event = SseEvent {
                        id: None,
                        event: None,
                        data: String::new(),
                    };
                    let mut any = false;
                    for line in block.lines() {
                        let Some((field, value)) = line.split_once(':') else {
                            continue;
                        };
                        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                        match field {
                            "" => {} // a comment: keep-alive
                            "id" => event.id = Some(value),
                            "event" => event.event = Some(value),
                            "data" => event.data.push_str(&value),
                            other => panic!("unexpected SSE field {other:?}"),
                        }
                        any |= !field.is_empty();
                    }
                    if any {
                        return Some(event);
                    }
                    continue;
                }
                let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                    .await
                    .expect("an SSE event in time")
                    .unwrap()?;
                self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        }

        async fn expect_event(&mut self) -> SseEvent {
            self.next().await.expect("the stream is open")
        }

        /// Asserts nothing arrives for a little while.
        async fn expect_quiet(&mut self) {
            let next = tokio::time::timeout(Duration::from_millis(150), self.next()).await;
            assert!(next.is_err(), "unexpected {next:?}");
        }
    }

    fn publish(admin: &Admin, peer: u16) -> u64 {
        admin.hooks.publish(
            crate::hooks::LobbyEventKind::peer_joined(baton_protocol::PeerId(peer)),
            AllocationId(0xab),
            "BCDF78".parse().unwrap(),
        )
    }

    #[tokio::test]
    async fn event_stream_delivers_live_events_and_resumes() {
        let admin = start(RelayConfig::default(), None).await;

        let mut stream = EventStream::open(&admin, "", &[]).await;
        let ids: Vec<u64> = (1..=3).map(|p| publish(&admin, p)).collect();
        for (i, id) in ids.iter().enumerate() {
            let event = stream.expect_event().await;
            assert_eq!(event.id(), *id);
            assert_eq!(event.event.as_deref(), Some("peer.joined"));
            let lobby = event.lobby_event();
            assert_eq!(lobby.id, *id);
            assert_eq!(lobby.allocation, "00000000000000ab");
            assert_eq!(lobby.join_code, "BCDF78");
            assert_eq!(
                lobby.kind,
                crate::hooks::LobbyEventKind::PeerJoined { peer: i as u16 + 1 }
            );
        }
        stream.expect_quiet().await;
        drop(stream);

        // Missed while disconnected; a reconnect with Last-Event-ID gets exactly those.
        let missed: Vec<u64> = (4..=5).map(|p| publish(&admin, p)).collect();
        let last = ids[2].to_string();
        let mut stream = EventStream::open(&admin, "", &[("last-event-id", &last)]).await;
        assert_eq!(stream.expect_event().await.id(), missed[0]);
        assert_eq!(stream.expect_event().await.id(), missed[1]);
        stream.expect_quiet().await;
        let live = publish(&admin, 6);
        assert_eq!(stream.expect_event().await.id(), live);

        // The query parameter works too; the header wins over it (EventSource reconnects).
        let mut by_query =
            EventStream::open(&admin, &format!("?last_event_id={}", missed[1]), &[]).await;
        assert_eq!(by_query.expect_event().await.id(), live);
        let header = missed[0].to_string();
        let mut both = EventStream::open(
            &admin,
            &format!("?last_event_id={}", ids[0]),
            &[("last-event-id", &header)],
        )
        .await;
        assert_eq!(both.expect_event().await.id(), missed[1]);

        for bad in ["?last_event_id=abc", "?last_event_id=-1"] {
            let (status, body) = admin.json(Method::GET, &format!("/v1/events{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body["code"], "invalid_request");
        }
        let r = admin
            .http
            .get(admin.url("/v1/events"))
            .header("last-event-id", "12x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);

        let metrics = admin.hooks_metrics();
        assert!(
            metrics.contains("baton_hook_stream_subscribers 3"),
            "{metrics}"
        );

        // Shutdown ends open streams (after the flush window), so the server stops.
        let shutdown = admin.shutdown.clone();
        let stopping = tokio::spawn(admin.stop());
        shutdown.cancelled().await;
        assert_eq!(
            tokio::time::timeout(WAIT, stream.next()).await.unwrap(),
            None
        );
        tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    }

    impl Admin {
        fn hooks_metrics(&self) -> String {
            let text = self.metrics.encode();
            text.lines()
                .filter(|l| l.starts_with("baton_hook"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    #[tokio::test]
    async fn event_stream_signals_a_gap_past_the_replay_buffer() {
        let mut config = RelayConfig::default();
        config.hooks.set_replay(2).unwrap();
        let admin = start(config, None).await;
        let ids: Vec<u64> = (1..=5).map(|p| publish(&admin, p)).collect();

        let first = ids[0].to_string();
        let mut stream = EventStream::open(&admin, "", &[("last-event-id", &first)]).await;
        let gap = stream.expect_event().await;
        assert_eq!(
            gap.id, None,
            "a gap must not move the client's last event id"
        );
        assert_eq!(gap.event.as_deref(), Some("replay.gap"));
        let data: Value = serde_json::from_str(&gap.data).unwrap();
        assert_eq!(
            data,
            serde_json::json!({ "type": "replay.gap", "after": ids[0], "next": ids[3] })
        );
        assert_eq!(stream.expect_event().await.id(), ids[3]);
        assert_eq!(stream.expect_event().await.id(), ids[4]);
        stream.expect_quiet().await;
        drop(stream);
        admin.stop().await;
    }

    #[tokio::test]
    async fn event_stream_token_rules() {
        let status = |admin: &Admin, path: &str, token: Option<&str>| {
            let mut request = admin.http.get(admin.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };

        // Only the admin token: it guards the stream too.
        let admin = start(RelayConfig::default(), Some("admin-t")).await;
        assert_eq!(status(&admin, "/v1/events", None).await, 401);
        assert_eq!(status(&admin, "/v1/events", Some("wrong")).await, 401);
        assert_eq!(status(&admin, "/v1/events", Some("admin-t")).await, 200);
        admin.stop().await;

        // A stream token: the stream takes it (and only it), the API does not.
        let mut config = RelayConfig::default();
        config
            .hooks
            .set_stream_token(Some("stream-t".into()))
            .unwrap();
        let admin = start(config, Some("admin-t")).await;
        assert_eq!(status(&admin, "/v1/events", None).await, 401);
        assert_eq!(status(&admin, "/v1/events", Some("admin-t")).await, 401);
        assert_eq!(status(&admin, "/v1/events", Some("stream-t")).await, 200);
        assert_eq!(
            status(&admin, "/v1/allocations", Some("stream-t")).await,
            401
        );
        assert_eq!(
            status(&admin, "/v1/allocations", Some("admin-t")).await,
            200
        );
        let r = admin
            .http
            .get(admin.url("/v1/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()[reqwest::header::WWW_AUTHENTICATE], "Bearer");
        admin.stop().await;

        // A stream token without an admin token: the stream is guarded, the API open.
        let mut config = RelayConfig::default();
        config
            .hooks
            .set_stream_token(Some("stream-t".into()))
            .unwrap();
        let admin = start(config, None).await;
        assert_eq!(status(&admin, "/v1/events", None).await, 401);
        assert_eq!(status(&admin, "/v1/events", Some("stream-t")).await, 200);
        assert_eq!(status(&admin, "/v1/allocations", None).await, 200);
        admin.stop().await;
    }
}
