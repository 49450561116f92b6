//! The peer side: join an allocation by its code.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use baton_protocol::{AllocationId, ClientMessage, JoinCode, JoinCodeError, PeerId};

use crate::session::{self, retry_while_migrating, Bound, Session, BIND_REQUEST_ID};
use crate::{ClientConfig, Error};

/// Something that names a join code: a [`JoinCode`] or text to parse as one
/// (case-insensitive, surrounding whitespace ignored).
pub trait IntoJoinCode {
    /// The join code, or why the text is not one.
    fn into_join_code(self) -> Result<JoinCode, JoinCodeError>;
}

impl IntoJoinCode for JoinCode {
    fn into_join_code(self) -> Result<JoinCode, JoinCodeError> {
        Ok(self)
    }
}

impl IntoJoinCode for &JoinCode {
    fn into_join_code(self) -> Result<JoinCode, JoinCodeError> {
        Ok(*self)
    }
}

impl IntoJoinCode for &str {
    fn into_join_code(self) -> Result<JoinCode, JoinCodeError> {
        JoinCode::parse(self)
    }
}

impl IntoJoinCode for String {
    fn into_join_code(self) -> Result<JoinCode, JoinCodeError> {
        JoinCode::parse(&self)
    }
}

impl IntoJoinCode for &String {
    fn into_join_code(self) -> Result<JoinCode, JoinCodeError> {
        JoinCode::parse(self)
    }
}

/// A member of an allocation that joined by code (or came back with its reconnect token).
/// Dereferences to [`Session`] for datagrams, events, membership and, should it be elected in
/// a host migration, the host operations.
#[derive(Debug)]
pub struct Peer {
    session: Session,
}

impl Peer {
    /// Connects to the relay and joins the allocation `code` names. While the allocation is
    /// migrating to a new host the relay answers "retry shortly"; the SDK retries for
    /// [`ClientConfig::migration_retry`] and then joins the successor. A relay of a fleet that
    /// does not hold the allocation redirects the join to the relay that does; the SDK follows
    /// (once), and the session is the other relay's.
    ///
    /// # Errors
    /// [`Error::InvalidJoinCode`] (nothing is sent), connection errors
    /// ([`Error::RelayUnreachable`], [`Error::CertificateMismatch`],
    /// [`Error::UntrustedCertificate`], [`Error::ProtocolVersionMismatch`]), refusals
    /// ([`Error::CodeNotFound`], [`Error::CodeExpired`], [`Error::CodeRevoked`],
    /// [`Error::AllocationClosed`], [`Error::AllocationFull`], [`Error::RateLimited`],
    /// [`Error::CredentialRefused`], [`Error::ShuttingDown`], [`Error::Migrating`] once the retry
    /// window is over, [`Error::DirectoryUnavailable`]), [`Error::RedirectLoop`] for a redirect
    /// the SDK does not follow, [`Error::Config`].
    pub async fn join(config: &ClientConfig, code: impl IntoJoinCode) -> Result<Peer, Error> {
        let code = code.into_join_code()?;
        retry_while_migrating(config.migration_retry, || {
            Self::bind(
                config,
                ClientMessage::Join {
                    request_id: BIND_REQUEST_ID,
                    code,
                    credential: config.credential.clone(),
                },
            )
        })
        .await
    }

    /// [`Peer::join`] with `credential` instead of the one in `config`.
    ///
    /// # Errors
    /// As for [`Peer::join`]; [`Error::CredentialRefused`] if the relay refuses it.
    pub async fn join_with_credential(
        config: &ClientConfig,
        code: impl IntoJoinCode,
        credential: &str,
    ) -> Result<Peer, Error> {
        Self::join(&config.clone().credential(credential), code).await
    }

    /// Comes back under the peer id `token` names, in its allocation or the allocation that
    /// succeeded it in host migrations: after a crash, a network change, or as a host that
    /// lost its role (it comes back as an ordinary member). The others see
    /// [`Event::PeerRejoined`](crate::Event::PeerRejoined). Retries while the allocation is
    /// migrating and follows a fleet's redirect, as [`Peer::join`] does.
    ///
    /// # Errors
    /// [`Error::CodeNotFound`] if the allocation is gone, [`Error::Unauthorized`] for a wrong
    /// token (or the credential of another player than the one the token was issued to),
    /// [`Error::CredentialRefused`] if the relay requires a credential and refuses `config`'s, [`Error::AlreadyBound`] while the old connection is still up (the relay drops it
    /// after its keepalive timeout), [`Error::AllocationFull`], [`Error::Migrating`] once the
    /// retry window is over, [`Error::DirectoryUnavailable`], [`Error::RedirectLoop`], and
    /// connection errors as for [`Peer::join`].
    pub async fn rejoin(config: &ClientConfig, token: &ReconnectToken) -> Result<Peer, Error> {
        retry_while_migrating(config.migration_retry, || {
            Self::bind(
                config,
                ClientMessage::Rejoin {
                    request_id: BIND_REQUEST_ID,
                    allocation: token.allocation,
                    peer: token.peer,
                    reconnect_token: token.token,
                    credential: config.credential.clone(),
                },
            )
        })
        .await
    }

    /// Connects and sends `request` (join or rejoin), expecting `Joined`.
    async fn bind(config: &ClientConfig, request: ClientMessage) -> Result<Peer, Error> {
        let (session, bound) = session::connect(config, request).await?;
        match bound {
            Bound::Joined => Ok(Peer { session }),
            // `connect` pairs Join and Rejoin with Joined only.
            Bound::Created { .. } => Err(Error::Protocol(
                "relay answered a join with AllocationCreated".into(),
            )),
        }
    }

    /// The underlying session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Gives up the peer wrapper and keeps the session.
    pub fn into_session(self) -> Session {
        self.session
    }
}

/// What a client needs to take its peer id back after losing its connection: the allocation
/// it was in, its peer id and the relay's 16-byte reconnect token. From
/// [`Session::reconnect_token`]; used by [`Peer::rejoin`]. Valid across host migrations, for
/// as long as the relay remembers the allocation's lineage (an hour after each migration).
///
/// Its text form, for saving it, is `ALLOCATION.PEER.TOKEN` (16 hex digits, a decimal peer
/// id, 32 hex digits).
///
/// ```
/// use baton_client::ReconnectToken;
///
/// let text = "1f2e3d4c5b6a7988.2.a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
/// let token: ReconnectToken = text.parse().unwrap();
/// assert_eq!(token.peer.0, 2);
/// assert_eq!(token.to_string(), text);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReconnectToken {
    /// The allocation the client was in (a migrated one is followed to its successor).
    pub allocation: AllocationId,
    /// The client's peer id.
    pub peer: PeerId,
    /// The relay's proof that the peer id is this client's.
    pub token: [u8; 16],
}

impl fmt::Display for ReconnectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.allocation,
            self.peer.0,
            hex::encode(self.token)
        )
    }
}

// Not derived: the token is a secret, so it stays out of logs.
impl fmt::Debug for ReconnectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectToken")
            .field("allocation", &self.allocation)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl FromStr for ReconnectToken {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = || Error::Config("a reconnect token reads ALLOCATION.PEER.TOKEN".into());
        let mut parts = text.trim().split('.');
        let (Some(allocation), Some(peer), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let allocation = allocation.parse().map_err(|_| bad())?;
        let peer = PeerId(peer.parse().map_err(|_| bad())?);
        let mut bytes = [0u8; 16];
        if token.len() != 32 || hex::decode_to_slice(token, &mut bytes).is_err() {
            return Err(bad());
        }
        Ok(ReconnectToken {
            allocation,
            peer,
            token: bytes,
        })
    }
}

impl Deref for Peer {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_codes_come_from_codes_and_text() {
        let code = JoinCode::parse("BCDF78").unwrap();
        assert_eq!(code.into_join_code(), Ok(code));
        assert_eq!((&code).into_join_code(), Ok(code));
        assert_eq!(" bcdf78 ".into_join_code(), Ok(code));
        assert_eq!(String::from("bcdf78").into_join_code(), Ok(code));
        assert_eq!(
            "BCDFA8".into_join_code(),
            Err(JoinCodeError::Character('A'))
        );
    }

    #[tokio::test]
    async fn malformed_codes_fail_before_connecting() {
        // Nothing listens at this address; a connect attempt would time out instead.
        let config = ClientConfig::new("127.0.0.1:9".parse().unwrap(), crate::Trust::WebPki);
        assert!(matches!(
            Peer::join(&config, "AEIOU").await,
            Err(Error::InvalidJoinCode(_))
        ));
    }

    #[test]
    fn reconnect_tokens_round_trip_as_text_and_reject_garbage() {
        let token = ReconnectToken {
            allocation: "00000000000000ff".parse().unwrap(),
            peer: PeerId(65535),
            token: [0xab; 16],
        };
        let text = token.to_string();
        assert_eq!(text, format!("00000000000000ff.65535.{}", "ab".repeat(16)));
        assert_eq!(text.parse::<ReconnectToken>().unwrap(), token);
        assert!(!format!("{token:?}").contains("ab"));
        for bad in [
            "",
            "00000000000000ff.1",
            "00000000000000ff.1.abab.x",
            "zz.1.00000000000000000000000000000000",
            "00000000000000ff.-1.00000000000000000000000000000000",
            "00000000000000ff.65536.00000000000000000000000000000000",
            "00000000000000ff.1.0000000000000000000000000000000",
            "00000000000000ff.1.0000000000000000000000000000000g",
        ] {
            assert!(
                matches!(bad.parse::<ReconnectToken>(), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
    }
}
