//! The async lock state: who holds it, and a FIFO queue of waiting acquisitions.
//!
//! | writer | readers | queue     | meaning                                                     |
//! |--------|---------|-----------|-------------------------------------------------------------|
//! | false  | 0       | empty     | free: the fast path takes it                                 |
//! | true   | 0       | any       | held exclusively                                            |
//! | false  | n > 0   | any       | held by n readers                                           |
//! | false  | 0       | non-empty | transient: a release is handing it to the head of the queue  |
//!
//! Invariants, all under the one internal mutex:
//! - a new acquisition takes the lock only if nobody is queued (strict FIFO: once a writer waits,
//!   new readers queue behind it, which is writer preference);
//! - a release hands the lock to the head of the queue, and to every reader right behind it when
//!   the head is a reader: they hold the lock from that moment (their tickets move to `granted`)
//!   and their futures find them granted at their next poll;
//! - a queued acquisition that is cancelled leaves the queue; one that was granted but never saw
//!   it releases the lock again, which passes it on.
//!
//! Lock order: the wait-for graph's lock, then this mutex (a queued waiter enters both in one
//! critical section; a release with waiters takes both to hand over and leave the graph together).

use std::collections::VecDeque;
use std::task::Waker;

use crate::deadlock::{self, WaitKey};
use crate::lock::meta::AccessMode;
use crate::loom::InternalMutex;

#[derive(Debug)]
struct Queued {
    ticket: u64,
    mode: AccessMode,
    waker: Waker,
    key: WaitKey,
}

#[derive(Debug, Default)]
struct State {
    writer: bool,
    readers: usize,
    queue: VecDeque<Queued>,
    granted: Vec<u64>,
    next_ticket: u64,
}

impl State {
    fn compatible(&self, mode: AccessMode) -> bool {
        match mode {
            AccessMode::Exclusive => !self.writer && self.readers == 0,
            AccessMode::Shared => !self.writer,
        }
    }

    fn take(&mut self, mode: AccessMode) {
        match mode {
            AccessMode::Exclusive => self.writer = true,
            AccessMode::Shared => self.readers += 1,
        }
    }

    fn untake(&mut self, mode: AccessMode) {
        match mode {
            AccessMode::Exclusive => self.writer = false,
            AccessMode::Shared => self.readers -= 1,
        }
    }

    /// Hands the lock to the head of the queue while it can have it; returns who to wake, and
    /// their waits to take out of the graph.
    fn grant(&mut self) -> Vec<(Waker, WaitKey)> {
        let mut woken = Vec::new();
        while let Some(head) = self.queue.front() {
            if !self.compatible(head.mode) {
                break;
            }
            let head = self.queue.pop_front().expect("the head exists");
            self.take(head.mode);
            self.granted.push(head.ticket);
            woken.push((head.waker, head.key));
        }
        woken
    }
}

/// What a queued acquisition learns when polled.
pub(crate) enum Queue {
    /// It took the lock without queueing.
    Took,
    /// It is queued with this ticket.
    Queued(u64),
}

#[derive(Debug, Default)]
pub(crate) struct AsyncRawLock {
    state: InternalMutex<State>,
}

impl AsyncRawLock {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Takes the lock if it is free for `mode` and nobody is queued.
    pub(crate) fn try_take(&self, mode: AccessMode) -> bool {
        let mut state = self.state.lock();
        if state.queue.is_empty() && state.compatible(mode) {
            state.take(mode);
            true
        } else {
            false
        }
    }

    /// Called under the graph's lock: takes the lock if it became free, else queues the wait.
    pub(crate) fn take_or_queue(&self, mode: AccessMode, waker: Waker, key: WaitKey) -> Queue {
        let mut state = self.state.lock();
        if state.queue.is_empty() && state.compatible(mode) {
            state.take(mode);
            return Queue::Took;
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Queued {
            ticket,
            mode,
            waker,
            key,
        });
        Queue::Queued(ticket)
    }

    /// Whether `ticket` was granted (then it holds the lock); otherwise refreshes its waker.
    pub(crate) fn poll_granted(&self, ticket: u64, waker: &Waker) -> bool {
        let mut state = self.state.lock();
        if let Some(at) = state.granted.iter().position(|&t| t == ticket) {
            state.granted.swap_remove(at);
            return true;
        }
        if let Some(queued) = state.queue.iter_mut().find(|q| q.ticket == ticket) {
            queued.waker.clone_from(waker);
        }
        false
    }

    /// Releases a hold in `mode`, handing the lock on to queued waiters.
    pub(crate) fn release(&self, mode: AccessMode) {
        {
            let mut state = self.state.lock();
            if state.queue.is_empty() {
                state.untake(mode);
                return;
            }
        }
        let woken = deadlock::with_graph(|leave| {
            let mut state = self.state.lock();
            state.untake(mode);
            let woken = state.grant();
            for (_, key) in &woken {
                leave(*key);
            }
            woken
        });
        for (waker, _) in woken {
            waker.wake();
        }
    }

    /// A queued acquisition is abandoned (its future dropped): it leaves the queue and the graph;
    /// if it had been granted meanwhile, the lock it never saw is released and passed on.
    pub(crate) fn cancel(&self, ticket: u64, mode: AccessMode, key: WaitKey) {
        let woken = deadlock::with_graph(|leave| {
            leave(key);
            let mut state = self.state.lock();
            if let Some(at) = state.granted.iter().position(|&t| t == ticket) {
                state.granted.swap_remove(at);
                state.untake(mode);
            } else if let Some(at) = state.queue.iter().position(|q| q.ticket == ticket) {
                state.queue.remove(at);
            }
            // A writer leaving the head may let the readers behind it in.
            let woken = state.grant();
            for (_, key) in &woken {
                leave(*key);
            }
            woken
        });
        for (waker, _) in woken {
            waker.wake();
        }
    }

    /// (write-locked, readers) right now, for diagnostics.
    pub(crate) fn snapshot(&self) -> (bool, usize) {
        let state = self.state.lock();
        (state.writer, state.readers)
    }
}
