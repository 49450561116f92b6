//! The host side: create an allocation and manage it.

use std::ops::Deref;
use std::time::Duration;

use baton_protocol::{ClientMessage, JoinCode};

use crate::session::{self, Bound, Session, BIND_REQUEST_ID};
use crate::{AllocationOptions, ClientConfig, Error};

/// The client that created an allocation (peer id 0): shares a join code and receives peers.
/// Dereferences to [`Session`] for datagrams, events, membership and the host operations
/// ([`Session::kick`], [`Session::revoke_join_code`], [`Session::upload_snapshot`],
/// [`Session::stage_snapshot`]).
///
/// When the host leaves (close, drop, or silence for the allocation's host-loss timeout, 1.5 s
/// by default: [`AllocationOptions::host_loss_timeout`]) the game goes on: the relay elects
/// another member, which takes over with the last uploaded snapshot, and every peer keeps its
/// id ([`Event::HostLost`](crate::Event::HostLost), then
/// [`Event::HostMigrated`](crate::Event::HostMigrated)). With no other member left, the
/// allocation closes.
#[derive(Debug)]
pub struct Host {
    session: Session,
    join_code: JoinCode,
    code_ttl: Duration,
    max_peers: u16,
}

impl Host {
    /// Connects to the relay and creates an allocation with this client as host.
    ///
    /// # Errors
    /// Connection errors ([`Error::RelayUnreachable`], [`Error::CertificateMismatch`],
    /// [`Error::UntrustedCertificate`], [`Error::ProtocolVersionMismatch`]), refusals
    /// ([`Error::RelayFull`], [`Error::CredentialRefused`], [`Error::RateLimited`],
    /// [`Error::InvalidRequest`], [`Error::ShuttingDown`], [`Error::DirectoryUnavailable`]),
    /// [`Error::Config`] for bad `config` or `options`.
    pub async fn create(config: &ClientConfig, options: AllocationOptions) -> Result<Host, Error> {
        let (max_peers, code_ttl_secs, host_loss_timeout_ms) = options.wire_values()?;
        let request = ClientMessage::CreateAllocation {
            request_id: BIND_REQUEST_ID,
            max_peers,
            code_ttl_secs,
            host_loss_timeout_ms,
            credential: config.credential.clone(),
        };
        Self::bind(config, request).await
    }

    /// [`Host::create`] with `credential` instead of the one in `config`.
    ///
    /// # Errors
    /// As for [`Host::create`]; [`Error::CredentialRefused`] if the relay refuses it.
    pub async fn create_with_credential(
        config: &ClientConfig,
        options: AllocationOptions,
        credential: &str,
    ) -> Result<Host, Error> {
        Self::create(&config.clone().credential(credential), options).await
    }

    /// Connects to the relay and becomes the host of an allocation a lobby reserved through
    /// the relay's admin API (`POST /v1/allocations`), proving it with the reservation's host
    /// token. Peers that joined before the host arrived are reported as
    /// [`Event::PeerJoined`](crate::Event::PeerJoined) right away.
    ///
    /// `allocation` is the reservation's 16-hex-digit `allocation_id`, `host_token` its
    /// 32-hex-digit `host_token`.
    ///
    /// # Errors
    /// [`Error::Config`] if either string is malformed; [`Error::Unauthorized`] if the
    /// reservation does not exist, has expired, was already claimed, or the token is wrong
    /// (the relay does not say which); connection errors as for [`Host::create`].
    pub async fn claim(
        config: &ClientConfig,
        allocation: &str,
        host_token: &str,
    ) -> Result<Host, Error> {
        let allocation = allocation.trim().parse().map_err(|_| {
            Error::Config(format!("allocation id {allocation:?} is not 16 hex digits"))
        })?;
        let token = host_token.trim();
        let mut host_token = [0u8; 16];
        if token.len() != 32 || hex::decode_to_slice(token, &mut host_token).is_err() {
            return Err(Error::Config("host token must be 32 hex digits".into()));
        }
        let request = ClientMessage::ClaimHost {
            request_id: BIND_REQUEST_ID,
            allocation,
            host_token,
        };
        Self::bind(config, request).await
    }

    /// Connects and sends `request` (create or claim), expecting `AllocationCreated`.
    async fn bind(config: &ClientConfig, request: ClientMessage) -> Result<Host, Error> {
        let (session, bound) = session::connect(config, request).await?;
        match bound {
            Bound::Created {
                code,
                code_ttl_secs,
                max_peers,
            } => Ok(Host {
                session,
                join_code: code,
                code_ttl: Duration::from_secs(u64::from(code_ttl_secs)),
                max_peers,
            }),
            // `connect` pairs CreateAllocation and ClaimHost with AllocationCreated only.
            Bound::Joined => Err(Error::Protocol(
                "relay answered a host request with Joined".into(),
            )),
        }
    }

    /// The code peers join with, as issued when the allocation was created. It stops working
    /// when it expires ([`Host::code_ttl`]) or is revoked ([`Session::join_code_revoked`]).
    pub fn join_code(&self) -> JoinCode {
        self.join_code
    }

    /// How long the join code was valid for when the allocation was created.
    pub fn code_ttl(&self) -> Duration {
        self.code_ttl
    }

    /// Maximum members of the allocation, host included, as granted by the relay.
    pub fn max_peers(&self) -> u16 {
        self.max_peers
    }

    /// The underlying session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Gives up the wrapper and keeps the session.
    pub fn into_session(self) -> Session {
        self.session
    }
}

impl Deref for Host {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}
