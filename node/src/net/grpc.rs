//! The gRPC front end: `proto/synckit.proto`'s `synckit.v1.Chat` service (tonic, with server
//! reflection), on a small tokio runtime beside the node's own threads, over the same
//! [`Service`] as the chat port: every RPC becomes one [`Request`], and nothing here repeats an
//! operation.
//!
//! ```text
//! RPC ─► unary: admit(peer) ─► proto message ─► Request          (conversions: the end of file)
//!          ─► the token's Session: its Connection, one call at a time (calls queue, in order)
//!          ─► Service::handle(connection, request, done) ─► done ─► oneshot ─► awaited
//!          ─► the Connection parked again (or the session ended) ─► Reply ─► proto reply
//!                                                                    ErrorReply ─► Status
//! Login     ─► Service::connect_to(peer, Outbox::sink) ─► login ─► a new token and Session
//! Subscribe ─► the Session's delivery queue, fed by its Outbox while the stream is open
//! ```
//!
//! Items: [`pb`] (the generated messages, server and client), [`start`] (binds and serves).
//!
//! **Tokens.** `Login` opens a session, a [`Connection`] of its own (so login state, listing
//! cursors and pushes behave exactly as on a TCP connection), and answers a token: 128 random bits
//! in hex, sent back on every other call as `authorization: Bearer <token>`. A token ends with
//! `Logout`, with `DeleteAccount`, with any answer `not_logged_in` (the account was deleted
//! elsewhere), or after [`Config::grpc_token_idle_secs`](crate::config::Config) without a call
//! (an open `Subscribe` stream keeps it alive); its Connection is then disconnected.
//!
//! **Calls in flight.** The service takes the Connection (`Box<Connection>`) and gives it back
//! in `done`. Between calls it is parked in its Session under a `tokio::sync::Mutex`; a call holds
//! that mutex from taking the Connection to parking it again, so concurrent calls on one token
//! queue, first come first served, and run one at a time in order, as pipelined requests of one
//! TCP connection do. A call runs in a task of its own: a client that cancels it does not drop
//! the Connection halfway (the call completes and parks it).
//!
//! **Never blocking the runtime.** `Service::handle` does not wait for the disk or raft; its
//! answer comes through `done` into a `tokio::sync::oneshot` that the call awaits. The locks taken
//! on runtime threads are the service's short critical sections (as on an event loop) and the
//! token table's map operations.
//!
//! **Pushes.** A session's [`Outbox::sink`] takes a push only while a `Subscribe` stream is open
//! on its token (into a bounded queue of [`PUSH_QUEUE`] frames); otherwise the message stays in
//! the mailbox for `ReadMessages`, as on a connection whose queue is full.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Response, Status};

use crate::net::PUSH_QUEUE;
use crate::protocol::{
    ErrorCode, ErrorReply, Hash32, Message, Op, Outpoint, Output, Push, Reply, Request, ServerFrame,
};
use crate::service::{Answer, Connection, Outbox, Service};

/// The messages, the server trait and the client generated from `proto/synckit.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("synckit.v1");

    /// The encoded file descriptor set of `synckit.proto`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("synckit_descriptor");
}

use pb::chat_server::{Chat, ChatServer};

/// Worker threads of the gRPC runtime: its tasks only convert and wait, the node's own threads
/// do the work.
const WORKER_THREADS: usize = 2;

/// Binds `addr` and serves gRPC on it from a runtime of its own (threads `grpc`); returns the
/// bound address. Fails only if the address cannot be bound or the runtime cannot start.
pub fn start(addr: SocketAddr, service: Arc<Service>) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("grpc")
        .enable_all()
        .build()?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(io::Error::other)?;
    let idle = Duration::from_secs(service.config().grpc_token_idle_secs.max(1));
    let front = Arc::new(Front {
        service,
        tokens: Tokens::new(idle),
    });
    std::thread::Builder::new()
        .name("grpc".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tokio::spawn(Arc::clone(&front).expire_idle_sessions());
                Server::builder()
                    .add_service(ChatServer::new(ChatService(front)))
                    .add_service(reflection)
                    .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
                    .await
                    .map_err(io::Error::other)
            });
            if let Err(error) = served {
                tracing::error!(%error, "the gRPC server failed");
                std::process::exit(1);
            }
        })?;
    Ok(bound)
}

// ----- sessions: tokens and their parked Connections -----

/// One token's session.
struct Session {
    /// Its Connection, parked between calls (`None` once the session has ended). A call holds
    /// this mutex until it parks the Connection again: calls on one token queue here.
    connection: AsyncMutex<Option<Box<Connection>>>,
    /// Milliseconds after [`Tokens::epoch`] of the last call on it.
    last_used: AtomicU64,
    /// Whether a `Subscribe` stream is open: the Outbox's sink takes pushes only then.
    subscribed: Arc<AtomicBool>,
    /// The pushes the sink took, for the `Subscribe` stream (locked by the one open stream).
    deliveries: Arc<AsyncMutex<mpsc::Receiver<ServerFrame>>>,
}

/// The live tokens.
struct Tokens {
    table: sync_kit::Mutex<HashMap<String, Arc<Session>>>,
    idle: Duration,
    epoch: Instant,
}

impl Tokens {
    fn new(idle: Duration) -> Tokens {
        Tokens {
            table: sync_kit::Mutex::named("grpc-tokens", HashMap::new()),
            idle,
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self, session: &Session) {
        session.last_used.store(self.now(), Ordering::Relaxed);
    }

    fn expired(&self, session: &Session) -> bool {
        let idle = self
            .now()
            .saturating_sub(session.last_used.load(Ordering::Relaxed));
        !session.subscribed.load(Ordering::Acquire) && u128::from(idle) > self.idle.as_millis()
    }

    /// A new token for `session`.
    fn insert(&self, session: Arc<Session>) -> Result<String, Status> {
        let mut bits = [0u8; 16];
        getrandom::fill(&mut bits).map_err(|e| internal(format!("no random token: {e}")))?;
        let token = hex::encode(bits);
        self.touch(&session);
        self.table
            .lock()
            .map_err(|e| internal(e.to_string()))?
            .insert(token.clone(), session);
        Ok(token)
    }

    /// The session of the call's `authorization: Bearer` token. An expired one is removed and
    /// returned apart, for its Connection to be closed.
    #[allow(clippy::type_complexity)]
    fn find(
        &self,
        metadata: &MetadataMap,
    ) -> Result<Result<(String, Arc<Session>), Arc<Session>>, Status> {
        let token = bearer(metadata)?;
        let mut table = self.table.lock().map_err(|e| internal(e.to_string()))?;
        let Some(session) = table.get(token).cloned() else {
            return Err(unknown_token());
        };
        if self.expired(&session) {
            table.remove(token);
            return Ok(Err(session));
        }
        self.touch(&session);
        Ok(Ok((token.to_string(), session)))
    }

    fn remove(&self, token: &str) {
        match self.table.lock() {
            Ok(mut table) => {
                table.remove(token);
            }
            Err(error) => tracing::error!(%error, "the gRPC token table refused a lock"),
        }
    }

    /// Removes and returns every expired session.
    fn take_expired(&self) -> Vec<Arc<Session>> {
        let Ok(mut table) = self.table.lock() else {
            return Vec::new();
        };
        let expired: Vec<String> = table
            .iter()
            .filter(|(_, session)| self.expired(session))
            .map(|(token, _)| token.clone())
            .collect();
        expired
            .iter()
            .filter_map(|token| table.remove(token))
            .collect()
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| {
            status(ErrorReply::new(
                ErrorCode::NotLoggedIn,
                "no token: log in, then send `authorization: Bearer <token>`",
            ))
        })?
        .to_str()
        .map_err(|_| unknown_token())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(unknown_token)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unknown_token());
    }
    Ok(token.trim())
}

fn unknown_token() -> Status {
    status(ErrorReply::new(
        ErrorCode::NotLoggedIn,
        "unknown, expired or revoked token: log in again",
    ))
}

// ----- the front end: one path from an RPC to Service::handle and back -----

/// What the RPCs share.
struct Front {
    service: Arc<Service>,
    tokens: Tokens,
}

/// Runs `request` on `connection` and waits, without blocking a thread, for `done`.
async fn run(
    service: &Service,
    connection: Box<Connection>,
    request: Request,
) -> Result<(Box<Connection>, Answer), Status> {
    let (answered, answer) = oneshot::channel();
    service.handle(
        connection,
        request,
        Box::new(move |connection, answer| {
            let _ = answered.send((connection, answer));
        }),
    );
    answer
        .await
        .map_err(|_| internal("the node is stopping".into()))
}

impl Front {
    /// A call on a token's session: `request` on its Connection, in a task of its own.
    async fn call(
        self: &Arc<Self>,
        peer: IpAddr,
        metadata: &MetadataMap,
        request: Request,
    ) -> Result<Reply, Status> {
        self.service.admit(peer).map_err(status)?;
        if let Request::CreateAccount { .. } = request {
            return self.one_off(peer, request).await;
        }
        let (token, session) = match self.tokens.find(metadata)? {
            Ok(found) => found,
            Err(expired) => {
                self.close(expired);
                return Err(unknown_token());
            }
        };
        let front = Arc::clone(self);
        let task = tokio::spawn(async move {
            // Calls on one token queue here (tokio's mutex is fair: in arrival order).
            let mut parked = session.connection.lock().await;
            let Some(connection) = parked.take() else {
                return Err(unknown_token()); // ended while this call queued
            };
            let op = request.op();
            let (connection, answer) = run(&front.service, connection, request).await?;
            let ended = match &answer {
                Ok(_) => matches!(op, Op::Logout | Op::DeleteAccount),
                // Only a login opens a session: logged out now means the account is gone.
                Err(error) => error.code == ErrorCode::NotLoggedIn,
            };
            if ended {
                front.tokens.remove(&token);
                front.service.disconnect(*connection);
            } else {
                *parked = Some(connection);
                front.tokens.touch(&session);
            }
            answer.map_err(status)
        });
        task.await
            .map_err(|e| internal(format!("a gRPC call failed: {e}")))?
    }

    /// A request outside any session (`CreateAccount`), on a Connection of its own.
    async fn one_off(self: &Arc<Self>, peer: IpAddr, request: Request) -> Result<Reply, Status> {
        let front = Arc::clone(self);
        let connection = self.connect(peer, Outbox::sink(|_| false))?;
        tokio::spawn(async move {
            let (connection, answer) = run(&front.service, connection, request).await?;
            front.service.disconnect(*connection);
            answer.map_err(status)
        })
        .await
        .map_err(|e| internal(format!("a gRPC call failed: {e}")))?
    }

    /// `Login`: a new session, its Connection logged in, and its token.
    async fn login(
        self: &Arc<Self>,
        peer: IpAddr,
        request: Request,
    ) -> Result<pb::LoginReply, Status> {
        self.service.admit(peer).map_err(status)?;
        let (queue, deliveries) = mpsc::channel(PUSH_QUEUE);
        let subscribed = Arc::new(AtomicBool::new(false));
        let outbox = {
            let subscribed = Arc::clone(&subscribed);
            Outbox::sink(move |frame| {
                subscribed.load(Ordering::Acquire) && queue.try_send(frame).is_ok()
            })
        };
        let connection = self.connect(peer, outbox)?;
        let front = Arc::clone(self);
        tokio::spawn(async move {
            let (connection, answer) = run(&front.service, connection, request).await?;
            let unread = match answer {
                Ok(Reply::LoggedIn { unread }) => unread,
                Ok(other) => {
                    front.service.disconnect(*connection);
                    return Err(unexpected(&other));
                }
                Err(error) => {
                    front.service.disconnect(*connection);
                    return Err(status(error));
                }
            };
            let session = Arc::new(Session {
                connection: AsyncMutex::new(Some(connection)),
                last_used: AtomicU64::new(0),
                subscribed,
                deliveries: Arc::new(AsyncMutex::new(deliveries)),
            });
            let token = front.tokens.insert(Arc::clone(&session));
            if token.is_err() {
                front.close(session);
            }
            Ok(pb::LoginReply {
                token: token?,
                unread,
            })
        })
        .await
        .map_err(|e| internal(format!("a gRPC call failed: {e}")))?
    }

    /// `Subscribe`: the session's deliveries, while the stream is open.
    async fn subscribe(
        self: &Arc<Self>,
        peer: IpAddr,
        metadata: &MetadataMap,
    ) -> Result<ReceiverStream<Result<pb::Message, Status>>, Status> {
        self.service.admit(peer).map_err(status)?;
        let session = match self.tokens.find(metadata)? {
            Ok((_, session)) => session,
            Err(expired) => {
                self.close(expired);
                return Err(unknown_token());
            }
        };
        let Ok(mut deliveries) = Arc::clone(&session.deliveries).try_lock_owned() else {
            return Err(status(ErrorReply::new(
                ErrorCode::InvalidArgument,
                "a Subscribe stream is open on this token already",
            )));
        };
        session.subscribed.store(true, Ordering::Release);
        let (stream, out) = mpsc::channel(16);
        let front = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = deliveries.recv() => match frame {
                        Some(ServerFrame::Push(Push::Deliver(message))) => {
                            if stream.send(Ok(message_pb(message))).await.is_err() {
                                break;
                            }
                        }
                        Some(ServerFrame::Response(_)) => {}
                        // The session ended: its Connection, and so the sink, are gone.
                        None => break,
                    },
                    () = stream.closed() => break, // the client went away
                }
            }
            // Idle from now on; pushes taken after this wait in the queue for the next stream.
            front.tokens.touch(&session);
            session.subscribed.store(false, Ordering::Release);
        });
        Ok(ReceiverStream::new(out))
    }

    fn connect(&self, peer: IpAddr, outbox: Outbox) -> Result<Box<Connection>, Status> {
        self.service
            .connect_to(peer, outbox)
            .map(Box::new)
            .ok_or_else(|| {
                status(ErrorReply::new(
                    ErrorCode::Unavailable,
                    "the node is at its connection limit",
                ))
            })
    }

    /// Disconnects an ended session's Connection once no call holds it.
    fn close(self: &Arc<Self>, session: Arc<Session>) {
        let front = Arc::clone(self);
        tokio::spawn(async move {
            if let Some(connection) = session.connection.lock().await.take() {
                front.service.disconnect(*connection);
            }
        });
    }

    /// Every so often, ends the sessions idle longer than their limit (a call on one ends it
    /// too).
    async fn expire_idle_sessions(self: Arc<Self>) {
        let period =
            (self.tokens.idle / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
        loop {
            tokio::time::sleep(period).await;
            for session in self.tokens.take_expired() {
                self.close(session);
            }
        }
    }
}

/// The tonic service: each RPC is its proto request converted, [`Front::call`], and the reply
/// converted.
struct ChatService(Arc<Front>);

impl ChatService {
    async fn unary<Q: ToRequest, A: FromReply>(
        &self,
        request: tonic::Request<Q>,
    ) -> Result<Response<A>, Status> {
        let peer = peer(&request);
        let (metadata, _, message) = request.into_parts();
        let request = message.to_request().map_err(status)?;
        let reply = self.0.call(peer, &metadata, request).await?;
        A::from_reply(reply).map(Response::new)
    }
}

fn peer<T>(request: &tonic::Request<T>) -> IpAddr {
    request
        .remote_addr()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |addr| addr.ip())
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Chat for ChatService {
    type SubscribeStream = ReceiverStream<Result<pb::Message, Status>>;

    async fn create_account(
        &self,
        r: tonic::Request<pb::CreateAccountRequest>,
    ) -> Rpc<pb::CreateAccountReply> {
        self.unary(r).await
    }

    async fn login(&self, r: tonic::Request<pb::LoginRequest>) -> Rpc<pb::LoginReply> {
        let peer = peer(&r);
        let request = r.into_inner().to_request().map_err(status)?;
        self.0.login(peer, request).await.map(Response::new)
    }

    async fn logout(&self, r: tonic::Request<pb::LogoutRequest>) -> Rpc<pb::LogoutReply> {
        self.unary(r).await
    }

    async fn list_accounts(
        &self,
        r: tonic::Request<pb::ListAccountsRequest>,
    ) -> Rpc<pb::ListAccountsReply> {
        self.unary(r).await
    }

    async fn send_message(
        &self,
        r: tonic::Request<pb::SendMessageRequest>,
    ) -> Rpc<pb::SendMessageReply> {
        self.unary(r).await
    }

    async fn read_messages(
        &self,
        r: tonic::Request<pb::ReadMessagesRequest>,
    ) -> Rpc<pb::ReadMessagesReply> {
        self.unary(r).await
    }

    async fn delete_messages(
        &self,
        r: tonic::Request<pb::DeleteMessagesRequest>,
    ) -> Rpc<pb::DeleteMessagesReply> {
        self.unary(r).await
    }

    async fn delete_account(
        &self,
        r: tonic::Request<pb::DeleteAccountRequest>,
    ) -> Rpc<pb::DeleteAccountReply> {
        self.unary(r).await
    }

    async fn subscribe(
        &self,
        r: tonic::Request<pb::SubscribeRequest>,
    ) -> Rpc<Self::SubscribeStream> {
        let peer = peer(&r);
        self.0
            .subscribe(peer, r.metadata())
            .await
            .map(Response::new)
    }

    async fn get_balance(
        &self,
        r: tonic::Request<pb::GetBalanceRequest>,
    ) -> Rpc<pb::GetBalanceReply> {
        self.unary(r).await
    }

    async fn list_utxos(&self, r: tonic::Request<pb::ListUtxosRequest>) -> Rpc<pb::ListUtxosReply> {
        self.unary(r).await
    }

    async fn transfer(&self, r: tonic::Request<pb::TransferRequest>) -> Rpc<pb::TransferReply> {
        self.unary(r).await
    }

    async fn submit_transaction(
        &self,
        r: tonic::Request<pb::SubmitTransactionRequest>,
    ) -> Rpc<pb::SubmitTransactionReply> {
        self.unary(r).await
    }

    async fn get_transaction(
        &self,
        r: tonic::Request<pb::GetTransactionRequest>,
    ) -> Rpc<pb::GetTransactionReply> {
        self.unary(r).await
    }

    async fn get_block(&self, r: tonic::Request<pb::GetBlockRequest>) -> Rpc<pb::GetBlockReply> {
        self.unary(r).await
    }

    async fn chain_info(&self, r: tonic::Request<pb::ChainInfoRequest>) -> Rpc<pb::ChainInfoReply> {
        self.unary(r).await
    }
}

// ----- conversions: proto ⇄ Request, Reply, ErrorReply (all of them, here) -----

/// A proto request as the service's [`Request`].
trait ToRequest {
    fn to_request(self) -> Result<Request, ErrorReply>;
}

/// A proto reply from the service's [`Reply`].
trait FromReply: Sized {
    fn from_reply(reply: Reply) -> Result<Self, Status>;
}

/// `ToRequest` for requests whose fields map one to one.
macro_rules! to_request {
    ($($message:ident => |$m:ident| $request:expr;)*) => {$(
        impl ToRequest for pb::$message {
            #[allow(unused_variables)]
            fn to_request(self) -> Result<Request, ErrorReply> {
                let $m = self;
                Ok($request)
            }
        }
    )*};
}

to_request! {
    CreateAccountRequest => |m| Request::CreateAccount { username: m.username, password: m.password };
    LoginRequest => |m| Request::Login { username: m.username, password: m.password };
    LogoutRequest => |m| Request::Logout;
    ListAccountsRequest => |m| Request::ListAccounts { pattern: m.pattern, page_size: m.page_size, cursor: m.cursor };
    SendMessageRequest => |m| Request::SendMessage { to: m.to, text: m.text, key: m.key };
    ReadMessagesRequest => |m| Request::ReadMessages { limit: m.limit };
    DeleteMessagesRequest => |m| Request::DeleteMessages { ids: m.ids };
    DeleteAccountRequest => |m| Request::DeleteAccount { password: m.password };
    GetBalanceRequest => |m| Request::GetBalance {};
    ListUtxosRequest => |m| Request::ListUtxos {};
    TransferRequest => |m| Request::Transfer { to: m.to, amount: m.amount, key: m.key };
    GetBlockRequest => |m| Request::GetBlock { height: m.height };
    ChainInfoRequest => |m| Request::ChainInfo {};
}

impl ToRequest for pb::SubmitTransactionRequest {
    fn to_request(self) -> Result<Request, ErrorReply> {
        Ok(Request::SubmitTransaction {
            inputs: self
                .inputs
                .into_iter()
                .map(|input| {
                    Ok(Outpoint {
                        tx: Hash32::from_hex(&input.tx)?,
                        index: input.index,
                    })
                })
                .collect::<Result<_, ErrorReply>>()?,
            outputs: self
                .outputs
                .into_iter()
                .map(|output| Output {
                    to: output.to,
                    amount: output.amount,
                })
                .collect(),
        })
    }
}

impl ToRequest for pb::GetTransactionRequest {
    fn to_request(self) -> Result<Request, ErrorReply> {
        Ok(Request::GetTransaction {
            txid: Hash32::from_hex(&self.txid)?,
        })
    }
}

/// `FromReply` from one [`Reply`] variant.
macro_rules! from_reply {
    ($($message:ident <= $pattern:pat => $reply:expr;)*) => {$(
        impl FromReply for pb::$message {
            fn from_reply(reply: Reply) -> Result<Self, Status> {
                match reply {
                    $pattern => Ok($reply),
                    #[allow(unreachable_patterns)]
                    other => Err(unexpected(&other)),
                }
            }
        }
    )*};
}

from_reply! {
    CreateAccountReply <= Reply::Done {} => pb::CreateAccountReply {};
    LogoutReply <= Reply::Done {} => pb::LogoutReply {};
    DeleteAccountReply <= Reply::Done {} => pb::DeleteAccountReply {};
    ListAccountsReply <= Reply::Accounts { accounts, next_cursor } => pb::ListAccountsReply { accounts, next_cursor };
    SendMessageReply <= Reply::Sent { id, timestamp } => pb::SendMessageReply { id, timestamp };
    ReadMessagesReply <= Reply::Messages { messages } => pb::ReadMessagesReply { messages: messages.into_iter().map(message_pb).collect() };
    DeleteMessagesReply <= Reply::Deleted { deleted } => pb::DeleteMessagesReply { deleted };
    GetBalanceReply <= Reply::Balance { confirmed, pending } => pb::GetBalanceReply { confirmed, pending };
    ListUtxosReply <= Reply::Utxos { utxos } => pb::ListUtxosReply {
        utxos: utxos
            .into_iter()
            .map(|u| pb::Utxo { tx: u.tx.to_hex(), index: u.index, amount: u.amount, confirmed: u.confirmed })
            .collect(),
    };
    TransferReply <= Reply::Pooled { txid } => pb::TransferReply { txid: txid.to_hex() };
    SubmitTransactionReply <= Reply::Pooled { txid } => pb::SubmitTransactionReply { txid: txid.to_hex() };
    GetTransactionReply <= Reply::Transaction { txid, inputs, outputs, block, grant } => pb::GetTransactionReply {
        txid: txid.to_hex(),
        inputs: inputs.into_iter().map(|i| pb::Outpoint { tx: i.tx.to_hex(), index: i.index }).collect(),
        outputs: outputs.into_iter().map(|o| pb::Output { to: o.to, amount: o.amount }).collect(),
        block,
        grant,
    };
    GetBlockReply <= Reply::Block(b) => pb::GetBlockReply {
        height: b.height,
        hash: b.hash.to_hex(),
        prev: b.prev.to_hex(),
        merkle_root: b.merkle_root.to_hex(),
        timestamp: b.timestamp,
        difficulty: b.difficulty,
        nonce: b.nonce,
        txids: b.txids.iter().map(Hash32::to_hex).collect(),
    };
    ChainInfoReply <= Reply::Chain { height, tip, mempool, difficulty_bits, supply } => pb::ChainInfoReply {
        height,
        tip: tip.to_hex(),
        mempool,
        difficulty_bits,
        supply,
    };
}

fn message_pb(message: Message) -> pb::Message {
    pb::Message {
        id: message.id,
        from: message.from,
        timestamp: message.timestamp,
        text: message.text,
    }
}

/// The gRPC status of a protocol error: its message starts with the error code's name
/// (`double_spend: output ... is spent by ...`); `rate_limited` carries `retry-after`
/// (milliseconds) and `not_leader` `leader` (the leader's chat address) as metadata too.
fn status(error: ErrorReply) -> Status {
    use ErrorCode::*;
    let code = match error.code {
        NotLoggedIn | AuthFailed => Code::Unauthenticated,
        NoSuchUser | NoSuchOutput | NotFound => Code::NotFound,
        UserExists => Code::AlreadyExists,
        InvalidArgument | InvalidTransaction | InvalidUtf8 | Malformed | TooLarge
        | InvalidCursor => Code::InvalidArgument,
        UnknownOperation => Code::Unimplemented,
        RateLimited => Code::ResourceExhausted,
        NotLeader | DoubleSpend | InsufficientFunds | NotOwner => Code::FailedPrecondition,
        Unavailable => Code::Unavailable,
        Internal => Code::Internal,
    };
    let name = serde_json::to_value(error.code)
        .ok()
        .and_then(|name| name.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut status = Status::new(code, format!("{name}: {}", error.message));
    let mut metadata = |key: &'static str, value: &str| {
        if let Ok(value) = value.parse::<MetadataValue<_>>() {
            status.metadata_mut().insert(key, value);
        }
    };
    if error.code == RateLimited
        && let Some((_, after)) = error.message.rsplit_once("retry after ")
    {
        metadata("retry-after", after.trim_end_matches(" ms"));
    }
    if let Some(leader) = error.leader() {
        metadata("leader", leader);
    }
    status
}

fn internal(message: String) -> Status {
    status(ErrorReply::new(ErrorCode::Internal, message))
}

fn unexpected(reply: &Reply) -> Status {
    internal(format!("unexpected answer {reply:?}"))
}
