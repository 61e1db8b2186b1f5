//! The build's decisions, made before any work: where the outputs go and where
//! they are staged, whether they are private, whether netboot artifacts and an
//! upgrade bundle are written, which profile is built (`--embed-secrets` changes
//! it), and the timestamp of every file ([`Epoch`]: `SOURCE_DATE_EPOCH` when set,
//! else derived from the inputs once they are read, by [`BuildPlan::epoch`]).
//! Pure: the same profile, options and environment give the same plan, and
//! nothing is read or written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::preseed::RenderOptions;
use crate::profile::Profile;

/// How to build (the profile says what). Also `labimg build`'s options: each
/// field's `///` is its `--help` text.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct BuildOptions {
    /// Output folder (default: images/<profile name>/).
    #[arg(long = "out", value_name = "OUT")]
    pub out_dir: Option<PathBuf>,
    /// Bake this k3s binary into the image instead of fetching the pinned one on first boot.
    #[arg(long)]
    pub k3s_binary: Option<PathBuf>,
    /// Download cache (default: $LABIMG_CACHE, else ~/.cache/labimg).
    #[arg(long = "cache", value_name = "CACHE", env = "LABIMG_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Timestamp for every file; default `SOURCE_DATE_EPOCH`, else the newest
    /// `Date:` of the signed `InRelease` files the build reads. Not a flag.
    #[arg(skip)]
    pub source_date_epoch: Option<u64>,
    /// Also embed secrets (k3s token, Git credentials) in the disk images: only for
    /// per-node images you do not share. Such a build writes no netboot artifacts
    /// and no upgrade bundle (they are served to the whole LAN).
    #[arg(long)]
    pub embed_secrets: bool,
    /// Sign SHA256SUMS with this minisign secret key (writes SHA256SUMS.minisig;
    /// an encrypted key's password comes from LABIMG_SIGN_PASSWORD or the terminal).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Build a per-node image: only this node of the profile's [[nodes]] in its node
    /// table (with --embed-secrets, only its secrets), written to images/<name>-<node>/.
    #[arg(long, value_name = "HOSTNAME")]
    pub node: Option<String>,
    /// Never use the network: every package and each suite's signed InRelease come
    /// from the cache, filled by an earlier online `fetch` or `build` (checked again).
    #[arg(long, env = "LABIMG_OFFLINE")]
    pub offline: bool,
    /// Secure Boot key folder for a profile with `secure-boot.enabled`: the one
    /// `labimg secureboot keygen DIR` writes, or any folder with `db.crt` and `db.key`.
    /// systemd-boot and the Unified Kernel Images are signed with its db key; only
    /// public files (the db certificate, `PK.auth`, `KEK.auth`, `db.auth`) go into the outputs.
    #[arg(long, value_name = "DIR", env = "LABIMG_SECURE_BOOT_KEYS")]
    pub secure_boot_keys: Option<PathBuf>,
}

/// What `build` will do, decided up front.
#[derive(Clone, Debug)]
pub struct BuildPlan {
    /// The profile as built: with `--embed-secrets` it pulls no upgrades.
    pub profile: Profile,
    /// The published output folder.
    pub out_dir: PathBuf,
    /// Where the outputs are written first (`.<out>.partial-<pid>` beside it),
    /// renamed to `out_dir` only when everything succeeded.
    pub staging: PathBuf,
    /// The outputs hold secrets (`--embed-secrets`): the folder is 0700 from its
    /// creation and the disk images 0600.
    pub private: bool,
    /// `netboot/` and the upgrade bundle are written (served to the whole LAN, so
    /// never with secrets in the root image).
    pub netboot: bool,
    /// Seconds since the epoch for every timestamp in every output, when
    /// `SOURCE_DATE_EPOCH` (or the option) fixes it; `None`: derived from the
    /// inputs by [`BuildPlan::epoch`] once they are read.
    pub epoch: Option<Epoch>,
    /// How node directories are rendered.
    pub render: RenderOptions,
    /// Said once, before the build starts.
    pub warnings: Vec<String>,
}

impl BuildPlan {
    /// Decides the build of `profile` with `opts`; `source_date_epoch` is the
    /// environment's `SOURCE_DATE_EPOCH` and `pid` names the staging folder.
    pub fn new(
        profile: &Profile,
        opts: &BuildOptions,
        source_date_epoch: Option<&str>,
        pid: u32,
    ) -> Result<BuildPlan> {
        ensure!(
            !opts.embed_secrets || opts.node.is_some(),
            "--embed-secrets needs --node <hostname>: an image that carries secrets is built \
             for one machine (its own folder images/<name>-<hostname>/), not shared"
        );
        if let Some(node) = &opts.node {
            let names: Vec<&str> = profile.nodes.iter().map(|n| n.hostname.as_str()).collect();
            ensure!(
                names.contains(&node.as_str()),
                "--node {node}: profile {} has no such node in [[nodes]] (it has: {})",
                profile.name,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            );
        }
        let mut warnings = profile.warnings();
        let mut built = profile.clone();
        // An image with secrets must not upgrade itself from the shared, secret-less
        // bundle (its node would lose its token), so it gets no labimg.upgrade=.
        if opts.embed_secrets && built.upgrade.url.take().is_some() {
            warnings.push(
                "--embed-secrets: this image does not pull upgrades from upgrade.url (the \
                 shared bundle has no secrets); upgrade it by building it again"
                    .to_owned(),
            );
        }
        let netboot = profile.outputs.netboot && !opts.embed_secrets;
        if profile.outputs.netboot && opts.embed_secrets {
            warnings.push(
                "--embed-secrets: writing no netboot artifacts and no upgrade bundle (they are \
                 served to anyone on the LAN, and this root image holds secrets)"
                    .to_owned(),
            );
        }
        ensure!(
            netboot || !profile.outputs.formats.is_empty(),
            "nothing to write: --embed-secrets leaves out netboot artifacts, and \
             outputs.formats is empty"
        );
        let out_dir = out_dir(profile, opts);
        let file_name = out_dir
            .file_name()
            .context("the output folder has no name")?
            .to_string_lossy()
            .into_owned();
        let staging = parent_of(&out_dir).join(format!(".{file_name}.partial-{pid}"));
        let epoch = match (opts.source_date_epoch, source_date_epoch) {
            (Some(seconds), _) => Some(seconds),
            (None, Some(text)) => Some(text.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "SOURCE_DATE_EPOCH={text:?} is not a number of seconds since 1970 \
                     (unset it to take the newest InRelease Date of the inputs)"
                )
            })?),
            (None, None) => None,
        }
        .map(|seconds| Epoch {
            seconds,
            source: EPOCH_FROM_ENV.to_owned(),
        });
        Ok(BuildPlan {
            profile: built,
            out_dir,
            staging,
            private: opts.embed_secrets,
            netboot,
            epoch,
            render: RenderOptions {
                embed_secrets: opts.embed_secrets,
                only_node: opts.node.clone(),
                ..Default::default()
            },
            warnings,
        })
    }
}

/// `Epoch::source` when `SOURCE_DATE_EPOCH` (or the option) set it.
pub const EPOCH_FROM_ENV: &str = "SOURCE_DATE_EPOCH";

/// The timestamp of every file of a build, and where it came from; both are
/// recorded in `manifest.json`. Nodes refuse an upgrade bundle older than the
/// image they run by this number, so it must grow from one release to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    /// Seconds since 1970-01-01 UTC.
    pub seconds: u64,
    /// `SOURCE_DATE_EPOCH`, or `InRelease <suite> Date` for the suite whose
    /// signed `InRelease` is the newest of those the build read.
    pub source: String,
}

impl BuildPlan {
    /// The build's epoch: the one the plan fixed (`SOURCE_DATE_EPOCH`), else
    /// the newest `Date:` of the signed `InRelease` files the build read, given
    /// as (suite, date) — reproducible (the same archive state gives the same
    /// number) and growing as the archive moves. The first suite wins a tie.
    pub fn epoch(&self, releases: &[(&str, Option<u64>)]) -> Result<Epoch> {
        if let Some(fixed) = &self.epoch {
            return Ok(fixed.clone());
        }
        let mut newest: Option<(&str, u64)> = None;
        for (suite, date) in releases {
            if let Some(d) = *date
                && newest.is_none_or(|(_, n)| d > n)
            {
                newest = Some((suite, d));
            }
        }
        let (suite, seconds) = newest.with_context(|| {
            format!(
                "no InRelease of the suites read ({}) has a Date: to derive the build's \
                 timestamp from; set SOURCE_DATE_EPOCH",
                releases
                    .iter()
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Ok(Epoch {
            seconds,
            source: format!("InRelease {suite} Date"),
        })
    }
}

/// The folder the output folder is created in (`.` for a bare name).
pub fn parent_of(out_dir: &Path) -> &Path {
    out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `--out`, else `outputs.dir`, else `images/<profile name>/`; a per-node build
/// goes beside the shared one (`images/<name>-<node>/`), never over it.
fn out_dir(profile: &Profile, opts: &BuildOptions) -> PathBuf {
    if let Some(dir) = &opts.out_dir {
        return dir.clone();
    }
    let shared = profile
        .outputs
        .dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("images").join(&profile.name));
    match &opts.node {
        Some(node) => {
            let mut name = shared.file_name().unwrap_or_default().to_os_string();
            name.push(format!("-{node}"));
            shared.with_file_name(name)
        }
        None => shared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ImageFormat;

    fn profile() -> Profile {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let path = dir.join("examples/proxmox-flux.toml");
        crate::profile::load(path.to_str().unwrap(), &dir, &[]).unwrap()
    }

    fn plan(p: &Profile, opts: &BuildOptions) -> Result<BuildPlan> {
        BuildPlan::new(p, opts, None, 42)
    }

    /// `--node n`, with `--embed-secrets` when `embed`.
    fn node(n: &str, embed: bool) -> BuildOptions {
        BuildOptions {
            node: Some(n.into()),
            embed_secrets: embed,
            ..Default::default()
        }
    }

    #[test]
    fn a_shared_build_goes_to_images_name_through_a_staging_folder() {
        let p = profile();
        let b = plan(&p, &BuildOptions::default()).unwrap();
        assert_eq!(b.out_dir, Path::new("images/proxmox-flux"));
        assert_eq!(b.staging, Path::new("images/.proxmox-flux.partial-42"));
        assert!(b.netboot && !b.private && b.warnings.is_empty());
        assert_eq!(b.profile, p);
        let bare = BuildOptions {
            out_dir: Some("out".into()),
            ..Default::default()
        };
        assert_eq!(
            plan(&p, &bare).unwrap().staging,
            Path::new("./.out.partial-42")
        );
        let mut moved = p.clone();
        moved.outputs.dir = Some("/srv/labimg/flux".into());
        assert_eq!(
            plan(&moved, &BuildOptions::default()).unwrap().out_dir,
            Path::new("/srv/labimg/flux")
        );
    }

    #[test]
    fn a_node_build_goes_beside_the_shared_one_and_must_name_a_node() {
        let p = profile();
        let b = plan(&p, &node("pve-w1", false)).unwrap();
        assert_eq!(b.out_dir, Path::new("images/proxmox-flux-pve-w1"));
        assert!(b.netboot && !b.private);
        assert_eq!(b.render.only_node.as_deref(), Some("pve-w1"));
        let e = plan(&p, &node("nope", false)).unwrap_err().to_string();
        assert!(e.contains("--node nope") && e.contains("pve-cp1"), "{e}");
        let e = plan(
            &p,
            &BuildOptions {
                embed_secrets: true,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--embed-secrets needs --node"), "{e}");
    }

    #[test]
    fn embedded_secrets_make_a_private_build_without_netboot_or_upgrades() {
        let mut p = profile();
        p.upgrade.url = Some("http://boot.lan/images/proxmox-flux/".into());
        let b = plan(&p, &node("pve-cp1", true)).unwrap();
        assert!(b.private && !b.netboot && b.render.embed_secrets);
        assert_eq!(b.profile.upgrade.url, None);
        assert_eq!(b.warnings.len(), 2, "{:?}", b.warnings);
        p.outputs.formats = Vec::<ImageFormat>::new();
        let e = plan(&p, &node("pve-cp1", true)).unwrap_err().to_string();
        assert!(e.contains("nothing to write"), "{e}");
    }

    #[test]
    fn the_epoch_is_the_option_else_source_date_epoch_else_the_newest_inrelease_date() {
        let p = profile();
        let opts = BuildOptions::default();
        let releases = [
            ("trixie", Some(1_764_000_000)),
            ("trixie-backports", Some(1_764_100_000)),
            ("trixie-security", None),
        ];
        let from_env = |seconds| Epoch {
            seconds,
            source: "SOURCE_DATE_EPOCH".into(),
        };
        // Nothing set: the newest signed Date of the suites read.
        let b = BuildPlan::new(&p, &opts, None, 1).unwrap();
        assert_eq!(b.epoch, None);
        assert_eq!(
            b.epoch(&releases).unwrap(),
            Epoch {
                seconds: 1_764_100_000,
                source: "InRelease trixie-backports Date".into()
            }
        );
        // A tie goes to the first suite; no Date at all is an error naming the suites.
        let tie = [("trixie", Some(5)), ("trixie-backports", Some(5))];
        assert_eq!(b.epoch(&tie).unwrap().source, "InRelease trixie Date");
        let e = b.epoch(&[("sid", None)]).unwrap_err().to_string();
        assert!(e.contains("sid") && e.contains("SOURCE_DATE_EPOCH"), "{e}");
        // SOURCE_DATE_EPOCH wins over the inputs; the option over the environment.
        let b = BuildPlan::new(&p, &opts, Some("1700000000"), 1).unwrap();
        assert_eq!(b.epoch(&releases).unwrap(), from_env(1_700_000_000));
        let fixed = BuildOptions {
            source_date_epoch: Some(5),
            ..Default::default()
        };
        let b = BuildPlan::new(&p, &fixed, Some("1700000000"), 1).unwrap();
        assert_eq!(b.epoch(&releases).unwrap(), from_env(5));
        // A SOURCE_DATE_EPOCH that is not a number stops the build (it is not
        // silently replaced by another time).
        let e = BuildPlan::new(&p, &opts, Some("junk"), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SOURCE_DATE_EPOCH=\"junk\""), "{e}");
    }
}
