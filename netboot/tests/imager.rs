//! The Raspberry Pi Imager repository: `/imager/os_list.json` of a real HTTP server
//! over a synthetic images folder (a small xz-compressed disk image with the
//! `os_list.json` the builder's own code writes) validates against the schema
//! Imager documents (`fixtures/imager-os-list.schema.json`, with Debian's
//! the jsonschema crate), every URL in it downloads with curl and matches its sha256
//! and size, the image is served with Range, and a private build's image or a file
//! the list does not name is not served.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use labimg_builder::artifact::hash_file;
use labimg_builder::artifact::imager::{self, ImageFacts, OsEntry};

const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/imager-os-list.schema.json"
);

/// `<images>/<profile>/<profile>.raw.xz` from a synthetic disk, and its
/// `os_list.json` and icon as the build writes them; returns the raw disk bytes.
fn built_pi_image(images: &Path, profile: &str, seed: u64) -> Vec<u8> {
    let dir = images.join(profile);
    std::fs::create_dir_all(&dir).unwrap();
    let mut raw = common::noise(300_000, seed);
    raw.resize(700_000, 0);
    let raw_path = dir.join(format!("{profile}.raw"));
    std::fs::write(&raw_path, &raw).unwrap();
    let st = Command::new("xz")
        .args(["-T1", "-k", "-f"])
        .arg(&raw_path)
        .status()
        .expect("running xz (Debian package xz-utils)");
    assert!(st.success());
    let facts = ImageFacts {
        profile,
        k3s_version: "v1.33.1+k3s1",
        devices: imager::devices_for_board("rpi5").unwrap(),
        raw: hash_file(&raw_path).unwrap(),
        raw_xz: &raw_path.with_extension("raw.xz"),
        epoch: 1_764_000_000,
    };
    imager::write(&dir, OsEntry::for_image(&facts).unwrap()).unwrap();
    std::fs::remove_file(&raw_path).unwrap();
    raw
}

/// `curl -sS` with `args` (exit status checked); stdout.
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("running curl (Debian package curl)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// (status code, body) of a GET.
fn get(url: &str, extra: &[&str]) -> (String, Vec<u8>) {
    let mut args = extra.to_vec();
    args.extend(["-w", "\n%{http_code}", url]);
    let out = curl(&args);
    let split = out.iter().rposition(|&b| b == b'\n').unwrap();
    (
        String::from_utf8_lossy(&out[split + 1..]).into_owned(),
        out[..split].to_vec(),
    )
}

/// Validates `instance` against the fixture schema (draft 7) with the `jsonschema`
/// crate; `Err(message)` naming every violation when it does not validate.
fn validate(instance: &Path) -> Result<(), String> {
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let schema = read(Path::new(SCHEMA));
    let validator = jsonschema::draft7::new(&schema).expect("the fixture schema is draft 7");
    let errors: Vec<String> = validator
        .iter_errors(&read(instance))
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[test]
fn imager_repository_validates_and_every_url_downloads_and_matches() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let fx = common::fixture(port);
    let images = fx.dir.path().join("images");
    let raw = built_pi_image(&images, "pi5", 31);
    // A private build (0600 disk image) is never published ...
    built_pi_image(&images, "pi5-private", 32);
    let private_xz = images.join("pi5-private/pi5-private.raw.xz");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&private_xz, std::fs::Permissions::from_mode(0o600)).unwrap();
    // ... nor a list naming a file outside its folder.
    built_pi_image(&images, "pi5-bad", 33);
    let bad = images.join("pi5-bad/os_list.json");
    let text = std::fs::read_to_string(&bad).unwrap();
    std::fs::write(
        &bad,
        text.replace("\"pi5-bad.raw.xz\"", "\"../pi5/pi5.raw.xz\""),
    )
    .unwrap();
    let app = labimg_netboot::http::router(fx.shared.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://127.0.0.1:{port}");

    let (status, list) = get(&format!("{base}/imager/os_list.json"), &[]);
    assert_eq!(status, "200");
    let list_path = fx.dir.path().join("os_list.json");
    std::fs::write(&list_path, &list).unwrap();
    validate(&list_path)
        .unwrap_or_else(|e| panic!("{}\ndoes not validate: {e}", String::from_utf8_lossy(&list)));
    // The validator is not vacuous: the same list without extract_sha256 fails.
    let mut doc: serde_json::Value = serde_json::from_slice(&list).unwrap();
    doc["os_list"][0]
        .as_object_mut()
        .unwrap()
        .remove("extract_sha256");
    let broken = fx.dir.path().join("broken.json");
    std::fs::write(&broken, doc.to_string()).unwrap();
    let err = validate(&broken).expect_err("a list without extract_sha256 validated");
    assert!(err.contains("extract_sha256"), "{err}");

    let list: imager::OsList = serde_json::from_slice(&list).unwrap();
    let urls: Vec<&str> = list.os_list.iter().map(|e| e.url.as_str()).collect();
    assert_eq!(
        urls,
        [format!("{base}/imager/pi5/pi5.raw.xz")],
        "only the public, well-formed profile"
    );
    let e = &list.os_list[0];
    assert_eq!(e.devices, ["pi5-64bit"]);
    assert_eq!(e.release_date, "2025-11-24");
    assert_eq!(e.icon, format!("{base}/imager/pi5/{}", imager::ICON_FILE));

    let dl = fx.dir.path().join("download");
    std::fs::create_dir_all(&dl).unwrap();
    for entry in &list.os_list {
        let got = dl.join("image.raw.xz");
        curl(&["--fail", "-o", got.to_str().unwrap(), &entry.url]);
        assert_eq!(
            hash_file(&got).unwrap(),
            (
                entry.image_download_sha256.clone(),
                entry.image_download_size
            ),
            "{}",
            entry.url
        );
        let out = Command::new("xz").arg("-dc").arg(&got).output().unwrap();
        assert!(out.status.success());
        let raw_got: PathBuf = dl.join("image.raw");
        std::fs::write(&raw_got, &out.stdout).unwrap();
        assert_eq!(
            hash_file(&raw_got).unwrap(),
            (entry.extract_sha256.clone(), entry.extract_size)
        );
        assert!(out.stdout == raw);
        let icon = curl(&["--fail", &entry.icon]);
        assert!(icon.starts_with(b"<svg"), "{}", entry.icon);
    }

    // Range: Imager and download managers resume.
    let xz = std::fs::read(images.join("pi5/pi5.raw.xz")).unwrap();
    let (status, part) = get(urls[0], &["-r", "100-1123"]);
    assert_eq!(status, "206");
    assert!(
        part == xz[100..1124],
        "the range is the file's bytes 100..=1123"
    );
    let (status, tail) = get(urls[0], &["-r", &format!("{}-", xz.len() - 10)]);
    assert_eq!(
        (status.as_str(), tail.as_slice()),
        ("206", &xz[xz.len() - 10..])
    );

    for refused in [
        "pi5-private/pi5-private.raw.xz",
        "pi5-bad/pi5-bad.raw.xz",
        "pi5/manifest.json",
        "pi5/os_list.json",
        "pi5/pi5.raw",
        "pi5/nodes",
        "proxmox/proxmox.raw",
    ] {
        let (status, _) = get(&format!("{base}/imager/{refused}"), &[]);
        assert_eq!(status, "404", "{refused} was served");
    }
}
