//! Default settings, each with the reason for its value, and the range each configurable one
//! accepts. Everything here can be changed through [`crate::RelayConfig`], the command line or the
//! config file; the `*_RANGE` constants are checked by `RelayConfig`'s and `HooksConfig`'s setters
//! and shown by `baton-relay --help` (through the settings table in `cli/table.rs`).

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use tracing::level_filters::LevelFilter;

use crate::cli::LogFormat;

/// Directory the development certificate is kept in, relative to the working directory.
pub const DATA_DIR: &str = "baton-data";

/// Log level: lifecycle events and warnings, nothing per packet.
pub const LOG_LEVEL: LevelFilter = LevelFilter::INFO;

/// Log format: lines for people; log shippers ask for JSON.
pub const LOG_FORMAT: LogFormat = LogFormat::Text;

/// UDP address the QUIC endpoint listens on: every IPv4 interface, port 7700.
pub const LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7700);

/// Admin HTTP address: loopback only, so metrics and the allocation API are not exposed to the
/// internet unless an operator chooses to.
pub const ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7701);

/// A client silent this long is gone: the keepalive rule game developers know from Unity Relay.
/// It is QUIC's idle timeout; the SDK pings well inside it.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection must create or join an allocation this soon after its handshake, so idle
/// handshakes cannot hold relay resources.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// A lobby-reserved allocation whose host has not bound by then expires (Unity Relay's
/// allocation bind window is 60 s too).
pub const HOST_BIND_TIMEOUT: Duration = Duration::from_secs(60);

/// Members per allocation, host included: Unity Relay's maximum, which covers most
/// client-hosted games.
pub const MAX_PEERS_PER_ALLOCATION: u16 = 150;

/// Allocations one relay holds at once; at 2–8 players each this is about the number of
/// connections one 2-core machine can serve.
pub const MAX_ALLOCATIONS: usize = 10_000;

/// Concurrent QUIC connections. Each idle connection costs tens of KiB, so 20,000 stay well
/// under a gigabyte.
pub const MAX_CONNECTIONS: usize = 20_000;

/// Longest control frame accepted from a client. Client messages are tiny; this only bounds
/// what a broken or hostile client can make the relay buffer.
pub const MAX_CONTROL_FRAME: usize = baton_protocol::frame::DEFAULT_MAX_FRAME_LEN;

/// Largest datagram payload carried: the protocol's promise at QUIC's minimum MTU.
pub const MAX_DATAGRAM_PAYLOAD: usize = baton_protocol::MAX_DATAGRAM_PAYLOAD;

/// Join-code length: 20^6 = 64 million codes, typed in a few seconds.
pub const JOIN_CODE_LEN: usize = baton_protocol::join_code::DEFAULT_LEN;

/// Join codes live a day unless the host asks for less; a session running longer keeps its
/// members, only new joins need a fresh code.
pub const JOIN_CODE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long an expired or revoked code keeps answering `expired`/`revoked` instead of
/// `not_found`, so a late player gets the precise reason.
pub const CODE_TOMBSTONE_TTL: Duration = Duration::from_secs(60 * 60);

/// Failed join attempts allowed per client (an IPv4 address or an IPv6 /64: one subscriber
/// gets a whole /64) in a burst: enough for a player's typos...
pub const JOIN_FAILURE_BURST: usize = 10;
/// ...then one more per this interval. At 10,000 live 6-character codes (one guess in 6,400
/// hits) one client needs about 74 minutes for an even chance of a hit (README, "Join-code
/// guessing"); a relay open to anonymous clients is meant for trusted networks, and
/// `--auth-secret` makes guessing moot.
pub const JOIN_FAILURE_REFILL: Duration = Duration::from_secs(1);

/// Failed join attempts the whole relay allows in a burst, from all clients together...
pub const RELAY_JOIN_FAILURE_BURST: usize = 200;
/// ...refilled at this many per second, so guessing from many addresses is bounded too. Typos
/// on a busy relay (tens of joins a second, a few percent mistyped) stay far below it; spent by
/// an attacker it refuses joins by code relay-wide for the moment it takes to refill, a milder
/// failure than letting guesses through (rejoins, creates and lobby reservations go on).
pub const RELAY_JOIN_FAILURES_PER_SECOND: usize = 100;

/// Connections (half-open or established) from one IPv4 address. Carrier-grade NAT puts many
/// subscribers behind one address, so this is not "one household": 64 players of games on
/// this relay behind one carrier address at once is rare, and an attacker with one address
/// holds 64 of the 20,000 connection slots.
pub const MAX_CONNECTIONS_PER_IPV4_ADDRESS: usize = 64;

/// Connections from one IPv4 /24, four addresses' worth: a /24 is one site or one carrier
/// pool, and filling the relay from /24s takes about 80 of them.
pub const MAX_CONNECTIONS_PER_IPV4_24: usize = 256;

/// Connections from one IPv6 /64: one subscriber's network (ISPs hand out a /64 or more per
/// customer, so every address in it is the same client). A household rarely runs more than a
/// few game clients; 16 leaves room for a LAN party.
pub const MAX_CONNECTIONS_PER_IPV6_64: usize = 16;

/// Connections from one IPv6 /48: one site (many ISPs give a customer a /48 of 65,536 /64s,
/// so without this one customer could open 16 connections from each).
pub const MAX_CONNECTIONS_PER_IPV6_48: usize = 256;

/// Half-open handshakes above which a new, unvalidated client is answered with a QUIC Retry
/// (one round trip more, and a spoofed source can no longer hold a slot). A handshake takes
/// one or two round trips, so even 1,000 connects a second at 100 ms RTT keep about 100 in
/// flight: below this, clients pay nothing extra.
pub const HANDSHAKE_RETRY_THRESHOLD: usize = 256;

/// Whether the relay signals direct paths between members (forwards `PathOffer`, sends
/// `Punch`); with `false` it refuses offers with `direct_disabled` and members' addresses stay
/// hidden from each other.
pub const ALLOW_DIRECT: bool = true;

/// On SIGTERM, how long a fleet node drains (moves its allocations to other nodes) before it
/// stops: a rolling upgrade's pause per node. An orchestrator's grace period must be longer.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepted drain timeouts: 0 (stop at once, as a relay standing alone does) to an hour.
pub const DRAIN_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(60 * 60);

/// The TLS server name a fleet node announces for redirects: the development certificate's.
pub const SERVER_NAME: &str = "localhost";

/// A fleet node's region label when none is given.
pub const REGION: &str = "default";

/// Shortest fleet secret accepted, in bytes.
pub const MIN_FLEET_SECRET: usize = 32;

/// Connection attempts one endpoint holds before its accept loop has decided on them (not a
/// setting). The accept loop starts one handshake per turn of its lane (see
/// `driver::accept`), so under a flood attempts wait here; beyond this many, quinn refuses
/// new ones at once. At a few microseconds per decision, a lane clears it in milliseconds.
pub const INCOMING_QUEUE: usize = 4096;

/// Bytes quinn buffers for one connection attempt before the accept loop has decided on it
/// (not a setting): the client's first flight, one or two datagrams (0-RTT is off).
pub const INCOMING_BUFFER: u64 = 16 * 1024;

/// Bytes quinn buffers for all undecided connection attempts of one endpoint together (not a
/// setting): [`INCOMING_QUEUE`] Initials of 2 KiB.
pub const INCOMING_BUFFER_TOTAL: u64 = INCOMING_QUEUE as u64 * 2048;

/// Control messages queued for one client before the relay gives up on it as not reading its
/// control stream. Control traffic is a few messages per membership change.
pub const CONTROL_QUEUE: usize = 256;

/// Bytes of outgoing datagrams quinn may buffer per connection before Baton drops new ones as
/// congested (about 50 full-size datagrams; a game tick's worth for a busy host).
pub const DATAGRAM_SEND_BUFFER: usize = 64 * 1024;

/// Bytes of incoming datagrams quinn buffers per connection before dropping.
pub const DATAGRAM_RECV_BUFFER: usize = 64 * 1024;

/// Datagrams a client may send per second (a token bucket; its burst is one second's worth).
/// A game at 60 Hz sends one datagram per tick to its host, and a host one broadcast per tick
/// (a broadcast is one datagram, however many receive it); 500 also covers a host that sends
/// to each of 8 peers separately at 60 Hz (480). More is dropped as `rate_limited`.
pub const CLIENT_DATAGRAMS_PER_SECOND: usize = 500;

/// Payload bytes a client may send per second (a token bucket; its burst is one second's worth,
/// and at least one largest datagram). At the default datagram rate, full-size datagrams come to
/// 575,000 bytes a second, so with the defaults the datagram limit binds first; this one bounds
/// what a relay whose operator raised the datagram limit carries for one client.
pub const CLIENT_BYTES_PER_SECOND: usize = 1024 * 1024;

/// Payload bytes an allocation's members may have delivered per second, all together (a token
/// bucket; a broadcast counts once per receiver). Off (0) by default: the per-client limits
/// already bound each member, and an allocation's size is capped; operators who sell
/// bandwidth per game set it.
pub const ALLOCATION_BYTES_PER_SECOND: usize = 0;

/// Control requests a client may make per second once its burst ([`REQUEST_BURST`]) is spent.
/// A client makes a handful per membership change (create or join, a kick, a code revocation);
/// 20 a second keeps the control task fair between clients, and a chatty one is delayed, never
/// refused.
pub const CLIENT_REQUESTS_PER_SECOND: usize = 20;

/// Control requests a client may make at once before it is paced: a game's start-up burst.
pub const REQUEST_BURST: u64 = 32;

/// How long graceful shutdown waits for clients to acknowledge their close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long the relay may hear nothing from an allocation's host before it treats the host as
/// lost and migrates (SPEC section 11.1), unless the host asked for another value in
/// `CreateAllocation`. The SDK's host sends a heartbeat every sixth of it (250 ms), so six in a
/// row must be lost before a live host is migrated away from.
pub const HOST_LOSS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// The shortest host-loss timeout a host may ask for: shorter ones are raised to it.
pub const HOST_LOSS_TIMEOUT_MIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Time the elected member has to open the successor allocation before the next candidate is
/// elected. A live SDK does it in one round trip; this only bounds a candidate that vanished
/// at the same time as the host.
pub const MIGRATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the relay waits, after losing a host, for a lobby to name the next one through
/// the admin API before electing one itself. Zero: the relay elects at once, which is the
/// fastest migration; a lobby that runs its own election configures a window.
pub const LOBBY_ELECTION_WINDOW: Duration = Duration::ZERO;

/// Packets a client may receive before it must acknowledge (QUIC ACK frequency extension;
/// quinn clients support it). Datagrams need no retransmission, so ACKs only feed congestion
/// control and RTT: one per ten packets instead of one per two removes most of the packets a
/// busy client sends back, and the relay's work per ACK.
pub const ACK_ELICITING_THRESHOLD: u32 = 9;

/// Longest a client may delay an acknowledgement (quinn caps it at the larger of the RTT and
/// 25 ms).
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

/// Requested size of the QUIC socket's kernel receive and send buffers.
///
/// The kernel default (about 200 KiB) overflows in a few milliseconds at 100k packets/s, and
/// every overflow is a lost datagram (`RcvbufErrors`). 8 MiB holds tens of milliseconds of
/// burst; the kernel caps the request at `net.core.rmem_max`/`wmem_max`, and the relay logs
/// what it got.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// QUIC endpoints sharing the listen port.
///
/// One: each endpoint runs on its own data-plane thread, so one endpoint uses one core. More
/// spread packet processing over cores with `SO_REUSEPORT`; packets are steered to the endpoint
/// their connection ID names (see `steering`), so a client whose address changes keeps its
/// connection. On a machine shared with other work, one is cheapest per datagram: datagrams
/// between connections on different endpoints cross threads.
pub const ENDPOINTS: usize = 1;

/// Largest migration snapshot a host may upload: Unity Lobby's 10 MiB limit.
pub const MAX_SNAPSHOT: usize = 10 * 1024 * 1024;

/// Memory all stored snapshots may take together; an upload beyond it is refused with
/// `relay_full`, so snapshots cannot exhaust the machine.
pub const SNAPSHOT_BUDGET: usize = 1024 * 1024 * 1024;

/// Events queued per webhook while its lobby is slow or down. Events are shared, not copied,
/// between webhooks and the replay buffer: at a few hundred bytes each a full queue holds a few
/// MiB, and 10,000 is minutes of churn on a busy relay, enough to ride out a lobby restart.
pub const HOOK_QUEUE: usize = 10_000;

/// Events the event stream keeps for subscribers that resume with `Last-Event-ID`: at a few
/// hundred bytes each, a few MiB.
pub const EVENT_REPLAY: usize = 10_000;

/// First retry delay of a failed webhook request: a lobby's brief hiccup costs little latency.
pub const WEBHOOK_BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// Longest delay between webhook retries: a lobby that comes back gets its events within
/// 30 s, and a dead one costs one request per 30 s.
pub const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Time one webhook request may take, connecting included. A lobby should acknowledge at once
/// and process later; one that takes longer is treated as failed and retried.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Time an admin HTTP client has to send a request's headers, on a new connection or between
/// requests on a kept-alive one. Scrapers, probes and lobbies send theirs at once; a client
/// that dribbles them (slowloris) or idles holds a connection no longer than this.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent admin HTTP connections. Probes, a scraper and a few lobby servers need a
/// handful; 256 leaves room for those and the event-stream subscribers while bounding the file
/// descriptors and memory a flood of connections can take.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

/// Event-stream subscribers at once. A lobby needs one or two streams per service; 64 is far
/// beyond that and leaves most admin connections (`ADMIN_MAX_CONNECTIONS`) for the API and
/// probes.
pub const EVENT_STREAM_MAX_SUBSCRIBERS: usize = 64;

// Accepted ranges. Each bounds what a typo could make absurd, not what a deployment may want.

/// Keepalive timeout: shorter than 100 ms loses clients to a scheduling hiccup, longer than
/// 10 min keeps dead clients' resources that long.
pub const KEEPALIVE_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(600);

/// Bind timeout: the same bounds as the keepalive timeout.
pub const BIND_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(600);

/// Host bind timeout: a lobby may hand the reservation to a host that is still loading.
pub const HOST_BIND_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// Members per allocation: a host and one peer, up to the protocol's limit.
pub const MAX_PEERS_PER_ALLOCATION_RANGE: RangeInclusive<u16> = 2..=baton_protocol::MAX_PEERS_LIMIT;

/// Allocations held at once: at least one.
pub const MAX_ALLOCATIONS_RANGE: RangeInclusive<usize> = 1..=usize::MAX;

/// Concurrent connections: at least one.
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=usize::MAX;

/// Control frame cap: enough for every message, at most 1 MiB.
pub const MAX_CONTROL_FRAME_RANGE: RangeInclusive<usize> =
    baton_protocol::frame::MIN_MAX_FRAME_LEN..=1 << 20;

/// Datagram payload cap: a larger value than the protocol's promise could not be delivered on
/// every path.
pub const MAX_DATAGRAM_PAYLOAD_RANGE: RangeInclusive<usize> =
    1..=baton_protocol::MAX_DATAGRAM_PAYLOAD;

/// Join-code length: what the protocol's codes allow.
pub const JOIN_CODE_LEN_RANGE: RangeInclusive<usize> =
    baton_protocol::join_code::MIN_LEN..=baton_protocol::join_code::MAX_LEN;

/// Join-code time to live: 1 s to 30 days.
pub const JOIN_CODE_TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600);

/// Migration timeout: the same bounds as the keepalive timeout.
pub const MIGRATION_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(600);

/// Host-loss timeout and its minimum: 100 ms (a few scheduling hiccups) to 10 min (the longest
/// keepalive; an allocation's timeout is capped by the keepalive timeout anyway). A value
/// that fits in `CreateAllocation`'s 16-bit milliseconds is reported exactly.
pub const HOST_LOSS_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(600);

/// Lobby election window: zero (the relay elects at once) to a minute of a game without host.
pub const LOBBY_ELECTION_WINDOW_RANGE: RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(60);

/// Socket buffer request: 64 KiB to 1 GiB.
pub const UDP_BUFFER_RANGE: RangeInclusive<usize> = 64 << 10..=1 << 30;

/// QUIC endpoints: one per core, for machines up to 64 cores.
pub const ENDPOINTS_RANGE: RangeInclusive<usize> = 1..=64;

/// Snapshot size limit: 1 KiB to 256 MiB.
pub const MAX_SNAPSHOT_RANGE: RangeInclusive<usize> = 1024..=256 << 20;

/// Events queued per webhook: 1 to a million.
pub const HOOK_QUEUE_RANGE: RangeInclusive<usize> = 1..=1_000_000;

/// Events kept for resuming subscribers: 1 to a million.
pub const EVENT_REPLAY_RANGE: RangeInclusive<usize> = 1..=1_000_000;

/// First webhook retry delay: 10 ms to 1 min.
pub const WEBHOOK_BACKOFF_INITIAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(60);

/// Longest webhook retry delay: at most 1 h (and never below the first delay).
pub const WEBHOOK_BACKOFF_MAX_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(3600);

/// Webhook request timeout: 100 ms to 5 min.
pub const WEBHOOK_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(300);

/// Admin header timeout: 100 ms to 5 min.
pub const ADMIN_HEADER_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(300);

/// Admin connections: at least one, at most a million (file descriptors run out first).
pub const ADMIN_MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=1_000_000;

/// Event-stream subscribers: at least one, at most a million.
pub const EVENT_STREAM_MAX_SUBSCRIBERS_RANGE: RangeInclusive<usize> = 1..=1_000_000;

/// Datagrams per second per client: at least 1, at most a million (no game sends more).
pub const CLIENT_DATAGRAMS_PER_SECOND_RANGE: RangeInclusive<usize> = 1..=1_000_000;

/// Bytes per second per client: 1 KiB to 1 GiB.
pub const CLIENT_BYTES_PER_SECOND_RANGE: RangeInclusive<usize> = 1024..=1 << 30;

/// Bytes per second per allocation: 0 (off) to 1 GiB.
pub const ALLOCATION_BYTES_PER_SECOND_RANGE: RangeInclusive<usize> = 0..=1 << 30;

/// Control requests per second per client: 1 to 10,000.
pub const CLIENT_REQUESTS_PER_SECOND_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Failed-join burst per client: at least one, at most what no typo needs.
pub const JOIN_FAILURE_BURST_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Failed-join refill interval per client.
pub const JOIN_FAILURE_REFILL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(60 * 60);

/// Relay-wide failed-join burst.
pub const RELAY_JOIN_FAILURE_BURST_RANGE: RangeInclusive<usize> = 1..=1_000_000;

/// Relay-wide failed joins per second.
pub const RELAY_JOIN_FAILURES_PER_SECOND_RANGE: RangeInclusive<usize> = 1..=1_000_000;

/// Connections per IPv4 address, IPv4 /24, IPv6 /64 and IPv6 /48.
pub const MAX_CONNECTIONS_PER_PREFIX_RANGE: RangeInclusive<usize> = 1..=usize::MAX;

/// Handshake Retry threshold: 0 sends a Retry to every new client.
pub const HANDSHAKE_RETRY_THRESHOLD_RANGE: RangeInclusive<usize> = 0..=usize::MAX;
