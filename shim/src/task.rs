//! The task service: containerd's task API v2, answered for one pod.
//!
//! One shim process serves a whole pod (containers join their sandbox's shim), so the service
//! holds the pod: the sandbox VM and every task in it. Requests run concurrently; the pod's state
//! sits behind one async mutex, held across the short guest calls that change a task (so a
//! process's exit is never processed before its start has been recorded) and never across a
//! wait. A background task turns the guest's events into FIFO output and exit events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use coffer_agent::protocol::{CreateContainer, Event};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::TtrpcContext;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest,
    PidsResponse, ProcessInfo, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::ttrpc::Result as TtrpcResult;
use tokio::sync::Mutex;

use crate::container::{Container, Kind};
use crate::error::{Error, Result};
use crate::io::{close_all, ProcessIo, StdinTarget};
use crate::mount::Rootfs;
use crate::process::{wait_exit, Exit, Phase, Process};
use crate::sandbox::Sandbox;
use crate::spec::{self, BundleSpec};

/// Exit code reported for processes that were running when the VM went away unasked.
const VM_GONE_EXIT: u32 = 255;

/// The task service of one pod.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

struct Inner {
    namespace: String,
    publisher: Option<RemotePublisher>,
    exit: Arc<ExitSignal>,
    pod: Mutex<Pod>,
}

#[derive(Default)]
struct Pod {
    sandbox: Option<Sandbox>,
    containers: HashMap<String, Container>,
}

impl Service {
    /// A service publishing events to containerd through `publisher` (none in tests), ending
    /// the shim through `exit`.
    pub fn new(
        namespace: &str,
        publisher: Option<RemotePublisher>,
        exit: Arc<ExitSignal>,
    ) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                publisher,
                exit,
                pod: Mutex::new(Pod::default()),
            }),
        }
    }
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        if let Err(e) = publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, error = %e, "cannot publish event to containerd");
        }
    }

    async fn publish_exit(&self, container_id: &str, exec_id: Option<&str>, pid: u32, exit: Exit) {
        let event = TaskExit {
            container_id: container_id.to_string(),
            id: exec_id.unwrap_or(container_id).to_string(),
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// Records a process's exit once its output has been written out, then tells containerd.
    async fn process_exited(&self, id: &str, exec_id: Option<&str>, exit: Exit) {
        let io = {
            let mut pod = self.pod.lock().await;
            let Some(p) = pod
                .containers
                .get_mut(id)
                .and_then(|c| c.process_for_event(exec_id))
            else {
                return;
            };
            if p.exit().is_some() {
                return;
            }
            p.io.take()
        };
        // Output first: containerd reads the FIFOs to their end before it reports the exit
        // (ExecSync's result, the container log).
        if let Some(io) = io {
            io.close().await;
        }
        let pid = {
            let mut pod = self.pod.lock().await;
            let Some(p) = pod
                .containers
                .get_mut(id)
                .and_then(|c| c.process_for_event(exec_id))
            else {
                return;
            };
            if !p.set_exited(exit) {
                return;
            }
            p.pid
        };
        tracing::info!(container = id, exec = ?exec_id, code = exit.code, "process exited");
        self.publish_exit(id, exec_id, pid, exit).await;
    }

    /// Marks every process that has not exited as exited with `code` (the VM is gone), closing
    /// its output; returns what must be published.
    async fn all_exited(&self, code: u32) -> Vec<(String, Option<String>, u32, Exit)> {
        let mut ios = Vec::new();
        let mut exits = Vec::new();
        {
            let mut pod = self.pod.lock().await;
            for c in pod.containers.values_mut() {
                let id = c.id.clone();
                for p in std::iter::once(&mut c.init).chain(c.execs.values_mut()) {
                    if p.exit().is_some() {
                        continue;
                    }
                    ios.extend(p.io.take());
                    let exit = Exit::now(code);
                    p.set_exited(exit);
                    exits.push((id.clone(), p.exec_id.clone(), p.pid, exit));
                }
            }
        }
        close_all(ios).await;
        exits
    }

    /// Follows the guest's events until the agent connection closes.
    async fn follow_events(
        self: Arc<Self>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    ) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Output {
                    id,
                    exec_id,
                    stream,
                    data,
                } => {
                    let mut pod = self.pod.lock().await;
                    if let Some(io) = pod
                        .containers
                        .get_mut(&id)
                        .and_then(|c| c.process_for_event(exec_id.as_deref()))
                        .and_then(|p| p.io.as_mut())
                    {
                        io.write(stream, data);
                    }
                }
                Event::Exit {
                    id,
                    exec_id,
                    status,
                } => {
                    let code = u32::try_from(status.code).unwrap_or(VM_GONE_EXIT);
                    self.process_exited(&id, exec_id.as_deref(), Exit::now(code))
                        .await;
                }
            }
        }
        // The connection is gone: the VM stopped (asked or not). Whatever still ran is dead.
        tracing::info!("guest agent connection closed");
        for (id, exec_id, pid, exit) in self.all_exited(VM_GONE_EXIT).await {
            self.publish_exit(&id, exec_id.as_deref(), pid, exit).await;
        }
    }

    /// Stops the VM (if any is running) and reports every process as exited.
    async fn stop_sandbox(&self, pod: &mut Pod, signal: u32) {
        let Some(sandbox) = pod.sandbox.as_mut() else {
            return;
        };
        sandbox.stop_vm().await;
        let sandbox_id = sandbox.id.clone();
        let mut ios = Vec::new();
        let mut exits = Vec::new();
        for c in pod.containers.values_mut() {
            let code = if c.id == sandbox_id {
                128 + signal
            } else {
                VM_GONE_EXIT
            };
            let id = c.id.clone();
            for p in std::iter::once(&mut c.init).chain(c.execs.values_mut()) {
                if p.exit().is_none() {
                    ios.extend(p.io.take());
                    let exit = Exit::now(code);
                    p.set_exited(exit);
                    exits.push((id.clone(), p.exec_id.clone(), p.pid, exit));
                }
            }
        }
        close_all(ios).await;
        for (id, exec_id, pid, exit) in exits {
            self.publish_exit(&id, exec_id.as_deref(), pid, exit).await;
        }
    }

    async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
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
        if self.pod.lock().await.sandbox.is_some() {
            return Err(Error::AlreadyExists(format!(
                "a sandbox in this shim (asked to create sandbox {})",
                req.id
            )));
        }
        // The lock is not held while the VM boots (seconds to minutes): nothing else can use
        // the pod before its sandbox exists anyway.
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
            let mut pod = self.pod.lock().await;
            pod.sandbox = Some(sandbox);
            pod.containers.insert(req.id.clone(), container);
        }
        tokio::spawn(self.clone().follow_events(events));
        Ok(pid)
    }

    async fn create_workload(
        &self,
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
        let mut pod = self.pod.lock().await;
        let Some(sandbox) = pod.sandbox.as_ref().filter(|s| s.id == sandbox_id) else {
            return Err(Error::FailedPrecondition(format!(
                "sandbox {sandbox_id} of container {} is not running in this shim",
                req.id
            )));
        };
        if pod.containers.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        let agent = sandbox.agent.clone();
        let share_dir = sandbox.share_dir.clone();
        // Checked now: stdin is only opened once the process runs, too late to refuse it.
        crate::io::stdio_path(&req.stdin)?;
        let io = ProcessIo::open(&req.stdout, &req.stderr)?;
        let rootfs = Rootfs::mount(&req.rootfs, bundle, &share_dir, &req.id).await?;
        let create = CreateContainer {
            id: req.id.clone(),
            rootfs: rootfs.guest_path.clone(),
            hostname: spec.hostname(),
            process,
        };
        if let Err(e) = agent.create_container(create).await {
            if let Err(u) = rootfs.unmount() {
                tracing::warn!(container = %req.id, error = %u, "unmounting after a failed create");
            }
            io.close().await;
            return Err(e.into());
        }
        let mut init = Process::new(None, &req.stdin, &req.stdout, &req.stderr);
        init.io = Some(io);
        init.terminal = terminal;
        pod.containers.insert(
            req.id.clone(),
            Container {
                id: req.id.clone(),
                bundle: bundle.to_path_buf(),
                kind: Kind::Workload,
                init,
                execs: HashMap::new(),
                rootfs: Some(rootfs),
                in_guest: true,
            },
        );
        tracing::info!(container = %req.id, sandbox = %sandbox_id, "container created");
        Ok(0)
    }

    async fn start(&self, req: StartRequest) -> Result<StartResponse> {
        let mut pod = self.pod.lock().await;
        let agent = pod.sandbox.as_ref().map(|s| s.agent.clone());
        let container = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
        let kind = container.kind;
        let process = container.process_mut(&req.exec_id)?;
        if process.phase != Phase::Created {
            return Err(Error::FailedPrecondition(format!(
                "task {} {} was already started",
                req.id, req.exec_id
            )));
        }
        let pid = match (kind, req.exec_id.is_empty()) {
            (Kind::Sandbox, true) => process.pid,
            (Kind::Sandbox, false) => {
                return Err(Error::Unsupported("exec in the sandbox (pause) container"))
            }
            (Kind::Workload, exec) => {
                let agent = agent.ok_or_else(|| {
                    Error::FailedPrecondition("the sandbox VM is not running".into())
                })?;
                let pid = if exec {
                    agent.start(&req.id).await?
                } else {
                    let guest = process.guest.take().ok_or_else(|| {
                        Error::FailedPrecondition(format!("exec {} has no process", req.exec_id))
                    })?;
                    agent.exec(&req.id, &req.exec_id, guest).await?
                };
                // Only now does the guest know the process its stdin goes to.
                let target = StdinTarget {
                    agent,
                    id: req.id.clone(),
                    exec_id: (!exec).then(|| req.exec_id.clone()),
                };
                if let Some(io) = process.io.as_mut() {
                    // The path was checked at create or exec, and the process runs now: a
                    // failure here leaves it reading nothing rather than failing its start.
                    if let Err(e) = io.start_stdin(&process.stdin, target) {
                        tracing::warn!(container = %req.id, exec = %req.exec_id, error = %e, "stdin not forwarded");
                    }
                }
                pid
            }
        };
        process.pid = pid;
        process.phase = Phase::Running;
        // Published while the pod is locked, so the start reaches containerd before an exit
        // the guest may already have reported.
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
        drop(pod);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(&self, req: ExecProcessRequest) -> Result<()> {
        let json = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| Error::InvalidArgument("exec request without a process spec".into()))?;
        let mut guest = spec::exec_process(&json)?;
        guest.terminal |= req.terminal;
        guest.stdin = !req.stdin.is_empty();
        let mut pod = self.pod.lock().await;
        let container = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
        if container.kind == Kind::Sandbox {
            return Err(Error::Unsupported("exec in the sandbox (pause) container"));
        }
        if container.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} in container {}",
                req.exec_id, req.id
            )));
        }
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
        drop(pod);
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(())
    }

    async fn kill(&self, req: KillRequest) -> Result<()> {
        let mut pod = self.pod.lock().await;
        let container = pod
            .containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
        let process = container.process(&req.exec_id)?;
        if process.exit().is_some() {
            // Already gone: what the signal was meant to achieve has happened.
            return Ok(());
        }
        if container.kind == Kind::Sandbox {
            tracing::info!(sandbox = %req.id, signal = req.signal, "stopping the sandbox VM");
            self.stop_sandbox(&mut pod, req.signal).await;
            return Ok(());
        }
        if process.phase == Phase::Created {
            return Err(Error::FailedPrecondition(format!(
                "task {} {} is not running",
                req.id, req.exec_id
            )));
        }
        let agent = pod
            .sandbox
            .as_ref()
            .map(|s| s.agent.clone())
            .ok_or_else(|| Error::FailedPrecondition("the sandbox VM is not running".into()))?;
        let exec_id = (!req.exec_id.is_empty()).then_some(req.exec_id.as_str());
        let signal = i32::try_from(req.signal).map_err(|_| {
            Error::InvalidArgument(format!("signal {} is out of range", req.signal))
        })?;
        drop(pod);
        agent.signal(&req.id, exec_id, signal).await?;
        Ok(())
    }

    async fn wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let rx = {
            let pod = self.pod.lock().await;
            let container = pod
                .containers
                .get(&req.id)
                .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
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

    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let mut pod = self.pod.lock().await;
        let container = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
        if !req.exec_id.is_empty() {
            let process = container.process(&req.exec_id)?;
            if process.phase == Phase::Running {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} in container {} is still running",
                    req.exec_id, req.id
                )));
            }
            let process = container.execs.remove(&req.exec_id);
            let (pid, exit) = process.map_or((0, None), |p| (p.pid, p.exit()));
            return Ok(delete_response(pid, exit));
        }
        if container.kind == Kind::Workload && container.init.phase == Phase::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is still running; kill it first",
                req.id
            )));
        }
        let kind = container.kind;
        if kind == Kind::Sandbox && container.init.exit().is_none() {
            self.stop_sandbox(&mut pod, 9).await;
        }
        let Some(container) = pod.containers.remove(&req.id) else {
            return Err(Error::NotFound(format!("task {}", req.id)));
        };
        match kind {
            Kind::Workload => {
                if container.in_guest {
                    if let Some(agent) = pod.sandbox.as_ref().map(|s| s.agent.clone()) {
                        if let Err(e) = agent.remove(&container.id).await {
                            // The VM may be gone already; the host side is cleaned regardless.
                            tracing::debug!(container = %container.id, error = %e, "guest remove");
                        }
                    }
                }
                if let Some(rootfs) = &container.rootfs {
                    rootfs.unmount()?;
                }
            }
            Kind::Sandbox => {
                if let Some(sandbox) = pod.sandbox.take() {
                    // Containers still listed lose their share when the state goes.
                    sandbox.remove_state()?;
                    tracing::info!(sandbox = %sandbox.id, "sandbox removed");
                }
            }
        }
        drop(pod);
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

    async fn resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let pod = self.pod.lock().await;
        let container = pod
            .containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
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
        let agent = pod
            .sandbox
            .as_ref()
            .map(|s| s.agent.clone())
            .ok_or_else(|| Error::FailedPrecondition("the sandbox VM is not running".into()))?;
        drop(pod);
        // Sizes past u16 are no terminal's; the kernel's field is 16 bits.
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let exec_id = (!req.exec_id.is_empty()).then_some(req.exec_id.as_str());
        agent
            .resize_pty(&req.id, exec_id, clamp(req.width), clamp(req.height))
            .await?;
        Ok(())
    }

    async fn close_io(&self, req: CloseIORequest) -> Result<()> {
        if !req.stdin {
            return Ok(());
        }
        let mut pod = self.pod.lock().await;
        let container = pod
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
        let process = container.process_mut(&req.exec_id)?;
        if let Some(io) = process.io.as_mut() {
            io.close_stdin();
        }
        Ok(())
    }

    async fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let pod = self.pod.lock().await;
        let container = pod
            .containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
        Ok(container
            .process(&req.exec_id)?
            .state(&req.id, &container.bundle_str()))
    }

    async fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let pod = self.pod.lock().await;
        let container = pod
            .containers
            .get(&req.id)
            .ok_or_else(|| Error::NotFound(format!("task {}", req.id)))?;
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

    async fn shutdown(&self) -> Result<()> {
        let mut pod = self.pod.lock().await;
        if !pod.containers.is_empty() {
            // Other tasks of the pod still use this shim.
            return Ok(());
        }
        if pod.sandbox.is_some() {
            self.stop_sandbox(&mut pod, 9).await;
            if let Some(sandbox) = pod.sandbox.take() {
                sandbox.remove_state()?;
            }
        }
        self.exit.signal();
        Ok(())
    }
}

fn delete_response(pid: u32, exit: Option<Exit>) -> DeleteResponse {
    DeleteResponse {
        pid,
        exit_status: exit.map_or(0, |e| e.code),
        exited_at: exit.map_or_else(MessageField::none, |e| MessageField::some(e.timestamp())),
        ..Default::default()
    }
}

/// Logs a failed request with its message (containerd shows it too) and converts it.
fn answer<T>(op: &'static str, id: &str, r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        tracing::warn!(op, id, error = %e, "request failed");
        e.into()
    })
}

#[async_trait]
impl Task for Service {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let id = req.id.clone();
        answer("state", &id, self.task_state(req).await)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        tracing::info!(id, bundle = %req.bundle, "create");
        answer("create", &id, self.create_task(req).await)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let id = req.id.clone();
        tracing::info!(id, exec = %req.exec_id, "start");
        answer("start", &id, self.start_task(req).await)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let id = req.id.clone();
        tracing::info!(id, exec = %req.exec_id, "delete");
        answer("delete", &id, self.delete_task(req).await)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let id = req.id.clone();
        answer("pids", &id, self.inner.pids(req).await)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        tracing::info!(id, exec = %req.exec_id, signal = req.signal, "kill");
        answer(
            "kill",
            &id,
            self.kill_task(req).await.map(|()| Empty::new()),
        )
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        tracing::info!(id, exec = %req.exec_id, "exec");
        answer(
            "exec",
            &id,
            self.exec_process(req).await.map(|()| Empty::new()),
        )
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        answer(
            "resize_pty",
            &id,
            self.resize_pty_task(req).await.map(|()| Empty::new()),
        )
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        answer(
            "close_io",
            &id,
            self.close_io_task(req).await.map(|()| Empty::new()),
        )
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        answer(
            "update",
            &req.id,
            Err(Error::Unsupported("updating resources")),
        )
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let id = req.id.clone();
        answer("wait", &id, self.wait_task(req).await)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        answer("stats", &req.id, Err(Error::Unsupported("task statistics")))
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let pod = self.inner.pod.lock().await;
        let task_pid = pod.containers.get(&req.id).map_or(0, |c| c.init.pid);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        answer(
            "shutdown",
            "",
            self.shutdown_pod().await.map(|()| Empty::new()),
        )
    }
}

/// The task API without ttrpc: what the [`Task`] implementation calls, and what in-process
/// tests drive.
impl Service {
    /// `Create`: the sandbox VM for a sandbox bundle, else a container in it.
    pub async fn create_task(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        self.inner.create(req).await
    }

    /// `Start` of a task or exec'd process.
    pub async fn start_task(&self, req: StartRequest) -> Result<StartResponse> {
        self.inner.start(req).await
    }

    /// `Exec`: registers a process to start in a container.
    pub async fn exec_process(&self, req: ExecProcessRequest) -> Result<()> {
        self.inner.exec(req).await
    }

    /// `Kill`: a signal to a process; for the sandbox, stops the VM.
    pub async fn kill_task(&self, req: KillRequest) -> Result<()> {
        self.inner.kill(req).await
    }

    /// `Wait` until a process exits.
    pub async fn wait_task(&self, req: WaitRequest) -> Result<WaitResponse> {
        self.inner.wait(req).await
    }

    /// `Delete` a task or exec'd process.
    pub async fn delete_task(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        self.inner.delete(req).await
    }

    /// `ResizePty`: the window size of a process's terminal.
    pub async fn resize_pty_task(&self, req: ResizePtyRequest) -> Result<()> {
        self.inner.resize_pty(req).await
    }

    /// `CloseIO`: closes a process's stdin once what was written so far is delivered.
    pub async fn close_io_task(&self, req: CloseIORequest) -> Result<()> {
        self.inner.close_io(req).await
    }

    /// `State` of a task or exec'd process.
    pub async fn task_state(&self, req: StateRequest) -> Result<StateResponse> {
        self.inner.state(req).await
    }

    /// `Shutdown`: ends the shim once no task is left.
    pub async fn shutdown_pod(&self) -> Result<()> {
        self.inner.shutdown().await
    }
}
