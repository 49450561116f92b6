//! The relay's symmetric crypto: SHA-256, HMAC-SHA256 and constant-time comparison, on *ring*,
//! the provider rustls already runs on, so the relay carries one crypto stack; and the
//! 256-bit keys the relay draws from the operating system's RNG.
//!
//! Used by the control plane (migration tickets, reconnect tokens, its secrets), the lobby
//! hooks (webhook signatures), the admin API (bearer-token digests) and TLS (certificate
//! fingerprints). Pure functions apart from `os_random_key`, which reads the OS RNG; callable
//! from any task.

use rand::rngs::OsRng;
use rand::RngCore;
use ring::{digest, hmac};

/// 256 bits from the operating system's RNG, for a key or an RNG seed.
///
/// Panics if the operating system has no randomness to give, as `rand::random` does: a relay
/// cannot run without it.
pub(crate) fn os_random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// HMAC-SHA256 under `key` of the concatenation of `parts`. Keys of any length are valid.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only (lengths are not
/// secret here: every caller compares fixed-size tags or digests).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2_in_parts() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let tag = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn os_keys_are_fresh_each_time() {
        assert_ne!(os_random_key(), os_random_key());
    }

    #[test]
    fn comparison_needs_every_byte_and_the_length() {
        assert!(constant_time_eq(b"abcd", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abce"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }
}
