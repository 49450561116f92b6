//! Default settings of the SDK, each with the reason for its value.

use std::time::Duration;

/// How often the SDK sends a QUIC PING when it has nothing else to send.
///
/// The relay forgets a client it has not heard from for 10 s. Pinging every 2 s means four
/// consecutive pings can be lost before the relay gives up on us, and costs a few bytes a second.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);

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
