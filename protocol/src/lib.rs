//! # Baton wire protocol
//!
//! Everything two Baton endpoints must agree on, with no I/O: the ALPN string, the
//! control-stream framing, every control message with its byte layout, the datagram header,
//! error and close codes, and the shared identifier types. The relay and the SDK are drivers
//! around this crate; a client in another language can be written from `protocol/SPEC.md`, which
//! documents the same layouts in prose.
//!
//! ## Flow
//! 1. The client opens one QUIC connection with ALPN [`ALPN`] and opens one bidirectional
//!    *control stream*.
//! 2. Its first control frame is [`ClientMessage::CreateAllocation`] (it becomes host, peer id
//!    0) or [`ClientMessage::Join`] (it gets the next free [`PeerId`]). The relay answers with
//!    [`ServerMessage::AllocationCreated`], [`ServerMessage::Joined`] or
//!    [`ServerMessage::Refused`] carrying an [`ErrorCode`].
//! 3. Game traffic flows as QUIC datagrams with a 2-byte [`datagram`] header: the destination on
//!    the way in, the source (stamped by the relay) on the way out.
//! 4. Membership changes arrive as [`ServerMessage::PeerJoined`] / [`ServerMessage::PeerLeft`];
//!    terminal conditions close the QUIC connection with a [`CloseCode`].
//!
//! Every decoder checks sizes before it allocates and returns a typed [`DecodeError`] on bad
//! input; no input makes it panic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod codes;
pub mod credential;
pub mod datagram;
pub mod frame;
pub mod ids;
pub mod join_code;
pub mod message;
pub mod path;
pub mod server_name;
mod wire;

/// The first byte of every unidirectional stream, saying what it carries.
pub mod stream_kind {
    /// A migration snapshot: the rest of the stream is the snapshot's bytes. Host → relay to
    /// upload (each replaces the last), relay → new host after a migration.
    pub const SNAPSHOT: u8 = 0x01;
}

pub use codes::{CloseCode, DropReason, ErrorCode, LeaveReason};
pub use datagram::Destination;
pub use frame::FrameError;
pub use ids::{AllocationId, PeerId};
pub use join_code::{JoinCode, JoinCodeError};
pub use message::{ClientMessage, ServerMessage};
pub use path::{NatKind, PathOutcome, PathReason};
pub use wire::DecodeError;

/// ALPN protocol name; the version is part of it, so a relay and a client of different
/// protocol versions fail the TLS handshake with `no_application_protocol` instead of
/// misreading each other.
pub const ALPN: &[u8] = b"baton/3";

/// Protocol version carried in [`ALPN`].
pub const PROTOCOL_VERSION: u8 = 3;

/// Retired protocol versions a relay still accepts in the handshake, only to close the
/// connection with [`CloseCode::UnsupportedVersion`] so an old client gets a clear reason
/// instead of a bare TLS alert (SPEC section 2.2).
pub const RETIRED_ALPN: &[&[u8]] = &[b"baton/2", b"baton/1"];

/// The largest datagram payload (after Baton's header) that Baton promises to carry.
///
/// It must fit at QUIC's minimum path MTU of 1200 bytes, because path-MTU black-hole detection
/// can drop a live path back to it: 1200 bytes of UDP payload minus the QUIC short header
/// (1 byte flags + up to 20 bytes destination connection id + up to 4 bytes packet number),
/// the 16-byte AEAD tag, the DATAGRAM frame header (1 byte type + 2 bytes length) and
/// Baton's 2-byte header leaves 1154; 1150 keeps a small margin.
pub const MAX_DATAGRAM_PAYLOAD: usize = 1150;

/// Hard upper bound on members of one allocation (peer ids are `u16`, `0xFFFF` means
/// broadcast).
pub const MAX_PEERS_LIMIT: u16 = 4096;
