//! Lock-order checking: potential deadlocks, found before any thread waits.
//!
//! Every blocking or timed acquisition made while the thread holds other locks learns "held
//! before acquired" edges between lock instances (pairs of two leveled locks are skipped: their
//! levels already order them). An acquisition whose new edge would close a cycle in the learned
//! graph, of any length, is an *inversion*: two runs of the program could interleave into a
//! deadlock, whether or not this run ever waits. Paths also follow the hierarchy: from a leveled
//! lock to any leveled lock above it.
//!
//! | policy    | on an inversion                                                          |
//! |-----------|--------------------------------------------------------------------------|
//! | `Refuse`  | `LockError::OrderInversion(report)` at once; the edge is not learned      |
//! | `Warn`    | the hook gets the report once, the edge is learned, the acquisition goes on |
//! | `Off`     | nothing is checked or learned (one relaxed load and a branch per acquisition) |
//!
//! Invariants:
//! - the graph holds an edge `a → b` exactly while both locks live and some thread took `b`
//!   (blocking) while holding `a` and was not refused; a lock's edges go when it is dropped;
//! - a thread's cache of learned pairs only lists pairs whose edge is (or was, for a dropped
//!   lock, whose id is never reused) in the graph. A cached pair costs a thread-local lookup and
//!   never the graph's lock; only an acquisition with a pair new to this thread takes it.
//! - `try_*` acquisitions that do not wait learn nothing and are never refused for order: they
//!   cannot wait, so they cannot deadlock.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::panic::Location;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock as StdRwLock};

use super::ORDER_INVERSIONS;
use super::recent::{self, Refusal};
use crate::error::LockError;
use crate::held;
use crate::lock::meta::{self, AccessMode, Level, LockId, LockInfo, LockUse};
use crate::loom::{InternalMutex, global};

/// What an acquisition that inverts the learned lock order does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderChecking {
    /// Refuse it with [`LockError::OrderInversion`].
    Refuse,
    /// Report it once to the hook ([`set_order_hook`]), count it, let it go on.
    Warn,
    /// Learn and check nothing.
    Off,
}

impl Default for OrderChecking {
    /// `Refuse` in builds with `debug_assertions`, `Off` otherwise.
    fn default() -> Self {
        if cfg!(debug_assertions) {
            OrderChecking::Refuse
        } else {
            OrderChecking::Off
        }
    }
}

const REFUSE: u8 = 0;
const WARN: u8 = 1;
const OFF: u8 = 2;

// A setting, not synchronisation: it orders no other memory (std atomic even under loom).
static POLICY: AtomicU8 = AtomicU8::new(if cfg!(debug_assertions) { REFUSE } else { OFF });

/// Sets the process-wide policy for lock-order inversions. Edges learned so far are kept.
pub fn set_order_checking(policy: OrderChecking) {
    let value = match policy {
        OrderChecking::Refuse => REFUSE,
        OrderChecking::Warn => WARN,
        OrderChecking::Off => OFF,
    };
    // The policy and the fast path's gate change together (two setters never interleave).
    static SETTING: StdMutex<()> = StdMutex::new(());
    let _setting = SETTING.lock().unwrap_or_else(|p| p.into_inner());
    POLICY.store(value, Ordering::Relaxed);
    meta::set_global_flag(meta::ORDER_CHECKING, value != OFF);
}

/// The current policy.
pub fn order_checking() -> OrderChecking {
    match POLICY.load(Ordering::Relaxed) {
        REFUSE => OrderChecking::Refuse,
        WARN => OrderChecking::Warn,
        _ => OrderChecking::Off,
    }
}

type Hook = Arc<dyn Fn(&InversionReport) + Send + Sync>;

// Read once per new inversion: a std lock is enough (not part of any modelled protocol).
static HOOK: StdRwLock<Option<Hook>> = StdRwLock::new(None);

/// Sets what `Warn` does with each new inversion (the default prints one line on stderr).
pub fn set_order_hook(hook: impl Fn(&InversionReport) + Send + Sync + 'static) {
    *HOOK.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
}

/// Restores the default hook: one line on stderr per new inversion.
pub fn reset_order_hook() {
    *HOOK.write().unwrap_or_else(|p| p.into_inner()) = None;
}

/// One edge of the lock order: `before` was held when `after` was acquired, or both are leveled
/// and `before`'s level is lower (the hierarchy orders them without anything being learned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderEdge {
    /// The lock that was held (or has the lower level).
    pub before: LockInfo,
    /// The lock acquired while holding it (or with the higher level).
    pub after: LockInfo,
    /// Where `before` was acquired, the first time this edge was learned (for a level edge: where
    /// `before` was created).
    pub before_at: &'static Location<'static>,
    /// Where `after` was requested, the first time this edge was learned (for a level edge: where
    /// `after` was created).
    pub after_at: &'static Location<'static>,
    /// The edge comes from the levels of two leveled locks, not from an acquisition.
    pub by_level: bool,
}

impl fmt::Display for OrderEdge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.by_level {
            return write!(
                f,
                "{} before {}: by their levels in the hierarchy",
                self.before, self.after
            );
        }
        write!(
            f,
            "{} before {}: learned when it was requested at {} while holding the first, acquired at {}",
            self.before, self.after, self.after_at, self.before_at
        )
    }
}

/// An acquisition that would close a cycle in the learned lock order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InversionReport {
    /// The lock requested, and where.
    pub requested: LockUse,
    /// The held lock whose edge to `requested` closes the cycle, and where it was acquired.
    pub held: LockUse,
    /// The learned path from `requested` back to `held`, oldest knowledge first: the order this
    /// acquisition contradicts.
    pub learned: Vec<OrderEdge>,
    /// Whether the acquisition was refused (`Refuse`) or allowed (`Warn`).
    pub refused: bool,
}

impl InversionReport {
    /// The report on one line (what the default `Warn` hook prints).
    pub fn summary(&self) -> String {
        let first = &self.learned[0];
        format!(
            "lock order inversion: {} requested at {} while holding {} (acquired at {}); the \
             opposite order was learned at {}",
            self.requested.lock, self.requested.at, self.held.lock, self.held.at, first.after_at
        )
    }
}

impl fmt::Display for InversionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = if self.refused {
            "refused"
        } else {
            "allowed (Warn)"
        };
        writeln!(
            f,
            "lock order inversion {outcome}: acquiring {} while holding {} closes a cycle of {} \
             locks in the learned lock order",
            self.requested.lock,
            self.held.lock,
            self.learned.len() + 1
        )?;
        writeln!(
            f,
            "  1. {} before {}: this acquisition, requested at {} while holding the first, \
             acquired at {}",
            self.held.lock, self.requested.lock, self.requested.at, self.held.at
        )?;
        for (i, edge) in self.learned.iter().enumerate() {
            write!(f, "  {}. {edge}", i + 2)?;
            if i + 1 < self.learned.len() {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// Where an edge was first learned.
#[derive(Clone, Copy, Debug)]
struct Sites {
    before_at: &'static Location<'static>,
    after_at: &'static Location<'static>,
}

#[derive(Debug, Default)]
struct OrderGraph {
    /// Out-edges: `before → after → sites`.
    after: HashMap<LockId, HashMap<LockId, Sites>>,
    /// In-edges, to forget a dropped lock's edges without a scan.
    before: HashMap<LockId, HashSet<LockId>>,
    /// Identity of every lock with an edge, for reports.
    info: HashMap<LockId, LockInfo>,
    /// Leveled locks with learned out-edges, by `(level, id)`: a path may go from any leveled lock
    /// to any of these above it (the hierarchy orders them).
    leveled_sources: BTreeSet<(Level, LockId)>,
}

/// Locks with at least one edge, as of the last change (written under the graph's lock). A lock
/// can only gain edges while it is alive and borrowed, so a drop that reads zero has none.
static LOCKS_WITH_EDGES: AtomicUsize = AtomicUsize::new(0);

global! {
    static GRAPH: InternalMutex<OrderGraph> = InternalMutex::new(OrderGraph::default());
}

impl OrderGraph {
    fn has_edge(&self, before: LockId, after: LockId) -> bool {
        self.after
            .get(&before)
            .is_some_and(|out| out.contains_key(&after))
    }

    /// A path `from → … → to` of learned edges and level edges, if any (depth-first, each lock
    /// visited once). A level edge goes from a leveled lock to any leveled lock above it in
    /// `(level, id)` order (the order a `LockSet` may take equal levels in); only those with
    /// learned out-edges, and `to` itself, can continue or end a path.
    fn path(&self, from: &LockInfo, to: &LockInfo) -> Option<Vec<OrderEdge>> {
        let info = |id: LockId| -> LockInfo {
            if id == from.id {
                *from
            } else if id == to.id {
                *to
            } else {
                self.info[&id]
            }
        };
        let rank = |lock: &LockInfo| lock.level.map(|level| (level, lock.id));
        let mut reached_from: HashMap<LockId, (LockId, bool)> = HashMap::new();
        let mut stack = vec![from.id];
        let mut visited = HashSet::from([from.id]);
        while let Some(current) = stack.pop() {
            let learned = self
                .after
                .get(&current)
                .into_iter()
                .flat_map(|m| m.keys())
                .map(|&next| (next, false));
            let above: Vec<(LockId, bool)> = match rank(&info(current)) {
                None => Vec::new(),
                Some(key) => {
                    let mut above: Vec<(LockId, bool)> = self
                        .leveled_sources
                        .range((Bound::Excluded(key), Bound::Unbounded))
                        .map(|&(_, id)| (id, true))
                        .collect();
                    if rank(to).is_some_and(|target| target > key) {
                        above.push((to.id, true));
                    }
                    above
                }
            };
            for (next, by_level) in learned.chain(above) {
                if !visited.insert(next) {
                    continue;
                }
                reached_from.insert(next, (current, by_level));
                if next == to.id {
                    return Some(self.edges_back(from.id, to.id, &reached_from, info));
                }
                stack.push(next);
            }
        }
        None
    }

    fn edges_back(
        &self,
        from: LockId,
        to: LockId,
        reached_from: &HashMap<LockId, (LockId, bool)>,
        info: impl Fn(LockId) -> LockInfo,
    ) -> Vec<OrderEdge> {
        let mut edges = Vec::new();
        let mut current = to;
        while current != from {
            let (previous, by_level) = reached_from[&current];
            let (before, after) = (info(previous), info(current));
            let (before_at, after_at) = if by_level {
                (before.created_at, after.created_at)
            } else {
                let sites = self.after[&previous][&current];
                (sites.before_at, sites.after_at)
            };
            edges.push(OrderEdge {
                before,
                after,
                before_at,
                after_at,
                by_level,
            });
            current = previous;
        }
        edges.reverse();
        edges
    }

    fn insert(&mut self, before: &LockUse, after: &LockUse) {
        self.info.insert(before.lock.id, before.lock);
        self.info.insert(after.lock.id, after.lock);
        self.after
            .entry(before.lock.id)
            .or_default()
            .entry(after.lock.id)
            .or_insert(Sites {
                before_at: before.at,
                after_at: after.at,
            });
        self.before
            .entry(after.lock.id)
            .or_default()
            .insert(before.lock.id);
        if let Some(level) = before.lock.level {
            self.leveled_sources.insert((level, before.lock.id));
        }
    }

    fn forget(&mut self, id: LockId) {
        if let Some(level) = self.info.get(&id).and_then(|info| info.level) {
            self.leveled_sources.remove(&(level, id));
        }
        if let Some(out) = self.after.remove(&id) {
            for after in out.keys() {
                if let Some(ins) = self.before.get_mut(after) {
                    ins.remove(&id);
                    if ins.is_empty() {
                        self.before.remove(after);
                    }
                }
            }
        }
        if let Some(ins) = self.before.remove(&id) {
            for before in ins {
                if let Some(out) = self.after.get_mut(&before) {
                    out.remove(&id);
                    if out.is_empty() {
                        self.after.remove(&before);
                        if let Some(level) = self.info.get(&before).and_then(|i| i.level) {
                            self.leveled_sources.remove(&(level, before));
                        }
                    }
                }
            }
        }
        self.info.remove(&id);
    }
}

/// Mixes a pair of lock ids (unique small integers) into a hash: no SipHash on the lookup path.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type PairSet = HashSet<(LockId, LockId), BuildHasherDefault<PairHasher>>;

/// Pairs learned by this thread, cleared past this many (a miss only costs the graph's lock).
const CACHE_LIMIT: usize = 4096;

#[cfg(not(loom))]
crate::loom::thread_local! {
    static LEARNED: RefCell<PairSet> = RefCell::new(PairSet::default());
}
#[cfg(loom)]
crate::loom::thread_local! {
    static LEARNED: RefCell<PairSet> = RefCell::new(PairSet::default());
}

/// Checks and learns the order of a blocking or timed acquisition of `lock` in `mode` at `at`.
/// Nothing is built unless the policy is on and the thread holds something.
#[inline]
pub(crate) fn check(
    lock: &LockInfo,
    mode: AccessMode,
    at: &'static Location<'static>,
) -> Result<(), LockError> {
    if POLICY.load(Ordering::Relaxed) == OFF || held::is_empty() {
        return Ok(());
    }
    check_held(
        &LockUse {
            lock: *lock,
            mode,
            at,
        },
        &[],
    )
}

/// As [`check`], for an acquisition whose holder also holds `extra` (a task's async locks).
#[cfg(any(feature = "tokio", loom))]
pub(crate) fn check_with(requested: &LockUse, extra: &[LockUse]) -> Result<(), LockError> {
    if POLICY.load(Ordering::Relaxed) == OFF || (held::is_empty() && extra.is_empty()) {
        return Ok(());
    }
    check_held(requested, extra)
}

#[inline(never)]
fn check_held(requested: &LockUse, extra: &[LockUse]) -> Result<(), LockError> {
    let mut new_pairs: Vec<LockUse> = Vec::new();
    let _ = LEARNED.try_with(|learned| {
        let learned = learned.borrow();
        let mut consider = |held: &LockUse| {
            let both_leveled = held.lock.level.is_some() && requested.lock.level.is_some();
            if !both_leveled
                && held.lock.id != requested.lock.id
                && !learned.contains(&(held.lock.id, requested.lock.id))
                && !new_pairs.iter().any(|h| h.lock.id == held.lock.id)
            {
                new_pairs.push(*held);
            }
        };
        held::for_each(&mut consider);
        extra.iter().for_each(consider);
    });
    if new_pairs.is_empty() {
        return Ok(());
    }
    learn(requested, &new_pairs)
}

#[cold]
fn learn(requested: &LockUse, held: &[LockUse]) -> Result<(), LockError> {
    let refuse = POLICY.load(Ordering::Relaxed) == REFUSE;
    let mut inversions = Vec::new();
    {
        let mut graph = GRAPH.lock();
        for h in held {
            if graph.has_edge(h.lock.id, requested.lock.id) {
                continue;
            }
            if let Some(learned) = graph.path(&requested.lock, &h.lock) {
                inversions.push(InversionReport {
                    requested: *requested,
                    held: *h,
                    learned,
                    refused: refuse,
                });
                if refuse {
                    break;
                }
            }
        }
        if !refuse || inversions.is_empty() {
            for h in held {
                graph.insert(h, requested);
            }
            LOCKS_WITH_EDGES.store(graph.info.len(), Ordering::Relaxed);
        }
    }
    ORDER_INVERSIONS.fetch_add(inversions.len() as u64, Ordering::Relaxed);
    for report in &inversions {
        recent::record(Refusal::Inversion(report.clone()));
    }
    if refuse && let Some(report) = inversions.pop() {
        return Err(LockError::OrderInversion(Box::new(report)));
    }
    let _ = LEARNED.try_with(|learned| {
        let mut learned = learned.borrow_mut();
        if learned.len() + held.len() > CACHE_LIMIT {
            learned.clear();
        }
        learned.extend(held.iter().map(|h| (h.lock.id, requested.lock.id)));
    });
    for report in &inversions {
        warn(report);
    }
    Ok(())
}

fn warn(report: &InversionReport) {
    let hook = HOOK.read().unwrap_or_else(|p| p.into_inner()).clone();
    match hook {
        Some(hook) => hook(report),
        None => eprintln!("sync-kit: {}", report.summary()),
    }
}

/// Forgets every edge of a lock that is being dropped. Free while the graph is empty (always,
/// with order checking off).
pub(crate) fn forget(id: LockId) {
    if LOCKS_WITH_EDGES.load(Ordering::Relaxed) > 0 {
        let mut graph = GRAPH.lock();
        graph.forget(id);
        LOCKS_WITH_EDGES.store(graph.info.len(), Ordering::Relaxed);
    }
}
