//! `synckit-node`: a chat node built entirely on sync-kit.
//!
//! Read it in this order: [`protocol`] (what is said on the wire), [`service`] (a request's
//! whole path: command, log, apply, answer), [`state`] (the state and its one writer,
//! `State::apply`), [`log`] (how commands become durable and ordered), [`net`] (event loops for connections,
//! HTTP statistics), [`client`] (the client library, CLI and load generator).

pub mod cli;
pub mod client;
pub mod config;
pub mod hasher;
pub mod ledger;
pub mod log;
pub mod net;
pub mod protocol;
pub mod raft;
pub mod service;
pub mod state;
