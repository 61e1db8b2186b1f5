//! Reading profile files into a span-carrying value tree: `extends` chains, deep merge
//! and `--set` overrides, remembering for every key which file and line it came from.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::problem::{Location, Problem};

/// All the texts a profile was assembled from, to turn byte offsets into lines.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    files: Vec<(String, String)>,
}

/// A byte offset in one of the [`Sources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    src: usize,
    offset: usize,
}

impl Sources {
    fn add(&mut self, name: String, text: String) -> usize {
        self.files.push((name, text));
        self.files.len() - 1
    }

    /// The file, line and column of an origin.
    pub(crate) fn location(&self, o: Origin) -> Location {
        let (name, text) = &self.files[o.src];
        let before = &text[..o.offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            file: name.clone(),
            line,
            column: before[line_start..].chars().count() + 1,
        }
    }

    /// The start of a source, for problems about a whole file.
    pub(crate) fn start(&self, src: usize) -> Origin {
        Origin { src, offset: 0 }
    }

    pub(crate) fn problem(&self, o: Origin, path: &str, message: impl Into<String>) -> Problem {
        Problem {
            location: self.location(o),
            path: path.to_owned(),
            message: message.into(),
            hint: None,
        }
    }
}

/// A TOML value that remembers where it was written.
#[derive(Debug, Clone)]
pub(crate) struct SValue {
    pub origin: Origin,
    pub kind: Kind,
}

/// The shape of an [`SValue`].
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Scalar(toml::Value),
    Array(Vec<SValue>),
    Table(BTreeMap<String, Entry>),
}

/// A table entry: where its key was written, and its value.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: Origin,
    pub value: SValue,
}

impl SValue {
    /// The value without spans, for serde.
    pub(crate) fn to_toml(&self) -> toml::Value {
        match &self.kind {
            Kind::Scalar(v) => v.clone(),
            Kind::Array(items) => toml::Value::Array(items.iter().map(SValue::to_toml).collect()),
            Kind::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|(k, e)| (k.clone(), e.value.to_toml()))
                    .collect(),
            ),
        }
    }

    /// The entry at a key path (`["nodes", "2", "mac"]`), following array indices.
    pub(crate) fn lookup(&self, path: &[&str]) -> Option<(Origin, &SValue)> {
        let mut cur = self;
        let mut key = self.origin;
        for seg in path {
            match &cur.kind {
                Kind::Table(t) => {
                    let e = t.get(*seg)?;
                    key = e.key;
                    cur = &e.value;
                }
                Kind::Array(items) => {
                    cur = items.get(seg.parse::<usize>().ok()?)?;
                    key = cur.origin;
                }
                Kind::Scalar(_) => return None,
            }
        }
        Some((key, cur))
    }
}

/// Reads `path` and every profile it extends, merged, parent first.
pub(crate) fn load_file(
    path: &Path,
    sources: &mut Sources,
    problems: &mut Vec<Problem>,
) -> Option<SValue> {
    load_chain(path, None, &mut Vec::new(), sources, problems)
}

fn load_chain(
    path: &Path,
    referrer: Option<(Origin, &str)>,
    stack: &mut Vec<PathBuf>,
    sources: &mut Sources,
    problems: &mut Vec<Problem>,
) -> Option<SValue> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let message = format!("cannot read profile {name}: {e}");
            problems.push(match referrer {
                Some((o, p)) => sources.problem(o, p, message),
                None => Problem {
                    location: Location {
                        file: name,
                        line: 1,
                        column: 1,
                    },
                    path: String::new(),
                    message,
                    hint: None,
                },
            });
            return None;
        }
    };
    let src = sources.add(name, text.clone());
    let (doc, errors) = DeTable::parse_recoverable(&text);
    for e in &errors {
        let offset = e.span().map_or(0, |s| s.start);
        let msg = e.message().trim().to_owned();
        problems.push(sources.problem(Origin { src, offset }, "", format!("invalid TOML: {msg}")));
    }
    if !errors.is_empty() {
        return None;
    }
    let span = doc.span();
    let mut root = table_value(src, doc.into_inner(), span.start, sources, problems);
    let Kind::Table(entries) = &mut root.kind else {
        return Some(root);
    };
    let Some(ext) = entries.remove("extends") else {
        return Some(root);
    };
    let Kind::Scalar(toml::Value::String(rel)) = &ext.value.kind else {
        problems.push(sources.problem(
            ext.value.origin,
            "extends",
            "expected a string (a path relative to this file)",
        ));
        return Some(root);
    };
    let parent_path = normalize(&path.parent().unwrap_or(Path::new(".")).join(rel));
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    stack.push(canonical);
    let parent_canonical =
        std::fs::canonicalize(&parent_path).unwrap_or_else(|_| parent_path.clone());
    let parent = if stack.contains(&parent_canonical) {
        let chain: Vec<String> = stack.iter().map(|p| p.display().to_string()).collect();
        problems.push(sources.problem(
            ext.value.origin,
            "extends",
            format!(
                "extends cycle: {} -> {}",
                chain.join(" -> "),
                parent_canonical.display()
            ),
        ));
        None
    } else {
        load_chain(
            &parent_path,
            Some((ext.value.origin, "extends")),
            stack,
            sources,
            problems,
        )
    };
    stack.pop();
    Some(match parent {
        Some(p) => merge(p, root),
        None => root,
    })
}

/// Lexically removes `.` and `..` so that messages name `profiles/base.toml`,
/// not `profiles/examples/../base.toml`.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Child over parent: tables merge key by key, anything else in the child replaces.
pub(crate) fn merge(parent: SValue, child: SValue) -> SValue {
    match (parent.kind, child.kind) {
        (Kind::Table(mut p), Kind::Table(c)) => {
            for (k, ce) in c {
                let merged = match p.remove(&k) {
                    Some(pe) if matches!(pe.value.kind, Kind::Table(_)) => Entry {
                        key: ce.key,
                        value: merge(pe.value, ce.value),
                    },
                    _ => ce,
                };
                p.insert(k, merged);
            }
            SValue {
                origin: child.origin,
                kind: Kind::Table(p),
            }
        }
        (_, kind) => SValue {
            origin: child.origin,
            kind,
        },
    }
}

fn table_value(
    src: usize,
    table: DeTable<'_>,
    offset: usize,
    sources: &Sources,
    problems: &mut Vec<Problem>,
) -> SValue {
    let entries = table
        .into_iter()
        .map(|(k, v)| {
            let key = Origin {
                src,
                offset: k.span().start,
            };
            (
                k.into_inner().into_owned(),
                Entry {
                    key,
                    value: convert(src, v, sources, problems),
                },
            )
        })
        .collect();
    SValue {
        origin: Origin { src, offset },
        kind: Kind::Table(entries),
    }
}

fn convert(
    src: usize,
    v: Spanned<DeValue<'_>>,
    sources: &Sources,
    problems: &mut Vec<Problem>,
) -> SValue {
    let offset = v.span().start;
    let origin = Origin { src, offset };
    match v.into_inner() {
        DeValue::Table(t) => table_value(src, t, offset, sources, problems),
        DeValue::Array(a) => SValue {
            origin,
            kind: Kind::Array(
                a.into_iter()
                    .map(|i| convert(src, i, sources, problems))
                    .collect(),
            ),
        },
        scalar => {
            let spanned = Spanned::new(offset..offset, scalar);
            match toml::Value::deserialize(serde::de::IntoDeserializer::into_deserializer(spanned))
            {
                Ok(value) => SValue {
                    origin,
                    kind: Kind::Scalar(value),
                },
                Err(e) => {
                    problems.push(sources.problem(
                        origin,
                        "",
                        format!("invalid value: {}", e.message()),
                    ));
                    SValue {
                        origin,
                        kind: Kind::Scalar(toml::Value::Boolean(false)),
                    }
                }
            }
        }
    }
}

/// Applies one `--set key.path=value` override; the value is read as TOML and, if that
/// fails, taken as a string (so `--set k3s.version=v1.36.4+k3s1` needs no quotes).
pub(crate) fn apply_set(
    root: &mut SValue,
    set: &str,
    sources: &mut Sources,
    problems: &mut Vec<Problem>,
) {
    let src = sources.add("--set".into(), set.to_owned());
    let Some((path, raw)) = set.split_once('=') else {
        problems.push(sources.problem(
            sources.start(src),
            "",
            format!("'{set}' is not of the form key.path=value"),
        ));
        return;
    };
    let key = Origin { src, offset: 0 };
    let origin = Origin {
        src,
        offset: path.len() + 1,
    };
    let value = match DeValue::parse(raw.trim()) {
        Ok(v) if !matches!(v.get_ref(), DeValue::Table(_)) || raw.trim_start().starts_with('{') => {
            let mut ignored = Vec::new();
            let mut sv = convert(
                src,
                Spanned::new(0..0, v.into_inner()),
                sources,
                &mut ignored,
            );
            shift(&mut sv, origin);
            sv
        }
        _ => SValue {
            origin,
            kind: Kind::Scalar(toml::Value::String(raw.to_owned())),
        },
    };
    let segments: Vec<&str> = path.trim().split('.').map(str::trim).collect();
    if segments.iter().any(|s| s.is_empty()) {
        problems.push(sources.problem(key, path, "empty key in --set path"));
        return;
    }
    let mut cur = root;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let here = segments[..=i].join(".");
        match &mut cur.kind {
            Kind::Table(t) => {
                if last {
                    t.insert((*seg).to_owned(), Entry { key, value });
                    return;
                }
                cur = &mut t
                    .entry((*seg).to_owned())
                    .or_insert_with(|| Entry {
                        key,
                        value: SValue {
                            origin: key,
                            kind: Kind::Table(BTreeMap::new()),
                        },
                    })
                    .value;
            }
            Kind::Array(items) => {
                let Some(item) = seg.parse::<usize>().ok().and_then(|n| items.get_mut(n)) else {
                    problems.push(sources.problem(key, &here, "no such array element"));
                    return;
                };
                if last {
                    *item = value;
                    return;
                }
                cur = item;
            }
            Kind::Scalar(_) => {
                problems.push(sources.problem(
                    key,
                    &here,
                    "cannot set a key inside a value that is not a table",
                ));
                return;
            }
        }
    }
}

/// Values parsed from a `--set` are parsed on their own; point them all at the value.
fn shift(v: &mut SValue, origin: Origin) {
    v.origin = origin;
    match &mut v.kind {
        Kind::Array(items) => items.iter_mut().for_each(|i| shift(i, origin)),
        Kind::Table(t) => t.values_mut().for_each(|e| {
            e.key = origin;
            shift(&mut e.value, origin);
        }),
        Kind::Scalar(_) => {}
    }
}
