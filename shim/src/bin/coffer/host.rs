//! `coffer check-host` and `coffer launch-plan`.

use std::path::{Path, PathBuf};

use coffer_hypervisor::{Accel, HostCapabilities, LaunchPlan, Support, Tee, VmConfig, VmResources};
use coffer_initdata::InitData;
use serde_json::json;

use crate::Failure;

/// Where `launch-plan` pretends the sandbox's state lives (the shim's default state directory).
const DRY_RUN_STATE_DIR: &str = "/run/coffer/SANDBOX-ID";

/// The SEV C-bit position a dry run assumes when neither CPUID nor the configuration gives one:
/// the value of every EPYC generation with SEV-SNP so far (Milan, Genoa).
const DRY_RUN_CBITPOS: u32 = 51;

/// Arguments of `coffer check-host`.
#[derive(Debug, clap::Args)]
pub struct CheckHostArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `coffer launch-plan`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["annotation", "initdata"]))]
pub struct LaunchPlanArgs {
    /// The TEE to plan for: none, tdx or snp.
    #[arg(long, value_parser = parse_tee)]
    tee: Tee,
    /// The pod annotation value carrying the Init-Data (- reads it from standard input).
    #[arg(long, value_name = "VALUE|-")]
    annotation: Option<String>,
    /// An Init-Data document (TOML).
    #[arg(long, value_name = "FILE")]
    initdata: Option<PathBuf>,
    /// A configuration file: the handler's config (its [vm] table is read) or a bare VM table.
    /// Default: the built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print `{"program": ..., "args": [...]}` instead of a shell line.
    #[arg(long)]
    json: bool,
}

fn parse_tee(s: &str) -> Result<Tee, String> {
    s.parse()
}

pub fn check_host(args: CheckHostArgs) -> Result<(), Failure> {
    let caps = HostCapabilities::probe();
    let qemu = VmConfig::default().program();
    let tcg = match find_in_path(&qemu) {
        Some(_) => Support::yes(),
        None => Support::no(format!("{} is not in PATH", qemu.display())),
    };
    let none = if caps.kvm.available {
        Some(Accel::Kvm)
    } else if tcg.available {
        Some(Accel::Tcg)
    } else {
        None
    };

    if args.json {
        let mut report = json!({
            "kvm": caps.kvm,
            "tcg": tcg,
            "none": { "available": none.is_some(), "accel": none.map(Accel::as_str) },
            "tdx": caps.tdx,
            "snp": caps.snp,
        });
        report["snp"]["cbitpos"] = json!(caps.snp_cbitpos);
        println!("{report}");
        return Ok(());
    }
    println!(
        "none: {}, {}",
        describe("kvm", &caps.kvm),
        describe("tcg", &tcg)
    );
    for tee in [Tee::Tdx, Tee::Snp] {
        let s = caps.tee(tee);
        match s.reason {
            _ if s.available => println!("{tee}: yes (kvm)"),
            Some(reason) => println!("{tee}: no ({reason})"),
            None => println!("{tee}: no"),
        }
    }
    Ok(())
}

fn describe(what: &str, s: &Support) -> String {
    match (&s.reason, s.available) {
        (_, true) => format!("{what} available"),
        (Some(reason), false) => format!("{what} unusable ({reason})"),
        (None, false) => format!("{what} unusable"),
    }
}

fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn launch_plan(args: LaunchPlanArgs) -> Result<(), Failure> {
    let doc = load_initdata(&args)?;
    let config = match &args.config {
        Some(path) => load_config(path)?,
        None => VmConfig::default(),
    };
    // A dry run plans as if the TEE were available (nothing is launched), and does not time
    // KVM: `accel = "auto"` plans TCG unless the configuration asks for KVM explicitly.
    let mut host = HostCapabilities::for_dry_run(config.accel);
    let mut notes = Vec::new();
    if args.tee == Tee::Snp && host.snp_cbitpos.is_none() && config.snp.cbitpos.is_none() {
        host.snp_cbitpos = Some(DRY_RUN_CBITPOS);
        notes.push(format!(
            "cbitpos {DRY_RUN_CBITPOS} is assumed (this host's CPUID has no SEV; set snp.cbitpos for the target CPU)"
        ));
    }
    let resources = VmResources::in_dir(DRY_RUN_STATE_DIR);
    let plan = LaunchPlan::build(&config, args.tee, &host, Some(&doc.digest()), &resources)?;
    notes.insert(
        0,
        match (args.tee, config.accel) {
            (Tee::None, Accel::Auto) => format!(
                "accel \"auto\" is planned as {} without running the KVM speed probe",
                host.auto_accel()
            ),
            (Tee::None, accel) => format!("accel \"{accel}\" as configured"),
            (tee, _) => format!("{} support is assumed", tee.display_name()),
        },
    );
    if args.json {
        // Notes go to stderr so that stdout stays one JSON object.
        for note in &notes {
            eprintln!("coffer: note: {note}");
        }
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        println!("# dry run for TEE {}: {}", args.tee, notes.join("; "));
        println!("{plan}");
    }
    Ok(())
}

fn load_initdata(args: &LaunchPlanArgs) -> Result<InitData, Failure> {
    let file = args.initdata.as_deref().map(Path::to_string_lossy);
    crate::initdata::load_document(args.annotation.as_deref(), file.as_deref()).map(|(doc, _)| doc)
}

/// Reads a `VmConfig` from the file's `[vm]` table when it has one, else from the whole file.
fn load_config(path: &Path) -> Result<VmConfig, Failure> {
    let bad = |e: &dyn std::fmt::Display| Failure::Invalid(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
    let mut table: toml::Table = text.parse().map_err(|e| bad(&e))?;
    let vm = match table.remove("vm") {
        Some(toml::Value::Table(vm)) => vm,
        Some(_) => return Err(bad(&"`vm` must be a table ([vm])")),
        None => table,
    };
    vm.try_into().map_err(|e| bad(&e))
}
