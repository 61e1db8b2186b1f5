//! The shipped example clusters (`profiles/examples/*.toml`) build and boot in
//! QEMU to the k3s STAND-IN (the real k3s cannot be downloaded here), one VM
//! per distinct role: the first server, a joining server, an agent. The node a
//! VM becomes is chosen by the MAC QEMU gives it. Each test checks what the
//! stand-in was handed (the role's k3s config, the server manifests for Cilium
//! and GitOps, whether a token file is there) and then scans the world-readable
//! artifacts (`netboot/`, the root image's files) for the secret values the
//! build was given: they must only be in `nodes/<host>/`.
//!
//! Each test holds one lock for its whole run so that builds and boots of the
//! examples never compete for the two cores with each other.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use labimg_qemu_tests::{
    RawDisk, SerialLog, Vm, build_profile_file_once, mcopy, run, target_dir, workspace_root,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where k3s reads the join token (`preseed::TOKEN_PATH`).
const TOKEN_PATH: &str = "/etc/rancher/k3s/token";

/// k3s config keys only a server accepts: an agent's config must have none.
const SERVER_ONLY_KEYS: &[&str] = &[
    "cluster-init",
    "flannel-backend",
    "disable-network-policy",
    "disable-kube-proxy",
    "disable",
    "cluster-cidr",
    "service-cidr",
    "tls-san",
    "write-kubeconfig-mode",
];

/// Serialises the example tests (nextest runs them in parallel processes).
fn examples_lock() -> File {
    let dir = target_dir().join("qemu-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = File::create(dir.join("examples-boot.lock")).unwrap();
    lock.lock().expect("locking the example boots");
    lock
}

fn example(name: &str) -> PathBuf {
    workspace_root().join(format!("profiles/examples/{name}.toml"))
}

/// Writes a secret the build reads into a fixed place under `target/` (so the
/// `--set` naming it, part of the build key, is the same in every process),
/// atomically, mode 0600.
fn secret_file(example: &str, file: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = target_dir()
        .join("qemu-tests/example-secrets")
        .join(example);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    let tmp = dir.join(format!(".{file}.{}", std::process::id()));
    std::fs::write(&tmp, value).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// `--set` giving a secret as a file.
fn file_set(key: &str, path: &Path) -> String {
    format!("{key}={{ file = \"{}\" }}", path.display())
}

/// The qcow2 image of a build (every test asks for qcow2 only: raw.xz is the
/// slow output and not what these tests boot).
fn qcow2(out: &Path) -> PathBuf {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    out.join(format!("{}.qcow2", manifest["profile"].as_str().unwrap()))
}

/// What one boot showed.
struct Boot {
    log: SerialLog,
    /// `config.yaml` as the stand-in printed it, one entry per line.
    config: Vec<String>,
    /// Server manifests the stand-in found: file name → contents.
    manifests: BTreeMap<String, String>,
}

impl Boot {
    fn new(log: SerialLog) -> Boot {
        let config = log
            .lines_with("k3s-stand-in: config| ")
            .iter()
            .map(|l| l["k3s-stand-in: config| ".len()..].to_owned())
            .collect();
        let mut manifests: BTreeMap<String, String> = BTreeMap::new();
        for l in log.lines_with("k3s-stand-in: manifest| ") {
            let rest = &l["k3s-stand-in: manifest| ".len()..];
            if let Some((name, line)) = rest.split_once("| ") {
                let m = manifests.entry(name.to_owned()).or_default();
                m.push_str(line);
                m.push('\n');
            } else if let Some(name) = rest.strip_suffix('|') {
                // An empty manifest line: printf keeps the "| " but the
                // console line loses its trailing space.
                manifests.entry(name.to_owned()).or_default().push('\n');
            }
        }
        Boot {
            log,
            config,
            manifests,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\nk3s config: {:#?}\nmanifests: {:?}\nserial log kept at {}",
            self.log.name,
            self.config,
            self.manifests.keys().collect::<Vec<_>>(),
            self.log.keep().display()
        );
    }

    /// The boot reached the stand-in as `hostname`/`role` and powered off.
    fn assert_reached_k3s(&self, hostname: &str, role: &str, ip: Option<&str>) {
        self.log.assert_absent("labimg: FATAL");
        self.log.assert_in_order(&[
            "labimg: stage1 start",
            "labimg: root verified",
            "labimg: root mounted",
            "labimg: stage2 start",
            "labimg: state mounted",
            "labimg: network up",
            &format!("labimg: identity hostname={hostname} role={role}"),
            "labimg: config written",
            "labimg: k3s binary source=baked",
            &format!("labimg: k3s starting role={role}"),
            &format!("k3s-stand-in: argv: {role} --config /etc/rancher/k3s/config.yaml"),
            &format!("k3s-stand-in: hostname={hostname}"),
            "k3s-stand-in: done, powering off",
        ]);
        if let Some(ip) = ip {
            // A static address outside QEMU's 10.0.2.0/24 still comes up: the
            // node just sets it.
            let want = format!("ip={ip}");
            if !self
                .log
                .lines_with("labimg: network up")
                .iter()
                .any(|l| l.split(' ').any(|w| w == want))
            {
                self.fail(&format!("no `labimg: network up … {want}` milestone"));
            }
        }
        if !self.log.powered_off {
            self.fail("the VM did not power off by itself");
        }
        self.log.assert_host_contract(&[]);
    }

    fn has(&self, line: &str) -> bool {
        self.config.iter().any(|l| l == line)
    }

    fn key(&self, key: &str) -> bool {
        self.config
            .iter()
            .any(|l| l.starts_with(&format!("{key}:")))
    }

    fn assert_config(&self, want: &[&str], keys_absent: &[&str]) {
        for w in want {
            if !self.has(w) {
                self.fail(&format!("k3s config lacks {w:?}"));
            }
        }
        for k in keys_absent {
            if self.key(k) {
                self.fail(&format!("k3s config must not set {k:?}"));
            }
        }
    }

    /// `token-file` points at the token path, and the token itself is not on
    /// the disk image: without `--embed-secrets` it goes only to
    /// `nodes/<host>/k3s/token`, served to that node by `labimg serve`.
    fn assert_token_file_configured_but_not_embedded(&self) {
        self.assert_config(&[&format!("token-file: {TOKEN_PATH}")], &["token"]);
        if self
            .log
            .lines_with(&format!(
                "k3s-stand-in: token-file absent path={TOKEN_PATH}"
            ))
            .is_empty()
        {
            self.fail("the disk image carried a token file although secrets were not embedded");
        }
    }

    fn manifest(&self, name: &str) -> &str {
        match self.manifests.get(name) {
            Some(m) => m,
            None => self.fail(&format!("server manifest {name} missing")),
        }
    }

    fn assert_manifest_has(&self, name: &str, needles: &[&str]) {
        let m = self.manifest(name);
        for n in needles {
            if !m.lines().any(|l| l.trim() == *n) {
                self.fail(&format!("manifest {name} lacks the line {n:?}:\n{m}"));
            }
        }
    }

    fn assert_no_manifests(&self) {
        if !self.manifests.is_empty() || !self.log.lines_with("k3s-stand-in: manifest ").is_empty()
        {
            self.fail("an agent got server manifests");
        }
    }
}

/// Boots the x86_64 (Proxmox) image of `out` as the node with `mac`.
fn boot_x86(out: &Path, name: &str, mac: &str) -> Boot {
    let log = Vm::x86_64_uefi(name)
        .unwrap()
        .scsi_disk(&qcow2(out), "qcow2")
        .unwrap()
        .user_net(mac)
        .boot(None, BOOT_TIMEOUT)
        .unwrap();
    Boot::new(log)
}

/// The Pi 5 image as raw (for reading its boot partition), in `dir`.
fn pi_raw(out: &Path, dir: &Path) -> PathBuf {
    RawDisk::from_image(&qcow2(out), dir).unwrap().raw
}

/// Copies `file` out of the raw image's boot-a FAT partition into `dir`.
fn boot_a_file(raw: &Path, dir: &Path, file: &str) -> PathBuf {
    let fat = dir.join("boot-a.img");
    if !fat.exists() {
        RawDisk::from_raw(raw.to_path_buf())
            .unwrap()
            .extract("boot-a", &fat)
            .unwrap();
    }
    mcopy(&fat, file, dir).unwrap()
}

/// Boots the Pi 5 image on aarch64 `virt` as the node with `mac`: the kernel,
/// initramfs and command line come from the image's boot-a partition (QEMU's
/// loader plays the Pi firmware), the whole disk is VirtIO block.
fn boot_pi(raw: &Path, scratch: &Path, name: &str, mac: &str) -> Boot {
    let kernel = boot_a_file(raw, scratch, "kernel_2712.img");
    let initrd = boot_a_file(raw, scratch, "initramfs.img");
    let cmdline = std::fs::read_to_string(boot_a_file(raw, scratch, "cmdline.txt")).unwrap();
    // The Pi 5's debug UART is ttyAMA10; virt's PL011 is ttyAMA0.
    let append = cmdline
        .trim_end()
        .replacen("console=ttyAMA10,115200", "console=ttyAMA0", 1);
    let log = Vm::aarch64_virt(name)
        .unwrap()
        .direct_kernel(&kernel, &initrd, &append)
        .virtio_disk(raw, "raw")
        .unwrap()
        .user_net(mac)
        .boot(None, BOOT_TIMEOUT)
        .unwrap();
    Boot::new(log)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            files_under(&e.path(), out);
        } else if ty.is_file() {
            out.push(e.path());
        }
    }
}

/// No secret value in any world-readable artifact: every file under
/// `netboot/` (the zstd initramfs also decompressed) and every file of the
/// root image, unpacked with `unsquashfs`. The per-node directories do hold
/// them (the positive control: the scan looks for the right bytes).
fn assert_secrets_only_in_node_dirs(out: &Path, secrets: &[&str], hosts: &[&str]) {
    use std::os::unix::fs::PermissionsExt;
    // Servers hold the configured token and the agent token derived from it (k3s
    // agent-token); agents only the agent token, never the server's.
    let agent_token = labimg_builder::preseed::agent_token(secrets[0]);
    for host in hosts {
        let dir = out.join("nodes").join(host).join("k3s");
        let token = dir.join("token");
        let data = std::fs::read(&token)
            .unwrap_or_else(|e| panic!("{}: {e} (the node's private token)", token.display()));
        let is_server = dir.join("agent-token").is_file();
        let (want, what) = if is_server {
            (secrets[0], "the configured token")
        } else {
            (agent_token.as_str(), "the agent token")
        };
        assert!(
            contains(&data, want),
            "{} does not hold {what}",
            token.display()
        );
        assert!(
            is_server || !contains(&data, secrets[0]),
            "agent {host} holds the server token"
        );
        let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} mode", token.display());
    }
    let secrets: Vec<&str> = secrets
        .iter()
        .copied()
        .chain([agent_token.as_str()])
        .collect();

    let scratch = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    files_under(&out.join("netboot"), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("root.squashfs")),
        "no netboot/root.squashfs in {files:?}"
    );
    let unpacked = scratch.path().join("root");
    run(Command::new("unsquashfs")
        .args(["-q", "-no-xattrs", "-d"])
        .arg(&unpacked)
        .arg(out.join("netboot/root.squashfs")))
    .unwrap();
    let mut root_files = Vec::new();
    files_under(&unpacked, &mut root_files);
    // The scan really sees the node table the image carries.
    for host in hosts {
        let cfg = unpacked.join(format!("usr/lib/labimg/nodes/{host}/k3s/config.yaml"));
        assert!(
            cfg.is_file(),
            "{} missing from the root image",
            cfg.display()
        );
        assert!(
            !cfg.with_file_name("token").exists(),
            "the root image carries {host}'s token file"
        );
    }
    let mut scanned = 0;
    for f in files.iter().chain(&root_files) {
        let mut data = std::fs::read(f).unwrap();
        if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            // The initramfs: look inside the compression too.
            let plain = Command::new("zstd").arg("-dc").arg(f).output().unwrap();
            assert!(plain.status.success(), "zstd -dc {}", f.display());
            data.extend_from_slice(&plain.stdout);
        }
        for s in &secrets {
            assert!(
                !contains(&data, s),
                "a secret value leaked into the world-readable {}",
                f.display()
            );
        }
        scanned += 1;
    }
    assert!(scanned > 100, "only {scanned} files scanned");
}

/// The pi5-argocd example reads its token from `LABIMG_K3S_TOKEN`.
#[allow(unsafe_code)]
fn set_token_env(token: &str) {
    // SAFETY: called with the examples lock held and before the build starts
    // any thread: the other tests of this binary (threads under `cargo test`,
    // processes under nextest) wait on that lock and read no environment.
    unsafe { std::env::set_var("LABIMG_K3S_TOKEN", token) };
}

#[test]
fn pi5_argocd_example_builds_and_its_server_and_agent_boot_to_the_k3s_stand_in() {
    let _lock = examples_lock();
    let start = Instant::now();
    let token = "K10pi5-argocd-example-token-d41c7e2a";
    set_token_env(token);
    // QEMU virt has no Pi serial number: the test adds MACs to the nodes it
    // boots (pi-cp1, pi-w1) so the image recognises them.
    let sets = [
        r#"outputs.formats=["qcow2"]"#.to_owned(),
        r#"nodes.0.mac="52:54:00:5e:01:01""#.to_owned(),
        r#"nodes.1.mac="52:54:00:5e:01:02""#.to_owned(),
    ];
    let out = build_profile_file_once("example-pi5-argocd", &example("pi5-argocd"), &sets)
        .expect("building the pi5-argocd example");
    eprintln!("pi5-argocd: built in {:.0?}", start.elapsed());
    let scratch = tempfile::tempdir().unwrap();
    let raw = pi_raw(&out, scratch.path());

    let cp = boot_pi(
        &raw,
        scratch.path(),
        "example-pi5-argocd-cp1",
        "52:54:00:5e:01:01",
    );
    cp.assert_reached_k3s("pi-cp1", "server", None);
    cp.assert_config(
        &[
            "node-name: pi-cp1",
            "flannel-backend: none",
            "disable-network-policy: true",
        ],
        // One server: k3s's default SQLite, no embedded etcd.
        &["server", "cluster-init"],
    );
    cp.assert_token_file_configured_but_not_embedded();
    cp.assert_manifest_has("cilium.yaml", &["kind: HelmChart", "chart: cilium"]);
    cp.assert_manifest_has(
        "argocd.yaml",
        &[
            "kind: Application",
            "name: root",
            r#"repoURL: "https://github.com/example/homelab.git""#,
            r#"path: "clusters/pi-lab""#,
        ],
    );
    eprintln!("pi5-argocd: server booted in {:.0?}", cp.log.elapsed);

    let w = boot_pi(
        &raw,
        scratch.path(),
        "example-pi5-argocd-w1",
        "52:54:00:5e:01:02",
    );
    w.assert_reached_k3s("pi-w1", "agent", None);
    w.assert_config(
        &["node-name: pi-w1", "server: https://pi-cp1.lan:6443"],
        SERVER_ONLY_KEYS,
    );
    w.assert_token_file_configured_but_not_embedded();
    w.assert_no_manifests();
    eprintln!("pi5-argocd: agent booted in {:.0?}", w.log.elapsed);

    assert_secrets_only_in_node_dirs(&out, &[token], &["pi-cp1", "pi-w1", "pi-w2"]);
    eprintln!("pi5-argocd: total {:.0?}", start.elapsed());
}

#[test]
fn proxmox_flux_example_builds_and_its_server_and_agent_boot_to_the_k3s_stand_in() {
    let _lock = examples_lock();
    let start = Instant::now();
    let token = "K10proxmox-flux-example-token-9b2e64f0";
    let deploy_key = "-----BEGIN OPENSSH PRIVATE KEY-----\nproxmox-flux-deploy-key-5a17c3\n-----END OPENSSH PRIVATE KEY-----\n";
    let age_key = "AGE-SECRET-KEY-1PROXMOXFLUXEXAMPLE8E3D0C";
    let ex = "proxmox-flux";
    let sets = [
        r#"outputs.formats=["qcow2"]"#.to_owned(),
        file_set("cluster.token", &secret_file(ex, "k3s-token", token)),
        file_set(
            "gitops.credentials",
            &secret_file(ex, "flux-deploy-key", deploy_key),
        ),
        file_set("gitops.sops-age-key", &secret_file(ex, "age.key", age_key)),
    ];
    let out = build_profile_file_once("example-proxmox-flux", &example(ex), &sets)
        .expect("building the proxmox-flux example");
    eprintln!("proxmox-flux: built in {:.0?}", start.elapsed());

    let cp = boot_x86(&out, "example-proxmox-flux-cp1", "bc:24:11:00:00:01");
    cp.assert_reached_k3s("pve-cp1", "server", Some("192.168.10.11/24"));
    cp.assert_config(
        &[
            "node-name: pve-cp1",
            "node-ip: \"192.168.10.11\"",
            "flannel-backend: none",
            "- traefik",
        ],
        // One server: k3s's default SQLite, no embedded etcd.
        &["server", "cluster-init"],
    );
    cp.assert_token_file_configured_but_not_embedded();
    cp.assert_manifest_has("cilium.yaml", &["kind: HelmChart", "chart: cilium"]);
    cp.assert_manifest_has(
        "flux.yaml",
        &[
            "kind: GitRepository",
            r#"url: "ssh://git@github.com/example/fleet.git""#,
            "kind: Kustomization",
            r#"path: "./clusters/pve-lab""#,
        ],
    );
    // The Secrets those manifests reference hold the deploy key and age key:
    // they are served per node, never baked.
    for secret in ["flux-git-credentials.yaml", "sops-age.yaml"] {
        if cp.manifests.contains_key(secret) {
            cp.fail(&format!(
                "the disk image carried the secret manifest {secret}"
            ));
        }
        assert!(
            out.join("nodes/pve-cp1/manifests").join(secret).is_file(),
            "nodes/pve-cp1/manifests/{secret} missing"
        );
    }
    eprintln!("proxmox-flux: server booted in {:.0?}", cp.log.elapsed);

    let w = boot_x86(&out, "example-proxmox-flux-w1", "bc:24:11:00:00:02");
    w.assert_reached_k3s("pve-w1", "agent", Some("192.168.10.21/24"));
    w.assert_config(
        &[
            "node-name: pve-w1",
            "node-ip: \"192.168.10.21\"",
            "server: https://192.168.10.11:6443",
        ],
        SERVER_ONLY_KEYS,
    );
    w.assert_token_file_configured_but_not_embedded();
    w.assert_no_manifests();
    eprintln!("proxmox-flux: agent booted in {:.0?}", w.log.elapsed);

    assert_secrets_only_in_node_dirs(
        &out,
        &[
            token,
            "proxmox-flux-deploy-key-5a17c3",
            "PROXMOXFLUXEXAMPLE8E3D0C",
        ],
        &["pve-cp1", "pve-w1", "pve-w2"],
    );
    eprintln!("proxmox-flux: total {:.0?}", start.elapsed());
}

#[test]
fn ha_cilium_argocd_example_builds_and_its_first_and_joining_servers_boot_to_the_k3s_stand_in() {
    let _lock = examples_lock();
    let start = Instant::now();
    let token = "K10ha-cilium-argocd-example-token-3f8a1b96";
    let ex = "ha-cilium-argocd";
    // The example's token is a sops-file and there is no sops here: give it
    // as a file, as the example's comment tells users without sops to do.
    let sets = [
        r#"outputs.formats=["qcow2"]"#.to_owned(),
        file_set("cluster.token", &secret_file(ex, "k3s-token", token)),
    ];
    let out = build_profile_file_once("example-ha-cilium-argocd", &example(ex), &sets)
        .expect("building the ha-cilium-argocd example");
    eprintln!("ha-cilium-argocd: built in {:.0?}", start.elapsed());

    let cilium = [
        "kind: HelmChart",
        "kubeProxyReplacement: true",
        "k8sServicePort: 6444",
    ];
    let argocd = [
        "kind: Application",
        "name: root",
        r#"repoURL: "https://github.com/example/ha-lab.git""#,
    ];

    let cp1 = boot_x86(&out, "example-ha-cilium-argocd-cp1", "bc:24:11:20:00:01");
    cp1.assert_reached_k3s("cp1", "server", Some("192.168.20.11/24"));
    cp1.assert_config(
        &[
            "node-name: cp1",
            "cluster-init: true",
            "disable-kube-proxy: true",
            "flannel-backend: none",
        ],
        &["server"],
    );
    cp1.assert_token_file_configured_but_not_embedded();
    cp1.assert_manifest_has("cilium.yaml", &cilium);
    cp1.assert_manifest_has("argocd.yaml", &argocd);
    eprintln!(
        "ha-cilium-argocd: first server booted in {:.0?}",
        cp1.log.elapsed
    );

    let cp2 = boot_x86(&out, "example-ha-cilium-argocd-cp2", "bc:24:11:20:00:02");
    cp2.assert_reached_k3s("cp2", "server", Some("192.168.20.12/24"));
    cp2.assert_config(
        &[
            "node-name: cp2",
            "server: https://192.168.20.11:6443",
            "disable-kube-proxy: true",
            "flannel-backend: none",
        ],
        &["cluster-init"],
    );
    cp2.assert_token_file_configured_but_not_embedded();
    cp2.assert_manifest_has("cilium.yaml", &cilium);
    cp2.assert_manifest_has("argocd.yaml", &argocd);
    eprintln!(
        "ha-cilium-argocd: joining server booted in {:.0?}",
        cp2.log.elapsed
    );

    assert_secrets_only_in_node_dirs(&out, &[token], &["cp1", "cp2", "cp3"]);
    eprintln!("ha-cilium-argocd: total {:.0?}", start.elapsed());
}
