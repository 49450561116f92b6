//! Session events.

use std::fmt;

use baton_protocol::{DropReason, JoinCode, LeaveReason, PeerId};

use crate::DisconnectReason;

/// Something that happened to a session, from [`Session::next_event`](crate::Session::next_event).
///
/// [`Event::Disconnected`] is always the last event of a session, and comes exactly once.
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
    /// The allocation's host was lost and the allocation closed. Followed by
    /// [`Event::Disconnected`] with [`DisconnectReason::HostLost`].
    HostLost {
        /// Why the host left.
        reason: LeaveReason,
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
        /// Reason-specific detail (see [`DropReason`]): the size limit, or the destination id.
        value: u32,
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
            Event::HostLost { reason } => write!(f, "host lost ({reason})"),
            Event::JoinCodeRevoked { code } => write!(f, "join code {code} revoked"),
            Event::DatagramsDropped {
                reason,
                count,
                value,
            } => write!(
                f,
                "relay dropped {count} datagrams ({reason}, value {value})"
            ),
            Event::Disconnected { reason } => write!(f, "disconnected: {reason}"),
        }
    }
}
