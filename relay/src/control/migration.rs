//! Host migration: when an allocation's host is lost (`lose_host`, the one place that
//! reports it), the members stay and a successor host is elected (`elect`: best RTT, then
//! join order, or a lobby's choice within its window), given a ticket and a deadline, and
//! opens the successor allocation (`migrate`), which takes over the roster, the join code and
//! the host's latest snapshot (`store_snapshot`). A missed deadline passes the elected member
//! over; no one left closes the allocation.
//!
//! Calls `allocation` to close, `tokens` for tickets, `membership` to rebind connections.
//! Runs wherever the [`ControlPlane`] is called: on the control task, with `now` passed in.

use std::time::{Duration, Instant};

use baton_protocol::{AllocationId, ErrorCode, LeaveReason, PeerId, ServerMessage};
use bytes::Bytes;

use super::allocation::{HostSlot, MAX_ANCESTORS};
use super::codes::CodeEntry;
use super::timers::Timer;
use super::{CloseReason, ConnId, ControlPlane, ElectedBy, Event, Output};
use crate::crypto;

/// A lost host's allocation on its way to a successor.
#[derive(Debug)]
pub(super) struct Migration {
    pub(super) lost: PeerId,
    pub(super) reason: LeaveReason,
    pub(super) elected: PeerId,
    /// Bumped on every election, so an older ticket or timer is recognisably stale.
    pub(super) epoch: u32,
    pub(super) deadline: Instant,
    /// Members elected before who missed their deadline.
    pub(super) passed_over: Vec<PeerId>,
}

impl ControlPlane {
    /// The host of `id` is gone: the one place a host loss is reported (so it is reported
    /// exactly once), then the migration starts, or the allocation closes if no one is left.
    pub(super) fn lose_host(
        &mut self,
        now: Instant,
        id: AllocationId,
        host: PeerId,
        reason: LeaveReason,
    ) {
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
        self.schedule(now + window, Timer::Migration(id));
    }

    /// A member left a migrating allocation: re-elect if it was the elected one, close if no
    /// one is left.
    pub(super) fn after_departure(&mut self, now: Instant, id: AllocationId, peer: PeerId) {
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

    /// [`Timer::Migration`]: the member elected in the current round (or, in round 0, the
    /// lobby) missed its deadline; it is passed over and the relay elects again.
    pub(super) fn migration_deadline(&mut self, now: Instant, id: AllocationId) {
        let Some(HostSlot::Migrating(m)) = self.allocations.get_mut(&id).map(|a| &mut a.host)
        else {
            return;
        };
        if m.deadline > now {
            return;
        }
        // Epoch 0 is the lobby's window: no one was elected to pass over.
        if m.epoch > 0 {
            m.passed_over.push(m.elected);
        }
        self.elect(now, id, None);
    }

    /// Elects the next host of a migrating allocation: `choice` if a lobby named one, else the
    /// member with the best measured RTT, then the earliest joined, among those not passed
    /// over. Tells every member, and the elected one how to take over (unless the lobby hands
    /// out the ticket itself: `promote` false).
    pub(super) fn elect(&mut self, now: Instant, id: AllocationId, choice: Option<PeerId>) {
        self.elect_and_promote(now, id, choice, true);
    }

    /// [`Self::elect`], sending `Promote` to the elected member only if `promote`.
    pub(super) fn elect_and_promote(
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
        // Moves the previous round's deadline, if any.
        self.schedule(deadline, Timer::Migration(id));
        self.outputs.push_back(Output::Event(Event::HostElected {
            allocation: id,
            host: elected,
            by,
        }));
    }

    /// The elected member opens the successor allocation: the roster, the join code and the
    /// snapshot move over, and only then are the other members told to move.
    pub(super) fn migrate(
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
        // Drawn while `from` is still held, so the successor's id differs from it.
        let to = self.fresh_allocation_id();
        let Some(mut alloc) = self.allocations.remove(&from) else {
            return;
        };
        self.cancel_allocation_timers(from);
        alloc.host = HostSlot::Bound(me);
        // Direct paths start over with the new host.
        alloc.paths.clear();
        alloc.created = now;
        // An active code moves with its expiry; an expired or revoked one has none to wait for.
        if self.code_is_live_for(alloc.code, from) {
            self.codes.insert(alloc.code, CodeEntry::Live(to));
            self.schedule(alloc.code_expires, Timer::CodeExpiry(to));
        }
        self.successors.insert(from, to);
        self.schedule(now + self.tombstone_ttl, Timer::Successor(from));
        let route = alloc.route();
        let snapshot = alloc.snapshot.clone();
        let reply = self.created_reply(now, request_id, to, &alloc, me);
        if from != alloc.lineage {
            alloc.ancestors.push(from);
        }
        if alloc.ancestors.len() > MAX_ANCESTORS {
            let forgotten = alloc.ancestors.remove(0);
            self.lineages.remove(&forgotten);
        }
        for earlier in alloc.earlier_ids() {
            self.lineages.insert(earlier, to);
        }
        self.allocations.insert(to, alloc);
        // Routing first, for everyone, then the new host hears it is bound, then the others
        // are told to move: no one can race into a missing allocation.
        for (peer, c) in &route {
            self.bind_conn(*c, to, *peer);
        }
        self.outputs.push_back(Output::Route {
            allocation: to,
            members: route.clone(),
            host: Some(me),
        });
        self.outputs.push_back(Output::Route {
            allocation: from,
            members: Vec::new(),
            host: None,
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

    /// Stores a host's migration snapshot, replacing the previous one, within the size limit
    /// and the relay-wide budget.
    pub(super) fn store_snapshot(&mut self, conn: ConnId, data: Bytes) {
        let Some((allocation, peer)) = self.binding(conn) else {
            return;
        };
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
}
