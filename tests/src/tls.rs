//! TLS for raw QUIC clients of a relay (bypassing the SDK): trust the certificate in the
//! relay's PEM file, TLS 1.3 with the ring provider and Baton's ALPN. Used by the end-to-end
//! tests ([`crate::raw_client`]) and `baton-soak`'s expiry probe. Pure configuration.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::{pem::PemObject, CertificateDer};

/// The QUIC client crypto that trusts the certificates in `cert_pem` (a relay's `cert.pem`).
///
/// # Errors
/// If the PEM holds no readable certificate or rustls refuses the configuration.
pub fn quic_crypto(cert_pem: &[u8]) -> anyhow::Result<quinn::crypto::rustls::QuicClientConfig> {
    quic_crypto_with(cert_pem, true)
}

/// [`quic_crypto`], resuming TLS sessions (rustls's default in-memory store, shared by every
/// connection of the configuration) or never (`resume` false: every handshake is full).
///
/// # Errors
/// If the PEM holds no readable certificate or rustls refuses the configuration.
pub fn quic_crypto_with(
    cert_pem: &[u8],
    resume: bool,
) -> anyhow::Result<quinn::crypto::rustls::QuicClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(cert_pem) {
        roots
            .add(der.context("PEM certificate")?)
            .context("trusting the relay certificate")?;
    }
    if roots.is_empty() {
        bail!("no certificate in the relay's PEM file");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![baton_protocol::ALPN.to_vec()];
    if !resume {
        crypto.resumption = rustls::client::Resumption::disabled();
    }
    quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| anyhow!("TLS configuration unusable for QUIC: {e}"))
}
