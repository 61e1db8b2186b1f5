//! The chain of trust refuses tampered input: a cached `.deb` with a flipped
//! byte, an InRelease whose signed text or signature was altered, and a
//! Packages.xz whose hash does not match the signed InRelease.

use labimg_builder::debian::{
    Cache, DEFAULT_MIRROR, Download, HashMismatch, Keyring, Source, fetch_packages, fetch_release,
    packages_download, verify_release,
};

use std::process::{Command, Stdio};

fn inrelease(cache: &Cache, suite: &str) -> String {
    let bytes = cache
        .get_bytes(&format!("{DEFAULT_MIRROR}/dists/{suite}/InRelease"))
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn refused<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("tampered InRelease was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

/// Runs a host tool on `input` and returns its stdout.
fn pipe(cmd: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut c = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

/// Flips the last byte of every packet in the armoured signature block
/// (base64 via the host's coreutils) and drops the optional CRC line.
fn corrupt_signatures(text: &str) -> String {
    let begin = text.find("-----BEGIN PGP SIGNATURE-----").unwrap();
    let body = begin + text[begin..].find("\n\n").unwrap() + 2;
    let end = text.find("-----END PGP SIGNATURE-----").unwrap();
    let b64: String = text[body..end]
        .lines()
        .filter(|l| !l.starts_with('='))
        .collect();
    let mut bin = pipe(&["base64", "-d"], b64.as_bytes());
    let mut pos = 0;
    let mut packets = 0;
    while pos < bin.len() {
        let tag = bin[pos];
        assert!(tag & 0x80 != 0, "not an OpenPGP packet at {pos}");
        let (hdr, len) = if tag & 0x40 != 0 {
            match bin[pos + 1] {
                l @ 0..192 => (2, l as usize),
                l @ 192..224 => (3, ((l as usize - 192) << 8) + bin[pos + 2] as usize + 192),
                255 => (
                    6,
                    u32::from_be_bytes(bin[pos + 2..pos + 6].try_into().unwrap()) as usize,
                ),
                _ => panic!("partial body lengths are not used for signatures"),
            }
        } else {
            match tag & 3 {
                0 => (2, bin[pos + 1] as usize),
                1 => (3, u16::from_be_bytes([bin[pos + 1], bin[pos + 2]]) as usize),
                2 => (
                    5,
                    u32::from_be_bytes(bin[pos + 1..pos + 5].try_into().unwrap()) as usize,
                ),
                _ => panic!("indeterminate length"),
            }
        };
        pos += hdr + len;
        bin[pos - 1] ^= 0x01;
        packets += 1;
    }
    assert!(packets >= 2, "expected several signatures, found {packets}");
    let armored = String::from_utf8(pipe(&["base64", "-w", "64"], &bin)).unwrap();
    format!("{}{}{}", &text[..body], armored, &text[end..])
}

#[test]
fn tampered_inrelease_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path()).unwrap();
    let keyring = Keyring::debian().unwrap();
    for suite in ["trixie", "trixie-backports"] {
        let text = inrelease(&cache, suite);
        let release = verify_release(text.as_bytes(), &keyring).unwrap();
        assert!(release.files.contains_key("main/binary-arm64/Packages.xz"));

        // 1. Flip one hex digit of a listed hash in the signed text.
        let line = text
            .lines()
            .find(|l| l.ends_with("main/binary-amd64/Packages.xz") && l.trim().len() > 64 + 10)
            .unwrap();
        let digit = line.trim().chars().next().unwrap();
        let flipped = if digit == '0' { '1' } else { '0' };
        let evil_line = line.replacen(digit, &flipped.to_string(), 1);
        let evil = text.replacen(line, &evil_line, 1);
        assert_ne!(evil, text);
        let err = refused(verify_release(evil.as_bytes(), &keyring));
        assert!(err.contains("no valid signature"), "{err}");

        // 2. Corrupt the signature itself. InRelease carries several
        //    signatures (archive keys of this and the previous release, the
        //    stable release key), any one of which is enough, so every one is
        //    damaged: the last byte of each signature packet (its MPI) flips.
        let err = refused(verify_release(
            corrupt_signatures(&text).as_bytes(),
            &keyring,
        ));
        assert!(
            err.contains("no valid signature") && err.contains("does not verify"),
            "{err}"
        );
    }

    // 3. A genuine signature from a key we do not trust is refused too:
    //    bookworm's stable release key alone does not sign trixie.
    let only_bookworm_stable =
        Keyring::from_bytes(include_bytes!("../keys/debian-archive-bookworm-stable.gpg")).unwrap();
    let text = inrelease(&cache, "trixie");
    let err = verify_release(text.as_bytes(), &only_bookworm_stable).unwrap_err();
    assert!(
        format!("{err:#}").contains("not in the trusted keyring"),
        "{err:#}"
    );
}

#[test]
fn tampered_cached_deb_is_refetched_never_used() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path()).unwrap();
    let src = Source::new(DEFAULT_MIRROR, "trixie");
    let release = fetch_release(&cache, &src, &Keyring::debian().unwrap()).unwrap();
    let pkgs = fetch_packages(&cache, &src, &release, "main", "amd64").unwrap();
    let bb = pkgs.iter().find(|p| p.name == "busybox-static").unwrap();
    let d = Download {
        urls: vec![format!("{DEFAULT_MIRROR}/{}", bb.filename)],
        size: bb.size,
        sha256: bb.sha256.clone(),
    };
    let path = cache.fetch(&d).unwrap();
    let good = std::fs::read(&path).unwrap();

    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    // The tampered entry is detected and removed, never handed out...
    assert_eq!(cache.lookup(d.size, &d.sha256).unwrap(), None);
    assert!(!path.exists(), "tampered cache entry must be deleted");
    // ...and a fetch brings back the genuine bytes.
    std::fs::write(&path, &bad).unwrap();
    let again = cache.fetch(&d).unwrap();
    assert_eq!(again, path);
    assert!(
        std::fs::read(&again).unwrap() == good,
        "re-fetched bytes must be genuine"
    );

    // A truncated entry (same name, fewer bytes) is refused the same way.
    std::fs::write(&path, &good[..good.len() / 3]).unwrap();
    assert_eq!(cache.lookup(d.size, &d.sha256).unwrap(), None);

    // An interrupted download resumes from its .partial file with HTTP Range.
    std::fs::write(path.with_extension("partial"), &good[..good.len() / 2]).unwrap();
    let resumed = cache.fetch(&d).unwrap();
    assert!(std::fs::read(&resumed).unwrap() == good);
    assert!(!path.with_extension("partial").exists());
}

#[test]
fn packages_xz_with_wrong_hash_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path()).unwrap();
    let src = Source::new(DEFAULT_MIRROR, "trixie-backports");
    let release = fetch_release(&cache, &src, &Keyring::debian().unwrap()).unwrap();
    let genuine = packages_download(&src, &release, "main", "arm64").unwrap();
    // The plain path serves the genuine file; claim a different hash for it,
    // as a mirror serving a stale or substituted index would look to us.
    let mut wrong = genuine.sha256.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let d = Download {
        urls: vec![genuine.urls.last().unwrap().clone()],
        size: genuine.size,
        sha256: wrong.clone(),
    };
    let err = cache.fetch(&d).unwrap_err();
    let mismatch = err
        .downcast_ref::<HashMismatch>()
        .expect("a HashMismatch error");
    assert_eq!(mismatch.expected, wrong);
    assert_eq!(mismatch.got, genuine.sha256);
    assert_eq!(&mismatch.url, d.urls.last().unwrap());
    let msg = err.to_string();
    assert!(
        msg.contains("expected sha256") && msg.contains(&wrong),
        "{msg}"
    );
    assert!(
        !cache.path_for(&wrong).exists(),
        "nothing stored under the wrong hash"
    );
    assert!(!cache.path_for(&wrong).with_extension("partial").exists());
}
