//! Placing a reservation in a fleet: `POST /v1/allocations` on any node reserves on the node the
//! request names, on the least-loaded active node of the region it names, or on the
//! least-loaded active node of the fleet; on this node directly, on another by forwarding the
//! request to that node's admin API (published in the directory as `admin_addr`).
//!
//! - [`rank`] is the choice, a pure function of the directory's nodes. Load is compared as
//!   allocations, then connections, then CPU in whole percent (finer differences are sampling
//!   noise), then node id: ties go to the smaller id, so the choice is deterministic. Draining
//!   nodes, and nodes other than this one that publish no admin address, are never chosen.
//!   Loads are the nodes' last heartbeats (at most a second old), so a burst of reservations
//!   within one heartbeat goes to the same node.
//! - [`Placement::reserve`] carries it out. A forwarded request names its target node and
//!   carries [`FORWARDED_BY`]; a node serves such a request itself or refuses it, so a request
//!   is forwarded at most once. Forwarding uses this node's admin token: every node of a fleet
//!   must have the same one. Each forward takes at most [`FORWARD_TIMEOUT`], connecting
//!   included, and its answer at most [`MAX_FORWARD_ANSWER`] bytes.
//! - Unless the request names a node, a node that cannot take the reservation before it is
//!   sent anything (its admin API refuses the connection) or that refuses it as draining,
//!   shutting down or full, is passed over for the next in load order, up to
//!   [`MAX_ATTEMPTS`] nodes. A forward that times out after the request was sent is not tried
//!   elsewhere (the node may have reserved): the answer is `node_unreachable`, naming it.
//!
//! Runs on the admin server's tasks: every step is bounded (directory reads by its own
//! timeout, forwards by [`FORWARD_TIMEOUT`]), and nothing here holds control-plane state.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::ApiError;
use crate::control::{AdminError, Reservation};
use crate::directory::{NodeId, NodeInfo, NodeState, RedisDirectory};
use crate::RelayHandle;

/// How long one forwarded reservation may take, connecting included: a node's admin API
/// answers a reservation in about a millisecond; two seconds is a node in trouble, and the
/// lobby is waiting.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to another node's admin API may take (within [`FORWARD_TIMEOUT`]); a
/// node that does not accept within this is passed over.
pub const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest answer read from a forwarded reservation, in bytes: a reservation is about 300.
pub const MAX_FORWARD_ANSWER: usize = 16 * 1024;
/// Most nodes one placement tries.
pub const MAX_ATTEMPTS: usize = 3;
/// Request header marking a reservation forwarded by another node (its value: that node's
/// id). A node never forwards such a request again.
pub const FORWARDED_BY: &str = "baton-forwarded-by";
/// Longest error code and message passed on from another node's answer.
const MAX_PASSED_CODE: usize = 64;
const MAX_PASSED_MESSAGE: usize = 1024;

/// Where a reservation should go, from the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The least-loaded active node of the fleet.
    Any,
    /// This node.
    Node(NodeId),
    /// The least-loaded active node of this region.
    Region(String),
}

/// Why no node can take a reservation for a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The named node has no live record: it never joined, or its heartbeat lapsed.
    #[error("no node {0} in the fleet (it never joined, or its heartbeat lapsed)")]
    UnknownNode(NodeId),
    /// The named node is draining.
    #[error("node {0} is draining and takes no new allocations")]
    Draining(NodeId),
    /// The named node publishes no admin address, so nothing can be forwarded to it.
    #[error(
        "node {0} publishes no admin address, so reservations cannot be forwarded to it; \
         reserve through its own admin API"
    )]
    NoAdminAddress(NodeId),
    /// No active node that can be reached is in the region.
    #[error("no active node in region {0:?}")]
    NoNodeInRegion(String),
    /// No active node that can be reached is in the fleet.
    #[error("no active node in the fleet")]
    NoActiveNode,
}

impl From<PlacementError> for ApiError {
    fn from(err: PlacementError) -> Self {
        let (status, code, node) = match &err {
            PlacementError::UnknownNode(n) => (StatusCode::NOT_FOUND, "unknown_node", Some(n)),
            PlacementError::Draining(n) | PlacementError::NoAdminAddress(n) => {
                (StatusCode::CONFLICT, "node_unavailable", Some(n))
            }
            PlacementError::NoNodeInRegion(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_node_in_region", None)
            }
            PlacementError::NoActiveNode => {
                (StatusCode::SERVICE_UNAVAILABLE, "no_active_node", None)
            }
        };
        let api = ApiError::new(status, code, err.to_string());
        match node {
            Some(n) => api.with_node(n.as_str()),
            None => api,
        }
    }
}

/// The nodes that may take a reservation for `target`, best first: for a named node, that node
/// alone; otherwise every active node (of the region, if one is named) that can be reached,
/// by load. `me` is this node, which needs no admin address (its reservations are not
/// forwarded).
pub fn rank<'a>(
    nodes: &'a [NodeInfo],
    me: &NodeId,
    target: &Target,
) -> Result<Vec<&'a NodeInfo>, PlacementError> {
    let reachable = |n: &NodeInfo| &n.id == me || n.admin_addr.is_some();
    if let Target::Node(id) = target {
        let node = nodes
            .iter()
            .find(|n| &n.id == id)
            .ok_or_else(|| PlacementError::UnknownNode(id.clone()))?;
        if node.state != NodeState::Active {
            return Err(PlacementError::Draining(id.clone()));
        }
        if !reachable(node) {
            return Err(PlacementError::NoAdminAddress(id.clone()));
        }
        return Ok(vec![node]);
    }
    let mut candidates: Vec<&NodeInfo> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Active && reachable(n))
        .filter(|n| match target {
            Target::Region(region) => &n.region == region,
            _ => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(match target {
            Target::Region(region) => PlacementError::NoNodeInRegion(region.clone()),
            _ => PlacementError::NoActiveNode,
        });
    }
    candidates.sort_by(|a, b| a.cmp_load(b));
    Ok(candidates)
}

/// The admin address other nodes reach this one at: `advertise` when set; else the bound
/// admin address when it names one IP; else `public`'s IP with the bound admin port (an admin
/// server on `0.0.0.0` or `::` is reached where clients reach the node).
pub fn advertised_admin_addr(
    advertise: Option<&str>,
    bound: SocketAddr,
    public: SocketAddr,
) -> String {
    match advertise {
        Some(addr) => addr.to_owned(),
        None if !bound.ip().is_unspecified() => bound.to_string(),
        None => SocketAddr::new(public.ip(), bound.port()).to_string(),
    }
}

/// [`advertised_admin_addr`], checked as the directory will check it, with a warning when a
/// loopback admin address is published for a node clients reach elsewhere (nodes on other
/// machines could not forward to it).
pub(crate) fn advertise(
    configured: Option<&str>,
    bound: SocketAddr,
    public: SocketAddr,
) -> Result<String, String> {
    let advertised = advertised_admin_addr(configured, bound, public);
    crate::directory::check_admin_addr(&advertised)
        .map_err(|e| format!("admin address {advertised}: {e}"))?;
    if configured.is_none() && bound.ip().is_loopback() && !public.ip().is_loopback() {
        tracing::warn!(
            admin = %advertised,
            "the admin API listens on loopback: nodes on other machines cannot forward \
             reservations here (set --admin-listen, and --admin-advertise if need be)"
        );
    }
    Ok(advertised)
}

/// `POST /v1/allocations`'s answer: the reservation and, on a fleet node, where it was made.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Placed {
    #[serde(flatten)]
    pub(super) reservation: Reservation,
    /// The node holding the reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) node: Option<String>,
    /// That node's QUIC address: where the host connects to claim it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) address: Option<SocketAddr>,
    /// The name that node's certificate is valid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) server_name: Option<String>,
}

/// 201 with `placed` and a `Location` header.
pub(super) fn created(placed: &Placed, location: &str) -> Response {
    let mut response = (StatusCode::CREATED, Json(placed)).into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The body of a forwarded reservation.
#[derive(Serialize)]
struct Forwarded<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_peers: Option<u16>,
    node: &'a str,
}

/// An error answer as every Baton node writes it.
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    code: String,
}

/// What became of one node's try.
enum Tried {
    /// It failed in a way another node may not: try the next (unless a node was named).
    Next(ApiError),
    /// The answer, whatever the other nodes could do.
    Final(ApiError),
}

/// A fleet node's placement: the directory to read nodes from, this node's own place, and the
/// HTTP client forwards go through.
pub(crate) struct Placement {
    directory: RedisDirectory,
    me: NodeId,
    /// This node's public QUIC address and certificate name, answered with its reservations.
    address: SocketAddr,
    server_name: String,
    /// The admin token, sent with forwards (every node of a fleet has the same).
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("me", &self.me)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Placement {
    /// This node's placement: `me` at `address` (QUIC) with certificate name `server_name`,
    /// forwarding with `token`.
    pub(crate) fn new(
        directory: RedisDirectory,
        me: NodeId,
        address: SocketAddr,
        server_name: String,
        token: Option<String>,
    ) -> Result<Placement, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .connect_timeout(FORWARD_CONNECT_TIMEOUT)
            // Fleet traffic goes straight to the node: never through a proxy from the
            // environment, never followed elsewhere.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("baton-relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Placement {
            directory,
            me,
            address,
            server_name,
            token,
            http,
        })
    }

    /// Reserves for `target` (see the module doc). `forwarded_by` is the
    /// [`FORWARDED_BY`] header of a request another node forwarded: it must name this node.
    pub(super) async fn reserve(
        &self,
        handle: &RelayHandle,
        target: Target,
        max_peers: Option<u16>,
        forwarded_by: Option<&str>,
    ) -> Result<Response, ApiError> {
        if target == Target::Node(self.me.clone()) {
            return match self.reserve_here(handle, max_peers, true).await {
                Ok(response) => Ok(response),
                Err(Tried::Next(e) | Tried::Final(e)) => Err(e),
            };
        }
        if let Some(from) = forwarded_by {
            return Err(ApiError::bad_request(format!(
                "a reservation forwarded by {from:?} must name this node ({}); it is never \
                 forwarded again",
                self.me
            )));
        }
        let nodes = self
            .directory
            .nodes()
            .await
            .map_err(|_| AdminError::DirectoryUnavailable)?;
        let named = matches!(target, Target::Node(_));
        let mut last = None;
        for node in rank(&nodes, &self.me, &target)?
            .into_iter()
            .take(MAX_ATTEMPTS)
        {
            let tried = if node.id == self.me {
                self.reserve_here(handle, max_peers, named).await
            } else {
                self.forward(node, max_peers).await
            };
            match tried {
                Ok(response) => return Ok(response),
                Err(Tried::Next(e)) if !named => {
                    debug!(node = %node.id, cause = %e.message(), "placement passes a node over");
                    last = Some(e);
                }
                Err(Tried::Next(e) | Tried::Final(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| PlacementError::NoActiveNode.into()))
    }

    /// Reserves on this node. `named`: the request named it, so refusing as draining says so.
    async fn reserve_here(
        &self,
        handle: &RelayHandle,
        max_peers: Option<u16>,
        named: bool,
    ) -> Result<Response, Tried> {
        match handle.reserve_allocation(max_peers).await {
            Ok(reservation) => {
                info!(alloc = %reservation.allocation_id, "allocation reserved by admin API");
                let location = format!("/v1/allocations/{}", reservation.allocation_id);
                let placed = Placed {
                    reservation,
                    node: Some(self.me.to_string()),
                    address: Some(self.address),
                    server_name: Some(self.server_name.clone()),
                };
                Ok(created(&placed, &location))
            }
            Err(AdminError::ShuttingDown) if named => Err(Tried::Final(
                PlacementError::Draining(self.me.clone()).into(),
            )),
            Err(e @ (AdminError::ShuttingDown | AdminError::RelayFull(_))) => {
                Err(Tried::Next(ApiError::from(e).with_node(self.me.as_str())))
            }
            Err(e) => Err(Tried::Final(e.into())),
        }
    }

    /// Forwards the reservation to `node`'s admin API, naming it, and answers with its answer.
    async fn forward(&self, node: &NodeInfo, max_peers: Option<u16>) -> Result<Response, Tried> {
        let Some(admin) = node.admin_addr.as_deref() else {
            return Err(Tried::Final(
                PlacementError::NoAdminAddress(node.id.clone()).into(),
            ));
        };
        let unreachable = |detail: String| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_unreachable",
                format!("node {} (admin API {admin}): {detail}", node.id),
            )
            .with_node(node.id.as_str())
        };
        let mut request = self
            .http
            .post(format!("http://{admin}/v1/allocations"))
            .header(FORWARDED_BY, self.me.as_str())
            .json(&Forwarded {
                max_peers,
                node: node.id.as_str(),
            });
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            // Nothing reached the node: another may take the reservation.
            Err(e) if e.is_connect() => return Err(Tried::Next(unreachable(error_chain(&e)))),
            Err(e) => return Err(Tried::Final(unreachable(error_chain(&e)))),
        };
        let status = response.status();
        let body = read_bounded(&mut response)
            .await
            .map_err(|detail| Tried::Final(unreachable(detail)))?;
        if status == reqwest::StatusCode::CREATED {
            let placed: Placed = serde_json::from_slice(&body)
                .map_err(|e| Tried::Final(unreachable(format!("its answer: {e}"))))?;
            if placed.node.as_deref() != Some(node.id.as_str()) {
                return Err(Tried::Final(unreachable(format!(
                    "it answered for node {:?}",
                    placed.node
                ))));
            }
            super::allocations::parse_id(&placed.reservation.allocation_id)
                .map_err(|_| Tried::Final(unreachable("a malformed allocation id".into())))?;
            info!(
                alloc = %placed.reservation.allocation_id,
                node = %node.id,
                "allocation reserved on another node by admin API"
            );
            let location = format!(
                "http://{admin}/v1/allocations/{}",
                placed.reservation.allocation_id
            );
            return Ok(created(&placed, &location));
        }
        if matches!(
            status,
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
        ) {
            return Err(Tried::Final(
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "forward_unauthorized",
                    format!(
                        "node {} refused this node's admin token: every node of a fleet needs \
                         the same admin token",
                        node.id
                    ),
                )
                .with_node(node.id.as_str()),
            ));
        }
        // The node's own refusal, passed on: it is what the lobby would have got there.
        let answer = serde_json::from_slice::<ErrorAnswer>(&body)
            .ok()
            .filter(|a| {
                a.code.len() <= MAX_PASSED_CODE
                    && a.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    && a.error.len() <= MAX_PASSED_MESSAGE
            });
        let (Some(answer), Ok(status)) = (answer, StatusCode::from_u16(status.as_u16())) else {
            return Err(Tried::Final(unreachable(format!(
                "it answered {status} without a Baton error"
            ))));
        };
        let next = matches!(
            answer.code.as_str(),
            "shutting_down" | "relay_full" | "node_unavailable"
        );
        // Named once: a node's placement refusals already name it.
        let message = if answer.error.starts_with(&format!("node {} ", node.id)) {
            answer.error
        } else {
            format!("node {}: {}", node.id, answer.error)
        };
        let passed = ApiError::new(status, answer.code, message).with_node(node.id.as_str());
        Err(if next {
            Tried::Next(passed)
        } else {
            Tried::Final(passed)
        })
    }
}

/// Reads a forwarded answer's body, at most [`MAX_FORWARD_ANSWER`] bytes.
async fn read_bounded(response: &mut reqwest::Response) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_FORWARD_ANSWER as u64)
    {
        return Err(format!("an answer over {MAX_FORWARD_ANSWER} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_FORWARD_ANSWER {
            return Err(format!("an answer over {MAX_FORWARD_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes, `a: b: c` (reqwest's own message alone says little).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    /// Node `name` in `region` with `allocations` and `connections`, active, with an admin
    /// address.
    fn node(name: &str, region: &str, allocations: u64, connections: u64) -> NodeInfo {
        NodeInfo {
            id: id(name),
            addr: "127.0.0.1:7700".parse().unwrap(),
            server_name: "localhost".into(),
            region: region.into(),
            state: NodeState::Active,
            allocations,
            connections,
            cpu_pct: 0.0,
            admin_addr: Some(format!("{name}:7701")),
        }
    }

    fn ids(ranked: &[&NodeInfo]) -> Vec<String> {
        ranked.iter().map(|n| n.id.to_string()).collect()
    }

    #[test]
    fn the_least_loaded_active_node_comes_first() {
        let nodes = [
            node("a", "eu", 3, 0),
            node("b", "eu", 1, 50),
            node("c", "us", 0, 90),
        ];
        let ranked = rank(&nodes, &id("a"), &Target::Any).unwrap();
        assert_eq!(ids(&ranked), ["c", "b", "a"]);
    }

    #[test]
    fn load_is_allocations_then_connections_then_whole_cpu_percent_then_id() {
        let mut nodes = [
            node("d", "eu", 2, 5),
            node("c", "eu", 2, 5),
            node("b", "eu", 2, 4),
            node("a", "eu", 2, 5),
        ];
        nodes[0].cpu_pct = 10.2;
        nodes[1].cpu_pct = 10.9;
        nodes[3].cpu_pct = 11.0;
        // b has the fewest connections; c and d are in the same whole percent, so the id
        // decides; a is a percent busier.
        let ranked = rank(&nodes, &id("a"), &Target::Any).unwrap();
        assert_eq!(ids(&ranked), ["b", "c", "d", "a"]);
        // Allocations come before everything else.
        nodes[3].allocations = 1;
        let ranked = rank(&nodes, &id("a"), &Target::Any).unwrap();
        assert_eq!(ids(&ranked)[0], "a");
    }

    #[test]
    fn draining_nodes_and_nodes_without_an_admin_address_get_nothing() {
        let mut nodes = [
            node("a", "eu", 5, 0),
            node("b", "eu", 0, 0),
            node("c", "eu", 1, 0),
        ];
        nodes[1].state = NodeState::Draining;
        nodes[2].admin_addr = None;
        // From a: b drains, c cannot be forwarded to.
        assert_eq!(ids(&rank(&nodes, &id("a"), &Target::Any).unwrap()), ["a"]);
        // From c: c needs no admin address to reserve on itself.
        assert_eq!(
            ids(&rank(&nodes, &id("c"), &Target::Any).unwrap()),
            ["c", "a"]
        );
        nodes[0].state = NodeState::Draining;
        assert_eq!(
            rank(&nodes, &id("a"), &Target::Any).unwrap_err(),
            PlacementError::NoActiveNode
        );
        assert_eq!(
            rank(&[], &id("a"), &Target::Any).unwrap_err(),
            PlacementError::NoActiveNode
        );
    }

    #[test]
    fn a_named_node_is_taken_if_it_can_be() {
        let mut nodes = [
            node("a", "eu", 0, 0),
            node("b", "eu", 9, 9),
            node("c", "eu", 0, 0),
        ];
        // The busiest node, because it is named.
        assert_eq!(
            ids(&rank(&nodes, &id("a"), &Target::Node(id("b"))).unwrap()),
            ["b"]
        );
        assert_eq!(
            rank(&nodes, &id("a"), &Target::Node(id("x"))).unwrap_err(),
            PlacementError::UnknownNode(id("x"))
        );
        nodes[1].state = NodeState::Draining;
        assert_eq!(
            rank(&nodes, &id("a"), &Target::Node(id("b"))).unwrap_err(),
            PlacementError::Draining(id("b"))
        );
        nodes[2].admin_addr = None;
        assert_eq!(
            rank(&nodes, &id("a"), &Target::Node(id("c"))).unwrap_err(),
            PlacementError::NoAdminAddress(id("c"))
        );
        assert_eq!(
            ids(&rank(&nodes, &id("c"), &Target::Node(id("c"))).unwrap()),
            ["c"]
        );
    }

    #[test]
    fn a_region_is_served_by_its_own_nodes() {
        let mut nodes = [
            node("a", "eu", 4, 0),
            node("b", "eu", 2, 0),
            node("c", "us", 0, 0),
        ];
        let eu = Target::Region("eu".into());
        assert_eq!(ids(&rank(&nodes, &id("c"), &eu).unwrap()), ["b", "a"]);
        assert_eq!(
            ids(&rank(&nodes, &id("a"), &Target::Region("us".into())).unwrap()),
            ["c"]
        );
        assert_eq!(
            rank(&nodes, &id("a"), &Target::Region("ap".into())).unwrap_err(),
            PlacementError::NoNodeInRegion("ap".into())
        );
        // A region whose only node drains has no node to offer.
        nodes[2].state = NodeState::Draining;
        assert_eq!(
            rank(&nodes, &id("a"), &Target::Region("us".into())).unwrap_err(),
            PlacementError::NoNodeInRegion("us".into())
        );
    }

    #[test]
    fn placement_errors_become_typed_answers() {
        let answer = |e: PlacementError| {
            let api = ApiError::from(e);
            let response = api.into_response();
            response.status().as_u16()
        };
        assert_eq!(answer(PlacementError::UnknownNode(id("x"))), 404);
        assert_eq!(answer(PlacementError::Draining(id("x"))), 409);
        assert_eq!(answer(PlacementError::NoAdminAddress(id("x"))), 409);
        assert_eq!(answer(PlacementError::NoNodeInRegion("r".into())), 503);
        assert_eq!(answer(PlacementError::NoActiveNode), 503);
    }

    #[test]
    fn the_advertised_admin_address() {
        let public: SocketAddr = "203.0.113.7:7700".parse().unwrap();
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        // Set: as it is.
        assert_eq!(
            advertised_admin_addr(Some("relay-1:7701"), sa("0.0.0.0:7701"), public),
            "relay-1:7701"
        );
        // One address: the bound one, with the port the kernel gave.
        assert_eq!(
            advertised_admin_addr(None, sa("10.0.0.4:41234"), public),
            "10.0.0.4:41234"
        );
        // A wildcard: the public IP, the admin port.
        assert_eq!(
            advertised_admin_addr(None, sa("0.0.0.0:7701"), public),
            "203.0.113.7:7701"
        );
        assert_eq!(
            advertised_admin_addr(None, sa("[::]:7701"), sa("[2001:db8::7]:7700")),
            "[2001:db8::7]:7701"
        );
        // What would not parse back from the directory is refused before it is published.
        assert!(advertise(Some("relay-1"), sa("0.0.0.0:7701"), public).is_err());
        assert_eq!(
            advertise(None, sa("127.0.0.1:7701"), public).as_deref(),
            Ok("127.0.0.1:7701")
        );
    }
}
