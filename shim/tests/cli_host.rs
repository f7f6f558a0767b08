//! `coffer check-host` and `coffer launch-plan`, run as the real binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const COFFER: &str = env!("CARGO_BIN_EXE_coffer");
/// Kata's test annotation and its document's sha256.
use coffer_testkit::{KATA_ANNOTATION, KATA_DIGEST_HEX as DIGEST_HEX};

fn coffer(args: &[&str]) -> Output {
    Command::new(COFFER)
        .args(args)
        .output()
        .expect("run coffer")
}

fn coffer_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(COFFER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coffer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for coffer")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn plan_json(args: &[&str]) -> Value {
    let o = coffer(args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("launch-plan --json prints JSON")
}

fn args_of(plan: &Value) -> Vec<String> {
    plan["args"]
        .as_array()
        .expect("args is an array")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_string())
        .collect()
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

#[test]
fn check_host_prints_one_line_per_tee() {
    let o = coffer(&["check-host"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("none: kvm "), "{out}");
    assert!(lines[1].starts_with("tdx: "), "{out}");
    assert!(lines[2].starts_with("snp: "), "{out}");
    for line in &lines[1..] {
        assert!(
            line.contains(": yes (kvm)") || line.contains(": no ("),
            "{line}"
        );
    }
}

/// The build machines: a PVM-based /dev/kvm that emulates guests, no TDX, no SNP.
#[test]
fn check_host_on_a_pvm_host_says_why_nothing_but_tcg_works() {
    if !Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("SKIP: not a PVM-based KVM host (no /sys/module/kvm_pvm)");
        return;
    }
    let out = stdout(&coffer(&["check-host"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(
            "none: kvm unusable (KVM is unusable for guests here: a 1000000-iteration loop "
        ),
        "{out}"
    );
    assert!(
        lines[0].ends_with("real KVM needs ~1 ms)), tcg available"),
        "{out}"
    );
    assert_eq!(
        lines[1],
        "tdx: no (KVM cannot create TDX VMs (KVM_CAP_VM_TYPES is 0x1; TDX would be bit 5); kvm_intel is not loaded)"
    );
    assert_eq!(
        lines[2],
        "snp: no (KVM cannot create SNP VMs (KVM_CAP_VM_TYPES is 0x1; SNP would be bit 4); kvm_amd is not loaded)"
    );

    let report: Value = serde_json::from_slice(&coffer(&["check-host", "--json"]).stdout)
        .expect("check-host --json prints JSON");
    assert_eq!(report["kvm"]["available"], false);
    assert_eq!(
        report["none"],
        serde_json::json!({"available": true, "accel": "tcg"})
    );
    assert_eq!(report["tdx"]["available"], false);
    assert_eq!(report["snp"]["available"], false);
}

#[test]
fn check_host_json_is_one_object_with_reasons() {
    let o = coffer(&["check-host", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    for key in ["kvm", "tcg", "none", "tdx", "snp"] {
        let available = report[key]["available"]
            .as_bool()
            .unwrap_or_else(|| panic!("{key}.available missing: {report}"));
        if !available && key != "none" {
            assert!(
                report[key]["reason"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty()),
                "{key} has no reason: {report}"
            );
        }
    }
    assert!(report["snp"].get("cbitpos").is_some(), "{report}");
}

#[test]
fn snp_plan_carries_the_reference_host_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "[vm]\n[vm.snp]\ncbitpos = 51\n");
    let plan = plan_json(&[
        "launch-plan",
        "--tee",
        "snp",
        "--annotation",
        KATA_ANNOTATION,
        "--config",
        &config,
        "--json",
    ]);
    assert_eq!(plan["program"], "qemu-system-x86_64");
    assert_eq!(plan.as_object().map(|o| o.len()), Some(4), "{plan}");
    // A TEE guest runs on KVM, where huge pages speed its memory up.
    assert_eq!(plan["transparent_huge_pages"], true, "{plan}");
    // On q35, where QMP's powerdown presses the guest's ACPI power button.
    assert_eq!(plan["power_button"], true, "{plan}");
    let args = args_of(&plan);
    // The host's CPUID, when it reports SEV, decides cbitpos; elsewhere the config does.
    let object = args
        .iter()
        .find(|a| a.starts_with("sev-snp-guest,"))
        .expect("an sev-snp-guest object");
    assert!(
        object.starts_with("sev-snp-guest,id=snp0,cbitpos="),
        "{object}"
    );
    assert!(
        object.ends_with(
            ",reduced-phys-bits=1,kernel-hashes=on,policy=0x30000,host-data=xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeU="
        ),
        "{object}"
    );
    assert!(args.contains(&"q35,confidential-guest-support=snp0".to_string()));
}

#[test]
fn tdx_plan_carries_the_reference_mrconfigid() {
    let plan = plan_json(&[
        "launch-plan",
        "--tee",
        "tdx",
        "--annotation",
        KATA_ANNOTATION,
        "--json",
    ]);
    let args = args_of(&plan);
    assert_eq!(
        args[8..12],
        [
            "-object",
            "tdx-guest,id=tdx0,mrconfigid=xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeUAAAAAAAAAAAAAAAAAAAAA",
            "-machine",
            "q35,kernel-irqchip=split,confidential-guest-support=tdx0",
        ]
    );
}

#[test]
fn none_plan_from_a_file_uses_tcg_and_attaches_the_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = coffer_initdata::annotation::decode_bytes(
        KATA_ANNOTATION,
        &coffer_initdata::Limits::default(),
    )
    .expect("decode the reference annotation");
    let file = dir.path().join("initdata.toml");
    std::fs::write(&file, doc).expect("write the document");
    let plan = plan_json(&[
        "launch-plan",
        "--tee",
        "none",
        "--initdata",
        &file.to_string_lossy(),
        "--json",
    ]);
    let args = args_of(&plan);
    let at = |flag: &str| {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1].clone()
    };
    assert_eq!(at("-accel"), "tcg,tb-size=48");
    assert_eq!(
        at("-append"),
        format!(
            "console=ttyS0 panic=-1 quiet coffer.tee=none coffer.initdata_digest={DIGEST_HEX} {} {}",
            coffer_hypervisor::plan::FAST_BOOT_PARAMS,
            coffer_hypervisor::plan::TCG_REPORTING_PARAMS
        )
    );
    assert!(args.contains(&"virtio-blk-pci,drive=initdata,serial=initdata".to_string()));
    assert!(args
        .iter()
        .any(|a| a.starts_with("file=") && a.ends_with(",readonly=on")));
}

#[test]
fn annotation_from_stdin_and_a_bare_config_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "accel = \"kvm\"\nvcpus = 2\nmemory_mib = 1024\n",
    );
    let o = coffer_stdin(
        &[
            "launch-plan",
            "--tee",
            "none",
            "--annotation",
            "-",
            "--config",
            &config,
            "--json",
        ],
        KATA_ANNOTATION,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let args = args_of(&plan).join(" ");
    assert!(
        args.contains("-accel kvm -cpu host -smp 2 -m 1024M"),
        "{args}"
    );
}

#[test]
fn the_text_form_is_a_shell_line_with_the_same_words() {
    let o = coffer(&[
        "launch-plan",
        "--tee",
        "none",
        "--annotation",
        KATA_ANNOTATION,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let comment = lines.next().expect("a comment line");
    assert_eq!(
        comment,
        "# dry run for TEE none: accel \"auto\" is planned as tcg without running the KVM speed probe"
    );
    let line = lines.next().expect("the command line");
    assert!(lines.next().is_none(), "{out}");
    // Let a shell split the line, and compare with the JSON form.
    let words = Command::new("sh")
        .arg("-c")
        .arg(format!("for w in {line}; do printf '%s\\n' \"$w\"; done"))
        .output()
        .expect("run sh");
    let words: Vec<String> = stdout(&words).lines().map(str::to_string).collect();
    let plan = plan_json(&[
        "launch-plan",
        "--tee",
        "none",
        "--annotation",
        KATA_ANNOTATION,
        "--json",
    ]);
    assert_eq!(words[0], "qemu-system-x86_64");
    assert_eq!(words[1..], args_of(&plan)[..]);
}

#[test]
fn refusals_exit_1_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "[vm]\nhypervisor = \"cloud-hypervisor\"\n");
    let o = coffer(&[
        "launch-plan",
        "--tee",
        "tdx",
        "--annotation",
        KATA_ANNOTATION,
        "--config",
        &config,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no option to set MRCONFIGID"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());

    let config = write_config(dir.path(), "[vm]\nmemory = 512\n");
    let o = coffer(&[
        "launch-plan",
        "--tee",
        "none",
        "--annotation",
        KATA_ANNOTATION,
        "--config",
        &config,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with(&format!("coffer: {config}: ")), "{err}");
    assert!(err.contains("unknown field `memory`"), "{err}");

    let o = coffer(&[
        "launch-plan",
        "--tee",
        "none",
        "--annotation",
        "not base64!",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("coffer: annotation: "),
        "{}",
        stderr(&o)
    );

    let o = coffer(&[
        "launch-plan",
        "--tee",
        "none",
        "--initdata",
        "/nonexistent/initdata.toml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read /nonexistent/initdata.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    let o = coffer(&["launch-plan", "--tee", "none"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = coffer(&[
        "launch-plan",
        "--tee",
        "sev",
        "--annotation",
        KATA_ANNOTATION,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown TEE \"sev\"; use none, tdx or snp"),
        "{}",
        stderr(&o)
    );
    let o = coffer(&[
        "launch-plan",
        "--tee",
        "none",
        "--annotation",
        KATA_ANNOTATION,
        "--initdata",
        "x.toml",
    ]);
    assert_eq!(o.status.code(), Some(2));
}
