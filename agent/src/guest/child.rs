//! The child side: what runs in a process the agent clones, between the clone and its exec.
//!
//! The agent is multi-threaded, so a child made by `clone` may only make raw system calls until
//! it execs (another thread may have held the allocator's lock at the moment of the clone): the
//! code here calls async-signal-safe functions only and never allocates. Everything the child
//! needs (paths, argv, envp as C strings, file descriptors) is prepared before the clone in
//! [`Prepared`] and [`ChildIo`]; the child tells the agent how far it got on the report pipe
//! ([`super::report`]), and a failed step ends it.
//!
//! A container's first process is cloned into new mount, PID, UTS and IPC namespaces. In its
//! private mount namespace it bind-mounts its rootfs and `pivot_root`s into it, detaching the old
//! root with everything the agent mounted (the agent moved itself off the initramfs at boot so
//! that this works, see [`super::boot::leave_initramfs`]), mounts /proc and a small /dev, applies
//! the container's read-only root, read-only and masked paths ([`RootfsSecurity`]), reports `R`,
//! then waits on a second pipe for start: `b'S'` and the index of the pty to take ([`NO_TTY`]
//! for none). A process exec'd into a running container is cloned by a helper that first enters
//! the container's namespaces.
//!
//! Either process is then confined as runc confines it, just before its exec
//! ([`ProcessSecurity`], applied in `become_process`): the agent's descriptors close on exec,
//! rlimits, seccomp (before the capabilities go when `no_new_privs` is off, since installing it
//! then needs `CAP_SYS_ADMIN`), the bounding set, the user (capabilities kept across setuid),
//! the capability sets, the ambient set, `no_new_privs`, and seccomp last when `no_new_privs` is
//! on.

use std::ffi::{c_char, CString};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use super::error::ContainerError;
use super::files::FileMount;
use super::pty::{pts_path, DEVPTS_OPTIONS, NO_TTY};
use super::report::{failed_message, pid_message, Step, READY};
use super::seccomp;
use super::security::{ProcessSecurity, RootfsSecurity};
use super::stdio::ChildIo;
use crate::protocol::Process;

/// `PATH` used to find `args[0]` when the process's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a child needs, as C data made before the clone.
#[derive(Debug)]
pub(super) struct Prepared {
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
    /// Capabilities, rlimits, no_new_privs, seccomp.
    security: ProcessSecurity,
    /// A container's read-only root, read-only and masked paths.
    rootfs_security: RootfsSecurity,
    /// The container's `cgroup.procs`, open for writing: the process joins before anything else
    /// (-1: none).
    cgroup_procs: RawFd,
    /// Files bind-mounted into a container's root once /proc is there.
    binds: Vec<Bind>,
}

/// A file bind-mounted into the container: a detached mount of the agent's copy, attached over
/// `target` once the child is inside its root.
#[derive(Debug)]
struct Bind {
    tree: RawFd,
    target: CString,
    /// Directories to create first, outermost first (a missing `/etc`, say).
    parents: Vec<CString>,
    readonly: bool,
}

impl Bind {
    fn new(m: &FileMount) -> Result<Bind, ContainerError> {
        let target = Path::new(&m.target);
        let mut parents: Vec<CString> = target
            .ancestors()
            .skip(1)
            .filter(|p| p.parent().is_some())
            .map(|p| cstring("file mount directory", &p.to_string_lossy()))
            .collect::<Result<_, _>>()?;
        parents.reverse();
        Ok(Bind {
            tree: m.tree.as_raw_fd(),
            target: cstring("file mount", &m.target)?,
            parents,
            readonly: m.readonly,
        })
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, ContainerError> {
    CString::new(s)
        .map_err(|_| ContainerError::Invalid(format!("{what} {s:?} contains a NUL byte")))
}

impl Prepared {
    pub(super) fn new(
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
            security: ProcessSecurity::new(p)?,
            rootfs_security: RootfsSecurity::default(),
            binds: Vec::new(),
            cgroup_procs: -1,
        })
    }

    /// The process joins the cgroup whose `cgroup.procs` is open at `procs` (the caller keeps
    /// it open until the clone returned).
    pub(super) fn with_cgroup(mut self, procs: RawFd) -> Prepared {
        self.cgroup_procs = procs;
        self
    }

    /// Adds the container's file mounts (its first process makes them).
    pub(super) fn with_files(mut self, files: &[FileMount]) -> Result<Prepared, ContainerError> {
        self.binds = files.iter().map(Bind::new).collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Adds what a container's first process applies to its filesystem view.
    pub(super) fn with_rootfs_security(mut self, r: RootfsSecurity) -> Prepared {
        self.rootfs_security = r;
        self
    }
}

/// Clones a container's first process into new mount, PID, UTS and IPC namespaces; returns its
/// pid. The process makes its rootfs its root, reports `R` on `report`, waits on `start`, execs.
pub(super) fn clone_init(
    prep: &Prepared,
    io: &ChildIo,
    start: RawFd,
    report: RawFd,
) -> Result<i32, ContainerError> {
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::SIGCHLD;
    // SAFETY: clone without CLONE_VM and without a new stack behaves like fork: the child
    // runs on a copy of this stack. It only makes raw system calls on data prepared by the
    // caller and ends in execve or _exit.
    let pid = unsafe { raw_clone(flags) };
    if pid == 0 {
        // SAFETY: in the child; see above.
        unsafe { container_child(prep, io, start, report) }
    }
    if pid < 0 {
        return Err(ContainerError::Sys {
            step: "clone of the container process".into(),
            source: nix::Error::last(),
        });
    }
    Ok(pid)
}

/// Clones the helper that enters a running container's namespaces (`ns`, in that order) and
/// clones the process to exec there; the helper reports that process's pid on `report`.
pub(super) fn clone_exec_helper(
    prep: &Prepared,
    io: &ChildIo,
    ns: &[RawFd],
    report: RawFd,
) -> Result<(), ContainerError> {
    // SAFETY: as in `clone_init`: fork semantics, raw system calls only in the child.
    let helper = unsafe { raw_clone(libc::SIGCHLD) };
    if helper == 0 {
        // SAFETY: in the child; see above.
        unsafe { exec_helper(prep, io, ns, report) }
    }
    if helper < 0 {
        return Err(ContainerError::Sys {
            step: "clone of the exec helper".into(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// `clone(2)` with fork semantics (no new stack): returns 0 in the child.
///
/// # Safety
/// The caller's child must only make async-signal-safe calls until execve or _exit.
unsafe fn raw_clone(flags: libc::c_int) -> libc::pid_t {
    // Clone flags are bits of a non-negative int; the kernel takes them as an unsigned long.
    let flags = libc::c_ulong::from(flags.unsigned_abs());
    // SAFETY: the x86_64 argument order is flags, stack, parent_tid, child_tid, tls; a null
    // stack means "this stack, copied".
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    // A pid is a pid_t; anything else is the -1 of a failure.
    libc::pid_t::try_from(ret).unwrap_or(-1)
}

/// Reports a failed step and ends the child.
///
/// # Safety
/// Child-only: raw system calls.
unsafe fn fail(report: RawFd, step: Step) -> ! {
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    let msg = failed_message(step, errno);
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
            unsafe { fail(report, Step::Stdio) }
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
        unsafe { fail(report, Step::TakeTerminal) }
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
        unsafe { fail(report, Step::TakeTerminal) }
    }
}

/// Confines the process (see the module docs for the order), enters the cwd and execs.
///
/// # Safety
/// Child-only.
unsafe fn become_process(prep: &Prepared, report: RawFd) -> ! {
    let sec = &prep.security;
    // Nothing of the agent's crosses the exec: every descriptor but 0, 1 and 2 closes on it.
    // SAFETY: close_range takes plain numbers; child-only.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) < 0
        {
            fail(report, Step::CloseFds)
        }
    }
    for (resource, limit) in &sec.rlimits {
        // SAFETY: prlimit64 on this process (pid 0) reads a `struct rlimit64` `prep` owns and
        // writes no old value (null).
        unsafe {
            if libc::syscall(
                libc::SYS_prlimit64,
                0,
                *resource,
                std::ptr::from_ref(limit),
                std::ptr::null::<u8>(),
            ) < 0
            {
                fail(report, Step::Rlimit)
            }
        }
    }
    if !sec.no_new_privs {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: before the drop.
        // SAFETY: child-only, still with every capability.
        unsafe { install_seccomp(&sec.seccomp, report) };
    }
    if let Some(caps) = &sec.capabilities {
        for &cap in &caps.bounding_drop {
            // SAFETY: prctl takes plain numbers; child-only.
            unsafe {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                    fail(report, Step::BoundingSet)
                }
            }
        }
        // The permitted set survives the change of user; the sets are set right after it.
        // SAFETY: as above.
        unsafe {
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
                fail(report, Step::KeepCaps)
            }
        }
    }
    // The set*id calls go straight to the kernel: glibc's wrappers would signal every thread of
    // the parent (its thread list is in the copied memory) and wait forever for threads this
    // process does not have.
    // SAFETY: setgroups reads `groups.len()` ids from the vector `prep` owns; child-only.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, prep.groups.len(), prep.groups.as_ptr()) < 0 {
            fail(report, Step::SetGroups)
        }
    }
    // SAFETY: setgid and setuid take plain ids; child-only.
    unsafe {
        if libc::syscall(libc::SYS_setgid, prep.gid) < 0 {
            fail(report, Step::SetGid)
        }
        if libc::syscall(libc::SYS_setuid, prep.uid) < 0 {
            fail(report, Step::SetUid)
        }
    }
    // SAFETY: `cwd` is a C string `prep` owns; child-only.
    unsafe {
        if libc::chdir(prep.cwd.as_ptr()) < 0 {
            fail(report, Step::Cwd)
        }
    }
    if let Some(caps) = &sec.capabilities {
        // A stack copy: the kernel may write its preferred version into the header.
        let mut header = caps.header;
        // SAFETY: prctl takes plain numbers; capset reads a header and two data structs (the
        // layout of version 3), all live for the call. Child-only.
        unsafe {
            if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0 {
                fail(report, Step::KeepCaps)
            }
            if libc::syscall(
                libc::SYS_capset,
                std::ptr::from_mut(&mut header),
                caps.data.as_ptr(),
            ) < 0
            {
                fail(report, Step::Capset)
            }
        }
        for &cap in &caps.ambient {
            // SAFETY: prctl takes plain numbers; child-only.
            unsafe {
                if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0 {
                    fail(report, Step::AmbientCaps)
                }
            }
        }
    }
    if sec.no_new_privs {
        // SAFETY: prctl takes plain numbers; child-only.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                fail(report, Step::NoNewPrivs)
            }
        }
        // As late as possible, so the filter sees as few of the agent's own calls as can be.
        // SAFETY: child-only, with no_new_privs set.
        unsafe { install_seccomp(&sec.seccomp, report) };
    }
    let mut last = libc::ENOENT;
    for program in &prep.programs {
        // SAFETY: the program is a C string, argv and envp null-terminated arrays of C strings,
        // all owned by `prep`; execve returns only when it failed, leaving this thread's errno.
        let e = unsafe {
            libc::execve(program.as_ptr(), prep.argv.as_ptr(), prep.envp.as_ptr());
            *libc::__errno_location()
        };
        // Keep looking along PATH only while the program is not there.
        if e != libc::ENOENT && e != libc::ENOTDIR {
            last = e;
            break;
        }
    }
    // SAFETY: sets this thread's errno for `fail` to report; child-only.
    unsafe {
        *libc::__errno_location() = last;
        fail(report, Step::Execve)
    }
}

/// Installs a compiled seccomp profile (nothing when it has no program).
///
/// # Safety
/// Child-only; needs `CAP_SYS_ADMIN` or `no_new_privs`.
unsafe fn install_seccomp(compiled: &seccomp::CompiledSeccomp, report: RawFd) {
    // SAFETY: child-only, as this function.
    if unsafe { seccomp::install(compiled) }.is_err() {
        // SAFETY: child-only.
        unsafe { fail(report, Step::Seccomp) }
    }
}

/// A NUL-terminated byte literal as a C string, without allocating.
fn lit(s: &'static [u8]) -> *const c_char {
    s.as_ptr().cast()
}

/// The container's first process: new namespaces are in place (clone flags); make the rootfs
/// its root, wait for start, exec.
///
/// # Safety
/// Child-only.
unsafe fn container_child(prep: &Prepared, io: &ChildIo, start: RawFd, report: RawFd) -> ! {
    // SAFETY: child-only.
    unsafe { join_cgroup(prep.cgroup_procs, report) };
    // SAFETY: child-only, as this function; `io` holds this process's copies of the streams.
    unsafe { setup_stdio(io, report) };
    // SAFETY: child-only, in the new mount namespace the clone made.
    unsafe { enter_rootfs(prep, report) };
    // SAFETY: child-only, inside the container's root.
    unsafe { mount_proc_and_dev(prep.terminal, report) };
    // SAFETY: child-only, inside the container's root, with its /proc and /dev.
    unsafe { mount_binds(&prep.binds, report) };
    // SAFETY: child-only, inside the container's root, its /proc and /dev mounted.
    unsafe { apply_rootfs_security(&prep.rootfs_security, report) };
    if let Some(h) = &prep.hostname {
        // SAFETY: `h` is a C string `prep` owns, given with its length; child-only.
        unsafe {
            if libc::sethostname(h.as_ptr(), h.as_bytes().len()) < 0 {
                fail(report, Step::SetHostname)
            }
        }
    }
    // SAFETY: child-only.
    let tty = unsafe { wait_for_start(start, report) };
    if tty != NO_TTY {
        // SAFETY: child-only, inside the container's root, where the agent allocated the pty
        // while the process waited.
        unsafe { take_pty(tty, report) };
    }
    // SAFETY: child-only.
    unsafe { become_process(prep, report) }
}

/// Makes the mounts private, then the rootfs the root (`pivot_root`), the old root detached.
///
/// # Safety
/// Child-only, in a mount namespace of its own.
unsafe fn enter_rootfs(prep: &Prepared, report: RawFd) {
    let none = std::ptr::null::<c_char>();
    // SAFETY: mount reads a NUL-terminated literal; a propagation change takes no source, type
    // or data. Child-only.
    unsafe {
        if libc::mount(
            none,
            lit(b"/\0"),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) < 0
        {
            fail(report, Step::PrivateMounts)
        }
    }
    let Some(rootfs) = &prep.rootfs else {
        // SAFETY: child-only.
        unsafe { fail(report, Step::BindRootfs) }
    };
    // SAFETY: `rootfs` is a C string `prep` owns; a bind mount takes no type or data.
    // Child-only.
    unsafe {
        if libc::mount(
            rootfs.as_ptr(),
            rootfs.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) < 0
        {
            fail(report, Step::BindRootfs)
        }
    }
    // SAFETY: as above.
    unsafe {
        if libc::chdir(rootfs.as_ptr()) < 0 {
            fail(report, Step::ChdirRootfs)
        }
    }
    // The old root goes on top of the new one, then away with every mount under it: nothing
    // the agent mounted (its /run, the share, /proc, /sys, /dev) stays reachable. This is
    // runc's pivot_root(".", ".").
    // SAFETY: NUL-terminated literals; child-only, in its own mount namespace.
    unsafe {
        if libc::syscall(libc::SYS_pivot_root, lit(b".\0"), lit(b".\0")) < 0 {
            fail(report, Step::PivotRoot)
        }
        if libc::umount2(lit(b".\0"), libc::MNT_DETACH) < 0 || libc::chdir(lit(b"/\0")) < 0 {
            fail(report, Step::DetachOldRoot)
        }
    }
}

/// Mounts /proc, a small /dev and the container's own devpts.
///
/// # Safety
/// Child-only, inside the container's root.
unsafe fn mount_proc_and_dev(terminal: bool, report: RawFd) {
    // SAFETY: mkdir and mount read NUL-terminated literals; proc takes no data. Child-only.
    unsafe {
        libc::mkdir(lit(b"/proc\0"), 0o555);
        let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            lit(b"proc\0"),
            lit(b"/proc\0"),
            lit(b"proc\0"),
            nodev,
            std::ptr::null(),
        ) < 0
        {
            fail(report, Step::MountProc)
        }
    }
    // A small /dev with the usual nodes; never the guest's devtmpfs (it would hand the
    // container every device of the VM).
    // SAFETY: mkdir and mount read NUL-terminated literals, tmpfs's options one too.
    // Child-only.
    unsafe {
        libc::mkdir(lit(b"/dev\0"), 0o755);
        if libc::mount(
            lit(b"tmpfs\0"),
            lit(b"/dev\0"),
            lit(b"tmpfs\0"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            lit(b"mode=0755,size=64k\0").cast(),
        ) < 0
        {
            fail(report, Step::MountDev)
        }
    }
    // SAFETY: umask takes a mode, mknod a NUL-terminated literal and numbers. Child-only.
    unsafe {
        let old = libc::umask(0);
        for (path, minor) in [
            (lit(b"/dev/null\0"), 3),
            (lit(b"/dev/zero\0"), 5),
            (lit(b"/dev/full\0"), 7),
            (lit(b"/dev/random\0"), 8),
            (lit(b"/dev/urandom\0"), 9),
        ] {
            if libc::mknod(path, libc::S_IFCHR | 0o666, libc::makedev(1, minor)) < 0 {
                fail(report, Step::MountDev)
            }
        }
        libc::umask(old);
    }
    // The container's own devpts instance, for terminals; only a process that needs one
    // fails without it.
    // SAFETY: mkdir and mount read NUL-terminated literals, the options one too.
    let devpts = unsafe {
        libc::mkdir(lit(b"/dev/pts\0"), 0o755);
        libc::mount(
            lit(b"devpts\0"),
            lit(b"/dev/pts\0"),
            lit(b"devpts\0"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            DEVPTS_OPTIONS.as_ptr().cast(),
        )
    };
    if devpts < 0 && terminal {
        // SAFETY: child-only.
        unsafe { fail(report, Step::MountDevPts) }
    }
    if devpts == 0 {
        // SAFETY: symlink reads NUL-terminated literals.
        unsafe { libc::symlink(lit(b"pts/ptmx\0"), lit(b"/dev/ptmx\0")) };
    }
}

/// Bind-mounts the container's files over their targets, creating what is missing.
///
/// # Safety
/// Child-only, inside the container's root, once its /proc is mounted.
unsafe fn mount_binds(binds: &[Bind], report: RawFd) {
    let none = std::ptr::null::<c_char>();
    for b in binds {
        // SAFETY: mkdir, open and close take C strings `prep` owns and plain flags; an
        // existing directory or file is fine. Child-only.
        unsafe {
            for dir in &b.parents {
                libc::mkdir(dir.as_ptr(), 0o755);
            }
            let fd = libc::open(
                b.target.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOCTTY,
                0o644,
            );
            if fd >= 0 {
                libc::close(fd);
            }
        }
        // SAFETY: move_mount attaches the detached tree `b.tree` (inherited from the agent)
        // over the C string `prep` owns; the empty source path is a literal. Child-only.
        unsafe {
            if libc::syscall(
                libc::SYS_move_mount,
                b.tree,
                lit(b"\0"),
                libc::AT_FDCWD,
                b.target.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            ) < 0
            {
                fail(report, Step::BindFile)
            }
            if b.readonly
                && libc::mount(
                    none,
                    b.target.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ) < 0
            {
                fail(report, Step::BindFile)
            }
        }
    }
}

/// The kernel's `struct statfs` on 64-bit architectures (the C library's type hides
/// `f_flags` on some targets).
#[repr(C)]
#[derive(Debug, Default)]
struct KernelStatfs {
    f_type: i64,
    f_bsize: i64,
    f_blocks: u64,
    f_bfree: u64,
    f_bavail: u64,
    f_files: u64,
    f_ffree: u64,
    f_fsid: [i32; 2],
    f_namelen: i64,
    f_frsize: i64,
    f_flags: i64,
    f_spare: [i64; 4],
}

/// The flags a bind remount of `path` must keep (nosuid, nodev, noexec, atime), from statfs.
/// Returns `None` when statfs fails (errno set).
///
/// # Safety
/// Child-only: raw system calls on a stack buffer.
unsafe fn kept_mount_flags(path: *const c_char) -> Option<libc::c_ulong> {
    let mut st = KernelStatfs::default();
    // SAFETY: `path` is a NUL-terminated string, `st` a live buffer of the right type.
    if unsafe { libc::syscall(libc::SYS_statfs, path, std::ptr::from_mut(&mut st)) } < 0 {
        return None;
    }
    // The ST_* bits of f_flags are the MS_* bits for these flags.
    let keep = libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | libc::MS_NOATIME
        | libc::MS_NODIRATIME
        | libc::MS_RELATIME;
    let flags = libc::c_ulong::try_from(st.f_flags).unwrap_or(0);
    Some(flags & keep)
}

/// Remounts the bind mount at `path` read-only, keeping its other flags.
///
/// # Safety
/// Child-only.
unsafe fn remount_readonly(path: *const c_char) -> bool {
    // SAFETY: child-only.
    let Some(flags) = (unsafe { kept_mount_flags(path) }) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string; a remount takes no source, type or data.
    unsafe {
        libc::mount(
            std::ptr::null(),
            path,
            std::ptr::null(),
            flags | libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        ) == 0
    }
}

/// The errno of the last failed call.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Applies a container's read-only root, read-only paths and masked paths, in runc's order. A
/// listed path that does not exist in the container is skipped, as runc does.
///
/// # Safety
/// Child-only, inside the container's root with its /proc and /dev.
unsafe fn apply_rootfs_security(r: &RootfsSecurity, report: RawFd) {
    let none = std::ptr::null::<c_char>();
    if r.readonly_root {
        // The root is the rootfs bind mount: remount it read-only.
        // SAFETY: a NUL-terminated literal; child-only.
        if !unsafe { remount_readonly(lit(b"/\0")) } {
            // SAFETY: child-only.
            unsafe { fail(report, Step::ReadonlyRoot) }
        }
    }
    for path in &r.readonly_paths {
        // SAFETY: `path` is a C string `r` owns; a bind mount takes no type or data.
        let bound = unsafe {
            libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if bound < 0 && errno() == libc::ENOENT {
            continue;
        }
        // SAFETY: as above; child-only.
        if bound < 0 || !unsafe { remount_readonly(path.as_ptr()) } {
            // SAFETY: child-only.
            unsafe { fail(report, Step::ReadonlyPath) }
        }
    }
    for path in &r.masked_paths {
        // A file disappears under /dev/null, a directory under an empty read-only tmpfs.
        // SAFETY: `path` is a C string `r` owns, the source a literal; a bind mount takes no
        // type or data.
        let mut rc = unsafe {
            libc::mount(
                lit(b"/dev/null\0"),
                path.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc < 0 && errno() == libc::ENOTDIR {
            // SAFETY: NUL-terminated literals and `path`; an empty tmpfs takes no data.
            rc = unsafe {
                libc::mount(
                    lit(b"tmpfs\0"),
                    path.as_ptr(),
                    lit(b"tmpfs\0"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            };
        }
        if rc < 0 && errno() != libc::ENOENT {
            // SAFETY: child-only.
            unsafe { fail(report, Step::MaskPath) }
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open at `procs` (writing
/// `0` means the writer); nothing when `procs` is -1.
///
/// # Safety
/// Child-only.
unsafe fn join_cgroup(procs: RawFd, report: RawFd) {
    if procs < 0 {
        return;
    }
    // SAFETY: writes a one-byte literal to a descriptor the agent opened. Child-only.
    unsafe {
        if libc::write(procs, lit(b"0\0").cast(), 1) != 1 {
            fail(report, Step::Cgroup)
        }
    }
}

/// Tells the agent the root is ready (`R`) and waits for start; returns the index of the pty to
/// take ([`NO_TTY`]: none). Ends the process if the agent drops the container instead.
///
/// # Safety
/// Child-only.
unsafe fn wait_for_start(start: RawFd, report: RawFd) -> u32 {
    // SAFETY: writes a one-byte constant; _exit ends the process without running the
    // parent's destructors.
    unsafe {
        if libc::write(report, READY.as_ptr().cast(), READY.len()) != 1 {
            libc::_exit(127)
        }
    }
    let mut msg = [0u8; 5];
    // SAFETY: reads at most `msg.len()` bytes into a stack buffer.
    let n = unsafe { libc::read(start, msg.as_mut_ptr().cast(), msg.len()) };
    if usize::try_from(n) != Ok(msg.len()) {
        // The agent dropped the container before starting it.
        // SAFETY: as above.
        unsafe { libc::_exit(127) }
    }
    u32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]])
}

/// Takes pty `index` of the container's devpts as the controlling terminal and as 0, 1 and 2.
///
/// # Safety
/// Child-only, inside the container's root.
unsafe fn take_pty(index: u32, report: RawFd) {
    let path = pts_path(index);
    // SAFETY: child-only.
    unsafe { new_session(report) };
    // SAFETY: `path` is a NUL-terminated stack buffer.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        // SAFETY: child-only.
        unsafe { fail(report, Step::TakeTerminal) }
    }
    // SAFETY: child-only, in the session just made.
    unsafe { take_terminal(fd, report) };
    for to in 0..3 {
        // SAFETY: plain dup2 on a descriptor this process owns; child-only.
        unsafe {
            if libc::dup2(fd, to) < 0 {
                fail(report, Step::Stdio)
            }
        }
    }
    if fd > 2 {
        // SAFETY: `fd` is this process's and no longer needed: 0, 1 and 2 are its copies.
        unsafe { libc::close(fd) };
    }
}

/// Enters a running container's namespaces, then makes the process that execs a child of the
/// agent (CLONE_PARENT), reports its pid and exits; the agent reaps the process directly.
///
/// # Safety
/// Child-only.
unsafe fn exec_helper(prep: &Prepared, io: &ChildIo, ns: &[RawFd], report: RawFd) -> ! {
    for &fd in ns {
        // SAFETY: setns on a namespace descriptor the agent opened; child-only.
        unsafe {
            if libc::setns(fd, 0) < 0 {
                fail(report, Step::Setns)
            }
        }
    }
    // The helper joins the container's cgroup before it clones: the process inherits it.
    // SAFETY: child-only.
    unsafe { join_cgroup(prep.cgroup_procs, report) };
    // SAFETY: fork semantics again; the new child only makes raw system calls until it execs.
    let pid = unsafe { raw_clone(libc::CLONE_PARENT | libc::SIGCHLD) };
    if pid == 0 {
        // SAFETY: in the new child; `io` holds its copies of the streams.
        unsafe {
            setup_stdio(io, report);
            become_process(prep, report)
        }
    }
    if pid < 0 {
        // SAFETY: child-only.
        unsafe { fail(report, Step::Setns) }
    }
    let msg = pid_message(pid);
    // SAFETY: writes a stack buffer to the report pipe, then ends the helper without running
    // the parent's destructors.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::path::Path;

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::Pid;

    use super::super::pty::host_pty;
    use super::super::report::{read_report, Report};
    use super::super::stdio::{pipe, AgentIo};
    use super::*;

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
        // SAFETY: as in `clone_exec_helper`: fork semantics, raw system calls only in the child.
        let pid = unsafe { raw_clone(libc::SIGCHLD) };
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
        let status = waitpid(Pid::from_raw(pid), None).unwrap();
        assert_eq!(status, WaitStatus::Exited(Pid::from_raw(pid), 0));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(&format!("/dev/pts/{index}\r\n")), "{text:?}");
        assert!(text.ends_with("got typed\r\n"), "{text:?}");
    }

    /// Reads what a child wrote to its stdout pipe until it closes, then reaps the child.
    fn output_and_status(agent: AgentIo, pid: i32) -> (String, WaitStatus) {
        let mut out = String::new();
        for (_, mut f) in agent.outputs {
            f.read_to_string(&mut out).unwrap();
        }
        let status = waitpid(Pid::from_raw(pid), None).unwrap();
        (out, status)
    }

    /// The value of a `Key:\tvalue` line of /proc/PID/status output.
    fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in {status}"))
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_exec_is_confined_with_caps_nnp_rlimits_and_seccomp() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root (the child drops capabilities and sets its groups)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let denied = tmp.path().join("denied");
        let kept = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
        let p = Process {
            args: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "cat /proc/self/status /proc/self/limits; mkdir {} 2>/dev/null; echo mkdir=$?",
                    denied.display()
                ),
            ],
            env: vec!["PATH=/usr/bin:/bin".into()],
            capabilities: Some(crate::protocol::Capabilities {
                bounding: names(&kept),
                effective: names(&kept),
                permitted: names(&kept),
                inheritable: Vec::new(),
                ambient: Vec::new(),
            }),
            no_new_privileges: true,
            rlimits: vec![crate::protocol::Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                hard: 200,
                soft: 100,
            }],
            seccomp: Some(crate::protocol::Seccomp {
                default_action: "SCMP_ACT_ALLOW".into(),
                syscalls: vec![crate::protocol::SeccompSyscall {
                    names: names(&["mkdir", "mkdirat"]),
                    action: "SCMP_ACT_ERRNO".into(),
                    errno_ret: Some(13),
                    args: Vec::new(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let prep = Prepared::new(&p, None, None).unwrap();
        let (io, agent) = ChildIo::pipes(false).unwrap();
        let (report_r, report_w) = pipe().unwrap();
        // A descriptor of the agent's without close-on-exec must not reach the process.
        let leak = nix::unistd::dup(report_w.as_raw_fd()).unwrap();
        // SAFETY: as in `clone_exec_helper`: fork semantics, raw system calls only in the child.
        let pid = unsafe { raw_clone(libc::SIGCHLD) };
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
        nix::unistd::close(leak).unwrap();
        assert!(matches!(
            read_report(&mut File::from(report_r)),
            Report::Exec
        ));
        let (out, status) = output_and_status(agent, pid);
        assert_eq!(status, WaitStatus::Exited(Pid::from_raw(pid), 0), "{out}");
        let mask = format!("{:016x}", 1u64 | 1 << 5 | 1 << 10);
        assert_eq!(status_field(&out, "CapBnd"), mask, "{out}");
        assert_eq!(status_field(&out, "CapEff"), mask, "{out}");
        assert_eq!(status_field(&out, "CapPrm"), mask, "{out}");
        assert_eq!(status_field(&out, "NoNewPrivs"), "1", "{out}");
        assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
        let files = out
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        assert_eq!(
            files.split_whitespace().collect::<Vec<_>>()[3..6],
            ["100", "200", "files"],
            "{files}"
        );
        assert!(out.ends_with("mkdir=1\n"), "{out}");
        assert!(!denied.exists());
    }

    #[test]
    fn a_container_pivots_into_its_rootfs_with_masked_and_readonly_paths() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: needs root (the child makes namespaces and mounts)");
            return;
        }
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            eprintln!("SKIP: needs a static /bin/busybox for the container's rootfs");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        std::fs::write(rootfs.join("etc/secret"), "s3cret\n").unwrap();
        std::fs::create_dir_all(rootfs.join("data")).unwrap();
        std::fs::write(rootfs.join("data/file"), "visible?\n").unwrap();
        // Something of the agent's filesystem the container must not see.
        let outside = tmp.path().join("agent-only");
        std::fs::write(&outside, "agent\n").unwrap();
        let script = format!(
            "B=/bin/busybox; $B cat /etc/secret; $B ls /data; $B touch /new 2>/dev/null; echo touch=$?; \
             $B cat /proc/1/cmdline | $B tr '\\0' ' '; echo; \
             $B sh -c 'echo x > /proc/sys/kernel/hostname' 2>/dev/null; echo sysctl=$?; \
             $B ls {} 2>/dev/null; echo outside=$?; \
             $B cat /etc/hosts /opt/conf/app.conf; $B sh -c 'echo y >> /etc/hosts' 2>/dev/null; \
             echo hostswrite=$?; $B cat /proc/self/mountinfo",
            outside.display()
        );
        // File mounts: one read-only over an existing file, one where nothing was.
        std::fs::write(rootfs.join("etc/hosts"), "from the image\n").unwrap();
        let files = super::super::files::write(
            &tmp.path().join("copies"),
            "c1",
            &[
                crate::protocol::ContainerFile {
                    path: "/etc/hosts".into(),
                    data: b"10.0.0.1 pod-a\n".to_vec(),
                    readonly: true,
                },
                crate::protocol::ContainerFile {
                    path: "/opt/conf/app.conf".into(),
                    data: b"key=value\n".to_vec(),
                    readonly: false,
                },
            ],
        )
        .unwrap();
        let p = Process {
            args: vec!["/bin/busybox".into(), "sh".into(), "-c".into(), script],
            ..Default::default()
        };
        let container = crate::protocol::CreateContainer {
            id: "c1".into(),
            rootfs: Some("unused".into()),
            image: None,
            hostname: None,
            process: p.clone(),
            masked_paths: names(&["/etc/secret", "/data", "/does/not/exist"]),
            readonly_paths: names(&["/proc/sys"]),
            readonly_root: true,
            oci: Default::default(),
            files: vec![],
            resources: None,
        };
        let prep = Prepared::new(&p, Some(&rootfs), Some("c1"))
            .unwrap()
            .with_files(&files.mounts)
            .unwrap()
            .with_rootfs_security(RootfsSecurity::new(&container).unwrap());
        let (io, agent) = ChildIo::pipes(false).unwrap();
        let (start_r, start_w) = pipe().unwrap();
        let (report_r, report_w) = pipe().unwrap();
        let pid = clone_init(&prep, &io, start_r.as_raw_fd(), report_w.as_raw_fd()).unwrap();
        drop(io);
        drop(report_w);
        drop(start_r);
        let mut report = File::from(report_r);
        match read_report(&mut report) {
            Report::Ready => {}
            other => panic!("{}", other.into_error("container setup")),
        }
        let mut msg = [b'S', 0, 0, 0, 0];
        msg[1..].copy_from_slice(&NO_TTY.to_le_bytes());
        File::from(start_w).write_all(&msg).unwrap();
        assert!(matches!(read_report(&mut report), Report::Exec));
        let (out, status) = output_and_status(agent, pid);
        assert_eq!(status, WaitStatus::Exited(Pid::from_raw(pid), 0), "{out}");
        let mut lines = out.lines();
        // /etc/secret reads as /dev/null, /data is an empty directory.
        assert_eq!(lines.next(), Some("touch=1"), "{out}");
        // PID 1 of the container's namespace is its own process.
        let pid1 = lines.next().unwrap_or_default();
        assert!(pid1.starts_with("/bin/busybox sh -c "), "{out}");
        assert!(out.contains("sysctl=1\n"), "{out}");
        assert!(out.contains("outside=1\n"), "{out}");
        // The file mounts are there, the read-only one is read-only, and the copies stay put.
        assert!(
            out.contains("10.0.0.1 pod-a\nkey=value\nhostswrite=1\n"),
            "{out}"
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/hosts")).unwrap(),
            "from the image\n"
        );
        let mounts: Vec<&str> = out.lines().filter(|l| l.contains(" - ")).collect();
        // The root is the rootfs; nothing of the old root is left.
        assert!(
            mounts
                .iter()
                .any(|m| m.split_whitespace().nth(4) == Some("/")),
            "{out}"
        );
        assert!(
            !mounts
                .iter()
                .any(|m| m.contains("agent-only") || m.contains(" /run ")),
            "{out}"
        );
        assert!(!rootfs.join("new").exists());
    }
}
