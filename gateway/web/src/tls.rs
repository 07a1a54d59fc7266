//! TLS for the web front and the reference client: the server config from PEM files, a
//! self-signed certificate when none exists, the certificate pin (SHA-256 of the DER), and a
//! client config that trusts exactly the pinned certificate.
//!
//! Clients do not use the web PKI: the pin from the enrollment link (and later the
//! certificate in the profile's `tls_anchor_pem`) is the trust anchor, so names and expiry
//! are not checked, but the handshake signature still is, with the provider's algorithms.
//! Everything uses the `ring` provider explicitly, so no process-wide default is needed.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

/// ALPN protocol both sides speak.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A TLS file or configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file (or `<profile>` for an in-memory anchor).
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Only one of the certificate and key exists; generating would break the pin.
    #[error(
        "{present} exists but {missing} does not; restore it or remove both to generate a new pair"
    )]
    HalfPair {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// Certificate generation failed.
    #[error("generating a self-signed certificate failed")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
    /// A pin is not 64 hex digits.
    #[error("a certificate pin must be 64 hex digits (SHA-256)")]
    BadPin,
    /// A certificate does not parse as X.509.
    #[error("{0}: the certificate does not parse")]
    Unparsable(PathBuf),
    /// The key file is not the certificate's key.
    #[error("{0} is not the key of the certificate being renewed")]
    KeyMismatch(PathBuf),
}

/// The crypto provider used everywhere in xdpgate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (in order; the first is the end entity).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?;
    certs_from_pem(&pem, path)
}

/// Parses every certificate of PEM text; `origin` names it in errors.
pub fn certs_from_pem(pem: &[u8], origin: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            path: origin.to_owned(),
            what: format!("bad certificate PEM: {err}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: origin.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = Zeroizing::new(std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| TlsError::Pem {
        path: path.to_owned(),
        what: format!("no usable private key: {err}"),
    })
}

/// The web front's server config: the PEM chain and key, TLS 1.2 and 1.3, ALPN `http/1.1`.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    let chain = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// Creates a self-signed certificate (ECDSA P-256) and its key at the given paths when
/// neither exists; does nothing when both exist. The key is written 0600 and a missing folder
/// is created 0700. Returns whether a pair was generated.
pub fn ensure_self_signed(
    cert_path: &Path,
    key_path: &Path,
    subject_alt_names: &[String],
) -> Result<bool, TlsError> {
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => return Ok(false),
        (true, false) => {
            return Err(TlsError::HalfPair {
                present: cert_path.to_owned(),
                missing: key_path.to_owned(),
            });
        }
        (false, true) => {
            return Err(TlsError::HalfPair {
                present: key_path.to_owned(),
                missing: cert_path.to_owned(),
            });
        }
        (false, false) => {}
    }
    let names = if subject_alt_names.is_empty() {
        vec!["localhost".to_owned()]
    } else {
        subject_alt_names.to_vec()
    };
    let generated = rcgen::generate_simple_self_signed(names)?;
    let key_pem = Zeroizing::new(generated.signing_key.serialize_pem());
    // The key first: a certificate without its key would be a half pair on the next start.
    write_new_file(key_path, key_pem.as_bytes(), 0o600)?;
    write_new_file(cert_path, generated.cert.pem().as_bytes(), 0o644)?;
    Ok(true)
}

/// Creates `path` (never overwriting) with `mode`, creating a missing folder 0700.
pub fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io)
}

/// Replaces `path` with `contents` (mode `mode`) through a new temporary file beside it, a
/// rename and a sync of the folder, so a crash leaves the old file or the new one, never a
/// part.
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    write_new_file(&tmp, contents, mode)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// SHA-256 of a DER certificate.
pub fn cert_sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Lower-case hex SHA-256 of the first certificate in a PEM file: the pin that enrollment
/// links carry.
pub fn cert_sha256_hex(cert_path: &Path) -> Result<String, TlsError> {
    let certs = load_certs(cert_path)?;
    let first = certs.first().ok_or_else(|| TlsError::Pem {
        path: cert_path.to_owned(),
        what: "no certificate".into(),
    })?;
    Ok(to_hex(&cert_sha256(first)))
}

/// Parses a 64-digit hex pin.
pub fn parse_pin_hex(hex: &str) -> Result<[u8; 32], TlsError> {
    if hex.len() != 64 {
        return Err(TlsError::BadPin);
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| TlsError::BadPin)?;
        *byte = u8::from_str_radix(text, 16).map_err(|_| TlsError::BadPin)?;
    }
    Ok(out)
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A DER certificate as PEM text (what a profile's `tls_anchor_pem` holds).
pub fn cert_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// A client config that trusts only server certificates whose DER SHA-256 is one of `pins`.
/// TLS 1.2 and 1.3, ALPN `http/1.1`, no client certificate.
pub fn pinned_client_config(pins: Vec<[u8; 32]>) -> Result<ClientConfig, TlsError> {
    client_config_with(pins, Vec::new())
}

/// A client config trusting `cert_pins` (certificate SHA-256) and `key_pins` (SPKI SHA-256).
fn client_config_with(
    cert_pins: Vec<[u8; 32]>,
    key_pins: Vec<[u8; 32]>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(
        PinnedCertVerifier::new(cert_pins, provider.signature_verification_algorithms)
            .with_key_pins(key_pins),
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// A client config for a profile's `tls_anchor_pem`: it trusts a server certificate that is
/// one of the anchor certificates, or that carries the public key of one (a renewal that
/// kept the key: `xdpgate web-cert renew`, or a CA-issued certificate renewed with its key).
pub fn anchored_client_config(anchor_pem: &str) -> Result<ClientConfig, TlsError> {
    let certs = certs_from_pem(anchor_pem.as_bytes(), Path::new("<profile tls_anchor_pem>"))?;
    let cert_pins = certs.iter().map(|c| cert_sha256(c)).collect();
    let key_pins = certs
        .iter()
        .map(|c| {
            spki_sha256(c).ok_or_else(|| TlsError::Unparsable("<profile tls_anchor_pem>".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    client_config_with(cert_pins, key_pins)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (DER); `None` when it does not parse.
pub fn spki_sha256(der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    digest.as_ref().try_into().ok()
}

/// `xdpgate web-cert renew`: a new self-signed certificate for the same key, names and
/// subject, valid from now for `days`, written over `cert_path` through a rename (0644).
/// Profiles keep working: they trust the key (see [`anchored_client_config`]). Returns the
/// new certificate's SHA-256 (the pin new enrollment links carry).
pub fn renew_self_signed(
    cert_path: &Path,
    key_path: &Path,
    days: u32,
) -> Result<[u8; 32], TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let key_pem = Zeroizing::new(String::from_utf8_lossy(&read(key_path)?).into_owned());
    let key = rcgen::KeyPair::from_pem(&key_pem)?;
    let old = load_certs(cert_path)?;
    let first = old.first().ok_or_else(|| TlsError::Pem {
        path: cert_path.to_owned(),
        what: "no certificate".into(),
    })?;
    let (names, common_name) =
        names_of(first).ok_or_else(|| TlsError::Unparsable(cert_path.to_owned()))?;
    let mut params = rcgen::CertificateParams::new(names)?;
    if let Some(cn) = common_name {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = dn;
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
    params.serial_number = None;
    let cert = params.self_signed(&key)?;
    if spki_sha256(cert.der()) != spki_sha256(first) {
        return Err(TlsError::KeyMismatch(key_path.to_owned()));
    }
    replace_file(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_sha256(cert.der()))
}

/// The DNS names and IP addresses (subjectAltName) and the common name of a certificate.
fn names_of(der: &[u8]) -> Option<(Vec<String>, Option<String>)> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Some((names, common_name))
}

/// The pins of every certificate in a profile's `tls_anchor_pem`.
pub fn pins_from_anchor_pem(anchor_pem: &str) -> Result<Vec<[u8; 32]>, TlsError> {
    let certs = certs_from_pem(anchor_pem.as_bytes(), Path::new("<profile tls_anchor_pem>"))?;
    Ok(certs.iter().map(|c| cert_sha256(c)).collect())
}

/// Accepts exactly the server certificates whose DER SHA-256 is pinned.
///
/// The pin replaces chain building: intermediates, the server name and validity dates are
/// ignored (a pinned self-signed certificate is the normal case). The handshake signature is
/// verified against the pinned certificate's key, so the peer must hold its private key.
pub struct PinnedCertVerifier {
    pins: Vec<[u8; 32]>,
    /// SHA-256 of public keys (SubjectPublicKeyInfo) trusted in any certificate.
    key_pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCertVerifier {
    /// A verifier for `pins`, checking signatures with `algorithms`.
    pub fn new(pins: Vec<[u8; 32]>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self {
            pins,
            key_pins: Vec::new(),
            algorithms,
        }
    }

    /// Also trusts any certificate carrying one of these public keys (SHA-256 of its
    /// SubjectPublicKeyInfo): the handshake signature proves the peer holds that key.
    #[must_use]
    pub fn with_key_pins(mut self, key_pins: Vec<[u8; 32]>) -> Self {
        self.key_pins = key_pins;
        self
    }

    fn is_pinned(&self, der: &[u8]) -> bool {
        let digest = cert_sha256(der);
        // Every pin is compared, each in constant time.
        let by_cert: bool = self
            .pins
            .iter()
            .fold(subtle::Choice::from(0), |any, pin| any | pin.ct_eq(&digest))
            .into();
        if by_cert || self.key_pins.is_empty() {
            return by_cert;
        }
        let Some(key) = spki_sha256(der) else {
            return false;
        };
        self.key_pins
            .iter()
            .fold(subtle::Choice::from(0), |any, pin| any | pin.ct_eq(&key))
            .into()
    }
}

impl fmt::Debug for PinnedCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pins: Vec<String> = self.pins.iter().map(|p| to_hex(p)).collect();
        f.debug_struct("PinnedCertVerifier")
            .field("pins", &pins)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.is_pinned(end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(name).join("cert.pem");
        let key = dir.join(name).join("key.pem");
        assert!(
            ensure_self_signed(&cert, &key, &["localhost".into(), "127.0.0.1".into()]).unwrap()
        );
        (cert, key)
    }

    /// Serves one TLS connection on loopback that echoes 5 bytes, and connects to it with a
    /// client pinned to `pin`. Returns the client's outcome.
    async fn handshake(
        cert: &Path,
        key: &Path,
        pin: [u8; 32],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Vec<u8>, String> {
        let mut server_config = server_config(cert, key).unwrap();
        server_config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let mut buf = [0u8; 5];
                if tls.read_exact(&mut buf).await.is_ok() {
                    let _ = tls.write_all(&buf).await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        let provider = provider();
        let verifier = Arc::new(PinnedCertVerifier::new(
            vec![pin],
            provider.signature_verification_algorithms,
        ));
        let mut client_config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        client_config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A name that is not in the certificate: the pin is what counts.
        let name = ServerName::try_from("not-in-the-cert.invalid").unwrap();
        let outcome = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_HTTP11));
            tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
            Ok(buf)
        }
        .await;
        let _ = server.await;
        outcome
    }

    #[tokio::test]
    async fn right_pin_completes_a_real_handshake_tls13_and_tls12() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let pin = parse_pin_hex(&cert_sha256_hex(&cert).unwrap()).unwrap();
        assert_eq!(
            handshake(&cert, &key, pin, &[&rustls::version::TLS13])
                .await
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            handshake(&cert, &key, pin, &[&rustls::version::TLS12])
                .await
                .unwrap(),
            b"hello"
        );
    }

    #[tokio::test]
    async fn wrong_pin_is_refused_in_a_real_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (other, _) = pair(dir.path(), "b");
        let wrong = parse_pin_hex(&cert_sha256_hex(&other).unwrap()).unwrap();
        let err = handshake(&cert, &key, wrong, &[&rustls::version::TLS13])
            .await
            .unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        let mut flipped = parse_pin_hex(&cert_sha256_hex(&cert).unwrap()).unwrap();
        flipped[31] ^= 1;
        assert!(
            handshake(&cert, &key, flipped, &[&rustls::version::TLS12])
                .await
                .is_err()
        );
    }

    #[test]
    fn a_renewal_keeps_the_key_and_names_and_a_foreign_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        ensure_self_signed(&cert, &key, &["vpn.example".into(), "10.0.0.1".into()]).unwrap();
        let before = load_certs(&cert).unwrap().remove(0);
        let pin = renew_self_signed(&cert, &key, 30).unwrap();
        let after = load_certs(&cert).unwrap().remove(0);
        assert_ne!(cert_sha256(&before), cert_sha256(&after));
        assert_eq!(pin, cert_sha256(&after));
        assert_eq!(spki_sha256(&before), spki_sha256(&after));
        assert!(spki_sha256(&before).is_some());
        assert_eq!(names_of(&before).unwrap().0, names_of(&after).unwrap().0);
        // The anchor's key is trusted in the renewed certificate, not a foreign one.
        let verifier = PinnedCertVerifier::new(
            vec![cert_sha256(&before)],
            provider().signature_verification_algorithms,
        )
        .with_key_pins(vec![spki_sha256(&before).unwrap()]);
        assert!(verifier.is_pinned(&after));
        let (other_cert, other_key) = (dir.path().join("o.pem"), dir.path().join("o.key"));
        ensure_self_signed(&other_cert, &other_key, &["vpn.example".into()]).unwrap();
        let foreign = load_certs(&other_cert).unwrap().remove(0);
        assert!(!verifier.is_pinned(&foreign));
        // Renewing with a key that is not the certificate's is refused, the file unchanged.
        assert!(matches!(
            renew_self_signed(&cert, &other_key, 30),
            Err(TlsError::KeyMismatch(_))
        ));
        assert_eq!(load_certs(&cert).unwrap().remove(0), after);
    }

    #[test]
    fn ensure_self_signed_creates_once_with_private_modes() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("web/cert.pem");
        let key = dir.path().join("web/key.pem");
        assert!(ensure_self_signed(&cert, &key, &[]).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir.path().join("web")), 0o700);
        let pin = cert_sha256_hex(&cert).unwrap();
        assert_eq!(pin.len(), 64);
        assert!(
            !ensure_self_signed(&cert, &key, &[]).unwrap(),
            "second call is a no-op"
        );
        assert_eq!(
            cert_sha256_hex(&cert).unwrap(),
            pin,
            "the pin did not change"
        );
        server_config(&cert, &key).unwrap();
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(
            ensure_self_signed(&cert, &key, &[]),
            Err(TlsError::HalfPair { .. })
        ));
    }

    #[test]
    fn pem_round_trip_keeps_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = pair(dir.path(), "a");
        let der = load_certs(&cert).unwrap().remove(0);
        let pins = pins_from_anchor_pem(&cert_to_pem(&der)).unwrap();
        assert_eq!(to_hex(&pins[0]), cert_sha256_hex(&cert).unwrap());
        assert!(parse_pin_hex("zz").is_err());
        assert!(parse_pin_hex(&"g".repeat(64)).is_err());
        assert!(pins_from_anchor_pem("no pem here").is_err());
    }
}
