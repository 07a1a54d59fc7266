//! Mutual TLS of the cluster API: rustls configurations built from the cluster CA and a
//! node's pair, the peer's certificate names, and the allow-list of names a peer may have.
//!
//! Both sides verify the other's chain against the cluster CA only (expiry included, by
//! webpki), and its role: a node certificate carries one extended key usage (`cluster cert
//! issue --role`), so a web node's certificate (clientAuth) cannot serve as a controller and a
//! controller's (serverAuth) cannot call one. With `crl` set, a certificate the CA revoked
//! (`cluster cert revoke`) is refused at the handshake. A controller additionally checks the
//! client's DNS names against its `allowed_peers` patterns; a web node checks that the
//! controller's certificate is valid for the node name it was configured with.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, pem::PemObject as _};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls::{self, TlsError};

/// ALPN of the cluster API (gRPC over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The TLS files of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTls {
    /// The cluster CA certificate (PEM).
    pub ca: std::path::PathBuf,
    /// This node's certificate (PEM).
    pub cert: std::path::PathBuf,
    /// This node's key (PEM, 0600).
    pub key: std::path::PathBuf,
    /// The cluster CA's revocation list (PEM, from `cluster cert revoke`), if any.
    pub crl: Option<std::path::PathBuf>,
}

/// A cluster TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    /// A file is unusable, or rustls refused the pair.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The CA certificate cannot be a trust anchor.
    #[error("{0}: not a usable CA certificate: {1}")]
    BadCa(std::path::PathBuf, rustls::Error),
    /// A certificate verifier could not be built (e.g. a CRL not signed by the CA).
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The CRL file is unreadable or holds no CRL.
    #[error("{0}: not a PEM certificate revocation list")]
    BadCrl(std::path::PathBuf),
}

fn crls(files: &NodeTls) -> Result<Vec<CertificateRevocationListDer<'static>>, MtlsError> {
    let Some(path) = &files.crl else {
        return Ok(Vec::new());
    };
    let crls: Vec<_> = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|_| MtlsError::BadCrl(path.clone()))?
        .collect::<Result<_, _>>()
        .map_err(|_| MtlsError::BadCrl(path.clone()))?;
    if crls.is_empty() {
        return Err(MtlsError::BadCrl(path.clone()));
    }
    Ok(crls)
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, MtlsError> {
    let mut roots = RootCertStore::empty();
    for cert in tls::load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|err| MtlsError::BadCa(ca.to_owned(), err))?;
    }
    Ok(Arc::new(roots))
}

/// The controller's side: TLS 1.3 only, a client certificate from the cluster CA required.
pub fn server_config(files: &NodeTls) -> Result<ServerConfig, MtlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, tls::provider())
        .with_crls(crls(files)?)
        .only_check_end_entity_revocation()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::from)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls::load_certs(&files.cert)?, tls::load_key(&files.key)?)
        .map_err(TlsError::from)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A web node's (or the operator's) side: TLS 1.3, the controller verified against the
/// cluster CA, this node's certificate presented.
pub fn client_config(files: &NodeTls) -> Result<ClientConfig, MtlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&files.ca)?, tls::provider())
        .with_crls(crls(files)?)
        .only_check_end_entity_revocation()
        .build()?;
    let mut config = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::from)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(tls::load_certs(&files.cert)?, tls::load_key(&files.key)?)
        .map_err(TlsError::from)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The DNS names of a (verified) end-entity certificate.
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(parsed) => parsed.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// An allowed peer name: exact (`web-1`) or with one `*` standing for any run of
/// characters (`web-*`, `*.nodes.xdpgate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern {
    prefix: String,
    suffix: Option<String>,
}

impl std::str::FromStr for NamePattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("{text:?} is not a name pattern (a DNS name, optionally with one `*`)");
        match text.split_once('*') {
            None if xdpgate_protocol::node_name::valid_node_name(text) => Ok(Self {
                prefix: text.to_owned(),
                suffix: None,
            }),
            None => Err(bad()),
            Some((prefix, suffix)) => {
                let chars_ok = |s: &str| {
                    s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    })
                };
                if suffix.contains('*')
                    || !chars_ok(prefix)
                    || !chars_ok(suffix)
                    || (prefix.is_empty() && suffix.is_empty())
                {
                    return Err(bad());
                }
                Ok(Self {
                    prefix: prefix.to_owned(),
                    suffix: Some(suffix.to_owned()),
                })
            }
        }
    }
}

impl NamePattern {
    /// `web-*`: the default allow-list of a controller.
    pub fn default_web() -> Self {
        Self {
            prefix: "web-".to_owned(),
            suffix: Some(String::new()),
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match &self.suffix {
            None => name == self.prefix,
            Some(suffix) => {
                name.len() > self.prefix.len() + suffix.len()
                    && name.starts_with(&self.prefix)
                    && name.ends_with(suffix.as_str())
            }
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.suffix {
            None => f.write_str(&self.prefix),
            Some(suffix) => write!(f, "{}*{suffix}", self.prefix),
        }
    }
}

/// The first of `names` that an allowed pattern matches.
pub fn allowed_name<'a>(names: &'a [String], allowed: &[NamePattern]) -> Option<&'a str> {
    names
        .iter()
        .find(|name| allowed.iter().any(|p| p.matches(name)))
        .map(String::as_str)
}

/// Who is on the other end of a cluster connection (a request extension on the server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The node name from the peer's certificate that was allowed.
    pub node: String,
    /// The TCP peer.
    pub addr: std::net::SocketAddr,
}

/// An accepted, verified cluster connection, for `serve_with_incoming`.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    info: PeerInfo,
}

impl PeerStream {
    /// Wraps a finished handshake with what was learned about the peer.
    pub fn new(
        inner: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        info: PeerInfo,
    ) -> Self {
        Self { inner, info }
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_patterns() {
        let p = |s: &str| s.parse::<NamePattern>().unwrap();
        assert!(p("web-1").matches("web-1"));
        assert!(!p("web-1").matches("web-10"));
        assert!(p("web-*").matches("web-2"));
        assert!(
            !p("web-*").matches("web-"),
            "the star stands for at least one character"
        );
        assert!(!p("web-*").matches("gw-a"));
        assert!(p("*.nodes.xdpgate").matches("web-1.nodes.xdpgate"));
        assert!(!p("*.nodes.xdpgate").matches("nodes.xdpgate"));
        for bad in ["*", "a*b*", "Web-*", "", "a b"] {
            assert!(bad.parse::<NamePattern>().is_err(), "{bad}");
        }
        let names = vec!["x".to_owned(), "web-3".to_owned()];
        assert_eq!(allowed_name(&names, &[p("web-*")]), Some("web-3"));
        assert_eq!(allowed_name(&names, &[p("gw-*")]), None);
    }
}
