//! Lobby hooks: the relay tells lobby services what happens to allocations, by signed webhooks
//! and by a resumable Server-Sent Events stream on the admin server (`GET /v1/events`).
//!
//! ## Events
//! Every lifecycle event is one [`LobbyEvent`], serialized as one flat JSON object: the common
//! fields, then `type` and the fields of that type ([`LobbyEventKind`]):
//!
//! ```json
//! {"id":1732170000123000,"time_ms":1732170000123,"allocation":"8f3a51c2d07e9b14",
//!  "join_code":"BCDF78","type":"peer.left","peer":2,"reason":"timed_out"}
//! ```
//!
//! | `type` | fields | when |
//! |---|---|---|
//! | `allocation.created` | | a host opened an allocation or a lobby reserved one |
//! | `peer.joined` | `peer` | a member joined (the host binding counts, as peer 0) |
//! | `peer.left` | `peer`, `reason` | a member left |
//! | `host.disconnected` | `host`, `reason` | the host was lost (exactly once per loss) |
//! | `host.elected` | `host`, `by` (`relay` or `lobby`) | the next host was chosen |
//! | `allocation.migrated` | `from`, `to`, `host` | the session moved to a new allocation (`allocation` is the new one) |
//! | `allocation.closed` | `reason` | the allocation closed and released everything |
//!
//! Reasons of `peer.left` and `host.disconnected` are [`LeaveReason`] names: `closed`,
//! `timed_out`, `kicked`, `connection_lost`, `protocol_violation`, `relay_shutting_down`.
//!
//! ## Ids
//! `id` increases by one per event within a relay process and starts at the process's start
//! time in unix milliseconds × 1000, so ids keep increasing across restarts as long as the wall
//! clock does not step back between runs and a run averages fewer than 1000 events per
//! millisecond. Ids stay below 2^53 until the year 2255, so JavaScript reads them exactly.
//! Lobbies deduplicate by id: delivery is at least once.
//!
//! ## Flow and concurrency
//! - [`HookSender::publish`] runs on the relay's control task and never awaits: under one short
//!   mutex it assigns the id, serializes the event once, appends it to the bounded replay ring,
//!   sends it on a bounded broadcast channel to the stream's subscribers and `try_send`s it into
//!   each webhook's bounded queue. A full queue drops the event for that webhook, counts it
//!   (`baton_hook_events_dropped_total{sink="webhook"}`) and logs at most one warning per
//!   webhook per [`DROP_LOG_INTERVAL`]. A slow or dead lobby never slows the relay or grows its
//!   memory without bound.
//! - One task per webhook URL takes events from its queue in order and POSTs each one until the
//!   lobby answers 2xx, retrying the head event with exponential backoff and jitter: later
//!   events wait behind it, so each webhook sees the relay's order (and per-allocation order
//!   holds). An event leaves a webhook only by delivery, by queue overflow or by relay stop.
//! - Each stream subscriber is a [`Subscription`]: a cursor (the last id it was given), a
//!   broadcast receiver for live events, and the replay ring to catch up from. A subscriber
//!   that falls behind the broadcast channel catches up from the ring; one that falls behind the
//!   ring too (or resumes from an id older than it) is first sent a [`Gap`].
//! - Shutdown: when the relay's shutdown token fires, webhooks and streams get
//!   [`SHUTDOWN_FLUSH`] more to deliver the last events (the `allocation.closed` of the
//!   shutdown), then stop; what a webhook still held is counted as dropped.
//!
//! ## Webhook requests
//! `POST <url>` with the event's JSON as the body and these headers:
//! `Content-Type: application/json`, [`EVENT_ID_HEADER`], [`EVENT_TYPE_HEADER`],
//! [`TIMESTAMP_HEADER`] (unix seconds, at this attempt) and [`SIGNATURE_HEADER`]
//! `v1=<hex(HMAC-SHA256(secret, "{timestamp}.{body}"))>`. Lobbies check it with
//! [`verify_signature`] (or the README's Python snippet) and reject stale timestamps, so a
//! captured request cannot be replayed later. Redirects are not followed (a 3xx is a failure);
//! `Retry-After` on 429 and 503 answers is honoured up to the maximum backoff.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_protocol::{AllocationId, JoinCode, LeaveReason, PeerId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::HooksConfig;
use crate::crypto;
use crate::metrics::Metrics;

pub use reqwest::Url;

/// Header carrying the event's id; the same on every retry, so lobbies deduplicate by it.
pub const EVENT_ID_HEADER: &str = "Baton-Event-Id";
/// Header carrying the event's `type`, for routing without parsing the body.
pub const EVENT_TYPE_HEADER: &str = "Baton-Event-Type";
/// Header carrying the unix time in seconds at which this attempt was signed.
pub const TIMESTAMP_HEADER: &str = "Baton-Timestamp";
/// Header carrying `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub const SIGNATURE_HEADER: &str = "Baton-Signature";
/// A sensible `tolerance` for [`verify_signature`]: five minutes either way, as Stripe uses.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Time webhooks and streams get after the relay's shutdown begins to deliver the last events.
/// Shorter than the relay's shutdown grace, so it never lengthens a shutdown.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// Interval of keep-alive comments on an idle event stream, so proxies and load balancers do
/// not close it.
pub const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);
/// At most one "queue full" warning per webhook per interval; each carries the count dropped
/// since the previous one.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Events the live broadcast channel holds per subscriber before the subscriber has to catch
/// up from the replay ring.
const LIVE_CAPACITY: usize = 1024;
/// Bytes of a webhook answer read (and then ignored) so its connection can be reused.
const MAX_ANSWER: usize = 64 * 1024;

/// One lifecycle event as lobbies receive it (see the module docs for the JSON shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LobbyEvent {
    /// Unique, increasing id (see the module docs); SSE `id:` and [`EVENT_ID_HEADER`].
    pub id: u64,
    /// When the relay published it, unix milliseconds.
    pub time_ms: u64,
    /// The allocation, 16 hex digits (after a migration, the new allocation).
    pub allocation: String,
    /// The allocation's join code.
    pub join_code: String,
    /// What happened; flattened, so `type` and its fields sit beside the fields above.
    #[serde(flatten)]
    pub kind: LobbyEventKind,
}

/// What happened, tagged by `type` in JSON. Reasons are strings so that lobbies in any language
/// read them and new reasons do not break old lobbies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum LobbyEventKind {
    /// A host opened the allocation, or a lobby reserved it.
    #[serde(rename = "allocation.created")]
    AllocationCreated {},
    /// A member joined; the host binding counts, as peer 0.
    #[serde(rename = "peer.joined")]
    PeerJoined {
        /// Its peer id.
        peer: u16,
    },
    /// A member left.
    #[serde(rename = "peer.left")]
    PeerLeft {
        /// Its peer id.
        peer: u16,
        /// A [`LeaveReason`] name.
        reason: String,
    },
    /// The host was lost; exactly one per loss.
    #[serde(rename = "host.disconnected")]
    HostDisconnected {
        /// The lost host's peer id.
        host: u16,
        /// A [`LeaveReason`] name.
        reason: String,
    },
    /// The next host was chosen.
    #[serde(rename = "host.elected")]
    HostElected {
        /// The elected member's peer id.
        host: u16,
        /// Who chose it: `relay` (best RTT, then join order) or `lobby` (admin API override).
        by: String,
    },
    /// The session moved to a new allocation; the event's `allocation` is `to`.
    #[serde(rename = "allocation.migrated")]
    AllocationMigrated {
        /// The old allocation id.
        from: String,
        /// The new allocation id.
        to: String,
        /// The new host's peer id.
        host: u16,
    },
    /// The allocation closed and released everything it held.
    #[serde(rename = "allocation.closed")]
    AllocationClosed {
        /// Why, e.g. `host_lost`, `admin`, `shutdown`, `host_never_bound`, `migration_failed`.
        reason: String,
    },
}

pub use crate::control::ElectedBy;

impl LobbyEventKind {
    /// `peer.joined` for `peer`.
    pub fn peer_joined(peer: PeerId) -> Self {
        LobbyEventKind::PeerJoined { peer: peer.0 }
    }

    /// `peer.left` for `peer`, with `reason`.
    pub fn peer_left(peer: PeerId, reason: LeaveReason) -> Self {
        LobbyEventKind::PeerLeft {
            peer: peer.0,
            reason: reason.as_str().to_owned(),
        }
    }

    /// `host.disconnected` for `host`, with `reason`.
    pub fn host_disconnected(host: PeerId, reason: LeaveReason) -> Self {
        LobbyEventKind::HostDisconnected {
            host: host.0,
            reason: reason.as_str().to_owned(),
        }
    }

    /// `host.elected`.
    pub fn host_elected(host: PeerId, by: ElectedBy) -> Self {
        LobbyEventKind::HostElected {
            host: host.0,
            by: by.as_str().to_owned(),
        }
    }

    /// `allocation.migrated` from `from` to `to`, hosted by `host`.
    pub fn allocation_migrated(from: AllocationId, to: AllocationId, host: PeerId) -> Self {
        LobbyEventKind::AllocationMigrated {
            from: from.to_string(),
            to: to.to_string(),
            host: host.0,
        }
    }

    /// `allocation.closed` with a stable reason name.
    pub fn allocation_closed(reason: &str) -> Self {
        LobbyEventKind::AllocationClosed {
            reason: reason.to_owned(),
        }
    }

    /// The JSON `type` (and SSE `event:` name).
    pub fn name(&self) -> &'static str {
        match self {
            LobbyEventKind::AllocationCreated {} => "allocation.created",
            LobbyEventKind::PeerJoined { .. } => "peer.joined",
            LobbyEventKind::PeerLeft { .. } => "peer.left",
            LobbyEventKind::HostDisconnected { .. } => "host.disconnected",
            LobbyEventKind::HostElected { .. } => "host.elected",
            LobbyEventKind::AllocationMigrated { .. } => "allocation.migrated",
            LobbyEventKind::AllocationClosed { .. } => "allocation.closed",
        }
    }
}

/// A published event with its JSON, serialized once and shared by every sink.
#[derive(Debug)]
pub struct Published {
    event: LobbyEvent,
    json: Bytes,
}

impl Published {
    /// The event.
    pub fn event(&self) -> &LobbyEvent {
        &self.event
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.event.id
    }

    /// Its JSON, exactly as webhooks get it (and as it is signed).
    pub fn json(&self) -> &[u8] {
        &self.json
    }
}

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
struct Core {
    state: Mutex<State>,
    /// Replay ring capacity.
    replay: usize,
    live: broadcast::Sender<Arc<Published>>,
    metrics: Arc<Metrics>,
    /// Fires [`SHUTDOWN_FLUSH`] after the relay's shutdown: everything stops.
    stopped: CancellationToken,
    /// Fires when the last [`HookSender`] is dropped: no more events will come.
    closed: CancellationToken,
}

struct State {
    next_id: u64,
    ring: VecDeque<Arc<Published>>,
    drop_logs: Vec<DropLog>,
}

/// Rate limit of one webhook's "queue full" warnings.
#[derive(Default)]
struct DropLog {
    unreported: u64,
    last: Option<Instant>,
}

impl State {
    /// The last id assigned (one below the first id when none was).
    fn newest(&self) -> u64 {
        self.next_id.wrapping_sub(1)
    }

    /// The first id still in the ring (the next id when the ring is empty).
    fn oldest(&self) -> u64 {
        self.ring.front().map_or(self.next_id, |p| p.id())
    }

    /// Where a subscriber whose last id is `after` resumes: the buffered events it lacks,
    /// a gap if some are no longer buffered, and its new cursor.
    fn resume(&self, after: u64) -> (VecDeque<Arc<Published>>, Option<Gap>, u64) {
        let oldest = self.oldest();
        if after <= self.newest() && after.saturating_add(1) >= oldest {
            let skip = usize::try_from(after + 1 - oldest).unwrap_or(usize::MAX);
            (self.ring.iter().skip(skip).cloned().collect(), None, after)
        } else {
            let gap = Gap {
                after,
                next: oldest,
            };
            (
                self.ring.iter().cloned().collect(),
                Some(gap),
                oldest.wrapping_sub(1),
            )
        }
    }
}

/// One webhook's end of the queue, as publishers see it.
struct WebhookQueue {
    name: String,
    tx: mpsc::Sender<Arc<Published>>,
}

struct Shared {
    core: Arc<Core>,
    webhooks: Vec<WebhookQueue>,
    queue: usize,
    stream_token: Option<String>,
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

    let client = if config.webhooks().is_empty() {
        None
    } else {
        match http_client(config) {
            Ok(client) => Some(client),
            Err(err) => {
                // Only a broken TLS backend gets here. Keep the queues without consumers, so
                // every event is counted as dropped and the warning repeats.
                error!(cause = %err, "cannot build the webhook HTTP client; webhooks disabled");
                None
            }
        }
    };
    let secret: Arc<[u8]> = config
        .webhook_secret()
        .unwrap_or_default()
        .as_bytes()
        .into();
    let mut webhooks = Vec::with_capacity(config.webhooks().len());
    for url in config.webhooks() {
        let (tx, rx) = mpsc::channel(config.queue());
        let name = redact(url);
        if let Some(client) = &client {
            let webhook = Webhook {
                url: url.clone(),
                secret: secret.clone(),
                client: client.clone(),
                backoff_initial: config.backoff_initial(),
                backoff_max: config.backoff_max(),
                metrics: metrics.clone(),
                stopped: core.stopped.clone(),
            };
            tracker.spawn(
                webhook
                    .run(rx)
                    .instrument(info_span!("webhook", url = %name)),
            );
        }
        webhooks.push(WebhookQueue { name, tx });
    }
    HookSender {
        shared: Arc::new(Shared {
            core,
            webhooks,
            queue: config.queue(),
            stream_token: config.stream_token().map(str::to_owned),
        }),
    }
}

fn http_client(config: &HooksConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(config.request_timeout())
        .connect_timeout(config.request_timeout())
        // A redirected POST would turn into a GET or go somewhere unsigned-for: a failure.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("baton-relay/", env!("CARGO_PKG_VERSION")))
        .build()
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
    /// the buffered events after it (preceded by a [`Gap`] when some are no longer buffered);
    /// without, it starts with the next event published.
    pub fn subscribe(&self, last_event_id: Option<u64>) -> Subscription {
        let core = self.shared.core.clone();
        let state = core.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Subscribing under the lock: every event is either in the backlog or on `live`.
        let live = core.live.subscribe();
        let (backlog, gap, last) = match last_event_id {
            Some(after) => state.resume(after),
            None => (VecDeque::new(), None, state.newest()),
        };
        drop(state);
        core.metrics.hooks.stream_subscribers.inc();
        Subscription {
            core,
            live,
            backlog,
            gap,
            last,
        }
    }

    /// The bearer token the event stream requires, when one is configured for it.
    pub(crate) fn stream_token(&self) -> Option<&str> {
        self.shared.stream_token.as_deref()
    }
}

/// One subscriber's view of the event stream (see [`HookSender::subscribe`]).
pub struct Subscription {
    core: Arc<Core>,
    live: broadcast::Receiver<Arc<Published>>,
    backlog: VecDeque<Arc<Published>>,
    gap: Option<Gap>,
    /// The last id handed out (or skipped over by a gap).
    last: u64,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("last", &self.last)
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.core.metrics.hooks.stream_subscribers.dec();
    }
}

impl Subscription {
    /// The next item, in id order. `None` once the hooks have stopped (relay shutdown plus
    /// [`SHUTDOWN_FLUSH`], or every [`HookSender`] dropped).
    pub async fn next(&mut self) -> Option<StreamItem> {
        loop {
            if let Some(gap) = self.gap.take() {
                return Some(StreamItem::Gap(gap));
            }
            if let Some(published) = self.backlog.pop_front() {
                self.last = published.id();
                return Some(StreamItem::Event(published));
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
                Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// After falling behind the live channel: resubscribe and take what was missed from the
    /// ring, with a gap if even the ring has moved past it.
    fn catch_up(&mut self) {
        let state = self
            .core
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.live = self.core.live.subscribe();
        let (backlog, gap, last) = state.resume(self.last);
        drop(state);
        if let Some(gap) = &gap {
            let missed = gap.next.saturating_sub(gap.after).saturating_sub(1);
            self.core.metrics.hooks.stream_dropped.inc_by(missed);
            debug!(
                missed,
                "event stream subscriber fell behind the replay buffer"
            );
        }
        self.backlog = backlog;
        self.gap = gap;
        self.last = last;
    }
}

/// One webhook's delivery task.
struct Webhook {
    url: Url,
    secret: Arc<[u8]>,
    client: reqwest::Client,
    backoff_initial: Duration,
    backoff_max: Duration,
    metrics: Arc<Metrics>,
    stopped: CancellationToken,
}

/// Why one webhook request failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Request(reqwest::Error),
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
}

impl Webhook {
    async fn run(self, mut rx: mpsc::Receiver<Arc<Published>>) {
        loop {
            let published = tokio::select! {
                biased;
                () = self.stopped.cancelled() => break,
                published = rx.recv() => match published {
                    Some(published) => published,
                    None => break,
                },
            };
            self.metrics.hooks.webhook_queued.dec();
            if !self.deliver(&published).await {
                self.metrics.hooks.webhook_dropped.inc();
                break;
            }
        }
        // Stopped: what is still queued will never be delivered.
        rx.close();
        let mut left = 0;
        while rx.try_recv().is_ok() {
            self.metrics.hooks.webhook_queued.dec();
            left += 1;
        }
        self.metrics.hooks.webhook_dropped.inc_by(left);
        if left > 0 {
            warn!(
                undelivered = left,
                "webhook stopped with events undelivered"
            );
        }
    }

    /// Delivers one event, retrying until the lobby acknowledges it. `false` if the hooks
    /// stopped first.
    async fn deliver(&self, published: &Published) -> bool {
        let mut backoff = self.backoff_initial;
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let outcome = tokio::select! {
                biased;
                () = self.stopped.cancelled() => return false,
                outcome = self.attempt(published) => outcome,
            };
            let retry_after = match outcome {
                Ok(()) => {
                    self.metrics.hooks.webhook_delivered.inc();
                    if attempt > 1 {
                        info!(
                            event = published.id(),
                            attempt, "webhook delivered after retries"
                        );
                    }
                    return true;
                }
                Err((err, retry_after)) => {
                    self.metrics.hooks.webhook_failed_attempts.inc();
                    let delay = jittered(backoff)
                        .max(retry_after.unwrap_or_default().min(self.backoff_max));
                    // The first failure and then exponentially rarer ones: a lobby down for an
                    // hour logs a dozen lines, not thousands.
                    if attempt.is_power_of_two() {
                        warn!(event = published.id(), attempt, cause = %err,
                            retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
                    } else {
                        debug!(event = published.id(), attempt, cause = %err,
                            retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
                    }
                    delay
                }
            };
            tokio::select! {
                biased;
                () = self.stopped.cancelled() => return false,
                () = tokio::time::sleep(retry_after) => {}
            }
            backoff = backoff.saturating_mul(2).min(self.backoff_max);
        }
    }

    /// One signed POST. On failure, also the delay the lobby asked for with `Retry-After`.
    async fn attempt(&self, published: &Published) -> Result<(), (AttemptError, Option<Duration>)> {
        let timestamp = unix_millis(SystemTime::now()) / 1000;
        let response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, published.id())
            .header(EVENT_TYPE_HEADER, published.event().kind.name())
            .header(TIMESTAMP_HEADER, timestamp)
            .header(
                SIGNATURE_HEADER,
                sign(&self.secret, timestamp, published.json()),
            )
            .body(published.json.clone())
            .send()
            .await
            // Without the URL: it may carry a token in its query.
            .map_err(|e| (AttemptError::Request(e.without_url()), None))?;
        let status = response.status();
        let retry_after = retry_after(&status, response.headers());
        drain(response).await;
        if status.is_success() {
            Ok(())
        } else {
            Err((AttemptError::Status(status), retry_after))
        }
    }
}

/// `Retry-After` in seconds, on the answers where it means something.
fn retry_after(
    status: &reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> Option<Duration> {
    if *status != reqwest::StatusCode::TOO_MANY_REQUESTS
        && *status != reqwest::StatusCode::SERVICE_UNAVAILABLE
    {
        return None;
    }
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Reads a bounded amount of the answer so the connection goes back to the pool.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > MAX_ANSWER {
            break;
        }
    }
}

/// Equal jitter: between half and all of `backoff`, so retries from many relays spread out
/// but never collapse to zero.
fn jittered(backoff: Duration) -> Duration {
    use rand::Rng;
    let half = backoff / 2;
    let extra = rand::thread_rng().gen_range(0..=half.as_micros().min(u64::MAX as u128) as u64);
    half + Duration::from_micros(extra)
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first event id of a relay run started at `now` (see the module docs).
fn first_id(now: SystemTime) -> u64 {
    unix_millis(now).saturating_mul(1000).max(1)
}

/// A URL as it may appear in logs and metrics: no credentials, query or fragment.
pub(crate) fn redact(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

fn mac(secret: &[u8], timestamp: &[u8], body: &[u8]) -> [u8; 32] {
    crypto::hmac_sha256(secret, &[timestamp, b".", body])
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (unix seconds):
/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mac = mac(secret, timestamp.to_string().as_bytes(), body);
    format!("v1={}", hex::encode(mac))
}

/// Why a webhook request's signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The timestamp header is not a number of seconds.
    #[error("timestamp header is not unix seconds")]
    InvalidTimestamp,
    /// The timestamp is further from `now` than the tolerance: a replayed or delayed request.
    #[error("timestamp is {} s away from now, beyond the tolerance", .0.as_secs())]
    Expired(Duration),
    /// The signature header holds no `v1=` signature.
    #[error("signature header has no v1 signature")]
    Malformed,
    /// No signature matches: wrong secret, or the body or timestamp was altered.
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a webhook request the way a lobby should: `timestamp` and `header` are the
/// [`TIMESTAMP_HEADER`] and [`SIGNATURE_HEADER`] values as received, `body` the raw body bytes
/// (before any JSON parsing), `tolerance` how far the timestamp may be from `now`
/// ([`DEFAULT_TOLERANCE`] is a good choice). The header may list several comma-separated
/// `v1=` signatures (any one matching is enough) and entries of other versions, which are
/// ignored. The comparison is constant-time.
///
/// A lobby's webhook handler, given the two headers and the raw body:
///
/// ```
/// use std::time::SystemTime;
/// use baton_relay::hooks::{self, LobbyEvent};
///
/// fn accept(secret: &str, timestamp: &str, signature: &str, body: &[u8]) -> Option<LobbyEvent> {
///     let now = SystemTime::now();
///     hooks::verify_signature(secret.as_bytes(), timestamp, body, signature, hooks::DEFAULT_TOLERANCE, now)
///         .ok()?;
///     // Deduplicate by `event.id` (delivery is at least once), answer 2xx at once, then process.
///     serde_json::from_slice(body).ok()
/// }
///
/// // What the relay sends:
/// let secret = "a-long-random-webhook-secret";
/// let body = br#"{"id":1,"time_ms":0,"allocation":"00000000000000ab","join_code":"BCDF78","type":"peer.joined","peer":1}"#;
/// let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
/// let signature = hooks::sign(secret.as_bytes(), timestamp, body);
/// let event = accept(secret, &timestamp.to_string(), &signature, body).unwrap();
/// assert_eq!(event.kind.name(), "peer.joined");
/// assert!(accept("another-secret", &timestamp.to_string(), &signature, body).is_none());
/// ```
pub fn verify_signature(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    header: &str,
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.trim();
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::InvalidTimestamp);
    }
    let sent: u64 = timestamp
        .parse()
        .map_err(|_| SignatureError::InvalidTimestamp)?;
    let now = unix_millis(now) / 1000;
    let age = Duration::from_secs(now.abs_diff(sent));
    if age > tolerance {
        return Err(SignatureError::Expired(age));
    }
    let expected = mac(secret, timestamp.as_bytes(), body);
    let mut any = false;
    for entry in header.split(',') {
        let Some(sig) = entry.trim().strip_prefix("v1=") else {
            continue;
        };
        any = true;
        if let Ok(sig) = hex::decode(sig) {
            if crypto::constant_time_eq(&expected, &sig) {
                return Ok(());
            }
        }
    }
    Err(if any {
        SignatureError::Mismatch
    } else {
        SignatureError::Malformed
    })
}

#[cfg(test)]
mod tests;
