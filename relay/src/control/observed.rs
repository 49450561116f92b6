//! Address discovery: each member is told the address the relay sees for it
//! (`ObservedAddress`), once bound and again whenever the data plane reports that it changed
//! ([`Input::AddressChanged`](super::Input::AddressChanged): a NAT rebinding, a network change).
//! Clients use it as a candidate for direct paths. Each `ObservedAddress` also names the
//! relay's probe port ([`ControlPlane::set_probe_port`]; the probe endpoint itself is
//! `driver/probe.rs`), where a client measures its NAT kind (SPEC section 17.5).
//!
//! Runs wherever the [`ControlPlane`] is called.

use std::net::SocketAddr;

use baton_protocol::ServerMessage;

use super::membership::ConnState;
use super::{ConnId, ControlPlane};

/// `addr` as a client should see it: an IPv4 address the relay's dual-stack socket reports as
/// IPv4-mapped IPv6 is given back as IPv4.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl ControlPlane {
    /// Sets the probe port every `ObservedAddress` names from now on; 0: the relay runs no
    /// probe endpoint. Called once, when the relay has bound it.
    pub fn set_probe_port(&mut self, port: u16) {
        self.probe_port = port;
    }

    /// At the end of each input: every connection bound by it that has not been told its
    /// address yet is told now (after the reply that bound it, which the input queued first).
    pub(super) fn tell_observed(&mut self) {
        if self.newly_bound.is_empty() {
            return;
        }
        let bound = std::mem::take(&mut self.newly_bound);
        for conn in bound {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if c.observed.is_some() || !matches!(c.state, ConnState::Member { .. }) {
                continue;
            }
            let address = canonical(c.addr);
            c.observed = Some(address);
            self.send_observed(conn, address);
        }
    }

    /// Tells the client of `conn` the address the relay sees for it, with the probe port.
    fn send_observed(&mut self, conn: ConnId, address: SocketAddr) {
        let probe_port = self.probe_port;
        self.send(
            conn,
            ServerMessage::ObservedAddress {
                address,
                probe_port,
            },
        );
    }

    /// [`Input::AddressChanged`](super::Input::AddressChanged): the client of `conn` is now at
    /// `addr`. A member that was told its address is told the new one.
    pub(super) fn address_changed(&mut self, conn: ConnId, addr: SocketAddr) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.addr = addr;
        let address = canonical(addr);
        match c.observed {
            Some(told) if told != address => {
                c.observed = Some(address);
                self.send_observed(conn, address);
            }
            // Not bound yet (it learns the address when it binds), or nothing new.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_addresses_are_given_back_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:198.51.100.7]:61000".parse().unwrap();
        assert_eq!(canonical(mapped), "198.51.100.7:61000".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::7]:61000".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
