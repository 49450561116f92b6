//! The payload encoding: the 32-byte [`Stamp`] every datagram's payload starts with, written
//! by the sender tasks and read by the receiving tasks.

use bytes::BufMut;

/// Bytes of [`Stamp`] at the start of every payload; payloads are at least this long.
pub const STAMP_LEN: usize = 32;

/// [`Stamp::target`] of a broadcast.
pub const BROADCAST_TARGET: u32 = u32::MAX;

/// What a payload starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The run it belongs to; receivers ignore other runs' stragglers.
    pub run: u32,
    /// The sending client.
    pub sender: u32,
    /// The intended receiving client, or [`BROADCAST_TARGET`].
    pub target: u32,
    /// The sender's allocation.
    pub alloc: u32,
    /// Sequence number within the flow.
    pub seq: u64,
    /// Send time, nanoseconds since the shared base.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the 32 bytes.
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_u32(self.run);
        out.put_u32(self.sender);
        out.put_u32(self.target);
        out.put_u32(self.alloc);
        out.put_u64(self.seq);
        out.put_u64(self.sent_ns);
    }

    /// Reads a stamp from the start of a payload, `None` if it is too short.
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let b = payload.get(..STAMP_LEN)?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Some(Stamp {
            run: u32_at(0),
            sender: u32_at(4),
            target: u32_at(8),
            alloc: u32_at(12),
            seq: u64_at(16),
            sent_ns: u64_at(24),
        })
    }
}
