//! The event stream's side of the hooks: the bounded replay ring and the live `broadcast`
//! channel (both in [`Core`], shared with the publisher), and one [`Subscription`] per stream
//! subscriber, which yields [`StreamItem`]s in id order, with a [`Gap`] when events were missed.
//!
//! The ring is written by [`HookSender::publish`](super::HookSender::publish) on the control
//! task, under the one mutex it shares with subscriptions; a subscription is polled on the
//! task of whoever reads the stream (the admin server's `GET /v1/events` handler), and holds
//! that mutex to copy at most [`CATCH_UP_SLICE`] events at a time.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::event::Published;
use super::webhook::DropLog;
use crate::metrics::Metrics;

/// Interval of keep-alive comments on an idle event stream, so proxies and load balancers do
/// not close it.
pub const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);
/// Events the live broadcast channel holds per subscriber before the subscriber has to catch
/// up from the replay ring.
pub(super) const LIVE_CAPACITY: usize = 1024;
/// Most events a subscription copies from the replay ring per lock: a subscriber catching up
/// on the whole ring holds the lock publishing takes only this long at a time.
pub(super) const CATCH_UP_SLICE: usize = 256;

/// Events with ids after `after` and before `next` may have been missed: the subscriber resumed
/// from an id older than the replay buffer (or from another relay run), or fell behind it.
/// Sent on the stream as `event: replay.gap`, `data: {"type":"replay.gap","after":..,"next":..}`,
/// without an `id:`, so it does not move the client's last event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The last id the subscriber had.
    pub after: u64,
    /// The id of the next event it will get.
    pub next: u64,
}

impl Gap {
    /// The SSE `event:` name of a gap.
    pub const NAME: &'static str = "replay.gap";

    /// The gap as the stream's JSON data.
    pub fn json(&self) -> String {
        serde_json::json!({ "type": Self::NAME, "after": self.after, "next": self.next })
            .to_string()
    }
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// The next event.
    Event(Arc<Published>),
    /// Some events were missed before the next one.
    Gap(Gap),
}

/// State shared by publishers and subscriptions.
pub(super) struct Core {
    pub(super) state: Mutex<State>,
    /// Replay ring capacity.
    pub(super) replay: usize,
    pub(super) live: broadcast::Sender<Arc<Published>>,
    /// One permit per subscriber the stream may have.
    pub(super) subscribers: Arc<Semaphore>,
    /// The subscriber limit, for [`SubscriberLimit`].
    pub(super) max_subscribers: usize,
    pub(super) metrics: Arc<Metrics>,
    /// Fires [`SHUTDOWN_FLUSH`](super::SHUTDOWN_FLUSH) after the relay's shutdown: everything
    /// stops.
    pub(super) stopped: CancellationToken,
    /// Fires when the last [`HookSender`](super::HookSender) is dropped: no more events will
    /// come.
    pub(super) closed: CancellationToken,
}

/// What publishers and subscriptions share under [`Core::state`]: the id counter, the replay
/// ring and each webhook's [`DropLog`] (so a publish takes one lock).
pub(super) struct State {
    pub(super) next_id: u64,
    pub(super) ring: VecDeque<Arc<Published>>,
    pub(super) drop_logs: Vec<DropLog>,
}

impl State {
    /// The last id assigned (one below the first id when none was).
    pub(super) fn newest(&self) -> u64 {
        self.next_id.wrapping_sub(1)
    }

    /// The first id still in the ring (the next id when the ring is empty).
    fn oldest(&self) -> u64 {
        self.ring.front().map_or(self.next_id, |p| p.id())
    }

    /// Where a subscriber whose last id is `after` resumes: up to `limit` buffered events it
    /// lacks, a gap if some are no longer buffered, and its new cursor. Copies at most `limit`
    /// events, so the caller holds the lock for a bounded time however full the ring is.
    pub(super) fn resume(
        &self,
        after: u64,
        limit: usize,
    ) -> (VecDeque<Arc<Published>>, Option<Gap>, u64) {
        let oldest = self.oldest();
        let (skip, gap, last) = if after <= self.newest() && after.saturating_add(1) >= oldest {
            let skip = usize::try_from(after + 1 - oldest).unwrap_or(usize::MAX);
            (skip, None, after)
        } else {
            let gap = Gap {
                after,
                next: oldest,
            };
            (0, Some(gap), oldest.wrapping_sub(1))
        };
        let start = skip.min(self.ring.len());
        let end = start.saturating_add(limit).min(self.ring.len());
        (self.ring.range(start..end).cloned().collect(), gap, last)
    }
}

/// One subscriber's view of the event stream (see
/// [`HookSender::subscribe`](super::HookSender::subscribe)).
///
/// It reads the ring in slices of at most [`CATCH_UP_SLICE`] events, one lock each, until it
/// has caught up with the newest event; then it reads the live channel. Falling behind that
/// channel sends it back to the ring. Publishing therefore never waits behind a long copy.
pub struct Subscription {
    core: Arc<Core>,
    live: broadcast::Receiver<Arc<Published>>,
    /// Events copied from the ring, not yet handed out: at most [`CATCH_UP_SLICE`].
    pub(super) backlog: VecDeque<Arc<Published>>,
    gap: Option<Gap>,
    /// Whether events after `last` may be in the ring and not on `live` (resuming, or fell
    /// behind `live`): the next ones come from the ring until it has none.
    catching_up: bool,
    /// The last id handed out (or skipped over by a gap).
    pub(super) last: u64,
    /// This subscriber's place under the subscriber limit, given back on drop.
    _slot: OwnedSemaphorePermit,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("last", &self.last)
            .field("backlog", &self.backlog.len())
            .field("catching_up", &self.catching_up)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.core.metrics.hooks.stream_subscribers.dec();
    }
}

/// The event stream already has its maximum of subscribers
/// ([`HooksConfig::set_max_subscribers`](crate::config::HooksConfig::set_max_subscribers)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event stream has its maximum of {limit} subscribers")]
pub struct SubscriberLimit {
    /// The configured maximum.
    pub limit: usize,
}

impl Subscription {
    /// A subscription resuming after `last_event_id` (see
    /// [`HookSender::subscribe`](super::HookSender::subscribe)), or [`SubscriberLimit`] when
    /// the stream has its maximum of subscribers (counted as refused).
    pub(super) fn new(
        core: Arc<Core>,
        last_event_id: Option<u64>,
    ) -> Result<Self, SubscriberLimit> {
        let Ok(slot) = core.subscribers.clone().try_acquire_owned() else {
            core.metrics.hooks.stream_refused.inc();
            return Err(SubscriberLimit {
                limit: core.max_subscribers,
            });
        };
        let state = core.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Subscribing under the lock: every event is either in the ring (or gone from it, a
        // gap) or on `live`.
        let live = core.live.subscribe();
        let (backlog, gap, last, catching_up) = match last_event_id {
            Some(after) => {
                let (backlog, gap, last) = state.resume(after, CATCH_UP_SLICE);
                (backlog, gap, last, true)
            }
            None => (VecDeque::new(), None, state.newest(), false),
        };
        drop(state);
        core.metrics.hooks.stream_subscribers.inc();
        Ok(Subscription {
            core,
            live,
            backlog,
            gap,
            catching_up,
            last,
            _slot: slot,
        })
    }

    /// The next item, in id order. `None` once the hooks have stopped (relay shutdown plus
    /// [`SHUTDOWN_FLUSH`](super::SHUTDOWN_FLUSH), or every [`HookSender`](super::HookSender)
    /// dropped).
    pub async fn next(&mut self) -> Option<StreamItem> {
        loop {
            if let Some(gap) = self.gap.take() {
                return Some(StreamItem::Gap(gap));
            }
            if let Some(published) = self.backlog.pop_front() {
                self.last = published.id();
                return Some(StreamItem::Event(published));
            }
            if self.catching_up {
                self.catch_up();
                continue;
            }
            let received = tokio::select! {
                biased;
                () = self.core.stopped.cancelled() => return None,
                received = self.live.recv() => received,
                () = self.core.closed.cancelled() => return None,
            };
            match received {
                Ok(published) if published.id() > self.last => {
                    self.last = published.id();
                    return Some(StreamItem::Event(published));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // What was missed is in the ring (or gone from it): read it from there.
                    // Events published from now on are on the new receiver.
                    self.live = self.core.live.subscribe();
                    self.catching_up = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Takes the next slice of the ring after `last`, with a gap if the ring has moved past
    /// it; once the ring has nothing newer, the live channel takes over. The lock is held to
    /// copy at most [`CATCH_UP_SLICE`] events.
    fn catch_up(&mut self) {
        let state = self
            .core
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (backlog, gap, last) = state.resume(self.last, CATCH_UP_SLICE);
        drop(state);
        if let Some(gap) = &gap {
            let missed = gap.next.saturating_sub(gap.after).saturating_sub(1);
            self.core.metrics.hooks.stream_dropped.inc_by(missed);
            debug!(
                missed,
                "event stream subscriber fell behind the replay buffer"
            );
        }
        self.catching_up = !backlog.is_empty() || gap.is_some();
        self.backlog = backlog;
        self.gap = gap;
        self.last = last;
    }
}
