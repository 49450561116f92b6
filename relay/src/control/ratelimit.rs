//! The rate limit on failed joins: a token `Bucket` per IP address, refilled lazily when the
//! address tries again and swept every `SWEEP_INTERVAL` (full buckets are dropped), so a
//! client guessing join codes is slowed down and the table stays small.
//!
//! Calls only the timer queue (`schedule`). Runs wherever the [`ControlPlane`] is called: on
//! the control task, with `now` passed in.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::timers::Timer;
use super::{millis_until, ControlPlane};

/// Rate-limit buckets are swept this often (full buckets are dropped).
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A token bucket of failed join attempts for one IP address.
#[derive(Debug)]
pub(super) struct Bucket {
    tokens: u32,
    refilled: Instant,
}

impl ControlPlane {
    /// Whether `ip` may try a join at `now`; if not, the milliseconds until it may.
    pub(super) fn join_allowed(&mut self, now: Instant, ip: IpAddr) -> Result<(), u32> {
        let (burst, refill) = (self.join_burst, self.join_refill);
        let bucket = self.join_buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        if refill_bucket(bucket, now, burst, refill) == 0 {
            return Err(millis_until(now, bucket.refilled + refill));
        }
        Ok(())
    }

    /// Charges a failed join to `ip`.
    pub(super) fn charge_failed_join(&mut self, ip: IpAddr) {
        if let Some(b) = self.join_buckets.get_mut(&ip) {
            b.tokens = b.tokens.saturating_sub(1);
        }
    }

    /// [`Timer::SweepRateLimits`]: drops the buckets that have refilled and sets the next
    /// sweep.
    pub(super) fn sweep_rate_limits(&mut self, now: Instant) {
        let (burst, refill) = (self.join_burst, self.join_refill);
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
