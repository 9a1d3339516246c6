//! The connection loop, end to end.
//!
//! ```text
//! accept ─► connection thread ─► peek first byte: 0xB1 → binary, else JSON lines
//!              │ loop: read a frame → decode → rate limit → Service::execute → outbox
//!              ▼
//!           writer thread: outbox → encode (this connection's protocol) → socket
//!                  ▲
//!   other connections' sends push live deliveries into this outbox (never blocking on it)
//! ```
//!
//! One thread reads and executes, one writes, per connection: a request never waits for
//! another connection's slow socket, and a recipient's full outbox drops the push (the message
//! stays queued, undelivered) instead of stalling the sender.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, bounded};

use crate::protocol::{DecodeError, ErrorCode, ErrorReply, FrameError, Response, ServerFrame};
use crate::service::Service;

pub use crate::protocol::Protocol;

/// Frames queued for one connection before pushes to it are dropped.
const OUTBOX: usize = 4096;
/// Connection threads do little besides (de)coding: small stacks let thousands coexist.
const STACK: usize = 256 * 1024;

/// Accepts connections forever.
pub fn run(listener: TcpListener, service: Arc<Service>) -> io::Result<()> {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // Out of file descriptors and the like: log, keep serving the others.
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let service = Arc::clone(&service);
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(STACK)
            .spawn(move || serve_connection(stream, &service));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a connection thread; connection dropped");
        }
    }
    Ok(())
}

fn serve_connection(stream: TcpStream, service: &Service) {
    let peer = match stream.peer_addr() {
        Ok(peer) => peer,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let protocol = match reader.fill_buf() {
        Ok([]) | Err(_) => return,
        Ok(bytes) => Protocol::detect(bytes[0]),
    };
    let (outbox, queue) = bounded::<ServerFrame>(OUTBOX);
    let Some(mut connection) = service.connect(peer.ip(), outbox.clone()) else {
        tracing::warn!(%peer, "connection limit reached; refusing");
        let refusal = refusal(ErrorReply::new(
            ErrorCode::Internal,
            "the node is at its connection limit",
        ));
        let _ = (&stream).write_all(&protocol.encode_server_frame(&refusal));
        return;
    };
    tracing::debug!(%peer, ?protocol, "connected");
    let writer = match stream.try_clone().and_then(|s| {
        thread::Builder::new()
            .name("conn-writer".into())
            .stack_size(STACK)
            .spawn(move || write_frames(s, protocol, queue))
    }) {
        Ok(writer) => writer,
        Err(error) => {
            tracing::warn!(%error, "cannot start a writer thread");
            service.disconnect(connection);
            return;
        }
    };
    loop {
        let response = match protocol.read_request(&mut reader) {
            Ok(Ok((id, request))) => {
                let op = Some(request.op());
                let result = service
                    .admit(peer.ip())
                    .and_then(|()| service.execute(&mut connection, request));
                Response { id, op, result }
            }
            Ok(Err(bad)) => answer_bad_input(peer, bad),
            Err(FrameError::Closed) => break,
            Err(FrameError::Io(error)) => {
                tracing::debug!(%peer, %error, "connection ended");
                break;
            }
            Err(FrameError::Invalid(bad)) => {
                // The stream cannot be re-synchronised: answer, then close.
                let _ = outbox.send(ServerFrame::Response(answer_bad_input(peer, bad)));
                break;
            }
        };
        if outbox.send(ServerFrame::Response(response)).is_err() {
            break; // the writer is gone: the socket failed
        }
    }
    service.disconnect(connection);
    drop(outbox);
    let _ = writer.join();
    let _ = stream.shutdown(Shutdown::Both);
    tracing::debug!(%peer, "disconnected");
}

fn answer_bad_input(peer: SocketAddr, bad: DecodeError) -> Response {
    tracing::info!(%peer, error = %bad.error, "bad request");
    Response {
        id: bad.id.unwrap_or(0),
        op: bad.op,
        result: Err(bad.error),
    }
}

fn refusal(error: ErrorReply) -> ServerFrame {
    ServerFrame::Response(Response {
        id: 0,
        op: None,
        result: Err(error),
    })
}

/// Drains a connection's outbox into its socket, flushing whenever the queue runs dry. Ends when
/// every sender is gone (the connection closed) or the socket fails; pushes then fail to queue.
fn write_frames(stream: TcpStream, protocol: Protocol, queue: Receiver<ServerFrame>) {
    let mut out = BufWriter::new(&stream);
    for frame in &queue {
        if out
            .write_all(&protocol.encode_server_frame(&frame))
            .is_err()
        {
            break;
        }
        if queue.is_empty() && out.flush().is_err() {
            break;
        }
    }
    let _ = out.flush();
    // Wake the reader if it is blocked on a dead peer.
    let _ = stream.shutdown(Shutdown::Both);
}
