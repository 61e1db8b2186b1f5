//! What the `labimg` subcommands do, as library calls: the binary only
//! parses arguments and prints errors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::build::{BuildOptions, build as run_build};
use crate::debian::{Cache, cache::hash_file};
use crate::inputs::{fetch_inputs, resolve_inputs};
use crate::profile::{self, Profile};
use crate::sign;
use crate::target;

/// Loads a profile; validation problems become one error listing them all.
pub fn load_profile(name: &str, sets: &[String], dir: &Path) -> Result<Profile> {
    profile::load(name, dir, sets).map_err(|e| anyhow::anyhow!("{e}"))
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
    let mut failed = 0;
    for name in names {
        match profile::load(name, dir, &[]) {
            Ok(_) => println!("{}: ok", profile::profile_path(name, dir).display()),
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} profiles have problems", names.len());
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
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let m: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", manifest_path.display()))?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    println!(
        "profile   {} ({} / {})",
        s(&m["profile"]),
        s(&m["board"]),
        s(&m["arch"])
    );
    println!("kernel    {}", s(&m["kernel_version"]));
    println!("root      sha256 {}", s(&m["root_image"]["sha256"]));
    println!(
        "k3s       {} ({})",
        s(&m["k3s"]["version"]),
        s(&m["k3s"]["source"])
    );
    for set in ["kernel", "root", "boot"] {
        let n = m["inputs"][set]["packages"].as_array().map_or(0, Vec::len);
        println!("inputs    {set}: {n} Debian packages");
    }
    if let Some(cmd) = m["cmdline"]["a"].as_str() {
        println!("cmdline   {cmd}");
    }
    if let Some(hash) = m["root_verity"]["root_hash"].as_str() {
        println!("root      dm-verity root hash {hash}");
    }
    let sbom = dir.join(format!("{}.spdx.json", s(&m["profile"])));
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
