//! Lobby-minted credentials (SPEC section 16): what a relay with `--auth-secret` asks of every
//! `CreateAllocation`, `Join` and `Rejoin`.
//!
//! A lobby that shares a secret with the relay mints a credential for one player: who it is
//! (the *subject*), what it may do (the *scope*) and until when (the *expiry*), signed with
//! HMAC-SHA256. The player hands the text to the relay; the relay checks the signature with any
//! of its secrets (several, for key rotation), the expiry against its clock with
//! [`CLOCK_SKEW_SECS`] of tolerance, and the scope against the request.
//!
//! ```text
//! version u8 = 1 | expires u64 | scope kind u8 | scope value | subject_len u8 | subject | tag [32]
//! ```
//!
//! The tag is HMAC-SHA256 under the secret of every byte before it; the text form is that
//! binary in unpadded base64url, so it fits in a URL. [`mint`] and [`verify`] do no I/O: the
//! caller passes the time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

use crate::wire::Reader;
use crate::{AllocationId, JoinCode};

/// The credential format version this crate mints and verifies.
pub const VERSION: u8 = 1;
/// The shortest secret a relay accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// The longest subject, in bytes of UTF-8.
pub const MAX_SUBJECT_LEN: usize = 64;
/// The longest credential text a relay reads; longer is malformed.
pub const MAX_TEXT_LEN: usize = 512;
/// How far past its expiry a credential is still accepted, for clocks that disagree.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// Length of the HMAC-SHA256 tag.
const TAG_LEN: usize = 32;

/// What a credential lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Kind 1: open an allocation (`CreateAllocation`), or rejoin one with a reconnect token.
    Create,
    /// Kind 2: join (or rejoin) the allocation this join code names, across its migrations.
    JoinCode(JoinCode),
    /// Kind 3: join (or rejoin) this allocation or any successor of it.
    Allocation(AllocationId),
    /// Kind 4: any of the above.
    Any,
}

impl Scope {
    /// The scope kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Scope::Create => 1,
            Scope::JoinCode(_) => 2,
            Scope::Allocation(_) => 3,
            Scope::Any => 4,
        }
    }

    /// Whether it permits opening an allocation.
    pub fn permits_create(&self) -> bool {
        matches!(self, Scope::Create | Scope::Any)
    }

    /// Whether it permits joining an allocation whose join code is `code` (`None` if it has
    /// none, e.g. a lobby-reserved one); `in_lineage(a)` says whether allocation `a` is that
    /// allocation or one it succeeded.
    pub fn permits_join(
        &self,
        code: Option<&JoinCode>,
        in_lineage: impl Fn(AllocationId) -> bool,
    ) -> bool {
        match self {
            Scope::Any => true,
            Scope::Create => false,
            Scope::JoinCode(c) => code == Some(c),
            Scope::Allocation(a) => in_lineage(*a),
        }
    }

    /// Whether it permits rejoining such an allocation with a reconnect token. The token
    /// already proves the peer id was the holder's, so a `Create` credential (which could open
    /// an allocation anyway) also permits it.
    pub fn permits_rejoin(
        &self,
        code: Option<&JoinCode>,
        in_lineage: impl Fn(AllocationId) -> bool,
    ) -> bool {
        self.permits_create() || self.permits_join(code, in_lineage)
    }
}

/// What a credential says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claims {
    /// Unix time, in seconds, after which (plus [`CLOCK_SKEW_SECS`]) it is refused.
    pub expires: u64,
    /// Who holds it: the player's id in the lobby. 1 to [`MAX_SUBJECT_LEN`] bytes of UTF-8,
    /// no control characters.
    pub subject: String,
    /// What it permits.
    pub scope: Scope,
}

/// Why a credential was refused. On the wire it is the `value` of a `Refused` with code
/// `unauthorized` (SPEC section 7.1); `value` 0 there means a refusal that is not about the
/// credential (a wrong reconnect token, host token or ticket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialRefusal {
    /// 1: the relay requires a credential and the request carried none.
    #[error("the relay requires a credential and none was given")]
    Missing,
    /// 2: not a credential: bad base64url, a layout that does not parse, an unknown version, a
    /// subject that is empty, too long, not UTF-8 or has control characters.
    #[error("the credential is malformed")]
    Malformed,
    /// 3: its tag matches none of the relay's secrets (forged, altered, or minted with a
    /// secret the relay no longer has).
    #[error("the credential's signature does not match")]
    BadSignature,
    /// 4: it expired (more than [`CLOCK_SKEW_SECS`] ago).
    #[error("the credential has expired")]
    Expired,
    /// 5: its scope does not cover this request.
    #[error("the credential does not permit this request")]
    WrongScope,
}

impl CredentialRefusal {
    /// Every refusal this version defines, in value order.
    pub const ALL: [CredentialRefusal; 5] = [
        CredentialRefusal::Missing,
        CredentialRefusal::Malformed,
        CredentialRefusal::BadSignature,
        CredentialRefusal::Expired,
        CredentialRefusal::WrongScope,
    ];

    /// The `Refused.value` this refusal is sent as.
    pub fn value(self) -> u32 {
        match self {
            CredentialRefusal::Missing => 1,
            CredentialRefusal::Malformed => 2,
            CredentialRefusal::BadSignature => 3,
            CredentialRefusal::Expired => 4,
            CredentialRefusal::WrongScope => 5,
        }
    }

    /// The refusal a `Refused { code: unauthorized, value }` names; `None` for 0 (not about
    /// the credential) and values this version does not know.
    pub fn from_value(value: u32) -> Option<Self> {
        Some(match value {
            1 => CredentialRefusal::Missing,
            2 => CredentialRefusal::Malformed,
            3 => CredentialRefusal::BadSignature,
            4 => CredentialRefusal::Expired,
            5 => CredentialRefusal::WrongScope,
            _ => return None,
        })
    }

    /// Stable lower-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialRefusal::Missing => "missing",
            CredentialRefusal::Malformed => "malformed",
            CredentialRefusal::BadSignature => "bad_signature",
            CredentialRefusal::Expired => "expired",
            CredentialRefusal::WrongScope => "wrong_scope",
        }
    }
}

/// Why [`mint`] could not make a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("a credential secret must be at least {MIN_SECRET_LEN} bytes, this one is {0}")]
    ShortSecret(usize),
    /// The subject is empty, longer than [`MAX_SUBJECT_LEN`] bytes or has control characters.
    #[error("a subject must be 1 to {MAX_SUBJECT_LEN} bytes with no control characters")]
    BadSubject,
}

/// Mints the credential text for `claims` under `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, MintError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(MintError::ShortSecret(secret.len()));
    }
    if !subject_ok(&claims.subject) {
        return Err(MintError::BadSubject);
    }
    let mut body = Vec::with_capacity(1 + 8 + 1 + 13 + 1 + claims.subject.len() + TAG_LEN);
    body.push(VERSION);
    body.extend_from_slice(&claims.expires.to_be_bytes());
    body.push(claims.scope.kind());
    match claims.scope {
        Scope::Create | Scope::Any => {}
        Scope::JoinCode(code) => {
            let code = code.as_str();
            body.push(code.len() as u8);
            body.extend_from_slice(code.as_bytes());
        }
        Scope::Allocation(id) => body.extend_from_slice(&id.0.to_be_bytes()),
    }
    body.push(claims.subject.len() as u8);
    body.extend_from_slice(claims.subject.as_bytes());
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), &body);
    body.extend_from_slice(tag.as_ref());
    Ok(URL_SAFE_NO_PAD.encode(body))
}

/// Verifies `text` against `secrets` (any one may have signed it) at unix time `now`, and
/// returns what it says. The scope is the caller's to check against the request.
///
/// Order: the layout, then the tag (compared in constant time with each secret's), then the
/// expiry; so a forged credential is `BadSignature` whatever it claims.
pub fn verify<S: AsRef<[u8]>>(
    text: &str,
    secrets: &[S],
    now: u64,
) -> Result<Claims, CredentialRefusal> {
    if text.len() > MAX_TEXT_LEN {
        return Err(CredentialRefusal::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| CredentialRefusal::Malformed)?;
    let signed_len = raw
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(CredentialRefusal::Malformed)?;
    let (signed, tag) = raw.split_at(signed_len);
    let claims = parse(signed).ok_or(CredentialRefusal::Malformed)?;
    let genuine = secrets.iter().any(|secret| {
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref()),
            signed,
            tag,
        )
        .is_ok()
    });
    if !genuine {
        return Err(CredentialRefusal::BadSignature);
    }
    if now > claims.expires.saturating_add(CLOCK_SKEW_SECS) {
        return Err(CredentialRefusal::Expired);
    }
    Ok(claims)
}

/// Parses the signed part of a credential; `None` if it is not a version-1 credential.
fn parse(signed: &[u8]) -> Option<Claims> {
    let mut r = Reader::new(signed);
    if r.u8().ok()? != VERSION {
        return None;
    }
    let expires = r.u64().ok()?;
    let scope = match r.u8().ok()? {
        1 => Scope::Create,
        2 => {
            let len = usize::from(r.u8().ok()?);
            let code = std::str::from_utf8(r.bytes(len).ok()?).ok()?;
            Scope::JoinCode(JoinCode::parse(code).ok()?)
        }
        3 => Scope::Allocation(AllocationId(r.u64().ok()?)),
        4 => Scope::Any,
        _ => return None,
    };
    let len = usize::from(r.u8().ok()?);
    let subject = std::str::from_utf8(r.bytes(len).ok()?).ok()?.to_owned();
    if r.remaining() != 0 || !subject_ok(&subject) {
        return None;
    }
    Some(Claims {
        expires,
        subject,
        scope,
    })
}

/// Whether `subject` is 1 to [`MAX_SUBJECT_LEN`] bytes with no control characters (it is
/// logged and sent to lobbies).
fn subject_ok(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= MAX_SUBJECT_LEN
        && !subject.chars().any(char::is_control)
}

/// Whether `text` could be a credential on the wire: at most [`MAX_TEXT_LEN`] bytes of the
/// base64url alphabet. Decoders check this so nothing else reaches logs; clients check it
/// before sending.
pub fn text_ok(text: &[u8]) -> bool {
    text.len() <= MAX_TEXT_LEN
        && text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn claims(scope: Scope) -> Claims {
        Claims {
            expires: 1_900_000_000,
            subject: "player-42".into(),
            scope,
        }
    }

    /// SPEC section 16's test vector.
    #[test]
    fn the_spec_test_vector() {
        let code = JoinCode::parse("BCDF78").unwrap();
        let text = mint(SECRET, &claims(Scope::JoinCode(code))).unwrap();
        assert_eq!(
            text,
            "AQAAAABxP7MAAgZCQ0RGNzgJcGxheWVyLTQy_1WU47eZczgUyIqVPCCi3-gnoX24cS5dCN5hJmvQraI"
        );
        assert_eq!(
            verify(&text, &[SECRET], 1_899_999_999),
            Ok(claims(Scope::JoinCode(code)))
        );
        let spec = include_str!("../SPEC.md");
        assert!(
            spec.contains(&text),
            "SPEC.md section 16.4 lacks the text form"
        );
        let raw = hex::encode(URL_SAFE_NO_PAD.decode(&text).unwrap());
        let (signed, tag) = raw.split_at(raw.len() - 64);
        assert!(spec.contains(tag), "SPEC.md section 16.4 lacks the tag");
        let shown = "01 00000000713fb300 02 06 424344463738 09 706c617965722d3432";
        assert_eq!(shown.replace(' ', ""), signed);
        assert!(
            spec.contains(shown),
            "SPEC.md section 16.4 lacks the binary"
        );
    }

    #[test]
    fn every_scope_round_trips() {
        let code = JoinCode::parse("BCDF78").unwrap();
        for scope in [
            Scope::Create,
            Scope::JoinCode(code),
            Scope::Allocation(AllocationId(0x0011_2233_4455_6677)),
            Scope::Any,
        ] {
            let text = mint(SECRET, &claims(scope)).unwrap();
            assert!(text_ok(text.as_bytes()), "{text}");
            assert_eq!(verify(&text, &[SECRET], 0), Ok(claims(scope)));
        }
    }

    #[test]
    fn expiry_allows_the_clock_skew_and_no_more() {
        let text = mint(SECRET, &claims(Scope::Any)).unwrap();
        let expires = 1_900_000_000;
        assert!(verify(&text, &[SECRET], expires + CLOCK_SKEW_SECS).is_ok());
        assert_eq!(
            verify(&text, &[SECRET], expires + CLOCK_SKEW_SECS + 1),
            Err(CredentialRefusal::Expired)
        );
    }

    #[test]
    fn any_configured_secret_verifies_and_others_do_not() {
        let old = [7u8; 32];
        let text = mint(&old, &claims(Scope::Any)).unwrap();
        assert!(verify(&text, &[&SECRET[..], &old[..]], 0).is_ok());
        assert_eq!(
            verify(&text, &[SECRET], 0),
            Err(CredentialRefusal::BadSignature)
        );
        let none: [&[u8]; 0] = [];
        assert_eq!(
            verify(&text, &none, 0),
            Err(CredentialRefusal::BadSignature)
        );
    }

    #[test]
    fn an_altered_credential_is_a_bad_signature_even_if_expired() {
        let text = mint(SECRET, &claims(Scope::Create)).unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        raw[9] = 4; // Create -> Any
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            verify(&forged, &[SECRET], u64::MAX),
            Err(CredentialRefusal::BadSignature)
        );
    }

    #[test]
    fn malformed_credentials_are_malformed() {
        let good = mint(SECRET, &claims(Scope::Any)).unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&good).unwrap();
        raw[0] = 2; // unknown version
        let cases = [
            String::new(),
            "not base64!".into(),
            "AAAA".into(),
            URL_SAFE_NO_PAD.encode(&raw),
            "A".repeat(MAX_TEXT_LEN + 1),
            format!("{good}AA"),
        ];
        for text in cases {
            assert_eq!(
                verify(&text, &[SECRET], 0),
                Err(CredentialRefusal::Malformed),
                "{text}"
            );
        }
    }

    #[test]
    fn mint_refuses_short_secrets_and_bad_subjects() {
        assert_eq!(
            mint(&[1; 31], &claims(Scope::Any)),
            Err(MintError::ShortSecret(31))
        );
        for subject in [String::new(), "x".repeat(65), "a\nb".into()] {
            let c = Claims {
                subject,
                ..claims(Scope::Any)
            };
            assert_eq!(mint(SECRET, &c), Err(MintError::BadSubject));
        }
        let longest = Claims {
            subject: "é".repeat(32),
            ..claims(Scope::Any)
        };
        assert!(mint(SECRET, &longest).is_ok());
    }

    #[test]
    fn scopes_permit_what_they_say() {
        let code = JoinCode::parse("BCDF78").unwrap();
        let other = JoinCode::parse("GHJK99").unwrap();
        let lineage = |a: AllocationId| a.0 == 1 || a.0 == 2;
        assert!(Scope::Create.permits_create());
        assert!(!Scope::Create.permits_join(Some(&code), lineage));
        assert!(Scope::Create.permits_rejoin(Some(&code), lineage));
        assert!(Scope::JoinCode(code).permits_join(Some(&code), lineage));
        assert!(!Scope::JoinCode(code).permits_join(Some(&other), lineage));
        assert!(!Scope::JoinCode(code).permits_join(None, lineage));
        assert!(!Scope::JoinCode(code).permits_create());
        assert!(Scope::Allocation(AllocationId(1)).permits_join(None, lineage));
        assert!(!Scope::Allocation(AllocationId(3)).permits_rejoin(None, lineage));
        assert!(Scope::Any.permits_create() && Scope::Any.permits_join(None, |_| false));
    }

    #[test]
    fn refusal_values_round_trip() {
        for value in 1..=5 {
            let refusal = CredentialRefusal::from_value(value).unwrap();
            assert_eq!(refusal.value(), value);
        }
        assert_eq!(CredentialRefusal::from_value(0), None);
        assert_eq!(CredentialRefusal::from_value(6), None);
    }
}
