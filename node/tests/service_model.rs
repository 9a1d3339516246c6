//! The service against a model, in process (no sockets), under random sequences of operations by
//! three users who log in and out: every message sent to an existing user reaches that user
//! exactly once, pushed live while they are online or read later, oldest first; the unread count
//! at login, deletions (own messages only) and every error agree with the model; and the state
//! is the same after the service is reopened from its log.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crossbeam_channel::Receiver;
use proptest::prelude::*;
use synckit_node::config::Config;
use synckit_node::protocol::{ErrorCode, Push, Reply, Request, ServerFrame};
use synckit_node::service::{Connection, Service};

const USERS: [&str; 3] = ["ann", "ben", "cai"];
const GHOST: &str = "ghost";
const PASSWORD: &str = "correct horse battery";

#[derive(Clone, Debug)]
enum Op {
    Send {
        from: usize,
        to: usize,
        len: usize,
    },
    Read {
        user: usize,
        limit: u32,
    },
    Delete {
        user: usize,
        picks: Vec<prop::sample::Index>,
    },
    Logout {
        user: usize,
    },
    Login {
        user: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 0..4usize, 0..40usize).prop_map(|(from, to, len)| Op::Send { from, to, len }),
        3 => (0..3usize, 1..5u32).prop_map(|(user, limit)| Op::Read { user, limit }),
        2 => (0..3usize, prop::collection::vec(any::<prop::sample::Index>(), 1..4))
            .prop_map(|(user, picks)| Op::Delete { user, picks }),
        1 => (0..3usize).prop_map(|user| Op::Logout { user }),
        1 => (0..3usize).prop_map(|user| Op::Login { user }),
    ]
}

/// What the model knows of one user.
#[derive(Default)]
struct Model {
    online: bool,
    /// Every message in the mailbox: id → (text, delivered).
    mailbox: BTreeMap<u64, (String, bool)>,
    /// Ids of every message sent to this user, and how many times each reached them.
    received: BTreeMap<u64, u32>,
}

struct User {
    connection: Connection,
    pushes: Receiver<ServerFrame>,
}

fn connect(service: &Service) -> User {
    let (outbox, pushes) = crossbeam_channel::unbounded();
    let connection = service
        .connect(IpAddr::V4(Ipv4Addr::LOCALHOST), outbox)
        .expect("a connection slot");
    User { connection, pushes }
}

fn login(service: &Service, user: &mut User, name: &str) -> u32 {
    let request = Request::Login {
        username: name.into(),
        password: PASSWORD.into(),
    };
    match service.execute(&mut user.connection, request) {
        Ok(Reply::LoggedIn { unread }) => unread,
        other => panic!("login of {name}: {other:?}"),
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        // Every login of a case is allowed (the limiter is tested elsewhere).
        login_burst: 1000,
        ..Config::default()
    };
    let service = Service::open(&config).expect("open");
    let mut users: Vec<User> = USERS.iter().map(|_| connect(&service)).collect();
    let mut model: Vec<Model> = USERS.iter().map(|_| Model::default()).collect();
    for (i, name) in USERS.iter().enumerate() {
        let create = Request::CreateAccount {
            username: (*name).into(),
            password: PASSWORD.into(),
        };
        service
            .execute(&mut users[i].connection, create)
            .expect("create");
        assert_eq!(login(&service, &mut users[i], name), 0);
        model[i].online = true;
    }
    let mut last_id = 0;
    for op in ops {
        match op {
            Op::Send { from, to, len } => {
                let to_name = USERS.get(to).copied().unwrap_or(GHOST);
                let text = "m".repeat(len);
                let request = Request::SendMessage {
                    to: to_name.into(),
                    text: text.clone(),
                    key: None,
                };
                let result = service.execute(&mut users[from].connection, request);
                match (model[from].online, USERS.get(to)) {
                    (false, _) => assert_eq!(result.unwrap_err().code, ErrorCode::NotLoggedIn),
                    (true, None) => assert_eq!(result.unwrap_err().code, ErrorCode::NoSuchUser),
                    (true, Some(_)) => {
                        let Ok(Reply::Sent { id, .. }) = result else {
                            panic!("send answered {result:?}");
                        };
                        assert!(id > last_id, "ids increase: {id} after {last_id}");
                        last_id = id;
                        let online = model[to].online;
                        model[to].mailbox.insert(id, (text, online));
                        model[to].received.insert(id, 0);
                    }
                }
            }
            Op::Read { user, limit } => {
                let result =
                    service.execute(&mut users[user].connection, Request::ReadMessages { limit });
                if !model[user].online {
                    assert_eq!(result.unwrap_err().code, ErrorCode::NotLoggedIn);
                    continue;
                }
                let Ok(Reply::Messages { messages }) = result else {
                    panic!("read answered {result:?}");
                };
                let expected: Vec<u64> = model[user]
                    .mailbox
                    .iter()
                    .filter(|(_, (_, delivered))| !delivered)
                    .map(|(id, _)| *id)
                    .take(limit as usize)
                    .collect();
                let got: Vec<u64> = messages.iter().map(|m| m.id).collect();
                assert_eq!(got, expected, "undelivered, oldest first, at most {limit}");
                for message in messages {
                    let (text, delivered) = model[user].mailbox.get_mut(&message.id).unwrap();
                    assert_eq!(&message.text, text);
                    *delivered = true;
                    *model[user].received.get_mut(&message.id).unwrap() += 1;
                }
            }
            Op::Delete { user, picks } => {
                // Ids of this user's messages, and of someone else's (never deletable here).
                let all: Vec<u64> = model
                    .iter()
                    .flat_map(|m| m.mailbox.keys().copied())
                    .collect();
                let ids: Vec<u64> = if all.is_empty() {
                    vec![u64::MAX]
                } else {
                    picks.iter().map(|p| all[p.index(all.len())]).collect()
                };
                let result = service.execute(
                    &mut users[user].connection,
                    Request::DeleteMessages { ids: ids.clone() },
                );
                if !model[user].online {
                    assert_eq!(result.unwrap_err().code, ErrorCode::NotLoggedIn);
                    continue;
                }
                let mut expected = 0;
                for id in ids {
                    expected += u32::from(model[user].mailbox.remove(&id).is_some());
                }
                assert_eq!(result.unwrap(), Reply::Deleted { deleted: expected });
            }
            Op::Logout { user } => {
                let result = service.execute(&mut users[user].connection, Request::Logout);
                assert_eq!(result.unwrap(), Reply::Done {});
                model[user].online = false;
            }
            Op::Login { user } => {
                if model[user].online {
                    continue; // one session per user keeps the push accounting simple
                }
                let unread = login(&service, &mut users[user], USERS[user]);
                let waiting = model[user].mailbox.values().filter(|(_, d)| !d).count();
                assert_eq!(unread as usize, waiting, "unread at login");
                model[user].online = true;
            }
        }
        // Live pushes: exactly the messages sent to an online user, once, oldest first.
        for (user, state) in users.iter().zip(model.iter_mut()) {
            let pushed: Vec<u64> = state_pushes(&user.pushes);
            assert!(pushed.windows(2).all(|w| w[0] < w[1]), "pushes in id order");
            for id in pushed {
                *state
                    .received
                    .get_mut(&id)
                    .expect("a push of a message sent here") += 1;
            }
        }
        for state in &model {
            for (id, (_, delivered)) in &state.mailbox {
                assert_eq!(
                    state.received[id],
                    u32::from(*delivered),
                    "message {id} delivered once"
                );
            }
        }
    }
    // Reopened from its log, the service has the same mailboxes.
    let unread: Vec<usize> = model
        .iter()
        .map(|m| m.mailbox.values().filter(|(_, d)| !d).count())
        .collect();
    drop(users);
    drop(service);
    let service = Service::open(&config).expect("reopen");
    for (i, name) in USERS.iter().enumerate() {
        let mut user = connect(&service);
        assert_eq!(
            login(&service, &mut user, name) as usize,
            unread[i],
            "{name} after reopening"
        );
    }
}

fn state_pushes(pushes: &Receiver<ServerFrame>) -> Vec<u64> {
    pushes
        .try_iter()
        .map(|frame| match frame {
            ServerFrame::Push(Push::Deliver(message)) => message.id,
            other => panic!("unexpected frame {other:?}"),
        })
        .collect()
}

proptest! {
    // Each case hashes a few passwords (Argon2id), so cases are few and long.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn every_message_reaches_its_recipient_exactly_once(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
