//! The statistics endpoint (tiny_http): `GET /stats` (JSON), `GET /metrics` (Prometheus text
//! format, via prometheus-client), `GET /health`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tiny_http::{Header, Response, Server};

use crate::service::Service;

/// Binds the endpoint and serves it on a background thread; returns the bound address.
pub fn start(addr: SocketAddr, service: Arc<Service>) -> io::Result<SocketAddr> {
    let server = Server::http(addr).map_err(io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("HTTP endpoint is not on an IP address"))?;
    thread::Builder::new().name("http".into()).spawn(move || {
        for request in server.incoming_requests() {
            let path = request.url().split('?').next().unwrap_or("").to_string();
            let response = match (request.method(), path.as_str()) {
                (tiny_http::Method::Get, "/stats") => with_type(
                    Response::from_string(stats_json(&service).to_string()),
                    "application/json",
                ),
                (tiny_http::Method::Get, "/metrics") => with_type(
                    Response::from_string(metrics_text(&service)),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                (tiny_http::Method::Get, "/health") => {
                    with_type(Response::from_string("ok\n"), "text/plain")
                }
                (tiny_http::Method::Get, _) => {
                    with_type(Response::from_string("not found\n"), "text/plain")
                        .with_status_code(404)
                }
                _ => with_type(Response::from_string("method not allowed\n"), "text/plain")
                    .with_status_code(405),
            };
            if let Err(error) = request.respond(response) {
                tracing::debug!(%error, "HTTP client went away");
            }
        }
    })?;
    Ok(bound)
}

fn with_type<R: io::Read>(response: Response<R>, content_type: &str) -> Response<R> {
    let header =
        Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()).expect("a valid header");
    response.with_header(header)
}

/// Everything `/stats` shows.
pub fn stats_json(service: &Service) -> serde_json::Value {
    let node = service.stats();
    json!({
        "uptime_secs": node.uptime_secs,
        "connections": node.connections,
        "locks": sync_kit::stats::all(),
        "deadlock_detector": sync_kit::deadlock::stats(),
        "rate_limits": {
            "requests_per_address": node.request_limiter,
            "logins_per_user": node.login_limiter,
        },
        "accounts_mvcc": node.accounts,
        "messages": node.messages,
        "log": { "records_since_snapshot": node.records_since_snapshot },
        "apply": { "parallel_batches": node.parallel_batches },
        "applied_index": node.applied_index,
        "state_digest": node.state_digest,
    })
}

type Labels = Vec<(String, String)>;

/// `/metrics` in the Prometheus text format.
pub fn metrics_text(service: &Service) -> String {
    let node = service.stats();
    let mut registry = Registry::with_prefix("synckit");

    let acquisitions = Family::<Labels, Counter>::default();
    let contentions = Family::<Labels, Counter>::default();
    let wait = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let max_wait = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for lock in sync_kit::stats::all() {
        let labels = vec![
            ("lock".to_string(), lock.name.to_string()),
            (
                "kind".to_string(),
                format!("{:?}", lock.kind).to_lowercase(),
            ),
            (
                "level".to_string(),
                lock.level
                    .map_or_else(|| "none".to_string(), |l| l.0.to_string()),
            ),
        ];
        acquisitions
            .get_or_create(&labels)
            .inc_by(lock.stats.acquisitions);
        contentions
            .get_or_create(&labels)
            .inc_by(lock.stats.contentions);
        wait.get_or_create(&labels)
            .inc_by(lock.stats.total_wait.as_secs_f64());
        max_wait
            .get_or_create(&labels)
            .set(lock.stats.max_wait.as_secs_f64());
    }
    registry.register(
        "lock_acquisitions",
        "Acquisitions of each named lock",
        acquisitions,
    );
    registry.register(
        "lock_contentions",
        "Acquisitions that had to wait",
        contentions,
    );
    registry.register(
        "lock_wait_seconds",
        "Total time spent waiting for the lock",
        wait,
    );
    registry.register(
        "lock_max_wait_seconds",
        "Longest single wait for the lock",
        max_wait,
    );

    let detector = sync_kit::deadlock::stats();
    let counter = |value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        c
    };
    let gauge = |value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        g
    };
    let as_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    registry.register(
        "deadlocks_refused",
        "Acquisitions refused as deadlocks",
        counter(detector.cycles_detected),
    );
    registry.register(
        "level_violations",
        "Acquisitions refused as lock-order violations",
        counter(detector.level_violations),
    );
    registry.register(
        "lock_waits",
        "Acquisitions that entered the wait-for graph",
        counter(detector.waits_registered),
    );
    registry.register(
        "rate_limited_requests",
        "Requests refused by the per-address limiter",
        counter(node.request_limiter.limited),
    );
    registry.register(
        "rate_limited_logins",
        "Logins refused by the per-user limiter",
        counter(node.login_limiter.limited),
    );
    registry.register(
        "threads_waiting",
        "Threads in the wait-for graph now",
        gauge(i64::try_from(detector.threads_waiting).unwrap_or(i64::MAX)),
    );
    // Both limiters in one family each, labelled with their /stats names.
    let allowed = Family::<Labels, Counter>::default();
    let evicted = Family::<Labels, Counter>::default();
    let keys = Family::<Labels, Gauge>::default();
    for (name, limiter) in [
        ("requests_per_address", &node.request_limiter),
        ("logins_per_user", &node.login_limiter),
    ] {
        let labels = vec![("limiter".to_string(), name.to_string())];
        allowed.get_or_create(&labels).inc_by(limiter.allowed);
        evicted.get_or_create(&labels).inc_by(limiter.evicted);
        keys.get_or_create(&labels).set(as_i64(limiter.keys));
    }
    registry.register("rate_limit_allowed", "Requests a limiter granted", allowed);
    registry.register("rate_limit_evicted", "Idle keys a limiter forgot", evicted);
    registry.register("rate_limit_keys", "Keys with a bucket now", keys);
    registry.register(
        "mvcc_version",
        "Latest committed version of the account map",
        gauge(i64::try_from(node.accounts.version).unwrap_or(i64::MAX)),
    );
    registry.register(
        "mvcc_live_versions",
        "Account map versions still reachable (the latest and those held by snapshots)",
        gauge(as_i64(node.accounts.live_versions)),
    );
    registry.register(
        "mvcc_live_snapshots",
        "Live account map snapshots and transactions (listing cursors among them)",
        gauge(as_i64(node.accounts.live_snapshots)),
    );
    registry.register(
        "mvcc_tombstones",
        "Removed accounts kept for older snapshots",
        gauge(as_i64(node.accounts.tombstones)),
    );
    registry.register(
        "log_records_since_snapshot",
        "Log records written since the last snapshot",
        gauge(i64::try_from(node.records_since_snapshot).unwrap_or(i64::MAX)),
    );
    registry.register(
        "mvcc_commits",
        "Account map commits",
        counter(node.accounts.commits),
    );
    registry.register(
        "mvcc_conflicts",
        "Account map commit conflicts",
        counter(node.accounts.conflicts),
    );
    registry.register("accounts", "Accounts", gauge(as_i64(node.accounts.keys)));
    registry.register(
        "connections",
        "Open connections",
        gauge(as_i64(node.connections)),
    );
    registry.register(
        "messages_stored",
        "Messages in mailboxes",
        gauge(as_i64(node.messages.stored)),
    );
    registry.register(
        "messages_undelivered",
        "Messages not yet delivered",
        gauge(as_i64(node.messages.undelivered)),
    );
    registry.register(
        "apply_parallel_batches",
        "Batches whose commands were applied on several threads at once",
        counter(node.parallel_batches),
    );
    registry.register(
        "applied_index",
        "Log index of the last command applied",
        gauge(i64::try_from(node.applied_index).unwrap_or(i64::MAX)),
    );
    registry.register(
        "uptime_seconds",
        "Seconds since start",
        gauge(i64::try_from(node.uptime_secs).unwrap_or(i64::MAX)),
    );

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}
