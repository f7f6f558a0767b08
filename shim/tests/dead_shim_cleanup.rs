//! The shim's `delete` action: what containerd runs when a pod's shim died. It must kill the
//! VM the shim left behind (and nothing else), unmount what is left in the share and remove the
//! sandbox's state.
//!
//! A long-running `tail -f <state-dir>/console.log` stands in for the orphaned QEMU: what the
//! cleanup checks is the program name and that the command line names the sandbox's state
//! directory, exactly as it does for QEMU.

// Fixture helpers outside #[test] functions: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command};

use coffer_shim::sandbox::BUNDLE_RECORD;
use coffer_shim::service::cleanup_bundle;
use coffer_shim::state::{LaunchCommand, SandboxState, StateDir};

fn record(id: &str, pid: u32, program: &str, bundle: &Path) -> SandboxState {
    SandboxState {
        sandbox_id: id.into(),
        tee: "none".into(),
        measured: false,
        initdata: None,
        guest_report: String::new(),
        vm_pid: pid,
        launch: LaunchCommand {
            program: program.into(),
            args: vec![],
        },
        bundle: bundle.to_path_buf(),
        config_path: "/unused".into(),
        network: None,
        created_unix: 0,
    }
}

fn spawn_tail(file: &Path) -> Child {
    Command::new("tail")
        .arg("-f")
        .arg(file)
        .spawn()
        .expect("spawn tail")
}

/// A sandbox state directory with a stand-in VM, and a bundle pointing at it.
fn leftover(root: &Path, id: &str) -> (StateDir, std::path::PathBuf, Child) {
    let dir = StateDir::new(&root.join("state"), id).unwrap();
    dir.create().unwrap();
    let console = dir.path().join("console.log");
    std::fs::write(&console, b"").unwrap();
    let vm = spawn_tail(&console);
    let bundle = root.join("bundles").join(id);
    dir.write_state(&record(id, vm.id(), "/usr/bin/tail", &bundle))
        .unwrap();
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(bundle.join(BUNDLE_RECORD), dir.path().to_str().unwrap()).unwrap();
    (dir, bundle, vm)
}

#[test]
fn delete_kills_the_leftover_vm_and_removes_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, bundle, mut vm) = leftover(tmp.path(), "pod1");

    // A container root filesystem still bound into the share, as a dead shim leaves it.
    let mounted = nix::unistd::Uid::effective().is_root();
    let shared = dir.path().join("share/c1/rootfs");
    let lower = tmp.path().join("lower");
    if mounted {
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::write(lower.join("keep"), b"container data").unwrap();
        nix::mount::mount(
            Some(&lower),
            &shared,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    } else {
        eprintln!("SKIP (part): not root, so no leftover mount to clean up");
    }

    cleanup_bundle(&bundle).unwrap();

    let status = vm.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the leftover VM was not killed");
    assert!(!dir.path().exists(), "state directory left behind");
    assert!(!bundle.join(BUNDLE_RECORD).exists());
    if mounted {
        // Unmounted before removal: the container's files were not deleted through the mount.
        assert_eq!(
            std::fs::read(lower.join("keep")).unwrap(),
            b"container data"
        );
    }
    // Running it again (containerd retries) is harmless.
    cleanup_bundle(&bundle).unwrap();
}

#[test]
fn delete_does_not_kill_a_process_that_reused_the_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, bundle, mut vm) = leftover(tmp.path(), "pod2");
    // The recorded pid now belongs to a process that is not this sandbox's VM.
    let stranger_file = tmp.path().join("other.log");
    std::fs::write(&stranger_file, b"").unwrap();
    let mut stranger = spawn_tail(&stranger_file);
    dir.write_state(&record("pod2", stranger.id(), "/usr/bin/tail", &bundle))
        .unwrap();

    cleanup_bundle(&bundle).unwrap();

    assert!(!dir.path().exists());
    assert_eq!(stranger.try_wait().unwrap(), None, "a stranger was killed");
    stranger.kill().unwrap();
    stranger.wait().unwrap();
    vm.kill().unwrap();
    vm.wait().unwrap();
}

#[test]
fn delete_never_touches_a_directory_the_record_was_made_to_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, bundle, mut vm) = leftover(tmp.path(), "pod3");
    // The record names another pod's state directory, then a directory that is no state.
    let (other, _, mut other_vm) = leftover(&tmp.path().join("x"), "pod4");
    std::fs::write(bundle.join(BUNDLE_RECORD), other.path().to_str().unwrap()).unwrap();
    let e = cleanup_bundle(&bundle).unwrap_err();
    assert!(e.contains("is not named after the bundle's sandbox"), "{e}");
    assert!(other.path().join("state.json").exists());
    let precious = tmp.path().join("etc").join("pod3");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("passwd"), b"root").unwrap();
    std::fs::write(bundle.join(BUNDLE_RECORD), precious.to_str().unwrap()).unwrap();
    let e = cleanup_bundle(&bundle).unwrap_err();
    assert!(
        e.contains("holds \"passwd\", which no sandbox state directory holds"),
        "{e}"
    );
    assert!(precious.join("passwd").exists());
    assert_eq!(
        other_vm.try_wait().unwrap(),
        None,
        "another pod's VM was killed"
    );
    assert!(dir.path().exists());
    for child in [&mut vm, &mut other_vm] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn delete_of_a_container_bundle_only_unmounts_its_rootfs() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("ctr");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    cleanup_bundle(&bundle).unwrap();
    assert!(bundle.join("rootfs").exists());
}
