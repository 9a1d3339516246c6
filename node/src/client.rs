//! A client for the node: the library used by the CLI, the tests and the load generator.

use std::collections::VecDeque;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::protocol::binary::{self, FrameError};
use crate::protocol::{ErrorReply, Message, Push, Reply, Request, ServerFrame, json};
use crate::server::Protocol;

/// One connection to a node.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    protocol: Protocol,
    next_id: u32,
    pushes: VecDeque<Message>,
}

fn invalid(what: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Client {
    /// Connects to `addr`, speaking `protocol`.
    pub fn connect(addr: SocketAddr, protocol: Protocol) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            protocol,
            next_id: 1,
            pushes: VecDeque::new(),
        })
    }

    /// Sends a request without waiting; returns its id (for pipelining).
    pub fn send(&mut self, request: &Request) -> io::Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let bytes = match self.protocol {
            Protocol::Binary => binary::encode_request(id, request),
            Protocol::Json => json::encode_request(id, request),
        };
        self.writer.write_all(&bytes)?;
        Ok(id)
    }

    /// Sends raw bytes (for tests of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads the next frame from the node.
    pub fn receive(&mut self) -> io::Result<ServerFrame> {
        let frame = match self.protocol {
            Protocol::Binary => {
                binary::read_frame(&mut self.reader).map(|raw| binary::decode_server_frame(&raw))
            }
            Protocol::Json => {
                json::read_line(&mut self.reader).map(|line| json::decode_server_frame(&line))
            }
        };
        match frame {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(error)) => Err(invalid(format!("undecodable frame from the node: {error}"))),
            Err(FrameError::Closed) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the node closed the connection",
            )),
            Err(FrameError::Io(error)) => Err(error),
            Err(FrameError::Invalid(bad)) => Err(invalid(bad.error)),
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
        self.writer.set_read_timeout(timeout)?;
        let frame = self.receive();
        self.writer.set_read_timeout(None)?;
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
        self.call(&Request::CreateAccount {
            username: username.into(),
            password: password.into(),
        })
    }

    /// Logs in.
    pub fn login(
        &mut self,
        username: &str,
        password: &str,
    ) -> io::Result<Result<Reply, ErrorReply>> {
        self.call(&Request::Login {
            username: username.into(),
            password: password.into(),
        })
    }
}
