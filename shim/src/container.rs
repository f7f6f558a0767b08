//! A task as containerd knows it: the pod's sandbox or one of its containers.
//!
//! The sandbox task stands for the VM (its pid is QEMU's; its "process" runs until the VM
//! stops): the pause container's job of holding the pod's namespaces is done by the VM itself.
//! A workload container has a root filesystem (pulled by the guest itself, or in host mode shared
//! into the guest), its own process and any number of exec'd processes, all running in the guest.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::mount::Rootfs;
use crate::process::Process;

/// What kind of task this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The pod's sandbox: the VM.
    Sandbox,
    /// A container running in the VM.
    Workload,
}

/// One task.
#[derive(Debug)]
pub struct Container {
    /// containerd's id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Sandbox or workload.
    pub kind: Kind,
    /// The container's own process.
    pub init: Process,
    /// Exec'd processes by exec id.
    pub execs: HashMap<String, Process>,
    /// The root filesystem mounts (workloads of a host-mode handler only).
    pub rootfs: Option<Rootfs>,
    /// Whether the guest knows this container (created there and not yet removed).
    pub in_guest: bool,
}

impl Container {
    /// The bundle as containerd wrote it, for `State` answers.
    pub fn bundle_str(&self) -> String {
        self.bundle.to_string_lossy().into_owned()
    }

    /// The process an `exec_id` names: the container's own when empty.
    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} in container {}", self.id)))
    }

    /// Mutable access to the process an `exec_id` names.
    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} in container {id}")))
    }

    /// The process a guest event names.
    pub fn process_for_event(&mut self, exec_id: Option<&str>) -> Option<&mut Process> {
        match exec_id {
            None => Some(&mut self.init),
            Some(e) => self.execs.get_mut(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_found_by_exec_id() {
        let mut c = Container {
            id: "c1".into(),
            bundle: "/b".into(),
            kind: Kind::Workload,
            init: Process::new(None, "", "", ""),
            execs: HashMap::new(),
            rootfs: None,
            in_guest: false,
        };
        c.execs
            .insert("e1".into(), Process::new(Some("e1".into()), "", "", ""));
        assert_eq!(c.process("").unwrap().exec_id, None);
        assert_eq!(c.process("e1").unwrap().exec_id.as_deref(), Some("e1"));
        assert_eq!(
            c.process("e2").unwrap_err().to_string(),
            "exec e2 in container c1 not found"
        );
        assert!(c.process_for_event(Some("e1")).is_some());
        assert!(c.process_for_event(Some("nope")).is_none());
    }
}
