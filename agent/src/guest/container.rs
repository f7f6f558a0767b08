//! Containers inside the guest: a process in its own mount, PID, UTS and IPC namespaces whose
//! root is a directory of the 9p share, its output streamed to the host as events.
//!
//! The agent is multi-threaded, so a child made by `clone` may only make raw system calls until
//! it execs (another thread may have held the allocator's lock at the moment of the clone).
//! Everything the child needs (paths, argv, envp as C strings, file descriptors) is prepared
//! before the clone; the child reports a failed step through a close-on-exec pipe as
//! `b'E', step, errno`.
//!
//! The initramfs root cannot be `pivot_root`ed away from, so the child bind-mounts its rootfs,
//! moves it over `/` and `chroot`s into it (what runc does with `--no-pivot`) in its private
//! mount namespace.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};
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
}

#[derive(Debug)]
struct Container {
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
    /// Write end of the pipe the created child waits on before it execs.
    start: Option<File>,
    /// Read end of the child's report pipe, kept until start.
    report: Option<File>,
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
        let io = ChildIo::new()?;

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
        let proc = self.register(&mut state, pid, &req.id, None, io);
        state.containers.insert(
            req.id.clone(),
            Container {
                init: proc,
                execs: HashMap::new(),
                start: Some(File::from(start_w)),
                report: None,
            },
        );
        drop(state);
        drop(start_r);
        drop(report_w);

        // The child reports 'R' once its root is ready, or why it failed.
        let mut report = File::from(report_r);
        match read_report(&mut report) {
            Report::Ready => {
                if let Some(c) = self.lock().containers.get_mut(&req.id) {
                    c.report = Some(report);
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

    /// Lets a created container's process exec.
    pub fn start(&self, id: &str) -> Result<u32, ContainerError> {
        let (proc, start, report) = {
            let mut state = self.lock();
            let c = state
                .containers
                .get_mut(id)
                .ok_or_else(|| ContainerError::NoContainer(id.into()))?;
            match (c.start.take(), c.report.take()) {
                (Some(s), Some(r)) => (c.init.clone(), s, r),
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
        std::io::Write::write_all(&mut start, b"S").map_err(|e| ContainerError::Sys {
            step: "waking the container process".into(),
            source: io_errno(&e),
        })?;
        drop(start);
        let mut report = report;
        match read_report(&mut report) {
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
        let io = ChildIo::new()?;
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
        let mut report = File::from(report_r);
        let pid = match read_report(&mut report) {
            Report::Pid(pid) => pid,
            other => return Err(other.into_error("entering the container's namespaces")),
        };
        let proc = {
            let mut state = self.lock();
            let proc = self.register(&mut state, pid, id, Some(exec_id), io);
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
        io: ChildIo,
    ) -> Arc<Proc> {
        let proc = Arc::new(Proc {
            pid,
            id: id.into(),
            exec_id: exec_id.map(Into::into),
            started: AtomicBool::new(false),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            outputs: Mutex::new(Vec::new()),
        });
        let ChildIo {
            stdout_r, stderr_r, ..
        } = io;
        let mut done = Vec::new();
        for (stream, fd) in [(Stream::Stdout, stdout_r), (Stream::Stderr, stderr_r)] {
            let (tx, rx) = mpsc::channel();
            done.push(rx);
            let events = self.events.clone();
            let (id, exec_id) = (proc.id.clone(), proc.exec_id.clone());
            std::thread::spawn(move || {
                forward_output(File::from(fd), stream, id, exec_id, events, tx)
            });
        }
        *lock(&proc.outputs) = done;
        if let Some(status) = state.early_exits.remove(&pid) {
            self.finish(proc.clone(), status);
        } else {
            state.by_pid.insert(pid, proc.clone());
        }
        proc
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

/// The child's end of its standard streams.
#[derive(Debug)]
struct ChildIo {
    stdin: OwnedFd,
    stdout_w: OwnedFd,
    stderr_w: OwnedFd,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
}

impl ChildIo {
    fn new() -> Result<ChildIo, ContainerError> {
        // No stdin streaming: the process reads end-of-file.
        let stdin = File::open("/dev/null").map_err(|e| ContainerError::Sys {
            step: "open /dev/null".into(),
            source: io_errno(&e),
        })?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        Ok(ChildIo {
            stdin: stdin.into(),
            stdout_w,
            stderr_w,
            stdout_r,
            stderr_r,
        })
    }
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
        })
    }
}

/// Steps a child can fail at, in the order it runs them; the index travels in the report.
const STEPS: [&str; 16] = [
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
    for (from, to) in [
        (io.stdin.as_raw_fd(), 0),
        (io.stdout_w.as_raw_fd(), 1),
        (io.stderr_w.as_raw_fd(), 2),
    ] {
        // SAFETY: plain dup2 on descriptors this process owns.
        if unsafe { libc::dup2(from, to) } < 0 {
            // SAFETY: child-only.
            unsafe { fail(report, 0) }
        }
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
        if let Some(h) = &prep.hostname {
            if libc::sethostname(h.as_ptr(), h.as_bytes().len()) < 0 {
                fail(report, 8)
            }
        }
        if libc::write(report, c(b"R\0").cast(), 1) != 1 {
            libc::_exit(127)
        }
        let mut byte = 0u8;
        if libc::read(start, std::ptr::addr_of_mut!(byte).cast(), 1) != 1 {
            // The agent dropped the container before starting it.
            libc::_exit(127)
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
