//! The statistics endpoint (tiny_http): `GET /stats` (JSON), `GET /metrics` (Prometheus text
//! format, via prometheus-client), `GET /health`, the live dashboard `GET /` (sync-kit's
//! `observe` page) and its data `GET /dashboard.json` (sync-kit's snapshot with the node's
//! panels, from the `/stats` document); on a cluster member, the operator's
//! `POST /admin/remove-node?id=N` and
//! `POST /admin/add-node?id=N&chat_addr=A&http_addr=B&raft_addr=C&data_dir=D[&grpc_addr=G]` (answered
//! `{"ok":true}`, or `{"ok":false,"error":{...}}` with 400, 409 for `not_leader`, or 503).

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

use crate::protocol::{ErrorCode, ErrorReply};
use crate::raft::{Member, MembershipChange};
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
                (tiny_http::Method::Get, "/" | "/index.html") => with_type(
                    Response::from_string(sync_kit::observe::page()),
                    "text/html; charset=utf-8",
                ),
                (tiny_http::Method::Get, "/dashboard.json") => with_type(
                    Response::from_string(dashboard_json(&service).to_string()),
                    "application/json",
                ),
                (tiny_http::Method::Get, "/health") => plain("ok\n"),
                (tiny_http::Method::Post, "/admin/remove-node" | "/admin/add-node") => {
                    // Waits for raft (up to the write timeout): off the thread serving /stats.
                    let service = Arc::clone(&service);
                    let spawned =
                        thread::Builder::new()
                            .name("http-admin".into())
                            .spawn(move || {
                                let response = admin(&service, &path, request.url());
                                if let Err(error) = request.respond(response) {
                                    tracing::debug!(%error, "HTTP client went away");
                                }
                            });
                    if let Err(error) = spawned {
                        tracing::error!(%error, "cannot start a thread for an admin request");
                    }
                    continue;
                }
                (tiny_http::Method::Post, "/test/isolate") if service.config().test_hooks => {
                    let query = request.url().split_once("?peers=").map_or("", |(_, q)| q);
                    isolate(&service, query)
                }
                (tiny_http::Method::Post, "/test/fail-syncs") if service.config().test_hooks => {
                    let query = request.url().split_once("?count=").map_or("", |(_, q)| q);
                    fail_syncs(&service, query)
                }
                (tiny_http::Method::Get, _) => plain("not found\n").with_status_code(404),
                _ => plain("method not allowed\n").with_status_code(405),
            };
            if let Err(error) = request.respond(response) {
                tracing::debug!(%error, "HTTP client went away");
            }
        }
    })?;
    Ok(bound)
}

/// `POST /admin/remove-node` and `POST /admin/add-node`: a membership change through raft.
fn admin(service: &Service, path: &str, url: &str) -> Response<io::Cursor<Vec<u8>>> {
    let result = admin_change(url, path == "/admin/add-node").and_then(|change| {
        tracing::info!(?change, "admin: membership change requested");
        service.raft().change_membership(change)
    });
    let (status, body) = match result {
        Ok(()) => (200, json!({ "ok": true })),
        Err(error) => {
            let status = match error.code {
                ErrorCode::NotLeader => 409,
                ErrorCode::InvalidArgument => 400,
                ErrorCode::Unavailable => 503,
                _ => 500,
            };
            (status, json!({ "ok": false, "error": error }))
        }
    };
    with_type(
        Response::from_string(format!("{body}\n")),
        "application/json",
    )
    .with_status_code(status)
}

/// The change an admin request's query names.
fn admin_change(url: &str, add: bool) -> Result<MembershipChange, ErrorReply> {
    let invalid = |message: String| ErrorReply::new(ErrorCode::InvalidArgument, message);
    let mut params = std::collections::HashMap::new();
    for pair in url.split_once('?').map_or("", |(_, q)| q).split('&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| invalid(format!("{key}: bad encoding")))?;
        params.insert(key.to_string(), value);
    }
    let get = |key: &str| {
        params
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(format!("the parameter {key} is missing")))
    };
    let id: u64 = get("id")?
        .parse()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| invalid("id: a member id (a positive integer) expected".into()))?;
    if !add {
        return Ok(MembershipChange::Remove(id));
    }
    let addr = |key: &str| -> Result<std::net::SocketAddr, ErrorReply> {
        get(key)?
            .parse()
            .map_err(|e| invalid(format!("{key}: an address (IP:port) expected: {e}")))
    };
    Ok(MembershipChange::Add(Member {
        id,
        chat_addr: addr("chat_addr")?,
        http_addr: addr("http_addr")?,
        raft_addr: addr("raft_addr")?,
        data_dir: get("data_dir")?.into(),
        grpc_addr: match params.get("grpc_addr").filter(|v| !v.is_empty()) {
            Some(_) => Some(addr("grpc_addr")?),
            None => None,
        },
    }))
}

/// `%XX` escapes (and `+` for a space) decoded; `None` if malformed or not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The test hook: cut this member's raft links to the peers named in `?peers=1,2` (none heals).
fn isolate(service: &Service, body: &str) -> Response<io::Cursor<Vec<u8>>> {
    let peers: Result<std::collections::HashSet<u64>, _> = body
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::parse)
        .collect();
    match peers {
        Ok(peers) => {
            tracing::warn!(?peers, "test hook: raft links cut");
            service.raft().isolate(peers);
            plain("ok\n")
        }
        Err(error) => plain(format!("peer ids expected: {error}\n")).with_status_code(400),
    }
}

/// `POST /test/fail-syncs?count=N` (test hooks only): the raft log's next N fsyncs fail.
fn fail_syncs(service: &Service, count: &str) -> Response<io::Cursor<Vec<u8>>> {
    match count.trim().parse::<u64>() {
        Ok(count) => {
            tracing::warn!(count, "test hook: the next raft log fsyncs fail");
            service.raft().fail_syncs(count);
            plain("ok\n")
        }
        Err(error) => plain(format!("a count expected: {error}\n")).with_status_code(400),
    }
}

/// A plain-text response.
fn plain(text: impl Into<String>) -> Response<io::Cursor<Vec<u8>>> {
    with_type(Response::from_string(text), "text/plain")
}

fn with_type<R: io::Read>(response: Response<R>, content_type: &str) -> Response<R> {
    let header =
        Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()).expect("a valid header");
    response.with_header(header)
}

/// Everything `/stats` shows.
pub fn stats_json(service: &Service) -> serde_json::Value {
    let node = service.stats();
    let mut stats = json!({
        "uptime_secs": node.uptime_secs,
        "connections": node.connections,
        "locks": sync_kit::stats::all(),
        "condvars": sync_kit::stats::condvars(),
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
    });
    if let Some(raft) = node.raft {
        stats["raft"] = json!(raft);
    }
    if let Some(ledger) = node.ledger {
        stats["ledger"] = json!(ledger);
    }
    stats
}

/// The dashboard's data: sync-kit's snapshot (every named lock, the detector, the last
/// refusals) and the node's panels, each a section of the `/stats` document as key/value rows.
pub fn dashboard_json(service: &Service) -> serde_json::Value {
    let stats = stats_json(service);
    let mut dashboard = sync_kit::observe::snapshot_json();
    dashboard["panels"] = serde_json::Value::Array(panels(&stats));
    dashboard
}

/// The node's panels, read from the `/stats` document.
fn panels(stats: &serde_json::Value) -> Vec<serde_json::Value> {
    let section = |title: &str, keys: &[&str]| {
        let mut rows = Vec::new();
        for key in keys {
            flatten(key, &stats[key], &mut rows);
        }
        json!({ "title": title, "rows": rows })
    };
    let mut panels = vec![section(
        "Node",
        &[
            "uptime_secs",
            "connections",
            "applied_index",
            "state_digest",
            "log",
            "apply",
            "messages",
        ],
    )];
    let raft = &stats["raft"];
    if !raft.is_null() {
        // The member's own figures, then one row per peer.
        let mut rows = Vec::new();
        for (key, value) in raft.as_object().into_iter().flatten() {
            if key != "peers" {
                flatten(key, value, &mut rows);
            }
        }
        for peer in raft["peers"].as_array().into_iter().flatten() {
            let mut fields = peer.as_object().cloned().unwrap_or_default();
            let id = fields.remove("id").unwrap_or_default();
            let text = fields
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            rows.push(json!([format!("peer {id}"), text]));
        }
        panels.push(json!({ "title": "Raft", "rows": rows }));
    }
    let ledger = &stats["ledger"];
    if !ledger.is_null() {
        // The chain and the mempool; refusals on one row; the sealing apart.
        let mut rows = Vec::new();
        for (key, value) in ledger.as_object().into_iter().flatten() {
            if key != "sealing" && key != "transactions_refused" {
                flatten(key, value, &mut rows);
            }
        }
        let refused: Vec<String> = ledger["transactions_refused"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64() != Some(0))
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let refused = if refused.is_empty() {
            "none".to_string()
        } else {
            refused.join(", ")
        };
        rows.push(json!(["transactions_refused", refused]));
        panels.push(json!({ "title": "Ledger", "rows": rows }));
        if !ledger["sealing"].is_null() {
            let mut rows = Vec::new();
            flatten("", &ledger["sealing"], &mut rows);
            panels.push(json!({ "title": "Sealing", "rows": rows }));
        }
    }
    for (title, key) in [
        ("Accounts (MVCC)", "accounts_mvcc"),
        ("Rate limits", "rate_limits"),
    ] {
        let mut rows = Vec::new();
        flatten("", &stats[key], &mut rows);
        panels.push(json!({ "title": title, "rows": rows }));
    }
    panels
}

/// `value` as rows `[dotted.key, scalar]` (arrays of scalars stay whole).
fn flatten(prefix: &str, value: &serde_json::Value, rows: &mut Vec<serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, rows);
            }
        }
        value => rows.push(json!([prefix, value])),
    }
}

/// Whether a figure only grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One figure of `/stats` as it appears in `/metrics`.
struct Figure {
    /// Where it is in the `/stats` document.
    path: &'static [&'static str],
    /// Its metric (without the `synckit_` prefix, and without `_total` for counters).
    metric: &'static str,
    /// The metric's labels.
    labels: &'static [(&'static str, &'static str)],
    kind: Kind,
    help: &'static str,
}

macro_rules! figure {
    ($kind:ident $metric:literal $({ $($label:literal = $value:literal),* })? <- [$($path:literal),+] $help:literal) => {
        Figure {
            path: &[$($path),+],
            metric: $metric,
            labels: &[$($(($label, $value)),*)?],
            kind: Kind::$kind,
            help: $help,
        }
    };
}

/// Every number of `/stats` outside its per-lock and per-condvar lists, and its metric: the one
/// list both endpoints are built from (a test checks that no number of `/stats` is missing).
const FIGURES: &[Figure] = &[
    figure!(Gauge "uptime_seconds" <- ["uptime_secs"] "Seconds since start"),
    figure!(Gauge "connections" <- ["connections"] "Open connections"),
    figure!(Counter "lock_waits" <- ["deadlock_detector", "waits_registered"] "Acquisitions that entered the wait-for graph"),
    figure!(Counter "deadlocks_refused" <- ["deadlock_detector", "cycles_detected"] "Acquisitions refused as deadlocks"),
    figure!(Counter "level_violations" <- ["deadlock_detector", "level_violations"] "Acquisitions refused as lock-order violations"),
    figure!(Counter "order_inversions" <- ["deadlock_detector", "order_inversions"] "Acquisitions that inverted a learned lock order"),
    figure!(Gauge "threads_waiting" <- ["deadlock_detector", "threads_waiting"] "Threads in the wait-for graph now"),
    figure!(Counter "rate_limit_allowed" {"limiter" = "requests_per_address"} <- ["rate_limits", "requests_per_address", "allowed"] "Requests a limiter granted"),
    figure!(Counter "rate_limited_requests" <- ["rate_limits", "requests_per_address", "limited"] "Requests refused by the per-address limiter"),
    figure!(Gauge "rate_limit_keys" {"limiter" = "requests_per_address"} <- ["rate_limits", "requests_per_address", "keys"] "Keys with a bucket now"),
    figure!(Counter "rate_limit_evicted" {"limiter" = "requests_per_address"} <- ["rate_limits", "requests_per_address", "evicted"] "Idle keys a limiter forgot"),
    figure!(Counter "rate_limit_allowed" {"limiter" = "logins_per_user"} <- ["rate_limits", "logins_per_user", "allowed"] "Requests a limiter granted"),
    figure!(Counter "rate_limited_logins" <- ["rate_limits", "logins_per_user", "limited"] "Logins refused by the per-user limiter"),
    figure!(Gauge "rate_limit_keys" {"limiter" = "logins_per_user"} <- ["rate_limits", "logins_per_user", "keys"] "Keys with a bucket now"),
    figure!(Counter "rate_limit_evicted" {"limiter" = "logins_per_user"} <- ["rate_limits", "logins_per_user", "evicted"] "Idle keys a limiter forgot"),
    figure!(Gauge "mvcc_version" <- ["accounts_mvcc", "version"] "Latest committed version of the account map"),
    figure!(Gauge "accounts" <- ["accounts_mvcc", "keys"] "Accounts"),
    figure!(Counter "mvcc_commits" <- ["accounts_mvcc", "commits"] "Account map commits"),
    figure!(Counter "mvcc_conflicts" <- ["accounts_mvcc", "conflicts"] "Account map commit conflicts"),
    figure!(Gauge "mvcc_live_versions" <- ["accounts_mvcc", "live_versions"] "Account map versions still reachable (the latest and those held by snapshots)"),
    figure!(Gauge "mvcc_live_snapshots" <- ["accounts_mvcc", "live_snapshots"] "Live account map snapshots and transactions (listing cursors among them)"),
    figure!(Gauge "mvcc_tombstones" <- ["accounts_mvcc", "tombstones"] "Removed accounts kept for older snapshots"),
    figure!(Gauge "messages_stored" <- ["messages", "stored"] "Messages in mailboxes"),
    figure!(Gauge "messages_undelivered" <- ["messages", "undelivered"] "Messages not yet delivered"),
    figure!(Gauge "log_records_since_snapshot" <- ["log", "records_since_snapshot"] "Log records written since the last snapshot"),
    figure!(Counter "apply_parallel_batches" <- ["apply", "parallel_batches"] "Batches whose commands were applied on several threads at once"),
    figure!(Gauge "applied_index" <- ["applied_index"] "Log index of the last command applied"),
    figure!(Gauge "ledger_height" <- ["ledger", "height"] "Blocks in the chain"),
    figure!(Gauge "ledger_mempool_transactions" <- ["ledger", "mempool"] "Transactions in the mempool"),
    figure!(Gauge "ledger_mempool_bytes" <- ["ledger", "mempool_bytes"] "Canonical bytes of the mempool's transactions"),
    figure!(Gauge "ledger_supply" <- ["ledger", "supply"] "Coins in confirmed outputs (the sealed grants)"),
    figure!(Gauge "ledger_utxos" <- ["ledger", "utxos"] "Confirmed unspent outputs"),
    figure!(Gauge "ledger_difficulty_bits" <- ["ledger", "difficulty_bits"] "Leading zero bits this member seals blocks with"),
    figure!(Counter "ledger_transactions_accepted" <- ["ledger", "transactions_accepted"] "Transactions pooled"),
    figure!(Counter "ledger_transactions_refused" {"reason" = "double_spend"} <- ["ledger", "transactions_refused", "double_spend"] "Transactions refused, by reason"),
    figure!(Counter "ledger_transactions_refused" {"reason" = "no_such_output"} <- ["ledger", "transactions_refused", "no_such_output"] "Transactions refused, by reason"),
    figure!(Counter "ledger_transactions_refused" {"reason" = "not_owner"} <- ["ledger", "transactions_refused", "not_owner"] "Transactions refused, by reason"),
    figure!(Counter "ledger_transactions_refused" {"reason" = "invalid_transaction"} <- ["ledger", "transactions_refused", "invalid_transaction"] "Transactions refused, by reason"),
    figure!(Counter "ledger_transactions_refused" {"reason" = "insufficient_funds"} <- ["ledger", "transactions_refused", "insufficient_funds"] "Transactions refused, by reason"),
    figure!(Counter "ledger_transactions_refused" {"reason" = "mempool_full"} <- ["ledger", "transactions_refused", "mempool_full"] "Transactions refused, by reason"),
    figure!(Counter "ledger_transactions_refused" {"reason" = "no_such_user"} <- ["ledger", "transactions_refused", "no_such_user"] "Transactions refused, by reason"),
    figure!(Counter "ledger_transactions_refused" {"reason" = "other"} <- ["ledger", "transactions_refused", "other"] "Transactions refused, by reason"),
    figure!(Counter "ledger_blocks_refused" <- ["ledger", "blocks_refused"] "Blocks apply refused (a tip that moved, or a check that failed)"),
    figure!(Counter "ledger_blocks_sealed" <- ["ledger", "sealing", "blocks_sealed"] "Blocks this member sealed and the cluster applied"),
    figure!(Counter "ledger_sealed_blocks_refused" <- ["ledger", "sealing", "blocks_refused"] "Blocks this member sealed that were refused"),
    figure!(Counter "ledger_sealing_microseconds" <- ["ledger", "sealing", "sealing_micros_total"] "Time this member spent searching nonces"),
    figure!(Gauge "ledger_last_sealing_microseconds" <- ["ledger", "sealing", "sealing_micros_last"] "The last block's nonce search"),
    figure!(Counter "ledger_seal_jobs" <- ["ledger", "sealing", "coordinator", "jobs"] "Nonce searches started (RangeCoordinator jobs)"),
    figure!(Counter "ledger_seal_chunks_handed_out" <- ["ledger", "sealing", "coordinator", "chunks_handed_out"] "Nonce chunks handed to sealing workers"),
    figure!(Counter "ledger_seal_chunks_searched" <- ["ledger", "sealing", "coordinator", "chunks_searched"] "Nonce chunks searched without success"),
    figure!(Counter "ledger_seal_chunks_wasted" <- ["ledger", "sealing", "coordinator", "chunks_wasted"] "Nonce chunks given up after a win (work the search wasted)"),
    figure!(Counter "ledger_seal_wins" <- ["ledger", "sealing", "coordinator", "wins"] "Nonces found"),
];

type Labels = Vec<(String, String)>;
type CounterFamily = Family<Labels, Counter<f64, AtomicU64>>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

/// `/metrics` in the OpenMetrics text format: the per-lock counters, every figure of
/// `FIGURES` read from the `/stats` document, and the locks' wait histograms.
pub fn metrics_text(service: &Service) -> String {
    metrics_from(&stats_json(service))
}

fn metrics_from(stats: &serde_json::Value) -> String {
    let mut registry = Registry::with_prefix("synckit");
    register_lock_families(&mut registry);

    let mut counters: Vec<(&str, &str, CounterFamily)> = Vec::new();
    let mut gauges: Vec<(&str, &str, GaugeFamily)> = Vec::new();
    for figure in FIGURES {
        let value = figure
            .path
            .iter()
            .fold(stats, |v, key| &v[key])
            .as_f64()
            .unwrap_or(0.0);
        let labels: Labels = figure
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match figure.kind {
            Kind::Counter => {
                family_of(&mut counters, figure)
                    .get_or_create(&labels)
                    .inc_by(value);
            }
            Kind::Gauge => {
                family_of(&mut gauges, figure)
                    .get_or_create(&labels)
                    .set(value);
            }
        };
    }
    register_raft_families(&mut registry, stats);
    for (metric, help, family) in counters {
        registry.register(metric, help, family);
    }
    for (metric, help, family) in gauges {
        registry.register(metric, help, family);
    }

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    // The wait histograms go before the closing `# EOF`, under their own family name (the
    // per-lock `lock_wait_seconds` counter already holds the totals).
    let body = text
        .trim_end()
        .strip_suffix("# EOF")
        .unwrap_or(&text)
        .to_string();
    format!(
        "{body}{}# EOF\n",
        sync_kit::stats::prometheus_wait_histograms("synckit_contended")
    )
}

/// The family of `figure`'s metric among `families`, added on first use: figures that differ
/// only in their labels share one family.
fn family_of<'a, F: Default>(
    families: &'a mut Vec<(&'static str, &'static str, F)>,
    figure: &Figure,
) -> &'a F {
    let at = match families.iter().position(|(m, _, _)| *m == figure.metric) {
        Some(at) => at,
        None => {
            families.push((figure.metric, figure.help, F::default()));
            families.len() - 1
        }
    };
    &families[at].2
}

/// Raft's figures (on a cluster member only): the member's own, and each peer's, labelled with
/// the peer's id.
fn register_raft_families(registry: &mut Registry, stats: &serde_json::Value) {
    let raft = &stats["raft"];
    if raft.is_null() {
        return;
    }
    let number = |value: &serde_json::Value| value.as_f64().unwrap_or(0.0);
    for (metric, key, help) in [
        ("raft_term", "term", "Raft's current term"),
        (
            "raft_leader_id",
            "leader_id",
            "The leader this member knows of (0: none)",
        ),
        (
            "raft_commit_index",
            "commit_index",
            "The highest index known committed",
        ),
        (
            "raft_applied_index",
            "applied_index",
            "The highest index handed to the applier",
        ),
        (
            "raft_last_index",
            "last_index",
            "The last index in this member's log",
        ),
    ] {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(number(&raft[key]));
        registry.register(metric, help, gauge);
    }
    let is_leader = Gauge::<f64, AtomicU64>::default();
    is_leader.set(if raft["role"] == "leader" { 1.0 } else { 0.0 });
    registry.register("raft_is_leader", "1 on the leader, 0 elsewhere", is_leader);
    let peers = raft["peers"].as_array().cloned().unwrap_or_default();
    for (metric, key, help) in [
        (
            "raft_peer_match_index",
            "match_index",
            "The highest index known replicated on the peer (on the leader)",
        ),
        (
            "raft_peer_connected",
            "connected",
            "1 while the connection to the peer is up",
        ),
        (
            "raft_peer_last_contact_ms",
            "last_contact_ms",
            "Milliseconds since the peer was last heard from",
        ),
        ("raft_peer_sent", "sent", "Raft messages sent to the peer"),
        (
            "raft_peer_sent_directly",
            "direct",
            "Of those, the ones the raft loop wrote itself (no writer thread woken)",
        ),
        (
            "raft_peer_received",
            "received",
            "Raft messages received from the peer",
        ),
        (
            "raft_peer_dropped",
            "dropped",
            "Raft messages to or from the peer dropped (full queue, cut link)",
        ),
        (
            "raft_peer_reconnects",
            "reconnects",
            "Connections to the peer made again after a loss",
        ),
    ] {
        let family = GaugeFamily::default();
        for peer in &peers {
            let value = match &peer[key] {
                serde_json::Value::Bool(up) => f64::from(u8::from(*up)),
                other => number(other),
            };
            family
                .get_or_create(&vec![("peer".to_string(), peer["id"].to_string())])
                .set(value);
        }
        registry.register(metric, help, family);
    }
}

/// Per-lock counters, labelled with the lock's name, kind and level.
fn register_lock_families(registry: &mut Registry) {
    let acquisitions = Family::<Labels, Counter>::default();
    let contentions = Family::<Labels, Counter>::default();
    let wait = CounterFamily::default();
    let max_wait = GaugeFamily::default();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_queries_parse_and_mistakes_are_named() {
        assert_eq!(
            admin_change("/admin/remove-node?id=3", false).unwrap(),
            MembershipChange::Remove(3)
        );
        let add = admin_change(
            "/admin/add-node?id=4&chat_addr=127.0.0.1:7004&http_addr=127.0.0.1:7104\
             &raft_addr=127.0.0.1:7204&data_dir=%2Fdata%20dir%2Fnode-4",
            true,
        )
        .unwrap();
        let MembershipChange::Add(member) = add else {
            panic!("an addition expected: {add:?}");
        };
        assert_eq!(member.id, 4);
        assert_eq!(member.raft_addr, "127.0.0.1:7204".parse().unwrap());
        assert_eq!(
            member.data_dir,
            std::path::PathBuf::from("/data dir/node-4")
        );
        assert_eq!(member.grpc_addr, None);
        let with_grpc = admin_change(
            "/admin/add-node?id=4&chat_addr=127.0.0.1:7004&http_addr=127.0.0.1:7104\
             &raft_addr=127.0.0.1:7204&data_dir=d&grpc_addr=127.0.0.1:7304",
            true,
        )
        .unwrap();
        assert!(
            matches!(&with_grpc, MembershipChange::Add(m) if m.grpc_addr == Some("127.0.0.1:7304".parse().unwrap())),
            "{with_grpc:?}"
        );
        for (url, add, named) in [
            ("/admin/remove-node", false, "id is missing"),
            ("/admin/remove-node?id=0", false, "positive integer"),
            ("/admin/remove-node?id=x", false, "positive integer"),
            (
                "/admin/add-node?id=4&chat_addr=127.0.0.1:1",
                true,
                "http_addr is missing",
            ),
            (
                "/admin/add-node?id=4&chat_addr=nowhere",
                true,
                "chat_addr: an address",
            ),
            ("/admin/add-node?id=4&chat_addr=%zz", true, "bad encoding"),
            (
                "/admin/add-node?id=4&chat_addr=127.0.0.1:7004&http_addr=127.0.0.1:7104\
                 &raft_addr=127.0.0.1:7204&data_dir=d&grpc_addr=x",
                true,
                "grpc_addr: an address",
            ),
        ] {
            let error = admin_change(url, add).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidArgument, "{url}");
            assert!(error.message.contains(named), "{url}: {}", error.message);
        }
    }

    /// Every number in `/stats` outside the per-lock and per-condvar lists.
    fn numbers(value: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match value {
            serde_json::Value::Number(_) => out.push(path.clone()),
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    // Per-lock, per-condvar and (on a cluster member) raft's figures have their
                    // own families.
                    if path.is_empty() && (key == "locks" || key == "condvars" || key == "raft") {
                        continue;
                    }
                    path.push(key.clone());
                    numbers(value, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_number_of_stats_is_a_metric() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let service = Service::open(&config).unwrap();
        let stats = stats_json(&service);
        let mut found = Vec::new();
        numbers(&stats, &mut Vec::new(), &mut found);
        assert!(found.len() > 20, "{found:?}");
        for path in found {
            assert!(
                FIGURES.iter().any(|f| f.path.iter().eq(path.iter())),
                "/stats has {path:?}, which /metrics does not show: add it to FIGURES"
            );
        }
        let text = metrics_from(&stats);
        for figure in FIGURES {
            let name = match figure.kind {
                Kind::Counter => format!("synckit_{}_total", figure.metric),
                Kind::Gauge => format!("synckit_{}", figure.metric),
            };
            assert!(text.contains(&name), "{name} in /metrics");
        }
        assert!(text.contains("synckit_contended_lock_wait_seconds_bucket"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
