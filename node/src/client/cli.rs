//! `synckit-node client`: one request per run (after a login when it needs one), one JSON line
//! per response on stdout, a readable reason on stderr; exit code 0 when every response was a
//! success, 1 when the node refused, 2 when the client gave up.
//!
//! `--addr` takes one address or a cluster's members separated by commas; the requests go
//! through a [`FailoverClient`], which follows `not_leader` and moves past dead members (logging
//! in again) until its deadline.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{AddrList, FailoverClient};
use crate::protocol::{ErrorReply, Hash32, Protocol, Reply, Request};

/// `synckit-node client ...`
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The node's chat address, or a cluster's members' chat addresses separated by commas
    /// (tried in order; the client follows the leader and moves past dead members on its own).
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: AddrList,
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
    /// The account's coins: `confirmed` (in sealed blocks) and `pending` (the net effect of
    /// pooled transactions).
    Balance,
    /// The account's spendable outputs, confirmed ones first.
    Utxos,
    /// Pay AMOUNT coins to TO; prints the pooled transaction's id. Carries a fresh idempotency
    /// key, so that sent again after a lost answer it pays once.
    Transfer {
        /// Payee.
        to: String,
        /// Coins.
        amount: u64,
    },
    /// A transaction, pooled or sealed (`block` is null while it is pooled).
    Tx {
        /// Its id: 64 hex digits.
        #[arg(value_parser = parse_txid)]
        txid: Hash32,
    },
    /// A sealed block.
    Block {
        /// Its height (1 is the first block).
        height: u64,
    },
    /// The chain's height, tip, mempool size, difficulty and supply.
    Chain,
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

/// A TXID argument: 64 hex digits, or a usage error saying so.
fn parse_txid(text: &str) -> Result<Hash32, String> {
    Hash32::from_hex(text.trim()).map_err(|error| error.message)
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
        let mut client = connect(&args.addr, protocol)?;
        let result = client.create_account(username, password).map_err(io)?;
        return Ok(outcome("create_account", &result));
    }
    let (Some(user), Some(password)) = (&args.user, &args.password) else {
        return Err(
            "this command needs --user and --password (or SYNCKIT_USER / SYNCKIT_PASSWORD)".into(),
        );
    };
    let mut client = connect(&args.addr, protocol)?;
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
            key: Some(super::idempotency_key()),
        },
        ClientCommand::Read { limit } => Request::ReadMessages { limit: *limit },
        ClientCommand::DeleteMessages { ids } => Request::DeleteMessages { ids: ids.clone() },
        ClientCommand::DeleteAccount => Request::DeleteAccount {
            password: password.clone(),
        },
        ClientCommand::Balance => Request::GetBalance {},
        ClientCommand::Utxos => Request::ListUtxos {},
        ClientCommand::Transfer { to, amount } => Request::keyed_transfer(to, *amount),
        ClientCommand::Tx { txid } => Request::GetTransaction { txid: *txid },
        ClientCommand::Block { height } => Request::GetBlock { height: *height },
        ClientCommand::Chain => Request::ChainInfo {},
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

fn connect(addrs: &AddrList, protocol: Protocol) -> Result<FailoverClient, String> {
    // The error names every address and why it failed ("cannot connect to any of ...").
    FailoverClient::connect(&addrs.to_strings(), protocol).map_err(|e| e.to_string())
}
