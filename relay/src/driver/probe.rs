//! The NAT probe endpoint (SPEC section 17.5): a second QUIC endpoint, on its own UDP socket
//! on the listen address's IP (`probe_listen`), with the relay's TLS configuration. A client
//! connects to it from the socket it uses for the relay, opens a control stream and sends
//! `Probe`; the relay answers one `ObservedAddress` (probe port 0) with the address it sees
//! for *this* connection, and the connection ends. The client compares it with the main
//! port's `ObservedAddress`: the same address and port means its NAT maps the socket the same
//! way for both destinations (endpoint-independent), another port that it does not.
//!
//! Not the control plane: nothing here binds, allocates or reaches the control task. It is
//! bounded on its own: attempts are admitted per source ([`ProbeLimiter`]: a token bucket per
//! IPv4 address or IPv6 /64, in a table of at most [`MAX_SOURCES`] entries) and up to
//! [`MAX_PROBES`] connections at once, others are refused at accept and counted in
//! `baton_nat_probes_total{result="refused"}`; a connection lives at most [`PROBE_TIMEOUT`].
//! Anything but one `Probe` frame closes the connection as a protocol violation.
//!
//! Runs on the caller's runtime (`Relay::bind` spawns [`probe_loop`] there), with one task
//! per probe connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_protocol::{frame, ClientMessage, CloseCode, ServerMessage};
use quinn::VarInt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::accept::{next_incoming, speaks_current_version};
use super::bucket::{Clock, Rate};
use super::RelayError;
use crate::metrics::Metrics;
use crate::prefix::{self, Prefix};

/// The longest a probe connection lives, handshake excluded: its idle timeout, and the
/// deadline of the whole exchange.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probe connections (handshaking or established) at once; more are refused at accept.
pub(super) const MAX_PROBES: usize = 256;

/// Probes one source (an IPv4 address, an IPv6 /64) may make in a burst...
pub(super) const SOURCE_BURST: u64 = 8;

/// ...and per second after it.
pub(super) const SOURCE_PER_SECOND: u64 = 2;

/// Sources whose buckets are tracked at once; a full table first forgets the sources whose
/// buckets are full again, and refuses new sources while none is.
pub(super) const MAX_SOURCES: usize = 4096;

/// Requested kernel buffers of the probe socket: a probe is a handful of packets.
const PROBE_UDP_BUFFER: usize = 256 * 1024;

/// The per-source rate limit of probe attempts.
#[derive(Debug)]
pub(super) struct ProbeLimiter {
    rate: Rate,
    max_sources: usize,
    /// Each tracked source's bucket timestamp (`bucket.rs`); one at or before now is full.
    sources: Mutex<HashMap<Prefix, u64>>,
}

impl ProbeLimiter {
    /// `burst` probes per source, then `per_second`, tracking at most `max_sources` sources.
    pub(super) fn new(burst: u64, per_second: u64, max_sources: usize) -> ProbeLimiter {
        ProbeLimiter {
            rate: Rate::new(per_second, burst),
            max_sources: max_sources.max(1),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an attempt from `ip` at `now` (the relay clock's nanoseconds) is within its
    /// source's rate; if so it is charged.
    pub(super) fn admit(&self, ip: IpAddr, now: u64) -> bool {
        let key = prefix::host(ip);
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if !sources.contains_key(&key) && sources.len() >= self.max_sources {
            // A full bucket holds no state worth keeping.
            sources.retain(|_, tat| *tat > now);
            if sources.len() >= self.max_sources {
                return false;
            }
        }
        let tat = sources.get(&key).copied().unwrap_or(0);
        match self.rate.take(tat, now, 1) {
            Some(next) => {
                sources.insert(key, next);
                true
            }
            None => false,
        }
    }

    /// Sources tracked now.
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The probe endpoint's QUIC server configuration: the relay's TLS, one bidirectional stream,
/// no datagrams, [`PROBE_TIMEOUT`] idle timeout.
fn server_config(
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
) -> Result<quinn::ServerConfig, RelayError> {
    let mut t = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(PROBE_TIMEOUT).map_err(|e| RelayError::Quic(e.to_string()))?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(None)
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(1024))
        .receive_window(VarInt::from_u32(4096))
        .datagram_receive_buffer_size(None);
    let mut config = quinn::ServerConfig::with_crypto(crypto);
    config.transport_config(Arc::new(t));
    config
        .max_incoming(MAX_PROBES)
        .incoming_buffer_size(4 * 1024)
        .incoming_buffer_size_total(MAX_PROBES as u64 * 4 * 1024);
    Ok(config)
}

/// The probe endpoint as the [`Relay`](super::Relay) holds it: dropping it (with the relay)
/// closes it, and its accept loop ends.
#[derive(Debug)]
pub(super) struct ProbeEndpoint(pub(super) quinn::Endpoint);

impl Drop for ProbeEndpoint {
    fn drop(&mut self) {
        self.0.close(
            VarInt::from_u32(CloseCode::RelayShuttingDown.to_u32()),
            CloseCode::RelayShuttingDown.description().as_bytes(),
        );
    }
}

/// Binds the probe endpoint at `addr` with the relay's TLS `crypto`. A failure is a startup
/// error naming the address.
pub(super) fn bind(
    addr: SocketAddr,
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
) -> Result<quinn::Endpoint, RelayError> {
    let bind_error = |source| RelayError::Bind { addr, source };
    let server = server_config(crypto)?;
    let mut sockets = super::socket::bind_udp(addr, 1, PROBE_UDP_BUFFER).map_err(bind_error)?;
    let udp = sockets
        .pop()
        .ok_or_else(|| bind_error(std::io::Error::other("no socket was bound")))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| RelayError::Quic("the probe endpoint needs a Tokio runtime".into()))?;
    let endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), udp, runtime)
            .map_err(bind_error)?;
    if let Ok(bound) = endpoint.local_addr() {
        info!(%bound, "NAT probe endpoint bound");
    }
    Ok(endpoint)
}

/// Accepts probe connections on `endpoint` until `shutdown` or the endpoint closes.
pub(super) async fn probe_loop(
    endpoint: quinn::Endpoint,
    limiter: Arc<ProbeLimiter>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let clock = Clock::start();
    let slots = Arc::new(Semaphore::new(MAX_PROBES));
    loop {
        let Some(incoming) = next_incoming(&endpoint, &shutdown).await else {
            break;
        };
        let remote = incoming.remote_address();
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) if limiter.admit(remote.ip(), clock.now()) => slot,
            _ => {
                debug!(%remote, "NAT probe refused");
                metrics.nat_probes.refused.inc();
                incoming.refuse();
                continue;
            }
        };
        let metrics = metrics.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let served = tokio::time::timeout(PROBE_TIMEOUT, serve(incoming, &metrics)).await;
            if served.is_err() {
                debug!(%remote, "NAT probe timed out");
            }
        });
    }
    endpoint.close(
        VarInt::from_u32(CloseCode::RelayShuttingDown.to_u32()),
        CloseCode::RelayShuttingDown.description().as_bytes(),
    );
}

/// Closes `conn` with `code`.
fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(
        VarInt::from_u32(code.to_u32()),
        code.description().as_bytes(),
    );
}

/// One probe connection: the handshake, one `Probe` frame in, one `ObservedAddress` out, then
/// the end (the client closes once it has read the reply; the relay waits for that, or for
/// the reply to be acknowledged).
async fn serve(incoming: quinn::Incoming, metrics: &Metrics) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            debug!(cause = %e, "NAT probe handshake failed");
            return;
        }
    };
    if !speaks_current_version(&conn) {
        close(&conn, CloseCode::UnsupportedVersion);
        return;
    }
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    // Exactly one frame: the 4-byte length prefix of a 1-byte message, then the message.
    let mut frame = [0u8; frame::LEN_PREFIX + 1];
    if recv.read_exact(&mut frame).await.is_err() {
        close(&conn, CloseCode::ProtocolViolation);
        return;
    }
    let probe = frame[..frame::LEN_PREFIX] == 1u32.to_be_bytes()
        && ClientMessage::decode(&frame[frame::LEN_PREFIX..]) == Ok(ClientMessage::Probe);
    if !probe {
        debug!("not a Probe on the probe port");
        close(&conn, CloseCode::ProtocolViolation);
        return;
    }
    let seen = conn.remote_address();
    let reply = ServerMessage::ObservedAddress {
        address: SocketAddr::new(seen.ip().to_canonical(), seen.port()),
        probe_port: 0,
    };
    if send.write_all(&reply.to_frame()).await.is_err() || send.finish().is_err() {
        return;
    }
    metrics.nat_probes.answered.inc();
    // Anything more from the client is a violation; its close, or the reply acknowledged,
    // ends the probe.
    let mut more = [0u8; 1];
    tokio::select! {
        biased;
        read = recv.read(&mut more) => match read {
            Ok(Some(_)) => close(&conn, CloseCode::ProtocolViolation),
            // The client finished its side: wait for it to close, within the deadline.
            Ok(None) => {
                conn.closed().await;
            }
            Err(_) => {}
        },
        _ = conn.closed() => {}
    }
    // Reached only once the client has closed, or when it went on sending; either way the
    // connection is over.
    let _ = send.stopped().await;
    close(&conn, CloseCode::Normal);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_others_are_not_charged() {
        let l = ProbeLimiter::new(3, 1, 16);
        let now = 10 * SECOND;
        for _ in 0..3 {
            assert!(l.admit(ip("192.0.2.1"), now));
        }
        assert!(!l.admit(ip("192.0.2.1"), now));
        // The same client through a dual-stack socket is the same source.
        assert!(!l.admit(ip("::ffff:192.0.2.1"), now));
        assert!(l.admit(ip("192.0.2.2"), now));
        // One more a second.
        assert!(l.admit(ip("192.0.2.1"), now + SECOND));
        assert!(!l.admit(ip("192.0.2.1"), now + SECOND));
        // An IPv6 /64 is one source.
        assert!(l.admit(ip("2001:db8::1"), now));
        assert!(l.admit(ip("2001:db8::2"), now));
        assert!(l.admit(ip("2001:db8::3"), now));
        assert!(!l.admit(ip("2001:db8::4"), now));
    }

    #[test]
    fn the_source_table_is_bounded_and_forgets_full_buckets() {
        let l = ProbeLimiter::new(2, 1, 2);
        let now = 10 * SECOND;
        assert!(l.admit(ip("192.0.2.1"), now));
        assert!(l.admit(ip("192.0.2.2"), now));
        // Full of sources that probed just now: a third is refused.
        assert!(!l.admit(ip("192.0.2.3"), now));
        assert_eq!(l.tracked(), 2);
        // A known source still gets its burst.
        assert!(l.admit(ip("192.0.2.1"), now));
        // Once their buckets are full again they are forgotten, and the third gets in.
        assert!(l.admit(ip("192.0.2.3"), now + 3 * SECOND));
        assert_eq!(l.tracked(), 1);
    }
}
