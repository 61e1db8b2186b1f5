//! Structural check of a span-carrying profile tree against the JSON schema derived from
//! the types: unknown keys (with the closest known key), wrong types, bad enum values,
//! missing required keys, malformed sizes. Unlike serde it keeps going after the first
//! problem, so that every one is reported with its file and line.

use serde_json::{Map, Value};

use super::docs;
use super::problem::{Problem, did_you_mean};
use super::size::Size;
use super::source::{Kind, Origin, SValue, Sources};

/// Checks `root` against the profile schema, appending every problem found.
pub(crate) fn check(root: &SValue, sources: &Sources, problems: &mut Vec<Problem>) {
    let schema = docs::schema();
    let empty = Map::new();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let walker = Walker { defs, sources };
    walker.walk(&schema, root, "", problems);
}

struct Walker<'a> {
    defs: &'a Map<String, Value>,
    sources: &'a Sources,
}

/// What a TOML value is, as said in messages ("found an integer").
fn describe(v: &SValue) -> &'static str {
    match &v.kind {
        Kind::Scalar(toml::Value::String(_)) => "a string",
        Kind::Scalar(toml::Value::Integer(_)) => "an integer",
        Kind::Scalar(toml::Value::Float(_)) => "a float",
        Kind::Scalar(toml::Value::Boolean(_)) => "a boolean",
        Kind::Scalar(toml::Value::Datetime(_)) => "a date-time",
        Kind::Scalar(_) | Kind::Array(_) => "an array",
        Kind::Table(_) => "a table",
    }
}

fn json_type_name(t: &str) -> &'static str {
    match t {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean",
        "array" => "an array",
        "object" => "a table",
        _ => "a value",
    }
}

fn matches_type(v: &SValue, t: &str) -> bool {
    matches!(
        (t, &v.kind),
        ("string", Kind::Scalar(toml::Value::String(_)))
            | ("integer", Kind::Scalar(toml::Value::Integer(_)))
            | (
                "number",
                Kind::Scalar(toml::Value::Integer(_) | toml::Value::Float(_))
            )
            | ("boolean", Kind::Scalar(toml::Value::Boolean(_)))
            | ("array", Kind::Array(_))
            | ("object", Kind::Table(_))
    )
}

fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn is_null_schema(s: &Value) -> bool {
    s.get("type").and_then(Value::as_str) == Some("null")
}

impl<'a> Walker<'a> {
    fn resolve(&self, mut s: &'a Value) -> &'a Value {
        // Bounded: schemars never emits reference chains, but a cycle must not hang us.
        for _ in 0..16 {
            let Some(name) = s
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
            else {
                break;
            };
            match self.defs.get(name) {
                Some(d) => s = d,
                None => break,
            }
        }
        s
    }

    fn problem(&self, at: Origin, path: &str, message: String, hint: Option<String>) -> Problem {
        let mut p = self.sources.problem(at, path, message);
        p.hint = hint;
        p
    }

    fn walk(&self, schema: &'a Value, v: &SValue, path: &str, out: &mut Vec<Problem>) {
        let s = self.resolve(schema);
        if let Some(alts) = s
            .get("oneOf")
            .or_else(|| s.get("anyOf"))
            .and_then(Value::as_array)
        {
            let alts: Vec<&Value> = alts
                .iter()
                .map(|a| self.resolve(a))
                .filter(|a| !is_null_schema(a))
                .collect();
            return self.walk_alternatives(&alts, v, path, out);
        }
        if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
            let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            return self.check_enum(&allowed, v, path, out);
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => return, // no type: anything goes (free-form values)
        };
        if !types.iter().any(|t| matches_type(v, t)) {
            let expected: Vec<&str> = types.iter().map(|t| json_type_name(t)).collect();
            let message = format!("expected {}, found {}", expected.join(" or "), describe(v));
            out.push(self.problem(v.origin, path, message, None));
            return;
        }
        match &v.kind {
            Kind::Scalar(toml::Value::String(text))
                if s.get("format").and_then(Value::as_str) == Some("byte-size") =>
            {
                if let Err(e) = text.parse::<Size>() {
                    out.push(self.problem(v.origin, path, e.to_string(), None));
                }
            }
            Kind::Scalar(toml::Value::Integer(n)) => {
                if let Some(min) = s.get("minimum").and_then(Value::as_i64).filter(|m| n < m) {
                    out.push(self.problem(
                        v.origin,
                        path,
                        format!("must be at least {min}, found {n}"),
                        None,
                    ));
                }
            }
            Kind::Array(items) => {
                if let Some(item_schema) = s.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.walk(item_schema, item, &format!("{path}[{i}]"), out);
                    }
                }
            }
            Kind::Table(_) => self.walk_table(s, v, path, out),
            Kind::Scalar(_) => {}
        }
    }

    fn walk_table(&self, s: &'a Value, v: &SValue, path: &str, out: &mut Vec<Problem>) {
        let Kind::Table(entries) = &v.kind else {
            return;
        };
        let empty = Map::new();
        let props = s
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let additional = s.get("additionalProperties");
        for (key, entry) in entries {
            let key_path = join_path(path, key);
            if let Some(prop) = props.get(key) {
                self.walk(prop, &entry.value, &key_path, out);
                continue;
            }
            match additional {
                Some(Value::Bool(false)) => {
                    let hint = did_you_mean(key, props.keys().map(String::as_str));
                    out.push(self.problem(entry.key, &key_path, "unknown key".into(), hint));
                }
                Some(extra @ Value::Object(_)) => self.walk(extra, &entry.value, &key_path, out),
                _ => {}
            }
        }
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !entries.contains_key(req) {
                let what = props
                    .get(req)
                    .map(|p| self.resolve(p))
                    .and_then(|p| p.get("type"))
                    .and_then(Value::as_str);
                let message = match what {
                    Some("object") => format!("missing required table [{}]", join_path(path, req)),
                    _ => "missing required key".to_owned(),
                };
                out.push(self.problem(v.origin, &join_path(path, req), message, None));
            }
        }
    }

    fn walk_alternatives(
        &self,
        alts: &[&'a Value],
        v: &SValue,
        path: &str,
        out: &mut Vec<Problem>,
    ) {
        let consts: Vec<&str> = alts
            .iter()
            .filter_map(|a| a.get("const").and_then(Value::as_str))
            .collect();
        if !consts.is_empty() && consts.len() == alts.len() {
            return self.check_enum(&consts, v, path, out);
        }
        if let [only] = alts {
            return self.walk(only, v, path, out);
        }
        // Externally tagged enums ({ file = ".." } | { env = ".." }): pick the variant by key.
        let tags: Vec<&str> = alts
            .iter()
            .filter_map(|a| {
                match a
                    .get("required")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                {
                    Some([Value::String(tag)]) => Some(tag.as_str()),
                    _ => None,
                }
            })
            .collect();
        if tags.len() == alts.len() {
            let forms: Vec<String> = tags.iter().map(|t| format!("{{ {t} = ... }}")).collect();
            let expected = format!("expected one of {}", forms.join(", "));
            let Kind::Table(entries) = &v.kind else {
                out.push(self.problem(
                    v.origin,
                    path,
                    format!("{expected}, found {}", describe(v)),
                    None,
                ));
                return;
            };
            let mut keys = entries.keys();
            match (keys.next(), keys.next()) {
                (Some(key), None) => match tags.iter().position(|t| t == key) {
                    Some(i) => self.walk(alts[i], v, path, out),
                    None => {
                        let hint = did_you_mean(key, tags.iter().copied());
                        let at = entries.get(key).map_or(v.origin, |e| e.key);
                        out.push(self.problem(
                            at,
                            &join_path(path, key),
                            format!("unknown key; {expected}"),
                            hint,
                        ));
                    }
                },
                _ => out.push(self.problem(
                    v.origin,
                    path,
                    format!("{expected} (exactly one key)"),
                    None,
                )),
            }
            return;
        }
        // Anything else: the value is fine if one alternative accepts it; otherwise report
        // the alternative that came closest.
        let mut best: Option<Vec<Problem>> = None;
        for alt in alts {
            let mut found = Vec::new();
            self.walk(alt, v, path, &mut found);
            if found.is_empty() {
                return;
            }
            if best.as_ref().is_none_or(|b| found.len() < b.len()) {
                best = Some(found);
            }
        }
        out.extend(best.unwrap_or_default());
    }

    fn check_enum(&self, allowed: &[&str], v: &SValue, path: &str, out: &mut Vec<Problem>) {
        let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
        let expected = format!("expected one of {}", quoted.join(", "));
        match &v.kind {
            Kind::Scalar(toml::Value::String(s)) if allowed.contains(&s.as_str()) => {}
            Kind::Scalar(toml::Value::String(s)) => {
                let hint = did_you_mean(s, allowed.iter().copied());
                out.push(self.problem(
                    v.origin,
                    path,
                    format!("invalid value '{s}': {expected}"),
                    hint,
                ));
            }
            _ => out.push(self.problem(
                v.origin,
                path,
                format!("{expected}, found {}", describe(v)),
                None,
            )),
        }
    }
}
