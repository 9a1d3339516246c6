//! The node's settings: embedded defaults, overridden by an optional TOML file, overridden by
//! command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything a node needs to start. `Config::default()` is what `synckit-node serve` uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Chat protocol (binary and JSON on one port).
    pub chat_addr: SocketAddr,
    /// HTTP statistics endpoint.
    pub http_addr: SocketAddr,
    /// gRPC front end (`proto/synckit.proto`, `docs/protocol.md` "gRPC"). A cluster member
    /// left at the default listens on a free port of its chat address's host instead (the
    /// members of `cluster up` share one machine), printed on its listening line.
    pub grpc_addr: SocketAddr,
    /// A gRPC token (a session) expires after this many seconds without a call (an open
    /// `Subscribe` stream keeps it alive).
    pub grpc_token_idle_secs: u64,
    /// Where the log and snapshots live (locked by one node at a time).
    pub data_dir: PathBuf,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Requests per second per client address (token bucket refill).
    pub requests_per_sec: u32,
    /// Request burst per client address.
    pub request_burst: u32,
    /// Login attempts per minute per username.
    pub logins_per_minute: u32,
    /// Login attempt burst per username.
    pub login_burst: u32,
    /// Take a snapshot (and truncate the log) after this many log records (default 500,000:
    /// about 30 MB of log, replayed in about a second at start; redis rewrites its append-only
    /// file at 64 MB)...
    pub snapshot_every_records: u64,
    /// ...or after this many seconds with at least one record.
    pub snapshot_interval_secs: u64,
    /// A connection holding part of a frame this long without completing it is closed.
    pub frame_timeout_secs: u64,
    /// Event loop threads serving connections (0: half the cores, at least 1).
    pub io_threads: usize,
    /// Threads applying a batch's commands on different mailbox shards in parallel (0: half the
    /// cores, 1 to 4).
    pub apply_threads: usize,
    /// Coins granted to each account created (0 grants nothing).
    pub initial_balance: u64,
    /// The leader seals the pooled transactions this often (milliseconds)...
    pub block_interval_ms: u64,
    /// ...or as soon as this many are pooled. A block holds at most
    /// [`MAX_BLOCK_TXS`](crate::ledger::MAX_BLOCK_TXS) (its `get_block` answer fits one frame).
    pub block_max_txs: usize,
    /// Proof of work: leading zero bits of a sealed block's hash (0 turns it off).
    pub difficulty_bits: u32,
    /// Threads searching nonces when this member seals a block (0: every core).
    pub seal_threads: usize,
    /// The cluster this node is a member of (`serve --cluster FILE --id N`); `None`: a node on
    /// its own.
    #[serde(skip)]
    pub cluster: Option<crate::raft::Cluster>,
    /// Fault injection for tests (`serve --test-hooks`): `POST /test/isolate` on the HTTP
    /// endpoint cuts this member off from the peers it names, `POST /test/fail-syncs?count=N`
    /// makes its raft log's next N fsyncs fail. Never on in production.
    #[serde(skip)]
    pub test_hooks: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            chat_addr: "127.0.0.1:7878".parse().expect("valid address"),
            http_addr: "127.0.0.1:7879".parse().expect("valid address"),
            grpc_addr: "127.0.0.1:7880".parse().expect("valid address"),
            grpc_token_idle_secs: 1800,
            data_dir: PathBuf::from("./synckit-data"),
            max_connections: 4096,
            requests_per_sec: 1000,
            request_burst: 2000,
            logins_per_minute: 30,
            login_burst: 10,
            snapshot_every_records: 500_000,
            snapshot_interval_secs: 300,
            frame_timeout_secs: 30,
            io_threads: 0,
            apply_threads: 0,
            initial_balance: 1000,
            block_interval_ms: 1000,
            block_max_txs: 1000,
            difficulty_bits: 16,
            seal_threads: 0,
            cluster: None,
            test_hooks: false,
        }
    }
}

impl Config {
    /// Reads a TOML file; keys it does not set keep their defaults; unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_the_keys_it_sets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "chat_addr = \"127.0.0.1:9000\"\nrequests_per_sec = 5\n",
        )
        .unwrap();
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.chat_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.requests_per_sec, 5);
        assert_eq!(config.http_addr, Config::default().http_addr);
        assert_eq!(config.data_dir, Config::default().data_dir);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "chat_adr = \"127.0.0.1:9000\"\n").unwrap();
        let error = Config::from_file(&path).unwrap_err();
        assert!(error.contains("chat_adr"), "{error}");
        std::fs::write(&path, "chat_addr = \"nowhere\"\n").unwrap();
        assert!(
            Config::from_file(&path)
                .unwrap_err()
                .contains("invalid config")
        );
        assert!(
            Config::from_file(&dir.path().join("missing.toml"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
