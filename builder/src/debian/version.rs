//! Debian version numbers (`[epoch:]upstream[-revision]`) and their ordering,
//! following the algorithm of `dpkg --compare-versions` (Debian Policy §5.6.12).

use std::cmp::Ordering;
use std::fmt;

/// A parsed Debian version. Ordering follows dpkg, so `1.0~rc1 < 1.0`.
#[derive(Clone, Debug, Eq)]
pub struct Version {
    /// The text as written, kept for display and for manifests.
    raw: String,
    epoch: u64,
    upstream: String,
    revision: String,
}

impl Version {
    /// Parses a version. Lenient like apt: anything non-empty parses, a
    /// missing or unparsable epoch counts as 0.
    pub fn parse(s: &str) -> Version {
        let raw = s.trim().to_owned();
        let (epoch, rest) = match raw.split_once(':') {
            Some((e, rest)) if e.chars().all(|c| c.is_ascii_digit()) && !e.is_empty() => {
                (e.parse().unwrap_or(0), rest)
            }
            _ => (0, raw.as_str()),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u.to_owned(), r.to_owned()),
            None => (rest.to_owned(), String::new()),
        };
        Version {
            epoch,
            upstream,
            revision,
            raw,
        }
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(&self.upstream, &other.upstream))
            .then_with(|| compare_part(&other.revision, &self.revision).reverse())
    }
}

/// Compares two version strings the way `dpkg --compare-versions` does.
pub fn compare(a: &str, b: &str) -> Ordering {
    Version::parse(a).cmp(&Version::parse(b))
}

/// Sort weight of one non-digit character: `~` sorts before everything,
/// even the end of the string; letters sort before other characters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`: alternating runs of non-digits (compared by weight)
/// and digits (compared numerically).
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            let (wa, wb) = (weight(ca), weight(cb));
            if wa != wb {
                return wa.cmp(&wb);
            }
            if ca.is_some() {
                i += 1;
            }
            if cb.is_some() {
                j += 1;
            }
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        let sj = j;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        // Leading zeros are gone, so a longer digit run is a bigger number.
        let (da, db) = (&a[si..i], &b[sj..j]);
        let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (a, b, expected ordering of a relative to b)
    const CASES: &[(&str, &str, Ordering)] = &[
        ("1.0", "1.0", Ordering::Equal),
        ("1.0", "1.00", Ordering::Equal),
        ("1.0-1", "1.0-01", Ordering::Equal),
        ("0:1.0", "1.0", Ordering::Equal),
        ("1.0", "1.1", Ordering::Less),
        ("1.10", "1.9", Ordering::Greater),
        ("1.0~rc1", "1.0", Ordering::Less),
        ("1.0~~", "1.0~", Ordering::Less),
        ("1.0~", "1.0", Ordering::Less),
        ("1.0", "1.0+b1", Ordering::Less),
        ("1.0", "1.0a", Ordering::Less),
        ("1.0a", "1.0+", Ordering::Less),
        ("1:0.1", "2.0", Ordering::Greater),
        ("2.0-1", "2.0-1+deb12u1", Ordering::Less),
        ("2.0-1~bpo12+1", "2.0-1", Ordering::Less),
        ("6.12.57-1", "6.16.12-1~bpo13+1", Ordering::Less),
        ("1.36.1-9", "1:1.30.1-6", Ordering::Less),
        ("2.41-12", "2.41-12+deb13u1", Ordering::Less),
        ("1.0-1", "1.0", Ordering::Greater),
        ("0.a", "0.b", Ordering::Less),
        ("1.2.3-a", "1.2.3-1", Ordering::Greater),
        ("10:1", "9:99", Ordering::Greater),
        ("1.0.0", "1.0", Ordering::Greater),
        ("3.0-2", "3.0-10", Ordering::Less),
    ];

    #[test]
    fn known_orderings() {
        for (a, b, want) in CASES {
            assert_eq!(compare(a, b), *want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// The host's dpkg is the reference implementation: every case must agree.
    #[test]
    fn agrees_with_dpkg() {
        let probe = std::process::Command::new("dpkg").arg("--version").output();
        assert!(
            probe.is_ok_and(|o| o.status.success()),
            "dpkg is needed as the oracle for version comparison"
        );
        for (a, b, _) in CASES {
            for (op, ord) in [
                ("lt", Ordering::Less),
                ("eq", Ordering::Equal),
                ("gt", Ordering::Greater),
            ] {
                let st = std::process::Command::new("dpkg")
                    .args(["--compare-versions", a, op, b])
                    .status()
                    .unwrap();
                assert_eq!(
                    st.success(),
                    compare(a, b) == ord,
                    "dpkg disagrees: {a} {op} {b}"
                );
            }
        }
    }
}
