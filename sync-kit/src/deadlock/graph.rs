//! The wait-for graph: who waits, for which lock, holding what.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::report::{BlockedBy, CycleStep, DeadlockReport, ThreadInfo};
use super::{CYCLES, WAITING_NOW, WAITS};
use crate::held;
use crate::lock::meta::{AccessMode, LockId, LockUse};
use crate::loom::thread::{self, ThreadId};
use crate::loom::{InternalMutex, global};

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
    waiters: HashMap<ThreadId, Waiter>,
    /// For each lock, the waiting threads that hold it.
    holders: HashMap<LockId, Vec<ThreadId>>,
    /// For each lock, the waiting threads that want it exclusively.
    queued_writers: HashMap<LockId, Vec<ThreadId>>,
}

/// Proof that the current thread is in the graph; dropping it takes the thread out.
#[derive(Debug)]
#[must_use]
pub(crate) struct WaitRegistration {
    thread: ThreadId,
    left: bool,
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
            graph.remove(self.thread);
            self.left = true;
            WAITING_NOW.fetch_sub(1, Ordering::Relaxed);
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
        graph.remove(self.thread);
        self.left = true;
        WAITING_NOW.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for WaitRegistration {
    fn drop(&mut self) {
        if !self.left {
            GRAPH.lock().remove(self.thread);
            WAITING_NOW.fetch_sub(1, Ordering::Relaxed);
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
    let id = current.id();
    let waiter = Waiter {
        thread: ThreadInfo::new(id, current.name()),
        wants,
        holds: held::held_by_current_thread(),
    };
    let mut graph = GRAPH.lock();
    graph.insert(id, waiter);
    if let Some(cycle) = graph.find_cycle(id) {
        graph.remove(id);
        CYCLES.fetch_add(1, Ordering::Relaxed);
        return Err(DeadlockReport::new(cycle));
    }
    announce();
    WAITS.fetch_add(1, Ordering::Relaxed);
    WAITING_NOW.fetch_add(1, Ordering::Relaxed);
    Ok(WaitRegistration {
        thread: id,
        left: false,
    })
}

impl WaitForGraph {
    fn insert(&mut self, id: ThreadId, waiter: Waiter) {
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

    fn remove(&mut self, id: ThreadId) {
        let Some(waiter) = self.waiters.remove(&id) else {
            return;
        };
        for held in &waiter.holds {
            unindex(&mut self.holders, held.lock.id, id);
        }
        if waiter.wants.mode == AccessMode::Exclusive {
            unindex(&mut self.queued_writers, waiter.wants.lock.id, id);
        }
    }

    /// The waiting threads that `id` waits for, and why.
    fn blockers(&self, id: ThreadId) -> Vec<(ThreadId, BlockedBy)> {
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
    fn find_cycle(&self, start: ThreadId) -> Option<Vec<CycleStep>> {
        let mut reached_from: HashMap<ThreadId, (ThreadId, BlockedBy)> = HashMap::new();
        let mut visited: HashSet<ThreadId> = HashSet::from([start]);
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
        start: ThreadId,
        last: ThreadId,
        closing_edge: BlockedBy,
        mut reached_from: HashMap<ThreadId, (ThreadId, BlockedBy)>,
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

fn unindex(index: &mut HashMap<LockId, Vec<ThreadId>>, lock: LockId, thread: ThreadId) {
    if let Some(threads) = index.get_mut(&lock) {
        threads.retain(|t| *t != thread);
        if threads.is_empty() {
            index.remove(&lock);
        }
    }
}
