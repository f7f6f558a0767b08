//! Containers inside the guest: a process in its own mount, PID, UTS and IPC namespaces whose
//! root is a directory of the 9p share, its output streamed to the host as events.
//!
//! The agent is multi-threaded, so a child made by `clone` may only make raw system calls until
//! it execs (another thread may have held the allocator's lock at the moment of the clone).
//! Everything the child needs (paths, argv, envp as C strings, file descriptors) is prepared
//! before the clone; the child reports a failed step through a close-on-exec pipe as
//! `b'E', step, errno`.
//!
//! A process started with `terminal` runs on a pty of its container's own devpts instance
//! (mounted on the container's `/dev/pts`, as runc does), so `tty` inside shows `/dev/pts/N`
//! and no container sees another's terminals. The agent opens the master through
//! `/proc/<container pid>/root/dev/pts/ptmx`; the process gets the slave as its controlling
//! terminal (`setsid` + `TIOCSCTTY`) and as its stdin, stdout and stderr. A process started
//! with `stdin` and no terminal reads a pipe the agent writes into.
//!
//! The initramfs root cannot be `pivot_root`ed away from, so the child bind-mounts its rootfs,
//! moves it over `/` and `chroot`s into it (what runc does with `--no-pivot`) in its private
//! mount namespace.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::server::Outgoing;
use crate::protocol::{
    CreateContainer, Event, ExitStatus, GuestFrame, Process, Stream, SHARE_MOUNT,
};

/// `PATH` used to find `args[0]` when the process's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long an exit waits for output streams a leftover child keeps open.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Exit statuses of children nobody registered yet (the process exited before its pid was
/// known); bounded, because the agent's other children (services) also land here.
const MAX_EARLY_EXITS: usize = 1024;

/// Errors of container operations; the message goes to the host as is.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The container id is unknown.
    #[error("no container \"{0}\" in this guest")]
    NoContainer(String),
    /// The exec id is unknown.
    #[error("no process \"{exec}\" in container \"{id}\"")]
    NoExec {
        /// Container id.
        id: String,
        /// Exec id.
        exec: String,
    },
    /// The id is taken.
    #[error("{0} already exists in this guest")]
    Exists(String),
    /// The request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The container is in the wrong state for this request.
    #[error("container \"{id}\" is {state}; {hint}")]
    State {
        /// Container id.
        id: String,
        /// Its state.
        state: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// A system call failed in the agent or in the child before exec.
    #[error("{step} failed: {source}")]
    Sys {
        /// What was being done.
        step: String,
        /// The error.
        source: nix::Error,
    },
}

fn sys(step: impl Into<String>) -> impl FnOnce(nix::Error) -> ContainerError {
    let step = step.into();
    move |source| ContainerError::Sys { step, source }
}

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
    /// Set when containers must not run (unverified Init-Data, no share).
    refusal: Option<String>,
}

impl Containers {
    /// Creates the registry and starts the thread that reaps every child of PID 1.
    pub fn new(events: SyncSender<Outgoing>, refusal: Option<String>) -> Arc<Containers> {
        let this = Arc::new(Containers {
            state: Mutex::default(),
            events,
            refusal,
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
            Some(r) => Err(ContainerError::Invalid(format!(
                "this guest refuses to run containers: {r}"
            ))),
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
        let rootfs = share_path(&req.rootfs)?;
        if !rootfs.is_dir() {
            return Err(ContainerError::Invalid(format!(
                "container rootfs {} is not a directory in the share",
                req.rootfs
            )));
        }
        let prep = Prepared::new(&req.process, Some(&rootfs), req.hostname.as_deref())?;
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
        let flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::SIGCHLD;
        // SAFETY: clone without CLONE_VM and without a new stack behaves like fork: the child
        // runs on a copy of this stack. It only makes raw system calls on data prepared above
        // and ends in execve or _exit.
        let pid = unsafe { raw_clone(flags as libc::c_ulong) };
        if pid == 0 {
            // SAFETY: in the child; see above.
            unsafe { container_child(&prep, &io, start_r.as_raw_fd(), report_w.as_raw_fd()) }
        }
        if pid < 0 {
            return Err(ContainerError::Sys {
                step: "clone of the container process".into(),
                source: nix::Error::last(),
            });
        }
        let pid = pid as i32;
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
            Report::Exec => Ok(proc.pid as u32),
            other => Err(other.into_error("starting the container process")),
        }
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
            c.init.pid
        };
        let prep = Prepared::new(process, None, None)?;
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
        // SAFETY: as in `create`: fork semantics, raw system calls only in the child.
        let helper = unsafe { raw_clone(libc::SIGCHLD as libc::c_ulong) };
        if helper == 0 {
            // SAFETY: in the child; see above.
            unsafe { exec_helper(&prep, &io, &ns_fds, report_w.as_raw_fd()) }
        }
        if helper < 0 {
            return Err(ContainerError::Sys {
                step: "clone of the exec helper".into(),
                source: nix::Error::last(),
            });
        }
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
            Report::Exec => Ok(proc.pid as u32),
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
            self.finish(proc.clone(), status);
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
            std::thread::spawn(move || forward_output(file, stream, id, exec_id, events, tx));
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
                    drop(state);
                    self.finish(proc, status);
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

    /// Records an exit once the output has drained, then tells the host.
    fn finish(&self, proc: Arc<Proc>, status: ExitStatus) {
        let events = self.events.clone();
        std::thread::spawn(move || {
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

/// Streams one pipe to the host as output events; an empty event marks its end.
fn forward_output(
    mut pipe: File,
    stream: Stream,
    id: String,
    exec_id: Option<String>,
    events: SyncSender<Outgoing>,
    done: mpsc::Sender<()>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let event = Event::Output {
            id: id.clone(),
            exec_id: exec_id.clone(),
            stream,
            data: buf[..n].to_vec(),
        };
        // The writer blocks while no host is connected; so does this, and so does the process
        // writing into the pipe: output is held back, not dropped.
        let _ = events.send(GuestFrame::Event { event }.into());
        if n == 0 {
            let _ = done.send(());
            return;
        }
    }
}

/// `rootfs` relative to the share, refusing anything that climbs out of it.
fn share_path(rootfs: &str) -> Result<std::path::PathBuf, ContainerError> {
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

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))
}

fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The pty index a container's process is told at start when it has no terminal.
const NO_TTY: u32 = u32::MAX;

/// Options of a container's devpts: its own instance (runc's), group `tty` (5).
const DEVPTS_OPTIONS: &[u8] = b"newinstance,ptmxmode=0666,mode=0620,gid=5\0";

/// The child's ends of its standard streams: what it makes its 0, 1 and 2.
#[derive(Debug)]
struct ChildIo {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// The streams are a terminal's slave: the child makes it its controlling terminal.
    controlling_tty: bool,
}

/// The agent's ends of a process's standard streams.
#[derive(Debug, Default)]
struct AgentIo {
    /// Where stdin bytes are written, if the process has stdin.
    stdin: Option<File>,
    /// Output to stream to the host.
    outputs: Vec<(Stream, File)>,
    /// The pty master, if the process runs on a terminal.
    tty: Option<File>,
}

fn dev_null() -> Result<OwnedFd, ContainerError> {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| ContainerError::Sys {
            step: "open /dev/null".into(),
            source: io_errno(&e),
        })
}

fn dup(fd: &impl std::os::fd::AsFd, what: &str) -> Result<OwnedFd, ContainerError> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| ContainerError::Sys {
            step: format!("dup of {what}"),
            source: io_errno(&e),
        })
}

impl ChildIo {
    /// Pipes for stdout and stderr; a pipe for stdin when `stdin`, else /dev/null (the
    /// process reads end-of-file).
    fn pipes(stdin: bool) -> Result<(ChildIo, AgentIo), ContainerError> {
        let (child_stdin, agent_stdin) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(File::from(w)))
        } else {
            (dev_null()?, None)
        };
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        Ok((
            ChildIo {
                stdin: child_stdin,
                stdout: stdout_w,
                stderr: stderr_w,
                controlling_tty: false,
            },
            AgentIo {
                stdin: agent_stdin,
                outputs: vec![
                    (Stream::Stdout, File::from(stdout_r)),
                    (Stream::Stderr, File::from(stderr_r)),
                ],
                tty: None,
            },
        ))
    }

    /// /dev/null for all three.
    fn null() -> Result<ChildIo, ContainerError> {
        Ok(ChildIo {
            stdin: dev_null()?,
            stdout: dev_null()?,
            stderr: dev_null()?,
            controlling_tty: false,
        })
    }

    /// A terminal's slave for all three, made the controlling terminal.
    fn terminal(slave: OwnedFd) -> Result<ChildIo, ContainerError> {
        Ok(ChildIo {
            stdout: dup(&slave, "the terminal")?,
            stderr: dup(&slave, "the terminal")?,
            stdin: slave,
            controlling_tty: true,
        })
    }
}

impl AgentIo {
    /// The master of a terminal: read as stdout (a terminal has one output stream), written
    /// to for stdin when `stdin`.
    fn terminal(master: OwnedFd, stdin: bool) -> Result<AgentIo, ContainerError> {
        let output = File::from(dup(&master, "the terminal master")?);
        let stdin = if stdin {
            Some(File::from(dup(&master, "the terminal master")?))
        } else {
            None
        };
        Ok(AgentIo {
            stdin,
            outputs: vec![(Stream::Stdout, output)],
            tty: Some(File::from(master)),
        })
    }
}

/// The devpts of the container whose first process is `pid`, as the agent reaches it.
fn container_pts(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root/dev/pts"))
}

/// A pseudo-terminal's master and its index in its devpts instance.
#[derive(Debug)]
struct Pty {
    master: OwnedFd,
    index: u32,
}

impl Pty {
    /// Allocates a pty through the `ptmx` node of a devpts instance and unlocks its slave.
    fn open(ptmx: &Path) -> Result<Pty, ContainerError> {
        let master: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(ptmx)
            .map_err(|e| ContainerError::Sys {
                step: format!(
                    "allocating a terminal through {} (is devpts mounted in the container?)",
                    ptmx.display()
                ),
                source: io_errno(&e),
            })?
            .into();
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int from a valid pointer; the fd is a ptmx master.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
            return Err(sys("unlocking the terminal (TIOCSPTLCK)")(
                nix::Error::last(),
            ));
        }
        let mut index: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes an unsigned int through a valid pointer.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut index) } < 0 {
            return Err(sys("reading the terminal's number (TIOCGPTN)")(
                nix::Error::last(),
            ));
        }
        Ok(Pty { master, index })
    }

    /// Opens the slave in `pts` (the devpts the master came from), without making it the
    /// agent's controlling terminal.
    fn open_slave(&self, pts: &Path) -> Result<OwnedFd, ContainerError> {
        let path = pts.join(self.index.to_string());
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| ContainerError::Sys {
                step: format!("opening the terminal {}", path.display()),
                source: io_errno(&e),
            })
    }
}

/// `TIOCSWINSZ`: the terminal's size in columns and rows.
fn set_window_size(master: &File, width: u16, height: u16) -> Result<(), nix::Error> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// `/dev/pts/<index>` as a NUL-terminated path, without allocating (the child builds it).
fn pts_path(index: u32) -> [u8; 24] {
    let mut out = [0u8; 24];
    let prefix = b"/dev/pts/";
    out[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let mut n = index;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[prefix.len() + i] = digits[len - 1 - i];
    }
    out
}

/// What a child needs, as C data made before the clone.
#[derive(Debug)]
struct Prepared {
    rootfs: Option<CString>,
    hostname: Option<CString>,
    cwd: CString,
    /// Candidates for `args[0]`, tried in order until one is not "not found".
    programs: Vec<CString>,
    _args: Vec<CString>,
    argv: Vec<*const c_char>,
    _env: Vec<CString>,
    envp: Vec<*const c_char>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// The process runs on a terminal (a container's child then needs its devpts).
    terminal: bool,
}

fn cstring(what: &str, s: &str) -> Result<CString, ContainerError> {
    CString::new(s)
        .map_err(|_| ContainerError::Invalid(format!("{what} {s:?} contains a NUL byte")))
}

impl Prepared {
    fn new(
        p: &Process,
        rootfs: Option<&Path>,
        hostname: Option<&str>,
    ) -> Result<Prepared, ContainerError> {
        let Some(arg0) = p.args.first() else {
            return Err(ContainerError::Invalid(
                "process args are empty; give at least the program to run".into(),
            ));
        };
        let args = p
            .args
            .iter()
            .map(|a| cstring("argument", a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = p
            .env
            .iter()
            .map(|e| cstring("environment entry", e))
            .collect::<Result<Vec<_>, _>>()?;
        let programs = if arg0.contains('/') {
            vec![cstring("program", arg0)?]
        } else {
            let path = p
                .env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or(DEFAULT_PATH);
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstring("program", &format!("{d}/{arg0}")))
                .collect::<Result<Vec<_>, _>>()?
        };
        let argv = args
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp = env
            .iter()
            .map(|e| e.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let cwd = if p.cwd.is_empty() { "/" } else { &p.cwd };
        Ok(Prepared {
            rootfs: rootfs
                .map(|r| cstring("rootfs", &r.to_string_lossy()))
                .transpose()?,
            hostname: hostname.map(|h| cstring("hostname", h)).transpose()?,
            cwd: cstring("cwd", cwd)?,
            programs,
            _args: args,
            argv,
            _env: env,
            envp,
            uid: p.uid,
            gid: p.gid,
            groups: p.additional_gids.clone(),
            terminal: p.terminal,
        })
    }
}

/// Steps a child can fail at, in the order it runs them; the index travels in the report.
const STEPS: [&str; 18] = [
    "dup2 of the standard streams",
    "making the mounts private",
    "bind-mounting the rootfs",
    "chdir into the rootfs",
    "moving the rootfs over /",
    "chroot into the rootfs",
    "mounting /proc",
    "mounting /dev",
    "sethostname",
    "waiting for start",
    "setgroups",
    "setgid",
    "setuid",
    "chdir to the process's cwd",
    "execve",
    "setns",
    "mounting /dev/pts",
    "taking the terminal (setsid, TIOCSCTTY)",
];

enum Report {
    Ready,
    Exec,
    Pid(i32),
    Failed { step: u8, errno: i32 },
    Garbled,
}

impl Report {
    fn into_error(self, what: &str) -> ContainerError {
        match self {
            Report::Failed { step, errno } => ContainerError::Sys {
                step: format!(
                    "{what}: {}",
                    STEPS
                        .get(step as usize)
                        .copied()
                        .unwrap_or("an unknown step")
                ),
                source: nix::Error::from_raw(errno),
            },
            Report::Ready | Report::Exec | Report::Pid(_) | Report::Garbled => {
                ContainerError::Invalid(format!("{what}: the child process ended without a report"))
            }
        }
    }
}

/// Reads the next report: `R` (ready), `P` + pid, `E` + step + errno, or end of file (the
/// pipe closed on a successful exec).
fn read_report(pipe: &mut File) -> Report {
    let mut tag = [0u8; 1];
    match pipe.read(&mut tag) {
        Ok(0) => return Report::Exec,
        Ok(_) => {}
        Err(_) => return Report::Garbled,
    }
    match tag[0] {
        b'R' => Report::Ready,
        b'P' => {
            let mut pid = [0u8; 4];
            match pipe.read_exact(&mut pid) {
                Ok(()) => Report::Pid(i32::from_le_bytes(pid)),
                Err(_) => Report::Garbled,
            }
        }
        b'E' => {
            let mut rest = [0u8; 5];
            match pipe.read_exact(&mut rest) {
                Ok(()) => Report::Failed {
                    step: rest[0],
                    errno: i32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]),
                },
                Err(_) => Report::Garbled,
            }
        }
        _ => Report::Garbled,
    }
}

/// `clone(2)` with fork semantics (no new stack): returns 0 in the child.
///
/// # Safety
/// The caller's child must only make async-signal-safe calls until execve or _exit.
unsafe fn raw_clone(flags: libc::c_ulong) -> libc::c_long {
    // SAFETY: the x86_64 argument order is flags, stack, parent_tid, child_tid, tls; a null
    // stack means "this stack, copied".
    unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) }
}

/// Reports a failed step and ends the child.
///
/// # Safety
/// Child-only: raw system calls.
unsafe fn fail(report: RawFd, step: u8) -> ! {
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    let mut msg = [0u8; 6];
    msg[0] = b'E';
    msg[1] = step;
    msg[2..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writes a stack buffer to a pipe, then ends the process without running any
    // destructor or atexit handler of the parent's copy.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Points 0, 1, 2 at the child's streams.
///
/// # Safety
/// Child-only.
unsafe fn setup_stdio(io: &ChildIo, report: RawFd) {
    if io.controlling_tty {
        // SAFETY: child-only; a new session can take a terminal.
        unsafe { new_session(report) }
    }
    for (from, to) in [
        (io.stdin.as_raw_fd(), 0),
        (io.stdout.as_raw_fd(), 1),
        (io.stderr.as_raw_fd(), 2),
    ] {
        // SAFETY: plain dup2 on descriptors this process owns.
        if unsafe { libc::dup2(from, to) } < 0 {
            // SAFETY: child-only.
            unsafe { fail(report, 0) }
        }
    }
    if io.controlling_tty {
        // SAFETY: child-only; fd 0 is the terminal's slave.
        unsafe { take_terminal(0, report) }
    }
}

/// Leaves the agent's session, so the process can have a controlling terminal of its own.
///
/// # Safety
/// Child-only.
unsafe fn new_session(report: RawFd) {
    // SAFETY: setsid has no memory effects.
    if unsafe { libc::setsid() } < 0 {
        // SAFETY: child-only.
        unsafe { fail(report, 17) }
    }
}

/// Makes the terminal open on `fd` the controlling terminal of the session just made.
///
/// # Safety
/// Child-only, after [`new_session`].
unsafe fn take_terminal(fd: RawFd, report: RawFd) {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal it from another session).
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
        // SAFETY: child-only.
        unsafe { fail(report, 17) }
    }
}

/// Drops privileges, enters the cwd and execs.
///
/// # Safety
/// Child-only.
unsafe fn become_process(prep: &Prepared, report: RawFd) -> ! {
    // SAFETY: raw system calls on data owned by `prep`. The set*id calls go straight to the
    // kernel: glibc's wrappers would signal every thread of the parent (its thread list is in
    // the copied memory) and wait forever for threads this process does not have.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, prep.groups.len(), prep.groups.as_ptr()) < 0 {
            fail(report, 10)
        }
        if libc::syscall(libc::SYS_setgid, prep.gid) < 0 {
            fail(report, 11)
        }
        if libc::syscall(libc::SYS_setuid, prep.uid) < 0 {
            fail(report, 12)
        }
        if libc::chdir(prep.cwd.as_ptr()) < 0 {
            fail(report, 13)
        }
        let mut last = libc::ENOENT;
        for program in &prep.programs {
            libc::execve(program.as_ptr(), prep.argv.as_ptr(), prep.envp.as_ptr());
            let e = *libc::__errno_location();
            // Keep looking along PATH only while the program is not there.
            if e != libc::ENOENT && e != libc::ENOTDIR {
                last = e;
                break;
            }
        }
        *libc::__errno_location() = last;
        fail(report, 14)
    }
}

/// The container's first process: new namespaces are in place (clone flags); make the rootfs
/// its root, wait for start, exec.
///
/// # Safety
/// Child-only.
unsafe fn container_child(prep: &Prepared, io: &ChildIo, start: RawFd, report: RawFd) -> ! {
    let c = |s: &'static [u8]| s.as_ptr().cast::<c_char>();
    let none = std::ptr::null::<c_char>();
    // SAFETY: raw system calls on NUL-terminated literals and data owned by `prep`.
    unsafe {
        setup_stdio(io, report);
        if libc::mount(
            none,
            c(b"/\0"),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) < 0
        {
            fail(report, 1)
        }
        let Some(rootfs) = &prep.rootfs else {
            fail(report, 2)
        };
        if libc::mount(
            rootfs.as_ptr(),
            rootfs.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) < 0
        {
            fail(report, 2)
        }
        if libc::chdir(rootfs.as_ptr()) < 0 {
            fail(report, 3)
        }
        if libc::mount(c(b".\0"), c(b"/\0"), none, libc::MS_MOVE, std::ptr::null()) < 0 {
            fail(report, 4)
        }
        if libc::chroot(c(b".\0")) < 0 || libc::chdir(c(b"/\0")) < 0 {
            fail(report, 5)
        }
        libc::mkdir(c(b"/proc\0"), 0o555);
        let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            c(b"proc\0"),
            c(b"/proc\0"),
            c(b"proc\0"),
            nodev,
            std::ptr::null(),
        ) < 0
        {
            fail(report, 6)
        }
        // A small /dev with the usual nodes; never the guest's devtmpfs (it would hand the
        // container every device of the VM).
        libc::mkdir(c(b"/dev\0"), 0o755);
        if libc::mount(
            c(b"tmpfs\0"),
            c(b"/dev\0"),
            c(b"tmpfs\0"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c(b"mode=0755,size=64k\0").cast(),
        ) < 0
        {
            fail(report, 7)
        }
        let old = libc::umask(0);
        for (path, minor) in [
            (c(b"/dev/null\0"), 3),
            (c(b"/dev/zero\0"), 5),
            (c(b"/dev/full\0"), 7),
            (c(b"/dev/random\0"), 8),
            (c(b"/dev/urandom\0"), 9),
        ] {
            if libc::mknod(path, libc::S_IFCHR | 0o666, libc::makedev(1, minor)) < 0 {
                fail(report, 7)
            }
        }
        libc::umask(old);
        // The container's own devpts instance, for terminals; only a process that needs one
        // fails without it.
        libc::mkdir(c(b"/dev/pts\0"), 0o755);
        let devpts = libc::mount(
            c(b"devpts\0"),
            c(b"/dev/pts\0"),
            c(b"devpts\0"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            DEVPTS_OPTIONS.as_ptr().cast(),
        );
        if devpts < 0 && prep.terminal {
            fail(report, 16)
        }
        if devpts == 0 {
            libc::symlink(c(b"pts/ptmx\0"), c(b"/dev/ptmx\0"));
        }
        if let Some(h) = &prep.hostname {
            if libc::sethostname(h.as_ptr(), h.as_bytes().len()) < 0 {
                fail(report, 8)
            }
        }
        if libc::write(report, c(b"R\0").cast(), 1) != 1 {
            libc::_exit(127)
        }
        let mut msg = [0u8; 5];
        if libc::read(start, msg.as_mut_ptr().cast(), msg.len()) != msg.len() as isize {
            // The agent dropped the container before starting it.
            libc::_exit(127)
        }
        let tty = u32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
        if tty != NO_TTY {
            // The pty the agent allocated in this container's devpts while it waited.
            let path = pts_path(tty);
            new_session(report);
            let fd = libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_NOCTTY);
            if fd < 0 {
                fail(report, 17)
            }
            take_terminal(fd, report);
            for to in 0..3 {
                if libc::dup2(fd, to) < 0 {
                    fail(report, 0)
                }
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
        become_process(prep, report)
    }
}

/// Enters a running container's namespaces, then makes the process that execs a child of the
/// agent (CLONE_PARENT), reports its pid and exits; the agent reaps the process directly.
///
/// # Safety
/// Child-only.
unsafe fn exec_helper(prep: &Prepared, io: &ChildIo, ns: &[RawFd], report: RawFd) -> ! {
    // SAFETY: raw system calls on descriptors and data prepared by the parent.
    unsafe {
        for &fd in ns {
            if libc::setns(fd, 0) < 0 {
                fail(report, 15)
            }
        }
        let pid = raw_clone((libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong);
        if pid == 0 {
            setup_stdio(io, report);
            become_process(prep, report)
        }
        if pid < 0 {
            fail(report, 15)
        }
        let mut msg = [0u8; 5];
        msg[0] = b'P';
        msg[1..].copy_from_slice(&(pid as i32).to_le_bytes());
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(0)
    }
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

    #[test]
    fn programs_are_looked_up_along_path() {
        let p = Process {
            args: vec!["sh".into(), "-c".into(), "exit 3".into()],
            env: vec!["PATH=/bin:/usr/bin".into()],
            ..Default::default()
        };
        let prep = Prepared::new(&p, None, None).unwrap();
        let progs: Vec<_> = prep.programs.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(progs, ["/bin/sh", "/usr/bin/sh"]);
        assert_eq!(prep.argv.len(), 4);
        assert!(prep.argv[3].is_null());
        assert_eq!(prep.cwd.to_str().unwrap(), "/");

        let abs = Process {
            args: vec!["/bin/busybox".into()],
            ..Default::default()
        };
        let prep = Prepared::new(&abs, None, None).unwrap();
        assert_eq!(prep.programs.len(), 1);
        assert!(matches!(
            Prepared::new(&Process::default(), None, None),
            Err(ContainerError::Invalid(m)) if m.starts_with("process args are empty")
        ));
        let nul = Process {
            args: vec!["a\0b".into()],
            ..Default::default()
        };
        assert!(Prepared::new(&nul, None, None).is_err());
    }

    #[test]
    fn pts_paths_are_built_without_allocating() {
        let text = |i| {
            let p = pts_path(i);
            let end = p.iter().position(|&b| b == 0).unwrap();
            String::from_utf8(p[..end].to_vec()).unwrap()
        };
        assert_eq!(text(0), "/dev/pts/0");
        assert_eq!(text(17), "/dev/pts/17");
        assert_eq!(text(NO_TTY - 1), "/dev/pts/4294967294");
        assert_eq!(pts_path(NO_TTY - 1)[23], 0);
    }

    #[test]
    fn stdin_pipe_carries_bytes_then_end_of_file() {
        let (child, agent) = ChildIo::pipes(true).unwrap();
        let mut w = agent.stdin.unwrap();
        w.write_all(b"got this\n").unwrap();
        drop(w);
        let mut r = File::from(child.stdin);
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text, "got this\n");
        assert!(!child.controlling_tty);
        let streams: Vec<_> = agent.outputs.iter().map(|(s, _)| *s).collect();
        assert_eq!(streams, [Stream::Stdout, Stream::Stderr]);

        // Without stdin the process reads /dev/null, and the agent has nothing to write to.
        let (child, agent) = ChildIo::pipes(false).unwrap();
        assert!(agent.stdin.is_none());
        let mut buf = Vec::new();
        File::from(child.stdin).read_to_end(&mut buf).unwrap();
        assert!(buf.is_empty());
    }

    /// The pty of the machine running the tests stands in for a container's devpts.
    fn host_pty() -> Option<Pty> {
        match Pty::open(Path::new("/dev/ptmx")) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("SKIP: no pty on this machine: {e}");
                None
            }
        }
    }

    #[test]
    fn pty_carries_both_ways_and_resizes() {
        let Some(pty) = host_pty() else { return };
        let slave = File::from(pty.open_slave(Path::new("/dev/pts")).unwrap());
        let agent = AgentIo::terminal(pty.master, true).unwrap();
        assert_eq!(agent.outputs.len(), 1);
        assert_eq!(agent.outputs[0].0, Stream::Stdout);
        // Typed into the master, read by the process as a line (canonical mode).
        agent.stdin.as_ref().unwrap().write_all(b"hello\n").unwrap();
        let mut buf = [0u8; 64];
        let n = (&slave).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello\n");
        // Written by the process, read as its output (with the terminal's CR before LF).
        (&slave).write_all(b"out\n").unwrap();
        let mut out = &agent.outputs[0].1;
        let mut got = Vec::new();
        while !got.ends_with(b"out\r\n") {
            let n = out.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        // The echo of the typed line comes first.
        assert_eq!(got, b"hello\r\nout\r\n");

        set_window_size(agent.tty.as_ref().unwrap(), 132, 43).unwrap();
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) },
            0
        );
        assert_eq!((size.ws_col, size.ws_row), (132, 43));
    }

    #[test]
    fn a_child_on_a_terminal_has_it_as_controlling_tty() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root (the child sets its groups)");
            return;
        }
        let Some(pty) = host_pty() else { return };
        let slave = pty.open_slave(Path::new("/dev/pts")).unwrap();
        let index = pty.index;
        let agent = AgentIo::terminal(pty.master, true).unwrap();
        let io = ChildIo::terminal(slave).unwrap();
        let p = Process {
            // `tty` prints the terminal on stdin, or fails with "not a tty".
            args: vec!["sh".into(), "-c".into(), "tty; read x; echo got $x".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            ..Default::default()
        };
        let prep = Prepared::new(&p, None, None).unwrap();
        let (report_r, report_w) = pipe().unwrap();
        // SAFETY: as in `exec`: fork semantics, raw system calls only in the child.
        let pid = unsafe { raw_clone(libc::SIGCHLD as libc::c_ulong) };
        if pid == 0 {
            // SAFETY: in the child.
            unsafe {
                setup_stdio(&io, report_w.as_raw_fd());
                become_process(&prep, report_w.as_raw_fd())
            }
        }
        assert!(pid > 0);
        drop(io);
        drop(report_w);
        assert!(matches!(
            read_report(&mut File::from(report_r)),
            Report::Exec
        ));
        // Its own session, with the pty as controlling terminal (`/proc/PID/stat`: state,
        // ppid, pgrp, session, tty_nr after the command name).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        assert_eq!(fields[3], pid.to_string(), "session: {stat}");
        let slave = std::fs::metadata(format!("/dev/pts/{index}")).unwrap();
        let rdev = std::os::unix::fs::MetadataExt::rdev(&slave);
        let (major, minor) = (u64::from(libc::major(rdev)), u64::from(libc::minor(rdev)));
        let tty_nr = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        assert_eq!(fields[4], tty_nr.to_string(), "tty_nr: {stat}");
        agent.stdin.as_ref().unwrap().write_all(b"typed\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        // Read until the slave's last holder exits (EIO).
        while let Ok(n) = (&agent.outputs[0].1).read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let status = waitpid(Pid::from_raw(pid as i32), None).unwrap();
        assert_eq!(status, WaitStatus::Exited(Pid::from_raw(pid as i32), 0));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(&format!("/dev/pts/{index}\r\n")), "{text:?}");
        assert!(text.ends_with("got typed\r\n"), "{text:?}");
    }

    #[test]
    fn failure_reports_name_the_step() {
        let err = Report::Failed {
            step: 14,
            errno: libc::ENOENT,
        }
        .into_error("starting the container process");
        assert_eq!(
            err.to_string(),
            "starting the container process: execve failed: ENOENT: No such file or directory"
        );
    }
}
