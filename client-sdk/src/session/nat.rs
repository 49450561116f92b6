//! NAT-kind measurement (SPEC section 17.5), with
//! [`DirectPolicy::Prefer`](crate::DirectPolicy::Prefer) only: when the relay's
//! `ObservedAddress` names a probe port, the session dials the relay's IP at that port *from
//! its own socket* (the one endpoint it shares with the relay connection and the direct
//! paths), sends `Probe` and reads the address the probe endpoint saw. The same address and
//! port as the main connection's observed address means the NAT maps the socket the same way
//! for both destinations ([`NatKind::EndpointIndependent`]); another one, that it maps each
//! destination on its own ([`NatKind::EndpointDependent`]); a failure or no reply within
//! [`PROBE_TIMEOUT`] leaves it [`NatKind::Unknown`]. It measures again when the observed
//! address changes (a NAT rebinding, a network change, another relay).
//!
//! [`Nat`] is the state ([`Shared::nat`](super::shared::Shared)): the reader starts a
//! measurement ([`Nat::observed`], one task bounded by [`PROBE_TIMEOUT`]) and the direct-path
//! driver reads the kind for its offers ([`Nat::for_offers`]: the first offers wait for the
//! relay's first `ObservedAddress` and the measurement it starts, at most [`PROBE_TIMEOUT`]
//! each, and [`Nat::measured`] wakes the driver when a measurement ends).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use baton_protocol::path::NatKind;
use baton_protocol::{frame, ClientMessage, ServerMessage};

use super::shared::lock;

/// The longest a measurement takes (handshake, `Probe`, reply); also the longest the first
/// direct-path offers wait for it.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest frame read from the probe endpoint: an `ObservedAddress` with an IPv6 address.
const MAX_REPLY_FRAME: usize = 64;

/// How the session reaches its relay's probe endpoint: its socket, and the TLS configuration
/// and server name it reached the relay with.
pub(crate) struct Dialer {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) client: quinn::ClientConfig,
    pub(crate) server_name: String,
}

/// The session's NAT kind and the measurement under way.
#[derive(Default)]
pub(crate) struct Nat(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Set once, with [`DirectPolicy::Prefer`](crate::DirectPolicy::Prefer); without it the
    /// session never measures.
    dialer: OnceLock<Dialer>,
    state: Mutex<State>,
    /// A measurement ended (for the one direct-path driver; it keeps one wake-up).
    measured: tokio::sync::Notify,
}

#[derive(Debug)]
struct State {
    kind: NatKind,
    /// The observed address last measured (or being measured) against.
    measured_for: Option<SocketAddr>,
    /// When the measurement under way started; from [`Nat::enable`] until the relay's first
    /// `ObservedAddress`, when the session started waiting for it.
    since: Option<Instant>,
    /// Counts measurements: a late result of a superseded one is dropped.
    generation: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            kind: NatKind::Unknown,
            measured_for: None,
            since: None,
            generation: 0,
        }
    }
}

/// One measurement to run ([`Measurement::run`]).
pub(crate) struct Measurement {
    inner: Arc<Inner>,
    generation: u64,
    observed: SocketAddr,
    target: SocketAddr,
}

impl Nat {
    /// Lets the session measure, through `dialer`, from `now`: the relay tells the observed
    /// address (and so starts the first measurement) right after the session bound to its
    /// allocation, and offers wait for it meanwhile (at most [`PROBE_TIMEOUT`]): an offer
    /// made before would carry no public candidate, and its attempt could not succeed.
    pub(crate) fn enable(&self, dialer: Dialer, now: Instant) {
        if self.0.dialer.set(dialer).is_ok() {
            let mut state = lock(&self.0.state);
            if state.measured_for.is_none() {
                state.since = Some(now);
            }
        }
    }

    /// Completes when a measurement has ended since the last call (or since the start).
    pub(crate) async fn measured(&self) {
        self.0.measured.notified().await;
    }

    /// The NAT kind as last measured.
    pub(crate) fn kind(&self) -> NatKind {
        lock(&self.0.state).kind
    }

    /// The NAT kind for a direct-path offer made at `now`: `None` while a measurement is under
    /// way (or the relay's first observation awaited) and younger than [`PROBE_TIMEOUT`] (the
    /// offer waits for it).
    pub(crate) fn for_offers(&self, now: Instant) -> Option<NatKind> {
        let state = lock(&self.0.state);
        match state.since {
            Some(since) if now.saturating_duration_since(since) < PROBE_TIMEOUT => None,
            _ => Some(state.kind),
        }
    }

    /// The relay told `observed` (the address it sees for this client), with its probe port,
    /// on a connection to `relay_ip`. A new address is measured (returned, for the caller to
    /// run); the same one again is not. No probe port leaves the kind unknown.
    pub(crate) fn observed(
        &self,
        observed: SocketAddr,
        probe_port: u16,
        relay_ip: IpAddr,
    ) -> Option<Measurement> {
        self.0.dialer.get()?;
        let mut state = lock(&self.0.state);
        if probe_port == 0 {
            *state = State {
                generation: state.generation.wrapping_add(1),
                ..State::default()
            };
            return None;
        }
        if state.measured_for == Some(observed) {
            return None;
        }
        state.measured_for = Some(observed);
        state.since = Some(Instant::now());
        state.generation = state.generation.wrapping_add(1);
        Some(Measurement {
            inner: self.0.clone(),
            generation: state.generation,
            observed,
            target: SocketAddr::new(relay_ip, probe_port),
        })
    }
}

impl Measurement {
    /// Probes, within [`PROBE_TIMEOUT`], and records the kind unless a newer measurement
    /// started meanwhile.
    pub(crate) async fn run(self) {
        let Some(dialer) = self.inner.dialer.get() else {
            return;
        };
        let kind = match tokio::time::timeout(PROBE_TIMEOUT, probe(dialer, self.target)).await {
            Ok(Ok(seen)) => classify(self.observed, seen),
            Ok(Err(detail)) => {
                tracing::debug!(target = %self.target, %detail, "NAT probe failed; NAT kind unknown");
                NatKind::Unknown
            }
            Err(_) => {
                tracing::debug!(target = %self.target, "NAT probe timed out; NAT kind unknown");
                NatKind::Unknown
            }
        };
        let mut state = lock(&self.inner.state);
        if state.generation == self.generation {
            tracing::debug!(%kind, observed = %self.observed, "NAT kind measured");
            state.kind = kind;
            state.since = None;
            self.inner.measured.notify_one();
        }
    }
}

/// The NAT kind the main port's observed address and the probe endpoint's say.
fn classify(observed: SocketAddr, seen: SocketAddr) -> NatKind {
    if seen == observed {
        NatKind::EndpointIndependent
    } else {
        NatKind::EndpointDependent
    }
}

/// Connects to the probe endpoint at `target`, sends `Probe` and returns the address it saw.
async fn probe(dialer: &Dialer, target: SocketAddr) -> Result<SocketAddr, String> {
    let conn = dialer
        .endpoint
        .connect_with(dialer.client.clone(), target, &dialer.server_name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let result = exchange(&conn).await;
    conn.close(0u32.into(), b"");
    result
}

/// `Probe` out, one `ObservedAddress` in.
async fn exchange(conn: &quinn::Connection) -> Result<SocketAddr, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&ClientMessage::Probe.to_frame())
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let mut prefix = [0u8; frame::LEN_PREFIX];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let len = frame::check_len(prefix, MAX_REPLY_FRAME).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    match ServerMessage::decode(&body).map_err(|e| e.to_string())? {
        ServerMessage::ObservedAddress { address, .. } => Ok(address),
        other => Err(format!(
            "the probe endpoint answered with message type 0x{:02x}",
            other.type_byte()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_same_mapping_is_endpoint_independent_another_is_not() {
        let observed = addr("198.51.100.7:61000");
        assert_eq!(classify(observed, observed), NatKind::EndpointIndependent);
        assert_eq!(
            classify(observed, addr("198.51.100.7:61001")),
            NatKind::EndpointDependent
        );
        assert_eq!(
            classify(observed, addr("198.51.100.8:61000")),
            NatKind::EndpointDependent
        );
    }

    #[test]
    fn without_a_dialer_or_a_probe_port_nothing_is_measured() {
        let nat = Nat::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(nat.observed(addr("198.51.100.7:61000"), 7701, ip).is_none());
        assert_eq!(nat.for_offers(Instant::now()), Some(NatKind::Unknown));
    }

    /// A `Nat` enabled at `now`, dialling from a fresh loopback endpoint.
    fn enabled(now: Instant) -> Nat {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let (client, _) = crate::ClientConfig::new(
            "127.0.0.1:7700".parse().unwrap(),
            crate::Trust::Fingerprint([0; 32]),
        )
        .quinn_config()
        .unwrap();
        let nat = Nat::default();
        nat.enable(
            Dialer {
                endpoint,
                client,
                server_name: "localhost".into(),
            },
            now,
        );
        nat
    }

    #[tokio::test]
    async fn a_measurement_that_ends_wakes_the_driver() {
        // A probe port nobody answers on: the measurement times out, the kind stays unknown.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let nat = enabled(Instant::now());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let measurement = nat.observed(addr("198.51.100.7:61000"), port, ip).unwrap();
        assert_eq!(nat.for_offers(Instant::now()), None);
        tokio::spawn(measurement.run());
        tokio::time::timeout(PROBE_TIMEOUT * 3, nat.measured())
            .await
            .unwrap();
        assert_eq!(nat.for_offers(Instant::now()), Some(NatKind::Unknown));
    }

    #[tokio::test]
    async fn offers_wait_for_a_measurement_at_most_the_timeout_and_stale_results_are_dropped() {
        let start = Instant::now();
        let nat = enabled(start);
        // Until the relay tells the observed address, offers wait for it, at most the timeout.
        assert_eq!(nat.for_offers(start), None);
        assert_eq!(
            nat.for_offers(start + PROBE_TIMEOUT - Duration::from_millis(1)),
            None
        );
        assert_eq!(
            nat.for_offers(start + PROBE_TIMEOUT),
            Some(NatKind::Unknown)
        );
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = nat.observed(addr("198.51.100.7:61000"), 7701, ip).unwrap();
        // The same address again: no second measurement.
        assert!(nat.observed(addr("198.51.100.7:61000"), 7701, ip).is_none());
        let now = Instant::now();
        assert_eq!(nat.for_offers(now), None);
        assert_eq!(nat.for_offers(now + PROBE_TIMEOUT), Some(NatKind::Unknown));
        // A rebind supersedes it: the first one's result, when it comes, is dropped.
        let second = nat.observed(addr("198.51.100.7:62000"), 7701, ip).unwrap();
        assert_eq!(second.generation, first.generation + 1);
        {
            let mut state = lock(&nat.0.state);
            state.kind = NatKind::EndpointDependent;
        }
        // The relay stops naming a probe port: unknown, nothing under way.
        assert!(nat.observed(addr("198.51.100.7:62000"), 0, ip).is_none());
        assert_eq!(nat.for_offers(Instant::now()), Some(NatKind::Unknown));
    }
}
