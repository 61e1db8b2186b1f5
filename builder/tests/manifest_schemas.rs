//! Every manifest labimg renders validates against the upstream schema of the
//! version it pins: the CRDs of k3s's helm-controller, Flux, Argo CD and
//! Cilium, and the Cilium chart's `values.schema.json` for the `valuesContent`
//! labimg hands that chart. The schemas are checked-in fixtures
//! (`tests/fixtures/schemas/`, sources in its README.md, `refresh.sh` to
//! update them). Seeded mistakes show the check can fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use labimg_builder::nodecfg;
use serde_json::{Value, json};

mod common;

use common::{examples, load_renderable, profiles_dir};

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemas")
}

/// (apiVersion, kind, schema file) for every kind labimg renders.
const CRDS: &[(&str, &str, &str)] = &[
    (
        "helm.cattle.io/v1",
        "HelmChart",
        "helm.cattle.io_v1_helmchart.json",
    ),
    (
        "source.toolkit.fluxcd.io/v1",
        "GitRepository",
        "source.toolkit.fluxcd.io_v1_gitrepository.json",
    ),
    (
        "kustomize.toolkit.fluxcd.io/v1",
        "Kustomization",
        "kustomize.toolkit.fluxcd.io_v1_kustomization.json",
    ),
    (
        "argoproj.io/v1alpha1",
        "Application",
        "argoproj.io_v1alpha1_application.json",
    ),
    (
        "cilium.io/v2alpha1",
        "CiliumLoadBalancerIPPool",
        "cilium.io_v2alpha1_ciliumloadbalancerippool.json",
    ),
    (
        "cilium.io/v2alpha1",
        "CiliumL2AnnouncementPolicy",
        "cilium.io_v2alpha1_ciliuml2announcementpolicy.json",
    ),
];

/// The part of ObjectMeta a manifest may set: CRD schemas say only
/// `metadata: {type: object}` because the API server checks it itself.
fn object_meta() -> Value {
    let strings = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "type": "object",
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "namespace": {"type": "string", "minLength": 1},
            "labels": strings,
            "annotations": strings,
            "finalizers": {"type": "array", "items": {"type": "string"}},
        },
    })
}

/// Makes a structural CRD schema strict: an object with `properties` and no
/// `additionalProperties`/`x-kubernetes-preserve-unknown-fields` refuses
/// unknown fields. The API server would prune such a field without a word
/// (k3s's deploy controller does not ask for strict field validation), so a
/// misspelt field would silently do nothing.
fn strict(node: &mut Value) {
    match node {
        Value::Object(map) => {
            let is_object = map.get("type") == Some(&json!("object"));
            let open = map.contains_key("additionalProperties")
                || map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if is_object && map.contains_key("properties") && !open {
                map.insert("additionalProperties".into(), json!(false));
            }
            map.values_mut().for_each(strict);
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

fn read_json(file: &str) -> Value {
    let path = schema_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

struct Schemas {
    kinds: BTreeMap<(String, String), jsonschema::Validator>,
    cilium_values: jsonschema::Validator,
}

impl Schemas {
    fn load() -> Self {
        let mut kinds = BTreeMap::new();
        for (api_version, kind, file) in CRDS {
            let mut schema = read_json(file);
            schema.as_object_mut().unwrap().remove("$comment");
            strict(&mut schema);
            let props = &mut schema["properties"];
            props["apiVersion"] = json!({"const": api_version});
            props["kind"] = json!({"const": kind});
            props["metadata"] = object_meta();
            let v = jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{file} is not a usable schema: {e}"));
            kinds.insert((api_version.to_string(), kind.to_string()), v);
        }
        // Core v1 objects labimg renders, checked only for shape.
        let namespace = json!({
            "type": "object",
            "required": ["apiVersion", "kind", "metadata"],
            "additionalProperties": false,
            "properties": {
                "apiVersion": {"const": "v1"},
                "kind": {"const": "Namespace"},
                "metadata": object_meta(),
            },
        });
        kinds.insert(
            ("v1".into(), "Namespace".into()),
            jsonschema::validator_for(&namespace).unwrap(),
        );
        let cilium_values = jsonschema::validator_for(&read_json("cilium-values.schema.json"))
            .expect("cilium-values.schema.json is not a usable schema");
        Schemas {
            kinds,
            cilium_values,
        }
    }

    /// Problems with one manifest object, `path: message` each; an object of
    /// a kind without a schema is a problem too (add its schema).
    fn check(&self, doc: &Value) -> Vec<String> {
        let key = (
            doc["apiVersion"].as_str().unwrap_or_default().to_owned(),
            doc["kind"].as_str().unwrap_or_default().to_owned(),
        );
        let Some(v) = self.kinds.get(&key) else {
            return vec![format!(
                "no upstream schema for {} {} in tests/fixtures/schemas/",
                key.0, key.1
            )];
        };
        let mut out = problems(v, doc);
        if is_cilium_chart(doc) {
            match doc["spec"]["valuesContent"].as_str() {
                Some(text) => out.extend(
                    self.check_cilium_values(text)
                        .into_iter()
                        .map(|p| format!("spec.valuesContent: {p}")),
                ),
                None => out.push("the cilium HelmChart has no spec.valuesContent string".into()),
            }
        }
        out
    }

    fn check_cilium_values(&self, text: &str) -> Vec<String> {
        match serde_saphyr::from_str::<Value>(text) {
            Ok(values) => problems(&self.cilium_values, &values),
            Err(e) => vec![format!("not valid YAML: {e}")],
        }
    }
}

fn is_cilium_chart(doc: &Value) -> bool {
    doc["kind"] == "HelmChart" && doc["metadata"]["name"] == "cilium"
}

fn problems(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Every example and every shipped profile, by name.
fn profiles() -> Vec<(String, PathBuf)> {
    let mut out = examples();
    for shipped in ["pi5", "proxmox"] {
        out.push((
            shipped.to_owned(),
            profiles_dir().join(format!("{shipped}.toml")),
        ));
    }
    out
}

/// Every object in every rendered `manifests/*.yaml`, labelled
/// `profile/node/file#n kind/name`.
fn rendered_objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, path) in profiles() {
        let p = load_renderable(&name, &path);
        let (dirs, _) =
            nodecfg::render_all(&p).unwrap_or_else(|e| panic!("{name} does not render: {e:#}"));
        for d in &dirs {
            for (file, (data, _)) in &d.files {
                if !(file.starts_with("manifests/")
                    && Path::new(file).extension() == Some("yaml".as_ref()))
                {
                    continue;
                }
                let text = std::str::from_utf8(data).unwrap();
                let docs: Vec<Value> = serde_saphyr::from_multiple(text)
                    .unwrap_or_else(|e| panic!("{name}/{}/{file}: {e}", d.hostname));
                for (i, doc) in docs.into_iter().filter(|d| !d.is_null()).enumerate() {
                    let label = format!(
                        "{name}/{}/{file}#{} {}/{}",
                        d.hostname,
                        i + 1,
                        doc["kind"].as_str().unwrap_or("?"),
                        doc["metadata"]["name"].as_str().unwrap_or("?"),
                    );
                    out.push((label, doc));
                }
            }
        }
    }
    out
}

#[test]
fn every_rendered_manifest_satisfies_the_upstream_schema_of_its_pinned_version() {
    let schemas = Schemas::load();
    let objects = rendered_objects();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (label, doc) in &objects {
        let problems = schemas.check(doc);
        if is_cilium_chart(doc) {
            *seen.entry("cilium values".into()).or_default() += 1;
        }
        let kind = doc["kind"].as_str().unwrap_or("?").to_owned();
        *seen.entry(kind).or_default() += 1;
        if !problems.is_empty() {
            failures.push(format!("{label}:\n  {}", problems.join("\n  ")));
        }
    }
    eprintln!("objects validated, by kind: {seen:?}");
    assert!(
        failures.is_empty(),
        "rendered manifests that upstream would refuse (a template bug, not a test bug):\n{}",
        failures.join("\n")
    );
    // Every kind labimg renders turned up, so none went unchecked.
    for kind in [
        "Namespace",
        "HelmChart",
        "GitRepository",
        "Kustomization",
        "Application",
        "CiliumLoadBalancerIPPool",
        "CiliumL2AnnouncementPolicy",
        "cilium values",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 1,
            "no {kind} among the rendered manifests (seen: {seen:?})"
        );
    }
    // Each of the six profiles renders at least one Cilium chart.
    assert!(
        seen["cilium values"] >= 6,
        "expected the cilium chart in every profile: {seen:?}"
    );
}

/// The first rendered object of `kind` (named `name`, if given).
fn sample(objects: &[(String, Value)], kind: &str, name: Option<&str>) -> Value {
    objects
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .unwrap_or_else(|| panic!("no rendered {kind}"))
        .clone()
}

/// Asserts that `doc` fails with a problem at `path`, and that the
/// unmodified `good` passes (so the failure is the seeded mistake's).
fn assert_refused(schemas: &Schemas, what: &str, good: &Value, doc: &Value, path: &str) {
    assert_eq!(
        schemas.check(good),
        Vec::<String>::new(),
        "{what}: the original fails"
    );
    let problems = schemas.check(doc);
    assert!(
        problems.iter().any(|p| p.contains(path)),
        "{what}: expected a problem at {path}, got {problems:#?}"
    );
}

#[test]
fn seeded_mistakes_fail_validation() {
    let schemas = Schemas::load();
    let objects = rendered_objects();

    let cilium = sample(&objects, "HelmChart", Some("cilium"));
    let mut bad = cilium.clone();
    bad["spec"]["valuesContent"] = json!({"cni": {"binPath": "/opt/cni/bin"}});
    assert_refused(
        &schemas,
        "valuesContent as a map",
        &cilium,
        &bad,
        "/spec/valuesContent",
    );
    let mut bad = cilium.clone();
    bad["spec"]["bootstrap"] = json!("yes");
    assert_refused(
        &schemas,
        "bootstrap: \"yes\"",
        &cilium,
        &bad,
        "/spec/bootstrap",
    );
    let mut bad = cilium.clone();
    bad["spec"]["targetNamespcae"] = json!("kube-system");
    assert_refused(
        &schemas,
        "misspelt HelmChart field",
        &cilium,
        &bad,
        "targetNamespcae",
    );
    let mut bad = cilium.clone();
    bad["metadata"]["labels"] = json!({"tier": 1});
    assert_refused(
        &schemas,
        "label value not a string",
        &cilium,
        &bad,
        "/metadata/labels/tier",
    );

    let ks = sample(&objects, "Kustomization", None);
    let mut bad = ks.clone();
    bad["spec"].as_object_mut().unwrap().remove("interval");
    assert_refused(
        &schemas,
        "Kustomization without interval",
        &ks,
        &bad,
        "interval",
    );
    let mut bad = ks.clone();
    bad["spec"].as_object_mut().unwrap().remove("prune");
    assert_refused(&schemas, "Kustomization without prune", &ks, &bad, "prune");
    let mut bad = ks.clone();
    bad["spec"]["prune"] = json!("true");
    assert_refused(&schemas, "prune: \"true\"", &ks, &bad, "/spec/prune");
    let mut bad = ks.clone();
    bad["apiVersion"] = json!("kustomize.toolkit.fluxcd.io/v1beta9");
    assert!(
        schemas.check(&bad)[0].contains("no upstream schema"),
        "an unknown apiVersion must not pass unchecked"
    );

    let git = sample(&objects, "GitRepository", None);
    let mut bad = git.clone();
    bad["spec"]["ref"] = json!("main");
    assert_refused(
        &schemas,
        "GitRepository ref as a string",
        &git,
        &bad,
        "/spec/ref",
    );

    let app = sample(&objects, "Application", None);
    let mut bad = app.clone();
    bad["spec"]["syncPolicy"]["automated"]["prune"] = json!("yes");
    assert_refused(
        &schemas,
        "Application prune: \"yes\"",
        &app,
        &bad,
        "/spec/syncPolicy/automated/prune",
    );
    let mut bad = app.clone();
    bad["spec"].as_object_mut().unwrap().remove("destination");
    assert_refused(
        &schemas,
        "Application without destination",
        &app,
        &bad,
        "destination",
    );

    let pool = sample(&objects, "CiliumLoadBalancerIPPool", None);
    let mut bad = pool.clone();
    bad["spec"]["blocks"] = json!("192.168.20.128/25");
    assert_refused(
        &schemas,
        "pool blocks as a string",
        &pool,
        &bad,
        "/spec/blocks",
    );
    let l2 = sample(&objects, "CiliumL2AnnouncementPolicy", None);
    let mut bad = l2.clone();
    bad["spec"]["loadBalancerIPs"] = json!("true");
    assert_refused(
        &schemas,
        "L2 loadBalancerIPs: \"true\"",
        &l2,
        &bad,
        "/spec/loadBalancerIPs",
    );

    // The chart values, inside the valuesContent string.
    let values: Value =
        serde_saphyr::from_str(cilium["spec"]["valuesContent"].as_str().unwrap()).unwrap();
    for (what, pointer, wrong, path) in [
        ("cni.binPath: 5", "/cni/binPath", json!(5), "/cni/binPath"),
        (
            "operator.replicas: \"two\"",
            "/operator/replicas",
            json!("two"),
            "/operator/replicas",
        ),
        (
            "hubble.enabled: \"yes\"",
            "/hubble/enabled",
            json!("yes"),
            "/hubble/enabled",
        ),
    ] {
        let mut bad = values.clone();
        *bad.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("rendered values lack {pointer}")) = wrong;
        let mut chart = cilium.clone();
        chart["spec"]["valuesContent"] = json!(serde_saphyr::to_string(&bad).unwrap());
        assert_refused(
            &schemas,
            what,
            &cilium,
            &chart,
            &format!("spec.valuesContent: {path}"),
        );
    }
}
