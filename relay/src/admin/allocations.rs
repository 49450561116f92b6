//! The `/v1/allocations` routes: list, show, reserve, revoke a join code, elect the next host,
//! close; their JSON bodies, and allocation ids as the API prints them (16 hex digits).
//!
//! Handlers on the admin server's tasks; each asks the control task through
//! [`RelayHandle`](crate::RelayHandle) and maps its `AdminError` through `ApiError`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_protocol::AllocationId;
use serde::Deserialize;
use tracing::info;

use super::{AdminState, ApiError};
use crate::control::AdminError;

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

pub(super) async fn list_allocations(
    State(state): State<AdminState>,
) -> Result<Response, ApiError> {
    let allocations = state.handle.allocations().await?;
    Ok(Json(serde_json::json!({ "allocations": allocations })).into_response())
}

pub(super) async fn allocation(
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

pub(super) async fn reserve_allocation(
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
pub(super) async fn elect_host(
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

pub(super) async fn revoke_code(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let code = state.handle.revoke_code(id).await?;
    info!(alloc = %id, "join code revoked by admin API");
    Ok(Json(serde_json::json!({ "revoked": code.to_string() })).into_response())
}

pub(super) async fn close_allocation(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.handle.close_allocation(id).await?;
    info!(alloc = %id, "allocation closed by admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/drain`: a fleet node starts draining (its allocations move to other nodes; it
/// takes no new ones and exits once empty). 202 with the allocations left to move; 409
/// `not_a_fleet_node` on a relay standing alone.
pub(super) async fn drain(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let left = state.handle.drain().await?;
    info!(allocations = left, "drain started by admin API");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "draining": true, "allocations": left })),
    )
        .into_response())
}
