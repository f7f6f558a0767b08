//! What a test asks of a CRI runtime, independent of whether the calls go through the
//! [`crate::Cri`] client or a real `crictl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::CriError;

/// The busybox image `packaging/dev/images.sh` builds and `up.sh` imports.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:latest";

/// A pod sandbox to run: what `crictl runp` reads from its pod config file.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Metadata name (also the base of the uid).
    pub name: String,
    /// Metadata namespace.
    pub namespace: String,
    /// Metadata uid.
    pub uid: String,
    /// The containerd runtime handler (`crictl runp --runtime`); empty means the default.
    pub handler: String,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
    /// Share the node's network namespace (NamespaceOption network=NODE): no CNI involved.
    pub host_network: bool,
    /// Where containerd writes the containers' CRI logs.
    pub log_directory: PathBuf,
    /// The sum of the containers' limits, as kubelet sends it in `LinuxPodSandboxConfig`:
    /// memory in bytes, CPU quota and period in µs.
    pub resources: Option<PodResources>,
    /// The pod's DNS configuration (`PodSandboxConfig.dns_config`).
    pub dns: Option<DnsConfig>,
}

/// A pod's DNS configuration, as kubelet sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// A pod's resource limits (`LinuxPodSandboxConfig.resources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodResources {
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// CFS quota in µs per period.
    pub cpu_quota: i64,
    /// CFS period in µs.
    pub cpu_period: i64,
}

impl Pod {
    /// A pod named `name` on `handler`, on the private CNI network, logging under
    /// `log_root/name`.
    pub fn new(name: &str, handler: &str, log_root: &Path) -> Pod {
        Pod {
            name: name.to_owned(),
            namespace: "coffer-e2e".to_owned(),
            uid: format!("{name}-uid"),
            handler: handler.to_owned(),
            annotations: BTreeMap::new(),
            host_network: false,
            log_directory: log_root.join(name),
            resources: None,
            dns: None,
        }
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Pod {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the pod's resource limits.
    pub fn resources(mut self, resources: PodResources) -> Pod {
        self.resources = Some(resources);
        self
    }

    /// Shares the node's network namespace instead of one CNI sets up.
    pub fn host_network(mut self) -> Pod {
        self.host_network = true;
        self
    }

    /// Sets the pod's DNS configuration.
    pub fn dns(mut self, dns: DnsConfig) -> Pod {
        self.dns = Some(dns);
        self
    }
}

/// A container to create in a pod: what `crictl create` reads from its container config file.
#[derive(Debug, Clone)]
pub struct Container {
    /// Metadata name.
    pub name: String,
    /// Image reference, already present in the private containerd.
    pub image: String,
    /// Entrypoint and arguments.
    pub command: Vec<String>,
    /// Log file, relative to the pod's log directory.
    pub log_path: String,
    /// Host paths mounted into the container, as kubelet asks: (host path, container path,
    /// read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// The container's security context (`linux.security_context`); only the CRI client
    /// sends it.
    pub security: Option<ContainerSecurity>,
    /// Its memory limit in bytes (`linux.resources.memory_limit_in_bytes`); only the CRI client
    /// sends it.
    pub memory_limit: Option<i64>,
}

/// What a test asks of a container's `LinuxContainerSecurityContext`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSecurity {
    /// Capabilities added to the runtime's defaults (`"SYS_TIME"`, as kubelet writes them).
    pub add_capabilities: Vec<String>,
    /// Capabilities dropped from them.
    pub drop_capabilities: Vec<String>,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// The runtime's default seccomp profile (RuntimeDefault) instead of none.
    pub seccomp_runtime_default: bool,
}

impl Container {
    /// Mounts `host` at `path` in the container.
    pub fn mount(mut self, host: &Path, path: &str, readonly: bool) -> Container {
        self.mounts
            .push((host.to_path_buf(), path.to_owned(), readonly));
        self
    }

    /// A busybox container running `sh -c script`.
    pub fn busybox_sh(name: &str, script: &str) -> Container {
        Container {
            name: name.to_owned(),
            image: BUSYBOX_IMAGE.to_owned(),
            command: vec!["sh".into(), "-c".into(), script.to_owned()],
            log_path: format!("{name}.log"),
            mounts: Vec::new(),
            security: None,
            memory_limit: None,
        }
    }

    /// Sets the container's security context.
    pub fn security(mut self, security: ContainerSecurity) -> Container {
        self.security = Some(security);
        self
    }
}

/// A container's state as the CRI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited with this code.
    Exited(i32),
    /// The runtime does not know.
    Unknown,
}

/// The result of ExecSync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Standard output, as bytes.
    pub stdout: Vec<u8>,
    /// Standard error, as bytes.
    pub stderr: Vec<u8>,
    /// Exit code of the command.
    pub exit_code: i32,
}

/// The CRI calls the scenarios make, as crictl names them in comments.
pub trait Driver {
    /// A short name for messages: "cri client" or "crictl".
    fn name(&self) -> &'static str;
    /// `crictl runp [--runtime H] pod.json`: returns the sandbox id.
    fn run_pod(&mut self, pod: &Pod) -> Result<String, CriError>;
    /// `crictl create POD container.json pod.json`: returns the container id.
    fn create_container(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        container: &Container,
    ) -> Result<String, CriError>;
    /// `crictl start ID`.
    fn start_container(&mut self, id: &str) -> Result<(), CriError>;
    /// `crictl inspect ID`: the container's state.
    fn container_state(&mut self, id: &str) -> Result<ContainerState, CriError>;
    /// `crictl inspectp ID`: whether the sandbox is ready.
    fn pod_ready(&mut self, pod_id: &str) -> Result<bool, CriError>;
    /// `crictl logs ID`: the lines the container wrote, stdout and stderr, without the CRI
    /// log prefix.
    fn logs(&mut self, id: &str) -> Result<Vec<String>, CriError>;
    /// `crictl exec -s ID CMD...`.
    fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> Result<ExecResult, CriError>;
    /// Whether [`exec_sync`](Self::exec_sync) returns the command's stdout and stderr exactly
    /// as the runtime sent them (true for the CRI client; crictl reformats them).
    fn exec_output_is_exact(&self) -> bool {
        true
    }
    /// `crictl stopp ID`.
    fn stop_pod(&mut self, pod_id: &str) -> Result<(), CriError>;
    /// `crictl rmp ID`.
    fn remove_pod(&mut self, pod_id: &str) -> Result<(), CriError>;

    /// Polls the container's state until it has exited, for at most `limit` (a bound on
    /// waiting, not an assertion on speed).
    fn wait_exited(&mut self, id: &str, limit: Duration) -> Result<i32, CriError> {
        let start = Instant::now();
        loop {
            let state = self.container_state(id)?;
            if let ContainerState::Exited(code) = state {
                return Ok(code);
            }
            if start.elapsed() > limit {
                return Err(CriError::Timeout {
                    what: format!("container {id} to exit (last state {state:?})"),
                    limit,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Parses a CRI container log file (`<RFC3339 time> <stream> <P|F> <content>` per line) into
/// its content lines, joining partial (`P`) lines.
pub fn parse_cri_log(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut partial = String::new();
    for raw in text.lines() {
        let mut fields = raw.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let content = fields.next().unwrap_or("");
        partial.push_str(content);
        if tag != "P" {
            lines.push(std::mem::take(&mut partial));
        }
    }
    if !partial.is_empty() {
        lines.push(partial);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_joined_and_unprefixed() {
        let text = "2026-01-01T00:00:00.1Z stdout F hello world\n\
                    2026-01-01T00:00:00.2Z stderr P par\n\
                    2026-01-01T00:00:00.3Z stderr F tial\n\
                    2026-01-01T00:00:00.4Z stdout F \n";
        assert_eq!(parse_cri_log(text), vec!["hello world", "partial", ""]);
    }
}
