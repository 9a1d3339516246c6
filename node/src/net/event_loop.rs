//! One event loop: many connections on one thread, with `mio` (epoll), none of them ever
//! blocking the others.
//!
//! | connection state | meaning | leaves it when |
//! |---|---|---|
//! | `Unregistered` | no byte yet: the protocol is not known | the first byte arrives |
//! | `Idle(session)` | the session is here; the next buffered request may start | a request starts |
//! | `Busy` | the session travels with a request (hashing pool, log, applier) | its completion comes back |
//!
//! A connection runs one request at a time, so its answers leave in the order its requests
//! came (pipelined requests wait, parsed, in its input buffer); a request waiting for the disk
//! holds no thread, only this table's entry. Its answer comes back as a [`Completion`] through
//! the loop's channel and waker, from whichever thread finished it.
//!
//! Back-pressure and slow readers: a connection's output buffer is drained as the socket takes
//! it; no request starts while it holds [`OUTPUT_HIGH`] unsent bytes (a client that sends
//! without reading is held back, and then reading it pauses at [`INPUT_HIGH`]); pushes are moved into it only while it holds less than [`OUTPUT_HIGH`] bytes, so a
//! reader that does not drain its socket fills its push queue, after which pushes to it are
//! dropped (the messages stay queued in the mailbox) and nothing else waits. A connection that
//! sends part of a frame and then nothing for `frame_timeout` is closed.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::protocol::{
    DecodeError, ErrorCode, ErrorReply, FrameParser, Parse, Protocol, Response, ServerFrame,
};
use crate::service::{Answer, Connection, Outbox, Service};

/// The waker's token; connections use their slab key.
const WAKER: Token = Token(usize::MAX);
/// Pushes queued for one connection beyond what its output buffer holds.
pub const PUSH_QUEUE: usize = 256;
/// Pushes move into a connection's output buffer only below this many unsent bytes.
pub const OUTPUT_HIGH: usize = 64 * 1024;
/// Reading pauses while this many unparsed bytes wait (pipelined requests behind a busy one).
const INPUT_HIGH: usize = 256 * 1024;
/// How often partial frames are checked for their timeout.
const SWEEP: Duration = Duration::from_secs(1);

/// A finished request on its way back to its connection's loop.
pub struct Completion {
    key: usize,
    serial: u64,
    session: Box<Connection>,
    response: Response,
}

/// What other threads hold to reach a loop: hand it a new connection, a completion, or the news
/// that a connection has pushes waiting.
#[derive(Clone)]
pub struct LoopHandle {
    waker: Arc<Wakeup>,
    incoming: Sender<(TcpStream, SocketAddr)>,
    completions: Sender<Completion>,
    pushes: Sender<usize>,
}

impl LoopHandle {
    /// Gives the loop a newly accepted connection.
    pub fn adopt(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        self.incoming
            .send((stream, peer))
            .map_err(|_| io::Error::other("the event loop has stopped"))?;
        self.waker.wake()
    }

    fn complete(&self, completion: Completion) {
        if self.completions.send(completion).is_ok() {
            let _ = self.waker.wake();
        }
    }

    fn pushed(&self, key: usize) {
        if self.pushes.send(key).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// The loop's waker, woken at most once per turn of the loop: a batch of fifty answers costs
/// one system call, not fifty.
struct Wakeup {
    waker: Waker,
    /// Set by the first wake since the loop last looked at its channels.
    pending: AtomicBool,
}

impl Wakeup {
    fn wake(&self) -> io::Result<()> {
        if self.pending.swap(true, Ordering::AcqRel) {
            return Ok(()); // already woken: the loop will see this message too
        }
        self.waker.wake()
    }

    /// Called by the loop before it drains its channels: a message sent after this wakes it again.
    fn rearm(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

enum Session {
    Unregistered,
    Idle(Box<Connection>),
    Busy,
}

struct Conn {
    serial: u64,
    stream: TcpStream,
    peer: SocketAddr,
    parser: FrameParser,
    session: Session,
    /// Received bytes not parsed yet.
    input: Buffer,
    /// Bytes not sent yet.
    output: Buffer,
    pushes: Option<Receiver<ServerFrame>>,
    /// When the unparsed input started to hold an unfinished frame.
    partial_since: Option<Instant>,
    /// The peer sent its last byte.
    peer_closed: bool,
    /// Close once the output is sent (after a fatal decoding error or a refusal).
    closing: bool,
    /// Reading stopped at [`INPUT_HIGH`] unparsed bytes.
    read_paused: bool,
    /// Requests stopped starting at [`OUTPUT_HIGH`] unsent bytes: a client that sends without
    /// reading its answers is held back instead of growing the node's memory.
    output_paused: bool,
    /// Closed while busy: the entry waits for the completion to hand the session back.
    closed: bool,
}

impl Conn {
    fn unsent(&self) -> usize {
        self.output.pending().len()
    }

    fn unparsed(&self) -> &[u8] {
        self.input.pending()
    }

    fn write_frame(&mut self, frame: &ServerFrame) {
        self.parser
            .protocol()
            .encode_server_frame_into(frame, &mut self.output.bytes);
    }

    fn answer(&mut self, response: Response) {
        self.write_frame(&ServerFrame::Response(response));
    }

    fn consume(&mut self, n: usize) {
        self.input.consume(n);
    }
}

/// Bytes with a cursor: those before it are done with (parsed, or sent). The storage is reused
/// once everything is done with, and given back when it grew past [`Buffer::KEEP`].
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    at: usize,
}

impl Buffer {
    /// A buffer that shrinks back after holding more than this.
    const KEEP: usize = 64 * 1024;

    fn pending(&self) -> &[u8] {
        &self.bytes[self.at..]
    }

    fn consume(&mut self, n: usize) {
        self.at += n;
        if self.at == self.bytes.len() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.at = 0;
        if self.bytes.capacity() > Self::KEEP {
            self.bytes.shrink_to(4096);
        }
    }
}

/// One event loop thread's state.
pub struct EventLoop {
    poll: Poll,
    handle: LoopHandle,
    incoming: Receiver<(TcpStream, SocketAddr)>,
    completions: Receiver<Completion>,
    pushes: Receiver<usize>,
    conns: Slab<Conn>,
    next_serial: u64,
    service: Arc<Service>,
    frame_timeout: Duration,
    scratch: Vec<u8>,
}

impl EventLoop {
    /// A loop serving connections on `service`; run it with [`EventLoop::run`].
    pub fn new(service: Arc<Service>) -> io::Result<(EventLoop, LoopHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Wakeup {
            waker: Waker::new(poll.registry(), WAKER)?,
            pending: AtomicBool::new(false),
        });
        let (incoming_tx, incoming) = unbounded();
        let (completions_tx, completions) = unbounded();
        let (pushes_tx, pushes) = unbounded();
        let handle = LoopHandle {
            waker,
            incoming: incoming_tx,
            completions: completions_tx,
            pushes: pushes_tx,
        };
        let frame_timeout = Duration::from_secs(service.config().frame_timeout_secs.max(1));
        Ok((
            EventLoop {
                poll,
                handle: handle.clone(),
                incoming,
                completions,
                pushes,
                conns: Slab::new(),
                next_serial: 1,
                service,
                frame_timeout,
                scratch: vec![0; 64 * 1024],
            },
            handle,
        ))
    }

    /// Serves until the process ends: wait for events, then in order: adopt new connections,
    /// hand back finished requests, move waiting pushes, serve sockets that are ready, and
    /// every second close connections stalled in the middle of a frame.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            if let Err(error) = self.poll.poll(&mut events, Some(SWEEP)) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            self.handle.waker.rearm();
            self.adopt_new();
            self.finish_completed();
            self.move_pushes();
            for event in &events {
                if event.token() == WAKER {
                    continue;
                }
                let key = event.token().0;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(key);
                }
                self.serve(key);
            }
            if last_sweep.elapsed() >= SWEEP {
                self.close_stalled();
                last_sweep = Instant::now();
            }
        }
    }

    fn adopt_new(&mut self) {
        while let Ok((mut stream, peer)) = self.incoming.try_recv() {
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(error) = self.poll.registry().register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(%error, %peer, "cannot watch a connection; dropped");
                continue;
            }
            entry.insert(Conn {
                serial: self.next_serial,
                stream,
                peer,
                parser: FrameParser::new(Protocol::Json),
                session: Session::Unregistered,
                input: Buffer::default(),
                output: Buffer::default(),
                pushes: None,
                partial_since: None,
                peer_closed: false,
                closing: false,
                read_paused: false,
                output_paused: false,
                closed: false,
            });
            self.next_serial += 1;
            tracing::debug!(%peer, "connected");
            // Bytes may have arrived before registration: edge-triggered readiness would not
            // report them again.
            self.read(key);
            self.serve(key);
        }
    }

    fn finish_completed(&mut self) {
        while let Ok(done) = self.completions.try_recv() {
            let Some(conn) = self
                .conns
                .get_mut(done.key)
                .filter(|c| c.serial == done.serial)
            else {
                continue;
            };
            if conn.closed {
                self.conns.remove(done.key);
                self.service.disconnect(*done.session);
                continue;
            }
            conn.session = Session::Idle(done.session);
            conn.answer(done.response);
            self.serve(done.key);
        }
    }

    fn move_pushes(&mut self) {
        loop {
            match self.pushes.try_recv() {
                Ok(key) => self.serve(key),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Reads what the socket has, up to [`INPUT_HIGH`] unparsed bytes (then reading pauses
    /// until requests drain the buffer).
    fn read(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| !c.closed) else {
            return;
        };
        conn.read_paused = false;
        while !conn.peer_closed {
            if conn.unparsed().len() >= INPUT_HIGH {
                conn.read_paused = true;
                break;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => conn.peer_closed = true,
                Ok(n) => conn.input.bytes.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(peer = %conn.peer, %error, "connection failed");
                    conn.peer_closed = true;
                    conn.closing = true;
                }
            }
        }
    }

    /// Everything a connection can do now: start its next request, take its pushes, send, and
    /// close when it is done.
    fn serve(&mut self, key: usize) {
        loop {
            if self.conns.get(key).is_none_or(|c| c.closed) {
                return;
            }
            self.start_requests(key);
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            send(conn);
            // Reading paused on a full input buffer: edge-triggered readiness will not report
            // the bytes still in the socket, so read them once requests have made room.
            let busy = matches!(conn.session, Session::Busy);
            if conn.read_paused && !busy && conn.unparsed().len() < INPUT_HIGH {
                self.read(key);
                continue;
            }
            // Requests held back by unsent answers start again once the socket took them.
            if conn.output_paused && conn.unsent() < OUTPUT_HIGH {
                conn.output_paused = false;
                continue;
            }
            let drained = conn.peer_closed && !busy && !has_whole_frame(conn);
            if (conn.closing || drained) && conn.unsent() == 0 {
                self.close(key);
            }
            return;
        }
    }

    /// Parses and starts requests until one is in flight (one at a time per connection).
    fn start_requests(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        loop {
            if conn.closing || conn.unparsed().is_empty() {
                break;
            }
            if let Session::Unregistered = conn.session {
                conn.parser = FrameParser::new(Protocol::detect(conn.unparsed()[0]));
                let (queue, pushes) = unbounded();
                let handle = self.handle.clone();
                let wake = Arc::new(move || handle.pushed(key));
                match self
                    .service
                    .connect_to(conn.peer.ip(), Outbox::waking(queue, PUSH_QUEUE, wake))
                {
                    Some(session) => {
                        conn.session = Session::Idle(Box::new(session));
                        conn.pushes = Some(pushes);
                    }
                    None => {
                        tracing::warn!(peer = %conn.peer, "connection limit reached; refusing");
                        conn.answer(Response {
                            id: 0,
                            op: None,
                            result: Err(ErrorReply::new(
                                ErrorCode::Internal,
                                "the node is at its connection limit",
                            )),
                        });
                        conn.closing = true;
                        break;
                    }
                }
            }
            if let Session::Busy = conn.session {
                break;
            }
            if conn.unsent() >= OUTPUT_HIGH {
                conn.output_paused = true;
                break;
            }
            match conn.parser.parse_request(conn.input.pending()) {
                Parse::Incomplete => {
                    conn.partial_since.get_or_insert_with(Instant::now);
                    break;
                }
                Parse::Skip(n) => conn.consume(n),
                Parse::Frame { consumed, decoded } => {
                    conn.consume(consumed);
                    conn.partial_since = None;
                    match decoded {
                        Ok((id, request)) => {
                            let op = Some(request.op());
                            if let Err(error) = self.service.admit(conn.peer.ip()) {
                                conn.answer(Response {
                                    id,
                                    op,
                                    result: Err(error),
                                });
                                continue;
                            }
                            let Session::Idle(session) =
                                std::mem::replace(&mut conn.session, Session::Busy)
                            else {
                                unreachable!("checked above: the session is idle");
                            };
                            let (handle, serial) = (self.handle.clone(), conn.serial);
                            let done = Box::new(move |session, result: Answer| {
                                handle.complete(Completion {
                                    key,
                                    serial,
                                    session,
                                    response: Response { id, op, result },
                                });
                            });
                            self.service.handle(session, request, done);
                            break;
                        }
                        Err(bad) => conn.answer(bad_input(conn.peer, bad)),
                    }
                }
                Parse::Fatal(bad) => {
                    // The stream cannot be re-synchronised: answer, then close.
                    conn.answer(bad_input(conn.peer, bad));
                    conn.closing = true;
                }
            }
        }
    }

    /// Closes every connection that has held part of a frame for longer than the timeout.
    fn close_stalled(&mut self) {
        let stalled: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.closed
                    && c.partial_since
                        .is_some_and(|since| since.elapsed() >= self.frame_timeout)
            })
            .map(|(key, _)| key)
            .collect();
        for key in stalled {
            if let Some(conn) = self.conns.get(key) {
                tracing::info!(peer = %conn.peer, "closing a connection stalled in the middle of a frame");
            }
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        // Pushes offered from now on find the queue closed, so they do not count as delivered
        // (the session may stay registered until a request in flight comes back).
        conn.pushes = None;
        tracing::debug!(peer = %conn.peer, "disconnected");
        match std::mem::replace(&mut conn.session, Session::Unregistered) {
            Session::Busy => {
                // The completion hands the session back; the entry waits for it.
                conn.session = Session::Busy;
                conn.closed = true;
            }
            Session::Idle(session) => {
                self.conns.remove(key);
                self.service.disconnect(*session);
            }
            Session::Unregistered => {
                self.conns.remove(key);
            }
        }
    }
}

/// Sends what the socket takes, moving queued pushes into the output buffer while it holds
/// less than [`OUTPUT_HIGH`] unsent bytes.
fn send(conn: &mut Conn) {
    loop {
        if let Some(pushes) = &conn.pushes {
            while conn.unsent() < OUTPUT_HIGH {
                let Ok(frame) = pushes.try_recv() else {
                    break;
                };
                conn.parser
                    .protocol()
                    .encode_server_frame_into(&frame, &mut conn.output.bytes);
            }
        }
        if conn.unsent() == 0 {
            return;
        }
        match conn.stream.write(conn.output.pending()) {
            Ok(n) => conn.output.consume(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::debug!(peer = %conn.peer, %error, "connection failed");
                conn.output.clear();
                conn.closing = true;
                return;
            }
        }
    }
}

/// Whether the unparsed input holds a frame to answer (or a fatal error to report).
fn has_whole_frame(conn: &Conn) -> bool {
    !matches!(conn.session, Session::Unregistered)
        && !conn.unparsed().is_empty()
        && !matches!(
            conn.parser.protocol().find_frame(conn.unparsed()),
            Parse::Incomplete
        )
}

fn bad_input(peer: SocketAddr, bad: DecodeError) -> Response {
    tracing::info!(%peer, error = %bad.error, "bad request");
    Response {
        id: bad.id.unwrap_or(0),
        op: bad.op,
        result: Err(bad.error),
    }
}
