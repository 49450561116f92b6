//! The peer side: join an allocation by its code.

use std::ops::Deref;

use baton_protocol::{ClientMessage, JoinCode, JoinCodeError, PeerId};

use crate::session::{self, Bound, Session, BIND_REQUEST_ID};
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

/// A member of an allocation other than its host. Dereferences to [`Session`] for datagrams,
/// events and membership.
#[derive(Debug)]
pub struct Peer {
    session: Session,
}

impl Peer {
    /// Connects to the relay and joins the allocation `code` names.
    ///
    /// # Errors
    /// [`Error::InvalidJoinCode`] (nothing is sent), connection errors
    /// ([`Error::RelayUnreachable`], [`Error::CertificateMismatch`],
    /// [`Error::UntrustedCertificate`], [`Error::ProtocolVersionMismatch`]), refusals
    /// ([`Error::CodeNotFound`], [`Error::CodeExpired`], [`Error::CodeRevoked`],
    /// [`Error::AllocationClosed`], [`Error::AllocationFull`], [`Error::RateLimited`],
    /// [`Error::Unauthorized`], [`Error::ShuttingDown`]), [`Error::Config`].
    pub async fn join(config: &ClientConfig, code: impl IntoJoinCode) -> Result<Peer, Error> {
        let code = code.into_join_code()?;
        let request = ClientMessage::Join {
            request_id: BIND_REQUEST_ID,
            code,
        };
        let (session, bound) = session::connect(config, request).await?;
        match bound {
            Bound::Joined => Ok(Peer { session }),
            // `connect` pairs Join with Joined only.
            Bound::Created { .. } => Err(Error::Protocol(
                "relay answered Join with AllocationCreated".into(),
            )),
        }
    }

    /// Sends `payload` to the host, as [`Session::send_to`] with [`PeerId::HOST`].
    ///
    /// # Errors
    /// As [`Session::send_to`].
    pub fn send_to_host(&self, payload: &[u8]) -> Result<(), Error> {
        self.session.send_to(PeerId::HOST, payload)
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
}
