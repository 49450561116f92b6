//! The `/v1/allocations` routes: list, show, reserve, revoke a join code, elect the next host,
//! close; their JSON bodies, and allocation ids as the API prints them (16 hex digits).
//! On a fleet node a reservation is placed on a node of the fleet (`placement`).
//!
//! Handlers on the admin server's tasks; each asks the control task through
//! [`RelayHandle`](crate::RelayHandle) and maps its `AdminError` through `ApiError`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_protocol::AllocationId;
use serde::Deserialize;
use tracing::info;

use super::placement::{created, Placed, Target, FORWARDED_BY};
use super::{AdminState, ApiError};
use crate::control::AdminError;
use crate::directory::{check_region, NodeId};

/// Parses an allocation id: exactly 16 hex digits, as the API prints them.
pub(super) fn parse_id(raw: &str) -> Result<AllocationId, ApiError> {
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
    /// The fleet node to reserve on (fleet nodes only).
    node: Option<String>,
    /// The region to reserve in, on its least-loaded active node (fleet nodes only).
    region: Option<String>,
}

impl ReserveRequest {
    /// Where the request asks the reservation to go.
    fn target(&self) -> Result<Target, ApiError> {
        match (&self.node, &self.region) {
            (None, None) => Ok(Target::Any),
            (Some(node), None) => NodeId::parse(node)
                .map(Target::Node)
                .map_err(|e| ApiError::bad_request(format!("node: {e}"))),
            (None, Some(region)) => check_region(region)
                .map(|()| Target::Region(region.clone()))
                .map_err(|e| ApiError::bad_request(format!("region: {e}"))),
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "give node or region, not both (a node is in one region)",
            )),
        }
    }
}

/// `POST /v1/allocations`: a relay standing alone reserves itself; a fleet node places the
/// reservation (see `placement`).
pub(super) async fn reserve_allocation(
    State(state): State<AdminState>,
    headers: HeaderMap,
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
    let target = request.target()?;
    let Some(placement) = &state.placement else {
        if target != Target::Any {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_a_fleet_node",
                "this relay stands alone (no directory): node and region place reservations \
                 on the nodes of a fleet",
            ));
        }
        let reservation = state.handle.reserve_allocation(request.max_peers).await?;
        info!(alloc = %reservation.allocation_id, "allocation reserved by admin API");
        let location = format!("/v1/allocations/{}", reservation.allocation_id);
        let placed = Placed {
            reservation,
            node: None,
            address: None,
            server_name: None,
        };
        return Ok(created(&placed, &location));
    };
    let forwarded_by = match headers.get(FORWARDED_BY) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("{FORWARDED_BY} must be a node id")))?,
        ),
    };
    placement
        .reserve(&state.handle, target, request.max_peers, forwarded_by)
        .await
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
