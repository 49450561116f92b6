//! Feeds arbitrary bytes to every decoder in baton-protocol. None may panic, and whatever
//! decodes must survive a re-encode/decode round trip unchanged.
#![no_main]

use baton_protocol::datagram;
use baton_protocol::frame::{self, LEN_PREFIX};
use baton_protocol::{ClientMessage, JoinCode, ServerMessage};
use libfuzzer_sys::fuzz_target;

/// Whatever `$data` decodes to as a `$message` must frame to `encoded_len` bytes and decode
/// back to itself.
macro_rules! check_round_trip {
    ($message:ident, $data:expr, $what:literal) => {
        if let Ok(msg) = $message::decode($data) {
            let frame = msg.to_frame();
            assert_eq!(frame.len(), LEN_PREFIX + msg.encoded_len());
            let again = $message::decode(&frame[LEN_PREFIX..]);
            assert_eq!(
                again.as_ref(),
                Ok(&msg),
                concat!($what, " changed in a round trip")
            );
        }
    };
}

fuzz_target!(|data: &[u8]| {
    check_round_trip!(ClientMessage, data, "client message");
    check_round_trip!(ServerMessage, data, "server message");

    if let Ok((header, payload)) = datagram::split(data) {
        assert_eq!(datagram::encode(header, payload), data);
    }

    if let Ok(code) = JoinCode::from_bytes(data) {
        assert_eq!(JoinCode::from_bytes(code.as_bytes()), Ok(code));
    }

    if let Some(prefix) = data.first_chunk::<LEN_PREFIX>() {
        if let Ok(len) = frame::check_len(*prefix, frame::DEFAULT_MAX_FRAME_LEN) {
            assert!(len > 0 && len <= frame::DEFAULT_MAX_FRAME_LEN);
        }
    }
});
