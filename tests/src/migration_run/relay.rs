//! [`LocalRelay`]: the relay of a migration run, in this process on loopback with a throw-away
//! data directory; its tasks run on the caller's runtime.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use baton_relay::{Relay, RelayConfig, TlsSource};

/// Settings of the in-process relay.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// A client silent this long is lost: how long a crashed host goes unnoticed.
    pub keepalive: Duration,
    /// Largest migration snapshot accepted, in bytes (at least the relay's 1 KiB minimum).
    pub max_snapshot: usize,
    /// A host silent this long is lost (the relay's `host_loss_timeout`, its default for
    /// every allocation): how long a crashed host goes unnoticed. `None`: the relay's default
    /// (1.5 s).
    pub host_loss_timeout: Option<Duration>,
}

/// A relay running in this process on loopback, with a throw-away data directory for its
/// self-signed development certificate.
pub struct LocalRelay {
    relay: Option<Relay>,
    fingerprint: String,
    keepalive: Duration,
    _dir: tempfile::TempDir,
}

impl LocalRelay {
    /// Starts a relay on `127.0.0.1` (kernel-chosen port, no admin server).
    ///
    /// # Errors
    /// If a setting is out of the relay's range or the relay cannot start.
    pub async fn start(settings: RelaySettings) -> anyhow::Result<LocalRelay> {
        let dir = tempfile::tempdir().context("relay data directory")?;
        let mut config = RelayConfig::default();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.admin_listen = None;
        config.tls = TlsSource::SelfSigned {
            data_dir: dir.path().to_owned(),
            extra_names: Vec::new(),
        };
        config
            .set_keepalive_timeout(settings.keepalive)
            .context("keepalive")?;
        if let Some(timeout) = settings.host_loss_timeout {
            config
                .set_host_loss_timeout(timeout)
                .context("host loss timeout")?;
        }
        if settings.max_snapshot > config.max_snapshot() {
            config
                .set_max_snapshot(settings.max_snapshot)
                .context("snapshot size")?;
            if config.snapshot_budget() < settings.max_snapshot {
                config
                    .set_snapshot_budget(settings.max_snapshot)
                    .context("snapshot budget")?;
            }
        }
        let relay = Relay::bind(config).await.context("start the relay")?;
        let fingerprint = hex::encode(relay.fingerprint());
        Ok(LocalRelay {
            relay: Some(relay),
            fingerprint,
            keepalive: settings.keepalive,
            _dir: dir,
        })
    }

    /// The relay's QUIC address.
    pub fn addr(&self) -> SocketAddr {
        self.relay
            .as_ref()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), Relay::local_addr)
    }

    /// SHA-256 fingerprint of the relay's certificate, in hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The keepalive timeout the relay runs with.
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// Stops the relay gracefully.
    pub async fn shutdown(mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
    }
}
