//! Feeds arbitrary bytes to every decoder and parser in baton-protocol: control messages of
//! both directions (as one frame body, and as a stream of length-prefixed frames), the
//! datagram header, join codes (wire bytes and text), allocation ids, and the wire codes. None
//! may panic, and whatever decodes must survive a round trip: decode → encode → decode gives
//! the same value, and encoding it again gives the same bytes.
#![no_main]

use baton_protocol::datagram::{self, Destination};
use baton_protocol::frame::{self, LEN_PREFIX};
use baton_protocol::{
    AllocationId, ClientMessage, CloseCode, DropReason, ErrorCode, JoinCode, LeaveReason,
    ServerMessage,
};
use libfuzzer_sys::fuzz_target;

/// Whatever `$data` decodes to as a `$message` must frame to `encoded_len` bytes, decode back
/// to itself, and frame to the same bytes again.
macro_rules! check_round_trip {
    ($message:ident, $data:expr, $what:literal) => {
        if let Ok(msg) = $message::decode($data) {
            let frame = msg.to_frame();
            assert_eq!(frame.len(), LEN_PREFIX + msg.encoded_len());
            assert_eq!(
                frame::check_len(
                    frame[..LEN_PREFIX].try_into().unwrap(),
                    frame::DEFAULT_MAX_FRAME_LEN
                ),
                Ok(msg.encoded_len()),
                concat!($what, " framed with a wrong length prefix")
            );
            let again = $message::decode(&frame[LEN_PREFIX..]);
            assert_eq!(
                again.as_ref(),
                Ok(&msg),
                concat!($what, " changed in a round trip")
            );
            if let Ok(again) = again {
                assert_eq!(again.to_frame(), frame, concat!($what, " encodes two ways"));
            }
        }
    };
}

/// Every wire code of a `u8` enum maps back to its byte.
macro_rules! check_wire_code {
    ($code:ident, $byte:expr) => {
        let code = $code::from_u8($byte);
        assert_eq!(code.to_u8(), $byte);
        assert!(!code.as_str().is_empty());
    };
}

/// Reads `data` as a control stream: length prefixes checked before anything is read, then
/// each frame decoded as both directions' messages, as the relay and the SDK read them.
fn read_frames(mut data: &[u8]) {
    // The smallest allowed maximum, so the too-long branch is reached with little input.
    let max = frame::MIN_MAX_FRAME_LEN;
    while let Some((prefix, rest)) = data.split_first_chunk::<LEN_PREFIX>() {
        let Ok(len) = frame::check_len(*prefix, max) else {
            return;
        };
        let Some(body) = rest.get(..len) else {
            return;
        };
        check_round_trip!(ClientMessage, body, "client message");
        check_round_trip!(ServerMessage, body, "server message");
        data = &rest[len..];
    }
}

fuzz_target!(|data: &[u8]| {
    check_round_trip!(ClientMessage, data, "client message");
    check_round_trip!(ServerMessage, data, "server message");
    read_frames(data);

    if let Ok((header, payload)) = datagram::split(data) {
        assert_eq!(datagram::encode(header, payload), data);
        assert_eq!(Destination::from_u16(header).to_u16(), header);
        let mut copy = data.to_vec();
        assert!(datagram::write_header(&mut copy, header));
        assert_eq!(copy, data);
    }

    if let Ok(code) = JoinCode::from_bytes(data) {
        assert_eq!(JoinCode::from_bytes(code.as_bytes()), Ok(code));
        assert_eq!(code.as_bytes(), data.to_ascii_uppercase());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(code) = JoinCode::parse(text) {
            assert_eq!(JoinCode::parse(code.as_str()), Ok(code));
            assert_eq!(code.to_string().parse::<JoinCode>(), Ok(code));
        }
        if let Ok(id) = text.parse::<AllocationId>() {
            assert_eq!(id.to_string().parse::<AllocationId>(), Ok(id));
        }
    }

    if let Some(&byte) = data.first() {
        check_wire_code!(ErrorCode, byte);
        check_wire_code!(LeaveReason, byte);
        check_wire_code!(DropReason, byte);
    }
    if let Some(raw) = data.first_chunk::<8>() {
        let close = CloseCode::from_u64(u64::from_be_bytes(*raw));
        assert_eq!(CloseCode::from_u64(u64::from(close.to_u32())), close);
    }

    if let Some(prefix) = data.first_chunk::<LEN_PREFIX>() {
        if let Ok(len) = frame::check_len(*prefix, frame::DEFAULT_MAX_FRAME_LEN) {
            assert!(len > 0 && len <= frame::DEFAULT_MAX_FRAME_LEN);
        }
    }
});
