//! A small HTTP server for the dashboard (tiny_http): [`serve`], [`serve_with_panels`].

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread;

use serde_json::Value;
use tiny_http::{Header, Method, Response, Server};

/// Serves the dashboard at `addr` on a background thread named `synckit-observe`, for the life
/// of the process: `GET /` the page, `GET /dashboard.json` [`super::snapshot_json`],
/// `GET /metrics` [`super::prometheus_text`]. Returns the bound address (give port 0 to let the
/// system choose). It has no authentication: bind it to loopback, or to a network only
/// operators reach.
pub fn serve(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    serve_with_panels(addr, || Value::Null)
}

/// As [`serve`], with the application's panels: `panels` is called on the server's thread for
/// each `dashboard.json`, and what it returns (an array of `{"title", "rows"}`, see the
/// [module documentation](super); `Value::Null` for none) is served as `"panels"`.
pub fn serve_with_panels(
    addr: impl ToSocketAddrs,
    panels: impl Fn() -> Value + Send + 'static,
) -> io::Result<SocketAddr> {
    let server = Server::http(addr).map_err(io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("the dashboard is not on an IP address"))?;
    thread::Builder::new()
        .name("synckit-observe".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("");
                let (status, body, content_type) = match (request.method(), path) {
                    (Method::Get, "/" | "/index.html") => {
                        (200, super::page().to_owned(), "text/html; charset=utf-8")
                    }
                    (Method::Get, "/dashboard.json") => {
                        let mut snapshot = super::snapshot_json();
                        let panels = panels();
                        if !panels.is_null() {
                            snapshot["panels"] = panels;
                        }
                        (200, snapshot.to_string(), "application/json")
                    }
                    (Method::Get, "/metrics") => (
                        200,
                        super::prometheus_text(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                    (Method::Get, _) => (404, "not found\n".to_owned(), "text/plain"),
                    _ => (405, "method not allowed\n".to_owned(), "text/plain"),
                };
                let header = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                    .expect("a valid header");
                let response = Response::from_string(body)
                    .with_header(header)
                    .with_status_code(status);
                // A client that went away is not the server's concern.
                let _ = request.respond(response);
            }
        })?;
    Ok(bound)
}
