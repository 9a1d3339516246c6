//! `synckit-node`: a chat node built entirely on sync-kit.
//!
//! Read it in this order: [`protocol`] (what is said on the wire), `service` (what each
//! operation does, on which sync-kit primitive), `wal` (how it survives a crash), `server` (the
//! connection loop), `http` (statistics), `client` (the scripted client).

pub mod cli;
pub mod client;
pub mod config;
pub mod hasher;
pub mod http;
pub mod protocol;
pub mod server;
pub mod service;
pub mod wal;
