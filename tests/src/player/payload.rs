//! What every player datagram carries (the soak's format), so a receiver can tell on its own
//! whether the relay delivered it to the right place, and what it missed. Pure encoding and
//! per-flow bookkeeping; used on the player's task.
//!
//! Layout (big-endian), then padding up to the configured payload size:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `BSK1` |
//! | 4 | 4 | game: the game's id (`--game`, stable across host migrations) |
//! | 8 | 8 | allocation id as the sender sees it (changes with each migration) |
//! | 16 | 2 | sender peer id, as the sender knows itself (the relay's stamp must match) |
//! | 18 | 2 | destination peer id, `0xFFFF` for a broadcast |
//! | 20 | 8 | sender uid: the id of this client instance (`--uid`; a rejoin is a new one) |
//! | 28 | 8 | sequence number, per sender and flow (broadcasts, or unicasts to one peer) |
//! | 36 | 8 | send time, microseconds since the Unix epoch |
//! | 44 | .. | padding: byte `i` is `(seq + i) mod 256`, so corruption shows |
//!
//! Loss is counted from gaps in the sequence numbers of each flow at the receiver ([`Flows`]),
//! which needs no coordination with the sender (it may be another process, or killed).

use std::collections::HashMap;

use crate::seq_window::{Seen, SeqWindow};

/// First bytes of every soak payload.
pub const MAGIC: [u8; 4] = *b"BSK1";
/// Bytes before the padding.
pub const HEADER_LEN: usize = 44;
/// Destination id of a broadcast (the protocol's).
pub const BROADCAST: u16 = 0xFFFF;

/// The fields of a soak payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The soak's game id.
    pub game: u32,
    /// The sender's allocation id.
    pub alloc: u64,
    /// The sender's peer id.
    pub sender: u16,
    /// The destination peer id, or [`BROADCAST`].
    pub dest: u16,
    /// The sender's client uid.
    pub uid: u64,
    /// Sequence number within the flow.
    pub seq: u64,
    /// Send time, Unix microseconds.
    pub sent_us: u64,
}

/// Why a payload is not a well-formed soak payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than the header.
    Short(usize),
    /// Wrong magic bytes.
    Magic,
    /// The padding byte at this offset is wrong.
    Corrupt(usize),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::Short(len) => {
                write!(f, "payload of {len} bytes is shorter than the header")
            }
            PayloadError::Magic => f.write_str("payload does not start with the soak magic"),
            PayloadError::Corrupt(at) => write!(f, "payload padding corrupted at byte {at}"),
        }
    }
}

/// Encodes `header` and pads to `len` bytes (at least [`HEADER_LEN`]).
pub fn encode(header: &Header, len: usize) -> Vec<u8> {
    let len = len.max(HEADER_LEN);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&header.game.to_be_bytes());
    out.extend_from_slice(&header.alloc.to_be_bytes());
    out.extend_from_slice(&header.sender.to_be_bytes());
    out.extend_from_slice(&header.dest.to_be_bytes());
    out.extend_from_slice(&header.uid.to_be_bytes());
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.extend_from_slice(&header.sent_us.to_be_bytes());
    out.extend((HEADER_LEN..len).map(|i| pad_byte(header.seq, i)));
    out
}

/// The expected padding byte at offset `i`.
fn pad_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_add(i as u8)
}

/// Decodes and checks a payload received from the network (never panics).
pub fn decode(bytes: &[u8]) -> Result<Header, PayloadError> {
    if bytes.len() < HEADER_LEN {
        return Err(PayloadError::Short(bytes.len()));
    }
    if bytes[..4] != MAGIC {
        return Err(PayloadError::Magic);
    }
    let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_be_bytes(b)
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let header = Header {
        game: u32_at(4),
        alloc: u64_at(8),
        sender: u16_at(16),
        dest: u16_at(18),
        uid: u64_at(20),
        seq: u64_at(28),
        sent_us: u64_at(36),
    };
    if let Some(at) = (HEADER_LEN..bytes.len()).find(|&i| bytes[i] != pad_byte(header.seq, i)) {
        return Err(PayloadError::Corrupt(at));
    }
    Ok(header)
}

/// What one arrival meant for its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first datagram of a flow this receiver has seen.
    First,
    /// The next one in order.
    InOrder,
    /// Sequence numbers were skipped: `lost` datagrams missing between the previous arrival
    /// (at `prev_us`) and this one.
    Gap {
        /// Datagrams skipped.
        lost: u64,
        /// Arrival time of the previous datagram of the flow.
        prev_us: u64,
    },
    /// Arrived after a later one (counted, and taken back from the loss).
    Late,
    /// A sequence number already received: QUIC never duplicates a datagram, so this is a
    /// relay bug.
    Duplicate,
}

/// How far back (in sequence numbers) duplicates are recognised.
const WINDOW: u64 = 128;

/// Flows not heard from for this long are forgotten, so the table stays bounded.
const FLOW_IDLE_US: u64 = 60_000_000;

/// Per-flow receive state.
#[derive(Debug, Clone, Copy)]
struct Flow {
    window: SeqWindow<WINDOW>,
    last_us: u64,
}

/// The receive state of every flow a client hears, keyed by sender uid and whether the flow
/// is the sender's broadcasts or its unicasts to this client.
#[derive(Debug, Default)]
pub struct Flows {
    flows: HashMap<(u64, bool), Flow>,
    last_prune_us: u64,
}

impl Flows {
    /// Records the arrival of `header` at `now_us`.
    pub fn arrive(&mut self, header: &Header, now_us: u64) -> Arrival {
        self.prune(now_us);
        let key = (header.uid, header.dest == BROADCAST);
        let seq = header.seq;
        let Some(flow) = self.flows.get_mut(&key) else {
            let mut window = SeqWindow::default();
            window.check(seq);
            self.flows.insert(
                key,
                Flow {
                    window,
                    last_us: now_us,
                },
            );
            return Arrival::First;
        };
        let prev_us = flow.last_us;
        flow.last_us = now_us;
        let advance = flow.window.max().map_or(0, |max| seq.saturating_sub(max));
        match flow.window.check(seq) {
            Seen::Duplicate => Arrival::Duplicate,
            Seen::New if advance == 1 => Arrival::InOrder,
            Seen::New if advance > 1 => Arrival::Gap {
                lost: advance - 1,
                prev_us,
            },
            Seen::New | Seen::TooOld => Arrival::Late,
        }
    }

    /// Forgets flows idle for [`FLOW_IDLE_US`] (at most once a second).
    fn prune(&mut self, now_us: u64) {
        if now_us.saturating_sub(self.last_prune_us) < 1_000_000 {
            return;
        }
        self.last_prune_us = now_us;
        self.flows
            .retain(|_, f| now_us.saturating_sub(f.last_us) < FLOW_IDLE_US);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64, dest: u16) -> Header {
        Header {
            game: 7,
            alloc: 0x1122_3344_5566_7788,
            sender: 3,
            dest,
            uid: 42,
            seq,
            sent_us: 1_000,
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let h = header(9, 2);
        let bytes = encode(&h, 100);
        assert_eq!(bytes.len(), 100);
        assert_eq!(decode(&bytes), Ok(h));
        assert_eq!(decode(&encode(&h, 0)), Ok(h));
        let mut bad = bytes.clone();
        bad[70] ^= 1;
        assert_eq!(decode(&bad), Err(PayloadError::Corrupt(70)));
        bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(PayloadError::Magic));
        assert_eq!(decode(&bytes[..10]), Err(PayloadError::Short(10)));
        // Garbage never panics.
        for len in 0..120 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = decode(&junk);
        }
    }

    #[test]
    fn flows_count_gaps_late_arrivals_and_duplicates() {
        let mut flows = Flows::default();
        assert_eq!(flows.arrive(&header(1, BROADCAST), 10), Arrival::First);
        assert_eq!(flows.arrive(&header(2, BROADCAST), 20), Arrival::InOrder);
        assert_eq!(
            flows.arrive(&header(5, BROADCAST), 30),
            Arrival::Gap {
                lost: 2,
                prev_us: 20
            }
        );
        assert_eq!(flows.arrive(&header(4, BROADCAST), 40), Arrival::Late);
        assert_eq!(flows.arrive(&header(4, BROADCAST), 50), Arrival::Duplicate);
        assert_eq!(flows.arrive(&header(5, BROADCAST), 60), Arrival::Duplicate);
        // Unicasts from the same sender are a separate flow.
        assert_eq!(flows.arrive(&header(1, 9), 70), Arrival::First);
        assert_eq!(
            flows.arrive(&header(1000, BROADCAST), 80),
            Arrival::Gap {
                lost: 994,
                prev_us: 60
            }
        );
        assert_eq!(flows.arrive(&header(1, BROADCAST), 90), Arrival::Late);
    }
}
