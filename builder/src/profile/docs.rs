//! The profile's JSON schema and the Markdown reference generated from it.

use serde_json::Value;

use super::Profile;

/// The JSON schema of [`Profile`], the single source of truth for known keys.
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(Profile).to_value()
}

/// The resolved-profile schema as checked in at `profiles/resolved-profile.schema.json`:
/// what `labimg profile show --resolved` prints satisfies it (required keys required).
pub fn schema_json() -> String {
    pretty(&schema())
}

/// The schema a profile *file* satisfies, for editors (`profiles/profile.schema.json`):
/// the resolved schema with nothing required, since `extends` can supply any key.
/// Unknown keys and wrong types are still errors.
pub fn file_schema() -> Value {
    fn strip_required(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("required");
                map.values_mut().for_each(strip_required);
            }
            Value::Array(items) => items.iter_mut().for_each(strip_required),
            _ => {}
        }
    }
    let mut s = schema();
    strip_required(&mut s);
    if let Some(map) = s.as_object_mut() {
        map.insert("title".into(), "labimg profile file".into());
        map.insert(
            "description".into(),
            "One labimg profile file as written, before `extends` and `--set` are applied: \
             every key is optional (a parent may supply it), unknown keys are errors. \
             `labimg profile validate` checks the resolved profile."
                .into(),
        );
    }
    s
}

/// [`file_schema`] as checked in at `profiles/profile.schema.json`.
pub fn file_schema_json() -> String {
    pretty(&file_schema())
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// The Markdown reference (`profiles/REFERENCE.md`): every key with its type, default,
/// allowed values and documentation, generated from [`schema`].
pub fn reference_markdown() -> String {
    let schema = schema();
    let empty = serde_json::Map::new();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut md = Ref {
        defs,
        out: String::new(),
    };
    md.out.push_str(
        "# Profile reference\n\n\
         <!-- Generated from the profile types by `UPDATE_GOLDEN=1 cargo test -p labimg-builder --test profile_docs`; do not edit. -->\n\n\
         A profile is a TOML file describing one node image (`labimg build --profile <name>` reads\n\
         `profiles/<name>.toml`). `extends` layers it on a parent; `--set key.path=value` overrides\n\
         any key. The machine-readable forms are `profile.schema.json` (a profile file as\n\
         written, for editors: every key optional) and `resolved-profile.schema.json` (a\n\
         resolved profile, `labimg profile show --resolved`).\n\n\
         ## Editor support\n\n\
         Every shipped profile starts with `#:schema ./profile.schema.json` (taplo's schema\n\
         directive, honoured by the Even Better TOML extension for VS Code, taplo's language\n\
         server in Neovim/Helix/Zed, and tombi), and `.taplo.toml` at the repository root\n\
         maps `profiles/**/*.toml` to the same schema for profiles without the line: keys are\n\
         completed and documented as you type, and a typo is underlined before any build.\n\
         Start your own profile with the same line (a path relative to the file).\n",
    );
    md.section("", "Top level", &schema);
    md.out
}

struct Ref<'a> {
    defs: &'a serde_json::Map<String, Value>,
    out: String,
}

impl<'a> Ref<'a> {
    fn resolve(&self, s: &'a Value) -> &'a Value {
        let name = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"));
        name.and_then(|n| self.defs.get(n)).unwrap_or(s)
    }

    /// `Option<T>` is `anyOf [T, null]`: the T.
    fn unwrap_option(&self, s: &'a Value) -> &'a Value {
        let s = self.resolve(s);
        match s.get("anyOf").and_then(Value::as_array).map(Vec::as_slice) {
            Some([t, n]) if n.get("type").and_then(Value::as_str) == Some("null") => {
                self.resolve(t)
            }
            _ => s,
        }
    }

    fn is_struct(&self, s: &Value) -> bool {
        s.get("properties").is_some() && s.get("additionalProperties") == Some(&Value::Bool(false))
    }

    fn section(&mut self, path: &str, title: &str, s: &'a Value) {
        self.out.push_str(&format!("\n## {title}\n\n"));
        if let Some(d) = s.get("description").and_then(Value::as_str) {
            self.out.push_str(&format!("{d}\n\n"));
        }
        let Some(props) = s.get("properties").and_then(Value::as_object) else {
            return;
        };
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut subsections = Vec::new();
        for (key, prop) in props {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let inner = self.unwrap_option(prop);
            let item = inner.get("items").map(|i| self.resolve(i));
            if self.is_struct(inner) {
                subsections.push((full.clone(), format!("`[{full}]`"), inner));
            } else if let Some(item) = item.filter(|i| self.is_struct(i)) {
                subsections.push((format!("{full}[]"), format!("`[[{full}]]`"), item));
            }
            self.key(&full, prop, inner, required.contains(&key.as_str()));
        }
        for (p, t, s) in subsections {
            self.section(&p, &t, s);
        }
    }

    fn key(&mut self, full: &str, prop: &Value, inner: &'a Value, required: bool) {
        self.out.push_str(&format!("### `{full}`\n\n"));
        self.out
            .push_str(&format!("- type: {}\n", self.type_of(inner)));
        if required {
            self.out.push_str("- required\n");
        } else if let Some(d) = prop.get("default").filter(|_| !self.is_struct(inner)) {
            self.out
                .push_str(&format!("- default: `{}`\n", toml_literal(d)));
        }
        if let Some(allowed) = self.allowed(inner) {
            self.out
                .push_str(&format!("- allowed: {}\n", allowed.join(", ")));
        }
        let doc = prop
            .get("description")
            .or_else(|| inner.get("description"))
            .and_then(Value::as_str);
        self.out
            .push_str(&format!("\n{}\n\n", doc.unwrap_or("(undocumented)")));
    }

    /// Values of a string enum, each with its own documentation.
    fn allowed(&self, s: &'a Value) -> Option<Vec<String>> {
        let s = self.resolve(s);
        let alts = s.get("oneOf").and_then(Value::as_array)?;
        let consts: Vec<String> = alts
            .iter()
            .filter_map(|a| {
                let c = a.get("const")?.as_str()?;
                Some(match a.get("description").and_then(Value::as_str) {
                    Some(d) => format!("`\"{c}\"` ({})", d.trim_end_matches('.')),
                    None => format!("`\"{c}\"`"),
                })
            })
            .collect();
        (consts.len() == alts.len()).then_some(consts)
    }

    fn type_of(&self, s: &'a Value) -> String {
        let s = self.unwrap_option(s);
        if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
            if alts.iter().all(|a| a.get("const").is_some()) {
                return "string".into();
            }
            let forms: Vec<String> = alts
                .iter()
                .filter_map(|a| {
                    a.get("required")?
                        .as_array()?
                        .first()?
                        .as_str()
                        .map(|k| format!("`{{ {k} = \"...\" }}`"))
                })
                .collect();
            return format!("table, one of {}", forms.join(", "));
        }
        if let Some(alts) = s.get("anyOf").and_then(Value::as_array) {
            let types: Vec<String> = alts.iter().map(|a| self.type_of(a)).collect();
            return types.join(" or ");
        }
        if s.get("format").and_then(Value::as_str) == Some("byte-size") {
            return "size (string like `\"4GiB\"` or integer bytes)".into();
        }
        let ty = match s.get("type") {
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
            Some(t) => t.as_str(),
            None => None,
        };
        match ty {
            Some("array") => match s.get("items") {
                Some(i) if self.is_struct(self.resolve(i)) => "array of tables".into(),
                Some(i) => format!("array of {}", self.type_of(i)),
                None => "array".into(),
            },
            Some("object") if self.is_struct(s) => "table".into(),
            Some("object") => match s.get("additionalProperties") {
                Some(Value::Object(v)) if !v.is_empty() => {
                    format!("table of {}", self.type_of(&s["additionalProperties"]))
                }
                _ => "table (free-form)".into(),
            },
            Some(t) => t.into(),
            None => "any".into(),
        }
    }
}

/// A JSON default written the way it would be in the TOML file.
fn toml_literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => {
            let kv: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_literal(v)))
                .collect();
            if kv.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{ {} }}", kv.join(", "))
            }
        }
        other => other.to_string(),
    }
}
