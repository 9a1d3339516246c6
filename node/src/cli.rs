//! What each subcommand of the binary does.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::Client;
use crate::config::Config;
use crate::protocol::Protocol;
use crate::protocol::{ErrorReply, Reply, Request};
use crate::server;
use crate::service::{self, Service};

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
    let http = crate::http::start(config.http_addr, Arc::clone(&service))
        .map_err(|e| format!("cannot serve HTTP on {}: {e}", config.http_addr))?;
    service::start_snapshots(Arc::clone(&service)).map_err(|e| e.to_string())?;
    stop_on_signal(Arc::clone(&service))?;
    // One machine-readable line on stdout: scripts and tests read the bound addresses from it.
    println!(
        "synckit-node listening chat={chat} http={http} data={}",
        config.data_dir.display()
    );
    let _ = std::io::stdout().flush();
    tracing::info!(%chat, %http, data = %config.data_dir.display(), "node started");
    server::run(listener, service).map_err(|e| e.to_string())
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

/// `synckit-node client ...`
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The node's chat address.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Speak the JSON protocol instead of the binary one.
    #[arg(long)]
    json: bool,
    /// Log in as this user first (needed by every command but create-account).
    #[arg(long, env = "SYNCKIT_USER")]
    user: Option<String>,
    /// The password for --user, and for create-account without one. Prefer the SYNCKIT_PASSWORD
    /// environment variable: a command-line argument is visible to every local user in `ps`.
    #[arg(long, env = "SYNCKIT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Create an account.
    CreateAccount {
        /// The new username.
        username: String,
        /// Its password; without it, SYNCKIT_PASSWORD (or --password) is used, which keeps it
        /// out of `ps`.
        password: Option<String>,
    },
    /// Log in and report unread messages.
    Login,
    /// List accounts matching a wildcard pattern (`*`, `?`).
    List {
        /// Pattern.
        #[arg(default_value = "*")]
        pattern: String,
        /// Accounts per page.
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        /// Follow the cursors through every page (one snapshot).
        #[arg(long)]
        all: bool,
    },
    /// Send a message.
    Send {
        /// Recipient.
        to: String,
        /// Text.
        text: String,
    },
    /// Read undelivered messages (marks them delivered).
    Read {
        /// At most this many.
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// Delete own messages.
    DeleteMessages {
        /// Message ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Delete the logged-in account (uses --password).
    DeleteAccount,
    /// Print live deliveries as they arrive (after one line reporting the login).
    Watch {
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds without a message.
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
}

fn print(value: serde_json::Value) {
    println!("{value}");
    let _ = std::io::stdout().flush();
}

fn outcome(op: &str, result: &Result<Reply, ErrorReply>) -> bool {
    match result {
        Ok(reply) => {
            print(json!({"ok": true, "op": op, "data": reply}));
            true
        }
        Err(error) => {
            print(json!({"ok": false, "op": op, "error": error}));
            // Stdout is for programs; a person running the command sees why it failed here.
            eprintln!(
                "synckit-node client: {op} failed: {} ({})",
                error.message,
                json!(error.code).as_str().unwrap_or("error")
            );
            false
        }
    }
}

/// Runs one client command; exit code 0 when every response was a success.
pub fn client(args: &ClientArgs) -> ExitCode {
    match run_client(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("synckit-node client: {error}");
            ExitCode::from(2)
        }
    }
}

fn run_client(args: &ClientArgs) -> Result<bool, String> {
    let protocol = if args.json {
        Protocol::Json
    } else {
        Protocol::Binary
    };
    let io = |e: std::io::Error| e.to_string();
    // Credentials first: a missing one is reported without touching the node.
    if let ClientCommand::CreateAccount { username, password } = &args.command {
        let Some(password) = password.as_ref().or(args.password.as_ref()) else {
            return Err(
                "create-account needs a password: set SYNCKIT_PASSWORD (or give it as \
                        an argument or with --password, where `ps` shows it)"
                    .into(),
            );
        };
        let mut client = connect(args.addr, protocol)?;
        let result = client.create_account(username, password).map_err(io)?;
        return Ok(outcome("create_account", &result));
    }
    let (Some(user), Some(password)) = (&args.user, &args.password) else {
        return Err(
            "this command needs --user and --password (or SYNCKIT_USER / SYNCKIT_PASSWORD)".into(),
        );
    };
    let mut client = connect(args.addr, protocol)?;
    let login = client.login(user, password).map_err(io)?;
    // `watch` reports its login too: from that line on, deliveries are pushed to it.
    if matches!(
        args.command,
        ClientCommand::Login | ClientCommand::Watch { .. }
    ) || login.is_err()
    {
        let logged_in = outcome("login", &login);
        if !logged_in || matches!(args.command, ClientCommand::Login) {
            return Ok(logged_in);
        }
    }
    let request = match &args.command {
        ClientCommand::CreateAccount { .. } | ClientCommand::Login => unreachable!("handled above"),
        ClientCommand::List {
            pattern,
            page_size,
            all,
        } => {
            let mut cursor = None;
            loop {
                let result = client
                    .call(&Request::ListAccounts {
                        pattern: pattern.clone(),
                        page_size: *page_size,
                        cursor: cursor.take(),
                    })
                    .map_err(io)?;
                let next = match &result {
                    Ok(Reply::Accounts { next_cursor, .. }) => next_cursor.clone(),
                    _ => None,
                };
                if !outcome("list_accounts", &result) {
                    return Ok(false);
                }
                match next {
                    Some(next) if *all => cursor = Some(next),
                    _ => return Ok(true),
                }
            }
        }
        ClientCommand::Send { to, text } => Request::SendMessage {
            to: to.clone(),
            text: text.clone(),
        },
        ClientCommand::Read { limit } => Request::ReadMessages { limit: *limit },
        ClientCommand::DeleteMessages { ids } => Request::DeleteMessages { ids: ids.clone() },
        ClientCommand::DeleteAccount => Request::DeleteAccount {
            password: password.clone(),
        },
        ClientCommand::Watch {
            count,
            timeout_secs,
        } => {
            let timeout = timeout_secs.map(Duration::from_secs);
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                match client.next_push(timeout).map_err(io)? {
                    Some(message) => {
                        print(json!({"push": "deliver", "data": message}));
                        seen += 1;
                    }
                    None => break,
                }
            }
            return Ok(true);
        }
    };
    let op = request.op().name();
    let result = client.call(&request).map_err(io)?;
    Ok(outcome(op, &result))
}

fn connect(addr: SocketAddr, protocol: Protocol) -> Result<Client, String> {
    Client::connect(addr, protocol).map_err(|e| format!("cannot connect to {addr}: {e}"))
}

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
