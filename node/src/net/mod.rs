//! The network room: connections on a few event loops, the HTTP statistics endpoint, and the
//! gRPC front end ([`grpc`]).
//!
//! ```text
//! acceptor thread ─► round robin ─► event loop 1 .. N (mio): read ─► parse ─► Service::handle
//!                                        ▲                                        │
//!                                        └── completion + waker ◄─ answer ◄───────┘
//!                                        └── push + waker ◄─ applier (live deliveries)
//! ```
//!
//! Both protocols share the chat port; the first byte of a connection picks one
//! ([`Protocol::detect`](crate::protocol::Protocol::detect)).

mod event_loop;
pub mod grpc;
pub mod http;

pub use event_loop::{OUTPUT_HIGH, PUSH_QUEUE};

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use event_loop::{EventLoop, LoopHandle};

use crate::service::Service;

/// Starts `threads` event loops (at least one) and accepts connections into them forever.
pub fn serve(listener: TcpListener, service: Arc<Service>, threads: usize) -> io::Result<()> {
    let mut loops: Vec<LoopHandle> = Vec::new();
    for i in 0..threads.max(1) {
        let (event_loop, handle) = EventLoop::new(Arc::clone(&service))?;
        thread::Builder::new()
            .name(format!("net-{i}"))
            .spawn(move || {
                if let Err(error) = event_loop.run() {
                    tracing::error!(%error, "an event loop failed");
                    std::process::exit(1);
                }
            })?;
        loops.push(handle);
    }
    for (accepted, next) in listener.incoming().zip((0..loops.len()).cycle()) {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                // Out of file descriptors and the like: log, keep serving the others.
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let adopted = stream
            .peer_addr()
            .and_then(|peer| stream.set_nonblocking(true).map(|()| peer))
            .and_then(|peer| loops[next].adopt(mio::net::TcpStream::from_std(stream), peer));
        if let Err(error) = adopted {
            tracing::warn!(%error, "cannot hand a connection to an event loop; dropped");
        }
    }
    Ok(())
}

/// Connects to `addr` within `timeout`, refusing a connection to itself. Dialling a loopback
/// port nobody listens on can pick that very port as the source and connect to itself (TCP
/// simultaneous open); kept, it would hold the port against the member about to listen there,
/// for as long as it is redialled. Every dialler that retries (raft peers, failover clients)
/// connects through here.
pub fn dial(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    refuse_itself(TcpStream::connect_timeout(addr, timeout)?)
}

/// Where loopback ports for members are looked for when the kernel's ephemeral range cannot be
/// read: Linux's default range starts at 32768.
const DEFAULT_EPHEMERAL_START: u16 = 32768;
/// The lowest port handed out: below it live the well-known and commonly configured services.
const LOWEST_RESERVED: u16 = 10000;

/// `count` loopback listeners on distinct ports below the kernel's ephemeral range, held so
/// that none repeats; the caller writes their addresses into a cluster file and drops them.
///
/// Why below that range: members dial each other as they start, and each outgoing connection
/// takes a port of the ephemeral range as its local end for as long as it lives. A port chosen
/// by binding port 0 comes from that very range, so between its release and the member's bind
/// another member's connection could take it and hold it for good; a port below the range is
/// never handed out that way. Ports are tried from a start that differs per process and moves
/// on with every call, so callers racing in one process or several rarely pick the same one.
pub fn reserve_loopback_ports(count: usize) -> io::Result<Vec<TcpListener>> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_start().max(LOWEST_RESERVED + 1);
    let span = u32::from(end - LOWEST_RESERVED);
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    let mut held = Vec::with_capacity(count);
    let mut tried = 0;
    while held.len() < count {
        if tried == span {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("no {count} free loopback ports between {LOWEST_RESERVED} and {end}"),
            ));
        }
        tried += 1;
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = LOWEST_RESERVED + u16::try_from(offset).expect("offset < span <= u16::MAX");
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            held.push(listener);
        }
    }
    Ok(held)
}

/// The first port of the kernel's ephemeral range (Linux: `ip_local_port_range`).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

fn refuse_itself(stream: TcpStream) -> io::Result<TcpStream> {
    if stream.local_addr()? == stream.peer_addr()? {
        // Closed with a reset, not a FIN: the port is free at once, with no closing
        // handshake or TIME_WAIT left on it.
        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connected to itself: nobody listens on the port",
        ));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserved ports are distinct, held, and outside the range outgoing connections use.
    #[test]
    fn reserved_ports_are_distinct_held_and_below_the_ephemeral_range() {
        let first = reserve_loopback_ports(8).expect("free ports");
        let second = reserve_loopback_ports(8).expect("free ports");
        let mut ports: Vec<u16> = first
            .iter()
            .chain(&second)
            .map(|listener| listener.local_addr().unwrap().port())
            .collect();
        assert!(
            ports
                .iter()
                .all(|&port| (LOWEST_RESERVED..ephemeral_start()).contains(&port)),
            "{ports:?} not below {}",
            ephemeral_start()
        );
        for &port in &ports {
            assert!(
                TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err(),
                "port {port} is not held"
            );
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16, "a port was handed out twice");
    }

    /// A socket bound to a port and connected to that same port is connected to itself, as a
    /// dial to a loopback port nobody listens on sometimes is; the dialler refuses it, and
    /// refusing it frees the port for the member that listens there next.
    #[test]
    fn a_connection_to_itself_is_refused_and_frees_its_port() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind");
        let port = socket.local_addr().unwrap().as_socket().unwrap();
        socket
            .connect(&port.into())
            .expect("a simultaneous open with itself");
        let error = refuse_itself(socket.into()).expect_err("connected to itself");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        TcpListener::bind(port).expect("the port is free again once refused");

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let dialled = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        refuse_itself(dialled).expect("a connection to a listener is kept");
    }
}
