//! The deadline queue: every `Timer` the control plane sets (bind windows, code expiry,
//! tombstones, host bind, migration rounds, successor links, the rate-limit sweep, the drain
//! sweep, the wait for an adopted allocation's members), the `TimerQueue` behind
//! [`ControlPlane::poll_timeout`], and `fire`, which hands a due timer to the file that owns
//! its deadline.
//!
//! A `Timer` is pending at most once: setting it again moves it, and whatever ends the thing
//! it watches cancels it (`cancel_allocation_timers` when an allocation closes or migrates
//! away; binding or leaving cancels a connection's bind window), so the queue holds only live
//! deadlines and never outgrows the state it serves. Each owner still checks its deadline
//! against the state when the timer fires. Runs wherever the [`ControlPlane`] is called: on
//! the control task, with `now` passed in.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use baton_protocol::{AllocationId, JoinCode};

use super::{ConnId, ControlPlane};

/// A deadline, ordered after its instant in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Timer {
    /// A connection's bind window ends (`membership`).
    Bind(ConnId),
    /// The current migration round's deadline (`migration`).
    Migration(AllocationId),
    /// A migrated allocation's successor link is forgotten (`migration`).
    Successor(AllocationId),
    /// An allocation's join code expires (`codes`).
    CodeExpiry(AllocationId),
    /// A reserved allocation's host bind window ends (`allocation`).
    HostBind(AllocationId),
    /// A tombstone is forgotten (`codes`).
    Tombstone(JoinCode),
    /// Full rate-limit buckets are dropped (`ratelimit`).
    SweepRateLimits,
    /// A draining node looks again for allocations to move (`drain`).
    DrainSweep,
    /// An adopted allocation stops waiting for members that have not rejoined (`record`).
    Awaited(AllocationId),
}

/// The pending deadlines: at most one instant per `Timer`, in instant order, each removable
/// by its key.
#[derive(Debug, Default)]
pub(super) struct TimerQueue {
    by_time: BTreeSet<(Instant, Timer)>,
    by_key: HashMap<Timer, Instant>,
}

impl TimerQueue {
    /// Sets `key` for `at`, replacing any instant it was set for.
    fn set(&mut self, at: Instant, key: Timer) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.by_time.remove(&(old, key));
        }
        self.by_time.insert((at, key));
    }

    /// Removes `key` if it is pending.
    fn cancel(&mut self, key: Timer) {
        if let Some(at) = self.by_key.remove(&key) {
            self.by_time.remove(&(at, key));
        }
    }

    /// The earliest pending instant.
    pub(super) fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Takes the earliest timer off the queue if it is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let &(at, key) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first();
        self.by_key.remove(&key);
        Some(key)
    }

    /// Every pending deadline with its instant, earliest first.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Instant, Timer)> + '_ {
        self.by_time.iter().copied()
    }

    /// Whether the two indexes agree: each pending timer once, at the instant its key names.
    pub(super) fn is_consistent(&self) -> bool {
        self.by_time.len() == self.by_key.len()
            && self
                .by_time
                .iter()
                .all(|(at, key)| self.by_key.get(key) == Some(at))
    }

    /// How many timers are pending.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        debug_assert_eq!(self.by_time.len(), self.by_key.len());
        self.by_time.len()
    }
}

impl ControlPlane {
    /// Sets `key` for `at`; a `key` already set is moved there.
    pub(super) fn schedule(&mut self, at: Instant, key: Timer) {
        self.timers.set(at, key);
    }

    /// Removes `key` if it is pending.
    pub(super) fn cancel(&mut self, key: Timer) {
        self.timers.cancel(key);
    }

    /// Removes every deadline of allocation `id` (code expiry, host bind, migration round):
    /// it closed or moved to a successor.
    pub(super) fn cancel_allocation_timers(&mut self, id: AllocationId) {
        self.cancel(Timer::CodeExpiry(id));
        self.cancel(Timer::HostBind(id));
        self.cancel(Timer::Migration(id));
        self.cancel(Timer::Awaited(id));
    }

    /// Takes the earliest timer off the queue if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        self.timers.pop_due(now)
    }

    /// How many deadlines are pending.
    #[cfg(test)]
    pub(super) fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// Acts on a timer that came due at `now`.
    pub(super) fn fire(&mut self, now: Instant, key: Timer) {
        match key {
            Timer::Migration(id) => self.migration_deadline(now, id),
            Timer::Successor(id) => {
                self.successors.remove(&id);
            }
            Timer::Bind(conn) => self.bind_deadline(now, conn),
            Timer::CodeExpiry(id) => self.expire_code(now, id),
            Timer::HostBind(id) => self.host_bind_deadline(now, id),
            Timer::Tombstone(code) => self.forget_tombstone(now, code),
            Timer::SweepRateLimits => self.sweep_rate_limits(now),
            Timer::DrainSweep => self.sweep_drain(now),
            Timer::Awaited(id) => self.awaited_deadline(id),
        }
    }
}
