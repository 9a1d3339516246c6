//! Per-connection state (who is logged in, open listing cursors) and where pushes to it go.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use sync_kit::mvcc::Snapshot;

use crate::protocol::ServerFrame;
use crate::state::Account;

/// Where a connection's pushes go: a bounded queue (a full one drops the push: the message
/// stays queued in the mailbox) and, for event-driven connections, how to wake the thread that
/// drains it.
#[derive(Clone)]
pub struct Outbox {
    frames: Sender<ServerFrame>,
    /// Frames queued at most (an unbounded channel allocates as it fills; a bounded one holds
    /// its capacity from the start, too much for thousands of connections).
    capacity: usize,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Set by [`Outbox::sink`]: pushes go there instead of `frames`.
    sink: Option<Arc<dyn Fn(ServerFrame) -> bool + Send + Sync>>,
}

impl Outbox {
    /// An outbox on `frames` (bounded by the channel's own capacity), drained by whoever holds
    /// its receiver.
    pub fn new(frames: Sender<ServerFrame>) -> Outbox {
        Outbox {
            frames,
            capacity: usize::MAX,
            wake: None,
            sink: None,
        }
    }

    /// An outbox that hands each push to `sink`, which says whether it took it (a refused push
    /// stays queued in the mailbox, as with a full queue): for front ends with queues of their
    /// own, such as the gRPC server's sessions, which take pushes only while a `Subscribe`
    /// stream is open. Called on the applier's thread: it must not block.
    pub fn sink(sink: impl Fn(ServerFrame) -> bool + Send + Sync + 'static) -> Outbox {
        Outbox {
            frames: crossbeam_channel::bounded(0).0,
            capacity: 0,
            wake: None,
            sink: Some(Arc::new(sink)),
        }
    }

    /// An outbox of at most `capacity` frames whose drainer is woken by `wake` after each one.
    /// Pushes come from one thread (the applier), so the capacity check does not race.
    pub fn waking(
        frames: Sender<ServerFrame>,
        capacity: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Outbox {
        Outbox {
            frames,
            capacity,
            wake: Some(wake),
            sink: None,
        }
    }

    /// Queues `frame` unless the queue is full or closed; says whether it was queued.
    pub fn offer(&self, frame: ServerFrame) -> bool {
        if let Some(sink) = &self.sink {
            return sink(frame);
        }
        if self.frames.len() >= self.capacity {
            return false;
        }
        match self.frames.try_send(frame) {
            Ok(()) => {
                if let Some(wake) = &self.wake {
                    wake();
                }
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued", &self.frames.len())
            .finish_non_exhaustive()
    }
}

/// How a live session receives pushes.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// The connection.
    pub connection: u64,
    /// Its push queue.
    pub outbox: Outbox,
}

/// A listing in progress: the snapshot every page is served from.
pub(super) struct Cursor {
    pub(super) id: u64,
    pub(super) pattern: String,
    pub(super) snapshot: Snapshot<String, Account>,
    pub(super) after: String,
}

/// Open cursors per connection; the oldest is dropped beyond this.
pub(super) const MAX_CURSORS: usize = 8;

/// One client connection's session. It travels with the connection's request in flight (one at a
/// time, so requests of a connection run in order), and comes back with the reply.
pub struct Connection {
    pub(super) id: u64,
    pub(super) peer: IpAddr,
    pub(super) user: Option<String>,
    /// The password hash of the account `user` logged into: it tells that account apart from a
    /// later one created under the same name after a deletion (its salt is random).
    pub(super) account_hash: String,
    pub(super) cursors: VecDeque<Cursor>,
    pub(super) next_cursor: u64,
    pub(super) outbox: Outbox,
}

impl Connection {
    /// The connection's peer address.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The logged-in user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The node's number for this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn handle(&self) -> SessionHandle {
        SessionHandle {
            connection: self.id,
            outbox: self.outbox.clone(),
        }
    }

    /// Forgets the login and the cursors.
    pub(super) fn end_session(&mut self) -> Option<String> {
        self.cursors.clear();
        self.account_hash.clear();
        self.user.take()
    }

    /// A stand-in left behind while the session travels with a request.
    pub(super) fn placeholder() -> Connection {
        Connection {
            id: 0,
            peer: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            user: None,
            account_hash: String::new(),
            cursors: VecDeque::new(),
            next_cursor: 1,
            outbox: Outbox::new(crossbeam_channel::bounded(0).0),
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}
