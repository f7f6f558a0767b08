//! What this host can launch: TDX, SNP, and whether KVM runs guests at hardware speed.
//!
//! The probe asks KVM itself (`KVM_CAP_VM_TYPES`), reads the kvm_intel / kvm_amd module
//! parameters for the reason when a TEE is missing, and times a tiny guest (see [`crate::speed`]).
//! Facts are gathered by [`HostCapabilities::probe`]; the judgement is pure functions of those
//! facts, so it is tested on any host.

use std::fs;
use std::io;
use std::path::Path;

use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};

use crate::{speed, Accel, Tee};

/// `KVM_CAP_VM_TYPES`: a bitmask of the VM types `KVM_CREATE_VM` accepts.
pub const KVM_CAP_VM_TYPES: u32 = kvm_bindings::KVM_CAP_VM_TYPES;
/// Bit of an SEV-SNP VM in `KVM_CAP_VM_TYPES`.
pub const KVM_X86_SNP_VM: u32 = kvm_bindings::KVM_X86_SNP_VM;
/// Bit of a TDX VM in `KVM_CAP_VM_TYPES`.
pub const KVM_X86_TDX_VM: u32 = kvm_bindings::KVM_X86_TDX_VM;

const TDX_PARAM: &str = "/sys/module/kvm_intel/parameters/tdx";
const SNP_PARAM: &str = "/sys/module/kvm_amd/parameters/sev_snp";

/// Where the kernel names this boot: a new value after every reboot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// A speed verdict file larger than this is not one the probe wrote.
const MAX_SPEED_RECORD: u64 = 16 * 1024;

/// Whether something is available, and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Support {
    /// Available?
    pub available: bool,
    /// Why not (or, for assumptions, why it is taken as available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Support {
    /// Available.
    pub fn yes() -> Self {
        Support {
            available: true,
            reason: None,
        }
    }

    /// Not available, because `reason`.
    pub fn no(reason: impl Into<String>) -> Self {
        Support {
            available: false,
            reason: Some(reason.into()),
        }
    }
}

/// What the host can launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCapabilities {
    /// KVM runs ordinary guests at hardware speed (judged by [`crate::speed`]).
    pub kvm: Support,
    /// KVM can create TDX VMs.
    pub tdx: Support,
    /// KVM can create SEV-SNP VMs.
    pub snp: Support,
    /// The SEV C-bit position from the host's CPUID, when the CPU has SEV.
    pub snp_cbitpos: Option<u32>,
}

impl HostCapabilities {
    /// Probes this host. Takes about [`speed::USABLE_LIMIT`] at most when KVM is slow.
    pub fn probe() -> Self {
        Self::probe_with(measure_speed)
    }

    /// Probes this host, timing KVM only once per host boot: the verdict is kept in `record`
    /// with the kernel's boot id and reused while the boot id is the same. A record that is
    /// missing, unreadable, foreign or from another boot is replaced. The TEE facts are read
    /// every time; they are cheap and change with a module reload.
    pub fn probe_cached(record: &Path) -> Self {
        Self::probe_with(|kvm| {
            let Some(boot_id) = boot_id() else {
                return measure_speed(kvm);
            };
            if let Some(kept) = read_speed_record(record, &boot_id) {
                return kept;
            }
            let speed = measure_speed(kvm);
            if let Err(e) = write_speed_record(record, &boot_id, &speed) {
                tracing::debug!(record = %record.display(), error = %e, "cannot keep the KVM speed verdict");
            }
            speed
        })
    }

    fn probe_with(speed: impl FnOnce(&Kvm) -> Support) -> Self {
        let snp_cbitpos = host_cbitpos();
        let kvm = match Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                let reason = format!("cannot open /dev/kvm: {}", io::Error::from(e));
                return HostCapabilities {
                    kvm: Support::no(reason.clone()),
                    tdx: Support::no(reason.clone()),
                    snp: Support::no(reason),
                    snp_cbitpos,
                };
            }
        };
        let vm_types = kvm.check_extension_raw(libc::c_ulong::from(KVM_CAP_VM_TYPES));
        HostCapabilities {
            kvm: speed(&kvm),
            tdx: tee_support(Tee::Tdx, vm_types, &read_param(TDX_PARAM)),
            snp: tee_support(Tee::Snp, vm_types, &read_param(SNP_PARAM)),
            snp_cbitpos,
        }
    }

    /// Capabilities for a dry run (`coffer launch-plan`): TDX and SNP are taken as available,
    /// since a plan is printed, not run; KVM is taken as usable only when `accel` asks for it,
    /// so a dry run never spends time on the speed probe.
    pub fn for_dry_run(accel: Accel) -> Self {
        let assumed = || Support {
            available: true,
            reason: Some("assumed for a dry run".into()),
        };
        HostCapabilities {
            kvm: match accel {
                Accel::Kvm => assumed(),
                Accel::Auto | Accel::Tcg => {
                    Support::no("not measured in a dry run (set accel = \"kvm\" to plan with KVM)")
                }
            },
            tdx: assumed(),
            snp: assumed(),
            snp_cbitpos: host_cbitpos(),
        }
    }

    /// Whether `tee` can be launched here. `none` always can (TCG needs nothing from the host).
    pub fn tee(&self, tee: Tee) -> Support {
        match tee {
            Tee::None => Support::yes(),
            Tee::Tdx => self.tdx.clone(),
            Tee::Snp => self.snp.clone(),
        }
    }

    /// The accelerator `accel = auto` resolves to for TEE `none`.
    pub fn auto_accel(&self) -> Accel {
        if self.kvm.available {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// Times the calibrated loop ([`crate::speed`]) and judges it.
fn measure_speed(kvm: &Kvm) -> Support {
    match speed::measure(kvm) {
        Ok(timing) => match timing.unusable_reason() {
            None => Support::yes(),
            Some(reason) => Support::no(reason),
        },
        Err(e) => Support::no(format!(
            "KVM is unusable for guests here: the test guest could not run: {e}"
        )),
    }
}

fn boot_id() -> Option<String> {
    let id = fs::read_to_string(BOOT_ID).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The KVM speed verdict of one host boot, as [`HostCapabilities::probe_cached`] keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct SpeedRecord {
    boot_id: String,
    kvm: Support,
}

fn read_speed_record(path: &Path, boot_id: &str) -> Option<Support> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_SPEED_RECORD)
        .read_to_string(&mut text)
        .ok()?;
    let record: SpeedRecord = serde_json::from_str(&text).ok()?;
    (record.boot_id == boot_id).then_some(record.kvm)
}

/// Written to a temporary file and renamed into place, so a reader never sees half a record.
fn write_speed_record(path: &Path, boot_id: &str, kvm: &Support) -> io::Result<()> {
    let record = SpeedRecord {
        boot_id: boot_id.to_string(),
        kvm: kvm.clone(),
    };
    let text = serde_json::to_vec(&record).map_err(io::Error::other)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// What a kernel module parameter says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// The parameter's value, trimmed.
    Value(String),
    /// The module is loaded but has no such parameter (a kernel without that host support).
    Absent,
    /// The module is not loaded.
    ModuleNotLoaded,
}

fn read_param(path: &str) -> Param {
    let path = Path::new(path);
    match fs::read_to_string(path) {
        Ok(v) => Param::Value(v.trim().to_string()),
        // /sys/module/<module>/parameters/<name>: the module directory tells the two apart.
        Err(_) => match path.parent().and_then(Path::parent) {
            Some(module_dir) if module_dir.exists() => Param::Absent,
            _ => Param::ModuleNotLoaded,
        },
    }
}

/// Judges whether KVM can launch `tee` from `KVM_CAP_VM_TYPES` (as `check_extension` returned
/// it: 0 or negative when the capability is unknown) and the vendor module's parameter.
pub fn tee_support(tee: Tee, vm_types: i32, param: &Param) -> Support {
    let (bit, module, name) = match tee {
        Tee::None => return Support::yes(),
        Tee::Tdx => (KVM_X86_TDX_VM, "kvm_intel", "tdx"),
        Tee::Snp => (KVM_X86_SNP_VM, "kvm_amd", "sev_snp"),
    };
    if vm_types > 0 && vm_types & (1 << bit) != 0 {
        return Support::yes();
    }
    let kvm_says = if vm_types <= 0 {
        "this kernel's KVM does not report VM types (KVM_CAP_VM_TYPES), so it predates confidential VMs".to_string()
    } else {
        format!(
            "KVM cannot create {} VMs (KVM_CAP_VM_TYPES is {vm_types:#x}; {} would be bit {bit})",
            tee.display_name(),
            tee.display_name()
        )
    };
    let module_says = match param {
        Param::ModuleNotLoaded => format!("{module} is not loaded"),
        Param::Absent => format!("{module} has no `{name}` parameter (no host support in this kernel)"),
        Param::Value(v) if is_enabled(v) => {
            format!("{module}.{name} is {v}, yet KVM does not offer the VM type")
        }
        Param::Value(v) => format!(
            "{module}.{name} is {v} (the firmware or BIOS has not enabled {}, or the module was loaded with {name}=0)",
            tee.display_name()
        ),
    };
    Support::no(format!("{kvm_says}; {module_says}"))
}

fn is_enabled(v: &str) -> bool {
    matches!(v, "Y" | "y" | "1")
}

/// The SEV C-bit position from CPUID leaf 0x8000001F (EBX bits 5:0), when the CPU reports SEV.
pub fn host_cbitpos() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86_64 CPU; unknown leaves return zeros or the highest
        // basic leaf, which the max-leaf check below rules out.
        #[allow(unused_unsafe)]
        let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
        if max_extended < 0x8000_001f {
            return None;
        }
        // SAFETY: as above; the leaf is within the range the CPU reported.
        #[allow(unused_unsafe)]
        let leaf = unsafe { __cpuid(0x8000_001f) };
        cbitpos_from_cpuid(leaf.eax, leaf.ebx)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Decodes leaf 0x8000001F: EAX bit 1 says SEV exists, EBX bits 5:0 hold the C-bit position.
pub fn cbitpos_from_cpuid(eax: u32, ebx: u32) -> Option<u32> {
    let sev = eax & (1 << 1) != 0;
    let pos = ebx & 0x3f;
    (sev && pos != 0).then_some(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_speed_verdict_is_kept_for_its_boot_only() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("kvm-speed.json");
        let slow = Support::no("a 1000000-iteration loop would take ~1.3 s");
        assert_eq!(read_speed_record(&record, "boot-a"), None, "no record yet");
        write_speed_record(&record, "boot-a", &slow).unwrap();
        assert_eq!(read_speed_record(&record, "boot-a"), Some(slow));
        assert_eq!(read_speed_record(&record, "boot-b"), None, "another boot");
        // Anything else in its place means: measure again.
        std::fs::write(&record, b"{\"boot_id\": 7}").unwrap();
        assert_eq!(read_speed_record(&record, "boot-a"), None);
        std::fs::write(
            &record,
            vec![b' '; 2 * usize::try_from(MAX_SPEED_RECORD).unwrap()],
        )
        .unwrap();
        assert_eq!(read_speed_record(&record, "boot-a"), None);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn cached_probe_agrees_with_a_fresh_one_and_reuses_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("kvm-speed.json");
        let first = HostCapabilities::probe_cached(&record);
        if boot_id().is_some() && Kvm::new().is_ok() {
            assert!(record.is_file(), "the verdict was not kept");
        }
        let second = HostCapabilities::probe_cached(&record);
        assert_eq!(first, second);
        assert_eq!(first.kvm.available, HostCapabilities::probe().kvm.available);
    }

    #[test]
    fn vm_type_bits_decide() {
        // KVM_X86_DEFAULT_VM | KVM_X86_SW_PROTECTED_VM | SEV | SEV_ES | SNP
        let amd = 0b1_1111;
        assert_eq!(
            tee_support(Tee::Snp, amd, &Param::Value("Y".into())),
            Support::yes()
        );
        // A TDX host: default and TDX.
        let intel = 1 | (1 << 5);
        assert_eq!(
            tee_support(Tee::Tdx, intel, &Param::Value("Y".into())),
            Support::yes()
        );
        assert!(!tee_support(Tee::Snp, intel, &Param::ModuleNotLoaded).available);
        assert!(!tee_support(Tee::Tdx, amd, &Param::ModuleNotLoaded).available);
    }

    #[test]
    fn reasons_for_this_build_machine() {
        // This machine: KVM_CAP_VM_TYPES answers 1, neither vendor module is loaded (PVM).
        let tdx = tee_support(Tee::Tdx, 1, &Param::ModuleNotLoaded);
        assert_eq!(
            tdx.reason.as_deref(),
            Some("KVM cannot create TDX VMs (KVM_CAP_VM_TYPES is 0x1; TDX would be bit 5); kvm_intel is not loaded")
        );
        let snp = tee_support(Tee::Snp, 1, &Param::ModuleNotLoaded);
        assert_eq!(
            snp.reason.as_deref(),
            Some("KVM cannot create SNP VMs (KVM_CAP_VM_TYPES is 0x1; SNP would be bit 4); kvm_amd is not loaded")
        );
    }

    #[test]
    fn reasons_name_the_module_state() {
        let old = tee_support(Tee::Snp, 0, &Param::Absent);
        let r = old.reason.unwrap();
        assert!(
            r.starts_with("this kernel's KVM does not report VM types"),
            "{r}"
        );
        assert!(
            r.ends_with("kvm_amd has no `sev_snp` parameter (no host support in this kernel)"),
            "{r}"
        );

        let off = tee_support(Tee::Tdx, 1, &Param::Value("N".into()));
        assert!(off
            .reason
            .unwrap()
            .contains("kvm_intel.tdx is N (the firmware or BIOS has not enabled TDX"));
    }

    #[test]
    fn cbitpos_needs_sev() {
        assert_eq!(cbitpos_from_cpuid(0x0001_b59f, 0x0000_4173), Some(51));
        assert_eq!(cbitpos_from_cpuid(0, 0x0000_4173), None);
        assert_eq!(cbitpos_from_cpuid(0b10, 0), None);
    }

    #[test]
    fn dry_run_assumes_tees_and_skips_the_speed_probe() {
        let caps = HostCapabilities::for_dry_run(Accel::Auto);
        assert!(caps.tdx.available && caps.snp.available);
        assert_eq!(caps.auto_accel(), Accel::Tcg);
        assert_eq!(
            HostCapabilities::for_dry_run(Accel::Kvm).auto_accel(),
            Accel::Kvm
        );
    }
}
