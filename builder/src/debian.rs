//! Debian package source: verified InRelease, Packages, dependency closure, cache and .deb extraction.
//!
//! The chain of trust is: the archive keys shipped in `builder/keys/` →
//! the OpenPGP signature of each suite's `InRelease` (fetched fresh every run;
//! offline, the copy the last online run kept, verified again)
//! → the SHA256 of each `Packages.xz` listed there → the SHA256 of each `.deb`
//! listed in `Packages`. Every file is checked against its hash before use,
//! including files that come from the cache.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use labimg_builder::debian::{Archive, Cache, extract_deb};
//! let suites = vec!["trixie".to_string(), "trixie-backports".to_string()];
//! let archive = Archive::open(labimg_builder::debian::DEFAULT_MIRROR, &suites, "arm64", Cache::open_default()?)?;
//! let res = archive.resolve(&["busybox-static".into(), "linux-image-arm64/trixie-backports".into()])?;
//! println!("{res}");
//! let mut tree = labimg_builder::tree::Tree::new();
//! for pkg in archive.fetch(&res)? {
//!     extract_deb(&pkg.path, &mut tree)?;
//! }
//! # Ok(()) }
//! ```

pub mod cache;
pub mod control;
pub mod deb;
pub mod deps;
pub mod keys;
pub mod packages;
pub mod release;
pub mod resolve;
pub mod version;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

pub use cache::{Cache, Download, HashMismatch};
pub use deb::{deb_control, extract_deb};
pub use keys::{Keyring, SignatureError};
pub use release::{Release, ValidUntil};
pub use resolve::{Resolution, ResolvedPackage};
pub use version::Version;

/// The mirror used when a profile names none.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// One suite of one mirror, e.g. `trixie` `main` of deb.debian.org.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub mirror: String,
    pub suite: String,
    pub components: Vec<String>,
}

impl Source {
    /// `main` of `suite` on `mirror`.
    pub fn new(mirror: &str, suite: &str) -> Source {
        Source {
            mirror: mirror.trim_end_matches('/').to_owned(),
            suite: suite.to_owned(),
            components: vec!["main".to_owned()],
        }
    }

    fn dists_url(&self) -> String {
        format!("{}/dists/{}", self.mirror, self.suite)
    }
}

/// A `.deb` in the cache whose SHA256 was checked just now.
#[derive(Clone, Debug)]
pub struct FetchedPackage {
    pub package: ResolvedPackage,
    pub path: PathBuf,
}

/// Verified package indexes of several suites for one architecture.
#[derive(Debug)]
pub struct Archive {
    sources: Vec<Source>,
    arch: String,
    cache: Cache,
    releases: Vec<Release>,
    index: resolve::Index,
}

impl Archive {
    /// Fetches and verifies `InRelease` and the `main` Packages of each suite
    /// (earlier suites are preferred when resolving).
    pub fn open(mirror: &str, suites: &[String], arch: &str, cache: Cache) -> Result<Archive> {
        Self::open_with(mirror, suites, arch, cache, ValidUntil::Enforce)
    }

    /// [`Archive::open`] with `Valid-Until` treated as `valid_until` says.
    pub fn open_with(
        mirror: &str,
        suites: &[String],
        arch: &str,
        cache: Cache,
        valid_until: ValidUntil,
    ) -> Result<Archive> {
        let sources = suites.iter().map(|s| Source::new(mirror, s)).collect();
        Self::open_sources_with(sources, arch, cache, valid_until)
    }

    /// Like [`Archive::open`] with explicit sources (several mirrors or components).
    pub fn open_sources(sources: Vec<Source>, arch: &str, cache: Cache) -> Result<Archive> {
        Self::open_sources_with(sources, arch, cache, ValidUntil::Enforce)
    }

    /// Like [`Archive::open_sources`], with each `InRelease`'s `Valid-Until`
    /// treated as `valid_until` says (signatures are always required).
    pub fn open_sources_with(
        sources: Vec<Source>,
        arch: &str,
        cache: Cache,
        valid_until: ValidUntil,
    ) -> Result<Archive> {
        let keyring = Keyring::debian()?;
        let mut releases = Vec::new();
        let mut suites = Vec::new();
        for src in &sources {
            let start = std::time::Instant::now();
            let release = fetch_release_with(&cache, src, &keyring, valid_until)?;
            let mut pkgs = Vec::new();
            for comp in &src.components {
                pkgs.extend(fetch_packages(&cache, src, &release, comp, arch)?);
            }
            tracing::info!(
                "{} {}: {} packages for {arch} ({:.1?})",
                src.mirror,
                src.suite,
                pkgs.len(),
                start.elapsed()
            );
            suites.push((src.suite.clone(), src.mirror.clone(), pkgs));
            releases.push(release);
        }
        let index = resolve::Index::new(arch, suites)?;
        Ok(Archive {
            sources,
            arch: arch.to_owned(),
            cache,
            releases,
            index,
        })
    }

    /// The dependency closure of `requests` (`name`, `name/suite`, `name=version`).
    pub fn resolve(&self, requests: &[String]) -> Result<Resolution> {
        self.index.resolve(requests)
    }

    /// Downloads (or finds in the cache) every package of a resolution,
    /// verifying each against its SHA256 from the signed index.
    pub fn fetch(&self, res: &Resolution) -> Result<Vec<FetchedPackage>> {
        let downloads: Vec<Download> = res
            .packages
            .iter()
            .map(|p| Download {
                urls: vec![p.url.clone()],
                size: p.size,
                sha256: p.sha256.clone(),
            })
            .collect();
        let paths = self.cache.fetch_many(&downloads)?;
        Ok(res
            .packages
            .iter()
            .cloned()
            .zip(paths)
            .map(|(package, path)| FetchedPackage { package, path })
            .collect())
    }

    /// The verified release of a configured suite.
    pub fn release(&self, suite: &str) -> Option<&Release> {
        self.sources
            .iter()
            .position(|s| s.suite == suite)
            .map(|i| &self.releases[i])
    }

    /// Each configured suite (as the profile names it) with its verified
    /// release, in the order they were opened.
    pub fn releases(&self) -> impl Iterator<Item = (&str, &Release)> {
        self.sources
            .iter()
            .map(|s| s.suite.as_str())
            .zip(&self.releases)
    }

    /// The architecture this archive was opened for.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The download cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

/// Fetches `dists/<suite>/InRelease` (fresh, unless the cache is offline: then
/// the copy kept by the last online run), verifies its signature against
/// `keyring` and its `Valid-Until`, and parses it.
pub fn fetch_release(cache: &Cache, src: &Source, keyring: &Keyring) -> Result<Release> {
    fetch_release_with(cache, src, keyring, ValidUntil::Enforce)
}

/// [`fetch_release`] with `Valid-Until` treated as `valid_until` says.
pub fn fetch_release_with(
    cache: &Cache,
    src: &Source,
    keyring: &Keyring,
    valid_until: ValidUntil,
) -> Result<Release> {
    let url = format!("{}/InRelease", src.dists_url());
    cache.get_release(&url, |bytes| {
        verify_release_with(bytes, keyring, valid_until).with_context(|| format!("verifying {url}"))
    })
}

/// Verifies and parses the bytes of an `InRelease` file.
pub fn verify_release(bytes: &[u8], keyring: &Keyring) -> Result<Release> {
    verify_release_with(bytes, keyring, ValidUntil::Enforce)
}

/// [`verify_release`] with `Valid-Until` treated as `valid_until` says:
/// the signature is checked first either way.
pub fn verify_release_with(
    bytes: &[u8],
    keyring: &Keyring,
    valid_until: ValidUntil,
) -> Result<Release> {
    let text = std::str::from_utf8(bytes).context("InRelease is not UTF-8")?;
    let (signed, signer) = keyring.verify_cleartext(text)?;
    let mut release = Release::parse(&signed)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    release.check_valid_until(now, valid_until)?;
    tracing::debug!(suite = %release.codename, signer, "InRelease signature verified");
    Ok(release)
}

/// The download of a suite's `Packages.xz` for one component and
/// architecture, by-hash path first when the release supports it.
pub fn packages_download(
    src: &Source,
    release: &Release,
    component: &str,
    arch: &str,
) -> Result<Download> {
    let rel_path = format!("{component}/binary-{arch}/Packages.xz");
    let f = release
        .files
        .get(&rel_path)
        .with_context(|| format!("{} {} lists no {rel_path}", src.mirror, src.suite))?;
    let base = src.dists_url();
    let mut urls = Vec::new();
    if release.acquire_by_hash {
        urls.push(format!(
            "{base}/{component}/binary-{arch}/by-hash/SHA256/{}",
            f.sha256
        ));
    }
    urls.push(format!("{base}/{rel_path}"));
    Ok(Download {
        urls,
        size: f.size,
        sha256: f.sha256.clone(),
    })
}

/// Fetches, verifies, decompresses and parses one Packages index. Without
/// `No-Support-for-Architecture-all: Packages`, binary-all is read too.
pub fn fetch_packages(
    cache: &Cache,
    src: &Source,
    release: &Release,
    component: &str,
    arch: &str,
) -> Result<Vec<packages::Package>> {
    let mut archs = vec![arch];
    if !release.all_in_arch_packages
        && release
            .files
            .contains_key(&format!("{component}/binary-all/Packages.xz"))
    {
        archs.push("all");
    }
    let mut out = Vec::new();
    for a in archs {
        let d = packages_download(src, release, component, a)?;
        let path = cache.fetch(&d)?;
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut liblzma::read::XzDecoder::new(file), &mut text)
            .with_context(|| format!("decompressing {}", d.urls.join(" or ")))?;
        out.extend(
            packages::parse_packages(&text)
                .with_context(|| format!("parsing {}", d.urls.join(" or ")))?,
        );
    }
    Ok(out)
}
