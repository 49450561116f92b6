//! Access control: the secrets a lobby shares with the relay to mint client credentials
//! (`--auth-secret`, SPEC section 16), and checking the credential a `CreateAllocation`, `Join`
//! or `Rejoin` carries.
//!
//! [`AuthSecrets::check`] verifies a credential's layout, signature and expiry (pure, with the
//! time passed in) and returns an [`Authorization`]; the control plane checks its scope against
//! the request. Checked on each connection's task (the HMAC runs on the data-plane lanes, not
//! the control task), so the control plane stays free of wall-clock time.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use baton_protocol::credential::{self, Claims, CredentialRefusal};
use baton_protocol::ClientMessage;

use crate::config::{invalid, ConfigError};

/// Most secrets a relay takes at once: enough for overlapping rotations, few enough that
/// trying each is cheap.
pub const MAX_AUTH_SECRETS: usize = 8;

/// The relay's credential secrets. Empty: the relay is open (the development default).
/// `Debug` never shows them.
#[derive(Clone, Default)]
pub struct AuthSecrets(Arc<[Vec<u8>]>);

impl AuthSecrets {
    /// Secrets from their text form (each used as its UTF-8 bytes): 1 to [`MAX_AUTH_SECRETS`],
    /// each at least [`credential::MIN_SECRET_LEN`] bytes, none twice.
    pub fn new(secrets: Vec<String>) -> Result<Self, ConfigError> {
        if secrets.len() > MAX_AUTH_SECRETS {
            return Err(invalid(
                "auth_secrets",
                format!("at most {MAX_AUTH_SECRETS} secrets, got {}", secrets.len()),
            ));
        }
        for (i, secret) in secrets.iter().enumerate() {
            if secret.len() < credential::MIN_SECRET_LEN {
                return Err(invalid(
                    "auth_secrets",
                    format!(
                        "secret {} is {} bytes; each must be at least {}",
                        i + 1,
                        secret.len(),
                        credential::MIN_SECRET_LEN
                    ),
                ));
            }
            if secrets[..i].contains(secret) {
                return Err(invalid(
                    "auth_secrets",
                    format!("secret {} is given twice", i + 1),
                ));
            }
        }
        Ok(AuthSecrets(
            secrets.into_iter().map(String::into_bytes).collect(),
        ))
    }

    /// Whether the relay is open: no secret, no credential asked for.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// What the relay makes of `msg`'s credential at unix time `now`: requests that take none
    /// (and every request on an open relay) are [`Authorization::Open`].
    pub fn check(&self, msg: &ClientMessage, now: u64) -> Authorization {
        let credential = match msg {
            ClientMessage::CreateAllocation { credential, .. }
            | ClientMessage::Join { credential, .. }
            | ClientMessage::Rejoin { credential, .. } => credential,
            _ => return Authorization::Open,
        };
        if self.is_open() {
            return Authorization::Open;
        }
        let Some(text) = credential else {
            return Authorization::Refused(CredentialRefusal::Missing);
        };
        match credential::verify(text, &self.0, now) {
            Ok(claims) => Authorization::Verified(claims.into()),
            Err(refusal) => Authorization::Refused(refusal),
        }
    }
}

impl fmt::Debug for AuthSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthSecrets({} redacted)", self.0.len())
    }
}

/// The current unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the relay made of a request's credential, handed to the control plane with the
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// The relay is open, or the request takes no credential.
    Open,
    /// A genuine, unexpired credential; its scope is still to be checked against the request.
    Verified(Arc<Claims>),
    /// Refused before its scope mattered.
    Refused(CredentialRefusal),
}

impl Authorization {
    /// The subject a request acts as: the verified credential's, if any.
    pub fn subject(&self) -> Option<Arc<str>> {
        match self {
            Authorization::Verified(claims) => Some(Arc::from(claims.subject.as_str())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_protocol::credential::{mint, Scope};
    use baton_protocol::JoinCode;

    use super::*;

    fn secret(c: char) -> String {
        c.to_string().repeat(32)
    }

    fn join(credential: Option<String>) -> ClientMessage {
        ClientMessage::Join {
            request_id: 1,
            code: JoinCode::parse("BCDF78").unwrap(),
            credential,
        }
    }

    #[test]
    fn secrets_are_checked() {
        assert!(AuthSecrets::new(vec![]).unwrap().is_open());
        assert!(AuthSecrets::new(vec!["x".repeat(31)]).is_err());
        assert!(AuthSecrets::new(vec![secret('a'), secret('a')]).is_err());
        assert!(AuthSecrets::new((0..9).map(|i| format!("{i:032}")).collect()).is_err());
        let two = AuthSecrets::new(vec![secret('a'), secret('b')]).unwrap();
        assert!(!two.is_open());
        assert_eq!(format!("{two:?}"), "AuthSecrets(2 redacted)");
    }

    #[test]
    fn an_open_relay_asks_nothing_and_a_closed_one_checks() {
        let claims = Claims {
            expires: 1000,
            subject: "p1".into(),
            scope: Scope::Any,
        };
        let good = mint(secret('b').as_bytes(), &claims).unwrap();
        let open = AuthSecrets::default();
        assert_eq!(open.check(&join(None), 0), Authorization::Open);
        assert_eq!(
            open.check(&join(Some(good.clone())), 0),
            Authorization::Open
        );

        let closed = AuthSecrets::new(vec![secret('a'), secret('b')]).unwrap();
        assert_eq!(
            closed.check(&join(None), 0),
            Authorization::Refused(CredentialRefusal::Missing)
        );
        assert_eq!(
            closed.check(&join(Some(good.clone())), 0),
            Authorization::Verified(Arc::new(claims))
        );
        assert_eq!(
            closed.check(&join(Some(good.clone())), 2000),
            Authorization::Refused(CredentialRefusal::Expired)
        );
        let kick = ClientMessage::Kick {
            request_id: 1,
            peer: baton_protocol::PeerId(1),
        };
        assert_eq!(closed.check(&kick, 0), Authorization::Open);
        let other = mint(
            secret('c').as_bytes(),
            &Claims {
                expires: 1000,
                subject: "p".into(),
                scope: Scope::Any,
            },
        )
        .unwrap();
        assert_eq!(
            closed.check(&join(Some(other)), 0),
            Authorization::Refused(CredentialRefusal::BadSignature)
        );
    }
}
