//! What the shim reads from a bundle's OCI spec (`config.json`).
//!
//! containerd's CRI plugin marks each spec with annotations: the sandbox (pod) has
//! `io.kubernetes.cri.container-type: sandbox`, every container carries
//! `io.kubernetes.cri.sandbox-id`, and the pod's own annotations (those the handler's
//! `pod_annotations` lets through, such as the Init-Data) appear in the sandbox's spec.
//! The guest acts on the subset of `process` it needs (with the container's seccomp profile,
//! masked and read-only paths and read-only root, which it applies as runc would). The whole
//! spec goes along too, without the Init-Data annotations, for the agent policy to inspect as
//! kata-agent's `input.OCI`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use coffer_agent::protocol::{
    Capabilities, ContainerFile, Process, Rlimit, Seccomp, SeccompArg, SeccompSyscall,
    MAX_CONTAINER_FILES, MAX_CONTAINER_FILE_BYTES, MAX_OCI_SPEC_BYTES,
};
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Spec};
use serde::Serialize;

use crate::error::{Error, Result};

/// Annotation naming the container's kind (`sandbox` or `container`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation naming the pod a container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The image a CRI container runs, as the pod spec names it (the reference the guest pulls).
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
/// Value of [`CONTAINER_TYPE`] for the pod's sandbox.
pub const TYPE_SANDBOX: &str = "sandbox";

/// The spec of one bundle, with the parts the shim needs.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The file it was read from.
    pub path: PathBuf,
    /// The spec.
    pub spec: Spec,
}

impl BundleSpec {
    /// Reads `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<BundleSpec> {
        let path = bundle.join("config.json");
        let spec = Spec::load(&path).map_err(|e| Error::Spec {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(BundleSpec { path, spec })
    }

    /// The spec's annotations (empty when it has none).
    pub fn annotations(&self) -> HashMap<String, String> {
        self.spec.annotations().clone().unwrap_or_default()
    }

    /// Whether this bundle is a pod's sandbox rather than one of its containers.
    ///
    /// A spec without CRI annotations (e.g. from `ctr run`) is its own sandbox: it gets a VM.
    pub fn is_sandbox(&self) -> bool {
        let a = self.annotations();
        match a.get(CONTAINER_TYPE) {
            Some(t) => t == TYPE_SANDBOX,
            None => !a.contains_key(SANDBOX_ID),
        }
    }

    /// The sandbox this bundle belongs to: its own id for a sandbox, else the CRI annotation.
    pub fn sandbox_id(&self, own_id: &str) -> String {
        if self.is_sandbox() {
            return own_id.to_string();
        }
        self.annotations()
            .get(SANDBOX_ID)
            .cloned()
            .unwrap_or_else(|| own_id.to_string())
    }

    /// The image the container runs, as containerd's CRI names it in the container's spec
    /// (`io.kubernetes.cri.image-name`): the reference the guest pulls.
    pub fn image_name(&self) -> Option<String> {
        self.annotations()
            .get(IMAGE_NAME)
            .filter(|name| !name.trim().is_empty())
            .cloned()
    }

    /// The spec as it may be shown to the guest: Init-Data annotations removed.
    pub fn for_guest(&self) -> Spec {
        let mut spec = self.spec.clone();
        if let Some(mut annotations) = spec.annotations().clone() {
            coffer_initdata::annotation::strip(&mut annotations);
            spec.set_annotations(Some(annotations));
        }
        spec
    }

    /// The spec as the guest receives it in `CreateContainer::oci` ([`Self::for_guest`] as
    /// JSON), for the agent policy's `input.OCI`. A spec larger than
    /// [`MAX_OCI_SPEC_BYTES`] is refused: the guest has no use for it beyond the policy, and
    /// a request must fit in one frame.
    pub fn oci_for_guest(&self) -> Result<serde_json::Value> {
        let spec = self.for_guest();
        let text = serde_json::to_vec(&spec).map_err(|e| Error::Spec {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if text.len() > MAX_OCI_SPEC_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the OCI spec {} takes {} bytes as JSON (without the Init-Data annotations); at most {MAX_OCI_SPEC_BYTES} are sent to the guest for its agent policy: make the container's annotations, environment or mounts smaller",
                self.path.display(),
                text.len()
            )));
        }
        serde_json::from_slice(&text).map_err(|e| Error::Spec {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// The container's process in the guest protocol's terms.
    pub fn process(&self) -> Result<Process> {
        let process = self
            .for_guest()
            .process()
            .clone()
            .ok_or_else(|| Error::Spec {
                path: self.path.clone(),
                reason: "it has no process".into(),
            })?;
        guest_process(&process, self.seccomp()).map_err(|reason| Error::Spec {
            path: self.path.clone(),
            reason,
        })
    }

    /// The container's seccomp profile (`linux.seccomp`), if it has one.
    pub fn seccomp(&self) -> Option<&LinuxSeccomp> {
        self.spec.linux().as_ref()?.seccomp().as_ref()
    }

    /// Paths the guest hides in the container (`linux.maskedPaths`).
    pub fn masked_paths(&self) -> Vec<String> {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default()
    }

    /// Paths the guest makes read-only in the container (`linux.readonlyPaths`).
    pub fn readonly_paths(&self) -> Vec<String> {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default()
    }

    /// Whether the container's root filesystem is read-only (`root.readonly`).
    pub fn readonly_root(&self) -> bool {
        self.spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false)
    }

    /// The hostname the container asks for, if any.
    pub fn hostname(&self) -> Option<String> {
        self.spec.hostname().clone().filter(|h| !h.is_empty())
    }

    /// The container's resource limits (`linux.resources`), if the spec sets any.
    pub fn resources(&self) -> Option<coffer_agent::protocol::Resources> {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .map(crate::metrics::resources)
    }

    /// Whether containerd's CRI made this spec for a pod's sandbox.
    pub fn is_cri_sandbox(&self) -> bool {
        self.annotations().get(CONTAINER_TYPE).map(String::as_str) == Some(TYPE_SANDBOX)
    }

    /// Where the sandbox's network comes from.
    pub fn network_namespace(&self) -> Namespace {
        let namespaces = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        match namespaces
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
        {
            None => Namespace::Host,
            Some(n) => match n.path() {
                Some(p) if !p.as_os_str().is_empty() => Namespace::Path(p.clone()),
                _ => Namespace::Empty,
            },
        }
    }

    /// The spec's single-file bind mounts (containerd's `/etc/hosts`, `/etc/resolv.conf`,
    /// `/etc/hostname`, a kubelet's termination log...), read to be copied into the guest.
    /// Directory mounts are not carried into the guest.
    pub fn file_mounts(&self) -> Result<Vec<ContainerFile>> {
        let mut files = Vec::new();
        for m in self.spec.mounts().iter().flatten() {
            let options = m.options().clone().unwrap_or_default();
            let bind = m.typ().as_deref() == Some("bind")
                || options.iter().any(|o| o == "bind" || o == "rbind");
            let Some(source) = m.source().as_ref().filter(|_| bind) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(source) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let target = m.destination().to_string_lossy().into_owned();
            let too_big = || {
                Error::InvalidArgument(format!(
                "mount {target}: {} is {} bytes; Coffer copies file mounts into the VM, at most {MAX_CONTAINER_FILE_BYTES} bytes each",
                source.display(),
                meta.len()
            ))
            };
            if meta.len() > u64::try_from(MAX_CONTAINER_FILE_BYTES).unwrap_or(u64::MAX) {
                return Err(too_big());
            }
            let data = std::fs::read(source).map_err(|e| Error::Io {
                what: "cannot read the file mount",
                path: source.clone(),
                source: e,
            })?;
            if data.len() > MAX_CONTAINER_FILE_BYTES {
                return Err(too_big());
            }
            files.push(ContainerFile {
                path: target,
                data,
                readonly: options.iter().any(|o| o == "ro"),
            });
        }
        if files.len() > MAX_CONTAINER_FILES {
            return Err(Error::InvalidArgument(format!(
                "the container has {} file mounts; Coffer copies at most {MAX_CONTAINER_FILES} into the VM",
                files.len()
            )));
        }
        Ok(files)
    }
}

/// Where a sandbox's network comes from, read from its OCI spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// The spec names no network namespace: the pod shares the host's.
    Host,
    /// A new, empty namespace (a spec without a path, as `ctr run` makes): no network.
    Empty,
    /// The namespace CNI set up.
    Path(PathBuf),
}

/// The name the OCI spec writes for a value of one of oci-spec's enums (`"CAP_CHOWN"`,
/// `"SCMP_ACT_ERRNO"`, ...): its JSON string.
fn oci_name<T: Serialize + std::fmt::Debug>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{value:?}"),
    }
}

/// The names of a capability set, sorted (oci-spec keeps them in a hash set).
fn capability_names(set: &Option<oci_spec::runtime::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = set.iter().flatten().map(oci_name).collect();
    names.sort();
    names
}

/// Converts the OCI `linux.seccomp` object for the guest; refuses a notify listener, which the
/// guest cannot serve. Actions and operators travel by name: the guest refuses the ones it does
/// not support.
pub fn guest_seccomp(s: &LinuxSeccomp) -> std::result::Result<Seccomp, String> {
    if s.listener_path().is_some() {
        return Err(
            "linux.seccomp.listenerPath is set: seccomp notifications (SCMP_ACT_NOTIFY) are not supported in the guest"
                .into(),
        );
    }
    Ok(Seccomp {
        default_action: oci_name(&s.default_action()),
        default_errno_ret: s.default_errno_ret(),
        architectures: s.architectures().iter().flatten().map(oci_name).collect(),
        flags: s.flags().iter().flatten().map(oci_name).collect(),
        syscalls: s
            .syscalls()
            .iter()
            .flatten()
            .map(|call| SeccompSyscall {
                names: call.names().clone(),
                action: oci_name(&call.action()),
                errno_ret: call.errno_ret(),
                args: call
                    .args()
                    .iter()
                    .flatten()
                    .map(|a| SeccompArg {
                        index: u32::try_from(a.index()).unwrap_or(u32::MAX),
                        value: a.value(),
                        value_two: a.value_two().unwrap_or(0),
                        op: oci_name(&a.op()),
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// Converts an OCI process into what the guest runs; refuses what the guest cannot honour.
/// `seccomp` is the container's profile (`linux.seccomp`), which applies to every process of the
/// container. Whether it has stdin is not in the OCI process: the caller sets it from
/// containerd's request.
pub fn guest_process(
    p: &oci_spec::runtime::Process,
    seccomp: Option<&LinuxSeccomp>,
) -> std::result::Result<Process, String> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err("process.args is empty; give the container a command".into());
    }
    let user = p.user();
    Ok(Process {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().to_string_lossy().into_owned(),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        terminal: p.terminal().unwrap_or(false),
        stdin: false,
        capabilities: p.capabilities().as_ref().map(|c| Capabilities {
            bounding: capability_names(c.bounding()),
            effective: capability_names(c.effective()),
            permitted: capability_names(c.permitted()),
            inheritable: capability_names(c.inheritable()),
            ambient: capability_names(c.ambient()),
        }),
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Rlimit {
                kind: oci_name(&r.typ()),
                hard: r.hard(),
                soft: r.soft(),
            })
            .collect(),
        seccomp: seccomp.map(guest_seccomp).transpose()?,
    })
}

/// Parses the OCI process JSON containerd sends with an exec; `seccomp` is the container's
/// profile, which the exec'd process gets too.
pub fn exec_process(json: &[u8], seccomp: Option<&LinuxSeccomp>) -> Result<Process> {
    let p: oci_spec::runtime::Process = serde_json::from_slice(json).map_err(|e| {
        Error::InvalidArgument(format!("exec process spec is not valid OCI JSON: {e}"))
    })?;
    guest_process(&p, seccomp).map_err(|r| Error::InvalidArgument(format!("exec refused: {r}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SANDBOX: &str = r#"{
      "ociVersion": "1.0.2",
      "process": {"args": ["/pause"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
      "root": {"path": "rootfs"},
      "hostname": "pod1",
      "annotations": {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "sb1",
        "io.katacontainers.config.hypervisor.cc_init_data": "H4sI",
        "io.katacontainers.config.runtime.cc_init_data": "H4sI",
        "example.com/keep": "yes"
      }
    }"#;

    const CONTAINER: &str = r#"{
      "ociVersion": "1.0.2",
      "process": {"args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "A=b"], "cwd": "/work",
                  "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 20]}},
      "root": {"path": "rootfs"},
      "annotations": {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "sb1"
      }
    }"#;

    fn load(json: &str) -> BundleSpec {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        BundleSpec::load(dir.path()).unwrap()
    }

    #[test]
    fn sandbox_groups_under_its_own_id() {
        let s = load(SANDBOX);
        assert!(s.is_sandbox());
        assert_eq!(s.sandbox_id("sb1"), "sb1");
        assert_eq!(s.hostname().as_deref(), Some("pod1"));
    }

    #[test]
    fn container_groups_under_its_sandbox() {
        let s = load(CONTAINER);
        assert!(!s.is_sandbox());
        assert_eq!(s.sandbox_id("c1"), "sb1");
    }

    #[test]
    fn spec_without_cri_annotations_is_its_own_sandbox() {
        let s = load(
            r#"{"ociVersion":"1.0.2","process":{"args":["x"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"rootfs"}}"#,
        );
        assert!(s.is_sandbox());
        assert_eq!(s.sandbox_id("solo"), "solo");
    }

    #[test]
    fn initdata_annotations_never_reach_the_guest() {
        let s = load(SANDBOX);
        let guest = s.for_guest();
        let a = guest.annotations().clone().unwrap();
        assert!(!a.contains_key("io.katacontainers.config.hypervisor.cc_init_data"));
        assert!(!a.contains_key("io.katacontainers.config.runtime.cc_init_data"));
        assert_eq!(a.get("example.com/keep").map(String::as_str), Some("yes"));
        // The host-side copy still has them (the sandbox reads the Init-Data from it).
        assert!(s
            .annotations()
            .contains_key("io.katacontainers.config.hypervisor.cc_init_data"));
    }

    #[test]
    fn the_guest_gets_the_whole_spec_without_initdata_annotations() {
        let s = load(SANDBOX);
        let oci = s.oci_for_guest().unwrap();
        assert_eq!(oci["process"]["args"], serde_json::json!(["/pause"]));
        assert_eq!(oci["hostname"], "pod1");
        assert_eq!(oci["root"]["path"], "rootfs");
        let a = oci["annotations"].as_object().unwrap();
        assert!(!a.contains_key("io.katacontainers.config.hypervisor.cc_init_data"));
        assert!(!a.contains_key("io.katacontainers.config.runtime.cc_init_data"));
        assert_eq!(a["io.kubernetes.cri.sandbox-id"], "sb1");
        assert_eq!(a["example.com/keep"], "yes");
    }

    #[test]
    fn a_spec_too_large_for_the_guest_is_refused_with_its_size() {
        let big = "x".repeat(MAX_OCI_SPEC_BYTES);
        let s = load(&CONTAINER.replace("\"A=b\"", &format!("\"A={big}\"")));
        let err = s.oci_for_guest().unwrap_err().to_string();
        assert!(err.contains("config.json takes"), "{err}");
        assert!(
            err.contains(&format!("at most {MAX_OCI_SPEC_BYTES}")),
            "{err}"
        );
    }

    #[test]
    fn process_is_converted() {
        let p = load(CONTAINER).process().unwrap();
        assert_eq!(p.args, ["sh", "-c", "echo hi"]);
        assert_eq!(p.env, ["PATH=/bin", "A=b"]);
        assert_eq!(p.cwd, "/work");
        assert_eq!((p.uid, p.gid), (1000, 100));
        assert_eq!(p.additional_gids, [10, 20]);
    }

    #[test]
    fn terminal_is_carried_and_empty_args_are_refused_with_reason() {
        let p = exec_process(
            br#"{"terminal":true,"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#,
            None,
        )
        .unwrap();
        assert!(p.terminal);
        assert!(!p.stdin);
        let e = exec_process(br#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "exec refused: process.args is empty; give the container a command"
        );
        let e = exec_process(b"{", None).unwrap_err().to_string();
        assert!(
            e.starts_with("exec process spec is not valid OCI JSON"),
            "{e}"
        );
    }

    /// A container as containerd's CRI plugin writes it for a pod asking for capabilities,
    /// no_new_privs, rlimits and the RuntimeDefault seccomp profile (shortened).
    const HARDENED: &str = r#"{
      "ociVersion": "1.0.2",
      "process": {
        "args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
        "capabilities": {
          "bounding": ["CAP_KILL", "CAP_CHOWN"],
          "effective": ["CAP_KILL", "CAP_CHOWN"],
          "permitted": ["CAP_KILL", "CAP_CHOWN"]
        },
        "noNewPrivileges": true,
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]
      },
      "root": {"path": "rootfs", "readonly": true},
      "linux": {
        "maskedPaths": ["/proc/kcore", "/sys/firmware"],
        "readonlyPaths": ["/proc/sys"],
        "seccomp": {
          "defaultAction": "SCMP_ACT_ERRNO",
          "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
          "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
          ]
        }
      },
      "annotations": {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "sb1"
      }
    }"#;

    #[test]
    fn security_settings_are_carried_by_name() {
        let s = load(HARDENED);
        let p = s.process().unwrap();
        let caps = p.capabilities.unwrap();
        assert_eq!(caps.bounding, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(caps.effective, ["CAP_CHOWN", "CAP_KILL"]);
        assert!(caps.inheritable.is_empty() && caps.ambient.is_empty());
        assert!(p.no_new_privileges);
        assert_eq!(
            p.rlimits,
            [Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                hard: 1024,
                soft: 512
            }]
        );
        let seccomp = p.seccomp.unwrap();
        assert_eq!(seccomp.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(
            seccomp.architectures,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        assert_eq!(seccomp.syscalls.len(), 3);
        assert_eq!(
            seccomp.syscalls[1].args,
            [SeccompArg {
                index: 0,
                value: 2_114_060_288,
                value_two: 0,
                op: "SCMP_CMP_MASKED_EQ".into()
            }]
        );
        assert_eq!(seccomp.syscalls[2].action, "SCMP_ACT_ERRNO");
        assert_eq!(seccomp.syscalls[2].errno_ret, Some(38));
        assert_eq!(s.masked_paths(), ["/proc/kcore", "/sys/firmware"]);
        assert_eq!(s.readonly_paths(), ["/proc/sys"]);
        assert!(s.readonly_root());

        // An exec'd process gets its container's profile.
        let e = exec_process(
            br#"{"args":["ls"],"cwd":"/","user":{"uid":0,"gid":0}}"#,
            s.seccomp(),
        )
        .unwrap();
        assert_eq!(e.seccomp.unwrap().syscalls.len(), 3);
        assert_eq!(e.capabilities, None);

        // A spec without any of it asks for nothing.
        let plain = load(CONTAINER);
        let p = plain.process().unwrap();
        assert_eq!(p.capabilities, None);
        assert!(!p.no_new_privileges && p.rlimits.is_empty() && p.seccomp.is_none());
        assert!(plain.masked_paths().is_empty() && !plain.readonly_root());
    }

    #[test]
    fn a_seccomp_notify_listener_is_refused() {
        let json = HARDENED.replace(
            r#""defaultAction": "SCMP_ACT_ERRNO","#,
            r#""defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock","#,
        );
        let e = load(&json).process().unwrap_err().to_string();
        assert!(e.contains("listenerPath"), "{e}");
    }

    #[test]
    fn the_network_namespace_says_host_new_or_cni() {
        let with = |ns: &str| {
            load(&format!(
                r#"{{"ociVersion":"1.0.2","process":{{"args":["x"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"root":{{"path":"rootfs"}},"linux":{{"namespaces":[{{"type":"pid"}}{ns}]}}}}"#
            ))
        };
        assert_eq!(with("").network_namespace(), Namespace::Host);
        assert_eq!(
            with(r#",{"type":"network"}"#).network_namespace(),
            Namespace::Empty
        );
        assert_eq!(
            with(r#",{"type":"network","path":"/var/run/netns/cni-1"}"#).network_namespace(),
            Namespace::Path("/var/run/netns/cni-1".into())
        );
        assert!(load(SANDBOX).is_cri_sandbox());
        assert!(!load(CONTAINER).is_cri_sandbox());
    }

    #[test]
    fn single_file_bind_mounts_are_copied_and_others_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "10.88.0.5 a\n").unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_CONTAINER_FILE_BYTES + 1]).unwrap();
        let spec = |mounts: &str| {
            load(&format!(
                r#"{{"ociVersion":"1.0.2","process":{{"args":["x"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"root":{{"path":"rootfs"}},"mounts":[{mounts}]}}"#
            ))
        };
        let s = spec(&format!(
            r#"{{"destination":"/etc/hosts","type":"bind","source":"{}","options":["rbind","rprivate","ro"]}},
               {{"destination":"/data","type":"bind","source":"{}","options":["rbind"]}},
               {{"destination":"/proc","type":"proc","source":"proc"}}"#,
            hosts.display(),
            dir.path().display()
        ));
        let files = s.file_mounts().unwrap();
        assert_eq!(
            files,
            [ContainerFile {
                path: "/etc/hosts".into(),
                data: b"10.88.0.5 a\n".to_vec(),
                readonly: true
            }]
        );
        let s = spec(&format!(
            r#"{{"destination":"/etc/big","type":"bind","source":"{}","options":["rbind"]}}"#,
            big.display()
        ));
        let e = s.file_mounts().unwrap_err().to_string();
        assert!(e.starts_with("mount /etc/big: "), "{e}");
        assert!(e.ends_with("at most 1048576 bytes each"), "{e}");
    }

    #[test]
    fn missing_config_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = BundleSpec::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "bad OCI spec {}/config.json",
                dir.path().display()
            )),
            "{e}"
        );
    }
}
