//! Replication: raft-rs decides the order of commands on every member of a cluster.
//!
//! - `storage`: raft's log, hard state and configuration on disk (`raft::Storage`).
//! - `transport`: one TCP connection per peer carrying raft messages.

pub mod storage;
pub mod transport;
