//! Binary package stanzas from a suite's `Packages` index.

use anyhow::{Context, Result};
use serde::Serialize;

use super::control;
use super::deps::{self, Alternatives, Relation};
use super::version::Version;

/// One binary package as listed in a `Packages` index.
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub arch: String,
    /// Raw `Depends` field; parsed on demand so that opening an index of
    /// 60 000 packages stays fast.
    pub depends: String,
    pub pre_depends: String,
    pub provides: String,
    /// Raw `Conflicts` and `Breaks` fields: a closure holding both sides is refused.
    pub conflicts: String,
    pub breaks: String,
    /// Path relative to the mirror root (`pool/main/b/busybox/...deb`).
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// Source package name (without the version some stanzas append).
    pub source: String,
    pub multi_arch: Option<MultiArch>,
    pub essential: bool,
    pub priority: String,
}

/// The `Multi-Arch` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MultiArch {
    Same,
    Foreign,
    Allowed,
    No,
}

impl Package {
    /// Builds a package from a stanza; `None` when mandatory fields are missing.
    pub fn from_stanza(st: &control::Stanza) -> Result<Package> {
        let req = |n: &str| {
            st.get(n)
                .map(str::to_owned)
                .with_context(|| format!("package stanza without {n}: {:?}", st.get("Package")))
        };
        let opt = |n: &str| st.get(n).unwrap_or_default().to_owned();
        let name = req("Package")?;
        let sha256 = req("SHA256")?.to_ascii_lowercase();
        anyhow::ensure!(
            sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_hexdigit()),
            "package {name}: bad SHA256 {sha256:?}"
        );
        Ok(Package {
            version: Version::parse(&req("Version")?),
            arch: req("Architecture")?,
            depends: opt("Depends"),
            pre_depends: opt("Pre-Depends"),
            provides: opt("Provides"),
            conflicts: opt("Conflicts"),
            breaks: opt("Breaks"),
            filename: req("Filename")?,
            size: req("Size")?
                .parse()
                .with_context(|| format!("package {name}: bad Size"))?,
            sha256,
            source: st
                .get("Source")
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or(&name)
                .to_owned(),
            multi_arch: st.get("Multi-Arch").map(|m| match m {
                "same" => MultiArch::Same,
                "foreign" => MultiArch::Foreign,
                "allowed" => MultiArch::Allowed,
                _ => MultiArch::No,
            }),
            essential: st.get("Essential") == Some("yes"),
            priority: opt("Priority"),
            name,
        })
    }

    /// `Pre-Depends` then `Depends`, parsed, each tagged with its field name.
    pub fn dependencies(&self) -> Result<Vec<(&'static str, Alternatives)>> {
        let mut out = Vec::new();
        for (field, text) in [
            ("Pre-Depends", &self.pre_depends),
            ("Depends", &self.depends),
        ] {
            let groups = deps::parse_depends(text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("parsing {field} of {} {}", self.name, self.version))?;
            out.extend(groups.into_iter().map(|g| (field, g)));
        }
        Ok(out)
    }

    /// Parsed `Conflicts` then `Breaks`, each relation tagged with its field.
    pub fn conflicts(&self) -> Result<Vec<(&'static str, Relation)>> {
        let mut out = Vec::new();
        for (field, text) in [("Conflicts", &self.conflicts), ("Breaks", &self.breaks)] {
            let groups = deps::parse_depends(text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("parsing {field} of {} {}", self.name, self.version))?;
            out.extend(groups.into_iter().flatten().map(|r| (field, r)));
        }
        Ok(out)
    }

    /// Parsed `Provides` (each optionally versioned with `=`).
    pub fn provides(&self) -> Result<Vec<Relation>> {
        Ok(deps::parse_depends(&self.provides)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("parsing Provides of {}", self.name))?
            .into_iter()
            .flatten()
            .collect())
    }
}

/// Parses a whole `Packages` file.
pub fn parse_packages(text: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    // One stanza at a time keeps memory flat for the 50 MB indexes.
    for chunk in text.split("\n\n").filter(|c| !c.trim().is_empty()) {
        for st in control::parse(chunk).map_err(anyhow::Error::msg)? {
            out.push(Package::from_stanza(&st)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_fields() {
        let text = "Package: libc6\nSource: glibc (2.41-12)\nVersion: 2.41-12\n\
            Architecture: arm64\nMulti-Arch: same\nPriority: optional\n\
            Depends: libgcc-s1\nPre-Depends: foo (>= 1) | bar\nProvides: libc6-x (= 2.41), libc-virt\n\
            Filename: pool/main/g/glibc/libc6_2.41-12_arm64.deb\nSize: 123\n\
            SHA256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF\n\n\
            Package: x\nVersion: 1\nArchitecture: all\nEssential: yes\nFilename: f\nSize: 1\n\
            SHA256: 0000000000000000000000000000000000000000000000000000000000000000\n";
        let p = parse_packages(text).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].source, "glibc");
        assert_eq!(p[0].multi_arch, Some(MultiArch::Same));
        assert!(p[0].sha256.ends_with("abcdef"));
        let d = p[0].dependencies().unwrap();
        assert_eq!(d[0].0, "Pre-Depends");
        assert_eq!(d[0].1.len(), 2);
        assert_eq!(d[1].1[0].name, "libgcc-s1");
        let prov = p[0].provides().unwrap();
        assert_eq!(prov[0].to_string(), "libc6-x (= 2.41)");
        assert!(p[1].essential);
        assert_eq!(p[1].source, "x");
        assert!(parse_packages("Package: y\nVersion: 1\n").is_err());
    }
}
