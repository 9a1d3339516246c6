//! Raft messages between members over TCP: one outgoing connection per peer, written by the
//! sender itself when it can be done at once, else fed by a bounded queue to the peer's writer
//! thread; incoming connections, once their hello is checked, are handed to the raft loop's
//! [`Mailbox`](super::mailbox), which reads them in its own epoll.
//!
//! ```text
//! send(m) ─┬─ direct: a non-blocking write on the caller's thread ══TCP══╗
//!          └─ queue of peer m.to ─► writer thread ═════════════TCP═══════╩═► acceptor of m.to ─► hello ─► adopt: the raft loop's mailbox reads the frames
//!             (bounded; full:       (dial, hello, frames;                     (checked: a member,         ─► admit(from, m): counted, or dropped
//!              drop and count)       broken: redial with backoff)              the newest of its sender)      (isolated, not for this member)
//! ```
//!
//! The direct write saves waking the writer thread for every message, and reading in the raft
//! loop saves waking a reader thread: each round of raft on each member crosses no thread of
//! the transport's on the way. A frame goes out whole and in order whichever way it takes; per
//! peer:
//!
//! | state | a `send` |
//! |---|---|
//! | no connection (dialling, broken) | queues |
//! | connected, queue empty, outbox free | writes the frame with `MSG_DONTWAIT`: all of it (done), part of it (the rest queued first), none (the frame queued) |
//! | connected, writer busy (outbox locked) or messages queued | queues |
//!
//! Invariant: `queued` counts the items in the peer's queue and those the writer took but has
//! not yet flushed to the socket; the direct path writes only under the outbox lock with
//! `queued == 0`, and the writer writes only under that lock, so no frame overtakes an earlier
//! one and no two frames interleave. The rest of a frame begun directly carries the serial of
//! its connection: after a redial it is dropped, never written at the start of another.
//!
//! Wire, one direction per connection (a member sends on the connections it dialled and
//! receives on those it accepted): a hello of 16 bytes — `MAGIC`, the version (u32 LE), the
//! sender's id (u64 LE) — then frames `[u32 LE length][protobuf raft Message]`. A newer
//! connection from the same sender replaces the older one (the sender redialled): the older is
//! shut down, and the mailbox drops it at its end of stream.
//!
//! Losing messages is allowed, blocking is not: raft retries whatever is lost, so a full queue,
//! an unknown peer, a broken connection or an isolated peer drops messages (counted in
//! [`PeerHealth`]) and never holds the caller. Invariant: every message admitted came on a
//! connection whose hello named the message's `from` (the mailbox checks the frames, the
//! acceptor the hello); a peer that breaks the protocol loses its connection, never the
//! transport.
//!
//! Messages wait in their peer's queue while it is unreachable, and leave once it is reached.
//! The locks here (std's) are leaves: none is held while another thread is waited for.
//!
//! Stopping wakes every thread that may be blocked: writers on a socket by `shutdown`, a writer
//! waiting to redial by its control channel closing, a connection waiting for its hello by
//! `shutdown`, the acceptor by a connection to itself; the accepted connections are shut down.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufWriter, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, bounded, select};
use raft::prelude::{Message, MessageType};

/// First bytes of every connection: tells a raft peer from anything else dialling the port.
const MAGIC: [u8; 4] = *b"SKRT";
/// Wire version in the hello; a peer speaking another one is refused.
const VERSION: u32 = 1;
/// Bytes of a hello: magic, version, sender id.
const HELLO_LEN: usize = 16;
/// Largest frame accepted or sent. Snapshots travel as one message, hence the size.
pub(super) const MAX_FRAME: usize = 512 << 20;
/// Messages queued per peer before `send` drops.
const QUEUE: usize = 4096;
/// A dial that takes longer fails (and is retried after the backoff).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// First wait before redialling; doubles on every failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between two dials.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A connection that sends no complete hello in this time is closed.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that makes no progress for this long (the peer stopped reading) breaks the
/// connection, which is then redialled.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer of a writer (batches small messages into few syscalls) and of a reader.
const IO_BUFFER: usize = 64 * 1024;

/// One peer's link, for /stats.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerHealth {
    /// The peer's raft id.
    pub id: u64,
    /// Where this member dials it.
    pub addr: String,
    /// Whether the outgoing connection is up (as far as the last write knows).
    pub connected: bool,
    /// ms since anything was last received from this peer (None: never).
    pub last_contact_ms: Option<u64>,
    /// Messages written to the outgoing connection.
    pub sent: u64,
    /// Of those, the ones written at once by the sending thread (the raft loop), without
    /// waking the writer thread.
    pub direct: u64,
    /// Messages received from the peer and admitted.
    pub received: u64,
    /// Messages to or from the peer that were lost here: queue full, write failed, isolated.
    pub dropped: u64,
    /// Outgoing connections established after the first one.
    pub reconnects: u64,
}

/// Raft messages to and from the other members of the cluster (see the module summary).
pub struct Transport {
    shared: Arc<Shared>,
    /// The listener's address, dialled once to wake the acceptor when stopping (`None`: no
    /// listener, a member that has no peers to hear from).
    local_addr: Option<SocketAddr>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// What the transport's threads share.
struct Shared {
    id: u64,
    /// Origin of `PeerStats::last_contact`.
    epoch: Instant,
    peers: RwLock<HashMap<u64, Peer>>,
    isolated: RwLock<HashSet<u64>>,
    /// Takes an accepted connection once its hello is checked (the raft loop's mailbox).
    adopt: Box<dyn Fn(u64, TcpStream) -> io::Result<()> + Send + Sync>,
    stopping: AtomicBool,
    /// Messages sent to an id that is not a peer.
    unknown_dropped: AtomicU64,
    /// Accepted connections waiting for their hello (a thread each, at most [`HELLO_TIMEOUT`]);
    /// finished ones are pruned at the next accept.
    greeters: Mutex<Vec<Greeter>>,
    /// The current incoming connection of each sender, by serial: a newer hello from the same
    /// id shuts the older connection down (its peer redialled, so it is dead, maybe half-open
    /// after a crash, and the mailbox would otherwise keep it until `stop`). `stop` shuts them
    /// all down.
    inbound: Mutex<HashMap<u64, (u64, TcpStream)>>,
    /// Serials of incoming connections.
    accepted: AtomicU64,
    /// Writers of removed peers, still winding down; joined by `stop`.
    retired: Mutex<Vec<JoinHandle<()>>>,
}

/// What waits in a peer's queue.
enum Outgoing {
    /// A message, encoded by the writer.
    Message(Message),
    /// A whole frame (length prefix included) a direct write could not start.
    Frame(Vec<u8>),
    /// A frame a direct write began on connection `serial`, and how many of its bytes went
    /// (counted as sent). Its rest belongs to that connection only: on a later one (after a
    /// redial) it would be garbage, and it is dropped.
    Rest {
        frame: Vec<u8>,
        written: usize,
        serial: u64,
    },
}

/// The writing end of a peer's connection, for the direct path and the writer alike.
#[derive(Default)]
struct Outbox {
    /// A clone of the connection once its hello is written; `None` while there is none.
    stream: Option<TcpStream>,
    /// Counts the connections the writer made: which one `stream` is.
    serial: u64,
}

/// A peer as `send` and `health` see it; its writer thread holds the other ends.
struct Peer {
    addr: Arc<Mutex<String>>,
    queue: Sender<Outgoing>,
    /// See the module's invariant.
    queued: Arc<AtomicU64>,
    /// Taken (try-locked by `send`) around every write to the connection.
    outbox: Arc<Mutex<Outbox>>,
    /// A unit asks the writer to redial (the address changed); closing it stops the writer.
    control: Sender<()>,
    /// A clone of the writer's current connection, to shut it down from outside.
    link: Arc<Mutex<Option<TcpStream>>>,
    stats: Arc<PeerStats>,
    writer: JoinHandle<()>,
}

#[derive(Default)]
struct PeerStats {
    connected: AtomicBool,
    /// ms since `Shared::epoch` of the last message received, plus one; 0: never.
    last_contact: AtomicU64,
    sent: AtomicU64,
    direct: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

/// An accepted connection's thread, until its hello is read and the connection handed over.
struct Greeter {
    stream: TcpStream,
    thread: JoinHandle<()>,
}

impl Transport {
    /// Serves `listener` (this member's raft_addr) and dials each peer (id, "host:port").
    /// Every accepted connection whose hello names a peer is passed to `adopt` with the peer's
    /// id (the raft loop's [`MailboxHandle::adopt`](super::mailbox::MailboxHandle::adopt)),
    /// which reads its frames from then on; whoever reads them asks [`Transport::admit`] about
    /// each message.
    ///
    /// Without a listener (`None`: a node on its own, which has no raft port) nothing is
    /// accepted; peers, if any, are still dialled.
    pub fn start(
        id: u64,
        listener: Option<TcpListener>,
        peers: Vec<(u64, String)>,
        adopt: Box<dyn Fn(u64, TcpStream) -> io::Result<()> + Send + Sync>,
    ) -> io::Result<Transport> {
        let local_addr = match &listener {
            Some(listener) => {
                listener.set_nonblocking(false)?;
                Some(listener.local_addr()?)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            id,
            epoch: Instant::now(),
            peers: RwLock::new(HashMap::new()),
            isolated: RwLock::new(HashSet::new()),
            adopt,
            stopping: AtomicBool::new(false),
            unknown_dropped: AtomicU64::new(0),
            greeters: Mutex::new(Vec::new()),
            inbound: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
        });
        let transport = Transport {
            shared,
            local_addr,
            acceptor: Mutex::new(None),
        };
        for (peer, addr) in peers {
            // On failure `transport` drops here, which stops whatever already started.
            transport.insert_peer(peer, addr)?;
        }
        // Accepting starts once the peers are known: a hello is checked against them.
        let Some(listener) = listener else {
            tracing::debug!(id, "raft transport started without a listener");
            return Ok(transport);
        };
        let acceptor = {
            let shared = Arc::clone(&transport.shared);
            thread::Builder::new()
                .name(format!("raft-accept-{id}"))
                .spawn(move || accept_loop(&shared, listener))?
        };
        *lock(&transport.acceptor) = Some(acceptor);
        tracing::info!(id, addr = ?local_addr, "raft transport started");
        Ok(transport)
    }

    /// Sends `message` to `message.to`: written at once if the connection is up, idle and
    /// takes it without waiting, else queued for the peer's writer (see the module summary).
    /// Never blocks: if that peer's queue is full (bounded, 4096 messages) or the peer is
    /// unknown, the message is dropped and counted (raft retries).
    pub fn send(&self, message: Message) {
        let to = message.to;
        let peers = read(&self.shared.peers);
        let Some(peer) = peers.get(&to) else {
            self.shared.unknown_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(to, "raft message for an unknown peer dropped");
            return;
        };
        if self.shared.is_isolated(to) {
            peer.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(outgoing) = peer.write_directly(message) {
            peer.enqueue(outgoing);
        }
    }

    /// Adds a peer after a membership change, or replaces its address if it is known (its
    /// connection is then redialled at the new address). Ignored for this member's own id.
    pub fn add_peer(&self, id: u64, addr: String) {
        if let Err(error) = self.insert_peer(id, addr) {
            tracing::error!(peer = id, %error, "cannot start the writer of a raft peer");
        }
    }

    /// Forgets a peer after a membership change: its queued messages are dropped and its
    /// connection closed. Does not wait for its writer thread (`stop` does).
    pub fn remove_peer(&self, id: u64) {
        let removed = write(&self.shared.peers).remove(&id);
        if let Some(peer) = removed {
            tracing::info!(peer = id, "raft peer removed");
            self.shared.retire(peer);
        }
    }

    /// Whether a message that came on `sender`'s connection is to be stepped: counted as
    /// received if so; dropped (and counted) if it is for another member or `sender` is
    /// isolated; refused once the transport stops.
    pub fn admit(&self, sender: u64, message: &Message) -> bool {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::SeqCst) {
            return false;
        }
        let peers = read(&shared.peers);
        let stats = peers.get(&sender).map(|peer| &peer.stats);
        if message.to != shared.id || shared.is_isolated(sender) {
            if message.to != shared.id {
                tracing::warn!(
                    peer = sender,
                    to = message.to,
                    "raft message for another member dropped"
                );
            }
            if let Some(stats) = stats {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        if let Some(stats) = stats {
            stats.received.fetch_add(1, Ordering::Relaxed);
            let now = shared.epoch.elapsed().as_millis() as u64 + 1;
            stats.last_contact.store(now, Ordering::Relaxed);
        }
        true
    }

    /// Every peer's link, sorted by id.
    pub fn health(&self) -> Vec<PeerHealth> {
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let mut health: Vec<PeerHealth> = read(&self.shared.peers)
            .iter()
            .map(|(&id, peer)| {
                let stats = &peer.stats;
                let last_contact = stats.last_contact.load(Ordering::Relaxed);
                PeerHealth {
                    id,
                    addr: lock(&peer.addr).clone(),
                    connected: stats.connected.load(Ordering::Relaxed),
                    last_contact_ms: last_contact.checked_sub(1).map(|at| now.saturating_sub(at)),
                    sent: stats.sent.load(Ordering::Relaxed),
                    direct: stats.direct.load(Ordering::Relaxed),
                    received: stats.received.load(Ordering::Relaxed),
                    dropped: stats.dropped.load(Ordering::Relaxed),
                    reconnects: stats.reconnects.load(Ordering::Relaxed),
                }
            })
            .collect();
        health.sort_by_key(|peer| peer.id);
        health
    }

    /// Fault injection for tests: while set, everything to and from these peers is dropped
    /// (counted) as if the network were cut. Empty set heals.
    pub fn isolate(&self, peers: HashSet<u64>) {
        tracing::info!(id = self.shared.id, ?peers, "raft transport isolation set");
        *write(&self.shared.isolated) = peers;
    }

    /// Closes every connection and joins every thread. Drop does the same. Later sends are
    /// dropped; nothing is admitted once it returns.
    pub fn stop(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // The acceptor first, so that no greeter starts after the greeters are collected.
        let acceptor = lock(&self.acceptor).take();
        if let (Some(acceptor), Some(local_addr)) = (acceptor, self.local_addr) {
            match TcpStream::connect_timeout(&wake_address(local_addr), CONNECT_TIMEOUT) {
                Ok(_) => join(acceptor, "acceptor"),
                Err(error) => tracing::warn!(
                    %error,
                    "cannot wake the raft acceptor; it exits at its next connection"
                ),
            }
        }
        let peers: Vec<Peer> = write(&self.shared.peers).drain().map(|(_, p)| p).collect();
        for peer in peers {
            self.shared.retire(peer);
        }
        let greeters = std::mem::take(&mut *lock(&self.shared.greeters));
        for greeter in &greeters {
            let _ = greeter.stream.shutdown(Shutdown::Both);
        }
        for greeter in greeters {
            join(greeter.thread, "greeter");
        }
        for (_, (_, stream)) in lock(&self.shared.inbound).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let writers = std::mem::take(&mut *lock(&self.shared.retired));
        for writer in writers {
            join(writer, "writer");
        }
        tracing::info!(id = self.shared.id, "raft transport stopped");
    }

    fn insert_peer(&self, id: u64, addr: String) -> io::Result<()> {
        if id == self.shared.id {
            tracing::warn!(peer = id, "this member is not its own raft peer; ignored");
            return Ok(());
        }
        let mut peers = write(&self.shared.peers);
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(peer) = peers.get(&id) {
            let mut known = lock(&peer.addr);
            if *known != addr {
                tracing::info!(peer = id, from = %known, to = %addr, "raft peer moved");
                *known = addr;
                // Full means a redial is already asked for.
                let _ = peer.control.try_send(());
            }
            return Ok(());
        }
        let (queue, dequeue) = bounded(QUEUE);
        let (control, controlled) = bounded(1);
        let peer_addr = Arc::new(Mutex::new(addr));
        let link = Arc::new(Mutex::new(None));
        let stats = Arc::new(PeerStats::default());
        let queued = Arc::new(AtomicU64::new(0));
        let outbox = Arc::new(Mutex::new(Outbox::default()));
        let writer = Writer {
            own_id: self.shared.id,
            peer: id,
            addr: Arc::clone(&peer_addr),
            queue: dequeue,
            queued: Arc::clone(&queued),
            outbox: Arc::clone(&outbox),
            control: controlled,
            link: Arc::clone(&link),
            stats: Arc::clone(&stats),
            shared: Arc::clone(&self.shared),
        };
        let writer = thread::Builder::new()
            .name(format!("raft-send-{id}"))
            .spawn(move || writer.run())?;
        peers.insert(
            id,
            Peer {
                addr: peer_addr,
                queue,
                queued,
                outbox,
                control,
                link,
                stats,
                writer,
            },
        );
        Ok(())
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Peer {
    /// Queues `item` for the writer, or drops and counts it if the queue is full.
    fn enqueue(&self, item: Outgoing) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.queue.try_send(item).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The direct path: writes `message` on this thread if the connection is up and idle and
    /// the socket takes it without waiting. `None` when it is done with (written, queued in
    /// part, or lost with a connection found broken); otherwise what to queue for the writer.
    fn write_directly(&self, message: Message) -> Option<Outgoing> {
        let Ok(mut outbox) = self.outbox.try_lock() else {
            // The writer is writing (or a poisoned lock, which the writer reports).
            return Some(Outgoing::Message(message));
        };
        // A snapshot (up to 512 MiB) is encoded and written by the writer: never on the
        // sender's thread, the raft loop.
        if self.queued.load(Ordering::Acquire) != 0
            || message.get_msg_type() == MessageType::MsgSnapshot
        {
            return Some(Outgoing::Message(message));
        }
        let Some(stream) = &outbox.stream else {
            return Some(Outgoing::Message(message));
        };
        let frame = match frame(&message) {
            Ok(frame) => frame,
            Err(reason) => {
                tracing::warn!(peer = message.to, %reason, "raft message not sent");
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        match socket2::SockRef::from(stream).send_with_flags(&frame, flags) {
            Ok(written) if written == frame.len() => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                self.stats.direct.fetch_add(1, Ordering::Relaxed);
                None
            }
            // Queued while the outbox is held and `queued` is 0, so that the writer takes the
            // rest before any other frame.
            Ok(written) if written > 0 => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                let serial = outbox.serial;
                self.enqueue(Outgoing::Rest {
                    frame,
                    written,
                    serial,
                });
                None
            }
            Ok(_) => Some(Outgoing::Frame(frame)),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Some(Outgoing::Frame(frame))
            }
            Err(error) => {
                // The message is lost, as in a broken write of the writer's, which is asked to
                // redial (a full control channel: it is asked already).
                tracing::debug!(peer = message.to, %error, "raft connection broke on a direct write");
                let _ = stream.shutdown(Shutdown::Both);
                outbox.stream = None;
                let _ = self.control.try_send(());
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("id", &self.shared.id)
            .field("addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn is_isolated(&self, peer: u64) -> bool {
        read(&self.isolated).contains(&peer)
    }

    /// Stops a peer's writer without waiting for it: closing `control` ends its waits, shutting
    /// down its connection ends a blocked write.
    fn retire(&self, peer: Peer) {
        let Peer {
            control,
            link,
            writer,
            ..
        } = peer;
        drop(control);
        if let Some(stream) = lock(&link).as_ref() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let mut retired = lock(&self.retired);
        retired.retain(|writer| !writer.is_finished());
        retired.push(writer);
    }
}

/// Accepts peers' connections and gives each a thread for its hello, until the transport stops.
fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: keep serving, without spinning on it.
                tracing::warn!(%error, "raft accept failed");
                thread::sleep(BACKOFF_MIN);
                continue;
            }
        };
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(error) => {
                tracing::warn!(%remote, %error, "cannot keep a raft connection; closed");
                continue;
            }
        };
        let greeter = {
            let shared = Arc::clone(shared);
            thread::Builder::new()
                .name("raft-hello".into())
                .spawn(move || greet(&shared, stream, remote))
        };
        match greeter {
            Ok(thread) => {
                let mut greeters = lock(&shared.greeters);
                greeters.retain(|greeter| !greeter.thread.is_finished());
                greeters.push(Greeter {
                    stream: handle,
                    thread,
                });
            }
            Err(error) => tracing::warn!(%remote, %error, "no thread for a raft connection"),
        }
    }
}

/// One accepted connection until its hello is read and checked; then it is handed over.
/// Whatever goes wrong ends only it.
fn greet(shared: &Shared, stream: TcpStream, remote: SocketAddr) {
    // The acceptor keeps a clone of the socket (for `stop`), so dropping ours would not close
    // it: shut it down, and the peer learns at once.
    if let Err(error) = stream.try_clone().and_then(|own| hand_over(shared, own)) {
        let _ = stream.shutdown(Shutdown::Both);
        if !shared.stopping.load(Ordering::SeqCst) {
            tracing::warn!(%remote, %error, "raft connection refused");
        }
    }
}

/// Reads the hello (exactly its bytes: frames may follow in the same segment), checks that a
/// member sent it, makes the connection its sender's current one, and hands it over.
fn hand_over(shared: &Shared, mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let mut hello = [0; HELLO_LEN];
    stream.read_exact(&mut hello)?;
    let sender = parse_hello(&hello)?;
    // Only members speak raft here: anything else on the port could otherwise pose as a
    // leader of a higher term.
    if !read(&shared.peers).contains_key(&sender) {
        return Err(invalid(format!(
            "hello from {sender}, which is not a member"
        )));
    }
    stream.set_read_timeout(None)?;
    tracing::debug!(peer = sender, "raft peer connected");
    let serial = shared.accepted.fetch_add(1, Ordering::Relaxed);
    let older = lock(&shared.inbound).insert(sender, (serial, stream.try_clone()?));
    if let Some((_, older)) = older {
        tracing::debug!(peer = sender, "a newer connection replaces the older one");
        let _ = older.shutdown(Shutdown::Both);
    }
    (shared.adopt)(sender, stream)
}

fn hello(sender: u64) -> [u8; HELLO_LEN] {
    let mut hello = [0; HELLO_LEN];
    hello[..4].copy_from_slice(&MAGIC);
    hello[4..8].copy_from_slice(&VERSION.to_le_bytes());
    hello[8..].copy_from_slice(&sender.to_le_bytes());
    hello
}

fn parse_hello(hello: &[u8; HELLO_LEN]) -> io::Result<u64> {
    let (magic, rest) = hello.split_at(4);
    let (version, sender) = rest.split_at(4);
    if magic != MAGIC {
        return Err(invalid("not a raft peer (wrong magic)".into()));
    }
    let version = u32::from_le_bytes(version.try_into().map_err(|_| invalid("hello".into()))?);
    if version != VERSION {
        return Err(invalid(format!(
            "raft wire version {version}, this member speaks {VERSION}"
        )));
    }
    Ok(u64::from_le_bytes(
        sender.try_into().map_err(|_| invalid("hello".into()))?,
    ))
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// How a writer's connection ended.
enum Ended {
    /// The transport stops or the peer was removed.
    Stop,
    /// The peer's address changed.
    Redial,
    /// A write failed; the messages in flight are lost.
    Broken(io::Error),
}

/// The thread owning the connection to one peer.
struct Writer {
    own_id: u64,
    peer: u64,
    addr: Arc<Mutex<String>>,
    queue: Receiver<Outgoing>,
    queued: Arc<AtomicU64>,
    outbox: Arc<Mutex<Outbox>>,
    control: Receiver<()>,
    link: Arc<Mutex<Option<TcpStream>>>,
    stats: Arc<PeerStats>,
    shared: Arc<Shared>,
}

impl Writer {
    /// Dials, writes until the connection breaks, redials after a backoff; until stopped.
    /// Messages wait in the queue while the peer is unreachable (dropped by `send` once full).
    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut connections = 0u64;
        let mut failures = 0u64;
        loop {
            if let Err(TryRecvError::Disconnected) = self.control.try_recv() {
                return;
            }
            let addr = lock(&self.addr).clone();
            match self.dial(&addr) {
                Ok(stream) => {
                    if connections > 0 {
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    connections += 1;
                    failures = 0;
                    backoff = BACKOFF_MIN;
                    self.stats.connected.store(true, Ordering::Relaxed);
                    tracing::info!(peer = self.peer, %addr, "raft peer dialled");
                    let ended = self.pump(stream);
                    self.stats.connected.store(false, Ordering::Relaxed);
                    *lock(&self.link) = None;
                    match ended {
                        Ended::Stop => return,
                        Ended::Redial => continue,
                        Ended::Broken(error) => {
                            tracing::warn!(peer = self.peer, %addr, %error, "raft connection lost; redialling");
                        }
                    }
                }
                Err(error) => {
                    // The first failure says the peer is away; the next ones are the same news.
                    if failures == 0 {
                        tracing::warn!(peer = self.peer, %addr, %error, "cannot reach raft peer; retrying");
                    } else {
                        tracing::debug!(peer = self.peer, %addr, %error, "cannot reach raft peer");
                    }
                    failures += 1;
                }
            }
            match self.control.recv_timeout(backoff) {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(RecvTimeoutError::Timeout) => backoff = (backoff * 2).min(BACKOFF_MAX),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn dial(&self, addr: &str) -> io::Result<TcpStream> {
        let mut last_error = None;
        for candidate in addr.to_socket_addrs()? {
            match crate::net::dial(&candidate, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                    return Ok(stream);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address resolves to nothing",
            )
        }))
    }

    /// Writes the hello, then opens the direct path and writes queued items as they come:
    /// each batch (whatever is queued, up to a buffer's worth) under the outbox lock, flushed
    /// before the lock is let go (so a burst leaves in few syscalls and a lone message at once).
    fn pump(&self, stream: TcpStream) -> Ended {
        match stream.try_clone() {
            Ok(handle) => *lock(&self.link) = Some(handle),
            Err(error) => return Ended::Broken(error),
        }
        let direct = match stream.try_clone() {
            Ok(direct) => direct,
            Err(error) => return Ended::Broken(error),
        };
        let mut output = BufWriter::with_capacity(IO_BUFFER, stream);
        if let Err(error) = output
            .write_all(&hello(self.own_id))
            .and_then(|()| output.flush())
        {
            return Ended::Broken(error);
        }
        let serial = {
            let mut outbox = lock(&self.outbox);
            outbox.serial += 1;
            outbox.stream = Some(direct);
            outbox.serial
        };
        let ended = self.pump_queue(&mut output, serial);
        lock(&self.outbox).stream = None;
        ended
    }

    fn pump_queue(&self, output: &mut BufWriter<TcpStream>, serial: u64) -> Ended {
        loop {
            // Checked before every batch: `stop` closes `control` and then shuts down the
            // link, so a writer busy with a long queue, or one that stored its link after the
            // shutdown, still notices.
            match self.control.try_recv() {
                Ok(()) => return Ended::Redial,
                Err(TryRecvError::Disconnected) => return Ended::Stop,
                Err(TryRecvError::Empty) => {}
            }
            let first = match self.queue.try_recv() {
                Ok(item) => item,
                Err(TryRecvError::Disconnected) => return Ended::Stop,
                Err(TryRecvError::Empty) => select! {
                    recv(self.queue) -> item => match item {
                        Ok(item) => item,
                        Err(_) => return Ended::Stop,
                    },
                    recv(self.control) -> control => match control {
                        Ok(()) => return Ended::Redial,
                        Err(_) => return Ended::Stop,
                    },
                },
            };
            let outbox = lock(&self.outbox);
            if outbox.stream.is_none() {
                // A direct write found the connection broken: it is gone, and so is this item.
                drop(outbox);
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return Ended::Broken(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the connection broke on a direct write",
                ));
            }
            let mut taken = 0u64;
            let mut item = Some(first);
            let mut written = Ok(());
            while let Some(next) = item.take() {
                taken += 1;
                written = self.write_item(output, next, serial);
                if written.is_err() || output.buffer().len() >= IO_BUFFER / 2 {
                    break;
                }
                item = self.queue.try_recv().ok();
            }
            let written = written.and_then(|()| output.flush());
            // Written (or lost with the connection): later frames may go directly again.
            self.queued.fetch_sub(taken, Ordering::AcqRel);
            drop(outbox);
            if let Err(error) = written {
                return Ended::Broken(error);
            }
        }
    }

    /// Writes one queued item into `output` (buffered). A message that cannot be encoded is
    /// dropped and counted; a failed write loses the item with the connection.
    fn write_item(
        &self,
        output: &mut BufWriter<TcpStream>,
        item: Outgoing,
        serial: u64,
    ) -> io::Result<()> {
        let (bytes, from, counted) = match item {
            Outgoing::Message(message) => {
                if self.shared.is_isolated(self.peer) {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                match frame(&message) {
                    Ok(frame) => (frame, 0, false),
                    Err(reason) => {
                        tracing::warn!(peer = self.peer, %reason, "raft message not sent");
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                }
            }
            Outgoing::Frame(frame) => (frame, 0, false),
            Outgoing::Rest {
                frame,
                written,
                serial: begun_on,
            } => {
                if begun_on != serial {
                    // Its start went out on a connection since lost: the message is lost too.
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                (frame, written, true)
            }
        };
        if let Err(error) = output.write_all(&bytes[from..]) {
            if !counted {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return Err(error);
        }
        if !counted {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `message` as a frame: its length (u32 LE), then its protobuf bytes, if a peer would accept
/// them.
fn frame(message: &Message) -> Result<Vec<u8>, String> {
    let bytes = encode(message)?;
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(&bytes);
    Ok(frame)
}

/// The protobuf bytes of `message`, if a peer would accept them.
fn encode(message: &Message) -> Result<Vec<u8>, String> {
    let bytes = protobuf::Message::write_to_bytes(message).map_err(|error| error.to_string())?;
    if bytes.len() > MAX_FRAME {
        return Err(format!(
            "{} bytes encoded, over the frame limit of {MAX_FRAME}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Where to dial to reach `listening`: a wildcard address is reached on loopback.
fn wake_address(listening: SocketAddr) -> SocketAddr {
    let ip = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listening.port())
}

fn join(thread: JoinHandle<()>, role: &str) {
    if thread.join().is_err() {
        tracing::error!(role, "a raft transport thread panicked");
    }
}

// The transport's locks guard plain data updated in single steps: a panic elsewhere leaves
// nothing half-written, so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::mailbox::{Mailbox, MailboxHandle};
    use crossbeam_channel::unbounded;
    use raft::prelude::{MessageType, Snapshot, SnapshotMetadata};

    /// The bound of every wait: generous, a failing test fails instead of hanging.
    const WAIT: Duration = Duration::from_secs(10);

    /// A transport with a thread standing for the raft loop: it waits on the mailbox, asks
    /// `admit` about each message, and delivers those admitted to `inbox`.
    struct Member {
        transport: Arc<Transport>,
        inbox: Receiver<Message>,
        mailbox: MailboxHandle<()>,
        driver: Option<JoinHandle<()>>,
    }

    impl Drop for Member {
        fn drop(&mut self) {
            let _ = self.mailbox.send(());
            if let Some(driver) = self.driver.take() {
                driver.join().unwrap();
            }
        }
    }

    fn listen() -> (TcpListener, String) {
        let listener = crate::net::reserve_loopback_ports(1).unwrap().remove(0);
        let addr = listener.local_addr().unwrap().to_string();
        (listener, addr)
    }

    /// An address nothing listens on (bound, then released).
    fn free_address() -> String {
        listen().1
    }

    fn member(id: u64, listener: TcpListener, peers: Vec<(u64, String)>) -> Member {
        member_delivering(id, listener, peers, |message, deliveries| {
            let _ = deliveries.send(message);
        })
    }

    /// A member whose driver calls `deliver` for each admitted message (and the inbox's
    /// sender): a `deliver` that waits stalls the reading of every connection, as a busy raft
    /// loop does.
    fn member_delivering(
        id: u64,
        listener: TcpListener,
        peers: Vec<(u64, String)>,
        deliver: impl Fn(Message, &Sender<Message>) + Send + 'static,
    ) -> Member {
        let (mut mailbox, handle) = Mailbox::<()>::new().unwrap();
        let adopter = handle.clone();
        let adopt = Box::new(move |sender, stream| adopter.adopt(sender, stream));
        let transport = Arc::new(Transport::start(id, Some(listener), peers, adopt).unwrap());
        let (deliveries, inbox) = unbounded();
        let driver = {
            let transport = Arc::clone(&transport);
            thread::spawn(move || {
                loop {
                    let arrivals = mailbox.wait(WAIT, usize::MAX);
                    for (sender, message) in arrivals.messages {
                        if transport.admit(sender, &message) {
                            deliver(message, &deliveries);
                        }
                    }
                    // The unit sent by `drop`.
                    if !arrivals.inputs.is_empty() || arrivals.closed {
                        return;
                    }
                }
            })
        };
        Member {
            transport,
            inbox,
            mailbox: handle,
            driver: Some(driver),
        }
    }

    fn message(from: u64, to: u64, index: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.from = from;
        message.to = to;
        message.index = index;
        message
    }

    fn expect(member: &Member, from: u64, index: u64) {
        let received = member
            .inbox
            .recv_timeout(WAIT)
            .expect("a message within the bound");
        assert_eq!((received.from, received.index), (from, index));
    }

    /// Sends until one arrives (a message written into a dead connection is lost, as raft
    /// expects); the bound is `WAIT` overall.
    fn send_until_received(from: &Member, to: &Member, from_id: u64, to_id: u64) -> Message {
        let deadline = Instant::now() + WAIT;
        let mut index = 1000;
        while Instant::now() < deadline {
            index += 1;
            from.transport.send(message(from_id, to_id, index));
            if let Ok(received) = to.inbox.recv_timeout(Duration::from_millis(100)) {
                return received;
            }
        }
        panic!("no message from {from_id} reached {to_id}");
    }

    /// Waits for `condition`, looking again every few milliseconds, for at most `WAIT`.
    fn eventually(condition: impl Fn() -> bool) {
        let (_never, tick) = unbounded::<()>();
        let deadline = Instant::now() + WAIT;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "condition not met within the bound"
            );
            let _ = tick.recv_timeout(Duration::from_millis(5));
        }
    }

    fn health_of(transport: &Transport, id: u64) -> PeerHealth {
        transport
            .health()
            .into_iter()
            .find(|peer| peer.id == id)
            .expect("a known peer")
    }

    /// Writes `bytes` to `addr` and waits for the transport to close the connection.
    fn expect_closed(addr: &str, bytes: &[u8]) {
        expect_closed_after(addr, bytes, false);
    }

    /// Same, and with `hang_up` this side closes its half first.
    fn expect_closed_after(addr: &str, bytes: &[u8], hang_up: bool) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        // The transport may close before everything is written: a failed write is fine too.
        let _ = stream.write_all(bytes);
        if hang_up {
            stream.shutdown(Shutdown::Write).unwrap();
        }
        let mut buffer = [0; 16];
        match stream.read(&mut buffer) {
            Ok(0) => {}
            Ok(n) => panic!("the transport answered {n} bytes"),
            Err(error) => assert_ne!(
                error.kind(),
                io::ErrorKind::WouldBlock,
                "not closed within the bound"
            ),
        }
    }

    #[test]
    fn three_members_exchange_in_every_direction() {
        let (listeners, addrs): (Vec<_>, Vec<_>) = (0..3).map(|_| listen()).unzip();
        let members: Vec<Member> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                let id = i as u64 + 1;
                let peers = (1..=3)
                    .filter(|&peer| peer != id)
                    .map(|peer| (peer, addrs[peer as usize - 1].clone()))
                    .collect();
                member(id, listener, peers)
            })
            .collect();
        for (i, sender) in members.iter().enumerate() {
            let from = i as u64 + 1;
            for to in (1..=3).filter(|&to| to != from) {
                for index in 0..10 {
                    sender.transport.send(message(from, to, index));
                }
            }
        }
        for (i, receiver) in members.iter().enumerate() {
            let to = i as u64 + 1;
            let mut next = HashMap::new();
            for _ in 0..20 {
                let received = receiver.inbox.recv_timeout(WAIT).unwrap();
                assert_eq!(received.to, to);
                // In order per sender.
                let expected = next.entry(received.from).or_insert(0);
                assert_eq!(received.index, *expected);
                *expected += 1;
            }
            assert_eq!(next.len(), 2);
        }
        for (i, member) in members.iter().enumerate() {
            let health = member.transport.health();
            assert_eq!(health.len(), 2);
            assert!(health.windows(2).all(|pair| pair[0].id < pair[1].id));
            for peer in health {
                assert!(peer.connected, "{} → {}", i + 1, peer.id);
                assert_eq!((peer.sent, peer.received), (10, 10));
                assert_eq!((peer.dropped, peer.reconnects), (0, 0));
                assert!(peer.last_contact_ms.is_some());
                assert_eq!(peer.addr, addrs[peer.id as usize - 1]);
            }
        }
    }

    #[test]
    fn a_late_peer_is_reached_and_a_restarted_one_again() {
        let (listener, a_addr) = listen();
        let b_addr = free_address();
        let a = member(1, listener, vec![(2, b_addr.clone())]);
        // Queued while b is away, delivered once it is reached.
        a.transport.send(message(1, 2, 1));
        assert_eq!(health_of(&a.transport, 2).last_contact_ms, None);

        let b = member(
            2,
            TcpListener::bind(&b_addr).unwrap(),
            vec![(1, a_addr.clone())],
        );
        expect(&b, 1, 1);
        b.transport.send(message(2, 1, 1));
        expect(&a, 2, 1);
        assert!(health_of(&a.transport, 2).connected);

        b.transport.stop();
        drop(b);
        let b = member(2, TcpListener::bind(&b_addr).unwrap(), vec![(1, a_addr)]);
        let received = send_until_received(&a, &b, 1, 2);
        assert_eq!(received.from, 1);
        assert!(health_of(&a.transport, 2).reconnects >= 1);
        b.transport.send(message(2, 1, 7));
        expect(&a, 2, 7);
    }

    #[test]
    fn sending_to_an_unreachable_peer_never_blocks_and_counts_drops() {
        let (listener, _) = listen();
        let a = member(1, listener, vec![(2, free_address())]);
        let started = Instant::now();
        for index in 0..(QUEUE as u64 + 1000) {
            a.transport.send(message(1, 2, index));
        }
        a.transport.send(message(1, 99, 0));
        assert!(started.elapsed() < Duration::from_secs(2));
        let peer = health_of(&a.transport, 2);
        assert_eq!((peer.sent, peer.dropped, peer.connected), (0, 1000, false));
        assert_eq!(
            a.transport.shared.unknown_dropped.load(Ordering::Relaxed),
            1
        );
        // Stopping does not wait for the queue or the redial loop.
        let stopping = Instant::now();
        a.transport.stop();
        assert!(stopping.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn bad_input_closes_only_that_connection() {
        let (a_listener, a_addr) = listen();
        let (b_listener, b_addr) = listen();
        let a = member(1, a_listener, vec![(2, b_addr)]);
        let b = member(2, b_listener, vec![(1, a_addr.clone())]);

        expect_closed(&a_addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut wrong_magic = hello(2);
        wrong_magic[..4].copy_from_slice(b"XXXX");
        expect_closed(&a_addr, &wrong_magic);
        let mut wrong_version = hello(2);
        wrong_version[4..8].copy_from_slice(&99u32.to_le_bytes());
        expect_closed(&a_addr, &wrong_version);
        // Well-formed hellos from a stranger (5), so that b's connection stays in place.
        let mut absurd = hello(5).to_vec();
        absurd.extend(u32::MAX.to_le_bytes());
        expect_closed(&a_addr, &absurd);
        let mut undecodable = hello(5).to_vec();
        undecodable.extend(5u32.to_le_bytes());
        undecodable.extend([0xff; 5]);
        expect_closed(&a_addr, &undecodable);
        // Claims to be 5, sends as 6: closed, and the message is not delivered.
        let mut impostor = hello(5).to_vec();
        impostor.extend(frame(&message(6, 1, 666)).unwrap());
        expect_closed(&a_addr, &impostor);
        // A truncated frame, then the peer hangs up: nothing delivered.
        let mut truncated = hello(5).to_vec();
        truncated.extend(frame(&message(5, 1, 667)).unwrap());
        truncated.pop();
        expect_closed_after(&a_addr, &truncated, true);

        // The good peer still gets through, both ways, and nothing bad was delivered.
        b.transport.send(message(2, 1, 1));
        expect(&a, 2, 1);
        a.transport.send(message(1, 2, 1));
        expect(&b, 1, 1);
        assert!(a.inbox.try_recv().is_err());

        // An impostor naming itself 2 displaces b's connection (a newer one wins) and is then
        // closed for its mismatched `from`; b's writer notices and redials.
        let mut displacing = hello(2).to_vec();
        displacing.extend(frame(&message(3, 1, 668)).unwrap());
        expect_closed(&a_addr, &displacing);
        let received = send_until_received(&b, &a, 2, 1);
        assert_eq!(received.from, 2);
    }

    #[test]
    fn an_isolated_peer_is_cut_both_ways_until_healed() {
        let (a_listener, a_addr) = listen();
        let (b_listener, b_addr) = listen();
        let a = member(1, a_listener, vec![(2, b_addr)]);
        let b = member(2, b_listener, vec![(1, a_addr)]);
        a.transport.send(message(1, 2, 1));
        expect(&b, 1, 1);
        b.transport.send(message(2, 1, 1));
        expect(&a, 2, 1);

        a.transport.isolate(HashSet::from([2]));
        a.transport.send(message(1, 2, 2));
        b.transport.send(message(2, 1, 2));
        // Message 2 from b may still be on its way: heal only once a has dropped it.
        eventually(|| health_of(&a.transport, 2).dropped == 2);
        a.transport.isolate(HashSet::new());
        a.transport.send(message(1, 2, 3));
        b.transport.send(message(2, 1, 3));
        // Each connection keeps order: had 2 gone through, it would come before 3.
        expect(&b, 1, 3);
        expect(&a, 2, 3);
        let peer = health_of(&a.transport, 2);
        assert_eq!(peer.dropped, 2, "one each way");
        assert_eq!((peer.sent, peer.received), (2, 2));
    }

    #[test]
    fn a_large_snapshot_arrives_intact() {
        let (a_listener, a_addr) = listen();
        let (b_listener, b_addr) = listen();
        let a = member(1, a_listener, vec![(2, b_addr)]);
        let b = member(2, b_listener, vec![(1, a_addr)]);
        // Connected and idle, where a small message would go directly.
        send_until_received(&a, &b, 1, 2);
        eventually(|| {
            read(&a.transport.shared.peers)[&2]
                .queued
                .load(Ordering::Acquire)
                == 0
        });
        let before = health_of(&a.transport, 2);
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let metadata = SnapshotMetadata {
            index: 42,
            term: 3,
            ..Default::default()
        };
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.clone().into());
        snapshot.set_metadata(metadata);
        let mut sent = message(1, 2, 42);
        sent.set_msg_type(MessageType::MsgSnapshot);
        sent.set_snapshot(snapshot);
        a.transport.send(sent);
        // The snapshot went to the writer, whatever the state of the link: encoding it is not
        // the raft loop's work.
        let after = health_of(&a.transport, 2);
        assert_eq!(after.direct, before.direct);
        // A small one behind it: frames stay whole and in order.
        a.transport.send(message(1, 2, 43));
        let received = std::iter::from_fn(|| b.inbox.recv_timeout(WAIT).ok())
            .find(|m| m.index == 42)
            .expect("the snapshot within the bound");
        assert_eq!(received.get_msg_type(), MessageType::MsgSnapshot);
        let snapshot = received.get_snapshot();
        assert_eq!(snapshot.get_metadata().index, 42);
        assert!(snapshot.data == data, "snapshot data differs");
        expect(&b, 1, 43);
    }

    #[test]
    fn stop_wakes_a_writer_blocked_on_a_peer_that_does_not_read() {
        // Bound and never accepted: the kernel completes the connection, nobody reads it.
        let (_deaf, deaf_addr) = listen();
        let (listener, _) = listen();
        let a = member(1, listener, vec![(2, deaf_addr)]);
        let mut large = message(1, 2, 1);
        let mut snapshot = Snapshot::default();
        snapshot.set_data(vec![7; 4 << 20].into());
        large.set_snapshot(snapshot);
        for _ in 0..4 {
            a.transport.send(large.clone());
        }
        // The writer is connected, and its first 4 MiB cannot all fit the socket buffers.
        eventually(|| health_of(&a.transport, 2).connected);
        let stopping = Instant::now();
        a.transport.stop();
        // Well under WRITE_TIMEOUT: the shutdown woke the write.
        assert!(stopping.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_message_for_another_member_is_dropped() {
        let (a_listener, a_addr) = listen();
        let (b_listener, b_addr) = listen();
        let a = member(1, a_listener, vec![(2, b_addr)]);
        let b = member(2, b_listener, vec![(1, a_addr.clone())]);
        let mut misrouted = hello(2).to_vec();
        misrouted.extend(frame(&message(2, 9, 1)).unwrap());
        misrouted.extend(frame(&message(2, 1, 2)).unwrap());
        let mut raw = TcpStream::connect(&a_addr).unwrap();
        raw.write_all(&misrouted).unwrap();
        expect(&a, 2, 2);
        assert_eq!(health_of(&a.transport, 2).dropped, 1);
        drop(b);
    }

    #[test]
    fn a_newer_connection_from_a_sender_replaces_the_older() {
        let (listener, addr) = listen();
        let a = member(1, listener, vec![(7, free_address())]);
        let mut older = TcpStream::connect(&addr).unwrap();
        older.write_all(&hello(7)).unwrap();
        older.write_all(&frame(&message(7, 1, 1)).unwrap()).unwrap();
        expect(&a, 7, 1);
        let mut newer = TcpStream::connect(&addr).unwrap();
        newer.write_all(&hello(7)).unwrap();
        newer.write_all(&frame(&message(7, 1, 2)).unwrap()).unwrap();
        expect(&a, 7, 2);
        // Registered before its frames were read, so the older one is already shut down.
        older.set_read_timeout(Some(WAIT)).unwrap();
        assert!(matches!(older.read(&mut [0; 1]), Ok(0)));
        // An older connection that ends does not unregister the newer one.
        drop(older);
        newer.write_all(&frame(&message(7, 1, 3)).unwrap()).unwrap();
        expect(&a, 7, 3);
        assert_eq!(lock(&a.transport.shared.inbound).len(), 1);
    }

    #[test]
    fn a_stranger_is_not_heard() {
        let (listener, addr) = listen();
        let a = member(1, listener, vec![(2, free_address())]);
        let mut stranger = TcpStream::connect(&addr).unwrap();
        stranger.write_all(&hello(9)).unwrap();
        let _ = stranger.write_all(&frame(&message(9, 1, 1)).unwrap());
        // The connection is closed without a word, and nothing is delivered.
        stranger.set_read_timeout(Some(WAIT)).unwrap();
        assert!(matches!(stranger.read(&mut [0; 1]), Ok(0) | Err(_)));
        let mut member_two = TcpStream::connect(&addr).unwrap();
        member_two.write_all(&hello(2)).unwrap();
        member_two
            .write_all(&frame(&message(2, 1, 2)).unwrap())
            .unwrap();
        expect(&a, 2, 2);
    }

    #[test]
    fn moving_and_removing_peers() {
        let (a_listener, a_addr) = listen();
        let (b_listener, b_addr) = listen();
        let a = member(1, a_listener, vec![(2, free_address())]);
        let b = member(2, b_listener, vec![(1, a_addr)]);
        // The peer was known at a wrong address; the right one is dialled at once.
        a.transport.add_peer(2, b_addr.clone());
        let received = send_until_received(&a, &b, 1, 2);
        assert_eq!(received.from, 1);
        assert_eq!(health_of(&a.transport, 2).addr, b_addr);
        a.transport.remove_peer(2);
        assert!(a.transport.health().is_empty());
        a.transport.send(message(1, 2, 5));
        assert_eq!(
            a.transport.shared.unknown_dropped.load(Ordering::Relaxed),
            1
        );
        // Own id: ignored.
        a.transport.add_peer(1, "127.0.0.1:1".into());
        assert!(a.transport.health().is_empty());
    }

    /// The direct path and the writer together: a burst far larger than the socket buffers,
    /// sent while the receiver is stalled (its loop held in `deliver`, so direct
    /// writes fill the socket, stop part way through frames and queue the rest), never blocks
    /// the sender and arrives whole and in order once the receiver goes on. Then a lone message
    /// on the idle connection goes directly.
    #[test]
    fn direct_and_queued_writes_keep_every_frame_whole_and_in_order() {
        let (listener_1, addr_1) = listen();
        let (listener_2, addr_2) = listen();
        let one = member(1, listener_1, vec![(2, addr_2)]);
        // Member 2's loop stops in `deliver` while `stall` holds a receiver, until it is sent
        // a unit (or the bound passes).
        let stall: Arc<Mutex<Option<Receiver<()>>>> = Arc::default();
        let two = {
            let stall = Arc::clone(&stall);
            member_delivering(
                2,
                listener_2,
                vec![(1, addr_1)],
                move |message, deliveries| {
                    let held = lock(&stall).take();
                    if let Some(stalled) = held {
                        let _ = stalled.recv_timeout(WAIT);
                    }
                    let _ = deliveries.send(message);
                },
            )
        };
        send_until_received(&one, &two, 1, 2);
        // Once the writer has written what was queued, messages go directly.
        eventually(|| {
            one.transport.send(message(1, 2, 1));
            health_of(&one.transport, 2).direct > 0
        });
        eventually(|| {
            read(&one.transport.shared.peers)[&2]
                .queued
                .load(Ordering::Acquire)
                == 0
        });
        let (go_on, stalled) = bounded(1);
        *lock(&stall) = Some(stalled);

        // Messages with a 16 KiB context: 3,000 are ~48 MiB, past any socket buffer. The queue
        // holds 4,096: none is dropped.
        const BURST: u64 = 3_000;
        let before = health_of(&one.transport, 2);
        let started = Instant::now();
        for index in 0..BURST {
            let mut message = message(1, 2, index);
            message.context = vec![index as u8; 16 * 1024].into();
            one.transport.send(message);
        }
        assert!(started.elapsed() < WAIT, "sending never waits for the peer");
        let direct = health_of(&one.transport, 2).direct - before.direct;
        assert!(
            direct > 0 && direct < BURST,
            "both paths took part: {direct} of {BURST} direct"
        );
        go_on.send(()).unwrap();
        // The warm-up messages (no context) may still be on their way: they came first.
        let mut burst = std::iter::from_fn(|| two.inbox.recv_timeout(WAIT).ok())
            .filter(|m| !m.context.is_empty());
        for index in 0..BURST {
            let received = burst.next().expect("the burst within the bound");
            assert_eq!(received.index, index, "in order, none lost");
            assert_eq!(received.context.len(), 16 * 1024);
            assert!(received.context.iter().all(|b| *b == index as u8));
        }
        let after = health_of(&one.transport, 2);
        assert_eq!(
            (after.sent - before.sent, after.dropped),
            (BURST, before.dropped)
        );

        // Idle again: the next message goes directly.
        let idle = || {
            read(&one.transport.shared.peers)[&2]
                .queued
                .load(Ordering::Acquire)
                == 0
        };
        eventually(idle);
        one.transport.send(message(1, 2, 7));
        expect(&two, 1, 7);
        assert_eq!(health_of(&one.transport, 2).direct, after.direct + 1);
    }
}
