//! The shipped deployment files (`netboot/deploy/`): the systemd unit passes
//! `systemd-analyze verify` and a sandboxing threshold, and the unit, the Containerfile
//! and the podman command in the README agree on read-only images and one writable
//! state folder, with no `--ipxe-dir` needed; the Kubernetes base
//! (`deploy/kubernetes/`) renders to objects that validate against the Kubernetes
//! v1.36 JSON schemas (`tests/fixtures/k8s-schemas/`) and keep its security and
//! wiring promises, and seeded mistakes fail both checks.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `key=value` lines of a unit file, continuation lines joined.
fn unit_entries(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn unit_value(entries: &[(String, String)], key: &str) -> String {
    let vals: Vec<&str> = entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(vals.len(), 1, "{key}= set {} times in the unit", vals.len());
    vals[0].to_string()
}

/// The value after `--flag` in a command line's words.
fn flag<'a>(words: &[&'a str], name: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| *w == name)
        .and_then(|i| words.get(i + 1).copied())
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running systemd-analyze {args:?}: {e} (install Debian's systemd package)")
        })
}

/// The unit as shipped, with ExecStart pointed at an executable that exists here
/// (verify refuses a missing binary), passes `systemd-analyze verify` without a
/// single warning (an unknown or misspelt key is only a warning there) and keeps
/// `systemd-analyze security` at 2.0 or better.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = read(&deploy("labimg-serve.service"));
    let exe = std::env::current_exe().unwrap();
    let prefix = "ExecStart=/usr/local/bin/labimg ";
    assert!(
        unit.contains(prefix),
        "ExecStart runs /usr/local/bin/labimg"
    );
    let local = unit.replace(prefix, &format!("ExecStart={} ", exe.display()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labimg-serve.service");
    std::fs::write(&path, local).unwrap();
    let p = path.to_str().unwrap();

    let out = systemd_analyze(&["verify", "--man=no", p]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{said}",
        out.status
    );

    // --threshold is 10 × the exposure level the report prints.
    let out = systemd_analyze(&["security", "--offline=yes", "--threshold=20", p]);
    assert!(
        out.status.success(),
        "systemd-analyze security rates the unit above 2.0:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The unit's ExecStart, its read-only paths and its state folder agree: images and
/// inventory read-only, `--state-dir` is the StateDirectory, the download cache is in
/// it, the two capabilities and no others, and no `--ipxe-dir` (the default works).
#[test]
fn systemd_unit_is_consistent_with_serve() {
    let entries = unit_entries(&read(&deploy("labimg-serve.service")));
    let exec = unit_value(&entries, "ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[..2], ["/usr/local/bin/labimg", "serve"]);
    assert_eq!(flag(&words, "--ipxe-dir"), None);
    let images = flag(&words, "--images").expect("--images in ExecStart");
    let inventory = flag(&words, "--inventory").expect("--inventory in ExecStart");
    let state = flag(&words, "--state-dir").expect("--state-dir in ExecStart");
    let ro = unit_value(&entries, "ReadOnlyPaths");
    let ro: Vec<&str> = ro.split_whitespace().collect();
    assert!(ro.contains(&images), "{images} not in ReadOnlyPaths {ro:?}");
    let inv_dir = Path::new(inventory).parent().unwrap().to_str().unwrap();
    assert!(
        ro.contains(&inv_dir),
        "{inv_dir} not in ReadOnlyPaths {ro:?}"
    );
    assert_eq!(unit_value(&entries, "ProtectSystem"), "strict");
    assert_eq!(
        format!("/var/lib/{}", unit_value(&entries, "StateDirectory")),
        state
    );
    let env = unit_value(&entries, "Environment");
    let cache = env
        .strip_prefix("LABIMG_CACHE=")
        .expect("Environment=LABIMG_CACHE=…");
    assert!(
        Path::new(cache).starts_with(state),
        "cache {cache} outside {state}"
    );
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert_eq!(
            unit_value(&entries, key),
            "CAP_NET_BIND_SERVICE CAP_NET_RAW",
            "{key}"
        );
    }
    assert_eq!(
        state,
        labimg_netboot::ServeOptions::default()
            .state_dir
            .to_str()
            .unwrap(),
        "the unit's state folder is serve's default"
    );
}

/// The Containerfile builds from this workspace (every member copied, the paths it
/// copies exist, no downloaded binaries) on Debian bookworm, and its volume and cache
/// are serve's default state folder.
#[test]
fn containerfile_builds_from_the_workspace() {
    let text = read(&deploy("Containerfile"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let args: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(
        args.iter().any(|a| a.starts_with("RUST_IMAGE=")
            && a.contains("rust:")
            && a.ends_with("-bookworm"))
            && froms[0].starts_with("${RUST_IMAGE}"),
        "build stage: a Debian bookworm Rust image ({args:?}, {froms:?})"
    );
    assert!(
        froms[1].ends_with("debian:bookworm-slim") || froms[1].ends_with("debian:trixie-slim"),
        "runtime stage: {}",
        froms[1]
    );
    assert!(
        !text.contains("curl ") && !text.contains("wget "),
        "nothing downloaded by hand"
    );
    assert!(text.contains("ca-certificates") && text.contains("iproute2"));

    let mut copied = Vec::new();
    for l in &lines {
        let Some(rest) = l.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(root.join(src).exists(), "COPY {src}: not in the workspace");
            copied.push(src.to_string());
        }
    }
    let manifest: toml::Table = toml::from_str(&read(&root.join("Cargo.toml"))).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    for m in members {
        let m = m.as_str().unwrap();
        assert!(
            copied.iter().any(|c| c == m),
            "workspace member {m} not copied"
        );
    }
    for f in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(copied.iter().any(|c| c == f), "{f} not copied");
    }
    assert!(text.contains("cargo build --release --locked -p labimg"));

    let state = labimg_netboot::ServeOptions::default().state_dir;
    let state = state.to_str().unwrap();
    assert!(lines.contains(&format!("VOLUME {state}").as_str()));
    assert!(lines.contains(&format!("ENV LABIMG_CACHE={state}/cache").as_str()));
}

/// The README points at both files, and its `podman run` mounts the images and the
/// inventory read-only, the state volume where the Containerfile's VOLUME is, and
/// needs no `--ipxe-dir` or `--state-dir`.
#[test]
fn readme_podman_command_matches_the_containerfile() {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    for f in ["deploy/labimg-serve.service", "deploy/Containerfile"] {
        assert!(
            readme.contains(&format!("]({f})")),
            "README does not link {f}"
        );
    }
    let start = readme.find("podman run ").expect("a podman run command");
    let end = start + readme[start..].find("```").unwrap();
    let cmd = readme[start..end].replace("\\\n", " ");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mounts: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-v")
        .map(|w| w[1])
        .collect();
    let images = flag(&words, "--images").expect("--images");
    let inventory = flag(&words, "--inventory").expect("--inventory");
    let inv_dir = Path::new(inventory).parent().unwrap().to_str().unwrap();
    for (what, dir) in [("images", images), ("inventory", inv_dir)] {
        assert!(
            mounts.iter().any(|m| m.ends_with(&format!(":{dir}:ro"))),
            "{what} folder {dir} not mounted read-only: {mounts:?}"
        );
    }
    let state = labimg_netboot::ServeOptions::default().state_dir;
    assert!(
        mounts
            .iter()
            .any(|m| m.ends_with(&format!(":{}", state.display()))),
        "no volume at {}: {mounts:?}",
        state.display()
    );
    assert_eq!(flag(&words, "--ipxe-dir"), None);
    assert_eq!(flag(&words, "--state-dir"), None);
    assert!(words.contains(&"serve"), "{cmd}");
    for cap in ["NET_BIND_SERVICE", "NET_RAW"] {
        assert!(words.contains(&cap), "--cap-add {cap}");
    }
}

// ---- The kustomize base (deploy/kubernetes/) ----

/// The base's folder.
fn kube_dir() -> PathBuf {
    deploy("kubernetes")
}

fn yaml_file(p: &Path) -> serde_json::Value {
    serde_saphyr::from_str(&read(p)).unwrap_or_else(|e| panic!("parsing {}: {e}", p.display()))
}

/// Renders the base as `kustomize build` does for the features it uses (kubectl
/// and kustomize are not Debian packages, so the test resolves the base itself):
/// every file of `resources`, the `configMapGenerator` ConfigMaps (name hashes
/// off), `namespace` on namespaced objects and `labels` on every object's
/// metadata. A key of kustomization.yaml this resolver does not know is an error,
/// so the base cannot grow a feature the test would silently skip.
fn kustomize_build(dir: &Path) -> Vec<serde_json::Value> {
    use serde_json::{Value, json};
    let k = yaml_file(&dir.join("kustomization.yaml"));
    let known = [
        "apiVersion",
        "kind",
        "namespace",
        "resources",
        "configMapGenerator",
        "generatorOptions",
        "labels",
    ];
    for key in k
        .as_object()
        .expect("kustomization.yaml is a mapping")
        .keys()
    {
        assert!(
            known.contains(&key.as_str()),
            "kustomization.yaml: {key} is not resolved by this test"
        );
    }
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    let mut objects = Vec::new();
    for r in k["resources"].as_array().expect("resources: a list") {
        let file = dir.join(r.as_str().unwrap());
        assert!(file.is_file(), "resource {} is not a file", file.display());
        objects.push(yaml_file(&file));
    }
    if let Some(gens) = k.get("configMapGenerator") {
        assert_eq!(
            k["generatorOptions"]["disableNameSuffixHash"],
            json!(true),
            "this resolver does not compute kustomize's name hashes"
        );
        for g in gens.as_array().unwrap() {
            let mut data = serde_json::Map::new();
            for f in g["files"].as_array().unwrap() {
                let f = f.as_str().unwrap();
                assert!(!f.contains('='), "key=file entries are not resolved");
                let name = Path::new(f).file_name().unwrap().to_str().unwrap();
                data.insert(name.to_owned(), Value::String(read(&dir.join(f))));
            }
            objects.push(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": g["name"]},
                "data": data,
            }));
        }
    }
    for o in &mut objects {
        if let Some(ns) = k.get("namespace")
            && o["kind"] != "Namespace"
        {
            o["metadata"]["namespace"] = ns.clone();
        }
        for l in k["labels"].as_array().into_iter().flatten() {
            assert_ne!(
                l["includeSelectors"],
                json!(true),
                "selector labels are not resolved"
            );
            for (key, v) in l["pairs"].as_object().unwrap() {
                o["metadata"]["labels"][key] = v.clone();
            }
        }
    }
    objects
}

/// The Kubernetes v1.36 JSON schema of an object's kind (fixtures/k8s-schemas,
/// sources in its README.md); a kind without one is an error.
fn k8s_schema(obj: &serde_json::Value) -> jsonschema::Validator {
    let file = match (obj["apiVersion"].as_str(), obj["kind"].as_str()) {
        (Some("apps/v1"), Some("DaemonSet")) => "daemonset-apps-v1.json",
        (Some("v1"), Some("ConfigMap")) => "configmap-v1.json",
        (Some("v1"), Some("Namespace")) => "namespace-v1.json",
        other => panic!("no schema fixture for {other:?}"),
    };
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s-schemas")
        .join(file);
    let schema: serde_json::Value = serde_json::from_str(&read(&p)).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every schema violation of every object, as `kind/name: path: message`.
fn schema_problems(objects: &[serde_json::Value]) -> Vec<String> {
    let mut out = Vec::new();
    for o in objects {
        let v = k8s_schema(o);
        for e in v.iter_errors(o) {
            out.push(format!(
                "{}/{}: {}: {e}",
                o["kind"],
                o["metadata"]["name"],
                e.instance_path()
            ));
        }
    }
    out
}

fn the_daemonset(objects: &[serde_json::Value]) -> &serde_json::Value {
    let ds: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == "DaemonSet")
        .collect();
    assert_eq!(ds.len(), 1, "one DaemonSet");
    ds[0]
}

/// What the base promises beyond the schema, as a list of broken promises:
/// host network, only NET_BIND_SERVICE and NET_RAW, the inventory from the
/// ConfigMap (as a folder, so edits arrive), images read-only, state writable on
/// a volume that outlives the pod, the Prometheus annotations and the liveness
/// probe on serve's own HTTP address, and the arguments are ones serve accepts.
fn policy_problems(objects: &[serde_json::Value]) -> Vec<String> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: labimg_netboot::ServeOptions,
    }
    let mut bad = Vec::new();
    let ds = the_daemonset(objects);
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    if spec["hostNetwork"] != true {
        bad.push("hostNetwork is not true".to_owned());
    }
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    let strs = |v: &serde_json::Value| -> Vec<String> {
        let mut s: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        s.sort();
        s
    };
    if strs(&sc["capabilities"]["drop"]) != ["ALL"] {
        bad.push(format!("capabilities.drop {}", sc["capabilities"]["drop"]));
    }
    if strs(&sc["capabilities"]["add"]) != ["NET_BIND_SERVICE", "NET_RAW"] {
        bad.push(format!("capabilities.add {}", sc["capabilities"]["add"]));
    }
    for (key, want) in [
        ("allowPrivilegeEscalation", false),
        ("readOnlyRootFilesystem", true),
    ] {
        if sc[key] != want {
            bad.push(format!("securityContext.{key} is not {want}"));
        }
    }
    if sc.get("privileged").is_some_and(|p| p != false) {
        bad.push("privileged".to_owned());
    }

    let mut args = vec!["labimg".to_owned()];
    let words: Vec<String> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().unwrap_or_default().to_owned())
        .collect();
    if words.first().map(String::as_str) != Some("serve") {
        bad.push(format!("args do not start with serve: {words:?}"));
        return bad;
    }
    args.extend(words[1..].iter().cloned());
    let opts = match Cli::try_parse_from(&args) {
        Ok(cli) => cli.serve,
        Err(e) => {
            bad.push(format!("labimg serve refuses the args {args:?}: {e}"));
            return bad;
        }
    };
    let env = |name: &str| {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .cloned()
    };
    match env("LABIMG_ADVERTISE") {
        Some(e) if e["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP" => {}
        _ if opts.advertise.is_some() || opts.interface.is_some() => {}
        _ => bad.push("no advertised address: LABIMG_ADVERTISE from status.hostIP".into()),
    }

    // mount path -> (volume, read-only)
    let volume = |name: &serde_json::Value| {
        spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| &v["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let mount_of = |path: &Path| {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("?")))
            .max_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len())
            .cloned()
    };
    let check = |bad: &mut Vec<String>, what: &str, path: &Path, read_only: bool| {
        let Some(m) = mount_of(path) else {
            bad.push(format!("{what} {} is on no volume", path.display()));
            return None;
        };
        if (m["readOnly"] == true) != read_only {
            bad.push(format!(
                "{what} {} mounted readOnly={} (want {read_only})",
                path.display(),
                m["readOnly"]
            ));
        }
        Some((m.clone(), volume(&m["name"])))
    };
    if let Some((_, v)) = check(&mut bad, "images", &opts.images, true)
        && v.get("hostPath").is_none()
        && v.get("persistentVolumeClaim").is_none()
    {
        bad.push(format!("images volume is not a hostPath or PVC: {v}"));
    }
    if let Some((m, v)) = check(&mut bad, "inventory", &opts.inventory, true) {
        let cm = v["configMap"]["name"].as_str().unwrap_or_default();
        let listed = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm);
        let key = opts.inventory.file_name().unwrap().to_str().unwrap();
        match listed {
            None => bad.push(format!(
                "inventory volume is not a ConfigMap of the base: {v}"
            )),
            Some(o) => match o["data"][key].as_str() {
                None => bad.push(format!("ConfigMap {cm} has no {key}")),
                Some(text) => {
                    if let Err(e) =
                        labimg_netboot::inventory::Inventory::parse(text, Path::new(key))
                    {
                        bad.push(format!("ConfigMap {cm}'s {key} does not load: {e:#}"));
                    }
                }
            },
        }
        if m.get("subPath").is_some() {
            bad.push("inventory mounted with subPath: ConfigMap edits would never arrive".into());
        }
    }
    if let Some((_, v)) = check(&mut bad, "state", &opts.state_dir, false)
        && v.get("hostPath").is_none()
        && v.get("persistentVolumeClaim").is_none()
    {
        bad.push(format!("state volume does not outlive the pod: {v}"));
    }
    if let Some(cache) = env("LABIMG_CACHE")
        && !Path::new(cache["value"].as_str().unwrap_or_default()).starts_with(&opts.state_dir)
    {
        bad.push(format!("LABIMG_CACHE {cache} outside the state folder"));
    }

    let port = opts.http_addr.port();
    let ann = &pod["metadata"]["annotations"];
    for (k, want) in [
        ("prometheus.io/scrape", "true".to_owned()),
        ("prometheus.io/port", port.to_string()),
        ("prometheus.io/path", "/metrics".to_owned()),
    ] {
        if ann[k] != want.as_str() {
            bad.push(format!("annotation {k} is {} (want {want})", ann[k]));
        }
    }
    let probe = &c["livenessProbe"]["httpGet"];
    if probe["path"] != "/healthz" || probe["port"] != port {
        bad.push(format!(
            "livenessProbe is not GET /healthz on {port}: {probe}"
        ));
    }
    bad
}

/// The base renders to objects that validate against the Kubernetes v1.36
/// schemas and keep the promises of [`policy_problems`]; its state folder is the
/// Containerfile's volume.
#[test]
fn kubernetes_base_validates_and_keeps_its_promises() {
    let objects = kustomize_build(&kube_dir());
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "DaemonSet", "ConfigMap"]);
    let problems = schema_problems(&objects);
    assert!(problems.is_empty(), "{problems:#?}");
    let problems = policy_problems(&objects);
    assert!(problems.is_empty(), "{problems:#?}");
    for o in &objects[1..] {
        assert_eq!(o["metadata"]["namespace"], "labimg", "{}", o["kind"]);
    }
    let ds = the_daemonset(&objects);
    let state = labimg_netboot::ServeOptions::default().state_dir;
    let container = read(&deploy("Containerfile"));
    assert!(container.contains(&format!("VOLUME {}", state.display())));
    let mounts = ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == state.to_str().unwrap())
    );
}

/// A seeded mistake: an edit of the rendered DaemonSet.
type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

/// Sets `key` of the volume mount `name` of the container at pointer `c` in `d`.
fn set_mount(d: &mut serde_json::Value, c: &str, name: &str, key: &str, v: serde_json::Value) {
    for m in d
        .pointer_mut(&format!("{c}/volumeMounts"))
        .unwrap()
        .as_array_mut()
        .unwrap()
    {
        if m["name"] == name {
            m[key] = v.clone();
        }
    }
}

/// Seeded mistakes are caught: by the schema (a misspelt field, a port as a
/// string, an unknown key in the probe) and by the promises (an extra
/// capability, no host network, images writable, the inventory by subPath, the
/// probe on the wrong path, a flag serve does not have).
#[test]
fn a_broken_kubernetes_manifest_fails() {
    use serde_json::json;
    let good = kustomize_build(&kube_dir());
    let ds_index = good.iter().position(|o| o["kind"] == "DaemonSet").unwrap();
    let broken = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut objects = good.clone();
        f(&mut objects[ds_index]);
        objects
    };
    let c = "/spec/template/spec/containers/0";
    let schema_cases: [(&str, Mutation); 3] = [
        (
            "hostNetwrok",
            Box::new(|d| d["spec"]["template"]["spec"]["hostNetwrok"] = json!(true)),
        ),
        (
            "containerPort",
            Box::new(move |d| {
                *d.pointer_mut(&format!("{c}/ports/0/containerPort"))
                    .unwrap() = json!("80")
            }),
        ),
        (
            "livenessProbe",
            Box::new(move |d| {
                d.pointer_mut(&format!("{c}/livenessProbe")).unwrap()["httpGett"] = json!({})
            }),
        ),
    ];
    for (what, f) in &schema_cases {
        let p = schema_problems(&broken(f.as_ref()));
        assert!(!p.is_empty(), "schema accepted a broken {what}");
    }
    let policy_cases: [(&str, Mutation); 6] = [
        (
            "capabilities.add",
            Box::new(move |d| {
                d.pointer_mut(&format!("{c}/securityContext/capabilities/add"))
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(json!("SYS_ADMIN"))
            }),
        ),
        (
            "hostNetwork",
            Box::new(|d| d["spec"]["template"]["spec"]["hostNetwork"] = json!(false)),
        ),
        (
            "images",
            Box::new(move |d| set_mount(d, c, "images", "readOnly", json!(false))),
        ),
        (
            "subPath",
            Box::new(move |d| set_mount(d, c, "inventory", "subPath", json!("inventory.toml"))),
        ),
        (
            "livenessProbe",
            Box::new(move |d| {
                *d.pointer_mut(&format!("{c}/livenessProbe/httpGet/path"))
                    .unwrap() = json!("/health")
            }),
        ),
        (
            "a flag serve does not have",
            Box::new(move |d| {
                d.pointer_mut(&format!("{c}/args"))
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(json!("--inventroy"))
            }),
        ),
    ];
    for (what, f) in &policy_cases {
        let objects = broken(f.as_ref());
        assert!(
            schema_problems(&objects).is_empty(),
            "{what}: a policy case must pass the schema"
        );
        let p = policy_problems(&objects);
        assert!(!p.is_empty(), "promises accepted a broken {what}");
    }
}

/// The paths the probe and the Prometheus annotations name are served by
/// `labimg serve`'s own router: `/healthz` answers 200 and `/metrics` 200 with
/// Prometheus text.
#[tokio::test]
async fn probe_and_metrics_paths_are_served() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let objects = kustomize_build(&kube_dir());
    let ds = the_daemonset(&objects);
    let pod = &ds["spec"]["template"];
    let f = common::fixture(80);
    let app = labimg_netboot::http::router(f.shared.clone());
    for path in [
        pod["spec"]["containers"][0]["livenessProbe"]["httpGet"]["path"]
            .as_str()
            .unwrap(),
        pod["metadata"]["annotations"]["prometheus.io/path"]
            .as_str()
            .unwrap(),
    ] {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if path == "/metrics" {
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("# TYPE "), "{text}");
        }
    }
}
