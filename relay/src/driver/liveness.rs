//! The host-liveness rule (SPEC section 11.1), sans IO: while a connection hosts its
//! allocation, the connection task samples how many UDP datagrams quinn has received on it
//! every [`HostLiveness::interval_for`] the timeout and feeds the count here with the time. A count
//! that has not moved for the allocation's host-loss timeout means the host is lost.
//!
//! The silence is measured from the sample that first saw the latest count, which is at or
//! after the datagram that moved it: the rule never trips before the timeout has really
//! passed without a datagram, and trips at most one sample interval after it.

use std::time::{Duration, Instant};

/// Samples per host-loss timeout: the relay notices a silent host within about 7/6 of the
/// timeout, and the SDK's host heartbeats at the same rate (six may be lost in a row).
pub(crate) const SAMPLES_PER_TIMEOUT: u32 = 6;

/// What one sample says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Heard from within the timeout.
    Alive,
    /// Nothing received for the timeout or longer: the host is lost.
    Lost,
}

/// One host's silence clock.
#[derive(Debug)]
pub(crate) struct HostLiveness {
    timeout: Duration,
    /// The received-datagram count last seen.
    count: u64,
    /// When `count` was first seen (or the watch started).
    since: Instant,
}

impl HostLiveness {
    /// Starts watching at `now` with the connection's received-datagram count `count`: a
    /// member that just became host gets a fresh clock, whatever silence came before.
    pub(crate) fn new(timeout: Duration, now: Instant, count: u64) -> Self {
        HostLiveness {
            timeout,
            count,
            since: now,
        }
    }

    /// How often to sample a watch of `timeout`: a sixth of it, at least a millisecond.
    pub(crate) fn interval_for(timeout: Duration) -> Duration {
        (timeout / SAMPLES_PER_TIMEOUT).max(Duration::from_millis(1))
    }

    /// Takes a sample: the received-datagram count `count` at `now`.
    pub(crate) fn sample(&mut self, now: Instant, count: u64) -> Verdict {
        if count != self.count {
            self.count = count;
            self.since = now;
            return Verdict::Alive;
        }
        if now.saturating_duration_since(self.since) >= self.timeout {
            Verdict::Lost
        } else {
            Verdict::Alive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const TIMEOUT: Duration = Duration::from_millis(1500);
    const MS: Duration = Duration::from_millis(1);

    /// A simulated link: datagrams the host sends at given times (after delay and loss), and
    /// the relay sampling on its own grid. Returns when the rule first said lost, if it did.
    fn simulate(start: Instant, arrivals: &[Duration], until: Duration) -> Option<Duration> {
        let mut rule = HostLiveness::new(TIMEOUT, start, 0);
        let step = HostLiveness::interval_for(TIMEOUT);
        let mut arrived = arrivals.iter().peekable();
        let mut count = 0;
        let mut t = Duration::ZERO;
        while t <= until {
            while arrived.next_if(|a| **a <= t).is_some() {
                count += 1;
            }
            if rule.sample(start + t, count) == Verdict::Lost {
                return Some(t);
            }
            t += step;
        }
        None
    }

    fn every(period: Duration, until: Duration) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        while t <= until {
            out.push(t);
            t += period;
        }
        out
    }

    #[test]
    fn samples_six_times_per_timeout() {
        assert_eq!(
            HostLiveness::interval_for(TIMEOUT),
            Duration::from_millis(250)
        );
        assert_eq!(HostLiveness::interval_for(Duration::from_micros(3)), MS);
    }

    #[test]
    fn steady_traffic_never_trips() {
        let start = Instant::now();
        let long = Duration::from_secs(600);
        assert_eq!(simulate(start, &every(16 * MS, long), long), None);
        assert_eq!(simulate(start, &every(250 * MS, long), long), None);
    }

    #[test]
    fn a_gap_just_under_the_timeout_does_not_trip() {
        let start = Instant::now();
        let mut rule = HostLiveness::new(TIMEOUT, start, 10);
        assert_eq!(rule.sample(start + 100 * MS, 11), Verdict::Alive);
        // Silent from the sample at 100 ms on: 1499 ms is not yet the timeout.
        assert_eq!(rule.sample(start + 1599 * MS, 11), Verdict::Alive);
        // Heard again: the clock starts over.
        assert_eq!(rule.sample(start + 1600 * MS, 12), Verdict::Alive);
        assert_eq!(rule.sample(start + 3099 * MS, 12), Verdict::Alive);
    }

    #[test]
    fn a_gap_of_the_timeout_or_more_trips() {
        let start = Instant::now();
        let mut rule = HostLiveness::new(TIMEOUT, start, 10);
        assert_eq!(rule.sample(start + 100 * MS, 11), Verdict::Alive);
        assert_eq!(rule.sample(start + 1600 * MS, 11), Verdict::Lost);
        let mut rule = HostLiveness::new(TIMEOUT, start, 10);
        assert_eq!(rule.sample(start + 1601 * MS, 10), Verdict::Lost);
    }

    #[test]
    fn a_crash_is_noticed_within_the_timeout_and_one_sample() {
        let start = Instant::now();
        // Heartbeats every 250 ms until a crash at 10 s (the last one at 10 s).
        let crash = Duration::from_secs(10);
        let lost = simulate(
            start,
            &every(250 * MS, crash),
            crash + Duration::from_secs(5),
        )
        .expect("a crash is noticed");
        let after = lost - crash;
        assert!(after >= TIMEOUT, "tripped early: {after:?}");
        assert!(after <= TIMEOUT + 250 * MS, "tripped late: {after:?}");
        // Off the sampling grid, still within one sample of the timeout.
        let crash = Duration::from_millis(10_130);
        let arrivals: Vec<_> = every(250 * MS, Duration::from_secs(10))
            .into_iter()
            .map(|t| t + 130 * MS)
            .collect();
        let lost = simulate(start, &arrivals, crash + Duration::from_secs(5)).expect("noticed");
        let after = lost - crash;
        assert!(after >= TIMEOUT && after <= TIMEOUT + 250 * MS, "{after:?}");
    }

    #[test]
    fn becoming_host_mid_silence_starts_the_clock_fresh() {
        let start = Instant::now();
        // The member was silent for 5 s before it became host at `start + 5 s`.
        let became = start + Duration::from_secs(5);
        let mut rule = HostLiveness::new(TIMEOUT, became, 42);
        assert_eq!(rule.sample(became + 250 * MS, 42), Verdict::Alive);
        assert_eq!(rule.sample(became + 1499 * MS, 42), Verdict::Alive);
        assert_eq!(rule.sample(became + TIMEOUT, 42), Verdict::Lost);
    }

    #[test]
    fn five_percent_loss_with_delay_of_heartbeats_never_trips_at_the_default() {
        // 250 ms heartbeats over an hour, each lost with 5 % probability (fixed seed), the
        // rest delayed 50 ms plus up to 20 ms of jitter: never six in a row lost.
        let start = Instant::now();
        let long = Duration::from_secs(3600);
        let mut rng = StdRng::seed_from_u64(14);
        let mut arrivals = Vec::new();
        for sent in every(250 * MS, long) {
            if rng.gen_range(0..100) >= 5 {
                arrivals.push(sent + 50 * MS + Duration::from_millis(rng.gen_range(0..=20)));
            }
        }
        arrivals.sort();
        assert_eq!(simulate(start, &arrivals, long), None);
    }

    #[test]
    fn a_constant_delay_shifts_nothing() {
        let start = Instant::now();
        let crash = Duration::from_secs(10);
        let plain = every(250 * MS, crash);
        let delayed: Vec<_> = plain.iter().map(|t| *t + 50 * MS).collect();
        let long = crash + Duration::from_secs(5);
        let a = simulate(start, &plain, long).expect("noticed");
        let b = simulate(start, &delayed, long).expect("noticed");
        // The delayed link's last heartbeat arrives 50 ms later: it is noticed no sooner, and
        // within one more sample.
        assert!(b >= a && b <= a + 250 * MS, "{a:?} vs {b:?}");
    }

    #[test]
    fn long_runs_of_loss_trip_only_when_the_timeout_is_spent() {
        // Six heartbeats in a row lost (1.5 s without one) is a loss; five is not.
        let start = Instant::now();
        let long = Duration::from_secs(20);
        let five: Vec<_> = every(250 * MS, long)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !(20..25).contains(i))
            .map(|(_, t)| t)
            .collect();
        assert_eq!(simulate(start, &five, long), None);
        let seven: Vec<_> = every(250 * MS, long)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !(20..27).contains(i))
            .map(|(_, t)| t)
            .collect();
        assert!(simulate(start, &seven, long).is_some());
    }
}
