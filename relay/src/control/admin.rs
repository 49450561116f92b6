//! The calls the admin API makes (through `RelayHandle`, on behalf of an operator or a
//! lobby): reserve an allocation for a host to claim, revoke a code, close an allocation,
//! read allocations, and name a migrating allocation's next host.
//!
//! Calls `allocation`, `codes` and `migration`; returns [`AdminError`] where the request
//! cannot be met. Runs wherever the [`ControlPlane`] is called: on the control task, which
//! receives the calls from `RelayHandle`, with `now` passed in.

use std::time::Instant;

use baton_protocol::{AllocationId, JoinCode, PeerId, ServerMessage};
use rand::Rng;

use super::allocation::{Allocation, HostSlot};
use super::codes::CodeState;
use super::timers::Timer;
use super::{
    AdminError, AllocationInfo, CloseReason, ControlPlane, MemberInfo, Promotion, Reservation,
};

impl ControlPlane {
    /// Reserves an allocation for a lobby: peers may join by code at once, and the host must
    /// claim it with the returned token within the host bind timeout or it expires.
    pub fn reserve_allocation(
        &mut self,
        now: Instant,
        max_peers: Option<u16>,
    ) -> Result<Reservation, AdminError> {
        if self.shutting_down || self.is_draining() {
            return Err(AdminError::ShuttingDown);
        }
        if self.allocations.len() >= self.max_allocations {
            return Err(AdminError::RelayFull(self.max_allocations));
        }
        let code = self.new_code(now).ok_or(AdminError::DirectoryUnavailable)?;
        let token: [u8; 16] = self.rng.gen();
        let deadline = now + self.host_bind_timeout;
        let (id, code) = self.open_allocation(
            now,
            code,
            (max_peers.unwrap_or(0), 0, 0),
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

    /// Revokes an allocation's join code on an operator's behalf and tells the current host
    /// (after a migration, not peer 0; while migrating or awaiting its host, no one).
    pub fn revoke_code(&mut self, now: Instant, id: AllocationId) -> Result<JoinCode, AdminError> {
        let alloc = self.allocations.get(&id).ok_or(AdminError::NotFound(id))?;
        let code = alloc.code;
        let host = alloc
            .host_peer()
            .and_then(|peer| alloc.members.get(&peer))
            .map(|m| m.conn);
        self.revoke(now, id);
        if let Some(conn) = host {
            self.send(conn, ServerMessage::CodeRevoked { code });
        }
        Ok(code)
    }

    /// Closes an allocation on an operator's behalf; every member is closed with
    /// [`CloseCode::AllocationClosed`](baton_protocol::CloseCode::AllocationClosed).
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
                HostSlot::Returning { host, .. } => Some(host.0),
                HostSlot::Awaiting { .. } => None,
            },
            state: match a.host {
                HostSlot::Bound(_) => "active",
                HostSlot::Awaiting { .. } => "awaiting_host",
                HostSlot::Migrating(_) => "migrating",
                HostSlot::Returning { .. } => "returning",
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
                    subject: m.subject.as_deref().map(str::to_owned),
                })
                .collect(),
            age_secs: now.saturating_duration_since(a.created).as_secs(),
        }
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
}
