//! Allocation records: what another node needs to take an allocation over when the node
//! holding it is lost (or hands it on): its lineage, code and code lifetime, limits, host,
//! members with their subjects, and token generations. Not its snapshot, nor any connection:
//! members come back with `Rejoin` and their reconnect tokens, which verify on every node of a
//! fleet (the token key comes from the fleet secret).
//!
//! [`ControlPlane::export`] writes one (the driver stores it in the directory after every
//! change, as [`Output::Publish`] asks); [`ControlPlane::adopt`] rebuilds the allocation from
//! one, with no member seated and its host awaited as [`HostSlot::Returning`] for the keepalive
//! timeout. Members then rejoin as they reconnect; the host returns as host; if it does not
//! come back in time, the host is lost and the usual election runs among those who did. Until
//! then the data plane holds datagrams addressed to members not back yet ([`Output::Awaiting`]),
//! so what the first members of a moving game send reaches the last ones.
//!
//! Plain data and two pure conversions; runs wherever the [`ControlPlane`] is called.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_protocol::{AllocationId, ErrorCode, JoinCode, PeerId};
use serde::{Deserialize, Serialize};

use super::allocation::{Allocation, HostSlot, MAX_ANCESTORS};
use super::codes::{CodeEntry, CodeState};
use super::timers::Timer;
use super::{ControlPlane, Output};

/// The record format's version; a record of another version is refused.
pub const RECORD_VERSION: u8 = 1;

/// Largest serialized record accepted from the directory, in bytes (a lineage with every
/// peer id's generation bumped is about 1 MiB of JSON).
pub const MAX_RECORD_BYTES: usize = 2 * 1024 * 1024;

/// An allocation as another node needs it to take over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRecord {
    /// [`RECORD_VERSION`].
    pub version: u8,
    /// The allocation's id.
    pub allocation: u64,
    /// Its lineage (the first allocation of its migration chain; tokens are bound to it).
    pub lineage: u64,
    /// Its join code.
    pub code: String,
    /// `active`, `expired` or `revoked`.
    pub code_state: String,
    /// Unix time the code expires at (seconds).
    pub code_expires_unix: u64,
    /// Members at most, host included.
    pub max_peers: u16,
    /// The host's peer id.
    pub host: u16,
    /// Every member and its credential subject.
    pub members: Vec<RecordMember>,
    /// The next peer id to hand out, and whether ids have wrapped.
    pub next_peer: u16,
    /// Whether peer ids have wrapped (every id from now on is handed out again).
    pub peer_ids_wrapped: bool,
    /// Reconnect-token generations of peer ids whose tokens were revoked.
    pub token_generations: Vec<(u16, u32)>,
    /// The allocations of its migration chain between `lineage` and itself, oldest first (at
    /// most [`MAX_ANCESTORS`]): a member that missed migrations rejoins by any of them. Absent
    /// in records written before it existed.
    #[serde(default)]
    pub ancestors: Vec<u64>,
    /// Its host-loss timeout in milliseconds (SPEC section 11.1), clamped again into the
    /// adopting node's bounds. Absent (0) in records written before it existed: the adopting
    /// node's default.
    #[serde(default)]
    pub host_loss_timeout_ms: u16,
}

/// One member in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMember {
    /// Its peer id.
    pub peer: u16,
    /// Its credential's subject, if it had one.
    pub subject: Option<String>,
}

/// Why a record cannot be adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    /// A field is out of range or inconsistent.
    #[error("invalid allocation record: {0}")]
    Invalid(&'static str),
    /// This node already holds the allocation, or its code.
    #[error("allocation or code already held here")]
    Held,
    /// The relay holds its maximum number of allocations.
    #[error("relay full")]
    Full,
}

impl ControlPlane {
    /// The record of allocation `id`, if it has a bound host to record (an allocation that
    /// awaits its first host, or is between hosts, has nothing another node could resume).
    pub fn export(
        &self,
        id: AllocationId,
        now: Instant,
        unix_now: u64,
    ) -> Option<AllocationRecord> {
        let alloc = self.allocations.get(&id)?;
        let host = match alloc.host {
            HostSlot::Bound(peer) | HostSlot::Returning { host: peer, .. } => peer,
            _ => return None,
        };
        let remaining = alloc.code_expires.saturating_duration_since(now).as_secs();
        Some(AllocationRecord {
            version: RECORD_VERSION,
            allocation: id.0,
            lineage: alloc.lineage.0,
            code: alloc.code.to_string(),
            code_state: code_state_name(alloc.code_state).to_owned(),
            code_expires_unix: unix_now.saturating_add(remaining),
            max_peers: alloc.max_peers,
            host: host.0,
            members: alloc
                .members
                .iter()
                .map(|(peer, m)| RecordMember {
                    peer: peer.0,
                    subject: m.subject.as_deref().map(str::to_owned),
                })
                .collect(),
            next_peer: alloc.next_peer,
            peer_ids_wrapped: alloc.peer_ids_wrapped,
            token_generations: alloc
                .token_generations
                .iter()
                .map(|(p, g)| (p.0, *g))
                .collect(),
            ancestors: alloc.ancestors.iter().map(|a| a.0).collect(),
            host_loss_timeout_ms: alloc.host_loss_timeout_ms(),
        })
    }

    /// Rebuilds the allocation `record` describes, with no member seated: its members rejoin
    /// with their reconnect tokens, its host within the keepalive timeout. Returns its id.
    pub fn adopt(
        &mut self,
        now: Instant,
        unix_now: u64,
        record: &AllocationRecord,
    ) -> Result<AllocationId, AdoptError> {
        if record.version != RECORD_VERSION {
            return Err(AdoptError::Invalid("version"));
        }
        let code: JoinCode = record
            .code
            .parse()
            .map_err(|_| AdoptError::Invalid("code"))?;
        let code_state = match record.code_state.as_str() {
            "active" => CodeState::Active,
            "expired" => CodeState::Expired,
            "revoked" => CodeState::Revoked,
            _ => return Err(AdoptError::Invalid("code_state")),
        };
        let broadcast = baton_protocol::datagram::BROADCAST;
        if record.max_peers < 2
            || record.max_peers > self.max_peers
            || record.members.len() > usize::from(record.max_peers)
            || record.host >= broadcast
            || record.next_peer == 0
            || record.next_peer >= broadcast
            || record.token_generations.len() >= usize::from(broadcast)
            || record.ancestors.len() > MAX_ANCESTORS
            || record
                .ancestors
                .iter()
                .any(|a| *a == record.lineage || *a == record.allocation)
            || record.members.iter().any(|m| m.peer >= broadcast)
            || record.members.iter().any(|m| {
                m.subject
                    .as_ref()
                    .is_some_and(|s| s.is_empty() || s.len() > 64)
            })
        {
            return Err(AdoptError::Invalid("limits"));
        }
        let id = AllocationId(record.allocation);
        let mut ancestors: Vec<AllocationId> =
            record.ancestors.iter().copied().map(AllocationId).collect();
        ancestors.dedup();
        if self.allocations.contains_key(&id)
            || self.codes.contains_key(&code)
            || self.lineages.contains_key(&AllocationId(record.lineage))
            || ancestors.iter().any(|a| self.lineages.contains_key(a))
        {
            return Err(AdoptError::Held);
        }
        if self.allocations.len() >= self.max_allocations {
            return Err(AdoptError::Full);
        }
        let remaining = Duration::from_secs(record.code_expires_unix.saturating_sub(unix_now));
        let code_expires = now + remaining.min(self.code_ttl);
        let host = PeerId(record.host);
        let deadline = now + self.keepalive_timeout;
        self.lineages.insert(AllocationId(record.lineage), id);
        for earlier in &ancestors {
            self.lineages.insert(*earlier, id);
        }
        self.allocations.insert(
            id,
            Allocation {
                lineage: AllocationId(record.lineage),
                snapshot: None,
                code,
                code_state,
                code_expires,
                max_peers: record.max_peers,
                host: HostSlot::Returning { host, deadline },
                members: BTreeMap::new(),
                next_peer: record.next_peer,
                peer_ids_wrapped: record.peer_ids_wrapped,
                token_generations: record
                    .token_generations
                    .iter()
                    .map(|(p, g)| (PeerId(*p), *g))
                    .collect(),
                created: now,
                host_loss_timeout: self.host_loss_timeout(record.host_loss_timeout_ms),
                ancestors,
                paths: Default::default(),
            },
        );
        match code_state {
            CodeState::Active => {
                self.codes.insert(code, CodeEntry::Live(id));
                self.schedule(code_expires, Timer::CodeExpiry(id));
            }
            CodeState::Expired => self.tombstone(now, code, ErrorCode::Expired),
            CodeState::Revoked => self.tombstone(now, code, ErrorCode::Revoked),
        }
        self.schedule(deadline, Timer::HostBind(id));
        self.outputs
            .push_back(Output::Event(super::Event::AllocationAdopted {
                allocation: id,
                code,
            }));
        // Datagrams for members on their way are held until they arrive, for as long as the
        // host is awaited.
        let mut peers: Vec<PeerId> = record.members.iter().map(|m| PeerId(m.peer)).collect();
        peers.sort_unstable();
        peers.dedup();
        self.outputs.push_back(Output::Awaiting {
            allocation: id,
            peers,
        });
        self.schedule(deadline, Timer::Awaited(id));
        Ok(id)
    }

    /// [`Timer::Awaited`]: members of adopted allocation `id` that have not rejoined by now
    /// are no longer waited for; datagrams held for them are dropped.
    pub(super) fn awaited_deadline(&mut self, id: AllocationId) {
        if self.allocations.contains_key(&id) {
            self.outputs.push_back(Output::Awaiting {
                allocation: id,
                peers: Vec::new(),
            });
        }
    }
}

/// The record's name of a code state.
fn code_state_name(state: CodeState) -> &'static str {
    match state {
        CodeState::Active => "active",
        CodeState::Expired => "expired",
        CodeState::Revoked => "revoked",
    }
}
