//! The launch plan and the VM supervisor against a real QEMU (10.x, with `sev-snp-guest`).
//!
//! QEMU checks an `sev-snp-guest` object's `host-data` when the object is created, even without
//! KVM and with the object attached to no machine: so our encoding is checked against QEMU
//! itself here, on any host. The same runs exercise [`Vm`]: start, QMP, stop, reap, and an early
//! death reported with QEMU's stderr.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use coffer_hypervisor::{
    Error, HostCapabilities, HypervisorKind, LaunchPlan, StopStep, Support, Tee, Vm, VmConfig,
    VmResources,
};

mod common;

const QEMU: &str = "qemu-system-x86_64";

fn qemu_has_snp() -> bool {
    match Command::new(QEMU).args(["-object", "help"]).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains("sev-snp-guest"),
        Err(_) => false,
    }
}

/// The `sev-snp-guest` object of a plan generated for the reference vector.
fn snp_object_from_plan() -> String {
    let digest = common::kata_digest();
    let mut config = VmConfig::default();
    config.snp.cbitpos = Some(51);
    let host = HostCapabilities {
        kvm: Support::no("not needed"),
        tdx: Support::no("not needed"),
        snp: Support::yes(),
        snp_cbitpos: None,
    };
    let plan = LaunchPlan::build(
        &config,
        Tee::Snp,
        &host,
        Some(&digest),
        &VmResources::in_dir("/run/coffer/x"),
    )
    .expect("an SNP plan");
    let i = plan
        .args
        .iter()
        .position(|a| a == "-object")
        .expect("the plan has an -object");
    let object = plan.args[i + 1].clone();
    assert!(object.ends_with(",host-data=xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeU="));
    object
}

/// QEMU with no machine, paused, holding only `object`, with QMP on `dir/qmp.sock`.
fn object_only_plan(object: &str) -> LaunchPlan {
    LaunchPlan {
        program: QEMU.into(),
        args: [
            "-machine",
            "none",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-object",
            object,
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["-qmp".to_string()])
        .collect(),
        hypervisor: HypervisorKind::Qemu,
        transparent_huge_pages: true,
        power_button: true,
    }
}

fn with_qmp(mut plan: LaunchPlan, res: &VmResources) -> LaunchPlan {
    plan.args.push(format!(
        "unix:{},server=on,wait=off",
        res.qmp_socket.display()
    ));
    plan
}

fn resources(dir: &Path) -> VmResources {
    VmResources {
        share_dir: None,
        ..VmResources::in_dir(dir)
    }
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn qemu_accepts_our_host_data_and_the_vm_stops_cleanly() {
    if !qemu_has_snp() {
        eprintln!("SKIP: {QEMU} with sev-snp-guest (QEMU >= 9.1) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let res = resources(dir.path());
    let plan = with_qmp(object_only_plan(&snp_object_from_plan()), &res);

    let mut vm = Vm::spawn(&plan, &res).await.unwrap();
    let pid = vm.pid();
    let status = vm.status().await.unwrap();
    assert_eq!(status.status, "prelaunch");
    assert!(!status.running);

    let exit = vm.stop(Duration::from_secs(2)).await.unwrap();
    // No machine, so no ACPI: powerdown does nothing and QMP quit ends QEMU.
    assert_eq!(exit.stopped_by, Some(StopStep::Quit), "{exit}");
    assert!(exit.status.success(), "{exit}");
    assert_eq!(exit.shutdown_reason.as_deref(), Some("host-qmp-quit"));
    assert!(gone(pid), "QEMU (pid {pid}) was not reaped");
    // A second stop reports the same end and starts nothing.
    assert_eq!(vm.stop(Duration::from_secs(1)).await.unwrap(), exit);
}

#[tokio::test]
async fn qemu_refuses_host_data_one_byte_off_and_we_report_its_words() {
    if !qemu_has_snp() {
        eprintln!("SKIP: {QEMU} with sev-snp-guest (QEMU >= 9.1) is not installed");
        return;
    }
    let good = snp_object_from_plan();
    let prefix = good.split(",host-data=").next().unwrap();
    for len in [31usize, 33] {
        let value = STANDARD.encode(vec![0xc6u8; len]);
        let dir = tempfile::tempdir().unwrap();
        let res = resources(dir.path());
        let plan = with_qmp(
            object_only_plan(&format!("{prefix},host-data={value}")),
            &res,
        );
        let err = Vm::spawn(&plan, &res).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::EarlyExit { .. }), "{msg}");
        assert!(
            msg.contains(&format!("parameter length of {len} not equal to 32")),
            "{msg}"
        );
        assert!(msg.contains("exited at start (exit status 1)"), "{msg}");
    }
}

#[tokio::test]
async fn a_missing_program_is_reported_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources(dir.path());
    let mut plan = object_only_plan("secret,id=s0,data=x");
    plan.program = dir.path().join("no-such-qemu");
    let msg = Vm::spawn(&plan, &res).await.unwrap_err().to_string();
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(
        msg.ends_with("(is QEMU installed? set `path` in the [vm] configuration)"),
        "{msg}"
    );
}

#[tokio::test]
async fn cloud_hypervisor_plans_are_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources(dir.path());
    let mut plan = object_only_plan("secret,id=s0,data=x");
    plan.hypervisor = HypervisorKind::CloudHypervisor;
    let e = Vm::spawn(&plan, &res).await.unwrap_err();
    assert!(matches!(e, Error::CannotRunPlan), "{e}");
}
