//! Bounded-time UDP and TCP probes between namespaces: echo servers in one namespace, and
//! clients in another that report whether their payload came back.
//!
//! A probe sends exactly one datagram (or opens one connection), so packet counters in the
//! gate see a known number of packets. Network errors make a probe return `false` (with the
//! reason on stderr); misuse, such as a source address the namespace does not have, panics.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::NetNs;

/// How often server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Payload of the small probes.
const SMALL_PAYLOAD: usize = 64;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// A UDP echo server in a namespace: sends every datagram back to its sender. Stops on drop.
///
/// Bind it to a specific address (not 0.0.0.0 / ::) so replies leave from the address the
/// client sent to; clients only accept replies from that address.
pub struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Binds `bind_addr` in `ns` (port 0 picks a free port) and starts echoing.
    pub fn start(ns: &NetNs, bind_addr: SocketAddr) -> UdpEcho {
        let socket = ns.run(|| udp_socket(bind_addr));
        set_pmtudisc_dont(&socket, bind_addr);
        let socket = UdpSocket::from(socket);
        socket
            .set_read_timeout(Some(POLL))
            .unwrap_or_else(|e| panic!("UDP echo on {bind_addr}: set_read_timeout: {e}"));
        let addr = local_addr(&socket);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_named(format!("udp-echo-{addr}"), {
            let stop = Arc::clone(&stop);
            move || udp_echo_loop(&socket, &stop)
        });
        UdpEcho {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// The address it listens on (with the real port if it bound port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        stop_and_join(&self.stop, self.thread.take());
    }
}

fn udp_echo_loop(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                // A lost reply is the client's failure to report, not the server's.
                let _ = socket.send_to(&buf[..len], peer);
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => eprintln!("udp echo {:?}: recv: {e}", socket.local_addr()),
        }
    }
}

/// A TCP echo server in a namespace: writes back what each connection sends until it closes.
/// Stops on drop, closing its open connections.
pub struct TcpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEcho {
    /// Listens on `addr` in `ns` (port 0 picks a free port) and starts echoing.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> TcpEcho {
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap_or_else(|e| {
            panic!(
                "TCP echo: cannot listen on {addr} in netns {}: {e}",
                ns.name()
            )
        });
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("TCP echo on {addr}: set_nonblocking: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("TCP echo on {addr}: local_addr: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_named(format!("tcp-echo-{addr}"), {
            let stop = Arc::clone(&stop);
            move || tcp_accept_loop(&listener, &stop)
        });
        TcpEcho {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// The address it listens on (with the real port if it bound port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        stop_and_join(&self.stop, self.thread.take());
    }
}

fn tcp_accept_loop(listener: &TcpListener, stop: &Arc<AtomicBool>) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let stop = Arc::clone(stop);
                connections.push(spawn_named(format!("tcp-echo-conn-{peer}"), move || {
                    tcp_echo_connection(stream, &stop);
                }));
            }
            Err(e) if is_timeout(&e) => thread::sleep(POLL),
            Err(e) => {
                eprintln!("tcp echo {:?}: accept: {e}", listener.local_addr());
                thread::sleep(POLL);
            }
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn tcp_echo_connection(mut stream: TcpStream, stop: &AtomicBool) {
    if stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)))
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(len) => {
                if stream.write_all(&buf[..len]).is_err() {
                    return;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// A UDP and a TCP echo server on each of several addresses of one namespace; all stop
/// when this is dropped.
pub struct Echoes {
    _udp: Vec<UdpEcho>,
    _tcp: Vec<TcpEcho>,
}

impl Echoes {
    /// Starts UDP and TCP echo servers on every address in `addrs`, inside `ns`.
    pub fn start(ns: &NetNs, addrs: impl IntoIterator<Item = SocketAddr>) -> Echoes {
        let (mut udp, mut tcp) = (Vec::new(), Vec::new());
        for addr in addrs {
            udp.push(UdpEcho::start(ns, addr));
            tcp.push(TcpEcho::start(ns, addr));
        }
        Echoes {
            _udp: udp,
            _tcp: tcp,
        }
    }
}

/// Sends one small UDP datagram from `client_ns` to `to` and waits up to `timeout` for the
/// echo; true iff the same payload comes back from `to`.
///
/// `from` binds the client socket to that source address (it must be on an interface of
/// `client_ns` and of the same family as `to`); `None` lets routing choose.
pub fn udp_roundtrip(
    client_ns: &NetNs,
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> bool {
    udp_probe(client_ns, from, to, timeout, SMALL_PAYLOAD)
}

/// Like [`udp_roundtrip`] with a `payload_len`-byte datagram; larger than the link MTU (say
/// 3000 bytes on a 1500-byte veth) it is sent as IP fragments, as is the echo. The sockets
/// use IP_PMTUDISC_DONT, so the kernel fragments instead of failing with EMSGSIZE.
pub fn udp_roundtrip_large(
    client_ns: &NetNs,
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
    payload_len: usize,
) -> bool {
    udp_probe(client_ns, from, to, timeout, payload_len)
}

fn udp_probe(
    client_ns: &NetNs,
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
    len: usize,
) -> bool {
    assert!(
        len <= MAX_DATAGRAM - 48,
        "UDP payload of {len} bytes is too large"
    );
    let source = source_addr(from, to);
    let socket = client_ns.run(|| udp_socket(source));
    set_pmtudisc_dont(&socket, to);
    let socket = UdpSocket::from(socket);
    let payload = probe_payload(len);
    let deadline = Instant::now() + timeout;
    // Connected, so only replies from `to` arrive and an ICMP unreachable ends the wait early.
    if let Err(e) = socket.connect(to).and_then(|()| socket.send(&payload)) {
        eprintln!("udp probe {source} -> {to}: send: {e}");
        return false;
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while let Some(left) = remaining(deadline) {
        if let Err(e) = socket.set_read_timeout(Some(left)) {
            panic!("udp probe: set_read_timeout: {e}");
        }
        match socket.recv(&mut buf) {
            Ok(n) if buf[..n] == payload[..] => return true,
            Ok(_) => continue, // a stale or foreign datagram
            Err(e) if is_timeout(&e) => break,
            Err(e) => {
                eprintln!("udp probe {source} -> {to}: recv: {e}");
                return false;
            }
        }
    }
    eprintln!("udp probe {source} -> {to}: no echo within {timeout:?}");
    false
}

/// Connects from `client_ns` to `to` (bound to `from` if given), writes a payload and reads
/// it back, all within `timeout`; true iff the echo matches.
pub fn tcp_connects(
    client_ns: &NetNs,
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> bool {
    let source = source_addr(from, to);
    let deadline = Instant::now() + timeout;
    let socket = client_ns.run(|| {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))
            .unwrap_or_else(|e| panic!("tcp probe: socket: {e}"));
        if from.is_some() {
            socket
                .bind(&SockAddr::from(source))
                .unwrap_or_else(|e| panic!("tcp probe: cannot bind {source} in netns: {e}"));
        }
        socket
    });
    if let Err(e) = socket.connect_timeout(&SockAddr::from(to), timeout) {
        eprintln!("tcp probe {source} -> {to}: connect: {e}");
        return false;
    }
    let mut stream = TcpStream::from(socket);
    let payload = probe_payload(SMALL_PAYLOAD);
    let mut echo = vec![0u8; payload.len()];
    let result = stream.write_all(&payload).and_then(|()| {
        let left = remaining(deadline).ok_or_else(|| io::Error::from(ErrorKind::TimedOut))?;
        stream.set_read_timeout(Some(left))?;
        stream.read_exact(&mut echo)
    });
    match result {
        Ok(()) if echo == payload => true,
        Ok(()) => {
            eprintln!("tcp probe {source} -> {to}: echo differs from what was sent");
            false
        }
        Err(e) => {
            eprintln!("tcp probe {source} -> {to}: {e}");
            false
        }
    }
}

/// The client's bind address: `from` (or the unspecified address) with port 0.
fn source_addr(from: Option<IpAddr>, to: SocketAddr) -> SocketAddr {
    let ip = match from {
        Some(ip) => {
            assert_eq!(
                ip.is_ipv4(),
                to.is_ipv4(),
                "source {ip} and destination {to} differ in family"
            );
            ip
        }
        None if to.is_ipv4() => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// A UDP socket bound to `addr`, in the namespace of the calling thread.
fn udp_socket(addr: SocketAddr) -> Socket {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .unwrap_or_else(|e| panic!("UDP socket for {addr}: {e}"));
    socket
        .bind(&SockAddr::from(addr))
        .unwrap_or_else(|e| panic!("cannot bind UDP {addr} in this netns: {e}"));
    socket
}

/// Lets the kernel fragment datagrams larger than the MTU (no DF, no EMSGSIZE).
fn set_pmtudisc_dont(socket: &Socket, family_of: SocketAddr) {
    let (level, name, value) = if family_of.is_ipv4() {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )
    } else {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        )
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the fd is an open socket owned by `socket`; `value` is a c_int that outlives the
    // call and `len` is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if rc != 0 {
        panic!(
            "setsockopt(MTU_DISCOVER=DONT): {}",
            io::Error::last_os_error()
        );
    }
}

/// `len` bytes: a per-probe nonce (pid, counter, time), then a repeating pattern.
fn probe_payload(len: usize) -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut nonce = Vec::with_capacity(32);
    nonce.extend_from_slice(&std::process::id().to_be_bytes());
    nonce.extend_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    nonce.extend_from_slice(&nanos.to_be_bytes());
    (0..len)
        .map(|i| nonce.get(i).copied().unwrap_or((i % 251) as u8))
        .collect()
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn local_addr(socket: &UdpSocket) -> SocketAddr {
    socket
        .local_addr()
        .unwrap_or_else(|e| panic!("UDP local_addr: {e}"))
}

fn spawn_named<F: FnOnce() + Send + 'static>(name: String, f: F) -> JoinHandle<()> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot spawn thread {name}: {e}"))
}

fn stop_and_join(stop: &AtomicBool, thread: Option<JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}

/// UDP round trips from `from` in a namespace to `to`, one after another in a thread, counted,
/// while a test changes the gateway (a reload, a restart). Bounded by `deadline`; stopped and
/// joined by [`ProbeLoop::finish`] or when dropped (also on a failed assertion, so the thread's
/// handle on the namespace never outlives the test).
pub struct ProbeLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counts: std::sync::Arc<[std::sync::atomic::AtomicU32; 2]>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeLoop {
    /// Starts probing with `timeout` per probe and `pause` between probes, for at most
    /// `deadline`.
    pub fn start(
        ns: std::sync::Arc<NetNs>,
        from: IpAddr,
        to: SocketAddr,
        timeout: Duration,
        pause: Duration,
        deadline: Duration,
    ) -> ProbeLoop {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let counts = std::sync::Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            let until = std::time::Instant::now() + deadline;
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    if udp_roundtrip(&ns, Some(from), to, timeout) {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(pause);
                }
            })
        };
        ProbeLoop {
            stop,
            counts,
            thread: Some(thread),
        }
    }

    /// Stops the loop and returns (probes sent, probes answered).
    pub fn finish(mut self) -> (u32, u32) {
        self.halt();
        let load = |i: usize| self.counts[i].load(std::sync::atomic::Ordering::Relaxed);
        (load(0), load(1))
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ProbeLoop {
    fn drop(&mut self) {
        self.halt();
    }
}
