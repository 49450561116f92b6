//! The control plane's public vocabulary: what goes in ([`Input`]), what comes out
//! ([`Output`], [`Event`]), and what the admin calls take and return ([`Reservation`],
//! [`AllocationInfo`], [`Promotion`], [`AdminError`]). Re-exported from [`control`](super),
//! so `baton_relay::control::Input` and the rest keep their paths.
//!
//! Plain data: no state, no time, nothing runs here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::{
    AllocationId, ClientMessage, CloseCode, ErrorCode, JoinCode, LeaveReason, PathReason, PeerId,
    ServerMessage,
};
use bytes::Bytes;
use serde::Serialize;

use baton_protocol::credential::CredentialRefusal;

use crate::auth::Authorization;

/// The driver's handle for one QUIC connection.
pub type ConnId = u64;

/// Something that happened, fed to [`ControlPlane::handle`](super::ControlPlane::handle).
#[derive(Debug, Clone)]
pub enum Input {
    /// A QUIC handshake completed.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its remote address (rate limits are per IP).
        addr: SocketAddr,
    },
    /// A control message arrived from a connection.
    Request {
        /// The sender.
        conn: ConnId,
        /// The message.
        msg: ClientMessage,
        /// What the driver made of its credential (`AuthSecrets::check`); the control plane
        /// checks the scope.
        auth: Authorization,
    },
    /// A round-trip-time sample for a connection (used to elect the best-placed next host).
    Rtt {
        /// The connection.
        conn: ConnId,
        /// Its smoothed RTT to the relay.
        rtt: Duration,
    },
    /// The relay now sees the connection's client at `addr` (a NAT rebinding or a network
    /// change migrated the QUIC connection). The data plane reports a change, not every check.
    AddressChanged {
        /// The connection.
        conn: ConnId,
        /// Its new remote address.
        addr: SocketAddr,
    },
    /// A host uploaded a migration snapshot (already bounded to the size limit by the
    /// driver).
    Snapshot {
        /// The uploader.
        conn: ConnId,
        /// The snapshot's bytes.
        data: Bytes,
    },
    /// The client finished (FIN) its control stream at a frame boundary. It ends its session
    /// (the connection is closed normally), except for a member of an allocation this draining
    /// node relocated: it has moved, and its connection keeps receiving datagrams until every
    /// member has moved. The data plane keeps serving the connection until told to close it.
    Finished {
        /// The connection.
        conn: ConnId,
    },
    /// A connection ended. Reported once per connection; a connection the control plane has
    /// already let go (kicked, closed with its allocation) is ignored.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Why, as seen by the transport.
        reason: LeaveReason,
    },
    /// Fleet mode: join codes the driver claimed in the directory for this node, in answer
    /// to [`Output::ClaimCodes`] (possibly fewer than asked, even none).
    CodesClaimed {
        /// The codes won.
        codes: Vec<JoinCode>,
    },
    /// Fleet mode: whether the directory answers. While it does not, creates and lookups
    /// are refused `directory_unavailable`.
    DirectoryHealth {
        /// The directory answered its last operation.
        reachable: bool,
    },
    /// Draining: the allocation named in an [`Output::Relocate`] now belongs to another node.
    RelocationReady {
        /// The allocation.
        allocation: AllocationId,
        /// The node's public address.
        address: SocketAddr,
        /// Its TLS server name.
        server_name: String,
        /// Its node id (for the lobby event).
        node: String,
    },
    /// Draining: the allocation named in an [`Output::Relocate`] could not be handed over (no
    /// other active node, or the directory did not answer); the next sweep tries again.
    RelocationFailed {
        /// The allocation.
        allocation: AllocationId,
    },
    /// Fleet mode: the answer to an [`Output::Locate`].
    Located {
        /// The connection that asked.
        conn: ConnId,
        /// The request it answers.
        request_id: u32,
        /// Where the code or allocation is.
        location: Location,
    },
}

/// What a fleet node looks up in the directory for a `Join` or `Rejoin` it cannot serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locate {
    /// The node holding this join code.
    Code(JoinCode),
    /// The node holding this allocation.
    Allocation(AllocationId),
}

/// Where the directory says a code or allocation lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On another node, reached at this address with this TLS server name.
    Node {
        /// The node's public QUIC address.
        address: SocketAddr,
        /// The name its certificate is valid for.
        server_name: String,
    },
    /// On no live node.
    Nowhere,
    /// Its node was lost and this node won the takeover: adopt this record, then serve the
    /// request here.
    Adopt(Box<super::record::AllocationRecord>),
    /// The directory did not answer.
    Unavailable,
}

/// Something the driver must do, drained with
/// [`ControlPlane::poll_output`](super::ControlPlane::poll_output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a control message to a connection.
    Send {
        /// The recipient.
        conn: ConnId,
        /// The message.
        msg: ServerMessage,
    },
    /// Close a connection. The control plane has already forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
        /// The close code to send.
        code: CloseCode,
    },
    /// A connection became `peer` of `allocation`: point its datagram routing at that
    /// allocation's table.
    Bound {
        /// The connection.
        conn: ConnId,
        /// Its allocation.
        allocation: AllocationId,
        /// Its peer id there.
        peer: PeerId,
        /// The allocation's host-loss timeout: how long the connection may be silent while it
        /// hosts the allocation (SPEC section 11.1).
        host_loss_timeout: Duration,
    },
    /// An allocation's membership changed: its routing table is now exactly `members`. An
    /// empty list means the allocation is gone and its table can be dropped.
    Route {
        /// The allocation.
        allocation: AllocationId,
        /// Every member with its connection, sorted by peer id.
        members: Vec<(PeerId, ConnId)>,
        /// Who hosts it now; `None` while its host has not bound or it is migrating. Only the
        /// host's snapshot uploads are read.
        host: Option<PeerId>,
    },
    /// Send the allocation's latest migration snapshot to its new host (on a stream of its
    /// own, so it does not hold up datagrams or control messages).
    DeliverSnapshot {
        /// The new host.
        conn: ConnId,
        /// The snapshot.
        data: Bytes,
    },
    /// A lifecycle event, for logs, metrics and lobby hooks.
    Event(Event),
    /// Fleet mode: claim `count` fresh join codes of `len` characters in the directory for
    /// this node, and answer with [`Input::CodesClaimed`]. At most one is outstanding.
    ClaimCodes {
        /// How many codes to claim.
        count: usize,
        /// Their length.
        len: usize,
    },
    /// Draining started: mark this node `draining` in the directory, so no node sends it
    /// work.
    Draining,
    /// Draining: hand this allocation to another node (pick one, move the directory's records
    /// to it) and answer [`Input::RelocationReady`] or [`Input::RelocationFailed`].
    Relocate {
        /// The allocation's takeover record.
        record: super::record::AllocationRecord,
    },
    /// An adopted allocation's members are expected to rejoin (exactly `peers`; empty when the
    /// wait is over): until each is seated (appears in an [`Output::Route`]), the data plane
    /// holds datagrams addressed to it, within bounds, and delivers them when it arrives. Members
    /// of a moving game arrive one after the other; what the first ones send meanwhile is not
    /// lost.
    Awaiting {
        /// The allocation.
        allocation: AllocationId,
        /// The members still expected, sorted by peer id.
        peers: Vec<PeerId>,
    },
    /// Fleet mode: store this allocation's takeover record in the directory (its membership
    /// or host changed).
    Publish {
        /// The record.
        record: super::record::AllocationRecord,
    },
    /// Fleet mode: find which node holds `what`, and answer with [`Input::Located`]. At most
    /// one is outstanding per connection.
    Locate {
        /// The connection that asked.
        conn: ConnId,
        /// Its request.
        request_id: u32,
        /// What to look up.
        what: Locate,
    },
}

/// Lifecycle events. Each happens exactly once per occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An allocation was opened by a host or reserved by a lobby.
    AllocationCreated {
        /// The allocation.
        allocation: AllocationId,
        /// Its join code.
        code: JoinCode,
    },
    /// A member joined (the host binding counts, as peer 0).
    PeerJoined {
        /// The allocation.
        allocation: AllocationId,
        /// The member.
        peer: PeerId,
        /// How it came in.
        via: JoinedVia,
        /// Who it is, from its credential (`None` on an open relay).
        subject: Option<Arc<str>>,
    },
    /// A member left.
    PeerLeft {
        /// The allocation.
        allocation: AllocationId,
        /// The member.
        peer: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// The host of an allocation was lost. Emitted exactly once per loss: only
    /// `lose_host` emits it.
    HostDisconnected {
        /// The allocation.
        allocation: AllocationId,
        /// The lost host.
        host: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// A member was elected to host a migrating allocation.
    HostElected {
        /// The migrating allocation.
        allocation: AllocationId,
        /// The elected member.
        host: PeerId,
        /// Who chose it.
        by: ElectedBy,
    },
    /// A migrating allocation moved to its successor with a new host.
    AllocationMigrated {
        /// The old allocation.
        from: AllocationId,
        /// The successor.
        to: AllocationId,
        /// The new host.
        host: PeerId,
    },
    /// Fleet mode: this node took over an allocation from a lost node's record (its members
    /// rejoin next).
    AllocationAdopted {
        /// The allocation (the id it had).
        allocation: AllocationId,
        /// Its join code.
        code: JoinCode,
    },
    /// Draining: an allocation was handed to another node, and its members told to move.
    AllocationRelocated {
        /// The allocation (its id is kept on the new node).
        allocation: AllocationId,
        /// The node it moved to.
        to_node: String,
    },
    /// An allocation closed and released everything it held.
    AllocationClosed {
        /// The allocation.
        allocation: AllocationId,
        /// Why.
        reason: CloseReason,
    },
    /// A request's credential was refused (the request was also `Refused`).
    CredentialRefused {
        /// Why.
        reason: CredentialRefusal,
    },
    /// A member reported the path it uses to another member (`PathReport`).
    PathReported {
        /// The allocation.
        allocation: AllocationId,
        /// The reporting member.
        peer: PeerId,
        /// The member the path leads to.
        to: PeerId,
        /// Why the path is what it is (the outcome follows from it).
        reason: PathReason,
    },
    /// A request was refused.
    Refused {
        /// Why.
        code: ErrorCode,
    },
}

/// Who elected a migrating allocation's next host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectedBy {
    /// The relay: best measured RTT, then join order.
    Relay,
    /// A lobby, through the admin API.
    Lobby,
}

impl ElectedBy {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ElectedBy::Relay => "relay",
            ElectedBy::Lobby => "lobby",
        }
    }
}

/// Why an allocation closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its host left for this reason.
    HostLost(LeaveReason),
    /// Its lobby-reserved host never bound before the deadline.
    HostNeverBound,
    /// Its host was lost and no member completed the migration (none left, or every elected
    /// member missed its deadline).
    MigrationFailed,
    /// An operator closed it.
    Admin,
    /// The relay shut down.
    Shutdown,
    /// Its members moved to another node of the fleet (this node drained).
    Relocated,
}

impl CloseReason {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HostLost(_) => "host_lost",
            CloseReason::HostNeverBound => "host_never_bound",
            CloseReason::MigrationFailed => "migration_failed",
            CloseReason::Admin => "admin",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Relocated => "relocated",
        }
    }

    /// Why the members still in the allocation left when it closed for this reason.
    pub fn leave_reason(self) -> LeaveReason {
        match self {
            // The host's loss closes an allocation only when no member is left; were one
            // there, it would be leaving because no one took over.
            CloseReason::HostLost(_) | CloseReason::MigrationFailed => LeaveReason::MigrationFailed,
            CloseReason::HostNeverBound => LeaveReason::HostNeverBound,
            CloseReason::Admin => LeaveReason::AllocationClosed,
            CloseReason::Shutdown | CloseReason::Relocated => LeaveReason::RelayShuttingDown,
        }
    }
}

/// How a member came into an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinedVia {
    /// The host bound the allocation it created or claimed.
    Host,
    /// A join by code.
    Code,
    /// A rejoin with a reconnect token.
    Rejoin,
}

/// An election a lobby made through
/// [`ControlPlane::elect_host`](super::ControlPlane::elect_host): what the elected member
/// presents in `MigrateAllocation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The migrating allocation.
    pub allocation: AllocationId,
    /// The elected member.
    pub peer: PeerId,
    /// The migration ticket for this member and this election round.
    pub ticket: [u8; 16],
    /// How long the member has to present it.
    pub deadline: Duration,
}

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No live allocation has this id.
    #[error("allocation {0} not found")]
    NotFound(AllocationId),
    /// The relay holds its maximum number of allocations.
    #[error("relay holds its maximum of {0} allocations")]
    RelayFull(usize),
    /// The relay is shutting down.
    #[error("relay is shutting down")]
    ShuttingDown,
    /// The relay has stopped; nothing answers any more.
    #[error("relay has stopped")]
    Stopped,
    /// The allocation is not migrating, so there is no election to override.
    #[error("allocation {0} is not migrating")]
    NotMigrating(AllocationId),
    /// The peer is not a member of the allocation.
    #[error("peer {0} is not a member")]
    UnknownPeer(PeerId),
    /// Fleet mode: the directory cannot record a new allocation now.
    #[error("the fleet directory is unavailable")]
    DirectoryUnavailable,
    /// Only a node of a fleet can drain (a relay standing alone has nowhere to move to).
    #[error("not a fleet node: nothing to drain to")]
    NotAFleetNode,
}

/// A lobby's reservation: the allocation exists, peers may join by code, and the host binds
/// with [`ClientMessage::ClaimHost`] before `expires_in`. The admin API answers it as JSON; on
/// a fleet node it adds `node`, `address` and `server_name`, where the reservation was placed
/// (and reads it back from the node it forwarded a reservation to, hence `Deserialize`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Reservation {
    /// The allocation id, as 16 hex digits.
    pub allocation_id: String,
    /// The join code to hand to players.
    pub join_code: String,
    /// The host token, as 32 hex digits; give it to the host only.
    pub host_token: String,
    /// Seconds the host has to bind.
    pub host_bind_secs: u64,
}

/// A read-only view of one allocation, served by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllocationInfo {
    /// The allocation id, as 16 hex digits.
    pub id: String,
    /// Its join code.
    pub join_code: String,
    /// `active`, `expired` or `revoked`.
    pub code_state: &'static str,
    /// Seconds until the code expires (0 once expired or revoked).
    pub code_expires_in_secs: u64,
    /// Whether the host is connected (false while a lobby reservation awaits its host or
    /// while migrating).
    pub host_bound: bool,
    /// The host's peer id (the elected member while migrating), if any.
    pub host: Option<u16>,
    /// `active`, `awaiting_host` or `migrating`.
    pub state: &'static str,
    /// Maximum members, host included.
    pub max_peers: u16,
    /// Current members.
    pub members: Vec<MemberInfo>,
    /// Seconds since creation.
    pub age_secs: u64,
}

/// One member in [`AllocationInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    /// Peer id (0 = host).
    pub peer: u16,
    /// Remote address as the relay sees it.
    pub addr: String,
    /// Seconds since it joined.
    pub joined_secs_ago: u64,
    /// Who it is: the subject of its credential (`null` on an open relay, and for a
    /// lobby-reserved allocation's host, which proves itself with the host token).
    pub subject: Option<String>,
}

/// The control plane's secrets, 256 bits each and drawn independently, so nothing a client
/// sees of one (ids, codes, host tokens) tells anything about the other (the token key).
#[derive(Clone)]
pub struct Secrets {
    /// HMAC-SHA256 key of reconnect tokens and migration tickets.
    pub hmac_key: [u8; 32],
    /// Seed of the RNG that draws allocation ids, join codes and host tokens.
    pub rng_seed: [u8; 32],
}

impl Secrets {
    /// Fresh secrets from the operating system's RNG: what a running relay uses.
    pub fn from_os_rng() -> Self {
        Secrets {
            hmac_key: crate::crypto::os_random_key(),
            rng_seed: crate::crypto::os_random_key(),
        }
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// Fixed secrets for tests, both drawn from an RNG seeded with the `u64`, so a test with the
/// same number replays exactly.
#[cfg(test)]
impl From<u64> for Secrets {
    fn from(seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Secrets {
            hmac_key: rng.gen(),
            rng_seed: rng.gen(),
        }
    }
}
