//! Container figures in containerd's terms: the guest's cgroup v2 figures as
//! `io.containerd.cgroups.v2.Metrics` (what `crictl stats` reads), and the resources of an
//! update request (`crictl update`) in the guest protocol's terms.

use coffer_agent::protocol::{ContainerStats, Resources};
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};

use crate::error::{Error, Result};

/// The type URL containerd decodes cgroup v2 metrics by.
pub const CGROUP_V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

/// The figures of one container, or of several summed (a pod).
pub fn cgroup_v2(figures: &[ContainerStats]) -> Metrics {
    let sum = |f: fn(&ContainerStats) -> u64| {
        figures.iter().map(f).fold(0u64, |a, b| a.saturating_add(b))
    };
    // A limit is only meaningful for one container.
    let single =
        |f: fn(&ContainerStats) -> u64| figures.first().filter(|_| figures.len() == 1).map_or(0, f);
    Metrics {
        pids: MessageField::some(PidsStat {
            current: sum(|s| s.pids_current),
            limit: single(|s| s.pids_limit),
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: sum(|s| s.cpu_usage_usec),
            user_usec: sum(|s| s.cpu_user_usec),
            system_usec: sum(|s| s.cpu_system_usec),
            nr_throttled: sum(|s| s.cpu_nr_throttled),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: sum(|s| s.memory_usage),
            usage_limit: single(|s| s.memory_limit),
            anon: sum(|s| s.memory_anon),
            file: sum(|s| s.memory_file),
            inactive_file: sum(|s| s.memory_inactive_file),
            active_file: sum(|s| s.memory_active_file),
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            max: sum(|s| s.memory_max_events),
            oom_kill: sum(|s| s.oom_kills),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Metrics packed as containerd expects them in a stats response.
pub fn to_any(metrics: &Metrics) -> Result<Any> {
    let value = metrics
        .write_to_bytes()
        .map_err(|e| Error::FailedPrecondition(format!("encoding metrics: {e}")))?;
    Ok(Any {
        type_url: CGROUP_V2_METRICS.to_string(),
        value,
        ..Default::default()
    })
}

/// The resources of an update request: containerd sends the OCI `LinuxResources` as JSON.
pub fn resources_from_any(any: &Any) -> Result<Resources> {
    let r: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value).map_err(|e| {
        Error::InvalidArgument(format!(
            "update resources ({}) are not OCI LinuxResources JSON: {e}",
            any.type_url
        ))
    })?;
    Ok(resources(&r))
}

/// The limits of OCI `linux.resources` that the guest applies.
pub fn resources(r: &oci_spec::runtime::LinuxResources) -> Resources {
    let cpu = r.cpu().as_ref();
    Resources {
        memory_limit: r.memory().as_ref().and_then(|m| m.limit()),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
        cpu_shares: cpu.and_then(|c| c.shares()),
        pids_limit: r.pids().as_ref().map(|p| p.limit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_become_cgroup_v2_metrics() {
        let a = ContainerStats {
            cpu_usage_usec: 10,
            memory_usage: 100,
            memory_limit: 1000,
            memory_inactive_file: 5,
            pids_current: 2,
            pids_limit: 10,
            oom_kills: 1,
            ..Default::default()
        };
        let one = cgroup_v2(&[a]);
        assert_eq!(one.memory.usage, 100);
        assert_eq!(one.memory.usage_limit, 1000);
        assert_eq!(one.memory.inactive_file, 5);
        assert_eq!(one.pids.limit, 10);
        assert_eq!(one.memory_events.oom_kill, 1);
        let pod = cgroup_v2(&[a, a]);
        assert_eq!(pod.cpu.usage_usec, 20);
        assert_eq!(pod.memory.usage, 200);
        assert_eq!(pod.memory.usage_limit, 0);
        let any = to_any(&one).unwrap();
        assert_eq!(any.type_url, CGROUP_V2_METRICS);
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), one);
    }

    #[test]
    fn update_resources_are_read_from_oci_json() {
        let any = Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: br#"{"memory":{"limit":67108864},"cpu":{"quota":50000,"period":100000,"shares":512},"pids":{"limit":64}}"#.to_vec(),
            ..Default::default()
        };
        assert_eq!(
            resources_from_any(&any).unwrap(),
            Resources {
                memory_limit: Some(64 << 20),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                cpu_shares: Some(512),
                pids_limit: Some(64),
            }
        );
        let bad = Any {
            type_url: "x".into(),
            value: b"{".to_vec(),
            ..Default::default()
        };
        let e = resources_from_any(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("update resources (x) are not OCI LinuxResources JSON"),
            "{e}"
        );
    }
}
