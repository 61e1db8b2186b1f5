//! Interoperability with the reference `minisign` tool (Debian package `minisign`):
//! it verifies what labimg signs, and labimg signs with and verifies keys the tool
//! made, both unencrypted (`minisign -G -W`) and password-protected.

use std::path::Path;
use std::process::{Command, Stdio};

use labimg_builder::artifact::sign::{self, KeyProtection};

fn minisign() -> Command {
    assert!(
        Command::new("minisign").arg("-v").output().is_ok(),
        "install Debian's minisign package (apt-get install minisign)"
    );
    Command::new("minisign")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn folder(root: &Path) -> std::path::PathBuf {
    let dir = root.join("img");
    std::fs::create_dir_all(dir.join("netboot")).unwrap();
    std::fs::write(dir.join("netboot/vmlinuz"), b"kernel").unwrap();
    std::fs::write(
        dir.join("SHA256SUMS"),
        "d5d0a2b85a0bbb2ef70e3c1fb3f1b3ad1b4e0d4d23b7c9cfc3bd14df7fd6d6ad  netboot/vmlinuz\n",
    )
    .unwrap();
    dir
}

#[test]
fn minisign_verifies_what_labimg_signs() {
    let t = tempfile::tempdir().unwrap();
    let dir = folder(t.path());
    let k = sign::generate_keypair(&t.path().join("keys"), KeyProtection::None).unwrap();
    sign::sign_dir(&dir, &k.secret).unwrap();
    let out = run(minisign()
        .arg("-V")
        .arg("-p")
        .arg(&k.public)
        .arg("-m")
        .arg(dir.join("SHA256SUMS")));
    assert!(
        out.contains(&format!("labimg SHA256SUMS, key {}", k.id)),
        "the trusted comment is shown: {out}"
    );
    // And refuses it after an edit of SHA256SUMS.
    std::fs::write(dir.join("SHA256SUMS"), "edited\n").unwrap();
    let st = minisign()
        .arg("-Vq")
        .arg("-p")
        .arg(&k.public)
        .arg("-m")
        .arg(dir.join("SHA256SUMS"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .status;
    assert!(!st.success());
}

#[test]
fn labimg_uses_keys_and_signatures_made_by_minisign() {
    let t = tempfile::tempdir().unwrap();
    let dir = folder(t.path());
    let (sk, pk) = (t.path().join("mini.key"), t.path().join("mini.pub"));
    run(minisign()
        .args(["-G", "-W", "-s"])
        .arg(&sk)
        .arg("-p")
        .arg(&pk));
    // A signature made by the tool verifies with labimg…
    run(minisign()
        .args(["-S", "-s"])
        .arg(&sk)
        .arg("-m")
        .arg(dir.join("SHA256SUMS")));
    let public = sign::load_public_key(&pk).unwrap();
    sign::verify_signature(&dir, &public).unwrap();
    // …and labimg signs with the tool's unencrypted secret key.
    std::fs::remove_file(dir.join("SHA256SUMS.minisig")).unwrap();
    sign::sign_dir(&dir, &sk).unwrap();
    sign::verify_signature(&dir, &public).unwrap();
    // The bare base64 form of the public key (`minisign -P`) loads too.
    let line = std::fs::read_to_string(&pk).unwrap();
    let bare = t.path().join("bare.pub");
    std::fs::write(&bare, line.lines().nth(1).unwrap()).unwrap();
    sign::verify_signature(&dir, &sign::load_public_key(&bare).unwrap()).unwrap();
}

#[test]
fn labimg_decrypts_a_password_protected_minisign_key() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let dir = folder(t.path());
    let (sk, pk) = (t.path().join("enc.key"), t.path().join("enc.pub"));
    // minisign reads the password twice from stdin when it is not a terminal.
    let mut child = minisign()
        .args(["-G", "-s"])
        .arg(&sk)
        .arg("-p")
        .arg(&pk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret\ns3cret\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = sign::load_secret_key_with(&sk, Some("s3cret".into())).unwrap();
    sign::sign_sums(&dir, &key).unwrap();
    sign::verify_signature(&dir, &sign::load_public_key(&pk).unwrap()).unwrap();
}
