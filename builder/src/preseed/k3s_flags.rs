//! The `config.yaml` keys K3s v1.3x accepts, per role, and the check of a
//! rendered node config against them.
//!
//! K3s reads every long flag of `k3s server` / `k3s agent` as a config-file key
//! (`pkg/cli/cmds/server.go` and `agent.go` upstream; docs.k3s.io/cli/server and
//! /cli/agent). A key k3s does not know is ignored at boot without a word, so a
//! typo in `k3s.extra-config` silently changes nothing: the build refuses it instead.

use serde_json::Value;

use crate::profile::Role;

use super::PreseedError;

/// Keys both `k3s server` and `k3s agent` accept (servers also run an agent).
pub const SHARED: &[&str] = &[
    // config and logging
    "config",
    "debug",
    "v",
    "vmodule",
    "log",
    "alsologtostderr",
    // cluster
    "token",
    "token-file",
    "server",
    "data-dir",
    // agent/node
    "node-name",
    "with-node-id",
    "node-label",
    "node-taint",
    "image-credential-provider-bin-dir",
    "image-credential-provider-config",
    "selinux",
    "lb-server-port",
    "protect-kernel-defaults",
    // agent/runtime
    "docker",
    "container-runtime-endpoint",
    "default-runtime",
    "image-service-endpoint",
    "disable-default-registry-endpoint",
    "nonroot-devices",
    "pause-image",
    "snapshotter",
    "private-registry",
    "system-default-registry",
    "airgap-extra-registry",
    // agent/networking
    "node-ip",
    "node-external-ip",
    "node-internal-dns",
    "node-external-dns",
    "resolv-conf",
    "flannel-iface",
    "flannel-conf",
    "flannel-cni-conf",
    "vpn-auth",
    "vpn-auth-file",
    // agent/flags
    "kubelet-arg",
    "kube-proxy-arg",
    // experimental
    "rootless",
    "prefer-bundled-bin",
    "enable-pprof",
    "bind-address",
];

/// Keys only `k3s server` accepts.
pub const SERVER_ONLY: &[&str] = &[
    // listener
    "https-listen-port",
    "supervisor-port",
    "apiserver-port",
    "apiserver-bind-address",
    "advertise-address",
    "advertise-port",
    "tls-san",
    "tls-san-security",
    // networking
    "cluster-cidr",
    "service-cidr",
    "service-node-port-range",
    "cluster-dns",
    "cluster-domain",
    "flannel-backend",
    "flannel-ipv6-masq",
    "flannel-external-ip",
    "egress-selector-mode",
    "servicelb-namespace",
    // client
    "write-kubeconfig",
    "write-kubeconfig-mode",
    "write-kubeconfig-group",
    // helm
    "helm-job-image",
    // cluster
    "agent-token",
    "agent-token-file",
    "cluster-init",
    "cluster-reset",
    "cluster-reset-restore-path",
    // component flags
    "kube-apiserver-arg",
    "etcd-arg",
    "kube-controller-manager-arg",
    "kube-scheduler-arg",
    "kube-cloud-controller-manager-arg",
    // database
    "datastore-endpoint",
    "datastore-cafile",
    "datastore-certfile",
    "datastore-keyfile",
    "kine-tls",
    "etcd-expose-metrics",
    "etcd-disable-snapshots",
    "etcd-snapshot-name",
    "etcd-snapshot-schedule-cron",
    "etcd-snapshot-retention",
    "etcd-snapshot-dir",
    "etcd-snapshot-compress",
    "etcd-s3",
    "etcd-s3-endpoint",
    "etcd-s3-endpoint-ca",
    "etcd-s3-skip-ssl-verify",
    "etcd-s3-access-key",
    "etcd-s3-secret-key",
    "etcd-s3-bucket",
    "etcd-s3-bucket-lookup-type",
    "etcd-s3-region",
    "etcd-s3-folder",
    "etcd-s3-retention",
    "etcd-s3-proxy",
    "etcd-s3-config-secret",
    "etcd-s3-insecure",
    "etcd-s3-timeout",
    // storage
    "default-local-storage-path",
    // components
    "disable",
    "disable-scheduler",
    "disable-cloud-controller",
    "disable-kube-proxy",
    "disable-network-policy",
    "disable-helm-controller",
    "disable-apiserver",
    "disable-controller-manager",
    "disable-etcd",
    "disable-agent",
    "embedded-registry",
    "supervisor-metrics",
    // secrets encryption
    "secrets-encryption",
    "secrets-encryption-provider",
];

/// Keys only `k3s agent` accepts.
pub const AGENT_ONLY: &[&str] = &["disable-apiserver-lb"];

/// Whether `key` is a config key k3s accepts for `role`.
pub fn accepts(role: Role, key: &str) -> bool {
    let role_only = match role {
        Role::Server => SERVER_ONLY,
        Role::Agent => AGENT_ONLY,
    };
    SHARED.contains(&key) || role_only.contains(&key)
}

/// Whether `key` is a server-only key (so a cluster-wide setting skips agents).
pub fn server_only(key: &str) -> bool {
    SERVER_ONLY.contains(&key)
}

/// The valid key for `role` closest to `key` (Jaro-Winkler, like a shell's "did you mean").
pub fn closest(role: Role, key: &str) -> &'static str {
    let role_only = match role {
        Role::Server => SERVER_ONLY,
        Role::Agent => AGENT_ONLY,
    };
    SHARED
        .iter()
        .chain(role_only)
        .copied()
        .max_by(|a, b| strsim::jaro_winkler(key, a).total_cmp(&strsim::jaro_winkler(key, b)))
        .unwrap_or("node-name")
}

/// Checks every key of a rendered `config.yaml` against the table for the node's role.
pub fn check_config(hostname: &str, role: Role, config: &Value) -> Result<(), PreseedError> {
    let Value::Object(map) = config else {
        return Err(PreseedError::K3sConfig {
            node: hostname.to_owned(),
            message: "config.yaml is not a mapping".into(),
        });
    };
    for key in map.keys() {
        if !accepts(role, key) {
            let role_name = match role {
                Role::Server => "server",
                Role::Agent => "agent",
            };
            let why = if role == Role::Agent && server_only(key) {
                " (it is a server-only option)".to_owned()
            } else {
                String::new()
            };
            return Err(PreseedError::UnknownK3sKey {
                node: hostname.to_owned(),
                role: role_name,
                key: key.clone(),
                why,
                hint: closest(role, key),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_disjoint_and_sorted_out() {
        for k in SERVER_ONLY.iter().chain(AGENT_ONLY) {
            assert!(!SHARED.contains(k), "{k} is listed twice");
        }
        assert!(accepts(Role::Server, "cluster-init") && !accepts(Role::Agent, "cluster-init"));
        assert!(accepts(Role::Agent, "node-ip") && accepts(Role::Server, "token-file"));
        assert_eq!(closest(Role::Server, "clustr-cidr"), "cluster-cidr");
        assert_eq!(closest(Role::Agent, "node-labels"), "node-label");
    }
}
