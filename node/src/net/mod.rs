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
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
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
    use std::net::Ipv4Addr;

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
