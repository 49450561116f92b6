//! The lifecycle events lobbies receive: [`LobbyEvent`] and its [`LobbyEventKind`] (the JSON
//! shape is in the [module docs](super)), [`Published`] (an event with its JSON, serialized
//! once for every sink), and how event ids and times are made.
//!
//! Plain data: no I/O, no tasks. Built on the relay's control task by
//! [`HookSender::publish`](super::HookSender::publish), read by every sink.

use std::time::{SystemTime, UNIX_EPOCH};

use baton_protocol::{AllocationId, LeaveReason, PeerId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One lifecycle event as lobbies receive it (see the module docs for the JSON shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LobbyEvent {
    /// Unique, increasing id (see the module docs); SSE `id:` and
    /// [`EVENT_ID_HEADER`](super::EVENT_ID_HEADER).
    pub id: u64,
    /// The fleet node that published it (its `--node-id`); absent on a relay standing alone.
    /// In a fleet, `(node, id)` is unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the relay published it, unix milliseconds.
    pub time_ms: u64,
    /// The allocation, 16 hex digits (after a migration, the new allocation).
    pub allocation: String,
    /// The allocation's join code.
    pub join_code: String,
    /// What happened; flattened, so `type` and its fields sit beside the fields above.
    #[serde(flatten)]
    pub kind: LobbyEventKind,
}

/// What happened, tagged by `type` in JSON. Reasons are strings so that lobbies in any language
/// read them and new reasons do not break old lobbies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum LobbyEventKind {
    /// A host opened the allocation, or a lobby reserved it.
    #[serde(rename = "allocation.created")]
    AllocationCreated {},
    /// A member joined; the host binding counts, as peer 0.
    #[serde(rename = "peer.joined")]
    PeerJoined {
        /// Its peer id.
        peer: u16,
        /// Who it is: the subject of the credential it joined with, so the lobby can tell its
        /// players apart; `null` on an open relay and for a lobby-reserved allocation's host.
        #[serde(default)]
        subject: Option<String>,
    },
    /// A member left.
    #[serde(rename = "peer.left")]
    PeerLeft {
        /// Its peer id.
        peer: u16,
        /// A [`LeaveReason`] name.
        reason: String,
    },
    /// The host was lost; exactly one per loss.
    #[serde(rename = "host.disconnected")]
    HostDisconnected {
        /// The lost host's peer id.
        host: u16,
        /// A [`LeaveReason`] name.
        reason: String,
    },
    /// The next host was chosen.
    #[serde(rename = "host.elected")]
    HostElected {
        /// The elected member's peer id.
        host: u16,
        /// Who chose it: `relay` (best RTT, then join order) or `lobby` (admin API override).
        by: String,
    },
    /// The session moved to a new allocation; the event's `allocation` is `to`.
    #[serde(rename = "allocation.migrated")]
    AllocationMigrated {
        /// The old allocation id.
        from: String,
        /// The new allocation id.
        to: String,
        /// The new host's peer id.
        host: u16,
    },
    /// A draining fleet node handed the allocation to another node and told its members to
    /// move there (the allocation keeps its id and code).
    #[serde(rename = "allocation.relocated")]
    AllocationRelocated {
        /// The node it left (the one publishing this event).
        from_node: String,
        /// The node it moved to.
        to_node: String,
    },
    /// The allocation closed and released everything it held.
    #[serde(rename = "allocation.closed")]
    AllocationClosed {
        /// Why, e.g. `host_lost`, `admin`, `shutdown`, `host_never_bound`, `migration_failed`.
        reason: String,
    },
}

pub use crate::control::ElectedBy;

impl LobbyEventKind {
    /// `peer.joined` for `peer`, with its credential's subject if any.
    pub fn peer_joined(peer: PeerId, subject: Option<&str>) -> Self {
        LobbyEventKind::PeerJoined {
            peer: peer.0,
            subject: subject.map(str::to_owned),
        }
    }

    /// `peer.left` for `peer`, with `reason`.
    pub fn peer_left(peer: PeerId, reason: LeaveReason) -> Self {
        LobbyEventKind::PeerLeft {
            peer: peer.0,
            reason: reason.as_str().to_owned(),
        }
    }

    /// `host.disconnected` for `host`, with `reason`.
    pub fn host_disconnected(host: PeerId, reason: LeaveReason) -> Self {
        LobbyEventKind::HostDisconnected {
            host: host.0,
            reason: reason.as_str().to_owned(),
        }
    }

    /// `host.elected`.
    pub fn host_elected(host: PeerId, by: ElectedBy) -> Self {
        LobbyEventKind::HostElected {
            host: host.0,
            by: by.as_str().to_owned(),
        }
    }

    /// `allocation.migrated` from `from` to `to`, hosted by `host`.
    pub fn allocation_migrated(from: AllocationId, to: AllocationId, host: PeerId) -> Self {
        LobbyEventKind::AllocationMigrated {
            from: from.to_string(),
            to: to.to_string(),
            host: host.0,
        }
    }

    /// `allocation.closed` with a stable reason name.
    pub fn allocation_closed(reason: &str) -> Self {
        LobbyEventKind::AllocationClosed {
            reason: reason.to_owned(),
        }
    }

    /// The JSON `type` (and SSE `event:` name).
    pub fn name(&self) -> &'static str {
        match self {
            LobbyEventKind::AllocationCreated {} => "allocation.created",
            LobbyEventKind::PeerJoined { .. } => "peer.joined",
            LobbyEventKind::PeerLeft { .. } => "peer.left",
            LobbyEventKind::HostDisconnected { .. } => "host.disconnected",
            LobbyEventKind::HostElected { .. } => "host.elected",
            LobbyEventKind::AllocationMigrated { .. } => "allocation.migrated",
            LobbyEventKind::AllocationRelocated { .. } => "allocation.relocated",
            LobbyEventKind::AllocationClosed { .. } => "allocation.closed",
        }
    }
}

/// A published event with its JSON, serialized once and shared by every sink.
#[derive(Debug)]
pub struct Published {
    pub(super) event: LobbyEvent,
    pub(super) json: Bytes,
}

impl Published {
    /// The event.
    pub fn event(&self) -> &LobbyEvent {
        &self.event
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.event.id
    }

    /// Its JSON, exactly as webhooks get it (and as it is signed).
    pub fn json(&self) -> &[u8] {
        &self.json
    }
}

pub(super) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first event id of a relay run started at `now` (see the module docs).
pub(super) fn first_id(now: SystemTime) -> u64 {
    unix_millis(now).saturating_mul(1000).max(1)
}
