//! The shim's error type and how each error reaches containerd.
//!
//! containerd prints a task error's message verbatim (crictl shows `failed to create shim task:
//! <message>`), so every message names the cause and, where possible, the fix. The ttrpc code
//! tells containerd (and kubelet) what kind of failure it is.

use std::path::PathBuf;

use containerd_shim_protos::ttrpc::{self, Code};

use crate::config::ConfigError;
use crate::options::OptionsError;
use crate::state::StateError;

/// Everything that can go wrong in the shim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The handler's configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// containerd's runtime options are unusable.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The bundle's OCI spec is missing or unusable.
    #[error("bad OCI spec {path}: {reason}")]
    Spec {
        /// The config.json.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The pod's Init-Data is invalid.
    #[error("pod Init-Data refused: {0}")]
    InitData(#[from] coffer_initdata::Error),
    /// The handler's default Init-Data file is unusable.
    #[error("default Init-Data {path} (from the coffer config) is unusable: {reason}")]
    DefaultInitData {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The handler requires Init-Data and the pod brings none.
    #[error("this runtime handler requires Init-Data, but the pod has no io.katacontainers.config.hypervisor.cc_init_data annotation (is it listed in the handler's pod_annotations?)")]
    InitDataRequired,
    /// The VM cannot be planned or started (TEE not available, QEMU missing, ...).
    #[error(transparent)]
    Hypervisor(#[from] coffer_hypervisor::Error),
    /// The guest agent did not answer or failed.
    #[error(transparent)]
    Agent(#[from] coffer_agent::protocol::client::ClientError),
    /// The guest agent never answered; the console's last lines usually say why.
    #[error("{detail}; last lines of the guest console: {console}")]
    AgentTimeout {
        /// The client's timeout message.
        detail: String,
        /// The end of the guest console, on one line.
        console: String,
    },
    /// QEMU exited before the guest agent answered (the kernel panicked, the guest powered
    /// off); the console's last lines usually say why.
    #[error("the VM exited before its guest agent answered ({exit}); last lines of the guest console: {console}")]
    VmExitedEarly {
        /// How QEMU ended.
        exit: String,
        /// The end of the guest console, on one line.
        console: String,
    },
    /// The guest read other Init-Data than the host launched it with.
    #[error("Init-Data digest mismatch: the host launched the VM with {expected} but the guest read {found}")]
    DigestMismatch {
        /// Hex digest the host computed.
        expected: String,
        /// Hex digest the guest reported (or "nothing").
        found: String,
    },
    /// The guest refuses to run containers (its Init-Data check failed).
    #[error("{0}")]
    GuestRefused(String),
    /// State directory trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// Mounting or unmounting a root filesystem failed.
    #[error("{0}")]
    Mount(String),
    /// Opening or writing containerd's stdio FIFOs failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A request containerd may send but this shim does not support.
    #[error("{0} is not supported by the coffer runtime")]
    Unsupported(&'static str),
    /// An argument is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// No task or process with that id.
    #[error("{0} not found")]
    NotFound(String),
    /// A task or process with that id exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The operation does not fit the task's state.
    #[error("{0}")]
    FailedPrecondition(String),
}

impl Error {
    /// The ttrpc status code containerd should see.
    pub fn code(&self) -> Code {
        use coffer_agent::protocol::client::ClientError as C;
        use coffer_hypervisor::Error as H;
        match self {
            Error::Config(_)
            | Error::Options(_)
            | Error::Spec { .. }
            | Error::InitData(_)
            | Error::DefaultInitData { .. }
            | Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::InitDataRequired
            | Error::DigestMismatch { .. }
            | Error::GuestRefused(_)
            | Error::AgentTimeout { .. }
            | Error::VmExitedEarly { .. }
            | Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Hypervisor(e) => match e {
                H::TeeUnavailable { .. }
                | H::TeeNeedsKvm { .. }
                | H::UnknownCbitpos
                | H::MissingFirmware { .. }
                | H::UnsupportedByCloudHypervisor(_)
                | H::CannotRunPlan => Code::FAILED_PRECONDITION,
                H::InvalidConfig(_) | H::NonUtf8Path { .. } | H::SocketPathTooLong { .. } => {
                    Code::INVALID_ARGUMENT
                }
                // QEMU missing, dying at start or not answering: this host cannot run the VM
                // as configured.
                _ => Code::FAILED_PRECONDITION,
            },
            Error::Agent(e) => match e {
                C::Timeout { .. } => Code::FAILED_PRECONDITION,
                C::CallTimeout { .. } => Code::DEADLINE_EXCEEDED,
                C::VersionMismatch { .. } => Code::FAILED_PRECONDITION,
                C::Remote { kind, .. } => guest_code(*kind),
                _ => Code::UNAVAILABLE,
            },
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
            Error::State(StateError::BadId(_)) => Code::INVALID_ARGUMENT,
            Error::State(_) | Error::Mount(_) | Error::Io { .. } => Code::INTERNAL,
        }
    }
}

/// The status code of a guest error: the guest says what kind of failure it was.
fn guest_code(kind: coffer_agent::protocol::ErrorKind) -> Code {
    use coffer_agent::protocol::ErrorKind as K;
    match kind {
        K::NotFound => Code::NOT_FOUND,
        K::AlreadyExists => Code::ALREADY_EXISTS,
        K::InvalidArgument => Code::INVALID_ARGUMENT,
        K::FailedPrecondition => Code::FAILED_PRECONDITION,
        K::PermissionDenied => Code::PERMISSION_DENIED,
        K::DeadlineExceeded => Code::DEADLINE_EXCEEDED,
        K::Internal => Code::INTERNAL,
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Result type of the shim.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: Error) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn bad_initdata_is_invalid_argument_naming_the_cause() {
        let limits = coffer_initdata::Limits::default();
        let e = coffer_initdata::annotation::decode("not base64!", &limits).unwrap_err();
        let (code, msg) = status(Error::InitData(e));
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            msg.starts_with("pod Init-Data refused: Init-Data annotation is not valid base64"),
            "{msg}"
        );
    }

    #[test]
    fn unavailable_tee_is_failed_precondition_with_the_hypervisor_message() {
        let e = coffer_hypervisor::Error::TeeUnavailable {
            tee: coffer_hypervisor::Tee::Tdx,
            reason: "KVM does not offer TDX VMs".into(),
        };
        let (code, msg) = status(Error::Hypervisor(e));
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert_eq!(
            msg,
            "this host cannot launch TDX guests: KVM does not offer TDX VMs"
        );
    }

    #[test]
    fn digest_mismatch_names_both_digests() {
        let (code, msg) = status(Error::DigestMismatch {
            expected: "aa".into(),
            found: "bb".into(),
        });
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert_eq!(
            msg,
            "Init-Data digest mismatch: the host launched the VM with aa but the guest read bb"
        );
    }

    #[test]
    fn guest_errors_keep_their_kind() {
        use coffer_agent::protocol::client::ClientError;
        use coffer_agent::protocol::ErrorKind;
        let remote = |kind| {
            Error::Agent(ClientError::Remote {
                op: "exec",
                kind,
                message: "no container \"c1\" in this guest".into(),
            })
        };
        for (kind, code) in [
            (ErrorKind::NotFound, Code::NOT_FOUND),
            (ErrorKind::AlreadyExists, Code::ALREADY_EXISTS),
            (ErrorKind::InvalidArgument, Code::INVALID_ARGUMENT),
            (ErrorKind::FailedPrecondition, Code::FAILED_PRECONDITION),
            (ErrorKind::PermissionDenied, Code::PERMISSION_DENIED),
            (ErrorKind::DeadlineExceeded, Code::DEADLINE_EXCEEDED),
            (ErrorKind::Internal, Code::INTERNAL),
        ] {
            let (got, msg) = status(remote(kind));
            assert_eq!(got, code, "{kind:?}");
            assert_eq!(
                msg,
                "the guest agent refused exec: no container \"c1\" in this guest"
            );
        }
    }

    #[test]
    fn required_initdata_says_how_to_fix() {
        let (code, msg) = status(Error::InitDataRequired);
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert!(msg.contains("requires Init-Data"), "{msg}");
        assert!(msg.contains("pod_annotations"), "{msg}");
    }
}
