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
//!    next account.
//!
//! Only the last phase is timed. A latency runs from the moment a request is handed to the socket
//! to the moment its response is parsed. Pushes (the deliveries of the messages sent) are read,
//! counted and dropped. A node that closes a connection, stops answering or sends something undecodable
//! ends the run with an error naming the connection; an error *response* to a message counts as
//! `failed` and the loop goes on.
//!
//! With several `--addr` members (a cluster), the generator first finds the leader, the one
//! member that can order writes: it creates the first account through a [`FailoverClient`],
//! which follows `not_leader` answers and skips dead members, and aims every connection at the
//! member that accepted it. It does not follow a leader change during the run: after one, the
//! old leader's `not_leader` answers count as `failed` (and a dead leader ends the run), so a
//! report of a clean run is a report on one leader. With one address, nothing of this happens:
//! the run is what it always was.

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

/// A run gives up when the node has answered nothing for this long.
const STALL: Duration = Duration::from_secs(120);
/// Connections whose TCP handshake may be under way at once: more would overflow the node's
/// accept backlog (typically 4,096) and cost one-second SYN retransmissions.
const MAX_CONNECTING: usize = 1024;
/// Bytes read from a socket at a time (one buffer shared by every connection).
const READ_CHUNK: usize = 64 * 1024;
/// Every account's password.
const PASSWORD: &str = "bench-password";
/// Open files the process needs besides its connections (stdio, the poll instance, ...).
const SPARE_FILES: u64 = 32;

/// `synckit-node bench ...`
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// The node's chat address (start it with a high --requests-per-sec, and with a high
    /// --login-burst when connections share accounts), or a cluster's members' chat addresses
    /// separated by commas: every connection then goes to the leader, found by following
    /// `not_leader` from the first member that answers.
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
    /// Accounts to create, from 1 to one per connection (the default); connection i logs in
    /// as account i mod users and sends to account (i + 1) mod users. The node pushes a message
    /// to every connection logged in as its recipient: with fewer accounts than connections,
    /// each message costs connections/users pushes (see `pushes` in the report).
    #[arg(long)]
    pub users: Option<usize>,
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
    /// Connections.
    pub connections: usize,
    /// Accounts they logged in as.
    pub users: usize,
    /// Messages answered (successes and failures).
    pub messages: usize,
    /// Messages answered with an error.
    pub failed: usize,
    /// Live deliveries received during the measured phase (one per message when every account
    /// has one connection; connections/users per message when they share accounts).
    pub pushes: usize,
    /// Length of the measured phase.
    pub elapsed: Duration,
    /// Every message's latency, sorted.
    pub latencies: Vec<Duration>,
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
            "connections": self.connections,
            "users": self.users,
            "messages": self.messages,
            "failed": self.failed,
            "pushes": self.pushes,
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
    let (target, first_created) = match &args.addr.0[..] {
        [] => return Err("--addr needs at least one address".into()),
        [addr] => (*addr, false),
        _ => (find_leader(args, &username(0))?, true),
    };
    let mut generator = Generator::connect(target, args.protocol(), args.connections)
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;

    generator.run_phase(
        // Account 0 exists already when finding the leader created it.
        |i| usize::from(i < users && !(first_created && i == 0)),
        |i| Request::CreateAccount {
            username: username(i),
            password: PASSWORD.into(),
        },
        |i, result| setup_outcome("create_account", &username(i), result),
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
    let started = Instant::now();
    generator.run_phase(
        |_| args.messages,
        |i| Request::SendMessage {
            to: username((i + 1) % users),
            text: text.clone(),
            key: None,
        },
        |_, answer| {
            latencies.push(answer.latency);
            failed += usize::from(answer.result.is_err());
            Ok(())
        },
    )?;
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Report {
        protocol: args.protocol(),
        connections: args.connections,
        users,
        messages: latencies.len(),
        failed,
        pushes: generator.pushes,
        elapsed,
        latencies,
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
    /// From handing the request to the socket to parsing its response.
    latency: Duration,
    /// What the node said.
    result: Result<Reply, ErrorReply>,
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
}

impl Generator {
    /// Opens `count` connections to `addr`, at most [`MAX_CONNECTING`] handshakes at a time, and
    /// returns once every one is established.
    fn connect(addr: SocketAddr, protocol: Protocol, count: usize) -> io::Result<Generator> {
        let mut generator = Generator {
            poll: Poll::new()?,
            protocol,
            connections: Vec::with_capacity(count),
            scratch: vec![0; READ_CHUNK],
            pushes: 0,
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
            generator.poll_once(&mut events, last_progress)?;
            for event in events.iter() {
                let Some(connection) = generator.connections.get_mut(event.token().0) else {
                    continue;
                };
                if connection.connected {
                    continue;
                }
                if let Some(error) = connection.stream.take_error()? {
                    return Err(error);
                }
                match connection.stream.peer_addr() {
                    Ok(_) => {
                        connection.stream.set_nodelay(true)?;
                        connection.connected = true;
                        established += 1;
                        last_progress = Instant::now();
                    }
                    // Not yet: a spurious wake-up, the handshake goes on.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(generator)
    }

    /// Waits for readiness; an error if nothing has progressed for [`STALL`].
    fn poll_once(&mut self, events: &mut Events, last_progress: Instant) -> io::Result<()> {
        let left = STALL.saturating_sub(last_progress.elapsed());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the node made no progress for {STALL:?}"),
            ));
        }
        match self.poll.poll(events, Some(left)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            other => other,
        }
    }

    /// Runs one phase: connection `i` completes `count(i)` requests, `request(i)` each, one at a
    /// time; `answered(i, answer)` sees every response and may end the run with an error.
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
            self.poll_once(&mut events, last_progress)
                .map_err(|e| format!("{e} ({active} connections still waiting)"))?;
            for event in events.iter() {
                let index = event.token().0;
                let Progress::Answered(answer) = self.on_ready(index)? else {
                    continue;
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

    /// Encodes a request on connection `index` and writes what the socket takes now.
    fn start_request(&mut self, index: usize, request: &Request) -> Result<(), String> {
        let protocol = self.protocol;
        let connection = &mut self.connections[index];
        let id = connection.next_id;
        connection.next_id = connection.next_id.wrapping_add(1);
        connection.outgoing.clear();
        connection.written = 0;
        protocol.encode_request_into(id, request, &mut connection.outgoing);
        connection.in_flight = Some((id, Instant::now()));
        flush(connection).map_err(|e| format!("connection {index}: {e}"))
    }

    /// Handles readiness on connection `index`: writes what is pending, reads what arrived, and
    /// returns the response to the request in flight if it is among it.
    fn on_ready(&mut self, index: usize) -> Result<Progress, String> {
        let fail = |what: String| format!("connection {index}: {what}");
        let Some(connection) = self.connections.get_mut(index) else {
            return Ok(Progress::Pending);
        };
        flush(connection).map_err(|e| fail(e.to_string()))?;
        // Edge-triggered: read until the socket is drained.
        loop {
            match connection.stream.read(&mut self.scratch) {
                Ok(0) => {
                    return Err(fail(format!(
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
                Err(e) => return Err(fail(e.to_string())),
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
