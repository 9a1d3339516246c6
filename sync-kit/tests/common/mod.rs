//! Helpers shared by the integration tests: bounded test bodies, bounded polling of probes,
//! named threads, and a per-binary serialisation lock for tests that read global probes.
//!
//! Each test file is its own binary and includes this module, so not every binary uses every
//! helper.
#![allow(dead_code)]

use std::panic;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex as StdMutex, MutexGuard as StdMutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a whole test body may run before it is declared hung.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a probe may be polled before the expected state is declared unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for a message that must come once the state under test is reached.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `body` on its own thread and fails the test with a clear message if it does not finish
/// within [`BODY_TIMEOUT`] (instead of hanging the whole test run). A panic in the body is
/// propagated with its original payload.
pub fn bounded<T: Send + 'static>(what: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(format!("body: {what}"))
        .spawn(move || {
            let value = body();
            let _ = tx.send(value);
        })
        .expect("spawn the test body");
    match rx.recv_timeout(BODY_TIMEOUT) {
        Ok(value) => {
            handle.join().expect("the body thread ended cleanly");
            value
        }
        Err(RecvTimeoutError::Timeout) => panic!(
            "{what}: the test body did not finish within {BODY_TIMEOUT:?}; a lock operation \
             probably hangs (deadlock not detected, or a lost wake-up)"
        ),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => panic::resume_unwind(payload),
            Ok(()) => unreachable!("the body sends its value before it ends"),
        },
    }
}

static SERIAL: StdMutex<()> = StdMutex::new(());

/// Serialises the tests of one test binary that read the global probe
/// `sync_kit::deadlock::stats().threads_waiting` (or create waiting threads that would disturb
/// it). Hold the returned guard for the whole test.
pub fn serial() -> StdMutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Polls `done` (yielding in between) until it holds; fails after [`PROBE_TIMEOUT`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up after {PROBE_TIMEOUT:?} waiting until {what}"
        );
        thread::yield_now();
    }
}

/// Threads registered as waiting in the deadlock detector right now (a process-wide probe).
pub fn waiting() -> u64 {
    sync_kit::deadlock::stats().threads_waiting
}

/// Waits until at least `n` threads are registered as waiting in the detector.
pub fn wait_for_waiters(n: u64) {
    wait_until(&format!("{n} thread(s) wait in the detector"), || {
        waiting() >= n
    });
}

/// Spawns a thread with a name (names appear in deadlock reports).
pub fn spawn<T: Send + 'static>(
    name: impl Into<String>,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn a test thread")
}

/// Joins a thread, propagating its panic with the original payload.
pub fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|payload| panic::resume_unwind(payload))
}

/// Receives a message that must arrive, failing clearly after [`RECV_TIMEOUT`].
pub fn recv<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(RECV_TIMEOUT)
        .unwrap_or_else(|e| panic!("no message within {RECV_TIMEOUT:?} for: {what} ({e})"))
}

/// `file:line:` as it appears in a `Location` display; pass `file!()` of the test file.
pub fn site(file: &str, line: u32) -> String {
    format!("{file}:{line}:")
}
