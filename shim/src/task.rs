//! The task service: containerd's task API v2 over ttrpc, answered for the shim's pod.
//!
//! Each request is logged, handed to the [`Pod`], and its error turned into the ttrpc status
//! containerd expects. The same calls without ttrpc are public for in-process tests.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::TtrpcContext;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::Result as TtrpcResult;

use crate::error::Result;
use crate::pod::Pod;

/// The task service of one pod.
#[derive(Clone)]
pub struct TaskService {
    pod: Arc<Pod>,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("namespace", &self.pod.namespace)
            .finish_non_exhaustive()
    }
}

impl TaskService {
    /// A service publishing events to containerd through `publisher` (none in tests), ending
    /// the shim through `exit`.
    pub fn new(
        namespace: &str,
        publisher: Option<RemotePublisher>,
        exit: Arc<ExitSignal>,
    ) -> TaskService {
        TaskService {
            pod: Arc::new(Pod::new(namespace, publisher, exit)),
        }
    }
}

impl TaskService {
    /// Answers one request: counted as in flight until it has its result, so that the shim
    /// does not exit under it (see [`Pod::shutdown`]).
    async fn serve<T>(
        &self,
        op: &'static str,
        id: &str,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> TtrpcResult<T> {
        let _in_flight = self.pod.requests.read().await;
        answer(op, id, request.await)
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
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let id = req.id.clone();
        self.serve("state", &id, self.task_state(req)).await
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        tracing::info!(id, bundle = %req.bundle, "create");
        self.serve("create", &id, self.create_task(req)).await
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let id = req.id.clone();
        tracing::info!(id, exec = %req.exec_id, "start");
        self.serve("start", &id, self.start_task(req)).await
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let id = req.id.clone();
        tracing::info!(id, exec = %req.exec_id, "delete");
        self.serve("delete", &id, self.delete_task(req)).await
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let id = req.id.clone();
        self.serve("pids", &id, self.pod.pids(req)).await
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        tracing::info!(id, exec = %req.exec_id, signal = req.signal, "kill");
        self.serve("kill", &id, async {
            self.kill_task(req).await.map(|()| Empty::new())
        })
        .await
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        tracing::info!(id, exec = %req.exec_id, "exec");
        self.serve("exec", &id, async {
            self.exec_process(req).await.map(|()| Empty::new())
        })
        .await
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        self.serve("resize_pty", &id, async {
            self.resize_pty_task(req).await.map(|()| Empty::new())
        })
        .await
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        self.serve("close_io", &id, async {
            self.close_io_task(req).await.map(|()| Empty::new())
        })
        .await
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        tracing::info!(id, "update");
        self.serve("update", &id, async {
            self.pod.update(req).await.map(|()| Empty::new())
        })
        .await
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        tracing::info!(id = %req.id, "pause");
        self.serve("pause", &req.id, async {
            self.pod.freeze(&req.id, true).await.map(|()| Empty::new())
        })
        .await
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        tracing::info!(id = %req.id, "resume");
        self.serve("resume", &req.id, async {
            self.pod.freeze(&req.id, false).await.map(|()| Empty::new())
        })
        .await
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let id = req.id.clone();
        self.serve("wait", &id, self.wait_task(req)).await
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let id = req.id.clone();
        self.serve("stats", &id, self.pod.stats(req)).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let tasks = self.pod.tasks.lock().await;
        let task_pid = tasks.containers.get(&req.id).map_or(0, |c| c.init.pid);
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
impl TaskService {
    /// `Create`: the sandbox VM for a sandbox bundle, else a container in it.
    ///
    /// The create runs as a task of its own, not as part of the request: if containerd goes
    /// away mid-create (it crashed or restarts), the request is dropped, but the VM half booted
    /// must not vanish with its state left behind. The create finishes, and as nobody is told
    /// of it, the restarted containerd cannot know the task: it is undone (see
    /// [`Pod::abandon_create`]).
    pub async fn create_task(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let pod = self.pod.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let id = req.id.clone();
            let result = pod.create(req).await;
            if let Err(unanswered) = answer.send(result) {
                pod.abandon_create(&id, unanswered.is_ok()).await;
            }
        });
        answered.await.unwrap_or_else(|e| {
            Err(crate::error::Error::FailedPrecondition(format!(
                "the create did not finish: {e}"
            )))
        })
    }

    /// `Start` of a task or exec'd process.
    pub async fn start_task(&self, req: StartRequest) -> Result<StartResponse> {
        self.pod.start(req).await
    }

    /// `Exec`: registers a process to start in a container.
    pub async fn exec_process(&self, req: ExecProcessRequest) -> Result<()> {
        self.pod.exec(req).await
    }

    /// `Kill`: a signal to a process; for the sandbox, stops the VM.
    pub async fn kill_task(&self, req: KillRequest) -> Result<()> {
        self.pod.kill(req).await
    }

    /// `Wait` until a process exits.
    pub async fn wait_task(&self, req: WaitRequest) -> Result<WaitResponse> {
        self.pod.wait(req).await
    }

    /// `Delete` a task or exec'd process.
    pub async fn delete_task(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        self.pod.delete(req).await
    }

    /// `ResizePty`: the window size of a process's terminal.
    pub async fn resize_pty_task(&self, req: ResizePtyRequest) -> Result<()> {
        self.pod.resize_pty(req).await
    }

    /// `CloseIO`: closes a process's stdin once what was written so far is delivered.
    pub async fn close_io_task(&self, req: CloseIORequest) -> Result<()> {
        self.pod.close_io(req).await
    }

    /// `State` of a task or exec'd process.
    pub async fn task_state(&self, req: StateRequest) -> Result<StateResponse> {
        self.pod.state(req).await
    }

    /// `Shutdown`: ends the shim once no task is left.
    pub async fn shutdown_pod(&self) -> Result<()> {
        self.pod.shutdown().await
    }
}
