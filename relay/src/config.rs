//! The relay's library configuration: a plain struct whose fields all have defaults
//! (see [`crate::defaults`]) and whose setters validate against the ranges declared there
//! (`defaults::*_RANGE`, checked by `in_range`, the one place a range check lives). The binary
//! turns its command line and TOML file into one of these in `cli::resolve`.

use crate::auth::AuthSecrets;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
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

/// An error naming `setting`.
pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// A setting's value as the command line and config file write it: durations with a unit
/// (`10s`), the rest as text. Help, errors and the README show values this way.
pub(crate) trait Show {
    /// The written form; it parses back to the same value.
    fn show(&self) -> String;
}

impl Show for Duration {
    /// The largest unit that writes the duration exactly: `100ms`, `10s`, `1m`, `1d`.
    fn show(&self) -> String {
        let ms = self.as_millis();
        if ms == 0 {
            return "0s".to_owned();
        }
        for (unit, len) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms % len == 0 {
                return format!("{}{unit}", ms / len);
            }
        }
        format!("{ms}ms")
    }
}

macro_rules! show_by_display {
    ($($ty:ty),*) => {$(
        impl Show for $ty {
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
show_by_display!(usize, u16, bool, SocketAddr, &str);

/// A value type with a least and a greatest value, so an accepted range can say "at least" or
/// "at most" when one end is open.
pub(crate) trait Bounded: Show + PartialOrd + Sized {
    /// The least value of the type.
    const MIN: Self;
    /// The greatest value of the type.
    const MAX: Self;
}

impl Bounded for usize {
    const MIN: Self = usize::MIN;
    const MAX: Self = usize::MAX;
}

impl Bounded for u16 {
    const MIN: Self = u16::MIN;
    const MAX: Self = u16::MAX;
}

impl Bounded for Duration {
    const MIN: Self = Duration::ZERO;
    const MAX: Self = Duration::MAX;
}

/// An accepted range as `--help` shows it: `100ms to 10m`, `at least 1`, `at most 1m`.
pub(crate) fn range_text<T: Bounded>(range: &RangeInclusive<T>) -> String {
    match (*range.start() == T::MIN, *range.end() == T::MAX) {
        (false, true) => format!("at least {}", range.start().show()),
        (true, false) => format!("at most {}", range.end().show()),
        _ => format!("{} to {}", range.start().show(), range.end().show()),
    }
}

/// `v` if `range` holds it, else an error naming `setting` and the range.
pub(crate) fn in_range<T: Bounded>(
    setting: &'static str,
    v: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&v) {
        return Ok(v);
    }
    let text = range_text(&range);
    Err(invalid(
        setting,
        match text.split_once(" to ") {
            Some((low, high)) => format!("must be between {low} and {high}"),
            None => format!("must be {text}"),
        },
    ))
}

/// A setter that checks its value against one of the `defaults::*_RANGE` constants.
macro_rules! ranged_setter {
    ($(#[$doc:meta])* $set:ident, $field:ident: $ty:ty, $setting:literal, $range:expr) => {
        $(#[$doc])*
        pub fn $set(&mut self, v: $ty) -> Result<&mut Self, ConfigError> {
            self.$field = in_range($setting, v, $range)?;
            Ok(self)
        }
    };
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

/// A fleet node's settings: the directory it shares with the other nodes, how clients reach it,
/// and the secret every node verifies reconnect tokens and migration tickets with.
#[derive(Clone)]
pub struct FleetConfig {
    /// The directory's URL: `redis://[:password@]host:port/db`, or `rediss://` for TLS.
    pub directory: String,
    /// This node's id in the directory: 1-64 characters of `A-Z a-z 0-9 . _ -`, unique in the
    /// fleet.
    pub node_id: String,
    /// The UDP address clients reach this node at (what other nodes redirect them to). Port
    /// 0 stands for the port the relay binds (for relays on a port the kernel picks).
    pub public_addr: SocketAddr,
    /// The name this node's certificate is valid for, sent with redirects.
    pub server_name: String,
    /// A region label, written in the directory and in `baton_node_info`; `POST
    /// /v1/allocations` with `"region"` places a reservation on a node of that region.
    pub region: String,
    /// Key of reconnect tokens and migration tickets, the same on every node (at least 32
    /// bytes), so a token issued by one node verifies on another.
    pub fleet_secret: String,
}

/// Never prints the directory URL (it may hold a password) or the fleet secret.
impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("node_id", &self.node_id)
            .field("public_addr", &self.public_addr)
            .field("server_name", &self.server_name)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Where the relay's probe endpoint listens: a second QUIC endpoint, on its own UDP socket on
/// the listen address's IP, that answers `Probe` with the address it sees, so that a client
/// compares it with the main port's `ObservedAddress` and learns its NAT kind (SPEC section
/// 17.5). Written `auto`, `off` or an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum ProbeListen {
    /// The listen address with the next port (port 0, one the kernel picks, when the listen
    /// port is 0).
    #[default]
    Auto,
    /// No probe endpoint: `ObservedAddress` names probe port 0 and clients do not measure.
    Off,
    /// This address.
    Addr(SocketAddr),
}

impl ProbeListen {
    /// The address to bind for a relay listening on `listen`; `None` when off. `auto` with
    /// listen port 65535 has no next port: an error.
    pub fn resolve(self, listen: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
        match self {
            ProbeListen::Off => Ok(None),
            ProbeListen::Addr(addr) => Ok(Some(addr)),
            ProbeListen::Auto => {
                let port = match listen.port() {
                    0 => 0,
                    port => port.checked_add(1).ok_or_else(|| {
                        invalid(
                            "probe_listen",
                            "auto needs the port after listen's; set an address or off",
                        )
                    })?,
                };
                Ok(Some(SocketAddr::new(listen.ip(), port)))
            }
        }
    }
}

impl fmt::Display for ProbeListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeListen::Auto => f.write_str("auto"),
            ProbeListen::Off => f.write_str("off"),
            ProbeListen::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

impl std::str::FromStr for ProbeListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(ProbeListen::Auto),
            "off" => Ok(ProbeListen::Off),
            other => other
                .parse()
                .map(ProbeListen::Addr)
                .map_err(|_| format!("{other:?} is neither auto, off nor an IP:PORT address")),
        }
    }
}

impl TryFrom<String> for ProbeListen {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl Show for ProbeListen {
    fn show(&self) -> String {
        self.to_string()
    }
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
    /// Secrets lobbies mint client credentials with (SPEC section 16); empty leaves the relay
    /// open to anyone who can reach it.
    pub auth_secrets: AuthSecrets,
    /// Limits of the admin HTTP server.
    pub admin_limits: AdminLimits,
    /// Fleet mode: this node's place in a fleet sharing one directory; `None` runs a single
    /// relay with everything in-process.
    pub fleet: Option<FleetConfig>,
    /// A fleet node's admin API as other nodes reach it, `host:port` (an IP address or a DNS
    /// name), published in the directory: `POST /v1/allocations` on another node forwards the
    /// reservations it places here to this address. `None`: `admin_listen` when it names one
    /// address, else the IP of the fleet's `public_addr` with the admin port bound.
    pub admin_advertise: Option<String>,
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
    host_loss_timeout: Duration,
    host_loss_timeout_min: Duration,
    drain_timeout: Duration,
    lobby_election_window: Duration,
    max_snapshot: usize,
    snapshot_budget: usize,
    udp_buffer: usize,
    endpoints: usize,
    client_datagrams_per_second: usize,
    client_bytes_per_second: usize,
    allocation_bytes_per_second: usize,
    client_requests_per_second: usize,
    join_failure_burst: usize,
    join_failure_refill: Duration,
    relay_join_failure_burst: usize,
    relay_join_failures_per_second: usize,
    max_connections_per_ipv4_address: usize,
    max_connections_per_ipv4_24: usize,
    max_connections_per_ipv6_64: usize,
    max_connections_per_ipv6_48: usize,
    handshake_retry_threshold: usize,
    allow_direct: bool,
    probe_listen: ProbeListen,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: defaults::LISTEN,
            admin_listen: Some(defaults::ADMIN_LISTEN),
            tls: TlsSource::SelfSigned {
                data_dir: PathBuf::from(defaults::DATA_DIR),
                extra_names: Vec::new(),
            },
            admin_token: None,
            hooks: HooksConfig::default(),
            auth_secrets: AuthSecrets::default(),
            admin_limits: AdminLimits::default(),
            fleet: None,
            admin_advertise: None,
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
            host_loss_timeout: defaults::HOST_LOSS_TIMEOUT,
            host_loss_timeout_min: defaults::HOST_LOSS_TIMEOUT_MIN,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            lobby_election_window: defaults::LOBBY_ELECTION_WINDOW,
            max_snapshot: defaults::MAX_SNAPSHOT,
            snapshot_budget: defaults::SNAPSHOT_BUDGET,
            udp_buffer: defaults::UDP_BUFFER,
            endpoints: defaults::ENDPOINTS,
            client_datagrams_per_second: defaults::CLIENT_DATAGRAMS_PER_SECOND,
            client_bytes_per_second: defaults::CLIENT_BYTES_PER_SECOND,
            allocation_bytes_per_second: defaults::ALLOCATION_BYTES_PER_SECOND,
            client_requests_per_second: defaults::CLIENT_REQUESTS_PER_SECOND,
            join_failure_burst: defaults::JOIN_FAILURE_BURST,
            join_failure_refill: defaults::JOIN_FAILURE_REFILL,
            relay_join_failure_burst: defaults::RELAY_JOIN_FAILURE_BURST,
            relay_join_failures_per_second: defaults::RELAY_JOIN_FAILURES_PER_SECOND,
            max_connections_per_ipv4_address: defaults::MAX_CONNECTIONS_PER_IPV4_ADDRESS,
            max_connections_per_ipv4_24: defaults::MAX_CONNECTIONS_PER_IPV4_24,
            max_connections_per_ipv6_64: defaults::MAX_CONNECTIONS_PER_IPV6_64,
            max_connections_per_ipv6_48: defaults::MAX_CONNECTIONS_PER_IPV6_48,
            handshake_retry_threshold: defaults::HANDSHAKE_RETRY_THRESHOLD,
            allow_direct: defaults::ALLOW_DIRECT,
            probe_listen: ProbeListen::Auto,
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
    getter!(host_loss_timeout: Duration, "How long a host may be silent before it is lost, unless its allocation asked otherwise.");
    getter!(host_loss_timeout_min: Duration, "The shortest host-loss timeout an allocation may ask for.");
    getter!(drain_timeout: Duration, "On SIGTERM, how long a fleet node drains before it stops; 0 stops at once.");
    getter!(lobby_election_window: Duration, "Time a lobby has to name the next host before the relay elects one.");
    getter!(max_snapshot: usize, "Largest migration snapshot a host may upload, in bytes.");
    getter!(snapshot_budget: usize, "Bytes all stored snapshots may take together.");
    getter!(allow_direct: bool, "Whether the relay signals direct paths between members (SPEC section 17).");
    getter!(probe_listen: ProbeListen, "Where the probe endpoint listens (SPEC section 17.5): auto, off or an address.");
    getter!(udp_buffer: usize, "Requested kernel receive and send buffer of each QUIC socket, in bytes.");
    getter!(endpoints: usize, "QUIC endpoints sharing the listen port (SO_REUSEPORT when more than one).");
    getter!(client_datagrams_per_second: usize, "Datagrams a client may send per second.");
    getter!(client_bytes_per_second: usize, "Payload bytes a client may send per second.");
    getter!(allocation_bytes_per_second: usize, "Payload bytes an allocation may have delivered per second; 0 is no cap.");
    getter!(client_requests_per_second: usize, "Control requests a client may make per second after its burst.");
    getter!(join_failure_burst: usize, "Failed joins a client (IPv4 address, IPv6 /64) may make in a burst.");
    getter!(join_failure_refill: Duration, "A client regains one failed join per this interval.");
    getter!(relay_join_failure_burst: usize, "Failed joins the whole relay allows in a burst.");
    getter!(relay_join_failures_per_second: usize, "Failed joins the whole relay allows per second after its burst.");
    getter!(max_connections_per_ipv4_address: usize, "Connections (half-open or established) per IPv4 address.");
    getter!(max_connections_per_ipv4_24: usize, "Connections (half-open or established) per IPv4 /24.");
    getter!(max_connections_per_ipv6_64: usize, "Connections (half-open or established) per IPv6 /64.");
    getter!(max_connections_per_ipv6_48: usize, "Connections (half-open or established) per IPv6 /48.");
    getter!(handshake_retry_threshold: usize, "Handshakes in flight above which unvalidated clients get a QUIC Retry.");

    ranged_setter!(
        /// Sets the requested socket buffer size, within [`defaults::UDP_BUFFER_RANGE`].
        set_udp_buffer, udp_buffer: usize, "udp_buffer", defaults::UDP_BUFFER_RANGE
    );
    ranged_setter!(
        /// Sets the number of QUIC endpoints, within [`defaults::ENDPOINTS_RANGE`].
        set_endpoints, endpoints: usize, "endpoints", defaults::ENDPOINTS_RANGE
    );
    ranged_setter!(
        /// Sets the drain timeout, within [`defaults::DRAIN_TIMEOUT_RANGE`].
        set_drain_timeout, drain_timeout: Duration, "drain_timeout",
        defaults::DRAIN_TIMEOUT_RANGE
    );
    ranged_setter!(
        /// Sets the migration timeout, within [`defaults::MIGRATION_TIMEOUT_RANGE`].
        set_migration_timeout, migration_timeout: Duration, "migration_timeout",
        defaults::MIGRATION_TIMEOUT_RANGE
    );
    ranged_setter!(
        /// Sets the default host-loss timeout (SPEC section 11.1), within
        /// [`defaults::HOST_LOSS_TIMEOUT_RANGE`]. An allocation's is clamped into
        /// [`Self::host_loss_timeout_min`, `Self::keepalive_timeout`].
        set_host_loss_timeout, host_loss_timeout: Duration, "host_loss_timeout",
        defaults::HOST_LOSS_TIMEOUT_RANGE
    );
    ranged_setter!(
        /// Sets the shortest host-loss timeout an allocation may ask for, within
        /// [`defaults::HOST_LOSS_TIMEOUT_RANGE`].
        set_host_loss_timeout_min, host_loss_timeout_min: Duration, "host_loss_timeout_min",
        defaults::HOST_LOSS_TIMEOUT_RANGE
    );
    ranged_setter!(
        /// Sets the lobby election window (0 = the relay elects at once), within
        /// [`defaults::LOBBY_ELECTION_WINDOW_RANGE`].
        set_lobby_election_window, lobby_election_window: Duration, "lobby_election_window",
        defaults::LOBBY_ELECTION_WINDOW_RANGE
    );
    ranged_setter!(
        /// Sets the snapshot size limit, within [`defaults::MAX_SNAPSHOT_RANGE`].
        set_max_snapshot, max_snapshot: usize, "max_snapshot", defaults::MAX_SNAPSHOT_RANGE
    );

    /// Sets whether the relay signals direct paths (`PathOffer`, `Punch`); with `false` it
    /// refuses offers with `direct_disabled`.
    pub fn set_allow_direct(&mut self, v: bool) -> Result<&mut Self, ConfigError> {
        self.allow_direct = v;
        Ok(self)
    }

    /// Sets where the probe endpoint listens (SPEC section 17.5).
    pub fn set_probe_listen(&mut self, v: ProbeListen) -> Result<&mut Self, ConfigError> {
        self.probe_listen = v;
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

    ranged_setter!(
        /// Sets the keepalive timeout, within [`defaults::KEEPALIVE_TIMEOUT_RANGE`].
        set_keepalive_timeout, keepalive_timeout: Duration, "keepalive_timeout",
        defaults::KEEPALIVE_TIMEOUT_RANGE
    );
    ranged_setter!(
        /// Sets the bind timeout, within [`defaults::BIND_TIMEOUT_RANGE`].
        set_bind_timeout, bind_timeout: Duration, "bind_timeout", defaults::BIND_TIMEOUT_RANGE
    );
    ranged_setter!(
        /// Sets the host bind timeout of lobby-reserved allocations, within
        /// [`defaults::HOST_BIND_TIMEOUT_RANGE`].
        set_host_bind_timeout, host_bind_timeout: Duration, "host_bind_timeout",
        defaults::HOST_BIND_TIMEOUT_RANGE
    );
    ranged_setter!(
        /// Sets the members-per-allocation cap, within
        /// [`defaults::MAX_PEERS_PER_ALLOCATION_RANGE`] (2 to the protocol's limit).
        set_max_peers_per_allocation, max_peers_per_allocation: u16, "max_peers_per_allocation",
        defaults::MAX_PEERS_PER_ALLOCATION_RANGE
    );
    ranged_setter!(
        /// Sets the allocation cap, within [`defaults::MAX_ALLOCATIONS_RANGE`].
        set_max_allocations, max_allocations: usize, "max_allocations",
        defaults::MAX_ALLOCATIONS_RANGE
    );
    ranged_setter!(
        /// Sets the connection cap, within [`defaults::MAX_CONNECTIONS_RANGE`].
        set_max_connections, max_connections: usize, "max_connections",
        defaults::MAX_CONNECTIONS_RANGE
    );
    ranged_setter!(
        /// Sets the control frame cap, within [`defaults::MAX_CONTROL_FRAME_RANGE`] (at least
        /// enough for every message).
        set_max_control_frame, max_control_frame: usize, "max_control_frame",
        defaults::MAX_CONTROL_FRAME_RANGE
    );
    ranged_setter!(
        /// Sets the datagram payload cap, within [`defaults::MAX_DATAGRAM_PAYLOAD_RANGE`] (1 to
        /// the protocol's promise at minimum MTU; a larger value could not be delivered on every
        /// path).
        set_max_datagram_payload, max_datagram_payload: usize, "max_datagram_payload",
        defaults::MAX_DATAGRAM_PAYLOAD_RANGE
    );
    ranged_setter!(
        /// Sets the datagrams a client may send per second, within
        /// [`defaults::CLIENT_DATAGRAMS_PER_SECOND_RANGE`].
        set_client_datagrams_per_second, client_datagrams_per_second: usize,
        "client_datagrams_per_second", defaults::CLIENT_DATAGRAMS_PER_SECOND_RANGE
    );
    ranged_setter!(
        /// Sets the payload bytes a client may send per second, within
        /// [`defaults::CLIENT_BYTES_PER_SECOND_RANGE`].
        set_client_bytes_per_second, client_bytes_per_second: usize,
        "client_bytes_per_second", defaults::CLIENT_BYTES_PER_SECOND_RANGE
    );
    ranged_setter!(
        /// Sets the payload bytes an allocation may have delivered per second (0: no cap),
        /// within [`defaults::ALLOCATION_BYTES_PER_SECOND_RANGE`].
        set_allocation_bytes_per_second, allocation_bytes_per_second: usize,
        "allocation_bytes_per_second", defaults::ALLOCATION_BYTES_PER_SECOND_RANGE
    );
    ranged_setter!(
        /// Sets the control requests a client may make per second after its burst, within
        /// [`defaults::CLIENT_REQUESTS_PER_SECOND_RANGE`].
        set_client_requests_per_second, client_requests_per_second: usize,
        "client_requests_per_second", defaults::CLIENT_REQUESTS_PER_SECOND_RANGE
    );
    ranged_setter!(
        /// Sets the failed joins a client may make in a burst, within
        /// [`defaults::JOIN_FAILURE_BURST_RANGE`].
        set_join_failure_burst, join_failure_burst: usize, "join_failure_burst",
        defaults::JOIN_FAILURE_BURST_RANGE
    );
    ranged_setter!(
        /// Sets the interval a client regains one failed join in, within
        /// [`defaults::JOIN_FAILURE_REFILL_RANGE`].
        set_join_failure_refill, join_failure_refill: Duration, "join_failure_refill",
        defaults::JOIN_FAILURE_REFILL_RANGE
    );
    ranged_setter!(
        /// Sets the relay-wide burst of failed joins, within
        /// [`defaults::RELAY_JOIN_FAILURE_BURST_RANGE`].
        set_relay_join_failure_burst, relay_join_failure_burst: usize,
        "relay_join_failure_burst", defaults::RELAY_JOIN_FAILURE_BURST_RANGE
    );
    ranged_setter!(
        /// Sets the relay-wide failed joins per second, within
        /// [`defaults::RELAY_JOIN_FAILURES_PER_SECOND_RANGE`].
        set_relay_join_failures_per_second, relay_join_failures_per_second: usize,
        "relay_join_failures_per_second", defaults::RELAY_JOIN_FAILURES_PER_SECOND_RANGE
    );
    ranged_setter!(
        /// Sets the cap on connections (half-open or established) per IPv4 address, within
        /// [`defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE`].
        set_max_connections_per_ipv4_address, max_connections_per_ipv4_address: usize, "max_connections_per_ipv4_address", defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE
    );
    ranged_setter!(
        /// Sets the cap on connections (half-open or established) per IPv4 /24, within
        /// [`defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE`].
        set_max_connections_per_ipv4_24, max_connections_per_ipv4_24: usize, "max_connections_per_ipv4_24", defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE
    );
    ranged_setter!(
        /// Sets the cap on connections (half-open or established) per IPv6 /64, within
        /// [`defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE`].
        set_max_connections_per_ipv6_64, max_connections_per_ipv6_64: usize, "max_connections_per_ipv6_64", defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE
    );
    ranged_setter!(
        /// Sets the cap on connections (half-open or established) per IPv6 /48, within
        /// [`defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE`].
        set_max_connections_per_ipv6_48, max_connections_per_ipv6_48: usize, "max_connections_per_ipv6_48", defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE
    );
    ranged_setter!(
        /// Sets the handshakes in flight above which unvalidated clients get a QUIC Retry, within
        /// [`defaults::HANDSHAKE_RETRY_THRESHOLD_RANGE`].
        set_handshake_retry_threshold, handshake_retry_threshold: usize, "handshake_retry_threshold", defaults::HANDSHAKE_RETRY_THRESHOLD_RANGE
    );
    ranged_setter!(
        /// Sets the join-code length, within [`defaults::JOIN_CODE_LEN_RANGE`].
        set_join_code_len, join_code_len: usize, "join_code_len", defaults::JOIN_CODE_LEN_RANGE
    );
    ranged_setter!(
        /// Sets the join-code time to live, within [`defaults::JOIN_CODE_TTL_RANGE`].
        set_join_code_ttl, join_code_ttl: Duration, "join_code_ttl", defaults::JOIN_CODE_TTL_RANGE
    );
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
    max_subscribers: usize,
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
            max_subscribers: defaults::EVENT_STREAM_MAX_SUBSCRIBERS,
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
            .field("max_subscribers", &self.max_subscribers)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl HooksConfig {
    getter!(queue: usize, "Events queued per webhook before new ones are dropped.");
    getter!(replay: usize, "Events the event stream keeps for subscribers that resume.");
    getter!(max_subscribers: usize, "Event-stream subscribers at once; more are refused.");
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

    ranged_setter!(
        /// Sets the per-webhook queue length, within [`defaults::HOOK_QUEUE_RANGE`].
        set_queue, queue: usize, "hook_queue", defaults::HOOK_QUEUE_RANGE
    );
    ranged_setter!(
        /// Sets the event stream's replay buffer, within [`defaults::EVENT_REPLAY_RANGE`].
        set_replay, replay: usize, "event_replay", defaults::EVENT_REPLAY_RANGE
    );
    ranged_setter!(
        /// Sets the event stream's subscriber limit, within
        /// [`defaults::EVENT_STREAM_MAX_SUBSCRIBERS_RANGE`].
        set_max_subscribers, max_subscribers: usize, "event_stream_max_subscribers",
        defaults::EVENT_STREAM_MAX_SUBSCRIBERS_RANGE
    );

    /// Sets the retry backoff: the first delay (within
    /// [`defaults::WEBHOOK_BACKOFF_INITIAL_RANGE`]), doubled after each failure up to `max`
    /// (at least `initial`, within [`defaults::WEBHOOK_BACKOFF_MAX_RANGE`]).
    pub fn set_backoff(
        &mut self,
        initial: Duration,
        max: Duration,
    ) -> Result<&mut Self, ConfigError> {
        let initial = in_range(
            "webhook_backoff_initial",
            initial,
            defaults::WEBHOOK_BACKOFF_INITIAL_RANGE,
        )?;
        let max = in_range(
            "webhook_backoff_max",
            max,
            defaults::WEBHOOK_BACKOFF_MAX_RANGE,
        )?;
        if max < initial {
            return Err(invalid(
                "webhook_backoff_max",
                "must be at least webhook_backoff_initial",
            ));
        }
        self.backoff_initial = initial;
        self.backoff_max = max;
        Ok(self)
    }

    ranged_setter!(
        /// Sets the webhook request timeout, within [`defaults::WEBHOOK_TIMEOUT_RANGE`].
        set_request_timeout, request_timeout: Duration, "webhook_timeout",
        defaults::WEBHOOK_TIMEOUT_RANGE
    );
}

/// Limits of the admin HTTP server (see [`crate::admin`]): how long a client may take to send
/// a request's headers, and how many connections it may hold. `AdminLimits::default()` is
/// 10 s and 256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminLimits {
    header_timeout: Duration,
    max_connections: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            header_timeout: defaults::ADMIN_HEADER_TIMEOUT,
            max_connections: defaults::ADMIN_MAX_CONNECTIONS,
        }
    }
}

impl AdminLimits {
    getter!(header_timeout: Duration, "Time a client has to send a request's headers, on a new or a kept-alive connection.");
    getter!(max_connections: usize, "Concurrent admin connections; more are closed at accept.");

    ranged_setter!(
        /// Sets the header-read timeout, within [`defaults::ADMIN_HEADER_TIMEOUT_RANGE`].
        set_header_timeout, header_timeout: Duration, "admin_header_timeout",
        defaults::ADMIN_HEADER_TIMEOUT_RANGE
    );
    ranged_setter!(
        /// Sets the connection limit, within [`defaults::ADMIN_MAX_CONNECTIONS_RANGE`].
        set_max_connections, max_connections: usize, "admin_max_connections",
        defaults::ADMIN_MAX_CONNECTIONS_RANGE
    );
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
