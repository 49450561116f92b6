//! Webhook delivery: one task per webhook URL takes events from its bounded queue in order and
//! POSTs each one, signed, until the lobby answers 2xx, retrying with exponential backoff and
//! jitter (and `Retry-After`). Also [`redact`], the form of a URL fit for logs and metrics.
//!
//! The tasks run on the caller's runtime, owned by the [`TaskTracker`] given to
//! [`spawn`](super::spawn), and stop [`SHUTDOWN_FLUSH`](super::SHUTDOWN_FLUSH) after the
//! relay's shutdown begins. The publisher, on the control task, only ever `try_send`s into a
//! [`WebhookQueue`]. Calls `signature` to sign each attempt.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::event::{unix_millis, Published};
use super::signature::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::Url;
use crate::config::HooksConfig;
use crate::metrics::Metrics;

/// Header carrying the event's id; the same on every retry, so lobbies deduplicate by it.
pub const EVENT_ID_HEADER: &str = "Baton-Event-Id";
/// Header carrying the event's `type`, for routing without parsing the body.
pub const EVENT_TYPE_HEADER: &str = "Baton-Event-Type";
/// Bytes of a webhook answer read (and then ignored) so its connection can be reused.
const MAX_ANSWER: usize = 64 * 1024;

/// One webhook's end of the queue, as publishers see it.
pub(super) struct WebhookQueue {
    pub(super) name: String,
    pub(super) tx: mpsc::Sender<Arc<Published>>,
}

/// Rate limit of one webhook's "queue full" warnings.
#[derive(Default)]
pub(super) struct DropLog {
    pub(super) unreported: u64,
    pub(super) last: Option<Instant>,
}

/// Starts one delivery task per webhook in `config` on `tracker`, each stopping when `stopped`
/// fires; returns their queues, in the order of `config.webhooks()`.
pub(super) fn spawn_all(
    config: &HooksConfig,
    metrics: &Arc<Metrics>,
    stopped: &CancellationToken,
    tracker: &TaskTracker,
) -> Vec<WebhookQueue> {
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
                stopped: stopped.clone(),
            };
            tracker.spawn(
                webhook
                    .run(rx)
                    .instrument(info_span!("webhook", url = %name)),
            );
        }
        webhooks.push(WebhookQueue { name, tx });
    }
    webhooks
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

/// A URL as it may appear in logs and metrics: no credentials, query or fragment.
pub(crate) fn redact(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}
