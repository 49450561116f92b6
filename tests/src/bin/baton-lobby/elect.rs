//! The lobby's own host elections (`--elect-lowest-id`): takes the choices [`crate::lobby`]
//! makes and sends each to `POST /v1/allocations/{id}/elect` on the admin API.
//!
//! Each election is one attempt: it only counts while the allocation is migrating (a few
//! seconds), so a late retry would be worse than none; the relay's own choice stands when the
//! call fails. The requests run on this one task, away from the webhook handler and the stream,
//! so a slow admin API never delays acknowledging events.

use std::time::Duration;

use baton_relay::hooks::Url;
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::lobby::Election;
use crate::{Shutdown, USER_AGENT};

/// Elections waiting for the admin API; beyond that the relay's choice stands.
pub const QUEUE: usize = 1024;
/// Time one election request may take: well inside the relay's default migration timeout
/// (5 s), after which the election no longer matters.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where elections go (no `Debug`: it holds a secret).
#[derive(Clone)]
pub struct ElectConfig {
    /// The admin API's base URL, e.g. `http://127.0.0.1:7701`.
    pub admin_url: Url,
    /// The admin token (the event-stream token does not allow elections).
    pub token: Option<String>,
}

/// Sends elections from `rx` until `shutdown` fires or every sender is gone.
pub async fn run(
    config: ElectConfig,
    mut rx: mpsc::Receiver<Election>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(USER_AGENT)
        .build()?;
    loop {
        let election = tokio::select! {
            biased;
            () = shutdown.wait() => return Ok(()),
            election = rx.recv() => match election {
                Some(election) => election,
                None => return Ok(()),
            },
        };
        elect(&client, &config, &election).await;
    }
}

async fn elect(client: &reqwest::Client, config: &ElectConfig, election: &Election) {
    let url = match config
        .admin_url
        .join(&format!("v1/allocations/{}/elect", election.allocation))
    {
        Ok(url) => url,
        Err(err) => {
            warn!(cause = %err, allocation = %election.allocation, "cannot build election URL");
            return;
        }
    };
    let mut request = client
        .post(url)
        .json(&serde_json::json!({ "peer": election.peer }));
    if let Some(token) = &config.token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => {
            info!(allocation = %election.allocation, peer = election.peer, "elected lowest peer id");
        }
        Ok(response) if response.status() == StatusCode::CONFLICT => {
            info!(
                allocation = %election.allocation,
                peer = election.peer,
                "allocation no longer migrating; election skipped"
            );
        }
        Ok(response) => {
            warn!(
                allocation = %election.allocation,
                peer = election.peer,
                status = %response.status(),
                "election refused; the relay's choice stands"
            );
        }
        Err(err) => {
            warn!(
                allocation = %election.allocation,
                cause = %crate::stream::causes(&err.without_url()),
                "election request failed; the relay's choice stands"
            );
        }
    }
}
