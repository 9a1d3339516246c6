//! The network thread: it owns the [`FailoverClient`], runs the [`NetCommand`]s the loop hands
//! it one at a time, waits for pushes in between, and reports everything as [`NetEvent`]s. The
//! loop never waits for the network: it only sends commands and receives events.
//!
//! The client is made with a short [`FailoverOptions::deadline`] ([`STEP`]) so that a lost member
//! comes back to this thread quickly; the thread then says `Reconnecting` (the status line shows
//! it) and tries again, until a member answers (the [`FailoverClient`] logs in again on its
//! own) or, for a command, until [`GIVE_UP`]. Retrying is safe: a send keeps its idempotency key
//! across retries, and a transfer whose answer was lost is never sent again (the failover client
//! refuses to; the error says to look at the balance). After a move, the messages stored while no
//! connection was logged in are read from the mailbox (the node does not push them).

use std::io;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde_json::json;

use super::event::{Event, NetCommand, NetEvent};
use crate::client::{FailoverClient, FailoverOptions};
use crate::protocol::{ErrorReply, Message, Protocol, Reply, Request};

/// How long one try (a request or a reconnection, retries inside included) may take before this
/// thread hears of it and reports `Reconnecting`.
pub const STEP: Duration = Duration::from_secs(2);
/// How long a command is retried before it fails.
pub const GIVE_UP: Duration = Duration::from_secs(30);
/// How long one wait for a push lasts before commands are looked at again.
pub const POLL: Duration = Duration::from_millis(50);
/// The pause between two connection attempts when no member answers.
pub const PAUSE: Duration = Duration::from_millis(500);
/// How often the member is asked who leads (`cluster_info`), for the status line.
pub const LEADER_EVERY: Duration = Duration::from_secs(2);

/// Starts the network thread for the cluster `members`: it runs `commands` and reports to
/// `events`, until `commands` is closed.
pub fn spawn(
    members: Vec<String>,
    protocol: Protocol,
    commands: Receiver<NetCommand>,
    events: Sender<Event>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("chat-net".into())
        .spawn(move || {
            Net {
                members,
                protocol,
                client: None,
                reported: None,
                logged_in: false,
                leader: None,
                leader_asked: None,
                events,
            }
            .run(&commands);
        })
}

/// The network thread's own state.
struct Net {
    members: Vec<String>,
    protocol: Protocol,
    client: Option<FailoverClient>,
    /// The member last reported as connected (`None` after a reported loss).
    reported: Option<String>,
    /// Whether the session is logged in (pushes are waited for only then).
    logged_in: bool,
    /// The leader last reported (`Some(None)`: reported as unknown).
    leader: Option<Option<String>>,
    /// When the member was last asked who leads.
    leader_asked: Option<Instant>,
    events: Sender<Event>,
}

/// A protocol error as a person reads it: the message, then the code's name.
fn describe(error: &ErrorReply) -> String {
    let code = json!(error.code);
    format!("{} ({})", error.message, code.as_str().unwrap_or("error"))
}

impl Net {
    fn run(mut self, commands: &Receiver<NetCommand>) {
        self.connect();
        loop {
            self.ask_leader();
            match commands.try_recv() {
                Ok(command) => self.execute(command),
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    if self.logged_in && self.client.is_some() {
                        self.wait_for_push();
                    } else {
                        // Nothing to wait for on the socket: wait for a command (and try to
                        // connect again now and then, when no member answered).
                        let wait = if self.client.is_some() {
                            POLL * 4
                        } else {
                            PAUSE
                        };
                        match commands.recv_timeout(wait) {
                            Ok(command) => self.execute(command),
                            Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => {
                                if self.client.is_none() {
                                    self.connect();
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every [`LEADER_EVERY`], asks the member who leads; reports a change.
    fn ask_leader(&mut self) {
        if self
            .leader_asked
            .is_some_and(|at| at.elapsed() < LEADER_EVERY)
        {
            return;
        }
        self.leader_asked = Some(Instant::now());
        let Some(client) = self.client.as_mut() else {
            return;
        };
        // A failed ask says nothing new: the next command or wait notices a lost connection.
        if let Ok(Ok(Reply::Cluster { leader, .. })) = client.call(&Request::ClusterInfo {})
            && self.leader.as_ref() != Some(&leader)
        {
            self.leader = Some(leader.clone());
            self.emit(NetEvent::Leader(leader));
        }
    }

    fn emit(&self, event: NetEvent) {
        // The loop gone means the client is quitting: nothing left to tell.
        let _ = self.events.send(Event::Net(event));
    }

    /// Makes the failover client if there is none yet (the first connection fails at once when
    /// no member answers).
    fn connect(&mut self) -> bool {
        if self.client.is_some() {
            return true;
        }
        let options = FailoverOptions {
            deadline: STEP,
            attempt_timeout: STEP,
            ..FailoverOptions::default()
        };
        match FailoverClient::connect_with(&self.members, self.protocol, options) {
            Ok(client) => {
                self.client = Some(client);
                self.report_member();
                true
            }
            Err(e) => {
                self.reported = None;
                self.emit(NetEvent::Reconnecting(e.to_string()));
                false
            }
        }
    }

    /// Reports the member connected to when it changed; after a move, reads what waited.
    fn report_member(&mut self) {
        let Some(member) = self
            .client
            .as_ref()
            .and_then(|client| client.connected_to())
            .map(str::to_string)
        else {
            return;
        };
        if self.reported.as_deref() == Some(member.as_str()) {
            return;
        }
        let moved = self.reported.is_some() || self.logged_in;
        self.reported = Some(member.clone());
        self.emit(NetEvent::Connected(member));
        if moved && self.logged_in {
            self.read_waiting();
        }
    }

    /// Reports a lost connection (once).
    fn lost(&mut self, why: String) {
        self.reported = None;
        self.emit(NetEvent::Reconnecting(why));
    }

    /// Runs `request` until a member answers it, retrying (and saying so) for up to
    /// [`GIVE_UP`]; `Err` is the reason to show.
    fn call(&mut self, request: &Request) -> Result<Reply, String> {
        let started = Instant::now();
        loop {
            if self.connect() {
                let client = self.client.as_mut().expect("connected");
                match client.call(request) {
                    Ok(answer) => {
                        self.report_member();
                        return answer.map_err(|error| describe(&error));
                    }
                    // The deadline of one step: the thread says so and tries again.
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => self.lost(e.to_string()),
                    // A lost transfer answer, a refused login again: final.
                    Err(e) => {
                        self.report_member();
                        return Err(e.to_string());
                    }
                }
            } else {
                thread::sleep(PAUSE);
            }
            if started.elapsed() >= GIVE_UP {
                return Err(format!("no member answered within {GIVE_UP:?}"));
            }
        }
    }

    fn execute(&mut self, command: NetCommand) {
        match command {
            NetCommand::CreateAccount { username, password } => {
                match self.call(&Request::create_account(&username, &password)) {
                    Ok(_) => self.login(username, password),
                    Err(why) => self.emit(NetEvent::LoginFailed(why)),
                }
            }
            NetCommand::Login { username, password } => self.login(username, password),
            NetCommand::Send { local, to, text } => {
                // One key for every retry: stored once.
                let request = Request::keyed_send(&to, &text);
                match self.call(&request) {
                    Ok(Reply::Sent { id, timestamp }) => self.emit(NetEvent::Sent {
                        local,
                        id,
                        timestamp,
                    }),
                    Ok(other) => self.emit(NetEvent::SendFailed {
                        local,
                        error: format!("unexpected answer {other:?}"),
                    }),
                    Err(error) => self.emit(NetEvent::SendFailed { local, error }),
                }
            }
            NetCommand::DeleteMessages { ids } => {
                match self.call(&Request::DeleteMessages { ids: ids.clone() }) {
                    Ok(_) => self.emit(NetEvent::Deleted { ids }),
                    Err(why) => self.emit(NetEvent::Failed(format!("not deleted: {why}"))),
                }
            }
            NetCommand::ListAccounts {
                generation,
                pattern,
                page_size,
                cursor,
            } => {
                let request = Request::ListAccounts {
                    pattern,
                    page_size,
                    cursor,
                };
                match self.call(&request) {
                    Ok(Reply::Accounts {
                        accounts,
                        next_cursor,
                    }) => self.emit(NetEvent::Accounts {
                        generation,
                        accounts,
                        next_cursor,
                    }),
                    Ok(other) => self.emit(NetEvent::AccountsFailed {
                        generation,
                        error: format!("unexpected answer {other:?}"),
                    }),
                    Err(error) => self.emit(NetEvent::AccountsFailed { generation, error }),
                }
            }
            NetCommand::GetBalance => match self.call(&Request::GetBalance {}) {
                Ok(Reply::Balance { confirmed, pending }) => {
                    self.emit(NetEvent::Balance { confirmed, pending });
                }
                Ok(other) => self.emit(NetEvent::Failed(format!("unexpected answer {other:?}"))),
                Err(why) => self.emit(NetEvent::Failed(format!("no balance: {why}"))),
            },
            NetCommand::Transfer { to, amount } => {
                match self.call(&Request::keyed_transfer(&to, amount)) {
                    Ok(Reply::Pooled { txid }) => {
                        self.emit(NetEvent::Transferred(txid.to_string()));
                    }
                    Ok(other) => {
                        self.emit(NetEvent::TransferFailed(format!(
                            "unexpected answer {other:?}"
                        )));
                    }
                    Err(why) => self.emit(NetEvent::TransferFailed(why)),
                }
            }
            NetCommand::DeleteAccount { password } => {
                match self.call(&Request::DeleteAccount { password }) {
                    Ok(_) => {
                        self.logged_in = false;
                        self.emit(NetEvent::AccountDeleted);
                    }
                    Err(why) => self.emit(NetEvent::DeleteAccountFailed(why)),
                }
            }
        }
    }

    /// Logs in, then reads every message that waited.
    fn login(&mut self, username: String, password: String) {
        match self.call(&Request::login(&username, &password)) {
            Ok(Reply::LoggedIn { unread }) => {
                self.logged_in = true;
                self.emit(NetEvent::LoggedIn { username, unread });
                self.read_waiting();
            }
            Ok(other) => self.emit(NetEvent::LoginFailed(format!(
                "unexpected answer {other:?}"
            ))),
            Err(why) => self.emit(NetEvent::LoginFailed(why)),
        }
    }

    /// Reads the mailbox until it is empty (each answer is at most one frame).
    fn read_waiting(&mut self) {
        loop {
            match self.call(&Request::ReadMessages { limit: 100 }) {
                Ok(Reply::Messages { messages }) if !messages.is_empty() => {
                    self.emit(NetEvent::Messages(messages));
                }
                Ok(_) => return,
                Err(why) => {
                    self.emit(NetEvent::Failed(format!("reading the mailbox: {why}")));
                    return;
                }
            }
        }
    }

    /// Waits [`POLL`] for a push; a connection lost meanwhile is reported and made again.
    fn wait_for_push(&mut self) {
        let client = self.client.as_mut().expect("checked by the caller");
        let push: io::Result<Option<Message>> = client.next_push(Some(POLL));
        match push {
            Ok(Some(message)) => {
                self.report_member();
                self.emit(NetEvent::Delivered(message));
            }
            Ok(None) => self.report_member(),
            Err(e) => {
                self.lost(e.to_string());
                // The next round tries again: `next_push` reconnects and logs in again.
                thread::sleep(POLL);
            }
        }
    }
}
