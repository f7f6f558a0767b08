//! The same CRI calls through a real `crictl`, for hosts that have one: what an operator types
//! is then tested too, not only what the CRI client sends.
//!
//! crictl reads pod and container configs from JSON files in the CRI's own (snake_case) field
//! names; this module writes them from a [`Pod`] and a [`Container`].

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::driver::{Container, ContainerState, Driver, ExecResult, Pod};
use crate::CriError;

/// A `crictl` bound to one CRI socket, with a scratch directory for its config files.
#[derive(Debug)]
pub struct Crictl {
    bin: PathBuf,
    endpoint: String,
    scratch: PathBuf,
    no_pull: bool,
}

impl Crictl {
    /// The crictl named by env `CRICTL`, else `crictl` on PATH; None when there is none.
    pub fn find() -> Option<PathBuf> {
        if let Some(named) = std::env::var_os("CRICTL").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(named));
        }
        crate::tools::on_path("crictl")
    }

    /// Uses `bin` against the CRI socket `socket`, writing config files into `scratch`.
    pub fn new(bin: PathBuf, socket: &Path, scratch: &Path) -> Result<Crictl, CriError> {
        std::fs::create_dir_all(scratch).map_err(|source| CriError::Log {
            path: scratch.to_path_buf(),
            source,
        })?;
        let mut crictl = Crictl {
            bin,
            endpoint: format!("unix://{}", socket.display()),
            scratch: scratch.to_path_buf(),
            no_pull: false,
        };
        // crictl before 1.29 pulls the image on create unless told not to; later releases
        // pull only when asked. No registry is reachable, so never pull.
        let help = crictl.run(&["create", "--help"])?;
        crictl.no_pull = help.contains("--no-pull");
        Ok(crictl)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--runtime-endpoint",
            &self.endpoint,
            "--image-endpoint",
            &self.endpoint,
            "--timeout",
            "300s",
        ]);
        cmd.args(args);
        cmd
    }

    /// Runs crictl with `args`; returns stdout, or the failure with crictl's stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, CriError> {
        let out = self
            .command(args)
            .output()
            .map_err(|source| CriError::Spawn {
                program: self.bin.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(CriError::Crictl {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn write_json(&self, name: &str, value: &Value) -> Result<PathBuf, CriError> {
        let path = self.scratch.join(name);
        std::fs::write(&path, value.to_string()).map_err(|source| CriError::Log {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    fn inspect_json(&self, args: &[&str]) -> Result<Value, CriError> {
        let text = self.run(args)?;
        serde_json::from_str(&text).map_err(|e| CriError::Output {
            args: args.join(" "),
            detail: e.to_string(),
        })
    }

    /// The pod config file crictl runp reads.
    pub fn pod_config(pod: &Pod) -> Value {
        let mut config = json!({
            "metadata": { "name": pod.name, "namespace": pod.namespace, "uid": pod.uid },
            "log_directory": pod.log_directory,
            "annotations": pod.annotations,
            // NamespaceMode: 0 POD, 2 NODE.
            "linux": { "security_context": { "namespace_options": {
                "network": if pod.host_network { 2 } else { 0 }
            } } },
        });
        if !pod.host_network {
            config["hostname"] = json!(pod.name);
        }
        if let Some(d) = &pod.dns {
            config["dns_config"] =
                json!({ "servers": d.servers, "searches": d.searches, "options": d.options });
        }
        if let Some(r) = pod.resources {
            config["linux"]["resources"] = json!({
                "memory_limit_in_bytes": r.memory_bytes,
                "cpu_quota": r.cpu_quota,
                "cpu_period": r.cpu_period,
            });
        }
        config
    }

    /// The container config file crictl create reads.
    pub fn container_config(container: &Container) -> Value {
        json!({
            "metadata": { "name": container.name },
            "image": { "image": container.image },
            "command": container.command,
            "log_path": container.log_path,
            "mounts": container.mounts.iter().map(|(host, path, readonly)| json!({
                "host_path": host, "container_path": path, "readonly": readonly
            })).collect::<Vec<_>>(),
        })
    }
}

/// N from crictl's "... exited with N: ..." message.
fn exited_with(stderr: &str) -> Option<i32> {
    let rest = &stderr[stderr.find("exited with ")? + "exited with ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn single_line(args: &[&str], out: &str) -> Result<String, CriError> {
    let id = out.trim();
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(CriError::Output {
            args: args.join(" "),
            detail: format!("expected one id, got {out:?}"),
        });
    }
    Ok(id.to_owned())
}

impl Driver for Crictl {
    fn name(&self) -> &'static str {
        "crictl"
    }

    fn run_pod(&mut self, pod: &Pod) -> Result<String, CriError> {
        std::fs::create_dir_all(&pod.log_directory).map_err(|source| CriError::Log {
            path: pod.log_directory.clone(),
            source,
        })?;
        let file = self.write_json(&format!("pod-{}.json", pod.name), &Crictl::pod_config(pod))?;
        let file = file.to_string_lossy().into_owned();
        let mut args = vec!["runp"];
        if !pod.handler.is_empty() {
            args.extend(["--runtime", pod.handler.as_str()]);
        }
        args.push(&file);
        let out = self.run(&args)?;
        single_line(&args, &out)
    }

    fn create_container(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        container: &Container,
    ) -> Result<String, CriError> {
        let pod_file =
            self.write_json(&format!("pod-{}.json", pod.name), &Crictl::pod_config(pod))?;
        let ctr_file = self.write_json(
            &format!("container-{}.json", container.name),
            &Crictl::container_config(container),
        )?;
        let (pod_file, ctr_file) = (
            pod_file.to_string_lossy().into_owned(),
            ctr_file.to_string_lossy().into_owned(),
        );
        let mut args = vec!["create"];
        if self.no_pull {
            args.push("--no-pull");
        }
        args.extend([pod_id, ctr_file.as_str(), pod_file.as_str()]);
        let out = self.run(&args)?;
        single_line(&args, &out)
    }

    fn start_container(&mut self, id: &str) -> Result<(), CriError> {
        self.run(&["start", id]).map(drop)
    }

    fn container_state(&mut self, id: &str) -> Result<ContainerState, CriError> {
        let args = ["inspect", "-o", "json", id];
        let v = self.inspect_json(&args)?;
        let status = &v["status"];
        Ok(match status["state"].as_str() {
            Some("CONTAINER_CREATED") => ContainerState::Created,
            Some("CONTAINER_RUNNING") => ContainerState::Running,
            Some("CONTAINER_EXITED") => {
                let code = status["exitCode"].as_i64().unwrap_or(0);
                ContainerState::Exited(i32::try_from(code).unwrap_or(i32::MIN))
            }
            _ => ContainerState::Unknown,
        })
    }

    fn pod_ready(&mut self, pod_id: &str) -> Result<bool, CriError> {
        let v = self.inspect_json(&["inspectp", "-o", "json", pod_id])?;
        Ok(v["status"]["state"].as_str() == Some("SANDBOX_READY"))
    }

    fn logs(&mut self, id: &str) -> Result<Vec<String>, CriError> {
        // `crictl logs` prints the container's stdout on its stdout and stderr on its stderr.
        let args = ["logs", id];
        let out = self
            .command(&args)
            .output()
            .map_err(|source| CriError::Spawn {
                program: self.bin.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(CriError::Crictl {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        Ok(stdout
            .lines()
            .chain(stderr.lines())
            .map(str::to_owned)
            .collect())
    }

    fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> Result<ExecResult, CriError> {
        let mut args = vec!["exec", "-s", id];
        args.extend_from_slice(cmd);
        let out = self
            .command(&args)
            .output()
            .map_err(|source| CriError::Spawn {
                program: self.bin.clone(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // crictl prints the command's stdout and then its stderr, each with a newline added,
        // all on its own stdout, and only when the command exits 0. Otherwise it fails with
        // "command '...' exited with N: <the command's stderr>" (recent releases exit with N
        // and say "non-zero exit code" instead).
        let exit_code = match out.status.code() {
            Some(0) => 0,
            Some(code) => exited_with(&stderr).unwrap_or(code),
            None => {
                return Err(CriError::Crictl {
                    args: args.join(" "),
                    status: out.status.to_string(),
                    stderr,
                })
            }
        };
        Ok(ExecResult {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code,
        })
    }

    fn exec_output_is_exact(&self) -> bool {
        false
    }

    fn stop_pod(&mut self, pod_id: &str) -> Result<(), CriError> {
        self.run(&["stopp", pod_id]).map(drop)
    }

    fn remove_pod(&mut self, pod_id: &str) -> Result<(), CriError> {
        self.run(&["rmp", pod_id]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_is_read_from_crictls_message() {
        let msg = "time=\"...\" level=fatal msg=\"execing command in container abc synchronously: \
                   command 'sh -c exit 7' exited with 7: oops\"";
        assert_eq!(exited_with(msg), Some(7));
        assert_eq!(exited_with("non-zero exit code"), None);
    }

    #[test]
    fn pod_config_uses_the_cri_field_names() {
        let pod = Pod::new("p", "coffer-qemu", Path::new("/logs")).annotation("k", "v");
        let v = Crictl::pod_config(&pod);
        assert_eq!(v["metadata"]["name"], "p");
        assert_eq!(v["log_directory"], "/logs/p");
        assert_eq!(v["annotations"]["k"], "v");
        // A pod on the CNI network (NamespaceMode POD) with its name as hostname...
        assert_eq!(
            v["linux"]["security_context"]["namespace_options"]["network"],
            0
        );
        assert_eq!(v["hostname"], "p");
        // ...and a host-network pod (NODE), which must not set one.
        let v = Crictl::pod_config(&pod.host_network());
        assert_eq!(
            v["linux"]["security_context"]["namespace_options"]["network"],
            2
        );
        assert!(v.get("hostname").is_none());
    }
}
