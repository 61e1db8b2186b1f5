//! Secure Boot crypto against independent implementations: `sbverify` (sbsigntool)
//! checks labimg's Authenticode signatures on Debian's real systemd-boot,
//! `cert-to-efi-sig-list` and `sign-efi-sig-list` (efitools) write the same
//! signature lists and authenticated variables byte for byte, and `openssl` reads
//! the certificates and writes the PKCS#1 key form other tools use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use labimg_builder::debian::{Archive, Cache, DEFAULT_MIRROR, extract_deb};
use labimg_builder::secureboot::{self, Signer, VerifyError, sign_pe, verify_pe};
use labimg_builder::tree::Tree;

const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Debian trixie's systemd-boot (amd64), fetched and verified by the builder's own
/// Debian client; `LABIMG_TEST_CACHE`, else the builder's default cache.
fn systemd_boot() -> &'static [u8] {
    static PE: OnceLock<Vec<u8>> = OnceLock::new();
    PE.get_or_init(|| {
        let dir = match std::env::var_os("LABIMG_TEST_CACHE") {
            Some(d) => PathBuf::from(d),
            None => Cache::default_dir().unwrap(),
        };
        let archive = Archive::open(
            DEFAULT_MIRROR,
            &["trixie".to_owned()],
            "amd64",
            Cache::new(dir).unwrap(),
        )
        .unwrap();
        let res = archive.resolve(&["systemd-boot-efi".into()]).unwrap();
        let fetched = archive.fetch(&res).unwrap();
        let deb = fetched
            .iter()
            .find(|f| f.package.name == "systemd-boot-efi")
            .unwrap();
        let mut tree = Tree::new();
        extract_deb(&deb.path, &mut tree).unwrap();
        tree.get_follow(SYSTEMD_BOOT)
            .and_then(|e| e.data())
            .expect("systemd-bootx64.efi in systemd-boot-efi")
            .to_vec()
    })
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn sbverify(cert: &Path, file: &Path) -> (bool, String) {
    run(Command::new("sbverify").arg("--cert").arg(cert).arg(file))
}

fn verify_error(pe: &[u8], cert: &[u8]) -> VerifyError {
    let e = verify_pe(pe, cert).expect_err("verify_pe accepted");
    e.downcast_ref::<VerifyError>()
        .unwrap_or_else(|| panic!("not a VerifyError: {e:#}"))
        .clone()
}

/// File offset of the `.text` section's data.
fn text_offset(pe: &[u8]) -> usize {
    let nt = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
    let nsec = u16::from_le_bytes(pe[nt + 6..nt + 8].try_into().unwrap()) as usize;
    let opt_size = u16::from_le_bytes(pe[nt + 20..nt + 22].try_into().unwrap()) as usize;
    let sh = nt + 24 + opt_size;
    (0..nsec)
        .map(|i| sh + 40 * i)
        .find(|s| &pe[*s..*s + 5] == b".text")
        .map(|s| u32::from_le_bytes(pe[s + 20..s + 24].try_into().unwrap()) as usize)
        .expect(".text section")
}

#[test]
fn sbverify_and_verify_pe_agree_on_signed_systemd_boot() {
    let pe = systemd_boot();
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    secureboot::keygen(&a, "test-a", 1_795_937_100).unwrap();
    secureboot::keygen(&b, "test-b", 1_795_937_100).unwrap();
    let signer = secureboot::load_db(&a).unwrap();
    let other = secureboot::load_db(&b).unwrap();

    // Unsigned.
    let unsigned = t.path().join("unsigned.efi");
    std::fs::write(&unsigned, pe).unwrap();
    assert_eq!(
        verify_error(pe, &signer.cert_der),
        VerifyError::NotSigned,
        "Debian's systemd-boot is not signed by us"
    );

    // Signed by a: accepted with a's cert, refused with b's.
    let started = std::time::Instant::now();
    let signed = sign_pe(pe, &signer).unwrap();
    println!("signed {} bytes in {:?}", pe.len(), started.elapsed());
    let signed_path = t.path().join("signed.efi");
    std::fs::write(&signed_path, &signed).unwrap();
    let (ok, log) = sbverify(&a.join("db.crt"), &signed_path);
    assert!(ok, "sbverify refused labimg's signature:\n{log}");
    verify_pe(&signed, &signer.cert_der).unwrap();
    let (ok, log) = sbverify(&b.join("db.crt"), &signed_path);
    assert!(!ok, "sbverify accepted another key:\n{log}");
    match verify_error(&signed, &other.cert_der) {
        VerifyError::OtherSigner {
            subject,
            fingerprint,
            ..
        } => {
            assert_eq!(subject, "CN=test-a db");
            assert_eq!(fingerprint, signer.fingerprint_sha256());
        }
        e => panic!("expected another signer, got {e}"),
    }
    let (ok, log) = sbverify(&a.join("db.crt"), &unsigned);
    assert!(!ok, "sbverify accepted an unsigned image:\n{log}");

    // One byte of .text changed after signing.
    let mut tampered = signed.clone();
    let at = text_offset(&tampered) + 100;
    tampered[at] ^= 0x01;
    let tampered_path = t.path().join("tampered.efi");
    std::fs::write(&tampered_path, &tampered).unwrap();
    let (ok, log) = sbverify(&a.join("db.crt"), &tampered_path);
    assert!(!ok, "sbverify accepted a changed image:\n{log}");
    assert_eq!(
        verify_error(&tampered, &signer.cert_der),
        VerifyError::DigestMismatch
    );
    assert!(
        verify_pe(&tampered, &signer.cert_der)
            .unwrap_err()
            .to_string()
            .contains("changed after signing")
    );

    // Deterministic, and re-signing replaces the signature.
    assert_eq!(
        sign_pe(pe, &signer).unwrap(),
        signed,
        "signing is deterministic"
    );
    let resigned = sign_pe(&signed, &other).unwrap();
    assert_eq!(resigned, sign_pe(pe, &other).unwrap());
    verify_pe(&resigned, &other.cert_der).unwrap();
    std::fs::write(&signed_path, &resigned).unwrap();
    let (ok, log) = sbverify(&b.join("db.crt"), &signed_path);
    assert!(ok, "sbverify refused the re-signed image:\n{log}");
}

#[test]
fn esl_and_auth_match_efitools_and_openssl_reads_the_certs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("keys");
    // 2026-11-29 07:25:00 UTC
    let ks = secureboot::keygen(&dir, "labimg test", 1_795_937_100).unwrap();
    let guid = std::fs::read_to_string(dir.join("GUID")).unwrap();
    let guid = guid.trim();
    assert_eq!(guid, ks.owner.to_string());

    for var in ["PK", "KEK", "db"] {
        let crt = dir.join(format!("{var}.crt"));
        // openssl reads the PEM and DER forms, and they are the same certificate.
        let (ok, pem_text) = run(Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-subject",
                "-fingerprint",
                "-sha256",
                "-in",
            ])
            .arg(&crt));
        assert!(ok, "openssl x509 refused {var}.crt:\n{pem_text}");
        let (ok, der_text) = run(Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-subject",
                "-fingerprint",
                "-sha256",
                "-inform",
                "DER",
                "-in",
            ])
            .arg(dir.join(format!("{var}.cer"))));
        assert!(ok, "openssl x509 refused {var}.cer:\n{der_text}");
        assert_eq!(pem_text, der_text);
        assert!(
            pem_text.contains(&format!("CN = labimg test {var}")),
            "{pem_text}"
        );
        let (_, subject, fp) = ks.certs.iter().find(|c| c.0.name() == var).unwrap();
        assert_eq!(subject, &format!("CN=labimg test {var}"));
        let openssl_fp = pem_text
            .lines()
            .find_map(|l| l.split_once("Fingerprint=").map(|x| x.1))
            .unwrap()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(&openssl_fp, fp);

        // The signature list: byte for byte what cert-to-efi-sig-list writes.
        let esl = t.path().join(format!("{var}.oracle.esl"));
        let (ok, log) = run(Command::new("cert-to-efi-sig-list")
            .args(["-g", guid])
            .arg(&crt)
            .arg(&esl));
        assert!(ok, "{log}");
        assert_eq!(
            std::fs::read(&esl).unwrap(),
            std::fs::read(dir.join(format!("{var}.esl"))).unwrap(),
            "{var}.esl differs from cert-to-efi-sig-list's"
        );

        // The authenticated variable: byte for byte what sign-efi-sig-list writes
        // with the same signer and timestamp (PKCS#1 v1.5 signatures are
        // deterministic).
        let by = if var == "db" { "KEK" } else { "PK" };
        let auth = t.path().join(format!("{var}.oracle.auth"));
        let (ok, log) = run(Command::new("sign-efi-sig-list")
            .args(["-g", guid, "-t", "2026-11-29 07:25:00", "-k"])
            .arg(dir.join(format!("{by}.key")))
            .arg("-c")
            .arg(dir.join(format!("{by}.crt")))
            .arg(var)
            .arg(dir.join(format!("{var}.esl")))
            .arg(&auth));
        assert!(ok, "{log}");
        assert_eq!(
            std::fs::read(&auth).unwrap(),
            std::fs::read(dir.join(format!("{var}.auth"))).unwrap(),
            "{var}.auth differs from sign-efi-sig-list's"
        );
    }
}

#[test]
fn signer_loads_pkcs1_keys_and_der_certs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    secureboot::keygen(dir, "labimg", 1_795_937_100).unwrap();
    let pkcs1 = dir.join("db-pkcs1.key");
    let (ok, log) = run(Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(dir.join("db.key"))
        .arg("-out")
        .arg(&pkcs1));
    assert!(ok, "{log}");
    assert!(
        std::fs::read_to_string(&pkcs1)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    let a = secureboot::load_db(dir).unwrap();
    let b = Signer::load(&dir.join("db.cer"), &pkcs1).unwrap();
    assert_eq!(a.cert_der, b.cert_der);
    assert_eq!(a.fingerprint_sha256(), b.fingerprint_sha256());
    let pe = systemd_boot();
    assert_eq!(sign_pe(pe, &a).unwrap(), sign_pe(pe, &b).unwrap());
    // A key from another pair is refused with both names in the message.
    let e = Signer::load(&dir.join("db.crt"), &dir.join("PK.key")).unwrap_err();
    assert!(format!("{e:#}").contains("do not belong together"), "{e:#}");
}
