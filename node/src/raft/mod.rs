//! Replication: raft-rs decides the order of commands on every member of a cluster.
//!
//! - [`member`]: the member's [`CommandLog`](crate::log::CommandLog), `RaftLog`, and the loop
//!   that drives raft-rs's `RawNode`, end to end.
//! - [`cluster`]: the cluster file (who the members are, where each listens).
//! - [`storage`]: raft's log, hard state and configuration on disk (`raft::Storage`).
//! - [`transport`]: one TCP connection per peer carrying raft messages.
//! - [`mailbox`]: what the raft loop waits on: its inputs and its peers' connections, one epoll.

pub mod cluster;
pub mod mailbox;
pub mod member;
pub mod storage;
pub mod transport;

pub use cluster::{Cluster, Member};
pub use member::{MembershipChange, RaftLog, RaftStatus};
