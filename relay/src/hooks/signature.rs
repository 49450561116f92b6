//! Webhook signatures: [`sign`] (the relay's side) and [`verify_signature`] (a lobby's side),
//! HMAC-SHA256 over `"{timestamp}.{body}"` through `crate::crypto`, with the headers that carry
//! them and [`SignatureError`].
//!
//! Pure functions: no I/O, no tasks. The relay signs on each webhook's delivery task.

use std::time::{Duration, SystemTime};

use super::event::unix_millis;
use crate::crypto;

/// Header carrying the unix time in seconds at which this attempt was signed.
pub const TIMESTAMP_HEADER: &str = "Baton-Timestamp";
/// Header carrying `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub const SIGNATURE_HEADER: &str = "Baton-Signature";
/// A sensible `tolerance` for [`verify_signature`]: five minutes either way, as Stripe uses.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

fn mac(secret: &[u8], timestamp: &[u8], body: &[u8]) -> [u8; 32] {
    crypto::hmac_sha256(secret, &[timestamp, b".", body])
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (unix seconds):
/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mac = mac(secret, timestamp.to_string().as_bytes(), body);
    format!("v1={}", hex::encode(mac))
}

/// Why a webhook request's signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The timestamp header is not a number of seconds.
    #[error("timestamp header is not unix seconds")]
    InvalidTimestamp,
    /// The timestamp is further from `now` than the tolerance: a replayed or delayed request.
    #[error("timestamp is {} s away from now, beyond the tolerance", .0.as_secs())]
    Expired(Duration),
    /// The signature header holds no `v1=` signature.
    #[error("signature header has no v1 signature")]
    Malformed,
    /// No signature matches: wrong secret, or the body or timestamp was altered.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a webhook request the way a lobby should: `timestamp` and `header` are the
/// [`TIMESTAMP_HEADER`] and [`SIGNATURE_HEADER`] values as received, `body` the raw body bytes
/// (before any JSON parsing), `tolerance` how far the timestamp may be from `now`
/// ([`DEFAULT_TOLERANCE`] is a good choice). The header may list several comma-separated
/// `v1=` signatures (any one matching is enough) and entries of other versions, which are
/// ignored. The comparison is constant-time.
///
/// A lobby's webhook handler, given the two headers and the raw body:
///
/// ```
/// use std::time::SystemTime;
/// use baton_relay::hooks::{self, LobbyEvent};
///
/// fn accept(secret: &str, timestamp: &str, signature: &str, body: &[u8]) -> Option<LobbyEvent> {
///     let now = SystemTime::now();
///     hooks::verify_signature(secret.as_bytes(), timestamp, body, signature, hooks::DEFAULT_TOLERANCE, now)
///         .ok()?;
///     // Deduplicate by `event.id` (delivery is at least once), answer 2xx at once, then process.
///     serde_json::from_slice(body).ok()
/// }
///
/// // What the relay sends:
/// let secret = "a-long-random-webhook-secret";
/// let body = br#"{"id":1,"time_ms":0,"allocation":"00000000000000ab","join_code":"BCDF78","type":"peer.joined","peer":1}"#;
/// let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
/// let signature = hooks::sign(secret.as_bytes(), timestamp, body);
/// let event = accept(secret, &timestamp.to_string(), &signature, body).unwrap();
/// assert_eq!(event.kind.name(), "peer.joined");
/// assert!(accept("another-secret", &timestamp.to_string(), &signature, body).is_none());
/// ```
pub fn verify_signature(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    header: &str,
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.trim();
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::InvalidTimestamp);
    }
    let sent: u64 = timestamp
        .parse()
        .map_err(|_| SignatureError::InvalidTimestamp)?;
    let now = unix_millis(now) / 1000;
    let age = Duration::from_secs(now.abs_diff(sent));
    if age > tolerance {
        return Err(SignatureError::Expired(age));
    }
    let expected = mac(secret, timestamp.as_bytes(), body);
    let mut any = false;
    for entry in header.split(',') {
        let Some(sig) = entry.trim().strip_prefix("v1=") else {
            continue;
        };
        any = true;
        if let Ok(sig) = hex::decode(sig) {
            if crypto::constant_time_eq(&expected, &sig) {
                return Ok(());
            }
        }
    }
    Err(if any {
        SignatureError::Mismatch
    } else {
        SignatureError::Malformed
    })
}
