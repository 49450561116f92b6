//! TLS set-up: how the SDK decides to trust a relay.
//!
//! Every [`Trust`] mode ends in a rustls `ServerCertVerifier` built on the *ring* provider (never
//! a process-wide default provider). Verifiers write why they rejected a certificate into a
//! shared [`VerifyLog`], because quinn reports a failed handshake only as a generic transport
//! error; the connect code reads the log to return [`Error::CertificateMismatch`] or
//! [`Error::UntrustedCertificate`].

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{Error, Trust};

/// SHA-256 of a DER certificate: the fingerprint [`Trust::Fingerprint`] pins.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, cert_der).as_ref());
    out
}

/// Formats a fingerprint as 64 lower-case hex digits without separators.
pub fn format_fingerprint(fingerprint: &[u8; 32]) -> String {
    hex::encode(fingerprint)
}

/// Parses a SHA-256 fingerprint written as 64 hex digits, either plain (`3fa1...`) or as
/// colon-separated pairs (`3F:A1:...`), in either case. Surrounding whitespace is ignored.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], Error> {
    let text = text.trim();
    let digits: String = if text.contains(':') {
        let mut digits = String::with_capacity(64);
        for pair in text.split(':') {
            if pair.len() != 2 {
                return Err(Error::Config(format!(
                    "fingerprint {text:?}: colon-separated groups must be 2 hex digits, got {pair:?}"
                )));
            }
            digits.push_str(pair);
        }
        digits
    } else {
        text.to_owned()
    };
    let bytes = hex::decode(&digits)
        .map_err(|e| Error::Config(format!("fingerprint {text:?} is not hex: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        Error::Config(format!(
            "fingerprint {text:?} has {} bytes, a SHA-256 fingerprint has 32",
            bytes.len()
        ))
    })
}

/// Why a verifier rejected the relay's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VerifyFailure {
    /// The pinned fingerprint did not match.
    Mismatch {
        expected: [u8; 32],
        actual: [u8; 32],
    },
    /// Any other verification failure, as text.
    Untrusted(String),
}

impl VerifyFailure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            VerifyFailure::Mismatch { expected, actual } => Error::CertificateMismatch {
                expected: format_fingerprint(&expected),
                actual: format_fingerprint(&actual),
            },
            VerifyFailure::Untrusted(detail) => Error::UntrustedCertificate(detail),
        }
    }
}

/// The latest verification failure of a TLS configuration's handshakes, with when it was
/// recorded. The configuration (and so this log) is shared by every connection of one
/// `ClientConfig`, so an attempt takes only a failure recorded since it started: one that no
/// attempt took (a NAT probe's, say) cannot be reported by a later attempt that failed for
/// another reason.
#[derive(Debug, Default)]
pub(crate) struct VerifyLog(Mutex<Option<(std::time::Instant, VerifyFailure)>>);

impl VerifyLog {
    fn lock(&self) -> MutexGuard<'_, Option<(std::time::Instant, VerifyFailure)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, failure: VerifyFailure) {
        *self.lock() = Some((std::time::Instant::now(), failure));
    }

    /// The failure recorded at or after `since`, if any (it is removed either way).
    pub(crate) fn take_since(&self, since: std::time::Instant) -> Option<VerifyFailure> {
        self.lock()
            .take()
            .and_then(|(at, failure)| (at >= since).then_some(failure))
    }
}

/// A rustls client configuration and the log its verifier writes to.
pub(crate) struct TlsSetup {
    pub(crate) config: rustls::ClientConfig,
    pub(crate) log: Arc<VerifyLog>,
}

/// The crypto provider the SDK uses, always explicitly.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the TLS 1.3 client configuration for `trust`, offering `alpn`.
pub(crate) fn client_config(trust: &Trust, alpn: &[u8]) -> Result<TlsSetup, Error> {
    let provider = provider();
    let log = Arc::new(VerifyLog::default());
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Fingerprint(expected) => Arc::new(PinnedVerifier::new(
            *expected,
            provider.signature_verification_algorithms,
            log.clone(),
        )),
        Trust::CertificateFile(path) => {
            let certs = load_pem_certificates(path)?;
            webpki_verifier(roots_from(certs)?, &provider, log.clone())?
        }
        Trust::Certificates(certs) => {
            webpki_verifier(roots_from(certs.iter().cloned())?, &provider, log.clone())?
        }
        Trust::WebPki => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            webpki_verifier(roots, &provider, log.clone())?
        }
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(format!("TLS 1.3 unavailable: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsSetup { config, log })
}

/// Reads every certificate from a PEM file.
fn load_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    // A certificate file is a few KiB: reading it synchronously does not stall the runtime.
    let pem = std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "cannot read certificate file {}: {e}",
            path.display()
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{} contains no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn roots_from(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("unusable trusted certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config("no trusted certificate given".into()));
    }
    Ok(roots)
}

fn webpki_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
    log: Arc<VerifyLog>,
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Config(format!("cannot build certificate verifier: {e}")))?;
    Ok(Arc::new(LoggingVerifier { inner, log }))
}

/// Trusts exactly one certificate, named by the SHA-256 of its DER encoding, and still checks
/// that the relay holds its private key (the TLS 1.3 handshake signature).
///
/// The certificate's name and validity period are not checked: the pin names one certificate,
/// so a name or a date would add nothing an attacker could not also copy.
pub(crate) struct PinnedVerifier {
    expected: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
    log: Arc<VerifyLog>,
    /// Whose certificate it checks, for the log: the relay's or a direct peer's.
    whose: &'static str,
}

impl PinnedVerifier {
    /// Checks the relay's certificate, recording a failure in `log`.
    pub(crate) fn new(
        expected: [u8; 32],
        algorithms: WebPkiSupportedAlgorithms,
        log: Arc<VerifyLog>,
    ) -> Self {
        Self {
            expected,
            algorithms,
            log,
            whose: "relay",
        }
    }

    /// Checks a member's certificate on a direct path (its fingerprint came in the member's
    /// offer, through the relay).
    pub(crate) fn direct_peer(expected: [u8; 32], algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self {
            expected,
            algorithms,
            log: Arc::default(),
            whose: "direct peer",
        }
    }

    fn signature_result(
        &self,
        result: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        result.inspect_err(|e| {
            self.log.record(VerifyFailure::Untrusted(format!(
                "handshake signature does not match the pinned certificate: {e}"
            )))
        })
    }
}

impl fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedVerifier")
            .field("expected", &format_fingerprint(&self.expected))
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = fingerprint(end_entity);
        // A fingerprint is public, so a plain comparison leaks nothing worth a timing attack.
        if actual == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(
                whose = self.whose,
                expected = %format_fingerprint(&self.expected),
                actual = %format_fingerprint(&actual),
                "certificate does not match the pinned fingerprint"
            );
            self.log.record(VerifyFailure::Mismatch {
                expected: self.expected,
                actual,
            });
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature_result(rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.algorithms,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The answer to a TLS 1.2 signature. The SDK is built without rustls' TLS 1.2 support and
/// offers TLS 1.3 only, so no handshake asks for one; were one to, it is refused.
pub(crate) fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::PeerIncompatible::Tls12NotOfferedOrEnabled.into())
}

/// A WebPKI verifier that records why it rejected a certificate.
#[derive(Debug)]
struct LoggingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    log: Arc<VerifyLog>,
}

impl LoggingVerifier {
    fn logged<T>(&self, result: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        result.inspect_err(|e| self.log.record(VerifyFailure::Untrusted(e.to_string())))
    }
}

impl ServerCertVerifier for LoggingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.logged(self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.logged(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::sign::{CertifiedKey, SingleCertAndKey};

    struct TestCert {
        der: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    }

    fn test_cert() -> TestCert {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        TestCert {
            der: generated.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()).into(),
        }
    }

    /// A TLS 1.3 server presenting `cert` but signing with `signing_key` (normally the same).
    fn server(cert: &TestCert, signing_key: &PrivateKeyDer<'static>) -> rustls::ServerConnection {
        let provider = provider();
        let key = provider
            .key_provider
            .load_private_key(signing_key.clone_key())
            .unwrap();
        let certified = CertifiedKey::new(vec![cert.der.clone()], key);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![baton_protocol::ALPN.to_vec()];
        rustls::ServerConnection::new(Arc::new(config)).unwrap()
    }

    /// Runs a TLS handshake in memory; returns the client's error, if any, and its log.
    fn handshake(
        trust: &Trust,
        mut server: rustls::ServerConnection,
    ) -> (Result<(), rustls::Error>, Option<VerifyFailure>) {
        let setup = client_config(trust, baton_protocol::ALPN).unwrap();
        let started = std::time::Instant::now();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(setup.config), name).unwrap();
        let result = (|| {
            for _ in 0..10 {
                if !client.is_handshaking() && !server.is_handshaking() {
                    return Ok(());
                }
                let mut buf = Vec::new();
                client.write_tls(&mut buf).unwrap();
                server.read_tls(&mut buf.as_slice()).unwrap();
                // The server's own errors are not under test; the client's are.
                let _ = server.process_new_packets();
                let mut buf = Vec::new();
                server.write_tls(&mut buf).unwrap();
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets()?;
            }
            panic!("handshake did not finish");
        })();
        (result, setup.log.take_since(started))
    }

    #[test]
    fn an_attempt_takes_only_a_failure_recorded_since_it_started() {
        let log = VerifyLog::default();
        log.record(VerifyFailure::Untrusted("an earlier handshake's".into()));
        let started = std::time::Instant::now() + std::time::Duration::from_millis(1);
        // Recorded before this attempt started: not its failure, and gone.
        assert_eq!(log.take_since(started), None);
        assert_eq!(
            log.take_since(std::time::Instant::now() - std::time::Duration::from_secs(1)),
            None
        );
        let started = std::time::Instant::now();
        log.record(VerifyFailure::Untrusted("this one's".into()));
        assert_eq!(
            log.take_since(started),
            Some(VerifyFailure::Untrusted("this one's".into()))
        );
        assert_eq!(log.take_since(started), None);
    }

    #[test]
    fn parses_fingerprints_with_and_without_colons() {
        let plain = "3fa1".repeat(16);
        let expected: [u8; 32] = [0x3f, 0xa1].repeat(16).try_into().unwrap();
        assert_eq!(parse_fingerprint(&plain).unwrap(), expected);
        assert_eq!(parse_fingerprint(&plain.to_uppercase()).unwrap(), expected);
        let colons = ["3F", "A1"].repeat(16).join(":");
        assert_eq!(
            parse_fingerprint(&format!("  {colons}\n")).unwrap(),
            expected
        );
        assert_eq!(
            format_fingerprint(&expected),
            plain,
            "formatting is the inverse of parsing"
        );
    }

    #[test]
    fn rejects_malformed_fingerprints() {
        for bad in [
            "",
            "3fa1",              // too short
            &"3fa1".repeat(17),  // too long
            &"zz".repeat(32),    // not hex
            &"3".repeat(63),     // odd length
            &"3fa:1".repeat(16), // bad grouping
            &"3fa1:".repeat(16), // trailing colon
        ] {
            assert!(
                matches!(parse_fingerprint(bad), Err(Error::Config(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn pinned_verifier_accepts_the_pinned_certificate() {
        let cert = test_cert();
        let trust = Trust::Fingerprint(fingerprint(&cert.der));
        let (result, failure) = handshake(&trust, server(&cert, &cert.key));
        assert_eq!(result, Ok(()));
        assert_eq!(failure, None);
    }

    #[test]
    fn pinned_verifier_rejects_another_certificate_and_records_it() {
        let pinned = test_cert();
        let other = test_cert();
        let trust = Trust::Fingerprint(fingerprint(&pinned.der));
        let (result, failure) = handshake(&trust, server(&other, &other.key));
        assert!(result.is_err());
        let failure = failure.expect("mismatch recorded");
        assert_eq!(
            failure,
            VerifyFailure::Mismatch {
                expected: fingerprint(&pinned.der),
                actual: fingerprint(&other.der),
            }
        );
        match failure.into_error() {
            Error::CertificateMismatch { expected, actual } => {
                assert_eq!(expected, format_fingerprint(&fingerprint(&pinned.der)));
                assert_eq!(actual, format_fingerprint(&fingerprint(&other.der)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn pinned_verifier_rejects_the_pinned_certificate_without_its_key() {
        // An attacker can copy the relay's certificate but not its private key.
        let pinned = test_cert();
        let attacker = test_cert();
        let trust = Trust::Fingerprint(fingerprint(&pinned.der));
        let (result, failure) = handshake(&trust, server(&pinned, &attacker.key));
        assert!(result.is_err(), "forged handshake accepted");
        assert!(
            matches!(failure, Some(VerifyFailure::Untrusted(ref d)) if d.contains("signature")),
            "{failure:?}"
        );
    }

    #[test]
    fn root_trust_accepts_its_certificate_and_rejects_others() {
        let trusted = test_cert();
        let other = test_cert();
        let trust = Trust::Certificates(vec![trusted.der.clone()]);
        let (result, failure) = handshake(&trust, server(&trusted, &trusted.key));
        assert_eq!(result, Ok(()));
        assert_eq!(failure, None);

        let (result, failure) = handshake(&trust, server(&other, &other.key));
        assert!(result.is_err());
        assert!(
            matches!(failure, Some(VerifyFailure::Untrusted(_))),
            "{failure:?}"
        );
    }

    #[test]
    fn every_trust_mode_builds_a_tls13_config_offering_the_alpn() {
        let cert = test_cert();
        for trust in [
            Trust::Fingerprint([1; 32]),
            Trust::Certificates(vec![cert.der.clone()]),
            Trust::WebPki,
        ] {
            let setup = client_config(&trust, b"baton/1").unwrap();
            assert_eq!(setup.config.alpn_protocols, vec![b"baton/1".to_vec()]);
            assert!(quinn::crypto::rustls::QuicClientConfig::try_from(setup.config).is_ok());
        }
        assert!(matches!(
            client_config(&Trust::Certificates(Vec::new()), b"baton/1"),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn certificate_files_are_read_as_pem() {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("baton-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.pem");
        std::fs::write(&path, generated.cert.pem()).unwrap();
        assert_eq!(
            load_pem_certificates(&path).unwrap(),
            vec![generated.cert.der().clone()]
        );
        std::fs::write(&path, "no certificates here").unwrap();
        assert!(matches!(
            load_pem_certificates(&path),
            Err(Error::Config(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            client_config(&Trust::CertificateFile(path), b"baton/1"),
            Err(Error::Config(_))
        ));
    }
}
