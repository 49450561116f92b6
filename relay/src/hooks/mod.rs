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
//! | `allocation.relocated` | `from_node`, `to_node` | a draining fleet node handed the allocation to another node |
//! | `allocation.closed` | `reason` | the allocation closed and released everything |
//!
//! A fleet node (`--directory`) adds `"node":"<its --node-id>"` after `id`; a relay standing
//! alone sends no `node` key.
//!
//! Reasons of `peer.left` and `host.disconnected` are
//! [`LeaveReason`](baton_protocol::LeaveReason) names: `closed`, `timed_out`, `kicked`,
//! `connection_lost`, `protocol_violation`, `relay_shutting_down`.
//!
//! ## Ids
//! `id` increases by one per event within a relay process and starts at the process's start
//! time in unix milliseconds × 1000, so ids keep increasing across restarts as long as the wall
//! clock does not step back between runs and a run averages fewer than 1000 events per
//! millisecond. Ids stay below 2^53 until the year 2255, so JavaScript reads them exactly.
//! Lobbies deduplicate by id: delivery is at least once. In a fleet, ids are per node: the
//! pair `(node, id)` is unique fleet-wide, and a lobby subscribed to several nodes deduplicates
//! by that pair.
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
//!   that resumes, or falls behind the broadcast channel, catches up from the ring a bounded
//!   slice per lock, so publishing never waits behind a long copy; one that falls behind the
//!   ring too (or resumes from an id older than it) is first sent a [`Gap`]. The stream takes
//!   at most `HooksConfig::max_subscribers` subscribers; more are refused with
//!   [`SubscriberLimit`] and counted.
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
//!
//! ## Code map
//! - `event`: [`LobbyEvent`], [`LobbyEventKind`] and [`Published`] (the JSON, serialized once);
//!   event ids and times.
//! - `publisher`: [`spawn`] and [`HookSender`]; [`HookSender::publish`] runs on the control task.
//! - `replay`: the bounded replay ring and the live channel behind [`HookSender::subscribe`];
//!   each [`Subscription`] yields [`StreamItem`]s, with a [`Gap`] when events were missed.
//! - `webhook`: one delivery task per webhook URL (bounded queue, retries with backoff and
//!   jitter, `Retry-After`), and `redact` for URLs in logs.
//! - `signature`: [`sign`], [`verify_signature`], [`SignatureError`] and their headers.

mod event;
mod publisher;
mod replay;
mod signature;
mod webhook;

pub use reqwest::Url;

pub use event::{ElectedBy, LobbyEvent, LobbyEventKind, Published};
pub use publisher::{spawn, HookSender, DROP_LOG_INTERVAL, SHUTDOWN_FLUSH};
pub use replay::{Gap, StreamItem, SubscriberLimit, Subscription, STREAM_KEEPALIVE};
pub use signature::{
    sign, verify_signature, SignatureError, DEFAULT_TOLERANCE, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
pub(crate) use webhook::redact;
pub use webhook::{EVENT_ID_HEADER, EVENT_TYPE_HEADER};

#[cfg(test)]
mod tests;
