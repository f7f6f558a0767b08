//! The pod a shim serves: its sandbox VM and its tasks, and what each task API request does
//! to them.
//!
//! One shim process serves a whole pod (containers join their sandbox's shim). Requests run
//! concurrently; the pod's tasks sit behind one async mutex, which is never held while a call
//! to the guest is answered: a guest that stops answering must not stall `State`, `Kill` or
//! `Delete`. A container being created is reserved by its id meanwhile, and a process being
//! started is marked `starting`, so that an exit the guest reports before its start has been
//! recorded is published after it. Stopping the VM takes it out of the pod and marks the pod
//! gone first, so that nothing starts in a VM going away; whoever else needs the VM stopped
//! (a delete, a second kill) waits for that stop. The guest's events are followed in
//! [`crate::events`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use coffer_agent::protocol::client::{AgentClient, ClientError};
use coffer_agent::protocol::CreateContainer;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::api::{
    CloseIORequest, CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse,
    ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics;
use tokio::sync::{watch, Mutex, RwLock};

use crate::container::{Container, Kind};
use crate::error::{Error, Result};
use crate::io::{close_all, ProcessIo, StdinTarget};
use crate::mount::Rootfs;
use crate::process::{wait_exit, Exit, Phase, Process};
use crate::sandbox::{RunningVm, Sandbox};
use crate::spec::{self, BundleSpec};

/// How long the shim, once its last task is gone, waits for the requests still being answered
/// (one that stopped the VM, say) before it exits.
const REQUESTS_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the guest has to report the exit of a process sent SIGKILL.
const KILL_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Exit code reported for processes that were running when the VM went away unasked.
pub(crate) const VM_GONE_EXIT: u32 = 255;

/// The pod of one shim.
pub(crate) struct Pod {
    pub(crate) namespace: String,
    pub(crate) publisher: Option<RemotePublisher>,
    exit: Arc<ExitSignal>,
    pub(crate) tasks: Mutex<Tasks>,
    /// Held shared by every request being answered (see [`crate::task`]): the shim exits only
    /// once it can take it exclusively, so that no request is cut off without its answer.
    pub(crate) requests: RwLock<()>,
}

/// The pod's sandbox and tasks, behind the pod's lock.
#[derive(Default)]
pub(crate) struct Tasks {
    sandbox: Option<Sandbox>,
    pub(crate) containers: HashMap<String, Container>,
    /// Containers the guest is creating, not yet in `containers`.
    creating: HashSet<String>,
    /// Why the VM is gone, once it is: nothing more can be created or started.
    pub(crate) vm_gone: Option<String>,
    /// Set once the VM is being stopped; turns `true` when it has stopped and every process
    /// has been reported exited.
    stopped: Option<watch::Receiver<bool>>,
    /// The sandbox's exit code when it was stopped by a signal (128 + the signal).
    sandbox_exit: Option<u32>,
}

/// Why a step that calls the guest failed: on the host, or in the guest call itself.
pub(crate) enum GuestFailure {
    Host(Error),
    Guest(ClientError),
}

impl From<Error> for GuestFailure {
    fn from(e: Error) -> GuestFailure {
        GuestFailure::Host(e)
    }
}

/// A process marked as exited, to be published.
pub(crate) struct ProcessExit {
    pub(crate) id: String,
    pub(crate) exec_id: Option<String>,
    pub(crate) pid: u32,
    pub(crate) exit: Exit,
}

impl Tasks {
    fn container(&self, id: &str) -> Result<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("task {id}")))
    }

    fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("task {id}")))
    }

    /// The process a guest event is about: a container's own (`exec_id` None) or an exec'd one.
    pub(crate) fn process_mut(&mut self, id: &str, exec_id: Option<&str>) -> Option<&mut Process> {
        self.containers
            .get_mut(id)
            .and_then(|c| c.process_for_event(exec_id))
    }

    /// The guest agent, while the sandbox VM runs.
    fn agent(&self) -> Result<Arc<AgentClient>> {
        if let Some(why) = &self.vm_gone {
            return Err(Error::FailedPrecondition(format!(
                "the pod's VM is gone: {why}"
            )));
        }
        self.sandbox
            .as_ref()
            .map(|s| s.agent.clone())
            .ok_or_else(|| Error::FailedPrecondition("the sandbox VM is not running".into()))
    }

    /// Marks every process that has not exited as exited (the VM is gone): the sandbox with
    /// the code of the signal that stopped it, if one did, the rest with [`VM_GONE_EXIT`].
    /// Returns their output, to be closed, and the exits, to be published.
    ///
    /// The sandbox's process is the VM: while a stop is under way, its exit is left to the
    /// stop, which reports it once QEMU is gone.
    pub(crate) fn exit_all(&mut self, vm_reaped: bool) -> (Vec<ProcessIo>, Vec<ProcessExit>) {
        let mut ios = Vec::new();
        let mut exits = Vec::new();
        let sandbox_exit = self.sandbox_exit.unwrap_or(VM_GONE_EXIT);
        let stopping = self.stopped.is_some() && !vm_reaped;
        for c in self.containers.values_mut() {
            let code = match c.kind {
                Kind::Sandbox if stopping => continue,
                Kind::Sandbox => sandbox_exit,
                Kind::Workload => VM_GONE_EXIT,
            };
            let id = c.id.clone();
            for p in std::iter::once(&mut c.init).chain(c.execs.values_mut()) {
                if p.exit().is_some() {
                    continue;
                }
                ios.extend(p.io.take());
                let exit = Exit::now(code);
                p.set_exited(exit);
                if p.starting {
                    // Published by the start, after its own event.
                    p.exit_held = true;
                    continue;
                }
                exits.push(ProcessExit {
                    id: id.clone(),
                    exec_id: p.exec_id.clone(),
                    pid: p.pid,
                    exit,
                });
            }
        }
        (ios, exits)
    }
}

impl Pod {
    /// A pod publishing events to containerd through `publisher` (none in tests), ending the
    /// shim through `exit`.
    pub(crate) fn new(
        namespace: &str,
        publisher: Option<RemotePublisher>,
        exit: Arc<ExitSignal>,
    ) -> Pod {
        Pod {
            namespace: namespace.to_string(),
            publisher,
            exit,
            tasks: Mutex::new(Tasks::default()),
            requests: RwLock::new(()),
        }
    }

    /// Begins stopping the VM (at once if its guest no longer answers); every process is
    /// reported exited once it has stopped. Returns without waiting for that, as a kill
    /// returns before the exit it causes: the exits follow as events. Nothing new starts
    /// meanwhile: the pod is marked gone first.
    ///
    /// The VM is taken out of the pod and stopped without its lock, in a task of its own that
    /// a dropped request cannot cancel. Returns what turns `true` when the stop is done
    /// (whoever began it), or `None` if the pod never had a VM.
    async fn begin_stop(
        self: &Arc<Self>,
        signal: u32,
        hung: bool,
    ) -> Option<watch::Receiver<bool>> {
        let mut tasks = self.tasks.lock().await;
        if let Some(stopped) = &tasks.stopped {
            return Some(stopped.clone());
        }
        let vm = tasks.sandbox.as_mut().and_then(Sandbox::take_vm)?;
        tasks.vm_gone.get_or_insert_with(|| {
            if hung {
                "its guest stopped answering, so the VM was killed".to_owned()
            } else {
                "the pod was stopped".to_owned()
            }
        });
        tasks.sandbox_exit = Some(128 + signal);
        let (done, stopped) = watch::channel(false);
        tasks.stopped = Some(stopped.clone());
        tokio::spawn(self.clone().stop_vm(vm, hung, done));
        Some(stopped)
    }

    /// Stops the VM as [`Pod::begin_stop`] does, and returns once it has stopped and every
    /// process has been reported exited, whoever began the stop.
    async fn stop_sandbox(self: &Arc<Self>, signal: u32, hung: bool) {
        if let Some(mut stopped) = self.begin_stop(signal, hung).await {
            // Err: the stopping task is gone, which only a panic does; nothing is left to
            // wait for.
            let _ = stopped.wait_for(|done| *done).await;
        }
    }

    /// Stops `vm`, then reports every process as exited and signals `done`.
    async fn stop_vm(self: Arc<Self>, vm: RunningVm, hung: bool, done: watch::Sender<bool>) {
        if hung {
            vm.kill().await;
        } else {
            vm.stop().await;
        }
        let (ios, exits) = self.tasks.lock().await.exit_all(true);
        close_all(ios).await;
        for e in exits {
            self.publish_exit(&e.id, e.exec_id.as_deref(), e.pid, e.exit)
                .await;
        }
        done.send_replace(true);
    }

    pub(crate) async fn create(
        self: &Arc<Self>,
        req: CreateTaskRequest,
    ) -> Result<CreateTaskResponse> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = BundleSpec::load(&bundle)?;
        let pid = if spec.is_sandbox() {
            self.create_sandbox(&req, &bundle, &spec).await?
        } else {
            self.create_workload(&req, &bundle, &spec).await?
        };
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn create_sandbox(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        bundle: &std::path::Path,
        spec: &BundleSpec,
    ) -> Result<u32> {
        if self.tasks.lock().await.sandbox.is_some() {
            return Err(Error::AlreadyExists(format!(
                "a sandbox in this shim (asked to create sandbox {})",
                req.id
            )));
        }
        // The lock is not held while the VM boots (seconds to minutes): nothing else can use
        // the tasks before its sandbox exists anyway.
        let (sandbox, events) =
            Sandbox::create(&req.id, bundle, spec, req.options.as_ref()).await?;
        let pid = sandbox.pid();
        let mut init = Process::new(None, &req.stdin, &req.stdout, &req.stderr);
        init.pid = pid;
        // The pause process's stdio is not used: the VM is the sandbox.
        let container = Container {
            id: req.id.clone(),
            bundle: bundle.to_path_buf(),
            kind: Kind::Sandbox,
            init,
            execs: HashMap::new(),
            rootfs: None,
            in_guest: false,
        };
        {
            let mut tasks = self.tasks.lock().await;
            tasks.sandbox = Some(sandbox);
            tasks.containers.insert(req.id.clone(), container);
        }
        tokio::spawn(self.clone().follow_events(events));
        Ok(pid)
    }

    async fn create_workload(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        bundle: &std::path::Path,
        spec: &BundleSpec,
    ) -> Result<u32> {
        // The id becomes a directory name in the share.
        crate::state::check_id(&req.id)?;
        let sandbox_id = spec.sandbox_id(&req.id);
        let mut process = spec.process()?;
        process.terminal |= req.terminal;
        process.stdin = !req.stdin.is_empty();
        let terminal = process.terminal;
        let (agent, share_dir, hostname) = {
            let mut tasks = self.tasks.lock().await;
            let Some(sandbox) = tasks.sandbox.as_ref().filter(|s| s.id == sandbox_id) else {
                let why = tasks.vm_gone.as_deref().map_or_else(
                    || "is not running (it stopped, or its shim exited)".to_owned(),
                    |why| format!("has stopped: {why}"),
                );
                return Err(Error::FailedPrecondition(format!(
                    "sandbox {sandbox_id} of container {} {why}",
                    req.id
                )));
            };
            // containerd gives a container the pod's hostname through its /etc/hostname; its
            // UTS namespace (the VM's own) gets the same name.
            let hostname = spec.hostname().or_else(|| sandbox.hostname.clone());
            let share_dir = sandbox.share_dir.clone();
            if tasks.containers.contains_key(&req.id) || tasks.creating.contains(&req.id) {
                return Err(Error::AlreadyExists(format!("container {}", req.id)));
            }
            let agent = tasks.agent()?;
            tasks.creating.insert(req.id.clone());
            (agent, share_dir, hostname)
        };
        let created = self
            .create_in_guest(req, bundle, spec, &agent, share_dir, hostname, process)
            .await;
        let mut tasks = self.tasks.lock().await;
        tasks.creating.remove(&req.id);
        let (io, rootfs) = match created {
            Ok(created) => created,
            Err(e) => {
                drop(tasks);
                return Err(self.guest_failed(&req.id, e).await);
            }
        };
        if let Some(why) = tasks.vm_gone.clone() {
            // The VM went while the guest created the container: it has nothing to run in.
            drop(tasks);
            if let Some(Err(u)) = rootfs.as_ref().map(Rootfs::unmount) {
                tracing::warn!(container = %req.id, error = %u, "unmounting after a failed create");
            }
            io.close().await;
            return Err(Error::FailedPrecondition(format!(
                "container {}: the pod's VM is gone: {why}",
                req.id
            )));
        }
        let mut init = Process::new(None, &req.stdin, &req.stdout, &req.stderr);
        init.io = Some(io);
        init.terminal = terminal;
        tasks.containers.insert(
            req.id.clone(),
            Container {
                id: req.id.clone(),
                bundle: bundle.to_path_buf(),
                kind: Kind::Workload,
                init,
                execs: HashMap::new(),
                rootfs,
                in_guest: true,
            },
        );
        tracing::info!(container = %req.id, sandbox = %sandbox_id, "container created");
        Ok(0)
    }

    /// The host side of a container (its output, its shared root filesystem in host mode)
    /// and its creation in the guest; on failure, nothing of it is left on the host.
    #[allow(clippy::too_many_arguments)]
    async fn create_in_guest(
        &self,
        req: &CreateTaskRequest,
        bundle: &std::path::Path,
        spec: &BundleSpec,
        agent: &AgentClient,
        share_dir: Option<PathBuf>,
        hostname: Option<String>,
        process: coffer_agent::protocol::Process,
    ) -> std::result::Result<(ProcessIo, Option<Rootfs>), GuestFailure> {
        // Guest pull: the guest fetches the image itself; containerd's snapshot on the host is
        // never mounted or shown to the guest.
        let image = match &share_dir {
            Some(_) => None,
            None => Some(spec.image_name().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "container {} has no io.kubernetes.cri.image-name annotation, so the guest does not know which image to pull; this handler pulls images in the guest (rootfs = \"guest\") and needs containers created through the CRI",
                    req.id
                ))
            })?),
        };
        let files = spec.file_mounts()?;
        let oci = spec.oci_for_guest()?;
        // Checked now: stdin is only opened once the process runs, too late to refuse it.
        crate::io::stdio_path(&req.stdin)?;
        let io = ProcessIo::open(&req.stdout, &req.stderr)?;
        let rootfs = match &share_dir {
            Some(share_dir) => match Rootfs::mount(&req.rootfs, bundle, share_dir, &req.id).await {
                Ok(r) => Some(r),
                Err(e) => {
                    io.close().await;
                    return Err(e.into());
                }
            },
            None => None,
        };
        let create = CreateContainer {
            id: req.id.clone(),
            rootfs: rootfs.as_ref().map(|r| r.guest_path.clone()),
            image,
            hostname,
            process,
            resources: spec.resources(),
            files,
            masked_paths: spec.masked_paths(),
            readonly_paths: spec.readonly_paths(),
            readonly_root: spec.readonly_root(),
            oci,
        };
        if let Err(e) = agent.create_container(create).await {
            if let Some(Err(u)) = rootfs.as_ref().map(Rootfs::unmount) {
                tracing::warn!(container = %req.id, error = %u, "unmounting after a failed create");
            }
            io.close().await;
            return Err(GuestFailure::Guest(e));
        }
        Ok((io, rootfs))
    }

    /// The error for a failed guest call about `id`. A guest that did not answer within the
    /// call's deadline is hung: its VM is killed, and with it every process of the pod, so that
    /// containerd sees the pod end instead of a pod that accepts requests it never carries out.
    async fn guest_failed(self: &Arc<Self>, id: &str, failure: GuestFailure) -> Error {
        let e = match failure {
            GuestFailure::Host(e) => return e,
            GuestFailure::Guest(e) => e,
        };
        if matches!(e, ClientError::CallTimeout { .. }) {
            tracing::warn!(container = %id, error = %e, "the guest is hung; killing its VM");
            self.begin_stop(9, true).await;
        }
        e.into()
    }

    pub(crate) async fn start(self: &Arc<Self>, req: StartRequest) -> Result<StartResponse> {
        let exec = !req.exec_id.is_empty();
        let (agent, guest) = {
            let mut tasks = self.tasks.lock().await;
            let vm_gone = tasks.vm_gone.clone();
            let agent = tasks.agent();
            let container = tasks.container_mut(&req.id)?;
            let kind = container.kind;
            if kind == Kind::Workload {
                if let Some(why) = vm_gone {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot start task {} {}: the pod's VM is gone: {why}",
                        req.id, req.exec_id
                    )));
                }
            }
            let process = container.process_mut(&req.exec_id)?;
            if process.phase != Phase::Created || process.starting {
                return Err(Error::FailedPrecondition(format!(
                    "task {} {} was already started",
                    req.id, req.exec_id
                )));
            }
            match kind {
                Kind::Sandbox if exec => {
                    return Err(Error::Unsupported("exec in the sandbox (pause) container"))
                }
                Kind::Sandbox => {
                    // The VM is the sandbox's process, and it runs already.
                    process.phase = Phase::Running;
                    let pid = process.pid;
                    self.publish_start(&req, pid).await;
                    return Ok(StartResponse {
                        pid,
                        ..Default::default()
                    });
                }
                Kind::Workload => {}
            }
            let agent = agent?;
            let guest = if exec {
                Some(process.guest.take().ok_or_else(|| {
                    Error::FailedPrecondition(format!("exec {} has no process", req.exec_id))
                })?)
            } else {
                None
            };
            process.starting = true;
            (agent, guest)
        };

        let started = match guest {
            None => agent.start(&req.id).await,
            Some(guest) => agent.exec(&req.id, &req.exec_id, guest).await,
        };

        let mut tasks = self.tasks.lock().await;
        let vm_pid = tasks.sandbox.as_ref().map_or(0, Sandbox::pid);
        let Ok(process) = tasks
            .container_mut(&req.id)
            .and_then(|c| c.process_mut(&req.exec_id))
        else {
            return Err(Error::NotFound(format!(
                "task {} {} was deleted while it started",
                req.id, req.exec_id
            )));
        };
        let guest_pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                let held = process.finish_start();
                drop(tasks);
                if let Some(exit) = held {
                    let exec_id = exec.then_some(req.exec_id.as_str());
                    self.publish_exit(&req.id, exec_id, 0, exit).await;
                }
                return Err(self.guest_failed(&req.id, GuestFailure::Guest(e)).await);
            }
        };
        // Only now does the guest know the process its stdin goes to.
        let target = StdinTarget {
            agent,
            id: req.id.clone(),
            exec_id: exec.then(|| req.exec_id.clone()),
        };
        if let Some(io) = process.io.as_mut() {
            // The path was checked at create or exec, and the process runs now: a failure here
            // leaves it reading nothing rather than failing its start.
            if let Err(e) = io.start_stdin(&process.stdin, target) {
                tracing::warn!(container = %req.id, exec = %req.exec_id, error = %e, "stdin not forwarded");
            }
        }
        // A guest pid means nothing on the host, and containerd treats a task's pid as a host
        // process: it is told the VM's, as Kata's shim does.
        tracing::info!(container = %req.id, exec = %req.exec_id, guest_pid, vm_pid, "process started in the guest");
        process.pid = vm_pid;
        if process.phase == Phase::Created {
            process.phase = Phase::Running;
        }
        drop(tasks);
        // Still `starting`: an exit reported now waits until containerd has the start.
        self.publish_start(&req, vm_pid).await;
        let held = self
            .tasks
            .lock()
            .await
            .process_mut(&req.id, exec.then_some(req.exec_id.as_str()))
            .and_then(Process::finish_start);
        if let Some(exit) = held {
            // The guest reported the exit while the start was under way.
            let exec_id = exec.then_some(req.exec_id.as_str());
            self.publish_exit(&req.id, exec_id, vm_pid, exit).await;
        }
        Ok(StartResponse {
            pid: vm_pid,
            ..Default::default()
        })
    }

    /// Tells containerd that the process `req` names started.
    async fn publish_start(&self, req: &StartRequest, pid: u32) {
        if req.exec_id.is_empty() {
            let event = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event))
                .await;
        } else {
            let event = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event))
                .await;
        }
    }

    pub(crate) async fn exec(&self, req: ExecProcessRequest) -> Result<()> {
        let json = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| Error::InvalidArgument("exec request without a process spec".into()))?;
        let mut tasks = self.tasks.lock().await;
        let container = tasks.container_mut(&req.id)?;
        if container.kind == Kind::Sandbox {
            return Err(Error::Unsupported("exec in the sandbox (pause) container"));
        }
        if container.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} in container {}",
                req.exec_id, req.id
            )));
        }
        // The exec'd process is confined by its container's seccomp profile, as runc does.
        let container_spec = BundleSpec::load(&container.bundle)?;
        let mut guest = spec::exec_process(&json, container_spec.seccomp())?;
        guest.terminal |= req.terminal;
        guest.stdin = !req.stdin.is_empty();
        let mut process = Process::new(
            Some(req.exec_id.clone()),
            &req.stdin,
            &req.stdout,
            &req.stderr,
        );
        process.terminal = guest.terminal;
        process.guest = Some(guest);
        crate::io::stdio_path(&req.stdin)?;
        process.io = Some(ProcessIo::open(&req.stdout, &req.stderr)?);
        container.execs.insert(req.exec_id.clone(), process);
        drop(tasks);
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(())
    }

    pub(crate) async fn kill(self: &Arc<Self>, req: KillRequest) -> Result<()> {
        let tasks = self.tasks.lock().await;
        let container = tasks.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        if process.exit().is_some() {
            // Already gone: what the signal was meant to achieve has happened.
            return Ok(());
        }
        if container.kind == Kind::Sandbox {
            tracing::info!(sandbox = %req.id, signal = req.signal, "stopping the sandbox VM");
            drop(tasks);
            self.begin_stop(req.signal, false).await;
            return Ok(());
        }
        if process.phase == Phase::Created {
            return Err(Error::FailedPrecondition(format!(
                "task {} {} is not running",
                req.id, req.exec_id
            )));
        }
        let exit = process.subscribe();
        let agent = tasks.agent()?;
        let exec_id = (!req.exec_id.is_empty()).then_some(req.exec_id.as_str());
        let signal = i32::try_from(req.signal).map_err(|_| {
            Error::InvalidArgument(format!("signal {} is out of range", req.signal))
        })?;
        drop(tasks);
        if signal == libc::SIGKILL {
            self.expect_exit(&req.id, exit);
        }
        match agent.signal(&req.id, exec_id, signal).await {
            Err(e @ ClientError::CallTimeout { .. }) => {
                // A guest that cannot take a signal cannot end anything: its VM goes, and with
                // it every process of the pod, as containerd expects after a kill.
                tracing::warn!(container = %req.id, error = %e, "the guest is hung; killing its VM");
                self.begin_stop(9, true).await;
                Ok(())
            }
            // The connection is gone, and with it the VM's processes: their exits are on
            // their way (see `follow_events`), which is what a kill asks for.
            Err(ClientError::Disconnected | ClientError::Broken { .. }) => Ok(()),
            result => Ok(result?),
        }
    }

    /// A process sent SIGKILL cannot outlive it: a guest that does not report its exit within
    /// [`KILL_EXIT_GRACE`] is hung or lying, and its VM goes, so that containerd, which waits
    /// for the exit, is not kept waiting by the guest.
    fn expect_exit(self: &Arc<Self>, id: &str, exit: tokio::sync::watch::Receiver<Option<Exit>>) {
        let pod = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            if tokio::time::timeout(KILL_EXIT_GRACE, wait_exit(exit))
                .await
                .is_err()
            {
                tracing::warn!(container = %id, grace = ?KILL_EXIT_GRACE, "the guest did not report the exit of a killed process; killing its VM");
                pod.begin_stop(9, true).await;
            }
        });
    }

    pub(crate) async fn wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let rx = {
            let tasks = self.tasks.lock().await;
            let container = tasks.container(&req.id)?;
            container.process(&req.exec_id)?.subscribe()
        };
        let exit = wait_exit(rx).await.ok_or_else(|| {
            Error::NotFound(format!(
                "task {} {} was deleted while waiting",
                req.id, req.exec_id
            ))
        })?;
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    pub(crate) async fn delete(self: &Arc<Self>, req: DeleteRequest) -> Result<DeleteResponse> {
        let mut tasks = self.tasks.lock().await;
        let container = tasks.container_mut(&req.id)?;
        if !req.exec_id.is_empty() {
            let process = container.process(&req.exec_id)?;
            if matches!(process.phase, Phase::Running | Phase::Paused) {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} in container {} is still running",
                    req.exec_id, req.id
                )));
            }
            let process = container.execs.remove(&req.exec_id);
            let (pid, exit) = process.map_or((0, None), |p| (p.pid, p.exit()));
            return Ok(delete_response(pid, exit));
        }
        if container.kind == Kind::Workload
            && matches!(container.init.phase, Phase::Running | Phase::Paused)
        {
            return Err(Error::FailedPrecondition(format!(
                "container {} is still running; kill it first",
                req.id
            )));
        }
        let kind = container.kind;
        if kind == Kind::Sandbox {
            // Also waits for a stop under way, and reaps a VM that exited by itself.
            drop(tasks);
            self.stop_sandbox(9, false).await;
            tasks = self.tasks.lock().await;
        }
        let Some(container) = tasks.containers.remove(&req.id) else {
            return Err(Error::NotFound(format!("task {}", req.id)));
        };
        match kind {
            Kind::Workload => {
                let agent = match container.in_guest {
                    true => tasks.agent().ok(),
                    false => None,
                };
                drop(tasks);
                if let Some(agent) = agent {
                    if let Err(e) = agent.remove(&container.id).await {
                        // The VM may be gone already; the host side is cleaned regardless.
                        tracing::debug!(container = %container.id, error = %e, "guest remove");
                    }
                }
                if let Some(rootfs) = &container.rootfs {
                    rootfs.unmount()?;
                }
            }
            Kind::Sandbox => {
                if let Some(sandbox) = tasks.sandbox.take() {
                    // Containers still listed lose their share when the state goes.
                    sandbox.remove_state()?;
                    tracing::info!(sandbox = %sandbox.id, "sandbox removed");
                }
                drop(tasks);
            }
        }
        let exit = container.init.exit();
        let pid = container.init.pid;
        let event = TaskDelete {
            container_id: req.id.clone(),
            pid,
            exit_status: exit.map_or(0, |e| e.code),
            exited_at: exit.map_or_else(MessageField::none, |e| MessageField::some(e.timestamp())),
            id: req.id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(delete_response(pid, exit))
    }

    pub(crate) async fn resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let tasks = self.tasks.lock().await;
        let container = tasks.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let name = if req.exec_id.is_empty() {
            format!("task {}", req.id)
        } else {
            format!("exec {} in task {}", req.exec_id, req.id)
        };
        if !process.terminal {
            return Err(Error::FailedPrecondition(format!(
                "{name} has no terminal to resize; create it with terminal: true"
            )));
        }
        if process.phase != Phase::Running {
            return Err(Error::FailedPrecondition(format!("{name} is not running")));
        }
        let agent = tasks.agent()?;
        drop(tasks);
        // Sizes past u16 are no terminal's; the kernel's field is 16 bits.
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let exec_id = (!req.exec_id.is_empty()).then_some(req.exec_id.as_str());
        agent
            .resize_pty(&req.id, exec_id, clamp(req.width), clamp(req.height))
            .await?;
        Ok(())
    }

    pub(crate) async fn close_io(&self, req: CloseIORequest) -> Result<()> {
        if !req.stdin {
            return Ok(());
        }
        let mut tasks = self.tasks.lock().await;
        let container = tasks.container_mut(&req.id)?;
        let process = container.process_mut(&req.exec_id)?;
        if let Some(io) = process.io.as_mut() {
            io.close_stdin();
        }
        Ok(())
    }

    pub(crate) async fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let tasks = self.tasks.lock().await;
        let container = tasks.container(&req.id)?;
        Ok(container
            .process(&req.exec_id)?
            .state(&req.id, &container.bundle_str()))
    }

    /// The guest-side figures of a container (of every container, summed, for the sandbox),
    /// in containerd's cgroup v2 metrics.
    pub(crate) async fn stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        let (agent, ids) = {
            let tasks = self.tasks.lock().await;
            let container = tasks.container(&req.id)?;
            let ids: Vec<String> = match container.kind {
                Kind::Workload => vec![req.id.clone()],
                Kind::Sandbox => tasks
                    .containers
                    .values()
                    .filter(|c| c.kind == Kind::Workload && c.init.phase == Phase::Running)
                    .map(|c| c.id.clone())
                    .collect(),
            };
            (tasks.agent()?, ids)
        };
        let mut figures = Vec::with_capacity(ids.len());
        for id in &ids {
            figures.push(agent.stats(id).await?);
        }
        let metrics = crate::metrics::cgroup_v2(&figures);
        Ok(StatsResponse {
            stats: MessageField::some(crate::metrics::to_any(&metrics)?),
            ..Default::default()
        })
    }

    /// Changes a container's limits in the guest (`crictl update`).
    pub(crate) async fn update(&self, req: UpdateTaskRequest) -> Result<()> {
        let agent = {
            let tasks = self.tasks.lock().await;
            let container = tasks.container(&req.id)?;
            if container.kind == Kind::Sandbox {
                // The VM's size is fixed at launch; containerd updates the sandbox with the
                // pod's totals, which the containers' own limits already enforce.
                return Ok(());
            }
            tasks.agent()?
        };
        let resources = match req.resources.as_ref() {
            Some(any) => crate::metrics::resources_from_any(any)?,
            None => return Ok(()),
        };
        agent.update_resources(&req.id, resources).await?;
        tracing::info!(container = %req.id, ?resources, "resources updated");
        Ok(())
    }

    /// Freezes (`pause`) or thaws a container's processes.
    pub(crate) async fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        let agent = {
            let tasks = self.tasks.lock().await;
            let container = tasks.container(id)?;
            if container.kind == Kind::Sandbox {
                return Err(Error::Unsupported("pausing the sandbox (pause) container"));
            }
            tasks.agent()?
        };
        agent.freeze(id, frozen).await?;
        {
            let mut tasks = self.tasks.lock().await;
            if let Some(p) = tasks.process_mut(id, None) {
                if p.phase == Phase::Running || p.phase == Phase::Paused {
                    p.phase = if frozen {
                        Phase::Paused
                    } else {
                        Phase::Running
                    };
                }
            }
        }
        if frozen {
            let event = TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            };
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event))
                .await;
        } else {
            let event = TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            };
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event))
                .await;
        }
        Ok(())
    }

    pub(crate) async fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let tasks = self.tasks.lock().await;
        let container = tasks.container(&req.id)?;
        let processes = std::iter::once(&container.init)
            .chain(container.execs.values())
            .filter(|p| p.phase == Phase::Running)
            .map(|p| ProcessInfo {
                pid: p.pid,
                ..Default::default()
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    /// Undoes a create whose answer nobody received (containerd went away while it ran), so
    /// that nothing is left that no containerd knows of: the container is removed, and a shim
    /// left without tasks stops its VM, removes its state and exits.
    pub(crate) async fn abandon_create(self: &Arc<Self>, id: &str, created: bool) {
        tracing::warn!(
            id,
            created,
            "containerd went away during the create; undoing it"
        );
        if created {
            // Out of the task table before anything is undone: containerd, once back, asks for
            // the task and must find none, not one that is still being stopped.
            let mut tasks = self.tasks.lock().await;
            if let Some(container) = tasks.containers.remove(id) {
                let agent = tasks.agent().ok().filter(|_| container.in_guest);
                drop(tasks);
                if container.kind == Kind::Sandbox {
                    self.stop_sandbox(9, false).await;
                } else if let Some(agent) = agent {
                    if let Err(e) = agent.remove(id).await {
                        tracing::debug!(container = id, error = %e, "guest remove");
                    }
                }
                if let Some(Err(e)) = container.rootfs.as_ref().map(Rootfs::unmount) {
                    tracing::warn!(container = id, error = %e, "unmounting an abandoned container");
                }
            }
        }
        if let Err(e) = self.shutdown().await {
            tracing::warn!(error = %e, "shutting down after an abandoned create");
        }
    }

    pub(crate) async fn shutdown(self: &Arc<Self>) -> Result<()> {
        {
            let tasks = self.tasks.lock().await;
            if !tasks.containers.is_empty() {
                // Other tasks still use this shim.
                return Ok(());
            }
        }
        self.stop_sandbox(9, false).await;
        let mut tasks = self.tasks.lock().await;
        if !tasks.containers.is_empty() {
            // A task was created while the VM stopped; it fails, but it is containerd's to
            // delete, and with it this shim.
            return Ok(());
        }
        if let Some(sandbox) = tasks.sandbox.take() {
            sandbox.remove_state()?;
        }
        drop(tasks);
        // The requests still in flight get their answers first: the server drops whatever is
        // left when the shim exits.
        let answered = tokio::time::timeout(REQUESTS_GRACE, self.requests.write()).await;
        if answered.is_err() {
            tracing::warn!(grace = ?REQUESTS_GRACE, "exiting with requests still unanswered");
        }
        self.exit.signal();
        Ok(())
    }
}

pub(crate) fn delete_response(pid: u32, exit: Option<Exit>) -> DeleteResponse {
    DeleteResponse {
        pid,
        exit_status: exit.map_or(0, |e| e.code),
        exited_at: exit.map_or_else(MessageField::none, |e| MessageField::some(e.timestamp())),
        ..Default::default()
    }
}
