//! loom models of sync-kit (see tests/).
//!
//! The models live in `tests/loom_*.rs` and compile to nothing unless built with
//! `RUSTFLAGS="--cfg loom"`:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!     cargo test -p loom-tests --release
//! ```
//!
//! Under loom, sync-kit's atomics, `UnsafeCell`s, thread-locals, globals and parking all come from
//! loom (see `sync-kit/src/loom/`), so these models check the shipped code, through its public
//! API only.

/// Preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set: keeps every model tractable.
pub const DEFAULT_PREEMPTIONS: usize = 2;

/// Runs `f` under loom for every interleaving within the preemption bound
/// (`LOOM_MAX_PREEMPTIONS` if set, else [`DEFAULT_PREEMPTIONS`]).
///
/// With `LOOM_MAX_PREEMPTIONS` set this is exactly `loom::model`, which also honours `LOOM_LOG`
/// and `LOOM_LOCATION` for a trace of the failing interleaving.
#[cfg(loom)]
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_some() {
        loom::model(f);
    } else {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
        builder.check(f);
    }
}
