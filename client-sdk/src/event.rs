//! Session events.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use baton_protocol::{AllocationId, DropReason, ErrorCode, JoinCode, LeaveReason, PeerId};
use bytes::Bytes;

use crate::{DisconnectReason, Path};

/// Something that happened to a session, from [`Session::next_event`](crate::Session::next_event).
///
/// [`Event::Disconnected`] is always the last event of a session, and comes exactly once.
///
/// A host migration reads as: [`Event::HostLost`] (on every remaining member, possibly again
/// with another `elected` member if the first one does not take over in time), then
/// [`Event::HostMigrated`], then, on the new host only, one [`Event::PeerRejoined`] per member
/// that moved with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A peer joined the allocation.
    PeerJoined {
        /// Its id.
        peer: PeerId,
    },
    /// A peer left the allocation.
    PeerLeft {
        /// Its id.
        peer: PeerId,
        /// Why it left.
        reason: LeaveReason,
    },
    /// The allocation's host was lost. The game goes on: the relay elected `elected` to take
    /// over (the SDK of that member does so by itself) and [`Event::HostMigrated`] follows.
    /// Until then datagrams between the remaining members keep flowing, and sending to the
    /// host fails with [`Error::HostMigrating`](crate::Error::HostMigrating).
    ///
    /// If the migration fails (no member took over in time) the allocation closes and
    /// [`Event::Disconnected`] with [`DisconnectReason::HostLost`] follows instead. A session
    /// whose connection ends that way without having heard of the loss first gets this event
    /// with `elected: None` just before [`Event::Disconnected`].
    HostLost {
        /// The lost host's peer id.
        host: PeerId,
        /// Why the host left.
        reason: LeaveReason,
        /// The member elected to take over; `None` while the relay waits for a lobby to name
        /// one (a second `HostLost` then names it), or when the allocation closed.
        elected: Option<PeerId>,
    },
    /// The host migration completed: the session now belongs to `allocation`, hosted by
    /// `new_host`. Every peer id is unchanged and the join code still works.
    HostMigrated {
        /// The successor allocation.
        allocation: AllocationId,
        /// The new host's peer id.
        new_host: PeerId,
        /// Whether the new host is this client. Host operations
        /// ([`Session::kick`](crate::Session::kick),
        /// [`Session::upload_snapshot`](crate::Session::upload_snapshot), ...) work from now on.
        you_are_host: bool,
        /// On the new host, the last migration snapshot the old host uploaded (`None` if it
        /// uploaded none); always `None` on the other members.
        snapshot: Option<Bytes>,
    },
    /// A member came back under its old peer id: on every other member when it reconnected
    /// with its reconnect token ([`Peer::rejoin`](crate::Peer::rejoin)); on the new host only,
    /// once per member a host migration moved with it.
    PeerRejoined {
        /// Its id.
        peer: PeerId,
    },
    /// The allocation's join code was revoked by an operator (sent to the host); new joins with
    /// it are refused.
    JoinCodeRevoked {
        /// The revoked code.
        code: JoinCode,
    },
    /// The relay dropped datagrams this client sent. Reported at most once a second per reason.
    DatagramsDropped {
        /// Why.
        reason: DropReason,
        /// Datagrams dropped since the last report for this reason.
        count: u32,
        /// Reason-specific detail (see [`DropReason`]): the size limit, the destination id, or
        /// the rate limit hit ([`DropReason::RateLimited`]).
        value: u32,
    },
    /// The relay refused a snapshot the SDK uploaded in the background
    /// ([`Session::stage_snapshot`](crate::Session::stage_snapshot)); the previous one stays
    /// stored.
    SnapshotRejected {
        /// Why: `payload_too_large` (`value` = the relay's limit in bytes), `not_host` or
        /// `relay_full`.
        code: ErrorCode,
        /// Code-specific detail.
        value: u32,
    },
    /// The session's relay was lost and the session came back through another relay of the
    /// fleet ([`ClientConfig::fallback_relays`](crate::ClientConfig::fallback_relays)), under
    /// the same peer id and role; datagrams flow through `relay` from now on. Informational:
    /// the session goes on. Datagrams sent while it was resuming were dropped
    /// ([`Session::dropped_while_resuming`](crate::Session::dropped_while_resuming)).
    Resumed {
        /// The relay the session is connected to now.
        relay: SocketAddr,
    },
    /// The session's relay is draining (being scaled in or upgraded) and moved the allocation
    /// to another node of its fleet; the session rejoined there while its old connection kept
    /// carrying the game (make-before-break) and now sends and receives through `relay`, under
    /// the same peer id and role. Informational, never an error: the session goes on. If the
    /// new node cannot be reached the session stays on the old relay and no event is queued;
    /// when the old relay finally shuts down the session resumes like after losing its relay
    /// ([`Event::Resumed`], with fallback relays) or ends.
    Relocated {
        /// The relay the session is connected to now.
        relay: SocketAddr,
    },
    /// Datagrams to and from `peer` changed path (only with
    /// [`DirectPolicy::Prefer`](crate::DirectPolicy::Prefer)): [`Path::Direct`] once a direct
    /// QUIC connection between this client and `peer` is up and no slower than the relay,
    /// [`Path::Relayed`] when it failed or became slower (datagrams go on through the relay
    /// without interruption). Informational; [`Session::path`](crate::Session::path) says the
    /// same at any time.
    PathChanged {
        /// The other member: the host on a peer, a peer on the host.
        peer: PeerId,
        /// The path datagrams take now.
        path: Path,
        /// The round-trip time of that path when it changed.
        rtt: Duration,
    },
    /// The connection to the relay ended. Always the last event.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PeerJoined { peer } => write!(f, "peer {peer} joined"),
            Event::PeerLeft { peer, reason } => write!(f, "peer {peer} left ({reason})"),
            Event::HostLost {
                host,
                reason,
                elected: Some(elected),
            } => write!(f, "host {host} lost ({reason}); peer {elected} elected"),
            Event::HostLost {
                host,
                reason,
                elected: None,
            } => write!(f, "host {host} lost ({reason})"),
            Event::HostMigrated {
                allocation,
                new_host,
                you_are_host,
                snapshot,
            } => {
                write!(f, "migrated to allocation {allocation}, host {new_host}")?;
                if *you_are_host {
                    let len = snapshot.as_ref().map_or(0, Bytes::len);
                    write!(f, " (this client, snapshot of {len} bytes)")?;
                }
                Ok(())
            }
            Event::PeerRejoined { peer } => write!(f, "peer {peer} rejoined"),
            Event::JoinCodeRevoked { code } => write!(f, "join code {code} revoked"),
            Event::DatagramsDropped {
                reason,
                count,
                value,
            } => write!(
                f,
                "relay dropped {count} datagrams ({reason}, value {value})"
            ),
            Event::SnapshotRejected { code, value } => {
                write!(f, "snapshot rejected ({code}, value {value})")
            }
            Event::Resumed { relay } => write!(f, "resumed through relay {relay}"),
            Event::Relocated { relay } => write!(f, "relocated to relay {relay}"),
            Event::PathChanged { peer, path, rtt } => {
                write!(f, "path to peer {peer} now {path} (rtt {rtt:?})")
            }
            Event::Disconnected { reason } => write!(f, "disconnected: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_protocol::ServerMessage;

    use super::*;

    /// The event a `DatagramsDropped` frame with drop reason `reason` becomes.
    fn dropped(reason: u8) -> Event {
        let frame = [0x88, reason, 0, 0, 0, 3, 0, 0, 1, 0xf4];
        match ServerMessage::decode(&frame) {
            Ok(ServerMessage::DatagramsDropped {
                reason,
                count,
                value,
            }) => Event::DatagramsDropped {
                reason,
                count,
                value,
            },
            other => panic!("not a drop report: {other:?}"),
        }
    }

    #[test]
    fn rate_limited_drops_are_named_and_unknown_reasons_still_decode() {
        assert_eq!(
            dropped(6),
            Event::DatagramsDropped {
                reason: DropReason::RateLimited,
                count: 3,
                value: 500,
            }
        );
        assert_eq!(
            dropped(6).to_string(),
            "relay dropped 3 datagrams (rate_limited, value 500)"
        );
        assert_eq!(
            dropped(0x42).to_string(),
            "relay dropped 3 datagrams (unknown(66), value 500)"
        );
    }
}
