//! The containers of this guest: each is a first process in its own mount, PID, UTS and IPC
//! namespaces, its root an overlay of the image the guest pulled itself (see [`super::image`]) or,
//! in the host-shared mode, a directory of the 9p share, plus the processes exec'd into it, kept
//! from create to remove. One thread reaps every child of PID 1; an exit reaches the host as an
//! event once the process's output has drained, before any wait is answered.
//!
//! How a process is made lives next door: [`super::child`] runs between clone and exec,
//! [`super::stdio`] and [`super::pty`] carry its streams.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::cgroup::{self, Cgroup};
use super::child::{clone_exec_helper, clone_init, Prepared};
use super::error::{io_errno, sys, ContainerError};
use super::files::{Files, FILES_DIR};
use super::image::{ContainerRoot, Images};
use super::outgoing::Outgoing;
use super::policy::AgentPolicy;
use super::pty::{container_pts, set_window_size, Pty, NO_TTY};
use super::report::{read_report, Report};
use super::security::RootfsSecurity;
use super::stdio::{forward_output, pipe, AgentIo, ChildIo};
use crate::protocol::{
    ContainerStats, CreateContainer, Event, ExitStatus, GuestFrame, Process, Resources, SHARE_MOUNT,
};

/// How long an exit waits for output streams a leftover child keeps open.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Exit statuses of children nobody registered yet (the process exited before its pid was
/// known); bounded, because the agent's other children (services) also land here.
const MAX_EARLY_EXITS: usize = 1024;

/// A process the agent started.
#[derive(Debug)]
struct Proc {
    pid: i32,
    id: String,
    exec_id: Option<String>,
    started: AtomicBool,
    exit: Mutex<Option<ExitStatus>>,
    exited: Condvar,
    /// One receiver per output stream; each gets a message (or hangs up) when the stream closes.
    outputs: Mutex<Vec<Receiver<()>>>,
    /// Where the host's stdin bytes go (a pipe, or the pty master); `None` once closed.
    stdin: Mutex<Option<File>>,
    /// The pty master of a process on a terminal, for resizing.
    tty: Mutex<Option<File>>,
}

impl Proc {
    /// How messages name this process.
    fn name(&self) -> String {
        match &self.exec_id {
            Some(e) => format!("process \"{e}\" of container \"{}\"", self.id),
            None => format!("the process of container \"{}\"", self.id),
        }
    }
}

#[derive(Debug)]
struct Container {
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
    /// Write end of the pipe the created child waits on before it execs.
    start: Option<File>,
    /// Read end of the child's report pipe, kept until start.
    report: Option<File>,
    /// The pty index in the container's devpts the process takes as its terminal at start.
    tty_index: Option<u32>,
    /// The agent's hold on that pty's slave until the process has it: if the container is
    /// removed unstarted, closing this hangs the terminal up and ends its output reader.
    tty_slave: Option<OwnedFd>,
    /// The copies of its file mounts, removed with it.
    _files: Files,
    /// Its cgroup, removed with it.
    cgroup: Arc<Cgroup>,
    /// Its overlay root (guest-pulled image), unmounted with it.
    _root: Option<ContainerRoot>,
}

#[derive(Debug, Default)]
struct State {
    containers: HashMap<String, Container>,
    by_pid: HashMap<i32, Arc<Proc>>,
    early_exits: HashMap<i32, ExitStatus>,
}

/// All containers of this guest.
#[derive(Debug)]
pub struct Containers {
    state: Mutex<State>,
    events: SyncSender<Outgoing>,
    /// Set when containers must not run (unverified Init-Data, invalid policy).
    refusal: Option<String>,
    /// The agent policy: it decides which output the host may read.
    policy: Arc<AgentPolicy>,
    /// Why a host-shared root filesystem cannot be used (no 9p share, or a TEE guest), if so.
    share: Option<String>,
    /// The images this guest pulled.
    images: Images,
}

impl Containers {
    /// Creates the registry and starts the thread that reaps every child of PID 1.
    /// `share` says why host-shared root filesystems cannot be used, if they cannot.
    pub fn new(
        events: SyncSender<Outgoing>,
        refusal: Option<String>,
        policy: Arc<AgentPolicy>,
        share: Option<String>,
    ) -> Arc<Containers> {
        let this = Arc::new(Containers {
            state: Mutex::default(),
            events,
            refusal,
            policy,
            share,
            images: Images::default(),
        });
        let reaper = this.clone();
        std::thread::spawn(move || reaper.reap());
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps behind (no half updates).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refuse(&self) -> Result<(), ContainerError> {
        match &self.refusal {
            Some(r) => Err(ContainerError::Refused(r.clone())),
            None => Ok(()),
        }
    }

    /// Creates a container: namespaces and root filesystem ready, process waiting for start.
    pub fn create(&self, req: CreateContainer) -> Result<(), ContainerError> {
        self.refuse()?;
        if req.id.is_empty() || req.id.contains(['/', '\0']) {
            return Err(ContainerError::Invalid(format!(
                "container id {:?} is not valid: it must be non-empty, without '/' or NUL",
                req.id
            )));
        }
        if self.lock().containers.contains_key(&req.id) {
            return Err(ContainerError::Exists(format!("container \"{}\"", req.id)));
        }
        let (rootfs, root) = match (&req.rootfs, &req.image) {
            (Some(shared), None) => {
                if let Some(why) = &self.share {
                    return Err(ContainerError::Refused(format!(
                        "container {} asks for a host-shared root filesystem, but {why}",
                        req.id
                    )));
                }
                let rootfs = share_path(shared)?;
                if !rootfs.is_dir() {
                    return Err(ContainerError::Invalid(format!(
                        "container rootfs {shared} is not a directory in the share"
                    )));
                }
                (rootfs, None)
            }
            (None, Some(image)) => {
                let image = self.images.get(image)?;
                let root = ContainerRoot::mount(&req.id, &image).map_err(ContainerError::Image)?;
                (root.rootfs.clone(), Some(root))
            }
            _ => {
                return Err(ContainerError::Invalid(format!(
                    "container {}: exactly one of rootfs (host-shared) and image (guest pull) must be given",
                    req.id
                )))
            }
        };
        let files = super::files::write(Path::new(FILES_DIR), &req.id, &req.files)?;
        let prep = Prepared::new(&req.process, Some(&rootfs), req.hostname.as_deref())?
            .with_files(&files.mounts)?
            .with_rootfs_security(RootfsSecurity::new(&req)?);
        if self.lock().containers.contains_key(&req.id) {
            return Err(ContainerError::Exists(format!("container \"{}\"", req.id)));
        }
        let cgroup = Arc::new(Cgroup::create(
            Path::new(cgroup::ROOT),
            &req.id,
            &req.resources.unwrap_or_default(),
        )?);
        let prep = prep.with_cgroup(cgroup.procs_fd());
        let (start_r, start_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        // A terminal lives in the container's own devpts, which exists only once the child has
        // mounted it: the child starts on /dev/null and takes the terminal at start.
        let (io, agent_io) = if req.process.terminal {
            (ChildIo::null()?, AgentIo::default())
        } else {
            ChildIo::pipes(req.process.stdin)?
        };

        let mut state = self.lock();
        if state.containers.contains_key(&req.id) {
            return Err(ContainerError::Exists(format!("container \"{}\"", req.id)));
        }
        let pid = clone_init(&prep, &io, start_r.as_raw_fd(), report_w.as_raw_fd())?;
        // The child has its copies: the agent keeps only its own ends, so output reaches
        // end-of-file when the process closes it.
        drop(io);
        let proc = self.register(&mut state, pid, &req.id, None, agent_io);
        state.containers.insert(
            req.id.clone(),
            Container {
                init: proc.clone(),
                execs: HashMap::new(),
                start: Some(File::from(start_w)),
                report: None,
                tty_index: None,
                tty_slave: None,
                _files: files,
                cgroup,
                _root: root,
            },
        );
        drop(state);
        drop(start_r);
        drop(report_w);

        // The child reports 'R' once its root is ready, or why it failed.
        let mut report = File::from(report_r);
        match read_report(&mut report) {
            Report::Ready => {
                let tty = if req.process.terminal {
                    match self.container_terminal(&proc, req.process.stdin) {
                        Ok(tty) => Some(tty),
                        Err(e) => {
                            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                            self.lock().containers.remove(&req.id);
                            return Err(e);
                        }
                    }
                } else {
                    None
                };
                if let Some(c) = self.lock().containers.get_mut(&req.id) {
                    c.report = Some(report);
                    if let Some((index, slave)) = tty {
                        c.tty_index = Some(index);
                        c.tty_slave = Some(slave);
                    }
                }
                Ok(())
            }
            other => {
                let err = other.into_error("container setup");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                self.lock().containers.remove(&req.id);
                Err(err)
            }
        }
    }

    /// Allocates the terminal of a created container's process in its devpts and starts
    /// streaming it; returns the pty index the process opens at start, and the agent's hold on
    /// the slave.
    fn container_terminal(
        &self,
        proc: &Arc<Proc>,
        stdin: bool,
    ) -> Result<(u32, OwnedFd), ContainerError> {
        let pts = container_pts(proc.pid);
        let pty = Pty::open(&pts.join("ptmx"))?;
        let slave = pty.open_slave(&pts)?;
        let index = pty.index;
        self.attach(proc, AgentIo::terminal(pty.master, stdin)?);
        Ok((index, slave))
    }

    /// Lets a created container's process exec.
    pub fn start(&self, id: &str) -> Result<u32, ContainerError> {
        let (proc, start, report, tty_index, tty_slave) = {
            let mut state = self.lock();
            let c = state
                .containers
                .get_mut(id)
                .ok_or_else(|| ContainerError::NoContainer(id.into()))?;
            match (c.start.take(), c.report.take()) {
                (Some(s), Some(r)) => (c.init.clone(), s, r, c.tty_index, c.tty_slave.take()),
                _ => {
                    return Err(ContainerError::State {
                        id: id.into(),
                        state: "already started",
                        hint: "create a new container to run its process again",
                    })
                }
            }
        };
        proc.started.store(true, Ordering::SeqCst);
        let mut start = start;
        // `S` and the pty index to take as the terminal (NO_TTY: none), in one pipe write.
        let mut msg = [b'S', 0, 0, 0, 0];
        msg[1..].copy_from_slice(&tty_index.unwrap_or(NO_TTY).to_le_bytes());
        start.write_all(&msg).map_err(|e| ContainerError::Sys {
            step: "waking the container process".into(),
            source: io_errno(&e),
        })?;
        drop(start);
        let mut report = report;
        let started = read_report(&mut report);
        // The process holds the terminal now (or never will): the terminal hangs up when it
        // exits.
        drop(tty_slave);
        match started {
            Report::Exec => Ok(proc.pid.unsigned_abs()),
            other => Err(other.into_error("starting the container process")),
        }
    }

    fn cgroup_of(&self, id: &str) -> Result<Arc<Cgroup>, ContainerError> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.cgroup.clone())
            .ok_or_else(|| ContainerError::NoContainer(id.into()))
    }

    /// The container's figures from its cgroup.
    pub fn stats(&self, id: &str) -> Result<ContainerStats, ContainerError> {
        Ok(self.cgroup_of(id)?.stats())
    }

    /// Changes the container's limits.
    pub fn update(&self, id: &str, resources: &Resources) -> Result<(), ContainerError> {
        self.cgroup_of(id)?.apply(resources)
    }

    /// Freezes (`true`) or thaws the container.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), ContainerError> {
        self.cgroup_of(id)?.freeze(frozen)
    }

    /// Runs another process in a running container.
    pub fn exec(&self, id: &str, exec_id: &str, process: &Process) -> Result<u32, ContainerError> {
        self.refuse()?;
        let init_pid = {
            let state = self.lock();
            let c = state
                .containers
                .get(id)
                .ok_or_else(|| ContainerError::NoContainer(id.into()))?;
            if c.execs.contains_key(exec_id) {
                return Err(ContainerError::Exists(format!(
                    "process \"{exec_id}\" in container \"{id}\""
                )));
            }
            if c.start.is_some() || lock(&c.init.exit).is_some() {
                return Err(ContainerError::State {
                    id: id.into(),
                    state: "not running",
                    hint: "exec needs a started container whose process still runs",
                });
            }
            (c.init.pid, c.cgroup.clone())
        };
        let (init_pid, cgroup) = init_pid;
        let prep = Prepared::new(process, None, None)?.with_cgroup(cgroup.procs_fd());
        let mut ns = Vec::new();
        for kind in ["ipc", "uts", "pid", "mnt"] {
            let path = format!("/proc/{init_pid}/ns/{kind}");
            let f = File::open(&path).map_err(|e| ContainerError::Sys {
                step: format!("open {path}"),
                source: io_errno(&e),
            })?;
            ns.push(OwnedFd::from(f));
        }
        let ns_fds: Vec<RawFd> = ns.iter().map(|f| f.as_raw_fd()).collect();
        let (report_r, report_w) = pipe()?;
        let (io, agent_io) = if process.terminal {
            let pts = container_pts(init_pid);
            let pty = Pty::open(&pts.join("ptmx"))?;
            let slave = pty.open_slave(&pts)?;
            (
                ChildIo::terminal(slave)?,
                AgentIo::terminal(pty.master, process.stdin)?,
            )
        } else {
            ChildIo::pipes(process.stdin)?
        };
        clone_exec_helper(&prep, &io, &ns_fds, report_w.as_raw_fd())?;
        drop(report_w);
        drop(ns);
        drop(io);
        let mut report = File::from(report_r);
        let pid = match read_report(&mut report) {
            Report::Pid(pid) => pid,
            other => return Err(other.into_error("entering the container's namespaces")),
        };
        let proc = {
            let mut state = self.lock();
            let proc = self.register(&mut state, pid, id, Some(exec_id), agent_io);
            proc.started.store(true, Ordering::SeqCst);
            if let Some(c) = state.containers.get_mut(id) {
                c.execs.insert(exec_id.into(), proc.clone());
            }
            proc
        };
        match read_report(&mut report) {
            Report::Exec => Ok(proc.pid.unsigned_abs()),
            other => {
                if let Some(c) = self.lock().containers.get_mut(id) {
                    c.execs.remove(exec_id);
                }
                Err(other.into_error("starting the exec'd process"))
            }
        }
    }

    /// Registers a child: its output threads, and its exit if it already happened.
    fn register(
        &self,
        state: &mut State,
        pid: i32,
        id: &str,
        exec_id: Option<&str>,
        io: AgentIo,
    ) -> Arc<Proc> {
        let proc = Arc::new(Proc {
            pid,
            id: id.into(),
            exec_id: exec_id.map(Into::into),
            started: AtomicBool::new(false),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            outputs: Mutex::new(Vec::new()),
            stdin: Mutex::new(None),
            tty: Mutex::new(None),
        });
        self.attach(&proc, io);
        if let Some(status) = state.early_exits.remove(&pid) {
            let cgroup = state.containers.get(id).map(|c| c.cgroup.clone());
            self.finish(proc.clone(), status, cgroup);
        } else {
            state.by_pid.insert(pid, proc.clone());
        }
        proc
    }

    /// Streams a process's output to the host and keeps its stdin and terminal.
    fn attach(&self, proc: &Arc<Proc>, io: AgentIo) {
        let AgentIo {
            stdin,
            outputs,
            tty,
        } = io;
        let mut done = Vec::new();
        for (stream, file) in outputs {
            let (tx, rx) = mpsc::channel();
            done.push(rx);
            let events = self.events.clone();
            let (id, exec_id) = (proc.id.clone(), proc.exec_id.clone());
            let policy = self.policy.clone();
            let may_read = move |id: &str, exec_id: Option<&str>, len: usize| {
                policy.allows_reading(id, exec_id, len)
            };
            std::thread::spawn(move || {
                forward_output(file, stream, id, exec_id, events, tx, &may_read)
            });
        }
        lock(&proc.outputs).extend(done);
        *lock(&proc.stdin) = stdin;
        *lock(&proc.tty) = tty;
    }

    /// Writes bytes to a process's stdin (its pipe or terminal).
    pub fn write_stdin(
        &self,
        id: &str,
        exec_id: Option<&str>,
        data: &[u8],
    ) -> Result<(), ContainerError> {
        let proc = self.find(id, exec_id)?;
        // A clone, so a write that blocks on a full pipe does not hold the lock a close needs.
        let mut stdin = match lock(&proc.stdin).as_ref() {
            Some(f) => f.try_clone().map_err(|e| ContainerError::Sys {
                step: format!("dup of the stdin of {}", proc.name()),
                source: io_errno(&e),
            })?,
            None => {
                return Err(ContainerError::Invalid(format!(
                    "{} has no open stdin: it was started without stdin, or its stdin was closed",
                    proc.name()
                )))
            }
        };
        stdin.write_all(data).map_err(|e| ContainerError::Sys {
            step: format!("writing to the stdin of {}", proc.name()),
            source: io_errno(&e),
        })
    }

    /// Closes a process's stdin: a pipe reads end-of-file; a terminal takes no more writes.
    /// Closing twice is not an error.
    pub fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), ContainerError> {
        let proc = self.find(id, exec_id)?;
        drop(lock(&proc.stdin).take());
        Ok(())
    }

    /// Sets the window size of a process's terminal.
    pub fn resize_pty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        width: u16,
        height: u16,
    ) -> Result<(), ContainerError> {
        let proc = self.find(id, exec_id)?;
        let tty = lock(&proc.tty);
        let Some(master) = tty.as_ref() else {
            return Err(ContainerError::Invalid(format!(
                "{} has no terminal to resize; start it with terminal: true",
                proc.name()
            )));
        };
        set_window_size(master, width, height)
            .map_err(sys(format!("resizing the terminal of {}", proc.name())))
    }

    /// Waits for a process to exit.
    pub fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<ExitStatus, ContainerError> {
        let proc = self.find(id, exec_id)?;
        let mut exit = lock(&proc.exit);
        loop {
            if let Some(status) = *exit {
                return Ok(status);
            }
            exit = proc.exited.wait(exit).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sends a signal to a process.
    pub fn signal(
        &self,
        id: &str,
        exec_id: Option<&str>,
        signal: i32,
    ) -> Result<(), ContainerError> {
        let proc = self.find(id, exec_id)?;
        let sig = Signal::try_from(signal)
            .map_err(|_| ContainerError::Invalid(format!("{signal} is not a signal number")))?;
        if lock(&proc.exit).is_some() {
            return Err(ContainerError::State {
                id: id.into(),
                state: "exited",
                hint: "there is no process left to signal",
            });
        }
        kill(Pid::from_raw(proc.pid), sig).map_err(sys(format!("kill({}, {sig})", proc.pid)))
    }

    /// Forgets a container whose process has exited (or never started).
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let mut state = self.lock();
        let c = state
            .containers
            .get(id)
            .ok_or_else(|| ContainerError::NoContainer(id.into()))?;
        let running = lock(&c.init.exit).is_none();
        if running && c.start.is_none() {
            return Err(ContainerError::State {
                id: id.into(),
                state: "running",
                hint: "signal it and wait for it to exit before removing it",
            });
        }
        if running {
            // Created, never started: its process waits for a start that will not come.
            let _ = kill(Pid::from_raw(c.init.pid), Signal::SIGKILL);
        }
        state.containers.remove(id);
        Ok(())
    }

    fn find(&self, id: &str, exec_id: Option<&str>) -> Result<Arc<Proc>, ContainerError> {
        let state = self.lock();
        let c = state
            .containers
            .get(id)
            .ok_or_else(|| ContainerError::NoContainer(id.into()))?;
        match exec_id {
            None => Ok(c.init.clone()),
            Some(e) => c
                .execs
                .get(e)
                .cloned()
                .ok_or_else(|| ContainerError::NoExec {
                    id: id.into(),
                    exec: e.into(),
                }),
        }
    }

    /// Reaps every child of PID 1 (containers, exec'd processes, services, orphans).
    fn reap(&self) {
        loop {
            let (pid, status) = match waitpid(None::<Pid>, None) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus { code, signal: None }),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    ExitStatus {
                        code: 128 + sig as i32,
                        signal: Some(sig as i32),
                    },
                ),
                Ok(_) => continue,
                Err(nix::Error::ECHILD) => {
                    // No children yet: nothing can exit until one is made.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => continue,
            };
            let mut state = self.lock();
            match state.by_pid.remove(&pid.as_raw()) {
                Some(proc) => {
                    let cgroup = state.containers.get(&proc.id).map(|c| c.cgroup.clone());
                    drop(state);
                    self.finish(proc, status, cgroup);
                }
                None => {
                    if state.early_exits.len() >= MAX_EARLY_EXITS {
                        state.early_exits.clear();
                    }
                    state.early_exits.insert(pid.as_raw(), status);
                }
            }
        }
    }

    /// Records an exit once the output has drained, then tells the host; a process the OOM
    /// killer took is announced as such first.
    fn finish(&self, proc: Arc<Proc>, status: ExitStatus, cgroup: Option<Arc<Cgroup>>) {
        let events = self.events.clone();
        std::thread::spawn(move || {
            let killed = status.signal == Some(libc::SIGKILL);
            if let Some(cgroup) = cgroup.filter(|c| killed && c.new_oom_kills()) {
                drop(cgroup);
                let _ = events.send(
                    GuestFrame::Event {
                        event: Event::Oom {
                            id: proc.id.clone(),
                        },
                    }
                    .into(),
                );
            }
            let outputs = std::mem::take(&mut *lock(&proc.outputs));
            let end = Instant::now() + OUTPUT_GRACE;
            for rx in outputs {
                let _ = rx.recv_timeout(end.saturating_duration_since(Instant::now()));
            }
            // The event goes out before any wait is answered, so a host sees output, exit event,
            // then the wait's answer.
            if proc.started.load(Ordering::SeqCst) {
                let _ = events.send(
                    GuestFrame::Event {
                        event: Event::Exit {
                            id: proc.id.clone(),
                            exec_id: proc.exec_id.clone(),
                            status,
                        },
                    }
                    .into(),
                );
            }
            *lock(&proc.exit) = Some(status);
            proc.exited.notify_all();
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `rootfs` relative to the share, refusing anything that climbs out of it.
fn share_path(rootfs: &str) -> Result<PathBuf, ContainerError> {
    let rel = Path::new(rootfs);
    let ok = !rootfs.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(ContainerError::Invalid(format!(
            "container rootfs {rootfs:?} must be a relative path inside the share, without '..'"
        )));
    }
    Ok(Path::new(SHARE_MOUNT).join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_paths_stay_in_the_share() {
        assert_eq!(
            share_path("ctr1/rootfs").unwrap(),
            Path::new("/run/coffer/share/ctr1/rootfs")
        );
        for bad in ["", "/etc", "../x", "a/../../b"] {
            assert!(
                matches!(share_path(bad), Err(ContainerError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
