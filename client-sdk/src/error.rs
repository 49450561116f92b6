//! Errors and disconnect reasons, and the only places where wire codes and QUIC errors are
//! turned into them: [`refusal`] (relay [`ErrorCode`] → [`Error`]), [`disconnect_reason`]
//! (QUIC [`ConnectionError`] + [`CloseCode`] → [`DisconnectReason`]) and [`handshake_error`]
//! (a failed handshake → [`Error`]).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use baton_protocol::credential::CredentialRefusal;
use baton_protocol::{CloseCode, ErrorCode, JoinCodeError, LeaveReason, PeerId};
use quinn::{ConnectionError, TransportErrorCode};

use crate::tls::VerifyFailure;

/// Everything that can go wrong in the SDK.
///
/// Connecting fails with one of the first group (the relay could not be reached or trusted);
/// creating or joining an allocation and host requests fail with one of the refusal group
/// (the relay said no, and why); an established session fails with
/// [`Error::Disconnected`]; local mistakes are [`Error::PayloadTooLarge`],
/// [`Error::InvalidJoinCode`] and [`Error::Config`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No QUIC connection to the relay could be made: the handshake did not finish within the
    /// connect timeout (wrong address or port, relay down, UDP blocked), the relay refused the
    /// connection, or the network failed.
    #[error("relay {addr} is unreachable: {detail}")]
    RelayUnreachable {
        /// The relay address tried.
        addr: SocketAddr,
        /// What happened.
        detail: String,
    },
    /// The relay's certificate is not the one whose fingerprint was pinned with
    /// [`Trust::Fingerprint`](crate::Trust::Fingerprint): a different relay, a regenerated
    /// development certificate, or someone in between.
    #[error(
        "relay certificate fingerprint {actual} does not match the pinned fingerprint {expected}"
    )]
    CertificateMismatch {
        /// The pinned fingerprint, 64 lower-case hex digits.
        expected: String,
        /// The fingerprint of the certificate the relay presented, 64 lower-case hex digits.
        actual: String,
    },
    /// The relay's certificate failed verification for another reason (unknown issuer, wrong
    /// name, expired, bad handshake signature).
    #[error("relay certificate is not trusted: {0}")]
    UntrustedCertificate(String),
    /// The relay does not speak this SDK's protocol version: ALPN negotiation failed
    /// (TLS alert `no_application_protocol`).
    #[error("the relay does not support this SDK's protocol version (ALPN negotiation failed)")]
    ProtocolVersionMismatch,
    /// A relay of a fleet redirected a join or rejoin in a way the SDK does not follow: the
    /// relay it was redirected to redirected it again (the SDK follows one redirect per
    /// request), or the redirect named the very relay that sent it. The fleet's directory is
    /// inconsistent or the relays are misconfigured; nothing was joined.
    #[error("relay {relay} redirected the request to {target}, which the SDK does not follow (one redirect per request, never back to the same relay)")]
    RedirectLoop {
        /// The relay that sent the redirect not followed.
        relay: SocketAddr,
        /// The address it redirected to.
        target: SocketAddr,
    },
    /// No allocation has this join code.
    #[error("no allocation has this join code")]
    CodeNotFound,
    /// The join code existed but its time to live ran out.
    #[error("the join code has expired")]
    CodeExpired,
    /// The host or the lobby revoked the join code.
    #[error("the join code was revoked")]
    CodeRevoked,
    /// The allocation the join code belonged to has closed (its host left).
    #[error("the allocation has closed")]
    AllocationClosed,
    /// The allocation has no free seat.
    #[error("the allocation is full ({max_peers} members)")]
    AllocationFull {
        /// The allocation's maximum number of members, host included.
        max_peers: u16,
    },
    /// The relay limits how often this client may ask; try again later.
    #[error("rate limited by the relay; retry after {retry_after:?}")]
    RateLimited {
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// The allocation is migrating to a new host; the same request succeeds once it has
    /// (the join code moves to the successor allocation).
    #[error("the allocation is migrating to a new host; retry after {retry_after:?}")]
    Migrating {
        /// At most this long until the migration completes or the next host is elected.
        retry_after: Duration,
    },
    /// The relay refused a host token, migration ticket or reconnect token (or a reconnect
    /// token presented with another player's credential).
    #[error("the relay refused the token or ticket this request carried")]
    Unauthorized,
    /// The relay requires a lobby credential and refused this one (or its absence): missing,
    /// malformed, bad signature, expired, or a scope that does not cover the request. Get a
    /// fresh credential from the lobby.
    #[error("the relay refused the credential: {0}")]
    CredentialRefused(CredentialRefusal),
    /// A relay of a fleet cannot reach the fleet's directory, so it can neither place a new
    /// allocation nor find the relay holding a join code or allocation. Transient: try again
    /// after `retry_after`.
    #[error("the relay cannot reach its fleet directory; retry after {retry_after:?}")]
    DirectoryUnavailable {
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// The relay holds as many allocations as it may.
    #[error("the relay is full ({max} allocations)")]
    RelayFull {
        /// The relay's maximum number of allocations.
        max: u32,
    },
    /// Only the host may do this.
    #[error("only the host may do this")]
    NotHost,
    /// The peer is not a member of this allocation.
    #[error("peer {0} is not a member of this allocation")]
    UnknownPeer(PeerId),
    /// The relay says this connection already belongs to an allocation (an SDK bug or a relay
    /// that lost track).
    #[error("the relay says this connection already belongs to an allocation")]
    AlreadyBound,
    /// The relay says this connection has no allocation (an SDK bug or a relay that lost track).
    #[error("the relay says this connection has no allocation")]
    NotBound,
    /// The relay found a field of the request out of range.
    #[error("the relay rejected the request as invalid")]
    InvalidRequest,
    /// The relay is shutting down and takes no new work.
    #[error("the relay is shutting down")]
    ShuttingDown,
    /// The relay does not allow direct paths between members (it was started with
    /// `--allow-direct false`): datagrams stay relayed.
    #[error("the relay does not allow direct paths")]
    DirectDisabled,
    /// The relay refused with a code this SDK version does not know (every code it knows has
    /// its own variant, e.g. `directory_unavailable` is [`Error::DirectoryUnavailable`]).
    #[error("the relay refused the request with {code} (value {value})")]
    Refused {
        /// The wire code.
        code: ErrorCode,
        /// Its code-specific value.
        value: u32,
    },
    /// The payload is larger than the relay carries. Nothing was sent.
    #[error("payload of {len} bytes exceeds the relay's limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's length (0 when the relay reported the refusal without it).
        len: usize,
        /// The largest payload the relay carries.
        limit: usize,
    },
    /// The host was lost and no member has taken over yet, so there is no host to send to.
    /// Wait for [`Event::HostMigrated`](crate::Event::HostMigrated).
    #[error("the host was lost and a new host is taking over")]
    HostMigrating,
    /// The relay did not answer a control request in time (see
    /// [`ClientConfig::request_timeout`](crate::ClientConfig::request_timeout)).
    #[error("the relay did not answer within {timeout:?}")]
    RequestTimedOut {
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// The connection to the relay has ended; nothing more can be sent or received.
    #[error("disconnected from the relay: {0}")]
    Disconnected(DisconnectReason),
    /// The relay broke the protocol (an undecodable control frame, an unexpected message, no
    /// datagram support, a failed TLS handshake for reasons other than trust).
    #[error("relay protocol error: {0}")]
    Protocol(String),
    /// The join code is malformed; nothing was sent.
    #[error(transparent)]
    InvalidJoinCode(#[from] JoinCodeError),
    /// A [`ClientConfig`](crate::ClientConfig) or
    /// [`AllocationOptions`](crate::AllocationOptions) setting is invalid, or a certificate file
    /// could not be used.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A local I/O error (for example binding the UDP socket).
    #[error("local I/O error: {0}")]
    Io(std::io::Error),
}

// Not `#[from]`: that would also make the I/O error the `source`, and error reporters would print
// its text twice.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// Why a session's connection to the relay ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// This side closed the session ([`Session::close`](crate::Session::close) or drop).
    ClosedLocally,
    /// The relay closed the connection normally.
    ClosedByRelay,
    /// The host (or an operator) removed this client from the allocation.
    Kicked,
    /// The allocation's host was lost for this reason and the allocation closed.
    HostLost(LeaveReason),
    /// The relay is shutting down.
    RelayShuttingDown,
    /// Nothing was heard from the relay for the idle timeout.
    TimedOut,
    /// The relay says this client broke the protocol.
    ProtocolViolation,
    /// The relay sent something this SDK cannot understand; the SDK closed the connection.
    InvalidRelayMessage(String),
    /// The client did not create or join an allocation in time.
    BindTimeout,
    /// An operator closed the allocation.
    AllocationClosed,
    /// The client did not read its control stream and the relay's queue for it filled up.
    ControlBacklog,
    /// The relay no longer serves the protocol version this client negotiated.
    UnsupportedVersion,
    /// The relay holds its maximum number of connections; try again later.
    RelayFull,
    /// This client hosted its allocation and the relay heard nothing from it for the
    /// allocation's host-loss timeout (its network was cut, or the whole process stalled), so
    /// the relay treated it as lost and moved the game to another member. It can come back as
    /// an ordinary peer with [`Peer::rejoin`](crate::Peer::rejoin) and its
    /// [`Session::reconnect_token`](crate::Session::reconnect_token).
    HostUnresponsive,
    /// The connection failed for another reason (network, transport error, unknown close code).
    ConnectionLost(String),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ClosedLocally => f.write_str("closed locally"),
            DisconnectReason::ClosedByRelay => f.write_str("closed by the relay"),
            DisconnectReason::Kicked => f.write_str("kicked"),
            DisconnectReason::HostLost(reason) => write!(f, "host lost ({reason})"),
            DisconnectReason::RelayShuttingDown => f.write_str("relay shutting down"),
            DisconnectReason::TimedOut => f.write_str("timed out"),
            DisconnectReason::ProtocolViolation => {
                f.write_str("the relay reported a protocol violation")
            }
            DisconnectReason::InvalidRelayMessage(detail) => {
                write!(f, "invalid message from the relay: {detail}")
            }
            DisconnectReason::BindTimeout => f.write_str("no allocation created or joined in time"),
            DisconnectReason::AllocationClosed => f.write_str("allocation closed"),
            DisconnectReason::ControlBacklog => f.write_str("control stream not read in time"),
            DisconnectReason::UnsupportedVersion => {
                f.write_str("the relay no longer serves this protocol version")
            }
            DisconnectReason::RelayFull => f.write_str("the relay is full"),
            DisconnectReason::HostUnresponsive => {
                f.write_str("the relay heard nothing from this host in time and moved the game")
            }
            DisconnectReason::ConnectionLost(detail) => write!(f, "connection lost: {detail}"),
        }
    }
}

/// The error for a relay refusal: the one place wire [`ErrorCode`]s become [`Error`]s.
pub(crate) fn refusal(code: ErrorCode, value: u32) -> Error {
    match code {
        ErrorCode::NotFound => Error::CodeNotFound,
        ErrorCode::Expired => Error::CodeExpired,
        ErrorCode::Revoked => Error::CodeRevoked,
        ErrorCode::Full => Error::AllocationFull {
            max_peers: u16::try_from(value).unwrap_or(u16::MAX),
        },
        ErrorCode::Unauthorized => match CredentialRefusal::from_value(value) {
            Some(refusal) => Error::CredentialRefused(refusal),
            // 0, and credential refusals added after this SDK version.
            None if value == 0 => Error::Unauthorized,
            None => Error::Refused { code, value },
        },
        ErrorCode::RateLimited => Error::RateLimited {
            retry_after: Duration::from_millis(u64::from(value)),
        },
        ErrorCode::Migrating => Error::Migrating {
            retry_after: Duration::from_millis(u64::from(value)),
        },
        ErrorCode::DirectoryUnavailable => Error::DirectoryUnavailable {
            retry_after: Duration::from_millis(u64::from(value)),
        },
        ErrorCode::PayloadTooLarge => Error::PayloadTooLarge {
            len: 0,
            limit: value as usize,
        },
        ErrorCode::UnknownPeer => {
            Error::UnknownPeer(PeerId(u16::try_from(value).unwrap_or(u16::MAX)))
        }
        ErrorCode::NotHost => Error::NotHost,
        ErrorCode::AlreadyBound => Error::AlreadyBound,
        ErrorCode::RelayFull => Error::RelayFull { max: value },
        ErrorCode::InvalidRequest => Error::InvalidRequest,
        ErrorCode::ShuttingDown => Error::ShuttingDown,
        ErrorCode::NotBound => Error::NotBound,
        ErrorCode::DirectDisabled => Error::DirectDisabled,
        ErrorCode::Closed => Error::AllocationClosed,
        // Unknown(_) and codes added to the protocol after this SDK version.
        code => Error::Refused { code, value },
    }
}

/// Why a connection ended: the one place QUIC [`ConnectionError`]s and the relay's
/// [`CloseCode`]s become [`DisconnectReason`]s.
pub(crate) fn disconnect_reason(err: &ConnectionError) -> DisconnectReason {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            match CloseCode::from_u64(close.error_code.into_inner()) {
                CloseCode::Normal => DisconnectReason::ClosedByRelay,
                CloseCode::Kicked => DisconnectReason::Kicked,
                CloseCode::RelayShuttingDown => DisconnectReason::RelayShuttingDown,
                CloseCode::ProtocolViolation => DisconnectReason::ProtocolViolation,
                CloseCode::BindTimeout => DisconnectReason::BindTimeout,
                CloseCode::AllocationClosed => DisconnectReason::AllocationClosed,
                CloseCode::ControlBacklog => DisconnectReason::ControlBacklog,
                CloseCode::UnsupportedVersion => DisconnectReason::UnsupportedVersion,
                CloseCode::RelayFull => DisconnectReason::RelayFull,
                CloseCode::HostUnresponsive => DisconnectReason::HostUnresponsive,
                CloseCode::HostLost(reason) => DisconnectReason::HostLost(reason),
                // Unknown(_) and codes added to the protocol after this SDK version.
                code => DisconnectReason::ConnectionLost(format!(
                    "relay closed the connection with {code} ({})",
                    String::from_utf8_lossy(&close.reason)
                )),
            }
        }
        ConnectionError::LocallyClosed => DisconnectReason::ClosedLocally,
        ConnectionError::TimedOut => DisconnectReason::TimedOut,
        ConnectionError::ConnectionClosed(close) => {
            DisconnectReason::ConnectionLost(format!("relay aborted the connection: {close}"))
        }
        ConnectionError::Reset => DisconnectReason::ConnectionLost(
            "relay reset the connection (it may have restarted)".into(),
        ),
        ConnectionError::TransportError(e) => {
            DisconnectReason::ConnectionLost(format!("transport error: {e}"))
        }
        ConnectionError::VersionMismatch => {
            DisconnectReason::ConnectionLost("no common QUIC version".into())
        }
        ConnectionError::CidsExhausted => {
            DisconnectReason::ConnectionLost("connection ids exhausted".into())
        }
    }
}

/// TLS alert `no_application_protocol` (120) as a QUIC error code (RFC 9001 §8.1: 0x178).
fn alpn_failure() -> TransportErrorCode {
    TransportErrorCode::crypto(120)
}

fn is_crypto(code: TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// The error for a handshake that failed. `verify` is what the certificate verifier recorded,
/// which explains a failure quinn only reports as a TLS alert.
pub(crate) fn handshake_error(
    err: &ConnectionError,
    relay: SocketAddr,
    verify: Option<VerifyFailure>,
) -> Error {
    if let Some(failure) = verify {
        return failure.into_error();
    }
    let unreachable = |detail: String| Error::RelayUnreachable {
        addr: relay,
        detail,
    };
    match err {
        // The relay rejected our ALPN, or (a misbehaving server) accepted without choosing one.
        ConnectionError::ConnectionClosed(close) if close.error_code == alpn_failure() => {
            Error::ProtocolVersionMismatch
        }
        ConnectionError::TransportError(e) if e.code == alpn_failure() => {
            Error::ProtocolVersionMismatch
        }
        ConnectionError::ConnectionClosed(close) if is_crypto(close.error_code) => {
            Error::Protocol(format!("relay aborted the TLS handshake: {close}"))
        }
        ConnectionError::TransportError(e) if is_crypto(e.code) => {
            Error::Protocol(format!("TLS handshake failed: {e}"))
        }
        ConnectionError::ConnectionClosed(close)
            if close.error_code == TransportErrorCode::CONNECTION_REFUSED =>
        {
            unreachable("the relay refused the connection (it may be full or shutting down)".into())
        }
        ConnectionError::TimedOut => unreachable("the QUIC handshake timed out".into()),
        ConnectionError::Reset => unreachable("the relay reset the connection".into()),
        ConnectionError::ApplicationClosed(_) => Error::Disconnected(disconnect_reason(err)),
        other => unreachable(format!("handshake failed: {other}")),
    }
}

/// Refuses a payload the relay would not carry.
pub(crate) fn check_payload(len: usize, limit: usize) -> Result<(), Error> {
    if len > limit {
        Err(Error::PayloadTooLarge { len, limit })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quinn::{ApplicationClose, ConnectionClose, VarInt};
    use std::collections::HashSet;
    use std::mem::discriminant;

    #[test]
    fn every_error_code_has_its_own_error() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            let err = refusal(code, 5);
            assert!(
                !matches!(err, Error::Refused { .. }),
                "{code} has no dedicated error variant"
            );
            assert!(
                seen.insert(discriminant(&err)),
                "{code} shares a variant: {err:?}"
            );
        }
        assert!(matches!(
            refusal(ErrorCode::Unknown(200), 9),
            Error::Refused {
                code: ErrorCode::Unknown(200),
                value: 9
            }
        ));
    }

    #[test]
    fn directory_unavailable_carries_its_retry_delay() {
        assert!(matches!(
            refusal(ErrorCode::DirectoryUnavailable, 1500),
            Error::DirectoryUnavailable { retry_after } if retry_after == Duration::from_millis(1500)
        ));
    }

    #[test]
    fn credential_refusals_are_typed() {
        assert!(matches!(
            refusal(ErrorCode::Unauthorized, 0),
            Error::Unauthorized
        ));
        for reason in CredentialRefusal::ALL {
            assert!(matches!(
                refusal(ErrorCode::Unauthorized, reason.value()),
                Error::CredentialRefused(r) if r == reason
            ));
        }
        // A refusal a later relay may add is still an unauthorized refusal, with its value.
        assert!(matches!(
            refusal(ErrorCode::Unauthorized, 99),
            Error::Refused {
                code: ErrorCode::Unauthorized,
                value: 99
            }
        ));
    }

    #[test]
    fn refusal_values_are_interpreted() {
        assert!(matches!(
            refusal(ErrorCode::Full, 8),
            Error::AllocationFull { max_peers: 8 }
        ));
        assert!(matches!(
            refusal(ErrorCode::Full, 1 << 20),
            Error::AllocationFull {
                max_peers: u16::MAX
            }
        ));
        assert!(matches!(
            refusal(ErrorCode::RateLimited, 1500),
            Error::RateLimited { retry_after } if retry_after == Duration::from_millis(1500)
        ));
        assert!(matches!(
            refusal(ErrorCode::UnknownPeer, 3),
            Error::UnknownPeer(PeerId(3))
        ));
        assert!(matches!(
            refusal(ErrorCode::RelayFull, 1000),
            Error::RelayFull { max: 1000 }
        ));
        assert!(matches!(
            refusal(ErrorCode::PayloadTooLarge, 1150),
            Error::PayloadTooLarge {
                len: 0,
                limit: 1150
            }
        ));
        assert!(matches!(
            refusal(ErrorCode::Closed, 0),
            Error::AllocationClosed
        ));
    }

    fn app_close(code: u64) -> ConnectionError {
        ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u64(code).unwrap(),
            reason: Bytes::from_static(b"why"),
        })
    }

    #[test]
    fn close_codes_map_to_disconnect_reasons() {
        let cases = [
            (CloseCode::Normal, DisconnectReason::ClosedByRelay),
            (CloseCode::Kicked, DisconnectReason::Kicked),
            (
                CloseCode::RelayShuttingDown,
                DisconnectReason::RelayShuttingDown,
            ),
            (
                CloseCode::ProtocolViolation,
                DisconnectReason::ProtocolViolation,
            ),
            (CloseCode::BindTimeout, DisconnectReason::BindTimeout),
            (
                CloseCode::AllocationClosed,
                DisconnectReason::AllocationClosed,
            ),
            (CloseCode::ControlBacklog, DisconnectReason::ControlBacklog),
            (
                CloseCode::UnsupportedVersion,
                DisconnectReason::UnsupportedVersion,
            ),
            (CloseCode::RelayFull, DisconnectReason::RelayFull),
            (
                CloseCode::HostUnresponsive,
                DisconnectReason::HostUnresponsive,
            ),
        ];
        for (code, reason) in cases {
            assert_eq!(disconnect_reason(&app_close(code.to_u32().into())), reason);
        }
        for &leave in LeaveReason::ALL {
            let code = CloseCode::HostLost(leave).to_u32();
            assert_eq!(
                disconnect_reason(&app_close(code.into())),
                DisconnectReason::HostLost(leave)
            );
        }
        assert!(matches!(
            disconnect_reason(&app_close(0x77)),
            DisconnectReason::ConnectionLost(d) if d.contains("119") && d.contains("why")
        ));
    }

    #[test]
    fn transport_failures_map_to_disconnect_reasons() {
        assert_eq!(
            disconnect_reason(&ConnectionError::TimedOut),
            DisconnectReason::TimedOut
        );
        assert_eq!(
            disconnect_reason(&ConnectionError::LocallyClosed),
            DisconnectReason::ClosedLocally
        );
        assert!(matches!(
            disconnect_reason(&ConnectionError::Reset),
            DisconnectReason::ConnectionLost(_)
        ));
    }

    fn transport_close(code: TransportErrorCode) -> ConnectionError {
        ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: Bytes::new(),
        })
    }

    #[test]
    fn handshake_failures_are_classified() {
        let relay: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        assert!(matches!(
            handshake_error(
                &transport_close(TransportErrorCode::crypto(0x78)),
                relay,
                None
            ),
            Error::ProtocolVersionMismatch
        ));
        assert!(matches!(
            handshake_error(&ConnectionError::TimedOut, relay, None),
            Error::RelayUnreachable { addr, .. } if addr == relay
        ));
        assert!(matches!(
            handshake_error(
                &transport_close(TransportErrorCode::CONNECTION_REFUSED),
                relay,
                None
            ),
            Error::RelayUnreachable { .. }
        ));
        assert!(matches!(
            handshake_error(
                &transport_close(TransportErrorCode::crypto(40)),
                relay,
                None
            ),
            Error::Protocol(_)
        ));
        // What the verifier recorded wins over the generic alert.
        let mismatch = VerifyFailure::Mismatch {
            expected: [1; 32],
            actual: [2; 32],
        };
        match handshake_error(
            &transport_close(TransportErrorCode::crypto(49)),
            relay,
            Some(mismatch),
        ) {
            Error::CertificateMismatch { expected, actual } => {
                assert_eq!(expected, "01".repeat(32));
                assert_eq!(actual, "02".repeat(32));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            handshake_error(
                &ConnectionError::TimedOut,
                relay,
                Some(VerifyFailure::Untrusted("UnknownIssuer".into()))
            ),
            Error::UntrustedCertificate(d) if d == "UnknownIssuer"
        ));
        assert!(matches!(
            handshake_error(
                &app_close(CloseCode::RelayShuttingDown.to_u32().into()),
                relay,
                None
            ),
            Error::Disconnected(DisconnectReason::RelayShuttingDown)
        ));
    }

    #[test]
    fn payload_limit_is_checked_locally() {
        assert!(check_payload(0, 1150).is_ok());
        assert!(check_payload(1150, 1150).is_ok());
        assert!(matches!(
            check_payload(1151, 1150),
            Err(Error::PayloadTooLarge {
                len: 1151,
                limit: 1150
            })
        ));
    }
}
