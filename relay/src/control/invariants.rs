//! The control plane's invariants, checked by [`ControlPlane::check_invariants`]: what must
//! hold between any two calls, whatever the inputs and however late the timers fire. The
//! unit tests' harness checks them after every step, and the stateful fuzz target
//! (`relay/fuzz`, target `control_plane`) after every input.
//!
//! Reads the state of every other file of the control plane and changes nothing. Runs
//! wherever the [`ControlPlane`] is called.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use super::allocation::HostSlot;
use super::codes::{CodeEntry, CodeState};
use super::membership::ConnState;
use super::timers::Timer;
use super::ControlPlane;

/// A broken invariant of the control plane: which one, and the state that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("control-plane invariant `{invariant}` violated: {detail}")]
pub struct InvariantViolation {
    /// The invariant, as named in [`ControlPlane::check_invariants`].
    pub invariant: &'static str,
    /// What breaks it.
    pub detail: String,
}

/// Returns an [`InvariantViolation`] of `$invariant` from the enclosing function unless
/// `$cond` holds.
macro_rules! ensure {
    ($cond:expr, $invariant:literal, $($detail:tt)+) => {
        if !$cond {
            return Err(InvariantViolation {
                invariant: $invariant,
                detail: format!($($detail)+),
            });
        }
    };
}

impl ControlPlane {
    /// Checks the control plane's invariants, in time linear in its state (connections,
    /// members, codes, timers):
    ///
    /// - `membership`: every member connection is in exactly one allocation, under the peer
    ///   id that allocation lists it with, and every allocation member's connection maps back
    ///   to that allocation and peer id; no member has the broadcast id;
    /// - `host`: a bound host is a member; a migrating allocation has members, and the member
    ///   it elected (once it has) is one of them; no allocation holds more seats than its
    ///   `max_peers`;
    /// - `codes`: every join code resolves to a live allocation whose active code it is, or
    ///   to a tombstone; every active code resolves to its allocation;
    /// - `timers`: every pending deadline watches live state and is due exactly when that
    ///   state says (no timer is left behind for a closed allocation, a forgotten connection,
    ///   a forgotten tombstone or successor link), and every deadline the state holds is
    ///   pending; the rate-limit sweep is pending;
    /// - `snapshots`: the snapshot-bytes counter is the sum of the stored snapshots, within
    ///   the budget, each non-empty and within the size limit;
    /// - `paths`: every pending direct-path offer and offer bucket names two distinct members,
    ///   one of them the bound host, and every report bucket a member (so each allocation
    ///   holds at most `2 × (members − 1)` of the first two);
    /// - `shutdown`: once shut down, no allocation or connection is held.
    ///
    /// Tests and fuzzing call it after each input; a running relay has no reason to.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check_membership()?;
        self.check_hosts()?;
        self.check_codes()?;
        self.check_timers()?;
        self.check_snapshots()?;
        self.check_paths()?;
        // One entry per earlier id (lineage, ancestors) of each live allocation, to it.
        let earlier: usize = self
            .allocations
            .values()
            .map(|a| a.earlier_ids().count())
            .sum();
        ensure!(
            self.lineages.len() == earlier
                && self
                    .allocations
                    .iter()
                    .all(|(id, a)| a.earlier_ids().all(|e| self.lineages.get(&e) == Some(id))),
            "lineages",
            "the lineage index ({} entries) does not name the {} earlier ids of the {} allocations",
            self.lineages.len(),
            earlier,
            self.allocations.len()
        );
        for conn in self.lookups() {
            ensure!(
                matches!(
                    self.conns.get(&conn).map(|c| &c.state),
                    Some(ConnState::Unbound { .. })
                ),
                "lookups",
                "connection {conn} awaits a directory lookup but is not a known unbound connection"
            );
        }
        ensure!(
            !self.shutting_down || (self.allocations.is_empty() && self.conns.is_empty()),
            "shutdown",
            "{} allocations and {} connections held after shutdown",
            self.allocations.len(),
            self.conns.len()
        );
        Ok(())
    }

    fn check_paths(&self) -> Result<(), InvariantViolation> {
        for (id, alloc) in &self.allocations {
            let host = alloc.host_peer();
            let pairs = alloc
                .paths
                .pending
                .keys()
                .chain(alloc.paths.offer_buckets.keys());
            for (a, b) in pairs {
                ensure!(
                    a != b
                        && alloc.members.contains_key(a)
                        && alloc.members.contains_key(b)
                        && (host == Some(*a) || host == Some(*b)),
                    "paths",
                    "{id} keeps direct-path state for ({a}, {b}), not a host pair of members (host {host:?})"
                );
            }
            for peer in alloc.paths.report_buckets.keys() {
                ensure!(
                    alloc.members.contains_key(peer),
                    "paths",
                    "{id} keeps a report bucket for {peer}, not a member"
                );
            }
        }
        Ok(())
    }

    fn check_membership(&self) -> Result<(), InvariantViolation> {
        for (conn, c) in &self.conns {
            if let ConnState::Member { allocation, peer } = c.state {
                let member = self
                    .allocations
                    .get(&allocation)
                    .and_then(|a| a.members.get(&peer));
                ensure!(
                    member.is_some_and(|m| m.conn == *conn),
                    "membership",
                    "connection {conn} is peer {peer} of {allocation}, which does not list it"
                );
            }
        }
        for (id, alloc) in &self.allocations {
            for (peer, member) in &alloc.members {
                let state = self.conns.get(&member.conn).map(|c| &c.state);
                ensure!(
                    matches!(state, Some(ConnState::Member { allocation, peer: p })
                        if allocation == id && p == peer),
                    "membership",
                    "peer {peer} of {id} is connection {}, which is {state:?}",
                    member.conn
                );
                ensure!(
                    peer.0 != baton_protocol::datagram::BROADCAST,
                    "membership",
                    "{id} has a member with the broadcast id"
                );
            }
        }
        Ok(())
    }

    fn check_hosts(&self) -> Result<(), InvariantViolation> {
        for (id, alloc) in &self.allocations {
            match &alloc.host {
                HostSlot::Bound(peer) => ensure!(
                    alloc.members.contains_key(peer),
                    "host",
                    "{id} is hosted by peer {peer}, which is not a member"
                ),
                HostSlot::Migrating(m) => {
                    ensure!(
                        !alloc.members.is_empty(),
                        "host",
                        "{id} is migrating with no member left"
                    );
                    ensure!(
                        m.epoch == 0 || alloc.members.contains_key(&m.elected),
                        "host",
                        "{id} elected peer {}, which is not a member",
                        m.elected
                    );
                }
                HostSlot::Awaiting { .. } => {}
                HostSlot::Returning { host, .. } => ensure!(
                    !alloc.members.contains_key(host),
                    "host",
                    "{id} awaits its host {host}, which is already a member"
                ),
            }
            let seats =
                alloc.members.len() + usize::from(matches!(alloc.host, HostSlot::Awaiting { .. }));
            ensure!(
                seats <= usize::from(alloc.max_peers),
                "host",
                "{id} holds {seats} seats of {}",
                alloc.max_peers
            );
        }
        Ok(())
    }

    fn check_codes(&self) -> Result<(), InvariantViolation> {
        for (code, entry) in &self.codes {
            if let CodeEntry::Live(id) = entry {
                let alloc = self.allocations.get(id);
                ensure!(
                    alloc.is_some_and(|a| a.code == *code && a.code_state == CodeState::Active),
                    "codes",
                    "code {code} resolves to {id}, which is not live with it active"
                );
            }
        }
        for (id, alloc) in &self.allocations {
            if alloc.code_state == CodeState::Active {
                ensure!(
                    self.code_is_live_for(alloc.code, *id),
                    "codes",
                    "{id}'s active code {} resolves to {:?}",
                    alloc.code,
                    self.codes.get(&alloc.code)
                );
            }
        }
        Ok(())
    }

    fn check_timers(&self) -> Result<(), InvariantViolation> {
        ensure!(
            self.timers.is_consistent(),
            "timers",
            "the queue's two indexes disagree"
        );
        let pending: HashMap<Timer, Instant> =
            self.timers.entries().map(|(at, key)| (key, at)).collect();
        // Each pending timer watches live state and is due when that state says.
        for (&key, &at) in &pending {
            let due = match key {
                Timer::Bind(conn) => match self.conns.get(&conn).map(|c| &c.state) {
                    Some(ConnState::Unbound { deadline }) => Some(*deadline),
                    _ => None,
                },
                Timer::Migration(id) => match self.allocations.get(&id).map(|a| &a.host) {
                    Some(HostSlot::Migrating(m)) => Some(m.deadline),
                    _ => None,
                },
                Timer::Successor(id) => self.successors.contains_key(&id).then_some(at),
                Timer::CodeExpiry(id) => self
                    .allocations
                    .get(&id)
                    .filter(|a| a.code_state == CodeState::Active)
                    .map(|a| a.code_expires),
                Timer::HostBind(id) => match self.allocations.get(&id).map(|a| &a.host) {
                    Some(HostSlot::Awaiting { deadline, .. })
                    | Some(HostSlot::Returning { deadline, .. }) => Some(*deadline),
                    _ => None,
                },
                Timer::Tombstone(code) => match self.codes.get(&code) {
                    Some(CodeEntry::Tombstone { until, .. }) => Some(*until),
                    _ => None,
                },
                Timer::SweepRateLimits => Some(at),
                // Pending while draining (the sweep after the last allocation left finds
                // nothing and stops).
                Timer::DrainSweep => self.drain.is_some().then_some(at),
                // The wait for an adopted allocation's members ends with the allocation at
                // the latest (closing cancels it).
                Timer::Awaited(id) => self.allocations.contains_key(&id).then_some(at),
            };
            ensure!(
                due == Some(at),
                "timers",
                "{key:?} is pending for {at:?}, but what it watches is due at {due:?}"
            );
        }
        // Each deadline the state holds is pending.
        let mut wanted = vec![Timer::SweepRateLimits];
        wanted.extend(self.conns.iter().filter_map(|(conn, c)| {
            matches!(c.state, ConnState::Unbound { .. }).then_some(Timer::Bind(*conn))
        }));
        for (id, alloc) in &self.allocations {
            if alloc.code_state == CodeState::Active {
                wanted.push(Timer::CodeExpiry(*id));
            }
            match alloc.host {
                HostSlot::Awaiting { .. } | HostSlot::Returning { .. } => {
                    wanted.push(Timer::HostBind(*id))
                }
                HostSlot::Migrating(_) => wanted.push(Timer::Migration(*id)),
                HostSlot::Bound(_) => {}
            }
        }
        if self.drain.is_some() && !self.allocations.is_empty() {
            wanted.push(Timer::DrainSweep);
        }
        wanted.extend(self.successors.keys().map(|id| Timer::Successor(*id)));
        wanted.extend(self.codes.iter().filter_map(|(code, entry)| {
            matches!(entry, CodeEntry::Tombstone { .. }).then_some(Timer::Tombstone(*code))
        }));
        for key in wanted {
            ensure!(
                pending.contains_key(&key),
                "timers",
                "{key:?} is not pending"
            );
        }
        Ok(())
    }

    fn check_snapshots(&self) -> Result<(), InvariantViolation> {
        let mut sum = 0usize;
        for (id, alloc) in &self.allocations {
            let len = alloc.snapshot.as_ref().map_or(0, Bytes::len);
            ensure!(
                alloc.snapshot.is_none() || (1..=self.max_snapshot).contains(&len),
                "snapshots",
                "{id} stores a snapshot of {len} bytes (limit {})",
                self.max_snapshot
            );
            sum += len;
        }
        ensure!(
            sum == self.snapshot_bytes,
            "snapshots",
            "the counter says {} bytes, the allocations hold {sum}",
            self.snapshot_bytes
        );
        ensure!(
            sum <= self.snapshot_budget,
            "snapshots",
            "{sum} bytes stored, over the budget of {}",
            self.snapshot_budget
        );
        Ok(())
    }
}
