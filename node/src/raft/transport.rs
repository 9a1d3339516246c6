//! Raft messages between members over TCP (being written).
