//! The 2-byte datagram header.
//!
//! Client → relay: `dest: u16` (big-endian peer id, `0xFFFF` = every other member), then the
//! payload. Relay → client: `src: u16` (the sender's peer id, stamped by the relay from the
//! connection it arrived on, so it cannot be spoofed), then the payload.

use crate::{DecodeError, PeerId};

/// Bytes of Baton header in front of every datagram payload.
pub const HEADER_LEN: usize = 2;

/// The destination value meaning "every member of my allocation except me".
pub const BROADCAST: u16 = 0xFFFF;

/// A heartbeat: an empty datagram (no header, no payload). It only proves its sender alive
/// (a host keeps its allocation's host-loss timer from running out with it, SPEC sections 6
/// and 11); the relay drops it without reporting anything.
pub const HEARTBEAT: &[u8] = &[];

/// Whether a datagram is a [`HEARTBEAT`].
pub fn is_heartbeat(datagram: &[u8]) -> bool {
    datagram.is_empty()
}

/// Where a client wants a datagram delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One member of the sender's allocation.
    Peer(PeerId),
    /// Every other member of the sender's allocation.
    Broadcast,
}

impl Destination {
    /// The header value.
    pub fn to_u16(self) -> u16 {
        match self {
            Destination::Peer(p) => p.0,
            Destination::Broadcast => BROADCAST,
        }
    }

    /// The destination a header value names.
    pub fn from_u16(v: u16) -> Self {
        if v == BROADCAST {
            Destination::Broadcast
        } else {
            Destination::Peer(PeerId(v))
        }
    }
}

/// Splits a datagram into its header value and payload.
pub fn split(datagram: &[u8]) -> Result<(u16, &[u8]), DecodeError> {
    match datagram {
        [a, b, payload @ ..] => Ok((u16::from_be_bytes([*a, *b]), payload)),
        _ => Err(DecodeError::Truncated {
            needed: HEADER_LEN - datagram.len(),
        }),
    }
}

/// Overwrites the header of a datagram buffer in place (the relay turns a destination header
/// into a source header this way without copying the payload). Returns `false` if `datagram`
/// is shorter than the header.
pub fn write_header(datagram: &mut [u8], value: u16) -> bool {
    match datagram.get_mut(..HEADER_LEN) {
        Some(head) => {
            head.copy_from_slice(&value.to_be_bytes());
            true
        }
        None => false,
    }
}

/// A new datagram buffer: `header` followed by `payload`.
pub fn encode(header: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_empty_datagram_is_a_heartbeat() {
        assert!(is_heartbeat(HEARTBEAT));
        assert!(!is_heartbeat(&[0]));
        assert!(!is_heartbeat(&encode(BROADCAST, b"")));
    }

    #[test]
    fn header_round_trip() {
        let d = encode(7, b"hello");
        assert_eq!(hex::encode(&d), "000768656c6c6f");
        assert_eq!(split(&d).unwrap(), (7, &b"hello"[..]));
        let mut d = d;
        assert!(write_header(&mut d, BROADCAST));
        assert_eq!(split(&d).unwrap().0, 0xFFFF);
        assert_eq!(Destination::from_u16(0xFFFF), Destination::Broadcast);
        assert_eq!(Destination::from_u16(3), Destination::Peer(PeerId(3)));
    }

    #[test]
    fn short_datagrams_are_errors() {
        assert!(split(&[]).is_err());
        assert!(split(&[1]).is_err());
        assert_eq!(split(&[0, 1]).unwrap(), (1, &[][..]));
        assert!(!write_header(&mut [0u8], 1));
    }
}
