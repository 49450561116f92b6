//! Control messages. Client → relay messages carry a `request_id` chosen by the client; the
//! relay echoes it in the reply (`AllocationCreated`, `Joined`, `Done`, `Refused` or, from a
//! fleet node, `Redirect`) so replies can be matched to requests. Relay → client events carry no request id.
//!
//! All integers are big-endian. A join code is `len: u8` followed by `len` ASCII characters.
//!
//! One file a direction: `client.rs` holds [`ClientMessage`] (client → relay), `server.rs` holds
//! [`ServerMessage`] (relay → client); this module holds the field codecs both share.

use bytes::{BufMut, Bytes, BytesMut};

use crate::join_code::{self, JoinCode};
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
