//! Membership: which connection is which member (`Conn`, `ConnState`), from `Connected`
//! through the bind window to `Join` by code or `Rejoin` with a reconnect token, then `Kick`
//! or disconnect. `add_member` and `remove_member` are the one place the roster changes, so
//! routing (`Output::Bound`, `Output::Route`) is always updated before anyone hears of it.
//!
//! Calls `codes` to resolve a join code, `ratelimit` for failed joins, `tokens` for
//! reconnect tokens, and `migration` when a departure is the host's or the elected member's.
//! Runs wherever the [`ControlPlane`] is called: on the control task, with `now` passed in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_protocol::{
    AllocationId, ClientMessage, CloseCode, ErrorCode, JoinCode, LeaveReason, PeerId, ServerMessage,
};

use super::allocation::{HostSlot, Member};
use super::timers::Timer;
use super::{millis_until, Authorization, ConnId, ControlPlane, Event, JoinedVia, Locate, Output};
use crate::crypto;
use baton_protocol::credential::Scope;

/// Where a connection stands.
#[derive(Debug)]
pub(super) enum ConnState {
    /// Connected, not yet in an allocation; closed at `deadline`.
    Unbound { deadline: Instant },
    /// A member of an allocation.
    Member {
        allocation: AllocationId,
        peer: PeerId,
    },
}

/// A connection the control plane knows.
#[derive(Debug)]
pub(super) struct Conn {
    /// Its remote address (rate limits are per IP); follows the client's rebindings.
    pub(super) addr: SocketAddr,
    pub(super) state: ConnState,
    /// The address last told to the client in `ObservedAddress`; `None` until it is bound.
    pub(super) observed: Option<SocketAddr>,
}

impl ControlPlane {
    /// [`Input::Connected`](super::Input::Connected): a new connection has the bind timeout to
    /// create, claim, join or rejoin an allocation.
    pub(super) fn connect(&mut self, now: Instant, conn: ConnId, addr: SocketAddr) {
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
                observed: None,
            },
        );
        self.schedule(deadline, Timer::Bind(conn));
    }

    /// [`Timer::Bind`]: a connection still unbound at its deadline is closed.
    pub(super) fn bind_deadline(&mut self, now: Instant, conn: ConnId) {
        let due = matches!(
            self.conns.get(&conn),
            Some(Conn { state: ConnState::Unbound { deadline }, .. }) if *deadline <= now
        );
        if due {
            self.conns.remove(&conn);
            self.forget_lookup(conn);
            self.outputs.push_back(Output::Close {
                conn,
                code: CloseCode::BindTimeout,
            });
        }
    }

    /// The allocation and peer id `conn` is bound to, if it is a member.
    pub(super) fn binding(&self, conn: ConnId) -> Option<(AllocationId, PeerId)> {
        match self.conns.get(&conn).map(|c| &c.state) {
            Some(ConnState::Member { allocation, peer }) => Some((*allocation, *peer)),
            _ => None,
        }
    }

    /// [`Input::Rtt`](super::Input::Rtt): keeps a member's latest RTT for the election.
    pub(super) fn record_rtt(&mut self, conn: ConnId, rtt: Duration) {
        if let Some((allocation, peer)) = self.binding(conn) {
            let member = self
                .allocations
                .get_mut(&allocation)
                .and_then(|a| a.members.get_mut(&peer));
            if let Some(member) = member {
                member.rtt = Some(rtt);
            }
        }
    }

    /// `Join`: an unbound connection joins the allocation `code` names, as a new peer.
    pub(super) fn join(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        code: JoinCode,
        auth: &Authorization,
    ) {
        let Some(ip) = self.conns.get(&conn).map(|c| c.addr.ip()) else {
            return;
        };
        if let Err(ms) = self.join_allowed(now, ip) {
            self.refuse(conn, request_id, ErrorCode::RateLimited, ms);
            return;
        }
        // Before the code is looked up, so a client without a valid credential learns nothing
        // about which codes exist. An allocation scope needs the lookup; it is checked after.
        let before_lookup =
            |s: &Scope| matches!(s, Scope::Allocation(_)) || s.permits_join(Some(&code), |_| false);
        if !self.authorized(conn, request_id, auth, before_lookup) {
            self.charge_failed_join(ip);
            return;
        }
        // Only now: anonymous clients refused above can neither spend nor be held up by the
        // relay-wide budget.
        if let Err(ms) = self.relay_join_allowed(now) {
            self.refuse(conn, request_id, ErrorCode::RateLimited, ms);
            return;
        }
        let id = match self.resolve_code(now, code) {
            Ok(id) => id,
            // Perhaps another node of the fleet holds it: charged only if none does.
            Err(ErrorCode::NotFound) if self.in_fleet() => {
                let msg = ClientMessage::Join {
                    request_id,
                    code,
                    credential: None,
                };
                self.locate(conn, (&msg, auth), Locate::Code(code));
                return;
            }
            Err(code) => {
                self.charge_failed_guess(ip);
                self.refuse(conn, request_id, code, 0);
                return;
            }
        };
        let lineage_ok = self.scope_reaches(auth, id);
        if !self.authorized(conn, request_id, auth, |s| {
            s.permits_join(Some(&code), |_| lineage_ok)
        }) {
            self.charge_failed_guess(ip);
            return;
        }
        // Moved to another node (this one drains): the client follows it there.
        if self.redirect_if_relocated(conn, request_id, id) {
            return;
        }
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        // Migrating: the code moves to the successor in a moment, and a retry lands there.
        // Taken over from a lost node: its members come back first, then newcomers.
        let waiting = alloc.between_hosts_until();
        if let Some(deadline) = waiting {
            let ms = millis_until(now, deadline);
            self.refuse(conn, request_id, ErrorCode::Migrating, ms);
            return;
        }
        if alloc.is_full() {
            let max = u32::from(alloc.max_peers);
            self.refuse(conn, request_id, ErrorCode::Full, max);
            return;
        }
        let Some(peer) = alloc.assign_peer_id() else {
            let max = u32::from(alloc.max_peers);
            self.refuse(conn, request_id, ErrorCode::Full, max);
            return;
        };
        self.admit(
            now,
            conn,
            request_id,
            (id, peer),
            JoinedVia::Code,
            auth.subject(),
        );
    }

    /// A client takes back a peer id it held, with its reconnect token, in the allocation it
    /// names or that allocation's successor.
    pub(super) fn rejoin(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        (named, peer): (AllocationId, PeerId),
        token: [u8; 16],
        auth: &Authorization,
    ) {
        // A refused credential is refused before anything is looked up.
        if !self.authorized(conn, request_id, auth, |_| true) {
            return;
        }
        let mut id = named;
        for _ in 0..64 {
            match self.successors.get(&id) {
                Some(next) => id = *next,
                None => break,
            }
        }
        // A lineage this node took over or was handed: its latest allocation (the migrations
        // that led there happened on another node).
        if !self.allocations.contains_key(&id) {
            if let Some(latest) = self.lineages.get(&named) {
                id = *latest;
            }
        }
        let Some(code) = self.allocations.get(&id).map(|a| a.code) else {
            if self.in_fleet() {
                let msg = ClientMessage::Rejoin {
                    request_id,
                    allocation: named,
                    peer,
                    reconnect_token: token,
                    credential: None,
                };
                self.locate(conn, (&msg, auth), Locate::Allocation(named));
            } else {
                self.refuse(conn, request_id, ErrorCode::NotFound, 0);
            }
            return;
        };
        let lineage_ok = self.scope_reaches(auth, id);
        if !self.authorized(conn, request_id, auth, |s| {
            s.permits_rejoin(Some(&code), |_| lineage_ok)
        }) {
            return;
        }
        // Moved to another node (this one drains): the client follows it there.
        if self.redirect_if_relocated(conn, request_id, id) {
            return;
        }
        let subject = auth.subject();
        let Some(alloc) = self.allocations.get(&id) else {
            return;
        };
        let generation = alloc.token_generation(peer);
        let expected = self.reconnect_token(alloc.lineage, (peer, generation), subject.as_deref());
        if !crypto::constant_time_eq(&expected, &token) {
            self.refuse(conn, request_id, ErrorCode::Unauthorized, 0);
            return;
        }
        if let HostSlot::Migrating(m) = &alloc.host {
            let ms = millis_until(now, m.deadline);
            self.refuse(conn, request_id, ErrorCode::Migrating, ms);
            return;
        }
        if alloc.members.contains_key(&peer) {
            // Its old connection has not timed out yet; the client retries after it has.
            self.refuse(conn, request_id, ErrorCode::AlreadyBound, 0);
            return;
        }
        if alloc.is_full() {
            let max = u32::from(alloc.max_peers);
            self.refuse(conn, request_id, ErrorCode::Full, max);
            return;
        }
        if matches!(alloc.host, HostSlot::Returning { host, .. } if host == peer) {
            // The host of a taken-over allocation is back: it hosts again (set first, so the
            // routing table published as it is seated names it host).
            if let Some(alloc) = self.allocations.get_mut(&id) {
                alloc.host = HostSlot::Bound(peer);
            }
            self.cancel(Timer::HostBind(id));
        }
        self.admit(
            now,
            conn,
            request_id,
            (id, peer),
            JoinedVia::Rejoin,
            subject,
        );
    }

    /// Seats `conn` as `peer` of `id` after a join or rejoin, replies `Joined`, and tells the
    /// others: `PeerJoined` for a join by code, `PeerRejoined` for a rejoin. Routing first:
    /// the newcomer and the others may send to each other as soon as told.
    fn admit(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: u32,
        (id, peer): (AllocationId, PeerId),
        via: JoinedVia,
        subject: Option<Arc<str>>,
    ) {
        self.add_member(now, conn, id, peer, via, subject);
        let Some(alloc) = self.allocations.get(&id) else {
            return;
        };
        let others: Vec<(PeerId, ConnId)> = alloc
            .route()
            .into_iter()
            .filter(|(p, _)| *p != peer)
            .collect();
        let joined = ServerMessage::Joined {
            request_id,
            allocation: id,
            peer,
            max_payload: self.max_payload,
            // A reserved allocation's host is peer 0 even before it binds; a taken-over
            // allocation's is the host it awaits.
            host: match alloc.host {
                HostSlot::Bound(host) | HostSlot::Returning { host, .. } => host,
                _ => PeerId::HOST,
            },
            reconnect_token: self.reconnect_token(
                alloc.lineage,
                (peer, alloc.token_generation(peer)),
                alloc.subject(peer),
            ),
            host_loss_timeout_ms: alloc.host_loss_timeout_ms(),
            members: others.iter().map(|(p, _)| *p).collect(),
        };
        self.send(conn, joined);
        for (_, other) in others {
            let news = match via {
                JoinedVia::Rejoin => ServerMessage::PeerRejoined { peer },
                JoinedVia::Code | JoinedVia::Host => ServerMessage::PeerJoined { peer },
            };
            self.send(other, news);
        }
    }

    /// Adds `conn` as `peer` of `id`, installs routing and reports the join. The caller sends
    /// the replies afterwards, so routing is in place before anyone hears of the member.
    pub(super) fn add_member(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: AllocationId,
        peer: PeerId,
        via: JoinedVia,
        subject: Option<Arc<str>>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        // A bound connection is past any lookup it was waiting for.
        self.forget_lookup(conn);
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
                subject: subject.clone(),
            },
        );
        let route = alloc.route();
        let host = alloc.host_peer();
        self.bind_conn(conn, id, peer);
        self.outputs.push_back(Output::Route {
            allocation: id,
            members: route,
            host,
        });
        self.outputs.push_back(Output::Event(Event::PeerJoined {
            allocation: id,
            peer,
            via,
            subject,
        }));
    }

    /// Records `conn` as `peer` of `allocation` and points its datagram routing there.
    pub(super) fn bind_conn(&mut self, conn: ConnId, allocation: AllocationId, peer: PeerId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Member { allocation, peer };
        }
        self.cancel(Timer::Bind(conn));
        self.newly_bound.push(conn);
        let host_loss_timeout = self
            .allocations
            .get(&allocation)
            .map_or(self.host_loss_timeout, |a| a.host_loss_timeout);
        self.outputs.push_back(Output::Bound {
            conn,
            allocation,
            peer,
            host_loss_timeout,
        });
    }

    /// Removes a member that is already gone from `conns` and tells the others.
    pub(super) fn remove_member(
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
        // Its pending offers and rate limits go with it.
        alloc.paths.forget(peer);
        let route = alloc.route();
        let host = alloc.host_peer().filter(|h| *h != peer);
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
                host,
            });
            return;
        }
        for (_, other) in &route {
            self.send(*other, ServerMessage::PeerLeft { peer, reason });
        }
        self.outputs.push_back(Output::Route {
            allocation: id,
            members: route,
            host,
        });
    }

    /// `Kick`: the host removes another member; its connection is closed and its reconnect
    /// token revoked, so it can come back only by code, as a new peer.
    pub(super) fn kick(
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
        let Some(alloc) = self.allocations.get_mut(&id) else {
            return;
        };
        let Some(target_conn) = alloc.members.get(&target).map(|m| m.conn) else {
            self.refuse(
                conn,
                request_id,
                ErrorCode::UnknownPeer,
                u32::from(target.0),
            );
            return;
        };
        alloc.revoke_token(target);
        self.conns.remove(&target_conn);
        self.outputs.push_back(Output::Close {
            conn: target_conn,
            code: CloseCode::Kicked,
        });
        self.remove_member(now, id, target, LeaveReason::Kicked);
        self.send(conn, ServerMessage::Done { request_id });
    }

    /// [`Input::Finished`](super::Input::Finished): the client ended its session by finishing its control stream; it
    /// leaves (reason `closed`) and its connection is closed normally. A member of a relocated
    /// allocation has moved instead (`finish_relocated`).
    pub(super) fn control_finished(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let ConnState::Member { allocation, peer } = c.state {
            if self.finish_relocated(now, allocation, peer) {
                return;
            }
        }
        self.handle_disconnect(now, conn, LeaveReason::Closed);
        self.outputs.push_back(Output::Close {
            conn,
            code: CloseCode::Normal,
        });
    }

    /// [`Input::Disconnected`](super::Input::Disconnected): a member's departure is reported
    /// to the others; the host's starts a migration.
    pub(super) fn handle_disconnect(&mut self, now: Instant, conn: ConnId, reason: LeaveReason) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.cancel(Timer::Bind(conn));
        if let ConnState::Member { allocation, peer } = c.state {
            if self.depart_relocated(now, allocation, peer) {
                return;
            }
            let is_host = self.is_host(allocation, peer);
            self.remove_member(now, allocation, peer, reason);
            if is_host {
                self.lose_host(now, allocation, peer, reason);
            } else {
                self.after_departure(now, allocation, peer);
            }
        }
    }
}
