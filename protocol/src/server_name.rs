//! TLS server names carried on the wire (`Redirect.server_name`, SPEC section 5.3): the name a
//! client presents (SNI) and checks the next relay's certificate against.
//!
//! A valid name is 1 to [`MAX_LEN`] bytes and either an IP address literal (IPv4 dotted
//! decimal, or IPv6 text without brackets or zone) or a DNS name in its usual host-name form:
//! labels of 1 to 63 ASCII letters, digits and hyphens, not starting or ending with a hyphen,
//! separated by single dots, with no trailing dot, and a last label that is not all digits (so
//! a name never reads as a malformed IPv4 address). Every name this accepts is one TLS stacks
//! accept as a server name.

use std::net::IpAddr;

/// Longest server name in bytes (the longest DNS name in text form).
pub const MAX_LEN: usize = 253;

/// Longest DNS label in bytes.
const MAX_LABEL_LEN: usize = 63;

/// Whether `name` is a server name the protocol carries: an IP literal or a DNS name as
/// described in the module documentation.
pub fn is_valid(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_LEN {
        return false;
    }
    name.parse::<IpAddr>().is_ok() || is_dns_name(name)
}

fn is_dns_name(name: &str) -> bool {
    let mut last = "";
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let ldh = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        if bytes.is_empty()
            || bytes.len() > MAX_LABEL_LEN
            || !ldh
            || bytes.first() == Some(&b'-')
            || bytes.last() == Some(&b'-')
        {
            return false;
        }
        last = label;
    }
    !last.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_and_ip_literals_are_valid() {
        for good in [
            "localhost",
            "relay-3.eu.example.com",
            "a",
            "x1",
            "127.0.0.1",
            "::1",
            "2001:db8::17",
            "::ffff:10.0.0.1",
            "1.2.3.x",
        ] {
            assert!(is_valid(good), "{good:?}");
        }
        let longest = [
            &"a".repeat(63)[..],
            &"b".repeat(63),
            &"c".repeat(63),
            &"d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), MAX_LEN);
        assert!(is_valid(&longest));
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            "",
            ".",
            "example.com.",
            ".example.com",
            "a..b",
            "-a.com",
            "a-.com",
            "under_score.com",
            "sp ace",
            "ümlaut.de",
            "[::1]",
            "fe80::1%eth0",
            "127.0.0.1:7700",
            "1.2.3",
            "300.1.1.1",
            "123",
            "a\0b",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        assert!(!is_valid(&"a".repeat(64)));
        assert!(!is_valid(&format!("{}.com", "a".repeat(250))));
    }
}
