//! Join codes: short, case-insensitive, typo-resistant strings a host hands to its friends.

use std::fmt;

/// The join-code alphabet: digits and consonants with no vowels (no words) and no look-alike
/// characters (no 0/O, 1/I/L... confusions: `0 1 2 3 4 5 A E I O U S Z V X Y` are left out).
pub const ALPHABET: &[u8; 20] = b"6789BCDFGHJKLMNPQRTW";

/// Shortest accepted join code.
pub const MIN_LEN: usize = 4;
/// Longest accepted join code.
pub const MAX_LEN: usize = 12;
/// Length of codes the relay issues unless configured otherwise (20^6 = 64 million codes).
pub const DEFAULT_LEN: usize = 6;

/// Why a string is not a join code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinCodeError {
    /// Too short or too long.
    #[error("join code must be {MIN_LEN} to {MAX_LEN} characters, got {0}")]
    Length(usize),
    /// A character outside [`ALPHABET`] (after upper-casing).
    #[error("join code contains invalid character {0:?}")]
    Character(char),
}

/// A validated, upper-case join code. Parsing normalises case, so `"bcdf78"` and `"BCDF78"`
/// are the same code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinCode {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl JoinCode {
    /// Parses and normalises `s` (surrounding whitespace is ignored).
    pub fn parse(s: &str) -> Result<Self, JoinCodeError> {
        Self::from_bytes(s.trim().as_bytes())
    }

    /// Validates raw bytes (as received on the wire), normalising case.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, JoinCodeError> {
        if !(MIN_LEN..=MAX_LEN).contains(&raw.len()) {
            return Err(JoinCodeError::Length(raw.len()));
        }
        let mut bytes = [0u8; MAX_LEN];
        for (slot, &b) in bytes.iter_mut().zip(raw) {
            let up = b.to_ascii_uppercase();
            if !ALPHABET.contains(&up) {
                return Err(JoinCodeError::Character(char::from(b)));
            }
            *slot = up;
        }
        Ok(JoinCode {
            bytes,
            len: raw.len() as u8,
        })
    }

    /// A uniformly random code of `len` characters (clamped to `MIN_LEN..=MAX_LEN`).
    #[cfg(feature = "rand")]
    pub fn random(rng: &mut impl rand::Rng, len: usize) -> Self {
        let len = len.clamp(MIN_LEN, MAX_LEN);
        let mut bytes = [0u8; MAX_LEN];
        for slot in &mut bytes[..len] {
            *slot = ALPHABET[rng.gen_range(0..ALPHABET.len())];
        }
        JoinCode {
            bytes,
            len: len as u8,
        }
    }

    /// The code's characters.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        // Every byte is from ALPHABET, which is ASCII.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// Number of characters.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false: a join code has at least [`MIN_LEN`] characters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinCode({})", self.as_str())
    }
}

impl std::str::FromStr for JoinCode {
    type Err = JoinCodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalises_case_and_whitespace() {
        let a = JoinCode::parse(" bcdf78 ").unwrap();
        let b = JoinCode::parse("BCDF78").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "BCDF78");
    }

    #[test]
    fn rejects_vowels_lookalikes_and_bad_lengths() {
        assert_eq!(
            JoinCode::parse("BCDFA8"),
            Err(JoinCodeError::Character('A'))
        );
        assert_eq!(
            JoinCode::parse("BCDF08"),
            Err(JoinCodeError::Character('0'))
        );
        assert_eq!(
            JoinCode::parse("bcdf1l"),
            Err(JoinCodeError::Character('1'))
        );
        assert_eq!(JoinCode::parse("BCD"), Err(JoinCodeError::Length(3)));
        assert_eq!(
            JoinCode::parse("BCDFGHJKLMNPQ"),
            Err(JoinCodeError::Length(13))
        );
        assert_eq!(
            JoinCode::parse("BCDF7é"),
            Err(JoinCodeError::Character('Ã'))
        );
    }

    #[test]
    fn random_codes_use_the_alphabet_and_requested_length() {
        let mut rng = rand::thread_rng();
        for len in [1, 6, 12, 40] {
            let code = JoinCode::random(&mut rng, len);
            assert_eq!(code.len(), len.clamp(MIN_LEN, MAX_LEN));
            assert!(code.as_bytes().iter().all(|b| ALPHABET.contains(b)));
            assert_eq!(JoinCode::parse(code.as_str()), Ok(code));
        }
    }
}
