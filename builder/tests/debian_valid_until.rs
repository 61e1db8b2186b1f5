//! `debian.check-valid-until = false` (apt's `Check-Valid-Until=no`): an
//! `InRelease` past its `Valid-Until` is refused by default and accepted with the
//! opt-out, whose signature is still required either way, and `manifest.json`
//! records the skipped check. The fixtures are signed by a throw-away test key
//! (`tests/fixtures/valid-until/generate.sh`), not by Debian.

use std::path::PathBuf;

use labimg_builder::debian::{Keyring, ValidUntil, verify_release_with};
use labimg_builder::manifest::ReleaseRecord;
use labimg_builder::profile;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/valid-until")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn test_key() -> Keyring {
    Keyring::from_bytes(&fixture("test-archive.gpg")).unwrap()
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn expired_release_is_refused_without_the_opt_out() {
    let keys = test_key();
    // The key and signature are good: the same key's fresh release passes.
    let fresh = verify_release_with(&fixture("fresh.InRelease"), &keys, ValidUntil::Enforce)
        .expect("a fresh release signed by the test key");
    assert_eq!(fresh.valid_until_skipped, None);

    let err = err_text(verify_release_with(
        &fixture("expired.InRelease"),
        &keys,
        ValidUntil::Enforce,
    ));
    assert!(
        err.contains("expired")
            && err.contains("Valid-Until is in the past")
            && err.contains("check-valid-until = false"),
        "{err}"
    );
}

#[test]
fn expired_release_is_accepted_with_the_opt_out_and_recorded() {
    let release = verify_release_with(&fixture("expired.InRelease"), &test_key(), ValidUntil::Skip)
        .expect("accepted with check-valid-until = false");
    // Valid-Until: Wed, 08 Jan 2020 00:00:00 UTC
    assert_eq!(release.valid_until, Some(1_578_441_600));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let past = release.valid_until_skipped.expect("the skip is recorded");
    assert!(
        past > 0 && past.abs_diff(now - 1_578_441_600) < 600,
        "{past}"
    );

    let rec = ReleaseRecord::new("snapshot", &release);
    let json = serde_json::to_value(&rec).unwrap();
    assert_eq!(json["suite"], "snapshot");
    assert_eq!(json["codename"], "trixie");
    assert_eq!(json["valid-until"], 1_578_441_600);
    assert_eq!(json["valid-until-check"], "skipped");
    let why = json["valid-until-skipped-because"].as_str().unwrap();
    assert!(
        why.contains("debian.check-valid-until = false")
            && !why.chars().any(|c| c.is_ascii_digit()),
        "{why}"
    );

    // An enforced check leaves no reason behind.
    let fresh = verify_release_with(
        &fixture("fresh.InRelease"),
        &test_key(),
        ValidUntil::Enforce,
    )
    .unwrap();
    let json = serde_json::to_value(ReleaseRecord::new("snapshot", &fresh)).unwrap();
    assert_eq!(json["valid-until-check"], "enforced");
    assert!(json.get("valid-until-skipped-because").is_none(), "{json}");
}

#[test]
fn the_opt_out_still_requires_a_valid_signature() {
    let text = String::from_utf8(fixture("expired.InRelease")).unwrap();

    // The signed text altered (a later Valid-Until slipped in): the signature fails.
    let evil = text.replace(
        "Valid-Until: Wed, 08 Jan 2020",
        "Valid-Until: Wed, 08 Jan 2098",
    );
    assert_ne!(evil, text);
    let err = err_text(verify_release_with(
        evil.as_bytes(),
        &test_key(),
        ValidUntil::Skip,
    ));
    assert!(err.contains("no valid signature"), "{err}");

    // A genuine signature by a key that is not trusted (Debian's keyring does not
    // hold the test key).
    let err = err_text(verify_release_with(
        text.as_bytes(),
        &Keyring::debian().unwrap(),
        ValidUntil::Skip,
    ));
    assert!(err.contains("no valid signature"), "{err}");

    // No signature at all: the bare signed text.
    let begin = text.find("\n\n").unwrap() + 2;
    let end = text.find("-----BEGIN PGP SIGNATURE-----").unwrap();
    let err = err_text(verify_release_with(
        &text.as_bytes()[begin..end],
        &test_key(),
        ValidUntil::Skip,
    ));
    assert!(err.contains("not a clear-signed"), "{err}");
}

#[test]
fn the_profile_key_defaults_to_checking_and_can_be_turned_off() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let p = profile::load("proxmox", &dir, &[]).unwrap();
    assert!(p.debian.check_valid_until, "checked by default");
    assert!(
        !p.resolved().contains("check-valid-until"),
        "the default is not shown in a resolved profile"
    );
    let p = profile::load(
        "proxmox",
        &dir,
        &["debian.check-valid-until=false".to_owned()],
    )
    .unwrap();
    assert!(!p.debian.check_valid_until);
    assert!(p.resolved().contains("check-valid-until = false"));
    let err = profile::load(
        "proxmox",
        &dir,
        &["debian.check-valid-until=\"no\"".to_owned()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("debian.check-valid-until"), "{err}");
}
