//! The `InRelease` file of a suite: its fields and the SHA256 list of index
//! files it vouches for. Parsing starts from the *verified* signed text.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::control;

/// Size and SHA256 of one index file, as listed in `InRelease`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    pub size: u64,
    pub sha256: String,
}

/// A parsed `InRelease`.
#[derive(Clone, Debug)]
pub struct Release {
    pub origin: String,
    pub suite: String,
    pub codename: String,
    /// `Date`, seconds since the epoch.
    pub date: Option<u64>,
    /// `Valid-Until`, seconds since the epoch (stable releases have none).
    pub valid_until: Option<u64>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    /// `Acquire-By-Hash: yes`: index files are also at `by-hash/SHA256/<hex>`.
    pub acquire_by_hash: bool,
    /// `No-Support-for-Architecture-all: Packages`: arch:all packages are
    /// listed in every per-architecture Packages file, not in binary-all.
    pub all_in_arch_packages: bool,
    /// Index files by path relative to `dists/<suite>/`.
    pub files: BTreeMap<String, IndexFile>,
    /// Set by [`Release::check_valid_until`] when the release was accepted
    /// under [`ValidUntil::Skip`]: seconds its `Valid-Until` had passed by
    /// then (0 when it had not passed, or it has none).
    pub valid_until_skipped: Option<u64>,
}

/// What to do with an `InRelease` whose `Valid-Until` has passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValidUntil {
    /// Refuse it, as apt does by default.
    #[default]
    Enforce,
    /// Accept it, with its signature still required (apt's
    /// `Check-Valid-Until=no`): for air-gapped builds from the copy an online
    /// run kept, and for snapshot mirrors whose releases expired long ago.
    Skip,
}

impl Release {
    /// Parses the signed text of an `InRelease` file.
    pub fn parse(text: &str) -> Result<Release> {
        let stanzas = control::parse(text).map_err(anyhow::Error::msg)?;
        let [st] = stanzas.as_slice() else {
            bail!("expected one stanza in InRelease, found {}", stanzas.len());
        };
        let field = |n: &str| st.get(n).unwrap_or_default().to_owned();
        let list = |n: &str| {
            st.get(n)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let date = |n: &str| {
            st.get(n)
                .map(|d| parse_date(d).with_context(|| format!("bad {n}: {d:?}")))
                .transpose()
        };
        let mut files = BTreeMap::new();
        for line in st
            .get("SHA256")
            .context("InRelease has no SHA256 list")?
            .lines()
        {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [sha, size, path] = parts.as_slice() else {
                bail!("bad SHA256 line in InRelease: {line:?}");
            };
            if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("bad SHA256 digest in InRelease: {line:?}");
            }
            let size = size
                .parse()
                .with_context(|| format!("bad size in {line:?}"))?;
            files.insert(
                (*path).to_owned(),
                IndexFile {
                    size,
                    sha256: sha.to_ascii_lowercase(),
                },
            );
        }
        Ok(Release {
            origin: field("Origin"),
            suite: field("Suite"),
            codename: field("Codename"),
            date: date("Date")?,
            valid_until: date("Valid-Until")?,
            architectures: list("Architectures"),
            components: list("Components"),
            acquire_by_hash: st.get("Acquire-By-Hash") == Some("yes"),
            all_in_arch_packages: list("No-Support-for-Architecture-all")
                .iter()
                .any(|s| s == "Packages"),
            files,
            valid_until_skipped: None,
        })
    }

    /// Refuses a release whose `Valid-Until` is in the past: an attacker
    /// replaying an old, validly signed InRelease could otherwise freeze us
    /// on vulnerable packages.
    pub fn check_fresh(&self, now: u64) -> Result<()> {
        if let Some(until) = self.valid_until
            && until < now
        {
            bail!(
                "InRelease of {} expired {} s ago (Valid-Until is in the past); for an \
                 offline build from an old cache or a snapshot mirror, set \
                 check-valid-until = false under [debian] in the profile",
                self.codename,
                now - until
            );
        }
        Ok(())
    }

    /// Applies `policy` to `Valid-Until` at `now`: [`Release::check_fresh`]
    /// under [`ValidUntil::Enforce`]; under [`ValidUntil::Skip`] it accepts,
    /// warns and records in [`Release::valid_until_skipped`] how long ago the
    /// release expired. Only call it on a release whose signature verified.
    pub fn check_valid_until(&mut self, now: u64, policy: ValidUntil) -> Result<()> {
        if policy == ValidUntil::Enforce {
            return self.check_fresh(now);
        }
        let past = self.valid_until.map_or(0, |u| now.saturating_sub(u));
        if past > 0 {
            tracing::warn!(
                "InRelease of {} expired {} ago (Valid-Until {}); accepted on its signature alone \
                 because the profile sets debian.check-valid-until = false",
                self.codename,
                human_duration(past),
                self.valid_until.unwrap_or_default()
            );
        } else {
            tracing::warn!(
                "InRelease of {}: Valid-Until is not checked (debian.check-valid-until = false)",
                self.codename
            );
        }
        self.valid_until_skipped = Some(past);
        Ok(())
    }
}

/// `3 d 4 h`, `5 h 2 min`, `40 s`: how long a release has been expired.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// Parses an RFC 2822 date as used in Release files
/// (`Sat, 21 Nov 2026 09:15:44 UTC`, also `+0000` style offsets).
pub fn parse_date(s: &str) -> Result<u64> {
    let s = s.split_once(',').map_or(s, |(_, r)| r).trim();
    let p: Vec<&str> = s.split_whitespace().collect();
    let [day, mon, year, time, zone @ ..] = p.as_slice() else {
        bail!("unrecognised date");
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(mon))
        .context("unknown month")? as i64
        + 1;
    let day: i64 = day.parse()?;
    let year: i64 = year.parse()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("bad time")?;
    let [h, m, sec] = hms.as_slice() else {
        bail!("bad time");
    };
    let offset = match zone.first().copied() {
        None | Some("UTC" | "GMT" | "Z") => 0,
        Some(z) if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let v: i64 = z[1..].parse()?;
            let secs = (v / 100) * 3600 + (v % 100) * 60;
            if z.starts_with('-') { -secs } else { secs }
        }
        Some(z) => bail!("unknown time zone {z}"),
    };
    let days = days_from_civil(year, month, day);
    let t = days * 86400 + h * 3600 + m * 60 + sec - offset;
    u64::try_from(t).context("date before 1970")
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_agree_with_gnu_date() {
        for d in [
            "Sat, 21 Nov 2026 09:15:44 UTC",
            "Thu, 29 Feb 2024 23:59:59 UTC",
            "Mon, 01 Jan 2001 00:00:00 +0130",
        ] {
            let out = std::process::Command::new("date")
                .args(["-u", "+%s", "-d", d])
                .output()
                .unwrap();
            let want: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert_eq!(parse_date(d).unwrap(), want, "{d}");
        }
        assert!(parse_date("yesterday").is_err());
    }

    #[test]
    fn fields_hash_list_and_expiry() {
        let text = "Origin: Debian Backports\nCodename: trixie-backports\n\
            Date: Sun, 22 Nov 2026 02:09:05 UTC\nValid-Until: Sun, 29 Nov 2026 02:09:05 UTC\n\
            Acquire-By-Hash: yes\nNo-Support-for-Architecture-all: Packages\n\
            Architectures: all amd64 arm64\nComponents: main contrib\nMD5Sum:\n \
            203e1451a4c2e0edf3646a5da3cec2d8  9679304 main/binary-amd64/Packages.xz\nSHA256:\n \
            be3d7d96a040eda0505c1808cccc67f183bbc05dff0842c50f88e6c396557412  9679304 main/binary-amd64/Packages.xz\n";
        let r = Release::parse(text).unwrap();
        assert!(r.acquire_by_hash && r.all_in_arch_packages);
        assert_eq!(r.components, ["main", "contrib"]);
        let f = &r.files["main/binary-amd64/Packages.xz"];
        assert_eq!(f.size, 9679304);
        assert!(f.sha256.starts_with("be3d7d96"));
        assert_eq!(r.files.len(), 1, "MD5 lines must not be taken as SHA256");
        let until = r.valid_until.unwrap();
        assert!(r.check_fresh(until - 1).is_ok());
        assert!(r.check_fresh(until + 1).is_err());

        let mut enforced = r.clone();
        assert!(
            enforced
                .check_valid_until(until + 1, ValidUntil::Enforce)
                .is_err()
        );
        assert_eq!(enforced.valid_until_skipped, None);
        let mut skipped = r.clone();
        skipped
            .check_valid_until(until + 3 * 86400 + 7200, ValidUntil::Skip)
            .unwrap();
        assert_eq!(skipped.valid_until_skipped, Some(3 * 86400 + 7200));
        let mut fresh = r.clone();
        fresh
            .check_valid_until(until - 5, ValidUntil::Skip)
            .unwrap();
        assert_eq!(fresh.valid_until_skipped, Some(0));
        assert_eq!(human_duration(3 * 86400 + 7200), "3 d 2 h");
        assert_eq!(human_duration(59), "59 s");
    }
}
