//! What the raft loop waits on: the inputs other threads send it (proposals, reads, status
//! questions) and its peers' incoming connections, in one epoll, so that a raft message wakes
//! the loop itself instead of a reader thread that would then wake the loop.
//!
//! ```text
//! MailboxHandle::send(input) ── channel ──┐
//! MailboxHandle::adopt(peer, stream) ─────┼─ waker ─► Mailbox::wait (the raft loop's thread):
//! peers' sockets (after their hello) ─────┘           inputs, then (sender, message) pairs
//! ```
//!
//! | loop state | `sleeping` | a `send` |
//! |---|---|---|
//! | busy (between two waits) | false | queues; the next `wait` takes it without blocking |
//! | about to block in, or blocked in, `epoll_wait` | true | queues, clears `sleeping`, wakes the loop |
//!
//! Invariant (no lost wake-up): the loop sets `sleeping` and only then looks at the channel
//! before it blocks; a sender queues and only then looks at `sleeping` (both with `SeqCst`
//! fences). So either the loop sees the input, or the sender sees the loop asleep and wakes it.
//! A busy loop costs its senders no system call.
//!
//! A connection carries frames `[u32 LE length][protobuf raft Message]` from one sender, whose
//! hello the transport checked before adopting it. A frame over `MAX_FRAME` (512 MiB), an
//! undecodable one, or one whose `from` is not the sender closes that connection only (shut
//! down both ways, so the peer notices and redials); so does the peer's end of stream. A
//! connection is read for at most `READ_BUDGET` (1 MiB) per turn (a snapshot arriving does not
//! hold up the loop's ticks and other peers); the rest is read at the next turn, which then does
//! not wait.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use raft::prelude::Message;

use super::transport::MAX_FRAME;

/// The waker's token; connections count up from 0.
const WAKER: Token = Token(usize::MAX);
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection in one `wait`: a peer sending a large snapshot does not hold
/// the loop (its ticks, the other peers) until the whole of it has arrived.
const READ_BUDGET: usize = 1 << 20;
/// An input buffer that grew past this (a snapshot) is given back once drained.
const KEEP: usize = 256 * 1024;

/// The loop's end: owned by the thread that calls [`Mailbox::wait`].
pub struct Mailbox<T> {
    poll: Poll,
    events: Events,
    inputs: Receiver<T>,
    shared: Arc<Shared>,
    connections: HashMap<Token, Connection>,
    /// Connections whose reading stopped at [`READ_BUDGET`] with bytes maybe left in the
    /// socket: no new edge will report them, so the next `wait` reads them without waiting.
    unfinished: Vec<Token>,
    /// [`READ_BUDGET`], smaller in tests.
    read_budget: usize,
    next_token: usize,
    scratch: Box<[u8]>,
}

/// Every other thread's end: send an input, hand over a peer's connection.
pub struct MailboxHandle<T> {
    inputs: Sender<T>,
    shared: Arc<Shared>,
}

impl<T> Clone for MailboxHandle<T> {
    fn clone(&self) -> Self {
        MailboxHandle {
            inputs: self.inputs.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared {
    waker: Waker,
    /// See the module's table and invariant.
    sleeping: AtomicBool,
    /// Connections handed over and not yet registered by the loop.
    adopted: Mutex<Vec<(u64, std::net::TcpStream)>>,
}

/// One peer's incoming connection.
struct Connection {
    sender: u64,
    stream: TcpStream,
    /// Bytes received and not yet decoded, from `at` on.
    input: Vec<u8>,
    at: usize,
}

/// What one [`Mailbox::wait`] brought.
pub struct Arrivals<T> {
    /// Inputs, in the order they were sent.
    pub inputs: Vec<T>,
    /// Raft messages with the peer whose connection carried them, in order per connection.
    pub messages: Vec<(u64, Message)>,
    /// Every [`MailboxHandle`] is gone: nothing more can be sent.
    pub closed: bool,
}

impl<T> Default for Arrivals<T> {
    fn default() -> Self {
        Arrivals {
            inputs: Vec::new(),
            messages: Vec::new(),
            closed: false,
        }
    }
}

impl<T> Arrivals<T> {
    /// Whether nothing arrived.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.messages.is_empty()
    }
}

impl<T> Mailbox<T> {
    /// An empty mailbox, and the handle to reach it.
    pub fn new() -> io::Result<(Mailbox<T>, MailboxHandle<T>)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (sender, inputs) = unbounded();
        let shared = Arc::new(Shared {
            waker,
            sleeping: AtomicBool::new(false),
            adopted: Mutex::new(Vec::new()),
        });
        let mailbox = Mailbox {
            poll,
            events: Events::with_capacity(64),
            inputs,
            shared: Arc::clone(&shared),
            connections: HashMap::new(),
            unfinished: Vec::new(),
            read_budget: READ_BUDGET,
            next_token: 0,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        };
        let handle = MailboxHandle {
            inputs: sender,
            shared,
        };
        Ok((mailbox, handle))
    }

    /// Takes what has arrived, waiting at most `timeout` for something if nothing has. At most
    /// `max_inputs` inputs are taken (the rest wait for the next call).
    pub fn wait(&mut self, timeout: Duration, max_inputs: usize) -> Arrivals<T> {
        let mut arrivals = Arrivals::default();
        self.take_inputs(&mut arrivals, max_inputs);
        // Sockets are polled on every call, without waiting while inputs are in hand, so that a
        // stream of proposals does not starve the peers.
        self.shared.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let idle = arrivals.is_empty()
            && self.inputs.is_empty()
            && !arrivals.closed
            && self.unfinished.is_empty();
        let timeout = if idle { timeout } else { Duration::ZERO };
        let polled = self.poll.poll(&mut self.events, Some(timeout));
        self.shared.sleeping.store(false, Ordering::SeqCst);
        if let Err(error) = polled
            && error.kind() != io::ErrorKind::Interrupted
        {
            // epoll_wait fails only on a bad descriptor or buffer: not something a retry fixes,
            // but the inputs still flow (the next call polls again).
            tracing::error!(%error, "raft mailbox: poll failed");
        }
        let mut ready: Vec<(Token, bool)> = std::mem::take(&mut self.unfinished)
            .into_iter()
            .map(|token| (token, true))
            .collect();
        ready.extend(
            self.events
                .iter()
                .map(|event| (event.token(), event.is_read_closed() || event.is_error())),
        );
        for (token, drain) in ready {
            if token == WAKER {
                self.register_adopted(&mut arrivals.messages);
            } else {
                self.read(token, drain, &mut arrivals.messages);
            }
        }
        self.take_inputs(&mut arrivals, max_inputs);
        arrivals
    }

    fn take_inputs(&mut self, arrivals: &mut Arrivals<T>, max_inputs: usize) {
        while arrivals.inputs.len() < max_inputs {
            match self.inputs.try_recv() {
                Ok(input) => arrivals.inputs.push(input),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    arrivals.closed = true;
                    return;
                }
            }
        }
    }

    /// Registers the connections handed over since the last wake, and reads what each already
    /// holds (their first frames may have come with the hello).
    fn register_adopted(&mut self, messages: &mut Vec<(u64, Message)>) {
        let adopted = std::mem::take(
            &mut *self
                .shared
                .adopted
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (sender, stream) in adopted {
            let token = Token(self.next_token);
            self.next_token += 1;
            let mut stream = TcpStream::from_std(stream);
            if let Err(error) =
                self.poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE)
            {
                tracing::warn!(peer = sender, %error, "cannot watch a raft connection; closed");
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            self.connections.insert(
                token,
                Connection {
                    sender,
                    stream,
                    input: Vec::new(),
                    at: 0,
                },
            );
            // What came with the hello may have raised its edge before the registration.
            self.read(token, true, messages);
        }
    }

    /// Reads a connection until the socket is empty, decoding every whole frame; closes it
    /// at its end of stream or at the first frame that breaks the protocol.
    ///
    /// A read that returns less than it asked for emptied the socket: bytes that arrive later
    /// raise a new edge. So it stops there, saving the read that would only say `WouldBlock`
    /// (one system call per message a member receives), unless the peer's end of stream or
    /// an error was reported, or the socket may hold bytes from before (`drain`):
    /// no later edge would repeat those. After [`READ_BUDGET`] bytes it stops and leaves the
    /// connection in `unfinished`.
    fn read(&mut self, token: Token, drain: bool, messages: &mut Vec<(u64, Message)>) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        let mut budget = self.read_budget;
        let ended = loop {
            if budget == 0 {
                if !self.unfinished.contains(&token) {
                    self.unfinished.push(token);
                }
                break Ok(());
            }
            let want = self.scratch.len().min(budget);
            match connection.stream.read(&mut self.scratch[..want]) {
                Ok(0) => break Err(Ended::Closed),
                Ok(n) => {
                    budget -= n;
                    connection.input.extend_from_slice(&self.scratch[..n]);
                    if let Err(error) = connection.decode(messages) {
                        break Err(Ended::Broken(error));
                    }
                    if n < want && !drain {
                        break Ok(());
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => break Err(Ended::Broken(error.to_string())),
            }
        };
        if let Err(ended) = ended {
            let mut connection = self.connections.remove(&token).expect("looked up above");
            let _ = self.poll.registry().deregister(&mut connection.stream);
            match ended {
                Ended::Closed => {
                    tracing::debug!(
                        peer = connection.sender,
                        "raft connection closed by the peer"
                    );
                }
                Ended::Broken(why) => {
                    tracing::warn!(peer = connection.sender, %why, "raft connection dropped");
                }
            }
        }
    }
}

/// Why a connection ended.
enum Ended {
    /// The peer's end of stream (it closed, or the transport shut a replaced connection).
    Closed,
    /// A broken frame or a failed read.
    Broken(String),
}

impl Connection {
    /// Decodes every whole frame in the input; an error breaks the connection (dropping it
    /// shuts it down).
    fn decode(&mut self, messages: &mut Vec<(u64, Message)>) -> Result<(), String> {
        let sender = self.sender;
        loop {
            let pending = &self.input[self.at..];
            let Some(prefix) = pending.first_chunk::<4>() else {
                break;
            };
            let length = u32::from_le_bytes(*prefix) as usize;
            if length > MAX_FRAME {
                return Err(format!(
                    "peer {sender} announced a frame of {length} bytes (limit {MAX_FRAME})"
                ));
            }
            let Some(frame) = pending.get(4..4 + length) else {
                break;
            };
            let message: Message = match protobuf::Message::parse_from_bytes(frame) {
                Ok(message) => message,
                Err(error) => {
                    return Err(format!("undecodable frame from peer {sender}: {error}"));
                }
            };
            if message.from != sender {
                return Err(format!(
                    "message from {} on the connection of peer {sender}",
                    message.from
                ));
            }
            self.at += 4 + length;
            messages.push((sender, message));
        }
        if self.at == self.input.len() {
            self.input.clear();
            self.at = 0;
            if self.input.capacity() > KEEP {
                self.input = Vec::new();
            }
        } else if self.at > self.input.len() / 2 {
            self.input.drain(..self.at);
            self.at = 0;
        }
        Ok(())
    }

    /// Ends the connection both ways: the transport keeps a clone of the socket (to replace or
    /// stop it), so closing this descriptor alone would not tell the peer.
    fn shut(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shut();
    }
}

impl<T> MailboxHandle<T> {
    /// Queues `input` for the loop, waking it if it sleeps; gives it back if the mailbox is
    /// gone.
    pub fn send(&self, input: T) -> Result<(), T> {
        self.inputs.send(input).map_err(|error| error.0)?;
        fence(Ordering::SeqCst);
        if self.shared.sleeping.swap(false, Ordering::SeqCst) {
            self.wake();
        }
        Ok(())
    }

    /// Hands over a peer's connection, its hello read: from now on the loop reads it.
    pub fn adopt(&self, sender: u64, stream: std::net::TcpStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        self.shared
            .adopted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((sender, stream));
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        if let Err(error) = self.shared.waker.wake() {
            tracing::error!(%error, "raft mailbox: cannot wake the loop");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::thread;
    use std::time::Instant;

    use raft::prelude::MessageType;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn message(from: u64, index: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.from = from;
        message.to = 1;
        message.index = index;
        message
    }

    fn frame(message: &Message) -> Vec<u8> {
        let body = protobuf::Message::write_to_bytes(message).unwrap();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend(body);
        frame
    }

    /// A connected pair: the accepted end, and the dialling end to write into.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dialled = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (accepted, dialled)
    }

    /// Waits (bounded) until `done` says the arrivals so far are enough.
    fn collect<T>(mailbox: &mut Mailbox<T>, done: impl Fn(&Arrivals<T>) -> bool) -> Arrivals<T> {
        let deadline = Instant::now() + WAIT;
        let mut all = Arrivals::default();
        while !done(&all) {
            assert!(Instant::now() < deadline, "not within the bound");
            let arrivals = mailbox.wait(Duration::from_millis(100), usize::MAX);
            all.inputs.extend(arrivals.inputs);
            all.messages.extend(arrivals.messages);
            all.closed |= arrivals.closed;
        }
        all
    }

    /// Inputs sent while the loop sleeps wake it: a thread sends one input at a time and waits
    /// for the loop's answer before the next, so every input finds the loop asleep (or about
    /// to be), and a lost wake-up would stall the round until the 10 s timeout.
    #[test]
    fn an_input_wakes_a_sleeping_loop_every_time() {
        let (mut mailbox, handle) = Mailbox::<u32>::new().unwrap();
        let (answers, answered) = unbounded();
        let sender = thread::spawn(move || {
            for i in 0..2_000 {
                handle.send(i).unwrap();
                answered.recv_timeout(WAIT).expect("the loop answers");
            }
        });
        let started = Instant::now();
        for i in 0..2_000 {
            let arrivals = collect(&mut mailbox, |a| !a.inputs.is_empty());
            assert_eq!(arrivals.inputs, vec![i]);
            answers.send(()).unwrap();
        }
        sender.join().unwrap();
        // A lost wake-up costs the whole 10 s poll timeout of that round.
        assert!(started.elapsed() < WAIT);
        let arrivals = mailbox.wait(Duration::ZERO, usize::MAX);
        assert!(arrivals.closed, "every handle is gone");
    }

    #[test]
    fn frames_split_anywhere_arrive_whole_and_in_order() {
        let (mut mailbox, handle) = Mailbox::<()>::new().unwrap();
        let (accepted, mut dialled) = pair();
        let mut bytes = Vec::new();
        for index in 0..200 {
            let mut message = message(7, index);
            message.context = vec![index as u8; index as usize * 50].into();
            bytes.extend(frame(&message));
        }
        // The first frames go before the connection is adopted: read at registration.
        dialled.write_all(&bytes[..100]).unwrap();
        handle.adopt(7, accepted).unwrap();
        for chunk in bytes[100..].chunks(777) {
            dialled.write_all(chunk).unwrap();
        }
        let arrivals = collect(&mut mailbox, |a| a.messages.len() == 200);
        for (index, (sender, message)) in arrivals.messages.iter().enumerate() {
            assert_eq!((*sender, message.index), (7, index as u64));
            assert_eq!(message.context.len(), index * 50);
        }
    }

    /// Frames past one turn's reading budget, all in the socket before the connection is
    /// adopted, from a peer that then sends nothing more (no later edge): every turn reads its
    /// share without waiting, and all of it arrives. A connection left with bytes in its socket
    /// and no edge would stall the next turn for the whole timeout given to `wait`.
    #[test]
    fn bytes_past_the_reading_budget_arrive_without_a_new_edge() {
        let (mut mailbox, handle) = Mailbox::<()>::new().unwrap();
        mailbox.read_budget = 4096;
        let (accepted, mut dialled) = pair();
        const FRAMES: u64 = 40;
        for index in 0..FRAMES {
            let mut message = message(3, index);
            message.context = vec![index as u8; 1000].into();
            dialled.write_all(&frame(&message)).unwrap();
        }
        // Everything sent is in the accepted socket (40 KB, far below its buffer).
        accepted.set_nonblocking(false).unwrap();
        let mut peek = vec![0; 64 * 1024];
        let deadline = Instant::now() + WAIT;
        while accepted.peek(&mut peek).unwrap() < 40 * 1000 {
            assert!(Instant::now() < deadline, "the bytes did not arrive");
            thread::yield_now();
        }
        handle.adopt(3, accepted).unwrap();
        let started = Instant::now();
        let mut received = Vec::new();
        let mut turns = 0;
        while received.len() < FRAMES as usize {
            assert!(
                started.elapsed() < WAIT,
                "a turn waited for an edge that never came"
            );
            let arrivals = mailbox.wait(WAIT, usize::MAX);
            turns += 1;
            received.extend(arrivals.messages.into_iter().map(|(_, m)| m));
        }
        assert!(started.elapsed() < WAIT / 2, "no turn waited");
        assert!(
            turns > 5,
            "40 KB take about ten turns of 4 KiB, took {turns}"
        );
        for (index, message) in received.iter().enumerate() {
            assert_eq!(message.index, index as u64);
            assert!(message.context.iter().all(|b| *b == index as u8));
        }
        drop(dialled);
    }

    #[test]
    fn a_frame_that_breaks_the_protocol_closes_only_its_connection() {
        let (mut mailbox, handle) = Mailbox::<()>::new().unwrap();
        let (good, mut good_end) = pair();
        handle.adopt(2, good).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            u32::MAX.to_le_bytes().to_vec(),
            [5u32.to_le_bytes().to_vec(), vec![0xff; 5]].concat(),
            frame(&message(6, 1)),
        ];
        for bad in cases {
            let (accepted, mut dialled) = pair();
            handle.adopt(5, accepted).unwrap();
            dialled.write_all(&bad).unwrap();
            // Closed: the dialling end reads its end of stream, and nothing is delivered.
            dialled.set_read_timeout(Some(WAIT)).unwrap();
            let reader = thread::spawn(move || dialled.read(&mut [0; 1]).map_err(|e| e.kind()));
            let arrivals = collect(&mut mailbox, |_| reader.is_finished());
            assert!(arrivals.messages.is_empty());
            assert!(matches!(reader.join().unwrap(), Ok(0) | Err(_)));
        }
        good_end.write_all(&frame(&message(2, 9))).unwrap();
        let arrivals = collect(&mut mailbox, |a| !a.messages.is_empty());
        assert_eq!(arrivals.messages[0].1.index, 9);
        assert_eq!(mailbox.connections.len(), 1);
    }
}
