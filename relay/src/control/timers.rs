//! The deadline queue: every `Timer` the control plane sets (bind windows, code expiry,
//! tombstones, host bind, migration rounds, successor links, the rate-limit sweep), the heap
//! behind [`ControlPlane::poll_timeout`], and `fire`, which hands a due timer to the file that
//! owns its deadline.
//!
//! Timers are never cancelled: each owner checks its deadline against the state again when
//! the timer fires, so a stale one does nothing. Runs wherever the [`ControlPlane`] is
//! called: on the control task, with `now` passed in.

use std::cmp::Reverse;
use std::time::Instant;

use baton_protocol::{AllocationId, JoinCode};

use super::{ConnId, ControlPlane};

/// A deadline, ordered after its instant in the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A connection's bind window ends (`membership`).
    Bind(ConnId),
    /// A migration round's deadline, for the election of that epoch (`migration`).
    Migration(AllocationId, u32),
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
}

impl ControlPlane {
    /// Sets a timer for `at`.
    pub(super) fn schedule(&mut self, at: Instant, key: Timer) {
        self.timers.push(Reverse((at, key)));
    }

    /// Takes the earliest timer off the queue if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let Reverse((at, _)) = self.timers.peek()?;
        if *at > now {
            return None;
        }
        self.timers.pop().map(|Reverse((_, key))| key)
    }

    /// Acts on a timer that came due at `now`.
    pub(super) fn fire(&mut self, now: Instant, key: Timer) {
        match key {
            Timer::Migration(id, epoch) => self.migration_deadline(now, id, epoch),
            Timer::Successor(id) => {
                self.successors.remove(&id);
            }
            Timer::Bind(conn) => self.bind_deadline(now, conn),
            Timer::CodeExpiry(id) => self.expire_code(now, id),
            Timer::HostBind(id) => self.host_bind_deadline(now, id),
            Timer::Tombstone(code) => self.forget_tombstone(now, code),
            Timer::SweepRateLimits => self.sweep_rate_limits(now),
        }
    }
}
