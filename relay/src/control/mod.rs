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
//! Randomness (allocation ids, join codes, host tokens) comes from an RNG the state machine
//! owns, seeded with 256 bits, and reconnect tokens and migration tickets are HMACs under a
//! separate 256-bit key: both come in as [`Secrets`], which the driver draws from the
//! operating system's RNG ([`Secrets::from_os_rng`]) and tests fix, so a test replays exactly.
//!
//! The data plane is not in here: forwarding reads routing tables the driver builds from
//! [`Output::Route`], without touching this state machine.
//!
//! This file holds the [`ControlPlane`] itself, its entry points and the request dispatch;
//! each concern is one `impl ControlPlane` block in a file of its own:
//!
//! - `types`: the public [`Input`], [`Output`], [`Event`] and admin types, re-exported here;
//! - `allocation`: the `Allocation`, `Member` and `HostSlot` state, opening, binding the host,
//!   closing;
//! - `membership`: which connection is which member (`Conn`), join, rejoin, kick, disconnect;
//! - `codes`: join codes, their expiry, revocation and tombstones;
//! - `drain`: a draining fleet node moving its allocations to other nodes;
//! - `fleet`: fleet mode's pool of directory-claimed codes and directory lookups for joins
//!   this node cannot serve;
//! - `migration`: host loss, elections, `migrate` to the successor, snapshots;
//! - `timers`: the `Timer` queue behind [`ControlPlane::poll_timeout`];
//! - `paths`: direct-path signalling (`PathOffer`, `Punch`, `PathReport`);
//! - `ratelimit`: the per-IP `Bucket`s of failed joins;
//! - `tokens`: reconnect tokens and migration tickets (HMACs under the relay's secret);
//! - `admin`: the calls the admin API makes ([`ControlPlane::reserve_allocation`],
//!   [`ControlPlane::elect_host`], ...).
//!
//! None of it runs on a thread of its own: the control task (`driver/control_task.rs`) owns
//! the one `ControlPlane` and calls it with `now`; tests call it with a simulated clock.

mod access;
mod admin;
mod allocation;
mod codes;
mod drain;
mod fleet;
mod invariants;
mod membership;
mod migration;
mod observed;
mod paths;
mod ratelimit;
mod record;
mod timers;
mod tokens;
mod types;

pub use crate::auth::Authorization;
pub use drain::DRAIN_SWEEP;
pub use fleet::{MAX_LOCATING, POOL_LOW, POOL_MAX_AGE, POOL_TARGET};
pub use invariants::InvariantViolation;
pub use record::{AdoptError, AllocationRecord, RecordMember, MAX_RECORD_BYTES, RECORD_VERSION};
pub use types::{
    AdminError, AllocationInfo, CloseReason, ConnId, ElectedBy, Event, Input, JoinedVia, Locate,
    Location, MemberInfo, Output, Promotion, Reservation, Secrets,
};

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use baton_protocol::{AllocationId, ClientMessage, CloseCode, ErrorCode, JoinCode, ServerMessage};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::prefix::Prefix;
use crate::{defaults, RelayConfig};
use allocation::Allocation;
use codes::CodeEntry;
use membership::{Conn, ConnState};
use ratelimit::{Bucket, Limit, SWEEP_INTERVAL};
use timers::{Timer, TimerQueue};

/// The relay's control plane. See the module docs for the call order.
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
    /// Failed joins per client (IPv4 address, IPv6 /64) and relay-wide (`ratelimit`).
    join_limit: Limit,
    relay_join_limit: Limit,
    migration_timeout: Duration,
    /// Host-loss timeout of allocations that do not ask for one, and the bounds of what they
    /// ask: [`Self::host_loss_timeout`].
    host_loss_timeout: Duration,
    host_loss_timeout_min: Duration,
    lobby_election_window: Duration,
    max_snapshot: usize,
    snapshot_budget: usize,
    snapshot_bytes: usize,
    /// Whether `PathOffer`s are forwarded (`--allow-direct`).
    allow_direct: bool,
    /// Key for reconnect tokens and migration tickets.
    secret: [u8; 32],
    next_seq: u64,
    /// Migrated allocations' successors, kept for a while so `Rejoin` can follow them.
    successors: HashMap<AllocationId, AllocationId>,
    /// Each live allocation's lineage → the allocation (one per lineage): a `Rejoin` naming a
    /// lineage this node took over (or was handed) finds its latest allocation, whose
    /// migrations happened on another node.
    lineages: HashMap<AllocationId, AllocationId>,

    rng: StdRng,
    conns: HashMap<ConnId, Conn>,
    allocations: HashMap<AllocationId, Allocation>,
    codes: HashMap<JoinCode, CodeEntry>,
    join_buckets: HashMap<Prefix, Bucket>,
    relay_joins: Bucket,
    timers: TimerQueue,
    outputs: VecDeque<Output>,
    /// Connections bound during the current input, told their observed address at its end.
    newly_bound: Vec<ConnId>,
    /// The relay's probe port, told in every `ObservedAddress` (`observed.rs`); 0: none.
    probe_port: u16,
    shutting_down: bool,
    /// Fleet mode's state; `None` on a relay without a directory.
    fleet: Option<fleet::Fleet>,
    /// A draining fleet node's state; `None` unless draining.
    drain: Option<drain::Drain>,
}

/// Counts and state, never the token key or the RNG (whose state would give away every id and
/// code it draws next).
impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("allocations", &self.allocations.len())
            .field("connections", &self.conns.len())
            .field("codes", &self.codes.len())
            .field("successors", &self.successors.len())
            .field("join_buckets", &self.join_buckets.len())
            .field("pending_outputs", &self.outputs.len())
            .field("snapshot_bytes", &self.snapshot_bytes)
            .field("shutting_down", &self.shutting_down)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// A control plane for `config` with `secrets` (tests pass a `u64`, turned into fixed
    /// secrets) and the rate-limit sweep scheduled from `now`.
    pub fn new(config: &RelayConfig, secrets: impl Into<Secrets>, now: Instant) -> Self {
        let secrets = secrets.into();
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
            join_limit: Limit::new(config.join_failure_burst(), config.join_failure_refill()),
            relay_join_limit: Limit::per_second(
                config.relay_join_failure_burst(),
                config.relay_join_failures_per_second(),
            ),
            migration_timeout: config.migration_timeout(),
            host_loss_timeout: config.host_loss_timeout(),
            host_loss_timeout_min: config.host_loss_timeout_min(),
            lobby_election_window: config.lobby_election_window(),
            max_snapshot: config.max_snapshot(),
            snapshot_budget: config.snapshot_budget(),
            snapshot_bytes: 0,
            allow_direct: config.allow_direct(),
            secret: secrets.hmac_key,
            next_seq: 0,
            successors: HashMap::new(),
            lineages: HashMap::new(),
            rng: StdRng::from_seed(secrets.rng_seed),
            conns: HashMap::new(),
            allocations: HashMap::new(),
            codes: HashMap::new(),
            join_buckets: HashMap::new(),
            relay_joins: Bucket::full(
                u32::try_from(config.relay_join_failure_burst()).unwrap_or(u32::MAX),
                now,
            ),
            timers: TimerQueue::default(),
            outputs: VecDeque::new(),
            newly_bound: Vec::new(),
            probe_port: 0,
            shutting_down: false,
            fleet: config.fleet.as_ref().map(|_| fleet::Fleet::new(now)),
            drain: None,
        };
        cp.schedule(now + SWEEP_INTERVAL, Timer::SweepRateLimits);
        cp
    }

    /// The host-loss timeout of an allocation whose host asked for `requested_ms` (0: the
    /// relay's default): clamped into [`host_loss_timeout_min`, keepalive timeout], so a host is
    /// never held to less than the operator allows nor watched past its idle timeout.
    pub(crate) fn host_loss_timeout(&self, requested_ms: u16) -> Duration {
        let asked = match requested_ms {
            0 => self.host_loss_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        asked
            .max(self.host_loss_timeout_min)
            .min(self.keepalive_timeout)
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
        let output = self.outputs.pop_front()?;
        // Fleet mode: a routing change is a membership or host change, which the directory's
        // takeover record must follow. (Exported now, it holds the latest state.)
        if let Output::Route {
            allocation,
            members,
            ..
        } = &output
        {
            if !members.is_empty() {
                if let Some(record) = self.record_to_publish(*allocation) {
                    self.outputs.push_front(Output::Publish { record });
                }
            }
        }
        Some(output)
    }

    /// When [`Self::handle_timeout`] should next be called. May be early (a stale timer),
    /// never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Bytes of snapshots held.
    pub fn snapshot_bytes(&self) -> usize {
        self.snapshot_bytes
    }

    /// Processes one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected { conn, addr } => self.connect(now, conn, addr),
            Input::Request { conn, msg, auth } => self.handle_request(now, conn, msg, &auth),
            Input::Rtt { conn, rtt } => self.record_rtt(conn, rtt),
            Input::Snapshot { conn, data } => self.store_snapshot(conn, data),
            Input::Disconnected { conn, reason } => {
                self.forget_lookup(conn);
                self.handle_disconnect(now, conn, reason)
            }
            Input::Finished { conn } => {
                self.forget_lookup(conn);
                self.control_finished(now, conn)
            }
            Input::CodesClaimed { codes } => self.codes_claimed(now, codes),
            Input::RelocationReady {
                allocation,
                address,
                server_name,
                node,
            } => self.relocation_ready(allocation, address, server_name, node),
            Input::RelocationFailed { allocation } => self.relocation_failed(allocation),
            Input::DirectoryHealth { reachable } => self.directory_health(reachable),
            Input::Located {
                conn,
                request_id,
                location,
            } => self.located(now, conn, request_id, location),
            Input::AddressChanged { conn, addr } => self.address_changed(conn, addr),
        }
        // After the replies that bound them: each new member learns its observed address.
        self.tell_observed();
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.pop_due(now) {
            self.fire(now, timer);
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
        let conns: Vec<ConnId> = self.conns.drain().map(|(conn, _)| conn).collect();
        for conn in &conns {
            self.forget_lookup(*conn);
        }
        for conn in conns {
            // A connection still in its bind window leaves no deadline behind.
            self.cancel(Timer::Bind(conn));
            self.outputs.push_back(Output::Close {
                conn,
                code: CloseCode::RelayShuttingDown,
            });
        }
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

    fn handle_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        msg: ClientMessage,
        auth: &Authorization,
    ) {
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
            (ClientMessage::Kick { .. }, None)
            | (ClientMessage::RevokeCode { .. }, None)
            | (ClientMessage::PathOffer { .. }, None)
            | (ClientMessage::PathReport { .. }, None) => {
                self.refuse(conn, request_id, ErrorCode::NotBound, 0);
            }
            (
                ClientMessage::CreateAllocation {
                    max_peers,
                    code_ttl_secs,
                    host_loss_timeout_ms,
                    ..
                },
                None,
            ) => self.create(
                now,
                conn,
                request_id,
                (max_peers, code_ttl_secs, host_loss_timeout_ms),
                auth,
            ),
            (ClientMessage::Join { code, .. }, None) => {
                self.join(now, conn, request_id, code, auth)
            }
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
            ) => self.rejoin(
                now,
                conn,
                request_id,
                (allocation, peer),
                reconnect_token,
                auth,
            ),
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
            (
                ClientMessage::PathOffer {
                    peer,
                    nat,
                    fingerprint,
                    candidates,
                    ..
                },
                Some(bound),
            ) => self.path_offer(
                now,
                conn,
                request_id,
                bound,
                peer,
                paths::Offer {
                    nat,
                    fingerprint,
                    candidates,
                },
            ),
            (
                ClientMessage::PathReport {
                    peer,
                    outcome,
                    reason,
                    ..
                },
                Some(bound),
            ) => self.path_report(now, conn, request_id, bound, peer, (outcome, reason)),
            // Messages added to the protocol later are refused, not ignored.
            (_, _) => self.refuse(conn, request_id, ErrorCode::InvalidRequest, 0),
        }
    }
}

/// Milliseconds from `now` until `at`, at least 1: the retry hint of a refusal.
fn millis_until(now: Instant, at: Instant) -> u32 {
    let ms = at.saturating_duration_since(now).as_millis();
    u32::try_from(ms).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests;
