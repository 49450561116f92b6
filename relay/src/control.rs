//! The control plane: allocations, membership, join codes, deadlines and rate limits, as a
//! sans-IO state machine.
//!
//! [`ControlPlane`] never reads a clock, a socket or a global RNG. The driver feeds it
//! [`Input`]s with the current time, calls [`ControlPlane::handle_timeout`] when
//! [`ControlPlane::poll_timeout`] says so, and drains [`ControlPlane::poll_output`] after each
//! call, the same call order as `quinn_proto::Connection`:
//!
//! ```text
//! loop {
//!     handle(now, input) | handle_timeout(now) | admin call(now, ..)
//!     while let Some(output) = poll_output() { act on it }
//!     sleep until poll_timeout()
//! }
//! ```
//!
//! Randomness (allocation ids, join codes, host tokens) comes from a seeded RNG the state
//! machine owns, so a test with a fixed seed replays exactly.
//!
//! The data plane is not in here: forwarding reads routing tables the driver builds from
//! [`Output::Route`], without touching this state machine.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use baton_protocol::{
    AllocationId, ClientMessage, CloseCode, ErrorCode, JoinCode, LeaveReason, PeerId, ServerMessage,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{crypto, defaults, RelayConfig};

/// The driver's handle for one QUIC connection.
pub type ConnId = u64;

/// Something that happened, fed to [`ControlPlane::handle`].
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
    },
    /// A round-trip-time sample for a connection (used to elect the best-placed next host).
    Rtt {
        /// The connection.
        conn: ConnId,
        /// Its smoothed RTT to the relay.
        rtt: Duration,
    },
    /// A host uploaded a migration snapshot (already bounded to the size limit by the
    /// driver).
    Snapshot {
        /// The uploader.
        conn: ConnId,
        /// The snapshot's bytes.
        data: Bytes,
    },
    /// A connection ended. Reported once per connection; a connection the control plane has
    /// already let go (kicked, closed with its allocation) is ignored.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Why, as seen by the transport.
        reason: LeaveReason,
    },
}

/// Something the driver must do, drained with [`ControlPlane::poll_output`].
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
    },
    /// An allocation's membership changed: its routing table is now exactly `members`. An
    /// empty list means the allocation is gone and its table can be dropped.
    Route {
        /// The allocation.
        allocation: AllocationId,
        /// Every member with its connection, sorted by peer id.
        members: Vec<(PeerId, ConnId)>,
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
    /// An allocation closed and released everything it held.
    AllocationClosed {
        /// The allocation.
        allocation: AllocationId,
        /// Why.
        reason: CloseReason,
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

/// An election a lobby made through [`ControlPlane::elect_host`]: what the elected member
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
}

/// A lobby's reservation: the allocation exists, peers may join by code, and the host binds
/// with [`ClientMessage::ClaimHost`] before `expires_in`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

#[derive(Debug)]
enum ConnState {
    /// Connected, not yet in an allocation; closed at `deadline`.
    Unbound { deadline: Instant },
    /// A member of an allocation.
    Member {
        allocation: AllocationId,
        peer: PeerId,
    },
}

#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    state: ConnState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeState {
    Active,
    Expired,
    Revoked,
}

#[derive(Debug)]
enum HostSlot {
    /// This member hosts.
    Bound(PeerId),
    /// A lobby reserved the allocation; the host must claim it with the token before the
    /// deadline.
    Awaiting { token: [u8; 16], deadline: Instant },
    /// The host was lost; `elected` must open the successor allocation before `deadline`.
    Migrating(Migration),
}

#[derive(Debug)]
struct Migration {
    lost: PeerId,
    reason: LeaveReason,
    elected: PeerId,
    /// Bumped on every election, so an older ticket or timer is recognisably stale.
    epoch: u32,
    deadline: Instant,
    /// Members elected before who missed their deadline.
    passed_over: Vec<PeerId>,
}

#[derive(Debug)]
struct Member {
    conn: ConnId,
    joined: Instant,
    /// Join order across the relay, the election's tie-breaker.
    seq: u64,
    /// Latest RTT sample, the election's first criterion.
    rtt: Option<Duration>,
}

#[derive(Debug)]
struct Allocation {
    /// The first allocation of a migration chain; reconnect tokens are bound to it, so they
    /// survive migrations.
    lineage: AllocationId,
    /// The latest migration snapshot the host uploaded.
    snapshot: Option<Bytes>,
    code: JoinCode,
    code_state: CodeState,
    code_expires: Instant,
    max_peers: u16,
    host: HostSlot,
    members: BTreeMap<PeerId, Member>,
    next_peer: u16,
    created: Instant,
}

impl Allocation {
    /// The hosting member, if one is bound.
    fn host_peer(&self) -> Option<PeerId> {
        match self.host {
            HostSlot::Bound(peer) => Some(peer),
            _ => None,
        }
    }

    /// Seats taken, counting a reserved host seat.
    fn seats_taken(&self) -> usize {
        self.members.len() + usize::from(matches!(self.host, HostSlot::Awaiting { .. }))
    }

    /// The lowest free peer id at or after `next_peer`, wrapping within 1..0xFFFF.
    fn assign_peer_id(&mut self) -> Option<PeerId> {
        let span = u32::from(baton_protocol::datagram::BROADCAST) - 1;
        for _ in 0..span {
            let candidate = PeerId(self.next_peer);
            self.next_peer = if self.next_peer >= baton_protocol::datagram::BROADCAST - 1 {
                1
            } else {
                self.next_peer + 1
            };
            if !self.members.contains_key(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    fn route(&self) -> Vec<(PeerId, ConnId)> {
        self.members.iter().map(|(p, m)| (*p, m.conn)).collect()
    }
}

/// What a join code currently resolves to.
#[derive(Debug, Clone, Copy)]
enum CodeEntry {
    Live(AllocationId),
    /// Kept for a while after expiry, revocation or closing so joins get the precise reason.
    Tombstone {
        code: ErrorCode,
        until: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Bind(ConnId),
    Migration(AllocationId, u32),
    Successor(AllocationId),
    CodeExpiry(AllocationId),
    HostBind(AllocationId),
    Tombstone(JoinCode),
    SweepRateLimits,
}

/// A token bucket of failed join attempts for one IP address.
#[derive(Debug)]
struct Bucket {
    tokens: u32,
    refilled: Instant,
}

/// The relay's control plane. See the module docs for the call order.
#[derive(Debug)]
pub struct ControlPlane {
    keepalive_timeout: Duration,
    bind_timeout: Duration,
    host_bind_timeout: Duration,
    max_peers: u16,
    max_allocations: usize,
    max_payload: u16,
    code_len: usize,
    code_ttl: Duration,
    tombstone_ttl: Duration,
    join_burst: u32,
    join_refill: Duration,
    migration_timeout: Duration,
    lobby_election_window: Duration,
    max_snapshot: usize,
    snapshot_budget: usize,
    snapshot_bytes: usize,
    /// Key for reconnect tokens and migration tickets.
    secret: [u8; 32],
    next_seq: u64,
    /// Migrated allocations' successors, kept for a while so `Rejoin` can follow them.
    successors: HashMap<AllocationId, AllocationId>,

    rng: StdRng,
    conns: HashMap<ConnId, Conn>,
    allocations: HashMap<AllocationId, Allocation>,
    codes: HashMap<JoinCode, CodeEntry>,
    join_buckets: HashMap<IpAddr, Bucket>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    outputs: VecDeque<Output>,
    shutting_down: bool,
}

/// Rate-limit buckets are swept this often (full buckets are dropped).
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl ControlPlane {
    /// A control plane for `config`, with its RNG seeded from `seed` and the rate-limit sweep
    /// scheduled from `now`.
    pub fn new(config: &RelayConfig, seed: u64, now: Instant) -> Self {
        let mut cp = ControlPlane {
            keepalive_timeout: config.keepalive_timeout(),
            bind_timeout: config.bind_timeout(),
            host_bind_timeout: config.host_bind_timeout(),
            max_peers: config.max_peers_per_allocation(),
            max_allocations: config.max_allocations(),
            max_payload: u16::try_from(config.max_datagram_payload()).unwrap_or(u16::MAX),
            code_len: config.join_code_len(),
            code_ttl: config.join_code_ttl(),
            tombstone_ttl: defaults::CODE_TOMBSTONE_TTL,
            join_burst: defaults::JOIN_FAILURE_BURST,
            join_refill: defaults::JOIN_FAILURE_REFILL,
            migration_timeout: config.migration_timeout(),
            lobby_election_window: config.lobby_election_window(),
            max_snapshot: config.max_snapshot(),
            snapshot_budget: config.snapshot_budget(),
            snapshot_bytes: 0,
            secret: [0; 32],
            next_seq: 0,
            successors: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
            conns: HashMap::new(),
            allocations: HashMap::new(),
            codes: HashMap::new(),
            join_buckets: HashMap::new(),
            timers: BinaryHeap::new(),
            outputs: VecDeque::new(),
            shutting_down: false,
        };
        cp.secret = cp.rng.gen();
        cp.schedule(now + SWEEP_INTERVAL, Timer::SweepRateLimits);
        cp
    }

    /// The keepalive timeout this control plane was configured with; the driver applies it as
    /// the QUIC idle timeout.
    pub fn keepalive_timeout(&self) -> Duration {
        self.keepalive_timeout
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Number of connections known (bound or not).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Self::handle_timeout`] should next be called. May be early (a stale timer),
    /// never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Processes one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected { conn, addr } => {
                if self.shutting_down {
                    self.outputs.push_back(Output::Close {
                        conn,
                        code: CloseCode::RelayShuttingDown,
                    });
                    return;
                }
                let deadline = now + self.bind_timeout;
                self.conns.insert(
                    conn,
                    Conn {
                        addr,
                        state: ConnState::Unbound { deadline },
                    },
                );
                self.schedule(deadline, Timer::Bind(conn));
            }
            Input::Request { conn, msg } => self.handle_request(now, conn, msg),
            Input::Rtt { conn, rtt } => {
                if let Some(ConnState::Member { allocation, peer }) =
                    self.conns.get(&conn).map(|c| &c.state)
                {
                    let member = self
                        .allocations
                        .get_mut(allocation)
                        .and_then(|a| a.members.get_mut(peer));
                    if let Some(member) = member {
                        member.rtt = Some(rtt);
                    }
                }
            }
            Input::Snapshot { conn, data } => self.store_snapshot(conn, data),
            Input::Disconnected { conn, reason } => self.handle_disconnect(now, conn, reason),
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match key {
                Timer::Migration(id, epoch) => {
                    let due = matches!(
                        self.allocations.get(&id).map(|a| &a.host),
                        Some(HostSlot::Migrating(m)) if m.epoch == epoch && m.deadline <= now
                    );
                    if due {
                        // Epoch 0 is the lobby's window: no one was elected to pass over.
                        if let Some(HostSlot::Migrating(m)) =
                            self.allocations.get_mut(&id).map(|a| &mut a.host)
                        {
                            if epoch > 0 {
                                m.passed_over.push(m.elected);
                            }
                        }
                        self.elect(now, id, None);
                    }
                }
                Timer::Successor(id) => {
                    self.successors.remove(&id);
                }
                Timer::Bind(conn) => {
                    let due = matches!(
                        self.conns.get(&conn),
                        Some(Conn { state: ConnState::Unbound { deadline }, .. }) if *deadline <= now
                    );
                    if due {
                        self.conns.remove(&conn);
                        self.outputs.push_back(Output::Close {
                            conn,
                            code: CloseCode::BindTimeout,
                        });
                    }
                }
                Timer::CodeExpiry(id) => {
                    if let Some(alloc) = self.allocations.get_mut(&id) {
                        if alloc.code_state == CodeState::Active && alloc.code_expires <= now {
                            alloc.code_state = CodeState::Expired;
                            let code = alloc.code;
                            self.tombstone(now, code, ErrorCode::Expired);
                        }
                    }
                }
                Timer::HostBind(id) => {
                    let due = matches!(
                        self.allocations.get(&id),
                        Some(Allocation { host: HostSlot::Awaiting { deadline, .. }, .. }) if *deadline <= now
                    );
                    if due {
                        self.close_allocation(now, id, CloseReason::HostNeverBound);
                    }
                }
                Timer::Tombstone(code) => {
                    if matches!(self.codes.get(&code), Some(CodeEntry::Tombstone { until, .. }) if *until <= now)
                    {
                        self.codes.remove(&code);
                    }
                }
                Timer::SweepRateLimits => {
                    let (burst, refill) = (self.join_burst, self.join_refill);
                    self.join_buckets
                        .retain(|_, b| refill_bucket(b, now, burst, refill) < burst);
                    self.schedule(now + SWEEP_INTERVAL, Timer::SweepRateLimits);
                }
            }
        }
    }

    /// Starts a graceful shutdown: every allocation closes, every connection is closed with
    /// [`CloseCode::RelayShuttingDown`], and new connections and requests are refused.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let ids: Vec<AllocationId> = self.allocations.keys().copied().collect();
        for id in ids {
            self.close_allocation(now, id, CloseReason::Shutdown);
        }
        for (conn, _) in self.conns.drain() {
            self.outputs.push_back(Output::Close {
                conn,
                code: CloseCode::RelayShuttingDown,
            });
        }
    }

    /// Reserves an allocation for a lobby: peers may join by code at once, and the host must
    /// claim it with the returned token within the host bind timeout or it expires.
    pub fn reserve_allocation(
        &mut self,
        now: Instant,
        max_peers: Option<u16>,
    ) -> Result<Reservation, AdminError> {
        if self.shutting_down {
            return Err(AdminError::ShuttingDown);
        }
        if self.allocations.len() >= self.max_allocations {
            return Err(AdminError::RelayFull(self.max_allocations));
        }
        let token: [u8; 16] = self.rng.gen();
        let deadline = now + self.host_bind_timeout;
        let (id, code) = self.open_allocation(
            now,
            max_peers.unwrap_or(0),
            0,
            HostSlot::Awaiting { token, deadline },
        );
        self.schedule(deadline, Timer::HostBind(id));
        Ok(Reservation {
            allocation_id: id.to_string(),
            join_code: code.to_string(),
            host_token: token.iter().map(|b| format!("{b:02x}")).collect(),
            host_bind_secs: self.host_bind_timeout.as_secs(),
        })
    }

    /// Revokes an allocation's join code on an operator's behalf and tells the host.
    pub fn revoke_code(&mut self, now: Instant, id: AllocationId) -> Result<JoinCode, AdminError> {
        let alloc = self.allocations.get(&id).ok_or(AdminError::NotFound(id))?;
        let code = alloc.code;
        let host = alloc.members.get(&PeerId::HOST).map(|m| m.conn);
        self.revoke(now, id);
        if let Some(conn) = host {
            self.send(conn, ServerMessage::CodeRevoked { code });
        }
        Ok(code)
    }

    /// Closes an allocation on an operator's behalf; every member is closed with
    /// [`CloseCode::AllocationClosed`].
    pub fn close_by_admin(&mut self, now: Instant, id: AllocationId) -> Result<(), AdminError> {
        if !self.allocations.contains_key(&id) {
            return Err(AdminError::NotFound(id));
        }
        self.close_allocation(now, id, CloseReason::Admin);
        Ok(())
    }

    /// A view of every allocation, sorted by age (oldest first).
    pub fn allocations(&self, now: Instant) -> Vec<AllocationInfo> {
        let mut all: Vec<_> = self
            .allocations
            .iter()
            .map(|(id, a)| self.info(now, *id, a))
            .collect();
        all.sort_by(|a, b| b.age_secs.cmp(&a.age_secs).then(a.id.cmp(&b.id)));
        all
    }

    /// A view of one allocation.
    pub fn allocation(&self, now: Instant, id: AllocationId) -> Option<AllocationInfo> {
        self.allocations.get(&id).map(|a| self.info(now, id, a))
    }

    fn info(&self, now: Instant, id: AllocationId, a: &Allocation) -> AllocationInfo {
        AllocationInfo {
            id: id.to_string(),
            join_code: a.code.to_string(),
            code_state: match a.code_state {
                CodeState::Active => "active",
                CodeState::Expired => "expired",
                CodeState::Revoked => "revoked",
            },
            code_expires_in_secs: match a.code_state {
                CodeState::Active => a.code_expires.saturating_duration_since(now).as_secs(),
                _ => 0,
            },
            host_bound: matches!(a.host, HostSlot::Bound(_)),
            host: match &a.host {
                HostSlot::Bound(p) => Some(p.0),
                HostSlot::Migrating(m) => Some(m.elected.0),
                HostSlot::Awaiting { .. } => None,
            },
            state: match a.host {
                HostSlot::Bound(_) => "active",
                HostSlot::Awaiting { .. } => "awaiting_host",
                HostSlot::Migrating(_) => "migrating",
            },
            max_peers: a.max_peers,
            members: a
                .members
                .iter()
                .map(|(peer, m)| MemberInfo {
                    peer: peer.0,
                    addr: self
                        .conns
                        .get(&m.conn)
                        .map(|c| c.addr.to_string())
                        .unwrap_or_default(),
                    joined_secs_ago: now.saturating_duration_since(m.joined).as_secs(),
                })
                .collect(),
            age_secs: now.saturating_duration_since(a.created).as_secs(),
        }
    }

    fn schedule(&mut self, at: Instant, key: Timer) {
        self.timers.push(Reverse((at, key)));
    }

    fn send(&mut self, conn: ConnId, msg: ServerMessage) {
        self.outputs.push_back(Output::Send { conn, msg });
    }

    fn refuse(&mut self, conn: ConnId, request_id: u32, code: ErrorCode, value: u32) {
        self.send(
            conn,
            ServerMessage::Refused {
                request_id,
                code,
                value,
            },
        );
        self.outputs
            .push_back(Output::Event(Event::Refused { code }));
    }

    fn handle_request(&mut self, now: Instant, conn: ConnId, msg: ClientMessage) {
        let Some(state) = self.conns.get(&conn).map(|c| &c.state) else {
            // A request racing the connection's own removal (kicked, allocation closed).
            return;
        };
        let bound = match state {
            ConnState::Unbound { .. } => None,
            ConnState::Member { allocation, peer } => Some((*allocation, *peer)),
        };
        let request_id = msg.request_id();
        if self.shutting_down {
            self.refuse(conn, request_id, ErrorCode::ShuttingDown, 0);
            return;
        }
        match (msg, bound) {
            (ClientMessage::CreateAllocation { .. }, Some(_))
            | (ClientMessage::Join { .. }, Some(_))
            | (ClientMessage::ClaimHost { .. }, Some(_)) => {
                self.refuse(conn, request_id, ErrorCode::AlreadyBound, 0);
            }
            (ClientMessage::Kick { .. }, None) | (ClientMessage::RevokeCode { .. }, None) => {
                self.refuse(conn, request_id, ErrorCode::NotBound, 0);
            }
            (
                ClientMessage::CreateAllocation {
                    max_peers,
                    code_ttl_secs,
                    ..
                },
                None,
            ) => self.create(now, conn, request_id, max_peers, code_ttl_secs),
            (ClientMessage::Join { code, .. }, None) => self.join(now, conn, request_id, code),
            (
                ClientMessage::ClaimHost {
                    allocation,
                    host_token,
                    ..
                },
                None,
            ) => self.claim_host(now, conn, request_id, allocation, host_token),
            (
                ClientMessage::MigrateAllocation {
                    allocation, ticket, ..
                },
                Some(bound),
            ) => self.migrate(now, conn, request_id, bound, allocation, ticket),
            (ClientMessage::MigrateAllocation { .. }, None) => {
                self.refuse(conn, request_id, ErrorCode::NotBound, 0);
            }
            (
                ClientMessage::Rejoin {
                    allocation,
                    peer,
                    reconnect_token,
                    ..
                },
                None,
            ) => self.rejoin(now, conn, request_id, allocation, peer, reconnect_token),
            (ClientMessage::Rejoin { .. }, Some(_)) => {
                self.refuse(conn, request_id, ErrorCode::AlreadyBound, 0);
            }
            (ClientMessage::Kick { peer, .. }, Some((id, me))) => {
                self.kick(now, conn, request_id, id, me, peer)
            }
            (ClientMessage::RevokeCode { .. }, Some((id, me))) => {
                if self.is_host(id, me) {
                    self.revoke(now, id);
                    self.send(conn, ServerMessage::Done { request_id });
                } else {
                    self.refuse(conn, request_id, ErrorCode::NotHost, 0);
                }
            }
            // Messages added to the protocol later are refused, not ignored.
            (_, _) => self.refuse(conn, request_id, ErrorCode::InvalidRequest, 0),
        }
    }

    /// Whether `peer` hosts allocation `id`.
    fn is_host(&self, id: AllocationId, peer: PeerId) -> bool {
        self.allocations
            .get(&id)
            .is_some_and(|a| a.host_peer() == Some(peer))
    }

    fn create(&mut self, now: Instant, conn: ConnId, request_id: u32, max_peers: u16, ttl: u32) {
        if self.allocations.len() >= self.max_allocations {
            let max = u32::try_from(self.max_allocations).unwrap_or(u32::MAX);
            self.refuse(conn, request_id, ErrorCode::RelayFull, max);
            return;
        }
        let (id, _) = self.open_allocation(now, max_peers, ttl, HostSlot::Bound(PeerId::HOST));
        self.bind_host(now, conn, request_id, id);
    }

    fn claim_host(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        id: AllocationId,
        token: [u8; 16],
    ) {
        let valid = match self.allocations.get(&id) {
            Some(Allocation {
                host: HostSlot::Awaiting { token: want, .. },
                ..
            }) => crypto::constant_time_eq(want, &token),
            _ => false,
        };
        if !valid {
            // Wrong token, unknown allocation and already-claimed look alike on purpose.
            self.refuse(conn, request_id, ErrorCode::Unauthorized, 0);
            return;
        }
        self.bind_host(now, conn, request_id, id);
    }

    /// The `AllocationCreated` reply telling `host` it now hosts allocation `id`.
    fn created_reply(
        &self,
        now: Instant,
        request_id: u32,
        id: AllocationId,
        alloc: &Allocation,
        host: PeerId,
    ) -> ServerMessage {
        let ttl = alloc.code_expires.saturating_duration_since(now).as_secs();
        ServerMessage::AllocationCreated {
            request_id,
            allocation: id,
            code: alloc.code,
            code_ttl_secs: u32::try_from(ttl).unwrap_or(u32::MAX),
            max_peers: alloc.max_peers,
            max_payload: self.max_payload,
            reconnect_token: self.reconnect_token(alloc.lineage, host),
        }
    }

    /// Makes `conn` the host (peer 0) of `id` and tells everyone.
    fn bind_host(&mut self, now: Instant, conn: ConnId, request_id: u32, id: AllocationId) {
        let others: Vec<(PeerId, ConnId)> = match self.allocations.get_mut(&id) {
            Some(alloc) => {
                alloc.host = HostSlot::Bound(PeerId::HOST);
                alloc.route()
            }
            None => return,
        };
        // Routing first: a member told about the host may send to it at once.
        self.add_member(now, conn, id, PeerId::HOST, JoinedVia::Host);
        let Some(alloc) = self.allocations.get(&id) else {
            return;
        };
        let reply = self.created_reply(now, request_id, id, alloc, PeerId::HOST);
        self.send(conn, reply);
        for (peer, other) in others {
            // A host claiming a reservation learns who is already there.
            self.send(conn, ServerMessage::PeerJoined { peer });
            self.send(other, ServerMessage::PeerJoined { peer: PeerId::HOST });
        }
    }
    /// Creates an allocation with a fresh id and code and schedules its code expiry.
    fn open_allocation(
        &mut self,
        now: Instant,
        max_peers: u16,
        ttl_secs: u32,
        host: HostSlot,
    ) -> (AllocationId, JoinCode) {
        let max_peers = match max_peers {
            0 => self.max_peers,
            n => n.clamp(2, self.max_peers),
        };
        let ttl = match ttl_secs {
            0 => self.code_ttl,
            n => Duration::from_secs(u64::from(n)).min(self.code_ttl),
        };
        let id = loop {
            let id = AllocationId::random(&mut self.rng);
            if !self.allocations.contains_key(&id) {
                break id;
            }
        };
        // 20^6 codes against at most max_allocations live ones: a free code is found in a
        // few draws; the loop is bounded by growing the length if a space ever fills up.
        let mut len = self.code_len;
        let code = loop {
            let mut found = None;
            for _ in 0..64 {
                let code = JoinCode::random(&mut self.rng, len);
                if !self.codes.contains_key(&code) {
                    found = Some(code);
                    break;
                }
            }
            match found {
                Some(code) => break code,
                None => len = (len + 1).min(baton_protocol::join_code::MAX_LEN),
            }
        };
        let code_expires = now + ttl;
        self.allocations.insert(
            id,
            Allocation {
                lineage: id,
                snapshot: None,
                code,
                code_state: CodeState::Active,
                code_expires,
                max_peers,
                host,
                members: BTreeMap::new(),
                next_peer: 1,
                created: now,
            },
        );
        self.codes.insert(code, CodeEntry::Live(id));
        self.schedule(code_expires, Timer::CodeExpiry(id));
        self.outputs
            .push_back(Output::Event(Event::AllocationCreated {
                allocation: id,
                code,
            }));
        (id, code)
    }

    fn join(&mut self, now: Instant, conn: ConnId, request_id: u32, code: JoinCode) {
        let Some(ip) = self.conns.get(&conn).map(|c| c.addr.ip()) else {
            return;
        };
        let (burst, refill) = (self.join_burst, self.join_refill);
        let bucket = self.join_buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        if refill_bucket(bucket, now, burst, refill) == 0 {
            let wait = (bucket.refilled + refill).saturating_duration_since(now);
            let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
            self.refuse(conn, request_id, ErrorCode::RateLimited, ms);
            return;
        }
        let failure = match self.codes.get(&code).copied() {
            None => Some(ErrorCode::NotFound),
            Some(CodeEntry::Tombstone { code, .. }) => Some(code),
            Some(CodeEntry::Live(id)) => match self.allocations.get(&id) {
                // Expiry timers fire at the deadline; this catches a join at that very instant.
                Some(a) if a.code_expires <= now => Some(ErrorCode::Expired),
                Some(_) => None,
                None => Some(ErrorCode::NotFound),
            },
        };
        if let Some(code) = failure {
            if let Some(b) = self.join_buckets.get_mut(&ip) {
                b.tokens = b.tokens.saturating_sub(1);
            }
            self.refuse(conn, request_id, code, 0);
            return;
        }
        let Some(CodeEntry::Live(id)) = self.codes.get(&code).copied() else {
            return;
        };
        let max_payload = self.max_payload;
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        if let HostSlot::Migrating(m) = &alloc.host {
            // The code moves to the successor in a moment; a retry lands there.
            let ms = m.deadline.saturating_duration_since(now).as_millis();
            let ms = u32::try_from(ms).unwrap_or(u32::MAX).max(1);
            self.refuse(conn, request_id, ErrorCode::Migrating, ms);
            return;
        }
        if alloc.seats_taken() >= usize::from(alloc.max_peers) {
            let max = u32::from(alloc.max_peers);
            self.refuse(conn, request_id, ErrorCode::Full, max);
            return;
        }
        let Some(peer) = alloc.assign_peer_id() else {
            let max = u32::from(alloc.max_peers);
            self.refuse(conn, request_id, ErrorCode::Full, max);
            return;
        };
        let others: Vec<(PeerId, ConnId)> = alloc.route();
        let host = alloc.host_peer().unwrap_or(PeerId::HOST);
        let lineage = alloc.lineage;
        let reconnect_token = self.reconnect_token(lineage, peer);
        // Routing first: the joiner and the others may send to each other as soon as told.
        self.add_member(now, conn, id, peer, JoinedVia::Code);
        self.send(
            conn,
            ServerMessage::Joined {
                request_id,
                allocation: id,
                peer,
                max_payload,
                host,
                reconnect_token,
                members: others.iter().map(|(p, _)| *p).collect(),
            },
        );
        for (_, other) in others {
            self.send(other, ServerMessage::PeerJoined { peer });
        }
    }

    fn kick(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        id: AllocationId,
        me: PeerId,
        target: PeerId,
    ) {
        if !self.is_host(id, me) {
            self.refuse(conn, request_id, ErrorCode::NotHost, 0);
            return;
        }
        if target == me {
            self.refuse(conn, request_id, ErrorCode::InvalidRequest, 0);
            return;
        }
        let Some(target_conn) = self
            .allocations
            .get(&id)
            .and_then(|a| a.members.get(&target))
            .map(|m| m.conn)
        else {
            self.refuse(
                conn,
                request_id,
                ErrorCode::UnknownPeer,
                u32::from(target.0),
            );
            return;
        };
        self.conns.remove(&target_conn);
        self.outputs.push_back(Output::Close {
            conn: target_conn,
            code: CloseCode::Kicked,
        });
        self.remove_member(now, id, target, LeaveReason::Kicked);
        self.send(conn, ServerMessage::Done { request_id });
    }

    fn revoke(&mut self, now: Instant, id: AllocationId) {
        if let Some(alloc) = self.allocations.get_mut(&id) {
            if alloc.code_state == CodeState::Revoked {
                return;
            }
            alloc.code_state = CodeState::Revoked;
            let code = alloc.code;
            self.tombstone(now, code, ErrorCode::Revoked);
        }
    }

    fn tombstone(&mut self, now: Instant, code: JoinCode, reason: ErrorCode) {
        let until = now + self.tombstone_ttl;
        self.codes.insert(
            code,
            CodeEntry::Tombstone {
                code: reason,
                until,
            },
        );
        self.schedule(until, Timer::Tombstone(code));
    }

    fn handle_disconnect(&mut self, now: Instant, conn: ConnId, reason: LeaveReason) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let ConnState::Member { allocation, peer } = c.state {
            let is_host = self
                .allocations
                .get(&allocation)
                .is_some_and(|a| a.host_peer() == Some(peer));
            self.remove_member(now, allocation, peer, reason);
            if is_host {
                self.lose_host(now, allocation, peer, reason);
            } else {
                self.after_departure(now, allocation, peer);
            }
        }
    }

    /// The host of `id` is gone: the one place a host loss is reported (so it is reported
    /// exactly once), then the migration starts, or the allocation closes if no one is left.
    fn lose_host(&mut self, now: Instant, id: AllocationId, host: PeerId, reason: LeaveReason) {
        self.outputs
            .push_back(Output::Event(Event::HostDisconnected {
                allocation: id,
                host,
                reason,
            }));
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        if alloc.members.is_empty() {
            self.close_allocation(now, id, CloseReason::HostLost(reason));
            return;
        }
        let window = self.lobby_election_window;
        alloc.host = HostSlot::Migrating(Migration {
            lost: host,
            reason,
            elected: host,
            epoch: 0,
            deadline: now + window,
            passed_over: Vec::new(),
        });
        if window.is_zero() {
            self.elect(now, id, None);
            return;
        }
        // A lobby may name the next host within the window; members hear of the loss now,
        // with no one elected yet, and again once someone is.
        let members = alloc.route();
        for (_, conn) in members {
            self.send(
                conn,
                ServerMessage::HostLost {
                    host,
                    reason,
                    elected: PeerId(baton_protocol::datagram::BROADCAST),
                },
            );
        }
        self.schedule(now + window, Timer::Migration(id, 0));
    }

    /// A member left a migrating allocation: re-elect if it was the elected one, close if no
    /// one is left.
    fn after_departure(&mut self, now: Instant, id: AllocationId, peer: PeerId) {
        let Some(alloc) = self.allocations.get(&id) else {
            return;
        };
        let HostSlot::Migrating(m) = &alloc.host else {
            return;
        };
        if alloc.members.is_empty() {
            self.close_allocation(now, id, CloseReason::MigrationFailed);
        } else if m.elected == peer {
            self.elect(now, id, None);
        }
    }

    /// Elects the next host of a migrating allocation: `choice` if a lobby named one, else the
    /// member with the best measured RTT, then the earliest joined, among those not passed
    /// over. Tells every member, and the elected one how to take over (unless the lobby hands
    /// out the ticket itself: `promote` false).
    fn elect(&mut self, now: Instant, id: AllocationId, choice: Option<PeerId>) {
        self.elect_and_promote(now, id, choice, true);
    }

    /// [`Self::elect`], sending `Promote` to the elected member only if `promote`.
    fn elect_and_promote(
        &mut self,
        now: Instant,
        id: AllocationId,
        choice: Option<PeerId>,
        promote: bool,
    ) {
        let timeout = self.migration_timeout;
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        let HostSlot::Migrating(m) = &mut alloc.host else {
            return;
        };
        let by = if choice.is_some() {
            ElectedBy::Lobby
        } else {
            ElectedBy::Relay
        };
        let elected = choice.or_else(|| {
            alloc
                .members
                .iter()
                .filter(|(p, _)| !m.passed_over.contains(p))
                .min_by_key(|(_, member)| (member.rtt.unwrap_or(Duration::MAX), member.seq))
                .map(|(p, _)| *p)
        });
        let Some(elected) = elected else {
            self.close_allocation(now, id, CloseReason::MigrationFailed);
            return;
        };
        m.elected = elected;
        m.epoch += 1;
        m.deadline = now + timeout;
        let (lost, reason, epoch, deadline) = (m.lost, m.reason, m.epoch, m.deadline);
        let members: Vec<(PeerId, ConnId)> = alloc.route();
        let ticket = self.ticket(id, elected, epoch);
        for (peer, conn) in members {
            self.send(
                conn,
                ServerMessage::HostLost {
                    host: lost,
                    reason,
                    elected,
                },
            );
            if peer == elected && promote {
                self.send(
                    conn,
                    ServerMessage::Promote {
                        allocation: id,
                        ticket,
                        deadline_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
                    },
                );
            }
        }
        self.schedule(deadline, Timer::Migration(id, epoch));
        self.outputs.push_back(Output::Event(Event::HostElected {
            allocation: id,
            host: elected,
            by,
        }));
    }

    /// Lets a lobby choose a migrating allocation's next host. With `promote` the member is
    /// sent `Promote` as with the relay's own choice; without, the lobby hands the returned
    /// ticket to the member itself (the SDK's `Session::take_over`). Either way it has the
    /// migration timeout to take over.
    pub fn elect_host(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: PeerId,
        promote: bool,
    ) -> Result<Promotion, AdminError> {
        let alloc = self.allocations.get(&id).ok_or(AdminError::NotFound(id))?;
        if !matches!(alloc.host, HostSlot::Migrating(_)) {
            return Err(AdminError::NotMigrating(id));
        }
        if !alloc.members.contains_key(&peer) {
            return Err(AdminError::UnknownPeer(peer));
        }
        self.elect_and_promote(now, id, Some(peer), promote);
        let epoch = match self.allocations.get(&id).map(|a| &a.host) {
            Some(HostSlot::Migrating(m)) => m.epoch,
            _ => return Err(AdminError::NotMigrating(id)),
        };
        Ok(Promotion {
            allocation: id,
            peer,
            ticket: self.ticket(id, peer, epoch),
            deadline: self.migration_timeout,
        })
    }

    /// HMAC-SHA256 of `parts` under the relay's secret, truncated to 128 bits.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out.copy_from_slice(&crypto::hmac_sha256(&self.secret, parts)[..16]);
        out
    }

    /// The ticket that lets `elected` open the successor of `id` in election `epoch`.
    fn ticket(&self, id: AllocationId, elected: PeerId, epoch: u32) -> [u8; 16] {
        self.mac(&[
            b"baton migrate",
            &id.0.to_be_bytes(),
            &elected.0.to_be_bytes(),
            &epoch.to_be_bytes(),
        ])
    }

    /// The token that lets `peer` take its id back in any allocation of `lineage`.
    fn reconnect_token(&self, lineage: AllocationId, peer: PeerId) -> [u8; 16] {
        self.mac(&[
            b"baton rejoin",
            &lineage.0.to_be_bytes(),
            &peer.0.to_be_bytes(),
        ])
    }

    /// The elected member opens the successor allocation: the roster, the join code and the
    /// snapshot move over, and only then are the other members told to move.
    fn migrate(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        (from, me): (AllocationId, PeerId),
        old: AllocationId,
        ticket: [u8; 16],
    ) {
        let valid = old == from
            && match self.allocations.get(&from).map(|a| &a.host) {
                Some(HostSlot::Migrating(m)) => {
                    m.elected == me
                        && crypto::constant_time_eq(&self.ticket(from, me, m.epoch), &ticket)
                }
                _ => false,
            };
        if !valid {
            self.refuse(conn, request_id, ErrorCode::Unauthorized, 0);
            return;
        }
        let Some(mut alloc) = self.allocations.remove(&from) else {
            return;
        };
        let to = loop {
            let id = AllocationId::random(&mut self.rng);
            if !self.allocations.contains_key(&id) && id != from {
                break id;
            }
        };
        alloc.host = HostSlot::Bound(me);
        alloc.created = now;
        if matches!(self.codes.get(&alloc.code), Some(CodeEntry::Live(live)) if *live == from) {
            self.codes.insert(alloc.code, CodeEntry::Live(to));
        }
        self.schedule(alloc.code_expires, Timer::CodeExpiry(to));
        self.successors.insert(from, to);
        self.schedule(now + self.tombstone_ttl, Timer::Successor(from));
        let route = alloc.route();
        let snapshot = alloc.snapshot.clone();
        let reply = self.created_reply(now, request_id, to, &alloc, me);
        self.allocations.insert(to, alloc);
        // Routing first, for everyone, then the new host hears it is bound, then the others
        // are told to move: no one can race into a missing allocation.
        for (peer, c) in &route {
            if let Some(state) = self.conns.get_mut(c) {
                state.state = ConnState::Member {
                    allocation: to,
                    peer: *peer,
                };
            }
            self.outputs.push_back(Output::Bound {
                conn: *c,
                allocation: to,
                peer: *peer,
            });
        }
        self.outputs.push_back(Output::Route {
            allocation: to,
            members: route.clone(),
        });
        self.outputs.push_back(Output::Route {
            allocation: from,
            members: Vec::new(),
        });
        self.send(conn, reply);
        // Always delivered (empty when none is stored), so the new host knows when it has it.
        self.outputs.push_back(Output::DeliverSnapshot {
            conn,
            data: snapshot.unwrap_or_default(),
        });
        for (peer, c) in &route {
            if *peer != me {
                self.send(
                    *c,
                    ServerMessage::Migrated {
                        allocation: to,
                        host: me,
                    },
                );
                self.send(conn, ServerMessage::PeerRejoined { peer: *peer });
            }
        }
        self.outputs
            .push_back(Output::Event(Event::AllocationMigrated {
                from,
                to,
                host: me,
            }));
    }

    /// A client takes back a peer id it held, with its reconnect token, in the allocation it
    /// names or that allocation's successor.
    fn rejoin(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        named: AllocationId,
        peer: PeerId,
        token: [u8; 16],
    ) {
        let mut id = named;
        for _ in 0..64 {
            match self.successors.get(&id) {
                Some(next) => id = *next,
                None => break,
            }
        }
        let Some(alloc) = self.allocations.get(&id) else {
            self.refuse(conn, request_id, ErrorCode::NotFound, 0);
            return;
        };
        if !crypto::constant_time_eq(&self.reconnect_token(alloc.lineage, peer), &token) {
            self.refuse(conn, request_id, ErrorCode::Unauthorized, 0);
            return;
        }
        let host = match &alloc.host {
            HostSlot::Bound(host) => *host,
            HostSlot::Migrating(m) => {
                let ms = m.deadline.saturating_duration_since(now).as_millis();
                let ms = u32::try_from(ms).unwrap_or(u32::MAX).max(1);
                self.refuse(conn, request_id, ErrorCode::Migrating, ms);
                return;
            }
            HostSlot::Awaiting { .. } => PeerId::HOST,
        };
        if alloc.members.contains_key(&peer) {
            // Its old connection has not timed out yet; the client retries after it has.
            self.refuse(conn, request_id, ErrorCode::AlreadyBound, 0);
            return;
        }
        if alloc.seats_taken() >= usize::from(alloc.max_peers) {
            let max = u32::from(alloc.max_peers);
            self.refuse(conn, request_id, ErrorCode::Full, max);
            return;
        }
        let reconnect_token = token;
        self.add_member(now, conn, id, peer, JoinedVia::Rejoin);
        let Some(alloc) = self.allocations.get(&id) else {
            return;
        };
        let others: Vec<(PeerId, ConnId)> = alloc
            .route()
            .into_iter()
            .filter(|(p, _)| *p != peer)
            .collect();
        self.send(
            conn,
            ServerMessage::Joined {
                request_id,
                allocation: id,
                peer,
                max_payload: self.max_payload,
                host,
                reconnect_token,
                members: others.iter().map(|(p, _)| *p).collect(),
            },
        );
        for (_, other) in others {
            self.send(other, ServerMessage::PeerRejoined { peer });
        }
    }

    /// Adds `conn` as `peer` of `id`, installs routing and reports the join. The caller sends
    /// the replies afterwards, so routing is in place before anyone hears of the member.
    fn add_member(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: AllocationId,
        peer: PeerId,
        via: JoinedVia,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        alloc.members.insert(
            peer,
            Member {
                conn,
                joined: now,
                seq,
                rtt: None,
            },
        );
        let route = alloc.route();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Member {
                allocation: id,
                peer,
            };
        }
        self.outputs.push_back(Output::Bound {
            conn,
            allocation: id,
            peer,
        });
        self.outputs.push_back(Output::Route {
            allocation: id,
            members: route,
        });
        self.outputs.push_back(Output::Event(Event::PeerJoined {
            allocation: id,
            peer,
            via,
        }));
    }

    /// Stores a host's migration snapshot, replacing the previous one, within the size limit
    /// and the relay-wide budget.
    fn store_snapshot(&mut self, conn: ConnId, data: Bytes) {
        let Some(ConnState::Member { allocation, peer }) = self.conns.get(&conn).map(|c| &c.state)
        else {
            return;
        };
        let (allocation, peer) = (*allocation, *peer);
        let Some(alloc) = self.allocations.get_mut(&allocation) else {
            return;
        };
        let rejected = |code, value| ServerMessage::SnapshotRejected { code, value };
        if alloc.host_peer() != Some(peer) {
            self.send(conn, rejected(ErrorCode::NotHost, 0));
            return;
        }
        if data.len() > self.max_snapshot {
            let limit = u32::try_from(self.max_snapshot).unwrap_or(u32::MAX);
            self.send(conn, rejected(ErrorCode::PayloadTooLarge, limit));
            return;
        }
        let old = alloc.snapshot.as_ref().map_or(0, Bytes::len);
        if self.snapshot_bytes - old + data.len() > self.snapshot_budget {
            self.send(conn, rejected(ErrorCode::RelayFull, 0));
            return;
        }
        self.snapshot_bytes = self.snapshot_bytes - old + data.len();
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        // An empty upload clears the stored snapshot.
        alloc.snapshot = (!data.is_empty()).then_some(data);
        self.send(conn, ServerMessage::SnapshotStored { len });
    }

    /// Bytes of snapshots held.
    pub fn snapshot_bytes(&self) -> usize {
        self.snapshot_bytes
    }

    /// Removes a member that is already gone from `conns` and tells the others.
    fn remove_member(
        &mut self,
        _now: Instant,
        id: AllocationId,
        peer: PeerId,
        reason: LeaveReason,
    ) {
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        if alloc.members.remove(&peer).is_none() {
            return;
        }
        let route = alloc.route();
        let was_host = alloc.host_peer() == Some(peer);
        self.outputs.push_back(Output::Event(Event::PeerLeft {
            allocation: id,
            peer,
            reason,
        }));
        if was_host {
            // `lose_host` follows and tells the others.
            self.outputs.push_back(Output::Route {
                allocation: id,
                members: route,
            });
            return;
        }
        for (_, other) in &route {
            self.send(*other, ServerMessage::PeerLeft { peer, reason });
        }
        self.outputs.push_back(Output::Route {
            allocation: id,
            members: route,
        });
    }

    /// Closes an allocation: every remaining member is closed, its code is tombstoned and its
    /// routing table dropped.
    fn close_allocation(&mut self, now: Instant, id: AllocationId, reason: CloseReason) {
        let Some(alloc) = self.allocations.remove(&id) else {
            return;
        };
        self.snapshot_bytes -= alloc.snapshot.as_ref().map_or(0, Bytes::len);
        let code = match (reason, &alloc.host) {
            (CloseReason::HostLost(r), _) => CloseCode::HostLost(r),
            (CloseReason::MigrationFailed, HostSlot::Migrating(m)) => CloseCode::HostLost(m.reason),
            (CloseReason::Shutdown, _) => CloseCode::RelayShuttingDown,
            _ => CloseCode::AllocationClosed,
        };
        let leave = match reason {
            CloseReason::Shutdown => LeaveReason::RelayShuttingDown,
            _ => LeaveReason::Kicked,
        };
        for (peer, member) in &alloc.members {
            self.conns.remove(&member.conn);
            self.outputs.push_back(Output::Close {
                conn: member.conn,
                code,
            });
            self.outputs.push_back(Output::Event(Event::PeerLeft {
                allocation: id,
                peer: *peer,
                reason: leave,
            }));
        }
        if matches!(self.codes.get(&alloc.code), Some(CodeEntry::Live(live)) if *live == id) {
            self.tombstone(now, alloc.code, ErrorCode::Closed);
        }
        self.outputs.push_back(Output::Route {
            allocation: id,
            members: Vec::new(),
        });
        self.outputs
            .push_back(Output::Event(Event::AllocationClosed {
                allocation: id,
                reason,
            }));
    }
}

/// Refills `bucket` for the time elapsed since its last refill and returns its tokens.
fn refill_bucket(bucket: &mut Bucket, now: Instant, burst: u32, refill: Duration) -> u32 {
    let elapsed = now.saturating_duration_since(bucket.refilled);
    let earned = (elapsed.as_nanos() / refill.as_nanos().max(1)) as u64;
    if earned > 0 {
        bucket.tokens = (u64::from(bucket.tokens) + earned).min(u64::from(burst)) as u32;
        bucket.refilled += refill * u32::try_from(earned).unwrap_or(u32::MAX).min(burst);
        if bucket.tokens == burst {
            bucket.refilled = now;
        }
    }
    bucket.tokens
}

#[cfg(test)]
mod tests;
