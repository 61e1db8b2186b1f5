//! The HTTP side: iPXE scripts, artifacts and upgrade bundles (with Range),
//! per-node config bundles, boot events, node logs, the node list, the Raspberry Pi
//! Imager repository and its disk images (with Range), metrics and health. The
//! whole route table is [`router`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::Shared;
use crate::events::EventIn;
use crate::images::is_plain_name;
use crate::inventory::{Mac, Node};
use crate::timeline;

type S = State<Arc<Shared>>;

/// The route table.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/images/{profile}/{file}", get(image_file))
        .route("/bundles/{profile}/{*path}", get(bundle_file))
        .route("/ipxe/{file}", get(ipxe_file))
        .route("/imager/os_list.json", get(imager_list))
        .route("/imager/{profile}/{file}", get(imager_file))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}/config", get(node_config))
        .route(
            "/v1/nodes/{id}/logs",
            get(read_logs)
                .post(post_logs)
                .layer(DefaultBodyLimit::max(crate::logs::MAX_REQUEST)),
        )
        .route("/v1/events", post(post_event))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
        .with_state(shared)
}

async fn count_requests(State(s): S, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let resp = next.run(req).await;
    s.metrics.inc(
        "labimg_http_requests_total",
        &[("route", &route), ("status", resp.status().as_str())],
    );
    resp
}

/// The client's address, when the server runs with connect info (not in tests that
/// call the router directly).
fn peer_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("{e:#}");
    text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"))
}

#[derive(Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

async fn boot_ipxe(State(s): S, Query(q): Query<MacQuery>, req: Request) -> Response {
    let Some(Ok(mac)) = q.mac.as_deref().map(str::parse::<Mac>) else {
        return text(
            StatusCode::BAD_REQUEST,
            "#!ipxe\necho labimg: boot.ipxe needs ?mac=<MAC>\nexit 1\n",
        );
    };
    if let Some(ip) = peer_ip(&req) {
        s.timeline.bind_ip(ip, mac);
    }
    s.timeline.mark(mac, "boot-script");
    match crate::boot::ipxe_script(&s, &mac) {
        Ok(script) => text(StatusCode::OK, script),
        Err(e) => internal(e),
    }
}

/// Counts a download (netboot artifacts, Imager disk images) in
/// `labimg_http_active_transfers` until its body is sent or dropped (the client went
/// away), and its body bytes in `labimg_http_bytes_total`.
fn counted(s: &Arc<Shared>, r: Response) -> Response {
    if !r.status().is_success() {
        return r;
    }
    s.metrics.gauge_add(ACTIVE_HTTP, &[], 1);
    r.map(|inner| {
        Body::new(Counted {
            inner,
            shared: s.clone(),
        })
    })
}

const ACTIVE_HTTP: &str = "labimg_http_active_transfers";
const SENT_HTTP: &str = "labimg_http_bytes_total";

struct Counted {
    inner: Body,
    shared: Arc<Shared>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared.metrics.gauge_add(ACTIVE_HTTP, &[], -1);
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.shared.metrics.add(SENT_HTTP, &[], data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Bytes read from a served file at a time. tower-http's default is 64 KiB, and each
/// read is a trip to the blocking pool and one body frame. Measured on loopback with
/// the 50.9 MB proxmox root image: one curl 1.1 GB/s with 64 KiB, 1.2 to 1.6 GB/s with
/// 512 KiB; twenty at once 0.96 s against 0.78 to 0.84 s. Fifty transfers at once
/// hold fifty such buffers (25 MiB).
const FILE_CHUNK: usize = 512 * 1024;

/// A file response with Range support and [`FILE_CHUNK`] reads.
fn serve_file(path: std::path::PathBuf) -> ServeFile {
    ServeFile::new(path).with_buf_chunk_size(FILE_CHUNK)
}

/// Serves `root/name` with Range support, refusing names or symlinks leading out.
/// `name` is one or more plain names joined by `/`.
async fn serve_under(root: std::path::PathBuf, name: &str, req: Request) -> Response {
    if !name.split('/').all(is_plain_name) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let (Ok(root), Ok(real)) = (root.canonicalize(), root.join(name).canonicalize()) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if !real.starts_with(&root) || !real.is_file() {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    match serve_file(real).oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => internal(anyhow::anyhow!("serving {name}: {e}")),
    }
}

async fn image_file(
    State(s): S,
    Path((profile, file)): Path<(String, String)>,
    req: Request,
) -> Response {
    // One name: a percent-encoded `/` must not reach netboot/'s sub-folders.
    if let (Some(ip), Some(milestone)) = (peer_ip(&req), timeline::file_milestone(&file)) {
        s.timeline.mark_ip(ip, milestone);
    }
    match s.cfg.images.netboot_dir(&profile) {
        Ok(dir) if is_plain_name(&file) => counted(&s, serve_under(dir, &file, req).await),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A file of a profile's upgrade bundle, for nodes upgrading their inactive slot.
async fn bundle_file(
    State(s): S,
    Path((profile, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    match s.cfg.images.bundle_file(&profile, &path) {
        Ok((root, rel)) => serve_under(root, rel, req).await,
        Err(_) => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn ipxe_file(State(s): S, Path(file): Path<String>, req: Request) -> Response {
    if !is_plain_name(&file) {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let dir = s.cfg.ipxe_dir.clone();
    let name = if file == "ipxe.efi" && !dir.join("ipxe.efi").exists() {
        "ipxe-amd64.efi".to_string()
    } else {
        file
    };
    serve_under(dir, &name, req).await
}

/// One Imager repository for every profile with an `os_list.json`, URLs absolute.
async fn imager_list(State(s): S) -> Response {
    let base = s.http_base();
    let images = s.cfg.images.clone();
    match tokio::task::spawn_blocking(move || images.imager_list(&base)).await {
        Ok(list) => ([(header::CONTENT_TYPE, "application/json")], list.to_json()).into_response(),
        Err(e) => internal(anyhow::anyhow!("building the Imager list: {e}")),
    }
}

/// A disk image or icon an `os_list.json` names.
async fn imager_file(
    State(s): S,
    Path((profile, file)): Path<(String, String)>,
    req: Request,
) -> Response {
    match s.cfg.images.imager_file(&profile, &file) {
        Ok(path) => match serve_file(path).oneshot(req).await {
            Ok(r) => counted(&s, r.map(Body::new)),
            Err(e) => internal(anyhow::anyhow!("serving {file}: {e}")),
        },
        Err(e) => {
            tracing::debug!("Imager file {profile}/{file}: {e:#}");
            text(StatusCode::NOT_FOUND, "not found\n")
        }
    }
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares without an early exit so timing does not leak the matching prefix.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The node a node-facing route names: its MAC, or its Pi serial.
fn node_by_boot_id(inv: &crate::inventory::Inventory, id: &str) -> Option<Node> {
    match id.parse::<Mac>() {
        Ok(mac) => inv.by_mac(&mac),
        Err(_) => inv.by_serial(id),
    }
    .cloned()
}

/// `Err` (401, counted in `denied`) unless the request carries `node`'s token.
#[allow(clippy::result_large_err)]
fn check_token(s: &Shared, node: &Node, headers: &HeaderMap, denied: &str) -> Result<(), Response> {
    let token = s
        .tokens
        .token_for(&node.hostname, node.token.as_deref())
        .map_err(internal)?;
    if bearer(headers).is_some_and(|b| same(b, &token)) {
        return Ok(());
    }
    s.metrics.inc(denied, &[]);
    Err((
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "token required\n",
    )
        .into_response())
}

async fn node_config(State(s): S, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Some(node) = node_by_boot_id(&s.inventory(), &id) else {
        return text(StatusCode::NOT_FOUND, "unknown node\n");
    };
    if let Err(r) = check_token(&s, &node, &headers, "labimg_config_denied_total") {
        return r;
    }
    let dir = match s.cfg.images.node_dir(&node.profile, &node.hostname) {
        Ok(d) if d.is_dir() => d,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no config bundle rendered for {}\n", node.hostname),
            );
        }
    };
    // The node's k3s password, the same at every boot (its /var is a tmpfs).
    let password = match s.tokens.node_password_for(&node.hostname) {
        Ok(p) => format!("{p}\n"),
        Err(e) => return internal(e),
    };
    let extra: &[(&str, &[u8])] = &[("k3s/node-password", password.as_bytes())];
    let tar = match crate::images::tar_dir_with(&dir, extra) {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    if node.once {
        match s.tokens.consume(&node.hostname) {
            Ok(true) => {}
            Ok(false) => return text(StatusCode::GONE, "config already fetched (once = true)\n"),
            Err(e) => return internal(e),
        }
    }
    tracing::info!(hostname = %node.hostname, "config bundle served");
    s.metrics.add(SENT_HTTP, &[], tar.len() as u64);
    ([(header::CONTENT_TYPE, "application/x-tar")], tar).into_response()
}

/// A node's batch of log lines (plain text, one per line), with its own token.
async fn post_logs(
    State(s): S,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(node) = node_by_boot_id(&s.inventory(), &id) else {
        return text(StatusCode::NOT_FOUND, "unknown node\n");
    };
    if let Err(r) = check_token(&s, &node, &headers, "labimg_logs_denied_total") {
        return r;
    }
    let lines = match crate::logs::parse_lines(&body) {
        Ok(l) => l,
        Err(msg) => {
            s.metrics.inc("labimg_logs_rejected_total", &[]);
            return text(StatusCode::BAD_REQUEST, format!("{msg}\n"));
        }
    };
    if let Err(e) = s.logs.append(&node.hostname, &lines) {
        return internal(e);
    }
    s.metrics.add(
        "labimg_log_lines_total",
        &[("hostname", &node.hostname)],
        lines.len() as u64,
    );
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    since: Option<u64>,
}

/// A node's shipped lines for the operator, by host name, MAC or Pi serial; like
/// `/v1/nodes`, unauthenticated (see netboot/README.md, "Trust model").
async fn read_logs(State(s): S, Path(id): Path<String>, Query(q): Query<LogsQuery>) -> Response {
    let inv = s.inventory();
    let node = match id.parse::<Mac>() {
        Ok(mac) => inv.by_mac(&mac),
        Err(_) => inv.by_hostname(&id).or_else(|| inv.by_serial(&id)),
    };
    let Some(node) = node else {
        return text(
            StatusCode::NOT_FOUND,
            format!("unknown node {id:?}: no host name, MAC or Pi serial in the inventory\n"),
        );
    };
    match s.logs.read(&node.hostname, q.since, q.tail) {
        Ok(r) => (
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (
                    header::HeaderName::from_static(crate::logs::LOG_NEXT_HEADER),
                    r.next.to_string(),
                ),
            ],
            r.text,
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

async fn post_event(State(s): S, Json(e): Json<EventIn>) -> Response {
    match e.validate() {
        Ok(ev) => {
            s.metrics
                .inc("labimg_events_total", &[("stage", &ev.stage)]);
            let stage = crate::events::STAGES.iter().find(|st| **st == ev.stage);
            let ago = ev.ago.unwrap_or(0.0);
            if let Some(secs) = stage.and_then(|st| s.timeline.mark_ago(ev.mac, st, ago)) {
                s.metrics.observe_boot(secs);
            }
            s.events.record(ev);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(msg) => text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
    }
}

async fn list_nodes(State(s): S) -> Response {
    let inv = s.inventory();
    // A node known only by Pi serial is matched to its events by the host name it reports.
    let owner = |m: &Mac| {
        inv.by_mac(m).map(|n| n.hostname.clone()).or_else(|| {
            s.events
                .of(m)
                .iter()
                .rev()
                .find(|e| inv.by_hostname(&e.hostname).is_some())
                .map(|e| e.hostname.clone())
        })
    };
    let macs = s.events.macs();
    // A node's timeline is under its inventory MAC, or the MACs its events came from.
    let macs_of = |n: &Node| {
        let mut v: Vec<Mac> = n.mac.into_iter().collect();
        v.extend(
            macs.iter()
                .filter(|m| owner(m).as_deref() == Some(n.hostname.as_str())),
        );
        v
    };
    let nodes: Vec<_> = inv
        .nodes
        .iter()
        .map(|n| {
            let events: Vec<_> = macs
                .iter()
                .filter(|m| owner(m).as_deref() == Some(n.hostname.as_str()))
                .flat_map(|m| s.events.of(m))
                .collect();
            let boot = macs_of(n)
                .into_iter()
                .filter_map(|m| s.timeline.of(&m))
                .max_by(|a, b| a.started.total_cmp(&b.started));
            serde_json::json!({"node": n, "events": events, "boot": boot})
        })
        .collect();
    let unknown: Vec<_> = macs
        .iter()
        .filter(|m| owner(m).is_none())
        .map(|m| serde_json::json!({"mac": m, "events": s.events.of(m), "boot": s.timeline.of(m)}))
        .collect();
    // Every profile the inventory boots, and whether it can be served now (with
    // --public-key a tampered or unsigned one is refused: its nodes will not boot).
    let names: std::collections::BTreeSet<&str> = inv
        .nodes
        .iter()
        .map(|n| n.profile.as_str())
        .chain(inv.default.profile.as_deref())
        .collect();
    let profiles: Vec<_> = names
        .into_iter()
        .map(|name| match s.cfg.images.info(name) {
            Ok(info) => serde_json::json!({"name": name, "servable": true, "kernel": info.kernel}),
            Err(e) => {
                serde_json::json!({"name": name, "servable": false, "error": format!("{e:#}")})
            }
        })
        .collect();
    Json(serde_json::json!({"nodes": nodes, "unknown": unknown, "profiles": profiles}))
        .into_response()
}

async fn metrics(State(s): S) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
