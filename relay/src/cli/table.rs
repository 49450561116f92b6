//! The settings table: every `baton-relay` setting, once. Its flag, environment variable, TOML
//! key, default, accepted range and `--help` text all come from its entry here (the entry
//! syntax is in `cli/declare.rs`). Adding a setting is adding an entry, plus a row in README's
//! configuration table and a line in `deploy/config.example.toml`, which tests check.
//!
//! Order matters twice: `--help` lists settings in this order, and the `apply:` setters run in
//! it (`max_snapshot` before `snapshot_budget`, which is checked against it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tracing::level_filters::LevelFilter;

use super::declare::{self, Setting};
use super::kind::{Kind, Names, Secret, SecretList, Toggle, Webhooks};
use super::{LogFormat, Settings};
use crate::config::{range_text, ConfigError, ProbeListen, Show};
use crate::defaults;

settings! {
    /// TOML config file with the same settings (snake_case keys, durations as strings like
    /// "10s"). A file named here that does not exist is an error.
    config: PathBuf {
        file: skip,
    }

    // --- Network ---

    /// UDP address of the QUIC endpoint clients connect to.
    listen: SocketAddr {
        default: defaults::LISTEN,
    }
    /// TCP address of the admin HTTP server (/healthz, /readyz, /metrics, /v1/allocations);
    /// loopback only by default.
    admin_listen: SocketAddr {
        default: defaults::ADMIN_LISTEN,
    }
    /// Do not run the admin HTTP server (wins over --admin-listen, so it can switch off an
    /// address set in the environment).
    no_admin: bool {
        default: false,
    }
    /// Bearer token required by the admin API's /v1/ routes (the probes and /metrics stay
    /// open). Prefer the environment variable: command lines are visible to other users.
    /// Without it the API is open; keep the admin server on loopback then.
    admin_token: Secret {}
    /// Secret shared with the lobby, which mints client credentials with it (HMAC-SHA256; at
    /// least 32 bytes). With one, every create, join and rejoin needs a valid credential.
    /// Repeatable, to rotate keys (any one verifies; at most 8); comma-separated in the
    /// environment. Without it the relay is open to anyone who can reach it. Prefer the
    /// environment variable: command lines are visible to other users.
    auth_secrets: SecretList {
        flag: "auth-secret",
        env: "BATON_AUTH_SECRETS",
    }

    // --- TLS ---

    /// Directory holding the development certificate (dev-cert.pem, dev-key.pem), generated
    /// on first start and reused so clients can pin it. Unused with --cert/--key.
    data_dir: PathBuf {
        value_name: "DIR",
        default: defaults::DATA_DIR,
    }
    /// PEM certificate chain, leaf first, for production. Requires --key.
    cert: PathBuf {}
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --cert. Requires --cert.
    key: PathBuf {}
    /// Extra host name or IP address for the development certificate, besides localhost,
    /// 127.0.0.1 and ::1. Repeatable; comma-separated in the environment. Only used when the
    /// certificate is first generated.
    dev_cert_names: Names {
        flag: "dev-cert-name",
        env: "BATON_DEV_CERT_NAMES",
    }

    // --- Timeouts ---

    /// A client silent this long is removed and its peers told why; it is QUIC's idle
    /// timeout.
    keepalive_timeout: Duration {
        default: defaults::KEEPALIVE_TIMEOUT,
        range: defaults::KEEPALIVE_TIMEOUT_RANGE,
        apply: relay.set_keepalive_timeout,
    }
    /// Time a new connection has to create or join an allocation.
    bind_timeout: Duration {
        default: defaults::BIND_TIMEOUT,
        range: defaults::BIND_TIMEOUT_RANGE,
        apply: relay.set_bind_timeout,
    }
    /// Time the host of a lobby-reserved allocation has to claim it.
    host_bind_timeout: Duration {
        default: defaults::HOST_BIND_TIMEOUT,
        range: defaults::HOST_BIND_TIMEOUT_RANGE,
        apply: relay.set_host_bind_timeout,
    }

    // --- Limits ---

    /// Members per allocation, host included: the default and the cap for what hosts ask.
    max_peers_per_allocation: u16 {
        default: defaults::MAX_PEERS_PER_ALLOCATION,
        range: defaults::MAX_PEERS_PER_ALLOCATION_RANGE,
        apply: relay.set_max_peers_per_allocation,
    }
    /// Allocations held at once; more are refused with relay_full.
    max_allocations: usize {
        default: defaults::MAX_ALLOCATIONS,
        range: defaults::MAX_ALLOCATIONS_RANGE,
        apply: relay.set_max_allocations,
    }
    /// Concurrent QUIC connections; more are refused.
    max_connections: usize {
        default: defaults::MAX_CONNECTIONS,
        range: defaults::MAX_CONNECTIONS_RANGE,
        apply: relay.set_max_connections,
    }
    /// Longest control frame accepted from a client, in bytes.
    max_control_frame: usize {
        value_name: "BYTES",
        default: defaults::MAX_CONTROL_FRAME,
        range: defaults::MAX_CONTROL_FRAME_RANGE,
        apply: relay.set_max_control_frame,
    }
    /// Largest datagram payload carried, in bytes.
    max_datagram_payload: usize {
        value_name: "BYTES",
        default: defaults::MAX_DATAGRAM_PAYLOAD,
        range: defaults::MAX_DATAGRAM_PAYLOAD_RANGE,
        apply: relay.set_max_datagram_payload,
    }
    /// Datagrams a client may send per second (burst: one second's worth); more are dropped
    /// and reported as rate_limited.
    client_datagrams_per_second: usize {
        default: defaults::CLIENT_DATAGRAMS_PER_SECOND,
        range: defaults::CLIENT_DATAGRAMS_PER_SECOND_RANGE,
        apply: relay.set_client_datagrams_per_second,
    }
    /// Datagram payload bytes a client may send per second (burst: one second's worth); more
    /// are dropped and reported as rate_limited.
    client_bytes_per_second: usize {
        value_name: "BYTES",
        default: defaults::CLIENT_BYTES_PER_SECOND,
        range: defaults::CLIENT_BYTES_PER_SECOND_RANGE,
        apply: relay.set_client_bytes_per_second,
    }
    /// Datagram payload bytes an allocation's members may have delivered per second, all
    /// together (a broadcast counts once per receiver); more are dropped and reported as
    /// rate_limited. 0: no cap.
    allocation_bytes_per_second: usize {
        value_name: "BYTES",
        default: defaults::ALLOCATION_BYTES_PER_SECOND,
        range: defaults::ALLOCATION_BYTES_PER_SECOND_RANGE,
        apply: relay.set_allocation_bytes_per_second,
    }
    /// Control requests a client may make per second after a burst of 32; faster ones are
    /// delayed, never refused.
    client_requests_per_second: usize {
        default: defaults::CLIENT_REQUESTS_PER_SECOND,
        range: defaults::CLIENT_REQUESTS_PER_SECOND_RANGE,
        apply: relay.set_client_requests_per_second,
    }
    /// Failed joins (unknown, expired or revoked code, or no credential for it) a client may
    /// make in a burst; a client is an IPv4 address or an IPv6 /64. Then it is refused
    /// rate_limited, even for a valid code, until it regains one.
    join_failure_burst: usize {
        default: defaults::JOIN_FAILURE_BURST,
        range: defaults::JOIN_FAILURE_BURST_RANGE,
        apply: relay.set_join_failure_burst,
    }
    /// A client regains one failed join per this interval.
    join_failure_refill: Duration {
        default: defaults::JOIN_FAILURE_REFILL,
        range: defaults::JOIN_FAILURE_REFILL_RANGE,
        apply: relay.set_join_failure_refill,
    }
    /// Failed joins the whole relay allows in a burst, from all clients together; once spent,
    /// every join by code is refused rate_limited until the budget refills.
    relay_join_failure_burst: usize {
        default: defaults::RELAY_JOIN_FAILURE_BURST,
        range: defaults::RELAY_JOIN_FAILURE_BURST_RANGE,
        apply: relay.set_relay_join_failure_burst,
    }
    /// Failed joins the whole relay allows per second after its burst.
    relay_join_failures_per_second: usize {
        default: defaults::RELAY_JOIN_FAILURES_PER_SECOND,
        range: defaults::RELAY_JOIN_FAILURES_PER_SECOND_RANGE,
        apply: relay.set_relay_join_failures_per_second,
    }
    /// Connections, half-open or established, from one IPv4 address (an IPv4-mapped IPv6
    /// address counts as IPv4); more are refused at accept.
    max_connections_per_ipv4_address: usize {
        default: defaults::MAX_CONNECTIONS_PER_IPV4_ADDRESS,
        range: defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE,
        apply: relay.set_max_connections_per_ipv4_address,
    }
    /// Connections, half-open or established, from one IPv4 /24; more are refused at accept.
    max_connections_per_ipv4_24: usize {
        default: defaults::MAX_CONNECTIONS_PER_IPV4_24,
        range: defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE,
        apply: relay.set_max_connections_per_ipv4_24,
    }
    /// Connections, half-open or established, from one IPv6 /64; more are refused at accept.
    max_connections_per_ipv6_64: usize {
        default: defaults::MAX_CONNECTIONS_PER_IPV6_64,
        range: defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE,
        apply: relay.set_max_connections_per_ipv6_64,
    }
    /// Connections, half-open or established, from one IPv6 /48; more are refused at accept.
    max_connections_per_ipv6_48: usize {
        default: defaults::MAX_CONNECTIONS_PER_IPV6_48,
        range: defaults::MAX_CONNECTIONS_PER_PREFIX_RANGE,
        apply: relay.set_max_connections_per_ipv6_48,
    }
    /// QUIC handshakes in flight above which a new client is answered with a Retry, so that it
    /// proves its address before it holds a slot; 0 sends every client a Retry.
    handshake_retry_threshold: usize {
        default: defaults::HANDSHAKE_RETRY_THRESHOLD,
        range: defaults::HANDSHAKE_RETRY_THRESHOLD_RANGE,
        apply: relay.set_handshake_retry_threshold,
    }

    // --- Join codes and migration ---

    /// Characters in issued join codes.
    join_code_len: usize {
        default: defaults::JOIN_CODE_LEN,
        range: defaults::JOIN_CODE_LEN_RANGE,
        apply: relay.set_join_code_len,
    }
    /// Join-code time to live: the default and the cap for what hosts ask.
    join_code_ttl: Duration {
        default: defaults::JOIN_CODE_TTL,
        range: defaults::JOIN_CODE_TTL_RANGE,
        apply: relay.set_join_code_ttl,
    }
    /// Time an elected member has to take over a migrating allocation before the next is
    /// elected.
    migration_timeout: Duration {
        default: defaults::MIGRATION_TIMEOUT,
        range: defaults::MIGRATION_TIMEOUT_RANGE,
        apply: relay.set_migration_timeout,
    }
    /// A host silent this long (no datagram, heartbeat or ping) is lost: its connection is
    /// closed with code 9 and its allocation migrates. The default for allocations that do not
    /// ask; what they ask is clamped into [host_loss_timeout_min, keepalive_timeout].
    host_loss_timeout: Duration {
        default: defaults::HOST_LOSS_TIMEOUT,
        range: defaults::HOST_LOSS_TIMEOUT_RANGE,
        apply: relay.set_host_loss_timeout,
    }
    /// The shortest host-loss timeout an allocation may ask for; shorter requests are raised
    /// to it.
    host_loss_timeout_min: Duration {
        default: defaults::HOST_LOSS_TIMEOUT_MIN,
        range: defaults::HOST_LOSS_TIMEOUT_RANGE,
        apply: relay.set_host_loss_timeout_min,
    }
    /// After losing a host, time a lobby has to name the next one (POST
    /// /v1/allocations/{id}/elect) before the relay elects one itself; 0 elects at once.
    lobby_election_window: Duration {
        default: defaults::LOBBY_ELECTION_WINDOW,
        range: defaults::LOBBY_ELECTION_WINDOW_RANGE,
        apply: relay.set_lobby_election_window,
    }

    // --- Direct paths ---

    /// Signal direct paths between a game's host and its other members (forward their path
    /// offers and time their hole punching), so their traffic can skip the relay. Direct paths
    /// tell players each other's IP addresses; false keeps them hidden (relay-only): offers are
    /// refused with direct_disabled and all traffic stays relayed.
    allow_direct: Toggle {
        default: defaults::ALLOW_DIRECT,
        apply: relay.set_allow_direct,
    }

    /// Where the NAT probe endpoint listens: a second QUIC port on the listen address's IP,
    /// where clients that prefer direct paths learn whether their NAT maps each destination
    /// to its own port (then hole punching between two such NATs is not attempted). auto: the
    /// listen port + 1 (a port the kernel picks when listen's port is 0); off: none; or an
    /// IP:PORT. Open this UDP port in firewalls too.
    probe_listen: ProbeListen {
        default: ProbeListen::Auto,
        apply: relay.set_probe_listen,
    }

    // --- Sockets and threads ---

    /// Requested kernel receive and send buffer of each QUIC socket, in bytes; the kernel caps
    /// it at net.core.rmem_max/wmem_max.
    udp_buffer: usize {
        value_name: "BYTES",
        default: defaults::UDP_BUFFER,
        range: defaults::UDP_BUFFER_RANGE,
        apply: relay.set_udp_buffer,
    }
    /// QUIC endpoints sharing the listen port with SO_REUSEPORT, each on its own data-plane
    /// thread, to spread packet processing over cores. Packets are steered by connection ID,
    /// so clients keep their connection when their address changes. Set it to the cores the
    /// relay may use.
    endpoints: usize {
        default: defaults::ENDPOINTS,
        range: defaults::ENDPOINTS_RANGE,
        apply: relay.set_endpoints,
    }

    // --- Migration snapshots ---

    /// Largest migration snapshot a host may upload, in bytes.
    max_snapshot: usize {
        value_name: "BYTES",
        default: defaults::MAX_SNAPSHOT,
        range: defaults::MAX_SNAPSHOT_RANGE,
        apply: relay.set_max_snapshot,
    }
    /// Bytes all stored migration snapshots may take together, at least --max-snapshot;
    /// uploads beyond it are refused with relay_full.
    snapshot_budget: usize {
        value_name: "BYTES",
        default: defaults::SNAPSHOT_BUDGET,
        apply: relay.set_snapshot_budget,
    }

    // --- Lobby hooks ---

    /// Lobby webhook: every lifecycle event is POSTed to this http or https URL as signed
    /// JSON. Repeatable (at most 16); comma-separated in the environment. Requires
    /// --webhook-secret.
    webhooks: Webhooks {
        flag: "webhook",
        env: "BATON_WEBHOOKS",
    }
    /// Secret that signs webhook requests (HMAC-SHA256, Baton-Signature header); at least 16
    /// characters. Prefer the environment variable: command lines are visible to other users.
    webhook_secret: Secret {
        value_name: "SECRET",
    }
    /// Events queued per webhook while its lobby is slow or down; further events are dropped
    /// and counted.
    hook_queue: usize {
        default: defaults::HOOK_QUEUE,
        range: defaults::HOOK_QUEUE_RANGE,
        apply: relay.hooks.set_queue,
    }
    /// First delay before retrying a failed webhook request, doubled (with jitter) after each
    /// failure.
    webhook_backoff_initial: Duration {
        default: defaults::WEBHOOK_BACKOFF_INITIAL,
        range: defaults::WEBHOOK_BACKOFF_INITIAL_RANGE,
    }
    /// Longest delay between webhook retries, at least --webhook-backoff-initial.
    webhook_backoff_max: Duration {
        default: defaults::WEBHOOK_BACKOFF_MAX,
        range: defaults::WEBHOOK_BACKOFF_MAX_RANGE,
    }
    /// Time one webhook request may take, connecting included; longer is a failure and is
    /// retried.
    webhook_timeout: Duration {
        default: defaults::WEBHOOK_TIMEOUT,
        range: defaults::WEBHOOK_TIMEOUT_RANGE,
        apply: relay.hooks.set_request_timeout,
    }
    /// Events kept for event stream (GET /v1/events) subscribers that resume with
    /// Last-Event-ID.
    event_replay: usize {
        default: defaults::EVENT_REPLAY,
        range: defaults::EVENT_REPLAY_RANGE,
        apply: relay.hooks.set_replay,
    }
    /// Bearer token of the event stream (GET /v1/events), so a lobby can read events without
    /// the admin token; without it the admin token guards the stream.
    event_stream_token: Secret {}

    // --- Fleet ---

    /// Fleet directory, Redis or Valkey: redis://[:password@]host:port/db, or rediss:// for
    /// TLS. With it this relay is one node of a fleet: join codes are unique fleet-wide and a
    /// join reaching the wrong node is redirected. Without it the relay stands alone. The URL
    /// may hold a password: prefer the environment variable.
    directory: Secret {
        value_name: "URL",
    }
    /// This node's id in the fleet directory, unique in the fleet: 1-64 characters of A-Z a-z
    /// 0-9 . _ -. Required with --directory.
    node_id: String {
        value_name: "ID",
    }
    /// The UDP address clients reach this node at, which other nodes redirect them to; port 0
    /// stands for the port the relay binds. Required with --directory unless --listen names
    /// one address (not 0.0.0.0 or ::).
    public_addr: SocketAddr {}
    /// The name this node's certificate is valid for, sent with redirects to it.
    server_name: String {
        value_name: "NAME",
        default: defaults::SERVER_NAME,
    }
    /// This node's region label, written in the directory and in baton_node_info; POST
    /// /v1/allocations with "region" places a reservation on the least-loaded node of that
    /// region.
    region: String {
        value_name: "NAME",
        default: defaults::REGION,
    }
    /// The HOST:PORT (an IP address or a DNS name) other nodes reach this node's admin API at,
    /// published in the directory: POST /v1/allocations on any node forwards a reservation
    /// placed on this one there, with the same admin token (every node of a fleet needs the
    /// same --admin-token). Default: --admin-listen when it names one address, else the IP of
    /// --public-addr with the admin port.
    admin_advertise: String {
        value_name: "HOST:PORT",
    }
    /// On SIGTERM, a fleet node drains first: its allocations move to other nodes, their games
    /// going on, and it stops once empty or after this long; 0 stops at once. (POST /v1/drain
    /// drains too, and the node exits once empty.) A relay standing alone stops at once.
    drain_timeout: Duration {
        default: defaults::DRAIN_TIMEOUT,
        range: defaults::DRAIN_TIMEOUT_RANGE,
        apply: relay.set_drain_timeout,
    }
    /// Key of reconnect tokens and migration tickets, the same on every node of a fleet so a
    /// token issued by one node verifies on another (at least 32 bytes). Required with
    /// --directory. Prefer the environment variable.
    fleet_secret: Secret {}

    // --- Logging ---

    /// Log output format.
    log_format: LogFormat {
        default: defaults::LOG_FORMAT,
    }
    /// Log level: off, error, warn, info, debug or trace. RUST_LOG directives, when set,
    /// refine it.
    log_level: LevelFilter {
        default: defaults::LOG_LEVEL,
    }

    // --- Admin server limits ---

    /// Time an admin HTTP client has to send a request's headers, on a new connection or
    /// between requests on a kept-alive one; then the connection is closed.
    admin_header_timeout: Duration {
        default: defaults::ADMIN_HEADER_TIMEOUT,
        range: defaults::ADMIN_HEADER_TIMEOUT_RANGE,
        apply: relay.admin_limits.set_header_timeout,
    }
    /// Concurrent admin HTTP connections; more are closed at accept.
    admin_max_connections: usize {
        default: defaults::ADMIN_MAX_CONNECTIONS,
        range: defaults::ADMIN_MAX_CONNECTIONS_RANGE,
        apply: relay.admin_limits.set_max_connections,
    }
    /// Event stream (GET /v1/events) subscribers at once; more are answered 503.
    event_stream_max_subscribers: usize {
        default: defaults::EVENT_STREAM_MAX_SUBSCRIBERS,
        range: defaults::EVENT_STREAM_MAX_SUBSCRIBERS_RANGE,
        apply: relay.hooks.set_max_subscribers,
    }
}
