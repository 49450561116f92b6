//! The relay's library configuration: a plain struct whose fields all have defaults
//! (see [`crate::defaults`]) and whose setters validate. The binary turns its command line and
//! TOML file into one of these in a single function.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::defaults;

/// A setting outside its accepted range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    /// The setting's name as in the config file.
    pub setting: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// Where the relay's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Development default: a self-signed certificate generated on first start and kept in
    /// `data_dir` (reused afterwards, so clients can pin its fingerprint).
    SelfSigned {
        /// Directory holding `dev-cert.pem` and `dev-key.pem`.
        data_dir: PathBuf,
        /// Host names or IP addresses put in the certificate besides `localhost`, `127.0.0.1`
        /// and `::1`.
        extra_names: Vec<String>,
    },
    /// Production: a certificate chain and private key in PEM files.
    Pem {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// PKCS#8, PKCS#1 or SEC1 private key.
        key: PathBuf,
    },
}

/// Everything a relay needs to run. `RelayConfig::default()` is a working development relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Admin HTTP address; `None` disables the admin server.
    pub admin_listen: Option<SocketAddr>,
    /// Certificate source.
    pub tls: TlsSource,
    /// Bearer token for the admin API's mutating endpoints; `None` leaves them open (fine when
    /// the admin server listens on loopback only).
    pub admin_token: Option<String>,
    keepalive_timeout: Duration,
    bind_timeout: Duration,
    host_bind_timeout: Duration,
    max_peers_per_allocation: u16,
    max_allocations: usize,
    max_connections: usize,
    max_control_frame: usize,
    max_datagram_payload: usize,
    join_code_len: usize,
    join_code_ttl: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: defaults::LISTEN,
            admin_listen: Some(defaults::ADMIN_LISTEN),
            tls: TlsSource::SelfSigned {
                data_dir: PathBuf::from("baton-data"),
                extra_names: Vec::new(),
            },
            admin_token: None,
            keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
            bind_timeout: defaults::BIND_TIMEOUT,
            host_bind_timeout: defaults::HOST_BIND_TIMEOUT,
            max_peers_per_allocation: defaults::MAX_PEERS_PER_ALLOCATION,
            max_allocations: defaults::MAX_ALLOCATIONS,
            max_connections: defaults::MAX_CONNECTIONS,
            max_control_frame: defaults::MAX_CONTROL_FRAME,
            max_datagram_payload: defaults::MAX_DATAGRAM_PAYLOAD,
            join_code_len: defaults::JOIN_CODE_LEN,
            join_code_ttl: defaults::JOIN_CODE_TTL,
        }
    }
}

macro_rules! getter {
    ($name:ident: $ty:ty, $doc:expr) => {
        #[doc = $doc]
        pub fn $name(&self) -> $ty {
            self.$name
        }
    };
}

impl RelayConfig {
    getter!(keepalive_timeout: Duration, "A client silent this long is removed (QUIC idle timeout).");
    getter!(bind_timeout: Duration, "Time a new connection has to create or join an allocation.");
    getter!(host_bind_timeout: Duration, "Time the host of a lobby-reserved allocation has to bind.");
    getter!(max_peers_per_allocation: u16, "Members per allocation, host included (default and cap).");
    getter!(max_allocations: usize, "Allocations held at once.");
    getter!(max_connections: usize, "Concurrent QUIC connections.");
    getter!(max_control_frame: usize, "Longest accepted control frame, in bytes.");
    getter!(max_datagram_payload: usize, "Largest datagram payload carried, in bytes.");
    getter!(join_code_len: usize, "Characters in issued join codes.");
    getter!(join_code_ttl: Duration, "Join-code time to live (default and cap).");

    /// Sets the keepalive timeout (100 ms to 10 min).
    pub fn set_keepalive_timeout(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_millis(100) || v > Duration::from_secs(600) {
            return Err(invalid(
                "keepalive_timeout",
                "must be between 100 ms and 10 min",
            ));
        }
        self.keepalive_timeout = v;
        Ok(self)
    }

    /// Sets the bind timeout (100 ms to 10 min).
    pub fn set_bind_timeout(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_millis(100) || v > Duration::from_secs(600) {
            return Err(invalid("bind_timeout", "must be between 100 ms and 10 min"));
        }
        self.bind_timeout = v;
        Ok(self)
    }

    /// Sets the host bind timeout of lobby-reserved allocations (100 ms to 1 h).
    pub fn set_host_bind_timeout(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_millis(100) || v > Duration::from_secs(3600) {
            return Err(invalid(
                "host_bind_timeout",
                "must be between 100 ms and 1 h",
            ));
        }
        self.host_bind_timeout = v;
        Ok(self)
    }

    /// Sets the members-per-allocation cap (2 to the protocol's limit).
    pub fn set_max_peers_per_allocation(&mut self, v: u16) -> Result<&mut Self, ConfigError> {
        if !(2..=baton_protocol::MAX_PEERS_LIMIT).contains(&v) {
            return Err(invalid(
                "max_peers_per_allocation",
                format!("must be between 2 and {}", baton_protocol::MAX_PEERS_LIMIT),
            ));
        }
        self.max_peers_per_allocation = v;
        Ok(self)
    }

    /// Sets the allocation cap (at least 1).
    pub fn set_max_allocations(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if v == 0 {
            return Err(invalid("max_allocations", "must be at least 1"));
        }
        self.max_allocations = v;
        Ok(self)
    }

    /// Sets the connection cap (at least 1).
    pub fn set_max_connections(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        if v == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        self.max_connections = v;
        Ok(self)
    }

    /// Sets the control frame cap (9 KiB, enough for every message, to 1 MiB).
    pub fn set_max_control_frame(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        let min = baton_protocol::frame::MIN_MAX_FRAME_LEN;
        if !(min..=1 << 20).contains(&v) {
            return Err(invalid(
                "max_control_frame",
                format!("must be between {min} and 1048576"),
            ));
        }
        self.max_control_frame = v;
        Ok(self)
    }

    /// Sets the datagram payload cap (1 to the protocol's promise at minimum MTU; a larger value
    /// could not be delivered on every path).
    pub fn set_max_datagram_payload(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        let max = baton_protocol::MAX_DATAGRAM_PAYLOAD;
        if !(1..=max).contains(&v) {
            return Err(invalid(
                "max_datagram_payload",
                format!("must be between 1 and {max}"),
            ));
        }
        self.max_datagram_payload = v;
        Ok(self)
    }

    /// Sets the join-code length (4 to 12).
    pub fn set_join_code_len(&mut self, v: usize) -> Result<&mut Self, ConfigError> {
        use baton_protocol::join_code::{MAX_LEN, MIN_LEN};
        if !(MIN_LEN..=MAX_LEN).contains(&v) {
            return Err(invalid(
                "join_code_len",
                format!("must be between {MIN_LEN} and {MAX_LEN}"),
            ));
        }
        self.join_code_len = v;
        Ok(self)
    }

    /// Sets the join-code time to live (1 s to 30 days).
    pub fn set_join_code_ttl(&mut self, v: Duration) -> Result<&mut Self, ConfigError> {
        if v < Duration::from_secs(1) || v > Duration::from_secs(30 * 24 * 3600) {
            return Err(invalid("join_code_ttl", "must be between 1 s and 30 days"));
        }
        self.join_code_ttl = v;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = RelayConfig::default();
        assert_eq!(c.keepalive_timeout(), Duration::from_secs(10));
        assert!(c.max_peers_per_allocation() >= 150);
        assert_eq!(c.max_datagram_payload(), 1150);
    }

    #[test]
    fn setters_reject_out_of_range_values() {
        let mut c = RelayConfig::default();
        assert!(c.set_max_datagram_payload(1151).is_err());
        assert!(c.set_max_peers_per_allocation(1).is_err());
        assert!(c.set_keepalive_timeout(Duration::from_millis(10)).is_err());
        assert!(c.set_max_control_frame(10).is_err());
        assert!(c.set_join_code_len(3).is_err());
        c.set_max_datagram_payload(500)
            .unwrap()
            .set_join_code_len(8)
            .unwrap();
        assert_eq!(c.max_datagram_payload(), 500);
        assert_eq!(c.join_code_len(), 8);
    }
}
