//! Direct host–peer QUIC paths: the crypto and endpoint plumbing for connections made by hole
//! punching, beside the relay.
//!
//! Each session has its own [`Identity`], a fresh self-signed certificate. The relay passes
//! every member's certificate fingerprint (SHA-256 of the DER certificate, see
//! [`crate::fingerprint`]) along its authenticated control stream; the session records them in
//! its [`Admitted`] set. A direct connection is then authenticated both ways by those pins:
//! - the accepting side ([`accept_config`]) requires a client certificate whose fingerprint is
//!   admitted, and [`peer_of`] names the member it belongs to;
//! - the dialling side ([`dial_config`], [`dial`]) accepts exactly the one fingerprint the
//!   relay gave for the member it dials, and presents its own certificate.
//!
//! Only the certificate chain and name checks are replaced by the pin: both verifiers check
//! the TLS 1.3 handshake signature, so a copied certificate without its key is refused.
//! Session resumption is disabled both ways, so every handshake runs the verifiers.
//!
//! One UDP socket carries everything ([`SharedEndpoint`]): the relay connection, direct dials,
//! direct accepts and the raw punch packets ([`send_punch`]), so the NAT mapping the relay
//! observed is the one being punched.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_protocol::PeerId;
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::netsim::SimulatedSocket;
use crate::tls::{fingerprint, format_fingerprint, tls12_refused, PinnedVerifier};
use crate::NetworkSimulator;

/// ALPN of a direct host–peer connection.
pub const DIRECT_ALPN: &[u8] = b"baton-direct/1";

/// The server name a direct dial uses, and the name in every [`Identity`] certificate. Not
/// checked: the fingerprint pin names the certificate.
pub const DIRECT_SERVER_NAME: &str = "baton-direct";

/// Most fingerprints an [`Admitted`] set holds; admitting one more evicts the oldest.
pub const MAX_ADMITTED: usize = 256;

/// Idle timeout of a direct connection: a path that carried nothing (not even a keep-alive)
/// for this long is dead, and the session falls back to the relay. Short, because a game
/// notices a stall of a few seconds.
pub const DIRECT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// QUIC keep-alive interval of a direct connection: six pings per idle timeout, so the path
/// survives five consecutive lost pings, and the NAT mappings on the way (which expire after
/// tens of seconds at the shortest) stay open while the game is silent. Its cost is two
/// small packets a second each way. The session's own pings measure the path; these only
/// keep it open.
pub const DIRECT_KEEP_ALIVE: Duration = Duration::from_millis(500);

/// Bytes of datagrams received on a direct connection and not yet read that QUIC buffers;
/// beyond it the oldest are dropped (the same trade-off as any unreliable game datagram).
pub const DIRECT_DATAGRAM_BUFFER: usize = 1 << 20;

/// The least initial RTT a direct dial assumes (see [`dial_initial_rtt`]): QUIC's probe
/// timeout for the first Initial is three times it, so even on a LAN the dial waits a few
/// milliseconds before it sends the Initial again, and the probes back off from there.
pub const DIAL_INITIAL_RTT_MIN: Duration = Duration::from_millis(2);

/// The most initial RTT a direct dial assumes: QUIC's default (RFC 9002 section 6.2.2), for
/// a dial that knows nothing better.
pub const DIAL_INITIAL_RTT_MAX: Duration = Duration::from_millis(333);

/// The first bytes of every punch packet.
pub const PUNCH_MAGIC: &[u8; 11] = b"baton-punch";

/// Length of a punch packet: [`PUNCH_MAGIC`] and an 8-byte random nonce.
pub const PUNCH_LEN: usize = PUNCH_MAGIC.len() + 8;

/// Smallest datagram quinn answers with a stateless reset when it names no connection (16
/// bytes of reset token plus more than 5 bytes of padding). Punches stay below it, so a
/// punch reaching a quinn endpoint is dropped without a reply.
const STATELESS_RESET_TRIGGER: usize = 22;
const _: () = assert!(PUNCH_LEN < STATELESS_RESET_TRIGGER);

/// What can go wrong setting up direct paths.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectError {
    /// The session's certificate could not be generated.
    #[error("cannot generate the direct-path certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration (the key or the protocol versions).
    #[error("direct-path TLS configuration refused: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration has no cipher suite QUIC can use.
    #[error("direct-path TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    /// No async runtime: the shared endpoint must be made from within tokio.
    #[error("no async runtime to drive the shared endpoint")]
    NoRuntime,
    /// The shared socket failed (binding, cloning or sending).
    #[error("shared socket: {0}")]
    Io(#[from] io::Error),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A direct dial could not start (no local address of the right family, endpoint closed).
    #[error("cannot dial {addr} directly: {source}")]
    Dial {
        /// The address dialled.
        addr: SocketAddr,
        /// Why quinn refused.
        source: quinn::ConnectError,
    },
}

/// A session's certificate and key for direct paths: self-signed ECDSA P-256, generated
/// fresh for each session. Its [`fingerprint`](Identity::fingerprint) is what the relay
/// passes to the other members.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: [u8; 32],
}

impl Identity {
    /// Generates a new identity.
    ///
    /// # Errors
    /// [`DirectError::Certificate`] if key generation or signing fails.
    pub fn generate() -> Result<Self, DirectError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = rcgen::CertificateParams::new(vec![DIRECT_SERVER_NAME.to_owned()])?
            .self_signed(&key)?;
        let cert = cert.der().clone();
        Ok(Self {
            fingerprint: fingerprint(&cert),
            cert,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// SHA-256 of the DER certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The DER certificate.
    #[cfg(test)]
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &format_fingerprint(&self.fingerprint))
            .finish_non_exhaustive()
    }
}

/// The remote members a session may have direct connections with: fingerprint → peer id, as
/// the relay told. Cheap to clone; clones share the set (the accepting verifier reads it
/// during every handshake).
///
/// One fingerprint per member and one member per fingerprint: admitting a member again (it
/// rejoined with a new identity) replaces its old fingerprint. At most [`MAX_ADMITTED`]
/// entries; admitting one more evicts the one admitted longest ago: the relay tells about
/// current members and [`Admitted::forget`] removes those that left, so an old entry is the
/// likeliest to be stale, and refusing the newest would lock out a member that is surely
/// present.
#[derive(Clone, Default)]
pub struct Admitted(Arc<Mutex<Entries>>);

/// Fingerprint and member, oldest admission first.
type Entries = Vec<([u8; 32], PeerId)>;

impl Admitted {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits the member `peer` with certificate fingerprint `fp`, replacing any entry for
    /// either. Returns the member evicted to make room, if the set was full.
    pub fn admit(&self, fp: [u8; 32], peer: PeerId) -> Option<PeerId> {
        let mut entries = self.lock();
        entries.retain(|&(f, p)| f != fp && p != peer);
        let evicted = if entries.len() >= MAX_ADMITTED {
            Some(entries.remove(0).1)
        } else {
            None
        };
        entries.push((fp, peer));
        evicted
    }

    /// Removes the member `peer`; whether it was admitted. Its existing direct connections
    /// stay open (the driver closes them), but [`peer_of`] no longer names it.
    pub fn forget(&self, peer: PeerId) -> bool {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|&(_, p)| p != peer);
        entries.len() != before
    }

    /// The member whose certificate has fingerprint `fp`, if admitted.
    pub fn peer_of(&self, fp: &[u8; 32]) -> Option<PeerId> {
        self.lock()
            .iter()
            .find_map(|(f, p)| (f == fp).then_some(*p))
    }

    /// How many members are admitted.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no member is admitted.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl fmt::Debug for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.lock()
                    .iter()
                    .map(|(fp, p)| (p, format_fingerprint(fp))),
            )
            .finish()
    }
}

/// The member a direct connection is with: the admitted member whose certificate the remote
/// presented in the handshake. A datagram received on `conn` comes from this member. `None`
/// if the member was forgotten since (or the connection has no certificate, which the
/// verifiers do not let happen).
pub fn peer_of(conn: &quinn::Connection, admitted: &Admitted) -> Option<PeerId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    admitted.peer_of(&fingerprint(certs.first()?))
}

/// The crypto provider of direct paths, always explicitly (never a process-wide default).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The initial RTT of a direct dial: the RTT of the relayed path to the member dialled
/// (`relayed`, as the session measured it), within [`DIAL_INITIAL_RTT_MIN`] and
/// [`DIAL_INITIAL_RTT_MAX`]; QUIC's default when it is not known.
///
/// A dial starts at the punch instant the relay names, the same instant the member dialled
/// punches. When our first Initial reaches the member's NAT before that member's punch has
/// left through it, the NAT drops it (it has no mapping toward us yet), and QUIC sends it
/// again only after its probe timeout, three times the initial RTT: about a second with the
/// default 333 ms, for a NAT that opened a millisecond later. A direct path is rarely slower
/// than the relayed one (which crosses both members' links and the relay), so three times
/// the relayed RTT is about when a lost Initial is due again, and a punch the timing put a
/// fraction of that late has gone out by then. An estimate too low costs only early
/// retransmissions, backing off, until the first RTT sample replaces it.
pub fn dial_initial_rtt(relayed: Option<Duration>) -> Duration {
    relayed.map_or(DIAL_INITIAL_RTT_MAX, |rtt| {
        rtt.clamp(DIAL_INITIAL_RTT_MIN, DIAL_INITIAL_RTT_MAX)
    })
}

/// Transport settings of a direct connection, both sides: [`DIRECT_IDLE_TIMEOUT`],
/// [`DIRECT_KEEP_ALIVE`], datagrams with [`DIRECT_DATAGRAM_BUFFER`], and no streams (a direct
/// path carries datagrams only; control stays on the relay); a dial's `initial_rtt` (see
/// [`dial_initial_rtt`]), QUIC's default for accepted connections.
fn transport(initial_rtt: Option<Duration>) -> Arc<quinn::TransportConfig> {
    let idle_ms = u32::try_from(DIRECT_IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(quinn::VarInt::from_u32(idle_ms).into()))
        .keep_alive_interval(Some(DIRECT_KEEP_ALIVE))
        .datagram_receive_buffer_size(Some(DIRECT_DATAGRAM_BUFFER))
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into());
    if let Some(rtt) = initial_rtt {
        transport.initial_rtt(rtt);
    }
    Arc::new(transport)
}

/// The server configuration accepting direct connections: TLS 1.3, ALPN [`DIRECT_ALPN`],
/// presenting `identity`, and requiring a client certificate whose fingerprint is in
/// `admitted` (read at each handshake, so later admissions count).
///
/// # Errors
/// [`DirectError::Tls`] or [`DirectError::Quic`] if the configuration cannot be built.
pub fn accept_config(
    identity: &Identity,
    admitted: &Admitted,
) -> Result<quinn::ServerConfig, DirectError> {
    let provider = provider();
    let verifier = Arc::new(AdmittedClientVerifier {
        admitted: admitted.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key().into())?;
    tls.alpn_protocols = vec![DIRECT_ALPN.to_vec()];
    // A resumed handshake would skip the client certificate check.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport(None));
    Ok(config)
}

/// The client configuration dialling one member directly: TLS 1.3, ALPN [`DIRECT_ALPN`],
/// presenting `identity`, accepting only the certificate whose fingerprint is `expected`, and
/// assuming `initial_rtt` until the handshake measures the path (see [`dial_initial_rtt`]).
///
/// # Errors
/// [`DirectError::Tls`] or [`DirectError::Quic`] if the configuration cannot be built.
pub fn dial_config(
    identity: &Identity,
    expected: [u8; 32],
    initial_rtt: Duration,
) -> Result<quinn::ClientConfig, DirectError> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier::direct_peer(
        expected,
        provider.signature_verification_algorithms,
    ));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key().into())?;
    tls.alpn_protocols = vec![DIRECT_ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport(Some(initial_rtt)));
    Ok(config)
}

/// Dials the member at `addr` whose certificate fingerprint is `expected`, on `endpoint`
/// (the session's [`SharedEndpoint`]), with [`dial_config`].
///
/// # Errors
/// [`DirectError::Dial`] if quinn cannot start the connection; configuration errors as
/// [`dial_config`].
pub fn dial(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    expected: [u8; 32],
    addr: SocketAddr,
    initial_rtt: Duration,
) -> Result<quinn::Connecting, DirectError> {
    let config = dial_config(identity, expected, initial_rtt)?;
    endpoint
        .connect_with(config, addr, DIRECT_SERVER_NAME)
        .map_err(|source| DirectError::Dial { addr, source })
}

/// Requires a client certificate whose fingerprint is admitted, and checks the client's TLS
/// 1.3 handshake signature against it.
#[derive(Debug)]
struct AdmittedClientVerifier {
    admitted: Admitted,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AdmittedClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let actual = fingerprint(end_entity);
        match self.admitted.peer_of(&actual) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => {
                tracing::debug!(
                    fingerprint = %format_fingerprint(&actual),
                    "direct connection from a certificate no member has"
                );
                Err(CertificateError::ApplicationVerificationFailure.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A session's one UDP socket: the quinn endpoint that dials the relay (with the relay's
/// configuration, through `connect_with`), dials members directly and accepts their direct
/// connections (once `endpoint.set_server_config(Some(accept_config(..)))`), and a handle on
/// the same socket for [`send_punch`].
#[derive(Debug)]
pub struct SharedEndpoint {
    /// The quinn endpoint. It has no default client configuration and, until one is set, no
    /// server configuration.
    pub endpoint: quinn::Endpoint,
    /// The same socket as the endpoint's (a duplicate handle), for raw punch packets. quinn
    /// made it non-blocking.
    pub punch: UdpSocket,
}

impl SharedEndpoint {
    /// Binds a UDP socket to `local` and wraps it, with `simulator`'s conditions (if any) on
    /// everything the endpoint sends and receives (the punch handle bypasses them; without a
    /// simulator the socket is wrapped as [`SharedEndpoint::from_socket`] does, nothing more).
    /// Must be called from within tokio.
    ///
    /// # Errors
    /// [`DirectError::Io`] if the socket cannot be bound; as [`SharedEndpoint::from_socket`].
    pub fn bind(
        local: SocketAddr,
        simulator: Option<&NetworkSimulator>,
    ) -> Result<Self, DirectError> {
        let socket = UdpSocket::bind(local)?;
        let Some(simulator) = simulator else {
            return Self::from_socket(socket);
        };
        let runtime = quinn::default_runtime().ok_or(DirectError::NoRuntime)?;
        let punch = socket.try_clone()?;
        let wrapped = runtime.wrap_udp_socket(socket)?;
        let simulated = SimulatedSocket::new(wrapped, simulator)?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            simulated,
            runtime,
        )?;
        Ok(Self { endpoint, punch })
    }

    /// Wraps `socket` in a quinn endpoint and keeps a duplicate handle for punches. Must be
    /// called from within tokio.
    ///
    /// # Errors
    /// [`DirectError::NoRuntime`] outside tokio; [`DirectError::Io`] if the socket cannot be
    /// duplicated or configured.
    pub fn from_socket(socket: UdpSocket) -> Result<Self, DirectError> {
        let runtime = quinn::default_runtime().ok_or(DirectError::NoRuntime)?;
        let punch = socket.try_clone()?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
        Ok(Self { endpoint, punch })
    }

    /// The local address of the socket (the port the relay observes, mapped by any NAT).
    ///
    /// # Errors
    /// [`DirectError::Io`] if the socket cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr, DirectError> {
        Ok(self.endpoint.local_addr()?)
    }
}

/// Sends one punch packet to `addr` from `socket` (the [`SharedEndpoint::punch`] handle):
/// [`PUNCH_MAGIC`] and a random nonce, [`PUNCH_LEN`] bytes. It opens this side's NAT towards
/// `addr`; the remote's quinn endpoint drops it (it is below the size quinn answers with a
/// stateless reset, and names no connection). A full send buffer fails the send with
/// [`io::ErrorKind::WouldBlock`]; punches are repeated anyway.
///
/// # Errors
/// [`DirectError::Random`] if no nonce could be drawn; [`DirectError::Io`] if the send fails.
pub fn send_punch(socket: &UdpSocket, addr: SocketAddr) -> Result<(), DirectError> {
    let nonce: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| DirectError::Random)?
        .expose();
    let mut packet = [0u8; PUNCH_LEN];
    packet[..PUNCH_MAGIC.len()].copy_from_slice(PUNCH_MAGIC);
    packet[PUNCH_MAGIC.len()..].copy_from_slice(&nonce);
    socket.send_to(&packet, punch_target(socket.local_addr()?, addr))?;
    Ok(())
}

/// The address to send to from a socket bound to `local`: an IPv6 socket reaches an IPv4
/// address through its IPv4-mapped form.
fn punch_target(local: SocketAddr, addr: SocketAddr) -> SocketAddr {
    match (local, addr) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        _ => addr,
    }
}

/// Whether `payload` is a punch packet [`send_punch`] sent.
#[cfg(test)]
pub fn is_punch(payload: &[u8]) -> bool {
    payload.len() == PUNCH_LEN && payload.starts_with(PUNCH_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quinn::{Connection, ConnectionError};
    use rustls::sign::{CertifiedKey, SingleCertAndKey};
    use tokio::time::timeout;

    /// Bound on every step of a loopback test.
    const STEP: Duration = Duration::from_secs(5);

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// One member: its shared endpoint (accepting direct connections), identity and set.
    struct Member {
        ep: SharedEndpoint,
        id: Identity,
        admitted: Admitted,
    }

    impl Member {
        fn new() -> Self {
            let ep = SharedEndpoint::bind(loopback(), None).unwrap();
            let id = Identity::generate().unwrap();
            let admitted = Admitted::default();
            ep.endpoint
                .set_server_config(Some(accept_config(&id, &admitted).unwrap()));
            Self { ep, id, admitted }
        }

        fn addr(&self) -> SocketAddr {
            self.ep.local_addr().unwrap()
        }

        fn dial(&self, expected: [u8; 32], to: &Member) -> quinn::Connecting {
            dial(
                &self.ep.endpoint,
                &self.id,
                expected,
                to.addr(),
                dial_initial_rtt(None),
            )
            .unwrap()
        }

        async fn accept(&self) -> Result<Connection, ConnectionError> {
            let incoming = timeout(STEP, self.ep.endpoint.accept())
                .await
                .unwrap()
                .unwrap();
            timeout(STEP, incoming).await.unwrap()
        }
    }

    /// Starts `connecting` towards `to` and accepts it there: (dialler's, acceptor's) outcome.
    async fn handshake(
        connecting: quinn::Connecting,
        to: &Member,
    ) -> (
        Result<Connection, ConnectionError>,
        Result<Connection, ConnectionError>,
    ) {
        tokio::join!(
            async { timeout(STEP, connecting).await.unwrap() },
            to.accept()
        )
    }

    /// A NAT in front of `to` that has not opened yet: a UDP forwarder on loopback that drops
    /// the first `closed_for` datagrams anyone but `to` sends it, then forwards both ways (to
    /// `to`, and `to`'s answers back to the last sender). Returns its address and its task.
    async fn closed_nat(
        to: SocketAddr,
        closed_for: usize,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut dropped = 0;
            let mut dialler = None;
            // Bounded: a handshake is a few dozen datagrams, and the test ends it in `STEP`.
            for _ in 0..1000 {
                let Ok(Ok((len, from))) = timeout(STEP, socket.recv_from(&mut buf)).await else {
                    break;
                };
                if from == to {
                    if let Some(dialler) = dialler {
                        let _ = socket.send_to(&buf[..len], dialler).await;
                    }
                } else if dropped < closed_for {
                    dropped += 1;
                } else {
                    dialler = Some(from);
                    let _ = socket.send_to(&buf[..len], to).await;
                }
            }
        });
        (addr, task)
    }

    /// How long a dial with `initial_rtt` takes through a NAT that drops its first datagram.
    async fn dial_through_closed_nat(initial_rtt: Duration) -> Duration {
        let host = Member::new();
        let peer = Member::new();
        host.admitted.admit(peer.id.fingerprint(), PeerId(1));
        let (nat, forwarder) = closed_nat(host.addr(), 1).await;
        let started = std::time::Instant::now();
        let connecting = dial(
            &peer.ep.endpoint,
            &peer.id,
            host.id.fingerprint(),
            nat,
            initial_rtt,
        )
        .unwrap();
        let (at_peer, at_host) = handshake(connecting, &host).await;
        let took = started.elapsed();
        let (at_peer, at_host) = (at_peer.unwrap(), at_host.unwrap());
        roundtrip(&at_peer, &at_host).await;
        at_peer.close(0u32.into(), b"");
        forwarder.abort();
        took
    }

    /// A dialler refused by the acceptor: in TLS 1.3 the client may finish its handshake
    /// before the server checks its certificate, so the refusal can arrive as a close.
    async fn refused(dialler: Result<Connection, ConnectionError>) -> ConnectionError {
        match dialler {
            Err(e) => e,
            Ok(conn) => timeout(STEP, conn.closed()).await.unwrap(),
        }
    }

    async fn roundtrip(a: &Connection, b: &Connection) {
        a.send_datagram(Bytes::from_static(b"ping")).unwrap();
        let got = timeout(STEP, b.read_datagram()).await.unwrap().unwrap();
        assert_eq!(&got[..], b"ping");
        b.send_datagram(Bytes::from_static(b"pong")).unwrap();
        let got = timeout(STEP, a.read_datagram()).await.unwrap().unwrap();
        assert_eq!(&got[..], b"pong");
    }

    /// A quinn server configuration accepting direct connections but presenting `cert` while
    /// signing with `signer`'s key.
    fn forged_accept_config(
        cert: &Identity,
        signer: &Identity,
        admitted: &Admitted,
    ) -> quinn::ServerConfig {
        let provider = provider();
        let key = provider
            .key_provider
            .load_private_key(signer.key.clone_key().into())
            .unwrap();
        let certified = CertifiedKey::new(vec![cert.cert.clone()], key);
        let verifier = Arc::new(AdmittedClientVerifier {
            admitted: admitted.clone(),
            algorithms: provider.signature_verification_algorithms,
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        tls.alpn_protocols = vec![DIRECT_ALPN.to_vec()];
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()))
    }

    /// A dial configuration pinning `expected` that presents `cert` signed with `signer`'s
    /// key, or no certificate at all.
    fn client_config_presenting(
        expected: [u8; 32],
        cert: Option<(&Identity, &Identity)>,
    ) -> quinn::ClientConfig {
        let provider = provider();
        let verifier = Arc::new(PinnedVerifier::direct_peer(
            expected,
            provider.signature_verification_algorithms,
        ));
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut tls = match cert {
            None => builder.with_no_client_auth(),
            Some((cert, signer)) => {
                let key = provider
                    .key_provider
                    .load_private_key(signer.key.clone_key().into())
                    .unwrap();
                let certified = CertifiedKey::new(vec![cert.cert.clone()], key);
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
            }
        };
        tls.alpn_protocols = vec![DIRECT_ALPN.to_vec()];
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
    }

    #[test]
    fn identities_are_fresh_and_named_by_their_fingerprint() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), fingerprint(a.certificate()));
        assert!(format!("{a:?}").contains(&format_fingerprint(&a.fingerprint())));
    }

    #[test]
    fn admitted_keeps_one_entry_per_member_and_evicts_the_oldest() {
        let admitted = Admitted::default();
        assert!(admitted.is_empty());
        assert_eq!(admitted.admit([1; 32], PeerId(1)), None);
        assert_eq!(admitted.peer_of(&[1; 32]), Some(PeerId(1)));

        // A member that rejoined with a new identity: the old fingerprint is gone.
        admitted.admit([2; 32], PeerId(1));
        assert_eq!(admitted.peer_of(&[1; 32]), None);
        assert_eq!(admitted.peer_of(&[2; 32]), Some(PeerId(1)));
        // A fingerprint names one member.
        admitted.admit([2; 32], PeerId(2));
        assert_eq!(admitted.peer_of(&[2; 32]), Some(PeerId(2)));
        assert_eq!(admitted.len(), 1);

        assert!(admitted.forget(PeerId(2)));
        assert!(!admitted.forget(PeerId(2)));
        assert!(admitted.is_empty());

        let fp = |i: usize| {
            let mut fp = [0u8; 32];
            fp[..8].copy_from_slice(&(i as u64).to_le_bytes());
            fp
        };
        for i in 0..MAX_ADMITTED {
            assert_eq!(admitted.admit(fp(i), PeerId(i as u16)), None);
        }
        // Full: the next admission evicts the one admitted first, and a clone shares the set.
        let shared = admitted.clone();
        assert_eq!(shared.admit(fp(1000), PeerId(1000)), Some(PeerId(0)));
        assert_eq!(admitted.len(), MAX_ADMITTED);
        assert_eq!(admitted.peer_of(&fp(0)), None);
        assert_eq!(admitted.peer_of(&fp(1)), Some(PeerId(1)));
        assert_eq!(admitted.peer_of(&fp(1000)), Some(PeerId(1000)));
        // Replacing an entry of a full set evicts nothing.
        assert_eq!(admitted.admit(fp(1), PeerId(1)), None);
        assert_eq!(admitted.len(), MAX_ADMITTED);
    }

    #[test]
    fn dials_assume_the_relayed_rtt_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(dial_initial_rtt(None), DIAL_INITIAL_RTT_MAX);
        assert_eq!(DIAL_INITIAL_RTT_MAX, ms(333), "QUIC's default");
        assert_eq!(dial_initial_rtt(Some(ms(40))), ms(40));
        assert_eq!(dial_initial_rtt(Some(Duration::ZERO)), DIAL_INITIAL_RTT_MIN);
        assert_eq!(
            dial_initial_rtt(Some(Duration::from_micros(300))),
            DIAL_INITIAL_RTT_MIN
        );
        assert_eq!(dial_initial_rtt(Some(ms(900))), DIAL_INITIAL_RTT_MAX);
    }

    #[tokio::test]
    async fn a_dropped_first_initial_goes_again_within_the_dials_initial_rtt() {
        // The far NAT drops the first Initial (its side has not punched yet). With the
        // relayed RTT as the initial RTT, the Initial goes again after three times it...
        let fast = dial_through_closed_nat(Duration::from_millis(5)).await;
        assert!(fast < Duration::from_millis(500), "{fast:?}");
        // ...where QUIC's default waits three times 333 ms: the second that a third of
        // the direct paths in the NAT lab took before the dial assumed the relayed RTT.
        let default = dial_through_closed_nat(dial_initial_rtt(None)).await;
        assert!(default >= Duration::from_millis(900), "{default:?}");
    }

    #[test]
    fn punches_are_recognisable_and_ipv6_sockets_reach_ipv4_addresses() {
        assert_eq!(PUNCH_LEN, 19);
        assert!(!is_punch(b"baton-punch"));
        assert!(!is_punch(&[0; PUNCH_LEN]));
        let v4: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        let local_v4: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        let local_v6: SocketAddr = "[::]:5000".parse().unwrap();
        assert_eq!(punch_target(local_v6, v4), mapped);
        assert_eq!(punch_target(local_v6, v6), v6);
        assert_eq!(punch_target(local_v4, v4), v4);
    }

    #[tokio::test]
    async fn admitted_members_connect_both_ways_and_are_named() {
        let host = Member::new();
        let peer = Member::new();
        host.admitted.admit(peer.id.fingerprint(), PeerId(1));
        peer.admitted.admit(host.id.fingerprint(), PeerId::HOST);

        // The peer dials the host.
        let connecting = peer.dial(host.id.fingerprint(), &host);
        let (at_peer, at_host) = handshake(connecting, &host).await;
        let (at_peer, at_host) = (at_peer.unwrap(), at_host.unwrap());
        roundtrip(&at_peer, &at_host).await;
        assert_eq!(peer_of(&at_host, &host.admitted), Some(PeerId(1)));
        assert_eq!(peer_of(&at_peer, &peer.admitted), Some(PeerId::HOST));
        assert_eq!(
            at_host
                .handshake_data()
                .unwrap()
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .unwrap()
                .protocol
                .as_deref(),
            Some(DIRECT_ALPN)
        );

        // The host dials the peer.
        let connecting = host.dial(peer.id.fingerprint(), &peer);
        let (from_host, at_peer_2) = handshake(connecting, &peer).await;
        let (from_host, at_peer_2) = (from_host.unwrap(), at_peer_2.unwrap());
        roundtrip(&from_host, &at_peer_2).await;
        assert_eq!(peer_of(&at_peer_2, &peer.admitted), Some(PeerId::HOST));
        assert_eq!(peer_of(&from_host, &host.admitted), Some(PeerId(1)));

        // A forgotten member's datagrams are no longer attributed to it.
        host.admitted.forget(PeerId(1));
        assert_eq!(peer_of(&at_host, &host.admitted), None);
    }

    #[tokio::test]
    async fn acceptor_refuses_a_certificate_no_member_has() {
        let host = Member::new();
        let peer = Member::new();
        let stranger = Identity::generate().unwrap();
        host.admitted.admit(stranger.fingerprint(), PeerId(1));

        let connecting = peer.dial(host.id.fingerprint(), &host);
        let (at_peer, at_host) = handshake(connecting, &host).await;
        assert!(at_host.is_err(), "{at_host:?}");
        let reason = refused(at_peer).await;
        assert!(
            matches!(reason, ConnectionError::ConnectionClosed(_))
                && reason.to_string().contains("invalid peer certificate"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn dialler_refuses_a_certificate_it_did_not_expect() {
        let host = Member::new();
        let peer = Member::new();
        host.admitted.admit(peer.id.fingerprint(), PeerId(1));
        let stranger = Identity::generate().unwrap();

        let connecting = peer.dial(stranger.fingerprint(), &host);
        let (at_peer, at_host) = handshake(connecting, &host).await;
        assert!(
            matches!(at_peer, Err(ConnectionError::TransportError(ref e)) if e.to_string().contains("certificate")),
            "{at_peer:?}"
        );
        assert!(at_host.is_err(), "{at_host:?}");
    }

    #[tokio::test]
    async fn dialler_without_a_certificate_is_refused() {
        let host = Member::new();
        let peer = Member::new();
        host.admitted.admit(peer.id.fingerprint(), PeerId(1));

        let config = client_config_presenting(host.id.fingerprint(), None);
        let connecting = peer
            .ep
            .endpoint
            .connect_with(config, host.addr(), DIRECT_SERVER_NAME)
            .unwrap();
        let (at_peer, at_host) = handshake(connecting, &host).await;
        assert!(at_host.is_err(), "{at_host:?}");
        let reason = refused(at_peer).await;
        assert!(
            reason.to_string().contains("peer sent no certificates"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn copied_certificates_without_their_keys_are_refused() {
        let host = Member::new();
        let peer = Member::new();
        let attacker = Identity::generate().unwrap();
        host.admitted.admit(peer.id.fingerprint(), PeerId(1));

        // A dialler presenting the admitted member's certificate, signing with another key.
        let config = client_config_presenting(host.id.fingerprint(), Some((&peer.id, &attacker)));
        let connecting = peer
            .ep
            .endpoint
            .connect_with(config, host.addr(), DIRECT_SERVER_NAME)
            .unwrap();
        let (at_peer, at_host) = handshake(connecting, &host).await;
        assert!(at_host.is_err(), "{at_host:?}");
        let reason = refused(at_peer).await;
        assert!(reason.to_string().contains("BadSignature"), "{reason}");

        // An acceptor presenting the expected certificate, signing with another key.
        host.ep
            .endpoint
            .set_server_config(Some(forged_accept_config(
                &host.id,
                &attacker,
                &host.admitted,
            )));
        let connecting = peer.dial(host.id.fingerprint(), &host);
        let (at_peer, at_host) = handshake(connecting, &host).await;
        assert!(
            matches!(at_peer, Err(ConnectionError::TransportError(ref e)) if e.to_string().contains("BadSignature")),
            "{at_peer:?}"
        );
        assert!(at_host.is_err(), "{at_host:?}");
    }

    #[tokio::test]
    async fn one_socket_reaches_the_relay_and_accepts_direct_connections() {
        // A relay-like server with its own certificate and ALPN, no client authentication.
        let relay_id = Identity::generate().unwrap();
        let mut relay_tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![relay_id.cert.clone()], relay_id.key.clone_key().into())
            .unwrap();
        relay_tls.alpn_protocols = vec![baton_protocol::ALPN.to_vec()];
        let relay = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(
                QuicServerConfig::try_from(relay_tls).unwrap(),
            )),
            loopback(),
        )
        .unwrap();

        let host = Member::new();
        let peer = Member::new();
        host.admitted.admit(peer.id.fingerprint(), PeerId(1));

        // The host reaches the relay with the SDK's relay configuration, on its shared socket.
        let trust = crate::Trust::Fingerprint(relay_id.fingerprint());
        let relay_tls = crate::tls::client_config(&trust, baton_protocol::ALPN).unwrap();
        let relay_config = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(relay_tls.config).unwrap(),
        ));
        let to_relay = host
            .ep
            .endpoint
            .connect_with(relay_config, relay.local_addr().unwrap(), "localhost")
            .unwrap();
        let at_relay = async {
            let incoming = timeout(STEP, relay.accept()).await.unwrap().unwrap();
            timeout(STEP, incoming).await.unwrap()
        };
        let (to_relay, at_relay) =
            tokio::join!(async { timeout(STEP, to_relay).await.unwrap() }, at_relay);
        let (to_relay, at_relay) = (to_relay.unwrap(), at_relay.unwrap());

        // While that connection is open, the peer dials the host directly.
        let connecting = peer.dial(host.id.fingerprint(), &host);
        let (at_peer, at_host) = handshake(connecting, &host).await;
        let (at_peer, at_host) = (at_peer.unwrap(), at_host.unwrap());

        // The relay and the peer see the same address: the one socket's.
        assert_eq!(at_relay.remote_address(), host.addr());
        assert_eq!(at_peer.remote_address(), host.addr());
        roundtrip(&to_relay, &at_relay).await;
        roundtrip(&at_peer, &at_host).await;
        assert_eq!(peer_of(&at_host, &host.admitted), Some(PeerId(1)));
    }

    #[tokio::test]
    async fn punches_leave_from_the_endpoint_port_and_quinn_ignores_them() {
        let host = Member::new();
        let peer = Member::new();
        host.admitted.admit(peer.id.fingerprint(), PeerId(1));
        peer.admitted.admit(host.id.fingerprint(), PeerId::HOST);

        let observer = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        send_punch(&host.ep.punch, observer.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let (len, from) = timeout(STEP, observer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            from,
            host.addr(),
            "the punch leaves from the endpoint's port"
        );
        assert!(is_punch(&buf[..len]));

        // Punches crossing an established direct connection's endpoints disturb nothing.
        let connecting = peer.dial(host.id.fingerprint(), &host);
        let (at_peer, at_host) = handshake(connecting, &host).await;
        let (at_peer, at_host) = (at_peer.unwrap(), at_host.unwrap());
        for _ in 0..5 {
            send_punch(&host.ep.punch, peer.addr()).unwrap();
            send_punch(&peer.ep.punch, host.addr()).unwrap();
        }
        roundtrip(&at_peer, &at_host).await;
        assert!(at_peer.close_reason().is_none());
        assert!(at_host.close_reason().is_none());
    }
}
