//! Draining a fleet node: its allocations move to other nodes while their games go on.
//!
//! [`ControlPlane::drain`] stops new allocations here (`shutting_down`) and asks the driver to
//! move each allocation that has a host ([`Output::Relocate`], with its takeover record); the
//! driver picks the least-loaded active node, hands it the allocation in the directory and
//! answers [`Input::RelocationReady`] (or [`Input::RelocationFailed`], retried on the next
//! sweep, every [`DRAIN_SWEEP`]). Every member is then sent `Relocate` to that node: it
//! rejoins there with its reconnect token while it keeps this connection, and leaves here once
//! seated there. Departures from a relocating allocation are not announced to the others (they
//! are all moving); when the last member has left, the allocation closes as `relocated`. A
//! `Join` or `Rejoin` reaching this node for it meanwhile is redirected to the new node.
//!
//! Runs wherever the [`ControlPlane`] is called.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_protocol::{AllocationId, PeerId, ServerMessage};

use super::allocation::HostSlot;
use super::timers::Timer;
use super::{AdminError, CloseReason, ConnId, ControlPlane, Event, Output};

/// How often a draining node looks again for allocations it could not move yet (between
/// hosts, awaiting a host, or no node to move to).
pub const DRAIN_SWEEP: Duration = Duration::from_secs(1);

/// Where an allocation is moving.
#[derive(Debug, Clone)]
pub(super) enum Relocation {
    /// The driver is handing it over.
    Asked,
    /// Handed over: members are told to go to `address`.
    To {
        address: SocketAddr,
        server_name: String,
        /// Members seated at the new node that still receive here (they finished their
        /// control stream here): what the others, not moved yet, send them is delivered.
        moved: BTreeSet<PeerId>,
    },
}

/// A draining node's state.
#[derive(Debug, Default)]
pub(super) struct Drain {
    pub(super) relocations: HashMap<AllocationId, Relocation>,
}

impl ControlPlane {
    /// Starts draining (fleet mode only): no new allocations; every allocation is moved to
    /// another node. Returns how many allocations are left to move. Calling it again only
    /// reports.
    pub fn drain(&mut self, now: Instant) -> Result<usize, AdminError> {
        if !self.in_fleet() {
            return Err(AdminError::NotAFleetNode);
        }
        if self.drain.is_none() {
            self.drain = Some(Drain::default());
            self.outputs.push_back(Output::Draining);
            self.sweep_drain(now);
        }
        Ok(self.allocations.len())
    }

    /// Whether this node is draining.
    pub fn is_draining(&self) -> bool {
        self.drain.is_some()
    }

    /// [`Timer::DrainSweep`] (and the start of a drain): asks to move every allocation that
    /// has a host and is not moving yet, and looks again later while any is left.
    pub(super) fn sweep_drain(&mut self, now: Instant) {
        let Some(drain) = self.drain.as_ref() else {
            return;
        };
        let movable: Vec<AllocationId> = self
            .allocations
            .iter()
            .filter(|(id, a)| {
                matches!(a.host, HostSlot::Bound(_)) && !drain.relocations.contains_key(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in movable {
            let Some(record) = self.record_to_publish(id) else {
                continue;
            };
            if let Some(drain) = self.drain.as_mut() {
                drain.relocations.insert(id, Relocation::Asked);
            }
            self.outputs.push_back(Output::Relocate { record });
        }
        if !self.allocations.is_empty() {
            self.schedule(now + DRAIN_SWEEP, Timer::DrainSweep);
        }
    }

    /// [`Input::RelocationReady`](super::Input::RelocationReady): `id` now belongs to the node
    /// at `address`; its members are told to move there.
    pub(super) fn relocation_ready(
        &mut self,
        id: AllocationId,
        address: SocketAddr,
        server_name: String,
        node: String,
    ) {
        let Some(drain) = self.drain.as_mut() else {
            return;
        };
        if !matches!(drain.relocations.get(&id), Some(Relocation::Asked)) {
            return;
        }
        let Some(alloc) = self.allocations.get_mut(&id) else {
            drain.relocations.remove(&id);
            return;
        };
        // Its members move: offers made here are not completed here.
        alloc.paths.clear();
        drain.relocations.insert(
            id,
            Relocation::To {
                address,
                server_name: server_name.clone(),
                moved: BTreeSet::new(),
            },
        );
        let members = alloc.route();
        for (_, conn) in members {
            self.send(
                conn,
                ServerMessage::Relocate {
                    address,
                    server_name: server_name.clone(),
                },
            );
        }
        self.outputs
            .push_back(Output::Event(Event::AllocationRelocated {
                allocation: id,
                to_node: node,
            }));
    }

    /// [`Input::RelocationFailed`](super::Input::RelocationFailed): tried again on the next
    /// sweep.
    pub(super) fn relocation_failed(&mut self, id: AllocationId) {
        if let Some(drain) = self.drain.as_mut() {
            if matches!(drain.relocations.get(&id), Some(Relocation::Asked)) {
                drain.relocations.remove(&id);
            }
        }
    }

    /// Where `id` has moved to, if it has.
    pub(super) fn relocated_to(&self, id: AllocationId) -> Option<(SocketAddr, String)> {
        match self.drain.as_ref()?.relocations.get(&id)? {
            Relocation::To {
                address,
                server_name,
                ..
            } => Some((*address, server_name.clone())),
            Relocation::Asked => None,
        }
    }

    /// Answers `request_id` with `Redirect` to where `id` moved, if it has; whether it did.
    pub(super) fn redirect_if_relocated(
        &mut self,
        conn: ConnId,
        request_id: u32,
        id: AllocationId,
    ) -> bool {
        let Some((address, server_name)) = self.relocated_to(id) else {
            return false;
        };
        self.send(
            conn,
            ServerMessage::Redirect {
                request_id,
                address,
                server_name,
            },
        );
        true
    }

    /// A member of a relocated allocation left (it is seated on the new node, or gave up): no
    /// one is told, and the allocation closes, as `relocated`, once every member left has
    /// moved. Returns whether it handled the departure.
    pub(super) fn depart_relocated(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: PeerId,
    ) -> bool {
        if self.relocated_to(id).is_none() {
            return false;
        }
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return false;
        };
        alloc.members.remove(&peer);
        if let Some(moved) = self.moved_members(id) {
            moved.remove(&peer);
        }
        if self.close_if_all_moved(now, id) {
            return true;
        }
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return true;
        };
        let host_left = alloc.host_peer() == Some(peer);
        let deadline = now + self.keepalive_timeout;
        if host_left {
            // The host moved; the others are on their way to it. Whoever has not moved by the
            // keepalive timeout is closed (`host_bind_deadline`).
            alloc.host = HostSlot::Returning {
                host: peer,
                deadline,
            };
        }
        let route = alloc.route();
        let host = alloc.host_peer();
        if host_left {
            self.schedule(deadline, Timer::HostBind(id));
        }
        self.outputs.push_back(Output::Route {
            allocation: id,
            members: route,
            host,
        });
        true
    }

    /// [`Input::Finished`](super::Input::Finished) from a member of a relocated allocation: it
    /// is seated at the new node. It stays in the routing table (the host as host), so members
    /// that have not moved yet still reach it here; the allocation closes, as `relocated`, once
    /// every member has moved or left. Returns whether it was such a member.
    pub(super) fn finish_relocated(
        &mut self,
        now: Instant,
        id: AllocationId,
        peer: PeerId,
    ) -> bool {
        let Some(moved) = self.moved_members(id) else {
            return false;
        };
        moved.insert(peer);
        self.close_if_all_moved(now, id);
        true
    }

    /// The moved members of relocated allocation `id`, if it is relocated.
    fn moved_members(&mut self, id: AllocationId) -> Option<&mut BTreeSet<PeerId>> {
        match self.drain.as_mut()?.relocations.get_mut(&id)? {
            Relocation::To { moved, .. } => Some(moved),
            Relocation::Asked => None,
        }
    }

    /// Closes relocated allocation `id`, as `relocated`, if every member left has moved.
    /// Returns whether it did.
    fn close_if_all_moved(&mut self, now: Instant, id: AllocationId) -> bool {
        let all_moved = match (self.relocated_moved(id), self.allocations.get(&id)) {
            (Some(moved), Some(alloc)) => alloc.members.keys().all(|p| moved.contains(p)),
            _ => false,
        };
        if all_moved {
            self.close_allocation(now, id, CloseReason::Relocated);
        }
        all_moved
    }

    /// The moved members of relocated allocation `id`, read-only.
    fn relocated_moved(&self, id: AllocationId) -> Option<&BTreeSet<PeerId>> {
        match self.drain.as_ref()?.relocations.get(&id)? {
            Relocation::To { moved, .. } => Some(moved),
            Relocation::Asked => None,
        }
    }

    /// Forgets a closed allocation's relocation.
    pub(super) fn forget_relocation(&mut self, id: AllocationId) {
        if let Some(drain) = self.drain.as_mut() {
            drain.relocations.remove(&id);
        }
    }
}
