//! The build's software bill of materials: `<name>.spdx.json`, SPDX 2.3 JSON
//! listing every Debian package (with the `.deb`'s sha256, URL, source package
//! and purl), the kernel, the k3s binary, the Helm charts the image
//! installs and the container image archives it carries for air-gapped nodes. Deterministic: the namespace comes from the dm-verity root hash
//! and `created` from SOURCE_DATE_EPOCH.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::date::rfc3339;
use crate::inputs::InputSets;
use crate::manifest::K3sInfo;
use crate::preseed::gitops::{ARGO_CD_CHART_VERSION, FLUX2_CHART_VERSION};
use crate::profile::{CniKind, GitopsEngine, Profile};
use crate::rootimg::RootImage;

/// What the SBOM describes.
#[derive(Debug)]
pub struct SbomInputs<'a> {
    pub profile: &'a Profile,
    pub root: &'a RootImage,
    pub inputs: InputSets<'a>,
    pub k3s: &'a K3sInfo,
    /// `uname -r` of the kernel.
    pub kernel_version: &'a str,
    /// sha256 of the kernel image (`vmlinuz`), hex.
    pub kernel_sha256: &'a str,
    pub epoch: u64,
    /// With `secure-boot.enabled`: the EFI stub and the signing certificate.
    pub secure_boot: Option<&'a crate::manifest::SecureBootRecord>,
}

/// Percent-encodes a purl component (the version may hold `+`, `:` and `~`
/// is allowed as is).
fn purl_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An SPDXID: letters, digits, `.` and `-` only.
fn spdx_id(parts: &[&str]) -> String {
    let raw = parts.join("-");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{clean}")
}

/// A Helm chart package the image's manifests install.
fn chart(name: &str, version: &str, repo: &str, sha256: Option<&str>) -> Value {
    let mut p = json!({
        "name": name,
        "SPDXID": spdx_id(&["chart", name]),
        "versionInfo": version,
        "downloadLocation": repo,
        "filesAnalyzed": false,
        "primaryPackagePurpose": "SOURCE",
        "comment": "Helm chart referenced by the image's k3s manifests; installed by k3s's helm controller",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": format!("pkg:helm/{name}@{}", purl_encode(version)),
        }],
    });
    if let Some(sha) = sha256 {
        p["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": sha }]);
    }
    p
}

/// The SPDX 2.3 document.
pub fn render(i: &SbomInputs) -> Value {
    let profile = i.profile;
    let image_id = "SPDXRef-image";
    let mut packages = vec![json!({
        "name": profile.name,
        "SPDXID": image_id,
        "versionInfo": i.root.verity.root_hash,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "checksums": [{ "algorithm": "SHA256", "checksumValue": i.root.sha256 }],
        "comment": format!(
            "labimg {} root image (squashfs + dm-verity hash tree) for {} / {}; versionInfo is the dm-verity root hash",
            env!("CARGO_PKG_VERSION"),
            profile.target.arch.as_str(),
            format!("{:?}", profile.target.board).to_lowercase()
        ),
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    let mut contains = |id: &str, kind: &str| {
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": kind,
            "relatedSpdxElement": id,
        }));
    };

    // The same package can sit in more than one set (kernel, root, boot).
    let mut seen = BTreeSet::new();
    for set in [i.inputs.kernel, i.inputs.root, i.inputs.boot] {
        for p in &set.packages {
            let id = spdx_id(&["deb", &p.name, &p.version, &p.arch]);
            if !seen.insert(id.clone()) {
                continue;
            }
            let source = if p.source.is_empty() {
                p.name.as_str()
            } else {
                p.source.as_str()
            };
            packages.push(json!({
                "name": p.name,
                "SPDXID": id,
                "versionInfo": p.version,
                "supplier": "Organization: Debian",
                "downloadLocation": p.url,
                "filesAnalyzed": false,
                "sourceInfo": format!("built package from: {source}"),
                "checksums": [{ "algorithm": "SHA256", "checksumValue": p.sha256 }],
                "primaryPackagePurpose": "LIBRARY",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": format!(
                        "pkg:deb/debian/{}@{}?arch={}",
                        purl_encode(&p.name),
                        purl_encode(&p.version),
                        purl_encode(&p.arch)
                    ),
                }],
            }));
            contains(&id, "CONTAINS");
        }
    }

    packages.push(json!({
        "name": "linux",
        "SPDXID": "SPDXRef-kernel",
        "versionInfo": i.kernel_version,
        "supplier": "Organization: Debian",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "checksums": [{ "algorithm": "SHA256", "checksumValue": i.kernel_sha256 }],
        "comment": format!("the kernel image (vmlinuz), from the Debian package linux-image-{}", i.kernel_version),
    }));
    contains("SPDXRef-kernel", "CONTAINS");

    if let Some(sb) = i.secure_boot {
        packages.push(json!({
            "name": "systemd-stub",
            "SPDXID": "SPDXRef-efi-stub",
            "versionInfo": sb.stub.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "FIRMWARE",
            "checksums": [{ "algorithm": "SHA256", "checksumValue": sb.stub.sha256 }],
            "comment": format!(
                "systemd's EFI stub /{} from the Debian package {} {}: the start of each \
                 signed Unified Kernel Image (secure-boot.enabled)",
                sb.stub.path, sb.stub.package, sb.stub.version
            ),
        }));
        contains("SPDXRef-efi-stub", "CONTAINS");
        packages.push(json!({
            "name": "secure-boot-db-certificate",
            "SPDXID": "SPDXRef-secure-boot-db-cert",
            "versionInfo": sb.signing_cert_subject,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "FILE",
            "checksums": [{ "algorithm": "SHA256", "checksumValue": sb.signing_cert_sha256 }],
            "comment": format!(
                "the Secure Boot db certificate ({}) that signed systemd-boot and the UKIs, \
                 in the image at /usr/lib/labimg/secureboot/db.crt; the checksum is its \
                 SHA-256 fingerprint (of the DER form)",
                sb.signing_cert_subject
            ),
        }));
        contains("SPDXRef-secure-boot-db-cert", "CONTAINS");
    }

    let k3s = i.k3s;
    let stand_in = k3s.matches_pin == Some(false);
    let sha = k3s.baked_sha256.as_ref().or(k3s.pinned_sha256.as_ref());
    let mut k = json!({
        "name": "k3s",
        "SPDXID": "SPDXRef-k3s",
        "versionInfo": k3s.version,
        "downloadLocation": if stand_in { "NOASSERTION".to_owned() } else { profile.k3s_url() },
        "filesAnalyzed": false,
        "primaryPackagePurpose": "APPLICATION",
        "comment": match (k3s.source.as_str(), stand_in) {
            (_, true) => "STAND-IN: the baked k3s binary is not the pinned release (its sha256 differs from the pin); versionInfo is the pinned version it stands in for".to_owned(),
            ("baked", false) => "the pinned k3s release, baked into the root image".to_owned(),
            _ => "the pinned k3s release, downloaded by the node on first boot and checked against this sha256".to_owned(),
        },
    });
    if let Some(sha) = sha {
        k["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": sha }]);
    }
    packages.push(k);
    contains(
        "SPDXRef-k3s",
        if k3s.source == "baked" {
            "CONTAINS"
        } else {
            "DEPENDS_ON"
        },
    );

    let mut charts = Vec::new();
    if profile.cni.kind == CniKind::Cilium {
        charts.push(chart(
            "cilium",
            &profile.cni.version,
            "https://helm.cilium.io/",
            profile.cni.chart.as_ref().map(|c| c.sha256.as_str()),
        ));
    }
    match profile.gitops.engine {
        GitopsEngine::Flux => charts.push(chart(
            "flux2",
            FLUX2_CHART_VERSION,
            "https://fluxcd-community.github.io/helm-charts",
            None,
        )),
        GitopsEngine::Argocd => charts.push(chart(
            "argo-cd",
            ARGO_CD_CHART_VERSION,
            "https://argoproj.github.io/argo-helm",
            None,
        )),
        GitopsEngine::None => {}
    }
    for c in charts {
        let id = c["SPDXID"].as_str().unwrap_or_default().to_owned();
        packages.push(c);
        contains(&id, "DEPENDS_ON");
    }
    for a in &profile.k3s.airgap_images {
        let id = spdx_id(&["airgap", a.file_name()]);
        packages.push(json!({
            "name": a.file_name(),
            "SPDXID": id,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [{ "algorithm": "SHA256", "checksumValue": a.sha256.to_lowercase() }],
            "comment": "container image archive (k3s.airgap-images), imported by k3s at start",
        }));
        contains(&id, "CONTAINS");
    }

    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("labimg-{}", profile.name),
        "documentNamespace": format!(
            "https://labimg.invalid/spdx/{}/{}",
            purl_encode(&profile.name),
            i.root.verity.root_hash
        ),
        "creationInfo": {
            "created": rfc3339(i.epoch),
            "creators": [format!("Tool: labimg-{}", env!("CARGO_PKG_VERSION"))],
        },
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    })
}

/// Writes `<dir>/<profile name>.spdx.json`.
pub fn write_sbom(dir: &Path, i: &SbomInputs) -> Result<()> {
    let path = dir.join(format!("{}.spdx.json", i.profile.name));
    let text = serde_json::to_string_pretty(&render(i))? + "\n";
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// A few lines for `labimg inspect`: package count, kernel, k3s, charts.
pub fn summary(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let packages = doc["packages"].as_array().map_or(&[][..], Vec::as_slice);
    let purl = |p: &Value| -> String {
        p["externalRefs"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r["referenceLocator"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let debs = packages
        .iter()
        .filter(|p| purl(p).starts_with("pkg:deb/"))
        .count();
    let mut out = format!(
        "sbom      {} ({}): {debs} Debian packages\n",
        path.file_name().unwrap_or_default().to_string_lossy(),
        s(&doc["spdxVersion"])
    );
    for p in packages {
        let comment = p["comment"].as_str().unwrap_or_default();
        match p["SPDXID"].as_str().unwrap_or_default() {
            "SPDXRef-kernel" => out += &format!("sbom      kernel {}\n", s(&p["versionInfo"])),
            "SPDXRef-k3s" => {
                out += &format!(
                    "sbom      k3s {}{}\n",
                    s(&p["versionInfo"]),
                    if comment.starts_with("STAND-IN") {
                        " (stand-in, not the pinned release)"
                    } else {
                        ""
                    }
                )
            }
            id if id.starts_with("SPDXRef-chart-") => {
                out += &format!(
                    "sbom      chart {} {}\n",
                    s(&p["name"]),
                    s(&p["versionInfo"])
                )
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls() {
        assert_eq!(
            purl_encode("1:2.3+dfsg-1~bpo13+1"),
            "1%3A2.3%2Bdfsg-1~bpo13%2B1"
        );
        assert_eq!(
            spdx_id(&["deb", "libc6", "2.41-12", "amd64"]),
            "SPDXRef-deb-libc6-2.41-12-amd64"
        );
    }
}
