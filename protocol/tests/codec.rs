//! Integration tests that pin Baton's wire format.
//!
//! * Hex snapshots: one fixed example of every control message, with the expected bytes worked
//!   out by hand from the layouts in `protocol/SPEC.md` (not produced by the encoder), so any
//!   change to the format fails here. The spaced hex strings also appear verbatim in SPEC.md,
//!   which a test checks, so the spec's examples cannot drift from the code.
//! * Property tests: round trip, `encoded_len` equals what `write_to` writes, framing, and
//!   random / truncated / bit-flipped input never panics.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use baton_protocol::datagram::{self, Destination, BROADCAST};
use baton_protocol::frame::{
    self, FrameError, DEFAULT_MAX_FRAME_LEN, LEN_PREFIX, MIN_MAX_FRAME_LEN,
};
use baton_protocol::join_code::{self, JoinCode, ALPHABET};
use baton_protocol::{
    stream_kind, AllocationId, ClientMessage, CloseCode, DecodeError, DropReason, ErrorCode,
    LeaveReason, NatKind, PathOutcome, PathReason, PeerId, ServerMessage, ALPN,
    MAX_DATAGRAM_PAYLOAD, MAX_PEERS_LIMIT, RETIRED_ALPN,
};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const SPEC: &str = include_str!("../SPEC.md");

fn code(s: &str) -> JoinCode {
    JoinCode::parse(s).expect("valid join code in test")
}

/// Removes the spaces used to group fields in the expected hex.
fn unspaced(spaced: &str) -> String {
    spaced.split_whitespace().collect()
}

/// What these tests need of a control message. `ClientMessage` and `ServerMessage` have the
/// same inherent methods, so each check below is written once and run for both directions.
trait Message: Clone + PartialEq + std::fmt::Debug {
    fn decode(body: &[u8]) -> Result<Self, DecodeError>;
    fn to_frame(&self) -> Bytes;
    fn encoded_len(&self) -> usize;
    fn write_to(&self, out: &mut Vec<u8>);
    fn type_byte(&self) -> u8;
}

/// Implements [`Message`] by calling the type's inherent methods of the same names.
macro_rules! message {
    ($($message:ident),*) => {$(
        impl Message for $message {
            fn decode(body: &[u8]) -> Result<Self, DecodeError> {
                $message::decode(body)
            }

            fn to_frame(&self) -> Bytes {
                $message::to_frame(self)
            }

            fn encoded_len(&self) -> usize {
                $message::encoded_len(self)
            }

            fn write_to(&self, out: &mut Vec<u8>) {
                $message::write_to(self, out)
            }

            fn type_byte(&self) -> u8 {
                $message::type_byte(self)
            }
        }
    )*};
}

message!(ClientMessage, ServerMessage);

// ---------------------------------------------------------------------------------------------
// Hex snapshots
// ---------------------------------------------------------------------------------------------

/// One example of every client message and its frame, fields separated by spaces:
/// `len:u32 type:u8 fields...`.
fn client_snapshots() -> Vec<(ClientMessage, &'static str)> {
    vec![
        (
            // len = 1 type + 4 request_id + 2 max_peers + 4 code_ttl_secs + 2 credential_len = 13
            // 150 = 0x0096, 86400 = 0x00015180, no credential
            ClientMessage::CreateAllocation {
                request_id: 0x0102_0304,
                max_peers: 150,
                code_ttl_secs: 86_400,
                host_loss_timeout_ms: 0,
                credential: None,
            },
            "0000000f 01 01020304 0096 00015180 0000 0000",
        ),
        (
            // len = 1 + 4 + (1 + 6) + (2 + 4) = 18 = 0x12; "BCDF78" = 42 43 44 46 37 38,
            // credential "AQ-_" = 41 51 2d 5f (a short stand-in: the codec checks the alphabet
            // and the length, the relay checks the rest)
            ClientMessage::Join {
                request_id: 7,
                code: code("BCDF78"),
                credential: Some("AQ-_".into()),
            },
            "00000012 02 00000007 06 424344463738 0004 41512d5f",
        ),
        (
            // len = 1 + 4 + 2 = 7
            ClientMessage::Kick {
                request_id: 0xDEAD_BEEF,
                peer: PeerId(3),
            },
            "00000007 03 deadbeef 0003",
        ),
        (
            // len = 1 + 4 = 5
            ClientMessage::RevokeCode {
                request_id: u32::MAX,
            },
            "00000005 04 ffffffff",
        ),
        (
            // len = 1 + 4 + 8 + 16 = 29 = 0x1d
            ClientMessage::ClaimHost {
                request_id: 9,
                allocation: AllocationId(0x0123_4567_89AB_CDEF),
                host_token: std::array::from_fn(|i| i as u8), // 00 01 .. 0f
            },
            "0000001d 05 00000009 0123456789abcdef 000102030405060708090a0b0c0d0e0f",
        ),
        (
            // len = 1 + 4 + 8 + 16 = 29 = 0x1d; request_id 10 = 0x0a
            ClientMessage::MigrateAllocation {
                request_id: 10,
                allocation: AllocationId(0xFEDC_BA98_7654_3210),
                ticket: std::array::from_fn(|i| 0xF0 + i as u8), // f0 f1 .. ff
            },
            "0000001d 06 0000000a fedcba9876543210 f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
        ),
        (
            // len = 1 + 4 + 8 + 2 + 16 + 2 = 33 = 0x21; request_id 11 = 0x0b
            ClientMessage::Rejoin {
                request_id: 11,
                allocation: AllocationId(0x0011_2233_4455_6677),
                peer: PeerId(5),
                reconnect_token: [0xAB; 16],
                credential: None,
            },
            "00000021 07 0000000b 0011223344556677 0005 abababababababababababababababab 0000",
        ),
        (
            // len = 1 + 4 + 2 peer + 1 nat + 32 fingerprint + (1 + 7 + 7) candidates = 55 =
            // 0x37; endpoint_independent = 1; 192.168.1.20:50000 = c0a80114 c350,
            // 198.51.100.7:61000 = c6336407 ee48
            ClientMessage::PathOffer {
                request_id: 12,
                peer: PeerId::HOST,
                nat: NatKind::EndpointIndependent,
                fingerprint: std::array::from_fn(|i| i as u8),
                candidates: vec![
                    "192.168.1.20:50000".parse().expect("address"),
                    "198.51.100.7:61000".parse().expect("address"),
                ],
            },
            "00000037 08 0000000c 0000 01 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f 02 04 c0a80114 c350 04 c6336407 ee48",
        ),
        (
            // len = 1 + 4 + 2 + 1 + 1 = 9; direct = 1, reason direct = 0
            ClientMessage::PathReport {
                request_id: 13,
                peer: PeerId::HOST,
                outcome: PathOutcome::Direct,
                reason: PathReason::Direct,
            },
            "00000009 09 0000000d 0000 01 00",
        ),
        (
            // relayed = 2, punch_timed_out = 1
            ClientMessage::PathReport {
                request_id: 14,
                peer: PeerId(1),
                outcome: PathOutcome::Relayed,
                reason: PathReason::PunchTimedOut,
            },
            "00000009 09 0000000e 0001 02 01",
        ),
        (
            // len = 1: the type byte, no body (no request id either)
            ClientMessage::Probe,
            "00000001 0a",
        ),
    ]
}

/// One example of every relay message (two where a variable-length part matters).
fn server_snapshots() -> Vec<(ServerMessage, &'static str)> {
    vec![
        (
            // len = 1 + 4 + 8 + (1 + 12) + 4 + 2 + 2 + 16 = 50 = 0x32
            // "6789BCDFGHJK" = 36 37 38 39 42 43 44 46 47 48 4a 4b; 3600 = 0x0e10; 1150 = 0x047e
            ServerMessage::AllocationCreated {
                request_id: 1,
                allocation: AllocationId(0x0011_2233_4455_6677),
                code: code("6789BCDFGHJK"),
                code_ttl_secs: 3600,
                max_peers: 150,
                max_payload: 1150,
                reconnect_token: std::array::from_fn(|i| 0x10 + i as u8), // 10 11 .. 1f
                host_loss_timeout_ms: 1500,
            },
            "00000034 81 00000001 0011223344556677 0c 363738394243444647484a4b 00000e10 0096 047e \
             101112131415161718191a1b1c1d1e1f 05dc",
        ),
        (
            // len = 1 + 4 + 8 + 2 + 2 + 2 + 16 + 2 + 3 * 2 = 43 = 0x2b
            ServerMessage::Joined {
                request_id: 2,
                allocation: AllocationId(0x0011_2233_4455_6677),
                peer: PeerId(5),
                max_payload: 1150,
                host: PeerId::HOST,
                reconnect_token: std::array::from_fn(|i| 0x20 + i as u8), // 20 21 .. 2f
                host_loss_timeout_ms: 1500,
                members: vec![PeerId(0), PeerId(1), PeerId(4)],
            },
            "0000002d 82 00000002 0011223344556677 0005 047e 0000 \
             202122232425262728292a2b2c2d2e2f 05dc 0003 0000 0001 0004",
        ),
        (
            // No other members: len = 1 + 4 + 8 + 2 + 2 + 2 + 16 + 2 = 37 = 0x25
            ServerMessage::Joined {
                request_id: 3,
                allocation: AllocationId(1),
                peer: PeerId(1),
                max_payload: 1150,
                host: PeerId::HOST,
                reconnect_token: std::array::from_fn(|i| 0x30 + i as u8), // 30 31 .. 3f
                host_loss_timeout_ms: 1500,
                members: vec![],
            },
            "00000027 82 00000003 0000000000000001 0001 047e 0000 \
             303132333435363738393a3b3c3d3e3f 05dc 0000",
        ),
        (
            // A `Rejoin` reply after a migration: peer 5 back in the successor allocation, hosted
            // by peer 3. len = 1 + 4 + 8 + 2 + 2 + 2 + 16 + 2 + 2 * 2 = 41 = 0x29
            ServerMessage::Joined {
                request_id: 11,
                allocation: AllocationId(0x8877_6655_4433_2211),
                peer: PeerId(5),
                max_payload: 1150,
                host: PeerId(3),
                reconnect_token: [0xAB; 16],
                host_loss_timeout_ms: 1500,
                members: vec![PeerId(1), PeerId(3)],
            },
            "0000002b 82 0000000b 8877665544332211 0005 047e 0003 \
             abababababababababababababababab 05dc 0002 0001 0003",
        ),
        (
            // len = 1 + 4 + 1 + 4 = 10; full = 4, value = max peers 150
            ServerMessage::Refused {
                request_id: 4,
                code: ErrorCode::Full,
                value: 150,
            },
            "0000000a 83 00000004 04 00000096",
        ),
        (
            // An error code this version does not know is carried as is (200 = 0xc8).
            ServerMessage::Refused {
                request_id: 5,
                code: ErrorCode::Unknown(200),
                value: 0,
            },
            "0000000a 83 00000005 c8 00000000",
        ),
        (
            // migrating = 16 = 0x10, retry in 4000 ms = 0x0fa0
            ServerMessage::Refused {
                request_id: 12,
                code: ErrorCode::Migrating,
                value: 4000,
            },
            "0000000a 83 0000000c 10 00000fa0",
        ),
        (
            ServerMessage::Done { request_id: 0x10 },
            "00000005 84 00000010",
        ),
        (
            ServerMessage::PeerJoined {
                peer: PeerId(0x0102),
            },
            "00000003 85 0102",
        ),
        (
            // timed_out = 2
            ServerMessage::PeerLeft {
                peer: PeerId(7),
                reason: LeaveReason::TimedOut,
            },
            "00000004 86 0007 02",
        ),
        (
            // len = 1 + (1 + 4) = 6; "MNPQ" = 4d 4e 50 51
            ServerMessage::CodeRevoked { code: code("mnpq") },
            "00000006 87 04 4d4e5051",
        ),
        (
            // len = 1 + 1 + 4 + 4 = 10; congested = 3
            ServerMessage::DatagramsDropped {
                reason: DropReason::Congested,
                count: 12,
                value: 3,
            },
            "0000000a 88 03 0000000c 00000003",
        ),
        (
            // len = 1 + 2 + 1 + 2 = 6; timed_out = 2
            ServerMessage::HostLost {
                host: PeerId::HOST,
                reason: LeaveReason::TimedOut,
                elected: PeerId(3),
            },
            "00000006 89 0000 02 0003",
        ),
        (
            // len = 1 + 8 + 16 + 4 = 29 = 0x1d; 5000 = 0x1388
            ServerMessage::Promote {
                allocation: AllocationId(0x0011_2233_4455_6677),
                ticket: std::array::from_fn(|i| 0xC0 + i as u8), // c0 c1 .. cf
                deadline_ms: 5000,
            },
            "0000001d 8a 0011223344556677 c0c1c2c3c4c5c6c7c8c9cacbcccdcecf 00001388",
        ),
        (
            // len = 1 + 8 + 2 = 11 = 0x0b
            ServerMessage::Migrated {
                allocation: AllocationId(0x8877_6655_4433_2211),
                host: PeerId(3),
            },
            "0000000b 8b 8877665544332211 0003",
        ),
        (
            // len = 1 + 2 = 3
            ServerMessage::PeerRejoined { peer: PeerId(1) },
            "00000003 8c 0001",
        ),
        (
            // len = 1 + 4 = 5; 65536 = 0x00010000
            ServerMessage::SnapshotStored { len: 65_536 },
            "00000005 8d 00010000",
        ),
        (
            // len = 1 + 1 + 4 = 6; payload_too_large = 7, limit 10 MiB = 10485760 = 0x00a00000
            ServerMessage::SnapshotRejected {
                code: ErrorCode::PayloadTooLarge,
                value: 10 * 1024 * 1024,
            },
            "00000006 8e 07 00a00000",
        ),
        (
            // len = 1 + 4 + (1 + 4 + 2) + (2 + 19) = 33 = 0x21; family 4, 192.0.2.10 =
            // c0 00 02 0a, port 7700 = 0x1e14, "relay-2.example.com" (19 = 0x13 bytes)
            ServerMessage::Redirect {
                request_id: 2,
                address: "192.0.2.10:7700".parse().expect("address"),
                server_name: "relay-2.example.com".into(),
            },
            "00000021 8f 00000002 04 c000020a 1e14 0013 72656c61792d322e6578616d706c652e636f6d",
        ),
        (
            // len = 1 + 4 + (1 + 16 + 2) + (2 + 11) = 37 = 0x25; family 6, 2001:db8::2, port
            // 7700, the IP literal "2001:db8::2" (11 = 0x0b bytes) as server name
            ServerMessage::Redirect {
                request_id: 3,
                address: "[2001:db8::2]:7700".parse().expect("address"),
                server_name: "2001:db8::2".into(),
            },
            "00000025 8f 00000003 06 20010db8000000000000000000000002 1e14 000b 323030313a6462383a3a32",
        ),
        (
            // len = 1 + (1 + 4 + 2) + (2 + 19) = 29 = 0x1d: as Redirect, without a request id
            ServerMessage::Relocate {
                address: "192.0.2.10:7700".parse().expect("address"),
                server_name: "relay-2.example.com".into(),
            },
            "0000001d 90 04 c000020a 1e14 0013 72656c61792d322e6578616d706c652e636f6d",
        ),
        (
            // len = 1 + (1 + 4 + 2) = 8: family 4, 198.51.100.7, port 61000 (0xee48)
            // len = 1 + (1 + 4 + 2) + 2 = 10: family 4, 198.51.100.7, port 61000, probe port
            // 3479
            ServerMessage::ObservedAddress {
                address: "198.51.100.7:61000".parse().expect("address"),
                probe_port: 3479,
            },
            "0000000a 91 04 c6336407 ee48 0d97",
        ),
        (
            // len = 1 + (1 + 16 + 2) + 2 = 22 = 0x16: family 6, 2001:db8::7, port 61000, no
            // probe port (0)
            ServerMessage::ObservedAddress {
                address: "[2001:db8::7]:61000".parse().expect("address"),
                probe_port: 0,
            },
            "00000016 91 06 20010db8000000000000000000000007 ee48 0000",
        ),
        (
            // len = 1 + 2 from + 1 nat + 32 fingerprint + (1 + 7 + 7) = 51 = 0x33: the offer
            // of the client example, forwarded to the host from peer 1
            ServerMessage::PathOffer {
                from: PeerId(1),
                nat: NatKind::EndpointIndependent,
                fingerprint: std::array::from_fn(|i| i as u8),
                candidates: vec![
                    "192.168.1.20:50000".parse().expect("address"),
                    "198.51.100.7:61000".parse().expect("address"),
                ],
            },
            "00000033 92 0001 01 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f 02 04 c0a80114 c350 04 c6336407 ee48",
        ),
        (
            // len = 1 + 2 + 1 + 32 + (1 + 19) = 56 = 0x38: from the host, NAT unknown (0),
            // one IPv6 candidate, [2001:db8::2]:7777 (0x1e61)
            ServerMessage::PathOffer {
                from: PeerId::HOST,
                nat: NatKind::Unknown,
                fingerprint: std::array::from_fn(|i| 0x20 + i as u8),
                candidates: vec!["[2001:db8::2]:7777".parse().expect("address")],
            },
            "00000038 92 0000 00 202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f 01 06 20010db8000000000000000000000002 1e61",
        ),
        (
            // len = 1 + 2 + 2 = 5: punch towards peer 0 after 30 ms (0x001e)
            ServerMessage::Punch {
                peer: PeerId::HOST,
                delay_ms: 30,
            },
            "00000005 93 0000 001e",
        ),
    ]
}

/// Each snapshot encodes to its hex and decodes back to itself.
fn check_snapshots<M: Message>(snapshots: &[(M, &str)]) {
    for (msg, spaced) in snapshots {
        let frame = msg.to_frame();
        assert_eq!(hex::encode(&frame), unspaced(spaced), "encoding {msg:?}");
        let decoded = M::decode(&frame[LEN_PREFIX..]).expect("snapshot decodes");
        assert_eq!(&decoded, msg, "decoding {spaced}");
    }
}

#[test]
fn client_message_snapshots() {
    check_snapshots(&client_snapshots());
}

#[test]
fn server_message_snapshots() {
    check_snapshots(&server_snapshots());
}

/// The type bytes `M::decode` knows, the snapshots' type bytes and `expected` are the same set.
/// A type byte is "known" if decoding it alone fails for a reason other than `UnknownType`.
fn check_snapshot_types<M: Message>(snapshots: &[(M, &str)], expected: RangeInclusive<u8>) {
    let known: BTreeSet<u8> = (0..=u8::MAX)
        .filter(|&ty| M::decode(&[ty]).map(drop) != Err(DecodeError::UnknownType(ty)))
        .collect();
    let snap: BTreeSet<u8> = snapshots.iter().map(|(m, _)| m.type_byte()).collect();
    assert_eq!(known, snap);
    assert_eq!(known, expected.collect());
}

/// Fails when a message type is added without a snapshot (the enums are `#[non_exhaustive]`,
/// so a `match` here cannot catch it).
#[test]
fn every_message_type_has_a_snapshot() {
    check_snapshot_types(&client_snapshots(), 0x01..=0x0A);
    check_snapshot_types(&server_snapshots(), 0x81..=0x93);
}

#[test]
fn join_codes_on_the_wire_are_case_insensitive() {
    // "bcdf78" in lower case: 62 63 64 66 37 38.
    let body = hex::decode(unspaced("02 00000007 06 626364663738 0000")).expect("hex");
    assert_eq!(
        ClientMessage::decode(&body),
        Ok(ClientMessage::Join {
            request_id: 7,
            code: code("BCDF78"),
            credential: None,
        })
    );
}

#[test]
fn wire_code_values_are_pinned() {
    let errors: Vec<(u8, &str)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.to_u8(), c.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (1, "not_found"),
            (2, "expired"),
            (3, "revoked"),
            (4, "full"),
            (5, "unauthorized"),
            (6, "rate_limited"),
            (7, "payload_too_large"),
            (8, "unknown_peer"),
            (9, "not_host"),
            (10, "already_bound"),
            (11, "relay_full"),
            (12, "invalid_request"),
            (13, "shutting_down"),
            (14, "not_bound"),
            (15, "closed"),
            (16, "migrating"),
            (17, "directory_unavailable"),
            (18, "direct_disabled"),
        ]
    );
    let leaves: Vec<(u8, &str)> = LeaveReason::ALL
        .iter()
        .map(|c| (c.to_u8(), c.as_str()))
        .collect();
    assert_eq!(
        leaves,
        [
            (1, "closed"),
            (2, "timed_out"),
            (3, "kicked"),
            (4, "connection_lost"),
            (5, "protocol_violation"),
            (6, "relay_shutting_down"),
            (7, "allocation_closed"),
            (8, "migration_failed"),
            (9, "host_never_bound"),
        ]
    );
    let drops: Vec<(u8, &str)> = DropReason::ALL
        .iter()
        .map(|c| (c.to_u8(), c.as_str()))
        .collect();
    assert_eq!(
        drops,
        [
            (1, "too_large"),
            (2, "unknown_peer"),
            (3, "congested"),
            (4, "not_bound"),
            (5, "malformed"),
            (6, "rate_limited"),
        ]
    );
    // 0 is reserved in every byte enum and decodes as unknown.
    assert_eq!(ErrorCode::from_u8(0), ErrorCode::Unknown(0));
    assert_eq!(LeaveReason::from_u8(0), LeaveReason::Unknown(0));
    assert_eq!(DropReason::from_u8(0), DropReason::Unknown(0));
}

#[test]
fn close_codes_are_pinned() {
    let fixed = [
        (CloseCode::Normal, 0),
        (CloseCode::Kicked, 1),
        (CloseCode::RelayShuttingDown, 2),
        (CloseCode::ProtocolViolation, 3),
        (CloseCode::BindTimeout, 4),
        (CloseCode::AllocationClosed, 5),
        (CloseCode::ControlBacklog, 6),
        (CloseCode::UnsupportedVersion, 7),
        (CloseCode::RelayFull, 8),
        (CloseCode::HostUnresponsive, 9),
        (CloseCode::HostLost(LeaveReason::Closed), 0x101),
        (CloseCode::HostLost(LeaveReason::TimedOut), 0x102),
        (CloseCode::HostLost(LeaveReason::Kicked), 0x103),
        (CloseCode::HostLost(LeaveReason::ConnectionLost), 0x104),
        (CloseCode::HostLost(LeaveReason::ProtocolViolation), 0x105),
        (CloseCode::HostLost(LeaveReason::RelayShuttingDown), 0x106),
        (CloseCode::HostLost(LeaveReason::Unknown(0x42)), 0x142),
    ];
    for (code, value) in fixed {
        assert_eq!(code.to_u32(), value, "{code:?}");
        assert_eq!(CloseCode::from_u64(u64::from(value)), code);
    }
    assert_eq!(CloseCode::from_u64(10), CloseCode::Unknown(10));
    assert_eq!(CloseCode::from_u64(0x200), CloseCode::Unknown(0x200));
    assert_eq!(CloseCode::from_u64(u64::MAX), CloseCode::Unknown(u32::MAX));
}

#[test]
fn heartbeat_is_the_empty_datagram() {
    assert_eq!(hex::encode(datagram::HEARTBEAT), "");
    assert!(datagram::is_heartbeat(&[]));
    assert!(!datagram::is_heartbeat(&datagram::encode(0, b"")));
}

#[test]
fn datagram_header_snapshots() {
    // Client → relay: destination 0 (the host), payload "hi".
    assert_eq!(hex::encode(datagram::encode(0, b"hi")), "00006869");
    // Broadcast.
    assert_eq!(
        hex::encode(datagram::encode(Destination::Broadcast.to_u16(), b"ok")),
        "ffff6f6b"
    );
    assert_eq!(BROADCAST, 0xFFFF);
    // Relay → client: the relay overwrites the destination with the sender's id in place.
    let mut d = datagram::encode(0, b"hi");
    assert!(datagram::write_header(&mut d, 0x0102));
    assert_eq!(hex::encode(&d), "01026869");
    assert_eq!(datagram::split(&d), Ok((0x0102, &b"hi"[..])));
    assert_eq!(
        datagram::split(&[]),
        Err(DecodeError::Truncated { needed: 2 })
    );
    assert_eq!(
        datagram::split(&[7]),
        Err(DecodeError::Truncated { needed: 1 })
    );
}

#[test]
fn the_spec_names_the_alpn_and_the_retired_versions_reason() {
    let hex: Vec<String> = ALPN.iter().map(|b| format!("{b:02x}")).collect();
    let alpn = std::str::from_utf8(ALPN).unwrap();
    assert!(SPEC.contains(&format!("bytes `{alpn}` (`{}`)", hex.join(" "))));
    assert!(SPEC.contains(&format!(
        "`{}`",
        CloseCode::UnsupportedVersion.description()
    )));
    for retired in RETIRED_ALPN {
        let name = std::str::from_utf8(retired).unwrap();
        assert!(CloseCode::UnsupportedVersion.description().contains(name));
    }
}

#[test]
fn constants_are_pinned() {
    assert_eq!(ALPN, b"baton/3");
    assert_eq!(RETIRED_ALPN, [&b"baton/2"[..], &b"baton/1"[..]]);
    assert_eq!(MAX_DATAGRAM_PAYLOAD, 1150);
    assert_eq!(DEFAULT_MAX_FRAME_LEN, 16_384);
    assert_eq!(MIN_MAX_FRAME_LEN, 9_216);
    assert_eq!(LEN_PREFIX, 4);
    assert_eq!(datagram::HEADER_LEN, 2);
    assert_eq!(ALPHABET, b"6789BCDFGHJKLMNPQRTW");
    assert_eq!(
        (
            join_code::MIN_LEN,
            join_code::DEFAULT_LEN,
            join_code::MAX_LEN
        ),
        (4, 6, 12)
    );
    assert_eq!(MAX_PEERS_LIMIT, 4096);
    assert_eq!(stream_kind::SNAPSHOT, 0x01);
}

// ---------------------------------------------------------------------------------------------
// The spec stays in step with the code
// ---------------------------------------------------------------------------------------------

/// SPEC.md shows the hex of every snapshot verbatim.
fn check_spec_shows<M: Message>(snapshots: &[(M, &str)]) {
    for (msg, spaced) in snapshots {
        assert!(
            SPEC.contains(spaced),
            "SPEC.md lacks the example for {msg:?}: `{spaced}`"
        );
    }
}

#[test]
fn spec_shows_every_snapshot() {
    check_spec_shows(&client_snapshots());
    check_spec_shows(&server_snapshots());
}

#[test]
fn spec_documents_every_message_type_and_code() {
    let variant = |debug: String| -> String {
        debug
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    for (msg, _) in client_snapshots() {
        let heading = format!(
            "### `0x{:02x}` {}",
            msg.type_byte(),
            variant(format!("{msg:?}"))
        );
        assert!(SPEC.contains(&heading), "SPEC.md lacks heading {heading:?}");
    }
    for (msg, _) in server_snapshots() {
        let heading = format!(
            "### `0x{:02x}` {}",
            msg.type_byte(),
            variant(format!("{msg:?}"))
        );
        assert!(SPEC.contains(&heading), "SPEC.md lacks heading {heading:?}");
    }
    for c in ErrorCode::ALL {
        let row = format!("| {} | `{}` |", c.to_u8(), c.as_str());
        assert!(SPEC.contains(&row), "SPEC.md lacks error code row {row:?}");
    }
    for c in LeaveReason::ALL {
        let row = format!("| {} | `{}` |", c.to_u8(), c.as_str());
        assert!(
            SPEC.contains(&row),
            "SPEC.md lacks leave reason row {row:?}"
        );
    }
    for c in DropReason::ALL {
        let row = format!("| {} | `{}` |", c.to_u8(), c.as_str());
        assert!(SPEC.contains(&row), "SPEC.md lacks drop reason row {row:?}");
    }
    for needle in [
        "`baton/1`",
        "`baton/2`",
        "`6789BCDFGHJKLMNPQRTW`",
        "1150",
        "16384",
        "9216",
        "8231",
        "| `0x01` | snapshot |",
        "10485760",
        "## 14. Host migration",
    ] {
        assert!(SPEC.contains(needle), "SPEC.md lacks {needle}");
    }
}

/// The sequence example in SPEC.md, checked byte for byte.
/// Each example of a spec walk-through encodes to its hex, and SPEC.md shows that hex.
fn check_spec_examples<M: Message>(examples: &[(M, &str)]) {
    for (msg, spaced) in examples {
        assert_eq!(hex::encode(msg.to_frame()), unspaced(spaced), "{msg:?}");
        assert!(SPEC.contains(spaced), "SPEC.md lacks `{spaced}`");
    }
}

#[test]
fn spec_sequence_example() {
    let alloc = AllocationId(0x1F2E_3D4C_5B6A_7988);
    let client: [(ClientMessage, &str); 2] = [
        (
            ClientMessage::CreateAllocation {
                request_id: 1,
                max_peers: 0,
                code_ttl_secs: 0,
                host_loss_timeout_ms: 0,
                credential: None,
            },
            "0000000f 01 00000001 0000 00000000 0000 0000",
        ),
        (
            ClientMessage::Join {
                request_id: 1,
                code: code("BCDF78"),
                credential: None,
            },
            "0000000e 02 00000001 06 424344463738 0000",
        ),
    ];
    let server: [(ServerMessage, &str); 4] = [
        (
            ServerMessage::AllocationCreated {
                request_id: 1,
                allocation: alloc,
                code: code("BCDF78"),
                code_ttl_secs: 86_400,
                max_peers: 150,
                max_payload: 1150,
                reconnect_token: std::array::from_fn(|i| 0xA0 + i as u8),
                host_loss_timeout_ms: 1500,
            },
            // len = 1 + 4 + 8 + (1 + 6) + 4 + 2 + 2 + 16 = 44 = 0x2c
            "0000002e 81 00000001 1f2e3d4c5b6a7988 06 424344463738 00015180 0096 047e \
             a0a1a2a3a4a5a6a7a8a9aaabacadaeaf 05dc",
        ),
        (
            ServerMessage::Joined {
                request_id: 1,
                allocation: alloc,
                peer: PeerId(1),
                max_payload: 1150,
                host: PeerId::HOST,
                reconnect_token: std::array::from_fn(|i| 0xB0 + i as u8),
                host_loss_timeout_ms: 1500,
                members: vec![PeerId::HOST],
            },
            // len = 1 + 4 + 8 + 2 + 2 + 2 + 16 + 2 + 2 = 39 = 0x27
            "00000029 82 00000001 1f2e3d4c5b6a7988 0001 047e 0000 \
             b0b1b2b3b4b5b6b7b8b9babbbcbdbebf 05dc 0001 0000",
        ),
        (
            ServerMessage::PeerJoined { peer: PeerId(1) },
            "00000003 85 0001",
        ),
        (
            ServerMessage::PeerLeft {
                peer: PeerId(1),
                reason: LeaveReason::Closed,
            },
            "00000004 86 0001 01",
        ),
    ];
    check_spec_examples(&client);
    check_spec_examples(&server);
    let datagrams = [
        (datagram::encode(0, b"hi"), "0000 6869"),
        (datagram::encode(1, b"hi"), "0001 6869"),
        (datagram::encode(BROADCAST, b"ok"), "ffff 6f6b"),
        (datagram::encode(0, b"ok"), "0000 6f6b"),
    ];
    for (bytes, spaced) in datagrams {
        assert_eq!(hex::encode(&bytes), unspaced(spaced));
        assert!(SPEC.contains(spaced), "SPEC.md lacks `{spaced}`");
    }
}

/// The host-migration example in SPEC.md, checked byte for byte: host 0 of allocation
/// `1f2e3d4c5b6a7988` times out, peer 2 is elected, opens successor `5566778899aabbcc`, peer 1
/// is moved, and the old host comes back with its reconnect token.
#[test]
fn spec_migration_example() {
    let old = AllocationId(0x1F2E_3D4C_5B6A_7988);
    let new = AllocationId(0x5566_7788_99AA_BBCC);
    let ticket: [u8; 16] = std::array::from_fn(|i| 0xD0 + i as u8);
    let host_token: [u8; 16] = std::array::from_fn(|i| 0xA0 + i as u8);
    let client: [(ClientMessage, &str); 2] = [
        (
            // len = 1 + 4 + 8 + 16 = 29 = 0x1d
            ClientMessage::MigrateAllocation {
                request_id: 2,
                allocation: old,
                ticket,
            },
            "0000001d 06 00000002 1f2e3d4c5b6a7988 d0d1d2d3d4d5d6d7d8d9dadbdcdddedf",
        ),
        (
            // len = 1 + 4 + 8 + 2 + 16 + 2 = 33 = 0x21
            ClientMessage::Rejoin {
                request_id: 1,
                allocation: old,
                peer: PeerId::HOST,
                reconnect_token: host_token,
                credential: None,
            },
            "00000021 07 00000001 1f2e3d4c5b6a7988 0000 a0a1a2a3a4a5a6a7a8a9aaabacadaeaf 0000",
        ),
    ];
    let server: [(ServerMessage, &str); 6] = [
        (
            ServerMessage::HostLost {
                host: PeerId::HOST,
                reason: LeaveReason::TimedOut,
                elected: PeerId(2),
            },
            "00000006 89 0000 02 0002",
        ),
        (
            ServerMessage::Promote {
                allocation: old,
                ticket,
                deadline_ms: 5000,
            },
            "0000001d 8a 1f2e3d4c5b6a7988 d0d1d2d3d4d5d6d7d8d9dadbdcdddedf 00001388",
        ),
        (
            // 86000 = 0x00014ff0; len = 1 + 4 + 8 + 7 + 4 + 2 + 2 + 16 = 44 = 0x2c
            ServerMessage::AllocationCreated {
                request_id: 2,
                allocation: new,
                code: code("BCDF78"),
                code_ttl_secs: 86_000,
                max_peers: 150,
                max_payload: 1150,
                reconnect_token: std::array::from_fn(|i| 0xE0 + i as u8),
                host_loss_timeout_ms: 1500,
            },
            "0000002e 81 00000002 5566778899aabbcc 06 424344463738 00014ff0 0096 047e \
             e0e1e2e3e4e5e6e7e8e9eaebecedeeef 05dc",
        ),
        (
            ServerMessage::Migrated {
                allocation: new,
                host: PeerId(2),
            },
            "0000000b 8b 5566778899aabbcc 0002",
        ),
        (
            ServerMessage::PeerRejoined { peer: PeerId(1) },
            "00000003 8c 0001",
        ),
        (
            // len = 1 + 4 + 8 + 2 + 2 + 2 + 16 + 2 + 2 * 2 = 41 = 0x29
            ServerMessage::Joined {
                request_id: 1,
                allocation: new,
                peer: PeerId::HOST,
                max_payload: 1150,
                host: PeerId(2),
                reconnect_token: host_token,
                host_loss_timeout_ms: 1500,
                members: vec![PeerId(1), PeerId(2)],
            },
            "0000002b 82 00000001 5566778899aabbcc 0000 047e 0002 \
             a0a1a2a3a4a5a6a7a8a9aaabacadaeaf 05dc 0002 0001 0002",
        ),
    ];
    check_spec_examples(&client);
    check_spec_examples(&server);
    // The snapshot stream: kind 0x01, then the snapshot's bytes ("save" = 73 61 76 65).
    let mut stream = vec![stream_kind::SNAPSHOT];
    stream.extend_from_slice(b"save");
    assert_eq!(hex::encode(&stream), unspaced("01 73617665"));
    assert!(
        SPEC.contains("01 73617665"),
        "SPEC.md lacks the snapshot stream"
    );
}

// ---------------------------------------------------------------------------------------------
// Hand-written edge cases
// ---------------------------------------------------------------------------------------------

fn joined_header(count: u16) -> Vec<u8> {
    let mut body = vec![0x82];
    body.extend_from_slice(&1u32.to_be_bytes()); // request_id
    body.extend_from_slice(&2u64.to_be_bytes()); // allocation
    body.extend_from_slice(&3u16.to_be_bytes()); // peer
    body.extend_from_slice(&1150u16.to_be_bytes()); // max_payload
    body.extend_from_slice(&0u16.to_be_bytes()); // host
    body.extend_from_slice(&[0x5A; 16]); // reconnect_token
    body.extend_from_slice(&1500u16.to_be_bytes()); // host_loss_timeout_ms
    body.extend_from_slice(&count.to_be_bytes());
    body
}

#[test]
fn huge_member_count_is_refused_before_allocating() {
    let mut body = joined_header(u16::MAX);
    body.extend_from_slice(&[0, 1]);
    assert!(matches!(
        ServerMessage::decode(&body),
        Err(DecodeError::InvalidField {
            field: "members",
            ..
        })
    ));
    let body = joined_header(MAX_PEERS_LIMIT + 1);
    assert!(matches!(
        ServerMessage::decode(&body),
        Err(DecodeError::InvalidField { .. })
    ));
    // A plausible count without the bytes to back it: truncated, with the exact shortfall.
    let mut body = joined_header(MAX_PEERS_LIMIT);
    body.extend_from_slice(&[0, 1, 0, 2]);
    assert_eq!(
        ServerMessage::decode(&body),
        Err(DecodeError::Truncated {
            needed: 2 * usize::from(MAX_PEERS_LIMIT) - 4
        })
    );
}

#[test]
fn largest_message_fits_the_minimum_frame_limit() {
    let msg = ServerMessage::Joined {
        request_id: u32::MAX,
        allocation: AllocationId(u64::MAX),
        peer: PeerId(MAX_PEERS_LIMIT - 1),
        max_payload: 1150,
        host: PeerId(MAX_PEERS_LIMIT - 2),
        reconnect_token: [0xFF; 16],
        host_loss_timeout_ms: 1500,
        members: (0..MAX_PEERS_LIMIT).map(PeerId).collect(),
    };
    // 1 type + 4 + 8 + 2 + 2 + 2 + 16 + 2 + 2 count + 2 * 4096 = 8231
    assert_eq!(msg.encoded_len(), 8231);
    assert!(msg.encoded_len() <= MIN_MAX_FRAME_LEN);
    let frame = msg.to_frame();
    let len = frame::check_len(
        frame[..LEN_PREFIX].try_into().expect("4 bytes"),
        MIN_MAX_FRAME_LEN,
    );
    assert_eq!(len, Ok(8231));
    assert_eq!(ServerMessage::decode(&frame[LEN_PREFIX..]), Ok(msg));
}

#[test]
fn frame_length_violations() {
    assert_eq!(
        frame::check_len([0, 0, 0, 0], DEFAULT_MAX_FRAME_LEN),
        Err(FrameError::Empty)
    );
    assert_eq!(
        frame::check_len([0, 0, 0x40, 0x00], DEFAULT_MAX_FRAME_LEN),
        Ok(DEFAULT_MAX_FRAME_LEN)
    );
    assert_eq!(
        frame::check_len([0, 0, 0x40, 0x01], DEFAULT_MAX_FRAME_LEN),
        Err(FrameError::TooLong {
            len: DEFAULT_MAX_FRAME_LEN + 1,
            max: DEFAULT_MAX_FRAME_LEN
        })
    );
}

#[test]
fn malformed_bodies_give_typed_errors() {
    let decode_c = |h: &str| ClientMessage::decode(&hex::decode(unspaced(h)).expect("hex"));
    let decode_s = |h: &str| ServerMessage::decode(&hex::decode(unspaced(h)).expect("hex"));
    assert_eq!(ClientMessage::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(ServerMessage::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(decode_c("00"), Err(DecodeError::UnknownType(0)));
    assert_eq!(decode_c("81 00000001"), Err(DecodeError::UnknownType(0x81)));
    assert_eq!(decode_s("01 00000001"), Err(DecodeError::UnknownType(0x01)));
    assert_eq!(decode_s("ff"), Err(DecodeError::UnknownType(0xff)));
    // Trailing bytes after a complete message.
    assert_eq!(
        decode_c("04 00000001 00"),
        Err(DecodeError::TrailingBytes(1))
    );
    assert_eq!(decode_s("85 0001 0000"), Err(DecodeError::TrailingBytes(2)));
    // Join code length outside 4..=12, and a character outside the alphabet ('A' = 0x41).
    assert!(matches!(
        decode_c("02 00000001 03 424344"),
        Err(DecodeError::InvalidField { field: "code", .. })
    ));
    assert!(matches!(
        decode_c("02 00000001 0d 42434446474849"),
        Err(DecodeError::InvalidField { field: "code", .. })
    ));
    assert!(matches!(
        decode_c("02 00000001 04 41424344"),
        Err(DecodeError::InvalidField { field: "code", .. })
    ));
    // Unknown codes in reasons decode instead of failing.
    assert_eq!(
        decode_s("86 0002 ee"),
        Ok(ServerMessage::PeerLeft {
            peer: PeerId(2),
            reason: LeaveReason::Unknown(0xee),
        })
    );
    assert_eq!(
        decode_s("88 00 00000001 00000000"),
        Ok(ServerMessage::DatagramsDropped {
            reason: DropReason::Unknown(0),
            count: 1,
            value: 0,
        })
    );
    assert_eq!(
        decode_s("89 0000 ee 0001"),
        Ok(ServerMessage::HostLost {
            host: PeerId(0),
            reason: LeaveReason::Unknown(0xee),
            elected: PeerId(1),
        })
    );
    assert_eq!(
        decode_s("8e c8 00000000"),
        Ok(ServerMessage::SnapshotRejected {
            code: ErrorCode::Unknown(200),
            value: 0,
        })
    );
    // Fixed-size 16-byte secrets: one byte short is truncated, one extra is trailing.
    assert_eq!(
        decode_c("06 00000001 0000000000000001 000102030405060708090a0b0c0d0e"),
        Err(DecodeError::Truncated { needed: 1 })
    );
    assert_eq!(
        decode_c("07 00000001 0000000000000001 0002 000102030405060708090a0b0c0d0e0f 0000 00"),
        Err(DecodeError::TrailingBytes(1))
    );
    // A credential field: shorter than announced, longer than 512, or outside base64url.
    assert_eq!(
        decode_c("01 00000001 0000 00000000 0000 0003 4142"),
        Err(DecodeError::Truncated { needed: 1 })
    );
    assert!(matches!(
        decode_c(&format!(
            "01 00000001 0000 00000000 0000 0201 {}",
            "41".repeat(513)
        )),
        Err(DecodeError::InvalidField {
            field: "credential",
            ..
        })
    ));
    for bad in ["2b", "2f", "3d", "0a", "ff"] {
        // '+', '/', '=', newline, a non-ASCII byte
        assert!(
            matches!(
                decode_c(&format!("02 00000001 06 424344463738 0002 41{bad}")),
                Err(DecodeError::InvalidField {
                    field: "credential",
                    ..
                })
            ),
            "{bad}"
        );
    }
    assert_eq!(decode_s("8c 0001 00"), Err(DecodeError::TrailingBytes(1)));
    assert!(decode_s("8a 0000000000000001").is_err());
}

#[test]
fn malformed_redirects_give_typed_errors() {
    let decode = |h: &str| ServerMessage::decode(&hex::decode(unspaced(h)).expect("hex"));
    let invalid = |h: &str, field: &str| match decode(h) {
        Err(DecodeError::InvalidField { field: f, .. }) => assert_eq!(f, field, "{h}"),
        other => panic!("{h}: expected an invalid {field}, got {other:?}"),
    };
    // "localhost" = 6c6f63616c686f7374 (9 bytes)
    let name = "0009 6c6f63616c686f7374";
    assert_eq!(
        decode(&format!("8f 00000001 04 7f000001 1e14 {name}")),
        Ok(ServerMessage::Redirect {
            request_id: 1,
            address: "127.0.0.1:7700".parse().expect("address"),
            server_name: "localhost".into(),
        })
    );
    // Families other than 4 and 6; unspecified and multicast addresses; port 0.
    for family in ["00", "05", "29", "ff"] {
        invalid(
            &format!("8f 00000001 {family} 7f000001 1e14 {name}"),
            "address",
        );
    }
    invalid(&format!("8f 00000001 04 00000000 1e14 {name}"), "address");
    invalid(&format!("8f 00000001 04 e0000001 1e14 {name}"), "address");
    invalid(
        &format!("8f 00000001 06 {} 1e14 {name}", "00".repeat(16)),
        "address",
    );
    invalid(
        &format!("8f 00000001 06 ff02{} 1e14 {name}", "00".repeat(13) + "01"),
        "address",
    );
    invalid(&format!("8f 00000001 04 7f000001 0000 {name}"), "address");
    // Server names: empty, longer than 253, not UTF-8, not a DNS name or an IP literal.
    invalid("8f 00000001 04 7f000001 1e14 0000", "server_name");
    invalid(
        &format!("8f 00000001 04 7f000001 1e14 00fe {}", "61".repeat(254)),
        "server_name",
    );
    invalid(
        &format!("8f 00000001 04 7f000001 1e14 ffff {}", "61".repeat(300)),
        "server_name",
    );
    invalid("8f 00000001 04 7f000001 1e14 0002 c328", "server_name");
    for bad in ["a b", "a..b", "-a", "a_b", "a.", "1.2.3", "[::1]", "x:1"] {
        invalid(
            &format!(
                "8f 00000001 04 7f000001 1e14 {:04x} {}",
                bad.len(),
                hex::encode(bad)
            ),
            "server_name",
        );
    }
    // Shorter than announced, and bytes after the name.
    assert_eq!(
        decode("8f 00000001 04 7f000001 1e14 0009 6c6f63616c686f73"),
        Err(DecodeError::Truncated { needed: 1 })
    );
    assert_eq!(
        decode(&format!("8f 00000001 04 7f000001 1e14 {name} 00")),
        Err(DecodeError::TrailingBytes(1))
    );
    // An IPv6 family with IPv4-sized address bytes runs short.
    assert!(matches!(
        decode(&format!("8f 00000001 06 7f000001 1e14 {name}")),
        Err(DecodeError::Truncated { .. })
    ));
    // The longest name fits.
    let longest = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    assert!(matches!(
        decode(&format!(
            "8f 00000001 04 7f000001 1e14 00fd {}",
            hex::encode(&longest)
        )),
        Ok(ServerMessage::Redirect { server_name, .. }) if server_name == longest
    ));
}

#[test]
fn a_stream_of_frames_decodes_in_order() {
    let msgs: Vec<ServerMessage> = server_snapshots().into_iter().map(|(m, _)| m).collect();
    let mut stream = bytes::BytesMut::new();
    for m in &msgs {
        m.encode_frame(&mut stream);
    }
    let mut stream: Bytes = stream.freeze();
    let mut decoded = Vec::new();
    while !stream.is_empty() {
        let prefix: [u8; LEN_PREFIX] = stream[..LEN_PREFIX].try_into().expect("prefix");
        let len = frame::check_len(prefix, DEFAULT_MAX_FRAME_LEN).expect("valid length");
        let body = stream.slice(LEN_PREFIX..LEN_PREFIX + len);
        decoded.push(ServerMessage::decode(&body).expect("valid body"));
        stream = stream.slice(LEN_PREFIX + len..);
    }
    assert_eq!(decoded, msgs);
}

/// Every strict prefix of `msg`'s body fails to decode, and the body with one byte more is
/// `TrailingBytes(1)`. The property test below runs the same check on random messages.
fn check_truncations<M: Message>(msg: &M) -> Result<(), TestCaseError> {
    let frame = msg.to_frame();
    let body = &frame[LEN_PREFIX..];
    for cut in 0..body.len() {
        prop_assert!(M::decode(&body[..cut]).is_err(), "{:?} cut at {}", msg, cut);
    }
    let mut longer = body.to_vec();
    longer.push(0);
    prop_assert_eq!(M::decode(&longer), Err(DecodeError::TrailingBytes(1)));
    Ok(())
}

#[test]
fn every_snapshot_truncated_or_extended_is_an_error() {
    for (msg, _) in client_snapshots() {
        check_truncations(&msg).expect("client snapshot");
    }
    for (msg, _) in server_snapshots() {
        check_truncations(&msg).expect("server snapshot");
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

fn join_code_strategy() -> impl Strategy<Value = JoinCode> {
    (
        prop::collection::vec(
            prop::sample::select(ALPHABET.to_vec()),
            join_code::MIN_LEN..=join_code::MAX_LEN,
        ),
        any::<bool>(),
    )
        .prop_map(|(mut chars, lower)| {
            if lower {
                chars.make_ascii_lowercase();
            }
            JoinCode::from_bytes(&chars).expect("alphabet characters make a valid code")
        })
}

fn peer() -> impl Strategy<Value = PeerId> {
    any::<u16>().prop_map(PeerId)
}

fn allocation() -> impl Strategy<Value = AllocationId> {
    any::<u64>().prop_map(AllocationId)
}

/// A credential field: absent, or up to 512 characters of the base64url alphabet.
fn credential() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[A-Za-z0-9_-]{1,512}")
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (any::<u32>(), any::<u16>(), any::<u32>(), credential()).prop_map(
            |(request_id, max_peers, code_ttl_secs, credential)| {
                ClientMessage::CreateAllocation {
                    request_id,
                    max_peers,
                    code_ttl_secs,
                    host_loss_timeout_ms: code_ttl_secs as u16,
                    credential,
                }
            }
        ),
        (any::<u32>(), join_code_strategy(), credential()).prop_map(
            |(request_id, code, credential)| ClientMessage::Join {
                request_id,
                code,
                credential,
            }
        ),
        (any::<u32>(), peer())
            .prop_map(|(request_id, peer)| ClientMessage::Kick { request_id, peer }),
        any::<u32>().prop_map(|request_id| ClientMessage::RevokeCode { request_id }),
        (any::<u32>(), allocation(), any::<[u8; 16]>()).prop_map(
            |(request_id, allocation, host_token)| ClientMessage::ClaimHost {
                request_id,
                allocation,
                host_token,
            }
        ),
        (any::<u32>(), allocation(), any::<[u8; 16]>()).prop_map(
            |(request_id, allocation, ticket)| ClientMessage::MigrateAllocation {
                request_id,
                allocation,
                ticket,
            }
        ),
        (
            any::<u32>(),
            allocation(),
            peer(),
            any::<[u8; 16]>(),
            credential()
        )
            .prop_map(
                |(request_id, allocation, peer, reconnect_token, credential)| {
                    ClientMessage::Rejoin {
                        request_id,
                        allocation,
                        peer,
                        reconnect_token,
                        credential,
                    }
                }
            ),
        (
            any::<u32>(),
            peer(),
            nat_kind(),
            any::<[u8; 32]>(),
            candidates()
        )
            .prop_map(|(request_id, peer, nat, fingerprint, candidates)| {
                ClientMessage::PathOffer {
                    request_id,
                    peer,
                    nat,
                    fingerprint,
                    candidates,
                }
            }),
        (any::<u32>(), peer(), path_reason()).prop_map(|(request_id, peer, reason)| {
            ClientMessage::PathReport {
                request_id,
                peer,
                outcome: reason.outcome(),
                reason,
            }
        }),
        Just(ClientMessage::Probe),
    ]
}

fn nat_kind() -> impl Strategy<Value = NatKind> {
    prop::sample::select(NatKind::ALL)
}

fn path_reason() -> impl Strategy<Value = PathReason> {
    prop::sample::select(PathReason::ALL)
}

/// 1 to 8 direct-path candidates: unicast addresses with a port.
fn candidates() -> impl Strategy<Value = Vec<std::net::SocketAddr>> {
    prop::collection::vec(
        redirect_address().prop_filter("unicast", baton_protocol::path::is_valid_candidate),
        1..=baton_protocol::path::MAX_PATH_CANDIDATES,
    )
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (
            any::<u32>(),
            allocation(),
            join_code_strategy(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            any::<[u8; 16]>()
        )
            .prop_map(
                |(
                    request_id,
                    allocation,
                    code,
                    code_ttl_secs,
                    max_peers,
                    max_payload,
                    reconnect_token,
                )| {
                    ServerMessage::AllocationCreated {
                        request_id,
                        allocation,
                        code,
                        code_ttl_secs,
                        max_peers,
                        max_payload,
                        reconnect_token,
                        host_loss_timeout_ms: max_peers.rotate_left(3),
                    }
                }
            ),
        (
            any::<u32>(),
            allocation(),
            peer(),
            any::<u16>(),
            peer(),
            any::<[u8; 16]>(),
            prop::collection::vec(peer(), 0..300)
        )
            .prop_map(
                |(request_id, allocation, peer, max_payload, host, reconnect_token, members)| {
                    ServerMessage::Joined {
                        request_id,
                        allocation,
                        peer,
                        max_payload,
                        host,
                        reconnect_token,
                        host_loss_timeout_ms: max_payload.rotate_left(5),
                        members,
                    }
                }
            ),
        (any::<u32>(), any::<u8>(), any::<u32>()).prop_map(|(request_id, code, value)| {
            ServerMessage::Refused {
                request_id,
                code: ErrorCode::from_u8(code),
                value,
            }
        }),
        any::<u32>().prop_map(|request_id| ServerMessage::Done { request_id }),
        peer().prop_map(|peer| ServerMessage::PeerJoined { peer }),
        (peer(), any::<u8>()).prop_map(|(peer, reason)| ServerMessage::PeerLeft {
            peer,
            reason: LeaveReason::from_u8(reason),
        }),
        join_code_strategy().prop_map(|code| ServerMessage::CodeRevoked { code }),
        (any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(reason, count, value)| {
            ServerMessage::DatagramsDropped {
                reason: DropReason::from_u8(reason),
                count,
                value,
            }
        }),
        (peer(), any::<u8>(), peer()).prop_map(|(host, reason, elected)| {
            ServerMessage::HostLost {
                host,
                reason: LeaveReason::from_u8(reason),
                elected,
            }
        }),
        (allocation(), any::<[u8; 16]>(), any::<u32>()).prop_map(
            |(allocation, ticket, deadline_ms)| ServerMessage::Promote {
                allocation,
                ticket,
                deadline_ms,
            }
        ),
        (allocation(), peer())
            .prop_map(|(allocation, host)| ServerMessage::Migrated { allocation, host }),
        peer().prop_map(|peer| ServerMessage::PeerRejoined { peer }),
        any::<u32>().prop_map(|len| ServerMessage::SnapshotStored { len }),
        (any::<u8>(), any::<u32>()).prop_map(|(code, value)| ServerMessage::SnapshotRejected {
            code: ErrorCode::from_u8(code),
            value,
        }),
        (any::<u32>(), redirect_address(), server_name()).prop_map(
            |(request_id, address, server_name)| ServerMessage::Redirect {
                request_id,
                address,
                server_name,
            }
        ),
        (redirect_address(), server_name()).prop_map(|(address, server_name)| {
            ServerMessage::Relocate {
                address,
                server_name,
            }
        }),
        (redirect_address(), any::<u16>()).prop_map(|(address, probe_port)| {
            ServerMessage::ObservedAddress {
                address,
                probe_port,
            }
        }),
        (peer(), nat_kind(), any::<[u8; 32]>(), candidates()).prop_map(
            |(from, nat, fingerprint, candidates)| ServerMessage::PathOffer {
                from,
                nat,
                fingerprint,
                candidates,
            }
        ),
        (peer(), 0..=1000u16).prop_map(|(peer, delay_ms)| ServerMessage::Punch { peer, delay_ms }),
    ]
}

/// Addresses a `Redirect` may carry: not unspecified, not multicast, port not 0, no IPv6
/// flow label or scope id (the wire does not carry them).
fn redirect_address() -> impl Strategy<Value = std::net::SocketAddr> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
        any::<[u8; 16]>().prop_map(std::net::IpAddr::from),
    ]
    .prop_filter("connectable", |ip| {
        !ip.is_unspecified() && !ip.is_multicast()
    });
    (ip, 1..=u16::MAX).prop_map(|(ip, port)| std::net::SocketAddr::new(ip, port))
}

/// Server names a `Redirect` may carry: DNS names and IP literals.
fn server_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,20}[a-z0-9])?){0,4}",
        any::<std::net::IpAddr>().prop_map(|ip| ip.to_string()),
    ]
}

/// Checks the framing invariants of one encoded message and returns its body.
fn check_frame(frame: &Bytes, encoded_len: usize, written: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        written.len(),
        encoded_len,
        "encoded_len disagrees with write_to"
    );
    prop_assert_eq!(frame.len(), LEN_PREFIX + encoded_len);
    let prefix: [u8; LEN_PREFIX] = frame[..LEN_PREFIX].try_into().expect("prefix");
    prop_assert_eq!(u32::from_be_bytes(prefix) as usize, encoded_len);
    prop_assert_eq!(&frame[LEN_PREFIX..], written);
    Ok(())
}

/// `msg` frames correctly (see [`check_frame`]), its length prefix passes `frame::check_len`,
/// and its body decodes back to `msg`.
fn check_round_trip<M: Message>(msg: M) -> Result<(), TestCaseError> {
    let frame = msg.to_frame();
    let mut written = Vec::new();
    msg.write_to(&mut written);
    check_frame(&frame, msg.encoded_len(), &written)?;
    prop_assert_eq!(
        frame::check_len(
            frame[..LEN_PREFIX].try_into().expect("prefix"),
            DEFAULT_MAX_FRAME_LEN
        ),
        Ok(msg.encoded_len())
    );
    prop_assert_eq!(M::decode(&frame[LEN_PREFIX..]), Ok(msg));
    Ok(())
}

/// Flips bit `bit` of one byte (chosen by `at`) of `msg`'s body; whatever that decodes to must
/// survive its own round trip.
fn check_bit_flip<M: Message>(
    msg: &M,
    at: prop::sample::Index,
    bit: u8,
) -> Result<(), TestCaseError> {
    let mut body = msg.to_frame()[LEN_PREFIX..].to_vec();
    let i = at.index(body.len());
    body[i] ^= 1 << bit;
    check_decodes_stably::<M>(&body)
}

/// If `body` decodes as an `M`, that message survives its own round trip.
fn check_decodes_stably<M: Message>(body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(msg) = M::decode(body) {
        prop_assert_eq!(M::decode(&msg.to_frame()[LEN_PREFIX..]), Ok(msg));
    }
    Ok(())
}

/// Random bytes, or random bytes behind a type byte the decoder knows, so that the fuzzing
/// reaches past the type check.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    let known: Vec<u8> = (0x01..=0x0A).chain(0x81..=0x93).collect();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (
            prop::sample::select(known),
            prop::collection::vec(any::<u8>(), 0..48)
        )
            .prop_map(|(ty, mut rest)| {
                rest.insert(0, ty);
                rest
            }),
    ]
}

/// 512 cases per property; failures are saved to `protocol/proptest-regressions/codec.txt`
/// (cargo runs integration tests from the package root), which is committed so every later run
/// replays them first.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/codec.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_messages_round_trip(msg in client_message()) {
        check_round_trip(msg)?;
    }

    #[test]
    fn server_messages_round_trip(msg in server_message()) {
        check_round_trip(msg)?;
    }

    #[test]
    fn truncated_client_messages_are_errors(msg in client_message()) {
        check_truncations(&msg)?;
    }

    #[test]
    fn truncated_server_messages_are_errors(msg in server_message()) {
        check_truncations(&msg)?;
    }

    #[test]
    fn bit_flipped_client_messages_never_panic(
        msg in client_message(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        check_bit_flip(&msg, at, bit)?;
    }

    #[test]
    fn bit_flipped_server_messages_never_panic(
        msg in server_message(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        check_bit_flip(&msg, at, bit)?;
    }

    #[test]
    fn random_bytes_never_panic(bytes in noise()) {
        check_decodes_stably::<ClientMessage>(&bytes)?;
        check_decodes_stably::<ServerMessage>(&bytes)?;
        match datagram::split(&bytes) {
            Ok((header, payload)) => {
                prop_assert_eq!(datagram::encode(header, payload), bytes.clone());
            }
            Err(e) => prop_assert!(bytes.len() < datagram::HEADER_LEN, "{}", e),
        }
        match JoinCode::from_bytes(&bytes) {
            Ok(c) => {
                let upper = bytes.to_ascii_uppercase();
                prop_assert_eq!(c.as_bytes(), upper.as_slice());
                prop_assert!(c.as_bytes().iter().all(|b| ALPHABET.contains(b)));
            }
            Err(_) => prop_assert!(
                !(join_code::MIN_LEN..=join_code::MAX_LEN).contains(&bytes.len())
                    || bytes.iter().any(|b| !ALPHABET.contains(&b.to_ascii_uppercase()))
            ),
        }
    }

    #[test]
    fn length_prefixes_are_checked(prefix in any::<[u8; 4]>(), max in 0usize..100_000) {
        let len = u32::from_be_bytes(prefix) as usize;
        match frame::check_len(prefix, max) {
            Ok(n) => prop_assert!(n == len && n > 0 && n <= max),
            Err(FrameError::Empty) => prop_assert_eq!(len, 0),
            Err(FrameError::TooLong { len: l, max: m }) => prop_assert!(l == len && m == max && l > max),
            Err(e) => prop_assert!(false, "unexpected {:?}", e),
        }
    }
}

/// Direct-path fields outside their ranges make the message undecodable (SPEC section 17): an
/// undefined NAT kind, outcome or reason, a candidate count of 0 or above 8, a candidate that
/// is not a unicast address with a port.
#[test]
fn direct_path_fields_out_of_range_are_decode_errors() {
    let fp = "00".repeat(32);
    let v4 = "04 c6336407 ee48";
    let offer = |nat: &str, candidates: &str| {
        hex::decode(unspaced(&format!(
            "08 0000000c 0000 {nat} {fp} {candidates}"
        )))
        .expect("hex")
    };
    assert!(ClientMessage::decode(&offer("02", &format!("01 {v4}"))).is_ok());
    let invalid = |body: &[u8]| {
        matches!(
            ClientMessage::decode(body),
            Err(DecodeError::InvalidField { .. })
        )
    };
    assert!(invalid(&offer("03", &format!("01 {v4}"))), "nat 3");
    assert!(invalid(&offer("01", "00")), "no candidates");
    let nine = std::iter::repeat_n(v4, 9).collect::<Vec<_>>().join(" ");
    assert!(invalid(&offer("01", &format!("09 {nine}"))), "9 candidates");
    let eight = std::iter::repeat_n(v4, 8).collect::<Vec<_>>().join(" ");
    assert!(ClientMessage::decode(&offer("01", &format!("08 {eight}"))).is_ok());
    for bad in [
        "04 c6336407 0000",                         // port 0
        "04 00000000 ee48",                         // 0.0.0.0
        "04 e0000001 ee48",                         // 224.0.0.1, multicast
        "04 ffffffff ee48",                         // 255.255.255.255, broadcast
        "06 00000000000000000000000000000000 ee48", // ::
        "05 c6336407 ee48",                         // family 5
    ] {
        assert!(invalid(&offer("01", &format!("01 {bad}"))), "{bad}");
    }
    let report = |outcome: &str, reason: &str| {
        hex::decode(unspaced(&format!("09 00000001 0001 {outcome} {reason}"))).expect("hex")
    };
    assert!(ClientMessage::decode(&report("02", "07")).is_ok());
    assert!(invalid(&report("00", "00")), "outcome 0");
    assert!(invalid(&report("03", "01")), "outcome 3");
    assert!(invalid(&report("02", "08")), "reason 8");
    // The relay's copy is checked the same way.
    let forwarded = hex::decode(unspaced(&format!("92 0001 04 {fp} 01 {v4}"))).expect("hex");
    assert!(matches!(
        ServerMessage::decode(&forwarded),
        Err(DecodeError::InvalidField { field: "nat", .. })
    ));
}

/// The direct-path walk-through of SPEC.md section 17 (the messages not already snapshots):
/// each encodes to the hex the spec shows.
#[test]
fn spec_direct_path_example() {
    for (msg, spaced) in [
        (
            ServerMessage::Punch {
                peer: PeerId::HOST,
                delay_ms: 20,
            },
            "00000005 93 0000 0014",
        ),
        (
            ServerMessage::Punch {
                peer: PeerId(1),
                delay_ms: 50,
            },
            "00000005 93 0001 0032",
        ),
    ] {
        assert_eq!(hex::encode(msg.to_frame()), unspaced(spaced));
        assert!(SPEC.contains(spaced), "SPEC.md lacks `{spaced}`");
    }
    assert!(SPEC.contains("ALPN **`baton-direct/1`**"));
    assert_eq!(baton_protocol::path::DIRECT_ALPN, b"baton-direct/1");
}

/// The NAT-detection example of SPEC.md section 17.5: the main port's `ObservedAddress` naming
/// probe port 7701, and the probe port's answer (probe port 0) to `Probe`.
#[test]
fn spec_nat_detection_example() {
    let address: std::net::SocketAddr = "198.51.100.7:61000".parse().expect("address");
    for (msg, spaced) in [
        (
            ServerMessage::ObservedAddress {
                address,
                probe_port: 7701,
            },
            "0000000a 91 04 c6336407 ee48 1e15",
        ),
        (
            ServerMessage::ObservedAddress {
                address,
                probe_port: 0,
            },
            "0000000a 91 04 c6336407 ee48 0000",
        ),
    ] {
        assert_eq!(hex::encode(msg.to_frame()), unspaced(spaced));
        assert!(SPEC.contains(spaced), "SPEC.md lacks `{spaced}`");
    }
    assert_eq!(hex::encode(ClientMessage::Probe.to_frame()), "000000010a");
    // No body at all: a request id after the type byte is trailing bytes.
    assert!(ClientMessage::decode(&[0x0a, 0, 0, 0, 1]).is_err());
}
