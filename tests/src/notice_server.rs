//! A small HTTPS notice server inside a test namespace: answers every request with the body
//! the test chose last (good, bad, replayed, stale, oversized or slow notices), and records
//! each request line so the test can check what the controller sent.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::NetNs;

/// What the server answers with.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The body, sent as `200 application/json`.
    pub body: Vec<u8>,
    /// Wait this long before answering (a slow server).
    pub delay: Duration,
}

impl Answer {
    /// `body`, answered at once.
    pub fn now(body: Vec<u8>) -> Answer {
        Answer {
            body,
            delay: Duration::ZERO,
        }
    }
}

/// The running server; stops when dropped.
pub struct NoticeServer {
    addr: SocketAddr,
    cert: PathBuf,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NoticeServer {
    /// Listens on `addr` inside `ns` with a self-signed certificate for its IP, written to
    /// `dir` (the controller trusts that file).
    pub fn start(ns: &NetNs, addr: SocketAddr, dir: &Path) -> NoticeServer {
        let cert = dir.join("notice-cert.pem");
        let key = dir.join("notice-key.pem");
        xdpgate::tls::ensure_self_signed(&cert, &key, &[addr.ip().to_string()])
            .unwrap_or_else(|e| panic!("notice server certificate: {e}"));
        let config = Arc::new(
            xdpgate::tls::server_config(&cert, &key)
                .unwrap_or_else(|e| panic!("notice server TLS config: {e}")),
        );
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr} in {}: {e}", ns.name()));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("nonblocking: {e}"));
        let answer = Arc::new(Mutex::new(Answer::now(b"{}".to_vec())));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (answer, requests, stop) = (answer.clone(), requests.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let answer = lock(&answer).clone();
                            let (config, requests) = (config.clone(), requests.clone());
                            thread::spawn(move || serve_one(tcp, config, &answer, &requests));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        NoticeServer {
            addr,
            cert,
            answer,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// `https://ADDR/notice`.
    pub fn url(&self) -> String {
        format!("https://{}/notice", self.addr)
    }

    /// The certificate to trust (`ca_file`).
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// Answer every following request with `answer`.
    pub fn set(&self, answer: Answer) {
        *lock(&self.answer) = answer;
    }

    /// The request lines received so far.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }
}

impl Drop for NoticeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection: TLS, read the request head, wait, answer, close.
fn serve_one(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    answer: &Answer,
    requests: &Mutex<Vec<String>>,
) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    lock(requests).push(line);
    thread::sleep(answer.delay);
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.body.len()
    )
    .into_bytes();
    reply.extend_from_slice(&answer.body);
    let _ = tls.write_all(&reply);
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
