//! `GET /v1/events`: lifecycle events as Server-Sent Events, resuming after `Last-Event-ID`
//! (header) or `?last_event_id=`, with `replay.gap` when events were missed and keep-alive
//! comments every [`STREAM_KEEPALIVE`](hooks::STREAM_KEEPALIVE).
//!
//! The handler runs on the admin server's tasks and reads a
//! [`Subscription`](hooks::Subscription) from the hooks' replay buffer; it never reaches the
//! control task. Streams end when the hooks stop ([`hooks::SHUTDOWN_FLUSH`] after shutdown).

use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AdminState, ApiError};
use crate::hooks::{self, StreamItem};

/// Query of `GET /v1/events`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct EventsQuery {
    /// Resume after this id, like the `Last-Event-ID` header (which wins when both are given:
    /// browsers' `EventSource` sends the header on reconnect but keeps the original URL).
    last_event_id: Option<String>,
}

fn parse_event_id(raw: &str) -> Result<Option<u64>, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "last event id must be a decimal event id, got {raw:?}"
        ))
    })
}

/// `GET /v1/events`: the lifecycle event stream. The subscription is taken before the answer's
/// headers are sent, so every event published after a client sees them reaches it.
pub(super) async fn events(
    State(state): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let last = match headers.get("last-event-id") {
        Some(value) => parse_event_id(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?,
        )?,
        None => match &query.last_event_id {
            Some(raw) => parse_event_id(raw)?,
            None => None,
        },
    };
    let subscription = state.hooks.subscribe(last)?;
    let stream = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let item = subscription.next().await?;
        Some((Ok::<_, Infallible>(sse_event(&item)), subscription))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(hooks::STREAM_KEEPALIVE))
        .into_response();
    // Reverse proxies (nginx) must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn sse_event(item: &StreamItem) -> sse::Event {
    match item {
        StreamItem::Event(published) => sse::Event::default()
            .id(published.id().to_string())
            .event(published.event().kind.name())
            // Compact JSON has no raw newlines or carriage returns.
            .data(String::from_utf8_lossy(published.json())),
        StreamItem::Gap(gap) => sse::Event::default()
            .event(hooks::Gap::NAME)
            .data(gap.json()),
    }
}
