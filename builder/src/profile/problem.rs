//! Validation problems: where each one is (file, line, column, key path) and what is wrong.

use std::fmt;

/// A position in a profile source: a file (or `--set`) with a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file as it was named (or `--set` for a command-line override).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One thing wrong with a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the offending key or value was written.
    pub location: Location,
    /// Dotted key path, like `k3s.version` or `nodes[2].mac` (empty for the whole file).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when that is obvious.
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in a profile, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProfileErrors(pub Vec<Problem>);

impl fmt::Display for ProfileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ProfileErrors {
    /// Sorts problems by file, line and column, dropping exact duplicates
    /// (a parent's mistake seen again through a second child is still one mistake).
    pub(crate) fn sorted(mut problems: Vec<Problem>) -> Self {
        problems.sort_by(|a, b| a.location.cmp(&b.location).then(a.path.cmp(&b.path)));
        problems.dedup();
        ProfileErrors(problems)
    }
}

/// The closest of `candidates` to `got`, phrased as a hint, when one is close enough
/// to be a plausible misspelling.
pub(crate) fn did_you_mean<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(got, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean '{c}'?"))
}
