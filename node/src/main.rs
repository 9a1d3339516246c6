//! The `synckit-node` binary: `serve`, `client`, `chat`, `bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use synckit_node::cli;
use synckit_node::client::{bench, chat, cli as client_cli};
use synckit_node::config::Config;
use synckit_node::raft::Cluster;

#[derive(Parser, Debug)]
#[command(
    name = "synckit-node",
    version,
    about = "A chat node built on sync-kit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node (defaults: chat on 127.0.0.1:7878, HTTP on 127.0.0.1:7879, gRPC on
    /// 127.0.0.1:7880, data in ./synckit-data).
    Serve(Box<ServeArgs>),
    /// Talk to a node from the command line (one request per run, JSON output).
    Client(client_cli::ClientArgs),
    /// A terminal chat client: conversations, live deliveries, accounts, balance and transfers
    /// (`--addr` one address or a cluster's; SYNCKIT_USER / SYNCKIT_PASSWORD log in at start).
    Chat(chat::ChatArgs),
    /// Load-test a node from one event-driven thread: C connections, each with one request in
    /// flight, sending M messages each, binary or JSON.
    Bench(bench::BenchArgs),
    /// Run a cluster on this machine: `cluster up --nodes 5 --dir ./cluster`.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Change a running cluster's members through raft (asks the members' HTTP addresses in
    /// turn until the leader accepts): `admin --http ADDR,... remove-node ID | add-node ID ...`.
    Admin(cli::AdminArgs),
    /// Check a stopped node's chain offline (hash links, Merkle roots, proof of work, every
    /// transaction replayed to the same outputs): prints the height and tip, or names the first
    /// bad block and exits non-zero.
    VerifyChain(VerifyChainArgs),
}

#[derive(Args, Debug)]
struct VerifyChainArgs {
    /// The node's data directory.
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Write a cluster file with free loopback ports and start every member as a child
    /// process; Ctrl-C stops them all.
    Up(cli::ClusterUpArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML file overriding the defaults (flags override it in turn).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Chat address (binary and JSON protocols).
    #[arg(long)]
    chat_addr: Option<SocketAddr>,
    /// HTTP statistics address.
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// gRPC address (default 127.0.0.1:7880).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// A gRPC token expires after this many idle seconds (default 1800).
    #[arg(long)]
    grpc_token_idle_secs: Option<u64>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Maximum concurrent connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Requests per second per client address.
    #[arg(long)]
    requests_per_sec: Option<u32>,
    /// Request burst per client address.
    #[arg(long)]
    request_burst: Option<u32>,
    /// Login attempts per minute per username.
    #[arg(long)]
    logins_per_minute: Option<u32>,
    /// Login attempt burst per username.
    #[arg(long)]
    login_burst: Option<u32>,
    /// Snapshot after this many log records.
    #[arg(long)]
    snapshot_every_records: Option<u64>,
    /// Close a connection that holds part of a frame this many seconds without completing it.
    #[arg(long)]
    frame_timeout_secs: Option<u64>,
    /// Event loop threads serving connections (0: half the cores, at least 1).
    #[arg(long)]
    io_threads: Option<usize>,
    /// Threads applying commands on different mailbox shards in parallel (0: half the cores,
    /// 1 to 4).
    #[arg(long)]
    apply_threads: Option<usize>,
    /// Coins granted to each account created (default 1000; 0 grants nothing).
    #[arg(long)]
    initial_balance: Option<u64>,
    /// The leader seals pooled transactions this often, in milliseconds (default 1000)...
    #[arg(long)]
    block_interval_ms: Option<u64>,
    /// ...or as soon as this many are pooled (default 1000; a block holds at most 960).
    #[arg(long)]
    block_max_txs: Option<usize>,
    /// Proof of work: leading zero bits of a block's hash (default 16; 0 turns it off).
    #[arg(long)]
    difficulty_bits: Option<u32>,
    /// Threads searching nonces when this member seals a block (0: every core).
    #[arg(long)]
    seal_threads: Option<usize>,
    /// The cluster file (TOML, one `[[node]]` table per member): run as the member `--id`,
    /// with that member's addresses and data directory.
    #[arg(long, requires = "id")]
    cluster: Option<PathBuf>,
    /// This member's id in `--cluster`.
    #[arg(long, requires = "cluster")]
    id: Option<u64>,
    /// Join a running cluster (after `admin add-node`): start with no configuration and learn
    /// the voters from the leader's snapshot (never campaign before). Only for a fresh data
    /// directory; a member that has joined restarts without it.
    #[arg(long, requires = "cluster")]
    join: bool,
    /// Fault injection for tests: `POST /test/isolate?peers=1,2` cuts this member's raft links
    /// to those peers (`?peers=` heals); `POST /test/fail-syncs?count=N` fails its raft log's
    /// next N fsyncs.
    #[arg(long, hide = true)]
    test_hooks: bool,
    /// Log filter (tracing's EnvFilter syntax; RUST_LOG wins if set).
    #[arg(long, default_value = "info")]
    log: String,
}

impl ServeArgs {
    fn config(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! flag {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field.clone() {
                    config.$field = value;
                }
            )*};
        }
        flag!(
            chat_addr,
            http_addr,
            grpc_addr,
            grpc_token_idle_secs,
            data_dir,
            max_connections,
            requests_per_sec,
            request_burst,
            logins_per_minute,
            login_burst,
            snapshot_every_records,
            frame_timeout_secs,
            io_threads,
            apply_threads,
            initial_balance,
            block_interval_ms,
            block_max_txs,
            difficulty_bits,
            seal_threads
        );
        if let (Some(path), Some(id)) = (&self.cluster, self.id) {
            let cluster = Cluster::from_file(path, id)?;
            let me = cluster.me();
            config.chat_addr = me.chat_addr;
            config.http_addr = me.http_addr;
            config.data_dir = me.data_dir.clone();
            // `--grpc-addr` (or the config file) first, then the cluster file's; a member with
            // neither takes a free port on its chat address's host (printed on its listening
            // line), since members sharing a machine would all take the default port.
            if config.grpc_addr == Config::default().grpc_addr {
                config.grpc_addr = me
                    .grpc_addr
                    .unwrap_or_else(|| SocketAddr::new(me.chat_addr.ip(), 0));
            }
            config.cluster = Some(Cluster {
                join: self.join,
                ..cluster
            });
        }
        config.test_hooks = self.test_hooks;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging(&args.log);
            let result = args.config().and_then(|config| cli::serve(&config));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("synckit-node: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Client(args) => client_cli::client(&args),
        Command::Chat(args) => chat::chat(&args),
        Command::Cluster(ClusterCommand::Up(args)) => match cli::cluster_up(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("synckit-node: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => bench::bench(&args),
        Command::Admin(args) => cli::admin(&args),
        Command::VerifyChain(args) => {
            match synckit_node::ledger::verify::verify_data_dir(&args.data_dir) {
                Ok(verified) => {
                    println!(
                        "chain verified: height {} tip {} ({} unspent outputs, supply {})",
                        verified.height, verified.tip, verified.utxos, verified.supply
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("synckit-node verify-chain: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
