//! Token buckets for the per-client limits: datagrams and bytes per connection
//! ([`ClientLimits`], owned by the connection's task), bytes per allocation ([`SharedBucket`],
//! shared by the allocation's members across lanes), and control-request pacing
//! ([`Rate::pace`]).
//!
//! Each bucket is kept as one timestamp, the time at which it would be full again (the
//! "theoretical arrival time" of the generic cell rate algorithm, which is a token bucket):
//! taking `n` units moves it `n` emission intervals later, and is allowed while it stays within
//! the burst's worth of time ahead of now. One `u64` of state means the shared bucket is one
//! atomic, updated with a compare-and-swap loop: no lock, no allocation, a division per take.
//!
//! Time is nanoseconds since the relay's [`Clock`] epoch, passed in by the caller, so the
//! buckets are tested with injected time.

use std::sync::atomic::{AtomicU64, Ordering};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// The relay's clock for the buckets: nanoseconds since the relay started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub(super) fn start() -> Clock {
        Clock {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Nanoseconds since the clock started (saturating after 584 years).
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A rate: `per_second` units a second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rate {
    per_second: u64,
    /// How far ahead of now the bucket's timestamp may be: `burst` units' worth of time.
    tolerance: u64,
}

impl Rate {
    /// `per_second` units a second, up to `burst` at once (both at least 1).
    pub(super) fn new(per_second: u64, burst: u64) -> Rate {
        let per_second = per_second.max(1);
        let tolerance =
            u128::from(burst.max(1)) * u128::from(NANOS_PER_SECOND) / u128::from(per_second);
        Rate {
            per_second,
            tolerance: u64::try_from(tolerance).unwrap_or(u64::MAX),
        }
    }

    /// The rate in units per second.
    pub(super) fn per_second(&self) -> u64 {
        self.per_second
    }

    /// The time `units` take to refill, rounded up so that the rate is never exceeded.
    fn cost(&self, units: u64) -> u64 {
        let nanos = u128::from(units) * u128::from(NANOS_PER_SECOND);
        u64::try_from(nanos.div_ceil(u128::from(self.per_second))).unwrap_or(u64::MAX)
    }

    /// The bucket's timestamp after taking `units` at `now` from a bucket whose timestamp is
    /// `tat`, or `None` if it does not hold them (the bucket is then unchanged).
    pub(super) fn take(&self, tat: u64, now: u64, units: u64) -> Option<u64> {
        let next = tat.max(now).saturating_add(self.cost(units));
        (next <= now.saturating_add(self.tolerance)).then_some(next)
    }

    /// Takes one unit at `now` whatever the bucket holds, and returns how long the taker must
    /// wait (nanoseconds) before it may act: zero while the bucket is not empty, else the
    /// time until its unit has refilled. Waiting takers queue: each is paced one emission
    /// interval after the previous one.
    pub(super) fn pace(&self, tat: &mut u64, now: u64) -> u64 {
        let next = (*tat).max(now).saturating_add(self.cost(1));
        *tat = next;
        next.saturating_sub(now.saturating_add(self.tolerance))
    }
}

/// Which of a connection's limits a datagram hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    /// The sender's datagrams per second.
    ClientDatagrams,
    /// The sender's payload bytes per second.
    ClientBytes,
}

/// A connection's datagram limits: datagrams and payload bytes per second. Owned by the
/// connection's task; a datagram is taken from both buckets or from neither.
#[derive(Debug)]
pub(super) struct ClientLimits {
    datagrams: Rate,
    bytes: Rate,
    datagrams_tat: u64,
    bytes_tat: u64,
}

impl ClientLimits {
    /// Full buckets of the given rates.
    pub(super) fn new(datagrams: Rate, bytes: Rate) -> ClientLimits {
        ClientLimits {
            datagrams,
            bytes,
            datagrams_tat: 0,
            bytes_tat: 0,
        }
    }

    /// Takes one datagram of `len` payload bytes at `now`; on refusal, the limit it hit and
    /// that limit's value (datagrams or bytes per second).
    pub(super) fn take(&mut self, now: u64, len: usize) -> Result<(), (Limit, u64)> {
        let Some(datagrams_tat) = self.datagrams.take(self.datagrams_tat, now, 1) else {
            return Err((Limit::ClientDatagrams, self.datagrams.per_second()));
        };
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        let Some(bytes_tat) = self.bytes.take(self.bytes_tat, now, len) else {
            return Err((Limit::ClientBytes, self.bytes.per_second()));
        };
        self.datagrams_tat = datagrams_tat;
        self.bytes_tat = bytes_tat;
        Ok(())
    }
}

/// A token bucket shared across threads (an allocation's bandwidth cap): one atomic.
#[derive(Debug)]
pub(super) struct SharedBucket {
    rate: Rate,
    tat: AtomicU64,
}

impl SharedBucket {
    /// A full bucket of `rate`.
    pub(super) fn new(rate: Rate) -> SharedBucket {
        SharedBucket {
            rate,
            tat: AtomicU64::new(0),
        }
    }

    /// The bucket's rate.
    pub(super) fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes `units` at `now` if the bucket holds them.
    pub(super) fn take(&self, now: u64, units: u64) -> bool {
        // Relaxed: the timestamp orders nothing but itself.
        self.tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                self.rate.take(tat, now, units)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SECOND: u64 = NANOS_PER_SECOND;

    /// How many single units a bucket gives at `now` before refusing.
    fn drain(bucket: &SharedBucket, now: u64) -> u64 {
        let mut n = 0;
        while bucket.take(now, 1) {
            n += 1;
            assert!(n <= 10_000_000, "the bucket never refuses");
        }
        n
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_refills_at_its_rate() {
        let bucket = SharedBucket::new(Rate::new(500, 500));
        let start = 7 * SECOND;
        assert_eq!(drain(&bucket, start), 500);
        // 10 ms refill 5 units at 500 a second; nothing in between is lost to rounding.
        assert_eq!(drain(&bucket, start + 10 * MS), 5);
        assert_eq!(drain(&bucket, start + 13 * MS), 1);
        assert_eq!(drain(&bucket, start + 16 * MS), 2);
        // A long pause refills it to its burst, never beyond.
        assert_eq!(drain(&bucket, start + 60 * SECOND), 500);
    }

    #[test]
    fn a_take_larger_than_what_is_left_is_refused_and_takes_nothing() {
        let bucket = SharedBucket::new(Rate::new(1000, 1000));
        assert!(bucket.take(0, 900));
        assert!(!bucket.take(0, 101), "only 100 left");
        assert!(bucket.take(0, 100), "the refusal took nothing");
        assert!(!bucket.take(0, 1));
        // Half a second later, half the burst is back.
        assert!(bucket.take(SECOND / 2, 500));
        assert!(!bucket.take(SECOND / 2, 1));
    }

    #[test]
    fn a_burst_larger_than_the_rate_holds_more_than_a_second() {
        let bucket = SharedBucket::new(Rate::new(100, 1150));
        assert!(bucket.take(0, 1150), "one full-size datagram fits");
        assert!(!bucket.take(SECOND, 101));
        assert!(bucket.take(SECOND, 100));
    }

    #[test]
    fn a_high_byte_rate_still_charges_every_byte() {
        let bucket = SharedBucket::new(Rate::new(1 << 30, 1 << 30));
        assert!(bucket.take(0, 1 << 30));
        // A byte at 1 GiB/s is under a nanosecond: rounded up, it is never free.
        assert!(!bucket.take(0, 1));
        assert!(bucket.take(1, 1));
    }

    #[test]
    fn a_shared_bucket_is_shared_by_every_taker() {
        let bucket = std::sync::Arc::new(SharedBucket::new(Rate::new(10_000, 10_000)));
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let bucket = bucket.clone();
                std::thread::spawn(move || (0..5_000).filter(|_| bucket.take(SECOND, 1)).count())
            })
            .collect();
        let taken: usize = takers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 10_000);
    }

    #[test]
    fn a_client_is_limited_by_datagrams_and_by_bytes() {
        // Datagrams bind first: 10 datagrams of 10 bytes, well under 1000 bytes.
        let mut limits = ClientLimits::new(Rate::new(10, 10), Rate::new(1000, 1000));
        for _ in 0..10 {
            assert_eq!(limits.take(0, 10), Ok(()));
        }
        assert_eq!(limits.take(0, 10), Err((Limit::ClientDatagrams, 10)));
        assert_eq!(limits.take(100 * MS, 10), Ok(()), "one datagram refilled");
        assert_eq!(limits.take(100 * MS, 10), Err((Limit::ClientDatagrams, 10)));

        // Bytes bind first: 2 datagrams of 400 bytes, then 200 bytes left.
        let mut limits = ClientLimits::new(Rate::new(10, 10), Rate::new(1000, 1000));
        assert_eq!(limits.take(0, 400), Ok(()));
        assert_eq!(limits.take(0, 400), Ok(()));
        assert_eq!(limits.take(0, 400), Err((Limit::ClientBytes, 1000)));
        // The refused datagram took no datagram token: 8 more small ones fit.
        for _ in 0..8 {
            assert_eq!(limits.take(0, 10), Ok(()));
        }
        assert_eq!(limits.take(0, 10), Err((Limit::ClientDatagrams, 10)));
        // 880 bytes were taken; 400 ms refill 400 bytes and 4 datagrams.
        assert_eq!(limits.take(400 * MS, 400), Ok(()));
        assert_eq!(limits.take(400 * MS, 121), Err((Limit::ClientBytes, 1000)));
        assert_eq!(limits.take(400 * MS, 120), Ok(()));
    }

    #[test]
    fn pacing_lets_the_burst_through_then_spaces_the_rest_by_the_interval() {
        let rate = Rate::new(20, 32);
        let mut tat = 0;
        let start = SECOND;
        for i in 0..32 {
            assert_eq!(rate.pace(&mut tat, start), 0, "request {i} is in the burst");
        }
        // Sent all at once, the next ones wait 50, 100, 150 ms.
        assert_eq!(rate.pace(&mut tat, start), 50 * MS);
        assert_eq!(rate.pace(&mut tat, start), 100 * MS);
        assert_eq!(rate.pace(&mut tat, start), 150 * MS);
        // One that comes after the queue has drained waits only for its own token.
        let mut tat = 0;
        for _ in 0..32 {
            rate.pace(&mut tat, start);
        }
        assert_eq!(rate.pace(&mut tat, start + 30 * MS), 20 * MS);
    }
}
