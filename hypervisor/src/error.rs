//! Why a VM could not be planned, started or stopped.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Accel, Tee};

/// Errors of this crate. Messages say what was wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pod asks for a TEE this host cannot launch.
    #[error("this host cannot launch {} guests: {reason}", tee.display_name())]
    TeeUnavailable {
        /// The TEE asked for.
        tee: Tee,
        /// What the host probe found.
        reason: String,
    },
    /// Cloud Hypervisor was configured for a TEE it cannot bind Init-Data into.
    #[error("{0}")]
    UnsupportedByCloudHypervisor(&'static str),
    /// A confidential guest was configured with an accelerator other than KVM.
    #[error("{} guests run only on KVM, but the configuration says accel = \"{accel}\"; set accel to \"auto\" or \"kvm\"", tee.display_name())]
    TeeNeedsKvm {
        /// The TEE asked for.
        tee: Tee,
        /// The configured accelerator.
        accel: Accel,
    },
    /// The SEV C-bit position is unknown.
    #[error("cannot tell the SEV C-bit position: this host's CPUID does not report SEV; set `snp.cbitpos` in the [vm] configuration (51 on EPYC Milan and Genoa)")]
    UnknownCbitpos,
    /// A confidential guest needs firmware and none is configured.
    #[error("{what} needs {firmware}; set `firmware` in the [vm] configuration")]
    MissingFirmware {
        /// The guest kind.
        what: &'static str,
        /// The firmware it needs.
        firmware: &'static str,
    },
    /// A value of the configuration is out of range.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    /// Init-Data is bound but there is no disk to hand it to the guest.
    #[error("Init-Data is bound into the launch but no Init-Data image path was given")]
    MissingInitDataImage,
    /// A path cannot be put on a command line.
    #[error("the {what} path {path:?} is not valid UTF-8; use a UTF-8 path")]
    NonUtf8Path {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A MAC address that is not `aa:bb:cc:dd:ee:ff`.
    #[error("MAC address {0:?} is not of the form aa:bb:cc:dd:ee:ff")]
    BadMac(String),
    /// A unix socket path exceeds what `sockaddr_un` holds.
    #[error("the {what} path {path:?} is {len} bytes long, over the 107 a unix socket allows; use a shorter state directory")]
    SocketPathTooLong {
        /// Which socket.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Only QEMU plans can be run by [`crate::Vm`].
    #[error("running Cloud Hypervisor VMs is not supported yet (it has no QMP); use hypervisor = \"qemu\"")]
    CannotRunPlan,
    /// The hypervisor program could not be started.
    #[error("cannot start {program:?}: {source}{hint}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
        /// How to fix a missing program.
        hint: &'static str,
    },
    /// The hypervisor died before its control socket answered.
    #[error("{program:?} exited at start ({status}): {stderr}")]
    EarlyExit {
        /// The program.
        program: PathBuf,
        /// How it ended.
        status: String,
        /// What it printed on stderr (trimmed), or a note that it printed nothing.
        stderr: String,
    },
    /// QMP did not answer in time.
    #[error("QEMU's QMP socket {path:?} did not answer within {waited:?}")]
    QmpTimeout {
        /// The socket.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// QMP answered something unexpected, or a command failed.
    #[error("QMP: {0}")]
    Qmp(String),
    /// An I/O error while talking to or waiting for the VM.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
