//! Boots a real Linux guest under TCG through a generated launch plan and the VM supervisor.
//!
//! The guest is built here: a kernel found on the machine (`$COFFER_GUEST_DIR/vmlinuz`, else the
//! workspace's `target/guest/vmlinuz`, else a readable `/boot/vmlinuz-*`) and an initramfs packed
//! from busybox-static whose `/init` prints a marker and the kernel command line. Without a
//! kernel or a static busybox the tests print `SKIP: <reason>` and pass.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coffer_hypervisor::{
    Accel, HostCapabilities, LaunchPlan, StopStep, Tee, Vm, VmConfig, VmResources,
};
use coffer_initdata::image;

mod common;

const MARKER: &str = "COFFER-TEST-GUEST-UP";

/// `/init`: no /dev/console exists in the archive, so the script mounts devtmpfs and only then
/// has somewhere to write. `coffer.test=poweroff` on the command line makes it power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1 </dev/console
/bin/busybox mount -t proc proc /proc
echo "COFFER-TEST-GUEST-UP"
echo "cmdline: $(/bin/busybox cat /proc/cmdline)"
case "$(/bin/busybox cat /proc/cmdline)" in
  *coffer.test=poweroff*) /bin/busybox poweroff -f ;;
esac
while :; do /bin/busybox sleep 1; done
"#;

fn find_kernel() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = coffer_testkit::guest_dir()
        .map(|d| d.join("vmlinuz"))
        .into_iter()
        .collect();
    if let Ok(entries) = fs::read_dir("/boot") {
        let mut boot: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .collect();
        boot.sort();
        candidates.extend(boot.into_iter().rev());
    }
    candidates.into_iter().find(|p| fs::File::open(p).is_ok())
}

/// A static busybox: a dynamic one names its ELF interpreter, which the initramfs lacks.
fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            fs::read(p).is_ok_and(|bytes| {
                !bytes.windows(14).any(|w| w == b"/lib64/ld-linu")
                    && !bytes.windows(10).any(|w| w == b"/lib/ld-li")
            })
        })
}

/// Packs the test initramfs into `dir/initrd.img`.
fn pack_initramfs(dir: &Path, busybox: &Path) -> PathBuf {
    let root = dir.join("initramfs");
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(root.join("bin")).expect("create the initramfs tree");
    fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    fs::write(root.join("init"), INIT).expect("write /init");
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))
        .expect("make /init executable");
    let out = dir.join("initrd.img");
    let status = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . | \"$2\" cpio -o -H newc > \"$3\" 2>/dev/null")
        .args(["sh"])
        .arg(&root)
        .arg(busybox)
        .arg(&out)
        .status()
        .expect("run sh to pack the initramfs");
    assert!(status.success(), "packing the initramfs failed");
    out
}

struct Guest {
    _dir: tempfile::TempDir,
    plan: LaunchPlan,
    resources: VmResources,
}

/// The plan for a TCG guest with the reference Init-Data bound, or why the test cannot run.
fn guest(extra_params: &str) -> Result<Guest, String> {
    let kernel = find_kernel().ok_or(
        "no guest kernel: set COFFER_GUEST_DIR to a directory with vmlinuz, build target/guest, \
         or install a kernel in /boot (extract Debian's linux-image-6.1.*-amd64)",
    )?;
    let busybox = static_busybox().ok_or("no static busybox (install busybox-static)")?;
    coffer_testkit::qemu()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let initrd = pack_initramfs(dir.path(), &busybox);
    let doc = common::kata_document();
    let resources = VmResources::in_dir(dir.path());
    if let Some(img) = &resources.initdata_image {
        fs::write(img, image::write(doc.as_bytes())).map_err(|e| e.to_string())?;
    }
    let config = VmConfig {
        kernel,
        initrd,
        accel: Accel::Tcg,
        kernel_params: extra_params.into(),
        ..VmConfig::default()
    };
    let plan = LaunchPlan::build(
        &config,
        Tee::None,
        &HostCapabilities::for_dry_run(Accel::Tcg),
        Some(&doc.digest()),
        &resources,
    )
    .map_err(|e| e.to_string())?;
    Ok(Guest {
        _dir: dir,
        plan,
        resources,
    })
}

/// Waits until the console log holds a whole line (newline included) that starts with `prefix`,
/// and returns that line: the guest prints line by line, so a line without its newline may still
/// be growing. Bounded so a broken guest fails instead of hanging.
async fn console_line(log: &Path, prefix: &str, vm: &mut Vm) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        let whole = text
            .split_inclusive('\n')
            .find(|l| l.starts_with(prefix) && l.ends_with('\n'));
        if let Some(line) = whole {
            return line.trim_end().to_owned();
        }
        if Instant::now() > deadline {
            let _ = vm.stop(Duration::from_secs(1)).await;
            panic!("the guest never printed a line starting with {prefix:?}; console:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn boots_under_tcg_runs_and_stops_cleanly() {
    let g = match guest("") {
        Ok(g) => g,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let mut vm = Vm::spawn(&g.plan, &g.resources).await.unwrap();
    let pid = vm.pid();
    // The marker comes first, the command line after it: wait for the line asserted on.
    let cmdline = console_line(&g.resources.console_log, "cmdline: ", &mut vm).await;
    assert!(
        cmdline.contains(&format!(
            " coffer.tee=none coffer.initdata_digest={}",
            common::DIGEST_HEX
        )),
        "{cmdline}"
    );

    let status = vm.status().await.unwrap();
    assert_eq!(status.status, "running");
    assert!(status.running);
    // Under TCG, QEMU runs without transparent huge pages: its madvise asks in vain.
    assert!(!g.plan.transparent_huge_pages);
    let proc_status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let thp = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{proc_status}");

    let exit = vm.stop(Duration::from_secs(3)).await.unwrap();
    eprintln!("{exit}");
    assert!(
        matches!(exit.stopped_by, Some(StopStep::Powerdown | StopStep::Quit)),
        "{exit}"
    );
    assert!(exit.status.success(), "{exit}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU (pid {pid}) was not reaped"
    );
}

#[tokio::test]
async fn a_guest_that_powers_off_is_reported_as_such() {
    let g = match guest("coffer.test=poweroff") {
        Ok(g) => g,
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
    let mut vm = Vm::spawn(&g.plan, &g.resources).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(300), vm.wait())
        .await
        .expect("the guest did not power off")
        .unwrap();
    assert_eq!(exit.stopped_by, None, "{exit}");
    assert_eq!(
        exit.shutdown_reason.as_deref(),
        Some("guest-shutdown"),
        "{exit}"
    );
    assert!(exit.status.success(), "{exit}");
    assert_eq!(
        exit.to_string(),
        "VM ended (exit status 0): the guest powered off"
    );
    let console = fs::read_to_string(&g.resources.console_log).unwrap();
    assert!(console.contains(MARKER), "{console}");
}
