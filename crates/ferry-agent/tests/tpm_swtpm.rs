//! `ferry_agent::tpm` against real software TPMs (swtpm), checked with independent
//! tools: the EK certificate with openssl, credentials made offline with
//! `tpm2_makecredential -T none`, quotes with `tpm2_checkquote`.
//!
//! Needs swtpm, swtpm-tools, tpm2-tools and openssl (no root). Run with
//! `cargo test -p ferry-agent --test tpm_swtpm -- --nocapture` to see the step timings.

#![cfg(feature = "tpm")]

#[path = "common/swtpm.rs"]
mod swtpm;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_agent::tpm::{hex, object_name, pcr_digest, AttestationKey, Tpm};
use sha2::{Digest as _, Sha256};
use swtpm::{require, LocalCa, Swtpm};
use tss_esapi::structures::{Attest, AttestInfo, Public};
use tss_esapi::traits::UnMarshall;

/// A CA and one running TPM it certified (fields drop in order: swtpm before its directory).
struct Lab {
    tpm: Swtpm,
    tcti: String,
    ca: LocalCa,
    dir: tempfile::TempDir,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = LocalCa::new(&dir.path().join("ca"));
    let (tpm, tcti) = another_tpm(dir.path(), "tpm-a", &ca);
    Lab { tpm, tcti, ca, dir }
}

fn another_tpm(dir: &Path, name: &str, ca: &LocalCa) -> (Swtpm, String) {
    let mut tpm = Swtpm::manufacture(&dir.join(name), ca);
    let tcti = tpm.start();
    (tpm, tcti)
}

fn open(tcti: &str) -> Tpm {
    Tpm::open(tcti).unwrap_or_else(|e| panic!("{e}"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path.display().to_string()
}

/// A `TPM2B_*` wire form: big-endian u16 size, then the bytes.
fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len()).expect("fits a TPM2B").to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// The RSA modulus of a marshalled `TPMT_PUBLIC`.
fn modulus(public: &[u8]) -> Vec<u8> {
    match Public::unmarshall(public).expect("TPMT_PUBLIC") {
        Public::Rsa { unique, .. } => unique.value().to_vec(),
        other => panic!("not an RSA key: {other:?}"),
    }
}

/// `tpm2_makecredential -T none` (no TPM involved): a credential for `secret`, wrapped
/// to the EK, for the object named `name`; returns (credential blob, encrypted secret)
/// without size prefixes, as the server sends them.
fn make_credential(dir: &Path, ek_public: &[u8], name: &[u8], secret: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let ek = write(dir, "ek.pub", &tpm2b(ek_public));
    let secret = write(dir, "secret", secret);
    let out = dir.join("credential.out");
    let status = Command::new(require("tpm2_makecredential"))
        .args(["-T", "none", "-u", &ek, "-n", &hex(name), "-s", &secret, "-o"])
        .arg(&out)
        .status()
        .expect("run tpm2_makecredential");
    assert!(status.success(), "tpm2_makecredential failed");
    // tpm2-tools' file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    let file = std::fs::read(&out).expect("read the credential");
    assert_eq!(file[..8], [0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1], "tpm2-tools credential header");
    let take = |at: usize| {
        let len = usize::from(u16::from_be_bytes([file[at], file[at + 1]]));
        (file[at + 2..at + 2 + len].to_vec(), at + 2 + len)
    };
    let (blob, next) = take(8);
    let (encrypted, end) = take(next);
    assert_eq!(end, file.len());
    (blob, encrypted)
}

/// `tpm2_checkquote` on a quote: signature by `ak`, qualifying data `qualifying`.
fn checkquote(dir: &Path, ak: &AttestationKey, attest: &[u8], signature: &[u8], qualifying: &[u8]) -> bool {
    // TPMT_SIGNATURE: TPM_ALG_RSASSA, TPM_ALG_SHA256, TPM2B_PUBLIC_KEY_RSA.
    let mut sig = vec![0x00, 0x14, 0x00, 0x0b];
    sig.extend_from_slice(&tpm2b(signature));
    let public = write(dir, "ak.pub", &tpm2b(&ak.public));
    let message = write(dir, "quote.msg", attest);
    let sig = write(dir, "quote.sig", &sig);
    Command::new(require("tpm2_checkquote"))
        .args(["-u", &public, "-m", &message, "-s", &sig, "-g", "sha256", "-q", &hex(qualifying)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run tpm2_checkquote")
        .success()
}

/// The PCR indices (SHA-256 bank) and digest inside a marshalled quote.
fn quoted(attest: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let attest = Attest::unmarshall(attest).expect("TPMS_ATTEST");
    let AttestInfo::Quote { info } = attest.attested() else { panic!("not a quote") };
    let mut pcrs = Vec::new();
    for selection in info.pcr_selection().get_selections() {
        assert_eq!(selection.hashing_algorithm(), tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256);
        for slot in selection.selected() {
            pcrs.push(u32::from(slot).trailing_zeros() as u8);
        }
    }
    pcrs.sort_unstable();
    (pcrs, info.pcr_digest().value().to_vec(), attest.extra_data().value().to_vec())
}

#[test]
fn endorsement_key_and_certificate() {
    let lab = lab();
    let mut tpm = open(&lab.tcti);
    let ek = tpm.endorsement().expect("endorsement");
    assert_eq!(modulus(&ek.public).len(), 256, "RSA 2048");
    let cert = ek.certificate.expect("swtpm_setup --create-ek-cert stores one");
    let der = write(lab.dir.path(), "ek.der", &cert);
    let out = Command::new(require("openssl"))
        .args(["x509", "-inform", "DER", "-in", &der, "-noout", "-modulus"])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "the EK certificate is DER X.509");
    let text = String::from_utf8_lossy(&out.stdout);
    let cert_modulus = text.trim().strip_prefix("Modulus=").expect("modulus line").to_lowercase();
    assert_eq!(cert_modulus, hex(&modulus(&ek.public)), "the certificate certifies this EK");
    // It chains to the test CA (root and issuer), not to another one.
    let pem = lab.dir.path().join("ek.pem");
    let status = Command::new("openssl").args(["x509", "-inform", "DER", "-in", &der, "-out"]).arg(&pem).status();
    assert!(status.expect("openssl").success());
    let verify = |bundle: &Path| {
        let out = Command::new("openssl").arg("verify").arg("-CAfile").arg(bundle).arg(&pem).output().expect("openssl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, why) = verify(&lab.ca.bundle());
    assert!(ok, "{why}");
    let other = LocalCa::new(&lab.dir.path().join("other-ca"));
    let (ok, why) = verify(&other.bundle());
    assert!(!ok && why.contains("unable to get local issuer certificate"), "another CA must not verify it: {why}");
    // The same EK again (the primary is derived from the seed), even after a reopen.
    assert_eq!(tpm.endorsement().expect("again").public, ek.public);
    drop(tpm);
    assert_eq!(open(&lab.tcti).endorsement().expect("reopened").public, ek.public);
}

#[test]
fn attestation_key_and_offline_credential() {
    let lab = lab();
    let mut tpm = open(&lab.tcti);
    let ek = tpm.endorsement().expect("endorsement");
    let ak = tpm.create_ak().expect("create the AK");
    assert_eq!(ak.name, object_name(&ak.public));
    assert_eq!(modulus(&ak.public).len(), 256, "RSA 2048");
    let Public::Rsa { object_attributes, name_hashing_algorithm, parameters, .. } =
        Public::unmarshall(&ak.public).expect("AK public")
    else {
        panic!("RSA")
    };
    assert!(object_attributes.restricted() && object_attributes.sign_encrypt() && !object_attributes.decrypt());
    assert!(object_attributes.fixed_tpm() && object_attributes.fixed_parent());
    assert_eq!(name_hashing_algorithm, tss_esapi::interface_types::algorithm::HashingAlgorithm::Sha256);
    assert!(format!("{:?}", parameters.rsa_scheme()).contains("RsaSsa"), "{:?}", parameters.rsa_scheme());
    assert_ne!(tpm.create_ak().expect("another").public, ak.public, "every AK is fresh");

    let secret = b"0123456789abcdef0123456789abcdef";
    let (blob, encrypted) = make_credential(lab.dir.path(), &ek.public, &ak.name, secret);
    let got = tpm.activate_credential(&ak, &blob, &encrypted).expect("activate");
    assert_eq!(got, secret);
    // A credential for another object name (another AK) does not activate with this one.
    let other = tpm.create_ak().expect("other AK");
    let (blob, encrypted) = make_credential(lab.dir.path(), &ek.public, &other.name, secret);
    let err = tpm.activate_credential(&ak, &blob, &encrypted).expect_err("wrong AK");
    assert!(err.to_string().contains("activate the credential"), "{err}");
    assert_eq!(tpm.activate_credential(&other, &blob, &encrypted).expect("right AK"), secret);
    // Garbage is an error, not a panic.
    assert!(tpm.activate_credential(&ak, &[1, 2, 3], &[4, 5, 6]).is_err());
}

#[test]
fn a_credential_for_another_tpm_does_not_activate() {
    let lab = lab();
    let (_b, tcti_b) = another_tpm(lab.dir.path(), "tpm-b", &lab.ca);
    let mut a = open(&lab.tcti);
    let mut b = open(&tcti_b);
    let ek_a = a.endorsement().expect("EK A");
    let ek_b = b.endorsement().expect("EK B");
    assert_ne!(ek_a.public, ek_b.public);
    let ak_a = a.create_ak().expect("AK A");
    let ak_b = b.create_ak().expect("AK B");
    let secret = [7u8; 32];
    // Endorsement of A, AK of B: made for A's EK, so B cannot open it.
    let (blob, encrypted) = make_credential(lab.dir.path(), &ek_a.public, &ak_b.name, &secret);
    let err = b.activate_credential(&ak_b, &blob, &encrypted).expect_err("B holds another EK");
    assert!(err.to_string().contains("activate the credential"), "{err}");
    // ... and A cannot use B's AK (it loads only under B's EK).
    let err = a.activate_credential(&ak_b, &blob, &encrypted).expect_err("B's AK in A");
    assert!(err.to_string().contains("load the attestation key"), "{err}");
    // The honest pairings work.
    let (blob, encrypted) = make_credential(lab.dir.path(), &ek_a.public, &ak_a.name, &secret);
    assert_eq!(a.activate_credential(&ak_a, &blob, &encrypted).expect("A"), secret);
    let (blob, encrypted) = make_credential(lab.dir.path(), &ek_b.public, &ak_b.name, &secret);
    assert_eq!(b.activate_credential(&ak_b, &blob, &encrypted).expect("B"), secret);
}

#[test]
fn quotes_verify_and_bind_the_qualifying_data_and_pcrs() {
    let lab = lab();
    let dir = lab.dir.path();
    let mut tpm = open(&lab.tcti);
    let ak = tpm.create_ak().expect("AK");
    let qualifying = [0x42u8; 32];

    let q = tpm.quote(&ak, &qualifying, &[7, 0, 7]).expect("quote");
    assert!(checkquote(dir, &ak, &q.attest, &q.signature, &qualifying), "tpm2_checkquote accepts the quote");
    assert!(!checkquote(dir, &ak, &q.attest, &q.signature, &[0x43; 32]), "another qualifying data is refused");
    let (pcrs, digest, extra) = quoted(&q.attest);
    assert_eq!(pcrs, vec![0, 7]);
    assert_eq!(extra, qualifying);
    assert_eq!(q.pcr_values.keys().copied().collect::<Vec<_>>(), vec![0, 7]);
    assert_eq!(digest, pcr_digest(&q.pcr_values), "the values hash to the quoted digest");
    assert_eq!(q.pcr_values[&7], vec![0; 32], "PCR 7 is zero after a reset");
    // Another AK's quote does not verify as this AK's.
    let other = tpm.create_ak().expect("AK");
    assert!(!checkquote(dir, &other, &q.attest, &q.signature, &qualifying));
    // A tampered attest is refused.
    let mut tampered = q.attest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(!checkquote(dir, &ak, &tampered, &q.signature, &qualifying));

    // Extending PCR 7 shows in the next quote.
    tpm.extend_pcr(7, b"ferry test event").expect("extend");
    let expected: Vec<u8> =
        Sha256::new().chain_update([0u8; 32]).chain_update(Sha256::digest(b"ferry test event")).finalize().to_vec();
    let q2 = tpm.quote(&ak, &qualifying, &[0, 7]).expect("quote");
    assert_eq!(q2.pcr_values[&7], expected);
    assert_eq!(q2.pcr_values[&0], q.pcr_values[&0]);
    assert_eq!(quoted(&q2.attest).1, pcr_digest(&q2.pcr_values));
    assert_ne!(quoted(&q2.attest).1, digest);
    assert!(checkquote(dir, &ak, &q2.attest, &q2.signature, &qualifying));
    assert_eq!(tpm.read_pcrs(&[7]).expect("read"), BTreeMap::from([(7, expected)]));

    // No PCRs: an empty selection, and the digest of nothing.
    let q3 = tpm.quote(&ak, &qualifying, &[]).expect("quote without PCRs");
    assert!(checkquote(dir, &ak, &q3.attest, &q3.signature, &qualifying));
    let (pcrs, digest, _) = quoted(&q3.attest);
    assert!(pcrs.is_empty() && q3.pcr_values.is_empty());
    assert_eq!(digest, Sha256::digest(b"").to_vec());

    assert!(tpm.quote(&ak, &qualifying, &[24]).is_err(), "PCR 24 does not exist");
    assert!(tpm.extend_pcr(24, b"x").is_err());
}

#[test]
fn no_resource_manager_needed_and_leftovers_are_flushed() {
    let lab = lab();
    let dir = lab.dir.path();
    // Ten full cycles on the raw socket: swtpm holds only 3 objects and 3 sessions, so
    // any leak would exhaust it.
    for i in 0..10 {
        let mut tpm = open(&lab.tcti);
        let ek = tpm.endorsement().expect("endorsement");
        let ak = tpm.create_ak().expect("AK");
        let (blob, encrypted) = make_credential(dir, &ek.public, &ak.name, &[i; 16]);
        assert_eq!(tpm.activate_credential(&ak, &blob, &encrypted).expect("activate"), vec![i; 16]);
        // A failing step must not leak either.
        let _ = tpm.activate_credential(&ak, &blob[..blob.len() - 1], &encrypted).expect_err("truncated");
        tpm.quote(&ak, &[i; 32], &[7]).expect("quote");
    }
    // A crashed run's leftovers: tpm2-tools without a resource manager leaves a primary
    // and a session loaded.
    let ctx = dir.join("primary.ctx").display().to_string();
    let session = dir.join("session.ctx").display().to_string();
    lab.tpm.run_tool("createprimary", &["-C", "o", "-c", &ctx]);
    lab.tpm.run_tool("startauthsession", &["-S", &session]);
    let handles = |kind: &str| String::from_utf8_lossy(&lab.tpm.run_tool("getcap", &[kind]).stdout).trim().to_string();
    assert!(!handles("handles-transient").is_empty(), "the primary is left");
    assert!(!(handles("handles-loaded-session") + &handles("handles-saved-session")).is_empty(), "the session is left");
    drop(open(&lab.tcti));
    assert_eq!(handles("handles-transient"), "", "open flushed the object");
    assert_eq!(handles("handles-loaded-session") + &handles("handles-saved-session"), "", "open flushed the session");
}

#[test]
fn step_timings() {
    let lab = lab();
    let time = |what: &str, began: Instant| eprintln!("swtpm {what}: {} ms", began.elapsed().as_millis());
    let began = Instant::now();
    let mut tpm = open(&lab.tcti);
    time("open", began);
    let began = Instant::now();
    let ek = tpm.endorsement().expect("endorsement");
    time("endorsement (create EK primary, read EK, read cert)", began);
    let began = Instant::now();
    tpm.endorsement().expect("endorsement");
    time("endorsement again (EK cached)", began);
    let began = Instant::now();
    let ak = tpm.create_ak().expect("AK");
    time("create AK", began);
    let (blob, encrypted) = make_credential(lab.dir.path(), &ek.public, &ak.name, &[1; 32]);
    let began = Instant::now();
    tpm.activate_credential(&ak, &blob, &encrypted).expect("activate");
    time("activate credential (load AK, policy session)", began);
    let began = Instant::now();
    tpm.quote(&ak, &[2; 32], &[0, 1, 2, 3, 4, 5, 6, 7]).expect("quote");
    time("quote PCRs 0-7 + read them (load AK)", began);
    let began = Instant::now();
    drop(tpm);
    time("close (flush EK)", began);
}

/// What the stand-in server saw and checked.
#[derive(Default, Debug)]
struct Verdicts {
    credential_requests: usize,
    /// Every check of the enrollment's TPM proof, by name.
    checks: Vec<(&'static str, bool)>,
}

/// A stand-in enrollment server on 127.0.0.1 (plain threads, blocking I/O) that plays
/// the TPM factor with independent tools: `tpm2_makecredential -T none` for the
/// challenge, `tpm2_checkquote` for the quote. It refuses every enrollment (401), so the
/// agent stops there.
fn stand_in_server(
    dir: &Path,
    expected_ek: Vec<u8>,
    secret: Vec<u8>,
) -> (String, std::sync::Arc<std::sync::Mutex<Verdicts>>) {
    use ferry_api::enroll::{EnrollRequest, TpmCredentialChallenge, TpmCredentialRequest};
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let verdicts = std::sync::Arc::new(std::sync::Mutex::new(Verdicts::default()));
    let seen = verdicts.clone();
    let dir = dir.to_path_buf();
    let nonce = [0x5au8; 32];
    std::thread::spawn(move || {
        let mut ak_public = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = s.read(&mut chunk).expect("read");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().expect("length"));
                    while buf.len() < end + 4 + len {
                        let n = s.read(&mut chunk).expect("read");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (head, buf[end + 4..end + 4 + len].to_vec());
                }
                assert!(n > 0, "connection closed mid-request");
            };
            let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
            let (status, answer) = match path.as_str() {
                "/v1/enroll/challenge" => {
                    (200, format!(r#"{{"nonce":"{}","expires_in_secs":60}}"#, STANDARD.encode(nonce)))
                }
                "/v1/enroll/tpm" => {
                    let req: TpmCredentialRequest = serde_json::from_slice(&body).expect("credential request");
                    assert_eq!(STANDARD.decode(&req.ek_public).expect("b64"), expected_ek, "the TPM's EK");
                    assert!(req.ek_certificate.is_some(), "swtpm has an EK certificate");
                    ak_public = STANDARD.decode(&req.ak_public).expect("b64");
                    let (blob, encrypted) = make_credential(&dir, &expected_ek, &object_name(&ak_public), &secret);
                    seen.lock().expect("lock").credential_requests += 1;
                    let c = TpmCredentialChallenge {
                        node: "n7".into(),
                        credential_blob: STANDARD.encode(blob),
                        encrypted_secret: STANDARD.encode(encrypted),
                        pcrs: vec![7, 0],
                    };
                    (200, serde_json::to_string(&c).expect("json"))
                }
                "/v1/enroll" => {
                    let req: EnrollRequest = serde_json::from_slice(&body).expect("enroll request");
                    let proof = req.proofs.tpm.expect("a TPM proof");
                    let key: [u8; 32] = STANDARD.decode(&req.public_key).expect("b64").try_into().expect("32 bytes");
                    let n7 = ferry_core::NodeName::parse("n7").expect("name");
                    let qualifying = ferry_core::enroll::tpm_qualifying_data(&nonce, &key, &n7);
                    let attest = STANDARD.decode(&proof.attest).expect("b64");
                    let signature = STANDARD.decode(&proof.signature).expect("b64");
                    let values: BTreeMap<u8, Vec<u8>> = proof
                        .pcr_values
                        .iter()
                        .map(|(&i, v)| {
                            (
                                i,
                                (0..v.len())
                                    .step_by(2)
                                    .map(|j| u8::from_str_radix(&v[j..j + 2], 16).expect("hex"))
                                    .collect(),
                            )
                        })
                        .collect();
                    let ak = AttestationKey {
                        public: ak_public.clone(),
                        private: Vec::new(),
                        name: object_name(&ak_public),
                    };
                    let (pcrs, digest, _) = quoted(&attest);
                    let checks = vec![
                        ("secret", STANDARD.decode(&proof.secret).expect("b64") == secret),
                        (
                            "quote signature and qualifying data",
                            checkquote(&dir, &ak, &attest, &signature, &qualifying),
                        ),
                        ("quoted PCRs", pcrs == vec![0, 7] && values.keys().copied().collect::<Vec<_>>() == vec![0, 7]),
                        ("PCR digest", digest == pcr_digest(&values)),
                        ("PCR 7 was extended", values[&7] != vec![0; 32]),
                        ("nonce", req.nonce == STANDARD.encode(nonce)),
                    ];
                    seen.lock().expect("lock").checks = checks;
                    (401, r#"{"error":"refused","kind":"refused"}"#.to_string())
                }
                other => (404, format!(r#"{{"error":"no {other}","kind":"not-found"}}"#)),
            };
            let reason = if status == 200 { "OK" } else { "Not OK" };
            let reply = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = s.write_all(reply.as_bytes());
        }
    });
    (base, verdicts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_proves_the_tpm_factor_to_a_stand_in_server() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ferry_agent::AgentArgs,
    }

    let lab = lab();
    let ek = {
        let mut tpm = open(&lab.tcti);
        tpm.extend_pcr(7, b"secure boot state").expect("extend");
        tpm.endorsement().expect("endorsement").public
    };
    let (base, verdicts) = stand_in_server(lab.dir.path(), ek, b"the credential secret, 32 bytes!".to_vec());
    let cmdline = write(lab.dir.path(), "cmdline", format!("quiet ferry.tpm={}", lab.tcti).as_bytes());
    let args = Cli::try_parse_from([
        "agent",
        "--server",
        &base,
        "--pubkey",
        "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=",
        "--mac",
        "52:54:00:00:00:07",
        "--timeout",
        "60",
        "--cmdline",
        &cmdline,
        "--asset-tag-file",
        &lab.dir.path().join("no-tag").display().to_string(),
    ])
    .expect("flags")
    .args;
    let err = ferry_agent::run(args).await.expect_err("the stand-in refuses");
    assert_eq!(err.exit_code(), 3, "{err}");
    let v = verdicts.lock().expect("lock");
    assert_eq!(v.credential_requests, 1);
    assert!(!v.checks.is_empty(), "the enrollment reached the server");
    for (what, ok) in &v.checks {
        assert!(ok, "{what}: the server's check failed ({v:?})");
    }
    drop(v);
    // The agent flushed everything it created: the raw TPM holds no transient object.
    let out = lab.tpm.run_tool("getcap", &["handles-transient"]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "left in the TPM: {out:?}");
}
