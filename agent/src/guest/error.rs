//! Errors of container operations. Each goes back to the host as the answer to its request, so
//! its message says what failed and, where it helps, what to do instead.

use super::security::SecurityError;
use crate::protocol::{ErrorKind, GuestError};

/// Errors of container operations; the message goes to the host as is.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The container id is unknown.
    #[error("no container \"{0}\" in this guest")]
    NoContainer(String),
    /// The exec id is unknown.
    #[error("no process \"{exec}\" in container \"{id}\"")]
    NoExec {
        /// Container id.
        id: String,
        /// Exec id.
        exec: String,
    },
    /// The id is taken.
    #[error("{0} already exists in this guest")]
    Exists(String),
    /// The request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The guest runs no containers at all (its Init-Data or launch did not check out).
    #[error("this guest refuses to run containers: {0}")]
    Refused(String),
    /// The container is in the wrong state for this request.
    #[error("container \"{id}\" is {state}; {hint}")]
    State {
        /// Container id.
        id: String,
        /// Its state.
        state: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// The process's or container's security settings (capabilities, rlimits, seccomp, masked
    /// or read-only paths) name something the guest does not know or cannot do.
    #[error("{0}")]
    Security(#[from] SecurityError),
    /// The container's image could not be pulled.
    #[error("{0}")]
    Pull(#[from] super::image::PullError),
    /// The container's root could not be set up over its image.
    #[error("{0}")]
    Image(String),
    /// A system call failed in the agent or in the child before exec.
    #[error("{step} failed: {source}")]
    Sys {
        /// What was being done.
        step: String,
        /// The error.
        source: nix::Error,
    },
}

impl ContainerError {
    /// The kind of failure, for the status code containerd shows.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ContainerError::NoContainer(_) | ContainerError::NoExec { .. } => ErrorKind::NotFound,
            ContainerError::Exists(_) => ErrorKind::AlreadyExists,
            ContainerError::Invalid(_) | ContainerError::Security(_) => ErrorKind::InvalidArgument,
            // A failed system call is most often the container's doing (a missing binary, a
            // path that is not a directory): the request cannot succeed as the guest stands.
            ContainerError::Pull(p) => p.kind(),
            ContainerError::Refused(_)
            | ContainerError::Image(_)
            | ContainerError::State { .. }
            | ContainerError::Sys { .. } => ErrorKind::FailedPrecondition,
        }
    }
}

impl From<ContainerError> for GuestError {
    fn from(e: ContainerError) -> GuestError {
        GuestError::new(e.kind(), e.to_string())
    }
}

/// Turns a failed system call into the error that names `step`.
pub(super) fn sys(step: impl Into<String>) -> impl FnOnce(nix::Error) -> ContainerError {
    let step = step.into();
    move |source| ContainerError::Sys { step, source }
}

/// The errno behind an I/O error (EIO when it carries none).
pub(super) fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_the_kind_containerd_expects() {
        let cases = [
            (
                ContainerError::NoContainer("c1".into()),
                ErrorKind::NotFound,
            ),
            (
                ContainerError::NoExec {
                    id: "c1".into(),
                    exec: "e1".into(),
                },
                ErrorKind::NotFound,
            ),
            (
                ContainerError::Exists("container \"c1\"".into()),
                ErrorKind::AlreadyExists,
            ),
            (
                ContainerError::Invalid("bad".into()),
                ErrorKind::InvalidArgument,
            ),
            (
                ContainerError::Security(SecurityError::UnknownRlimit("RLIMIT_X".into())),
                ErrorKind::InvalidArgument,
            ),
            (
                ContainerError::Refused("no".into()),
                ErrorKind::FailedPrecondition,
            ),
            (
                ContainerError::Sys {
                    step: "exec".into(),
                    source: nix::Error::ENOENT,
                },
                ErrorKind::FailedPrecondition,
            ),
        ];
        for (e, kind) in cases {
            let message = e.to_string();
            assert_eq!(GuestError::from(e), GuestError::new(kind, message));
        }
    }
}
