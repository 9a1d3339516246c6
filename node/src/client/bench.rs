//! `synckit-node bench`: a single-threaded, event-driven load generator, the way redis-benchmark
//! drives redis, so that the node and redis are measured by clients that cost the same.
//!
//! One thread polls C non-blocking connections with mio. Each connection keeps exactly one
//! request in flight (a closed loop): it sends, waits for that request's response, then sends the
//! next. A run has three phases on the same loop:
//!
//! 1. create the accounts (`--users`, one per connection unless told otherwise);
//! 2. log every connection in, connection `i` as account `i mod users` (several connections may
//!    share an account: 10,000 connections need not cost 10,000 Argon2id hashes);
//! 3. the measured phase: every connection sends `--messages` messages of `--size` bytes to the
//!    next account, or with `--op transfer` makes `--messages` transfers of one coin to it (each
//!    account starts with the node's `--initial-balance`, pooled: a transfer spends the change
//!    of the account's last pooled transfer, so none waits for a block).
//!
//! Only the last phase is timed. A latency runs from the moment a request is handed to the socket
//! to the moment its response is parsed. Pushes (the deliveries of the messages sent) are read,
//! counted and dropped. With one `--addr`, a node that closes a connection, stops answering or
//! sends something undecodable ends the run with an error naming the connection; an error
//! *response* to a message counts as `failed` and the loop goes on.
//!
//! With several `--addr` members (a cluster), the generator first finds the leader, the one
//! member that can order writes: it creates the first account through a [`FailoverClient`],
//! which follows `not_leader` answers and skips dead members, and aims every connection at the
//! member that accepted it. From then on each connection follows the leader on its own, the way
//! a [`FailoverClient`] does, in all three phases:
//!
//! - every measured send carries a fresh idempotency key (`Request::keyed_send`), so a send made
//!   again after its answer was lost is stored once;
//! - on `not_leader` naming a leader, the connection is made again to that leader at once (after
//!   a pause if its last move followed a named leader too: two members naming each other must
//!   not make it spin); on `not_leader` without a leader, `unavailable`, or a connection that
//!   closes, resets or cannot be made, it is made again to the next member of the list after a
//!   pause of 20 ms, doubling at each further try up to 500 ms and reset by a usable answer.
//!   The pause is the connection's own deadline on the one poll loop: the other connections go
//!   on meanwhile;
//! - a new connection first logs in again as the connection's account (sessions are local to a
//!   member), then sends the same request again, bytes and key unchanged (a `create_account`
//!   sent again that answers `user_exists` counts as created).
//!
//! Transfers carry an idempotency key like sends, so one sent again pays once.
//!
//! Such a request is not `failed`: it counts once in `messages` when a usable answer comes, and
//! its latency runs from its *first* send (or from when it was issued, if its connection was
//! being made again then) to that answer, so the time a failover takes shows in the latencies
//! (a client waited that long). The report adds `reconnects` (connections made
//! again during the measured phase, failed attempts included) and `retried` (measured messages
//! sent more than once). A run still ends with an error when no member has given a usable answer
//! for two minutes (naming the last problem), when a login on a new connection is refused, or
//! on an undecodable frame. With one address, nothing of this happens: sends carry no key, a
//! dead connection ends the run, and the run is what it always was.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use super::{AddrList, FailoverClient};
use crate::protocol::{
    ErrorCode, ErrorReply, FrameParser, Parse, Protocol, Reply, Request, ServerFrame,
};

/// A run gives up when the node (or, with several members, every member) has given no usable
/// answer for this long.
const STALL: Duration = Duration::from_secs(120);
/// With several members: the first pause before a connection is made again after it died or
/// was answered `unavailable` or `not_leader` without a leader; it doubles at each further try
/// up to [`MAX_BACKOFF`] and is reset by a usable answer (as [`FailoverClient`]'s default).
const BACKOFF: Duration = Duration::from_millis(20);
/// The longest such pause.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Connections whose TCP handshake may be under way at once: more would overflow the node's
/// accept backlog (typically 4,096) and cost one-second SYN retransmissions.
const MAX_CONNECTING: usize = 1024;
/// Bytes read from a socket at a time (one buffer shared by every connection).
const READ_CHUNK: usize = 64 * 1024;
/// Every account's password.
pub const PASSWORD: &str = "bench-password";
/// Open files the process needs besides its connections (stdio, the poll instance, ...).
const SPARE_FILES: u64 = 32;

/// `synckit-node bench ...`
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// The node's chat address (start it with a high --requests-per-sec, and with a high
    /// --login-burst when connections share accounts), or a cluster's members' chat addresses
    /// separated by commas: every connection then goes to the leader, found by following
    /// `not_leader` from the first member that answers, and follows the leader (and moves past
    /// dead members) when it changes during the run; sends then carry idempotency keys.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub addr: AddrList,
    /// Use the JSON protocol.
    #[arg(long)]
    pub json: bool,
    /// Concurrent connections, each with one request in flight.
    #[arg(short = 'c', long, default_value_t = 50)]
    pub connections: usize,
    /// Messages sent per connection.
    #[arg(short = 'm', long, default_value_t = 200)]
    pub messages: usize,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// What the measured phase does: `send` messages of --size bytes, or `transfer` one coin
    /// per request (the ledger's `transfer`, to the same next account). Each account starts
    /// with the node's --initial-balance (default 1000) and receives one coin per transfer
    /// from the connection before it; transfers chain on pooled outputs, so they need no
    /// block between them. Each transfer has an idempotency key: with several --addr, one
    /// sent again after a move pays once.
    #[arg(long, value_enum, default_value_t = BenchOp::Send)]
    pub op: BenchOp,
    /// Accounts to create, from 1 to one per connection (the default); connection i logs in
    /// as account i mod users and sends to account (i + 1) mod users. The node pushes a message
    /// to every connection logged in as its recipient: with fewer accounts than connections,
    /// each message costs connections/users pushes (see `pushes` in the report).
    #[arg(long)]
    pub users: Option<usize>,
}

/// What the measured phase of a run sends.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BenchOp {
    /// `send_message` of --size bytes.
    #[default]
    Send,
    /// `transfer` of one coin.
    Transfer,
}

impl BenchOp {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Send => "send",
            BenchOp::Transfer => "transfer",
        }
    }
}

impl BenchArgs {
    fn protocol(&self) -> Protocol {
        if self.json {
            Protocol::Json
        } else {
            Protocol::Binary
        }
    }

    fn users(&self) -> usize {
        self.users
            .unwrap_or(self.connections)
            .clamp(1, self.connections.max(1))
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The protocol spoken.
    pub protocol: Protocol,
    /// What the measured phase sent.
    pub op: BenchOp,
    /// Connections.
    pub connections: usize,
    /// Accounts they logged in as.
    pub users: usize,
    /// Those accounts' names, account i at i (not in the JSON report).
    pub accounts: Vec<String>,
    /// Requests of the measured phase (messages or transfers) answered, successes and
    /// failures.
    pub messages: usize,
    /// Those answered with an error.
    pub failed: usize,
    /// Live deliveries received during the measured phase (one per message when every account
    /// has one connection; connections/users per message when they share accounts).
    pub pushes: usize,
    /// Length of the measured phase.
    pub elapsed: Duration,
    /// Every message's latency, sorted.
    pub latencies: Vec<Duration>,
    /// With several members, during the measured phase: connections made again (after one
    /// died, or answered `not_leader` or `unavailable`), failed attempts included. Always 0
    /// with one address.
    pub reconnects: usize,
    /// With several members, during the measured phase: messages (among `messages`) that were
    /// sent more than once, with the same idempotency key, before their answer came. Always 0
    /// with one address.
    pub retried: usize,
}

impl Report {
    /// The latency below which a fraction `p` of the messages were answered.
    pub fn percentile(&self, p: f64) -> Duration {
        let last = self.latencies.len().saturating_sub(1);
        let at = ((self.latencies.len() as f64 * p) as usize).min(last);
        self.latencies.get(at).copied().unwrap_or_default()
    }

    /// The report `synckit-node bench` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let seconds = self.elapsed.as_secs_f64();
        json!({
            "protocol": match self.protocol {
                Protocol::Binary => "binary",
                Protocol::Json => "json",
            },
            "op": self.op.name(),
            "connections": self.connections,
            "users": self.users,
            "messages": self.messages,
            "failed": self.failed,
            "pushes": self.pushes,
            "reconnects": self.reconnects,
            "retried": self.retried,
            "seconds": seconds,
            "messages_per_sec": if seconds > 0.0 { self.messages as f64 / seconds } else { 0.0 },
            "p50_us": us(self.percentile(0.50)),
            "p99_us": us(self.percentile(0.99)),
            "p999_us": us(self.percentile(0.999)),
            "max_us": us(self.latencies.last().copied().unwrap_or_default()),
        })
    }
}

/// Runs the load generator and prints its report as one JSON line.
pub fn bench(args: &BenchArgs) -> ExitCode {
    match run(args) {
        Ok(report) => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("synckit-node bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the three phases against the node at `args.addr` and returns what the last one measured.
pub fn run(args: &BenchArgs) -> Result<Report, String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let needed = args.connections as u64 + SPARE_FILES;
    if let Some(limit) = crate::cli::raise_open_files_limit()
        && limit < needed
    {
        return Err(format!(
            "{} connections need about {needed} open files; the limit is {limit} \
             (raise the hard limit, e.g. `ulimit -Hn`)",
            args.connections
        ));
    }
    let users = args.users();
    // Account names unique to this run on a node that may have seen others: the process id, and
    // a count of the runs this process made (tests run several).
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let run_tag = format!(
        "{}.{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let username = |account: usize| format!("bench-{run_tag}-{account}");
    let (target, cluster) = match &args.addr.0[..] {
        [] => return Err("--addr needs at least one address".into()),
        [addr] => (*addr, false),
        _ => (find_leader(args, &username(0))?, true),
    };
    let members = cluster.then(|| args.addr.0.clone());
    let mut generator = Generator::connect(target, args.protocol(), args.connections, members)
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;

    generator.run_phase(
        // Account 0 exists already when finding the leader created it.
        |i| usize::from(i < users && !(cluster && i == 0)),
        |i| Request::CreateAccount {
            username: username(i),
            password: PASSWORD.into(),
        },
        |i, answer| match &answer.result {
            // Sent again after a lost answer: the first try created it.
            Err(error) if answer.retried && error.code == ErrorCode::UserExists => Ok(()),
            _ => setup_outcome("create_account", &username(i), answer),
        },
    )?;
    generator.run_phase(
        |_| 1,
        |i| Request::Login {
            username: username(i % users),
            password: PASSWORD.into(),
        },
        |i, result| setup_outcome("login", &username(i % users), result),
    )?;

    let text = "x".repeat(args.size);
    let mut latencies = Vec::with_capacity(args.connections.saturating_mul(args.messages));
    let mut failed = 0;
    generator.pushes = 0;
    if let Some(follow) = &mut generator.follow {
        follow.reconnects = 0;
        follow.retried = 0;
    }
    let started = Instant::now();
    generator.run_phase(
        |_| args.messages,
        |i| {
            let to = username((i + 1) % users);
            if args.op == BenchOp::Transfer {
                // Keyed, so that one sent again after a move pays once.
                Request::keyed_transfer(&to, 1)
            } else if cluster {
                // Sent again after a move, it is stored once.
                Request::keyed_send(&to, &text)
            } else {
                Request::SendMessage {
                    to,
                    text: text.clone(),
                    key: None,
                }
            }
        },
        |_, answer| {
            latencies.push(answer.latency);
            failed += usize::from(answer.result.is_err());
            Ok(())
        },
    )?;
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let (reconnects, retried) = generator
        .follow
        .as_ref()
        .map_or((0, 0), |follow| (follow.reconnects, follow.retried));
    Ok(Report {
        protocol: args.protocol(),
        op: args.op,
        connections: args.connections,
        users,
        accounts: (0..users).map(username).collect(),
        messages: latencies.len(),
        failed,
        pushes: generator.pushes,
        elapsed,
        latencies,
        reconnects,
        retried,
    })
}

/// The leader's address among `args.addr`: the member where creating account `first` (the
/// run's first account, needed anyway) succeeds, after following `not_leader` answers and
/// skipping dead members.
fn find_leader(args: &BenchArgs, first: &str) -> Result<SocketAddr, String> {
    let members = args.addr.to_strings();
    let mut client = FailoverClient::connect(&members, args.protocol())
        .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
    let created = client
        .create_account(first, PASSWORD)
        .map_err(|e| format!("setup: finding the leader among {}: {e}", args.addr))?;
    setup_outcome(
        "create_account",
        first,
        Answer {
            latency: Duration::ZERO,
            result: created,
            retried: false,
        },
    )?;
    let leader = client
        .connected_to()
        .expect("a client that answered is connected");
    leader
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("the leader's address {leader:?} does not resolve"))
}

/// A setup request must succeed: the measured phase would mean nothing without it.
fn setup_outcome(op: &str, user: &str, answer: Answer) -> Result<(), String> {
    let Err(error) = answer.result else {
        return Ok(());
    };
    let hint = match error.code {
        ErrorCode::RateLimited => {
            " (start the node with higher --requests-per-sec/--request-burst, and \
             --logins-per-minute/--login-burst when connections share accounts)"
        }
        ErrorCode::Internal => " (is the node at its --max-connections?)",
        _ => "",
    };
    Err(format!("setup: {op} of {user} failed: {error}{hint}"))
}

/// A response to one of the generator's requests.
struct Answer {
    /// From handing the request to the socket (the first time, when it was sent again) to
    /// parsing its response.
    latency: Duration,
    /// What the node said.
    result: Result<Reply, ErrorReply>,
    /// Whether the request was sent more than once (after a lost connection or a move; only
    /// when following a cluster).
    retried: bool,
}

/// One connection's state.
struct Connection {
    stream: TcpStream,
    /// Whether the TCP handshake has completed.
    connected: bool,
    /// The request being written, and how much of it is written.
    outgoing: Vec<u8>,
    written: usize,
    /// Bytes received and not yet parsed, and their parser.
    received: Vec<u8>,
    parser: FrameParser,
    /// The id of the request awaiting its response, and when it was handed to the socket.
    in_flight: Option<(u32, Instant)>,
    next_id: u32,
    /// Requests this connection still has to complete in the current phase.
    left: usize,
}

/// What handling a connection's readiness produced.
enum Progress {
    /// Nothing finished.
    Pending,
    /// The request in flight was answered.
    Answered(Answer),
    /// The connection is dead (closed, reset, failed): why.
    Lost(String),
}

/// Where a connection of a generator that follows the leader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Connected (and logged in again if it had to be): requests go out as they come.
    Up,
    /// Given up; a new connection is made at this time.
    Waiting(Instant),
    /// A new connection's handshake is under way.
    Connecting,
    /// A new connection's login (as the account it was logged in as) is in flight.
    LoggingIn,
}

/// The failover state of one connection (several `--addr` only).
struct Link {
    state: LinkState,
    /// The member it is connected (or connecting, or about to connect) to.
    addr: SocketAddr,
    /// The member of the list to try after `addr` when no leader is named.
    next_member: usize,
    /// The next pause before a reconnection; doubles up to [`MAX_BACKOFF`], back to
    /// [`BACKOFF`] at every usable answer.
    backoff: Duration,
    /// Whether the last move followed a named leader (two members naming each other must not
    /// make a connection spin).
    redirected: bool,
    /// The login that succeeded on this connection, sent first on every new one.
    login: Option<Request>,
    /// The current request, encoded, its id and when it was first handed to a socket, kept
    /// until it has a usable answer.
    saved: Vec<u8>,
    saved_id: u32,
    first_sent: Instant,
    /// Whether `saved` awaits a usable answer, whether it was handed to a socket, whether it
    /// was handed to more than one.
    pending: bool,
    sent: bool,
    retried: bool,
    /// When `saved` is a login: that login, kept as `login` once it succeeds.
    saved_login: Option<Request>,
}

/// What following the leader takes (several `--addr` only).
struct Follow {
    members: Vec<SocketAddr>,
    /// One per connection.
    links: Vec<Link>,
    /// Reconnections waiting for their time, earliest first.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Connections made again since the counters were reset (see [`Report::reconnects`]).
    reconnects: usize,
    /// Requests answered after being sent more than once (see [`Report::retried`]).
    retried: usize,
    /// Why a connection was last given up, for the error of a run that stalls.
    last_problem: Option<String>,
}

/// C connections on one poll instance.
struct Generator {
    poll: Poll,
    protocol: Protocol,
    connections: Vec<Connection>,
    /// Shared read buffer.
    scratch: Vec<u8>,
    /// Live deliveries received (and dropped).
    pushes: usize,
    /// Set with several `--addr`: connections follow the leader. `None`: a connection that dies
    /// ends the run, and nothing of the failover machinery runs.
    follow: Option<Follow>,
}

impl Generator {
    /// Opens `count` connections to `addr`, at most [`MAX_CONNECTING`] handshakes at a time, and
    /// returns once every one is established. With `members` (a cluster's, `addr` among them or
    /// its leader), the connections follow the leader from then on, and one whose handshake
    /// fails is made again later instead of ending the run.
    fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        count: usize,
        members: Option<Vec<SocketAddr>>,
    ) -> io::Result<Generator> {
        let follow = members.map(|members| {
            let next_member = members
                .iter()
                .position(|member| *member == addr)
                .map_or(0, |at| (at + 1) % members.len());
            Follow {
                links: (0..count)
                    .map(|_| Link {
                        state: LinkState::Connecting,
                        addr,
                        next_member,
                        backoff: BACKOFF,
                        redirected: false,
                        login: None,
                        saved: Vec::new(),
                        saved_id: 0,
                        first_sent: Instant::now(),
                        pending: false,
                        sent: false,
                        retried: false,
                        saved_login: None,
                    })
                    .collect(),
                members,
                timers: BinaryHeap::new(),
                reconnects: 0,
                retried: 0,
                last_problem: None,
            }
        });
        let mut generator = Generator {
            poll: Poll::new()?,
            protocol,
            connections: Vec::with_capacity(count),
            scratch: vec![0; READ_CHUNK],
            pushes: 0,
            follow,
        };
        let mut events = Events::with_capacity(1024);
        let mut established = 0;
        let mut last_progress = Instant::now();
        while established < count {
            let connecting = generator.connections.len() - established;
            for _ in 0..MAX_CONNECTING.saturating_sub(connecting) {
                if generator.connections.len() == count {
                    break;
                }
                let index = generator.connections.len();
                let mut stream = TcpStream::connect(addr)?;
                generator.poll.registry().register(
                    &mut stream,
                    Token(index),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                generator.connections.push(Connection {
                    stream,
                    connected: false,
                    outgoing: Vec::new(),
                    written: 0,
                    received: Vec::new(),
                    parser: FrameParser::new(protocol),
                    in_flight: None,
                    next_id: 1,
                    left: 0,
                });
            }
            generator.poll_once(&mut events, last_progress, None)?;
            for event in events.iter() {
                let index = event.token().0;
                let Some(connection) = generator.connections.get_mut(index) else {
                    continue;
                };
                if connection.connected
                    || generator
                        .follow
                        .as_ref()
                        .is_some_and(|follow| follow.links[index].state != LinkState::Connecting)
                {
                    continue;
                }
                let handshake = match connection.stream.take_error() {
                    Ok(Some(error)) | Err(error) => Err(error),
                    Ok(None) => connection.stream.peer_addr(),
                };
                match handshake {
                    Ok(_) => {
                        connection.stream.set_nodelay(true)?;
                        connection.connected = true;
                        if let Some(follow) = &mut generator.follow {
                            follow.links[index].state = LinkState::Up;
                        }
                        established += 1;
                        last_progress = Instant::now();
                    }
                    // Not yet: a spurious wake-up, the handshake goes on.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) if generator.follow.is_some() => {
                        // Made again by the first phase's loop.
                        generator.lose(index, format!("cannot connect: {e}"), None);
                        established += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(generator)
    }

    /// Waits for readiness, or until `wake`; an error if nothing has progressed for [`STALL`].
    fn poll_once(
        &mut self,
        events: &mut Events,
        last_progress: Instant,
        wake: Option<Instant>,
    ) -> io::Result<()> {
        let mut left = STALL.saturating_sub(last_progress.elapsed());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the node made no progress for {STALL:?}"),
            ));
        }
        if let Some(wake) = wake {
            left = left.min(wake.saturating_duration_since(Instant::now()));
        }
        match self.poll.poll(events, Some(left)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            other => other,
        }
    }

    /// Runs one phase: connection `i` completes `count(i)` requests, `request(i)` each, one at a
    /// time; `answered(i, answer)` sees every response and may end the run with an error.
    ///
    /// When following the leader, `answered` sees only usable answers: a `not_leader` or
    /// `unavailable` answer, or a dead connection, moves the connection and sends the request
    /// again there.
    fn run_phase(
        &mut self,
        count: impl Fn(usize) -> usize,
        request: impl Fn(usize) -> Request,
        mut answered: impl FnMut(usize, Answer) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut active = 0;
        for index in 0..self.connections.len() {
            let left = count(index);
            self.connections[index].left = left;
            if left > 0 {
                active += 1;
                self.start_request(index, &request(index))?;
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut last_progress = Instant::now();
        while active > 0 {
            let wake = self.follow.as_ref().and_then(Follow::next_timer);
            self.poll_once(&mut events, last_progress, wake)
                .map_err(|e| self.stalled(e, active))?;
            if self.follow.is_some() {
                self.fire_timers();
            }
            for event in events.iter() {
                let index = event.token().0;
                let answer = match self.on_ready(index)? {
                    Progress::Pending => continue,
                    Progress::Answered(answer) => answer,
                    Progress::Lost(why) => return Err(format!("connection {index}: {why}")),
                };
                last_progress = Instant::now();
                answered(index, answer)?;
                let connection = &mut self.connections[index];
                connection.left -= 1;
                if connection.left > 0 {
                    self.start_request(index, &request(index))?;
                } else {
                    active -= 1;
                }
            }
        }
        Ok(())
    }

    /// The error of a phase that stopped progressing.
    fn stalled(&self, error: io::Error, active: usize) -> String {
        match &self.follow {
            None => format!("{error} ({active} connections still waiting)"),
            Some(follow) if error.kind() == io::ErrorKind::TimedOut => format!(
                "no member of {} gave a usable answer for {STALL:?} ({active} connections \
                 still waiting; last problem: {})",
                AddrList(follow.members.clone()),
                follow.last_problem.as_deref().unwrap_or("none")
            ),
            Some(_) => format!("{error} ({active} connections still waiting)"),
        }
    }

    /// Encodes a request on connection `index` and writes what the socket takes now (when
    /// following the leader and the connection is being made again, it waits for that).
    fn start_request(&mut self, index: usize, request: &Request) -> Result<(), String> {
        let protocol = self.protocol;
        let connection = &mut self.connections[index];
        let id = connection.next_id;
        connection.next_id = connection.next_id.wrapping_add(1);
        let now = Instant::now();
        if let Some(follow) = &mut self.follow {
            let link = &mut follow.links[index];
            link.saved.clear();
            protocol.encode_request_into(id, request, &mut link.saved);
            link.saved_id = id;
            link.first_sent = now;
            link.pending = true;
            link.sent = false;
            link.retried = false;
            link.saved_login = matches!(request, Request::Login { .. }).then(|| request.clone());
            if link.state == LinkState::Up {
                self.send_saved(index);
            }
            return Ok(());
        }
        connection.outgoing.clear();
        connection.written = 0;
        protocol.encode_request_into(id, request, &mut connection.outgoing);
        connection.in_flight = Some((id, now));
        flush(connection).map_err(|e| format!("connection {index}: {e}"))
    }

    /// Handles readiness on connection `index`: writes what is pending, reads what arrived, and
    /// returns the response to the request in flight if it is among it. When following the
    /// leader, also moves the connection along (handshakes, logins, `not_leader`, deaths) and
    /// returns only usable answers.
    fn on_ready(&mut self, index: usize) -> Result<Progress, String> {
        let Some(follow) = &self.follow else {
            return self.read_ready(index);
        };
        let Some(link) = follow.links.get(index) else {
            return Ok(Progress::Pending);
        };
        match link.state {
            LinkState::Waiting(_) => return Ok(Progress::Pending),
            LinkState::Connecting => {
                self.on_handshake(index);
                return Ok(Progress::Pending);
            }
            LinkState::Up | LinkState::LoggingIn => {}
        }
        let mut answer = match self.read_ready(index)? {
            Progress::Pending => return Ok(Progress::Pending),
            Progress::Lost(why) => {
                self.lose(index, why, None);
                return Ok(Progress::Pending);
            }
            Progress::Answered(answer) => answer,
        };
        let follow = self.follow.as_mut().expect("following");
        let link = &mut follow.links[index];
        if let Err(error) = &answer.result
            && matches!(error.code, ErrorCode::NotLeader | ErrorCode::Unavailable)
        {
            let leader = error.leader().and_then(|leader| leader.parse().ok());
            let why = error.to_string();
            self.lose(index, why, leader);
            return Ok(Progress::Pending);
        }
        if link.state == LinkState::LoggingIn {
            if let Err(error) = answer.result {
                return Err(format!(
                    "connection {index}: logging in again on {} failed: {error}",
                    link.addr
                ));
            }
            link.state = LinkState::Up;
            self.send_saved(index);
            return Ok(Progress::Pending);
        }
        // A usable answer to the request of the phase.
        link.backoff = BACKOFF;
        link.redirected = false;
        link.pending = false;
        if answer.result.is_ok()
            && let Some(login) = link.saved_login.take()
        {
            link.login = Some(login);
        }
        answer.retried = link.retried;
        follow.retried += usize::from(link.retried);
        Ok(Progress::Answered(answer))
    }

    /// Writes what is pending on connection `index` and reads what arrived; returns the
    /// response to the request in flight if it is among it.
    fn read_ready(&mut self, index: usize) -> Result<Progress, String> {
        let fail = |what: String| format!("connection {index}: {what}");
        let Some(connection) = self.connections.get_mut(index) else {
            return Ok(Progress::Pending);
        };
        if let Err(e) = flush(connection) {
            return Ok(Progress::Lost(e.to_string()));
        }
        // Edge-triggered: read until the socket is drained.
        loop {
            match connection.stream.read(&mut self.scratch) {
                Ok(0) => {
                    return Ok(Progress::Lost(format!(
                        "the node closed the connection{}",
                        match connection.in_flight {
                            Some((id, _)) => format!(" while request {id} was in flight"),
                            None => String::new(),
                        }
                    )));
                }
                Ok(n) => connection.received.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(Progress::Lost(e.to_string())),
            }
        }
        loop {
            match connection.parser.parse_server_frame(&connection.received) {
                Parse::Incomplete => return Ok(Progress::Pending),
                Parse::Skip(n) => {
                    connection.received.drain(..n);
                }
                Parse::Frame { consumed, decoded } => {
                    connection.received.drain(..consumed);
                    let frame =
                        decoded.map_err(|bad| fail(format!("undecodable frame: {}", bad.error)))?;
                    let ServerFrame::Response(response) = frame else {
                        // A delivery of a message sent by another connection: counted, dropped.
                        self.pushes += 1;
                        continue;
                    };
                    match connection.in_flight.take() {
                        Some((id, sent)) if id == response.id => {
                            // One request in flight: nothing can follow its response but pushes,
                            // which the next call reads.
                            return Ok(Progress::Answered(Answer {
                                latency: sent.elapsed(),
                                result: response.result,
                                retried: false,
                            }));
                        }
                        expected => {
                            return Err(fail(format!(
                                "response to request {} while {}",
                                response.id,
                                match expected {
                                    Some((id, _)) => format!("waiting for {id}"),
                                    None => "no request was in flight".into(),
                                }
                            )));
                        }
                    }
                }
                Parse::Fatal(bad) => return Err(fail(format!("unreadable stream: {}", bad.error))),
            }
        }
    }

    // ----- following the leader (several `--addr` only) -----

    /// Gives connection `index` up because of `why`, and makes it again: at once to `leader`
    /// when one is named (unless the last move followed a named leader too), else to the next
    /// member of the list after a pause.
    fn lose(&mut self, index: usize, why: String, leader: Option<SocketAddr>) {
        let follow = self.follow.as_mut().expect("following");
        let connection = &mut self.connections[index];
        // Deregistered so that a dead socket wakes nobody; closed when replaced.
        let _ = self.poll.registry().deregister(&mut connection.stream);
        connection.in_flight = None;
        let link = &mut follow.links[index];
        follow.last_problem = Some(format!("connection {index}, {}: {why}", link.addr));
        let pause = match leader {
            Some(leader) if leader != link.addr => {
                let pause = link.redirected;
                link.redirected = true;
                link.addr = leader;
                pause
            }
            // No leader named, or a member naming itself (a stale view): another may know.
            _ => {
                link.redirected = false;
                link.addr = follow.members[link.next_member % follow.members.len()];
                true
            }
        };
        if let Some(at) = follow.members.iter().position(|m| *m == link.addr) {
            link.next_member = (at + 1) % follow.members.len();
        }
        if pause {
            let at = Instant::now() + link.backoff;
            link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
            link.state = LinkState::Waiting(at);
            follow.timers.push(Reverse((at, index)));
        } else {
            self.reconnect(index);
        }
    }

    /// Starts the reconnections that are due.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        let follow = self.follow.as_mut().expect("following");
        while let Some(&Reverse((at, index))) = follow.timers.peek()
            && at <= now
        {
            follow.timers.pop();
            if follow.links[index].state == LinkState::Waiting(at) {
                due.push(index);
            }
        }
        for index in due {
            self.reconnect(index);
        }
    }

    /// Starts a new connection for `index` to its link's member.
    fn reconnect(&mut self, index: usize) {
        let follow = self.follow.as_mut().expect("following");
        follow.reconnects += 1;
        let link = &mut follow.links[index];
        let addr = link.addr;
        link.state = LinkState::Connecting;
        let stream = TcpStream::connect(addr).and_then(|mut stream| {
            self.poll.registry().register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match stream {
            Ok(stream) => {
                let connection = &mut self.connections[index];
                connection.stream = stream;
                connection.connected = false;
                connection.outgoing.clear();
                connection.written = 0;
                connection.received.clear();
                connection.parser = FrameParser::new(self.protocol);
                connection.in_flight = None;
            }
            Err(e) => self.lose(index, format!("cannot connect: {e}"), None),
        }
    }

    /// Readiness of a connection being made again: once it is established, logs in again (or
    /// sends the request at once if the connection never logged in).
    fn on_handshake(&mut self, index: usize) {
        let connection = &mut self.connections[index];
        let handshake = match connection.stream.take_error() {
            Ok(Some(error)) | Err(error) => Err(error),
            Ok(None) => connection.stream.peer_addr(),
        };
        match handshake {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return self.lose(index, format!("cannot connect: {e}"), None),
        }
        if let Err(e) = connection.stream.set_nodelay(true) {
            return self.lose(index, e.to_string(), None);
        }
        connection.connected = true;
        let follow = self.follow.as_mut().expect("following");
        let link = &mut follow.links[index];
        let Some(login) = &link.login else {
            link.state = LinkState::Up;
            return self.send_saved(index);
        };
        link.state = LinkState::LoggingIn;
        let id = connection.next_id;
        connection.next_id = connection.next_id.wrapping_add(1);
        connection.outgoing.clear();
        connection.written = 0;
        self.protocol
            .encode_request_into(id, login, &mut connection.outgoing);
        connection.in_flight = Some((id, Instant::now()));
        if let Err(e) = flush(connection) {
            self.lose(index, e.to_string(), None);
        }
    }

    /// Hands connection `index`'s saved request, if it has one, to its (up) connection.
    fn send_saved(&mut self, index: usize) {
        let follow = self.follow.as_mut().expect("following");
        let link = &mut follow.links[index];
        if !link.pending {
            return;
        }
        link.retried |= link.sent;
        link.sent = true;
        let connection = &mut self.connections[index];
        connection.outgoing.clone_from(&link.saved);
        connection.written = 0;
        connection.in_flight = Some((link.saved_id, link.first_sent));
        if let Err(e) = flush(connection) {
            self.lose(index, e.to_string(), None);
        }
    }
}

impl Follow {
    /// When the earliest reconnection is due.
    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }
}

/// Writes what the socket takes of the pending request; the rest waits for writability.
fn flush(connection: &mut Connection) -> io::Result<()> {
    while connection.written < connection.outgoing.len() {
        match connection
            .stream
            .write(&connection.outgoing[connection.written..])
        {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => connection.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
