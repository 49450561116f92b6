//! Source addresses as the relay's limits see them: a client is its *host* key (an IPv4
//! address, or the IPv6 /64 a single subscriber is usually given) inside a *network* key (the
//! IPv4 /24, or the IPv6 /48 a site is usually given). An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4 client) counts as IPv4.
//!
//! Pure functions, used by the per-address connection limits (`driver::accept`) and the
//! failed-join rate limit (`control::ratelimit`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address prefix: the network address (host bits zeroed) and its length in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    network: IpAddr,
    len: u8,
}

impl Prefix {
    /// The prefix of length `len` (clamped to the family's width) containing `ip`, after
    /// turning an IPv4-mapped IPv6 address into IPv4.
    pub fn of(ip: IpAddr, len: u8) -> Prefix {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let len = len.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Prefix {
                    network: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)),
                    len,
                }
            }
            IpAddr::V6(v6) => {
                let len = len.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                Prefix {
                    network: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    len,
                }
            }
        }
    }
}

impl Prefix {
    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

/// `ip`, with an IPv4-mapped IPv6 address turned into the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The client a source address stands for: the IPv4 address (/32) or the IPv6 /64.
pub fn host(ip: IpAddr) -> Prefix {
    match canonical(ip) {
        IpAddr::V4(_) => Prefix::of(ip, 32),
        IpAddr::V6(_) => Prefix::of(ip, 64),
    }
}

/// The network a source address is in: the IPv4 /24 or the IPv6 /48.
pub fn network(ip: IpAddr) -> Prefix {
    match canonical(ip) {
        IpAddr::V4(_) => Prefix::of(ip, 24),
        IpAddr::V6(_) => Prefix::of(ip, 48),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_is_keyed_by_address_and_24() {
        assert_eq!(host(ip("192.0.2.77")).to_string(), "192.0.2.77/32");
        assert_eq!(network(ip("192.0.2.77")).to_string(), "192.0.2.0/24");
        assert_ne!(host(ip("192.0.2.77")), host(ip("192.0.2.78")));
        assert!(host(ip("192.0.2.77")).is_ipv4());
        assert_eq!(network(ip("192.0.2.77")), network(ip("192.0.2.1")));
        assert_ne!(network(ip("192.0.2.77")), network(ip("192.0.3.77")));
    }

    #[test]
    fn ipv6_is_keyed_by_64_and_48() {
        let a = ip("2001:db8:1:2:aaaa::1");
        let same_64 = ip("2001:db8:1:2:ffff:ffff:ffff:ffff");
        let same_48 = ip("2001:db8:1:3::1");
        let other_48 = ip("2001:db8:2:2::1");
        assert_eq!(host(a).to_string(), "2001:db8:1:2::/64");
        assert_eq!(network(a).to_string(), "2001:db8:1::/48");
        assert_eq!(host(a), host(same_64));
        assert_ne!(host(a), host(same_48));
        assert_eq!(network(a), network(same_48));
        assert_ne!(network(a), network(other_48));
        assert!(!host(a).is_ipv4());
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_ipv4() {
        let mapped = ip("::ffff:192.0.2.77");
        assert_eq!(host(mapped), host(ip("192.0.2.77")));
        assert_eq!(network(mapped), network(ip("192.0.2.9")));
        assert_eq!(canonical(mapped), ip("192.0.2.77"));
        // Not an IPv6 /64 that would lump every IPv4 client together.
        assert_ne!(host(mapped), host(ip("::ffff:192.0.2.78")));
    }

    #[test]
    fn lengths_are_clamped_and_zero_is_everything() {
        assert_eq!(Prefix::of(ip("10.1.2.3"), 99).to_string(), "10.1.2.3/32");
        assert_eq!(Prefix::of(ip("10.1.2.3"), 0).to_string(), "0.0.0.0/0");
        assert_eq!(Prefix::of(ip("2001:db8::1"), 0).to_string(), "::/0");
        assert_eq!(
            Prefix::of(ip("2001:db8::1"), 200).to_string(),
            "2001:db8::1/128"
        );
    }
}
