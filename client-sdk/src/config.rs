//! Client configuration: where the relay is, how to trust it, and connection timings.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use crate::{defaults, tls, DirectPolicy, Error, NetworkSimulator};

/// How the SDK decides that it is talking to the real relay.
#[derive(Clone)]
#[non_exhaustive]
pub enum Trust {
    /// Trust exactly the certificate whose DER encoding has this SHA-256 digest (the relay
    /// prints it at start-up). Good for the relay's self-signed development certificate: no file
    /// to ship, and the relay must still prove it holds the certificate's private key.
    Fingerprint([u8; 32]),
    /// Trust the certificate(s) in this PEM file as roots (for example the relay's
    /// self-signed development certificate). The relay's certificate must be valid for
    /// [`ClientConfig::server_name`]. The file is read on every connect.
    CertificateFile(PathBuf),
    /// Trust these DER certificates as roots, as [`Trust::CertificateFile`] does.
    Certificates(Vec<CertificateDer<'static>>),
    /// Trust the Mozilla root programme (`webpki-roots`), for relays with real certificates.
    WebPki,
}

impl Trust {
    /// [`Trust::Fingerprint`] from hex text, with or without colons between byte pairs
    /// (`3fa1…` or `3F:A1:…`).
    ///
    /// # Errors
    /// [`Error::Config`] if the text is not 32 bytes of hex.
    pub fn fingerprint_hex(text: &str) -> Result<Self, Error> {
        tls::parse_fingerprint(text).map(Trust::Fingerprint)
    }

    /// [`Trust::Fingerprint`] of a DER certificate.
    pub fn fingerprint_of(cert_der: &[u8]) -> Self {
        Trust::Fingerprint(tls::fingerprint(cert_der))
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Fingerprint(fp) => f
                .debug_tuple("Fingerprint")
                .field(&tls::format_fingerprint(fp))
                .finish(),
            Trust::CertificateFile(path) => f.debug_tuple("CertificateFile").field(path).finish(),
            Trust::Certificates(certs) => write!(f, "Certificates([{} certificates])", certs.len()),
            Trust::WebPki => f.write_str("WebPki"),
        }
    }
}

/// Everything needed to reach a relay. Built with [`ClientConfig::new`] and by-value setters;
/// one config can be used for any number of connections.
///
/// Setters do not fail; [`ClientConfig::validate`] (which every connect calls first) reports a
/// bad combination as [`Error::Config`].
///
/// ```
/// use std::time::Duration;
/// use baton_client::{ClientConfig, Trust};
///
/// let config = ClientConfig::new("127.0.0.1:7700".parse().unwrap(), Trust::WebPki)
///     .server_name("relay.example.com")
///     .connect_timeout(Duration::from_secs(3));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) relay: SocketAddr,
    pub(crate) trust: Trust,
    pub(crate) server_name: String,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) alpn: Vec<u8>,
    pub(crate) bind_addr: Option<SocketAddr>,
    pub(crate) max_snapshot: usize,
    pub(crate) snapshot_interval: Duration,
    pub(crate) migration_retry: Duration,
    pub(crate) credential: Option<String>,
    pub(crate) fallback_relays: Vec<SocketAddr>,
    pub(crate) resume_window: Option<Duration>,
    pub(crate) direct: DirectPolicy,
    pub(crate) network_simulator: Option<NetworkSimulator>,
    /// The TLS configuration, built on first use and shared by this configuration's clones,
    /// so that a reconnect resumes its TLS session (SPEC 2.1): rustls offers a session only
    /// under the certificate verifier that checked it. Made afresh by [`ClientConfig::new`]
    /// and [`ClientConfig::alpn`].
    pub(crate) tls: TlsCache,
}

impl ClientConfig {
    /// A configuration for the relay at `relay`, trusted as `trust`, with default settings.
    pub fn new(relay: SocketAddr, trust: Trust) -> Self {
        Self {
            relay,
            trust,
            server_name: defaults::SERVER_NAME.to_owned(),
            keep_alive_interval: defaults::KEEP_ALIVE_INTERVAL,
            idle_timeout: defaults::IDLE_TIMEOUT,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            alpn: baton_protocol::ALPN.to_vec(),
            bind_addr: None,
            max_snapshot: defaults::MAX_SNAPSHOT,
            snapshot_interval: defaults::SNAPSHOT_INTERVAL,
            migration_retry: defaults::MIGRATION_RETRY,
            credential: None,
            fallback_relays: Vec::new(),
            resume_window: None,
            direct: DirectPolicy::default(),
            network_simulator: None,
            tls: TlsCache::default(),
        }
    }

    /// Other relays of the same fleet, in the order to try them, for resuming a session whose
    /// relay is lost (default: none, and a lost relay ends the session).
    ///
    /// When a session's connection ends unexpectedly (the relay went silent for the idle
    /// timeout, reset the connection, or closed it because it is shutting down), the session
    /// comes back under its peer id through these relays by itself: it sends its reconnect
    /// token to each in turn (following one redirect per attempt, the relay the session first
    /// connected to tried first unless it is the one lost), retrying the list with a short
    /// backoff for at most [`ClientConfig::resume_window`]. The game keeps its
    /// [`Session`](crate::Session) and gets [`Event::Resumed`](crate::Event::Resumed); see the
    /// session's documentation for what happens meanwhile. A deliberate end (closed, kicked,
    /// allocation closed, host lost) never resumes.
    ///
    /// Every relay listed must present a certificate this configuration's [`Trust`] accepts
    /// (a fleet shares one certificate, or its nodes have certificates for the same name under
    /// [`Trust::WebPki`]): the [`ClientConfig::server_name`] is reused for each. They must be
    /// of the relay's address family, since the session's local socket is reused.
    pub fn fallback_relays(mut self, relays: Vec<SocketAddr>) -> Self {
        self.fallback_relays = relays;
        self
    }

    /// How long a session whose relay was lost keeps trying to resume through the
    /// [`ClientConfig::fallback_relays`] before it ends with the reason it lost its relay
    /// (default: the idle timeout plus [`defaults::RESUME_MARGIN`], see there why). Zero never
    /// resumes.
    pub fn resume_window(mut self, window: Duration) -> Self {
        self.resume_window = Some(window);
        self
    }

    /// The effective resume window.
    pub(crate) fn effective_resume_window(&self) -> Duration {
        self.resume_window
            .unwrap_or_else(|| self.idle_timeout.saturating_add(defaults::RESUME_MARGIN))
    }

    /// Whether sessions try direct host–peer paths (default [`DirectPolicy::Never`]).
    ///
    /// With [`DirectPolicy::Prefer`], the host and each peer try to open a direct QUIC
    /// connection between them through their NATs (UDP hole punching, the relay introducing
    /// them), and datagrams between the two take it while it works and is no slower than the
    /// relay; they fall back to the relay by themselves when it fails. **A direct path tells
    /// each of the two players the other's IP addresses**, which is why it is off unless the
    /// game opts in. A relay started with `--allow-direct false` refuses direct paths whatever
    /// this says. See [`Session::path`](crate::Session::path) and
    /// [`Event::PathChanged`](crate::Event::PathChanged).
    pub fn direct(mut self, policy: DirectPolicy) -> Self {
        self.direct = policy;
        self
    }

    /// Simulates a bad network on every session made with this configuration, for testing a
    /// game under loss, delay and jitter (default: off, and then nothing is simulated at all:
    /// the session's socket is not even wrapped).
    ///
    /// It applies to everything the session sends and receives on its socket: the relay
    /// connection and the direct host–peer paths alike (the raw hole-punching packets bypass
    /// it). See [`NetworkSimulator`] for the conditions, its text form (for a command line) and
    /// its [`stats`](NetworkSimulator::stats). [`ClientConfig::validate`] checks it.
    ///
    /// ```
    /// use baton_client::{ClientConfig, NetworkSimulator, Trust};
    ///
    /// let sim: NetworkSimulator = "loss=5%,delay=50ms,jitter=10ms".parse().unwrap();
    /// let config = ClientConfig::new("127.0.0.1:7700".parse().unwrap(), Trust::WebPki)
    ///     .network_simulator(sim);
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn network_simulator(mut self, simulator: NetworkSimulator) -> Self {
        self.network_simulator = Some(simulator);
        self
    }

    /// The lobby-minted credential sent with every create, join and rejoin (SPEC section 16).
    /// A relay started with `--auth-secret` refuses those requests without a valid one, with
    /// [`Error::CredentialRefused`]; an open relay ignores it. The lobby mints it for this
    /// player; [`Host::create_with_credential`](crate::Host::create_with_credential) and
    /// [`Peer::join_with_credential`](crate::Peer::join_with_credential) override it per call.
    /// Mint it to outlive the game: a member that loses its connection rejoins with it.
    pub fn credential(mut self, credential: impl Into<String>) -> Self {
        self.credential = Some(credential.into());
        self
    }

    /// The relay's address.
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// The TLS server name (SNI) to present and to check the certificate against (default
    /// [`defaults::SERVER_NAME`]). Must be a DNS name or an IP address. Not checked with
    /// [`Trust::Fingerprint`].
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// How often to ping the relay when idle (default [`defaults::KEEP_ALIVE_INTERVAL`]). Must be
    /// non-zero and shorter than the idle timeout, or the relay forgets the client.
    pub fn keep_alive_interval(mut self, interval: Duration) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// How long the relay may stay silent before the connection counts as lost (default
    /// [`defaults::IDLE_TIMEOUT`]). Must be non-zero; the relay's own 10 s still applies if
    /// smaller.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long to wait for the QUIC handshake (default [`defaults::CONNECT_TIMEOUT`]); after it
    /// a connect fails with [`Error::RelayUnreachable`]. Must be non-zero.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the relay's answer to a control request (default
    /// [`defaults::REQUEST_TIMEOUT`]); after it the request fails with
    /// [`Error::RequestTimedOut`]. Must be non-zero.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Local UDP address to bind (default: port 0 on the unspecified address of the relay's
    /// address family). Must be of the same family as the relay's address.
    pub fn bind_addr(mut self, addr: SocketAddr) -> Self {
        self.bind_addr = Some(addr);
        self
    }

    /// Largest migration snapshot to accept from the relay on becoming host (default
    /// [`defaults::MAX_SNAPSHOT`]). A larger one is discarded and the migration completes
    /// without it. Must be non-zero.
    pub fn max_snapshot(mut self, bytes: usize) -> Self {
        self.max_snapshot = bytes;
        self
    }

    /// How often at most a snapshot staged with
    /// [`Session::stage_snapshot`](crate::Session::stage_snapshot) is uploaded (default
    /// [`defaults::SNAPSHOT_INTERVAL`]). Must be non-zero.
    pub fn snapshot_interval(mut self, interval: Duration) -> Self {
        self.snapshot_interval = interval;
        self
    }

    /// How long [`Peer::join`](crate::Peer::join) and [`Peer::rejoin`](crate::Peer::rejoin)
    /// keep retrying while the allocation is migrating (default [`defaults::MIGRATION_RETRY`]);
    /// zero does not retry.
    pub fn migration_retry(mut self, window: Duration) -> Self {
        self.migration_retry = window;
        self
    }

    /// ALPN protocol to offer instead of [`baton_protocol::ALPN`]. **For testing only**: a
    /// relay rejects any other value, which is how a protocol-version mismatch looks
    /// ([`Error::ProtocolVersionMismatch`]). Must be 1 to 255 bytes.
    pub fn alpn(mut self, alpn: impl Into<Vec<u8>>) -> Self {
        self.alpn = alpn.into();
        // The TLS configuration offers the ALPN: this configuration gets its own.
        self.tls = TlsCache::default();
        self
    }

    /// The local address connections bind to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.bind_addr.unwrap_or(match self.relay {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        })
    }

    /// Checks that the settings make sense together. Every connect calls this first.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if ServerName::try_from(self.server_name.as_str()).is_err() {
            return bad(format!(
                "server name {:?} is neither a DNS name nor an IP address",
                self.server_name
            ));
        }
        if self.idle_timeout.is_zero() {
            return bad("idle timeout must be non-zero".into());
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return bad(format!("idle timeout {:?} is too large", self.idle_timeout));
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return bad(format!(
                "keep-alive interval {:?} must be non-zero and shorter than the idle timeout {:?}",
                self.keep_alive_interval, self.idle_timeout
            ));
        }
        if self.connect_timeout.is_zero() {
            return bad("connect timeout must be non-zero".into());
        }
        if self.request_timeout.is_zero() {
            return bad("request timeout must be non-zero".into());
        }
        if self.max_snapshot == 0 {
            return bad("snapshot limit must be non-zero".into());
        }
        if let Some(credential) = &self.credential {
            if credential.is_empty() || !baton_protocol::credential::text_ok(credential.as_bytes())
            {
                return bad(format!(
                    "a credential is 1 to {} base64url characters (A-Z a-z 0-9 - _)",
                    baton_protocol::credential::MAX_TEXT_LEN
                ));
            }
        }
        if self.snapshot_interval.is_zero() {
            return bad("snapshot interval must be non-zero".into());
        }
        if let Some(simulator) = &self.network_simulator {
            simulator.validate()?;
        }
        if self.alpn.is_empty() || self.alpn.len() > 255 {
            return bad(format!(
                "ALPN must be 1 to 255 bytes, got {}",
                self.alpn.len()
            ));
        }
        if let Some(fallback) = self
            .fallback_relays
            .iter()
            .find(|f| f.is_ipv4() != self.relay.is_ipv4())
        {
            return bad(format!(
                "fallback relay {fallback} and relay address {} are of different families",
                self.relay
            ));
        }
        if let Some(bind) = self.bind_addr {
            if bind.is_ipv4() != self.relay.is_ipv4() {
                return bad(format!(
                    "bind address {bind} and relay address {} are of different families",
                    self.relay
                ));
            }
        }
        Ok(())
    }

    /// The quinn client configuration, and the log its certificate verifier writes to.
    pub(crate) fn quinn_config(&self) -> Result<(quinn::ClientConfig, Arc<tls::VerifyLog>), Error> {
        self.validate()?;
        let (crypto, log) = self.tls.get_or_build(|| {
            let setup = tls::client_config(&self.trust, &self.alpn)?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(setup.config)
                .map_err(|e| Error::Config(format!("TLS configuration unusable for QUIC: {e}")))?;
            Ok((Arc::new(crypto), setup.log))
        })?;
        let mut config = quinn::ClientConfig::new(crypto);
        config.transport_config(Arc::new(self.transport_config()?));
        Ok((config, log))
    }

    /// The QUIC transport settings every connection of this configuration uses: a ping every
    /// [`ClientConfig::keep_alive_interval`], the [`ClientConfig::idle_timeout`], the stream
    /// limits the protocol needs, and no path-MTU probing (SPEC 2.1). Exposed so that tests and tools can drive QUIC with exactly
    /// the SDK's settings.
    ///
    /// # Errors
    /// [`Error::Config`] if the idle timeout is too large for QUIC.
    pub fn transport_config(&self) -> Result<quinn::TransportConfig, Error> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            Error::Config(format!("idle timeout {:?} is too large", self.idle_timeout))
        })?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_idle_timeout(Some(idle))
            // The relay opens no bidirectional streams towards a client, and one unidirectional
            // stream at a time: the migration snapshot, when this client becomes host.
            .max_concurrent_bidi_streams(0u32.into())
            .max_concurrent_uni_streams(1u32.into())
            // No path-MTU probes towards the relay: everything Baton sends fits QUIC's 1200-byte
            // minimum, and each probe is a padded packet the relay must decrypt and parse.
            .mtu_discovery_config(None);
        Ok(transport)
    }
}

/// A [`ClientConfig`]'s TLS configuration and its verifier's log, built once and shared by
/// the configuration's clones and every connection they make (the relay connection's
/// reconnects, rejoins and migrations), so rustls can resume their TLS sessions.
///
/// The log is shared too. An attempt takes only a failure recorded since it started, so a
/// failure no attempt took (a NAT probe's) is never reported later; when two handshakes of
/// one configuration fail verification at the same moment, one may report the other's reason
/// (both are certificate errors).
#[derive(Clone, Default)]
pub(crate) struct TlsCache(Arc<Mutex<Option<SharedTls>>>);

/// The QUIC crypto configuration and the log its verifier writes to.
type SharedTls = (
    Arc<quinn::crypto::rustls::QuicClientConfig>,
    Arc<tls::VerifyLog>,
);

impl TlsCache {
    /// The shared configuration, built by `build` on first use (a failure is returned and
    /// not kept, so the next call tries again).
    fn get_or_build(
        &self,
        build: impl FnOnce() -> Result<SharedTls, Error>,
    ) -> Result<SharedTls, Error> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = slot.as_ref() {
            return Ok(shared.clone());
        }
        let shared = build()?;
        *slot = Some(shared.clone());
        Ok(shared)
    }
}

impl fmt::Debug for TlsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let built = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        f.debug_struct("TlsCache").field("built", &built).finish()
    }
}

/// What a host asks for when it creates an allocation. `None` leaves the choice to the relay.
///
/// ```
/// use std::time::Duration;
/// use baton_client::AllocationOptions;
///
/// let options = AllocationOptions::default()
///     .max_peers(8)
///     .code_ttl(Duration::from_secs(600));
/// assert_eq!(options.max_peers, Some(8));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocationOptions {
    /// Maximum members including the host: 1 to [`baton_protocol::MAX_PEERS_LIMIT`]. The relay
    /// may lower it; [`Host::max_peers`](crate::Host::max_peers) tells what was granted.
    pub max_peers: Option<u16>,
    /// How long the join code stays valid: at least one second, counted in whole seconds. The
    /// relay may shorten it; [`Host::code_ttl`](crate::Host::code_ttl) tells what was granted.
    pub code_ttl: Option<Duration>,
    /// How long the relay may hear nothing from the host before it treats the host as lost,
    /// closes its connection and migrates the game to another member (SPEC section 11.1); in
    /// whole milliseconds, 1 ms to about 65 s. `None` takes the relay's default (1.5 s). The
    /// relay clamps it into its bounds (by default 500 ms to its 10 s keepalive timeout);
    /// [`Session::host_loss_timeout`](crate::Session::host_loss_timeout) tells what was
    /// granted.
    ///
    /// The trade-off: a shorter timeout replaces a crashed host sooner, but also migrates
    /// away from a live host whose network drops everything for longer than it (a Wi-Fi
    /// hand-over, a long stall of the whole process). A longer one rides out such blips but
    /// leaves the game without a host that long after a crash. The SDK's host sends a small
    /// heartbeat every sixth of it when it has nothing else to send, from its own task, so a
    /// blocked game loop (a scene load, a GC pause) does not count as silence.
    pub host_loss_timeout: Option<Duration>,
}

impl AllocationOptions {
    /// Sets [`AllocationOptions::max_peers`].
    pub fn max_peers(mut self, max_peers: u16) -> Self {
        self.max_peers = Some(max_peers);
        self
    }

    /// Sets [`AllocationOptions::code_ttl`].
    pub fn code_ttl(mut self, ttl: Duration) -> Self {
        self.code_ttl = Some(ttl);
        self
    }

    /// Sets [`AllocationOptions::host_loss_timeout`].
    pub fn host_loss_timeout(mut self, timeout: Duration) -> Self {
        self.host_loss_timeout = Some(timeout);
        self
    }

    /// The wire values of `CreateAllocation` (0 = relay default): `max_peers`,
    /// `code_ttl_secs`, `host_loss_timeout_ms`.
    pub(crate) fn wire_values(&self) -> Result<(u16, u32, u16), Error> {
        let max_peers = match self.max_peers {
            None => 0,
            Some(n) if (1..=baton_protocol::MAX_PEERS_LIMIT).contains(&n) => n,
            Some(n) => {
                return Err(Error::Config(format!(
                    "max_peers must be 1 to {}, got {n}",
                    baton_protocol::MAX_PEERS_LIMIT
                )))
            }
        };
        let code_ttl_secs = match self.code_ttl {
            None => 0,
            Some(ttl) => match u32::try_from(ttl.as_secs()) {
                Ok(secs) if secs >= 1 => secs,
                _ => {
                    return Err(Error::Config(format!(
                        "code_ttl must be 1 s to {} s, got {ttl:?}",
                        u32::MAX
                    )))
                }
            },
        };
        let host_loss_timeout_ms = match self.host_loss_timeout {
            None => 0,
            Some(t) => match u16::try_from(t.as_millis()) {
                Ok(ms) if ms >= 1 => ms,
                _ => {
                    return Err(Error::Config(format!(
                        "host_loss_timeout must be 1 ms to {} ms, got {t:?}",
                        u16::MAX
                    )))
                }
            },
        };
        Ok((max_peers, code_ttl_secs, host_loss_timeout_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        ClientConfig::new(
            "127.0.0.1:7700".parse().unwrap(),
            Trust::Fingerprint([7; 32]),
        )
    }

    #[test]
    fn defaults_are_valid_and_match_the_relay() {
        let c = config();
        c.validate().unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(10));
        assert_eq!(c.keep_alive_interval, Duration::from_secs(2));
        assert_eq!(c.alpn, b"baton/3");
        assert_eq!(c.local_addr(), "0.0.0.0:0".parse().unwrap());
        let v6 = ClientConfig::new("[::1]:7700".parse().unwrap(), Trust::WebPki);
        assert_eq!(v6.local_addr(), "[::]:0".parse().unwrap());
        c.quinn_config().unwrap();
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let bad = [
            config().server_name("not a name!"),
            config().keep_alive_interval(Duration::ZERO),
            config().keep_alive_interval(Duration::from_secs(10)),
            config().idle_timeout(Duration::ZERO),
            config().connect_timeout(Duration::ZERO),
            config().request_timeout(Duration::ZERO),
            config().alpn(Vec::new()),
            config().bind_addr("[::]:0".parse().unwrap()),
            config().credential(""),
            config().credential("has space"),
            config().credential("a+b/c="),
            config().credential("A".repeat(513)),
            config().fallback_relays(vec!["[::1]:7700".parse().unwrap()]),
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(Error::Config(_))), "{c:?}");
            assert!(matches!(c.quinn_config(), Err(Error::Config(_))), "{c:?}");
        }
    }

    #[test]
    fn the_resume_window_defaults_to_the_idle_timeout_plus_a_margin() {
        let c = config().idle_timeout(Duration::from_secs(1));
        assert_eq!(c.effective_resume_window(), Duration::from_secs(6));
        assert_eq!(
            c.resume_window(Duration::from_secs(2))
                .effective_resume_window(),
            Duration::from_secs(2)
        );
        let fleet = config().fallback_relays(vec!["127.0.0.2:7700".parse().unwrap()]);
        assert!(fleet.validate().is_ok());
    }

    #[test]
    fn allocation_options_map_to_wire_values() {
        let opts = AllocationOptions::default();
        assert_eq!(opts.wire_values().unwrap(), (0, 0, 0));
        let opts = AllocationOptions::default()
            .max_peers(8)
            .code_ttl(Duration::from_millis(90_500))
            .host_loss_timeout(Duration::from_micros(750_900));
        assert_eq!(opts.wire_values().unwrap(), (8, 90, 750));
        for bad in [
            AllocationOptions::default().max_peers(0),
            AllocationOptions::default().max_peers(baton_protocol::MAX_PEERS_LIMIT + 1),
            AllocationOptions::default().code_ttl(Duration::from_millis(999)),
            AllocationOptions::default().code_ttl(Duration::from_secs(u64::from(u32::MAX) + 1)),
            AllocationOptions::default().host_loss_timeout(Duration::from_micros(999)),
            AllocationOptions::default().host_loss_timeout(Duration::from_secs(66)),
        ] {
            assert!(
                matches!(bad.wire_values(), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
    }
}
