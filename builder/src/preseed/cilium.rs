//! Cilium as k3s's CNI: the `HelmChart` k3s's helm controller installs at
//! bootstrap, its values for a k3s cluster, the optional vendored (air-gapped)
//! chart, and the LoadBalancer IP pool / L2 announcement manifests.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::profile::{CniKind, Profile};

use super::{PreseedError, RenderOptions, Templates};

/// The local address of k3s's API server load balancer on every node: Cilium
/// talks to it when it replaces kube-proxy (there is no Service VIP yet).
const K3S_LB_HOST: &str = "127.0.0.1";
/// k3s's `lb-server-port` default.
const K3S_LB_PORT: u16 = 6444;
/// Where k3s keeps CNI plugins (a stable folder since k3s-io/k3s#10869).
pub const CNI_BIN_DIR: &str = "/var/lib/rancher/k3s/data/cni";
/// Where k3s's containerd reads CNI configuration.
pub const CNI_CONF_DIR: &str = "/var/lib/rancher/k3s/agent/etc/cni/net.d";

/// The Helm values labimg sets for Cilium on k3s, before the profile's own.
pub fn default_values(profile: &Profile) -> Value {
    let cni = &profile.cni;
    let servers = profile.servers().count().max(1);
    let mut v = json!({
        "ipam": { "mode": "kubernetes" },
        "operator": { "replicas": servers.min(2) },
        // The host contract (builder/node/HOST-CONTRACT.md): the chart's defaults
        // write to /opt/cni/bin and /etc/cni/net.d and mount a cgroup2 of its own;
        // on labimg's read-only root the plugin and config go where k3s keeps them
        // (on STATE; /opt/cni/bin and /etc/cni/net.d link there too), the node has
        // cgroup2 at /sys/fs/cgroup already, and /etc/sysctl.d is a tmpfs nothing
        // applies (the node sets rp_filter itself).
        "cni": {
            "binPath": CNI_BIN_DIR,
            "confPath": CNI_CONF_DIR,
        },
        "cgroup": {
            "autoMount": { "enabled": false },
            "hostRoot": "/sys/fs/cgroup",
        },
        "sysctlfix": { "enabled": false },
    });
    if cni.kube_proxy_replacement {
        v["kubeProxyReplacement"] = json!(true);
        v["k8sServiceHost"] = json!(K3S_LB_HOST);
        v["k8sServicePort"] = json!(K3S_LB_PORT);
    }
    if cni.l2_announcements {
        v["l2announcements"] = json!({ "enabled": true });
        v["externalIPs"] = json!({ "enabled": true });
    }
    v
}

/// Merges `over` into `base`: mappings key by key, anything else replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The final Helm values: defaults, then `cni.values`, then what depends on the
/// merged result (the pod CIDR for cluster-pool IPAM).
pub fn values(profile: &Profile) -> Result<Value> {
    let mut v = default_values(profile);
    let over = serde_json::to_value(&profile.cni.values).context("reading cni.values")?;
    merge(&mut v, over);
    if v["ipam"]["mode"] == json!("cluster-pool")
        && v["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"].is_null()
    {
        merge(
            &mut v,
            json!({ "ipam": { "operator": {
                "clusterPoolIPv4PodCIDRList": [profile.k3s.cluster_cidr]
            } } }),
        );
    }
    Ok(v)
}

/// Reads the vendored chart and checks it against its pinned SHA-256.
pub fn vendored_chart(profile: &Profile, opts: &RenderOptions) -> Result<Option<Vec<u8>>> {
    let Some(chart) = &profile.cni.chart else {
        return Ok(None);
    };
    let path = opts.base_dir.join(&chart.path);
    let data = std::fs::read(&path)
        .with_context(|| format!("reading the vendored Cilium chart {}", path.display()))?;
    let actual = hex::encode(Sha256::digest(&data));
    if !actual.eq_ignore_ascii_case(chart.sha256.trim()) {
        return Err(PreseedError::ChartDigest {
            path,
            expected: chart.sha256.clone(),
            actual,
        }
        .into());
    }
    Ok(Some(data))
}

/// The server manifests for Cilium: `(file stem, YAML)` pairs.
pub fn manifests(
    profile: &Profile,
    opts: &RenderOptions,
    t: &Templates,
) -> Result<Vec<(String, String)>> {
    if profile.cni.kind != CniKind::Cilium {
        return Ok(Vec::new());
    }
    let values = values(profile)?;
    let values_yaml = serde_saphyr::to_string(&values).context("rendering Cilium values")?;
    let chart_content = vendored_chart(profile, opts)?.map(|d| base64(&d));
    let mut out = vec![(
        "cilium".to_owned(),
        t.render(
            "cilium.yaml.j2",
            json!({
                "version": profile.cni.version,
                "chart_content": chart_content,
                "values": values_yaml.trim_end(),
            }),
        )?,
    )];
    let cni = &profile.cni;
    if cni.l2_announcements || !cni.lb_ip_pools.is_empty() {
        out.push((
            "cilium-l2".to_owned(),
            t.render(
                "cilium-l2.yaml.j2",
                json!({
                    "cluster": profile.cluster.name,
                    "pools": cni.lb_ip_pools,
                    "l2": cni.l2_announcements,
                }),
            )?,
        ));
    }
    Ok(out)
}

/// Standard base64 with padding (RFC 4648), for `chartContent`.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn merge_is_deep() {
        let mut a = json!({"ipam": {"mode": "kubernetes"}, "operator": {"replicas": 1}});
        merge(
            &mut a,
            json!({"ipam": {"operator": {"x": 1}}, "operator": 3}),
        );
        assert_eq!(
            a,
            json!({"ipam": {"mode": "kubernetes", "operator": {"x": 1}}, "operator": 3})
        );
    }
}
