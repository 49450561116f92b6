//! The migration snapshots players upload, and how a new host checks the one it got: a fixed
//! pattern of `--snapshot-bytes` ([`crate::snapshot_bytes`]) uploaded once by the first host,
//! or with `--game-snapshots` a snapshot naming its game and uploader ([`tagged`]) that every
//! host stages now and then.
//!
//! Pure functions; called from the player's task.

use bytes::Bytes;

/// Size of a [`tagged`] snapshot.
pub const TAGGED_LEN: usize = 2048;

/// Ticks between two staged [`tagged`] snapshots (the SDK uploads at most one a second anyway).
pub(super) const STAGE_EVERY_TICKS: u64 = 10;

/// A migration snapshot naming its game and uploader: game id, uploader uid, version, then a
/// pattern.
pub fn tagged(game: u32, uid: u64, version: u64) -> Bytes {
    let mut out = Vec::with_capacity(TAGGED_LEN);
    out.extend_from_slice(&game.to_be_bytes());
    out.extend_from_slice(&uid.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend((out.len()..TAGGED_LEN).map(|i| (i as u8).wrapping_mul(7)));
    Bytes::from(out)
}

/// The game id and uploader uid of a snapshot made by [`tagged`], or `None` if damaged.
pub fn parse_tagged(bytes: &[u8]) -> Option<(u32, u64)> {
    if bytes.len() != TAGGED_LEN {
        return None;
    }
    if (20..TAGGED_LEN).any(|i| bytes[i] != (i as u8).wrapping_mul(7)) {
        return None;
    }
    let game = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?);
    let uid = u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
    Some((game, uid))
}

/// Whether `bytes` is the [`crate::snapshot_bytes`] pattern of its length.
pub fn is_pattern(bytes: &[u8]) -> bool {
    bytes[..] == crate::snapshot_bytes(bytes.len())[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip() {
        let s = tagged(3, 99, 5);
        assert_eq!(parse_tagged(&s), Some((3, 99)));
        let mut bad = s.to_vec();
        bad[100] ^= 1;
        assert_eq!(parse_tagged(&bad), None);
        assert!(is_pattern(&crate::snapshot_bytes(4096)));
        assert!(!is_pattern(&s));
    }
}
