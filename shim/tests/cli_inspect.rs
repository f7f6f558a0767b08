//! `coffer inspect`: the contract scripts and tests rely on (output, exit codes).

// Fixture helpers outside #[test] functions: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use coffer_shim::state::{InitDataRecord, LaunchCommand, SandboxState, StateDir};

use coffer_testkit::KATA_DIGEST_HEX as DIGEST;

fn coffer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .output()
        .expect("run coffer")
}

fn write_sandbox(root: &Path, id: &str) {
    let dir = StateDir::new(root, id).unwrap();
    dir.create().unwrap();
    dir.write_state(&SandboxState {
        sandbox_id: id.into(),
        tee: "none".into(),
        measured: false,
        initdata: Some(InitDataRecord {
            algorithm: "sha256".into(),
            digest: DIGEST.into(),
            source: "annotation".into(),
        }),
        guest_report: "no Init-Data".into(),
        vm_pid: 4242,
        launch: LaunchCommand {
            program: "qemu-system-x86_64".into(),
            args: vec!["-append".into(), "console=ttyS0 quiet".into()],
        },
        bundle: "/b".into(),
        config_path: "/etc/coffer/coffer-qemu.toml".into(),
        network: None,
        created_unix: 1_795_000_000,
    })
    .unwrap();
}

#[test]
fn inspect_prints_the_digest_in_hex() {
    let tmp = tempfile::tempdir().unwrap();
    write_sandbox(tmp.path(), "pod1");
    let out = coffer(&[
        "inspect",
        "--state-dir",
        tmp.path().to_str().unwrap(),
        "pod1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("digest:      {DIGEST}\n")), "{text}");
    assert!(text.contains("tee:         none\n"), "{text}");
    assert!(text.contains("measured:    no"), "{text}");
    assert!(text.contains("vm pid:      4242\n"), "{text}");
    assert!(
        text.contains("created:     2026-11-18T11:06:40Z\n"),
        "{text}"
    );
    assert!(
        text.contains("launch:      qemu-system-x86_64 -append 'console=ttyS0 quiet'\n"),
        "{text}"
    );
}

#[test]
fn inspect_json_is_the_state_record() {
    let tmp = tempfile::tempdir().unwrap();
    write_sandbox(tmp.path(), "pod1");
    let out = coffer(&[
        "inspect",
        "--json",
        "--state-dir",
        tmp.path().to_str().unwrap(),
        "pod1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["initdata"]["digest"], DIGEST);
    assert_eq!(v["vm_pid"], 4242);
    assert_eq!(v["sandbox_id"], "pod1");
}

#[test]
fn inspect_of_an_absent_sandbox_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = coffer(&["inspect", "--state-dir", dir, "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("coffer: no sandbox nope under {dir}\n")
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn inspect_refuses_ids_that_are_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let out = coffer(&[
        "inspect",
        "--state-dir",
        tmp.path().to_str().unwrap(),
        "../etc",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .starts_with("coffer: invalid id \"../etc\""));
}

#[test]
fn inspect_takes_the_state_dir_from_a_handler_config() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    write_sandbox(&state, "pod1");
    let config = tmp.path().join("handler.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", state.display())).unwrap();
    let out = coffer(&["inspect", "--config", config.to_str().unwrap(), "pod1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains(DIGEST));

    std::fs::write(&config, "state_dir = 7\n").unwrap();
    let out = coffer(&["inspect", "--config", config.to_str().unwrap(), "pod1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!(
            "coffer: bad coffer config {}: line 1",
            config.display()
        )),
        "{err}"
    );
}

/// Without flags, the sandbox is found in the state directory of an installed handler
/// configuration; when it is in none, the error says where it looked.
#[test]
fn inspect_finds_the_sandbox_through_the_installed_handler_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc-coffer");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("coffer-qemu.toml"),
        format!("state_dir = \"{}\"\n", state.display()),
    )
    .unwrap();
    std::fs::write(etc.join("broken.toml"), "not = [toml").unwrap();
    write_sandbox(&state, "pod1");
    let etc_arg = etc.to_str().unwrap();

    let out = coffer(&["inspect", "--config-dir", etc_arg, "pod1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains(DIGEST));

    let out = coffer(&["inspect", "--config-dir", etc_arg, "pod2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "no sandbox pod2 under {}, /run/coffer;",
            state.display()
        )),
        "{err}"
    );
}
