//! [`FailoverClient`]: a client of a cluster that follows the leader and survives dead members
//! on its own.
//!
//! Any member accepts connections, but only the leader orders writes: a follower answers
//! `not_leader` (naming the leader's chat address when it knows it) and a member without a
//! majority answers `unavailable`, with nothing changed (`docs/protocol.md`, "Clusters"). A
//! [`FailoverClient`] holds one connection at a time and, for every request:
//!
//! - on `not_leader` with a leader's address, connects there at once;
//! - on `not_leader` without one, `unavailable`, or a dead connection (refused, reset, closed,
//!   no answer within [`FailoverOptions::attempt_timeout`]), tries the next member in the list
//!   after a short pause that doubles from [`FailoverOptions::backoff`] up to
//!   [`FailoverOptions::max_backoff`];
//! - after connecting anywhere, logs in again with the credentials of its last successful login
//!   (sessions are local to a member), then sends the request again;
//! - gives up after [`FailoverOptions::deadline`] with an error of kind
//!   [`io::ErrorKind::TimedOut`] that names the last problem.
//!
//! Retrying is safe because a member that answers `not_leader` or `unavailable` changed nothing.
//! A request whose *answer* was lost (the connection died after it was sent) may have been
//! executed: sends and transfers carry an idempotency key, the same on every retry, so a
//! retried send is stored once and a retried transfer pays once ([`FailoverClient::call`] gives
//! one without a key a key). A retried `submit_transaction` is the same transaction, which its
//! maker may submit again (it answers with its id). Other requests are retried as they are: a
//! retried `create_account` may answer `user_exists`, a retried `delete_messages` may count
//! fewer deletions.
//!
//! Pushes come from the member the client is connected to. After a reconnection the new
//! connection's pushes continue, but a message stored while no connection was logged in is not
//! pushed (`read_messages` returns it), and one whose "delivered" mark was lost in the failover
//! may be pushed or read again: delivery is at least once, storage exactly once.

use std::collections::VecDeque;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use super::{Client, idempotency_key};
use crate::protocol::{ErrorCode, ErrorReply, Message, Protocol, Reply, Request};

/// How hard a [`FailoverClient`] tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverOptions {
    /// The longest one request (or reconnection) may take, retries included, before it fails
    /// with [`io::ErrorKind::TimedOut`]. Default 10 s: a few raft election timeouts.
    pub deadline: Duration,
    /// The longest wait for one member to accept a connection or answer one request before it
    /// counts as dead. Default 5 s.
    pub attempt_timeout: Duration,
    /// The first pause before trying another member; it doubles on each retry of a request.
    /// Default 20 ms.
    pub backoff: Duration,
    /// The longest pause between two tries. Default 500 ms.
    pub max_backoff: Duration,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// A client of a cluster: one connection at a time, moved to the leader or to another member
/// when needed (see the [module documentation](self)).
#[derive(Debug)]
pub struct FailoverClient {
    members: Vec<String>,
    protocol: Protocol,
    options: FailoverOptions,
    /// The connection and the address it was made to.
    connection: Option<(String, Client)>,
    /// The member of `members` to try when the next connection is not to a named leader.
    next_member: usize,
    /// Username and password of the last successful login, to log in again after a move.
    credentials: Option<(String, String)>,
    /// Deliveries taken from connections that were given up, not handed out yet.
    pushes: VecDeque<Message>,
}

/// What one try of a request on one member came to.
enum Attempt {
    /// An answer to give the caller.
    Done(Result<Reply, ErrorReply>),
    /// `not_leader` naming the leader: go there next, without a pause.
    Redirect(String),
    /// Another member may do better, after a pause; why this one did not.
    Retry(String),
}

impl FailoverClient {
    /// Connects to the first of `members` (`host:port` chat addresses, tried in order, once
    /// each) that accepts a connection, with [`FailoverOptions::default`].
    ///
    /// Only this first connection is not retried: with no member reachable at all, the error
    /// comes at once (naming every address) rather than after the deadline.
    pub fn connect(members: &[String], protocol: Protocol) -> io::Result<FailoverClient> {
        FailoverClient::connect_with(members, protocol, FailoverOptions::default())
    }

    /// [`FailoverClient::connect`] with `options`.
    pub fn connect_with(
        members: &[String],
        protocol: Protocol,
        options: FailoverOptions,
    ) -> io::Result<FailoverClient> {
        let mut client = FailoverClient {
            members: members.to_vec(),
            protocol,
            options,
            connection: None,
            next_member: 0,
            credentials: None,
            pushes: VecDeque::new(),
        };
        let mut failures = Vec::new();
        let mut kind = io::ErrorKind::NotFound;
        for _ in 0..members.len() {
            match client.connect_next() {
                Ok(()) => return Ok(client),
                Err(e) => {
                    kind = e.kind();
                    failures.push(e.to_string());
                }
            }
        }
        if members.is_empty() {
            failures.push("no address given".into());
        }
        Err(io::Error::new(
            kind,
            format!("cannot connect to any of {}", failures.join("; ")),
        ))
    }

    /// The members it was given, in order.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The protocol it speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The options it was made with.
    pub fn options(&self) -> FailoverOptions {
        self.options
    }

    /// The address of the member it is connected to now, if any (a leader it was sent to need
    /// not be one of [`FailoverClient::members`]).
    pub fn connected_to(&self) -> Option<&str> {
        self.connection.as_ref().map(|(addr, _)| addr.as_str())
    }

    /// Sends `request` and waits for its answer, following the leader and moving past dead
    /// members until [`FailoverOptions::deadline`] (see the [module documentation](self)).
    ///
    /// A `send_message` without a key is given a fresh one first, so that its retries are
    /// stored once. A successful `login` is remembered for logging in again after a move; a
    /// successful `logout` or `delete_account` forgets it. If logging in again after a move is
    /// refused (say the password changed), that refusal is the answer.
    pub fn call(&mut self, request: &Request) -> io::Result<Result<Reply, ErrorReply>> {
        let keyed;
        let request = match request {
            Request::SendMessage {
                to,
                text,
                key: None,
            } => {
                keyed = Request::SendMessage {
                    to: to.clone(),
                    text: text.clone(),
                    key: Some(idempotency_key()),
                };
                &keyed
            }
            Request::Transfer {
                to,
                amount,
                key: None,
            } => {
                keyed = Request::Transfer {
                    to: to.clone(),
                    amount: *amount,
                    key: Some(idempotency_key()),
                };
                &keyed
            }
            other => other,
        };
        let answer = self.with_retries(Some(request))?;
        if answer.is_ok() {
            match request {
                Request::Login { username, password } => {
                    self.credentials = Some((username.clone(), password.clone()));
                }
                Request::Logout | Request::DeleteAccount { .. } => self.credentials = None,
                _ => {}
            }
        }
        Ok(answer)
    }

    /// Creates an account.
    pub fn create_account(
        &mut self,
        username: &str,
        password: &str,
    ) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::create_account(username, password))
    }

    /// Logs in; on success the credentials are kept to log in again after a move.
    pub fn login(
        &mut self,
        username: &str,
        password: &str,
    ) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::login(username, password))
    }

    /// Sends a message with a fresh idempotency key, retried with that same key, and returns
    /// the request that carries it (sending it again stores nothing new).
    pub fn send_message(
        &mut self,
        to: &str,
        text: &str,
    ) -> io::Result<(Request, Result<Reply, ErrorReply>)> {
        let request = Request::keyed_send(to, text);
        let answer = self.call(&request)?;
        Ok((request, answer))
    }

    /// The next live delivery, waiting at most `timeout` (`None`: forever). A connection that
    /// dies meanwhile is replaced (logged in again, within [`FailoverOptions::deadline`]) and the
    /// wait goes on on the new one: delivery is at least once, and messages stored while no
    /// connection was logged in are left for `read_messages`.
    pub fn next_push(&mut self, timeout: Option<Duration>) -> io::Result<Option<Message>> {
        if let Some(message) = self.pushes.pop_front() {
            return Ok(Some(message));
        }
        let until = timeout.map(|timeout| Instant::now() + timeout);
        loop {
            if self.connection.is_none() {
                // A refused login is as final here as in `call`.
                if let Err(refused) = self.with_retries(None)? {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("logging in again failed: {refused}"),
                    ));
                }
            }
            let left = until.map(|until| until.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            let (_, client) = self.connection.as_mut().expect("connected above");
            match client.next_push(left) {
                Ok(push) => return Ok(push),
                Err(_) => self.disconnect(),
            }
        }
    }

    /// Runs `request` (or, with `None`, only makes sure of a logged-in connection) until it is
    /// answered, a redirect or retry at a time, within the deadline.
    fn with_retries(&mut self, request: Option<&Request>) -> io::Result<Result<Reply, ErrorReply>> {
        let deadline = Instant::now() + self.options.deadline;
        let mut backoff = self.options.backoff;
        let mut target = None;
        let mut redirected = false;
        loop {
            let problem = match self.attempt(request, target.take(), deadline) {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Redirect(leader) => {
                    let problem = format!("not_leader, the leader is {leader}");
                    target = Some(leader);
                    problem
                }
                Attempt::Retry(problem) => problem,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "gave up after {:?}: no member of {} could answer (last: {problem})",
                        self.options.deadline,
                        self.members.join(",")
                    ),
                ));
            }
            // A named leader is tried at once, unless the last try was a redirect too: two
            // members that name each other (a stale view during an election) must not spin.
            if target.is_none() || redirected {
                thread::sleep(backoff.min(left));
                backoff = (backoff * 2).min(self.options.max_backoff);
            }
            redirected = target.is_some();
        }
    }

    /// One try: connect (to `target`, or keep the connection, or the next member), log in again
    /// after a new connection, then send `request` and classify the answer.
    fn attempt(
        &mut self,
        request: Option<&Request>,
        target: Option<String>,
        deadline: Instant,
    ) -> Attempt {
        let mut fresh = false;
        if let Some(leader) = target {
            self.disconnect();
            if let Err(e) = self.connect_to(leader.clone(), deadline) {
                return Attempt::Retry(format!("cannot connect to the leader {leader}: {e}"));
            }
            fresh = true;
        } else if self.connection.is_none() {
            if let Err(e) = self.connect_next_by(deadline) {
                return Attempt::Retry(e.to_string());
            }
            fresh = true;
        }
        // A login needs no earlier login, and must not log in with the old credentials first.
        let is_login = matches!(request, Some(Request::Login { .. }));
        if fresh
            && !is_login
            && let Some((username, password)) = self.credentials.clone()
        {
            match self.try_request(&Request::Login { username, password }, deadline) {
                Attempt::Done(Ok(_)) => {}
                other => return other,
            }
        }
        match request {
            Some(request) => self.try_request(request, deadline),
            None => Attempt::Done(Ok(Reply::Done {})),
        }
    }

    /// Sends `request` on the connection and classifies the answer; the connection is dropped
    /// when it failed or when the member cannot order requests.
    fn try_request(&mut self, request: &Request, deadline: Instant) -> Attempt {
        let wait = self
            .options
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        let (addr, client) = self
            .connection
            .as_mut()
            .expect("connected before a request");
        let addr = addr.clone();
        // A request whose answer is lost may have been executed: sends and transfers are keyed
        // (see `call`), so sending it again is safe.
        let answer = client
            .set_read_timeout(Some(wait))
            .and_then(|()| client.send(request))
            .and_then(|id| client.wait_for(id));
        match answer {
            Err(e) => {
                self.disconnect();
                Attempt::Retry(format!("{addr}: {e}"))
            }
            Ok(Err(error)) if error.code == ErrorCode::NotLeader => {
                self.disconnect();
                match error.leader() {
                    // A member naming itself has a stale view: another member may know better.
                    Some(leader) if leader != addr => Attempt::Redirect(leader.to_string()),
                    _ => Attempt::Retry(format!("{addr}: {error}")),
                }
            }
            Ok(Err(error)) if error.code == ErrorCode::Unavailable => {
                self.disconnect();
                Attempt::Retry(format!("{addr}: {error}"))
            }
            Ok(answer) => Attempt::Done(answer),
        }
    }

    /// Connects to the next member in the list.
    fn connect_next(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + self.options.attempt_timeout;
        self.connect_next_by(deadline)
    }

    fn connect_next_by(&mut self, deadline: Instant) -> io::Result<()> {
        if self.members.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no address given"));
        }
        let addr = self.members[self.next_member % self.members.len()].clone();
        self.next_member = (self.next_member + 1) % self.members.len();
        self.connect_to(addr, deadline)
    }

    fn connect_to(&mut self, addr: String, deadline: Instant) -> io::Result<()> {
        let wait = self
            .options
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1));
        match Client::connect_to(&addr, self.protocol, wait) {
            Ok(client) => {
                self.connection = Some((addr, client));
                Ok(())
            }
            Err(e) => Err(io::Error::new(e.kind(), format!("{addr}: {e}"))),
        }
    }

    /// Gives the connection up, keeping the deliveries it had received.
    fn disconnect(&mut self) {
        if let Some((_, mut client)) = self.connection.take() {
            self.pushes.extend(client.take_pushes());
        }
    }
}
