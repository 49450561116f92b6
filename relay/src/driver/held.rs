//! Datagrams held for members on their way: when a node adopts an allocation (a drained node
//! handed it over, or its node was lost), its members rejoin one after the other, and what the
//! first ones send to the others would find no one. The control plane names the members it
//! expects (`Output::Awaiting`); each gets a [`Held`] queue in its allocation's routing table,
//! which keeps the latest datagrams addressed to it and hands them over, in order, when it is
//! seated ([`Held::arrive`], before the routing table names its connection).
//!
//! Bounds: at most [`HELD_PER_MEMBER`] datagrams per awaited member (the oldest go first), no
//! datagram older than [`HELD_MAX_AGE`] is delivered, and all queues of the relay together hold
//! at most [`HELD_BUDGET`] payload bytes ([`HeldBudget`]); the wait itself ends with the
//! adoption's (the keepalive timeout). Every datagram's fate is counted in
//! `baton_held_datagrams_total{outcome}`.
//!
//! A queue's state moves once from waiting to arrived or to abandoned, under its lock, so a
//! lane that read an older routing table and holds a datagram after the member arrived sends
//! it straight there instead, behind what was held: nothing is lost in the switch and nothing
//! overtakes the held datagrams. Runs on the lanes (holding) and on the control task (arrival,
//! abandonment); the lock is held for a queue operation or, once, for the hand-over.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use crate::metrics::HeldMetrics;

/// Datagrams kept per awaited member: [`HELD_MAX_AGE`] of a 60 Hz game with two other members
/// sending to it.
pub(super) const HELD_PER_MEMBER: usize = 64;

/// Older datagrams are dropped instead of delivered: a game has moved on from them.
pub(super) const HELD_MAX_AGE: Duration = Duration::from_millis(500);

/// Payload bytes all held datagrams of a relay may take together.
pub(super) const HELD_BUDGET: usize = 8 * 1024 * 1024;

/// What became of a held datagram, as `baton_held_datagrams_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Queued for an awaited member.
    Held,
    /// Handed to the member when it arrived.
    Delivered,
    /// Older than [`HELD_MAX_AGE`] when the member arrived.
    Stale,
    /// Pushed out by newer ones ([`HELD_PER_MEMBER`]).
    Evicted,
    /// Not held: the relay's [`HELD_BUDGET`] was spent.
    OverBudget,
    /// Dropped because the member was no longer awaited (the wait ended or the allocation
    /// closed).
    Abandoned,
}

impl Outcome {
    /// Counts one datagram with this outcome in `baton_held_datagrams_total`.
    pub(super) fn count(self, metrics: &HeldMetrics) {
        let counter: &Counter = match self {
            Outcome::Held => &metrics.held,
            Outcome::Delivered => &metrics.delivered,
            Outcome::Stale => &metrics.stale,
            Outcome::Evicted => &metrics.evicted,
            Outcome::OverBudget => &metrics.over_budget,
            Outcome::Abandoned => &metrics.abandoned,
        };
        counter.inc();
    }
}

/// The payload bytes every queue of the relay may still take.
#[derive(Debug)]
pub(super) struct HeldBudget {
    left: AtomicUsize,
}

impl HeldBudget {
    /// A budget of `bytes`.
    pub(super) fn new(bytes: usize) -> HeldBudget {
        HeldBudget {
            left: AtomicUsize::new(bytes),
        }
    }

    fn take(&self, bytes: usize) -> bool {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.left.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes not taken.
    #[cfg(test)]
    pub(super) fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }
}

/// What [`Held::hold`] did with a datagram.
#[derive(Debug)]
pub(super) enum Hold<C> {
    /// Kept for the member.
    Held,
    /// The member has arrived: send it there now.
    Arrived(C, Bytes),
    /// Dropped (over the budget, or the member is no longer awaited).
    Dropped(Outcome),
}

enum State<C> {
    /// The member is on its way: datagrams with the instant (the relay's clock, in
    /// nanoseconds) they came in at.
    Waiting(VecDeque<(u64, Bytes)>),
    /// The member is seated on this connection.
    Arrived(C),
    /// The member is no longer awaited.
    Abandoned,
}

/// The datagrams held for one awaited member. `C` is its connection once it arrives.
pub(super) struct Held<C> {
    state: Mutex<State<C>>,
    budget: Arc<HeldBudget>,
}

impl<C: Clone> Held<C> {
    /// An empty queue for a member on its way, taking its bytes from `budget`.
    pub(super) fn new(budget: Arc<HeldBudget>) -> Held<C> {
        Held {
            state: Mutex::new(State::Waiting(VecDeque::new())),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // A panic under this lock leaves a queue in a consistent state, so keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `datagram`, which came in at `now`, for the member; `evicted` is called for each
    /// older one pushed out. Once the member has arrived, returns its connection instead.
    pub(super) fn hold(&self, now: u64, datagram: Bytes, mut evicted: impl FnMut()) -> Hold<C> {
        let budget = &self.budget;
        let mut state = self.lock();
        let queue = match &mut *state {
            State::Waiting(queue) => queue,
            State::Arrived(conn) => return Hold::Arrived(conn.clone(), datagram),
            State::Abandoned => return Hold::Dropped(Outcome::Abandoned),
        };
        if queue.len() >= HELD_PER_MEMBER {
            if let Some((_, old)) = queue.pop_front() {
                budget.give_back(old.len());
                evicted();
            }
        }
        if !budget.take(datagram.len()) {
            return Hold::Dropped(Outcome::OverBudget);
        }
        queue.push_back((now, datagram));
        Hold::Held
    }

    /// The member is seated on `conn` at `now`: each held datagram not older than
    /// [`HELD_MAX_AGE`] goes to `send`, in the order it came in, and `outcome` counts each one's
    /// fate. From now on [`Held::hold`] answers with `conn`. Only the first call acts.
    pub(super) fn arrive(
        &self,
        conn: C,
        now: u64,
        mut send: impl FnMut(&C, Bytes),
        mut outcome: impl FnMut(Outcome),
    ) {
        let budget = &self.budget;
        let mut state = self.lock();
        let State::Waiting(queue) = &mut *state else {
            return;
        };
        let max_age = u64::try_from(HELD_MAX_AGE.as_nanos()).unwrap_or(u64::MAX);
        for (at, datagram) in queue.drain(..) {
            budget.give_back(datagram.len());
            if now.saturating_sub(at) > max_age {
                outcome(Outcome::Stale);
            } else {
                send(&conn, datagram);
                outcome(Outcome::Delivered);
            }
        }
        *state = State::Arrived(conn);
    }

    /// The member is no longer awaited: what was held for it is dropped (`outcome` counts each)
    /// and later datagrams are refused. Only the first call acts, and not after an arrival.
    pub(super) fn abandon(&self, mut outcome: impl FnMut(Outcome)) {
        let budget = &self.budget;
        let mut state = self.lock();
        let State::Waiting(queue) = &mut *state else {
            return;
        };
        for (_, datagram) in queue.drain(..) {
            budget.give_back(datagram.len());
            outcome(Outcome::Abandoned);
        }
        *state = State::Abandoned;
    }
}

impl<C> Drop for Held<C> {
    /// A queue dropped while still waiting (its allocation's table went away) gives its bytes
    /// back.
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let State::Waiting(queue) = state {
            let bytes = queue.iter().map(|(_, d)| d.len()).sum();
            self.budget.give_back(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    const MS: u64 = 1_000_000;

    fn datagram(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    fn hold_all<C: Clone + std::fmt::Debug>(held: &Held<C>, items: &[(u64, u8)]) -> usize {
        let mut evicted = 0;
        for &(at, n) in items {
            assert!(matches!(
                held.hold(at, datagram(n, 10), || evicted += 1),
                Hold::Held
            ));
        }
        evicted
    }

    #[test]
    fn held_datagrams_reach_the_member_in_order_when_it_arrives() {
        let budget = Arc::new(HeldBudget::new(1000));
        let held = Held::new(budget.clone());
        assert_eq!(hold_all(&held, &[(0, 1), (MS, 2), (2 * MS, 3)]), 0);
        assert_eq!(budget.left(), 970);
        let sent = RefCell::new(Vec::new());
        let mut outcomes = Vec::new();
        held.arrive(
            "conn",
            10 * MS,
            |c, d| sent.borrow_mut().push((*c, d[0])),
            |o| outcomes.push(o),
        );
        assert_eq!(*sent.borrow(), [("conn", 1), ("conn", 2), ("conn", 3)]);
        assert_eq!(outcomes, [Outcome::Delivered; 3]);
        assert_eq!(budget.left(), 1000);
        // Late holders (a lane with an older table) are sent to the member directly.
        match held.hold(11 * MS, datagram(4, 10), || {}) {
            Hold::Arrived(conn, d) => assert_eq!((conn, d[0]), ("conn", 4)),
            other => panic!("{other:?}"),
        }
        // A second arrival does nothing.
        held.arrive("other", 12 * MS, |_, _| panic!("sent"), |_| {});
        assert!(matches!(
            held.hold(13 * MS, datagram(5, 10), || {}),
            Hold::Arrived("conn", _)
        ));
    }

    #[test]
    fn only_the_newest_are_kept_and_stale_ones_are_not_delivered() {
        let budget = Arc::new(HeldBudget::new(100_000));
        let held = Held::new(budget.clone());
        let max_age = u64::try_from(HELD_MAX_AGE.as_nanos()).unwrap();
        let items: Vec<(u64, u8)> = (0..HELD_PER_MEMBER as u8 + 5)
            .map(|n| (u64::from(n) * 10 * MS, n))
            .collect();
        assert_eq!(hold_all(&held, &items), 5);
        assert_eq!(budget.left(), 100_000 - 10 * HELD_PER_MEMBER);
        // Arriving when the first kept one (n = 5, at 50 ms) is just too old.
        let now = 50 * MS + max_age + 1;
        let mut sent = Vec::new();
        let mut outcomes = Vec::new();
        held.arrive((), now, |_, d| sent.push(d[0]), |o| outcomes.push(o));
        let expected: Vec<u8> = (6..HELD_PER_MEMBER as u8 + 5).collect();
        assert_eq!(sent, expected);
        assert_eq!(outcomes[0], Outcome::Stale);
        assert!(outcomes[1..].iter().all(|o| *o == Outcome::Delivered));
        assert_eq!(budget.left(), 100_000);
    }

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = Arc::new(HeldBudget::new(25));
        let (a, b) = (
            Held::<()>::new(budget.clone()),
            Held::<()>::new(budget.clone()),
        );
        assert!(matches!(a.hold(0, datagram(1, 10), || {}), Hold::Held));
        assert!(matches!(b.hold(0, datagram(2, 10), || {}), Hold::Held));
        assert!(matches!(
            b.hold(0, datagram(3, 10), || {}),
            Hold::Dropped(Outcome::OverBudget)
        ));
        let mut abandoned = 0;
        a.abandon(|o| {
            assert_eq!(o, Outcome::Abandoned);
            abandoned += 1;
        });
        assert_eq!(abandoned, 1);
        assert_eq!(budget.left(), 15);
        assert!(matches!(b.hold(0, datagram(3, 10), || {}), Hold::Held));
        // An abandoned queue refuses, and its member's arrival delivers nothing.
        assert!(matches!(
            a.hold(0, datagram(4, 10), || {}),
            Hold::Dropped(Outcome::Abandoned)
        ));
        a.arrive((), 0, |_, _| panic!("sent"), |_| panic!("counted"));
        b.abandon(|_| {});
        assert_eq!(budget.left(), 25);
        // A queue dropped while waiting gives its bytes back.
        let c = Held::<()>::new(budget.clone());
        assert!(matches!(c.hold(0, datagram(5, 10), || {}), Hold::Held));
        assert_eq!(budget.left(), 15);
        drop(c);
        assert_eq!(budget.left(), 25);
    }
}
