//! Shared helpers for the integration tests: a real `synckit-node` process on a temporary data
//! directory, clients logged in on it, raw sockets with read timeouts, plain HTTP GETs.
//!
//! Every node is started with port 0 for both listeners; the bound addresses come from the one
//! line the node prints on stdout. A watchdog kills the node if a test runs longer than
//! [`WATCHDOG`], so that a test blocked on a socket read fails (its read sees the connection
//! close) instead of hanging; the node is also killed when its [`Node`] is dropped.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use synckit_node::client::Client;
use synckit_node::protocol::Protocol;
use synckit_node::protocol::binary::{self, FrameError};
use synckit_node::protocol::{ErrorCode, ErrorReply, Message, Reply, Request, ServerFrame, json};

/// How long a node may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A node older than this is killed: the bound on every test's run time.
pub const WATCHDOG: Duration = Duration::from_secs(300);
/// How long a test waits for something that should happen at once (a push, a response).
pub const PROMPT: Duration = Duration::from_secs(10);
/// A password every test account uses unless a test says otherwise.
pub const PASSWORD: &str = "correct horse battery";

/// Limits generous enough that no test trips them by accident, no grant (a chat test deletes
/// accounts, which an account holding coins cannot be) and light proof of work (debug builds
/// hash slowly); a test that wants otherwise passes its own flag, which replaces the default.
const GENEROUS: &[&str] = &[
    "--requests-per-sec",
    "1000000",
    "--request-burst",
    "1000000",
    "--logins-per-minute",
    "100000",
    "--login-burst",
    "100000",
    "--initial-balance",
    "0",
    "--difficulty-bits",
    "4",
];

/// The ledger's flags for tests that spend coins: grants to spend, light proof of work, blocks
/// sealed often.
pub const LEDGER: &[&str] = &[
    "--initial-balance",
    "1000",
    "--difficulty-bits",
    "4",
    "--block-interval-ms",
    "100",
];

/// Both wire protocols, for tests that run once per protocol.
pub const PROTOCOLS: [Protocol; 2] = [Protocol::Binary, Protocol::Json];

/// A running node process.
pub struct Node {
    child: Arc<Mutex<Child>>,
    pid: u32,
    /// Chat address (both protocols).
    pub chat: SocketAddr,
    /// HTTP statistics address.
    pub http: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// The data directory it runs on.
    pub data_dir: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    stop_watchdog: Option<mpsc::Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<()>>,
}

/// A node that exited instead of serving.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit status (`None` if it had to be killed because it neither served nor exited).
    pub status: Option<ExitStatus>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// A fresh temporary data directory.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("synckit-node-test-")
        .tempdir()
        .expect("create a temporary data directory")
}

impl Node {
    /// Starts a node on `dir` with generous limits overridden by `args`; panics if it does not
    /// start.
    pub fn start(dir: &Path, args: &[&str]) -> Node {
        match Node::try_start(dir, args) {
            Ok(node) => node,
            Err(failure) => panic!("the node did not start: {failure:#?}"),
        }
    }

    /// Starts a node; a node that exits (or stays silent for [`START_TIMEOUT`]) is a
    /// [`StartFailure`].
    pub fn try_start(dir: &Path, args: &[&str]) -> Result<Node, StartFailure> {
        Node::try_start_with(dir, args, |_| {})
    }

    /// Like [`Node::start`], with `adjust` applied to the command before it is spawned.
    pub fn start_with(dir: &Path, args: &[&str], adjust: impl Fn(&mut Command)) -> Node {
        match Node::try_start_with(dir, args, adjust) {
            Ok(node) => node,
            Err(failure) => panic!("the node did not start: {failure:#?}"),
        }
    }

    /// Like [`Node::try_start`], with `adjust` applied to the command before it is spawned.
    pub fn try_start_with(
        dir: &Path,
        args: &[&str],
        adjust: impl Fn(&mut Command),
    ) -> Result<Node, StartFailure> {
        Node::try_start_wrapped(dir, args, &[], adjust)
    }

    /// Like [`Node::try_start_with`], run through `wrapper` (e.g. `ip netns exec NS`).
    ///
    /// A cluster member's ports come from its cluster file, chosen free by the test below the
    /// ephemeral range ([`synckit_node::net::reserve_loopback_ports`]), then released: until
    /// the member binds one, another test's listener may still take it. A member that fails
    /// for that reason is started again, a few times.
    pub fn try_start_wrapped(
        dir: &Path,
        args: &[&str],
        wrapper: &[&str],
        adjust: impl Fn(&mut Command),
    ) -> Result<Node, StartFailure> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Node::try_start_once(dir, args, wrapper, &adjust) {
                Err(failure)
                    if attempts < 5
                        && args.contains(&"--cluster")
                        && failure.stderr.contains("Address already in use") =>
                {
                    eprintln!("a member's port was taken for a moment; starting it again");
                    thread::sleep(Duration::from_millis(100));
                }
                started => return started,
            }
        }
    }

    fn try_start_once(
        dir: &Path,
        args: &[&str],
        wrapper: &[&str],
        adjust: &impl Fn(&mut Command),
    ) -> Result<Node, StartFailure> {
        let binary = env!("CARGO_BIN_EXE_synckit-node");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--chat-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--grpc-addr", "127.0.0.1:0"])
            .args(
                GENEROUS
                    .chunks(2)
                    .filter(|flag| !args.contains(&flag[0]))
                    .flatten(),
            )
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn synckit-node");
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");

        // Drain stderr for the whole life of the process (a full pipe would block its logging).
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = keep_lines(stderr_pipe, Arc::clone(&stderr), |_| {});
        // Stdout: the first line is the listening line; keep draining (and keeping) the rest.
        let stdout_text = Arc::new(Mutex::new(String::new()));
        let (lines, first_lines) = mpsc::channel::<String>();
        let stdout_reader = keep_lines(stdout, Arc::clone(&stdout_text), move |line| {
            // Once nobody listens, keep reading anyway so the pipe never fills.
            let _ = lines.send(line.to_string());
        });
        let child = Arc::new(Mutex::new(child));
        let deadline = Instant::now() + START_TIMEOUT;
        let mut stdout_seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match first_lines.recv_timeout(left) {
                Ok(line) => line,
                // Stdout closed: the process is exiting.
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(start_failure(
                        &child,
                        stderr_reader,
                        &stderr,
                        stdout_seen,
                        false,
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(start_failure(
                        &child,
                        stderr_reader,
                        &stderr,
                        stdout_seen,
                        true,
                    ));
                }
            };
            let Some((chat, http, data, grpc)) = parse_listening(&line) else {
                stdout_seen.push_str(&line);
                stdout_seen.push('\n');
                continue;
            };
            assert_eq!(
                Path::new(&data),
                dir,
                "the node reports the data directory it was given"
            );
            let (stop_watchdog, stop) = mpsc::channel::<()>();
            let watchdog = {
                let child = Arc::clone(&child);
                thread::spawn(move || {
                    if let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(WATCHDOG) {
                        eprintln!("watchdog: node {pid} ran longer than {WATCHDOG:?}; killing it");
                        let _ = child.lock().unwrap().kill();
                    }
                })
            };
            return Ok(Node {
                child,
                pid,
                chat,
                http,
                grpc,
                data_dir: dir.to_path_buf(),
                stdout: stdout_text,
                stderr,
                stop_watchdog: Some(stop_watchdog),
                watchdog: Some(watchdog),
                stdout_reader: Some(stdout_reader),
                stderr_reader: Some(stderr_reader),
            });
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the node has logged on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything the node has printed on stdout so far (the listening line first).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// `Some(status)` if the process has exited.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().expect("try_wait")
    }

    /// Panics unless the process is still running.
    pub fn assert_running(&self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "the node exited ({status}); stderr:\n{}",
                tail(&self.stderr(), 60)
            );
        }
    }

    /// SIGKILL, then wait for the process to be gone (its data-directory lock is released).
    pub fn kill(mut self) {
        self.kill_now();
    }

    /// Like [`Node::kill`], and returns everything it printed: (stdout, stderr).
    pub fn kill_and_collect(mut self) -> (String, String) {
        self.kill_now();
        (self.stdout(), self.stderr())
    }

    fn kill_now(&mut self) {
        if let Some(stop) = self.stop_watchdog.take() {
            let _ = stop.send(());
        }
        {
            let mut child = self.child.lock().unwrap();
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        for reader in [self.stdout_reader.take(), self.stderr_reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = reader.join();
        }
    }

    /// A new connection.
    pub fn connect(&self, protocol: Protocol) -> Client {
        Client::connect(self.chat, protocol).expect("connect to the node")
    }

    /// Creates `username` (password [`PASSWORD`]) on a new connection.
    pub fn create(&self, username: &str) {
        let mut client = self.connect(Protocol::Binary);
        ok(client.create_account(username, PASSWORD));
    }

    /// A new connection logged in as `username` (password [`PASSWORD`]).
    pub fn login(&self, protocol: Protocol, username: &str) -> Client {
        let mut client = self.connect(protocol);
        let reply = ok(client.login(username, PASSWORD));
        assert!(matches!(reply, Reply::LoggedIn { .. }), "{reply:?}");
        client
    }

    /// Creates `username` and returns a connection logged in as it.
    pub fn user(&self, protocol: Protocol, username: &str) -> Client {
        let mut client = self.connect(protocol);
        ok(client.create_account(username, PASSWORD));
        let reply = ok(client.login(username, PASSWORD));
        assert_eq!(reply, Reply::LoggedIn { unread: 0 });
        client
    }

    /// GET `path` on the HTTP endpoint.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_request(self.http, "GET", path)
    }

    /// `/stats`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let response = self.get("/stats");
        assert_eq!(response.status, 200, "{response:?}");
        serde_json::from_str(&response.body).expect("/stats is JSON")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let running = self.stop_watchdog.is_some();
        self.kill_now();
        if running && thread::panicking() {
            eprintln!(
                "--- node {} stderr (last lines) ---\n{}",
                self.pid,
                tail(&self.stderr(), 80)
            );
        }
    }
}

fn start_failure(
    child: &Mutex<Child>,
    stderr_reader: JoinHandle<()>,
    stderr: &Mutex<String>,
    stdout: String,
    kill: bool,
) -> StartFailure {
    let status = {
        let mut child = child.lock().unwrap();
        if kill {
            let _ = child.kill();
        }
        let status = child.wait().ok();
        status.filter(|_| !kill)
    };
    let _ = stderr_reader.join();
    StartFailure {
        status,
        stdout,
        stderr: stderr.lock().unwrap().clone(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `synckit-node listening chat=IP:PORT http=IP:PORT data=DIR grpc=IP:PORT` (the directory may
/// hold spaces: `grpc=` is found from the end).
fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr, String, SocketAddr)> {
    let rest = line.strip_prefix("synckit-node listening ")?;
    let rest = rest.strip_prefix("chat=")?;
    let (chat, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("http=")?;
    let (http, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("data=")?;
    let (data, grpc) = rest.rsplit_once(" grpc=")?;
    Some((
        chat.parse().ok()?,
        http.parse().ok()?,
        data.to_string(),
        grpc.parse().ok()?,
    ))
}

// ----- results -----

/// Unwraps a successful reply.
#[track_caller]
pub fn ok(result: io::Result<Result<Reply, ErrorReply>>) -> Reply {
    match result {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => panic!("expected success, got error {error}"),
        Err(error) => panic!("expected success, got I/O error {error}"),
    }
}

/// Unwraps an error reply and checks its code.
#[track_caller]
pub fn err(result: io::Result<Result<Reply, ErrorReply>>, code: ErrorCode) -> ErrorReply {
    match result {
        Ok(Err(error)) => {
            assert_eq!(error.code, code, "wrong error code: {error}");
            error
        }
        Ok(Ok(reply)) => panic!("expected error {code:?}, got success {reply:?}"),
        Err(error) => panic!("expected error {code:?}, got I/O error {error}"),
    }
}

/// Sends `text` to `to`; returns the message id.
#[track_caller]
pub fn send(client: &mut Client, to: &str, text: &str) -> u64 {
    match ok(client.call(&Request::SendMessage {
        to: to.into(),
        text: text.into(),
        key: None,
    })) {
        Reply::Sent { id, timestamp } => {
            assert!(timestamp > 0);
            id
        }
        other => panic!("send_message answered {other:?}"),
    }
}

/// Reads up to `limit` undelivered messages.
#[track_caller]
pub fn read(client: &mut Client, limit: u32) -> Vec<Message> {
    match ok(client.call(&Request::ReadMessages { limit })) {
        Reply::Messages { messages } => messages,
        other => panic!("read_messages answered {other:?}"),
    }
}

/// Reads until a read returns nothing; everything read, in order.
#[track_caller]
pub fn read_all(client: &mut Client) -> Vec<Message> {
    let mut all = Vec::new();
    loop {
        let batch = read(client, 100);
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// One page of a listing: (accounts, next cursor).
#[track_caller]
pub fn list(
    client: &mut Client,
    pattern: &str,
    page_size: u32,
    cursor: Option<String>,
) -> (Vec<String>, Option<String>) {
    match ok(client.call(&Request::ListAccounts {
        pattern: pattern.into(),
        page_size,
        cursor,
    })) {
        Reply::Accounts {
            accounts,
            next_cursor,
        } => (accounts, next_cursor),
        other => panic!("list_accounts answered {other:?}"),
    }
}

/// Every account matching `pattern`, following the cursors.
#[track_caller]
pub fn list_all(client: &mut Client, pattern: &str, page_size: u32) -> Vec<String> {
    let (mut all, mut cursor) = list(client, pattern, page_size, None);
    while let Some(next) = cursor {
        let (page, after) = list(client, pattern, page_size, Some(next));
        assert!(!page.is_empty(), "a page with a cursor has accounts");
        all.extend(page);
        cursor = after;
    }
    all
}

/// Deletes message ids; returns how many were deleted.
#[track_caller]
pub fn delete(client: &mut Client, ids: &[u64]) -> u32 {
    match ok(client.call(&Request::DeleteMessages { ids: ids.to_vec() })) {
        Reply::Deleted { deleted } => deleted,
        other => panic!("delete_messages answered {other:?}"),
    }
}

/// The unread count a fresh login reports.
#[track_caller]
pub fn unread_at_login(client: &mut Client, username: &str) -> u32 {
    match ok(client.login(username, PASSWORD)) {
        Reply::LoggedIn { unread } => unread,
        other => panic!("login answered {other:?}"),
    }
}

/// Polls `condition` until it holds or `timeout` passes (for states with no other signal).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ----- other processes -----

/// A process that ran to its end.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub status: ExitStatus,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// `child`'s exit status once it exits within `timeout`; `None` if it is still running.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    // No channel reports a child's exit: poll it, with a deadline.
    wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status
}

/// Runs `command` to its end with stdin closed, capturing its output; kills it and panics if it
/// runs longer than `timeout`.
#[track_caller]
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Finished {
    let mut child = spawn_piped(command);
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_for_exit(&mut child, timeout);
    let exited = status.is_some();
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let finished = Finished {
        status: status.unwrap_or_else(|| child.wait().expect("wait")),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    assert!(
        exited,
        "{command:?} ran longer than {timeout:?}: {finished:#?}"
    );
    finished
}

/// A process still running whose stdout is read line by line; killed when dropped.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    /// Starts `command` with stdin closed.
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = spawn_piped(command);
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("piped stderr")));
        Running {
            child,
            lines,
            stderr,
        }
    }

    /// The next line it prints; panics if none comes within `timeout` (or its stdout closes).
    #[track_caller]
    pub fn next_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(why) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().map(|r| r.join().unwrap_or_default());
                panic!("no line on stdout ({why:?}); stderr: {stderr:?}")
            }
        }
    }

    /// Kills it and waits for it to be gone.
    pub fn kill(mut self) {
        self.kill_now();
    }

    /// Asks it to stop as Ctrl-C would (SIGTERM) and waits for it to exit; kills it and panics
    /// if it runs on past `timeout`.
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet
        // (`child` is waited for only here and when dropped), so the pid still names it.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_for_exit(&mut self.child, timeout).unwrap_or_else(|| {
            self.kill_now();
            panic!("still running {timeout:?} after SIGTERM")
        })
    }

    /// Everything it printed on stderr, once its stderr is closed (by it and whatever it
    /// started).
    pub fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default()
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_now();
    }
}

// ----- raw sockets -----

/// A raw connection for bad input: every read has a timeout.
pub struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    protocol: Protocol,
}

/// What a raw read found.
#[derive(Debug)]
pub enum RawRead {
    /// A frame.
    Frame(ServerFrame),
    /// The node closed the connection (clean close or reset).
    Closed,
}

impl Raw {
    /// Connects; `protocol` says how to read what the node answers.
    pub fn connect(addr: SocketAddr, protocol: Protocol) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        stream.set_write_timeout(Some(PROMPT)).unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
            protocol,
        }
    }

    /// Writes bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the node");
    }

    /// Writes a well-formed request with `id`.
    pub fn request(&mut self, id: u32, request: &Request) {
        let bytes = match self.protocol {
            Protocol::Binary => binary::encode_request(id, request),
            Protocol::Json => json::encode_request(id, request),
        };
        self.send(&bytes);
    }

    /// Closes the sending half.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The next frame, or `Closed`; panics on a timeout or an undecodable frame.
    #[track_caller]
    pub fn next(&mut self) -> RawRead {
        let read = match self.protocol {
            Protocol::Binary => binary::read_frame(&mut self.reader)
                .map(|raw| binary::decode_server_frame(&raw).expect("a decodable frame")),
            Protocol::Json => json::read_line(&mut self.reader)
                .map(|line| json::decode_server_frame(&line).expect("a decodable line")),
        };
        match read {
            Ok(frame) => RawRead::Frame(frame),
            Err(FrameError::Closed) => RawRead::Closed,
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                RawRead::Closed
            }
            Err(FrameError::Io(e)) => panic!("reading from the node failed: {e}"),
            Err(FrameError::Invalid(bad)) => panic!("the node sent garbage: {:?}", bad.error),
        }
    }

    /// The next frame must be an error response with `id` and `code`.
    #[track_caller]
    pub fn expect_error(&mut self, id: u32, code: ErrorCode) -> ErrorReply {
        match self.next() {
            RawRead::Frame(ServerFrame::Response(response)) => {
                assert_eq!(response.id, id, "response id ({response:?})");
                match response.result {
                    Err(error) => {
                        assert_eq!(error.code, code, "error code ({error})");
                        error
                    }
                    Ok(reply) => panic!("expected error {code:?}, got {reply:?}"),
                }
            }
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    /// The next frame must be a successful response with `id`.
    #[track_caller]
    pub fn expect_ok(&mut self, id: u32) -> Reply {
        match self.next() {
            RawRead::Frame(ServerFrame::Response(response)) => {
                assert_eq!(response.id, id, "response id ({response:?})");
                response
                    .result
                    .unwrap_or_else(|e| panic!("expected success, got {e}"))
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// The node must close the connection (within the read timeout).
    #[track_caller]
    pub fn expect_closed(&mut self) {
        match self.next() {
            RawRead::Closed => {}
            other => panic!("expected the node to close the connection, got {other:?}"),
        }
    }
}

// ----- HTTP -----

/// A plain HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
}

/// One HTTP/1.0-style request over a fresh connection (`Connection: close`).
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("send the HTTP request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("read the HTTP response");
    let text = String::from_utf8(raw).expect("HTTP response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse { status, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size..];
        body = body.strip_prefix("\r\n").unwrap_or(body);
    }
}

/// `both!(scenario)` next to `fn scenario(protocol: Protocol)` makes the tests
/// `scenario::binary` and `scenario::json`.
#[allow(unused_macros)]
macro_rules! both {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn binary() {
                super::$scenario(synckit_node::protocol::Protocol::Binary);
            }

            #[test]
            fn json() {
                super::$scenario(synckit_node::protocol::Protocol::Json);
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both;

/// Reads `pipe` line by line on a thread until it closes, appending every line to `into` and
/// handing it to `each`; a child's pipe drained this way never fills and blocks the child.
fn keep_lines(
    pipe: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<String>>,
    mut each: impl FnMut(&str) + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            {
                let mut all = into.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
            each(&line);
        }
    })
}

/// Opens `n` connections to `chat` that the node has registered (each has been answered once),
/// to occupy connection slots.
pub fn registered_connections(chat: SocketAddr, n: usize) -> Vec<Raw> {
    (0..n)
        .map(|_| {
            let mut raw = Raw::connect(chat, Protocol::Binary);
            raw.request(1, &Request::ReadMessages { limit: 1 });
            raw.expect_error(1, ErrorCode::NotLoggedIn);
            raw
        })
        .collect()
}

/// Starts `command` with stdin closed and stdout and stderr piped to this process.
#[track_caller]
fn spawn_piped(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"))
}

// ----- fake cluster members -----

/// What a [`FakeMember`] answers to every request but a login.
#[derive(Clone, Debug)]
pub enum FakeAnswer {
    /// `not_leader`, naming this leader's chat address (or none).
    NotLeader(Option<String>),
    /// `unavailable`.
    Unavailable,
    /// Nothing: the connection is closed without an answer.
    Close,
}

/// A stand-in for a cluster member that cannot order writes: it accepts connections and logins
/// (sessions are local to a member) and answers everything else with one [`FakeAnswer`]. It
/// records every request it receives, and stops when dropped.
pub struct FakeMember {
    /// Its chat address.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeMember {
    /// Starts one on a free loopback port.
    pub fn start(answer: FakeAnswer) -> FakeMember {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a fake member");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acceptor = {
            let (requests, stop) = (requests.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, answer) = (requests.clone(), answer.clone());
                    // Each connection ends when the client closes it, or after PROMPT of
                    // silence (the read timeout), so no thread outlives its test for long.
                    thread::spawn(move || serve_fake(stream, &answer, &requests));
                }
            })
        };
        FakeMember {
            addr,
            requests,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeMember {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the acceptor, which sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve_fake(stream: TcpStream, answer: &FakeAnswer, requests: &Mutex<Vec<Request>>) {
    let _ = stream.set_read_timeout(Some(PROMPT));
    let mut writer = stream.try_clone().expect("clone a fake member's stream");
    let mut reader = BufReader::new(stream);
    let Ok(first) = reader.fill_buf().map(|buf| buf.first().copied()) else {
        return;
    };
    let Some(first) = first else { return };
    let protocol = Protocol::detect(first);
    while let Ok(Ok((id, request))) = protocol.read_request(&mut reader) {
        requests.lock().unwrap().push(request.clone());
        let result = match (&request, answer) {
            (Request::Login { .. }, _) => Ok(Reply::LoggedIn { unread: 0 }),
            (_, FakeAnswer::NotLeader(leader)) => Err(ErrorReply::not_leader(leader.clone())),
            (_, FakeAnswer::Unavailable) => {
                Err(ErrorReply::new(ErrorCode::Unavailable, "no majority"))
            }
            (_, FakeAnswer::Close) => return,
        };
        let frame = ServerFrame::Response(synckit_node::protocol::Response {
            id,
            op: Some(request.op()),
            result,
        });
        if writer
            .write_all(&protocol.encode_server_frame(&frame))
            .is_err()
        {
            return;
        }
    }
}

/// A loopback address where nothing listens (a port that was free a moment ago).
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

// ----- clusters -----

/// Free loopback addresses (chat, HTTP, raft) for `size` members. They are below the ephemeral
/// range: no member's outgoing connection takes one before its member binds it.
pub fn free_member_addrs(size: usize) -> Vec<[SocketAddr; 3]> {
    let held = synckit_node::net::reserve_loopback_ports(size * 3).unwrap();
    let port = |i: usize| held[i].local_addr().unwrap();
    (0..size)
        .map(|i| [port(3 * i), port(3 * i + 1), port(3 * i + 2)])
        .collect()
}

/// Writes `dir/cluster.toml`: member `i + 1` at `addrs[i]` (chat, HTTP, raft) with
/// `data_dirs[i]` (created); returns the file.
pub fn write_cluster_file_at(
    dir: &Path,
    addrs: &[[SocketAddr; 3]],
    data_dirs: &[PathBuf],
) -> PathBuf {
    let mut file_text = String::new();
    for (i, ([chat, http, raft], data_dir)) in addrs.iter().zip(data_dirs).enumerate() {
        std::fs::create_dir_all(data_dir).unwrap();
        file_text.push_str(&format!(
            "[[node]]\nid = {}\nchat_addr = \"{chat}\"\nhttp_addr = \"{http}\"\nraft_addr = \"{raft}\"\ndata_dir = \"{}\"\n\n",
            i + 1,
            data_dir.display()
        ));
    }
    let file = dir.join("cluster.toml");
    std::fs::write(&file, file_text).unwrap();
    file
}

/// Writes `dir/cluster.toml`: member `i + 1` on free loopback ports with `data_dirs[i]` (created);
/// returns the file and the members' chat addresses, member `id` at `id - 1`.
pub fn write_cluster_file(dir: &Path, data_dirs: &[PathBuf]) -> (PathBuf, Vec<SocketAddr>) {
    let addrs = free_member_addrs(data_dirs.len());
    let file = write_cluster_file_at(dir, &addrs, data_dirs);
    (file, addrs.iter().map(|[chat, _, _]| *chat).collect())
}

/// A cluster of member processes on loopback ports, started from one cluster file; every
/// member still running is killed when it is dropped (each [`Node`] is).
pub struct Cluster {
    dir: tempfile::TempDir,
    /// The flags every member was started with (cluster file and id included, but for the id).
    extra: Vec<String>,
    /// The members' chat addresses, member `id` at `id - 1`.
    pub chat: Vec<SocketAddr>,
    /// The running members, member `id` at `id - 1` (`None` once killed).
    pub members: Vec<Option<Node>>,
}

impl Cluster {
    /// Writes a cluster file of `size` members on free loopback ports and starts them all, each
    /// with `extra` flags.
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        let dir = data_dir();
        let data: Vec<PathBuf> = (1..=size)
            .map(|id| dir.path().join(format!("node-{id}")))
            .collect();
        let (file, chat) = write_cluster_file(dir.path(), &data);
        let file = file.display().to_string();
        let members = data
            .iter()
            .enumerate()
            .map(|(i, data)| {
                let id = (i + 1).to_string();
                let mut args = vec!["--cluster", &file, "--id", &id];
                args.extend(extra);
                Some(Node::start(data, &args))
            })
            .collect();
        Cluster {
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            chat,
            members,
        }
    }

    /// Member `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> std::path::PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Starts member `id` again (after [`Cluster::kill`]) on its data directory.
    pub fn restart(&mut self, id: u64) {
        assert!(
            self.members[id as usize - 1].is_none(),
            "member {id} is running"
        );
        let file = self.dir.path().join("cluster.toml").display().to_string();
        let id_text = id.to_string();
        let mut args = vec!["--cluster", &file, "--id", &id_text];
        args.extend(self.extra.iter().map(String::as_str));
        self.members[id as usize - 1] = Some(Node::start(&self.data_dir(id), &args));
    }

    /// Member `id` (panics if it was killed).
    pub fn member(&self, id: u64) -> &Node {
        self.members[id as usize - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("member {id} was killed"))
    }

    /// `kill -9` member `id`, waiting until it is gone.
    pub fn kill(&mut self, id: u64) {
        if let Some(node) = self.members[id as usize - 1].take() {
            node.kill();
        }
    }

    /// The running members, with their ids.
    pub fn live(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, node)| node.as_ref().map(|node| (i as u64 + 1, node)))
    }

    /// The leader, once a running member says it is one within `timeout` (panics otherwise).
    pub fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let mut leader = None;
        assert!(
            wait_until(timeout, || {
                leader = self
                    .live()
                    .find(|(_, node)| node.stats()["raft"]["role"] == "leader")
                    .map(|(id, _)| id);
                leader.is_some()
            }),
            "no leader among the running members within {timeout:?}"
        );
        leader.unwrap()
    }

    /// Waits until every running member reports the same applied index and state digest
    /// within `timeout` (panics otherwise); returns them.
    pub fn wait_converged(&self, timeout: Duration) -> (u64, String) {
        let mut seen = Vec::new();
        let converged = wait_until(timeout, || {
            seen = self
                .live()
                .map(|(_, node)| {
                    let stats = node.stats();
                    (
                        stats["applied_index"].as_u64().unwrap(),
                        stats["state_digest"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            seen.windows(2).all(|w| w[0] == w[1])
        });
        assert!(converged, "members did not converge: {seen:?}");
        seen[0].clone()
    }
}
