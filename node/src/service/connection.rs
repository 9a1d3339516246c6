//! Per-connection state: who is logged in, open listing cursors, where pushes go.

use std::collections::VecDeque;
use std::net::IpAddr;

use crossbeam_channel::Sender;
use sync_kit::mvcc::Snapshot;

use super::Account;
use crate::protocol::ServerFrame;

/// How a live session receives pushes: its connection's outgoing queue.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// The connection.
    pub connection: u64,
    /// Its outgoing frames.
    pub outbox: Sender<ServerFrame>,
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

/// One client connection, owned by its thread.
pub struct Connection {
    pub(super) id: u64,
    pub(super) peer: IpAddr,
    pub(super) user: Option<String>,
    /// The password hash of the account `user` logged into: it tells that account apart from a
    /// later one created under the same name after a deletion (its salt is random).
    pub(super) account_hash: String,
    pub(super) cursors: VecDeque<Cursor>,
    pub(super) next_cursor: u64,
    pub(super) outbox: Sender<ServerFrame>,
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

    pub(super) fn handle(&self) -> SessionHandle {
        SessionHandle {
            connection: self.id,
            outbox: self.outbox.clone(),
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

impl super::Service {
    /// Registers a new connection; `None` if the node is at its connection limit.
    pub fn connect(&self, peer: IpAddr, outbox: Sender<ServerFrame>) -> Option<Connection> {
        use std::sync::atomic::Ordering;
        let open = self.connections.fetch_add(1, Ordering::Relaxed);
        if open >= self.config.max_connections {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Connection {
            id: self.next_connection.fetch_add(1, Ordering::Relaxed),
            peer,
            user: None,
            account_hash: String::new(),
            cursors: VecDeque::new(),
            next_cursor: 1,
            outbox,
        })
    }

    /// Forgets a closed connection (its session, its cursors).
    pub fn disconnect(&self, mut connection: Connection) {
        if let Err(error) = self.logout(&mut connection) {
            tracing::warn!(%error, "logout on disconnect failed");
        }
        self.connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
