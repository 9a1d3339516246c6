//! The acquisition future shared by the async locks.
//!
//! First poll: level check and order check against what the owner holds (its async locks and the
//! thread's held list), then the fast path (`try_take`). If the lock is busy: register in the
//! wait-for graph and queue on the lock in one critical section of the graph's lock (refused with
//! `LockError::Deadlock` if the wait would close a cycle), and return `Pending`. Later polls look
//! for the grant. Dropping the future while queued cancels the wait (see `raw`).

use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use super::raw::{AsyncRawLock, Queue};
use super::{Owner, holds_of};
use crate::deadlock::{self, OrderChecking, WaitRegistration, order_checking};
use crate::error::LockError;
use crate::held;
use crate::lock::meta::{AccessMode, LockMeta, LockUse};

enum Stage {
    Start,
    Queued {
        owner: Owner,
        ticket: u64,
        registration: WaitRegistration,
        since: Instant,
    },
    Done,
}

/// Resolves to the owner that now holds the lock.
pub(crate) struct Acquire<'a> {
    raw: &'a AsyncRawLock,
    meta: &'a LockMeta,
    mode: AccessMode,
    at: &'static Location<'static>,
    stage: Stage,
}

impl<'a> Acquire<'a> {
    pub(crate) fn new(
        raw: &'a AsyncRawLock,
        meta: &'a LockMeta,
        mode: AccessMode,
        at: &'static Location<'static>,
    ) -> Self {
        Self {
            raw,
            meta,
            mode,
            at,
            stage: Stage::Start,
        }
    }

    fn request(&self) -> LockUse {
        LockUse {
            lock: self.meta.info,
            mode: self.mode,
            at: self.at,
        }
    }

    /// Bookkeeping once the owner holds the lock.
    fn acquired(&self, owner: Owner) {
        match self.mode {
            AccessMode::Exclusive => self.meta.counters.count_exclusive(),
            AccessMode::Shared => self.meta.counters.count_shared(),
        }
        super::push(owner, self.request());
    }
}

/// The checks every acquisition makes first (level; learned order if it may wait).
pub(crate) fn check(
    meta: &LockMeta,
    mode: AccessMode,
    at: &'static Location<'static>,
    owner: Owner,
    may_wait: bool,
) -> Result<(), LockError> {
    // The owner's async holds matter only to a leveled lock and to order checking.
    let needed = meta.info.level.is_some() || order_checking() != OrderChecking::Off;
    let holds = if needed { holds_of(owner) } else { Vec::new() };
    held::check_level_with(&meta.info, mode, at, &holds)?;
    if may_wait {
        deadlock::check_order_with(
            &LockUse {
                lock: meta.info,
                mode,
                at,
            },
            &holds,
        )?;
    }
    Ok(())
}

/// Bookkeeping of a release (the caller releases the raw lock right after).
pub(crate) fn released(meta: &LockMeta, mode: AccessMode, owner: Owner) {
    if mode == AccessMode::Exclusive {
        meta.counters.release_exclusive();
    }
    super::remove(owner, meta.info.id, mode);
}

/// Takes the lock now or not at all (a `try_*`): no order check, no graph.
pub(crate) fn try_acquire(
    raw: &AsyncRawLock,
    meta: &LockMeta,
    mode: AccessMode,
    at: &'static Location<'static>,
) -> Result<Owner, LockError> {
    let owner = Owner::current();
    check(meta, mode, at, owner, false)?;
    if !raw.try_take(mode) {
        return Err(LockError::Timeout);
    }
    let acquire = Acquire::new(raw, meta, mode, at);
    acquire.acquired(owner);
    Ok(owner)
}

impl Future for Acquire<'_> {
    type Output = Result<Owner, LockError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Acquire` holds no self-references: it is `Unpin`.
        let this = self.get_mut();
        match &mut this.stage {
            Stage::Start => {
                let owner = Owner::current();
                check(this.meta, this.mode, this.at, owner, true)?;
                if this.raw.try_take(this.mode) {
                    this.stage = Stage::Done;
                    this.acquired(owner);
                    return Poll::Ready(Ok(owner));
                }
                let holds = holds_of(owner);
                let since = Instant::now();
                let mut ticket = None;
                let raw = this.raw;
                let mode = this.mode;
                let waker = cx.waker();
                let registration =
                    deadlock::begin_wait_as(owner.info(), this.request(), holds, &mut |key| {
                        match raw.take_or_queue(mode, waker.clone(), key) {
                            Queue::Took => false,
                            Queue::Queued(t) => {
                                ticket = Some(t);
                                true
                            }
                        }
                    })
                    .map_err(|report| LockError::Deadlock(Box::new(report)))?;
                match (registration, ticket) {
                    (Some(registration), Some(ticket)) => {
                        this.stage = Stage::Queued {
                            owner,
                            ticket,
                            registration,
                            since,
                        };
                        Poll::Pending
                    }
                    _ => {
                        this.stage = Stage::Done;
                        this.acquired(owner);
                        Poll::Ready(Ok(owner))
                    }
                }
            }
            Stage::Queued {
                owner,
                ticket,
                registration,
                since,
            } => {
                if !this.raw.poll_granted(*ticket, cx.waker()) {
                    return Poll::Pending;
                }
                // The releaser that granted it took the wait out of the graph.
                registration.mark_left();
                let (owner, waited) = (*owner, since.elapsed());
                this.stage = Stage::Done;
                this.meta.counters.count_wait(waited, this.at);
                this.acquired(owner);
                Poll::Ready(Ok(owner))
            }
            Stage::Done => panic!("an acquisition future polled after it completed"),
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if let Stage::Queued {
            ticket,
            registration,
            ..
        } = &mut self.stage
        {
            self.raw.cancel(*ticket, self.mode, registration.key());
            registration.mark_left();
        }
    }
}
