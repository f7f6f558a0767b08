//! One process of a task: a container's own process or an exec'd one.
//!
//! The process itself runs in the guest; the shim keeps what containerd asks about (status, pid,
//! stdio paths, exit) and the output copiers. An exit is observed once, from the guest's exit
//! event, and then handed to every waiter through a watch channel.

use std::time::SystemTime;

use containerd_shim_protos::api::{StateResponse, Status};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use tokio::sync::watch;

use crate::io::ProcessIo;

/// How and when a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code as containerd reports it: the code, or 128 + signal.
    pub code: u32,
    /// When the shim learnt of it.
    pub at: SystemTime,
}

impl Exit {
    /// An exit now with `code`.
    pub fn now(code: u32) -> Exit {
        Exit {
            code,
            at: SystemTime::now(),
        }
    }

    /// The time as a protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

/// A `SystemTime` as a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Always below 10^9, so it fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(i32::MAX),
        ..Default::default()
    }
}

/// Lifecycle of a process as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Frozen by a pause.
    Paused,
    /// Exited.
    Stopped,
}

/// One process.
#[derive(Debug)]
pub struct Process {
    /// Exec id; `None` for a container's own process.
    pub exec_id: Option<String>,
    /// Pid: the guest's pid of the process, or the VM's host pid for a sandbox.
    pub pid: u32,
    /// containerd's stdio paths, reported back in `State`.
    pub stdin: String,
    /// See `stdin`.
    pub stdout: String,
    /// See `stdin`.
    pub stderr: String,
    /// Whether it runs on a terminal (then its only output is stdout).
    pub terminal: bool,
    /// Where it is in its life.
    pub phase: Phase,
    /// The process to run in the guest (exec'd processes are sent at start).
    pub guest: Option<coffer_agent::protocol::Process>,
    /// Output copiers; taken when the process exits.
    pub io: Option<ProcessIo>,
    /// Set while the guest starts it (the pod's lock is not held meanwhile): an exit that
    /// arrives then is recorded but published only after the start, as containerd expects.
    pub starting: bool,
    /// An exit recorded while `starting`, still to be published.
    pub exit_held: bool,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    /// A created process.
    pub fn new(exec_id: Option<String>, stdin: &str, stdout: &str, stderr: &str) -> Process {
        Process {
            exec_id,
            pid: 0,
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            terminal: false,
            phase: Phase::Created,
            guest: None,
            io: None,
            starting: false,
            exit_held: false,
            exit: watch::channel(None).0,
        }
    }

    /// The exit, if it happened.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// A receiver that sees the exit when it happens.
    pub fn subscribe(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    /// Records the exit; returns false if it was already recorded (the first one wins).
    pub fn set_exited(&mut self, exit: Exit) -> bool {
        if self.exit().is_some() {
            return false;
        }
        self.phase = Phase::Stopped;
        self.exit.send_replace(Some(exit));
        true
    }

    /// Ends the start: returns the exit recorded meanwhile, still to be published.
    pub fn finish_start(&mut self) -> Option<Exit> {
        self.starting = false;
        if std::mem::take(&mut self.exit_held) {
            self.exit()
        } else {
            None
        }
    }

    /// The `State` answer for this process.
    pub fn state(&self, id: &str, bundle: &str) -> StateResponse {
        let status = match self.phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped => Status::STOPPED,
        };
        let exit = self.exit();
        StateResponse {
            id: id.to_string(),
            bundle: bundle.to_string(),
            pid: self.pid,
            status: status.into(),
            stdin: self.stdin.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            terminal: self.terminal,
            exit_status: exit.map_or(0, |e| e.code),
            exited_at: exit.map_or_else(MessageField::none, |e| MessageField::some(e.timestamp())),
            exec_id: self.exec_id.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// Waits until the process behind `rx` has exited.
pub async fn wait_exit(mut rx: watch::Receiver<Option<Exit>>) -> Option<Exit> {
    rx.wait_for(Option::is_some).await.ok().and_then(|e| *e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_is_recorded_once_and_seen_by_waiters() {
        let mut p = Process::new(None, "", "/o", "/e");
        p.phase = Phase::Running;
        p.pid = 7;
        let waiter = tokio::spawn(wait_exit(p.subscribe()));
        assert_eq!(
            p.state("c1", "/b").status.enum_value_or_default(),
            Status::RUNNING
        );
        let first = Exit::now(3);
        assert!(p.set_exited(first));
        assert!(!p.set_exited(Exit::now(137)));
        assert_eq!(waiter.await.unwrap(), Some(first));
        let s = p.state("c1", "/b");
        assert_eq!(s.status.enum_value_or_default(), Status::STOPPED);
        assert_eq!(s.exit_status, 3);
        assert_eq!(s.pid, 7);
        assert_eq!(s.stdout, "/o");
        // A waiter that comes after the exit sees it at once.
        assert_eq!(wait_exit(p.subscribe()).await, Some(first));
    }

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(5, 7);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
    }
}
