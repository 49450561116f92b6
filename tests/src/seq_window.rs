//! [`SeqWindow`]: which of the last few sequence numbers of one flow have arrived, to tell a
//! new datagram from a duplicate (QUIC never duplicates a datagram, so a duplicate is a relay
//! bug) and from one too old to judge. Plain state, kept per flow by each receiver on its own
//! task: `baton-player`'s [`Flows`](crate::player::payload::Flows) and `baton-bench`'s
//! `Receiver`.

/// What a sequence number turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before: above every earlier one, or filling a gap below the highest.
    New,
    /// Seen before.
    Duplicate,
    /// `WIDTH` or more below the highest: too old for the window to judge.
    TooOld,
}

/// Duplicate detection over the last `WIDTH` (at most 128) sequence numbers of one flow.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqWindow<const WIDTH: u64> {
    /// The highest sequence number seen (meaningless while `seen` is 0).
    max: u64,
    /// Bit `i` set: `max - i` was seen (bit 0 is `max` itself); 0 before the first.
    seen: u128,
}

impl<const WIDTH: u64> SeqWindow<WIDTH> {
    /// The window's width in sequence numbers (the bit mask holds 128).
    const WIDTH: u64 = if WIDTH < 128 { WIDTH } else { 128 };

    /// The highest sequence number seen, if any.
    #[inline]
    pub fn max(&self) -> Option<u64> {
        (self.seen != 0).then_some(self.max)
    }

    /// Records the arrival of `seq` and says what it was.
    #[inline]
    pub fn check(&mut self, seq: u64) -> Seen {
        if self.seen == 0 || seq > self.max {
            let advance = seq.wrapping_sub(self.max);
            self.seen = if self.seen == 0 || advance >= Self::WIDTH {
                1
            } else {
                (self.seen << advance) | 1
            };
            self.max = seq;
            return Seen::New;
        }
        let back = self.max - seq;
        if back >= Self::WIDTH {
            return Seen::TooOld;
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            Seen::Duplicate
        } else {
            self.seen |= bit;
            Seen::New
        }
    }
}
