//! The host<->guest protocol spoken over the agent's virtio-serial port.
//!
//! # Framing
//! Every message is one frame: a `u32` big-endian length followed by that many bytes of JSON.
//! A frame larger than [`MAX_FRAME`] is refused by both sides (the reader never allocates past
//! it). Binary payloads (process output, files) are base64 strings inside the JSON. Both sides
//! read frames with the same [`FrameDecoder`].
//!
//! # Messages
//! The host sends [`RequestFrame`]s, each with an `id` it chose; the guest answers every request
//! with exactly one [`GuestFrame::Response`] carrying the same `id`, and sends
//! [`GuestFrame::Event`]s on its own (process output, process exits). The guest handles each
//! request on its own thread, so a `wait` that blocks for minutes does not hold up a `signal`:
//! responses come back in completion order, not request order.
//!
//! # Versions
//! [`PROTOCOL_VERSION`] is bumped on any incompatible change. The host's first request is
//! [`Request::Hello`] with its version; the guest answers with its own and refuses a version it
//! does not speak, and the host refuses a guest that answers with another version.
//!
//! # The virtio-serial port, connections and reconnections
//! The host side is a QEMU `chardev socket` in server mode (`wait=off`); the guest side is
//! `/dev/vportNpM`, the port named [`AGENT_PORT_NAME`].
//! - Before QEMU runs, the socket does not exist: the client retries `connect` until its deadline.
//! - Once the host is connected, bytes it writes before the agent opens the port stay queued in
//!   QEMU and the socket (QEMU stops reading the socket while the guest cannot take data), so a
//!   hello sent early is answered once the agent is up. The client resends hello every second
//!   anyway and ignores the duplicate answers.
//! - While no host is connected, a guest `read` returns 0 at once and a guest `write` blocks
//!   until a host connects: the agent polls for a host, and its events wait (bounded) instead of
//!   being lost.
//! - A host that disconnects and connects again starts a new byte stream. The agent drops any
//!   partly read request when the host goes away. A frame the guest was writing at that moment
//!   may arrive truncated at the next host: the client then sees a malformed frame, and the cure
//!   is to reconnect (which drains it). Requests in flight when the host went away get no answer.

use serde::{Deserialize, Serialize};

/// Names both sides of the VM boundary agree on, defined once in the contract crate.
pub use coffer_contract::{Tee, AGENT_PORT_NAME, SHARE_MOUNT_TAG};

#[cfg(feature = "client")]
pub mod client;
mod frame;
pub mod network;

#[cfg(feature = "client")]
pub use frame::read_frame_async;
pub use frame::{decode, encode, read_frame, write_frame, FrameDecoder, FrameError};

/// Version of this protocol; both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 5;

/// Largest frame either side accepts, in bytes (JSON length, without the 4-byte prefix).
/// Large enough for a 4 MiB Init-Data document read back in base64.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;

/// How long the guest may take to pull a container's image (manifest and every layer); a
/// create that pulls is given this much more time by the host.
pub const PULL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Where the guest mounts the 9p share; container root filesystems are paths relative to it.
pub const SHARE_MOUNT: &str = "/run/coffer/share";

/// Where the guest delivers the Init-Data document and its entries.
pub const INITDATA_DIR: &str = "/run/confidential-containers/initdata";

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the host; the response carries it back.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// What the host can ask the guest.
// A request lives for one call and is decoded once: its size does not matter, and boxing the
// large variants would only complicate every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First request of a session: versions, and what the guest found of the Init-Data.
    /// Answered with [`Response::Hello`].
    Hello {
        /// The host's [`PROTOCOL_VERSION`].
        protocol_version: u32,
    },
    /// Prepare a container (namespaces, root filesystem) without running its process yet.
    /// Refused when the Init-Data could not be verified. Answered with [`Response::Ok`].
    CreateContainer(CreateContainer),
    /// Run a created container's process. Answered with [`Response::Started`].
    Start {
        /// Container id.
        id: String,
    },
    /// Run another process inside a running container. Answered with [`Response::Started`].
    Exec {
        /// Container id.
        id: String,
        /// Id of the new process, unique within the container.
        exec_id: String,
        /// The process.
        process: Process,
    },
    /// Wait for a process to exit. Answered with [`Response::Exited`].
    Wait {
        /// Container id.
        id: String,
        /// The exec'd process, or the container's own process when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
    },
    /// Send a signal to a process. Answered with [`Response::Ok`].
    Signal {
        /// Container id.
        id: String,
        /// The exec'd process, or the container's own process when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        /// Signal number (e.g. 15 for SIGTERM).
        signal: i32,
    },
    /// Forget a container whose processes have all exited. Answered with [`Response::Ok`].
    Remove {
        /// Container id.
        id: String,
    },
    /// Read a file under [`INITDATA_DIR`] (nothing else). Answered with [`Response::File`].
    ReadFile {
        /// Absolute path, or a name relative to [`INITDATA_DIR`].
        path: String,
    },
    /// Sync the disks and power the guest off. Answered with [`Response::Ok`] just before.
    Shutdown,
    /// Bytes for the standard input of a process started with [`Process::stdin`] (or
    /// [`Process::terminal`]). The guest handles requests concurrently, so the host sends the
    /// next write of a process only once this one is answered: that keeps the bytes in order.
    /// Answered with [`Response::Ok`] once the bytes are in the pipe or terminal.
    WriteStdin {
        /// Container id.
        id: String,
        /// The exec'd process, or the container's own process when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        /// The bytes.
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Close a process's standard input: a pipe reads end-of-file; a terminal stays open (it
    /// carries the output too) and takes no more writes. Answered with [`Response::Ok`].
    CloseStdin {
        /// Container id.
        id: String,
        /// The exec'd process, or the container's own process when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
    },
    /// Set the window size of a process's terminal (`TIOCSWINSZ`; the process gets `SIGWINCH`).
    /// Answered with [`Response::Ok`].
    ResizePty {
        /// Container id.
        id: String,
        /// The exec'd process, or the container's own process when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// Configure the guest's NIC (found by MAC): name, MTU, addresses, up. Answered with
    /// [`Response::Ok`].
    UpdateInterface {
        /// The interface.
        interface: network::Interface,
    },
    /// Add routes to the main table. Answered with [`Response::Ok`].
    UpdateRoutes {
        /// The routes, in order (a gateway's own network before the route through it).
        routes: Vec<network::Route>,
    },
    /// Add static neighbours. Answered with [`Response::Ok`].
    AddArpNeighbors {
        /// The neighbours.
        neighbors: Vec<network::ArpNeighbor>,
    },
    /// A container's CPU, memory and pids figures, from its cgroup. Answered with
    /// [`Response::Stats`].
    Stats {
        /// Container id.
        id: String,
    },
    /// Change a container's resource limits. Answered with [`Response::Ok`].
    UpdateResources {
        /// Container id.
        id: String,
        /// The new limits; an absent one is left as it is.
        resources: Resources,
    },
    /// Freeze every process of a container (cgroup freezer). Answered with [`Response::Ok`].
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container. Answered with [`Response::Ok`].
    Resume {
        /// Container id.
        id: String,
    },
}

/// A container's resource limits, as the OCI spec's `linux.resources` sets them, applied to its
/// cgroup (v2) in the guest. An absent field is not limited (or, in an update, not changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in bytes (`memory.max`); negative means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<i64>,
    /// CFS quota in µs per period (`cpu.max`); negative means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    /// CFS period in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<u64>,
    /// CPU shares (cgroup v1 units, turned into `cpu.weight`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    /// Most processes (`pids.max`); zero or negative means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
}

/// A container's figures, read from its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerStats {
    /// CPU time used, µs (`cpu.stat usage_usec`).
    pub cpu_usage_usec: u64,
    /// Of which in user mode.
    pub cpu_user_usec: u64,
    /// Of which in the kernel.
    pub cpu_system_usec: u64,
    /// Periods throttled by the quota.
    pub cpu_nr_throttled: u64,
    /// Memory in use, bytes (`memory.current`).
    pub memory_usage: u64,
    /// The memory limit, bytes (`memory.max`; `u64::MAX` for none).
    pub memory_limit: u64,
    /// Anonymous memory.
    pub memory_anon: u64,
    /// Page cache.
    pub memory_file: u64,
    /// Page cache not recently used (what the kubelet leaves out of the working set).
    pub memory_inactive_file: u64,
    /// Page cache recently used.
    pub memory_active_file: u64,
    /// Times the limit was hit (`memory.events max`).
    pub memory_max_events: u64,
    /// Processes the OOM killer killed (`memory.events oom_kill`).
    pub oom_kills: u64,
    /// Processes (`pids.current`).
    pub pids_current: u64,
    /// Their limit (`pids.max`; 0 for none).
    pub pids_limit: u64,
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    /// Container id, unique in the guest.
    pub id: String,
    /// Host-shared root filesystem (handler mode `host`, not confidential): a directory
    /// relative to the 9p share (e.g. `"ctr1/rootfs"`). Exactly one of `rootfs` and `image` is
    /// set. A guest in a TEE refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// The image the guest pulls itself (handler mode `guest`): the reference containerd's CRI
    /// names in the container's `io.kubernetes.cri.image-name` annotation, e.g.
    /// `"registry.example:5000/busybox:1.36"` or `"...@sha256:<hex>"`. Where and how the guest
    /// pulls it comes from the Init-Data only (`cdh.toml` `[image]`); the agent policy sees it as
    /// `input.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Hostname inside the container's UTS namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The container's process.
    pub process: Process,
    /// Its resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Files the container sees at given paths (the pod's `/etc/hosts`, `/etc/resolv.conf`,
    /// `/etc/hostname` and other single-file mounts of its spec), copied into the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ContainerFile>,
    /// Paths made unreadable in the container (OCI `linux.maskedPaths`): `/dev/null` is bound
    /// over a file, an empty read-only tmpfs over a directory; a path that does not exist is
    /// skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    /// Paths bound read-only over themselves (OCI `linux.readonlyPaths`); a path that does not
    /// exist is skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
    /// Make the container's root filesystem read-only (OCI `root.readonly`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly_root: bool,
    /// The container's OCI runtime spec (the bundle's `config.json`, Init-Data annotations
    /// removed), as JSON; `null` when the host sends none. The guest does not run it: what it
    /// runs is in the fields above. It is what the agent policy sees as
    /// `input.OCI` of `CreateContainerRequest`, in kata-agent's shape, with the fields the guest
    /// acts on replaced by the values it acts on (see `docs/kata-compatibility.md`). At most
    /// [`MAX_OCI_SPEC_BYTES`] of JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub oci: serde_json::Value,
}

/// Most bytes of JSON [`CreateContainer::oci`] may take.
pub const MAX_OCI_SPEC_BYTES: usize = 1024 * 1024;

/// Most files a container may be given, and the most bytes each may hold.
pub const MAX_CONTAINER_FILES: usize = 32;
/// See [`MAX_CONTAINER_FILES`].
pub const MAX_CONTAINER_FILE_BYTES: usize = 1024 * 1024;

/// A file bind-mounted into a container: the guest keeps a copy and mounts it over `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerFile {
    /// Absolute path inside the container.
    pub path: String,
    /// The content.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    /// Mounted read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// A process to run: the subset of the OCI `process` object the guest needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Process {
    /// Program and arguments; `args[0]` is looked up in `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// Environment, `KEY=value`.
    pub env: Vec<String>,
    /// Working directory inside the container (default `/`).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Run the process on a new terminal (a pty whose slave is its controlling terminal and its
    /// stdin, stdout and stderr). Its output then comes as [`Stream::Stdout`] only, and
    /// [`Request::WriteStdin`] types into the terminal.
    #[serde(skip_serializing_if = "is_false")]
    pub terminal: bool,
    /// Give the process a standard input fed by [`Request::WriteStdin`] (a pipe, or the
    /// terminal). Without it the process reads end-of-file at once.
    #[serde(skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// The capability sets the process runs with (OCI `process.capabilities`). Absent: the
    /// guest leaves the capabilities alone, as runc does (a process of uid 0 keeps them all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Set `no_new_privs` before the exec (OCI `process.noNewPrivileges`): execve can then not
    /// grant privileges (setuid bits, file capabilities).
    #[serde(skip_serializing_if = "is_false")]
    pub no_new_privileges: bool,
    /// Resource limits set before the exec (OCI `process.rlimits`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// The seccomp profile installed just before the exec (the container's OCI
    /// `linux.seccomp`; an exec'd process gets its container's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
}

/// Capability sets, each a list of names as the OCI spec writes them (`"CAP_CHOWN"`). A name
/// the guest does not know is refused, never ignored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// The bounding set: every other capability is dropped from it for good.
    pub bounding: Vec<String>,
    /// The effective set.
    pub effective: Vec<String>,
    /// The permitted set.
    pub permitted: Vec<String>,
    /// The inheritable set.
    pub inheritable: Vec<String>,
    /// The ambient set; each must also be permitted and inheritable.
    pub ambient: Vec<String>,
}

/// One resource limit (an OCI `process.rlimits` entry).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rlimit {
    /// The limit's name as the OCI spec writes it, e.g. `"RLIMIT_NOFILE"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The hard limit.
    pub hard: u64,
    /// The soft limit.
    pub soft: u64,
}

/// A seccomp profile: the OCI `linux.seccomp` object, its actions, architectures, flags and
/// operators as the OCI spec names them (`"SCMP_ACT_ERRNO"`, `"SCMP_ARCH_X86_64"`,
/// `"SCMP_CMP_MASKED_EQ"`). An action, flag or operator the guest does not support is refused;
/// a syscall name it does not know is skipped, as libseccomp does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Seccomp {
    /// The action of a syscall no rule matches.
    pub default_action: String,
    /// The errno of a default action `SCMP_ACT_ERRNO` (default EPERM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// The architectures the profile is for.
    pub architectures: Vec<String>,
    /// Filter flags (`"SECCOMP_FILTER_FLAG_LOG"`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The rules.
    pub syscalls: Vec<SeccompSyscall>,
}

/// Syscalls that share an action and argument conditions (an OCI `linux.seccomp.syscalls`
/// entry).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeccompSyscall {
    /// Syscall names.
    pub names: Vec<String>,
    /// The action when a call matches.
    pub action: String,
    /// The errno of `SCMP_ACT_ERRNO` (default EPERM), the message of `SCMP_ACT_TRACE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments, all of which must hold (conditions on the same argument
    /// are alternatives, as runc has it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SeccompArg>,
}

/// A condition on one syscall argument (an OCI seccomp `args` entry).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeccompArg {
    /// The argument's index, 0 to 5.
    pub index: u32,
    /// The value compared with (the mask, for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// The second value (the masked value `SCMP_CMP_MASKED_EQ` compares with).
    pub value_two: u64,
    /// The comparison, e.g. `"SCMP_CMP_EQ"`.
    pub op: String,
}

// Unset flags stay off the wire, so a request without a terminal or stdin reads exactly as it
// did before these fields existed.
fn is_false(b: &bool) -> bool {
    !*b
}

/// A message from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuestFrame {
    /// The answer to the request with this `id`.
    Response {
        /// The request's id.
        id: u64,
        /// Its outcome.
        outcome: Outcome,
    },
    /// Something that happened on its own.
    Event {
        /// What happened.
        event: Event,
    },
}

/// Success or failure of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked.
    Ok(Response),
    /// It did not.
    Err(GuestError),
}

/// Why the guest did not do what was asked: a kind the host turns into the status code
/// containerd expects, and a message that travels to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct GuestError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What failed and, where it helps, what to do instead.
    pub message: String,
}

impl GuestError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> GuestError {
        GuestError {
            kind,
            message: message.into(),
        }
    }
}

/// The kinds of guest failure, named as the gRPC status codes they become at containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such container or process in the guest.
    NotFound,
    /// The id is taken in the guest.
    AlreadyExists,
    /// The request itself is wrong.
    InvalidArgument,
    /// The container or guest is not in a state that allows the request.
    FailedPrecondition,
    /// The agent policy refused the request (kata-agent answers PERMISSION_DENIED too).
    PermissionDenied,
    /// A wait or call ran out of time.
    DeadlineExceeded,
    /// The guest failed at something that should have worked.
    Internal,
}

/// What a successful request returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Hello`] (boxed: it is much larger than the other answers).
    Hello(Box<Hello>),
    /// Done, nothing to return.
    Ok,
    /// A process runs.
    Started {
        /// Its pid as the guest's agent sees it.
        pid: u32,
    },
    /// A process exited.
    Exited {
        /// How.
        status: ExitStatus,
    },
    /// A container's figures.
    Stats(ContainerStats),
    /// A file's content.
    File {
        /// The bytes.
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
}

/// The guest's answer to hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// `coffer-agent` version.
    pub agent_version: String,
    /// The guest's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// What the guest found of the Init-Data and what it did with it.
    pub initdata: InitDataReport,
}

/// The Init-Data as the guest saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InitDataReport {
    /// The TEE the guest runs in.
    pub tee: Tee,
    /// Hex of the digest of the document the guest read from the disk, if it read one.
    pub digest: Option<String>,
    /// The document's algorithm (`sha256`, ...), if it read one.
    pub algorithm: Option<String>,
    /// Whether the document is the one the launch was bound to.
    pub verification: Verification,
    /// Files written under [`INITDATA_DIR`] (names, sorted).
    pub files: Vec<String>,
    /// The guest components (attestation agent, data hub, REST API server): started, or why
    /// not.
    pub services: Vec<Service>,
    /// A guest component that did not come up (its socket never appeared): the guest refuses
    /// containers, and the host fails the sandbox with this reason.
    pub component_failure: Option<String>,
    /// Warnings about the document (unknown `[data]` keys, ...).
    pub warnings: Vec<String>,
    /// The agent policy (`policy.rego` of a verified document) and whether it is enforced.
    /// Absent from the JSON of agents that predate it, which enforced none.
    pub policy: PolicyStatus,
}

/// The agent policy a guest enforces on the host's requests (see `agent/src/guest/policy.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PolicyStatus {
    /// No `policy.rego` in a verified Init-Data document (or no document): every request is
    /// allowed.
    #[default]
    None,
    /// The policy is loaded and gates every request but hello.
    Enforced {
        /// Rule definitions in the policy (each `default` and each rule body counts).
        rules: usize,
    },
    /// The policy is loaded, but sets `AllowRequestsFailingPolicy := true` (Kata's debugging
    /// switch): a denied request is logged and served anyway. Not secure.
    Permissive {
        /// Rule definitions in the policy.
        rules: usize,
    },
    /// The policy does not load: containers are refused.
    Invalid {
        /// The parser's or compiler's error.
        reason: String,
    },
}

impl PolicyStatus {
    /// Why containers are refused because of the policy, if they are.
    pub fn refusal(&self) -> Option<String> {
        match self {
            PolicyStatus::Invalid { reason } => Some(format!(
                "the agent policy (policy.rego in the Init-Data) does not load: {reason}"
            )),
            _ => None,
        }
    }
}

/// Result of checking the document's digest against what the launch was bound to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verification {
    /// The TEE register holds the document's digest.
    Verified {
        /// The TEE.
        tee: Tee,
        /// Hex of the register (MRCONFIGID: 48 bytes; HOST_DATA: 32 bytes).
        register: String,
    },
    /// No TEE: nothing measured the launch. `matches_cmdline` says whether the digest the host
    /// put on the kernel command line (`coffer.initdata_digest`) equals the document's.
    Unmeasured {
        /// The command line's digest equals the document's.
        matches_cmdline: bool,
    },
    /// The document is not the one the launch was bound to: containers are refused.
    Mismatch {
        /// What was compared: `MRCONFIGID`, `HOST_DATA` or `kernel command line`.
        source: String,
        /// Hex of the value the launch carries.
        expected: String,
        /// Hex of the value the document gives.
        found: String,
    },
    /// No Init-Data disk, and the launch expects none.
    #[default]
    NoInitData,
    /// The Init-Data could not be read or checked (corrupt or missing disk, no TEE device, ...):
    /// containers are refused.
    Error {
        /// What went wrong.
        reason: String,
    },
}

impl Verification {
    /// Whether containers may run: the document is verified, unmeasured but as declared, or
    /// absent as declared.
    pub fn allows_containers(&self) -> bool {
        matches!(
            self,
            Verification::Verified { .. }
                | Verification::Unmeasured { .. }
                | Verification::NoInitData
        )
    }

    /// Why containers are refused, if they are.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Verification::Mismatch {
                source,
                expected,
                found,
            } => Some(format!(
                "the Init-Data in this guest does not match the launch: {source} is {expected} but the document's digest gives {found}"
            )),
            Verification::Error { reason } => Some(format!("the Init-Data could not be verified: {reason}")),
            _ => None,
        }
    }
}

/// An attestation service the guest looked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// `attestation-agent`, `confidential-data-hub` or `api-server-rest`.
    pub name: String,
    /// Its pid if it was started.
    pub pid: Option<u32>,
    /// Why it was not started (absent from the image, failed to start, ...).
    pub note: Option<String>,
}

/// Something the guest reports unasked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A chunk of a process's output. An empty `data` means the stream is closed.
    Output {
        /// Container id.
        id: String,
        /// Exec id, absent for the container's own process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// The OOM killer killed a process of the container (its memory limit was reached). Sent
    /// before that process's exit.
    Oom {
        /// Container id.
        id: String,
    },
    /// A process exited. Sent after its output streams closed (or after a short grace time if a
    /// child of it keeps them open).
    Exit {
        /// Container id.
        id: String,
        /// Exec id, absent for the container's own process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        /// How it exited.
        status: ExitStatus,
    },
}

/// An output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code as containerd reports it: the code, or 128 + the signal number.
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

/// Base64 (standard, padded) for byte fields, so JSON stays compact.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_stable() {
        let frame = RequestFrame {
            id: 7,
            request: Request::Wait {
                id: "c1".into(),
                exec_id: None,
            },
        };
        let bytes = encode(&frame).unwrap();
        let json = br#"{"id":7,"request":{"op":"wait","id":"c1"}}"#;
        assert_eq!(
            &bytes[..4],
            &u32::try_from(json.len()).unwrap().to_be_bytes()
        );
        assert_eq!(&bytes[4..], json);
        let back: RequestFrame = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn stdin_and_terminal_requests_wire_format() {
        let write = RequestFrame {
            id: 3,
            request: Request::WriteStdin {
                id: "c1".into(),
                exec_id: Some("e1".into()),
                data: b"ls\n".to_vec(),
            },
        };
        assert_eq!(
            serde_json::to_string(&write).unwrap(),
            r#"{"id":3,"request":{"op":"write_stdin","id":"c1","exec_id":"e1","data":"bHMK"}}"#
        );
        let close = Request::CloseStdin {
            id: "c1".into(),
            exec_id: None,
        };
        assert_eq!(
            serde_json::to_string(&close).unwrap(),
            r#"{"op":"close_stdin","id":"c1"}"#
        );
        let resize = Request::ResizePty {
            id: "c1".into(),
            exec_id: Some("e1".into()),
            width: 80,
            height: 24,
        };
        assert_eq!(
            serde_json::to_string(&resize).unwrap(),
            r#"{"op":"resize_pty","id":"c1","exec_id":"e1","width":80,"height":24}"#
        );
        for r in [write.request, close, resize] {
            let json = serde_json::to_vec(&r).unwrap();
            assert_eq!(decode::<Request>(&json).unwrap(), r);
        }
    }

    #[test]
    fn process_flags_are_off_the_wire_unless_set() {
        let plain = Process {
            args: vec!["sh".into()],
            ..Default::default()
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("terminal") && !json.contains("stdin"),
            "{json}"
        );
        // A process from a host that knows nothing of the flags has neither.
        let old: Process = decode(br#"{"args":["sh"]}"#).unwrap();
        assert_eq!(old, plain);
        let tty: Process = decode(br#"{"args":["sh"],"terminal":true,"stdin":true}"#).unwrap();
        assert!(tty.terminal && tty.stdin);
    }

    #[test]
    fn security_settings_wire_format() {
        let json = br#"{"args":["sh"],
            "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"]},
            "no_new_privileges":true,
            "rlimits":[{"type":"RLIMIT_NOFILE","hard":2,"soft":1}],
            "seccomp":{"default_action":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
              "syscalls":[{"names":["clone"],"action":"SCMP_ACT_ALLOW",
                "args":[{"index":0,"value":2114060288,"value_two":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}}"#;
        let p: Process = decode(json).unwrap();
        assert_eq!(p.capabilities.as_ref().unwrap().bounding, ["CAP_KILL"]);
        assert!(p.capabilities.as_ref().unwrap().ambient.is_empty());
        assert!(p.no_new_privileges);
        assert_eq!(p.rlimits[0].kind, "RLIMIT_NOFILE");
        let seccomp = p.seccomp.as_ref().unwrap();
        assert_eq!(seccomp.syscalls[0].args[0].op, "SCMP_CMP_MASKED_EQ");
        assert_eq!(seccomp.default_errno_ret, None);
        let back: Process = decode(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        // Misspelt fields are refused, not dropped.
        assert!(decode::<Process>(br#"{"args":["sh"],"no_new_privs":true}"#).is_err());
        let c: CreateContainer = decode(
            br#"{"id":"c","rootfs":"r","process":{"args":["sh"]},"masked_paths":["/proc/kcore"],"readonly_root":true}"#,
        )
        .unwrap();
        assert_eq!(c.masked_paths, ["/proc/kcore"]);
        assert_eq!((c.rootfs.as_deref(), c.image.as_deref()), (Some("r"), None));
        let pulled: CreateContainer =
            decode(br#"{"id":"c","image":"10.88.0.250:5000/busybox:1","process":{"args":["sh"]}}"#)
                .unwrap();
        assert_eq!(pulled.image.as_deref(), Some("10.88.0.250:5000/busybox:1"));
        assert_eq!(pulled.rootfs, None);
        assert!(!serde_json::to_string(&pulled).unwrap().contains("rootfs"));
        assert!(c.readonly_root && c.readonly_paths.is_empty());
    }

    #[test]
    fn events_carry_bytes_as_base64() {
        let frame = GuestFrame::Event {
            event: Event::Output {
                id: "c1".into(),
                exec_id: None,
                stream: Stream::Stdout,
                data: b"hi\n\xff".to_vec(),
            },
        };
        let bytes = encode(&frame).unwrap();
        assert_eq!(
            &bytes[4..],
            br#"{"kind":"event","event":{"type":"output","id":"c1","stream":"stdout","data":"aGkK/w=="}}"#
        );
        let back: GuestFrame = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn verification_wire_format() {
        let v = Verification::Mismatch {
            source: "kernel command line".into(),
            expected: "aa".into(),
            found: "bb".into(),
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"result":"mismatch","source":"kernel command line","expected":"aa","found":"bb"}"#
        );
        assert!(!v.allows_containers());
        assert_eq!(
            v.refusal().unwrap(),
            "the Init-Data in this guest does not match the launch: kernel command line is aa but the document's digest gives bb"
        );
        assert!(Verification::NoInitData.allows_containers());
        let outcome = Outcome::Err(GuestError::new(
            ErrorKind::NotFound,
            "no container \"x\" in this guest",
        ));
        assert_eq!(
            serde_json::to_string(&outcome).unwrap(),
            r#"{"err":{"kind":"not_found","message":"no container \"x\" in this guest"}}"#
        );
    }

    #[test]
    fn policy_status_wire_format() {
        let report = InitDataReport {
            policy: PolicyStatus::Enforced { rules: 36 },
            ..Default::default()
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["policy"],
            serde_json::json!({"state": "enforced", "rules": 36})
        );
        // A report from an agent without the field reads as no policy.
        let old: InitDataReport =
            serde_json::from_str(r#"{"tee":"none","files":["initdata.toml"]}"#).unwrap();
        assert_eq!(old.policy, PolicyStatus::None);
        assert_eq!(
            serde_json::to_string(&PolicyStatus::Invalid { reason: "x".into() }).unwrap(),
            r#"{"state":"invalid","reason":"x"}"#
        );
        assert_eq!(PolicyStatus::None.refusal(), None);
    }

    #[test]
    fn oversized_and_truncated_frames_are_refused() {
        let mut huge = (u32::try_from(MAX_FRAME).unwrap() + 1)
            .to_be_bytes()
            .to_vec();
        huge.extend_from_slice(b"{}");
        let err = read_frame::<_, RequestFrame>(&mut &huge[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_FRAME + 1));

        let empty: &[u8] = &[];
        assert!(matches!(
            read_frame::<_, RequestFrame>(&mut &empty[..]),
            Err(FrameError::Closed)
        ));
        let cut: &[u8] = &[0, 0, 0, 10, b'{'];
        assert!(matches!(
            read_frame::<_, RequestFrame>(&mut &cut[..]),
            Err(FrameError::Truncated { .. })
        ));
        let junk: &[u8] = &[0, 0, 0, 2, b'[', b']'];
        assert!(matches!(
            read_frame::<_, RequestFrame>(&mut &junk[..]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_operations_are_malformed() {
        let body = br#"{"id":1,"request":{"op":"format_disk"}}"#;
        assert!(matches!(
            decode::<RequestFrame>(body),
            Err(FrameError::Malformed(m)) if m.contains("format_disk")
        ));
    }
}
