//! Raft's log on disk (being written).
