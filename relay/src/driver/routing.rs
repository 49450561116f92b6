//! The routing tables the datagram hot path reads: per allocation an [`Allocation`] entry (a
//! [`Table`] of its members' connections sorted by peer id, and its bandwidth cap's bucket), and
//! per bound connection a [`Route`] (its own peer id and its allocation's entry).
//!
//! An allocation a node adopted also lists the members it awaits, each with a [`Held`] queue
//! (see [`held`](super::held)): datagrams addressed to them wait there until they arrive.
//!
//! Only the control task writes them, through [`Tables`], when the control plane reports
//! `Output::Bound`, `Output::Route` or `Output::Awaiting`; [`forward`](super::forward) reads
//! them lock-free on the lanes through [`ArcSwap`]. Nothing here calls the control plane; the
//! only datagrams sent from here are those held for a member, when it arrives. A connection
//! that becomes its allocation's host has its host watch woken (`connection::HostWatch`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use baton_protocol::{AllocationId, PeerId};

use super::bucket::SharedBucket;
use super::held::Held;
use super::Shared;
use crate::control::ConnId;

/// One member's datagram destination.
pub(super) struct Member {
    pub(super) peer: PeerId,
    pub(super) conn: quinn::Connection,
}

/// A member on its way: datagrams addressed to it are held until it arrives.
pub(super) struct Awaited {
    pub(super) peer: PeerId,
    pub(super) held: Arc<Held<quinn::Connection>>,
}

/// An allocation's routing table: its members sorted by peer id, and the members it awaits
/// (an adopted allocation's, until they rejoin), sorted by peer id.
#[derive(Default)]
pub(super) struct Table {
    pub(super) members: Vec<Member>,
    pub(super) awaited: Vec<Awaited>,
}

impl Table {
    pub(super) fn get(&self, peer: PeerId) -> Option<&quinn::Connection> {
        self.members
            .binary_search_by_key(&peer, |m| m.peer)
            .ok()
            .and_then(|i| self.members.get(i))
            .map(|m| &m.conn)
    }

    /// The queue of awaited member `peer`, if it is awaited.
    pub(super) fn awaited(&self, peer: PeerId) -> Option<&Held<quinn::Connection>> {
        self.awaited
            .binary_search_by_key(&peer, |a| a.peer)
            .ok()
            .and_then(|i| self.awaited.get(i))
            .map(|a| &*a.held)
    }
}

/// One allocation's routing entry, shared by its members' routes: its table, replaced at each
/// membership change, and its bandwidth cap, which outlives those changes.
pub(super) struct Allocation {
    pub(super) table: ArcSwap<Table>,
    /// Payload bytes its members may have delivered, all together; `None` when uncapped.
    pub(super) bandwidth: Option<SharedBucket>,
}

impl Allocation {
    fn new(shared: &Shared) -> Arc<Allocation> {
        Arc::new(Allocation {
            table: ArcSwap::default(),
            bandwidth: shared.allocation_bytes.map(SharedBucket::new),
        })
    }
}

/// Where a bound connection's datagrams go: its own peer id and its allocation's entry.
pub(super) struct Route {
    pub(super) me: PeerId,
    pub(super) allocation: Arc<Allocation>,
}

/// The write side of every allocation's entry, owned by the control task.
#[derive(Default)]
pub(super) struct Tables {
    tables: HashMap<AllocationId, Arc<Allocation>>,
    /// Per allocation, the members it awaits and their queues (`Output::Awaiting`), until
    /// each arrives or the wait ends.
    awaited: HashMap<AllocationId, BTreeMap<PeerId, Arc<Held<quinn::Connection>>>>,
}

impl Tables {
    /// Connection `conn` joined `allocation` as `peer`: its datagrams now route through the
    /// allocation's table.
    pub(super) fn bind(
        &mut self,
        shared: &Shared,
        conn: ConnId,
        allocation: AllocationId,
        peer: PeerId,
        host_loss_timeout: std::time::Duration,
    ) {
        let allocation = self
            .tables
            .entry(allocation)
            .or_insert_with(|| Allocation::new(shared))
            .clone();
        if let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) {
            c.host_watch.set_timeout(host_loss_timeout);
            c.route.store(Some(Arc::new(Route {
                me: peer,
                allocation,
            })));
        }
    }

    /// `allocation`'s membership is now exactly `members`, hosted by `host` (none while it
    /// awaits or migrates to its host); an empty list retires its table. Each member's
    /// connection learns whether it is the host (only the host's snapshot uploads are read).
    /// An awaited member that is now a member gets what was held for it first.
    pub(super) fn update(
        &mut self,
        shared: &Shared,
        allocation: AllocationId,
        members: Vec<(PeerId, ConnId)>,
        host: Option<PeerId>,
    ) {
        if members.is_empty() {
            if let Some(entry) = self.tables.remove(&allocation) {
                entry.table.store(Arc::new(Table::default()));
            }
            self.abandon(shared, allocation, &[]);
            return;
        }
        let members: Vec<Member> = members
            .into_iter()
            .filter_map(|(peer, conn)| {
                shared.conns.get(&conn).map(|c| {
                    let hosts = host == Some(peer);
                    if hosts && !c.host.swap(true, Ordering::AcqRel) {
                        // Its host watch starts now, with a fresh clock.
                        c.host_watch.became_host();
                    } else if !hosts {
                        c.host.store(false, Ordering::Release);
                    }
                    Member {
                        peer,
                        conn: c.conn.clone(),
                    }
                })
            })
            .collect();
        if let Some(awaited) = self.awaited.get_mut(&allocation) {
            for member in &members {
                if let Some(held) = awaited.remove(&member.peer) {
                    arrive(shared, &held, member.conn.clone());
                }
            }
            if awaited.is_empty() {
                self.awaited.remove(&allocation);
            }
        }
        self.publish(shared, allocation, members);
    }

    /// `allocation` now awaits exactly `peers` (those not already members): datagrams for each
    /// are held until it arrives; what was held for members no longer awaited is dropped.
    pub(super) fn awaiting(&mut self, shared: &Shared, allocation: AllocationId, peers: &[PeerId]) {
        self.abandon(shared, allocation, peers);
        let table = self
            .tables
            .entry(allocation)
            .or_insert_with(|| Allocation::new(shared))
            .table
            .load_full();
        let awaited = self.awaited.entry(allocation).or_default();
        for peer in peers {
            if table.get(*peer).is_none() {
                awaited
                    .entry(*peer)
                    .or_insert_with(|| Arc::new(Held::new(shared.held_budget.clone())));
            }
        }
        if awaited.is_empty() {
            self.awaited.remove(&allocation);
        }
        let members = table
            .members
            .iter()
            .map(|m| Member {
                peer: m.peer,
                conn: m.conn.clone(),
            })
            .collect();
        self.publish(shared, allocation, members);
    }

    /// Drops the queues of `allocation`'s awaited members other than `keep`.
    fn abandon(&mut self, shared: &Shared, allocation: AllocationId, keep: &[PeerId]) {
        let Some(awaited) = self.awaited.get_mut(&allocation) else {
            return;
        };
        awaited.retain(|peer, held| {
            if keep.contains(peer) {
                return true;
            }
            held.abandon(|outcome| outcome.count(&shared.metrics.held));
            false
        });
        if awaited.is_empty() {
            self.awaited.remove(&allocation);
        }
    }

    /// Stores `allocation`'s table: `members` and its awaited members' queues.
    fn publish(&mut self, shared: &Shared, allocation: AllocationId, members: Vec<Member>) {
        let awaited = self
            .awaited
            .get(&allocation)
            .map(|a| {
                a.iter()
                    .map(|(peer, held)| Awaited {
                        peer: *peer,
                        held: held.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.tables
            .entry(allocation)
            .or_insert_with(|| Allocation::new(shared))
            .table
            .store(Arc::new(Table { members, awaited }));
    }
}

/// Awaited member's connection `conn` is seated: what was held for it goes there, in order.
fn arrive(shared: &Shared, held: &Held<quinn::Connection>, conn: quinn::Connection) {
    let now = shared.clock.now();
    held.arrive(
        conn,
        now,
        |conn, datagram| super::forward::deliver_held(shared, conn, datagram),
        |outcome| outcome.count(&shared.metrics.held),
    );
}
