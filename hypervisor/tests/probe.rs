//! The host probe against the real /dev/kvm of the machine the tests run on.

use std::path::Path;
use std::time::Instant;

use coffer_hypervisor::{Accel, HostCapabilities, Tee};

#[test]
fn every_missing_capability_has_a_reason() {
    let started = Instant::now();
    let caps = HostCapabilities::probe();
    eprintln!("probe took {:?}: {caps:#?}", started.elapsed());
    for (what, support) in [("kvm", &caps.kvm), ("tdx", &caps.tdx), ("snp", &caps.snp)] {
        if !support.available {
            let reason = support.reason.as_deref().unwrap_or("");
            assert!(!reason.is_empty(), "{what} is unavailable without a reason");
        }
    }
    assert!(
        caps.tee(Tee::None).available,
        "TEE none always launches (TCG)"
    );
    assert_eq!(
        caps.auto_accel(),
        if caps.kvm.available {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    );
}

/// The build machines run a PVM-based KVM: /dev/kvm works, but emulates guests, and offers
/// default VMs only. The probe must see through it.
#[test]
fn pvm_host_has_no_tee_and_no_usable_kvm() {
    if !Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("SKIP: not a PVM-based KVM host (no /sys/module/kvm_pvm)");
        return;
    }
    let caps = HostCapabilities::probe();
    let kvm = caps.kvm.reason.as_deref().unwrap_or("");
    assert!(!caps.kvm.available, "{caps:?}");
    assert!(
        kvm.starts_with("KVM is unusable for guests here: a 1000000-iteration loop "),
        "{kvm}"
    );
    assert!(kvm.ends_with("real KVM needs ~1 ms)"), "{kvm}");
    assert_eq!(
        caps.tdx.reason.as_deref(),
        Some("KVM cannot create TDX VMs (KVM_CAP_VM_TYPES is 0x1; TDX would be bit 5); kvm_intel is not loaded")
    );
    assert_eq!(
        caps.snp.reason.as_deref(),
        Some("KVM cannot create SNP VMs (KVM_CAP_VM_TYPES is 0x1; SNP would be bit 4); kvm_amd is not loaded")
    );
    assert_eq!(caps.auto_accel(), Accel::Tcg);
}
