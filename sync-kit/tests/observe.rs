//! The dashboard's data (cargo feature `observe`): `deadlock::recent()` keeps the last refusals
//! in order, `observe::snapshot_json()` lists the named locks, `observe::prometheus_text()` is
//! valid Prometheus text, and `observe::serve` serves all three.
//!
//! The refusals ring and the order checker's policy are process-wide, so the tests that refuse
//! run one at a time (`SERIAL`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, Mutex as StdMutex};
use std::thread;

use sync_kit::deadlock::{self, OrderChecking, RECENT_CAPACITY, Refusal};
use sync_kit::{LockError, Mutex};

static SERIAL: StdMutex<()> = StdMutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// One refused inversion: `first` learned before `second`, then `first` requested while holding
/// `second`.
fn refuse_inversion(first: &'static str, second: &'static str) {
    let (a, b) = (Mutex::named(first, ()), Mutex::named(second, ()));
    drop((a.lock().unwrap(), b.lock().unwrap()));
    let _b = b.lock().unwrap();
    assert!(matches!(a.lock(), Err(LockError::OrderInversion(_))));
}

/// One refused ABBA cycle between two threads on `left` and `right`.
fn refuse_cycle(left: &'static str, right: &'static str) {
    let previous = deadlock::order_checking();
    deadlock::set_order_checking(OrderChecking::Off);
    let a = Arc::new(Mutex::named(left, ()));
    let b = Arc::new(Mutex::named(right, ()));
    let barrier = Arc::new(Barrier::new(2));
    let spawn = |first: Arc<Mutex<()>>, second: Arc<Mutex<()>>| {
        let barrier = Arc::clone(&barrier);
        thread::spawn(move || {
            let _held = first.lock().unwrap();
            barrier.wait();
            second.lock().map(drop)
        })
    };
    let t1 = spawn(Arc::clone(&a), Arc::clone(&b));
    let t2 = spawn(b, a);
    let outcomes = [t1.join().unwrap(), t2.join().unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Err(LockError::Deadlock(_))))
            .count(),
        1,
        "{outcomes:?}"
    );
    deadlock::set_order_checking(previous);
}

#[test]
fn recent_keeps_the_last_refusals_in_order() {
    let _serial = serial();
    deadlock::set_order_checking(OrderChecking::Refuse);
    let before = deadlock::recent().last().map_or(0, |r| r.seq);

    refuse_cycle("recent-left", "recent-right");
    refuse_inversion("recent-a", "recent-b");
    let kept = deadlock::recent();
    let mine: Vec<_> = kept.iter().filter(|r| r.seq > before).collect();
    assert_eq!(mine.len(), 2, "{kept:#?}");
    let Refusal::Deadlock(cycle) = &mine[0].refusal else {
        panic!("the cycle first: {:#?}", mine[0]);
    };
    let mut names: Vec<_> = cycle
        .cycle()
        .iter()
        .filter_map(|s| s.wants.name())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["recent-left", "recent-right"]);
    // Call sites come with every step.
    assert!(
        cycle
            .cycle()
            .iter()
            .all(|s| s.wants.at.file().ends_with("observe.rs"))
    );
    let Refusal::Inversion(inversion) = &mine[1].refusal else {
        panic!("then the inversion: {:#?}", mine[1]);
    };
    assert_eq!(inversion.requested.name(), Some("recent-a"));
    assert_eq!(inversion.held.name(), Some("recent-b"));
    assert!(inversion.refused);
    assert!(mine[0].at <= mine[1].at);

    // Past the capacity only the newest are kept, oldest first, numbered without gaps.
    for _ in 0..RECENT_CAPACITY + 3 {
        refuse_inversion("recent-many-a", "recent-many-b");
    }
    let kept = deadlock::recent();
    assert_eq!(kept.len(), RECENT_CAPACITY);
    let last = kept.last().unwrap().seq;
    let seqs: Vec<u64> = kept.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (last + 1 - RECENT_CAPACITY as u64..=last).collect();
    assert_eq!(seqs, expected);
    assert!(
        kept.iter()
            .all(|r| matches!(&r.refusal, Refusal::Inversion(i) if i.requested.name() == Some("recent-many-a")))
    );
}

#[test]
fn snapshot_lists_named_locks_with_acquisitions_and_the_refusals() {
    let _serial = serial();
    deadlock::set_order_checking(OrderChecking::Refuse);
    let lock = Mutex::named("snapshot-accounts", 0u32);
    for _ in 0..3 {
        *lock.lock().unwrap() += 1;
    }
    refuse_cycle("snapshot-left", "snapshot-right");
    let snapshot = sync_kit::observe::snapshot_json();
    let locks = snapshot["locks"].as_array().expect("a list of locks");
    let mine = locks
        .iter()
        .find(|l| l["name"] == "snapshot-accounts")
        .expect("the named lock is listed");
    assert_eq!(mine["acquisitions"], 3);
    assert_eq!(mine["kind"], "mutex");
    assert_eq!(mine["contention_ratio"], 0.0);
    for key in [
        "contentions",
        "total_wait_ns",
        "max_wait_ns",
        "p99_wait_ns",
        "holds_timed",
    ] {
        assert!(mine[key].is_u64(), "{key}: {mine}");
    }
    assert!(snapshot["detector"]["cycles_detected"].as_u64().unwrap() >= 1);
    assert_eq!(snapshot["order_checking"], "refuse");
    let last = snapshot["refusals"]
        .as_array()
        .and_then(|r| r.last())
        .expect("a refusal");
    assert_eq!(last["kind"], "deadlock");
    let cycle = last["cycle"].as_array().unwrap();
    assert_eq!(cycle.len(), 2);
    for step in cycle {
        let wants = step["wants"]["lock"]["label"].as_str().unwrap();
        assert!(wants.starts_with("snapshot-"), "{step}");
        assert!(
            step["wants"]["at"]
                .as_str()
                .unwrap()
                .contains("observe.rs:"),
            "{step}"
        );
        assert_eq!(step["blocked_by"]["kind"], "holder");
        assert!(step["thread"]["id"].as_str().is_some());
    }
    assert!(last["text"].as_str().unwrap().contains("deadlock refused"));
}

/// `key="value",...` with values escaped (`\\`, `\"`, `\n`).
fn check_labels(labels: &str, line: &str) {
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("key=: {line}"));
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {key:?}: {line}"
        );
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    let escaped = chars.next().map(|(_, c)| c);
                    assert!(matches!(escaped, Some('\\' | '"' | 'n')), "escape: {line}");
                }
                Some((i, '"')) => break i,
                Some(_) => {}
                None => panic!("unterminated label value: {line}"),
            }
        };
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or_else(|| {
            assert!(rest.is_empty(), "after a label: {line}");
            rest
        });
    }
}

/// Checks the text exposition format line by line; returns each family's type and sample count.
fn parse_prometheus(text: &str) -> BTreeMap<String, (String, usize)> {
    let mut families: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let is_name = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            let previous = families.insert(name.to_owned(), (kind.to_owned(), 0));
            assert!(previous.is_none(), "TYPE twice: {line}");
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("a number: {line}"));
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect("labels closed");
                    check_labels(labels, line);
                    name
                }
                None => series,
            };
            let family = families
                .iter_mut()
                .rev()
                .find(|(family, (kind, _))| {
                    name == family.as_str()
                        || (kind == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|s| name.strip_suffix(s) == Some(family.as_str())))
                })
                .unwrap_or_else(|| panic!("a sample of no declared family: {line}"));
            family.1.1 += 1;
        }
    }
    families
}

#[test]
fn prometheus_text_is_valid_and_has_the_figures() {
    let _serial = serial();
    let lock = Mutex::named("prometheus-\"quoted\"\\lock", ());
    drop(lock.lock().unwrap());
    let text = sync_kit::observe::prometheus_text();
    let families = parse_prometheus(&text);
    for (name, kind) in [
        ("synckit_lock_acquisitions_total", "counter"),
        ("synckit_lock_contentions_total", "counter"),
        ("synckit_lock_max_wait_seconds", "gauge"),
        ("synckit_lock_hold_seconds_total", "counter"),
        ("synckit_lock_wait_seconds", "histogram"),
        ("synckit_deadlock_cycles_refused_total", "counter"),
        ("synckit_deadlock_order_inversions_total", "counter"),
        ("synckit_deadlock_threads_waiting", "gauge"),
    ] {
        let (found, samples) = families.get(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(found, kind, "{name}");
        assert!(*samples > 0, "{name} has samples");
    }
    assert!(
        text.contains(
            "synckit_lock_acquisitions_total{lock=\"prometheus-\\\"quoted\\\"\\\\lock\",kind=\"mutex\",level=\"none\"} 1\n"
        ),
        "{text}"
    );
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[test]
fn serve_answers_the_page_the_json_with_panels_and_metrics() {
    let addr = sync_kit::observe::serve_with_panels(
        "127.0.0.1:0",
        || serde_json::json!([{ "title": "app", "rows": [["answer", 42]] }]),
    )
    .unwrap();
    let (head, page) = http_get(addr, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/html"), "{head}");
    assert!(page.starts_with("<!doctype html>"));
    // Self-contained: nothing fetched from another host.
    // (the one `http://` is SVG's namespace name, which is never fetched).
    assert_eq!(
        page.matches("http://").count(),
        page.matches("http://www.w3.org/2000/svg").count()
    );
    for banned in ["https://", "<link rel=\"stylesheet\"", "<script src"] {
        assert!(!page.contains(banned), "{banned}");
    }
    let (head, json) = http_get(addr, "/dashboard.json");
    assert!(head.contains("application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["panels"][0]["rows"][0][1], 42);
    assert!(json["locks"].is_array());
    let (head, metrics) = http_get(addr, "/metrics");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    parse_prometheus(&metrics);
    let (head, _) = http_get(addr, "/nowhere");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
