//! What the examples share: how to reach and trust the relay, from the command line, and log
//! set-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_client::{ClientConfig, Trust};

/// The relay to talk to and how to trust its certificate.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// Relay address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub relay: SocketAddr,
    /// SHA-256 fingerprint of the relay's certificate (hex, colons optional).
    #[arg(long, required_unless_present = "cert", conflicts_with = "cert")]
    pub fingerprint: Option<String>,
    /// PEM file with the relay's certificate.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// TLS server name to check the certificate against (with --cert).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

impl RelayArgs {
    /// The SDK configuration these arguments describe.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let trust = match (&self.fingerprint, &self.cert) {
            (Some(hex), _) => Trust::fingerprint_hex(hex)?,
            (None, Some(path)) => Trust::CertificateFile(path.clone()),
            (None, None) => anyhow::bail!("pass --fingerprint or --cert"),
        };
        Ok(ClientConfig::new(self.relay, trust).server_name(self.server_name.clone()))
    }
}

/// Logs filtered by `RUST_LOG`.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
}
