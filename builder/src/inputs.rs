//! Step 1 of a build: resolve and fetch every input from the verified Debian
//! archive — the kernel, the root filesystem's packages and the boot
//! partition's packages — each as its own set, because they end up in
//! different places.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::debian::{Archive, Cache, FetchedPackage, Resolution, ValidUntil};
use crate::profile::Profile;
use crate::target::Target;

/// The packages the node OS needs at run time, beside the profile's own:
/// busybox for init and tools, e2fsprogs and sfdisk to create and check STATE,
/// CA certificates for HTTPS downloads (k3s images, GitOps repositories).
/// util-linux's `partx` tells the kernel about the new STATE partition while
/// root is mounted from the same disk. chrony sets and keeps the clock (Debian's
/// busybox has no `ntpd`): without it a Pi 5 starts in the past and TLS fails.
pub const NODE_PACKAGES: &[&str] = &[
    "busybox-static",
    "e2fsprogs",
    "fdisk",
    "util-linux",
    "ca-certificates",
    "chrony",
];

/// Fetched inputs, by destination.
#[derive(Debug)]
pub struct Inputs {
    pub kernel: Vec<FetchedPackage>,
    pub root: Vec<FetchedPackage>,
    pub boot: Vec<FetchedPackage>,
}

/// What the manifest records about the inputs.
#[derive(Debug, Serialize)]
pub struct InputSets<'a> {
    pub kernel: &'a Resolution,
    pub root: &'a Resolution,
    pub boot: &'a Resolution,
}

/// The resolutions behind [`Inputs`], kept for the manifest and `labimg fetch`.
#[derive(Debug)]
pub struct Resolved {
    pub kernel: Resolution,
    pub root: Resolution,
    pub boot: Resolution,
}

impl Resolved {
    pub fn sets(&self) -> InputSets<'_> {
        InputSets {
            kernel: &self.kernel,
            root: &self.root,
            boot: &self.boot,
        }
    }
}

/// Keeps only the named packages of a resolution (and, with `prefix`, the
/// packages whose names start with it). A kernel or boot loader package's own
/// dependencies (kmod, initramfs-tools, …) are for a host install, not for us.
fn only(mut res: Resolution, keep: impl Fn(&str) -> bool) -> Resolution {
    res.packages.retain(|p| keep(&p.name));
    res
}

fn only_from_kernel_source(mut res: Resolution) -> Resolution {
    res.packages.retain(|p| {
        let src = p.source.split_whitespace().next().unwrap_or_default();
        src == "linux" || src.starts_with("linux-signed-")
    });
    res
}

fn base_name(request: &str) -> &str {
    request.split(['/', '=']).next().unwrap_or(request)
}

/// Opens the archive for the profile and resolves the three package sets.
pub fn resolve_inputs(
    profile: &Profile,
    target: &dyn Target,
    cache: Cache,
) -> Result<(Archive, Resolved)> {
    let arch = profile.target.arch.as_str();
    let valid_until = if profile.debian.check_valid_until {
        ValidUntil::Enforce
    } else {
        ValidUntil::Skip
    };
    let archive = Archive::open_with(
        &profile.debian.mirror,
        profile.suites(),
        arch,
        cache,
        valid_until,
    )
    .with_context(|| {
        format!(
            "opening the Debian archive {} for {arch}",
            profile.debian.mirror
        )
    })?;
    let kernel_req = profile.kernel_package().to_owned();
    let kernel = archive
        .resolve(std::slice::from_ref(&kernel_req))
        .with_context(|| format!("resolving the kernel {kernel_req}"))?;
    // Keep what the kernel's source packages build (image, and from 7.x on the
    // split linux-binary/linux-modules/linux-base-<kver>); drop host tools.
    let kernel = only_from_kernel_source(kernel);
    let mut root_reqs: Vec<String> = NODE_PACKAGES.iter().map(|s| s.to_string()).collect();
    root_reqs.extend(profile.debian.packages.iter().cloned());
    if profile.upgrade.public_key.is_some() {
        // The upgrade agent checks bundle signatures with minisign's own CLI.
        root_reqs.push("minisign".to_owned());
    }
    if profile.ssh_enabled() {
        // Only with authorized keys: without them the image has no SSH server.
        root_reqs.push(crate::profile::SSH_PACKAGE.to_owned());
    }
    if profile.secure_boot.enabled {
        // The upgrade agent checks a bundle's UKI with sbverify before staging it.
        root_reqs.push(crate::profile::SECURE_BOOT_PACKAGE.to_owned());
    }
    if profile.secure_boot.tpm_seal_state {
        // STATE sealed to the TPM (node/statecrypt.sh).
        root_reqs.extend(
            crate::rootfs::STATECRYPT_PACKAGES
                .iter()
                .map(|p| p.to_string()),
        );
    }
    let root = archive
        .resolve(&root_reqs)
        .context("resolving the root filesystem packages")?;
    let boot_reqs = target.boot_packages();
    let boot = archive
        .resolve(&boot_reqs)
        .context("resolving the boot packages")?;
    let boot = only(boot, |n| boot_reqs.iter().any(|r| base_name(r) == n));
    Ok((archive, Resolved { kernel, root, boot }))
}

/// Downloads (or takes from the cache, re-verified) every resolved package.
pub fn fetch_inputs(archive: &Archive, resolved: &Resolved) -> Result<Inputs> {
    Ok(Inputs {
        kernel: archive.fetch(&resolved.kernel)?,
        root: archive.fetch(&resolved.root)?,
        boot: archive.fetch(&resolved.boot)?,
    })
}
