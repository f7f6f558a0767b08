//! The `coffer initdata` contract, exercised through the real binary: output bytes, exit codes
//! and messages that users and scripts rely on.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Output, Stdio};

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../initdata/tests/data/seed-initdata.toml"
);

/// Kata's test annotation and its digest (see the reference).
use coffer_testkit::{KATA_ANNOTATION as KATA_VALUE, KATA_DIGEST_HEX as KATA_DIGEST};

fn coffer(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coffer");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = coffer(args, stdin);
    assert!(
        out.status.success(),
        "coffer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// sha256 computed by coreutils, independently of our code.
fn sha256sum(path: &str) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn new_reproduces_the_example_byte_for_byte() {
    let doc = ok(
        &["initdata", "new", "--kbs-url", "http://1.2.3.4:8080"],
        None,
    );
    assert_eq!(doc.as_bytes(), std::fs::read(SEED).unwrap());
}

#[test]
fn new_with_policy_file_and_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.rego");
    std::fs::write(
        &policy,
        "package agent_policy\ndefault ExecProcessRequest := false\n",
    )
    .unwrap();
    let doc = ok(
        &[
            "initdata",
            "new",
            "--kbs-url",
            "https://kbs.example:8080/a\"b",
            "--algorithm",
            "sha384",
            "--policy",
            policy.to_str().unwrap(),
        ],
        None,
    );
    let check = ok(&["initdata", "check", "-"], Some(doc.as_bytes()));
    assert!(check.contains("algorithm: sha384"), "{check}");
    assert!(
        doc.contains("url = 'https://kbs.example:8080/a\"b'"),
        "{doc}"
    );
    assert!(doc.contains("default ExecProcessRequest := false"));

    let out = coffer(
        &[
            "initdata",
            "new",
            "--kbs-url",
            "x",
            "--algorithm",
            "sha-384",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean \"sha384\""));
}

#[test]
fn encode_decode_round_trip_and_shell_compatibility() {
    let seed = std::fs::read(SEED).unwrap();
    let value = ok(&["initdata", "encode", SEED], None);
    assert_eq!(value.lines().count(), 1);
    assert_eq!(value, ok(&["initdata", "encode", "-"], Some(&seed)));
    let doc = ok(&["initdata", "decode", value.trim()], None);
    assert_eq!(doc.as_bytes(), seed);
    let doc = ok(&["initdata", "decode", "-"], Some(value.as_bytes()));
    assert_eq!(doc.as_bytes(), seed);

    // What users are told to run elsewhere must give a value we accept, even line-wrapped.
    let shell = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {SEED} | base64"))
        .output()
        .unwrap();
    let wrapped = String::from_utf8(shell.stdout).unwrap();
    assert!(wrapped.trim().contains('\n'), "plain base64 wraps lines");
    let digest = ok(
        &["initdata", "digest", "--tee", "none", "--annotation", "-"],
        Some(wrapped.as_bytes()),
    );
    assert_eq!(digest.trim(), sha256sum(SEED));
}

#[test]
fn digest_of_the_seed() {
    let raw = sha256sum(SEED);
    let digest = |tee: &str| ok(&["initdata", "digest", SEED, "--tee", tee], None);
    assert_eq!(digest("none").trim(), raw);
    assert_eq!(digest("snp").trim(), raw);
    assert_eq!(digest("tdx").trim(), format!("{raw}{}", "0".repeat(32)));
}

#[test]
fn digest_of_kata_vector_in_every_form() {
    let with = |extra: &[&str]| {
        let mut v = vec!["initdata", "digest", "--annotation", KATA_VALUE];
        v.extend_from_slice(extra);
        ok(&v, None).trim().to_owned()
    };
    assert_eq!(with(&["--tee", "none"]), KATA_DIGEST);
    assert_eq!(
        with(&["--tee", "snp", "--format", "base64"]),
        "xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeU="
    );
    assert_eq!(
        with(&["--tee", "tdx", "--format", "base64"]),
        "xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeUAAAAAAAAAAAAAAAAAAAAA"
    );
    assert_eq!(
        with(&["--tee", "vtpm"]),
        "7c5191c4cc9e8c0a2fc91a36c484204dde1b62e4d2344e6f8d8adcc591793e55"
    );
    assert_eq!(with(&["--tee", "se"]).len(), 512);

    let all = with(&[]);
    assert_eq!(all.lines().count(), 7, "{all}");
    assert!(all.lines().next().unwrap().ends_with(KATA_DIGEST));
    assert!(all.contains("TDX MRCONFIGID [tdx]"));

    let json: serde_json::Value = serde_json::from_str(&with(&["--json"])).unwrap();
    assert_eq!(json["digest"]["hex"], KATA_DIGEST);
    assert_eq!(
        json["snp"]["base64"],
        "xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeU="
    );
    assert_eq!(
        json["vtpm"]["hex"],
        "7c5191c4cc9e8c0a2fc91a36c484204dde1b62e4d2344e6f8d8adcc591793e55"
    );
    assert_eq!(json["algorithm"], "sha256");
    let one: serde_json::Value = serde_json::from_str(&with(&["--tee", "tdx", "--json"])).unwrap();
    assert_eq!(one["tee"], "tdx");
    assert_eq!(one["hex"], format!("{KATA_DIGEST}{}", "0".repeat(32)));
}

#[test]
fn check_reports_and_warns() {
    let out = ok(&["initdata", "check", SEED], None);
    assert!(out.contains("version:   0.1.0"));
    assert!(out.contains("keys:      aa.toml, cdh.toml, policy.rego"));
    assert!(out.contains(&format!("digest:    {}", sha256sum(SEED))));
    assert!(!out.contains("warning"));

    let doc = b"version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n\"extra.cfg\" = \"x\"\n";
    let out = coffer(&["initdata", "check", "-"], Some(doc));
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("warning:   [data] key \"extra.cfg\""),
        "{stdout}"
    );
}

#[test]
fn invalid_input_exits_1_with_one_line() {
    let cases: [(&[u8], &str); 4] = [
        (
            b"version = \"0.1.0\"\nalgorithm = \"sha-384\"\n[data]\n",
            "did you mean \"sha384\"",
        ),
        (
            b"version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n",
            "version \"0.2.0\" is not supported",
        ),
        (
            b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = 1\n",
            "must be a string",
        ),
        (
            b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n",
            "has no `data`",
        ),
    ];
    for (doc, needle) in cases {
        for cmd in ["check", "encode", "digest"] {
            let out = coffer(&["initdata", cmd, "-"], Some(doc));
            assert_eq!(out.status.code(), Some(1), "{cmd}");
            let err = String::from_utf8(out.stderr).unwrap();
            assert!(err.contains(needle), "{cmd}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(out.stdout.is_empty());
        }
    }
    let out = coffer(&["initdata", "decode", "not-base64!"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid base64"));
    let out = coffer(&["initdata", "check", "/nonexistent/initdata.toml"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/initdata.toml"));
}

#[test]
fn usage_errors_exit_2() {
    let code = |args: &[&str]| coffer(args, None).status.code();
    assert_eq!(code(&["initdata", "check"]), Some(2));
    assert_eq!(code(&["initdata", "digest", SEED, "--tee", "tpm"]), Some(2));
    assert_eq!(
        code(&["initdata", "check", SEED, "--annotation", "x"]),
        Some(2)
    );
    assert_eq!(code(&["initdata", "bogus"]), Some(2));
}
