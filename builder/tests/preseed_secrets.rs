//! Secrets never reach shared outputs (disk images, netboot artifacts) unless
//! the user opts in; the private per-node directory gets them as 0600 files.
//! Its own test binary: it sets environment variables, which is only sound
//! while no other thread reads the environment.
#![allow(unsafe_code)]

use std::path::PathBuf;

use labimg_builder::nodecfg::{self, NodeDir};
use labimg_builder::preseed::{self, Destination, RenderOptions};
use labimg_builder::profile::{self, Profile, Role};
use serde_json::Value;

fn load(example: &str, sets: &[&str]) -> Profile {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let path = dir.join("examples").join(format!("{example}.toml"));
    let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
    profile::load(path.to_str().unwrap(), &dir, &sets).unwrap_or_else(|e| panic!("{e}"))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every byte of every shared output, with its path.
fn shared_bytes(dirs: &[NodeDir], index: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("nodes/index".to_owned(), index.as_bytes().to_vec())];
    for d in dirs {
        for (f, (data, _)) in &d.files {
            out.push((format!("{}/{f}", d.hostname), data.clone()));
        }
    }
    out
}

fn is_server(p: &Profile, host: &str) -> bool {
    p.nodes
        .iter()
        .any(|n| n.hostname == host && n.role == Role::Server)
}

fn secret_doc(d: &NodeDir, file: &str) -> Value {
    let (data, mode) = &d.files[file];
    assert_eq!(*mode, 0o600, "{file} must be private");
    serde_saphyr::from_str(std::str::from_utf8(data).unwrap()).unwrap()
}

#[test]
fn secrets_stay_out_of_shared_outputs() {
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let token = format!("K10token{unique}");
    let git_token = format!("ghp_git{unique}");
    let deploy_key = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nkey{unique}\n-----END OPENSSH PRIVATE KEY-----\n"
    );
    let age_key = format!("AGE-SECRET-KEY-1{unique}");
    // SAFETY: this is the only test in this binary; nothing else reads the
    // environment while it is written.
    unsafe {
        std::env::set_var("LABIMG_PRESEED_TEST_TOKEN", &token);
        std::env::set_var("LABIMG_PRESEED_TEST_GIT", &git_token);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deploy-key"), &deploy_key).unwrap();
    std::fs::write(dir.path().join("age.key"), format!("{age_key}\n")).unwrap();
    let opts = RenderOptions {
        base_dir: dir.path().to_owned(),
        ..RenderOptions::default()
    };
    let flux = load(
        "proxmox-flux",
        &[
            "cluster.token={ env = \"LABIMG_PRESEED_TEST_TOKEN\" }",
            "gitops.credentials={ file = \"deploy-key\" }",
            "gitops.sops-age-key={ file = \"age.key\" }",
        ],
    );
    let argo = load(
        "pi5-argocd",
        &[
            "cluster.server-url=https://pi-cp1.lan:6443",
            "cluster.token={ env = \"LABIMG_PRESEED_TEST_TOKEN\" }",
            "gitops.credentials={ env = \"LABIMG_PRESEED_TEST_GIT\" }",
        ],
    );
    let agent_token = preseed::agent_token(&token);
    let secrets = [
        &token,
        &agent_token,
        &git_token,
        &format!("key{unique}"),
        &age_key,
    ];

    for p in [&flux, &argo] {
        let (shared, index) = nodecfg::render_all_with(p, &opts, Destination::Shared).unwrap();
        for (path, data) in shared_bytes(&shared, &index) {
            for s in &secrets {
                assert!(
                    !contains(&data, s),
                    "{}: secret leaked into shared {path}",
                    p.name
                );
            }
        }
        assert!(shared.iter().all(
            |d| !d.files.contains_key("k3s/token") && !d.files.contains_key("k3s/agent-token")
        ));

        // The private directory is the shared one plus the secret files.
        let (private, _) = nodecfg::render_all_with(p, &opts, Destination::Private).unwrap();
        for (s, v) in shared.iter().zip(&private) {
            for (f, data) in &s.files {
                assert_eq!(&v.files[f], data, "{}/{f}", s.hostname);
            }
            // A server holds the server token and the agent token; an agent only the
            // agent token, as its token.
            let server = is_server(p, &s.hostname);
            let file = |f: &str| v.files.get(f).map(|(d, m)| (d.as_slice(), *m));
            let line = |t: &str| format!("{t}\n").into_bytes();
            let (want_token, want_agent) = if server {
                (line(&token), Some(line(&agent_token)))
            } else {
                (line(&agent_token), None)
            };
            assert_eq!(
                file("k3s/token"),
                Some((want_token.as_slice(), 0o600)),
                "{}",
                s.hostname
            );
            assert_eq!(
                file("k3s/agent-token"),
                want_agent.as_deref().map(|a| (a, 0o600)),
                "{}",
                s.hostname
            );
            let secret_names: Vec<&str> = v.secrets.iter().map(String::as_str).collect();
            assert!(secret_names.contains(&"k3s/token"), "{}", s.hostname);
            assert_eq!(
                secret_names.contains(&"k3s/agent-token"),
                server,
                "{}",
                s.hostname
            );
        }

        // Opting in puts the token into the shared rendering too.
        let embed = RenderOptions {
            embed_secrets: true,
            ..opts.clone()
        };
        let (embedded, _) = nodecfg::render_all_with(p, &embed, Destination::Shared).unwrap();
        assert!(embedded.iter().all(|d| d.files.contains_key("k3s/token")));
        // Agents never hold the server token, not even in their own embedded image.
        for d in embedded.iter().chain(&private) {
            if !is_server(p, &d.hostname) {
                assert!(!contains(&d.files["k3s/token"].0, &token), "{}", d.hostname);
            }
        }
    }

    let (private, _) = nodecfg::render_all_with(&flux, &opts, Destination::Private).unwrap();
    let cp = private.iter().find(|d| d.hostname == "pve-cp1").unwrap();
    let git = secret_doc(cp, "manifests/flux-git-credentials.yaml");
    assert_eq!(git["metadata"]["name"], "flux-system");
    assert_eq!(git["metadata"]["namespace"], "flux-system");
    assert_eq!(git["stringData"]["identity"], deploy_key.as_str());
    assert!(
        git["stringData"]["known_hosts"]
            .as_str()
            .unwrap()
            .starts_with("github.com ssh-ed25519 "),
        "{git:?}"
    );
    let age = secret_doc(cp, "manifests/sops-age.yaml");
    assert_eq!(age["metadata"]["name"], "sops-age");
    assert_eq!(
        age["stringData"]["age.agekey"].as_str().unwrap().trim(),
        age_key
    );
    let w1 = private.iter().find(|d| d.hostname == "pve-w1").unwrap();
    assert!(w1.files.keys().all(|f| !f.starts_with("manifests/")));

    let (private, _) = nodecfg::render_all_with(&argo, &opts, Destination::Private).unwrap();
    let cp = private.iter().find(|d| d.hostname == "pi-cp1").unwrap();
    let repo = secret_doc(cp, "manifests/argocd-repo.yaml");
    assert_eq!(repo["metadata"]["namespace"], "argocd");
    assert_eq!(
        repo["metadata"]["labels"]["argocd.argoproj.io/secret-type"],
        "repository"
    );
    assert_eq!(
        repo["stringData"]["url"],
        "https://github.com/example/homelab.git"
    );
    assert_eq!(repo["stringData"]["password"], git_token.as_str());

    // Without the variable the private rendering fails and names it; the shared one does not care.
    unsafe { std::env::remove_var("LABIMG_PRESEED_TEST_TOKEN") };
    let msg = format!(
        "{:#}",
        nodecfg::render_all_with(&argo, &opts, Destination::Private).unwrap_err()
    );
    assert!(
        msg.contains("environment variable LABIMG_PRESEED_TEST_TOKEN is not set"),
        "{msg}"
    );
    nodecfg::render_all_with(&argo, &opts, Destination::Shared).unwrap();
}
