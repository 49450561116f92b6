//! Default settings of the SDK, each with the reason for its value.

use std::time::Duration;

/// How often the SDK sends a QUIC PING when it has nothing else to send.
///
/// The relay forgets a client it has not heard from for 10 s. Pinging every 2 s means four
/// consecutive pings can be lost before the relay gives up on us, and costs a few bytes a second.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// The host-loss timeout the SDK assumes until the relay reports its allocation's (a relay
/// always does, in `AllocationCreated` and `Joined`; this is the relay's default). The host's
/// heartbeat checks every sixth of it.
pub const HOST_LOSS_TIMEOUT: Duration = Duration::from_millis(1500);

/// The SDK's QUIC idle timeout.
///
/// Equal to the relay's 10 s: QUIC uses the smaller of both sides' values, so a larger value
/// would change nothing, and a smaller one would make the SDK give up on a relay that is still
/// within its own promise.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the QUIC handshake with the relay.
///
/// QUIC's first retransmission of a lost Initial packet comes after about 1 s, so 5 s survives
/// several lost packets on a bad link while keeping a game's "connecting" screen short. An
/// unreachable relay (wrong port, firewall) usually produces no answer at all, so this is also
/// how long such a mistake takes to report.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for the relay's answer to a control request (create, join, kick, revoke).
///
/// The relay answers at once; a request it has not answered after the idle timeout (10 s) is
/// not going to be answered by a live relay.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Server name presented in TLS (SNI) and checked against the relay's certificate.
///
/// The relay's development certificate is issued for `localhost`; with a pinned fingerprint the
/// name is not checked at all.
pub const SERVER_NAME: &str = "localhost";

/// Control events (joins, leaves, drop reports) buffered for the application.
///
/// Membership changes are bounded by the allocation size (at most 4096 members) and drop reports
/// come at most once a second per reason, so an application reading events at all never reaches
/// this; one that never reads them loses the newest events (counted) instead of growing memory.
pub const EVENT_QUEUE: usize = 1024;

/// Control frames (kick, revoke) queued for the control-stream writer.
///
/// Requests are rare and each waits for its answer; this only absorbs bursts.
pub const REQUEST_QUEUE: usize = 64;

/// How long [`Session::close`](crate::Session::close) waits for the relay to acknowledge the
/// close before returning.
///
/// Waiting lets the relay learn at once that we left (instead of after its 10 s idle timeout);
/// on a healthy path the acknowledgement takes a few round trips, well under a second.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long to wait for the connection to close after the relay ended the control stream.
///
/// The relay ends the control stream only when it closes the connection; the two can arrive in
/// either order, and the connection close carries the reason we want to report.
pub const STREAM_END_GRACE: Duration = Duration::from_secs(1);

/// Largest migration snapshot the SDK accepts from the relay when it becomes host.
///
/// The relay's own limit is 10 MiB by default and an operator may raise it; 64 MiB leaves room
/// for that while bounding what a relay can make a client buffer.
pub const MAX_SNAPSHOT: usize = 64 * 1024 * 1024;

/// How often at most the SDK uploads a snapshot staged with `Session::stage_snapshot`.
///
/// Once a second keeps the state a new host resumes from at most a second old (games tick 20
/// to 60 times a second, so this is at most a few dozen ticks), while a game that stages every
/// tick uploads once a second rather than sixty times.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a join or rejoin keeps retrying while the allocation is migrating.
///
/// A migration completes in well under a second when the elected member is responsive; the
/// relay passes over one that is not after its 5 s deadline. 10 s covers one pass-over.
pub const MIGRATION_RETRY: Duration = Duration::from_secs(10);

/// Shortest wait between join retries while an allocation migrates, whatever the relay says.
pub const MIGRATION_POLL_MIN: Duration = Duration::from_millis(20);

/// The longest handshake timeout of a resuming session's first round of attempts (doubling
/// each round up to the connect timeout): a fallback relay that is down too must not hold up
/// the others for a whole connect timeout. The first round gives each relay
/// [`RESUME_HANDSHAKE_RTTS`] round trips of the lost connection, within
/// [`RESUME_HANDSHAKE_MIN`] and this.
pub const RESUME_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The shortest handshake timeout of a resuming session's first round of attempts.
pub const RESUME_HANDSHAKE_MIN: Duration = Duration::from_millis(250);

/// Round trips (of the lost connection) a fallback relay has to complete the handshake in the
/// first round of a resume: a QUIC handshake takes one, plus the relay's work.
pub const RESUME_HANDSHAKE_RTTS: u32 = 4;

/// How soon a resuming session asks a relay again when it redirected the session to the
/// relay the session just lost (the fleet's directory names a lost node until its heartbeat
/// expires, a few seconds at most).
pub const LOST_RELAY_POLL: Duration = Duration::from_millis(250);

/// Longest wait between join retries while an allocation migrates: the relay's hint is the
/// elected member's whole deadline, but a responsive one takes over in milliseconds.
pub const MIGRATION_POLL_MAX: Duration = Duration::from_millis(250);

/// What the default resume window adds to the idle timeout
/// ([`ClientConfig::resume_window`](crate::ClientConfig::resume_window)).
///
/// The members of a game on a relay that dies notice one after the other, each one idle
/// timeout after it last heard from the relay, so the last of them notices up to an idle
/// timeout after the first: a window of one idle timeout lets the first to notice keep trying
/// until the others can come back too. The 5 s on top cover the fleet: another node takes an
/// allocation over only once the dead node's heartbeat has lapsed in the directory (3 s), and
/// until then a rejoin is redirected to the dead node, which costs a connect attempt.
pub const RESUME_MARGIN: Duration = Duration::from_secs(5);

/// First wait before trying the fallback relays again, after every one of them failed; it
/// doubles after each round up to [`RESUME_BACKOFF_MAX`].
///
/// Short: a node takes an allocation over as soon as the directory lets it, and the game is
/// frozen until then.
pub const RESUME_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest wait between two rounds of resume attempts.
pub const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a session moving to another node on `Relocate` (its relay is draining) tries to
/// rejoin there, `migrating` retries included, before it gives up and stays on the old relay.
///
/// The old connection carries the game meanwhile, so this only bounds the attempt: the default
/// connect timeout and bind timeout of one connection (5 s + 10 s) fit in it.
pub const RELOCATE_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest the session, after a move to another node (`Relocate`), still takes datagrams
/// from its old connection before closing it.
///
/// The members of a game move one after the other, each when its rejoin completes; until the
/// others have moved too, what they send still comes through the old node. A moved session
/// finishes its control stream there, and the old node closes the old connection as soon as
/// every member of the game has moved (SPEC section 5.3), usually within a few ticks. This
/// bounds the wait when it does not (a member that cannot reach the new node, or an old node
/// that closes at once): 2 s is many times the spread of a game's moves on a loaded machine.
pub const RELOCATE_LINGER: Duration = Duration::from_secs(2);
