//! The sandbox VM's size follows the pod.
//!
//! containerd's CRI puts the pod's resources on the sandbox spec as annotations (the sum of its
//! containers' limits, from kubelet's `PodSandboxConfig`): `io.kubernetes.cri.sandbox-cpu-quota`
//! and `-cpu-period` (µs) and `io.kubernetes.cri.sandbox-memory` (bytes). As Kata does with
//! `default_vcpus` and `default_memory`, the handler's `[vm] vcpus` and `memory_mib` are what the
//! guest itself needs, and the pod's limits come on top: a pod with a 1 GiB container gets a guest
//! that can hold it. The pod spec is not trusted to size a VM without bound: vCPUs are capped at
//! `max_vcpus` (CPU is compressible), memory beyond `max_memory_mib` refuses the pod.

use std::collections::HashMap;

use coffer_hypervisor::VmConfig;

use crate::error::{Error, Result};

/// CFS quota of the pod's containers, in µs per period; absent or ≤ 0 means no CPU limit.
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// CFS period the quota is measured in, in µs.
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// Memory limit of the pod's containers, in bytes; absent or 0 means no limit.
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

const MIB: u64 = 1024 * 1024;

/// The VM configuration for a pod: the handler's, grown by the pod's resource annotations.
pub fn vm_for_pod(base: &VmConfig, annotations: &HashMap<String, String>) -> Result<VmConfig> {
    let number = |key: &str| -> Result<Option<i64>> {
        match annotations.get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
                Error::InvalidArgument(format!(
                    "annotation {key} is {v:?}; containerd writes a whole number there"
                ))
            }),
        }
    };
    let mut vm = base.clone();

    let quota = number(SANDBOX_CPU_QUOTA)?.unwrap_or(0);
    let period = number(SANDBOX_CPU_PERIOD)?.unwrap_or(0);
    if quota > 0 && period > 0 {
        // Whole vCPUs: a pod limited to 1.5 CPUs needs two to use its quota.
        let pod_vcpus = u64::try_from(quota)
            .unwrap_or(0)
            .div_ceil(u64::try_from(period).unwrap_or(1));
        let wanted = u64::from(base.vcpus).saturating_add(pod_vcpus);
        let max = u64::from(base.max_vcpus());
        let vcpus = wanted.min(max);
        if wanted > max {
            tracing::warn!(
                wanted,
                max,
                "the pod's CPU limit asks for more vCPUs than max_vcpus; the guest gets max_vcpus"
            );
        }
        vm.vcpus = u32::try_from(vcpus).unwrap_or(u32::MAX);
    }

    let memory = number(SANDBOX_MEMORY)?.unwrap_or(0);
    if memory > 0 {
        let pod_mib = u64::try_from(memory).unwrap_or(0).div_ceil(MIB);
        let wanted = u64::from(base.memory_mib).saturating_add(pod_mib);
        let max = u64::from(base.max_memory_mib());
        if wanted > max {
            return Err(Error::InvalidArgument(format!(
                "the pod's memory limit ({pod_mib} MiB, annotation {SANDBOX_MEMORY}) and the \
                 guest's own {} MiB need a {wanted} MiB VM, more than this handler's \
                 max_memory_mib = {max}; lower the pod's limits or raise max_memory_mib",
                base.memory_mib
            )));
        }
        vm.memory_mib = u32::try_from(wanted).unwrap_or(u32::MAX);
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmConfig {
        VmConfig {
            vcpus: 1,
            memory_mib: 512,
            max_vcpus: Some(4),
            max_memory_mib: Some(4096),
            ..VmConfig::default()
        }
    }

    fn pod(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_pod_without_limits_gets_the_handlers_size() {
        let vm = vm_for_pod(&base(), &pod(&[])).unwrap();
        assert_eq!((vm.vcpus, vm.memory_mib), (1, 512));
        // containerd writes zeros for "no limit".
        let vm = vm_for_pod(
            &base(),
            &pod(&[
                (SANDBOX_CPU_QUOTA, "0"),
                (SANDBOX_CPU_PERIOD, "100000"),
                (SANDBOX_MEMORY, "0"),
            ]),
        )
        .unwrap();
        assert_eq!((vm.vcpus, vm.memory_mib), (1, 512));
        let vm = vm_for_pod(&base(), &pod(&[(SANDBOX_CPU_QUOTA, "-1")])).unwrap();
        assert_eq!(vm.vcpus, 1);
    }

    #[test]
    fn the_pods_limits_come_on_top_of_the_handlers_size() {
        let vm = vm_for_pod(
            &base(),
            &pod(&[
                (SANDBOX_CPU_QUOTA, "150000"),
                (SANDBOX_CPU_PERIOD, "100000"),
                (SANDBOX_MEMORY, "1073741824"),
            ]),
        )
        .unwrap();
        assert_eq!((vm.vcpus, vm.memory_mib), (3, 1536));
        // A byte over a MiB is a whole MiB more.
        let vm = vm_for_pod(&base(), &pod(&[(SANDBOX_MEMORY, "1048577")])).unwrap();
        assert_eq!(vm.memory_mib, 514);
    }

    #[test]
    fn vcpus_are_capped_and_too_much_memory_is_refused() {
        let vm = vm_for_pod(
            &base(),
            &pod(&[
                (SANDBOX_CPU_QUOTA, "6400000"),
                (SANDBOX_CPU_PERIOD, "100000"),
            ]),
        )
        .unwrap();
        assert_eq!(vm.vcpus, 4);
        let e = vm_for_pod(&base(), &pod(&[(SANDBOX_MEMORY, "8589934592")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the pod's memory limit (8192 MiB, annotation io.kubernetes.cri.sandbox-memory) and \
             the guest's own 512 MiB need a 8704 MiB VM, more than this handler's \
             max_memory_mib = 4096; lower the pod's limits or raise max_memory_mib"
        );
    }

    #[test]
    fn a_value_that_is_not_a_number_is_named() {
        let e = vm_for_pod(&base(), &pod(&[(SANDBOX_MEMORY, "1Gi")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation io.kubernetes.cri.sandbox-memory is \"1Gi\"; containerd writes a whole number there"
        );
    }
}
