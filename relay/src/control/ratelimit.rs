//! The rate limit on failed joins, against join-code guessing: a token [`Bucket`] per client
//! (an IPv4 address, or an IPv6 /64: [`prefix::host`]) and one for the whole relay, so that
//! guessing from many addresses is bounded too. A client's bucket is refilled lazily when it
//! tries again and swept every `SWEEP_INTERVAL` (full buckets are dropped), so the table holds
//! only clients that failed recently.
//!
//! Both are checked before a code is looked up, and a refused join learns nothing: a limited
//! client is refused `rate_limited` even for a valid code (SPEC section 5.2), otherwise the
//! refusal would tell a guesser which guess hit. The relay-wide bucket is checked and charged
//! only for joins that pass the credential check made before the lookup, so on a relay with
//! `--auth-secret` anonymous clients can neither spend it nor learn anything.
//!
//! Calls only the timer queue (`schedule`). Runs wherever the [`ControlPlane`] is called: on
//! the control task, with `now` passed in.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::timers::Timer;
use super::{millis_until, ControlPlane};
use crate::prefix;

/// Rate-limit buckets are swept this often (full buckets are dropped).
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A token bucket of failed join attempts.
#[derive(Debug)]
pub(super) struct Bucket {
    tokens: u32,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens.
    pub(super) fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            refilled: now,
        }
    }
}

/// Limits of one kind of bucket: its burst, and the interval one token comes back in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit {
    pub(super) burst: u32,
    pub(super) refill: Duration,
}

impl Limit {
    /// `burst` tokens, then one per `refill`.
    pub(super) fn new(burst: usize, refill: Duration) -> Limit {
        Limit {
            burst: u32::try_from(burst).unwrap_or(u32::MAX).max(1),
            refill,
        }
    }

    /// `burst` tokens, then `per_second` a second.
    pub(super) fn per_second(burst: usize, per_second: usize) -> Limit {
        let per_second = u32::try_from(per_second).unwrap_or(u32::MAX).max(1);
        Limit::new(burst, Duration::from_secs(1) / per_second)
    }

    /// Refills `bucket` for the time elapsed since its last refill; if it is empty, the
    /// milliseconds until its next token.
    fn check(&self, bucket: &mut Bucket, now: Instant) -> Result<(), u32> {
        match refill_bucket(bucket, now, self.burst, self.refill) {
            0 => Err(millis_until(now, bucket.refilled + self.refill).max(1)),
            _ => Ok(()),
        }
    }
}

impl Limit {
    /// Takes a token from `bucket` (refilled for the time elapsed first); if it is empty, the
    /// milliseconds until its next token.
    pub(super) fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), u32> {
        self.check(bucket, now)?;
        bucket.tokens = bucket.tokens.saturating_sub(1);
        Ok(())
    }
}

impl ControlPlane {
    /// Whether the client at `ip` may try a join at `now`; if not, the milliseconds until it
    /// may.
    pub(super) fn join_allowed(&mut self, now: Instant, ip: IpAddr) -> Result<(), u32> {
        let limit = self.join_limit;
        let bucket = self
            .join_buckets
            .entry(prefix::host(ip))
            .or_insert_with(|| Bucket::full(limit.burst, now));
        limit.check(bucket, now)
    }

    /// Whether the relay-wide budget of failed joins has a token left at `now`; if not, the
    /// milliseconds until it has.
    pub(super) fn relay_join_allowed(&mut self, now: Instant) -> Result<(), u32> {
        self.relay_join_limit.check(&mut self.relay_joins, now)
    }

    /// Charges a failed join to the client at `ip`.
    pub(super) fn charge_failed_join(&mut self, ip: IpAddr) {
        if let Some(b) = self.join_buckets.get_mut(&prefix::host(ip)) {
            b.tokens = b.tokens.saturating_sub(1);
        }
    }

    /// Charges a failed guess, one that got as far as the code's lookup, to the client at
    /// `ip` and to the relay-wide budget.
    pub(super) fn charge_failed_guess(&mut self, ip: IpAddr) {
        self.charge_failed_join(ip);
        self.relay_joins.tokens = self.relay_joins.tokens.saturating_sub(1);
    }

    /// [`Timer::SweepRateLimits`]: drops the buckets that have refilled and sets the next
    /// sweep.
    pub(super) fn sweep_rate_limits(&mut self, now: Instant) {
        let Limit { burst, refill } = self.join_limit;
        self.join_buckets
            .retain(|_, b| refill_bucket(b, now, burst, refill) < burst);
        self.schedule(now + SWEEP_INTERVAL, Timer::SweepRateLimits);
    }
}

/// Refills `bucket` for the time elapsed since its last refill and returns its tokens.
fn refill_bucket(bucket: &mut Bucket, now: Instant, burst: u32, refill: Duration) -> u32 {
    let elapsed = now.saturating_duration_since(bucket.refilled);
    let earned = (elapsed.as_nanos() / refill.as_nanos().max(1)) as u64;
    if earned > 0 {
        bucket.tokens = (u64::from(bucket.tokens) + earned).min(u64::from(burst)) as u32;
        bucket.refilled += refill * u32::try_from(earned).unwrap_or(u32::MAX).min(burst);
        if bucket.tokens == burst {
            bucket.refilled = now;
        }
    }
    bucket.tokens
}
