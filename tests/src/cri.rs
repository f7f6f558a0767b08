//! A CRI client making the calls crictl makes, over containerd's unix socket.
//!
//! Blocking methods (each call drives a private single-threaded tokio runtime), so tests stay
//! plain `#[test]` functions. Every call has a generous bound so a hung runtime fails the test
//! with a message instead of hanging CI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::driver::{parse_cri_log, Container, ContainerState, Driver, ExecResult, Pod};

/// Bound on a call that may boot a VM (RunPodSandbox under TCG emulation takes seconds).
const SLOW_CALL: Duration = Duration::from_secs(300);
/// Bound on every other call.
const CALL: Duration = Duration::from_secs(120);
/// Timeout ExecSync passes to the runtime, in seconds.
const EXEC_TIMEOUT_SECS: i64 = 60;

/// Why a CRI (or crictl) call failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The tokio runtime for the client could not be built.
    #[error("cannot start the CRI client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The socket did not accept a gRPC connection.
    #[error("cannot connect to the CRI at {}: {source}; is the private containerd up?", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// What tonic reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered with an error status (what crictl prints as `rpc error: ...`).
    #[error("{call}: rpc error: code = {code:?} desc = {message}")]
    Rpc {
        /// The CRI method.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message, verbatim.
        message: String,
    },
    /// A call or a wait did not finish within its bound.
    #[error("gave up waiting for {what} after {limit:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        limit: Duration,
    },
    /// A response lacked a field the CRI always sets.
    #[error("{call}: the response has no {field}")]
    Incomplete {
        /// The CRI method.
        call: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A container's log file could not be read.
    #[error("cannot read the container log {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// crictl could not be run at all.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// crictl exited non-zero; its stderr carries the runtime's message.
    #[error("crictl {args} failed ({status}): {stderr}")]
    Crictl {
        /// The arguments, space separated.
        args: String,
        /// How it exited.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// crictl printed something this harness cannot read.
    #[error("cannot understand the output of crictl {args}: {detail}")]
    Output {
        /// The arguments, space separated.
        args: String,
        /// What was wrong.
        detail: String,
    },
}

impl CriError {
    /// The runtime's own message for an RPC failure (crictl's `desc = ...`), or the whole
    /// error text otherwise.
    pub fn message(&self) -> String {
        match self {
            CriError::Rpc { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// A connection to a CRI runtime and image service.
#[derive(Debug)]
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// The last sandbox config sent per sandbox id: CreateContainer needs it again.
    sandboxes: HashMap<String, api::PodSandboxConfig>,
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
    move |status| CriError::Rpc {
        call,
        code: status.code(),
        message: status.message().to_owned(),
    }
}

impl Cri {
    /// Connects to the CRI on the unix socket `socket`.
    pub fn connect(socket: &Path) -> Result<Cri, CriError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let path = socket.to_path_buf();
        let channel = rt.block_on(async {
            // The URI is required by tonic but unused: the connector dials the socket.
            let endpoint = Endpoint::from_static("http://[::]").connect_timeout(CALL);
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
        });
        let channel = channel.map_err(|source| CriError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            sandboxes: HashMap::new(),
        })
    }

    fn call<T>(
        &self,
        name: &'static str,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        // The timer must be created inside the runtime, hence the async block.
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await })
        {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(rpc(name)(status)),
            Err(_) => Err(CriError::Timeout {
                what: format!("{name} to answer"),
                limit,
            }),
        }
    }

    /// `crictl version`.
    pub fn version(&mut self) -> Result<api::VersionResponse, CriError> {
        let mut c = self.runtime.clone();
        self.call("Version", CALL, c.version(api::VersionRequest::default()))
    }

    /// `crictl info`: the runtime's status; with `verbose` the `info` map carries the CRI
    /// plugin's whole configuration as JSON under the key `config`.
    pub fn status(&mut self, verbose: bool) -> Result<api::StatusResponse, CriError> {
        let mut c = self.runtime.clone();
        self.call("Status", CALL, c.status(api::StatusRequest { verbose }))
    }

    /// `crictl images`: the image references the CRI knows.
    pub fn list_images(&mut self) -> Result<Vec<String>, CriError> {
        let mut c = self.images.clone();
        let resp = self.call(
            "ListImages",
            CALL,
            c.list_images(api::ListImagesRequest::default()),
        )?;
        Ok(resp.images.into_iter().flat_map(|i| i.repo_tags).collect())
    }

    /// The CRI sandbox config for `pod`, as crictl builds it from a pod config file.
    pub fn sandbox_config(pod: &Pod) -> api::PodSandboxConfig {
        let network = if pod.host_network {
            api::NamespaceMode::Node
        } else {
            api::NamespaceMode::Pod
        };
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            // A host-network pod must not set a hostname (the CRI refuses it).
            hostname: if pod.host_network {
                String::new()
            } else {
                pod.name.clone()
            },
            log_directory: pod.log_directory.to_string_lossy().into_owned(),
            dns_config: pod.dns.as_ref().map(|d| api::DnsConfig {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            }),
            annotations: pod
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption {
                        network: network as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                resources: pod.resources.map(|r| api::LinuxContainerResources {
                    memory_limit_in_bytes: r.memory_bytes,
                    cpu_quota: r.cpu_quota,
                    cpu_period: r.cpu_period,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with the handler and annotations of `pod`; returns the sandbox id.
    pub fn run_pod_sandbox(&mut self, pod: &Pod) -> Result<String, CriError> {
        // containerd creates the log directory itself only in some versions.
        std::fs::create_dir_all(&pod.log_directory).map_err(|source| CriError::Log {
            path: pod.log_directory.clone(),
            source,
        })?;
        let config = Cri::sandbox_config(pod);
        let mut c = self.runtime.clone();
        let resp = self.call(
            "RunPodSandbox",
            SLOW_CALL,
            c.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: pod.handler.clone(),
            }),
        )?;
        self.sandboxes.insert(resp.pod_sandbox_id.clone(), config);
        Ok(resp.pod_sandbox_id)
    }

    /// PodSandboxStatus.
    pub fn pod_sandbox_status(&mut self, pod_id: &str) -> Result<api::PodSandboxStatus, CriError> {
        let mut c = self.runtime.clone();
        let resp = self.call(
            "PodSandboxStatus",
            CALL,
            c.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.to_owned(),
                verbose: false,
            }),
        )?;
        resp.status.ok_or(CriError::Incomplete {
            call: "PodSandboxStatus",
            field: "status",
        })
    }

    /// ListPodSandbox: the ids of every sandbox the runtime knows.
    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<String>, CriError> {
        let mut c = self.runtime.clone();
        let resp = self.call(
            "ListPodSandbox",
            CALL,
            c.list_pod_sandbox(api::ListPodSandboxRequest { filter: None }),
        )?;
        Ok(resp.items.into_iter().map(|s| s.id).collect())
    }

    /// ListContainers: the ids of every container the runtime knows.
    pub fn list_containers(&mut self) -> Result<Vec<String>, CriError> {
        let mut c = self.runtime.clone();
        let resp = self.call(
            "ListContainers",
            CALL,
            c.list_containers(api::ListContainersRequest { filter: None }),
        )?;
        Ok(resp.containers.into_iter().map(|s| s.id).collect())
    }

    /// CreateContainer in the sandbox `pod_id` (run from `pod`); returns the container id.
    pub fn create_container(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        container: &Container,
    ) -> Result<String, CriError> {
        let sandbox_config = self
            .sandboxes
            .get(pod_id)
            .cloned()
            .unwrap_or_else(|| Cri::sandbox_config(pod));
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: container.name.clone(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: container.image.clone(),
                ..Default::default()
            }),
            command: container.command.clone(),
            log_path: container.log_path.clone(),
            mounts: container
                .mounts
                .iter()
                .map(|(host, path, readonly)| api::Mount {
                    container_path: path.clone(),
                    host_path: host.to_string_lossy().into_owned(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            linux: (container.security.is_some() || container.memory_limit.is_some()).then(|| {
                api::LinuxContainerConfig {
                    resources: container
                        .memory_limit
                        .map(|m| api::LinuxContainerResources {
                            memory_limit_in_bytes: m,
                            ..Default::default()
                        }),
                    ..linux_security(container.security.as_ref())
                }
            }),
            ..Default::default()
        };
        let mut c = self.runtime.clone();
        let resp = self.call(
            "CreateContainer",
            CALL,
            c.create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod_id.to_owned(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }),
        )?;
        Ok(resp.container_id)
    }

    /// StartContainer.
    pub fn start_container(&mut self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "StartContainer",
            CALL,
            c.start_container(api::StartContainerRequest {
                container_id: id.to_owned(),
            }),
        )?;
        Ok(())
    }

    /// ContainerStatus.
    pub fn container_status(&mut self, id: &str) -> Result<api::ContainerStatus, CriError> {
        let mut c = self.runtime.clone();
        let resp = self.call(
            "ContainerStatus",
            CALL,
            c.container_status(api::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            }),
        )?;
        resp.status.ok_or(CriError::Incomplete {
            call: "ContainerStatus",
            field: "status",
        })
    }

    /// ContainerStats: CPU time used (ns) and the memory working set (bytes), as `crictl
    /// stats` shows them.
    pub fn container_stats(&mut self, id: &str) -> Result<(u64, u64), CriError> {
        let mut c = self.runtime.clone();
        let resp = self.call(
            "ContainerStats",
            CALL,
            c.container_stats(api::ContainerStatsRequest {
                container_id: id.to_owned(),
            }),
        )?;
        let stats = resp.stats.ok_or(CriError::Incomplete {
            call: "ContainerStats",
            field: "stats",
        })?;
        let cpu = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        Ok((cpu, memory))
    }

    /// UpdateContainerResources with a new memory limit, as `crictl update --memory`.
    pub fn update_memory_limit(&mut self, id: &str, bytes: i64) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "UpdateContainerResources",
            CALL,
            c.update_container_resources(api::UpdateContainerResourcesRequest {
                container_id: id.to_owned(),
                linux: Some(api::LinuxContainerResources {
                    memory_limit_in_bytes: bytes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )?;
        Ok(())
    }

    /// Reads the container's CRI log file (the path ContainerStatus reports) and returns its
    /// content lines, as `crictl logs` prints them.
    pub fn read_log(&mut self, id: &str) -> Result<Vec<String>, CriError> {
        let path = PathBuf::from(self.container_status(id)?.log_path);
        let text =
            std::fs::read_to_string(&path).map_err(|source| CriError::Log { path, source })?;
        Ok(parse_cri_log(&text))
    }

    /// ExecSync: runs `cmd` in the container and returns its output and exit code.
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> Result<ExecResult, CriError> {
        let mut c = self.runtime.clone();
        let resp = self.call(
            "ExecSync",
            CALL,
            c.exec_sync(api::ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                timeout: EXEC_TIMEOUT_SECS,
            }),
        )?;
        Ok(ExecResult {
            stdout: resp.stdout,
            stderr: resp.stderr,
            exit_code: resp.exit_code,
        })
    }

    /// Exec: asks for a streaming exec of `cmd` in the container (with a terminal when `tty`,
    /// reading stdin when `stdin`) and returns the URL of containerd's streaming server to
    /// attach to, as `crictl exec -it` does before it connects.
    pub fn exec_url(
        &mut self,
        id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let resp = self.call(
            "Exec",
            CALL,
            c.exec(api::ExecRequest {
                container_id: id.to_owned(),
                cmd: cmd.to_vec(),
                tty,
                stdin,
                stdout: true,
                // With a terminal, stderr is the terminal too.
                stderr: !tty,
            }),
        )?;
        Ok(resp.url)
    }

    /// StopContainer, giving it `grace` seconds.
    pub fn stop_container(&mut self, id: &str, grace: i64) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "StopContainer",
            CALL,
            c.stop_container(api::StopContainerRequest {
                container_id: id.to_owned(),
                timeout: grace,
            }),
        )?;
        Ok(())
    }

    /// StopPodSandbox.
    pub fn stop_pod_sandbox(&mut self, pod_id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "StopPodSandbox",
            SLOW_CALL,
            c.stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.to_owned(),
            }),
        )?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub fn remove_pod_sandbox(&mut self, pod_id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "RemovePodSandbox",
            SLOW_CALL,
            c.remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.to_owned(),
            }),
        )?;
        self.sandboxes.remove(pod_id);
        Ok(())
    }
}

impl Driver for Cri {
    fn name(&self) -> &'static str {
        "cri client"
    }

    fn run_pod(&mut self, pod: &Pod) -> Result<String, CriError> {
        self.run_pod_sandbox(pod)
    }

    fn create_container(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        container: &Container,
    ) -> Result<String, CriError> {
        Cri::create_container(self, pod_id, pod, container)
    }

    fn start_container(&mut self, id: &str) -> Result<(), CriError> {
        Cri::start_container(self, id)
    }

    fn container_state(&mut self, id: &str) -> Result<ContainerState, CriError> {
        let status = self.container_status(id)?;
        Ok(match api::ContainerState::try_from(status.state) {
            Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(api::ContainerState::ContainerExited) => ContainerState::Exited(status.exit_code),
            _ => ContainerState::Unknown,
        })
    }

    fn pod_ready(&mut self, pod_id: &str) -> Result<bool, CriError> {
        let status = self.pod_sandbox_status(pod_id)?;
        Ok(status.state == api::PodSandboxState::SandboxReady as i32)
    }

    fn logs(&mut self, id: &str) -> Result<Vec<String>, CriError> {
        self.read_log(id)
    }

    fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> Result<ExecResult, CriError> {
        Cri::exec_sync(self, id, cmd)
    }

    fn stop_pod(&mut self, pod_id: &str) -> Result<(), CriError> {
        self.stop_pod_sandbox(pod_id)
    }

    fn remove_pod(&mut self, pod_id: &str) -> Result<(), CriError> {
        self.remove_pod_sandbox(pod_id)
    }
}

/// The container config's security context as the harness asks for it (none when `None`).
fn linux_security(security: Option<&crate::ContainerSecurity>) -> api::LinuxContainerConfig {
    let Some(s) = security else {
        return api::LinuxContainerConfig::default();
    };
    api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            capabilities: Some(api::Capability {
                add_capabilities: s.add_capabilities.clone(),
                drop_capabilities: s.drop_capabilities.clone(),
                ..Default::default()
            }),
            no_new_privs: s.no_new_privs,
            seccomp: s.seccomp_runtime_default.then(|| api::SecurityProfile {
                profile_type: api::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
