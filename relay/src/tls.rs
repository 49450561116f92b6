//! TLS material: the development self-signed certificate (generated once, kept in the data
//! directory, so its fingerprint stays stable for clients that pin it) or PEM files for
//! production, and the rustls server configuration built from either.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::TlsSource;
use crate::metrics::TlsTickets;

/// File name of the development certificate inside the data directory.
pub const DEV_CERT_FILE: &str = "dev-cert.pem";
/// File name of the development private key inside the data directory.
pub const DEV_KEY_FILE: &str = "dev-key.pem";

/// Why TLS material could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file is malformed, or held no certificate or no private key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        what: String,
    },
    /// Certificate generation failed.
    #[error("generating the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain with its key.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key of the leaf.
    pub key: PrivateKeyDer<'static>,
    /// Whether the development certificate was generated on this start.
    pub generated: bool,
    /// Where the certificate came from (the PEM file clients can trust).
    pub cert_path: PathBuf,
}

impl TlsMaterial {
    /// SHA-256 of the leaf certificate's DER encoding: what the SDK pins.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.chain
            .first()
            .map(|leaf| fingerprint(leaf.as_ref()))
            .unwrap_or_default()
    }
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    crate::crypto::sha256(der)
}

/// Formats a fingerprint as colon-separated upper-case hex, as `openssl x509 -fingerprint`
/// prints it.
pub fn fingerprint_hex(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads (or, for the development default, generates on first use) the TLS material.
pub fn load(source: &TlsSource) -> Result<TlsMaterial, TlsError> {
    match source {
        TlsSource::Pem { cert, key } => Ok(TlsMaterial {
            chain: read_certs(cert)?,
            key: read_key(key)?,
            generated: false,
            cert_path: cert.clone(),
        }),
        TlsSource::SelfSigned {
            data_dir,
            extra_names,
        } => {
            let cert_path = data_dir.join(DEV_CERT_FILE);
            let key_path = data_dir.join(DEV_KEY_FILE);
            if cert_path.exists() && key_path.exists() {
                return Ok(TlsMaterial {
                    chain: read_certs(&cert_path)?,
                    key: read_key(&key_path)?,
                    generated: false,
                    cert_path,
                });
            }
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            names.extend(extra_names.iter().cloned());
            let certified = rcgen::generate_simple_self_signed(names)?;
            std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
            write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, certified.cert.pem()).map_err(io_err(&cert_path))?;
            Ok(TlsMaterial {
                chain: vec![certified.cert.der().clone()],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    certified.key_pair.serialize_der(),
                )),
                generated: true,
                cert_path,
            })
        }
    }
}

/// Writes a file readable by its owner only (the private key).
fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(data).map_err(io_err(path))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| match err {
        pem::Error::NoItemsFound => TlsError::Pem {
            path: path.to_owned(),
            what: "no private key found".into(),
        },
        other => pem_err(path)(other),
    })
}

/// A malformed PEM file, named.
fn pem_err(path: &Path) -> impl Fn(pem::Error) -> TlsError + '_ {
    move |err| TlsError::Pem {
        path: path.to_owned(),
        what: err.to_string(),
    }
}

/// A TLS 1.3-only rustls server configuration speaking Baton's ALPN.
///
/// The relay chooses the cipher suite, AES-128-GCM first, whatever the client prefers. The
/// relay decrypts and encrypts every datagram it forwards; AES-128-GCM costs fewer rounds than
/// AES-256-GCM, and its SHA-256 handshake hash runs on the CPU's SHA extensions where SHA-384
/// does not, which makes handshakes cheaper too. Every QUIC client supports it (RFC 9001
/// requires it).
pub fn server_crypto(
    material: &TlsMaterial,
    tickets: TlsTickets,
) -> Result<rustls::ServerConfig, TlsError> {
    use rustls::crypto::ring::cipher_suite;
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        ..rustls::crypto::ring::default_provider()
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    // Retired versions are accepted only to be closed with a clear reason (SPEC section 2.2).
    config.alpn_protocols = std::iter::once(baton_protocol::ALPN)
        .chain(baton_protocol::RETIRED_ALPN.iter().copied())
        .map(<[u8]>::to_vec)
        .collect();
    config.max_early_data_size = 0;
    config.ignore_client_order = true;
    // Resumption (SPEC section 2.1): one stateless ticket per handshake, so a client that
    // comes back (a rejoin, a migration, a reconnect) skips the certificate signature and its
    // verification. rustls's ticketer seals the session in the ticket with a random key that
    // rotates every 6 hours (a ticket lives 12): nothing is stored per client, and another
    // node's ticket just fails to open (a full handshake follows).
    config.ticketer = Arc::new(CountedTickets {
        inner: rustls::crypto::ring::Ticketer::new()?,
        counts: tickets,
    });
    config.send_tls13_tickets = 1;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// rustls's ticketer, counted in `baton_tls_tickets_total`.
#[derive(Debug)]
struct CountedTickets {
    inner: Arc<dyn rustls::server::ProducesTickets>,
    counts: TlsTickets,
}

impl rustls::server::ProducesTickets for CountedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let ticket = self.inner.encrypt(plain);
        if ticket.is_some() {
            self.counts.issued.inc();
        }
        ticket
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        match plain {
            Some(_) => self.counts.accepted.inc(),
            None => self.counts.rejected.inc(),
        };
        plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let source = TlsSource::SelfSigned {
            data_dir: dir.path().join("data"),
            extra_names: vec!["relay.example".into()],
        };
        let first = load(&source).unwrap();
        assert!(first.generated);
        let second = load(&source).unwrap();
        assert!(!second.generated);
        assert_eq!(first.fingerprint(), second.fingerprint());
        server_crypto(&second, TlsTickets::default()).unwrap();
        assert_eq!(fingerprint_hex(&first.fingerprint()).len(), 32 * 3 - 1);
    }

    /// Runs a TLS 1.3 handshake in memory between `server` and a client with rustls' default
    /// suite order (AES-256-GCM first) and returns the suite the two agreed on.
    fn negotiated_suite(
        server: rustls::ServerConfig,
        cert: &rustls::pki_types::CertificateDer<'static>,
    ) -> rustls::CipherSuite {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        client_config.alpn_protocols = vec![baton_protocol::ALPN.to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking(), "handshake did not complete");
        server.negotiated_cipher_suite().unwrap().suite()
    }

    #[test]
    fn relay_chooses_aes_128_gcm_even_when_the_client_prefers_aes_256() {
        let dir = tempfile::tempdir().unwrap();
        let material = load(&TlsSource::SelfSigned {
            data_dir: dir.path().to_owned(),
            extra_names: vec![],
        })
        .unwrap();
        let default_first = rustls::crypto::ring::default_provider().cipher_suites[0].suite();
        assert_eq!(default_first, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
        let chosen = negotiated_suite(
            server_crypto(&material, TlsTickets::default()).unwrap(),
            &material.chain[0],
        );
        assert_eq!(chosen, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[test]
    fn pem_source_reports_missing_files_and_empty_pem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsSource::Pem {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
        };
        assert!(matches!(load(&missing), Err(TlsError::Io { .. })));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let source = TlsSource::Pem {
            cert: empty.clone(),
            key: empty,
        };
        assert!(matches!(load(&source), Err(TlsError::Pem { .. })));
    }
}
