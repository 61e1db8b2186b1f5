//! `serve --public-key` in-process over HTTP: a signed, intact profile is served; a
//! tampered one is refused as a whole (artifacts 404, the boot script says why) until
//! it is intact again; unsigned or foreign-signed profiles are refused too; a
//! tampered `upgrade.json` is refused while the rest of its bundle is served.

mod common;

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{CP_MAC, fixture};
use http_body_util::BodyExt;
use labimg_builder::artifact::sign::{self, KeyProtection};
use labimg_netboot::images::Images;
use labimg_netboot::inventory::Inventory;
use labimg_netboot::verify::Verifier;
use labimg_netboot::{Config, Shared, http::router};
use tower::ServiceExt;

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::get(uri).body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

/// Writes `SHA256SUMS` as the build does and signs it.
fn sign_profile(dir: &Path, key: &Path) {
    common::write_sums(dir);
    sign::sign_dir(dir, key).unwrap();
}

/// The fixture with both profiles signed by a fresh key, served by an app that
/// checks that key: (fixture, images folder, app).
fn both_profiles_signed() -> (common::Fixture, std::path::PathBuf, axum::Router) {
    let f = fixture(8080);
    let images = f.shared.cfg.images.dir.clone();
    let keys = sign::generate_keypair(&f.dir.path().join("keys"), KeyProtection::None).unwrap();
    sign_profile(&images.join("proxmox"), &keys.secret);
    sign_profile(&images.join("pi5"), &keys.secret);
    let app = signed_app(&f, &keys.public);
    (f, images, app)
}

/// The fixture's shared state, but checking signatures with `public`.
fn signed_app(f: &common::Fixture, public: &Path) -> axum::Router {
    let cfg = Config {
        images: Images {
            dir: f.shared.cfg.images.dir.clone(),
            verifier: Some(Arc::new(Verifier::load(public).unwrap())),
        },
        ..f.shared.cfg.clone()
    };
    let inv = Inventory::load(&f.dir.path().join("inventory.toml")).unwrap();
    router(Shared::new(cfg, inv, &f.dir.path().join("state")).unwrap())
}

#[tokio::test]
async fn tampered_profile_is_refused_and_intact_one_served() {
    let (f, images, app) = both_profiles_signed();

    let (st, body) = get(&app, "/images/pi5/vmlinuz").await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == f.pi_kernel);
    let (st, _) = get(&app, "/images/proxmox/vmlinuz").await;
    assert_eq!(st, StatusCode::OK);

    // Swap the Proxmox initramfs: the whole profile is refused, even its untouched kernel.
    let initrd = images.join("proxmox/netboot/initrd.img");
    let original = std::fs::read(&initrd).unwrap();
    std::fs::write(&initrd, b"#!/bin/sh\nevil\n").unwrap();
    for file in ["initrd.img", "vmlinuz", "root.squashfs"] {
        let (st, _) = get(&app, &format!("/images/proxmox/{file}")).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{file} of a tampered profile");
    }
    let (st, body) = get(&app, &format!("/boot.ipxe?mac={CP_MAC}")).await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains("profile proxmox refused") && body.contains("netboot/initrd.img"),
        "the boot script names the refused file: {body}"
    );
    // The other profile is not affected.
    let (st, _) = get(&app, "/images/pi5/initrd.img").await;
    assert_eq!(st, StatusCode::OK);
    // The node list says which profile cannot be served, and why.
    let (_, body) = get(&app, "/v1/nodes").await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let profile = |name: &str| {
        v["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {v}"))
    };
    assert_eq!(profile("proxmox")["servable"], false, "{v}");
    let why = profile("proxmox")["error"].as_str().unwrap().to_owned();
    assert!(why.contains("netboot/initrd.img"), "{why}");
    assert_eq!(profile("pi5")["servable"], true, "{v}");

    // A file added beside the signed ones is refused too.
    std::fs::write(&initrd, &original).unwrap();
    std::fs::write(
        images.join("pi5/netboot/rpi/extra.txt"),
        b"dtoverlay=evil\n",
    )
    .unwrap();
    let (st, _) = get(&app, "/images/pi5/vmlinuz").await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "unlisted file in a signed profile"
    );
    std::fs::remove_file(images.join("pi5/netboot/rpi/extra.txt")).unwrap();

    // Restored: the changed stamps trigger a new check, which passes.
    let (st, body) = get(&app, "/images/proxmox/initrd.img").await;
    assert_eq!(st, StatusCode::OK, "restored profile is served again");
    assert!(body == original);
    let (st, _) = get(&app, "/images/pi5/vmlinuz").await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn tampered_upgrade_json_is_refused_and_intact_one_served() {
    let (_fixture, images, app) = both_profiles_signed();
    for file in [
        "upgrade.json",
        "upgrade.env",
        "SHA256SUMS",
        "SHA256SUMS.minisig",
    ] {
        let (st, body) = get(&app, &format!("/bundles/proxmox/{file}")).await;
        assert_eq!(st, StatusCode::OK, "{file}");
        assert!(body == std::fs::read(images.join("proxmox").join(file)).unwrap());
    }

    // A changed upgrade.json could point a node at other files: refused, while the
    // rest of the profile (whose netboot files still match) is served.
    let upgrade = images.join("proxmox/upgrade.json");
    let original = std::fs::read(&upgrade).unwrap();
    std::fs::write(&upgrade, b"{\"version\": \"evil\"}\n").unwrap();
    let (st, _) = get(&app, "/bundles/proxmox/upgrade.json").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "tampered upgrade.json");
    let (st, _) = get(&app, "/bundles/proxmox/netboot/vmlinuz").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = get(&app, "/bundles/pi5/upgrade.json").await;
    assert_eq!(st, StatusCode::OK, "the other profile is not affected");
    std::fs::write(&upgrade, &original).unwrap();
    let (st, body) = get(&app, "/bundles/proxmox/upgrade.json").await;
    assert_eq!(st, StatusCode::OK, "restored upgrade.json is served again");
    assert!(body == original);

    // The same for upgrade.env, the file the node's upgrade agent reads.
    let env = images.join("proxmox/upgrade.env");
    let original = std::fs::read(&env).unwrap();
    std::fs::write(&env, b"LABIMG_BUNDLE_VERSION='evil'\n").unwrap();
    let (st, _) = get(&app, "/bundles/proxmox/upgrade.env").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "tampered upgrade.env");
    std::fs::write(&env, &original).unwrap();
    let (st, _) = get(&app, "/bundles/proxmox/upgrade.env").await;
    assert_eq!(st, StatusCode::OK, "restored upgrade.env is served again");

    // A tampered netboot file refuses the whole bundle, upgrade.json included.
    std::fs::write(images.join("pi5/netboot/initrd.img"), b"evil\n").unwrap();
    for file in [
        "upgrade.json",
        "upgrade.env",
        "SHA256SUMS",
        "netboot/vmlinuz",
    ] {
        let (st, _) = get(&app, &format!("/bundles/pi5/{file}")).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{file} of a tampered profile");
    }
}

#[tokio::test]
async fn unsigned_and_foreign_signed_profiles_are_refused() {
    let f = fixture(8080);
    let images = f.shared.cfg.images.dir.clone();
    let ours = sign::generate_keypair(&f.dir.path().join("ours"), KeyProtection::None).unwrap();
    let theirs = sign::generate_keypair(&f.dir.path().join("theirs"), KeyProtection::None).unwrap();
    sign_profile(&images.join("proxmox"), &theirs.secret);
    sign_profile(&images.join("pi5"), &ours.secret);
    std::fs::remove_file(images.join("pi5/SHA256SUMS.minisig")).unwrap();
    let app = signed_app(&f, &ours.public);
    let (st, _) = get(&app, "/images/proxmox/vmlinuz").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "signed by another key");
    let (st, _) = get(&app, "/images/pi5/vmlinuz").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "not signed");
    let (_, body) = get(&app, &format!("/boot.ipxe?mac={CP_MAC}")).await;
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains(&format!("made by key {}", theirs.id)),
        "says which key signed: {body}"
    );
    // Signing it with our key makes it servable, with no restart.
    sign::sign_dir(&images.join("pi5"), &ours.secret).unwrap();
    let (st, body) = get(&app, "/images/pi5/vmlinuz").await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == f.pi_kernel);
}
