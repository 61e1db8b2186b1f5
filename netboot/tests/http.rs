//! HTTP handlers in-process: the exact iPXE script, artifacts and upgrade bundles
//! with Range, the token guard on config bundles (checked with the host's tar),
//! events, node logs and metrics.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{CP_MAC, ROOT_SHA, fixture};
use http_body_util::BodyExt;
use labimg_netboot::http::router;
use tower::ServiceExt;

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn ipxe_script_is_exact() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let (st, body) = call(&app, get(&format!("/boot.ipxe?mac={CP_MAC}"))).await;
    assert_eq!(st, StatusCode::OK);
    let token = f.shared.tokens.token_for("cp1", None).unwrap();
    let expected = format!(
        "#!ipxe\n\
         echo labimg: booting cp1 with profile proxmox\n\
         kernel http://127.0.0.1:8080/images/proxmox/vmlinuz initrd=initrd.img \
         labimg.root.url=http://127.0.0.1:8080/images/proxmox/root.squashfs \
         labimg.root.sha256={ROOT_SHA} labimg.root.size=4096 \
         labimg.config=http://127.0.0.1:8080/v1/nodes/52:54:00:12:34:56/config labimg.token={token} \
         labimg.events=http://127.0.0.1:8080/v1/events console=ttyS0 labimg.debug=1\n\
         initrd http://127.0.0.1:8080/images/proxmox/initrd.img\n\
         boot\n"
    );
    assert_eq!(String::from_utf8(body).unwrap(), expected);
    // MAC spelled differently (as some firmware does) renders the same node.
    let (_, again) = call(&app, get("/boot.ipxe?mac=52-54-00-12-34-56")).await;
    assert_eq!(String::from_utf8(again).unwrap(), expected);
    let (st, body) = call(&app, get("/boot.ipxe?mac=02:00:00:00:00:99")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "#!ipxe\necho labimg: 02:00:00:00:00:99 is not in the inventory, leaving it alone\nexit\n"
    );
    let (st, _) = call(&app, get("/boot.ipxe")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn artifacts_support_range_and_stay_inside() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let kernel = std::fs::read(f.shared.cfg.images.dir.join("proxmox/netboot/vmlinuz")).unwrap();
    let req = Request::get("/images/proxmox/vmlinuz")
        .header(header::RANGE, "bytes=1000-1999")
        .body(Body::empty())
        .unwrap();
    let (st, body) = call(&app, req).await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, kernel[1000..2000]);
    let (st, body) = call(&app, get("/images/proxmox/vmlinuz")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == kernel);
    for bad in [
        "/images/proxmox/evil",
        "/images/proxmox/..%2Fnodes",
        "/images/..%2Fproxmox/netboot.json",
        "/images/proxmox/nodes",
    ] {
        let (st, _) = call(&app, get(bad)).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{bad}");
    }
    let (st, body) = call(&app, get("/ipxe/ipxe.efi")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == std::fs::read("/usr/lib/ipxe/ipxe.efi").unwrap());
}

#[tokio::test]
async fn upgrade_bundle_is_served_and_nothing_else() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let images = f.shared.cfg.images.dir.clone();
    for file in [
        "proxmox/upgrade.json",
        "proxmox/SHA256SUMS",
        "proxmox/netboot/vmlinuz",
        "pi5/netboot/rpi/overlays/vc4-kms-v3d.dtbo",
    ] {
        let (st, body) = call(&app, get(&format!("/bundles/{file}"))).await;
        assert_eq!(st, StatusCode::OK, "{file}");
        assert!(body == std::fs::read(images.join(file)).unwrap(), "{file}");
    }
    let root = std::fs::read(images.join("proxmox/netboot/root.squashfs")).unwrap();
    let req = Request::get("/bundles/proxmox/netboot/root.squashfs")
        .header(header::RANGE, "bytes=1024-")
        .body(Body::empty())
        .unwrap();
    let (st, body) = call(&app, req).await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, root[1024..]);
    // upgrade.json as a symlink to a node's secrets, inside the profile folder.
    let pi_upgrade = images.join("pi5/upgrade.json");
    std::fs::remove_file(&pi_upgrade).unwrap();
    std::os::unix::fs::symlink("nodes/pi1/node.env", &pi_upgrade).unwrap();
    for bad in [
        "/bundles/proxmox/nodes/cp1/node.env",
        "/bundles/proxmox/manifest.json",
        "/bundles/proxmox/proxmox.raw",
        "/bundles/proxmox/SHA256SUMS.minisig",
        "/bundles/proxmox/netboot/../nodes/cp1/node.env",
        "/bundles/proxmox/netboot/..%2Fnodes%2Fcp1%2Fnode.env",
        "/bundles/proxmox/../pi5/upgrade.json",
        "/bundles/..%2Fproxmox/upgrade.json",
        "/bundles/proxmox//etc/passwd",
        "/bundles/proxmox/netboot//etc/passwd",
        "/bundles/proxmox/netboot/evil",
        "/bundles/pi5/netboot/rpi/evil",
        "/bundles/pi5/upgrade.json",
        "/bundles/proxmox/netboot",
        "/bundles/nope/upgrade.json",
    ] {
        let (st, _) = call(&app, get(bad)).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{bad}");
    }
}

fn authed(uri: &str, token: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn config_bundle_needs_the_node_token() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let uri = format!("/v1/nodes/{CP_MAC}/config");
    let (st, _) = call(&app, get(&uri)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = call(&app, authed(&uri, "pi1-fixed-token-0123456789")).await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "another node's token must not work"
    );
    let token = f.shared.tokens.token_for("cp1", None).unwrap();
    let (st, tar) = call(&app, authed(&uri, &token)).await;
    assert_eq!(st, StatusCode::OK);
    let path = f.dir.path().join("bundle.tar");
    std::fs::write(&path, &tar).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "k3s/\nk3s/config.yaml\nnode.env\nk3s/node-password\n"
    );
    // The node's k3s password: the same in every bundle for this node.
    let out = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&path)
        .arg("k3s/node-password")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", f.shared.tokens.node_password_for("cp1").unwrap())
    );
    let out = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&path)
        .arg("node.env")
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"K3S_TOKEN=secret-cluster-token\n");
    // Not once: a second fetch works.
    assert_eq!(call(&app, authed(&uri, &token)).await.0, StatusCode::OK);
    // once = true (pi1, addressed by serial here): 200 then 410.
    let pi = "/v1/nodes/dc4a8f1b/config";
    assert_eq!(
        call(&app, authed(pi, "pi1-fixed-token-0123456789")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, authed(pi, "pi1-fixed-token-0123456789")).await.0,
        StatusCode::GONE
    );
    assert_eq!(
        call(&app, get("/v1/nodes/02:00:00:00:00:99/config"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

fn post_json(uri: &str, json: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json.to_string()))
        .unwrap()
}

#[tokio::test]
async fn events_round_trip_and_metrics() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let ev = format!(
        r#"{{"stage":"root-verified","mac":"{CP_MAC}","hostname":"cp1","detail":"sha256 ok"}}"#
    );
    assert_eq!(
        call(&app, post_json("/v1/events", &ev)).await.0,
        StatusCode::NO_CONTENT
    );
    let stranger = r#"{"stage":"booted","mac":"02:00:00:00:00:99","hostname":"","detail":""}"#;
    assert_eq!(
        call(&app, post_json("/v1/events", stranger)).await.0,
        StatusCode::NO_CONTENT
    );
    let pi =
        r#"{"stage":"k3s-started","mac":"d8:3a:dd:00:00:01","hostname":"pi1","detail":"agent up"}"#;
    assert_eq!(
        call(&app, post_json("/v1/events", pi)).await.0,
        StatusCode::NO_CONTENT
    );
    let bad = r#"{"stage":"exploded","mac":"02:00:00:00:00:99"}"#;
    assert_eq!(
        call(&app, post_json("/v1/events", bad)).await.0,
        StatusCode::BAD_REQUEST
    );
    assert!(
        call(&app, post_json("/v1/events", "{not json"))
            .await
            .0
            .is_client_error()
    );
    let (st, body) = call(&app, get("/v1/nodes")).await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let cp1 = &v["nodes"][0];
    assert_eq!(cp1["node"]["hostname"], "cp1");
    assert_eq!(cp1["events"][0]["stage"], "root-verified");
    assert_eq!(cp1["events"][0]["detail"], "sha256 ok");
    assert_eq!(v["unknown"][0]["mac"], "02:00:00:00:00:99");
    assert_eq!(v["unknown"].as_array().unwrap().len(), 1);
    assert_eq!(v["nodes"][1]["node"]["hostname"], "pi1");
    assert_eq!(v["nodes"][1]["events"][0]["detail"], "agent up");
    assert_eq!(call(&app, get("/healthz")).await.0, StatusCode::OK);
    let (_, m) = call(&app, get("/metrics")).await;
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("labimg_events_total{stage=\"root-verified\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("labimg_http_requests_total{route=\"/v1/events\",status=\"204\"} 3\n"),
        "{m}"
    );
    assert!(
        m.contains("labimg_http_requests_total{route=\"/v1/events\",status=\"400\"} 2\n"),
        "{m}"
    );
    // OpenMetrics names the counter family without `_total`; every family has # HELP.
    assert!(m.contains("# TYPE labimg_events counter\n"), "{m}");
    assert!(
        m.contains("# HELP labimg_events Boot events nodes reported, by stage.\n"),
        "{m}"
    );
    assert!(m.contains("# TYPE labimg_boot_seconds histogram\n"), "{m}");
    assert!(m.ends_with("# EOF\n"), "{m}");
}

#[tokio::test]
async fn inventory_reload_keeps_last_good() {
    let f = fixture(8080);
    let file = f.dir.path().join("inventory.toml");
    tokio::spawn(labimg_netboot::inventory::watch(
        file.clone(),
        f.shared.inventory.clone(),
        Duration::from_millis(50),
    ));
    let added = format!(
        "{}\n[[node]]\nhostname = \"cp2\"\nmac = \"52:54:00:00:00:02\"\nrole = \"agent\"\nprofile = \"proxmox\"\n",
        common::INVENTORY
    );
    // Make sure the mtime moves even on coarse-grained filesystems.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, &added).unwrap();
    let wait_for = |want: usize| {
        let s = f.shared.clone();
        async move {
            for _ in 0..100 {
                if s.inventory().nodes.len() == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(wait_for(3).await, "new node not picked up");
    std::fs::write(&file, "[[node]]\nhostname = 5\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        f.shared.inventory().nodes.len(),
        3,
        "invalid reload must keep the previous inventory"
    );
}

fn post_logs(uri: &str, token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::post(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(body.into()).unwrap()
}

#[tokio::test]
async fn node_logs_need_the_token_and_read_back_by_name_and_mac() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let token = f.shared.tokens.token_for("cp1", None).unwrap();
    let uri = format!("/v1/nodes/{CP_MAC}/logs");
    let logs_dir = f.dir.path().join("state/logs");
    // No token, a wrong one, another node's: refused, nothing stored.
    for token in [None, Some("nope"), Some("pi1-fixed-token-0123456789")] {
        let (st, _) = call(&app, post_logs(&uri, token, "labimg: stolen\n")).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    assert!(!logs_dir.join("cp1.log").exists());
    // Malformed: not UTF-8, a terminal escape, empty, too big. The server keeps serving.
    let big = vec![b'x'; labimg_netboot::logs::MAX_REQUEST + 1];
    for (body, want) in [
        (b"ok\n\xff\xfe\n".to_vec(), StatusCode::BAD_REQUEST),
        (b"\x1b[2J wipe\n".to_vec(), StatusCode::BAD_REQUEST),
        (Vec::new(), StatusCode::BAD_REQUEST),
        (big, StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let (st, _) = call(&app, post_logs(&uri, Some(&token), body)).await;
        assert_eq!(st, want);
    }
    assert!(!logs_dir.join("cp1.log").exists());
    // The node's lines, twice; then the Pi by its serial with its inventory token.
    let first = "Nov 29 00:01:02 cp1 user.notice labimg: stage2 start\n\
                 Nov 29 00:01:03 cp1 user.notice labimg: k3s starting role=server\n";
    let (st, _) = call(&app, post_logs(&uri, Some(&token), first)).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = call(
        &app,
        post_logs(
            &uri,
            Some(&token),
            "Nov 29 00:01:04 cp1 k3s: Running kubelet\r\n",
        ),
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = call(
        &app,
        post_logs(
            "/v1/nodes/dc4a8f1b/logs",
            Some("pi1-fixed-token-0123456789"),
            "pi line\n",
        ),
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let resp = app
        .clone()
        .oneshot(get("/v1/nodes/cp1/logs"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let next: u64 = resp.headers()["labimg-log-next"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(next, text.len() as u64);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    // Each line: the time it arrived, then what the node sent.
    assert!(
        lines[1].ends_with("Z Nov 29 00:01:03 cp1 user.notice labimg: k3s starting role=server")
    );
    assert!(lines[2].ends_with("Z Nov 29 00:01:04 cp1 k3s: Running kubelet"));
    assert!(!text.contains("pi line") && !text.contains("stolen"));
    // By MAC (any spelling) the same; tail and since.
    let (_, by_mac) = call(&app, get("/v1/nodes/52-54-00-12-34-56/logs")).await;
    assert_eq!(by_mac, body.to_vec());
    let (_, tail) = call(&app, get("/v1/nodes/cp1/logs?tail=1")).await;
    assert_eq!(String::from_utf8(tail).unwrap(), format!("{}\n", lines[2]));
    let (_, none) = call(&app, get(&format!("/v1/nodes/cp1/logs?since={next}"))).await;
    assert!(none.is_empty());
    let (_, pi) = call(&app, get("/v1/nodes/pi1/logs")).await;
    assert!(String::from_utf8(pi).unwrap().ends_with("Z pi line\n"));
    let (_, pi) = call(&app, get("/v1/nodes/dc4a8f1b/logs?tail=5")).await;
    assert!(String::from_utf8(pi).unwrap().ends_with("Z pi line\n"));
    // Unknown nodes: 404 for both directions; a bad query: 400.
    let (st, body) = call(&app, get("/v1/nodes/nobody/logs")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("unknown node \"nobody\"")
    );
    let (st, _) = call(
        &app,
        post_logs("/v1/nodes/02:00:00:00:00:99/logs", Some(&token), "x\n"),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        call(&app, get("/v1/nodes/cp1/logs?tail=lots")).await.0,
        StatusCode::BAD_REQUEST
    );
    let (_, m) = call(&app, get("/metrics")).await;
    let m = String::from_utf8(m).unwrap();
    for want in [
        "labimg_log_lines_total{hostname=\"cp1\"} 3\n",
        "labimg_log_lines_total{hostname=\"pi1\"} 1\n",
        "labimg_logs_denied_total 3\n",
        "labimg_logs_rejected_total 3\n",
        "labimg_http_requests_total{route=\"/v1/nodes/{id}/logs\",status=\"413\"} 1\n",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }
}

#[tokio::test]
async fn node_logs_stay_bounded() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let token = f.shared.tokens.token_for("cp1", None).unwrap();
    let uri = format!("/v1/nodes/{CP_MAC}/logs");
    // 3 MiB of lines in 60 KiB batches: at most 1 MiB (plus one batch) is kept.
    let batch: String = (0..600)
        .map(|i| format!("{i:04} {}\n", "y".repeat(95)))
        .collect();
    for n in 0..52 {
        let body = batch.replace("yyyy", &format!("{n:04}"));
        let (st, _) = call(&app, post_logs(&uri, Some(&token), body)).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
    }
    let dir = f.dir.path().join("state/logs");
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let keep = labimg_netboot::logs::KEEP_BYTES;
    assert!(on_disk <= keep + 64 * 1024, "{on_disk} bytes kept");
    assert!(on_disk >= keep / 2, "{on_disk} bytes kept");
    let (_, text) = call(&app, get("/v1/nodes/cp1/logs")).await;
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(" 0599 0051"), "the newest batch is kept");
    assert!(!text.contains(" 0000 0000"), "the oldest is gone");
}

/// A boot seen from power-on: its milestones show in `/v1/nodes` under the node, and
/// power-on → k3s-started lands in the `labimg_boot_seconds` histogram once.
#[tokio::test]
async fn boot_timeline_in_nodes_and_histogram() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let mac: labimg_netboot::inventory::Mac = CP_MAC.parse().unwrap();
    // What the DHCP service records for a firmware DISCOVER (tests/dhcp.rs drives it).
    f.shared.timeline.mark(mac, "dhcp-discover");
    let (st, _) = call(&app, get(&format!("/boot.ipxe?mac={CP_MAC}"))).await;
    assert_eq!(st, StatusCode::OK);
    for stage in ["booted", "network-up", "k3s-started", "k3s-started"] {
        let ev = format!(r#"{{"stage":"{stage}","mac":"{CP_MAC}","hostname":"cp1"}}"#);
        assert_eq!(
            call(&app, post_json("/v1/events", &ev)).await.0,
            StatusCode::NO_CONTENT
        );
    }
    let (_, body) = call(&app, get("/v1/nodes")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let boot = &v["nodes"][0]["boot"];
    assert_eq!(v["nodes"][0]["node"]["hostname"], "cp1");
    assert_eq!(boot["from_power_on"], true, "{v}");
    let names: Vec<_> = boot["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["milestone"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "dhcp-discover",
            "boot-script",
            "booted",
            "network-up",
            "k3s-started"
        ]
    );
    assert!(boot["marks"][4]["seconds"].as_f64().unwrap() >= 0.0);
    assert!(v["nodes"][1]["boot"].is_null(), "pi1 has not booted: {v}");
    let (_, m) = call(&app, get("/metrics")).await;
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("labimg_boot_seconds_count 1\n"), "{m}");
}

/// An artifact download counts in `labimg_http_active_transfers` until its body is
/// gone, sent or dropped, and the bytes it sent in `labimg_http_bytes_total`.
#[tokio::test]
async fn active_downloads_gauge() {
    let f = fixture(8080);
    let app = router(f.shared.clone());
    let active = || f.shared.metrics.gauge("labimg_http_active_transfers", &[]);
    let resp = app
        .clone()
        .oneshot(get("/images/proxmox/vmlinuz"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(active(), 1, "headers sent, body not yet");
    drop(resp);
    assert_eq!(active(), 0, "a client that goes away ends the transfer");
    let (st, body) = call(&app, get("/images/proxmox/initrd.img")).await;
    assert_eq!((st, body.len()), (StatusCode::OK, 50_000));
    assert_eq!(active(), 0);
    let sent = f.shared.metrics.get("labimg_http_bytes_total", &[]);
    assert_eq!(
        sent, 50_000,
        "only the body sent counts, not the dropped one"
    );
    assert_eq!(
        call(&app, get("/images/proxmox/nothing")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(active(), 0, "a refusal is no transfer");
}
