//! What the `labimg` subcommands do, as library calls, and their options as clap
//! derives: the binary only parses arguments and prints errors. Options are declared
//! once, here or on the library type they configure ([`BuildOptions`],
//! `labimg_netboot::ServeOptions`).

pub mod exit;
mod logging;
pub mod output;
pub mod report;
pub mod secureboot;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub use self::exit::{EXIT_STATUS_HELP, exit_code};
pub use self::logging::{LogFormat, init_logging};
pub use self::output::{is_stdout_closed, print_json, stdout};
pub use self::secureboot::SecurebootCommand;
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
    List {
        /// Print a JSON array of {name, description, path} instead.
        #[arg(long)]
        json: bool,
    },
    /// Print a profile (with --resolved: after `extends` and `--set`, with every default).
    Show {
        #[command(flatten)]
        profile: ProfileArgs,
        #[arg(long)]
        resolved: bool,
        /// Print the profile as one JSON object (the file's own keys, or with
        /// --resolved the resolved profile).
        #[arg(long)]
        json: bool,
    },
    /// Check profiles and report every problem with file, line and key.
    Validate {
        /// Profile names or paths.
        #[arg(required = true)]
        profiles: Vec<String>,
        /// Print one JSON object: {ok, profiles: [{profile, path, ok, problems}]}.
        #[arg(long)]
        json: bool,
    },
}

impl ProfileCommand {
    /// Runs the subcommand on the profiles in `profiles_dir`.
    pub fn run(&self, profiles_dir: &Path) -> Result<()> {
        match self {
            Self::List { json } => profile_list(profiles_dir, *json),
            Self::Show {
                profile,
                resolved,
                json,
            } => profile_show(
                &profile.profile,
                &profile.sets,
                profiles_dir,
                *resolved,
                *json,
            ),
            Self::Validate { profiles, json } => profile_validate(profiles, profiles_dir, *json),
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
    /// Print one JSON object (the manifest's summary, the signature, each file's check
    /// and `ok`) instead of text.
    #[arg(long)]
    pub json: bool,
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

/// Files of a build folder that do not match its SHA256SUMS (`labimg inspect`).
#[derive(Debug, thiserror::Error)]
#[error("{} output(s) do not match SHA256SUMS: {}", .files.len(), .files.join(", "))]
pub struct OutputsMismatch {
    /// The paths, as SHA256SUMS lists them.
    pub files: Vec<String>,
}

fn cache(dir: Option<PathBuf>) -> Result<Cache> {
    match dir {
        Some(d) => Cache::new(d),
        None => Cache::open_default(),
    }
}

/// `labimg build`; with `json`, one [`report::BuildSummary`] object on stdout.
pub fn build(profile: &Profile, opts: &BuildOptions, json: bool) -> Result<()> {
    let start = Instant::now();
    let result = run_build(profile, opts)?;
    if json {
        let manifest = Manifest::read(&result.out_dir)?;
        let summary = report::BuildSummary::new(&manifest, &result, start.elapsed());
        return print_json(&summary);
    }
    let mut out = stdout();
    writeln!(
        out,
        "built {} in {}",
        profile.name,
        result.out_dir.display()
    )?;
    for o in &result.outputs {
        writeln!(out, "  {:<40} {:>12}  {}", o.path, o.size, o.sha256)?;
    }
    Ok(())
}

/// `labimg fetch`: resolve, download and verify; print the package sets.
pub fn fetch(profile: &Profile, cache_dir: Option<PathBuf>, offline: bool) -> Result<()> {
    let target = target::for_profile(profile)?;
    let (archive, resolved) =
        resolve_inputs(profile, target.as_ref(), cache(cache_dir)?.offline(offline))?;
    fetch_inputs(&archive, &resolved)?;
    let mut out = stdout();
    for (what, res) in [
        ("kernel", &resolved.kernel),
        ("root filesystem", &resolved.root),
        ("boot partition", &resolved.boot),
    ] {
        writeln!(
            out,
            "# {what}: {} packages, {} KiB",
            res.packages.len(),
            res.download_size() >> 10
        )?;
        writeln!(out, "{res}")?;
    }
    writeln!(
        out,
        "all packages verified against the signed {} indexes",
        profile.suites().join(" + ")
    )?;
    Ok(())
}

/// `labimg profile list [--json]`.
pub fn profile_list(dir: &Path, json: bool) -> Result<()> {
    let profiles = profile::list(dir);
    if profiles.is_empty() {
        bail!(
            "no profiles in {} (set --profiles-dir or LABIMG_PROFILES)",
            dir.display()
        );
    }
    if json {
        let listed: Vec<_> = profiles
            .into_iter()
            .map(|(name, description)| report::ListedProfile {
                path: profile::profile_path(&name, dir).display().to_string(),
                name,
                description,
            })
            .collect();
        return print_json(&listed);
    }
    let mut out = stdout();
    for (name, description) in profiles {
        writeln!(out, "{name:<16} {description}")?;
    }
    Ok(())
}

/// `labimg profile show [--resolved] [--json]`.
pub fn profile_show(
    name: &str,
    sets: &[String],
    dir: &Path,
    resolved: bool,
    json: bool,
) -> Result<()> {
    let text = if resolved {
        load_profile(name, sets, dir)?.resolved()
    } else {
        let path = profile::profile_path(name, dir);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
    };
    if json {
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("parsing profile {name}"))?;
        return print_json(&table);
    }
    let mut out = stdout();
    write!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// `labimg profile validate [--json]`: every problem of every profile, then one error.
pub fn profile_validate(names: &[String], dir: &Path, json: bool) -> Result<()> {
    let mut failed = Vec::new();
    let mut checked = Vec::new();
    for name in names {
        let path = profile::profile_path(name, dir).display().to_string();
        let problems = match profile::load(name, dir, &[]) {
            Ok(_) => {
                if !json {
                    writeln!(stdout(), "{path}: ok")?;
                }
                Vec::new()
            }
            Err(e) => {
                if !json {
                    eprintln!("{e}");
                }
                let problems = e.0.iter().map(report::ProblemJson::from).collect();
                failed.push((name.clone(), e));
                problems
            }
        };
        checked.push(report::ValidatedProfile {
            profile: name.clone(),
            ok: problems.is_empty(),
            path,
            problems,
        });
    }
    if json {
        print_json(&report::Validation {
            ok: failed.is_empty(),
            profiles: checked,
        })?;
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
    inspect_as(path, public_key, false)
}

/// `labimg inspect --json`: as [`inspect`], printing one [`report::Inspection`]
/// object, also when a file does not match (the error follows it).
pub fn inspect_json(path: &Path, public_key: Option<&Path>) -> Result<()> {
    inspect_as(path, public_key, true)
}

fn inspect_as(path: &Path, public_key: Option<&Path>, json: bool) -> Result<()> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let m = Manifest::read(dir)?;
    let sbom = dir.join(format!("{}.spdx.json", m.profile));
    let mut report = report::Inspection::new(&m, sbom.exists().then_some(sbom.as_path()));
    let mut out = stdout();
    if !json {
        inspect_text(&mut out, &m, &sbom)?;
    }
    if let Some(key) = public_key {
        let pk = sign::load_public_key(key)?;
        sign::verify_signature(dir, &pk)?;
        let key_id = sign::key_id(&pk);
        if !json {
            writeln!(out, "signature SHA256SUMS signed by key {key_id}")?;
        }
        report.signature = Some(report::Signature { key_id });
    }
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).context("reading SHA256SUMS")?;
    for line in sums.lines() {
        let Some((want, file)) = line.split_once("  ") else {
            continue;
        };
        let ok = hash_file(&dir.join(file))
            .map(|(got, _)| got == want)
            .unwrap_or(false);
        if !json {
            writeln!(out, "{}  {file}", if ok { "ok " } else { "BAD" })?;
        }
        report.files.push(report::FileCheck {
            path: file.to_owned(),
            sha256: want.to_owned(),
            ok,
        });
    }
    let bad: Vec<String> = report
        .files
        .iter()
        .filter(|f| !f.ok)
        .map(|f| f.path.clone())
        .collect();
    report.ok = bad.is_empty();
    if json {
        drop(out);
        print_json(&report)?;
    }
    if !bad.is_empty() {
        return Err(OutputsMismatch { files: bad }.into());
    }
    Ok(())
}

/// The manifest part of `labimg inspect`'s text.
fn inspect_text(out: &mut impl Write, m: &Manifest, sbom: &Path) -> Result<()> {
    writeln!(out, "profile   {} ({} / {})", m.profile, m.board, m.arch)?;
    writeln!(out, "kernel    {}", m.kernel_version)?;
    writeln!(out, "root      sha256 {}", m.root_image.sha256)?;
    writeln!(out, "k3s       {} ({})", m.k3s.version, m.k3s.source)?;
    let sets = [
        ("kernel", &m.inputs.kernel),
        ("root", &m.inputs.root),
        ("boot", &m.inputs.boot),
    ];
    for (set, resolution) in sets {
        let n = resolution.packages.len();
        writeln!(out, "inputs    {set}: {n} Debian packages")?;
    }
    if let Some(cmd) = m.cmdline.get("a") {
        writeln!(out, "cmdline   {cmd}")?;
    }
    writeln!(
        out,
        "root      dm-verity root hash {}",
        m.root_verity.root_hash
    )?;
    if sbom.exists() {
        write!(out, "{}", crate::sbom::summary(sbom)?)?;
    } else {
        writeln!(out, "sbom      none ({} is missing)", sbom.display())?;
    }
    Ok(())
}

/// `labimg sign <dir> --key <file>`: sign a build's SHA256SUMS in place.
pub fn sign(dir: &Path, key: &Path) -> Result<()> {
    let sig = sign::sign_dir(dir, key)?;
    writeln!(
        stdout(),
        "signed {} → {}",
        dir.join(sign::SUMS_FILE).display(),
        sig.display()
    )?;
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
    let mut out = stdout();
    writeln!(out, "key id     {}", keys.id)?;
    writeln!(
        out,
        "secret key {} (keep it private)",
        keys.secret.display()
    )?;
    writeln!(out, "public key {}", keys.public.display())?;
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

        let e = profile_validate(&["bad".into()], dir.path(), false).unwrap_err();
        let invalid = e
            .downcast_ref::<InvalidProfiles>()
            .expect("InvalidProfiles");
        assert_eq!((invalid.failed.len(), invalid.total), (1, 1));
        assert_eq!(format!("{e:#}"), "1 of 1 profiles have problems");
    }
}
