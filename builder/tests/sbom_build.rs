//! The SBOM of a real build: `proxmox.spdx.json` is SPDX 2.3 JSON that lists
//! every Debian package of manifest.json's inputs with the same version and
//! sha256, the kernel, the k3s stand-in (flagged as such) and the Cilium chart,
//! and `labimg inspect`'s summary reads it.
//!
//! Uses the real Debian mirror through the verified download cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use labimg_builder::artifact::hash_file;
use labimg_builder::build::{BuildOptions, build};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_sbom_lists_every_input_package_kernel_k3s_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // qcow2 only: the SBOM does not depend on the formats, and raw.xz is slow.
    let profile = labimg_builder::profile::load(
        "proxmox",
        &workspace().join("profiles"),
        &["outputs.formats=[\"qcow2\"]".to_owned()],
    )
    .unwrap();
    let stand_in = workspace().join("qemu-tests/stand-in/k3s");
    build(
        &profile,
        &BuildOptions {
            out_dir: Some(out.clone()),
            k3s_binary: Some(stand_in.clone()),
            cache_dir: std::env::var_os("LABIMG_CACHE").map(PathBuf::from),
            source_date_epoch: Some(1_700_000_000),
            embed_secrets: false,
            ..Default::default()
        },
    )
    .unwrap();

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let sbom_path = out.join("proxmox.spdx.json");
    let sbom: Value = serde_json::from_str(&std::fs::read_to_string(&sbom_path).unwrap())
        .expect("the SBOM is JSON");
    assert!(
        std::fs::read_to_string(out.join("SHA256SUMS"))
            .unwrap()
            .contains("  proxmox.spdx.json\n"),
        "the SBOM is not in SHA256SUMS"
    );

    // Document-level fields SPDX 2.3 requires.
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(sbom["dataLicense"], "CC0-1.0");
    assert_eq!(sbom["SPDXID"], "SPDXRef-DOCUMENT");
    assert!(sbom["name"].as_str().is_some_and(|n| !n.is_empty()));
    let root_hash = manifest["root_verity"]["root_hash"].as_str().unwrap();
    assert!(
        sbom["documentNamespace"]
            .as_str()
            .unwrap()
            .ends_with(root_hash),
        "namespace not derived from the root hash"
    );
    assert_eq!(sbom["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    assert!(
        sbom["creationInfo"]["creators"][0]
            .as_str()
            .unwrap()
            .starts_with("Tool: labimg-")
    );

    // Package-level required fields; SPDXIDs unique.
    let packages = sbom["packages"].as_array().unwrap();
    let mut by_id: BTreeMap<&str, &Value> = BTreeMap::new();
    for p in packages {
        let id = p["SPDXID"].as_str().expect("SPDXID");
        assert!(id.starts_with("SPDXRef-"), "bad SPDXID {id}");
        assert!(p["name"].as_str().is_some_and(|n| !n.is_empty()), "{p}");
        assert!(p["downloadLocation"].is_string(), "{p}");
        assert!(by_id.insert(id, p).is_none(), "duplicate SPDXID {id}");
    }
    let image = by_id["SPDXRef-image"];
    assert_eq!(
        image["checksums"][0]["checksumValue"],
        manifest["root_image"]["sha256"]
    );

    // Every input package, with the same version, URL and .deb sha256.
    let purl = |p: &Value| {
        p["externalRefs"][0]["referenceLocator"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let mut debs = 0;
    for set in ["kernel", "root", "boot"] {
        for want in manifest["inputs"][set]["packages"].as_array().unwrap() {
            let name = want["name"].as_str().unwrap();
            let version = want["version"].as_str().unwrap();
            let got = packages
                .iter()
                .find(|p| p["name"] == name && p["versionInfo"] == version)
                .unwrap_or_else(|| panic!("{set} package {name} {version} missing from the SBOM"));
            assert_eq!(got["checksums"][0]["algorithm"], "SHA256");
            assert_eq!(
                got["checksums"][0]["checksumValue"], want["sha256"],
                "{name}"
            );
            assert_eq!(got["downloadLocation"], want["url"], "{name}");
            assert!(
                got["sourceInfo"]
                    .as_str()
                    .unwrap()
                    .starts_with("built package from: ")
            );
            let p = purl(got);
            assert!(
                p.starts_with(&format!("pkg:deb/debian/{}@", name.replace('+', "%2B")))
                    && p.ends_with(&format!("?arch={}", want["arch"].as_str().unwrap())),
                "{p}"
            );
            debs += 1;
        }
    }
    assert!(debs > 20, "only {debs} packages in the inputs?");
    // The libc6 purl percent-encodes like the purl spec says (`+` → %2B).
    let libc = packages
        .iter()
        .find(|p| p["name"] == "libc6")
        .expect("libc6");
    assert_eq!(
        purl(libc),
        format!(
            "pkg:deb/debian/libc6@{}?arch=amd64",
            libc["versionInfo"]
                .as_str()
                .unwrap()
                .replace('+', "%2B")
                .replace(':', "%3A")
        )
    );
    assert_eq!(libc["sourceInfo"], "built package from: glibc");

    // Kernel, k3s stand-in, Cilium chart.
    let kernel = by_id["SPDXRef-kernel"];
    assert_eq!(kernel["versionInfo"], manifest["kernel_version"]);
    assert_eq!(
        kernel["checksums"][0]["checksumValue"].as_str().unwrap(),
        hash_file(&out.join("netboot/vmlinuz")).unwrap().0
    );
    let k3s = by_id["SPDXRef-k3s"];
    assert_eq!(k3s["versionInfo"], manifest["k3s"]["version"]);
    assert_eq!(
        k3s["checksums"][0]["checksumValue"].as_str().unwrap(),
        hash_file(&stand_in).unwrap().0
    );
    assert!(
        k3s["comment"].as_str().unwrap().starts_with("STAND-IN"),
        "{k3s}"
    );
    let cilium = by_id["SPDXRef-chart-cilium"];
    assert_eq!(cilium["versionInfo"].as_str().unwrap(), profile.cni.version);

    // Relationships: the document describes the image, which contains every
    // package and the baked k3s.
    let rels = sbom["relationships"].as_array().unwrap();
    let has = |a: &str, kind: &str, b: &str| {
        rels.iter().any(|r| {
            r["spdxElementId"] == a && r["relationshipType"] == kind && r["relatedSpdxElement"] == b
        })
    };
    assert!(has("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-image"));
    for p in packages.iter().filter(|p| purl(p).starts_with("pkg:deb/")) {
        assert!(
            has("SPDXRef-image", "CONTAINS", p["SPDXID"].as_str().unwrap()),
            "{p}"
        );
    }
    assert!(has("SPDXRef-image", "CONTAINS", "SPDXRef-k3s"));
    assert!(has("SPDXRef-image", "CONTAINS", "SPDXRef-kernel"));
    assert!(has("SPDXRef-image", "DEPENDS_ON", "SPDXRef-chart-cilium"));

    // What `labimg inspect` prints.
    let distinct = packages
        .iter()
        .filter(|p| purl(p).starts_with("pkg:deb/"))
        .count();
    let summary = labimg_builder::sbom::summary(&sbom_path).unwrap();
    assert!(
        summary.contains(&format!(": {distinct} Debian packages\n")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!(
            "k3s {} (stand-in, not the pinned release)",
            manifest["k3s"]["version"].as_str().unwrap()
        )),
        "{summary}"
    );
    assert!(
        summary.contains(&format!(
            "kernel {}",
            manifest["kernel_version"].as_str().unwrap()
        )),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("chart cilium {}", profile.cni.version)),
        "{summary}"
    );
}
