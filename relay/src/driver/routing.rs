//! The routing tables the datagram hot path reads: per allocation an [`Allocation`] entry (a
//! [`Table`] of its members' connections sorted by peer id, and its bandwidth cap's bucket), and
//! per bound connection a [`Route`] (its own peer id and its allocation's entry).
//!
//! Only the control task writes them, through [`Tables`], when the control plane reports
//! `Output::Bound` or `Output::Route`; [`forward`](super::forward) reads them lock-free on the
//! lanes through [`ArcSwap`]. Nothing here calls the control plane or touches a socket.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use baton_protocol::{AllocationId, PeerId};

use super::bucket::SharedBucket;
use super::Shared;
use crate::control::ConnId;

/// One member's datagram destination.
pub(super) struct Member {
    pub(super) peer: PeerId,
    pub(super) conn: quinn::Connection,
}

/// An allocation's routing table: its members sorted by peer id.
#[derive(Default)]
pub(super) struct Table {
    pub(super) members: Vec<Member>,
}

impl Table {
    pub(super) fn get(&self, peer: PeerId) -> Option<&quinn::Connection> {
        self.members
            .binary_search_by_key(&peer, |m| m.peer)
            .ok()
            .and_then(|i| self.members.get(i))
            .map(|m| &m.conn)
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
    ) {
        let allocation = self
            .tables
            .entry(allocation)
            .or_insert_with(|| Allocation::new(shared))
            .clone();
        if let Some(c) = shared.conns.get(&conn).map(|c| c.clone()) {
            c.route.store(Some(Arc::new(Route {
                me: peer,
                allocation,
            })));
        }
    }

    /// `allocation`'s membership is now exactly `members`, hosted by `host` (none while it
    /// awaits or migrates to its host); an empty list retires its table. Each member's
    /// connection learns whether it is the host (only the host's snapshot uploads are read).
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
            return;
        }
        let members = members
            .into_iter()
            .filter_map(|(peer, conn)| {
                shared.conns.get(&conn).map(|c| {
                    c.host.store(host == Some(peer), Ordering::Release);
                    Member {
                        peer,
                        conn: c.conn.clone(),
                    }
                })
            })
            .collect();
        self.tables
            .entry(allocation)
            .or_insert_with(|| Allocation::new(shared))
            .table
            .store(Arc::new(Table { members }));
    }
}
