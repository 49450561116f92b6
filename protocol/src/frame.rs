//! Control-stream framing: every control message is `len: u32` (big-endian, counting the type
//! byte and body) followed by `type: u8` and the body. A receiver reads the 4-byte prefix,
//! checks it against its maximum frame length with [`check_len`] *before* buffering anything,
//! then reads exactly `len` bytes and decodes them.
//!
//! A sender writes whole frames with `encode_frame` / `to_frame` of
//! [`ClientMessage`](crate::ClientMessage) and [`ServerMessage`](crate::ServerMessage), which
//! both frame through this module.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of length prefix in front of every control frame.
pub const LEN_PREFIX: usize = 4;

/// Default and recommended maximum frame length (type byte + body). The largest message this
/// version defines, `Joined` with 4096 members, is under 8.3 KiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024;

/// Smallest maximum frame length a receiver may configure (fits every message of this version).
pub const MIN_MAX_FRAME_LEN: usize = 9 * 1024;

/// A frame length prefix that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Zero-length frame (no type byte).
    #[error("empty control frame")]
    Empty,
    /// Longer than the receiver's maximum.
    #[error("control frame of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// Announced length.
        len: usize,
        /// Receiver's maximum.
        max: usize,
    },
}

/// Validates a length prefix against `max_len` and returns the frame length to read.
pub fn check_len(prefix: [u8; LEN_PREFIX], max_len: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        Err(FrameError::Empty)
    } else if len > max_len {
        Err(FrameError::TooLong { len, max: max_len })
    } else {
        Ok(len)
    }
}

/// Appends one frame to `out`: the length prefix of a `len`-byte message (type byte + body),
/// then the message, which `write` writes (`len` bytes exactly).
pub(crate) fn encode(out: &mut BytesMut, len: usize, write: impl FnOnce(&mut BytesMut)) {
    out.reserve(LEN_PREFIX + len);
    out.put_u32(len as u32);
    let start = out.len();
    write(out);
    debug_assert_eq!(
        out.len() - start,
        len,
        "encoded_len disagrees with write_to"
    );
}

/// One frame as bytes: [`encode`] into a buffer of its own.
pub(crate) fn encode_to_bytes(len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    encode(&mut out, len, write);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefix_is_checked_before_buffering() {
        assert_eq!(check_len([0, 0, 0, 5], 16), Ok(5));
        assert_eq!(check_len([0, 0, 0, 0], 16), Err(FrameError::Empty));
        assert_eq!(
            check_len([0xFF, 0xFF, 0xFF, 0xFF], 16),
            Err(FrameError::TooLong {
                len: u32::MAX as usize,
                max: 16
            })
        );
    }
}
