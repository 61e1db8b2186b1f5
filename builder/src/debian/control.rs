//! The deb822 control-file format shared by `InRelease`, `Packages` and a
//! `.deb`'s `control` file: blank-line separated stanzas of `Field: value`
//! lines, with continuation lines starting with a space or tab.

/// One stanza: fields in file order. Field names compare case-insensitively.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stanza {
    fields: Vec<(String, String)>,
}

impl Stanza {
    /// The value of a field (continuation lines joined with `\n`), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All fields in file order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Parses all stanzas of a control file. Lines that are neither fields nor
/// continuations (and PGP armour, which callers strip first) are errors, so a
/// truncated or foreign file is not half-read silently.
pub fn parse(text: &str) -> Result<Vec<Stanza>, String> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let (_, v) = cur
                .fields
                .last_mut()
                .ok_or_else(|| format!("line {}: continuation line before any field", n + 1))?;
            if !v.is_empty() {
                v.push('\n');
            }
            v.push_str(line.trim());
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected 'Field: value', got {line:?}", n + 1))?;
        cur.fields.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_fields_and_continuations() {
        let s =
            parse("Package: a\nDescription: x\n more\n .\n\n\nPackage: b\nversion: 1\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].get("package"), Some("a"));
        assert_eq!(s[0].get("Description"), Some("x\nmore\n."));
        assert_eq!(s[1].get("Version"), Some("1"));
        assert_eq!(s[1].get("Depends"), None);
        assert!(parse(" orphan\n").is_err());
        assert!(parse("Package a\n").is_err());
    }
}
