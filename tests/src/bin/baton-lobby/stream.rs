//! The event-stream subscriber: `GET /v1/events` on the relay's admin server, parsed as
//! Server-Sent Events, resumed after every disconnect.
//!
//! The task keeps the id of the last event it handed to the lobby and sends it as
//! `Last-Event-ID` on each reconnect, so the relay replays exactly the events after it: none
//! missed, none repeated (the lobby's deduplication is a second line of defence). An event cut
//! off by the disconnect was never handed over, so it comes again. Reconnects wait with
//! exponential backoff (jittered, capped); the backoff starts over once a connection has
//! carried data. Answers that retrying cannot fix (wrong token, wrong URL, a refused
//! `Last-Event-ID`) end the lobby with an error instead of retrying forever.

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use baton_relay::hooks::{Gap, Url};
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::StatusCode;
use tracing::{debug, info, warn};

use crate::lobby::{Lobby, Source};
use crate::sse::{SseEvent, SseParser};
use crate::{Shutdown, USER_AGENT};

/// Time to open a connection to the admin server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the subscriber (no `Debug`: it holds a secret).
#[derive(Clone)]
pub struct StreamConfig {
    /// The `/v1/events` URL.
    pub url: Url,
    /// Bearer token (the event-stream token, else the admin token), if the relay needs one.
    pub token: Option<String>,
    /// Resume after this id on the first connection too (e.g. one a lobby stored).
    pub last_event_id: Option<u64>,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// A connection silent this long is presumed dead. The relay sends a comment every 15 s
    /// on an idle stream, so a few times that.
    pub idle_timeout: Duration,
}

/// How one connection ended, when it may be retried.
struct Ended {
    /// The connection carried at least one byte of stream: the backoff starts over.
    carried_data: bool,
    why: String,
}

/// Subscribes until `shutdown` fires; an error only for answers retrying cannot fix.
pub async fn run(
    config: StreamConfig,
    lobby: Arc<Lobby>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(USER_AGENT)
        .build()?;
    let mut last_id = config.last_event_id;
    let mut backoff = config.backoff_initial;
    loop {
        let ended = tokio::select! {
            biased;
            () = shutdown.wait() => return Ok(()),
            ended = connect(&client, &config, &lobby, &mut last_id) => ended?,
        };
        if ended.carried_data {
            backoff = config.backoff_initial;
        }
        let delay = jittered(backoff);
        warn!(
            why = %ended.why,
            last_event_id = last_id,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "event stream disconnected"
        );
        tokio::select! {
            biased;
            () = shutdown.wait() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        backoff = backoff.saturating_mul(2).min(config.backoff_max);
    }
}

/// One connection: `Ok` when it ended in a way worth retrying, `Err` when it must not be.
async fn connect(
    client: &reqwest::Client,
    config: &StreamConfig,
    lobby: &Lobby,
    last_id: &mut Option<u64>,
) -> anyhow::Result<Ended> {
    let retry = |carried_data, why: String| Ok(Ended { carried_data, why });
    let mut request = client
        .get(config.url.clone())
        .header(ACCEPT, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache");
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    }
    if let Some(id) = *last_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = match tokio::time::timeout(config.idle_timeout, request.send()).await {
        Ok(Ok(response)) => response,
        // Without the URL: it might carry credentials.
        Ok(Err(err)) => return retry(false, causes(&err.without_url())),
        Err(_) => return retry(false, "no answer within the idle timeout".into()),
    };
    let status = response.status();
    if status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
    {
        let hint = match status {
            StatusCode::UNAUTHORIZED => " (wrong or missing --admin-token / --events-token)",
            StatusCode::NOT_FOUND => " (is --events-url the relay's /v1/events?)",
            _ => "",
        };
        let body = response.text().await.unwrap_or_default();
        bail!(
            "event stream refused: {status}{hint}: {}",
            body.chars().take(200).collect::<String>()
        );
    }
    if !status.is_success() {
        return retry(false, format!("answered {status}"));
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("text/event-stream") {
        return Err(anyhow!(
            "{} is not an event stream (content type {content_type:?})",
            config.url
        ));
    }
    info!(last_event_id = *last_id, "event stream connected");

    let mut response = response;
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut carried_data = false;
    loop {
        let chunk = match tokio::time::timeout(config.idle_timeout, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return retry(carried_data, "stream ended".into()),
            Ok(Err(err)) => return retry(carried_data, causes(&err.without_url())),
            Err(_) => return retry(carried_data, "stream silent beyond the idle timeout".into()),
        };
        carried_data = true;
        if let Err(err) = parser.push(&chunk, &mut events) {
            return retry(carried_data, err.to_string());
        }
        for event in events.drain(..) {
            handle(lobby, &event, last_id);
        }
    }
}

/// Hands one stream event to the lobby, then records its id as processed.
fn handle(lobby: &Lobby, event: &SseEvent, last_id: &mut Option<u64>) {
    if event.event == Gap::NAME {
        lobby.gap(&event.data);
    } else if let Err(err) = lobby.accept(Source::Stream, event.data.as_bytes()) {
        warn!(cause = %err, event = %event.event, "event stream item is not a lobby event");
    }
    match event.id.as_deref().map(str::parse::<u64>) {
        Some(Ok(id)) => *last_id = Some(id),
        Some(Err(_)) => debug!(id = ?event.id, "event id is not a number; not resuming from it"),
        None => {}
    }
}

/// An error with its causes, `outer: inner: ...` (reqwest's own message alone says only
/// "error sending request").
pub fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Equal jitter: between half and all of `backoff`, so many lobbies reconnecting after a
/// relay restart spread out. The randomness is std's per-process hash seed, which is plenty
/// for spreading reconnects (no extra crate needed).
fn jittered(backoff: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = backoff / 2;
    let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    half + Duration::from_micros(random % span.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all() {
        for ms in [0, 1, 100, 30_000] {
            let backoff = Duration::from_millis(ms);
            for _ in 0..100 {
                let d = jittered(backoff);
                assert!(d >= backoff / 2 && d <= backoff, "{d:?} for {backoff:?}");
            }
        }
    }
}
