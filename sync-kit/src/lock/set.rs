//! [`LockSet`]: take several locks at once, in hierarchy order, with rollbacks on error.
//!
//! Listing order does not matter: members are acquired by ascending `(level, lock id)` (leveled
//! locks first, then unleveled ones by id), so two sets over the same locks can never deadlock
//! each other, and locks of one level, which plain acquisitions may never combine, can be held
//! together. Guards are released in reverse acquisition order.
//!
//! [`LockedSet::run`] runs operations that may register rollbacks: if they return an error, the
//! rollbacks run in reverse registration order, with the locks still held, before the error is
//! returned.
//!
//! ```
//! use sync_kit::{Level, LockSet, Mutex};
//!
//! let alice = Mutex::with_level("doc-set-alice", Level(10), 100i64);
//! let bob = Mutex::with_level("doc-set-bob", Level(10), 0i64);
//!
//! let mut set = LockSet::new();
//! let (to, from) = (set.lock(&bob), set.lock(&alice)); // any order
//! let mut held = set.acquire()?;
//! let outcome: Result<(), &str> = held.run(|ops| {
//!     *ops.get_mut(from) -= 150;
//!     ops.on_rollback(move |set| *set.get_mut(from) += 150);
//!     *ops.get_mut(to) += 150;
//!     ops.on_rollback(move |set| *set.get_mut(to) -= 150);
//!     if *ops.get(from) < 0 { return Err("insufficient funds"); }
//!     Ok(())
//! });
//! assert_eq!(outcome, Err("insufficient funds"));
//! assert_eq!((*held.get(from), *held.get(to)), (100, 0)); // rolled back
//! # Ok::<(), sync_kit::LockError>(())
//! ```

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};

use super::acquire::Wait;
use super::meta::LockInfo;
use super::mutex::{Mutex, MutexGuard};
use super::rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use crate::error::LockError;
use crate::held::LevelRule;

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// Locks to acquire together. Build it with [`lock`](LockSet::lock), [`read`](LockSet::read) and
/// [`write`](LockSet::write), which return typed slots, then [`acquire`](LockSet::acquire).
pub struct LockSet<'a> {
    id: u64,
    members: Vec<Box<dyn Member<'a> + 'a>>,
}

/// Exclusive access to one member of a [`LockSet`]: read and write its data.
pub struct Slot<T> {
    set: u64,
    index: usize,
    _type: PhantomData<fn() -> T>,
}

/// Shared access to one member of a [`LockSet`]: read its data.
pub struct ReadSlot<T> {
    set: u64,
    index: usize,
    _type: PhantomData<fn() -> T>,
}

macro_rules! copy_slot {
    ($($slot:ident),*) => {$(
        impl<T> Clone for $slot<T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T> Copy for $slot<T> {}
        impl<T> fmt::Debug for $slot<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($slot)).field("index", &self.index).finish()
            }
        }
    )*};
}
copy_slot!(Slot, ReadSlot);

/// A slot whose data can be read: both [`Slot`] and [`ReadSlot`].
pub trait Readable<T>: Copy {
    #[doc(hidden)]
    fn position(&self) -> (u64, usize);
}

impl<T> Readable<T> for Slot<T> {
    fn position(&self) -> (u64, usize) {
        (self.set, self.index)
    }
}

impl<T> Readable<T> for ReadSlot<T> {
    fn position(&self) -> (u64, usize) {
        (self.set, self.index)
    }
}

impl<'a> LockSet<'a> {
    /// An empty set.
    pub fn new() -> Self {
        Self {
            id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
            members: Vec::new(),
        }
    }

    /// Adds a mutex.
    pub fn lock<T: Any>(&mut self, mutex: &'a Mutex<T>) -> Slot<T> {
        let index = self.push(Box::new(MutexMember(mutex)));
        Slot {
            set: self.id,
            index,
            _type: PhantomData,
        }
    }

    /// Adds an `RwLock` for reading.
    pub fn read<T: Any>(&mut self, lock: &'a RwLock<T>) -> ReadSlot<T> {
        let index = self.push(Box::new(ReadMember(lock)));
        ReadSlot {
            set: self.id,
            index,
            _type: PhantomData,
        }
    }

    /// Adds an `RwLock` for writing.
    pub fn write<T: Any>(&mut self, lock: &'a RwLock<T>) -> Slot<T> {
        let index = self.push(Box::new(WriteMember(lock)));
        Slot {
            set: self.id,
            index,
            _type: PhantomData,
        }
    }

    fn push(&mut self, member: Box<dyn Member<'a> + 'a>) -> usize {
        self.members.push(member);
        self.members.len() - 1
    }

    /// Acquires every member in `(level, id)` order, waiting as needed. If one acquisition fails,
    /// the members already acquired are released in reverse order and the error is returned:
    /// a level violation against a lock held outside the set, a deadlock, or a lock listed twice
    /// (a leveled lock listed twice is a level violation; an unleveled mutex, or an unleveled
    /// `RwLock` listed for writing, is refused as the deadlock it would be; an unleveled
    /// `RwLock` listed twice for reading is two read holds, like two `read()` calls).
    #[track_caller]
    pub fn acquire(self) -> Result<LockedSet<'a>, LockError> {
        let at = Location::caller();
        let mut order: Vec<usize> = (0..self.members.len()).collect();
        order.sort_by_key(|&i| {
            let info = self.members[i].info();
            (info.level.is_none(), info.level, info.id)
        });
        let mut acquired: Vec<(usize, Box<dyn MemberGuard + 'a>)> = Vec::with_capacity(order.len());
        for index in order {
            match self.members[index].acquire(at) {
                Ok(guard) => acquired.push((index, guard)),
                Err(error) => {
                    while let Some(last) = acquired.pop() {
                        drop(last);
                    }
                    return Err(error);
                }
            }
        }
        let mut by_slot = vec![0; acquired.len()];
        for (position, (index, _)) in acquired.iter().enumerate() {
            by_slot[*index] = position;
        }
        Ok(LockedSet {
            set: self.id,
            guards: acquired.into_iter().map(|(_, guard)| guard).collect(),
            by_slot,
        })
    }

    /// Acquires the set, runs `ops` as in [`LockedSet::run`], releases the set.
    #[track_caller]
    pub fn run<R, E: From<LockError>>(
        self,
        ops: impl FnOnce(&mut Ops<'_, 'a>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut locked = self.acquire()?;
        locked.run(ops)
    }
}

impl Default for LockSet<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LockSet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.members.iter().map(|m| m.info()))
            .finish()
    }
}

/// The acquired locks of a [`LockSet`]; released in reverse acquisition order when dropped.
pub struct LockedSet<'a> {
    set: u64,
    /// In acquisition order.
    guards: Vec<Box<dyn MemberGuard + 'a>>,
    /// Slot index → position in `guards`.
    by_slot: Vec<usize>,
}

impl<'a> LockedSet<'a> {
    fn guard(&self, (set, index): (u64, usize)) -> &(dyn MemberGuard + 'a) {
        assert_eq!(
            set, self.set,
            "slot used with a LockSet it does not belong to"
        );
        &*self.guards[self.by_slot[index]]
    }

    /// The data behind `slot`.
    ///
    /// # Panics
    /// If `slot` belongs to another `LockSet`.
    pub fn get<T: Any>(&self, slot: impl Readable<T>) -> &T {
        self.guard(slot.position())
            .data()
            .downcast_ref()
            .expect("a slot's type matches its lock")
    }

    /// The data behind `slot`, mutably.
    ///
    /// # Panics
    /// If `slot` belongs to another `LockSet`.
    pub fn get_mut<T: Any>(&mut self, slot: Slot<T>) -> &mut T {
        assert_eq!(
            slot.set, self.set,
            "slot used with a LockSet it does not belong to"
        );
        self.guards[self.by_slot[slot.index]]
            .data_mut()
            .and_then(|data| data.downcast_mut())
            .expect("an exclusive slot's type matches its lock")
    }

    /// Runs `ops`. If it returns `Err`, every rollback it registered with
    /// [`Ops::on_rollback`] runs, most recent first, with the locks still held; then the error is
    /// returned. On `Ok` the rollbacks are discarded.
    pub fn run<R, E>(
        &mut self,
        ops: impl FnOnce(&mut Ops<'_, 'a>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut context = Ops {
            set: self,
            rollbacks: Vec::new(),
        };
        let result = ops(&mut context);
        let Ops { set, rollbacks } = context;
        if result.is_err() {
            for rollback in rollbacks.into_iter().rev() {
                rollback(set);
            }
        }
        result
    }
}

impl Drop for LockedSet<'_> {
    fn drop(&mut self) {
        while let Some(guard) = self.guards.pop() {
            drop(guard);
        }
    }
}

impl fmt::Debug for LockedSet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockedSet")
            .field("locks", &self.guards.len())
            .finish()
    }
}

/// A rollback registered during [`LockedSet::run`].
type Rollback<'s, 'a> = Box<dyn FnOnce(&mut LockedSet<'a>) + 's>;

/// What operations inside [`LockedSet::run`] can do: read and write the data, register
/// rollbacks.
pub struct Ops<'s, 'a> {
    set: &'s mut LockedSet<'a>,
    rollbacks: Vec<Rollback<'s, 'a>>,
}

impl<'s, 'a> Ops<'s, 'a> {
    /// The data behind `slot`.
    pub fn get<T: Any>(&self, slot: impl Readable<T>) -> &T {
        self.set.get(slot)
    }

    /// The data behind `slot`, mutably.
    pub fn get_mut<T: Any>(&mut self, slot: Slot<T>) -> &mut T {
        self.set.get_mut(slot)
    }

    /// Registers an undo step, run (most recent first) if the operations fail.
    pub fn on_rollback(&mut self, rollback: impl FnOnce(&mut LockedSet<'a>) + 's) {
        self.rollbacks.push(Box::new(rollback));
    }
}

impl fmt::Debug for Ops<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ops")
            .field("rollbacks", &self.rollbacks.len())
            .finish()
    }
}

/// One lock of a set, before acquisition.
trait Member<'a> {
    fn info(&self) -> LockInfo;
    fn acquire(
        &self,
        at: &'static Location<'static>,
    ) -> Result<Box<dyn MemberGuard + 'a>, LockError>;
}

/// One acquired guard, its data reachable as `Any`.
trait MemberGuard {
    fn data(&self) -> &dyn Any;
    fn data_mut(&mut self) -> Option<&mut dyn Any>;
}

struct MutexMember<'a, T>(&'a Mutex<T>);
struct ReadMember<'a, T>(&'a RwLock<T>);
struct WriteMember<'a, T>(&'a RwLock<T>);

impl<'a, T: Any> Member<'a> for MutexMember<'a, T> {
    fn info(&self) -> LockInfo {
        self.0.info()
    }
    fn acquire(
        &self,
        at: &'static Location<'static>,
    ) -> Result<Box<dyn MemberGuard + 'a>, LockError> {
        Ok(Box::new(self.0.acquire(
            Wait::Forever,
            at,
            LevelRule::AboveInSetOrder,
        )?))
    }
}

impl<'a, T: Any> Member<'a> for ReadMember<'a, T> {
    fn info(&self) -> LockInfo {
        self.0.info()
    }
    fn acquire(
        &self,
        at: &'static Location<'static>,
    ) -> Result<Box<dyn MemberGuard + 'a>, LockError> {
        Ok(Box::new(self.0.acquire_read(
            Wait::Forever,
            at,
            LevelRule::AboveInSetOrder,
        )?))
    }
}

impl<'a, T: Any> Member<'a> for WriteMember<'a, T> {
    fn info(&self) -> LockInfo {
        self.0.info()
    }
    fn acquire(
        &self,
        at: &'static Location<'static>,
    ) -> Result<Box<dyn MemberGuard + 'a>, LockError> {
        Ok(Box::new(self.0.acquire_write(
            Wait::Forever,
            at,
            LevelRule::AboveInSetOrder,
        )?))
    }
}

impl<T: Any> MemberGuard for MutexGuard<'_, T> {
    fn data(&self) -> &dyn Any {
        &**self
    }
    fn data_mut(&mut self) -> Option<&mut dyn Any> {
        Some(&mut **self)
    }
}

impl<T: Any> MemberGuard for RwLockReadGuard<'_, T> {
    fn data(&self) -> &dyn Any {
        &**self
    }
    fn data_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }
}

impl<T: Any> MemberGuard for RwLockWriteGuard<'_, T> {
    fn data(&self) -> &dyn Any {
        &**self
    }
    fn data_mut(&mut self) -> Option<&mut dyn Any> {
        Some(&mut **self)
    }
}
