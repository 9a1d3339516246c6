//! The client side: [`Client`], the library used by the tests and the `client` subcommand
//! ([`cli`]), and the load generator of the `bench` subcommand ([`bench`](mod@bench)).
//!
//! A [`Client`] is one blocking connection. What the node sends is read into a buffer and parsed
//! with a [`FrameParser`], so a read that times out in the middle of a frame (see
//! [`Client::next_push`]) loses nothing: the next call resumes where it stopped.
//!
//! A [`FailoverClient`] talks to a cluster: it holds one [`Client`] at a time and moves it to
//! another member when the one it has answers `not_leader` or `unavailable` or dies, logging in
//! again and retrying the request (see [`failover`]).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use crate::protocol::{
    ErrorReply, FrameParser, Hash32, Message, Parse, Protocol, Push, Reply, Request, ServerFrame,
};

pub mod bench;
pub mod chat;
pub mod cli;
pub mod failover;

pub use failover::{FailoverClient, FailoverOptions};

/// The ledger's operations, for any client that can make a call: [`Client`] (one connection)
/// and [`FailoverClient`] (a cluster's members). Each is one request; what a lost answer means
/// is the implementor's `call`'s business (a transfer is not idempotent: sent twice, it pays
/// twice, so [`FailoverClient`] does not send one again once it was sent whole).
pub trait LedgerCalls {
    /// Sends `request` and waits for its answer.
    fn call(&mut self, request: &Request) -> io::Result<Result<Reply, ErrorReply>>;

    /// The logged-in account's balance (`Reply::Balance`).
    fn get_balance(&mut self) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::GetBalance {})
    }

    /// The logged-in account's spendable outputs (`Reply::Utxos`).
    fn list_utxos(&mut self) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::ListUtxos {})
    }

    /// Pays `amount` coins to `to` (`Reply::Pooled` with the transaction's id), with a fresh
    /// idempotency key (see [`Request::keyed_transfer`]).
    fn transfer(&mut self, to: &str, amount: u64) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::keyed_transfer(to, amount))
    }

    /// A transaction, pooled or sealed (`Reply::Transaction`).
    fn get_transaction(&mut self, txid: Hash32) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::GetTransaction { txid })
    }

    /// The sealed block at `height`, 1 for the first (`Reply::Block`).
    fn get_block(&mut self, height: u64) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::GetBlock { height })
    }

    /// The chain's height, tip, mempool size, difficulty and supply (`Reply::Chain`).
    fn chain_info(&mut self) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::ChainInfo {})
    }
}

impl LedgerCalls for Client {
    fn call(&mut self, request: &Request) -> io::Result<Result<Reply, ErrorReply>> {
        Client::call(self, request)
    }
}

impl LedgerCalls for FailoverClient {
    fn call(&mut self, request: &Request) -> io::Result<Result<Reply, ErrorReply>> {
        FailoverClient::call(self, request)
    }
}

/// The chat addresses of a cluster's members, as `--addr` takes them: `host:port` socket
/// addresses separated by commas (one address is a one-member list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrList(pub Vec<SocketAddr>);

impl AddrList {
    /// The addresses as strings, for [`FailoverClient::connect`].
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(SocketAddr::to_string).collect()
    }
}

impl FromStr for AddrList {
    type Err = String;

    fn from_str(list: &str) -> Result<AddrList, String> {
        let addrs = list
            .split(',')
            .map(|addr| {
                addr.trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("{addr:?} is not an address (host:port): {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AddrList(addrs))
    }
}

impl From<SocketAddr> for AddrList {
    fn from(addr: SocketAddr) -> AddrList {
        AddrList(vec![addr])
    }
}

impl fmt::Display for AddrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One connection to a node.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    protocol: Protocol,
    parser: FrameParser,
    next_id: u32,
    /// Bytes received and not yet parsed (the start of a frame at most, between calls).
    received: Vec<u8>,
    /// Deliveries that arrived while waiting for a response.
    pushes: VecDeque<Message>,
    /// Reused for encoding requests.
    encoded: Vec<u8>,
}

fn invalid(what: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Client {
    /// Connects to `addr`, speaking `protocol`.
    pub fn connect(addr: SocketAddr, protocol: Protocol) -> io::Result<Client> {
        Client::over(TcpStream::connect(addr)?, protocol)
    }

    /// Connects to the first of `addrs` (`host:port`, tried in order, once each) that accepts
    /// the connection within `timeout`; the error names every address and why it failed.
    pub fn connect_any_within(
        addrs: &[String],
        protocol: Protocol,
        timeout: Duration,
    ) -> io::Result<Client> {
        let mut failures = Vec::new();
        let mut kind = io::ErrorKind::NotFound;
        for addr in addrs {
            match Client::connect_to(addr, protocol, timeout) {
                Ok(client) => return Ok(client),
                Err(e) => {
                    kind = e.kind();
                    failures.push(format!("{addr}: {e}"));
                }
            }
        }
        if addrs.is_empty() {
            failures.push("no address given".into());
        }
        Err(io::Error::new(
            kind,
            format!("cannot connect to any of {}", failures.join("; ")),
        ))
    }

    /// [`Client::connect_any_within`] with [`FailoverOptions`]' default attempt timeout.
    pub fn connect_any(addrs: &[String], protocol: Protocol) -> io::Result<Client> {
        Client::connect_any_within(addrs, protocol, FailoverOptions::default().attempt_timeout)
    }

    /// Connects to `addr` (`host:port`, names resolved), waiting at most `timeout` per resolved
    /// address: a member whose machine is gone must not hold a failover for the TCP timeout.
    pub fn connect_to(addr: &str, protocol: Protocol, timeout: Duration) -> io::Result<Client> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to nothing");
        for resolved in addr.to_socket_addrs()? {
            match crate::net::dial(&resolved, timeout) {
                Ok(stream) => return Client::over(stream, protocol),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn over(stream: TcpStream, protocol: Protocol) -> io::Result<Client> {
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            protocol,
            parser: FrameParser::new(protocol),
            next_id: 1,
            received: Vec::new(),
            pushes: VecDeque::new(),
            encoded: Vec::new(),
        })
    }

    /// The protocol this connection speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Bounds every blocking read of [`Client::call`] and [`Client::wait_for`] (`None`: wait
    /// forever, the default); a read that runs out fails with `WouldBlock` or `TimedOut`.
    /// [`Client::next_push`] sets its own timeout and clears it afterwards.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Takes the deliveries received while waiting for responses and not yet handed out by
    /// [`Client::next_push`] (a client moving to another connection keeps them).
    pub fn take_pushes(&mut self) -> VecDeque<Message> {
        std::mem::take(&mut self.pushes)
    }

    /// Sends a request without waiting; returns its id (for pipelining).
    pub fn send(&mut self, request: &Request) -> io::Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.encoded.clear();
        self.protocol
            .encode_request_into(id, request, &mut self.encoded);
        self.stream.write_all(&self.encoded)?;
        Ok(id)
    }

    /// Sends raw bytes (for tests of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next frame from the node.
    pub fn receive(&mut self) -> io::Result<ServerFrame> {
        loop {
            match self.parser.parse_server_frame(&self.received) {
                Parse::Incomplete => self.read_more()?,
                Parse::Skip(n) => {
                    self.received.drain(..n);
                }
                Parse::Frame { consumed, decoded } => {
                    self.received.drain(..consumed);
                    return decoded.map_err(|bad| {
                        invalid(format!("undecodable frame from the node: {}", bad.error))
                    });
                }
                Parse::Fatal(bad) => return Err(invalid(bad.error)),
            }
        }
    }

    /// Appends what the socket has to `received`, waiting for at least one byte.
    fn read_more(&mut self) -> io::Result<()> {
        let start = self.received.len();
        self.received.resize(start + READ_CHUNK, 0);
        let read = loop {
            match self.stream.read(&mut self.received[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.received.truncate(start + *read.as_ref().unwrap_or(&0));
        match read? {
            0 if start == 0 => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the node closed the connection",
            )),
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the node closed the connection in the middle of a frame",
            )),
            _ => Ok(()),
        }
    }

    /// Sends a request and waits for its response (pushes that arrive meanwhile are kept for
    /// [`Client::next_push`]).
    pub fn call(&mut self, request: &Request) -> io::Result<Result<Reply, ErrorReply>> {
        let id = self.send(request)?;
        self.wait_for(id)
    }

    /// Waits for the response to request `id`.
    pub fn wait_for(&mut self, id: u32) -> io::Result<Result<Reply, ErrorReply>> {
        loop {
            match self.receive()? {
                ServerFrame::Response(response) if response.id == id => return Ok(response.result),
                ServerFrame::Response(other) => {
                    return Err(invalid(format!(
                        "response to request {} while waiting for {id}",
                        other.id
                    )));
                }
                ServerFrame::Push(Push::Deliver(message)) => self.pushes.push_back(message),
            }
        }
    }

    /// The next live delivery, waiting at most `timeout` (`None`: forever).
    pub fn next_push(&mut self, timeout: Option<Duration>) -> io::Result<Option<Message>> {
        if let Some(message) = self.pushes.pop_front() {
            return Ok(Some(message));
        }
        self.stream.set_read_timeout(timeout)?;
        let frame = self.receive();
        self.stream.set_read_timeout(None)?;
        match frame {
            Ok(ServerFrame::Push(Push::Deliver(message))) => Ok(Some(message)),
            Ok(ServerFrame::Response(r)) => Err(invalid(format!("unexpected response {}", r.id))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates an account.
    pub fn create_account(
        &mut self,
        username: &str,
        password: &str,
    ) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::create_account(username, password))
    }

    /// Logs in.
    pub fn login(
        &mut self,
        username: &str,
        password: &str,
    ) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::login(username, password))
    }

    /// Sends a message with a fresh idempotency key, and returns the request that carries it:
    /// sending that same request again (after a lost answer, a reconnection) stores nothing new
    /// and answers with the first message's id.
    pub fn send_message(
        &mut self,
        to: &str,
        text: &str,
    ) -> io::Result<(Request, Result<Reply, ErrorReply>)> {
        let request = Request::keyed_send(to, text);
        let answer = self.call(&request)?;
        Ok((request, answer))
    }
}

/// 128 bits from the standard library's randomly seeded hasher, in hex: unique enough to tell
/// one send from another (the keys are not secrets).
pub fn idempotency_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = std::collections::hash_map::RandomState::new();
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut hasher = random.build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_usize(i);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        *half = hasher.finish();
    }
    format!("{:016x}{:016x}", halves[0], halves[1])
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    #[test]
    fn addr_lists_parse_one_or_several_addresses() {
        let one: AddrList = "127.0.0.1:7878".parse().unwrap();
        assert_eq!(
            one,
            AddrList::from("127.0.0.1:7878".parse::<SocketAddr>().unwrap())
        );
        let three: AddrList = "127.0.0.1:7001, 127.0.0.1:7002,[::1]:7003".parse().unwrap();
        assert_eq!(three.0.len(), 3);
        assert_eq!(
            three.to_string(),
            "127.0.0.1:7001,127.0.0.1:7002,[::1]:7003"
        );
        assert_eq!(three.to_strings()[2], "[::1]:7003");
        for bad in ["", "127.0.0.1:1,", "localhost", "127.0.0.1:1,nowhere"] {
            assert!(bad.parse::<AddrList>().is_err(), "{bad:?}");
        }
    }

    /// A push whose second half arrives after `next_push` gave up waiting is still read whole by
    /// the next call: the bytes already read were kept.
    #[test]
    fn a_push_cut_by_a_read_timeout_is_not_lost() {
        for protocol in [Protocol::Binary, Protocol::Json] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let message = Message {
                id: 3,
                from: "alice".into(),
                timestamp: 5,
                text: "split in two".into(),
            };
            let bytes =
                protocol.encode_server_frame(&ServerFrame::Push(Push::Deliver(message.clone())));
            let (first_half_sent, send_first_half) = std::sync::mpsc::channel();
            let (go_on, second_half) = std::sync::mpsc::channel::<()>();
            let node = thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let half = bytes.len() / 2;
                stream.write_all(&bytes[..half]).unwrap();
                first_half_sent.send(()).unwrap();
                second_half.recv().unwrap();
                stream.write_all(&bytes[half..]).unwrap();
            });
            let mut client = Client::connect(addr, protocol).unwrap();
            send_first_half.recv().unwrap();
            let waited = client.next_push(Some(Duration::from_millis(200))).unwrap();
            assert_eq!(waited, None, "{protocol:?}: half a frame is no push yet");
            go_on.send(()).unwrap();
            let pushed = client.next_push(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(pushed, Some(message), "{protocol:?}");
            node.join().unwrap();
        }
    }
}
