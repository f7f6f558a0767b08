//! The VM part of a runtime handler's configuration.
//!
//! [`VmConfig`] is a TOML table: the shim's per-handler file embeds it as `[vm]`, and
//! `coffer launch-plan --config` reads the same table. Every field has a safe default, so an empty
//! table is a valid configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Accel;

/// Where the guest image build installs its files.
pub const DEFAULT_GUEST_DIR: &str = "/usr/local/share/coffer/guest";

/// TDX firmware (TDVF) where Ubuntu's TDX host packages install it.
pub const DEFAULT_TDX_FIRMWARE: &str = "/usr/share/ovmf/OVMF.fd";

/// OVMF's AmdSev build (measured direct boot, `kernel-hashes=on`), as Debian and Ubuntu ship it.
pub const DEFAULT_SNP_FIRMWARE: &str = "/usr/share/ovmf/OVMF.amdsev.fd";

/// qboot, QEMU's minimal firmware (Debian's qemu-system-data): with an uncompressed kernel ELF
/// it jumps straight to the kernel's PVH entry point, skipping SeaBIOS, the real-mode setup and
/// the decompressor. The `coffer-qemu` handler boots this way.
pub const QBOOT_FIRMWARE: &str = "/usr/share/qemu/qboot.rom";

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HypervisorKind {
    /// QEMU: every TEE.
    #[default]
    Qemu,
    /// Cloud Hypervisor: SNP only (it has no way to set TDX MRCONFIGID).
    CloudHypervisor,
}

impl HypervisorKind {
    /// The program run when the configuration names none.
    pub fn default_program(self) -> &'static str {
        match self {
            HypervisorKind::Qemu => "qemu-system-x86_64",
            HypervisorKind::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

/// The QEMU machine a plain (TEE `none`) guest runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Machine {
    /// A PC with PCI Express and ACPI (`-machine q35`): what TDX and SEV-SNP guests run on, and
    /// what any x86 guest kernel boots.
    #[default]
    Q35,
    /// QEMU's minimal machine (`-machine microvm,acpi=off`): no PCI and no ACPI; the virtio
    /// devices sit on virtio-mmio and QEMU names them on the kernel command line (the kernel
    /// needs `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`). The guest kernel skips enumerating ACPI and
    /// PCI, about a quarter of its boot under TCG. QEMU offers 1024-entry queues on virtio-mmio,
    /// which the plan caps at 128 through a kernel parameter of the image's kernel (see
    /// [`crate::plan::MICROVM_PARAMS`]); a kernel without it fills them (~17 MiB more per idle
    /// pod). With no ACPI there is no power button: the guest stops when its agent is asked to,
    /// and QEMU `quit` ends it otherwise. The packaged plain handler runs on it.
    Microvm,
}

impl Machine {
    /// The name in the handler configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        }
    }
}

/// [`VmConfig::tcg_cache_mib`] by default: room for what a guest boot translates (about
/// 43 MiB with the image's kernel and agent), so that the boot never refills it. A pod's first
/// container takes its guest to ~54 MiB: at 48 the cache is refilled once then, which costs that
/// start ~0.2 s and saves each idle pod ~12 MiB (the code and QEMU's bookkeeping of it).
pub const DEFAULT_TCG_CACHE_MIB: u32 = 48;

/// How to build and run the sandbox VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// `qemu` (default) or `cloud-hypervisor`.
    pub hypervisor: HypervisorKind,
    /// The hypervisor binary; default `qemu-system-x86_64` or `cloud-hypervisor`, found in PATH.
    pub path: Option<PathBuf>,
    /// `auto` (default), `kvm` or `tcg`. Used for TEE `none`; TDX and SNP always need KVM.
    pub accel: Accel,
    /// `q35` (default) or `microvm`, for TEE `none` on QEMU; TDX and SNP guests need `q35`.
    pub machine: Machine,
    /// The guest kernel: a bzImage (`vmlinuz`), which every firmware boots, or for TEE `none`
    /// the uncompressed ELF (`vmlinux`), which QEMU starts through its PVH entry point.
    pub kernel: PathBuf,
    /// The guest initramfs (its `/init` is the agent).
    pub initrd: PathBuf,
    /// Firmware: TDVF for TDX, OVMF's AmdSev build for SNP (`-bios`), the IGVM file for Cloud
    /// Hypervisor. Default: [`DEFAULT_TDX_FIRMWARE`] / [`DEFAULT_SNP_FIRMWARE`]. Optional for
    /// `none` (QEMU's SeaBIOS by default; [`QBOOT_FIRMWARE`] for the fast PVH boot).
    pub firmware: Option<PathBuf>,
    /// Extra kernel parameters appended to Coffer's own.
    pub kernel_params: String,
    /// Number of vCPUs the guest itself needs; a pod's CPU limit adds to it (Kata's
    /// `default_vcpus`).
    pub vcpus: u32,
    /// Guest memory in MiB the guest itself needs; a pod's memory limit adds to it (Kata's
    /// `default_memory`).
    pub memory_mib: u32,
    /// Most vCPUs a pod's VM gets, whatever its limits say. Default: the host's CPUs.
    pub max_vcpus: Option<u32>,
    /// Largest VM a pod may ask for, in MiB; a pod whose limits need more is refused. Default:
    /// the host's memory.
    pub max_memory_mib: Option<u32>,
    /// Size of QEMU's translation cache in MiB when the VM is emulated (`accel = "tcg"`, or
    /// `auto` on a host without KVM): the most guest code translated for the host QEMU keeps,
    /// and so a bound on what the guest's code can make QEMU hold (QEMU's own default is
    /// 1 GiB). When the cache fills, QEMU empties it and translates again what still runs.
    /// `0`: QEMU's default. Ignored with KVM.
    pub tcg_cache_mib: u32,
    /// The host user QEMU runs as (a name from the host's user database). Unset: QEMU runs as
    /// the shim's user (root). The user needs no rights of its own: the shim hands it its
    /// sockets' directory, the Init-Data image (group-readable) and the TAP, and adds the groups
    /// of `/dev/kvm` and `/dev/sev` to its groups. Only with `rootfs = "guest"`: the host-mode
    /// share needs root.
    pub user: Option<String>,
    /// SEV-SNP settings.
    pub snp: SnpConfig,
    /// TDX settings.
    pub tdx: TdxConfig,
}

impl Default for VmConfig {
    fn default() -> Self {
        let guest = Path::new(DEFAULT_GUEST_DIR);
        VmConfig {
            hypervisor: HypervisorKind::Qemu,
            path: None,
            accel: Accel::Auto,
            machine: Machine::Q35,
            kernel: guest.join("vmlinuz"),
            initrd: guest.join("initrd.img"),
            firmware: None,
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 512,
            max_vcpus: None,
            max_memory_mib: None,
            tcg_cache_mib: DEFAULT_TCG_CACHE_MIB,
            user: None,
            snp: SnpConfig::default(),
            tdx: TdxConfig::default(),
        }
    }
}

impl VmConfig {
    /// The program the launch plan runs.
    pub fn program(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from(self.hypervisor.default_program()))
    }
}

impl VmConfig {
    /// [`Self::max_vcpus`], or the host's online CPUs.
    pub fn max_vcpus(&self) -> u32 {
        self.max_vcpus.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
                .unwrap_or(1)
        })
    }

    /// [`Self::max_memory_mib`], or the host's memory (`MemTotal` of /proc/meminfo).
    pub fn max_memory_mib(&self) -> u32 {
        self.max_memory_mib.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    let kib: u64 = m
                        .lines()
                        .find_map(|l| l.strip_prefix("MemTotal:"))?
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .ok()?;
                    u32::try_from(kib / 1024).ok()
                })
                .unwrap_or(u32::MAX)
        })
    }

    /// The QEMU firmware for `tee`: the configured one, else the distribution's default (none
    /// for TEE `none`: QEMU's own).
    pub fn qemu_firmware(&self, tee: crate::Tee) -> Option<PathBuf> {
        let default = match tee {
            crate::Tee::None => return self.firmware.clone(),
            crate::Tee::Tdx => DEFAULT_TDX_FIRMWARE,
            crate::Tee::Snp => DEFAULT_SNP_FIRMWARE,
        };
        Some(
            self.firmware
                .clone()
                .unwrap_or_else(|| PathBuf::from(default)),
        )
    }
}

/// SEV-SNP launch settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnpConfig {
    /// Position of the memory encryption bit in a page table entry. Read from the host's CPUID
    /// (leaf 0x8000001F) when it has one; set it here to plan for another host.
    pub cbitpos: Option<u32>,
    /// Physical address bits lost to memory encryption.
    pub reduced_phys_bits: u32,
    /// The guest policy (default 0x30000: SMT allowed, the reserved bit 17 set).
    pub policy: u64,
}

impl Default for SnpConfig {
    fn default() -> Self {
        SnpConfig {
            cbitpos: None,
            reduced_phys_bits: 1,
            policy: 0x30000,
        }
    }
}

/// TDX launch settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TdxConfig {
    /// The vsock port of the host's quote generation service (QGS, at CID 2), when the guest
    /// needs quotes; QEMU then relays the guest's GetQuote requests to it.
    pub quote_generation_socket_port: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_is_the_default() {
        let c: VmConfig = toml::from_str("").unwrap();
        assert_eq!(c, VmConfig::default());
        assert_eq!(c.program(), PathBuf::from("qemu-system-x86_64"));
        assert_eq!(c.snp.policy, 0x30000);
    }

    #[test]
    fn nested_under_vm() {
        #[derive(Deserialize)]
        struct Handler {
            vm: VmConfig,
        }
        let h: Handler = toml::from_str(
            "[vm]\nhypervisor = \"cloud-hypervisor\"\naccel = \"tcg\"\nvcpus = 2\n[vm.snp]\ncbitpos = 51\n",
        )
        .unwrap();
        assert_eq!(h.vm.hypervisor, HypervisorKind::CloudHypervisor);
        assert_eq!(h.vm.program(), PathBuf::from("cloud-hypervisor"));
        assert_eq!(h.vm.accel, Accel::Tcg);
        assert_eq!(h.vm.machine, Machine::Q35);
        assert_eq!(h.vm.vcpus, 2);
        assert_eq!(h.vm.snp.cbitpos, Some(51));
        assert_eq!(h.vm.snp.reduced_phys_bits, 1);
    }

    #[test]
    fn the_machine_is_named_in_kebab_case() {
        let c: VmConfig = toml::from_str("machine = \"microvm\"\n").unwrap();
        assert_eq!(c.machine, Machine::Microvm);
        let e = toml::from_str::<VmConfig>("machine = \"pc\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown variant `pc`"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<VmConfig>("memory = 512\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `memory`"), "{e}");
    }
}
