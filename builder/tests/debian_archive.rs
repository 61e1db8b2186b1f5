//! Resolves, fetches and unpacks real packages from the Debian mirror for
//! both target architectures. Set `LABIMG_TEST_CACHE` to a directory to share
//! downloads between runs (entries are re-hashed on every use, so sharing is safe).

use std::path::Path;
use std::process::Command;

use labimg_builder::debian::{Archive, Cache, DEFAULT_MIRROR, Resolution, Version, extract_deb};
use labimg_builder::tree::{Kind, Tree};

fn cache() -> (Cache, Option<tempfile::TempDir>) {
    match std::env::var_os("LABIMG_TEST_CACHE") {
        Some(dir) => (Cache::new(dir).unwrap(), None),
        None => {
            let t = tempfile::tempdir().unwrap();
            (Cache::new(t.path()).unwrap(), Some(t))
        }
    }
}

fn suites(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// `sha256sum` is the oracle for what landed on disk.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn check_fetched(archive: &Archive, res: &Resolution) {
    let fetched = archive.fetch(res).unwrap();
    assert_eq!(fetched.len(), res.packages.len());
    for f in &fetched {
        assert_eq!(sha256sum(&f.path), f.package.sha256, "{}", f.package.name);
        assert_eq!(std::fs::metadata(&f.path).unwrap().len(), f.package.size);
    }
}

/// ELF machine type (e_machine) and whether the file has a PT_INTERP
/// program header (i.e. is dynamically linked).
fn elf_machine_and_interp(data: &[u8]) -> (u16, bool) {
    assert_eq!(&data[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(data[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let machine = u16_at(18);
    let (phoff, phentsize, phnum) = (
        u64_at(32) as usize,
        u16_at(54) as usize,
        u16_at(56) as usize,
    );
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) == 3
    });
    (machine, interp)
}

fn busybox_binary(tree: &Tree) -> Vec<u8> {
    let e = tree
        .get_follow("usr/bin/busybox")
        .or_else(|| tree.get_follow("bin/busybox"))
        .expect("busybox binary in tree");
    assert_eq!(e.mode & 0o111, 0o111, "busybox must be executable");
    e.data().expect("busybox is a regular file").to_vec()
}

#[test]
fn arm64_backports_kernel_and_busybox() {
    let (cache, _tmp) = cache();
    let archive = Archive::open(
        DEFAULT_MIRROR,
        &suites(&["trixie", "trixie-backports"]),
        "arm64",
        cache,
    )
    .unwrap();
    let res = archive
        .resolve(&[
            "linux-image-arm64/trixie-backports".into(),
            "busybox-static".into(),
        ])
        .unwrap();
    println!("{res}");
    let meta = res.get("linux-image-arm64").unwrap();
    assert_eq!(meta.suite, "trixie-backports");
    assert_eq!(meta.pulled_by, None);
    // Without the suite pin, the earlier suite (trixie) wins.
    let stable = archive.resolve(&["linux-image-arm64".into()]).unwrap();
    let stable_meta = stable.get("linux-image-arm64").unwrap();
    assert_eq!(stable_meta.suite, "trixie");
    assert!(Version::parse(&meta.version) > Version::parse(&stable_meta.version));
    // The versioned image package the metapackage depends on comes from backports too.
    let image = res
        .packages
        .iter()
        .find(|p| p.name.starts_with("linux-image-") && p.name != "linux-image-arm64")
        .expect("versioned kernel image package");
    assert_eq!(image.pulled_by.as_deref(), Some("linux-image-arm64"));
    assert_eq!(image.suite, "trixie-backports");
    assert_eq!(res.get("busybox-static").unwrap().suite, "trixie");
    assert!(
        res.packages.windows(2).all(|w| w[0].name < w[1].name),
        "sorted by name"
    );
    let json = serde_json::to_value(&res).unwrap();
    assert_eq!(json["arch"], "arm64");
    check_fetched(&archive, &res);

    let bb = archive.resolve(&["busybox-static".into()]).unwrap();
    let fetched = archive.fetch(&bb).unwrap();
    let deb = fetched
        .iter()
        .find(|f| f.package.name == "busybox-static")
        .unwrap();
    let mut tree = Tree::new();
    let installed = extract_deb(&deb.path, &mut tree).unwrap();
    assert!(!installed.is_empty());
    let (machine, interp) = elf_machine_and_interp(&busybox_binary(&tree));
    assert_eq!(machine, 183, "EM_AARCH64");
    assert!(!interp, "busybox-static must be statically linked");
}

#[test]
fn amd64_cloud_kernel_busybox_e2fsprogs() {
    let (cache, _tmp) = cache();
    let archive = Archive::open(DEFAULT_MIRROR, &suites(&["trixie"]), "amd64", cache).unwrap();
    let res = archive
        .resolve(&[
            "linux-image-cloud-amd64".into(),
            "busybox-static".into(),
            "e2fsprogs".into(),
        ])
        .unwrap();
    println!("{res}");
    for name in [
        "linux-image-cloud-amd64",
        "busybox-static",
        "e2fsprogs",
        "libc6",
    ] {
        let p = res
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from closure"));
        assert!(
            p.arch == "amd64" || p.arch == "all",
            "{name} arch {}",
            p.arch
        );
        assert_eq!(p.suite, "trixie");
    }
    let libc = res.get("libc6").unwrap();
    assert!(
        libc.pulled_by.is_some(),
        "libc6 is a dependency, not a request"
    );
    assert!(res.get("libext2fs2t64").is_some() || res.get("libext2fs2").is_some());
    check_fetched(&archive, &res);

    let fetched = archive.fetch(&res).unwrap();
    let deb = fetched
        .iter()
        .find(|f| f.package.name == "busybox-static")
        .unwrap();
    let mut tree = Tree::new();
    extract_deb(&deb.path, &mut tree).unwrap();
    let (machine, interp) = elf_machine_and_interp(&busybox_binary(&tree));
    assert_eq!(machine, 62, "EM_X86_64");
    assert!(!interp, "busybox-static must be statically linked");

    // e2fsprogs: compare what we unpacked with dpkg-deb's own listing.
    let deb = fetched
        .iter()
        .find(|f| f.package.name == "e2fsprogs")
        .unwrap();
    let mut tree = Tree::new();
    let installed = extract_deb(&deb.path, &mut tree).unwrap();
    let out = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = Command::new("tar")
        .args(["-tvf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&out.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    let entries = text.lines().filter(|l| !l.ends_with(" ./")).count();
    assert_eq!(installed.len(), entries, "one installed path per tar entry");
    let mke2fs = tree
        .get("usr/sbin/mke2fs")
        .or_else(|| tree.get("sbin/mke2fs"))
        .unwrap();
    assert!(matches!(mke2fs.kind, Kind::File(_)));
    assert_eq!(mke2fs.mode, 0o755);
    let mkfs_ext4 = tree
        .get("usr/sbin/mkfs.ext4")
        .or_else(|| tree.get("sbin/mkfs.ext4"))
        .unwrap();
    assert_eq!(mkfs_ext4.kind, Kind::Symlink("mke2fs".into()));
    assert!(tree.get_follow("usr/sbin/mkfs.ext4").unwrap().data() == mke2fs.data());
    assert!(
        mke2fs.mtime > 1_600_000_000,
        "mtime comes from the tar header"
    );

    // perl-base ships /usr/bin/perl5.x as a hard link to /usr/bin/perl: the
    // tree holds a copy of the same bytes.
    let perl = archive.resolve(&["perl-base".into()]).unwrap();
    let fetched = archive.fetch(&perl).unwrap();
    let deb = fetched
        .iter()
        .find(|f| f.package.name == "perl-base")
        .unwrap();
    let mut tree = Tree::new();
    extract_deb(&deb.path, &mut tree).unwrap();
    let perl_bin = tree.get("usr/bin/perl").unwrap();
    let (linked_name, linked) = tree
        .children("usr/bin")
        .find(|(p, _)| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("perl5."))
        })
        .expect("perl5.x hard link");
    assert!(
        linked.data().is_some(),
        "{} must be a regular file",
        linked_name.display()
    );
    assert!(
        linked.data() == perl_bin.data(),
        "hard link must carry the target's bytes"
    );
    assert!(perl_bin.data().is_some_and(|d| d.starts_with(b"\x7fELF")));
    assert_eq!(mke2fs.uid, 0);
}

#[test]
fn unknown_and_unsatisfiable_requests_are_clear_errors() {
    let (cache, _tmp) = cache();
    let archive = Archive::open(DEFAULT_MIRROR, &suites(&["trixie"]), "amd64", cache).unwrap();
    let err = archive
        .resolve(&["no-such-package-labimg".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown package") && err.contains("no-such-package-labimg"),
        "{err}"
    );
    let err = archive
        .resolve(&["busybox-static=0.0-0".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot be satisfied") && err.contains("available"),
        "{err}"
    );
    let err = archive
        .resolve(&["busybox-static/sid".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not configured"), "{err}");
    let exact = archive.resolve(&["busybox-static".into()]).unwrap();
    let v = &exact.get("busybox-static").unwrap().version;
    let pinned = archive.resolve(&[format!("busybox-static={v}")]).unwrap();
    assert_eq!(&pinned.get("busybox-static").unwrap().version, v);
}

#[test]
fn offline_builds_use_only_what_an_online_run_cached_and_verify_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let trixie = suites(&["trixie"]);
    let offline = || Cache::new(dir.path()).unwrap().offline(true);

    // Nothing cached yet: a clear error, no network.
    let err = Archive::open(DEFAULT_MIRROR, &trixie, "amd64", offline())
        .expect_err("an empty cache cannot serve an offline build");
    let text = format!("{err:#}");
    assert!(
        text.contains("offline") && text.contains("InRelease") && text.contains("labimg fetch"),
        "{text}"
    );

    // One online run fills the cache.
    let online = Archive::open(
        DEFAULT_MIRROR,
        &trixie,
        "amd64",
        Cache::new(dir.path()).unwrap(),
    )
    .unwrap();
    let res = online.resolve(&["busybox-static".into()]).unwrap();
    let fetched_online = online.fetch(&res).unwrap();

    // Offline: same resolution, same verified files.
    let archive = Archive::open(DEFAULT_MIRROR, &trixie, "amd64", offline()).unwrap();
    let again = archive.resolve(&["busybox-static".into()]).unwrap();
    assert_eq!(again.to_string(), res.to_string());
    let fetched = archive.fetch(&again).unwrap();
    assert_eq!(
        fetched.iter().map(|f| &f.path).collect::<Vec<_>>(),
        fetched_online.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    // A package the online run never downloaded is named, not fetched.
    let more = archive.resolve(&["e2fsprogs".into()]).unwrap();
    let err = archive
        .fetch(&more)
        .expect_err("e2fsprogs was never cached");
    assert!(format!("{err:#}").contains("offline"), "{err:#}");

    // The kept InRelease is checked again: an edited copy is refused.
    let releases: Vec<_> = std::fs::read_dir(dir.path().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(releases.len(), 1, "{releases:?}");
    let text = std::fs::read_to_string(&releases[0]).unwrap();
    std::fs::write(&releases[0], text.replacen("Suite: ", "Suite: x", 1)).unwrap();
    let err = Archive::open(DEFAULT_MIRROR, &trixie, "amd64", offline())
        .expect_err("an edited InRelease must not verify");
    assert!(format!("{err:#}").contains("cached copy"), "{err:#}");
}
