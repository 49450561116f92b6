//! The `baton-relay` command line and config file, and their conversion into a
//! [`RelayConfig`].
//!
//! Every setting can come from three places; the later wins:
//! 1. the defaults in [`crate::defaults`];
//! 2. the TOML file named by `--config` / `BATON_CONFIG` (keys are the flag names in
//!    snake_case, durations are strings like `"10s"`, unknown keys are errors, relative paths
//!    are relative to the file);
//! 3. the environment (`BATON_LISTEN`, ...) and the command line, the command line winning.
//!
//! [`settings`] reads the file and calls [`resolve`], the one function that turns everything into
//! a [`Settings`], using [`RelayConfig`]'s validating setters so that every range check lives in
//! one place and every error names the setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};
use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use crate::config::{ConfigError, HooksConfig, RelayConfig, TlsSource};
use crate::defaults;
use crate::hooks::Url;

/// Where the development certificate is kept when no `data_dir` is given.
pub const DEFAULT_DATA_DIR: &str = "baton-data";

/// Why the command line or config file could not be turned into settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The config file named on the command line could not be read (a missing file is an
    /// error, never silent defaults).
    #[error("reading config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has an unknown key or a badly typed value.
    #[error("config file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        source: toml::de::Error,
    },
    /// A setting is out of range or conflicts with another.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> CliError {
    CliError::Invalid(ConfigError {
        setting,
        reason: reason.into(),
    })
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Baton relay: a QUIC relay for client-hosted multiplayer games.
///
/// Hosts open allocations and get a join code; peers join by code; the relay forwards datagrams
/// between members and tells everyone when someone leaves, and why.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "baton-relay",
    version,
    after_help = "Precedence: built-in defaults < config file < environment < command line.\n\
                  Durations take a unit: 500ms, 10s, 2m, 1h, 1d (combinations like 1m30s work).\n\
                  RUST_LOG directives, when set, refine --log-level (e.g. RUST_LOG=quinn=debug)."
)]
pub struct Cli {
    /// TOML config file with the same settings (snake_case keys, durations as strings like
    /// "10s"). A file named here that does not exist is an error.
    #[arg(long, env = "BATON_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// UDP address of the QUIC endpoint clients connect to [default: 0.0.0.0:7700].
    #[arg(long, env = "BATON_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// TCP address of the admin HTTP server (/healthz, /readyz, /metrics, /v1/allocations)
    /// [default: 127.0.0.1:7701, loopback only].
    #[arg(long, env = "BATON_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,

    /// Do not run the admin HTTP server (wins over --admin-listen, so it can switch off an
    /// address set in the environment).
    #[arg(
        long,
        env = "BATON_NO_ADMIN",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    no_admin: bool,

    /// Bearer token required by the admin API's /v1/ routes (the probes and /metrics stay
    /// open). Prefer the environment variable: command lines are visible to other users
    /// [default: none, the API is open; keep the admin server on loopback then].
    #[arg(
        long,
        env = "BATON_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,

    /// Directory holding the development certificate (dev-cert.pem, dev-key.pem), generated
    /// on first start and reused so clients can pin it. Unused with --cert/--key
    /// [default: baton-data].
    #[arg(long, env = "BATON_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// PEM certificate chain, leaf first, for production. Requires --key.
    #[arg(long, env = "BATON_CERT", value_name = "PATH")]
    cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --cert. Requires --cert.
    #[arg(long, env = "BATON_KEY", value_name = "PATH")]
    key: Option<PathBuf>,

    /// Extra host name or IP address for the development certificate, besides localhost,
    /// 127.0.0.1 and ::1. Repeatable; comma-separated in the environment. Only used when the
    /// certificate is first generated.
    #[arg(
        long = "dev-cert-name",
        env = "BATON_DEV_CERT_NAMES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    dev_cert_names: Vec<String>,

    /// A client silent this long is removed and its peers told why (the QUIC idle timeout;
    /// 100ms to 10m) [default: 10s].
    #[arg(long, env = "BATON_KEEPALIVE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    keepalive_timeout: Option<Duration>,

    /// Time a new connection has to create or join an allocation (100ms to 10m)
    /// [default: 10s].
    #[arg(long, env = "BATON_BIND_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    bind_timeout: Option<Duration>,

    /// Time the host of a lobby-reserved allocation has to claim it (100ms to 1h)
    /// [default: 60s].
    #[arg(long, env = "BATON_HOST_BIND_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    host_bind_timeout: Option<Duration>,

    /// Members per allocation, host included: the default and the cap for what hosts ask
    /// [default: 150].
    #[arg(long, env = "BATON_MAX_PEERS_PER_ALLOCATION", value_name = "N")]
    max_peers_per_allocation: Option<u16>,

    /// Allocations held at once; more are refused with relay_full [default: 10000].
    #[arg(long, env = "BATON_MAX_ALLOCATIONS", value_name = "N")]
    max_allocations: Option<usize>,

    /// Concurrent QUIC connections; more are refused [default: 20000].
    #[arg(long, env = "BATON_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,

    /// Longest control frame accepted from a client, in bytes (9216 to 1048576)
    /// [default: 16384].
    #[arg(long, env = "BATON_MAX_CONTROL_FRAME", value_name = "BYTES")]
    max_control_frame: Option<usize>,

    /// Largest datagram payload carried, in bytes (1 to 1150) [default: 1150].
    #[arg(long, env = "BATON_MAX_DATAGRAM_PAYLOAD", value_name = "BYTES")]
    max_datagram_payload: Option<usize>,

    /// Characters in issued join codes (4 to 12) [default: 6].
    #[arg(long, env = "BATON_JOIN_CODE_LEN", value_name = "N")]
    join_code_len: Option<usize>,

    /// Join-code time to live: the default and the cap for what hosts ask (1s to 30d)
    /// [default: 1d].
    #[arg(long, env = "BATON_JOIN_CODE_TTL", value_name = "DURATION", value_parser = parse_duration)]
    join_code_ttl: Option<Duration>,

    /// Time an elected member has to take over a migrating allocation before the next is
    /// elected (100ms to 10m) [default: 5s].
    #[arg(long, env = "BATON_MIGRATION_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    migration_timeout: Option<Duration>,

    /// After losing a host, time a lobby has to name the next one (POST
    /// /v1/allocations/{id}/elect) before the relay elects one itself (0 to 1m; 0 = elect at
    /// once) [default: 0s].
    #[arg(long, env = "BATON_LOBBY_ELECTION_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
    lobby_election_window: Option<Duration>,

    /// Requested kernel receive and send buffer of each QUIC socket, in bytes (65536 to
    /// 1073741824; the kernel caps it at net.core.rmem_max/wmem_max) [default: 8388608].
    #[arg(long, env = "BATON_UDP_BUFFER", value_name = "BYTES")]
    udp_buffer: Option<usize>,

    /// QUIC endpoints sharing the listen port with SO_REUSEPORT, each on its own data-plane
    /// thread, to spread packet processing over cores (1 to 64). Packets are steered by
    /// connection ID, so clients keep their connection when their address changes. Set it to
    /// the cores the relay may use [default: 1].
    #[arg(long, env = "BATON_ENDPOINTS", value_name = "N")]
    endpoints: Option<usize>,

    /// Largest migration snapshot a host may upload, in bytes (1024 to 268435456)
    /// [default: 10485760].
    #[arg(long, env = "BATON_MAX_SNAPSHOT", value_name = "BYTES")]
    max_snapshot: Option<usize>,

    /// Bytes all stored migration snapshots may take together; uploads beyond it are refused
    /// with relay_full (at least --max-snapshot) [default: 1073741824].
    #[arg(long, env = "BATON_SNAPSHOT_BUDGET", value_name = "BYTES")]
    snapshot_budget: Option<usize>,

    /// Lobby webhook: every lifecycle event is POSTed to this http or https URL as signed JSON.
    /// Repeatable (at most 16); comma-separated in the environment. Requires --webhook-secret.
    #[arg(
        long = "webhook",
        env = "BATON_WEBHOOKS",
        value_name = "URL",
        value_delimiter = ',',
        value_parser = parse_webhook_url
    )]
    webhooks: Vec<Url>,

    /// Secret that signs webhook requests (HMAC-SHA256, Baton-Signature header); at least 16
    /// characters. Prefer the environment variable: command lines are visible to other users.
    #[arg(
        long,
        env = "BATON_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    webhook_secret: Option<String>,

    /// Events queued per webhook while its lobby is slow or down; further events are dropped
    /// and counted (1 to 1000000) [default: 10000].
    #[arg(long, env = "BATON_HOOK_QUEUE", value_name = "N")]
    hook_queue: Option<usize>,

    /// First delay before retrying a failed webhook request, doubled (with jitter) after each
    /// failure (10ms to 1m) [default: 100ms].
    #[arg(long, env = "BATON_WEBHOOK_BACKOFF_INITIAL", value_name = "DURATION", value_parser = parse_duration)]
    webhook_backoff_initial: Option<Duration>,

    /// Longest delay between webhook retries (webhook-backoff-initial to 1h) [default: 30s].
    #[arg(long, env = "BATON_WEBHOOK_BACKOFF_MAX", value_name = "DURATION", value_parser = parse_duration)]
    webhook_backoff_max: Option<Duration>,

    /// Time one webhook request may take, connecting included; longer is a failure and is
    /// retried (100ms to 5m) [default: 5s].
    #[arg(long, env = "BATON_WEBHOOK_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    webhook_timeout: Option<Duration>,

    /// Events kept for event stream (GET /v1/events) subscribers that resume with
    /// Last-Event-ID (1 to 1000000) [default: 10000].
    #[arg(long, env = "BATON_EVENT_REPLAY", value_name = "N")]
    event_replay: Option<usize>,

    /// Bearer token of the event stream (GET /v1/events), so a lobby can read events without
    /// the admin token [default: none, the admin token guards it].
    #[arg(
        long,
        env = "BATON_EVENT_STREAM_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    event_stream_token: Option<String>,

    /// Log output format [default: text].
    #[arg(long, env = "BATON_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,

    /// Log level: off, error, warn, info, debug or trace [default: info].
    #[arg(long, env = "BATON_LOG_LEVEL", value_name = "LEVEL", value_parser = parse_level)]
    log_level: Option<LevelFilter>,
}

/// The config file. Every key is optional; unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--listen`.
    pub listen: Option<SocketAddr>,
    /// See `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// See `--no-admin`.
    pub no_admin: Option<bool>,
    /// See `--admin-token`.
    pub admin_token: Option<String>,
    /// See `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// See `--cert`.
    pub cert: Option<PathBuf>,
    /// See `--key`.
    pub key: Option<PathBuf>,
    /// See `--dev-cert-name`.
    pub dev_cert_names: Option<Vec<String>>,
    /// See `--keepalive-timeout`.
    pub keepalive_timeout: Option<HumanDuration>,
    /// See `--bind-timeout`.
    pub bind_timeout: Option<HumanDuration>,
    /// See `--host-bind-timeout`.
    pub host_bind_timeout: Option<HumanDuration>,
    /// See `--max-peers-per-allocation`.
    pub max_peers_per_allocation: Option<u16>,
    /// See `--max-allocations`.
    pub max_allocations: Option<usize>,
    /// See `--max-connections`.
    pub max_connections: Option<usize>,
    /// See `--max-control-frame`.
    pub max_control_frame: Option<usize>,
    /// See `--max-datagram-payload`.
    pub max_datagram_payload: Option<usize>,
    /// See `--join-code-len`.
    pub join_code_len: Option<usize>,
    /// See `--migration-timeout`.
    pub migration_timeout: Option<HumanDuration>,
    /// See `--lobby-election-window`.
    pub lobby_election_window: Option<HumanDuration>,
    /// See `--udp-buffer`.
    pub udp_buffer: Option<usize>,
    /// See `--endpoints`.
    pub endpoints: Option<usize>,
    /// See `--max-snapshot`.
    pub max_snapshot: Option<usize>,
    /// See `--snapshot-budget`.
    pub snapshot_budget: Option<usize>,
    /// See `--join-code-ttl`.
    pub join_code_ttl: Option<HumanDuration>,
    /// See `--webhook`.
    pub webhooks: Option<Vec<String>>,
    /// See `--webhook-secret`.
    pub webhook_secret: Option<String>,
    /// See `--hook-queue`.
    pub hook_queue: Option<usize>,
    /// See `--webhook-backoff-initial`.
    pub webhook_backoff_initial: Option<HumanDuration>,
    /// See `--webhook-backoff-max`.
    pub webhook_backoff_max: Option<HumanDuration>,
    /// See `--webhook-timeout`.
    pub webhook_timeout: Option<HumanDuration>,
    /// See `--event-replay`.
    pub event_replay: Option<usize>,
    /// See `--event-stream-token`.
    pub event_stream_token: Option<String>,
    /// See `--log-format`.
    pub log_format: Option<LogFormat>,
    /// See `--log-level`.
    pub log_level: Option<String>,
}

/// A duration written with a unit in the config file (`"10s"`), parsed by [`parse_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Everything the binary needs: the relay's configuration and how to log.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The relay configuration.
    pub relay: RelayConfig,
    /// Log output format.
    pub log_format: LogFormat,
    /// Default log level; `RUST_LOG` directives refine it.
    pub log_level: LevelFilter,
}

/// Reads the config file named in `cli`, if any, and resolves the settings.
pub fn settings(cli: &Cli) -> Result<Settings, CliError> {
    let file = match &cli.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    resolve(cli, file)
}

/// Reads and parses a config file. Relative paths in it are made relative to the file's
/// directory, so a config next to its certificate works from any working directory.
pub fn load_file(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut file: FileConfig = toml::from_str(&text).map_err(|source| CliError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    for p in [&mut file.data_dir, &mut file.cert, &mut file.key]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(file)
}

/// Turns the command line (with its environment) and the config file into [`Settings`]: the
/// command line wins over the file, the file over the defaults.
pub fn resolve(cli: &Cli, file: FileConfig) -> Result<Settings, CliError> {
    let mut relay = RelayConfig::default();
    let hooks = resolve_hooks(cli, &file)?;

    if let Some(listen) = cli.listen.or(file.listen) {
        relay.listen = listen;
    }

    // Admin server: a choice on the command line or in the environment (either way) overrides
    // the file's; --no-admin wins over --admin-listen so it can switch off an inherited address.
    relay.admin_listen = if cli.no_admin {
        None
    } else if let Some(addr) = cli.admin_listen {
        Some(addr)
    } else {
        match (file.no_admin.unwrap_or(false), file.admin_listen) {
            (true, Some(_)) => {
                return Err(invalid(
                    "no_admin",
                    "conflicts with admin_listen; set one of them",
                ))
            }
            (true, None) => None,
            (false, addr) => Some(addr.unwrap_or(defaults::ADMIN_LISTEN)),
        }
    };

    relay.admin_token = cli.admin_token.clone().or(file.admin_token);
    if let Some(token) = &relay.admin_token {
        if token.trim().is_empty() {
            return Err(invalid("admin_token", "must not be empty"));
        }
        if relay.admin_listen.is_none() {
            return Err(invalid(
                "admin_token",
                "is set but the admin server is disabled (no_admin)",
            ));
        }
    }

    let dev_names = if cli.dev_cert_names.is_empty() {
        file.dev_cert_names.unwrap_or_default()
    } else {
        cli.dev_cert_names.clone()
    };
    if dev_names.iter().any(|n| n.trim().is_empty()) {
        return Err(invalid("dev_cert_names", "names must not be empty"));
    }
    relay.tls = match (cli.cert.clone().or(file.cert), cli.key.clone().or(file.key)) {
        (Some(cert), Some(key)) => {
            if !dev_names.is_empty() {
                return Err(invalid(
                    "dev_cert_names",
                    "only applies to the development certificate, not to cert/key",
                ));
            }
            TlsSource::Pem { cert, key }
        }
        (None, None) => TlsSource::SelfSigned {
            data_dir: cli
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            extra_names: dev_names,
        },
        (Some(_), None) => return Err(invalid("key", "cert is set but key is not; give both")),
        (None, Some(_)) => return Err(invalid("cert", "key is set but cert is not; give both")),
    };

    let secs = |d: Option<HumanDuration>| d.map(|d| d.0);
    if let Some(v) = cli.keepalive_timeout.or(secs(file.keepalive_timeout)) {
        relay.set_keepalive_timeout(v)?;
    }
    if let Some(v) = cli.bind_timeout.or(secs(file.bind_timeout)) {
        relay.set_bind_timeout(v)?;
    }
    if let Some(v) = cli.host_bind_timeout.or(secs(file.host_bind_timeout)) {
        relay.set_host_bind_timeout(v)?;
    }
    if let Some(v) = cli
        .max_peers_per_allocation
        .or(file.max_peers_per_allocation)
    {
        relay.set_max_peers_per_allocation(v)?;
    }
    if let Some(v) = cli.max_allocations.or(file.max_allocations) {
        relay.set_max_allocations(v)?;
    }
    if let Some(v) = cli.max_connections.or(file.max_connections) {
        relay.set_max_connections(v)?;
    }
    if let Some(v) = cli.max_control_frame.or(file.max_control_frame) {
        relay.set_max_control_frame(v)?;
    }
    if let Some(v) = cli.max_datagram_payload.or(file.max_datagram_payload) {
        relay.set_max_datagram_payload(v)?;
    }
    if let Some(v) = cli.join_code_len.or(file.join_code_len) {
        relay.set_join_code_len(v)?;
    }
    if let Some(v) = cli.join_code_ttl.or(secs(file.join_code_ttl)) {
        relay.set_join_code_ttl(v)?;
    }
    if let Some(v) = cli.migration_timeout.or(secs(file.migration_timeout)) {
        relay.set_migration_timeout(v)?;
    }
    if let Some(v) = cli
        .lobby_election_window
        .or(secs(file.lobby_election_window))
    {
        relay.set_lobby_election_window(v)?;
    }
    if let Some(v) = cli.udp_buffer.or(file.udp_buffer) {
        relay.set_udp_buffer(v)?;
    }
    if let Some(v) = cli.endpoints.or(file.endpoints) {
        relay.set_endpoints(v)?;
    }
    // The budget is checked against the snapshot limit, so the limit goes first.
    if let Some(v) = cli.max_snapshot.or(file.max_snapshot) {
        relay.set_max_snapshot(v)?;
    }
    if let Some(v) = cli.snapshot_budget.or(file.snapshot_budget) {
        relay.set_snapshot_budget(v)?;
    }

    relay.hooks = hooks;
    if relay.hooks.stream_token().is_some() && relay.admin_listen.is_none() {
        return Err(invalid(
            "event_stream_token",
            "is set but the admin server, which serves the stream, is disabled (no_admin)",
        ));
    }

    let log_level = match (cli.log_level, file.log_level) {
        (Some(level), _) => level,
        (None, Some(s)) => parse_level(&s).map_err(|reason| invalid("log_level", reason))?,
        (None, None) => LevelFilter::INFO,
    };
    Ok(Settings {
        relay,
        log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
        log_level,
    })
}

/// The lobby hook settings; webhooks and their secret come as a pair.
fn resolve_hooks(cli: &Cli, file: &FileConfig) -> Result<HooksConfig, CliError> {
    let mut hooks = HooksConfig::default();
    let webhooks = if cli.webhooks.is_empty() {
        file.webhooks
            .iter()
            .flatten()
            .map(|raw| parse_webhook_url(raw).map_err(|reason| invalid("webhooks", reason)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        cli.webhooks.clone()
    };
    let secret = cli
        .webhook_secret
        .clone()
        .or_else(|| file.webhook_secret.clone());
    match (webhooks.is_empty(), secret) {
        (true, None) => {}
        (false, None) => {
            return Err(invalid(
                "webhook_secret",
                "is required when a webhook is set (it signs the requests)",
            ))
        }
        (_, Some(secret)) => {
            hooks.set_webhooks(webhooks, secret)?;
        }
    }
    if let Some(v) = cli.hook_queue.or(file.hook_queue) {
        hooks.set_queue(v)?;
    }
    let initial = cli
        .webhook_backoff_initial
        .or(file.webhook_backoff_initial.map(|d| d.0));
    let max = cli
        .webhook_backoff_max
        .or(file.webhook_backoff_max.map(|d| d.0));
    if initial.is_some() || max.is_some() {
        let initial = initial.unwrap_or(hooks.backoff_initial());
        let max = max.unwrap_or(hooks.backoff_max());
        hooks.set_backoff(initial, max)?;
    }
    if let Some(v) = cli.webhook_timeout.or(file.webhook_timeout.map(|d| d.0)) {
        hooks.set_request_timeout(v)?;
    }
    if let Some(v) = cli.event_replay.or(file.event_replay) {
        hooks.set_replay(v)?;
    }
    let token = cli
        .event_stream_token
        .clone()
        .or_else(|| file.event_stream_token.clone());
    hooks.set_stream_token(token)?;
    Ok(hooks)
}

/// Parses a webhook URL: absolute, http or https, with a host.
pub fn parse_webhook_url(s: &str) -> Result<Url, String> {
    // The raw text is not echoed: a URL may carry a token.
    let url = Url::parse(s.trim()).map_err(|e| format!("invalid webhook URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "webhook URL {} must use http or https",
            crate::hooks::redact(&url)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "webhook URL {} has no host",
            crate::hooks::redact(&url)
        ));
    }
    Ok(url)
}

/// Parses a duration with units: `500ms`, `10s`, `2m`, `1h`, `1d`, or a sum such as `1m30s`.
/// A bare number is refused: `10` could mean seconds or milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let hint = "use a number with a unit: 500ms, 10s, 2m, 1h, 1d";
    if s.is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {s:?}; {hint}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {s:?} is too long"))?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_end].trim();
        rest = &rest[unit_end..];
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("duration {s:?} has no unit; {hint}")),
            other => return Err(format!("unknown unit {other:?} in duration {s:?}; {hint}")),
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a log level name (case-insensitive).
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::OFF),
        "error" => Ok(LevelFilter::ERROR),
        "warn" => Ok(LevelFilter::WARN),
        "info" => Ok(LevelFilter::INFO),
        "debug" => Ok(LevelFilter::DEBUG),
        "trace" => Ok(LevelFilter::TRACE),
        _ => Err(format!(
            "unknown log level {s:?}; use off, error, warn, info, debug or trace"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("baton-relay").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn setting_of(err: CliError) -> &'static str {
        match err {
            CliError::Invalid(e) => e.setting,
            other => panic!("expected an invalid setting, got {other}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no env var"));
            assert!(env.to_string_lossy().starts_with("BATON_"), "{id}");
        }
    }

    #[test]
    fn help_states_the_real_defaults() {
        let help = Cli::command().render_long_help().to_string();
        let c = RelayConfig::default();
        for expected in [
            format!("[default: {}]", defaults::LISTEN),
            format!("[default: {},", defaults::ADMIN_LISTEN),
            format!("[default: {DEFAULT_DATA_DIR}]"),
            format!("[default: {}s]", c.keepalive_timeout().as_secs()),
            format!("[default: {}s]", c.bind_timeout().as_secs()),
            format!("[default: {}s]", c.host_bind_timeout().as_secs()),
            format!("[default: {}]", c.max_peers_per_allocation()),
            format!("[default: {}]", c.max_allocations()),
            format!("[default: {}]", c.max_connections()),
            format!("[default: {}]", c.max_control_frame()),
            format!("[default: {}]", c.max_datagram_payload()),
            format!("[default: {}]", c.join_code_len()),
            format!("[default: {}d]", c.join_code_ttl().as_secs() / 86_400),
            format!("[default: {}s]", c.migration_timeout().as_secs()),
            format!("[default: {}s]", c.lobby_election_window().as_secs()),
            format!("[default: {}]", c.max_snapshot()),
            format!("[default: {}]", c.udp_buffer()),
            format!("[default: {}]", c.endpoints()),
            format!("[default: {}]", c.snapshot_budget()),
            format!("[default: {}]", c.hooks.queue()),
            format!("[default: {}]", c.hooks.replay()),
            format!("[default: {}ms]", c.hooks.backoff_initial().as_millis()),
            format!("[default: {}s]", c.hooks.backoff_max().as_secs()),
            format!("[default: {}s]", c.hooks.request_timeout().as_secs()),
        ] {
            assert!(help.contains(&expected), "help lacks {expected:?}:\n{help}");
        }
        assert!(matches!(
            c.tls,
            TlsSource::SelfSigned { ref data_dir, .. } if data_dir == Path::new(DEFAULT_DATA_DIR)
        ));
    }

    #[test]
    fn no_flags_give_the_library_defaults() {
        let s = resolve(&cli(&[]), FileConfig::default()).unwrap();
        let d = RelayConfig::default();
        assert_eq!(s.relay.listen, d.listen);
        assert_eq!(s.relay.admin_listen, d.admin_listen);
        assert_eq!(s.relay.tls, d.tls);
        assert_eq!(s.relay.admin_token, None);
        assert_eq!(s.relay.keepalive_timeout(), d.keepalive_timeout());
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.log_level, LevelFilter::INFO);
    }

    #[test]
    fn parses_a_full_config_file() {
        let f = file(
            r#"
            listen = "0.0.0.0:9000"
            admin_listen = "127.0.0.1:9001"
            admin_token = "t0ken"
            data_dir = "/var/lib/baton"
            dev_cert_names = ["relay.example", "10.0.0.5"]
            keepalive_timeout = "5s"
            bind_timeout = "1500ms"
            host_bind_timeout = "2m"
            max_peers_per_allocation = 16
            max_allocations = 100
            max_connections = 200
            max_control_frame = 16384
            max_datagram_payload = 1000
            join_code_len = 8
            join_code_ttl = "1h"
            migration_timeout = "750ms"
            lobby_election_window = "2s"
            max_snapshot = 4096
            snapshot_budget = 8192
            udp_buffer = 1048576
            endpoints = 2
            log_format = "json"
            log_level = "debug"
            "#,
        );
        let s = resolve(&cli(&[]), f).unwrap();
        let r = &s.relay;
        assert_eq!(r.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(r.admin_listen, Some("127.0.0.1:9001".parse().unwrap()));
        assert_eq!(r.admin_token.as_deref(), Some("t0ken"));
        assert_eq!(
            r.tls,
            TlsSource::SelfSigned {
                data_dir: "/var/lib/baton".into(),
                extra_names: vec!["relay.example".into(), "10.0.0.5".into()],
            }
        );
        assert_eq!(r.keepalive_timeout(), Duration::from_secs(5));
        assert_eq!(r.bind_timeout(), Duration::from_millis(1500));
        assert_eq!(r.host_bind_timeout(), Duration::from_secs(120));
        assert_eq!(r.max_peers_per_allocation(), 16);
        assert_eq!(r.max_allocations(), 100);
        assert_eq!(r.max_connections(), 200);
        assert_eq!(r.max_control_frame(), 16384);
        assert_eq!(r.max_datagram_payload(), 1000);
        assert_eq!(r.join_code_len(), 8);
        assert_eq!(r.join_code_ttl(), Duration::from_secs(3600));
        assert_eq!(r.migration_timeout(), Duration::from_millis(750));
        assert_eq!(r.lobby_election_window(), Duration::from_secs(2));
        assert_eq!(r.udp_buffer(), 1 << 20);
        assert_eq!(r.endpoints(), 2);
        assert_eq!((r.max_snapshot(), r.snapshot_budget()), (4096, 8192));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.log_level, LevelFilter::DEBUG);
    }

    #[test]
    fn example_config_in_deploy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.example.toml");
        let f = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        resolve(&cli(&[]), f).unwrap();
    }

    #[test]
    fn unknown_and_mistyped_keys_are_rejected() {
        let err = toml::from_str::<FileConfig>("keepalive = \"10s\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `keepalive`"),
            "{err}"
        );
        let err = toml::from_str::<FileConfig>("keepalive_timeout = 10").unwrap_err();
        assert!(err.to_string().contains("keepalive_timeout"), "{err}");
        let err = toml::from_str::<FileConfig>("keepalive_timeout = \"10\"").unwrap_err();
        assert!(err.to_string().contains("no unit"), "{err}");
        let err = toml::from_str::<FileConfig>("log_format = \"xml\"").unwrap_err();
        assert!(err.to_string().contains("log_format"), "{err}");
    }

    #[test]
    fn config_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = settings(&cli(&["--config", missing.to_str().unwrap()])).unwrap_err();
        assert!(matches!(err, CliError::Read { .. }), "{err}");
        assert!(err.to_string().contains("nope.toml"), "{err}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "listen = \"0.0.0.0:1\"\nbogus = 1\n").unwrap();
        let err = settings(&cli(&["--config", bad.to_str().unwrap()])).unwrap_err();
        assert!(matches!(err, CliError::Parse { .. }), "{err}");
        assert!(
            err.to_string().contains("bad.toml") && err.to_string().contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn file_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "cert = \"tls/cert.pem\"\nkey = \"/abs/key.pem\"\n").unwrap();
        let s = settings(&cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(
            s.relay.tls,
            TlsSource::Pem {
                cert: dir.path().join("tls/cert.pem"),
                key: "/abs/key.pem".into(),
            }
        );
    }

    #[test]
    fn command_line_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nkeepalive_timeout = \"5s\"\nmax_allocations = 7\n\
             no_admin = true\ndev_cert_names = [\"a.example\"]\nlog_level = \"warn\"\n",
        )
        .unwrap();
        let s = settings(&cli(&[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9100",
            "--keepalive-timeout",
            "2s",
            "--admin-listen",
            "127.0.0.1:9101",
            "--dev-cert-name",
            "b.example",
            "--dev-cert-name",
            "c.example",
            "--log-level",
            "TRACE",
        ]))
        .unwrap();
        assert_eq!(s.relay.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(s.relay.keepalive_timeout(), Duration::from_secs(2));
        // Not on the command line: the file's value stands.
        assert_eq!(s.relay.max_allocations(), 7);
        assert_eq!(
            s.relay.admin_listen,
            Some("127.0.0.1:9101".parse().unwrap())
        );
        assert!(matches!(
            &s.relay.tls,
            TlsSource::SelfSigned { extra_names, .. } if extra_names == &["b.example", "c.example"]
        ));
        assert_eq!(s.log_level, LevelFilter::TRACE);

        let f = file("admin_listen = \"127.0.0.1:9001\"");
        assert_eq!(
            resolve(&cli(&["--no-admin"]), f)
                .unwrap()
                .relay
                .admin_listen,
            None
        );
        // --no-admin also wins over an address from the command line or the environment.
        let c = cli(&["--admin-listen", "127.0.0.1:9001", "--no-admin"]);
        assert_eq!(
            resolve(&c, FileConfig::default())
                .unwrap()
                .relay
                .admin_listen,
            None
        );
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--keepalive-timeout", "10ms"], "keepalive_timeout"),
            (&["--bind-timeout", "11m"], "bind_timeout"),
            (&["--host-bind-timeout", "2h"], "host_bind_timeout"),
            (&["--migration-timeout", "1h"], "migration_timeout"),
            (&["--lobby-election-window", "2m"], "lobby_election_window"),
            (&["--max-snapshot", "10"], "max_snapshot"),
            (&["--udp-buffer", "10"], "udp_buffer"),
            (&["--endpoints", "0"], "endpoints"),
            (&["--snapshot-budget", "10"], "snapshot_budget"),
            (
                &["--max-peers-per-allocation", "1"],
                "max_peers_per_allocation",
            ),
            (&["--max-allocations", "0"], "max_allocations"),
            (&["--max-connections", "0"], "max_connections"),
            (&["--max-control-frame", "100"], "max_control_frame"),
            (&["--max-datagram-payload", "1151"], "max_datagram_payload"),
            (&["--join-code-len", "3"], "join_code_len"),
            (&["--join-code-ttl", "31d"], "join_code_ttl"),
            (&["--cert", "c.pem"], "key"),
            (&["--key", "k.pem"], "cert"),
            (
                &["--cert", "c.pem", "--key", "k.pem", "--dev-cert-name", "x"],
                "dev_cert_names",
            ),
            (&["--admin-token", " "], "admin_token"),
            (&["--admin-token", "t", "--no-admin"], "admin_token"),
        ];
        for (args, setting) in cases {
            let err = resolve(&cli(args), FileConfig::default()).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(setting), "{args:?}: {message}");
            assert_eq!(setting_of(err), *setting, "{args:?}");
        }
        let err = resolve(&cli(&[]), file("log_level = \"loud\"")).unwrap_err();
        assert_eq!(setting_of(err), "log_level");
        let err = resolve(
            &cli(&[]),
            file("no_admin = true\nadmin_listen = \"127.0.0.1:1\""),
        )
        .unwrap_err();
        assert_eq!(setting_of(err), "no_admin");
        let err = resolve(&cli(&[]), file("max_datagram_payload = 5000")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid max_datagram_payload: must be between 1 and 1150"
        );
    }

    #[test]
    fn command_line_syntax_errors_name_the_flag() {
        for args in [
            &["--listen", "nowhere"][..],
            &["--keepalive-timeout", "10"],
            &["--keepalive-timeout", "ten seconds"],
            &["--max-peers-per-allocation", "70000"],
            &["--log-format", "xml"],
            &["--log-level", "loud"],
        ] {
            let err =
                Cli::try_parse_from(std::iter::once("baton-relay").chain(args.iter().copied()))
                    .unwrap_err()
                    .to_string();
            let flag = args[0];
            assert!(
                err.contains(flag) || err.contains(args[args.len() - 2]),
                "{args:?}: {err}"
            );
        }
    }

    const SECRET: &str = "0123456789abcdef-secret";

    #[test]
    fn hook_settings_from_the_file() {
        let f = file(&format!(
            r#"
            webhooks = ["https://lobby.example/hooks/baton", "http://127.0.0.1:8080/h"]
            webhook_secret = "{SECRET}"
            hook_queue = 50
            webhook_backoff_initial = "250ms"
            webhook_backoff_max = "1m"
            webhook_timeout = "2s"
            event_replay = 77
            event_stream_token = "stream-t0ken"
            "#
        ));
        let s = resolve(&cli(&[]), f).unwrap();
        let h = &s.relay.hooks;
        let urls: Vec<_> = h.webhooks().iter().map(|u| u.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://lobby.example/hooks/baton",
                "http://127.0.0.1:8080/h"
            ]
        );
        assert_eq!(h.webhook_secret(), Some(SECRET));
        assert_eq!(h.queue(), 50);
        assert_eq!(h.backoff_initial(), Duration::from_millis(250));
        assert_eq!(h.backoff_max(), Duration::from_secs(60));
        assert_eq!(h.request_timeout(), Duration::from_secs(2));
        assert_eq!(h.replay(), 77);
        assert_eq!(h.stream_token(), Some("stream-t0ken"));
        // Secrets stay out of debug output.
        let debug = format!("{h:?}");
        assert!(
            !debug.contains(SECRET) && !debug.contains("stream-t0ken"),
            "{debug}"
        );
    }

    #[test]
    fn hook_flags_override_the_file_and_default_sensibly() {
        let s = resolve(&cli(&[]), FileConfig::default()).unwrap();
        let d = crate::config::HooksConfig::default();
        assert_eq!(s.relay.hooks, d);
        assert!(d.webhooks().is_empty());
        assert_eq!(d.queue(), 10_000);
        assert_eq!(d.replay(), 10_000);
        assert_eq!(d.backoff_initial(), Duration::from_millis(100));
        assert_eq!(d.backoff_max(), Duration::from_secs(30));
        assert_eq!(d.request_timeout(), Duration::from_secs(5));
        assert_eq!(d.stream_token(), None);

        let f = file(&format!(
            "webhooks = [\"http://file.example/h\"]\nwebhook_secret = \"{SECRET}\"\n\
             hook_queue = 5\nevent_replay = 6\nwebhook_backoff_max = \"10s\"\n"
        ));
        // The environment form, BATON_WEBHOOKS=a,b, goes through the same delimiter.
        let c = cli(&[
            "--webhook",
            "http://127.0.0.1:9/a,https://lobby.example/b",
            "--webhook",
            "http://[::1]:9/c",
            "--hook-queue",
            "7",
            "--event-replay",
            "8",
            "--webhook-backoff-initial",
            "20ms",
            "--webhook-timeout",
            "300ms",
            "--event-stream-token",
            "s",
        ]);
        let s = resolve(&c, f).unwrap();
        let h = &s.relay.hooks;
        let urls: Vec<_> = h.webhooks().iter().map(|u| u.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:9/a",
                "https://lobby.example/b",
                "http://[::1]:9/c"
            ]
        );
        // The secret comes from the file, the rest from the command line.
        assert_eq!(h.webhook_secret(), Some(SECRET));
        assert_eq!(h.queue(), 7);
        assert_eq!(h.replay(), 8);
        assert_eq!(h.backoff_initial(), Duration::from_millis(20));
        assert_eq!(h.backoff_max(), Duration::from_secs(10));
        assert_eq!(h.request_timeout(), Duration::from_millis(300));
        assert_eq!(h.stream_token(), Some("s"));
    }

    #[test]
    fn invalid_hook_settings_name_the_setting() {
        let secret = format!("--webhook-secret={SECRET}");
        let cases: &[(&[&str], &str)] = &[
            (&["--webhook", "http://127.0.0.1:9/h"], "webhook_secret"),
            (&[&secret], "webhook_secret"),
            (
                &[
                    "--webhook",
                    "http://127.0.0.1:9/h",
                    "--webhook-secret",
                    "short",
                ],
                "webhook_secret",
            ),
            (
                &[
                    "--webhook",
                    "http://a.example/h,http://a.example/h",
                    &secret,
                ],
                "webhooks",
            ),
            (&["--hook-queue", "0"], "hook_queue"),
            (&["--event-replay", "0"], "event_replay"),
            (
                &["--webhook-backoff-initial", "1ms"],
                "webhook_backoff_initial",
            ),
            (&["--webhook-backoff-max", "50ms"], "webhook_backoff_max"),
            (&["--webhook-backoff-max", "2h"], "webhook_backoff_max"),
            (&["--webhook-timeout", "10m"], "webhook_timeout"),
            (&["--event-stream-token", " "], "event_stream_token"),
            (
                &["--event-stream-token", "t", "--no-admin"],
                "event_stream_token",
            ),
        ];
        for (args, setting) in cases {
            let err = resolve(&cli(args), FileConfig::default()).unwrap_err();
            assert_eq!(setting_of(err), *setting, "{args:?}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("http://h{i}.example/")).collect();
        let err = resolve(
            &cli(&["--webhook", &many.join(","), &secret]),
            FileConfig::default(),
        )
        .unwrap_err();
        assert_eq!(setting_of(err), "webhooks");
        for bad in ["ftp://lobby.example/h", "not a url", "/relative"] {
            let f = file(&format!(
                "webhooks = [{bad:?}]\nwebhook_secret = \"{SECRET}\"\n"
            ));
            let err = resolve(&cli(&[]), f).unwrap_err();
            assert_eq!(setting_of(err), "webhooks", "{bad}");
        }
        // On the command line a bad URL is a syntax error naming the flag.
        let err = Cli::try_parse_from(["baton-relay", "--webhook", "ftp://x.example/"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--webhook"), "{err}");
        assert!(parse_webhook_url("https://lobby.example/h?token=x").is_ok());
    }

    #[test]
    fn parses_durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86_400)),
            ("1m30s", Duration::from_secs(90)),
            (" 1h 30m ", Duration::from_secs(5400)),
            ("10 s", Duration::from_secs(10)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "10sec",
            "-1s",
            "5x",
            "99999999999999999999s",
            "1s5",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10sec").unwrap_err().contains("\"sec\""));
    }

    #[test]
    fn boolean_flag_reads_common_spellings() {
        // The same parser reads BATON_NO_ADMIN; the command line form covers its syntax.
        let parser = BoolishValueParser::new();
        let cmd = Cli::command();
        for (text, want) in [
            ("1", true),
            ("true", true),
            ("yes", true),
            ("0", false),
            ("false", false),
            ("off", false),
        ] {
            let got = clap::builder::TypedValueParser::parse_ref(
                &parser,
                &cmd,
                None,
                std::ffi::OsStr::new(text),
            )
            .unwrap();
            assert_eq!(got, want, "{text}");
        }
        assert!(cli(&["--no-admin"]).no_admin);
    }
}
