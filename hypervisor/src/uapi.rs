//! KVM UAPI structures that carry the Init-Data digest into a confidential VM's launch, for a
//! VMM that drives KVM directly (QEMU and Cloud Hypervisor fill the same structures).
//!
//! Layouts follow `arch/x86/include/uapi/asm/kvm.h`. kvm-bindings has the SEV-SNP structures but
//! none for TDX, so [`KvmTdxCmd`] and [`KvmTdxInitVm`] are defined here; tests pin every offset
//! the kernel reads.

use coffer_initdata::Digest;
use kvm_bindings::{kvm_cpuid2, kvm_sev_snp_launch_finish};

/// `KVM_TDX_INIT_VM`: the `id` of the [`KvmTdxCmd`] that initialises a TD.
pub const KVM_TDX_INIT_VM: u32 = 1;
/// `KVM_SEV_SNP_LAUNCH_FINISH`: the `id` of the `kvm_sev_cmd` that seals an SNP launch.
pub const KVM_SEV_SNP_LAUNCH_FINISH: u32 = kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH;

/// `struct kvm_tdx_cmd`: one TDX command, passed through `KVM_MEMORY_ENCRYPT_OP`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmTdxCmd {
    /// The command (`KVM_TDX_*`).
    pub id: u32,
    /// Command flags; zero for `KVM_TDX_INIT_VM`.
    pub flags: u32,
    /// User address of the command's argument.
    pub data: u64,
    /// Set by the kernel: the TDX module's error code when the command failed.
    pub hw_error: u64,
}

/// `struct kvm_tdx_init_vm`: the TD's attributes and measured configuration.
///
/// The kernel reads a `kvm_cpuid2` with `cpuid.nent` entries right after the fixed part, so a
/// real call allocates `size_of::<KvmTdxInitVm>() + nent * size_of::<kvm_cpuid_entry2>()`.
#[repr(C)]
#[derive(Debug)]
pub struct KvmTdxInitVm {
    /// TD attributes (`TDX_TD_ATTR_*`).
    pub attributes: u64,
    /// Extended features the TD may use (XFAM).
    pub xfam: u64,
    /// MRCONFIGID: 48 bytes the VMM chooses and the TD report carries; Init-Data puts its digest
    /// here.
    pub mrconfigid: [u64; 6],
    /// MROWNER.
    pub mrowner: [u64; 6],
    /// MROWNERCONFIG.
    pub mrownerconfig: [u64; 6],
    /// Must be zero.
    pub reserved: [u64; 12],
    /// The TD's CPUID configuration (a flexible array follows).
    pub cpuid: kvm_cpuid2,
}

impl KvmTdxInitVm {
    /// A zeroed `kvm_tdx_init_vm` whose MRCONFIGID is `digest` resized to 48 bytes.
    pub fn with_mrconfigid(digest: &Digest) -> Self {
        KvmTdxInitVm {
            attributes: 0,
            xfam: 0,
            mrconfigid: words(&digest.mrconfigid()),
            mrowner: [0; 6],
            mrownerconfig: [0; 6],
            reserved: [0; 12],
            cpuid: kvm_cpuid2::default(),
        }
    }

    /// The MRCONFIGID as the bytes the kernel copies into the TD (little-endian words).
    pub fn mrconfigid_bytes(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        for (chunk, word) in out.chunks_exact_mut(8).zip(self.mrconfigid) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

/// Packs bytes into the `u64` array the kernel declares, keeping their order in memory.
fn words<const N: usize>(bytes: &[u8]) -> [u64; N] {
    let mut out = [0u64; N];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(b);
    }
    out
}

/// A `kvm_sev_snp_launch_finish` whose HOST_DATA is `digest` resized to 32 bytes (no ID block).
pub fn snp_launch_finish(digest: &Digest) -> kvm_sev_snp_launch_finish {
    kvm_sev_snp_launch_finish {
        host_data: digest.host_data(),
        ..Default::default()
    }
}

/// A `KVM_TDX_INIT_VM` command pointing at `init`.
pub fn tdx_init_vm_cmd(init: &KvmTdxInitVm) -> KvmTdxCmd {
    KvmTdxCmd {
        id: KVM_TDX_INIT_VM,
        flags: 0,
        data: std::ptr::from_ref(init) as u64,
        hw_error: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use coffer_initdata::annotation;
    use coffer_initdata::Limits;

    use super::*;

    use coffer_testkit::{KATA_ANNOTATION, KATA_DIGEST_HEX};

    fn kata_digest() -> Digest {
        annotation::decode(KATA_ANNOTATION, &Limits::default())
            .unwrap()
            .digest()
    }

    #[test]
    fn tdx_layouts_match_the_kernel() {
        assert_eq!(offset_of!(KvmTdxCmd, id), 0);
        assert_eq!(offset_of!(KvmTdxCmd, flags), 4);
        assert_eq!(offset_of!(KvmTdxCmd, data), 8);
        assert_eq!(offset_of!(KvmTdxCmd, hw_error), 16);
        assert_eq!(size_of::<KvmTdxCmd>(), 24);

        assert_eq!(offset_of!(KvmTdxInitVm, attributes), 0);
        assert_eq!(offset_of!(KvmTdxInitVm, xfam), 8);
        assert_eq!(offset_of!(KvmTdxInitVm, mrconfigid), 16);
        assert_eq!(offset_of!(KvmTdxInitVm, mrowner), 64);
        assert_eq!(offset_of!(KvmTdxInitVm, mrownerconfig), 112);
        assert_eq!(offset_of!(KvmTdxInitVm, reserved), 160);
        assert_eq!(offset_of!(KvmTdxInitVm, cpuid), 256);
        assert_eq!(size_of::<KvmTdxInitVm>(), 264);
    }

    #[test]
    fn snp_layout_matches_the_kernel() {
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, id_block_en), 16);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, host_data), 19);
        assert_eq!(offset_of!(kvm_sev_snp_launch_finish, flags), 54);
        assert_eq!(size_of::<kvm_sev_snp_launch_finish>(), 88);
        assert_eq!(KVM_SEV_SNP_LAUNCH_FINISH, 102);
    }

    #[test]
    fn mrconfigid_bytes_sit_at_offset_16() {
        let digest = kata_digest();
        let init = KvmTdxInitVm::with_mrconfigid(&digest);
        // SAFETY: reads the fixed part of a live `repr(C)` struct made only of integers.
        let raw = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&init).cast::<u8>(),
                offset_of!(KvmTdxInitVm, cpuid),
            )
        };
        let mut expected = [0u8; 48];
        expected[..32].copy_from_slice(&hex::decode(KATA_DIGEST_HEX).unwrap());
        assert_eq!(&raw[16..64], &expected[..]);
        assert!(raw[..16].iter().chain(&raw[64..]).all(|&b| b == 0));
        assert_eq!(init.mrconfigid_bytes(), expected);

        let cmd = tdx_init_vm_cmd(&init);
        assert_eq!(cmd.id, 1);
        assert_eq!(cmd.data, std::ptr::from_ref(&init) as u64);
    }

    #[test]
    fn host_data_bytes_sit_at_offset_19() {
        let finish = snp_launch_finish(&kata_digest());
        // SAFETY: reads a live `repr(C)` struct made only of integers, with no padding.
        let raw = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&finish).cast::<u8>(),
                size_of::<kvm_sev_snp_launch_finish>(),
            )
        };
        assert_eq!(&raw[19..51], &hex::decode(KATA_DIGEST_HEX).unwrap()[..]);
        assert!(raw[..19].iter().chain(&raw[51..]).all(|&b| b == 0));
    }
}
