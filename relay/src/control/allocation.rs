//! Allocations: the `Allocation` state (its `Member`s, its `HostSlot`, its code and limits),
//! opening one (`CreateAllocation`, or a lobby reservation through the admin API), binding
//! its host (`bind_host`, also for `ClaimHost`), and closing it (`close_allocation`, the one
//! place an allocation's members, code and routing table are released).
//!
//! Calls `codes` for a fresh code and its tombstone, `membership` to seat the host, `tokens`
//! for the host's reconnect token. Runs wherever the [`ControlPlane`] is called: on the
//! control task, with `now` passed in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_protocol::{
    AllocationId, CloseCode, ErrorCode, JoinCode, LeaveReason, PeerId, ServerMessage,
};
use bytes::Bytes;

use super::codes::{CodeEntry, CodeState};
use super::migration::Migration;
use super::timers::Timer;
use super::{Authorization, CloseReason, ConnId, ControlPlane, Event, JoinedVia, Output};
use crate::crypto;
use baton_protocol::credential::Scope;

/// Who hosts an allocation, or what it waits for to have a host again.
#[derive(Debug)]
pub(super) enum HostSlot {
    /// This member hosts.
    Bound(PeerId),
    /// A lobby reserved the allocation; the host must claim it with the token before the
    /// deadline.
    Awaiting { token: [u8; 16], deadline: Instant },
    /// The host was lost; `elected` must open the successor allocation before `deadline`.
    Migrating(Migration),
    /// Taken over from another node's record (`record`): `host` hosts it again once it
    /// rejoins, if it does before `deadline`; until then joins by code wait.
    Returning { host: PeerId, deadline: Instant },
}

/// One member of an allocation (the host too, as peer 0).
#[derive(Debug)]
pub(super) struct Member {
    pub(super) conn: ConnId,
    pub(super) joined: Instant,
    /// Join order across the relay, the election's tie-breaker.
    pub(super) seq: u64,
    /// Latest RTT sample, the election's first criterion.
    pub(super) rtt: Option<Duration>,
    /// Who it is: its credential's subject (`None` on an open relay or for a claimed host).
    pub(super) subject: Option<Arc<str>>,
}

/// One allocation: a game session the relay forwards for.
#[derive(Debug)]
pub(super) struct Allocation {
    /// The first allocation of a migration chain; reconnect tokens are bound to it, so they
    /// survive migrations.
    pub(super) lineage: AllocationId,
    /// The latest migration snapshot the host uploaded.
    pub(super) snapshot: Option<Bytes>,
    pub(super) code: JoinCode,
    pub(super) code_state: CodeState,
    pub(super) code_expires: Instant,
    pub(super) max_peers: u16,
    pub(super) host: HostSlot,
    pub(super) members: BTreeMap<PeerId, Member>,
    pub(super) next_peer: u16,
    /// Whether `next_peer` has wrapped: from then on every id handed out was handed out
    /// before, so it is issued at a new token generation.
    pub(super) peer_ids_wrapped: bool,
    /// The reconnect-token generation of each peer id whose token was revoked (by a kick, or
    /// because the id was handed out again); every other id is at generation 0. Lineage-wide:
    /// it moves with the allocation to its successor. Bounded: keys are peer ids, at most
    /// 65,535 (0..=0xFFFE; 0xFFFF is the broadcast address and never a member), and an entry
    /// is added only by a kick, which needs a member to kick, or by handing an id out again,
    /// which needs 65,534 joins first; so a lineage holds at most 65,535 entries of 6 bytes
    /// (about 1 MiB at worst with the map's nodes, after at least 65,535 joins).
    pub(super) token_generations: BTreeMap<PeerId, u32>,
    pub(super) created: Instant,
    /// How long its host may be silent before it is lost (SPEC section 11.1); kept across
    /// migrations and takeovers.
    pub(super) host_loss_timeout: Duration,
    /// The allocations of its migration chain between `lineage` and itself, oldest first, at
    /// most [`MAX_ANCESTORS`] (the most recent): a member that missed migrations rejoins by
    /// any of them, on whichever node holds the chain now.
    pub(super) ancestors: Vec<AllocationId>,
    /// Direct-path signalling: pending offers and their rate limits (`paths`).
    pub(super) paths: super::paths::Paths,
}

/// Most ancestors an allocation remembers (a member that missed more migrations than this
/// cannot rejoin).
pub const MAX_ANCESTORS: usize = 16;

impl Allocation {
    /// Every id a `Rejoin` may name for this allocation, but its own: its lineage and its
    /// ancestors.
    pub(super) fn earlier_ids(&self) -> impl Iterator<Item = AllocationId> + '_ {
        std::iter::once(self.lineage).chain(self.ancestors.iter().copied())
    }
}

impl Allocation {
    /// Its host-loss timeout in milliseconds, as `AllocationCreated` and `Joined` carry it
    /// (within the protocol's 16 bits; the configured bounds keep it there unless the keepalive
    /// timeout is above 65 s).
    pub(super) fn host_loss_timeout_ms(&self) -> u16 {
        u16::try_from(self.host_loss_timeout.as_millis()).unwrap_or(u16::MAX)
    }

    /// The hosting member, if one is bound.
    pub(super) fn host_peer(&self) -> Option<PeerId> {
        match self.host {
            HostSlot::Bound(peer) => Some(peer),
            _ => None,
        }
    }

    /// Until when the allocation is between hosts, if it is: a host migration's deadline, or
    /// the deadline for the host of an allocation taken over from a lost node to come back.
    /// Requests that need a host meanwhile are refused `migrating` with the time left.
    pub(super) fn between_hosts_until(&self) -> Option<Instant> {
        match &self.host {
            HostSlot::Migrating(m) => Some(m.deadline),
            HostSlot::Returning { deadline, .. } => Some(*deadline),
            HostSlot::Bound(_) | HostSlot::Awaiting { .. } => None,
        }
    }

    /// Seats taken, counting a reserved host seat.
    fn seats_taken(&self) -> usize {
        self.members.len() + usize::from(matches!(self.host, HostSlot::Awaiting { .. }))
    }

    /// Whether every seat is taken.
    pub(super) fn is_full(&self) -> bool {
        self.seats_taken() >= usize::from(self.max_peers)
    }

    /// The lowest free peer id at or after `next_peer`, wrapping within 1..0xFFFF. An id
    /// handed out again after the wrap gets a new token generation, so no earlier holder's
    /// reconnect token takes over the new holder's seat.
    pub(super) fn assign_peer_id(&mut self) -> Option<PeerId> {
        let span = u32::from(baton_protocol::datagram::BROADCAST) - 1;
        for _ in 0..span {
            let candidate = PeerId(self.next_peer);
            // Before the first wrap, ids at or after `next_peer` were never handed out.
            let reused = self.peer_ids_wrapped;
            self.next_peer = if self.next_peer >= baton_protocol::datagram::BROADCAST - 1 {
                self.peer_ids_wrapped = true;
                1
            } else {
                self.next_peer + 1
            };
            if !self.members.contains_key(&candidate) {
                if reused {
                    self.revoke_token(candidate);
                }
                return Some(candidate);
            }
        }
        None
    }

    /// The generation `peer`'s reconnect token is issued and checked at.
    pub(super) fn token_generation(&self, peer: PeerId) -> u32 {
        self.token_generations.get(&peer).copied().unwrap_or(0)
    }

    /// Revokes `peer`'s reconnect token: its generation goes up, so every token issued
    /// before no longer matches. (A `u32` cannot wrap back: each bump needs a kick or 65,534
    /// joins.)
    pub(super) fn revoke_token(&mut self, peer: PeerId) {
        let generation = self.token_generations.entry(peer).or_insert(0);
        *generation = generation.wrapping_add(1);
    }

    /// The subject `peer` was seated with, if it is a member and has one.
    pub(super) fn subject(&self, peer: PeerId) -> Option<&str> {
        self.members.get(&peer).and_then(|m| m.subject.as_deref())
    }

    /// Every member with its connection, sorted by peer id: the routing table.
    pub(super) fn route(&self) -> Vec<(PeerId, ConnId)> {
        self.members.iter().map(|(p, m)| (*p, m.conn)).collect()
    }
}

impl ControlPlane {
    /// Whether `peer` hosts allocation `id`.
    pub(super) fn is_host(&self, id: AllocationId, peer: PeerId) -> bool {
        self.allocations
            .get(&id)
            .is_some_and(|a| a.host_peer() == Some(peer))
    }

    pub(super) fn create(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        (max_peers, ttl, host_loss_ms): (u16, u32, u16),
        auth: &Authorization,
    ) {
        if !self.authorized(conn, request_id, auth, Scope::permits_create) {
            return;
        }
        if self.is_draining() {
            // This node is emptying: a client goes to another node of the fleet.
            self.refuse(conn, request_id, ErrorCode::ShuttingDown, 0);
            return;
        }
        if self.allocations.len() >= self.max_allocations {
            let max = u32::try_from(self.max_allocations).unwrap_or(u32::MAX);
            self.refuse(conn, request_id, ErrorCode::RelayFull, max);
            return;
        }
        let Some(code) = self.new_code(now) else {
            self.refuse(
                conn,
                request_id,
                ErrorCode::DirectoryUnavailable,
                super::fleet::RETRY_MS,
            );
            return;
        };
        let (id, _) = self.open_allocation(
            now,
            code,
            (max_peers, ttl, host_loss_ms),
            HostSlot::Bound(PeerId::HOST),
        );
        self.bind_host(now, conn, request_id, id, auth.subject());
    }

    pub(super) fn claim_host(
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
        // The host token is the credential; a claimed host has no subject.
        self.bind_host(now, conn, request_id, id, None);
    }

    /// The `AllocationCreated` reply telling `host` it now hosts allocation `id`.
    pub(super) fn created_reply(
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
            reconnect_token: self.reconnect_token(
                alloc.lineage,
                (host, alloc.token_generation(host)),
                alloc.subject(host),
            ),
            host_loss_timeout_ms: alloc.host_loss_timeout_ms(),
        }
    }

    /// Makes `conn` the host (peer 0) of `id` and tells everyone.
    pub(super) fn bind_host(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        id: AllocationId,
        subject: Option<Arc<str>>,
    ) {
        let others: Vec<(PeerId, ConnId)> = match self.allocations.get_mut(&id) {
            Some(alloc) => {
                alloc.host = HostSlot::Bound(PeerId::HOST);
                alloc.route()
            }
            None => return,
        };
        self.cancel(Timer::HostBind(id));
        // Routing first: a member told about the host may send to it at once.
        self.add_member(now, conn, id, PeerId::HOST, JoinedVia::Host, subject);
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

    /// An allocation id no live allocation has.
    pub(super) fn fresh_allocation_id(&mut self) -> AllocationId {
        loop {
            let id = AllocationId::random(&mut self.rng);
            if !self.allocations.contains_key(&id) {
                break id;
            }
        }
    }

    /// Creates an allocation with a fresh id and `code` (from [`Self::new_code`]) and
    /// schedules its code expiry.
    pub(super) fn open_allocation(
        &mut self,
        now: Instant,
        code: JoinCode,
        (max_peers, ttl_secs, host_loss_ms): (u16, u32, u16),
        host: HostSlot,
    ) -> (AllocationId, JoinCode) {
        let host_loss_timeout = self.host_loss_timeout(host_loss_ms);
        let max_peers = match max_peers {
            0 => self.max_peers,
            n => n.clamp(2, self.max_peers),
        };
        let ttl = match ttl_secs {
            0 => self.code_ttl,
            n => Duration::from_secs(u64::from(n)).min(self.code_ttl),
        };
        let id = self.fresh_allocation_id();
        let code_expires = now + ttl;
        self.lineages.insert(id, id);
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
                peer_ids_wrapped: false,
                token_generations: BTreeMap::new(),
                created: now,
                host_loss_timeout,
                ancestors: Vec::new(),
                paths: Default::default(),
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

    /// [`Timer::HostBind`]: a taken-over allocation whose host has not returned by its
    /// deadline loses it; a reserved allocation whose host has not bound by its deadline
    /// closes.
    pub(super) fn host_bind_deadline(&mut self, now: Instant, id: AllocationId) {
        let due = matches!(
            self.allocations.get(&id),
            Some(Allocation { host: HostSlot::Awaiting { deadline, .. }, .. }) if *deadline <= now
        );
        if due {
            self.close_allocation(now, id, CloseReason::HostNeverBound);
            return;
        }
        // A taken-over allocation whose host did not come back: lost, as if it had timed out
        // here, and the members who did come back elect a new one.
        let returning = match self.allocations.get(&id).map(|a| &a.host) {
            Some(HostSlot::Returning { host, deadline }) if *deadline <= now => Some(*host),
            _ => None,
        };
        if let Some(host) = returning {
            if self.relocated_to(id).is_some() {
                // Moved away: whoever has not followed by now is closed here.
                self.close_allocation(now, id, CloseReason::Relocated);
            } else {
                self.lose_host(now, id, host, LeaveReason::TimedOut);
            }
        }
    }

    /// Closes an allocation: every remaining member is closed, its code is tombstoned and its
    /// routing table dropped.
    pub(super) fn close_allocation(&mut self, now: Instant, id: AllocationId, reason: CloseReason) {
        let Some(alloc) = self.allocations.remove(&id) else {
            return;
        };
        for earlier in alloc.earlier_ids() {
            if self.lineages.get(&earlier) == Some(&id) {
                self.lineages.remove(&earlier);
            }
        }
        self.forget_relocation(id);
        self.cancel_allocation_timers(id);
        self.snapshot_bytes -= alloc.snapshot.as_ref().map_or(0, Bytes::len);
        let code = match (reason, &alloc.host) {
            (CloseReason::HostLost(r), _) => CloseCode::HostLost(r),
            (CloseReason::MigrationFailed, HostSlot::Migrating(m)) => CloseCode::HostLost(m.reason),
            (CloseReason::Shutdown | CloseReason::Relocated, _) => CloseCode::RelayShuttingDown,
            _ => CloseCode::AllocationClosed,
        };
        let leave = reason.leave_reason();
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
        if self.code_is_live_for(alloc.code, id) {
            if matches!(reason, CloseReason::Relocated) {
                // It lives on at another node: a join here is looked up and redirected there.
                self.codes.remove(&alloc.code);
            } else {
                self.tombstone(now, alloc.code, ErrorCode::Closed);
            }
        }
        self.outputs.push_back(Output::Route {
            allocation: id,
            members: Vec::new(),
            host: None,
        });
        self.outputs
            .push_back(Output::Event(Event::AllocationClosed {
                allocation: id,
                reason,
            }));
    }
}
