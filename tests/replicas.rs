//! Two `labimg serve` replicas (the real binary, each with its own ports and state
//! folder, one images folder and inventory) are interchangeable with a shared
//! `--token-key`: a node's boot script from one, its config bundle (with the token
//! from that script) from the other. Without the key they are not, which is why the
//! key exists.

mod common;

use std::time::Duration;

use common::{CP_MAC, Server, curl, free_ports, layout, serve_command, untar};

/// The `labimg.token=` argument of a boot script.
fn token_of(script: &str) -> String {
    script
        .split_whitespace()
        .find_map(|a| a.strip_prefix("labimg.token="))
        .unwrap_or_else(|| panic!("no labimg.token in the boot script:\n{script}"))
        .to_string()
}

fn boot_script(http: u16) -> String {
    let (rc, out, err) = curl(&[
        "--fail",
        &format!("http://127.0.0.1:{http}/boot.ipxe?mac={CP_MAC}"),
    ]);
    assert_eq!(rc, 0, "boot.ipxe from :{http}: {err}");
    String::from_utf8(out).unwrap()
}

/// (HTTP status, body) of the config bundle from the replica at `http`.
fn config(http: u16, token: &str) -> (String, Vec<u8>) {
    let (rc, out, err) = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-w",
        "\n%{http_code}",
        &format!("http://127.0.0.1:{http}/v1/nodes/{CP_MAC}/config"),
    ]);
    assert_eq!(rc, 0, "config from :{http}: {err}");
    let split = out.iter().rposition(|&b| b == b'\n').unwrap();
    (
        String::from_utf8_lossy(&out[split + 1..]).into_owned(),
        out[..split].to_vec(),
    )
}

/// Two replicas on `root`; `key` is passed to both (flag to one, environment to the
/// other, as a Kubernetes Secret mounted as a file would be).
fn replicas(root: &std::path::Path, key: Option<&std::path::Path>) -> (Server, u16, Server, u16) {
    let mut started = Vec::new();
    for (i, state) in ["state-a", "state-b"].into_iter().enumerate() {
        let (http, tftp) = free_ports();
        let mut cmd = serve_command(root, state, http, tftp);
        match (key, i) {
            (Some(k), 0) => {
                cmd.arg("--token-key").arg(k);
            }
            (Some(k), _) => {
                cmd.env("LABIMG_TOKEN_KEY_FILE", k);
            }
            (None, _) => {}
        }
        let mut srv = Server::start(cmd);
        srv.wait_for("TFTP on", Duration::from_secs(30));
        started.push((srv, http));
    }
    let (b, hb) = started.pop().unwrap();
    let (a, ha) = started.pop().unwrap();
    (a, ha, b, hb)
}

#[test]
fn replicas_sharing_a_token_key_serve_each_others_nodes() {
    let t = tempfile::tempdir().unwrap();
    layout(t.path(), 10_000);
    let key = t.path().join("token.key");
    std::fs::write(
        &key,
        "3f1c9a0e8b7d6c5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f\n",
    )
    .unwrap();
    let (mut a, port_a, mut b, port_b) = replicas(t.path(), Some(&key));
    assert!(
        a.seen
            .iter()
            .chain(&b.seen)
            .filter(|l| l.contains("derived from the shared token key"))
            .count()
            == 2,
        "both replicas say they derive tokens:\n{}\n{}",
        a.seen.join("\n"),
        b.seen.join("\n")
    );

    let script = boot_script(port_a);
    assert!(script.contains("labimg: booting cp1"), "{script}");
    let token = token_of(&script);
    assert_eq!(
        token,
        token_of(&boot_script(port_b)),
        "both replicas render one token"
    );

    let (status, bundle_b) = config(port_b, &token);
    assert_eq!(
        status,
        "200",
        "replica B refused A's token: {}",
        String::from_utf8_lossy(&bundle_b)
    );
    let (status, bundle_a) = config(port_a, &token);
    assert_eq!(status, "200");
    let (fa, fb) = (untar(&bundle_a), untar(&bundle_b));
    assert_eq!(fb["node.env"], b"ROLE=server\n");
    let pw = &fb["k3s/node-password"];
    assert_eq!(pw.len(), 33, "32 hex characters and a newline: {pw:?}");
    assert_eq!(
        fa["k3s/node-password"], *pw,
        "k3s sees one node password from either replica"
    );
    assert_eq!(fa, fb, "the same bundle from either replica");

    // A wrong token is still refused, and nothing was written as tokens.json.
    assert_eq!(config(port_b, "0123456789abcdef0123456789abcdef").0, "401");
    assert!(!t.path().join("state-a/tokens.json").exists());
    assert!(!t.path().join("state-b/tokens.json").exists());
    for s in [&mut a, &mut b] {
        s.signal("-TERM");
        let (st, lines) = s.wait_exit(Duration::from_secs(40));
        assert!(st.success(), "{st}: {}", lines.join("\n"));
    }
}

#[test]
fn replicas_without_a_key_refuse_each_others_tokens() {
    let t = tempfile::tempdir().unwrap();
    layout(t.path(), 10_000);
    let (_a, port_a, _b, port_b) = replicas(t.path(), None);
    let token = token_of(&boot_script(port_a));
    assert_eq!(config(port_a, &token).0, "200");
    assert_eq!(
        config(port_b, &token).0,
        "401",
        "random per-replica tokens differ"
    );
}

#[test]
fn a_short_token_key_stops_serve_with_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    layout(t.path(), 10_000);
    let key = t.path().join("short.key");
    std::fs::write(&key, "tooshort\n").unwrap();
    let (http, tftp) = free_ports();
    let out = serve_command(t.path(), "state", http, tftp)
        .arg("--token-key")
        .arg(&key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("short.key") && err.contains("8 bytes") && err.contains("at least 32"),
        "{err}"
    );
}
