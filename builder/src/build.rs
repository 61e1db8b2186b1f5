//! The build, as its pipeline: resolve inputs, assemble the root tree, make
//! the initramfs and the root image, write the disk and netboot artifacts,
//! write the manifest, then publish the output folder in one rename.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::artifact::Cmdline;
use crate::artifact::hash_file;
use crate::artifact::imager;
use crate::debian::Cache;
use crate::disk;
use crate::initramfs::make_initramfs;
use crate::inputs::{fetch_inputs, resolve_inputs};
use crate::manifest::{self, K3sInfo, Manifest, OutputFile};
use crate::nodecfg::NodeTable;
pub use crate::plan::BuildOptions;
use crate::plan::BuildPlan;
use crate::preseed::Destination;
use crate::profile::{ImageFormat, Profile};
use crate::rootfs::{self, K3sBinary, assemble_rootfs};
use crate::rootimg::make_root_image;
use crate::target::{self, DiskInputs};
use crate::tree::Tree;

/// What a finished build reports.
#[derive(Debug)]
pub struct BuildResult {
    pub out_dir: PathBuf,
    pub outputs: Vec<OutputFile>,
}

/// Runs `f`, logging the step's name and duration.
/// On a terminal a spinner shows the step is alive (xz of a disk takes a while).
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    tracing::info!("{name} …");
    let spinner = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner().with_message(name.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let out = f().with_context(|| name.to_owned());
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    let out = out?;
    tracing::info!("{name} done in {:.1?}", start.elapsed());
    Ok(out)
}

/// Removes a half-written output folder unless the build succeeded.
struct Staging(PathBuf);

impl Staging {
    /// A fresh staging folder for `plan` (0700 from its creation for a private build:
    /// publishing renames it, so the folder stays private), with `netboot/`.
    fn create(plan: &BuildPlan) -> Result<Staging> {
        let parent = crate::plan::parent_of(&plan.out_dir);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let staging = Staging(plan.staging.clone());
        let _ = std::fs::remove_dir_all(&staging.0);
        if plan.private {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&staging.0)
                .with_context(|| format!("creating {}", staging.0.display()))?;
        }
        std::fs::create_dir_all(staging.0.join("netboot"))?;
        Ok(staging)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Builds every output of `profile`.
pub fn build(profile: &Profile, opts: &BuildOptions) -> Result<BuildResult> {
    let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    let plan = BuildPlan::new(
        profile,
        opts,
        source_date_epoch.as_deref(),
        std::process::id(),
    )?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let (profile, netboot, render) = (&plan.profile, plan.netboot, &plan.render);
    let target = target::for_profile(profile)?;
    // Loaded (and decrypted) first, so a wrong password fails before a long build.
    let sign_key = opts
        .sign_key
        .as_deref()
        .map(crate::artifact::sign::load_secret_key)
        .transpose()?;
    check_upgrade_key(profile, sign_key.as_ref())?;
    // Loaded before the long build too: a missing key folder fails at once.
    let sb_keys = target::secure_boot_keys(profile, opts.secure_boot_keys.as_deref())?;
    let staging = Staging::create(&plan)?;
    let work = &staging.0;

    let cache = match &opts.cache_dir {
        Some(d) => Cache::new(d)?,
        None => Cache::open_default()?,
    }
    .offline(opts.offline);
    let (archive, resolved) = step("resolve inputs", || {
        resolve_inputs(profile, target.as_ref(), cache)
    })?;
    let inputs = step("fetch inputs", || fetch_inputs(&archive, &resolved))?;
    // Without SOURCE_DATE_EPOCH: the newest Date of the signed InRelease files read.
    let dates: Vec<(&str, Option<u64>)> = archive.releases().map(|(s, r)| (s, r.date)).collect();
    let build_epoch = plan.epoch(&dates)?;
    let epoch = build_epoch.seconds;
    tracing::info!("timestamp {epoch} ({})", build_epoch.source);

    let k3s_source = match &opts.k3s_binary {
        Some(p) => K3sBinary::Baked(p),
        None => K3sBinary::FirstBoot,
    };
    let k3s = k3s_info(profile, opts.k3s_binary.as_deref())?;
    let nodes = step("render node configs", || NodeTable::render(profile, render))?;
    let mut rootfs = step("assemble rootfs", || {
        assemble_rootfs(
            profile,
            &inputs.kernel,
            &inputs.root,
            k3s_source,
            &nodes.for_destination(Destination::Shared, render),
            render,
            epoch,
        )
    })?;
    if let Some(keys) = &sb_keys {
        // Public: the upgrade agent checks a bundle's UKIs against it.
        rootfs
            .tree
            .insert_file(target::DB_CERT_PATH, keys.db_cert_pem(), 0o644)?;
        rootfs.tree.set_all_mtimes(epoch);
    }
    let mut boot_tree = Tree::new();
    rootfs::unpack(&mut boot_tree, &inputs.boot)?;

    let modules: Vec<String> = target::initramfs_modules(target.as_ref(), profile)
        .into_iter()
        .flat_map(|n| n.names)
        .collect();
    anyhow::ensure!(
        rootfs.tree.get_follow(crate::initramfs::DMSETUP).is_some(),
        "the profile's packages lack dmsetup (Debian package `dmsetup`), which stage 1 needs to open the dm-verity root"
    );
    let initramfs = step("make initramfs", || {
        make_initramfs(&rootfs.tree, &modules, epoch)
    })?;
    // Published as netboot/root.squashfs, or only written into the disk's root slot.
    let root_path = work.join("netboot/root.squashfs");
    let root = step("make root image", || {
        make_root_image(&rootfs.tree, &root_path, epoch)
    })?;

    let raw = work.join(format!("{}.raw", profile.name));
    let disk_inputs = DiskInputs {
        profile,
        kernel: &rootfs.kernel,
        initramfs: &initramfs.data,
        root: &root,
        boot_tree: &boot_tree,
        root_tree: &rootfs.tree,
        kernel_version: &rootfs.kernel_version,
        epoch,
        secure_boot: sb_keys.as_ref(),
    };
    step("write disk", || target.write_disk(&disk_inputs, &raw))?;
    if netboot && let Some((dir, files)) = target.netboot_files(&disk_inputs)? {
        files.write_to_dir(&work.join("netboot").join(dir))?;
    }
    // Imager checks the decompressed image's sha256: hashed before the raw file goes.
    let imager_devices = imager::devices_for_board(target.name())
        .filter(|_| profile.outputs.formats.contains(&ImageFormat::RawXz));
    let raw_hash = imager_devices
        .map(|_| step("hash disk for Imager", || hash_file(&raw)))
        .transpose()?;
    write_formats(&plan, &raw)?;
    if let (Some(devices), Some(raw_hash)) = (imager_devices, raw_hash) {
        step("write Imager os_list.json", || {
            let entry = imager::OsEntry::for_image(&imager::ImageFacts {
                profile: &profile.name,
                k3s_version: &profile.k3s.version,
                devices,
                raw: raw_hash,
                raw_xz: &raw.with_extension("raw.xz"),
                epoch,
            })?;
            imager::write(work, entry)
        })?;
    }
    if !netboot {
        std::fs::remove_dir_all(work.join("netboot"))?;
    }

    let slot_a = target.cmdline(profile, &root, "a");
    let slot_b = target.cmdline(profile, &root, "b");
    let cmdline = BTreeMap::from([
        ("a".to_owned(), slot_a.to_string()),
        ("b".to_owned(), slot_b.to_string()),
    ]);
    if netboot {
        step("write netboot artifacts", || {
            write_netboot(
                work,
                profile,
                &rootfs.kernel,
                &initramfs.data,
                &root,
                &slot_a,
            )
        })?;
        if let Some(keys) = &sb_keys {
            step("write signed UKIs", || {
                let dir = work.join(crate::upgrade::UKI_DIR);
                std::fs::create_dir_all(&dir)?;
                for slot in ["a", "b"] {
                    let uki = target::signed_uki(target.as_ref(), &disk_inputs, keys, slot)?;
                    std::fs::write(dir.join(format!("labimg-{slot}.efi")), uki)?;
                }
                Ok(())
            })?;
        }
        // An upgrade bundle is the netboot files plus upgrade.json and upgrade.env. Before
        // hash_outputs, so SHA256SUMS and the manifest list it.
        step("write upgrade bundle", || {
            crate::upgrade::write_upgrade_json(
                work,
                &profile.name,
                &profile.k3s.version,
                epoch,
                &root,
                &cmdline,
            )
            .map(|_| ())
        })?;
    }
    let nodes = step("write node configs", || write_node_dirs(work, &nodes))?;

    let secure_boot = sb_keys
        .as_ref()
        .map(|k| secure_boot_record(k, &boot_tree, &resolved.boot))
        .transpose()?;
    step("write sbom", || {
        use sha2::Digest;
        crate::sbom::write_sbom(
            work,
            &crate::sbom::SbomInputs {
                profile,
                root: &root,
                inputs: resolved.sets(),
                k3s: &k3s,
                kernel_version: &rootfs.kernel_version,
                kernel_sha256: &hex::encode(sha2::Sha256::digest(&rootfs.kernel)),
                epoch,
                secure_boot: secure_boot.as_ref(),
            },
        )
    })?;

    let outputs = manifest::hash_outputs(work)?;
    let root_file = outputs
        .iter()
        .find(|o| o.path == "netboot/root.squashfs")
        .cloned()
        .unwrap_or_else(|| OutputFile {
            path: "root slot a of the disk image (not published)".into(),
            size: root.size,
            sha256: root.sha256.clone(),
        });
    let manifest = Manifest {
        labimg_version: env!("CARGO_PKG_VERSION").to_owned(),
        profile: profile.name.clone(),
        board: target.name().to_owned(),
        arch: profile.target.arch.as_str().to_owned(),
        source_date_epoch: epoch,
        epoch_source: build_epoch.source.clone(),
        kernel_version: rootfs.kernel_version.clone(),
        cmdline,
        initramfs_modules: initramfs.modules.clone(),
        root_modules: Some(rootfs.modules.clone()),
        root_image: root_file,
        root_verity: root.verity.clone(),
        k3s,
        nodes,
        releases: archive
            .releases()
            .map(|(suite, r)| manifest::ReleaseRecord::new(suite, r))
            .collect(),
        inputs: manifest::ManifestInputs {
            kernel: resolved.kernel.clone(),
            root: resolved.root.clone(),
            boot: resolved.boot.clone(),
        },
        outputs: outputs.clone(),
        secure_boot,
    };
    manifest::write_manifest(work, &manifest)?;
    if let Some(key) = &sign_key {
        step("sign SHA256SUMS", || {
            crate::artifact::sign::sign_sums(work, key)
        })?;
    }
    publish(&staging.0, &plan.out_dir)?;
    Ok(BuildResult {
        out_dir: plan.out_dir,
        outputs,
    })
}

/// The disk image in each of `outputs.formats` (0600 in a private build), then
/// the raw image they were made from is removed.
fn write_formats(plan: &BuildPlan, raw: &Path) -> Result<()> {
    let formats = &plan.profile.outputs.formats;
    for format in formats {
        match format {
            ImageFormat::RawXz => step("compress raw.xz", || {
                let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
                crate::compress::xz_file_parallel(raw, &raw.with_extension("raw.xz"), threads)
                    .map(|_| ())
            })?,
            ImageFormat::Qcow2 => step("convert qcow2", || {
                disk::qcow2_from_raw(raw, &raw.with_extension("qcow2"))
            })?,
        }
    }
    std::fs::remove_file(raw)?;
    if plan.private {
        use std::os::unix::fs::PermissionsExt;
        for format in formats {
            let path = raw.with_extension(match format {
                ImageFormat::RawXz => "raw.xz",
                ImageFormat::Qcow2 => "qcow2",
            });
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", path.display()))?;
        }
    }
    Ok(())
}

/// With `upgrade.public-key`, nodes accept only bundles signed by that key: a
/// build signed by another key is an error, an unsigned one a warning (it can
/// still be signed later with `labimg sign`).
fn check_upgrade_key(profile: &Profile, sign_key: Option<&minisign::SecretKey>) -> Result<()> {
    let Some(want) = &profile.upgrade.public_key else {
        return Ok(());
    };
    let Some(sk) = sign_key else {
        tracing::warn!(
            "upgrade.public-key is set but this build is not signed (--sign-key): nodes will \
             refuse it as an upgrade until `labimg sign` signs it with that key"
        );
        return Ok(());
    };
    let pk = minisign::PublicKey::from_secret_key(sk).context("deriving the public key")?;
    anyhow::ensure!(
        pk.to_base64() == want.trim(),
        "--sign-key is key {}, but upgrade.public-key is another key: nodes of this profile \
         would refuse the bundle",
        crate::artifact::sign::key_id(&pk)
    );
    Ok(())
}

fn k3s_info(profile: &Profile, baked: Option<&Path>) -> Result<K3sInfo> {
    let pinned = profile.k3s_sha256().map(str::to_owned);
    let (source, baked_sha256, matches_pin) = match baked {
        Some(p) => {
            let (sha, _) =
                hash_file(p).with_context(|| format!("reading --k3s-binary {}", p.display()))?;
            let matches = pinned.as_deref() == Some(sha.as_str());
            if !matches {
                tracing::warn!(
                    "the baked k3s binary {} (sha256 {sha}) is not the pinned k3s {} release: treating it as a stand-in",
                    p.display(),
                    profile.k3s.version
                );
            }
            ("baked", Some(sha), Some(matches))
        }
        None => ("first-boot", None, None),
    };
    Ok(K3sInfo {
        version: profile.k3s.version.clone(),
        pinned_sha256: pinned,
        source: source.to_owned(),
        baked_sha256,
        matches_pin,
    })
}

/// `netboot/`: what `labimg serve` hands to PXE clients (world-readable, so
/// it holds no secrets: per-node config is served separately).
fn write_netboot(
    dir: &Path,
    profile: &Profile,
    kernel: &[u8],
    initramfs: &[u8],
    root: &crate::rootimg::RootImage,
    cmdline: &Cmdline,
) -> Result<()> {
    let nb = dir.join("netboot");
    std::fs::write(nb.join("vmlinuz"), kernel)?;
    std::fs::write(nb.join("initrd.img"), initramfs)?;
    let info = target::netboot_info(profile, root, cmdline);
    std::fs::write(nb.join("netboot.json"), info.to_json())?;
    Ok(())
}

/// `nodes/<hostname>/`: each node's rendered config for `labimg serve`
/// (mode 0700: it may hold secrets).
fn write_node_dirs(dir: &Path, nodes: &NodeTable) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("nodes");
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
    for d in &nodes.dirs {
        for (path, (data, mode)) in &d.files {
            let p = root.join(&d.hostname).join(path);
            std::fs::create_dir_all(p.parent().unwrap_or(&root))?;
            std::fs::write(&p, data)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
        }
    }
    Ok(nodes.dirs.iter().map(|d| d.hostname.clone()).collect())
}

/// Replaces `dst` with `staging` so readers see the old outputs or the new
/// ones, never a mix.
fn publish(staging: &Path, dst: &Path) -> Result<()> {
    let old = dst.with_file_name(format!(
        ".{}.old-{}",
        dst.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    if dst.exists() {
        std::fs::rename(dst, &old)
            .with_context(|| format!("moving the previous {} aside", dst.display()))?;
    }
    std::fs::rename(staging, dst).with_context(|| format!("publishing {}", dst.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// `manifest.json`'s record of a Secure Boot build: the stub (path, package,
/// version, sha256) and the db certificate (subject, fingerprint).
fn secure_boot_record(
    keys: &target::SecureBootKeys,
    boot_tree: &Tree,
    boot: &crate::debian::Resolution,
) -> Result<manifest::SecureBootRecord> {
    use sha2::Digest;
    let stub = boot_tree
        .get(crate::uki::STUB)
        .and_then(|e| e.data())
        .with_context(|| format!("systemd-boot-efi did not provide /{}", crate::uki::STUB))?;
    let package = "systemd-boot-efi";
    let version = boot
        .get(package)
        .map(|p| p.version.clone())
        .with_context(|| format!("the boot packages do not include {package}"))?;
    Ok(manifest::SecureBootRecord {
        stub: manifest::StubRecord {
            path: crate::uki::STUB.to_owned(),
            package: package.to_owned(),
            version,
            sha256: hex::encode(sha2::Sha256::digest(stub)),
        },
        signing_cert_subject: keys.db_subject.clone(),
        signing_cert_sha256: keys.db_sha256.clone(),
    })
}
