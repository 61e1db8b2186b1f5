//! GitOps bootstrap manifests: Flux (flux2 community chart, `GitRepository`,
//! `Kustomization`) or Argo CD (argo-cd chart, root `Application`), each with
//! its namespace, and the Secrets they reference by name (Git credentials,
//! SOPS age key), which are rendered separately because they hold secret values.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::profile::net::is_ssh_git_url;
use crate::profile::{GitopsEngine, Profile};

use super::{RenderOptions, Templates, secrets};

/// The pinned flux2 chart (fluxcd-community/helm-charts).
pub const FLUX2_CHART_VERSION: &str = "2.16.2";
/// The pinned argo-cd chart (argoproj/argo-helm).
pub const ARGO_CD_CHART_VERSION: &str = "8.0.0";

/// Name of the Flux Git credentials Secret (what `flux bootstrap` names it too).
pub const FLUX_GIT_SECRET: &str = "flux-system";
/// Name of the SOPS age key Secret.
pub const SOPS_SECRET: &str = "sops-age";
/// Name of the Argo CD repository Secret.
pub const ARGOCD_REPO_SECRET: &str = "labimg-repo";

fn repo(profile: &Profile) -> &str {
    profile.gitops.repo.as_deref().unwrap_or_default()
}

/// The public GitOps manifests: `(file stem, YAML)` pairs.
pub fn manifests(profile: &Profile, t: &Templates) -> Result<Vec<(String, String)>> {
    let g = &profile.gitops;
    let out = match g.engine {
        GitopsEngine::None => return Ok(Vec::new()),
        GitopsEngine::Flux => (
            "flux",
            t.render(
                "flux.yaml.j2",
                json!({
                    "chart_version": FLUX2_CHART_VERSION,
                    "repo": repo(profile),
                    "branch": g.branch,
                    "path": flux_path(&g.path),
                    "credentials_secret": g.credentials.as_ref().map(|_| FLUX_GIT_SECRET),
                    "sops_secret": g.sops_age_key.as_ref().map(|_| SOPS_SECRET),
                }),
            )?,
        ),
        GitopsEngine::Argocd => (
            "argocd",
            t.render(
                "argocd.yaml.j2",
                json!({
                    "chart_version": ARGO_CD_CHART_VERSION,
                    "repo": repo(profile),
                    "branch": g.branch,
                    "path": g.path,
                    // An app of apps creates Application objects, which live in argocd.
                    "destination_namespace": if g.app_of_apps { "argocd" } else { "default" },
                    "values": argocd_values(g)?,
                }),
            )?,
        ),
    };
    Ok(vec![(out.0.to_owned(), out.1)])
}

/// The argo-cd chart's values labimg sets, as YAML (empty when none): extra SSH
/// host keys for a Git server Argo CD does not know.
fn argocd_values(g: &crate::profile::Gitops) -> Result<String> {
    let Some(hosts) = &g.known_hosts else {
        return Ok(String::new());
    };
    let values =
        json!({ "configs": { "ssh": { "extraHosts": format!("{}\n", hosts.trim_end()) } } });
    serde_saphyr::to_string(&values).context("rendering Argo CD values")
}

/// Flux paths are relative to the repository root and start with `./`.
fn flux_path(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    format!("./{p}")
}

fn engine_namespace(engine: GitopsEngine) -> &'static str {
    match engine {
        GitopsEngine::Argocd => "argocd",
        _ => "flux-system",
    }
}

/// The Secrets the GitOps manifests reference, with their values resolved now:
/// `(file stem, YAML)` pairs. Empty when the profile needs none.
pub fn secret_manifests(
    profile: &Profile,
    opts: &RenderOptions,
    t: &Templates,
) -> Result<Vec<(String, String)>> {
    let g = &profile.gitops;
    if g.engine == GitopsEngine::None {
        return Ok(Vec::new());
    }
    let ns = engine_namespace(g.engine);
    let mut out = Vec::new();
    if let Some(src) = &g.credentials {
        let secret = secrets::resolve(src, opts, "gitops.credentials")?;
        let url = repo(profile);
        let mut data = serde_json::Map::new();
        let (stem, name, labels) = match g.engine {
            GitopsEngine::Argocd => {
                data.insert("type".into(), json!("git"));
                data.insert("url".into(), json!(url));
                if is_ssh_git_url(url) {
                    data.insert("sshPrivateKey".into(), json!(secret));
                } else {
                    data.insert("username".into(), json!("git"));
                    data.insert("password".into(), json!(secret.trim()));
                }
                (
                    "argocd-repo",
                    ARGOCD_REPO_SECRET,
                    json!({ "argocd.argoproj.io/secret-type": "repository" }),
                )
            }
            _ => {
                if is_ssh_git_url(url) {
                    data.insert("identity".into(), json!(secret));
                    if let Some(hosts) = &g.known_hosts {
                        data.insert("known_hosts".into(), json!(hosts.trim_end()));
                    }
                } else {
                    data.insert("username".into(), json!("git"));
                    data.insert("password".into(), json!(secret.trim()));
                }
                ("flux-git-credentials", FLUX_GIT_SECRET, json!({}))
            }
        };
        out.push((
            stem.to_owned(),
            render_secret(t, name, ns, labels, Value::Object(data), "Git credentials")?,
        ));
    }
    if let Some(src) = &g.sops_age_key {
        let key = secrets::resolve(src, opts, "gitops.sops-age-key")?;
        out.push((
            "sops-age".to_owned(),
            render_secret(
                t,
                SOPS_SECRET,
                ns,
                json!({}),
                json!({ "age.agekey": key }),
                "SOPS age key the GitOps engine decrypts secrets with",
            )?,
        ));
    }
    Ok(out)
}

/// Renders `secret.yaml.j2`.
pub fn render_secret(
    t: &Templates,
    name: &str,
    namespace: &str,
    labels: Value,
    data: Value,
    comment: &str,
) -> Result<String> {
    t.render(
        "secret.yaml.j2",
        json!({
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "data": data,
            "comment": comment,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_paths() {
        assert_eq!(flux_path("clusters/a"), "./clusters/a");
        assert_eq!(flux_path("./clusters/a"), "./clusters/a");
    }
}
