//! Direct paths (SPEC section 17): the values `PathOffer`, `Punch` and `PathReport` carry.
//!
//! Unlike the error, leave and drop codes ([`crate::codes`]), which a client must accept in any
//! value, these are sent by clients and checked by the relay: a value this version does not
//! define makes the message undecodable (a protocol violation, SPEC section 12). The relay only
//! forwards values it decoded, so a client never receives an undefined one either.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// ALPN of a direct QUIC connection between two members (SPEC section 17).
pub const DIRECT_ALPN: &[u8] = b"baton-direct/1";

/// Most candidate addresses one `PathOffer` carries.
pub const MAX_PATH_CANDIDATES: usize = 8;

/// Length of a certificate fingerprint: SHA-256 of the DER certificate.
pub const FINGERPRINT_LEN: usize = 32;

/// How close together the two offers of a pair must be forwarded for the relay to send
/// `Punch` to both members.
pub const OFFER_WINDOW: Duration = Duration::from_secs(10);

/// The largest `Punch.delay_ms` the relay sends.
pub const MAX_PUNCH_DELAY_MS: u16 = 1000;

/// Defines a strict wire enum: each variant has a byte and a stable name, other bytes are
/// refused.
macro_rules! strict_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr => $text:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// The byte on the wire.
            pub fn to_u8(self) -> u8 {
                match self {
                    $( $name::$variant => $value, )*
                }
            }

            /// The variant for a wire byte; `None` for a value this version does not define.
            pub fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }

            /// Stable lower-case name, used in logs and metrics labels.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }

            /// Every variant, in wire order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

strict_enum! {
    /// How the sender's NAT maps its UDP socket, as it measured it (for instance by comparing
    /// the `ObservedAddress` two relays report for one socket).
    pub enum NatKind {
        /// Not measured.
        Unknown = 0 => "unknown",
        /// The same public address and port for every destination ("cone"): hole punching
        /// works.
        EndpointIndependent = 1 => "endpoint_independent",
        /// A different public port per destination ("symmetric"): the candidates another
        /// member learns do not reach it.
        EndpointDependent = 2 => "endpoint_dependent",
    }
}

strict_enum! {
    /// Which path a member ended up using to another member (`PathReport`).
    pub enum PathOutcome {
        /// A direct QUIC connection.
        Direct = 1 => "direct",
        /// The relay.
        Relayed = 2 => "relayed",
    }
}

strict_enum! {
    /// Why a member's path to another member is what it is (`PathReport`). `Direct` goes with
    /// [`PathOutcome::Direct`], every other reason with [`PathOutcome::Relayed`].
    pub enum PathReason {
        /// The direct connection is up.
        Direct = 0 => "direct",
        /// No direct connection came up before the punch timed out.
        PunchTimedOut = 1 => "punch_timed_out",
        /// Both members' NATs are endpoint-dependent; not attempted.
        BothEndpointDependent = 2 => "both_endpoint_dependent",
        /// The game's policy forbids direct paths.
        PolicyNever = 3 => "policy_never",
        /// The relay refused the offer (for example `direct_disabled`).
        RelayDeclined = 4 => "relay_declined",
        /// One side had no candidate address.
        NoCandidates = 5 => "no_candidates",
        /// A direct connection was up and was lost; traffic went back to the relay.
        DirectLost = 6 => "direct_lost",
        /// A direct connection came up but the relay was faster, so traffic stays relayed.
        RelayFaster = 7 => "relay_faster",
    }
}

impl PathReason {
    /// The outcome this reason goes with.
    pub fn outcome(self) -> PathOutcome {
        match self {
            PathReason::Direct => PathOutcome::Direct,
            _ => PathOutcome::Relayed,
        }
    }
}

/// Whether `addr` may be a direct-path candidate: a unicast address (not unspecified, not
/// multicast, not the IPv4 broadcast address) with a port other than 0.
pub fn is_valid_candidate(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != IpAddr::V4(Ipv4Addr::BROADCAST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_others_are_refused() {
        for v in 0..=u8::MAX {
            if let Some(k) = NatKind::from_u8(v) {
                assert_eq!(k.to_u8(), v);
            } else {
                assert!(v > 2);
            }
            if let Some(o) = PathOutcome::from_u8(v) {
                assert_eq!(o.to_u8(), v);
            } else {
                assert!(v == 0 || v > 2);
            }
            if let Some(r) = PathReason::from_u8(v) {
                assert_eq!(r.to_u8(), v);
            } else {
                assert!(v > 7);
            }
        }
        assert_eq!(PathReason::Direct.outcome(), PathOutcome::Direct);
        assert_eq!(PathReason::RelayFaster.outcome(), PathOutcome::Relayed);
    }

    #[test]
    fn candidates_are_unicast_with_a_port() {
        let ok = |s: &str| is_valid_candidate(&s.parse().unwrap());
        assert!(ok("192.0.2.1:5000"));
        assert!(ok("[2001:db8::1]:5000"));
        assert!(!ok("192.0.2.1:0"));
        assert!(!ok("0.0.0.0:5000"));
        assert!(!ok("[::]:5000"));
        assert!(!ok("224.0.0.1:5000"));
        assert!(!ok("[ff02::1]:5000"));
        assert!(!ok("255.255.255.255:5000"));
    }
}
