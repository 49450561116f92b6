//! `baton-lobby`: a small reference lobby service for Baton relays.
//!
//! It receives the relay's lobby events by signed webhook (`--secret`), by the admin server's
//! event stream (`--events-url`), or both at once, and prints each event exactly once on
//! stdout (as text, or with `--json` as the relay's JSON, one object per line). Logs go to
//! stderr (`RUST_LOG` refines them).
//!
//! ```sh
//! # webhooks: run the relay with --webhook http://127.0.0.1:7800/hooks/baton
//! BATON_WEBHOOK_SECRET=a-long-random-secret baton-lobby
//! # event stream, resumed after disconnects
//! BATON_ADMIN_TOKEN=... baton-lobby --events-url http://127.0.0.1:7701/v1/events --json
//! ```
//!
//! ## Layout and concurrency
//! - [`lobby`]: the core both sources feed: parse, deduplicate by event id, print, track
//!   membership. One mutex, held only for bookkeeping and one line of output.
//! - [`webhook`]: an axum server that verifies `Baton-Signature` and answers at once.
//! - [`stream`] (with the sans-IO [`sse`] parser): one task holding the `GET /v1/events`
//!   connection and reconnecting with `Last-Event-ID`.
//! - [`elect`]: with `--elect-lowest-id`, one task sending the lobby's host elections.
//!
//! Every task is owned by a `JoinSet` in [`run`]. Ctrl-C, SIGTERM or `--exit-after` fire the
//! [`Shutdown`]; tasks finish what they are doing (the webhook server answers the requests in
//! flight) within [`SHUTDOWN_GRACE`], after which they are aborted. A task failing for good (a
//! refused token, a port in use) stops the lobby with a non-zero exit.

mod elect;
mod lobby;
mod sse;
mod stream;
mod webhook;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use baton_relay::cli::parse_duration;
use baton_relay::hooks::Url;
use clap::Parser;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info};

use crate::lobby::{Format, Lobby};

/// Where webhooks are received unless `--webhook-listen` says otherwise: loopback, next to the
/// relay's own ports (QUIC 7700, admin 7701).
const DEFAULT_WEBHOOK_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7800);
/// Time tasks get to finish after shutdown begins before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The `User-Agent` of the lobby's requests to the relay (the event stream and elections).
const USER_AGENT: &str = concat!("baton-lobby/", env!("CARGO_PKG_VERSION"));
/// Printed on stderr once the webhook receiver accepts connections (scripts and tests wait
/// for it, then read the address after it).
const LISTENING: &str = "baton-lobby: webhook receiver listening on http://";

/// A reference lobby service for Baton: receives the relay's lobby events by signed webhook,
/// by the admin event stream, or both, and prints each event once.
// No `Debug`: it holds secrets.
#[derive(Parser)]
#[command(name = "baton-lobby", version)]
struct Cli {
    /// Shared secret of webhook signatures (the relay's --webhook-secret). Setting it turns on
    /// the webhook receiver.
    #[arg(
        long,
        env = "BATON_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    secret: Option<String>,

    /// Address the webhook receiver listens on (port 0 picks one; the address is printed on
    /// stderr) [default: 127.0.0.1:7800].
    #[arg(long, value_name = "ADDR")]
    webhook_listen: Option<SocketAddr>,

    /// Largest difference between a webhook's Baton-Timestamp and this clock; older requests
    /// are refused as replays.
    #[arg(long, value_parser = parse_duration, default_value = "5m", value_name = "DURATION")]
    tolerance: Duration,

    /// The relay's event stream, e.g. http://127.0.0.1:7701/v1/events. Setting it turns on the
    /// subscriber.
    #[arg(long, value_parser = parse_http_url, value_name = "URL")]
    events_url: Option<Url>,

    /// The relay's admin token: bearer token of the event stream (unless --events-token is
    /// given) and of elections.
    #[arg(
        long,
        env = "BATON_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: Option<String>,

    /// The relay's event-stream token (its --event-stream-token), when it has one.
    #[arg(
        long,
        env = "BATON_EVENT_STREAM_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    events_token: Option<String>,

    /// Resume the event stream after this event id (one a previous run printed last).
    #[arg(long, value_name = "ID", requires = "events_url")]
    last_event_id: Option<u64>,

    /// First delay before reconnecting the event stream; doubles up to --reconnect-max.
    #[arg(long, value_parser = parse_duration, default_value = "250ms", value_name = "DURATION")]
    reconnect_initial: Duration,

    /// Longest delay between event stream reconnects.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    reconnect_max: Duration,

    /// Reconnect an event stream silent this long (the relay sends a keep-alive every 15 s).
    #[arg(long, value_parser = parse_duration, default_value = "45s", value_name = "DURATION")]
    idle_timeout: Duration,

    /// Print each event as the relay's JSON object, one per line.
    #[arg(long)]
    json: bool,

    /// Exit (successfully) after this many distinct events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    exit_after: Option<u64>,

    /// When a host is lost, name the lowest remaining peer id as the next host (POST
    /// /v1/allocations/{id}/elect; needs the admin token). Pair with the relay's
    /// --lobby-election-window so the relay waits for it; without a window, a relay choice
    /// that is not the lowest is overridden while the allocation still migrates.
    #[arg(long)]
    elect_lowest_id: bool,

    /// The relay's admin API for elections [default: the origin of --events-url].
    #[arg(long, value_parser = parse_http_url, value_name = "URL")]
    admin_url: Option<Url>,
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?}: scheme must be http or https"));
    }
    Ok(url)
}

/// A shutdown signal: fired once, awaited by every task.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Shutdown {
    fn new() -> Self {
        Shutdown(Arc::new(watch::Sender::new(false)))
    }

    /// Fires the signal (again is harmless).
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the signal has fired.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so this only returns once the value is `true`.
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

/// The validated plan of a run (no `Debug`: it holds secrets).
struct Plan {
    webhook: Option<(SocketAddr, String, Duration)>,
    stream: Option<stream::StreamConfig>,
    elect: Option<elect::ElectConfig>,
    format: Format,
    exit_after: Option<u64>,
}

impl Plan {
    fn from_cli(cli: Cli) -> anyhow::Result<Plan> {
        let webhook = match (cli.secret, cli.webhook_listen) {
            (Some(secret), listen) => {
                if secret.trim().is_empty() {
                    bail!("--secret is empty");
                }
                Some((
                    listen.unwrap_or(DEFAULT_WEBHOOK_LISTEN),
                    secret,
                    cli.tolerance,
                ))
            }
            (None, Some(_)) => bail!("--webhook-listen needs --secret (or BATON_WEBHOOK_SECRET)"),
            (None, None) => None,
        };
        if cli.reconnect_initial.is_zero() || cli.reconnect_max < cli.reconnect_initial {
            bail!("--reconnect-initial must be above zero and at most --reconnect-max");
        }
        if cli.idle_timeout.is_zero() {
            bail!("--idle-timeout must be above zero");
        }
        let stream = cli.events_url.as_ref().map(|url| stream::StreamConfig {
            url: url.clone(),
            token: cli.events_token.clone().or_else(|| cli.admin_token.clone()),
            last_event_id: cli.last_event_id,
            backoff_initial: cli.reconnect_initial,
            backoff_max: cli.reconnect_max,
            idle_timeout: cli.idle_timeout,
        });
        if webhook.is_none() && stream.is_none() {
            bail!("nothing to do: give --secret (webhooks), --events-url (event stream) or both");
        }
        let elect = if cli.elect_lowest_id {
            let mut admin_url = match (cli.admin_url, &cli.events_url) {
                (Some(url), _) => url,
                (None, Some(events)) => events.join("/").context("admin URL from --events-url")?,
                (None, None) => bail!("--elect-lowest-id needs --admin-url or --events-url"),
            };
            // A base URL ends with `/`, so joining `v1/...` keeps any path prefix.
            if !admin_url.path().ends_with('/') {
                admin_url.set_path(&format!("{}/", admin_url.path()));
            }
            Some(elect::ElectConfig {
                admin_url,
                token: cli.admin_token,
            })
        } else {
            None
        };
        Ok(Plan {
            webhook,
            stream,
            elect,
            format: if cli.json { Format::Json } else { Format::Text },
            exit_after: cli.exit_after,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the lobby until Ctrl-C, SIGTERM, `--exit-after` or a task failing for good.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let plan = Plan::from_cli(cli)?;
    let shutdown = Shutdown::new();
    let mut tasks = JoinSet::new();

    let elections = plan.elect.map(|config| {
        let (tx, rx) = mpsc::channel(elect::QUEUE);
        tasks.spawn(elect::run(config, rx, shutdown.clone()));
        tx
    });
    let lobby = Arc::new(Lobby::new(
        plan.format,
        plan.exit_after,
        shutdown.clone(),
        elections,
    ));
    if let Some((listen, secret, tolerance)) = plan.webhook {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let receiver = Arc::new(webhook::Receiver {
            secret,
            tolerance,
            lobby: lobby.clone(),
        });
        tasks.spawn(webhook::serve(listener, receiver, shutdown.clone()));
        eprintln!("{LISTENING}{addr}");
    }
    if let Some(config) = plan.stream {
        info!(url = %redacted(&config.url), "subscribing to the event stream");
        tasks.spawn(stream::run(config, lobby, shutdown.clone()));
    }

    let result = tokio::select! {
        r = interrupted() => r,
        () = shutdown.wait() => Ok(()),
        failed = first_failure(&mut tasks) => failed,
    };
    shutdown.trigger();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(err)) = joined {
                error!("{err:#}");
            }
        }
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    result
}

/// The first task error; pending forever while every task is fine.
async fn first_failure(tasks: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(err) => return Err(err).context("task panicked"),
        }
    }
    std::future::pending().await
}

/// Resolves on Ctrl-C, or SIGTERM on Unix (how systemd and Docker stop services).
async fn interrupted() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("Ctrl-C handler")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("Ctrl-C handler")?;
    info!("stopping");
    Ok(())
}

/// A URL for logs: without credentials or query (a token could sit in either).
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("baton-lobby").chain(args.iter().copied()))?;
        Plan::from_cli(cli)
    }

    #[test]
    fn a_mode_is_required_and_flags_are_checked() {
        // The environment could set the secret; name it explicitly where it matters.
        assert!(plan(&["--webhook-listen", "127.0.0.1:0", "--secret", " "]).is_err());
        assert!(plan(&["--events-url", "ftp://x/v1/events"]).is_err());
        assert!(plan(&["--secret", "s", "--exit-after", "0"]).is_err());
        let p = plan(&["--secret", "0123456789abcdef"]).expect("webhook mode");
        assert_eq!(
            p.webhook.map(|(addr, _, tolerance)| (addr, tolerance)),
            Some((
                DEFAULT_WEBHOOK_LISTEN,
                baton_relay::hooks::DEFAULT_TOLERANCE
            ))
        );
    }

    #[test]
    fn elections_go_to_the_admin_api_of_the_event_stream() {
        let p = plan(&[
            "--events-url",
            "http://127.0.0.1:7701/v1/events",
            "--elect-lowest-id",
        ])
        .expect("valid");
        let elect = p.elect.expect("elections on");
        assert_eq!(elect.admin_url.as_str(), "http://127.0.0.1:7701/");
        let p = plan(&[
            "--events-url",
            "http://h/v1/events",
            "--elect-lowest-id",
            "--admin-url",
            "https://h/relay",
        ])
        .expect("valid");
        assert_eq!(p.elect.expect("on").admin_url.as_str(), "https://h/relay/");
    }
}
