//! The gRPC front end, driven by the tonic client generated from the same `proto/synckit.proto`
//! against a real node: every RPC, the status codes of the protocol's errors, tokens (revoked by
//! `Logout`, by account deletion here and elsewhere, expiring when idle), calls queued on one
//! token, a `Subscribe` delivery end to end, reflection, and the Python client
//! (`tests/python/grpc_smoke.py`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Node, PASSWORD, data_dir};
use synckit_node::net::grpc::pb;
use synckit_node::net::grpc::pb::chat_client::ChatClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use common::LEDGER;

/// A bound on every wait for something that should happen promptly.
const PROMPT: Duration = Duration::from_secs(10);

async fn client(node: &Node) -> ChatClient<Channel> {
    ChatClient::connect(format!("http://{}", node.grpc))
        .await
        .expect("connect to the gRPC port")
}

/// `message` with `authorization: Bearer <token>`.
fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// Panics unless `result` failed with `code` and a message starting with `name`.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, Status>,
    code: Code,
    name: &str,
) -> Status {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{name}: ")),
        "the message starts with the protocol's code name {name}: {status:?}"
    );
    status
}

async fn create(client: &mut ChatClient<Channel>, username: &str) {
    client
        .create_account(pb::CreateAccountRequest {
            username: username.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("create_account");
}

async fn login(client: &mut ChatClient<Channel>, username: &str) -> String {
    let reply = client
        .login(pb::LoginRequest {
            username: username.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner();
    assert_eq!(reply.token.len(), 32, "128 bits in hex: {}", reply.token);
    assert!(reply.token.bytes().all(|b| b.is_ascii_hexdigit()));
    reply.token
}

async fn send(client: &mut ChatClient<Channel>, token: &str, to: &str, text: &str) -> u64 {
    client
        .send_message(authed(
            token,
            pb::SendMessageRequest {
                to: to.into(),
                text: text.into(),
                key: None,
            },
        ))
        .await
        .expect("send_message")
        .into_inner()
        .id
}

#[tokio::test]
async fn chat_rpcs_tokens_and_a_live_delivery() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut c = client(&node).await;

    // CreateAccount, and the same name again.
    for name in ["alice", "bob", "carol"] {
        create(&mut c, name).await;
    }
    refused(
        c.create_account(pb::CreateAccountRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await,
        Code::AlreadyExists,
        "user_exists",
    );
    refused(
        c.create_account(pb::CreateAccountRequest {
            username: "no spaces".into(),
            password: PASSWORD.into(),
        })
        .await,
        Code::InvalidArgument,
        "invalid_argument",
    );

    // No token, a wrong one, a wrong password.
    refused(
        c.list_accounts(pb::ListAccountsRequest {
            pattern: "*".into(),
            page_size: 10,
            cursor: None,
        })
        .await,
        Code::Unauthenticated,
        "not_logged_in",
    );
    refused(
        c.read_messages(authed(
            "00112233445566778899aabbccddeeff",
            pb::ReadMessagesRequest { limit: 1 },
        ))
        .await,
        Code::Unauthenticated,
        "not_logged_in",
    );
    refused(
        c.login(pb::LoginRequest {
            username: "alice".into(),
            password: "not the password".into(),
        })
        .await,
        Code::Unauthenticated,
        "auth_failed",
    );

    let alice = login(&mut c, "alice").await;
    let bob = login(&mut c, "bob").await;
    let carol = login(&mut c, "carol").await;

    // ListAccounts, a page at a time through the cursor.
    let first = c
        .list_accounts(authed(
            &alice,
            pb::ListAccountsRequest {
                pattern: "*".into(),
                page_size: 2,
                cursor: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.accounts, ["alice", "bob"]);
    let second = c
        .list_accounts(authed(
            &alice,
            pb::ListAccountsRequest {
                pattern: "*".into(),
                page_size: 2,
                cursor: first.next_cursor.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.accounts, ["carol"]);
    assert_eq!(second.next_cursor, None);

    // Subscribe: bob's stream gets alice's message, sent after it opened.
    let mut stream = c
        .subscribe(authed(&bob, pb::SubscribeRequest {}))
        .await
        .expect("subscribe")
        .into_inner();
    refused(
        c.subscribe(authed(&bob, pb::SubscribeRequest {})).await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    let id = send(&mut c, &alice, "bob", "Hello, Bob!").await;
    let delivered = tokio::time::timeout(PROMPT, stream.next())
        .await
        .expect("the delivery arrives within the bound")
        .expect("the stream is open")
        .expect("a delivery");
    assert_eq!(
        (
            delivered.id,
            delivered.from.as_str(),
            delivered.text.as_str()
        ),
        (id, "alice", "Hello, Bob!")
    );

    // Without a stream, messages wait for ReadMessages; DeleteMessages deletes them.
    let first_id = send(&mut c, &alice, "carol", "one").await;
    let second_id = send(&mut c, &bob, "carol", "two").await;
    let read = c
        .read_messages(authed(&carol, pb::ReadMessagesRequest { limit: 10 }))
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<(u64, &str, &str)> = read
        .messages
        .iter()
        .map(|m| (m.id, m.from.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        seen,
        [(first_id, "alice", "one"), (second_id, "bob", "two")]
    );
    let deleted = c
        .delete_messages(authed(
            &carol,
            pb::DeleteMessagesRequest {
                ids: vec![first_id, second_id, 999_999],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 2);
    refused(
        c.send_message(authed(
            &alice,
            pb::SendMessageRequest {
                to: "nobody".into(),
                text: "hi".into(),
                key: None,
            },
        ))
        .await,
        Code::NotFound,
        "no_such_user",
    );

    // A keyed send, sent twice, is stored once.
    let keyed = |key: &str| {
        authed(
            &alice,
            pb::SendMessageRequest {
                to: "carol".into(),
                text: "once".into(),
                key: Some(key.into()),
            },
        )
    };
    let a = c.send_message(keyed("k-1")).await.unwrap().into_inner();
    let b = c.send_message(keyed("k-1")).await.unwrap().into_inner();
    assert_eq!((a.id, a.timestamp), (b.id, b.timestamp));

    // Concurrent calls on one token queue and all succeed, each answered once.
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut c = c.clone();
        let alice = alice.clone();
        calls.push(tokio::spawn(async move {
            send(&mut c, &alice, "carol", &format!("n{i}")).await
        }));
    }
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 16);

    // Logout revokes the token.
    c.logout(authed(&carol, pb::LogoutRequest {}))
        .await
        .expect("logout");
    refused(
        c.read_messages(authed(&carol, pb::ReadMessagesRequest { limit: 1 }))
            .await,
        Code::Unauthenticated,
        "not_logged_in",
    );

    // DeleteAccount revokes the token that deleted it, and the account's other tokens (the
    // subscription ends with them).
    let bob_again = login(&mut c, "bob").await;
    refused(
        c.delete_account(authed(
            &bob,
            pb::DeleteAccountRequest {
                password: "not the password".into(),
            },
        ))
        .await,
        Code::Unauthenticated,
        "auth_failed",
    );
    c.delete_account(authed(
        &bob,
        pb::DeleteAccountRequest {
            password: PASSWORD.into(),
        },
    ))
    .await
    .expect("delete_account");
    refused(
        c.read_messages(authed(&bob, pb::ReadMessagesRequest { limit: 1 }))
            .await,
        Code::Unauthenticated,
        "not_logged_in",
    );
    refused(
        c.read_messages(authed(&bob_again, pb::ReadMessagesRequest { limit: 1 }))
            .await,
        Code::Unauthenticated,
        "not_logged_in",
    );
    let ended = tokio::time::timeout(PROMPT, stream.next())
        .await
        .expect("the subscription ends with the session");
    assert!(ended.is_none(), "{ended:?}");

    // Reflection names the service.
    let services = reflected_services(&node).await;
    assert!(
        services.contains(&"synckit.v1.Chat".to_string()),
        "{services:?}"
    );
}

async fn reflected_services(node: &Node) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = Channel::from_shared(format!("http://{}", node.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    match answers.next().await {
        Some(Ok(answer)) => match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("not a service list: {other:?}"),
        },
        other => panic!("no reflection answer: {other:?}"),
    }
}

#[tokio::test]
async fn ledger_rpcs_and_a_double_spend() {
    let dir = data_dir();
    let node = Node::start(dir.path(), LEDGER);
    let mut c = client(&node).await;
    create(&mut c, "alice").await;
    create(&mut c, "bob").await;
    let alice = login(&mut c, "alice").await;
    let bob = login(&mut c, "bob").await;

    // The grants are sealed within a few block intervals.
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let balance = c
            .get_balance(authed(&alice, pb::GetBalanceRequest {}))
            .await
            .unwrap()
            .into_inner();
        if balance.confirmed == 1000 {
            assert_eq!(balance.pending, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "grants unsealed: {balance:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bob's grant may be sealed in a later block than alice's.
    let chain = loop {
        let chain = c
            .chain_info(authed(&alice, pb::ChainInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        if chain.supply == 2000 || tokio::time::Instant::now() >= deadline {
            break chain;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(chain.height >= 1, "{chain:?}");
    assert_eq!((chain.difficulty_bits, chain.supply), (4, 2000));
    assert_eq!(chain.tip.len(), 64);

    let utxos = c
        .list_utxos(authed(&alice, pb::ListUtxosRequest {}))
        .await
        .unwrap()
        .into_inner()
        .utxos;
    assert_eq!(utxos.len(), 1, "{utxos:?}");
    let grant = utxos[0].clone();
    assert_eq!((grant.amount, grant.confirmed), (1000, true));

    // A grant is a transaction too; its block holds it.
    let grant_tx = c
        .get_transaction(authed(
            &alice,
            pb::GetTransactionRequest {
                txid: grant.tx.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        grant_tx.grant.is_some() && grant_tx.block.is_some(),
        "{grant_tx:?}"
    );
    let block = c
        .get_block(authed(
            &alice,
            pb::GetBlockRequest {
                height: grant_tx.block.unwrap(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(block.txids.contains(&grant.tx), "{block:?}");
    assert_eq!(
        (block.hash.len(), block.prev.len(), block.merkle_root.len()),
        (64, 64, 64)
    );

    // Transfer spends alice's grant; a transaction spending it again is a double spend.
    let keyed_transfer = || {
        authed(
            &alice,
            pb::TransferRequest {
                to: "bob".into(),
                amount: 100,
                key: Some("grpc-transfer-1".into()),
            },
        )
    };
    let transfer = c.transfer(keyed_transfer()).await.unwrap().into_inner();
    // Sent again with its key, it pays nothing more: the same transaction.
    let again = c.transfer(keyed_transfer()).await.unwrap().into_inner();
    assert_eq!(again.txid, transfer.txid);
    let pooled = c
        .get_transaction(authed(
            &alice,
            pb::GetTransactionRequest {
                txid: transfer.txid.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pooled.txid, transfer.txid);
    assert!(
        pooled
            .outputs
            .iter()
            .any(|o| o.to == "bob" && o.amount == 100)
    );
    let status = refused(
        c.submit_transaction(authed(
            &alice,
            pb::SubmitTransactionRequest {
                inputs: vec![pb::Outpoint {
                    tx: grant.tx.clone(),
                    index: grant.index,
                }],
                outputs: vec![pb::Output {
                    to: "bob".into(),
                    amount: 1000,
                }],
            },
        ))
        .await,
        Code::FailedPrecondition,
        "double_spend",
    );
    assert!(status.message().contains(&transfer.txid), "{status:?}");
    refused(
        c.transfer(authed(
            &alice,
            pb::TransferRequest {
                to: "bob".into(),
                amount: 1_000_000,
                key: None,
            },
        ))
        .await,
        Code::FailedPrecondition,
        "insufficient_funds",
    );

    // Bob spends his own grant with a transaction of his own.
    let bob_utxos = c
        .list_utxos(authed(&bob, pb::ListUtxosRequest {}))
        .await
        .unwrap()
        .into_inner()
        .utxos;
    let his = bob_utxos
        .iter()
        .find(|u| u.confirmed)
        .expect("bob's grant")
        .clone();
    let submitted = c
        .submit_transaction(authed(
            &bob,
            pb::SubmitTransactionRequest {
                inputs: vec![pb::Outpoint {
                    tx: his.tx.clone(),
                    index: his.index,
                }],
                outputs: vec![
                    pb::Output {
                        to: "alice".into(),
                        amount: 10,
                    },
                    pb::Output {
                        to: "bob".into(),
                        amount: his.amount - 10,
                    },
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submitted.txid.len(), 64);
    refused(
        c.submit_transaction(authed(
            &alice,
            pb::SubmitTransactionRequest {
                inputs: vec![pb::Outpoint {
                    tx: his.tx.clone(),
                    index: 7,
                }],
                outputs: vec![pb::Output {
                    to: "alice".into(),
                    amount: 1,
                }],
            },
        ))
        .await,
        Code::NotFound,
        "no_such_output",
    );

    // Unknown ids and heights are NOT_FOUND; a malformed hash is INVALID_ARGUMENT.
    refused(
        c.get_transaction(authed(
            &alice,
            pb::GetTransactionRequest {
                txid: "00".repeat(32),
            },
        ))
        .await,
        Code::NotFound,
        "not_found",
    );
    refused(
        c.get_block(authed(&alice, pb::GetBlockRequest { height: 1_000_000 }))
            .await,
        Code::NotFound,
        "not_found",
    );
    refused(
        c.get_transaction(authed(
            &alice,
            pb::GetTransactionRequest { txid: "xyz".into() },
        ))
        .await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    let balance = c
        .get_balance(authed(&alice, pb::GetBalanceRequest {}))
        .await
        .unwrap()
        .into_inner();
    // 1000, less 100 to bob, plus 10 from bob: pooled or sealed, the sum is the same.
    assert_eq!(
        balance.confirmed as i64 + balance.pending,
        910,
        "{balance:?}"
    );
}

#[tokio::test]
async fn idle_tokens_expire_and_addresses_are_rate_limited() {
    let dir = data_dir();
    let node = Node::start(
        dir.path(),
        &[
            "--grpc-token-idle-secs",
            "1",
            "--requests-per-sec",
            "1",
            "--request-burst",
            "4",
        ],
    );
    let mut c = client(&node).await;
    create(&mut c, "alice").await;
    let token = login(&mut c, "alice").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    refused(
        c.read_messages(authed(&token, pb::ReadMessagesRequest { limit: 1 }))
            .await,
        Code::Unauthenticated,
        "not_logged_in",
    );
    // The bucket (4, one a second) runs dry within a few quick calls.
    let mut limited = None;
    for _ in 0..10 {
        if let Err(status) = c
            .read_messages(authed(&token, pb::ReadMessagesRequest { limit: 1 }))
            .await
            && status.code() == Code::ResourceExhausted
        {
            limited = Some(status);
            break;
        }
    }
    let status = limited.expect("rate limited");
    assert!(status.message().starts_with("rate_limited: "), "{status:?}");
    let after = status
        .metadata()
        .get("retry-after")
        .expect("retry-after metadata");
    let after: u64 = after.to_str().unwrap().parse().expect("milliseconds");
    assert!((1..=1000).contains(&after), "{after}");
}

/// `tests/python/grpc_smoke.py` against a node: the Python client (grpcio, stubs generated by
/// grpcio-tools at run time) drives every RPC. Skipped, saying so, where Python lacks grpcio,
/// unless `CI` is set: CI installs it, and must not pass without running it.
#[test]
fn the_python_client_drives_every_rpc() {
    let available = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|status| status.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 cannot import grpc and grpc_tools (.ci/run installs them)"
        );
        eprintln!(
            "skipped: python3 cannot import grpc and grpc_tools (pip install grpcio grpcio-tools)"
        );
        return;
    }
    let dir = data_dir();
    let node = Node::start(dir.path(), LEDGER);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let finished = common::run_bounded(
        Command::new("python3")
            .arg(format!("{root}/tests/python/grpc_smoke.py"))
            .args(["--addr", &node.grpc.to_string()])
            .args(["--proto-dir", &format!("{root}/proto")]),
        Duration::from_secs(120),
    );
    assert!(
        finished.status.success(),
        "the Python client failed:\n{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        finished.stdout.contains(" passed, 0 failed"),
        "{}",
        finished.stdout
    );
}

/// A cluster member serves gRPC where its cluster file says (`grpc_addr`), and prints it.
#[test]
fn a_cluster_member_serves_grpc_at_its_cluster_file_address() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let dir = data_dir();
    // Held until the file is written, so none repeats; below the ephemeral range, so no
    // outgoing connection takes one before the member binds it.
    let held = synckit_node::net::reserve_loopback_ports(4).unwrap();
    let mut free = {
        let mut ports = held.iter().map(|listener| listener.local_addr().unwrap());
        move || ports.next().unwrap()
    };
    let grpc = free();
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        format!(
            "[[node]]\nid = 1\nchat_addr = \"{}\"\nhttp_addr = \"{}\"\nraft_addr = \"{}\"\n\
             data_dir = \"{}\"\ngrpc_addr = \"{grpc}\"\n",
            free(),
            free(),
            free(),
            dir.path().join("node-1").display()
        ),
    )
    .unwrap();
    drop(held);
    let mut member = Killed(
        Command::new(env!("CARGO_BIN_EXE_synckit-node"))
            .args(["serve", "--cluster"])
            .arg(&file)
            .args(["--id", "1", "--log", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The listening line comes once the ports are bound (or stdout closes if it fails).
    let stdout = BufReader::new(member.0.stdout.take().unwrap());
    let (found, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.contains("listening") {
                let _ = found.send(line);
                return;
            }
        }
    });
    let line = lines.recv_timeout(PROMPT).expect("a listening line");
    assert!(line.ends_with(&format!("grpc={grpc}")), "{line}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = ChatClient::connect(format!("http://{grpc}"))
            .await
            .expect("connect to the file's gRPC address");
        c.create_account(pb::CreateAccountRequest {
            username: "ann".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("the member answers on its file's gRPC address");
    });
}
