//! The wait-for graph: who waits, for which lock, holding what.
//!
//! A waiter is a thread sleeping on a blocking lock or a tokio task queued on an async lock; each
//! wait is entered under its own key (a task may wait on two locks at once inside a `select!`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering};

use super::recent::{self, Refusal};
use super::report::{BlockedBy, CycleStep, DeadlockReport, ThreadInfo};
use super::{CYCLES, WAITING_NOW, WAITS};
use crate::held;
use crate::lock::meta::{AccessMode, LockId, LockUse};
use crate::loom::thread;
use crate::loom::{InternalMutex, global};

/// One wait in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct WaitKey(u64);

static NEXT_WAIT: StdAtomicU64 = StdAtomicU64::new(1);

impl WaitKey {
    fn next() -> Self {
        // Only uniqueness matters.
        WaitKey(NEXT_WAIT.fetch_add(1, Ordering::Relaxed))
    }
}

global! {
    static GRAPH: InternalMutex<WaitForGraph> = InternalMutex::new(WaitForGraph::default());
}

/// A thread that sleeps (or is about to) on a lock.
#[derive(Debug)]
struct Waiter {
    thread: ThreadInfo,
    wants: LockUse,
    holds: Vec<LockUse>,
}

/// Waiting threads, indexed so that a search touches only the edges it follows.
#[derive(Debug, Default)]
struct WaitForGraph {
    waiters: HashMap<WaitKey, Waiter>,
    /// For each lock, the waiting threads that hold it.
    holders: HashMap<LockId, Vec<WaitKey>>,
    /// For each lock, the waiting threads that want it exclusively.
    queued_writers: HashMap<LockId, Vec<WaitKey>>,
}

/// Proof that a wait is in the graph; dropping it takes the wait out.
#[derive(Debug)]
#[must_use]
pub(crate) struct WaitRegistration {
    thread: WaitKey,
    left: bool,
}

#[cfg(any(feature = "tokio", loom))]
impl WaitRegistration {
    /// This wait's key (for an async lock's queue, whose releaser takes a granted wait out).
    pub(crate) fn key(&self) -> WaitKey {
        self.thread
    }

    /// Records that the wait already left the graph (taken out by the releaser that granted it).
    pub(crate) fn mark_left(&mut self) {
        self.left = true;
    }
}

impl WaitRegistration {
    /// Runs `attempt` under the graph's lock; if it acquires the lock, the thread leaves the
    /// graph before the graph's lock is released.
    pub(crate) fn attempt_and_leave(&mut self, attempt: &mut dyn FnMut() -> bool) -> bool {
        if self.left {
            return attempt();
        }
        let mut graph = GRAPH.lock();
        let acquired = attempt();
        if acquired {
            graph.leave(self.thread);
            self.left = true;
        }
        acquired
    }
}

impl WaitRegistration {
    /// Leaves the graph without the lock, running `undo` under the graph's lock first.
    pub(crate) fn leave_with(&mut self, undo: &mut dyn FnMut()) {
        if self.left {
            undo();
            return;
        }
        let mut graph = GRAPH.lock();
        undo();
        graph.leave(self.thread);
        self.left = true;
    }
}

impl Drop for WaitRegistration {
    fn drop(&mut self) {
        if !self.left {
            GRAPH.lock().leave(self.thread);
        }
    }
}

/// Enters the current thread in the graph as waiting for `wants`, unless that closes a cycle;
/// `announce` marks the wait in the lock word, under the graph's lock, when it is accepted.
#[cold]
pub(crate) fn begin_wait(
    wants: LockUse,
    announce: &mut dyn FnMut(),
) -> Result<WaitRegistration, DeadlockReport> {
    let current = thread::current();
    let waiter = ThreadInfo::new(current.id(), current.name());
    let registration = begin_wait_as(waiter, wants, holds_of_current_thread(), &mut |_| {
        announce();
        true
    })?;
    Ok(registration.expect("a blocking wait is always entered"))
}

/// What a thread about to sleep holds: its held list, and the async locks held by the task it
/// runs (or by the thread itself, outside any task).
fn holds_of_current_thread() -> Vec<LockUse> {
    #[cfg(any(feature = "tokio", loom))]
    {
        let mut holds = held::held_by_current_thread();
        holds.extend(crate::tokio::held_by_current_owner());
        holds
    }
    #[cfg(not(any(feature = "tokio", loom)))]
    held::held_by_current_thread()
}

/// Enters a wait by `waiter`, holding `holds`, for `wants`, unless that closes a cycle. Under
/// the graph's lock, `announce` (given the wait's key) queues the wait on the lock and returns
/// `true`, or returns `false` if it took the lock instead (then the wait leaves at once:
/// `Ok(None)`).
#[cold]
pub(crate) fn begin_wait_as(
    thread: ThreadInfo,
    wants: LockUse,
    holds: Vec<LockUse>,
    announce: &mut dyn FnMut(WaitKey) -> bool,
) -> Result<Option<WaitRegistration>, DeadlockReport> {
    let id = WaitKey::next();
    let waiter = Waiter {
        thread,
        wants,
        holds,
    };
    let mut graph = GRAPH.lock();
    graph.insert(id, waiter);
    if let Some(cycle) = graph.find_cycle(id) {
        graph.remove(id);
        drop(graph);
        CYCLES.fetch_add(1, Ordering::Relaxed);
        let report = DeadlockReport::new(cycle);
        recent::record(Refusal::Deadlock(report.clone()));
        return Err(report);
    }
    if !announce(id) {
        graph.remove(id);
        return Ok(None);
    }
    WAITS.fetch_add(1, Ordering::Relaxed);
    WAITING_NOW.fetch_add(1, Ordering::Relaxed);
    Ok(Some(WaitRegistration {
        thread: id,
        left: false,
    }))
}

#[cfg(any(feature = "tokio", loom))]
/// Runs `f` under the graph's lock; `f` may take granted waits out of the graph with the
/// callback it is given (an async lock's releaser hands the lock to queued waiters so).
pub(crate) fn with_graph<R>(f: impl FnOnce(&mut dyn FnMut(WaitKey)) -> R) -> R {
    let mut graph = GRAPH.lock();
    f(&mut |key| graph.leave(key))
}

impl WaitForGraph {
    fn insert(&mut self, id: WaitKey, waiter: Waiter) {
        let mut held_ids: Vec<LockId> = waiter.holds.iter().map(|h| h.lock.id).collect();
        held_ids.sort_unstable();
        held_ids.dedup();
        for lock in held_ids {
            self.holders.entry(lock).or_default().push(id);
        }
        if waiter.wants.mode == AccessMode::Exclusive {
            self.queued_writers
                .entry(waiter.wants.lock.id)
                .or_default()
                .push(id);
        }
        self.waiters.insert(id, waiter);
    }

    /// Takes a wait out, counting it out of `threads_waiting` if it was in.
    fn leave(&mut self, id: WaitKey) {
        if self.remove(id) {
            WAITING_NOW.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn remove(&mut self, id: WaitKey) -> bool {
        let Some(waiter) = self.waiters.remove(&id) else {
            return false;
        };
        for held in &waiter.holds {
            unindex(&mut self.holders, held.lock.id, id);
        }
        if waiter.wants.mode == AccessMode::Exclusive {
            unindex(&mut self.queued_writers, waiter.wants.lock.id, id);
        }
        true
    }

    /// The waiting threads that `id` waits for, and why.
    fn blockers(&self, id: WaitKey) -> Vec<(WaitKey, BlockedBy)> {
        let waiter = &self.waiters[&id];
        let lock = waiter.wants.lock.id;
        let mut found = Vec::new();
        for holder in self.holders.get(&lock).into_iter().flatten() {
            let other = &self.waiters[holder];
            let conflicting = other.holds.iter().find(|held| {
                held.lock.id == lock
                    && (waiter.wants.mode == AccessMode::Exclusive
                        || held.mode == AccessMode::Exclusive)
            });
            if let Some(held) = conflicting {
                found.push((
                    *holder,
                    BlockedBy::Holder {
                        thread: other.thread.clone(),
                        held: *held,
                    },
                ));
            }
        }
        if waiter.wants.mode == AccessMode::Shared {
            for writer in self.queued_writers.get(&lock).into_iter().flatten() {
                let other = &self.waiters[writer];
                found.push((
                    *writer,
                    BlockedBy::QueuedWriter {
                        thread: other.thread.clone(),
                        request: other.wants,
                    },
                ));
            }
        }
        found
    }

    /// A path of wait-for edges from `start` back to `start`, if any. Any cycle in the graph
    /// passes through the thread registered last, so searching from it suffices.
    fn find_cycle(&self, start: WaitKey) -> Option<Vec<CycleStep>> {
        let mut reached_from: HashMap<WaitKey, (WaitKey, BlockedBy)> = HashMap::new();
        let mut visited: HashSet<WaitKey> = HashSet::from([start]);
        let mut stack = vec![start];
        while let Some(current) = stack.pop() {
            for (next, edge) in self.blockers(current) {
                if next == start {
                    return Some(self.path_back(start, current, edge, reached_from));
                }
                if visited.insert(next) {
                    reached_from.insert(next, (current, edge));
                    stack.push(next);
                }
            }
        }
        None
    }

    fn path_back(
        &self,
        start: WaitKey,
        last: WaitKey,
        closing_edge: BlockedBy,
        mut reached_from: HashMap<WaitKey, (WaitKey, BlockedBy)>,
    ) -> Vec<CycleStep> {
        let mut steps = Vec::new();
        let mut current = last;
        let mut edge = closing_edge;
        loop {
            let waiter = &self.waiters[&current];
            steps.push(CycleStep {
                thread: waiter.thread.clone(),
                wants: waiter.wants,
                blocked_by: edge,
            });
            if current == start {
                break;
            }
            let (previous, previous_edge) = reached_from
                .remove(&current)
                .expect("every reached thread but the start has a predecessor");
            current = previous;
            edge = previous_edge;
        }
        steps.reverse();
        steps
    }
}

fn unindex(index: &mut HashMap<LockId, Vec<WaitKey>>, lock: LockId, thread: WaitKey) {
    if let Some(threads) = index.get_mut(&lock) {
        threads.retain(|t| *t != thread);
        if threads.is_empty() {
            index.remove(&lock);
        }
    }
}
