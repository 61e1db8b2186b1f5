//! Dependency fields (`Depends`, `Pre-Depends`, `Provides`): parsing into
//! relations and checking a version against a relation's constraint.

use std::cmp::Ordering;
use std::fmt;

use super::version::Version;

/// A version relation operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<<`
    Lt,
    /// `<=`
    Le,
    /// `=`
    Eq,
    /// `>=`
    Ge,
    /// `>>`
    Gt,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }

    /// Whether `have OP want` holds.
    pub fn holds(self, have: &Version, want: &Version) -> bool {
        let o = have.cmp(want);
        match self {
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Eq => o == Ordering::Equal,
            Op::Ge => o != Ordering::Less,
            Op::Gt => o == Ordering::Greater,
        }
    }
}

/// One relation: `name[:arch] [(op version)]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    /// Architecture qualifier (`any`, `native`, or an architecture name).
    pub arch: Option<String>,
    pub constraint: Option<(Op, Version)>,
}

impl Relation {
    /// Whether a package (or a provided name) at `version` satisfies the
    /// constraint. An unversioned provide (`None`) only satisfies an
    /// unconstrained relation, as in apt.
    pub fn accepts(&self, version: Option<&Version>) -> bool {
        match (&self.constraint, version) {
            (None, _) => true,
            (Some((op, want)), Some(have)) => op.holds(have, want),
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(a) = &self.arch {
            write!(f, ":{a}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({} {v})", op.as_str())?;
        }
        Ok(())
    }
}

/// A list of alternatives (`a | b (>= 1)`): any one satisfies it.
pub type Alternatives = Vec<Relation>;

/// Parses one relation such as `libc6:any (>= 2.34)`.
pub fn parse_relation(s: &str) -> Result<Relation, String> {
    let s = s.trim();
    // Build profiles (`<!nocheck>`) and arch restrictions (`[amd64]`) appear
    // only in source stanzas; drop them rather than misparse them.
    let mut depth = 0;
    let cut = s
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth == 0 && matches!(c, '[' | '<')
        })
        .map_or(s.len(), |(i, _)| i);
    let s = s[..cut].trim();
    let (head, constraint) = match s.split_once('(') {
        Some((head, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("unclosed '(' in relation {s:?}"))?
                .trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .ok_or_else(|| format!("missing version in relation {s:?}"))?;
            let (op, ver) = inner.split_at(split);
            let op = Op::parse(op.trim())
                .ok_or_else(|| format!("unknown operator {op:?} in relation {s:?}"))?;
            let ver = ver.trim();
            if ver.is_empty() {
                return Err(format!("missing version in relation {s:?}"));
            }
            (head.trim(), Some((op, Version::parse(ver))))
        }
        None => (s, None),
    };
    if head.is_empty() || head.contains(char::is_whitespace) {
        return Err(format!("bad package name in relation {s:?}"));
    }
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n, Some(a.to_owned())),
        None => (head, None),
    };
    Ok(Relation {
        name: name.to_owned(),
        arch,
        constraint,
    })
}

/// Parses a whole `Depends`-style field into its comma-separated groups of
/// `|`-separated alternatives.
pub fn parse_depends(field: &str) -> Result<Vec<Alternatives>, String> {
    field
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| g.split('|').map(parse_relation).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_alternatives_versions_and_qualifiers() {
        let d = parse_depends(
            "libc6 (>= 2.34), libgcc-s1 (>> 3.0) | libgcc1,  python3:any, debconf (>= 0.5) | debconf-2.0,zlib1g (= 1:1.3.dfsg-3+b1)",
        )
        .unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d[0][0].name, "libc6");
        assert_eq!(d[0][0].constraint, Some((Op::Ge, Version::parse("2.34"))));
        assert_eq!(d[1].len(), 2);
        assert_eq!(d[1][0].constraint.as_ref().map(|c| c.0), Some(Op::Gt));
        assert_eq!(d[1][1].name, "libgcc1");
        assert_eq!(d[2][0].name, "python3");
        assert_eq!(d[2][0].arch.as_deref(), Some("any"));
        assert_eq!(d[4][0].to_string(), "zlib1g (= 1:1.3.dfsg-3+b1)");
        assert!(d[4][0].accepts(Some(&Version::parse("1:1.3.dfsg-3+b1"))));
        assert!(!d[4][0].accepts(Some(&Version::parse("1.3.dfsg-3+b1"))));
    }

    #[test]
    fn every_operator_holds_as_dpkg_says() {
        let r = |s: &str| parse_relation(s).unwrap();
        let v = |s: &str| Version::parse(s);
        assert!(r("a (<< 2)").accepts(Some(&v("1.9"))));
        assert!(!r("a (<< 2)").accepts(Some(&v("2"))));
        assert!(r("a (<= 2)").accepts(Some(&v("2"))));
        assert!(r("a (>= 2~)").accepts(Some(&v("2~rc1"))));
        assert!(!r("a (>= 2)").accepts(Some(&v("2~rc1"))));
        assert!(r("a (>> 2)").accepts(Some(&v("2+b1"))));
        assert!(!r("a (>> 2)").accepts(Some(&v("2"))));
        assert!(r("a(>=1)").accepts(Some(&v("1"))));
        assert!(
            !r("a (>= 1)").accepts(None),
            "unversioned provides never satisfy a version"
        );
        assert!(r("a").accepts(None));
        assert_eq!(r("a (<< 2) [amd64] <!nocheck>").to_string(), "a (<< 2)");
    }

    #[test]
    fn malformed_relations_are_errors() {
        assert!(parse_relation("a (>= 1").is_err());
        assert!(parse_relation("a (~~ 1)").is_err());
        assert!(parse_relation("a (>=)").is_err());
        assert!(parse_relation("").is_err());
        assert!(parse_relation("a b").is_err());
    }
}
