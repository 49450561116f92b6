//! Who may start a QUIC handshake, decided at accept before any handshake state is kept:
//! established connections against `max_connections`, half-open handshakes against the Retry
//! threshold, and connections (half-open or established) per source address and prefix
//! ([`prefix::host`], [`prefix::network`]). What a connection holds is released by guards,
//! exactly once however it ends.
//!
//! Shared by every endpoint's accept loop and connection tasks (each on its lane thread); the
//! address table is one short-held mutex, taken once at accept and once at the end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;
use crate::prefix::{self, Prefix};
use crate::RelayConfig;

/// Why a connection attempt was not admitted; the `reason` label of
/// `baton_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Its IPv4 address or IPv6 /64 holds its share of connections.
    PerAddress,
    /// Its IPv4 /24 or IPv6 /48 holds its share of connections.
    PerPrefix,
    /// The relay holds `max_connections` established connections.
    MaxConnections,
    /// As many handshakes are in flight as `max_connections`, and the address is validated
    /// (or cannot be sent a Retry).
    Handshakes,
}

impl Refusal {
    /// Its counter in `baton_connections_refused_total`.
    fn counter(self, metrics: &Metrics) -> &prometheus_client::metrics::counter::Counter {
        let refused = &metrics.connections_refused;
        match self {
            Refusal::PerAddress => &refused.per_address,
            Refusal::PerPrefix => &refused.per_prefix,
            Refusal::MaxConnections => &refused.max_connections,
            Refusal::Handshakes => &refused.handshakes,
        }
    }
}

/// What to do with a new connection attempt.
#[derive(Debug)]
pub(super) enum Decision {
    /// Start its handshake, holding these slots.
    Accept(Handshake),
    /// Answer with a QUIC Retry: the client must prove it receives at its address.
    Retry,
    /// Refuse it.
    Refuse(Refusal),
}

/// The admission state every accept loop shares.
#[derive(Debug)]
pub(super) struct Admission {
    max_connections: usize,
    retry_threshold: usize,
    /// Caps per key length: IPv4 /32 and /24, IPv6 /64 and /48.
    per_ipv4: usize,
    per_ipv4_24: usize,
    per_ipv6_64: usize,
    per_ipv6_48: usize,
    established: AtomicUsize,
    handshakes: AtomicUsize,
    /// Connections per host and network prefix; an entry exists only while it counts one.
    by_prefix: Mutex<HashMap<Prefix, usize>>,
    metrics: Arc<Metrics>,
}

impl Admission {
    /// Admission state for `config`'s limits.
    pub(super) fn new(config: &RelayConfig, metrics: Arc<Metrics>) -> Arc<Admission> {
        Arc::new(Admission {
            max_connections: config.max_connections(),
            retry_threshold: config.handshake_retry_threshold(),
            per_ipv4: config.max_connections_per_ipv4_address(),
            per_ipv4_24: config.max_connections_per_ipv4_24(),
            per_ipv6_64: config.max_connections_per_ipv6_64(),
            per_ipv6_48: config.max_connections_per_ipv6_48(),
            established: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            by_prefix: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Decides on an attempt from `ip`, whose address `validated` says was proven (it came back
    /// from a Retry). Refusals and Retries are counted in the metrics.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Decision {
        let decision = self.decide(ip, validated);
        match &decision {
            Decision::Accept(_) => {}
            Decision::Retry => {
                self.metrics.retries_sent.inc();
            }
            Decision::Refuse(reason) => {
                reason.counter(&self.metrics).inc();
            }
        }
        decision
    }

    fn decide(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Decision {
        if self.established.load(Ordering::Relaxed) >= self.max_connections {
            return Decision::Refuse(Refusal::MaxConnections);
        }
        let handshakes = self.handshakes.load(Ordering::Relaxed);
        if handshakes >= self.retry_threshold && !validated {
            // Stateless: a spoofed source never sees the token, so it cannot hold a slot.
            return Decision::Retry;
        }
        if handshakes >= self.max_connections {
            return Decision::Refuse(Refusal::Handshakes);
        }
        let (host, network) = (prefix::host(ip), prefix::network(ip));
        let (host_cap, network_cap) = if host.is_ipv4() {
            (self.per_ipv4, self.per_ipv4_24)
        } else {
            (self.per_ipv6_64, self.per_ipv6_48)
        };
        {
            let mut table = self.table();
            if table.get(&host).copied().unwrap_or(0) >= host_cap {
                return Decision::Refuse(Refusal::PerAddress);
            }
            if table.get(&network).copied().unwrap_or(0) >= network_cap {
                return Decision::Refuse(Refusal::PerPrefix);
            }
            *table.entry(host).or_insert(0) += 1;
            *table.entry(network).or_insert(0) += 1;
        }
        let address = AddressSlot {
            admission: self.clone(),
            keys: [host, network],
        };
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        self.metrics.handshakes_in_flight.inc();
        Decision::Accept(Handshake {
            address,
            in_flight: Some(InFlight(self.clone())),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Prefix, usize>> {
        self.by_prefix
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keys counted now (host and network prefixes with live connections).
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.table().len()
    }

    /// Handshakes in flight now.
    #[cfg(test)]
    pub(super) fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Established connections now.
    #[cfg(test)]
    pub(super) fn established(&self) -> usize {
        self.established.load(Ordering::Relaxed)
    }
}

/// An admitted attempt: its address slots, and a handshake slot until [`Handshake::established`].
#[derive(Debug)]
pub(super) struct Handshake {
    address: AddressSlot,
    in_flight: Option<InFlight>,
}

impl Handshake {
    /// The handshake completed: gives back the handshake slot and takes an established one,
    /// unless `max_connections` were established meanwhile (then the connection must be
    /// closed; it is counted as refused).
    pub(super) fn established(mut self) -> Result<Established, Refusal> {
        drop(self.in_flight.take());
        let admission = self.address.admission.clone();
        let taken = admission
            .established
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < admission.max_connections).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Established {
                _address: self.address,
            }),
            Err(_) => {
                Refusal::MaxConnections.counter(&admission.metrics).inc();
                Err(Refusal::MaxConnections)
            }
        }
    }
}

/// An established connection's slots; dropping it releases them.
#[derive(Debug)]
pub(super) struct Established {
    _address: AddressSlot,
}

impl Drop for Established {
    fn drop(&mut self) {
        self._address
            .admission
            .established
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One handshake in flight; dropping it gives the slot back.
#[derive(Debug)]
struct InFlight(Arc<Admission>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.handshakes_in_flight.dec();
    }
}

/// A connection's count under its host and network prefixes; dropping it releases both and
/// removes an entry that falls to zero, so the table holds only prefixes with connections.
#[derive(Debug)]
struct AddressSlot {
    admission: Arc<Admission>,
    keys: [Prefix; 2],
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut table = self.admission.table();
        for key in &self.keys {
            if let Some(n) = table.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    table.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(tweak: impl FnOnce(&mut RelayConfig)) -> Arc<Admission> {
        let mut config = RelayConfig::default();
        tweak(&mut config);
        Admission::new(&config, Arc::new(Metrics::new()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn accepted(d: Decision) -> Handshake {
        match d {
            Decision::Accept(h) => h,
            other => panic!("not accepted: {other:?}"),
        }
    }

    fn refusal(d: Decision) -> Option<Refusal> {
        match d {
            Decision::Refuse(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn per_address_and_per_prefix_caps_and_the_table_empties() {
        let a = admission(|c| {
            c.set_max_connections_per_ipv4_address(2).unwrap();
            c.set_max_connections_per_ipv4_24(3).unwrap();
            c.set_max_connections_per_ipv6_64(1).unwrap();
            c.set_max_connections_per_ipv6_48(2).unwrap();
        });
        let mut held = vec![
            accepted(a.admit(ip("192.0.2.1"), false)),
            accepted(a.admit(ip("::ffff:192.0.2.1"), false)),
        ];
        assert_eq!(
            refusal(a.admit(ip("192.0.2.1"), true)),
            Some(Refusal::PerAddress)
        );
        held.push(accepted(a.admit(ip("192.0.2.2"), false)));
        assert_eq!(
            refusal(a.admit(ip("192.0.2.3"), false)),
            Some(Refusal::PerPrefix)
        );
        held.push(accepted(a.admit(ip("192.0.3.1"), false)));
        held.push(accepted(a.admit(ip("2001:db8:1:1::1"), false)));
        assert_eq!(
            refusal(a.admit(ip("2001:db8:1:1::2"), false)),
            Some(Refusal::PerAddress)
        );
        held.push(accepted(a.admit(ip("2001:db8:1:2::1"), false)));
        assert_eq!(
            refusal(a.admit(ip("2001:db8:1:3::1"), false)),
            Some(Refusal::PerPrefix)
        );
        assert_eq!(a.handshakes(), 6);
        // Half of them get established; all end, by either path.
        let established: Vec<Established> =
            held.drain(..3).map(|h| h.established().unwrap()).collect();
        assert_eq!((a.handshakes(), a.established()), (3, 3));
        drop(held);
        drop(established);
        assert_eq!((a.handshakes(), a.established(), a.tracked()), (0, 0, 0));
        let m = a.metrics.encode();
        for line in [
            "baton_connections_refused_total{reason=\"per_address\"} 2",
            "baton_connections_refused_total{reason=\"per_prefix\"} 2",
            "baton_handshakes_in_flight 0",
        ] {
            assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
        }
    }

    #[test]
    fn only_established_connections_count_against_max_connections() {
        let a = admission(|c| {
            c.set_max_connections(2).unwrap();
            c.set_handshake_retry_threshold(100).unwrap();
        });
        // Two handshakes in flight hold no max_connections slot...
        let first = accepted(a.admit(ip("192.0.2.1"), false));
        let second = accepted(a.admit(ip("192.0.2.2"), false));
        // ...but the handshakes cap is max_connections too.
        assert_eq!(
            refusal(a.admit(ip("192.0.2.3"), true)),
            Some(Refusal::Handshakes)
        );
        drop(second); // never completes
        let _one = first.established().unwrap();
        let late = accepted(a.admit(ip("192.0.2.4"), false));
        let third = accepted(a.admit(ip("192.0.2.5"), false));
        let _two = late.established().unwrap();
        assert_eq!(third.established().unwrap_err(), Refusal::MaxConnections);
        assert_eq!(
            refusal(a.admit(ip("192.0.2.6"), false)),
            Some(Refusal::MaxConnections)
        );
        assert_eq!((a.handshakes(), a.established()), (0, 2));
    }

    #[test]
    fn above_the_threshold_unvalidated_addresses_get_a_retry() {
        let a = admission(|c| {
            c.set_handshake_retry_threshold(2).unwrap();
        });
        let _held = [
            accepted(a.admit(ip("192.0.2.1"), false)),
            accepted(a.admit(ip("192.0.2.2"), false)),
        ];
        assert!(matches!(a.admit(ip("192.0.2.3"), false), Decision::Retry));
        let _validated = accepted(a.admit(ip("192.0.2.3"), true));
        let m = a.metrics.encode();
        assert!(m.lines().any(|l| l == "baton_retries_sent_total 1"), "{m}");
        assert!(
            m.lines().any(|l| l == "baton_handshakes_in_flight 3"),
            "{m}"
        );
    }
}
