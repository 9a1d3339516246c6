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
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;

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
