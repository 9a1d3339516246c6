//! What `synckit-node serve` does (the `client` and `bench` subcommands are in
//! [`crate::client`]).

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;

use crate::config::Config;
use crate::net;
use crate::service::Service;

/// Raises this process's soft limit on open files to its hard limit, so that the connections it
/// may hold are bounded by `--max-connections` and the hard limit, not by a conservative soft
/// default (often 1,024: each connection holds three descriptors in the node, two in a client).
/// Returns the limit now in force, if it could be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit");
            return None;
        }
    };
    if soft >= hard {
        return Some(soft);
    }
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => {
            tracing::info!(from = soft, to = now, "open-files limit raised");
            Some(now)
        }
        Err(error) => {
            tracing::warn!(%error, soft, hard, "cannot raise the open-files limit");
            Some(soft)
        }
    }
}

/// Starts a node and serves until killed.
pub fn serve(config: &Config) -> Result<(), String> {
    raise_open_files_limit();
    let service = Arc::new(Service::open(config).map_err(|e| e.to_string())?);
    let listener = TcpListener::bind(config.chat_addr)
        .map_err(|e| format!("cannot listen on {}: {e}", config.chat_addr))?;
    let chat = listener.local_addr().map_err(|e| e.to_string())?;
    let http = net::http::start(config.http_addr, Arc::clone(&service))
        .map_err(|e| format!("cannot serve HTTP on {}: {e}", config.http_addr))?;
    stop_on_signal(Arc::clone(&service))?;
    // One machine-readable line on stdout: scripts and tests read the bound addresses from it.
    println!(
        "synckit-node listening chat={chat} http={http} data={}",
        config.data_dir.display()
    );
    let _ = std::io::stdout().flush();
    tracing::info!(%chat, %http, data = %config.data_dir.display(), "node started");
    let threads = match config.io_threads {
        // Half the cores: the log, the applier and the hashing pool need the rest (measured on
        // 2 cores: one loop spends 20 % less CPU per command than two, and serves more).
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    };
    net::serve(listener, service, threads).map_err(|e| e.to_string())
}

/// On SIGINT or SIGTERM: make the log durable up to the last record queued (acknowledged
/// changes already are; this adds the "delivered" marks of live pushes, which nobody waits for),
/// then exit. `kill -9` skips this, and those pushes are then offered again by `read_messages`.
fn stop_on_signal(service: Arc<Service>) -> Result<(), String> {
    ctrlc::set_handler(move || {
        tracing::info!("stop signal: syncing the log, then exiting");
        let code = match service.sync_log() {
            Ok(()) => 0,
            Err(error) => {
                tracing::error!(%error, "the log could not be synced before exiting");
                1
            }
        };
        tracing::info!("node stopped");
        std::process::exit(code);
    })
    .map_err(|e| format!("cannot install the stop-signal handler: {e}"))
}
