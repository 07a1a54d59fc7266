//! HTTPS over a pinned TLS connection: hyper's HTTP/1.1 client on tokio-rustls. [`send`] makes
//! one request on its own connection under one deadline; a [`Session`] keeps a connection for
//! many. Answer sizes are bounded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};

/// An HTTPS request failed before an answer was read.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The endpoint is not `https://HOST[:PORT][/PREFIX]`.
    #[error("{0:?} is not an https:// URL")]
    BadUrl(String),
    /// TCP connect failed.
    #[error("cannot connect to {authority}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server's certificate is not the pinned one.
    #[error(
        "the certificate of {authority} is not the pinned one (wrong link or profile, or someone in between)"
    )]
    PinMismatch {
        /// `host:port`.
        authority: String,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {authority} failed")]
    Tls {
        /// `host:port`.
        authority: String,
        /// The TLS error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("bad request")]
    Request(#[from] http::Error),
    /// Reading the answer failed.
    #[error("reading the answer failed: {0}")]
    Body(String),
    /// The answer is longer than the caller's limit.
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
    /// The deadline passed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where requests go: parsed from a profile's `web_endpoint` or a link's base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
    authority: String,
    prefix: String,
}

impl Endpoint {
    /// Parses `https://HOST[:PORT][/PREFIX]` (port 443 by default; IPv6 in brackets).
    pub fn parse(url: &str) -> Result<Self, HttpsError> {
        let bad = || HttpsError::BadUrl(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") || uri.query().is_some() {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        if authority.as_str().contains('@') {
            return Err(bad());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad());
        }
        let port = authority.port_u16().unwrap_or(443);
        Ok(Self {
            host,
            port,
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port` as written.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    fn server_name(&self) -> Result<ServerName<'static>, HttpsError> {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
            Err(_) => ServerName::try_from(self.host.clone())
                .map_err(|_| HttpsError::BadUrl(self.authority.clone())),
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct HttpsReply {
    /// HTTP status.
    pub status: u16,
    /// The body (at most the requested limit).
    pub body: Bytes,
    /// The certificate the server presented (it matched the pin).
    pub server_cert: Option<CertificateDer<'static>>,
}

/// A request to send.
#[derive(Debug)]
pub struct HttpsRequest<'a> {
    /// `GET`, `POST`, …
    pub method: Method,
    /// Path below the endpoint's prefix, e.g. `/v1/approvals`.
    pub path: &'a str,
    /// Extra headers (`content-type` and `host` are set already).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl<'a> HttpsRequest<'a> {
    /// A request without a body or extra headers.
    pub fn new(method: Method, path: &'a str) -> Self {
        Self {
            method,
            path,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON POST.
    pub fn post_json(path: &'a str, body: Vec<u8>) -> Self {
        Self {
            method: Method::POST,
            path,
            headers: Vec::new(),
            body,
        }
    }
}

/// Sends `request` to `endpoint` over TLS with `tls` (pinned), within `timeout`, reading at
/// most `max_body` bytes of the answer.
pub async fn send(
    endpoint: &Endpoint,
    tls: Arc<ClientConfig>,
    request: HttpsRequest<'_>,
    timeout: Duration,
    max_body: usize,
) -> Result<HttpsReply, HttpsError> {
    tokio::time::timeout(timeout, exchange(endpoint, tls, request, max_body))
        .await
        .map_err(|_| HttpsError::Timeout(timeout))?
}

async fn exchange(
    endpoint: &Endpoint,
    tls: Arc<ClientConfig>,
    request: HttpsRequest<'_>,
    max_body: usize,
) -> Result<HttpsReply, HttpsError> {
    Session::open(endpoint, tls)
        .await?
        .send(request, max_body)
        .await
}

/// A kept-alive HTTPS connection: one TLS handshake, then any number of requests in turn.
/// The connection closes when the session is dropped.
pub struct Session {
    endpoint: Endpoint,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    server_cert: Option<CertificateDer<'static>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Connects to `endpoint` and completes the pinned TLS handshake (no deadline: wrap it in
    /// one).
    pub async fn open(endpoint: &Endpoint, tls: Arc<ClientConfig>) -> Result<Self, HttpsError> {
        let authority = endpoint.authority.clone();
        let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|source| HttpsError::Connect {
                authority: authority.clone(),
                source,
            })?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(endpoint.server_name()?, tcp)
            .await
            .map_err(|source| tls_error(&authority, source))?;
        let server_cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.clone().into_owned());
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("HTTPS connection ended: {err}");
            }
        });
        Ok(Self {
            endpoint: endpoint.clone(),
            sender,
            server_cert,
            driver,
        })
    }

    /// Sends one request and reads at most `max_body` bytes of its answer (no deadline: wrap
    /// it in one).
    pub async fn send(
        &mut self,
        request: HttpsRequest<'_>,
        max_body: usize,
    ) -> Result<HttpsReply, HttpsError> {
        let authority =
            HeaderValue::from_str(&self.endpoint.authority).map_err(http::Error::from)?;
        let mut builder = Request::builder()
            .method(request.method)
            .uri(format!("{}{}", self.endpoint.prefix, request.path))
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let http_request = builder.body(Full::new(Bytes::from(request.body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(http_request).await?;
        let status = response.status().as_u16();
        Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map(|c| HttpsReply {
                status,
                body: c.to_bytes(),
                server_cert: self.server_cert.clone(),
            })
            .map_err(|err| {
                if err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    HttpsError::TooLarge(max_body)
                } else {
                    HttpsError::Body(err.to_string())
                }
            })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A pin mismatch is told apart from other handshake failures.
fn tls_error(authority: &str, source: std::io::Error) -> HttpsError {
    let rustls_error = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_))) {
        HttpsError::PinMismatch {
            authority: authority.to_owned(),
        }
    } else {
        HttpsError::Tls {
            authority: authority.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://gw.example.net:8443").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("gw.example.net", 8443, "")
        );
        let e = Endpoint::parse("https://[2001:db8::1]:8443/base/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("2001:db8::1", 8443, "/base")
        );
        assert!(matches!(e.server_name().unwrap(), ServerName::IpAddress(_)));
        assert_eq!(Endpoint::parse("https://10.0.0.1").unwrap().port, 443);
        for bad in [
            "http://10.0.0.1",
            "10.0.0.1:8443",
            "https://",
            "https://u@h:1",
            "https://h:1/?q=1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
