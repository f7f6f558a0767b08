//! Errors of container operations. Each goes back to the host as the answer to its request, so
//! its message says what failed and, where it helps, what to do instead.

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
    /// A system call failed in the agent or in the child before exec.
    #[error("{step} failed: {source}")]
    Sys {
        /// What was being done.
        step: String,
        /// The error.
        source: nix::Error,
    },
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
