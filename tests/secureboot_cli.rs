//! `labimg secureboot keygen|sign|verify` as a script drives them: files and modes,
//! exit statuses (0, 1 for a refused overwrite, 4 for a signature that does not
//! verify) and `verify --json`; `sbverify` agrees with `sign`. The EFI binary is
//! Debian trixie's systemd-boot through the builder's verified Debian client
//! (`LABIMG_TEST_CACHE`, else the builder's default cache).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use labimg_builder::debian::{Archive, Cache, DEFAULT_MIRROR, extract_deb};
use labimg_builder::tree::Tree;

const BIN: &str = env!("CARGO_BIN_EXE_labimg");

fn labimg(args: &[&Path]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1795937100")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn systemd_boot(to: &Path) {
    let dir = match std::env::var_os("LABIMG_TEST_CACHE") {
        Some(d) => PathBuf::from(d),
        None => Cache::default_dir().unwrap(),
    };
    let archive = Archive::open(
        DEFAULT_MIRROR,
        &["trixie".to_owned()],
        "amd64",
        Cache::new(dir).unwrap(),
    )
    .unwrap();
    let fetched = archive
        .fetch(&archive.resolve(&["systemd-boot-efi".into()]).unwrap())
        .unwrap();
    let deb = fetched
        .iter()
        .find(|f| f.package.name == "systemd-boot-efi")
        .unwrap();
    let mut tree = Tree::new();
    extract_deb(&deb.path, &mut tree).unwrap();
    let pe = tree
        .get_follow("usr/lib/systemd/boot/efi/systemd-bootx64.efi")
        .and_then(|e| e.data())
        .unwrap();
    std::fs::write(to, pe).unwrap();
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn keygen_sign_verify() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let keygen = p("secureboot");
    let out = labimg(&[keygen, p("keygen"), &a, p("--name"), p("Lab test")]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(printed.contains("CN=Lab test db"), "{printed}");
    assert!(printed.contains("--secure-boot-keys"), "{printed}");
    for var in ["PK", "KEK", "db"] {
        for ext in ["key", "crt", "cer", "esl", "auth"] {
            let f = a.join(format!("{var}.{ext}"));
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            let want = if ext == "key" { 0o600 } else { 0o644 };
            assert_eq!(mode, want, "{}", f.display());
        }
    }
    assert!(a.join("GUID").is_file() && a.join("ENROLL.md").is_file());
    // The .auth timestamp is SOURCE_DATE_EPOCH: 2026-11-29 07:25:00 UTC.
    let auth = std::fs::read(a.join("db.auth")).unwrap();
    assert_eq!(auth[..7], [0xea, 0x07, 11, 29, 7, 25, 0]);
    let before = std::fs::read(a.join("db.key")).unwrap();
    let again = labimg(&[keygen, p("keygen"), &a]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(a.join("db.key")).unwrap(), before);
    assert!(labimg(&[keygen, p("keygen"), &b]).status.success());

    let efi = t.path().join("systemd-bootx64.efi");
    systemd_boot(&efi);
    let signed = t.path().join("signed.efi");
    let out = labimg(&[keygen, p("sign"), p("--keys"), &a, &efi, &signed]);
    assert!(out.status.success(), "{}", text(&out));
    let sb = Command::new("sbverify")
        .arg("--cert")
        .arg(a.join("db.crt"))
        .arg(&signed)
        .output()
        .unwrap();
    assert!(sb.status.success(), "sbverify: {}", text(&sb));
    // The signed file keeps the input's mode (not a temporary file's 0600).
    let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&signed), mode(&efi));
    // --cert/--key gives the same bytes as --keys.
    let signed2 = t.path().join("signed2.efi");
    let out = labimg(&[
        keygen,
        p("sign"),
        p("--cert"),
        &a.join("db.cer"),
        p("--key"),
        &a.join("db.key"),
        &efi,
        &signed2,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&signed).unwrap(),
        std::fs::read(&signed2).unwrap()
    );

    let ok = labimg(&[keygen, p("verify"), p("--cert"), &a.join("db.crt"), &signed]);
    assert!(ok.status.success(), "{}", text(&ok));
    let other = labimg(&[keygen, p("verify"), p("--cert"), &b.join("db.crt"), &signed]);
    assert_eq!(other.status.code(), Some(4), "{}", text(&other));
    assert!(
        text(&other).contains("signed by another key (CN=Lab test db"),
        "{}",
        text(&other)
    );
    let unsigned = labimg(&[keygen, p("verify"), p("--cert"), &a.join("db.crt"), &efi]);
    assert_eq!(unsigned.status.code(), Some(4));
    assert!(
        text(&unsigned).contains("not signed"),
        "{}",
        text(&unsigned)
    );

    let mut bytes = std::fs::read(&signed).unwrap();
    bytes[0x1000] ^= 0xff;
    let tampered = t.path().join("tampered.efi");
    std::fs::write(&tampered, &bytes).unwrap();
    let json = labimg(&[
        keygen,
        p("verify"),
        p("--json"),
        p("--cert"),
        &a.join("db.crt"),
        &signed,
        &tampered,
    ]);
    assert_eq!(json.status.code(), Some(4), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["cert_subject"], "CN=Lab test db");
    assert_eq!(v["files"][0]["ok"], true);
    assert_eq!(v["files"][1]["ok"], false);
    let why = v["files"][1]["error"].as_str().unwrap();
    assert!(why.contains("changed after signing"), "{why}");
}
