//! What the `labimg` subcommands do, as library calls, and their options as clap
//! derives: the binary only parses arguments and prints errors. Options are declared
//! once, here or on the library type they configure ([`BuildOptions`],
//! `labimg_netboot::ServeOptions`).

mod logging;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use self::logging::{LogFormat, init_logging};
use crate::artifact::hash_file;
use crate::artifact::sign;
use crate::build::{BuildOptions, build as run_build};
use crate::debian::Cache;
use crate::inputs::{fetch_inputs, resolve_inputs};
use crate::manifest::Manifest;
use crate::profile::{self, Profile, ProfileErrors};
use crate::target;

/// Options every command takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Folder of named profiles (`--profile pi5` reads `<dir>/pi5.toml`).
    #[arg(
        long,
        global = true,
        env = "LABIMG_PROFILES",
        default_value = "profiles"
    )]
    pub profiles_dir: PathBuf,
    /// More logging (-v: debug, -vv: trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log line format on stderr: text (an RFC 3339 UTC timestamp, the level, the
    /// message) or json (one object per line with `timestamp`, `level`, `message`).
    #[arg(
        long,
        global = true,
        env = "LABIMG_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

impl GlobalArgs {
    /// Sets up logging as `-v` and `--log-format` ask ([`init_logging`]).
    pub fn init_logging(&self) {
        init_logging(self.verbose, self.log_format);
    }
}

/// Which profile, and overrides.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// Profile name (`pi5` → profiles/pi5.toml) or path to a .toml file.
    #[arg(long, short = 'p')]
    pub profile: String,
    /// Override a key, for example `--set k3s.version=v1.33.5+k3s1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl ProfileArgs {
    /// Loads the profile from `profiles_dir` ([`load_profile`]).
    pub fn load(&self, profiles_dir: &Path) -> Result<Profile> {
        load_profile(&self.profile, &self.sets, profiles_dir)
    }
}

/// `labimg fetch` options.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Download cache (default: $LABIMG_CACHE, else ~/.cache/labimg).
    #[arg(long, env = "LABIMG_CACHE")]
    pub cache: Option<PathBuf>,
    /// Only check that the cache holds everything (no network): what an offline
    /// `build` will need.
    #[arg(long, env = "LABIMG_OFFLINE")]
    pub offline: bool,
}

/// `labimg profile …`.
#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// List the profiles in the profiles folder.
    List,
    /// Print a profile (with --resolved: after `extends` and `--set`, with every default).
    Show {
        #[command(flatten)]
        profile: ProfileArgs,
        #[arg(long)]
        resolved: bool,
    },
    /// Check profiles and report every problem with file, line and key.
    Validate {
        /// Profile names or paths.
        #[arg(required = true)]
        profiles: Vec<String>,
    },
}

impl ProfileCommand {
    /// Runs the subcommand on the profiles in `profiles_dir`.
    pub fn run(&self, profiles_dir: &Path) -> Result<()> {
        match self {
            Self::List => profile_list(profiles_dir),
            Self::Show { profile, resolved } => {
                profile_show(&profile.profile, &profile.sets, profiles_dir, *resolved)
            }
            Self::Validate { profiles } => profile_validate(profiles, profiles_dir),
        }
    }
}

/// `labimg inspect` options.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// An output folder such as images/proxmox, or a manifest.json.
    pub path: PathBuf,
    /// Also require SHA256SUMS.minisig to be a valid signature by this minisign public key.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

/// `labimg sign` options.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// An output folder such as images/proxmox.
    pub dir: PathBuf,
    /// minisign secret key (`labimg keygen`, or `minisign -G`; encrypted keys take
    /// their password from LABIMG_SIGN_PASSWORD or the terminal).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

/// `labimg keygen` options.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Folder for the keys (created if missing; existing keys are never overwritten).
    pub dir: PathBuf,
    /// Encrypt the secret key with a password (LABIMG_SIGN_PASSWORD or typed);
    /// without it the key is unencrypted, for unattended builds.
    #[arg(long)]
    pub encrypt: bool,
}

/// Loads a profile. Validation problems stay a [`ProfileErrors`] inside the
/// error (a caller can downcast it); printed, they list every problem.
pub fn load_profile(name: &str, sets: &[String], dir: &Path) -> Result<Profile> {
    Ok(profile::load(name, dir, sets)?)
}

/// `labimg profile validate` found problems (already printed, profile by profile).
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} profiles have problems", .failed.len())]
pub struct InvalidProfiles {
    /// Each profile that failed, as given, with its problems.
    pub failed: Vec<(String, ProfileErrors)>,
    /// How many profiles were checked.
    pub total: usize,
}

fn cache(dir: Option<PathBuf>) -> Result<Cache> {
    match dir {
        Some(d) => Cache::new(d),
        None => Cache::open_default(),
    }
}

/// `labimg build`.
pub fn build(profile: &Profile, opts: &BuildOptions) -> Result<()> {
    let result = run_build(profile, opts)?;
    println!("built {} in {}", profile.name, result.out_dir.display());
    for o in &result.outputs {
        println!("  {:<40} {:>12}  {}", o.path, o.size, o.sha256);
    }
    Ok(())
}

/// `labimg fetch`: resolve, download and verify; print the package sets.
pub fn fetch(profile: &Profile, cache_dir: Option<PathBuf>, offline: bool) -> Result<()> {
    let target = target::for_profile(profile)?;
    let (archive, resolved) =
        resolve_inputs(profile, target.as_ref(), cache(cache_dir)?.offline(offline))?;
    fetch_inputs(&archive, &resolved)?;
    for (what, res) in [
        ("kernel", &resolved.kernel),
        ("root filesystem", &resolved.root),
        ("boot partition", &resolved.boot),
    ] {
        println!(
            "# {what}: {} packages, {} KiB",
            res.packages.len(),
            res.download_size() >> 10
        );
        println!("{res}");
    }
    println!(
        "all packages verified against the signed {} indexes",
        profile.suites().join(" + ")
    );
    Ok(())
}

/// `labimg profile list`.
pub fn profile_list(dir: &Path) -> Result<()> {
    let profiles = profile::list(dir);
    if profiles.is_empty() {
        bail!(
            "no profiles in {} (set --profiles-dir or LABIMG_PROFILES)",
            dir.display()
        );
    }
    for (name, description) in profiles {
        println!("{name:<16} {description}");
    }
    Ok(())
}

/// `labimg profile show [--resolved]`.
pub fn profile_show(name: &str, sets: &[String], dir: &Path, resolved: bool) -> Result<()> {
    if resolved {
        print!("{}", load_profile(name, sets, dir)?.resolved());
    } else {
        let path = profile::profile_path(name, dir);
        print!(
            "{}",
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?
        );
    }
    Ok(())
}

/// `labimg profile validate`: every problem of every profile, then one error.
pub fn profile_validate(names: &[String], dir: &Path) -> Result<()> {
    let mut failed = Vec::new();
    for name in names {
        match profile::load(name, dir, &[]) {
            Ok(_) => println!("{}: ok", profile::profile_path(name, dir).display()),
            Err(e) => {
                eprintln!("{e}");
                failed.push((name.clone(), e));
            }
        }
    }
    if !failed.is_empty() {
        return Err(InvalidProfiles {
            failed,
            total: names.len(),
        }
        .into());
    }
    Ok(())
}

/// `labimg inspect`: summarize a build and check its SHA256SUMS; with a
/// public key, first check that key's signature over SHA256SUMS.
pub fn inspect(path: &Path, public_key: Option<&Path>) -> Result<()> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let m = Manifest::read(dir)?;
    println!("profile   {} ({} / {})", m.profile, m.board, m.arch);
    println!("kernel    {}", m.kernel_version);
    println!("root      sha256 {}", m.root_image.sha256);
    println!("k3s       {} ({})", m.k3s.version, m.k3s.source);
    let sets = [
        ("kernel", &m.inputs.kernel),
        ("root", &m.inputs.root),
        ("boot", &m.inputs.boot),
    ];
    for (set, resolution) in sets {
        let n = resolution.packages.len();
        println!("inputs    {set}: {n} Debian packages");
    }
    if let Some(cmd) = m.cmdline.get("a") {
        println!("cmdline   {cmd}");
    }
    println!("root      dm-verity root hash {}", m.root_verity.root_hash);
    let sbom = dir.join(format!("{}.spdx.json", m.profile));
    if sbom.exists() {
        print!("{}", crate::sbom::summary(&sbom)?);
    } else {
        println!("sbom      none ({} is missing)", sbom.display());
    }
    if let Some(key) = public_key {
        let pk = sign::load_public_key(key)?;
        sign::verify_signature(dir, &pk)?;
        println!("signature SHA256SUMS signed by key {}", sign::key_id(&pk));
    }
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).context("reading SHA256SUMS")?;
    let mut bad = Vec::new();
    for line in sums.lines() {
        let Some((want, file)) = line.split_once("  ") else {
            continue;
        };
        let ok = hash_file(&dir.join(file))
            .map(|(got, _)| got == want)
            .unwrap_or(false);
        println!("{}  {file}", if ok { "ok " } else { "BAD" });
        if !ok {
            bad.push(file.to_owned());
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} output(s) do not match SHA256SUMS: {}",
            bad.len(),
            bad.join(", ")
        );
    }
    Ok(())
}

/// `labimg sign <dir> --key <file>`: sign a build's SHA256SUMS in place.
pub fn sign(dir: &Path, key: &Path) -> Result<()> {
    let sig = sign::sign_dir(dir, key)?;
    println!(
        "signed {} → {}",
        dir.join(sign::SUMS_FILE).display(),
        sig.display()
    );
    Ok(())
}

/// `labimg keygen <dir> [--encrypt]`: a new minisign key pair. Encrypted keys
/// take their password from `$LABIMG_SIGN_PASSWORD`, else from the terminal.
pub fn keygen(dir: &Path, encrypt: bool) -> Result<()> {
    use std::io::IsTerminal;
    let protection = match (encrypt, std::env::var(sign::PASSWORD_ENV)) {
        (false, _) => sign::KeyProtection::None,
        (true, Ok(p)) => sign::KeyProtection::Password(p),
        (true, Err(_)) if std::io::stdin().is_terminal() => sign::KeyProtection::Prompt,
        (true, Err(_)) => bail!(
            "--encrypt needs a password: set {} or run on a terminal",
            sign::PASSWORD_ENV
        ),
    };
    let keys = sign::generate_keypair(dir, protection)?;
    println!("key id     {}", keys.id);
    println!("secret key {} (keep it private)", keys.secret.display());
    println!("public key {}", keys.public.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Profile problems stay typed on the way out, for a caller that branches on them.
    #[test]
    fn profile_errors_can_be_downcast() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), "bogus = 1\n").unwrap();
        let e = load_profile("bad", &[], dir.path()).unwrap_err();
        let problems = e.downcast_ref::<ProfileErrors>().expect("a ProfileErrors");
        assert!(problems.0.iter().any(|p| p.message.contains("unknown key")));
        assert_eq!(format!("{e:#}"), problems.to_string());

        let e = profile_validate(&["bad".into()], dir.path()).unwrap_err();
        let invalid = e
            .downcast_ref::<InvalidProfiles>()
            .expect("InvalidProfiles");
        assert_eq!((invalid.failed.len(), invalid.total), (1, 1));
        assert_eq!(format!("{e:#}"), "1 of 1 profiles have problems");
    }
}
