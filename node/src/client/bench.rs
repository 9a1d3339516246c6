//! `synckit-node bench`: the load generator.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::Client;
use crate::cli::raise_open_files_limit;
use crate::protocol::{ErrorReply, Protocol, Request};

/// `synckit-node bench ...`
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The node's chat address (start it with a high --requests-per-sec).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Use the JSON protocol.
    #[arg(long)]
    json: bool,
    /// Concurrent connections (each logged in as its own user).
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// Messages sent per connection.
    #[arg(short = 'm', long, default_value_t = 200)]
    messages: usize,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 32)]
    size: usize,
}

/// Runs the load generator and prints throughput and latency percentiles.
pub fn bench(args: &BenchArgs) -> ExitCode {
    match run_bench(args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("synckit-node bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(args: &BenchArgs) -> Result<serde_json::Value, String> {
    raise_open_files_limit();
    let protocol = if args.json {
        Protocol::Json
    } else {
        Protocol::Binary
    };
    let run = std::process::id();
    let password = "bench-password";
    let users: Vec<String> = (0..args.connections)
        .map(|i| format!("bench-{run}-{i}"))
        .collect();
    let start_line = Arc::new(Barrier::new(args.connections + 1));
    let mut workers = Vec::new();
    for i in 0..args.connections {
        let (me, to) = (users[i].clone(), users[(i + 1) % users.len()].clone());
        let start_line = Arc::clone(&start_line);
        let (addr, messages, text) = (args.addr, args.messages, "x".repeat(args.size));
        workers.push(std::thread::spawn(
            move || -> Result<(Vec<Duration>, usize), String> {
                let setup = || -> std::io::Result<Result<Client, ErrorReply>> {
                    let mut client = Client::connect(addr, protocol)?;
                    if let Err(e) = client.create_account(&me, password)? {
                        return Ok(Err(e));
                    }
                    Ok(client.login(&me, password)?.map(|_| client))
                };
                let outcome = setup();
                start_line.wait();
                let mut client = outcome
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("setup of {me}: {e}"))?;
                let mut latencies = Vec::with_capacity(messages);
                let mut failed = 0;
                for _ in 0..messages {
                    let sent = Instant::now();
                    let result = client
                        .call(&Request::SendMessage {
                            to: to.clone(),
                            text: text.clone(),
                        })
                        .map_err(|e| e.to_string())?;
                    latencies.push(sent.elapsed());
                    failed += usize::from(result.is_err());
                }
                Ok((latencies, failed))
            },
        ));
    }
    start_line.wait();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for worker in workers {
        let (mut l, f) = worker.join().map_err(|_| "a worker panicked")??;
        latencies.append(&mut l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(json!({
        "protocol": if args.json { "json" } else { "binary" },
        "connections": args.connections,
        "messages": latencies.len(),
        "failed": failed,
        "seconds": elapsed.as_secs_f64(),
        "messages_per_sec": latencies.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
    }))
}
