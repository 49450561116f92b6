//! The relay's side of the hooks: [`spawn`] starts them and returns the [`HookSender`];
//! [`HookSender::publish`] hands one event to every sink and [`HookSender::subscribe`] opens an
//! event stream.
//!
//! `publish` runs on the relay's control task and never blocks or awaits: one short mutex
//! (the replay state, `replay::State`), a `broadcast` send, a `try_send` per webhook queue. It
//! calls into `replay` (the ring) and `webhook` (the queues, whose tasks it starts on the
//! caller's [`TaskTracker`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use baton_protocol::{AllocationId, JoinCode};
use bytes::Bytes;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use super::event::{first_id, unix_millis, LobbyEvent, LobbyEventKind, Published};
use super::replay::{Core, State, SubscriberLimit, Subscription, LIVE_CAPACITY};
use super::webhook::{self, DropLog, WebhookQueue};
use crate::config::HooksConfig;
use crate::metrics::Metrics;

/// Time webhooks and streams get after the relay's shutdown begins to deliver the last events.
/// Shorter than the relay's shutdown grace, so it never lengthens a shutdown.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// At most one "queue full" warning per webhook per interval; each carries the count dropped
/// since the previous one.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

struct Shared {
    core: Arc<Core>,
    webhooks: Vec<WebhookQueue>,
    queue: usize,
    stream_token: Option<String>,
    /// This fleet node's id, stamped on every event; `None` on a relay standing alone.
    node: Option<String>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.core.closed.cancel();
    }
}

/// The relay's side of the hooks: cheap to clone, and [`HookSender::publish`] never blocks.
#[derive(Clone)]
pub struct HookSender {
    shared: Arc<Shared>,
}

impl fmt::Debug for HookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookSender")
            .field("webhooks", &self.shared.webhooks.len())
            .finish_non_exhaustive()
    }
}

/// Starts the hooks: one delivery task per webhook in `config`, owned by `tracker`. Webhooks and
/// streams stop [`SHUTDOWN_FLUSH`] after `shutdown` fires (streams also when every
/// [`HookSender`] is dropped). Must be called inside a tokio runtime.
pub fn spawn(
    config: &HooksConfig,
    node: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> HookSender {
    let (live, _) = broadcast::channel(LIVE_CAPACITY);
    let core = Arc::new(Core {
        state: Mutex::new(State {
            next_id: first_id(SystemTime::now()),
            ring: VecDeque::with_capacity(config.replay().min(1024)),
            drop_logs: config
                .webhooks()
                .iter()
                .map(|_| DropLog::default())
                .collect(),
        }),
        replay: config.replay(),
        live,
        subscribers: Arc::new(Semaphore::new(config.max_subscribers())),
        max_subscribers: config.max_subscribers(),
        metrics: metrics.clone(),
        stopped: CancellationToken::new(),
        closed: CancellationToken::new(),
    });

    // The flush timer is owned by `shutdown`: it ends SHUTDOWN_FLUSH after it fires. It is not
    // on `tracker`, so a relay with no webhook and no open stream stops without waiting for it.
    {
        let stopped = core.stopped.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_FLUSH).await;
            stopped.cancel();
        });
    }

    let webhooks = webhook::spawn_all(config, &metrics, &core.stopped, tracker);
    HookSender {
        shared: Arc::new(Shared {
            core,
            webhooks,
            queue: config.queue(),
            stream_token: config.stream_token().map(str::to_owned),
            node,
        }),
    }
}

impl HookSender {
    /// Publishes one event to every sink. Never blocks or awaits: it is called from the relay's
    /// control task. Returns the event's id.
    pub fn publish(
        &self,
        kind: LobbyEventKind,
        allocation: AllocationId,
        join_code: JoinCode,
    ) -> u64 {
        let core = &self.shared.core;
        let time_ms = unix_millis(SystemTime::now());
        let mut state = core.state.lock().unwrap_or_else(PoisonError::into_inner);
        let id = state.next_id;
        let event = LobbyEvent {
            id,
            node: self.shared.node.clone(),
            time_ms,
            allocation: allocation.to_string(),
            join_code: join_code.as_str().to_owned(),
            kind,
        };
        let json = match serde_json::to_vec(&event) {
            Ok(json) => Bytes::from(json),
            Err(err) => {
                // Unreachable for these plain types; never worth a panic in the control task.
                error!(cause = %err, "cannot serialize lobby event");
                return id;
            }
        };
        state.next_id += 1;
        core.metrics.hooks.published.inc();
        let published = Arc::new(Published { event, json });

        if state.ring.len() >= core.replay {
            state.ring.pop_front();
        }
        state.ring.push_back(published.clone());
        // No receivers is fine: nobody is subscribed.
        let _ = core.live.send(published.clone());

        let now = Instant::now();
        for (queue, log) in self.shared.webhooks.iter().zip(state.drop_logs.iter_mut()) {
            core.metrics.hooks.webhook_queued.inc();
            if queue.tx.try_send(published.clone()).is_err() {
                core.metrics.hooks.webhook_queued.dec();
                core.metrics.hooks.webhook_dropped.inc();
                log.unreported += 1;
                if log
                    .last
                    .is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL)
                {
                    warn!(
                        webhook = %queue.name,
                        dropped = log.unreported,
                        queue = self.shared.queue,
                        "webhook queue full; events dropped"
                    );
                    log.unreported = 0;
                    log.last = Some(now);
                }
            }
        }
        id
    }

    /// Subscribes to the event stream. With `last_event_id`, the subscription first replays
    /// the buffered events after it (preceded by a [`Gap`](super::Gap) when some are no longer
    /// buffered); without, it starts with the next event published. Refused with
    /// [`SubscriberLimit`] (and counted) when the stream has its maximum of subscribers.
    pub fn subscribe(&self, last_event_id: Option<u64>) -> Result<Subscription, SubscriberLimit> {
        Subscription::new(self.shared.core.clone(), last_event_id)
    }

    /// The bearer token the event stream requires, when one is configured for it.
    pub(crate) fn stream_token(&self) -> Option<&str> {
        self.shared.stream_token.as_deref()
    }
}
