//! Human-readable byte sizes (`"4GiB"`, `"512MiB"`, `"1G"`) as used in `[disk]`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written in TOML as a human string or a plain integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("K", 1_000),
    ("B", 1),
];

impl Size {
    /// A size of exactly `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Size(bytes)
    }

    /// A size of `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Size(n << 20)
    }

    /// A size of `n` gibibytes.
    pub const fn gib(n: u64) -> Self {
        Size(n << 30)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size '{0}': expected a number with an optional unit (B, KiB, MiB, GiB, TiB, K, M, G, T), like \"4GiB\""
)]
pub struct SizeError(String);

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SizeError(s.to_owned());
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        if num.is_empty() {
            return Err(err());
        }
        let n: u64 = num.parse().map_err(|_| err())?;
        let unit = unit.trim();
        let mult = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(u, _)| u.eq_ignore_ascii_case(unit) && (u.len() > 1 || unit.len() == 1))
                .map(|&(_, m)| m)
                .ok_or_else(err)?
        };
        n.checked_mul(mult).map(Size).ok_or_else(err)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= mult && self.0.is_multiple_of(mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: an integer number of bytes or a string with a unit (B, KiB, MiB, GiB, TiB; K, M, G, T are powers of 1000), like \"4GiB\".",
            "type": ["string", "integer"],
            "format": "byte-size",
            "minimum": 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_prints_the_largest_exact_one() {
        assert_eq!("4GiB".parse::<Size>().unwrap().bytes(), 4 << 30);
        assert_eq!("512 MiB".parse::<Size>().unwrap().bytes(), 512 << 20);
        assert_eq!("1G".parse::<Size>().unwrap().bytes(), 1_000_000_000);
        assert_eq!("1gib".parse::<Size>().unwrap(), Size::gib(1));
        assert_eq!("100".parse::<Size>().unwrap().bytes(), 100);
        assert_eq!(Size::mib(1536).to_string(), "1536MiB");
        assert_eq!(Size::gib(2).to_string(), "2GiB");
        assert_eq!(Size::from_bytes(1000).to_string(), "1000B");
        for bad in ["", "GiB", "4 parsecs", "-1G", "99999999999999TiB", "1.5G"] {
            assert!(bad.parse::<Size>().is_err(), "{bad} should not parse");
        }
    }
}
