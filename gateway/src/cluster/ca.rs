//! The cluster CA: `xdpgate cluster ca init` creates it, `xdpgate cluster cert issue` signs
//! one certificate per node (its node name as the only DNS name, usable as TLS client and
//! server). Keys are ECDSA P-256 and written 0600; nothing is ever overwritten.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use zeroize::Zeroizing;

use crate::tls::{self, TlsError};

/// File names inside a CA folder.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (0600).
pub const CA_KEY: &str = "ca.key";
/// File names inside a node's folder.
pub const NODE_CERT: &str = "node.pem";
/// The node's private key (0600).
pub const NODE_KEY: &str = "node.key";
/// The CA certificate copied next to a node's pair, so a node folder is self-contained.
pub const NODE_CA: &str = "ca.pem";
/// Validity of the CA, days.
pub const CA_VALID_DAYS: i64 = 3650;
/// Default validity of a node certificate, days.
pub const NODE_VALID_DAYS: i64 = 825;

/// A CA or node certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file failed (an existing file is never replaced).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// rcgen refused the parameters or the CA files.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// The node name is not a DNS name of lower-case letters, digits, `-` and `.`.
    #[error("node name {0:?} must be a DNS name (a-z 0-9 - .), 1-63 characters")]
    BadName(String),
    /// The validity is out of range.
    #[error("validity must be between 1 and 3650 days")]
    BadValidity,
    /// A certificate to revoke has no serial number rcgen can read.
    #[error("{0}: not a certificate with a serial number")]
    NoSerial(PathBuf),
    /// A certificate to renew is not a node certificate (one DNS name, one role).
    #[error("{0}: not a node certificate (one DNS name, serverAuth or clientAuth)")]
    NotANode(PathBuf),
}

/// What a node certificate may do: one role each, as its only extended key usage, so rustls
/// (webpki) refuses it in the other role at the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// A controller: serves the cluster API (serverAuth only).
    Controller,
    /// A web node (or the operator's CLI): calls the cluster API (clientAuth only).
    Web,
}

impl NodeRole {
    fn key_usage(self) -> ExtendedKeyUsagePurpose {
        match self {
            NodeRole::Controller => ExtendedKeyUsagePurpose::ServerAuth,
            NodeRole::Web => ExtendedKeyUsagePurpose::ClientAuth,
        }
    }
}

/// The revocation list of a CA folder (`crl.pem`), signed by the CA, and the serials it lists
/// (`revoked.txt`, one lower-case hex serial per line).
pub const CRL: &str = "crl.pem";
const REVOKED: &str = "revoked.txt";
/// Days a CRL is valid for; `cluster cert revoke` renews it.
pub const CRL_VALID_DAYS: i64 = 3650;

/// Paths of a node's files written by [`issue`].
#[derive(Clone, Debug)]
pub struct NodeFiles {
    /// The node certificate.
    pub cert: PathBuf,
    /// The node key (0600).
    pub key: PathBuf,
    /// A copy of the CA certificate.
    pub ca: PathBuf,
}

pub use xdpgate_protocol::node_name::valid_node_name;

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Creates `dir/ca.pem` and `dir/ca.key` (0600; the folder is created 0700).
pub fn init(dir: &Path) -> Result<PathBuf, CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    let mut id = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
    dn.push(
        DnType::CommonName,
        format!("xdpgate cluster CA {}", tls::to_hex(&id)),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_VALID_DAYS);
    let cert = params.self_signed(&key)?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    tls::write_new_file(&dir.join(CA_KEY), key_pem.as_bytes(), 0o600)?;
    let cert_path = dir.join(CA_CERT);
    tls::write_new_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

/// Signs a certificate for node `name` in `role` with the CA in `ca_dir`, valid for `days`,
/// and writes `out/node.pem`, `out/node.key` (0600) and `out/ca.pem`.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    role: NodeRole,
    days: i64,
    out: &Path,
) -> Result<NodeFiles, CaError> {
    if !valid_node_name(name) {
        return Err(CaError::BadName(name.to_owned()));
    }
    if !(1..=3650).contains(&days) {
        return Err(CaError::BadValidity);
    }
    let (ca_pem, issuer) = ca_issuer(ca_dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![role.key_usage()];
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;
    let files = NodeFiles {
        cert: out.join(NODE_CERT),
        key: out.join(NODE_KEY),
        ca: out.join(NODE_CA),
    };
    let key_pem = Zeroizing::new(key.serialize_pem());
    tls::write_new_file(&files.key, key_pem.as_bytes(), 0o600)?;
    tls::write_new_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    tls::write_new_file(&files.ca, ca_pem.as_bytes(), 0o644)?;
    Ok(files)
}

/// Adds the node certificate `cert` to the CA's revocation list and rewrites `ca_dir/crl.pem`
/// (signed by the CA). Peers configured with that CRL (`crl = ...`) refuse the certificate at
/// the handshake. Returns the CRL's path and the revoked serial (hex).
pub fn revoke(ca_dir: &Path, cert: &Path) -> Result<(PathBuf, String), CaError> {
    let der = tls::load_certs(cert)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::NoSerial(cert.to_owned()))?;
    let serial_hex = match x509_parser::parse_x509_certificate(&der) {
        Ok((_, parsed)) => tls::to_hex(parsed.raw_serial()),
        Err(_) => return Err(CaError::NoSerial(cert.to_owned())),
    };
    let list_path = ca_dir.join(REVOKED);
    let mut serials: Vec<String> = match std::fs::read_to_string(&list_path) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(CaError::Tls(TlsError::Io {
                path: list_path,
                source,
            }));
        }
    };
    if !serials.contains(&serial_hex) {
        serials.push(serial_hex.clone());
    }
    let crl_path = write_crl(ca_dir, &serials)?;
    Ok((crl_path, serial_hex))
}

/// Signs the CA's revocation list of `serials` (hex) and writes `ca_dir/revoked.txt` and
/// `ca_dir/crl.pem`, each through a rename.
fn write_crl(ca_dir: &Path, serials: &[String]) -> Result<PathBuf, CaError> {
    let list_path = ca_dir.join(REVOKED);
    let (_, issuer) = ca_issuer(ca_dir)?;
    let now = time::OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::with_capacity(serials.len());
    for hex in serials {
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let crl_number = u64::try_from(now.unix_timestamp())
        .unwrap_or(0)
        .to_be_bytes();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(CRL_VALID_DAYS),
        crl_number: SerialNumber::from_slice(&crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    let crl_path = ca_dir.join(CRL);
    // Replaced atomically: a temporary file renamed over the old list and CRL.
    tls::replace_file(&list_path, (serials.join("\n") + "\n").as_bytes(), 0o644)?;
    tls::replace_file(&crl_path, crl.pem()?.as_bytes(), 0o644)?;
    Ok(crl_path)
}

/// The trust bundle of a CA rollover: every listed CA certificate, newest first.
pub const TRUST_BUNDLE: &str = "trust.pem";
/// The revocation lists of the CAs of [`TRUST_BUNDLE`], one per CA.
pub const CRL_BUNDLE: &str = "trust-crl.pem";

/// Paths written by [`bundle`].
#[derive(Clone, Debug)]
pub struct Bundle {
    /// Every CA certificate (a node's `ca`).
    pub trust: PathBuf,
    /// Every CA's CRL (a node's `crl`).
    pub crls: PathBuf,
}

/// Writes `out/trust.pem` (the CA certificates of `ca_dirs`, in order) and `out/trust-crl.pem`
/// (each CA's CRL; a CA without one gets an empty CRL signed now), replacing earlier bundles.
/// During a rollover nodes name these as `ca` and `crl`, so certificates of either CA work and
/// revocations of both hold.
pub fn bundle(ca_dirs: &[&Path], out: &Path) -> Result<Bundle, CaError> {
    let (mut trust, mut crls) = (String::new(), String::new());
    for dir in ca_dirs {
        trust.push_str(&read_text(&dir.join(CA_CERT))?);
        let crl_path = dir.join(CRL);
        if !crl_path.exists() {
            write_crl(dir, &[])?;
        }
        crls.push_str(&read_text(&crl_path)?);
    }
    let files = Bundle {
        trust: out.join(TRUST_BUNDLE),
        crls: out.join(CRL_BUNDLE),
    };
    tls::replace_file(&files.trust, trust.as_bytes(), 0o644)?;
    tls::replace_file(&files.crls, crls.as_bytes(), 0o644)?;
    Ok(files)
}

/// `xdpgate cluster ca rollover`: a new CA in `new_dir` and the bundle of both (new first) in
/// it. Nodes then move one by one: trust the bundle, get a certificate of the new CA
/// (`cluster cert renew --ca NEW`), and at last trust the new CA alone.
pub fn rollover(old_dir: &Path, new_dir: &Path) -> Result<Bundle, CaError> {
    if !old_dir.join(CA_CERT).exists() || !old_dir.join(CA_KEY).exists() {
        return Err(CaError::Tls(TlsError::Pem {
            path: old_dir.to_owned(),
            what: "not a CA folder (ca.pem and ca.key)".into(),
        }));
    }
    init(new_dir)?;
    bundle(&[new_dir, old_dir], new_dir)
}

/// `xdpgate cluster cert renew`: a new certificate (and key) for the node of `cert`, with its
/// name and role, signed by the CA in `ca_dir` (the same CA before expiry, or the new one in a
/// rollover), written to `out` like [`issue`].
pub fn renew(ca_dir: &Path, cert: &Path, days: i64, out: &Path) -> Result<NodeFiles, CaError> {
    let der = tls::load_certs(cert)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::NoSerial(cert.to_owned()))?;
    let (name, role) = name_and_role(&der).ok_or_else(|| CaError::NotANode(cert.to_owned()))?;
    issue(ca_dir, &name, role, days, out)
}

/// The node name (its one DNS name) and role (its one extended key usage) of a node
/// certificate.
fn name_and_role(der: &[u8]) -> Option<(String, NodeRole)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = parsed.subject_alternative_name().ok()??;
    let name = names.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })?;
    let eku = parsed.extended_key_usage().ok()??;
    let role = match (eku.value.server_auth, eku.value.client_auth) {
        (true, false) => NodeRole::Controller,
        (false, true) => NodeRole::Web,
        _ => return None,
    };
    Some((name, role))
}

/// A file of a CA or node folder, as text.
fn read_text(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| {
        CaError::Tls(TlsError::Io {
            path: path.to_owned(),
            source,
        })
    })
}

/// The CA certificate (PEM) of `ca_dir` and the issuer signing with its key.
fn ca_issuer(ca_dir: &Path) -> Result<(String, Issuer<'static, KeyPair>), CaError> {
    let ca_pem = read_text(&ca_dir.join(CA_CERT))?;
    let ca_key_pem = Zeroizing::new(read_text(&ca_dir.join(CA_KEY))?);
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)?;
    Ok((ca_pem, issuer))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn ca_and_node_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init(&ca).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.join(CA_KEY)), 0o600);
        assert_eq!(mode(&ca), 0o700);
        assert!(init(&ca).is_err(), "an existing CA is never replaced");
        let files = issue(&ca, "web-1", NodeRole::Web, 30, &dir.path().join("web-1")).unwrap();
        assert_eq!(mode(&files.key), 0o600);
        assert!(issue(&ca, "web-1", NodeRole::Web, 30, &dir.path().join("web-1")).is_err());
        assert!(matches!(
            issue(&ca, "Web 1", NodeRole::Web, 30, &dir.path().join("x")),
            Err(CaError::BadName(_))
        ));
        assert!(matches!(
            issue(&ca, "web-2", NodeRole::Web, 0, &dir.path().join("y")),
            Err(CaError::BadValidity)
        ));
    }

    #[test]
    fn node_names() {
        for ok in ["web-1", "gw-a", "web-1.nodes.xdpgate", "a"] {
            assert!(valid_node_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a..b", "a b", "a_b", &"x".repeat(64)] {
            assert!(!valid_node_name(bad), "{bad}");
        }
    }
}
