//! Control messages. Client → relay messages carry a `request_id` chosen by the client; the
//! relay echoes it in the reply (`AllocationCreated`, `Joined`, `Done`, `Refused` or, from a
//! fleet node, `Redirect`) so replies can be matched to requests. Relay → client events carry no request id.
//!
//! All integers are big-endian. A join code is `len: u8` followed by `len` ASCII characters.
//!
//! One file a direction: `client.rs` holds [`ClientMessage`] (client → relay), `server.rs` holds
//! [`ServerMessage`] (relay → client); this module holds the field codecs both share.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use crate::join_code::{self, JoinCode};
use crate::path::{self, NatKind, MAX_PATH_CANDIDATES};
use crate::wire::Reader;
use crate::DecodeError;
use crate::{credential, frame};

mod client;
mod server;

pub use client::ClientMessage;
pub use server::ServerMessage;

/// The framing both directions share, written once: each type brings `encoded_len`,
/// `write_to` and `read_body`.
macro_rules! framing {
    ($($message:ident),*) => {$(
        impl $message {
            /// Appends the complete frame (length prefix + type + body) to `out`.
            pub fn encode_frame(&self, out: &mut BytesMut) {
                frame::encode(out, self.encoded_len(), |b| self.write_to(b));
            }

            /// The complete frame as bytes.
            pub fn to_frame(&self) -> Bytes {
                frame::encode_to_bytes(self.encoded_len(), |b| self.write_to(b))
            }

            /// Decodes a frame body (type byte + body, without the length prefix).
            pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
                decode_body(frame, Self::read_body)
            }
        }
    )*};
}

framing!(ClientMessage, ServerMessage);

pub(crate) fn code_len(code: &JoinCode) -> usize {
    1 + code.len()
}

pub(crate) fn put_code(buf: &mut impl BufMut, code: &JoinCode) {
    buf.put_u8(code.len() as u8);
    buf.put_slice(code.as_bytes());
}

pub(crate) fn read_code(r: &mut Reader<'_>) -> Result<JoinCode, DecodeError> {
    let len = usize::from(r.u8()?);
    if !(join_code::MIN_LEN..=join_code::MAX_LEN).contains(&len) {
        return Err(DecodeError::InvalidField {
            field: "code",
            reason: "length out of range",
        });
    }
    JoinCode::from_bytes(r.bytes(len)?).map_err(|_| DecodeError::InvalidField {
        field: "code",
        reason: "character outside the join-code alphabet",
    })
}

/// Bytes a credential field takes: `credential_len: u16`, then the text (SPEC section 16).
pub(crate) fn credential_len(credential: &Option<String>) -> usize {
    2 + credential.as_ref().map_or(0, String::len)
}

/// Writes a credential field; `None` is length 0.
pub(crate) fn put_credential(buf: &mut impl BufMut, credential: &Option<String>) {
    let text = credential.as_deref().unwrap_or("");
    buf.put_u16(text.len() as u16);
    buf.put_slice(text.as_bytes());
}

/// Reads a credential field: at most [`credential::MAX_TEXT_LEN`] bytes of the base64url
/// alphabet; length 0 is `None`. Whether it verifies is the relay's business.
pub(crate) fn read_credential(r: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    let len = usize::from(r.u16()?);
    if len > credential::MAX_TEXT_LEN {
        return Err(DecodeError::InvalidField {
            field: "credential",
            reason: "longer than 512 bytes",
        });
    }
    let text = r.bytes(len)?;
    if !credential::text_ok(text) {
        return Err(DecodeError::InvalidField {
            field: "credential",
            reason: "character outside the base64url alphabet",
        });
    }
    Ok((len > 0).then(|| String::from_utf8_lossy(text).into_owned()))
}

/// Family byte of an IPv4 address.
const FAMILY_V4: u8 = 4;
/// Family byte of an IPv6 address.
const FAMILY_V6: u8 = 6;

/// Bytes a socket address takes: family, address, port.
pub(crate) fn address_len(address: &SocketAddr) -> usize {
    1 + match address {
        SocketAddr::V4(_) => 4,
        SocketAddr::V6(_) => 16,
    } + 2
}

pub(crate) fn put_address(buf: &mut impl BufMut, address: &SocketAddr) {
    match address {
        SocketAddr::V4(v4) => {
            buf.put_u8(FAMILY_V4);
            buf.put_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            buf.put_u8(FAMILY_V6);
            buf.put_slice(&v6.ip().octets());
        }
    }
    buf.put_u16(address.port());
}

/// Reads a socket address a client can connect to: a known family, an address that is neither
/// unspecified nor multicast, a port that is not 0.
pub(crate) fn read_address(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let invalid = |reason| DecodeError::InvalidField {
        field: "address",
        reason,
    };
    let ip: std::net::IpAddr = match r.u8()? {
        FAMILY_V4 => Ipv4Addr::from(r.array::<4>()?).into(),
        FAMILY_V6 => Ipv6Addr::from(r.array::<16>()?).into(),
        _ => return Err(invalid("family is neither 4 nor 6")),
    };
    let port = r.u16()?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(invalid("unspecified or multicast address"));
    }
    if port == 0 {
        return Err(invalid("port 0"));
    }
    Ok(SocketAddr::new(ip, port))
}

/// Bytes a candidate list takes: `count: u8`, then each address.
pub(crate) fn candidates_len(candidates: &[SocketAddr]) -> usize {
    1 + candidates.iter().map(address_len).sum::<usize>()
}

/// Writes a candidate list: `count: u8`, then each address as in [`put_address`]. A sender
/// keeps to 1..=[`MAX_PATH_CANDIDATES`] valid candidates (encoding does not check).
pub(crate) fn put_candidates(buf: &mut impl BufMut, candidates: &[SocketAddr]) {
    buf.put_u8(candidates.len().min(usize::from(u8::MAX)) as u8);
    for c in candidates.iter().take(usize::from(u8::MAX)) {
        put_address(buf, c);
    }
}

/// Reads a candidate list: a count of 1..=[`MAX_PATH_CANDIDATES`], then that many addresses,
/// each unicast with a port ([`path::is_valid_candidate`]).
pub(crate) fn read_candidates(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, DecodeError> {
    let count = usize::from(r.u8()?);
    if !(1..=MAX_PATH_CANDIDATES).contains(&count) {
        return Err(DecodeError::InvalidField {
            field: "candidates",
            reason: "count outside 1..=8",
        });
    }
    let mut candidates = Vec::with_capacity(count);
    for _ in 0..count {
        let c = read_address(r)?;
        if !path::is_valid_candidate(&c) {
            return Err(DecodeError::InvalidField {
                field: "candidates",
                reason: "not a unicast address",
            });
        }
        candidates.push(c);
    }
    Ok(candidates)
}

/// Reads a `NatKind` byte; values this version does not define are an error.
pub(crate) fn read_nat(r: &mut Reader<'_>) -> Result<NatKind, DecodeError> {
    NatKind::from_u8(r.u8()?).ok_or(DecodeError::InvalidField {
        field: "nat",
        reason: "not a defined NAT kind",
    })
}

/// Decodes a frame body: its type byte, then what `read_body` reads for that type, and nothing
/// after it.
fn decode_body<T>(
    frame: &[u8],
    read_body: impl FnOnce(u8, &mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut r = Reader::new(frame);
    let ty = r.u8().map_err(|_| DecodeError::Empty)?;
    let msg = read_body(ty, &mut r)?;
    r.finish()?;
    Ok(msg)
}
