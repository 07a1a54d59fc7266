//! A logging TLS relay standing for a compromised web front: it terminates TLS with the web
//! front's own certificate and key (what an attacker who owns the front has), records every
//! decrypted byte in both directions, forwards each HTTP/1.1 request to the real front over
//! TLS and relays the answer, optionally rewriting a successful enrollment answer.
use std::io::{BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_box::aead::Aead as _;
use rustls::pki_types::ServerName;

use crate::{NetNs, in_netns};

/// What the relay does to a successful `POST /v1/enroll` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Relay it unchanged.
    None,
    /// Replace it with an answer the relay seals itself from its own box key to the request's
    /// one-time key, carrying an HMAC secret it chose (a front swapping the box key).
    ForgeAnswer,
    /// Flip one ciphertext byte of the real answer.
    FlipByte,
}

/// The HMAC secret a forging relay puts into its answer (base64 of 64 bytes of 0x5a).
pub fn forged_hmac_secret() -> String {
    STANDARD.encode([0x5a; 64])
}

/// A running relay; stops when dropped.
pub struct Relay {
    seen: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on `listen` in `ns` with the front's `cert`/`key` and forwards to `upstream`
    /// (the real front, reached from `ns`), pinning the upstream certificate to `cert`.
    pub fn start(
        ns: &NetNs,
        listen: SocketAddr,
        upstream: SocketAddr,
        cert: &Path,
        key: &Path,
        tamper: Tamper,
    ) -> Relay {
        let server = Arc::new(
            xdpgate::tls::server_config(cert, key)
                .unwrap_or_else(|e| panic!("relay TLS config: {e}")),
        );
        let pin = xdpgate::tls::parse_pin_hex(
            &xdpgate::tls::cert_sha256_hex(cert).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let client = Arc::new(
            xdpgate::tls::pinned_client_config(vec![pin]).unwrap_or_else(|e| panic!("{e}")),
        );
        let listener = ns
            .run(|| TcpListener::bind(listen))
            .unwrap_or_else(|e| panic!("relay cannot bind {listen}: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let (seen, requests, stop) = (
            Arc::default(),
            Arc::default(),
            Arc::new(AtomicBool::new(false)),
        );
        let shared = Shared {
            seen: Arc::clone(&seen),
            requests: Arc::clone(&requests),
            ns: ns.name().to_owned(),
            upstream,
            client,
            tamper,
        };
        let stopping = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("front-relay".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => shared.serve(tcp, &server),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("relay accept failed: {e}"),
                    }
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the relay thread: {e}"));
        Relay {
            seen,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Every decrypted byte the relay saw, both directions, in order.
    pub fn seen(&self) -> Vec<u8> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `METHOD PATH -> STATUS` of every request relayed.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Shared {
    seen: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<String>>>,
    ns: String,
    upstream: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    tamper: Tamper,
}

/// One HTTP/1.1 message: the head (start line and headers) and the body.
struct Message {
    head: String,
    body: Vec<u8>,
}

impl Message {
    fn bytes(&self) -> Vec<u8> {
        let mut out = self.head.clone().into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    fn with_body(&self, body: Vec<u8>) -> Message {
        let head = self
            .head
            .split("\r\n")
            .map(|line| {
                if line.to_ascii_lowercase().starts_with("content-length:") {
                    format!("content-length: {}", body.len())
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        Message { head, body }
    }
}

/// Reads one message; `None` at a clean end of stream before any byte.
fn read_message(reader: &mut impl std::io::BufRead) -> Option<Message> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) if head.is_empty() => return None,
            Ok(0) => panic!("relay: stream ended inside a message head: {head:?}"),
            Ok(_) => {}
            Err(_) if head.is_empty() => return None,
            Err(e) => panic!("relay: reading a message head failed: {e}"),
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>())
        })
        .transpose()
        .unwrap_or_else(|e| panic!("relay: bad content-length in {head:?}: {e}"))
        .unwrap_or(0);
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "relay handles content-length bodies only: {head}"
    );
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .unwrap_or_else(|e| panic!("relay: reading a {length}-byte body failed: {e}"));
    Some(Message { head, body })
}

impl Shared {
    fn log(&self, bytes: &[u8]) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
    }

    /// Serves one client connection, request by request, until it closes.
    fn serve(&self, tcp: TcpStream, server: &Arc<rustls::ServerConfig>) {
        let _ = tcp.set_nonblocking(false);
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
        let Ok(conn) = rustls::ServerConnection::new(Arc::clone(server)) else {
            return;
        };
        let mut downstream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Some(request) = read_message(&mut downstream) else {
                return;
            };
            self.log(&request.bytes());
            let response = self.forward(&request);
            let response = self.tamper(&request, response);
            self.log(&response.bytes());
            let status = response
                .head
                .split_whitespace()
                .nth(1)
                .unwrap_or("?")
                .to_owned();
            let line = request
                .head
                .lines()
                .next()
                .unwrap_or("")
                .rsplit_once(' ')
                .map_or("", |(l, _)| l)
                .to_owned();
            self.requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format!("{line} -> {status}"));
            let stream = downstream.get_mut();
            if stream
                .write_all(&response.bytes())
                .and_then(|()| stream.flush())
                .is_err()
            {
                return;
            }
        }
    }

    /// Sends `request` to the real front on a new connection and reads its answer.
    fn forward(&self, request: &Message) -> Message {
        let upstream = self.upstream;
        let tcp = in_netns(&self.ns, || {
            TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
        })
        .unwrap_or_else(|e| panic!("relay cannot reach the front at {upstream}: {e}"));
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
        let name = ServerName::IpAddress(upstream.ip().into());
        let conn = rustls::ClientConnection::new(Arc::clone(&self.client), name)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        stream
            .write_all(&request.bytes())
            .unwrap_or_else(|e| panic!("relay: sending upstream failed: {e}"));
        let mut reader = BufReader::new(stream);
        read_message(&mut reader)
            .unwrap_or_else(|| panic!("relay: the front closed without answering"))
    }

    fn tamper(&self, request: &Message, response: Message) -> Message {
        let enroll = request.head.starts_with("POST /v1/enroll ");
        let ok = response.head.split_whitespace().nth(1) == Some("200");
        if !enroll || !ok || self.tamper == Tamper::None {
            return response;
        }
        let mut answer: serde_json::Value = serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("relay: enrollment answer is not JSON: {e}"));
        match self.tamper {
            Tamper::None => {}
            Tamper::FlipByte => {
                let mut ciphertext = decode(&answer["ciphertext"]);
                ciphertext[20] ^= 0x01;
                answer["ciphertext"] = STANDARD.encode(ciphertext).into();
            }
            Tamper::ForgeAnswer => {
                let sealed: serde_json::Value = serde_json::from_slice(&request.body)
                    .unwrap_or_else(|e| panic!("relay: request is not JSON: {e}"));
                let one_time: [u8; 32] = decode(&sealed["client_box_public_key"])
                    .try_into()
                    .unwrap_or_else(|_| panic!("key length"));
                let own = crypto_box::SecretKey::from_bytes(random());
                let shared =
                    crypto_box::SalsaBox::new(&crypto_box::PublicKey::from_bytes(one_time), &own);
                let nonce: [u8; 24] = random();
                let plaintext = serde_json::json!({
                    "request_sha256": "00".repeat(32),
                    "client_id": "alice",
                    "hmac_secret": forged_hmac_secret(),
                    "servers": ["vpn1"],
                });
                let ciphertext = shared
                    .encrypt(&nonce.into(), plaintext.to_string().as_bytes())
                    .unwrap_or_else(|e| panic!("relay: sealing failed: {e}"));
                answer["box_nonce"] = STANDARD.encode(nonce).into();
                answer["ciphertext"] = STANDARD.encode(ciphertext).into();
            }
        }
        response.with_body(answer.to_string().into_bytes())
    }
}

fn decode(value: &serde_json::Value) -> Vec<u8> {
    STANDARD
        .decode(
            value
                .as_str()
                .unwrap_or_else(|| panic!("relay: {value} is not a string")),
        )
        .unwrap_or_else(|e| panic!("relay: {value} is not base64: {e}"))
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("reading /dev/urandom: {e}"));
    bytes
}
