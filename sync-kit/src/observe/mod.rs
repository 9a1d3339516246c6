//! A live lock dashboard (cargo feature `observe`): an HTML page, the JSON behind it, the same
//! figures as Prometheus text, and a small server for applications without one.
//!
//! Items: [`page`] (the page), [`snapshot_json`] (its data), [`prometheus_text`] (the same
//! figures for a scraper), [`serve`] and [`serve_with_panels`] (tiny_http on a background
//! thread: `/`, `/dashboard.json`, `/metrics`).
//!
//! The page is one self-contained HTML document (inline CSS and JavaScript, no fonts or scripts
//! from elsewhere). It polls its data URL every second — `dashboard.json` next to the page, or
//! the URL given as `?data=` — and shows:
//!
//! - the detector's counters ([`crate::deadlock::stats`]), each with a sparkline of the last
//!   five minutes (history kept by the page, not by the process);
//! - a sortable table of every live named lock ([`crate::stats::all`]): acquisitions (and their
//!   rate, with a sparkline), contentions, contention ratio, total, max and p99 wait, timed holds;
//! - the last refusals ([`crate::deadlock::recent`]): a refused wait-for cycle drawn as an SVG
//!   graph (thread → the lock it waits for → the thread holding it), an order inversion as the
//!   cycle of locks it would close, each with lock names and call sites;
//! - the application's own panels: a top-level `"panels"` array in the JSON, each
//!   `{"title": "Raft", "rows": [["term", 3], ["role", "leader"]]}` (rows may also be an object
//!   `{"term": 3}`; a value that is not a string, number or boolean is shown as compact JSON),
//!   drawn as titled key/value tables in the order given.
//!
//! An application with an HTTP server serves [`page`] at some path and [`snapshot_json`] (with
//! its `"panels"` added) as `dashboard.json` beside it; one without calls [`serve`].
//!
//! ```
//! let body = sync_kit::observe::snapshot_json();
//! assert!(body["locks"].is_array() && body["refusals"].is_array());
//! assert!(sync_kit::observe::page().contains("dashboard.json"));
//! assert!(sync_kit::observe::prometheus_text().contains("# TYPE synckit_lock_acquisitions_total counter"));
//! ```

mod prometheus;
mod serve;
mod snapshot;

pub use prometheus::prometheus_text;
pub use serve::{serve, serve_with_panels};
pub use snapshot::snapshot_json;

/// The dashboard: one self-contained HTML page that polls `dashboard.json` (relative to the
/// page; `?data=URL` names another) every second. See the [module documentation](self).
pub fn page() -> &'static str {
    include_str!("page.html")
}
