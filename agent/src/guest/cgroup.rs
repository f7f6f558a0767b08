//! Containers' cgroups (v2): limits from the OCI spec, figures for the host's stats, the freezer
//! for pause, and the OOM killer's count.
//!
//! The agent mounts the unified hierarchy at [`ROOT`], enables the cpu, memory and pids
//! controllers for `coffer/`, and gives each container `coffer/<id>`. A container's processes
//! join it before they exec: the agent opens its `cgroup.procs` and the child writes `0` into
//! that descriptor (the container's own root has no /sys).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::ContainerError;
use crate::protocol::{ContainerStats, Resources};

/// Where the unified hierarchy is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The controllers containers get.
const CONTROLLERS: &str = "+cpu +memory +pids";

/// Mounts cgroup2 and prepares `coffer/` with the controllers enabled for its children.
pub fn setup(root: &Path) -> Result<(), String> {
    if !root.join("cgroup.controllers").exists() {
        std::fs::create_dir_all(root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
        nix::mount::mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| format!("mount cgroup2 on {}: {e}", root.display()))?;
    }
    enable(root)?;
    let parent = root.join("coffer");
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("mkdir {}: {e}", parent.display())),
    }
    enable(&parent)
}

fn enable(dir: &Path) -> Result<(), String> {
    let path = dir.join("cgroup.subtree_control");
    std::fs::write(&path, CONTROLLERS)
        .map_err(|e| format!("{CONTROLLERS} > {}: {e}", path.display()))
}

fn sys(step: String) -> impl FnOnce(std::io::Error) -> ContainerError {
    move |e| ContainerError::Sys {
        step,
        source: super::error::io_errno(&e),
    }
}

/// One container's cgroup; removed when dropped (once its processes are gone).
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open for the container's processes to join.
    procs: File,
    /// OOM kills already announced to the host.
    announced_ooms: AtomicU64,
}

impl Cgroup {
    /// Creates `coffer/<id>` under `root` with `resources` applied.
    pub fn create(root: &Path, id: &str, resources: &Resources) -> Result<Cgroup, ContainerError> {
        let dir = root.join("coffer").join(id);
        std::fs::create_dir(&dir).map_err(sys(format!("creating cgroup {}", dir.display())))?;
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(sys(format!("opening {}/cgroup.procs", dir.display())));
        let cgroup = match procs {
            Ok(procs) => Cgroup {
                dir,
                procs,
                announced_ooms: AtomicU64::new(0),
            },
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        cgroup.apply(resources)?;
        Ok(cgroup)
    }

    /// The descriptor a child writes `0` into to join.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Writes the limits that `r` sets; leaves the others as they are.
    pub fn apply(&self, r: &Resources) -> Result<(), ContainerError> {
        if let Some(limit) = r.memory_limit {
            self.write("memory.max", &max_or(limit))?;
        }
        if r.cpu_quota.is_some() || r.cpu_period.is_some() {
            let period = r.cpu_period.unwrap_or(100_000);
            let quota = r.cpu_quota.map_or_else(|| "max".to_string(), max_or);
            self.write("cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(shares) = r.cpu_shares.filter(|s| *s > 0) {
            self.write("cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if let Some(limit) = r.pids_limit {
            self.write(
                "pids.max",
                &if limit > 0 {
                    limit.to_string()
                } else {
                    "max".into()
                },
            )?;
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> Result<(), ContainerError> {
        let path = self.dir.join(file);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(sys(format!("writing {value:?} to {}", path.display())))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// The container's figures now.
    pub fn stats(&self) -> ContainerStats {
        let cpu = keyed(&self.read("cpu.stat"));
        let mem = keyed(&self.read("memory.stat"));
        let events = keyed(&self.read("memory.events"));
        let get = |m: &[(String, u64)], k: &str| {
            m.iter().find(|(key, _)| key == k).map_or(0, |(_, v)| *v)
        };
        ContainerStats {
            cpu_usage_usec: get(&cpu, "usage_usec"),
            cpu_user_usec: get(&cpu, "user_usec"),
            cpu_system_usec: get(&cpu, "system_usec"),
            cpu_nr_throttled: get(&cpu, "nr_throttled"),
            memory_usage: number(&self.read("memory.current")).unwrap_or(0),
            memory_limit: number(&self.read("memory.max")).unwrap_or(u64::MAX),
            memory_anon: get(&mem, "anon"),
            memory_file: get(&mem, "file"),
            memory_inactive_file: get(&mem, "inactive_file"),
            memory_active_file: get(&mem, "active_file"),
            memory_max_events: get(&events, "max"),
            oom_kills: get(&events, "oom_kill"),
            pids_current: number(&self.read("pids.current")).unwrap_or(0),
            pids_limit: number(&self.read("pids.max")).unwrap_or(0),
        }
    }

    /// How many processes of the container the OOM killer has killed.
    pub fn oom_kills(&self) -> u64 {
        let events = keyed(&self.read("memory.events"));
        events
            .iter()
            .find(|(k, _)| k == "oom_kill")
            .map_or(0, |(_, v)| *v)
    }

    /// Whether the OOM killer struck since the last call that said so.
    pub fn new_oom_kills(&self) -> bool {
        let now = self.oom_kills();
        self.announced_ooms.fetch_max(now, Ordering::SeqCst) < now
    }

    /// Freezes (`true`) or thaws the container's processes.
    pub fn freeze(&self, frozen: bool) -> Result<(), ContainerError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Thawed first: a frozen cgroup's last processes could not exit.
        let _ = self.freeze(false);
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            super::boot::log(&format!("removing cgroup {}: {e}", self.dir.display()));
        }
    }
}

/// `max` for a negative limit (none), else the number.
fn max_or(limit: i64) -> String {
    if limit < 0 {
        "max".into()
    } else {
        limit.to_string()
    }
}

/// cgroup v1 CPU shares (2..262144) as cgroup v2 `cpu.weight` (1..10000), as runc converts them.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// `key value` lines.
fn keyed(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A file holding one number (or `max`, which is `None`).
fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_become_weights_as_runc_converts_them() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
    }

    #[test]
    fn stat_files_are_parsed() {
        let k = keyed("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\nbad line x\n");
        assert_eq!(k.len(), 3);
        assert_eq!(k[0], ("usage_usec".to_string(), 1234));
        assert_eq!(number("max\n"), None);
        assert_eq!(number("4096\n"), Some(4096));
        assert_eq!(max_or(-1), "max");
        assert_eq!(max_or(1 << 20), "1048576");
    }
}
