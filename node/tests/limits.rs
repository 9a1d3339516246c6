//! Limits a client can observe: the per-address request rate (with a retry hint), the
//! per-username login rate, the connection limit, and the memory password hashing holds.

mod common;

use std::time::{Duration, Instant};

use common::{Node, PASSWORD, PROMPT, Raw, both, data_dir, err, ok, wait_until};
use synckit_node::protocol::Protocol;
use synckit_node::protocol::{ErrorCode, ErrorReply, Reply, Request, ServerFrame};

/// The milliseconds in "retry after N ms".
fn retry_hint(error: &ErrorReply) -> u64 {
    let after = error
        .message
        .split("retry after ")
        .nth(1)
        .unwrap_or_else(|| panic!("no retry hint in {:?}", error.message));
    after
        .strip_suffix(" ms")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no milliseconds in {:?}", error.message))
}

both!(requests_beyond_the_rate_are_refused_with_a_retry_hint);
fn requests_beyond_the_rate_are_refused_with_a_retry_hint(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(
        dir.path(),
        &["--requests-per-sec", "5", "--request-burst", "5"],
    );
    let mut c = node.connect(protocol);
    // Pipelined, so they arrive well within one refill interval (200 ms).
    let started = Instant::now();
    let ids: Vec<u32> = (0..6)
        .map(|_| c.send(&Request::ReadMessages { limit: 1 }).unwrap())
        .collect();
    let results: Vec<_> = ids.iter().map(|id| c.wait_for(*id).unwrap()).collect();
    let elapsed = started.elapsed();
    for result in &results[..5] {
        assert_eq!(result.as_ref().unwrap_err().code, ErrorCode::NotLoggedIn);
    }
    let refused = results[5].as_ref().unwrap_err();
    if elapsed < Duration::from_millis(200) {
        assert_eq!(refused.code, ErrorCode::RateLimited, "{refused}");
    }
    let refused = match refused.code {
        ErrorCode::RateLimited => refused.clone(),
        // A very slow machine took longer than a refill: the next one must be refused.
        _ => err(
            c.call(&Request::ReadMessages { limit: 1 }),
            ErrorCode::RateLimited,
        ),
    };
    let refused = &refused;
    let hint = retry_hint(refused);
    assert!((1..=200).contains(&hint), "retry after {hint} ms");
    // Another connection from the same address shares the limit.
    err(
        node.connect(protocol).call(&Request::Logout),
        ErrorCode::RateLimited,
    );
    // After the hinted wait (the bucket refills with time; there is no other signal), a
    // request is served again.
    let mut served = false;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(hint + 5));
        match c.call(&Request::ReadMessages { limit: 1 }).unwrap() {
            Err(e) if e.code == ErrorCode::NotLoggedIn => {
                served = true;
                break;
            }
            Err(e) if e.code == ErrorCode::RateLimited => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(served, "the limit lifts after the hinted wait");
    // The refusals are counted.
    let stats = node.stats();
    let limited = stats["rate_limits"]["requests_per_address"]["limited"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}", stats["rate_limits"]));
    assert!(limited >= 2, "{}", stats["rate_limits"]);
    let metrics = node.get("/metrics").body;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("synckit_rate_limited_requests_total"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 2.0, "{line}");
}

#[test]
fn login_attempts_are_limited_per_username() {
    let dir = data_dir();
    let node = Node::start(
        dir.path(),
        &["--logins-per-minute", "1", "--login-burst", "2"],
    );
    node.create("alice");
    node.create("bob");
    let mut c = node.connect(Protocol::Binary);
    err(c.login("alice", "wrong password 1"), ErrorCode::AuthFailed);
    err(c.login("alice", "wrong password 2"), ErrorCode::AuthFailed);
    let refused = err(c.login("alice", "wrong password 3"), ErrorCode::RateLimited);
    // One attempt per minute: the next one is tens of seconds away.
    let hint = retry_hint(&refused);
    assert!((1_000..=60_000).contains(&hint), "retry after {hint} ms");
    // Even the right password waits now, on any connection and in any protocol.
    err(c.login("alice", PASSWORD), ErrorCode::RateLimited);
    err(
        node.connect(Protocol::Json).login("alice", PASSWORD),
        ErrorCode::RateLimited,
    );
    // Another username is not affected.
    assert_eq!(ok(c.login("bob", PASSWORD)), Reply::LoggedIn { unread: 0 });
    let stats = node.stats();
    assert!(
        stats["rate_limits"]["logins_per_user"]["limited"]
            .as_u64()
            .unwrap()
            >= 3,
        "{}",
        stats["rate_limits"]
    );
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &["--max-connections", "3"]);
    // Three connections, each registered (it has been answered).
    let mut open = common::registered_connections(node.chat, 3);
    // The fourth is told why, then closed (the node answers once it knows the protocol).
    let mut fourth = Raw::connect(node.chat, Protocol::Json);
    fourth.request(1, &Request::ReadMessages { limit: 1 });
    match fourth.next() {
        common::RawRead::Frame(ServerFrame::Response(response)) => {
            let error = response.result.unwrap_err();
            assert_eq!(error.code, ErrorCode::Internal);
            assert!(error.message.contains("connection limit"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    fourth.expect_closed();
    // The open ones are unaffected; once one closes, a new connection is accepted.
    open[0].request(2, &Request::Logout);
    assert_eq!(open[0].expect_ok(2), Reply::Done {});
    drop(open.pop());
    assert!(
        wait_until(PROMPT, || {
            let mut raw = Raw::connect(node.chat, Protocol::Binary);
            raw.request(3, &Request::Logout);
            match raw.next() {
                common::RawRead::Frame(ServerFrame::Response(r)) => r.result.is_ok(),
                _ => false,
            }
        }),
        "a connection is accepted again after one closed"
    );
    node.assert_running();
}

/// Password hashing's memory is bounded by its pool: each hashing thread keeps one Argon2
/// memory (19 MiB) for all its hashes, so concurrent account creations and logins leave nothing
/// behind in the allocator's arenas. (Before, each hash allocated its own: a node held about
/// 245 MB after four concurrent logins and 285 MB after a few hundred; about 50 MB now, and at
/// most one memory per hashing thread in use, four here.)
#[test]
fn concurrent_logins_leave_no_hashing_memory_behind() {
    const CONCURRENT: usize = 4;
    const LIMIT_KB: u64 = 160 * 1024;
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    std::thread::scope(|scope| {
        for t in 0..CONCURRENT {
            let node = &node;
            scope.spawn(move || {
                for round in 0..4 {
                    node.user(Protocol::Binary, &format!("hasher-{t}-{round}"));
                }
            });
        }
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let resident_kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().strip_suffix(" kB"))
        .and_then(|kb| kb.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    assert!(
        resident_kb < LIMIT_KB,
        "the node holds {resident_kb} kB after {} concurrent account creations and logins",
        CONCURRENT * 4
    );
}
