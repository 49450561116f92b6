//! The relay's library configuration: a plain struct whose fields all have defaults
//! (see [`crate::defaults`]) and whose setters validate. The binary turns its command line and
//! TOML file into one of these in a single function.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::defaults;

/// A setting outside its accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    /// The setting's name as in the config file.
    pub setting: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// Where the relay's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Development default: a self-signed certificate generated on first start and kept in
    /// `data_dir` (reused afterwards, so clients can pin its fingerprint).
    SelfSigned {
        /// Directory holding `dev-cert.pem` and `dev-key.pem`.
        data_dir: PathBuf,
        /// Host names or IP addresses put in the certificate besides `localhost`, `127.0.0.1`
        /// and `::1`.
        extra_names: Vec<String>,
    },
    /// Production: a certificate chain and private key in PEM files.
    Pem {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// PKCS#8, PKCS#1 or SEC1 private key.
        key: PathBuf,
    },
}

/// Everything a relay needs to run. `RelayConfig::default()` is a working development relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Admin HTTP address; `None` disables the admin server.
    pub admin_listen: Option<SocketAddr>,
    /// Certificate source.
    pub tls: TlsSource,
    /// Bearer token for the admin API's mutating endpoints; `None` leaves them open (fine when
    /// the admin server listens on loopback only).
    pub admin_token: Option<String>,
    /// Lobby hooks: webhooks and the event stream.
    pub hooks: HooksConfig,
    keepalive_timeout: Duration,
    bind_timeout: Duration,
    host_bind_timeout: Duration,
    max_peers_per_allocation: u16,
    max_allocations: usize,
    max_connections: usize,
    max_control_frame: usize,
    max_datagram_payload: usize,
    join_code_len: usize,
    join_code_ttl: Duration,
    migration_timeout: Duration,
    lobby_election_window: Duration,
    max_snapshot: usize,
    snapshot_budget: usize,
    udp_buffer: usize,
    endpoints: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: defaults::LISTEN,
            admin_listen: Some(defaults::ADMIN_LISTEN),
            tls: TlsSource::SelfSigned {
                data_dir: PathBuf::from("baton-data"),
                extra_names: Vec::new(),
            },
            admin_token: None,
            hooks: HooksConfig::default(),
            keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
            bind_timeout: defaults::BIND_TIMEOUT,
            host_bind_timeout: defaults::HOST_BIND_TIMEOUT,
            max_peers_per_allocation: defaults::MAX_PEERS_PER_ALLOCATION,
            max_allocations: defaults::MAX_ALLOCATIONS,
            max_connections: defaults::MAX_CONNECTIONS,
            max_control_frame: defaults::MAX_CONTROL_FRAME,
            max_datagram_payload: defaults::MAX_DATAGRAM_PAYLOAD,
            join_code_len: defaults::JOIN_CODE_LEN,
            join_code_ttl: defaults::JOIN_CODE_TTL,
            migration_timeout: defaults::MIGRATION_TIMEOUT,
            lobby_election_window: defaults::LOBBY_ELECTION_WINDOW,
            max_snapshot: defaults::MAX_SNAPSHOT,
            snapshot_budget: defaults::SNAPSHOT_BUDGET,
            udp_buffer: defaults::UDP_BUFFER,
            endpoints: defaults::ENDPOINTS,
        }
    }
}

macro_rules! getter {
    ($name:ident: $ty:ty, $doc:expr) => {
        #[doc = $doc]
        pub fn $name(&self) -> $ty {
            self.$name
        }
    };
}

impl RelayConfig {
    getter!(keepalive_timeout: Duration, "A client silent this long is removed (QUIC idle timeout).");
    getter!(bind_timeout: Duration, "Time a new connection has to create or join an allocation.");
    getter!(host_bind_timeout: Duration, "Time the host of a lobby-reserved allocation has to bind.");
    getter!(max_peers_per_allocation: u16, "Members per allocation, host included (default and cap).");
    getter!(max_allocations: usize, "Allocations held at once.");
    getter!(max_connections: usize, "Concurrent QUIC connections.");
    getter!(max_control_frame: usize, "Longest accepted control frame, in bytes.");
    getter!(max_datagram_payload: usize, "Largest datagram payload carried, in bytes.");
    getter!(join_code_len: usize, "Characters in issued join codes.");
    getter!(join_code_ttl: Duration, "Join-code time to live (default and cap).");
    getter!(migration_timeout: Duration, "Time an elected member has to open the successor allocation.");
    getter!(lobby_election_window: Duration, "Time a lobby has to name the next host before the relay elects one.");
    getter!(max_snapshot: usize, "Largest migration snapshot a host may upload, in bytes.");
    getter!(snapshot_budget: usize, "Bytes all stored snapshots may take together.");
    getter!(udp_buffer: usize, "Requested kernel receive and send buffer of each QUIC socket, in bytes.");
    getter!(endpoints: usize, "QUIC endpoints sharing the listen port (SO_REUSEPORT when more than one).");

    /// Sets the requested socket buffer size (64 KiB to 1 GiB).
    pub fn set_udp_buffer(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if !(64 << 10..=1 << 30).contains(&v) {
            return Err(invalid("udp_buffer", "must be between 64 KiB and 1 GiB"));
        }
        self.udp_buffer = v;
        Ok(self)
    }

    /// Sets the number of QUIC endpoints (1 to 64).
    pub fn set_endpoints(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if !(1..=64).contains(&v) {
            return Err(invalid("endpoints", "must be between 1 and 64"));
        }
        self.endpoints = v;
        Ok(self)
    }

    /// Sets the migration timeout (100 ms to 10 min).
    pub fn set_migration_timeout(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_millis(100) || v > Duration::from_secs(600) {
            return Err(invalid(
                "migration_timeout",
                "must be between 100 ms and 10 min",
            ));
        }
        self.migration_timeout = v;
        Ok(self)
    }

    /// Sets the lobby election window (0 to 1 min; 0 = the relay elects at once).
    pub fn set_lobby_election_window(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v > Duration::from_secs(60) {
            return Err(invalid("lobby_election_window", "must be at most 1 min"));
        }
        self.lobby_election_window = v;
        Ok(self)
    }

    /// Sets the snapshot size limit (1 KiB to 256 MiB).
    pub fn set_max_snapshot(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if !(1024..=256 << 20).contains(&v) {
            return Err(invalid("max_snapshot", "must be between 1 KiB and 256 MiB"));
        }
        self.max_snapshot = v;
        Ok(self)
    }

    /// Sets the total snapshot memory budget (at least one maximum-size snapshot).
    pub fn set_snapshot_budget(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if v < self.max_snapshot {
            return Err(invalid(
                "snapshot_budget",
                "must hold at least one max_snapshot",
            ));
        }
        self.snapshot_budget = v;
        Ok(self)
    }

    /// Sets the keepalive timeout (100 ms to 10 min).
    pub fn set_keepalive_timeout(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_millis(100) || v > Duration::from_secs(600) {
            return Err(invalid(
                "keepalive_timeout",
                "must be between 100 ms and 10 min",
            ));
        }
        self.keepalive_timeout = v;
        Ok(self)
    }

    /// Sets the bind timeout (100 ms to 10 min).
    pub fn set_bind_timeout(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_millis(100) || v > Duration::from_secs(600) {
            return Err(invalid("bind_timeout", "must be between 100 ms and 10 min"));
        }
        self.bind_timeout = v;
        Ok(self)
    }

    /// Sets the host bind timeout of lobby-reserved allocations (100 ms to 1 h).
    pub fn set_host_bind_timeout(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_millis(100) || v > Duration::from_secs(3600) {
            return Err(invalid(
                "host_bind_timeout",
                "must be between 100 ms and 1 h",
            ));
        }
        self.host_bind_timeout = v;
        Ok(self)
    }

    /// Sets the members-per-allocation cap (2 to the protocol's limit).
    pub fn set_max_peers_per_allocation(&mut self, v: u16) -> Result<&mut Self, ConfigError> {
        if !(2..=baton_protocol::MAX_PEERS_LIMIT).contains(&v) {
            return Err(invalid(
                "max_peers_per_allocation",
                format!("must be between 2 and {}", baton_protocol::MAX_PEERS_LIMIT),
            ));
        }
        self.max_peers_per_allocation = v;
        Ok(self)
    }

    /// Sets the allocation cap (at least 1).
    pub fn set_max_allocations(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if v == 0 {
            return Err(invalid("max_allocations", "must be at least 1"));
        }
        self.max_allocations = v;
        Ok(self)
    }

    /// Sets the connection cap (at least 1).
    pub fn set_max_connections(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if v == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        self.max_connections = v;
        Ok(self)
    }

    /// Sets the control frame cap (9 KiB, enough for every message, to 1 MiB).
    pub fn set_max_control_frame(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        let min = baton_protocol::frame::MIN_MAX_FRAME_LEN;
        if !(min..=1 << 20).contains(&v) {
            return Err(invalid(
                "max_control_frame",
                format!("must be between {min} and 1048576"),
            ));
        }
        self.max_control_frame = v;
        Ok(self)
    }

    /// Sets the datagram payload cap (1 to the protocol's promise at minimum MTU; a larger value
    /// could not be delivered on every path).
    pub fn set_max_datagram_payload(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        let max = baton_protocol::MAX_DATAGRAM_PAYLOAD;
        if !(1..=max).contains(&v) {
            return Err(invalid(
                "max_datagram_payload",
                format!("must be between 1 and {max}"),
            ));
        }
        self.max_datagram_payload = v;
        Ok(self)
    }

    /// Sets the join-code length (4 to 12).
    pub fn set_join_code_len(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        use baton_protocol::join_code::{MAX_LEN, MIN_LEN};
        if !(MIN_LEN..=MAX_LEN).contains(&v) {
            return Err(invalid(
                "join_code_len",
                format!("must be between {MIN_LEN} and {MAX_LEN}"),
            ));
        }
        self.join_code_len = v;
        Ok(self)
    }

    /// Sets the join-code time to live (1 s to 30 days).
    pub fn set_join_code_ttl(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_secs(1) || v > Duration::from_secs(30 * 24 * 3600) {
            return Err(invalid("join_code_ttl", "must be between 1 s and 30 days"));
        }
        self.join_code_ttl = v;
        Ok(self)
    }
}

/// Most webhook URLs a relay sends to; each has its own task and queue.
pub const MAX_WEBHOOKS: usize = 16;

/// Shortest accepted webhook secret: HMAC signatures made with a shorter one could be brute
/// forced offline from a captured request.
pub const MIN_WEBHOOK_SECRET: usize = 16;

/// Lobby hooks (see [`crate::hooks`]): where webhooks go and how they are signed and retried,
/// and the event stream's replay buffer and token. `HooksConfig::default()` sends no webhooks
/// and keeps the last 10,000 events for the stream.
#[derive(Clone, PartialEq, Eq)]
pub struct HooksConfig {
    webhooks: Vec<reqwest::Url>,
    webhook_secret: Option<String>,
    stream_token: Option<String>,
    queue: usize,
    replay: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
    request_timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            webhooks: Vec::new(),
            webhook_secret: None,
            stream_token: None,
            queue: defaults::HOOK_QUEUE,
            replay: defaults::EVENT_REPLAY,
            backoff_initial: defaults::WEBHOOK_BACKOFF_INITIAL,
            backoff_max: defaults::WEBHOOK_BACKOFF_MAX,
            request_timeout: defaults::WEBHOOK_TIMEOUT,
        }
    }
}

/// Secrets and URL credentials stay out of logs.
impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("HooksConfig")
            .field(
                "webhooks",
                &self
                    .webhooks
                    .iter()
                    .map(crate::hooks::redact)
                    .collect::<Vec<_>>(),
            )
            .field("webhook_secret", &redacted(&self.webhook_secret))
            .field("stream_token", &redacted(&self.stream_token))
            .field("queue", &self.queue)
            .field("replay", &self.replay)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl HooksConfig {
    getter!(queue: usize, "Events queued per webhook before new ones are dropped.");
    getter!(replay: usize, "Events the event stream keeps for subscribers that resume.");
    getter!(backoff_initial: Duration, "Delay before the first retry of a failed webhook request.");
    getter!(backoff_max: Duration, "Longest delay between webhook retries.");
    getter!(request_timeout: Duration, "Time one webhook request may take, connecting included.");

    /// Webhook URLs, each sent every event.
    pub fn webhooks(&self) -> &[reqwest::Url] {
        &self.webhooks
    }

    /// The HMAC-SHA256 key webhook requests are signed with (set with the webhooks).
    pub fn webhook_secret(&self) -> Option<&str> {
        self.webhook_secret.as_deref()
    }

    /// The bearer token of `GET /v1/events`; when `None` the admin token guards it, and when
    /// that is `None` too the stream is open like the rest of the admin API.
    pub fn stream_token(&self) -> Option<&str> {
        self.stream_token.as_deref()
    }

    /// Sets the webhook URLs (http or https, at most [`MAX_WEBHOOKS`], no duplicates) and the
    /// secret their requests are signed with (at least [`MIN_WEBHOOK_SECRET`] characters).
    pub fn set_webhooks(
        &mut self,
        urls: Vec<reqwest::Url>,
        secret: impl Into<String>,
    ) -> Result<&mut Self, ConfigError> {
        let secret = secret.into();
        if urls.is_empty() {
            return Err(invalid("webhook_secret", "is set but no webhook is"));
        }
        if urls.len() > MAX_WEBHOOKS {
            return Err(invalid("webhooks", format!("at most {MAX_WEBHOOKS} URLs")));
        }
        for (i, url) in urls.iter().enumerate() {
            let shown = crate::hooks::redact(url);
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid(
                    "webhooks",
                    format!("{shown}: scheme must be http or https"),
                ));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid("webhooks", format!("{shown}: no host")));
            }
            if urls[..i].contains(url) {
                return Err(invalid("webhooks", format!("{shown} is listed twice")));
            }
        }
        if secret.trim().chars().count() < MIN_WEBHOOK_SECRET {
            return Err(invalid(
                "webhook_secret",
                format!("must be at least {MIN_WEBHOOK_SECRET} characters"),
            ));
        }
        self.webhooks = urls;
        self.webhook_secret = Some(secret);
        Ok(self)
    }

    /// Sets (or clears) the event stream's own bearer token; it must not be blank.
    pub fn set_stream_token(&mut self, token: Option<String>) -> Result<&mut Self, ConfigError> {
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid("event_stream_token", "must not be empty"));
        }
        self.stream_token = token;
        Ok(self)
    }

    /// Sets the per-webhook queue length (1 to 1,000,000 events).
    pub fn set_queue(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if !(1..=1_000_000).contains(&v) {
            return Err(invalid("hook_queue", "must be between 1 and 1000000"));
        }
        self.queue = v;
        Ok(self)
    }

    /// Sets the event stream's replay buffer (1 to 1,000,000 events).
    pub fn set_replay(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if !(1..=1_000_000).contains(&v) {
            return Err(invalid("event_replay", "must be between 1 and 1000000"));
        }
        self.replay = v;
        Ok(self)
    }

    /// Sets the retry backoff: the first delay (10 ms to 1 min), doubled after each failure up
    /// to `max` (at least `initial`, at most 1 h).
    pub fn set_backoff(
        &mut self,
        initial: Duration,
        max: Duration,
    ) -> Result<&mut Self, ConfigError> {
        if initial < Duration::from_millis(10) || initial > Duration::from_secs(60) {
            return Err(invalid(
                "webhook_backoff_initial",
                "must be between 10 ms and 1 min",
            ));
        }
        if max < initial || max > Duration::from_secs(3600) {
            return Err(invalid(
                "webhook_backoff_max",
                "must be between webhook_backoff_initial and 1 h",
            ));
        }
        self.backoff_initial = initial;
        self.backoff_max = max;
        Ok(self)
    }

    /// Sets the webhook request timeout (100 ms to 5 min).
    pub fn set_request_timeout(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_millis(100) || v > Duration::from_secs(300) {
            return Err(invalid(
                "webhook_timeout",
                "must be between 100 ms and 5 min",
            ));
        }
        self.request_timeout = v;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = RelayConfig::default();
        assert_eq!(c.keepalive_timeout(), Duration::from_secs(10));
        assert!(c.max_peers_per_allocation() >= 150);
        assert_eq!(c.max_datagram_payload(), 1150);
    }

    #[test]
    fn setters_reject_out_of_range_values() {
        let mut c = RelayConfig::default();
        assert!(c.set_max_datagram_payload(1151).is_err());
        assert!(c.set_max_peers_per_allocation(1).is_err());
        assert!(c.set_keepalive_timeout(Duration::from_millis(10)).is_err());
        assert!(c.set_max_control_frame(10).is_err());
        assert!(c.set_join_code_len(3).is_err());
        c.set_max_datagram_payload(500)
            .unwrap()
            .set_join_code_len(8)
            .unwrap();
        assert_eq!(c.max_datagram_payload(), 500);
        assert_eq!(c.join_code_len(), 8);
    }
}
