//! Error, leave, drop and close codes. Each is a `u8` (or a QUIC application error code) on the
//! wire; values this version does not know decode to an `Unknown` variant, never an error, so
//! a newer relay can add codes without breaking older clients.

use std::fmt;

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr => $text:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this protocol version does not define.
            Unknown(u8),
        }

        impl $name {
            /// The byte on the wire.
            pub fn to_u8(self) -> u8 {
                match self {
                    $( $name::$variant => $value, )*
                    $name::Unknown(v) => v,
                }
            }

            /// The variant for a wire byte (unknown values are kept as [`Self::Unknown`]).
            pub fn from_u8(v: u8) -> Self {
                match v {
                    $( $value => $name::$variant, )*
                    other => $name::Unknown(other),
                }
            }

            /// Stable lower-case name, used in logs, metrics labels and JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Unknown(_) => "unknown",
                }
            }

            /// Every defined variant, in wire order (for metrics and tests).
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $name::Unknown(v) => write!(f, "unknown({v})"),
                    other => f.write_str(other.as_str()),
                }
            }
        }
    };
}

wire_enum! {
    /// Why the relay refused a request. Sent in [`crate::ServerMessage::Refused`] with a
    /// `value` whose meaning depends on the code (see each variant).
    pub enum ErrorCode {
        /// No allocation has this join code. `value` = 0.
        NotFound = 1 => "not_found",
        /// The join code existed but its time to live ran out. `value` = 0.
        Expired = 2 => "expired",
        /// The host or the lobby revoked the join code. `value` = 0.
        Revoked = 3 => "revoked",
        /// The allocation has no free seat. `value` = its maximum number of members.
        Full = 4 => "full",
        /// The request lacks a valid credential. `value` = 0.
        Unauthorized = 5 => "unauthorized",
        /// Too many requests from this client. `value` = milliseconds to wait before retrying.
        RateLimited = 6 => "rate_limited",
        /// A datagram was larger than the relay carries. `value` = the payload limit in bytes.
        PayloadTooLarge = 7 => "payload_too_large",
        /// The named peer is not a member of the caller's allocation. `value` = the peer id.
        UnknownPeer = 8 => "unknown_peer",
        /// Only the host may do this. `value` = 0.
        NotHost = 9 => "not_host",
        /// This connection already belongs to an allocation. `value` = 0.
        AlreadyBound = 10 => "already_bound",
        /// The relay holds its maximum number of allocations. `value` = that maximum.
        RelayFull = 11 => "relay_full",
        /// A request field is out of range. `value` = 0.
        InvalidRequest = 12 => "invalid_request",
        /// The relay is shutting down and takes no new work. `value` = 0.
        ShuttingDown = 13 => "shutting_down",
        /// The request needs an allocation and this connection has none. `value` = 0.
        NotBound = 14 => "not_bound",
        /// The allocation this join code belonged to has closed (its host left). `value` = 0.
        Closed = 15 => "closed",
        /// The allocation is migrating to a new host; retry shortly. `value` = milliseconds
        /// until the migration deadline.
        Migrating = 16 => "migrating",
        /// The fleet directory cannot be reached, so this node cannot place new work or find
        /// the node holding a code. `value` = milliseconds after which to retry.
        DirectoryUnavailable = 17 => "directory_unavailable",
        /// The relay does not take part in direct paths (`--allow-direct false`): it refuses
        /// `PathOffer`. `value` = 0.
        DirectDisabled = 18 => "direct_disabled",
    }
}

wire_enum! {
    /// Why a member left an allocation, as told to the others in
    /// [`crate::ServerMessage::PeerLeft`] and to lobbies and metrics.
    pub enum LeaveReason {
        /// It closed its connection (left the game).
        Closed = 1 => "closed",
        /// Nothing was heard from it for the keepalive timeout (10 s by default).
        TimedOut = 2 => "timed_out",
        /// The host removed it.
        Kicked = 3 => "kicked",
        /// Its connection failed for another transport reason (reset, protocol error on the
        /// QUIC layer).
        ConnectionLost = 4 => "connection_lost",
        /// It broke the Baton protocol and was disconnected.
        ProtocolViolation = 5 => "protocol_violation",
        /// The relay is shutting down or draining.
        RelayShuttingDown = 6 => "relay_shutting_down",
        /// An operator closed its allocation.
        AllocationClosed = 7 => "allocation_closed",
        /// Its allocation's host was lost and no member took over in time, so the allocation
        /// closed.
        MigrationFailed = 8 => "migration_failed",
        /// Its allocation was reserved by a lobby and the host never claimed it in time.
        HostNeverBound = 9 => "host_never_bound",
    }
}

wire_enum! {
    /// Why the relay dropped datagrams a client sent, reported in
    /// [`crate::ServerMessage::DatagramsDropped`].
    pub enum DropReason {
        /// Payload above the limit. `value` = the limit in bytes.
        TooLarge = 1 => "too_large",
        /// The destination is not a member of the sender's allocation. `value` = its id.
        UnknownPeer = 2 => "unknown_peer",
        /// The destination's outgoing queue was full. `value` = its id.
        Congested = 3 => "congested",
        /// The sender has not created or joined an allocation yet. `value` = 0.
        NotBound = 4 => "not_bound",
        /// Shorter than the datagram header. `value` = 0.
        Malformed = 5 => "malformed",
        /// Over a rate limit: the sender's datagrams or bytes per second, or its allocation's
        /// bandwidth cap. `value` = that limit (datagrams or bytes per second).
        RateLimited = 6 => "rate_limited",
    }
}

/// Why a QUIC connection was closed, carried as its application error code. The reason phrase
/// is human-readable text and carries no meaning for machines.
///
/// Codes `0x100..=0x1FF` are [`CloseCode::HostLost`] with the host's [`LeaveReason`] in the low
/// byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// A normal close: the client left, or the relay has nothing more to say.
    Normal,
    /// The caller was removed by its host or an operator.
    Kicked,
    /// The relay is shutting down.
    RelayShuttingDown,
    /// The peer broke the Baton protocol (bad frame, bad message order).
    ProtocolViolation,
    /// The client connected but did not create or join an allocation in time.
    BindTimeout,
    /// The caller's allocation was closed by an operator.
    AllocationClosed,
    /// The caller did not read its control stream and the relay's queue for it filled up.
    ControlBacklog,
    /// The client negotiated a retired protocol version (ALPN [`RETIRED_ALPN`](crate::RETIRED_ALPN)).
    UnsupportedVersion,
    /// The relay holds its maximum number of connections (the handshake completed just as it
    /// reached it); retry later.
    RelayFull,
    /// The caller was its allocation's host and the relay heard nothing from it for the
    /// allocation's host-loss timeout, so it treated the host as lost and closed this connection
    /// (the allocation migrates to another member). The client may come back as an ordinary
    /// peer with its reconnect token.
    HostUnresponsive,
    /// The host of the caller's allocation was lost for this reason and the allocation closed.
    HostLost(LeaveReason),
    /// A code this protocol version does not define.
    Unknown(u32),
}

impl CloseCode {
    const HOST_LOST_BASE: u32 = 0x100;

    /// The QUIC application error code.
    pub fn to_u32(self) -> u32 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::Kicked => 1,
            CloseCode::RelayShuttingDown => 2,
            CloseCode::ProtocolViolation => 3,
            CloseCode::BindTimeout => 4,
            CloseCode::AllocationClosed => 5,
            CloseCode::ControlBacklog => 6,
            CloseCode::UnsupportedVersion => 7,
            CloseCode::RelayFull => 8,
            CloseCode::HostUnresponsive => 9,
            CloseCode::HostLost(reason) => Self::HOST_LOST_BASE | u32::from(reason.to_u8()),
            CloseCode::Unknown(v) => v,
        }
    }

    /// Decodes a QUIC application error code.
    pub fn from_u64(v: u64) -> Self {
        let Ok(v) = u32::try_from(v) else {
            return CloseCode::Unknown(u32::MAX);
        };
        match v {
            0 => CloseCode::Normal,
            1 => CloseCode::Kicked,
            2 => CloseCode::RelayShuttingDown,
            3 => CloseCode::ProtocolViolation,
            4 => CloseCode::BindTimeout,
            5 => CloseCode::AllocationClosed,
            6 => CloseCode::ControlBacklog,
            7 => CloseCode::UnsupportedVersion,
            8 => CloseCode::RelayFull,
            9 => CloseCode::HostUnresponsive,
            0x100..=0x1FF => CloseCode::HostLost(LeaveReason::from_u8((v & 0xFF) as u8)),
            other => CloseCode::Unknown(other),
        }
    }

    /// Short human-readable text, sent as the QUIC reason phrase.
    pub fn description(self) -> &'static str {
        match self {
            CloseCode::Normal => "closed",
            CloseCode::Kicked => "kicked",
            CloseCode::RelayShuttingDown => "relay shutting down",
            CloseCode::ProtocolViolation => "protocol violation",
            CloseCode::BindTimeout => "no allocation created or joined in time",
            CloseCode::AllocationClosed => "allocation closed",
            CloseCode::ControlBacklog => "control stream not read",
            CloseCode::UnsupportedVersion => {
                "baton/1 and baton/2 are no longer served; this relay speaks baton/3"
            }
            CloseCode::RelayFull => "relay full",
            CloseCode::HostUnresponsive => "host unresponsive",
            CloseCode::HostLost(_) => "host lost",
            CloseCode::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCode::HostLost(reason) => write!(f, "host lost ({reason})"),
            CloseCode::Unknown(v) => write!(f, "unknown close code {v}"),
            other => f.write_str(other.description()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_codes_round_trip_and_keep_unknown_values() {
        for v in 0..=u8::MAX {
            assert_eq!(ErrorCode::from_u8(v).to_u8(), v);
            assert_eq!(LeaveReason::from_u8(v).to_u8(), v);
            assert_eq!(DropReason::from_u8(v).to_u8(), v);
        }
        assert_eq!(ErrorCode::from_u8(200), ErrorCode::Unknown(200));
        assert_eq!(ErrorCode::Full.as_str(), "full");
    }

    #[test]
    fn close_codes_round_trip() {
        let mut all = vec![
            CloseCode::Normal,
            CloseCode::Kicked,
            CloseCode::RelayShuttingDown,
            CloseCode::ProtocolViolation,
            CloseCode::BindTimeout,
            CloseCode::AllocationClosed,
            CloseCode::ControlBacklog,
            CloseCode::UnsupportedVersion,
            CloseCode::RelayFull,
            CloseCode::HostUnresponsive,
            CloseCode::Unknown(77),
        ];
        all.extend(LeaveReason::ALL.iter().map(|r| CloseCode::HostLost(*r)));
        for code in all {
            assert_eq!(CloseCode::from_u64(u64::from(code.to_u32())), code);
        }
        assert_eq!(
            CloseCode::from_u64(0x102),
            CloseCode::HostLost(LeaveReason::TimedOut)
        );
        assert_eq!(CloseCode::from_u64(9), CloseCode::HostUnresponsive);
        assert_eq!(CloseCode::from_u64(u64::MAX), CloseCode::Unknown(u32::MAX));
    }
}
