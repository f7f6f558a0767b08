//! End-to-end test harness: a private containerd driven through the CRI, as crictl and the
//! kubelet drive it, and the paths of the Coffer binaries and guest image under test.
//!
//! - [`PrivateContainerd`] starts `packaging/dev/up.sh` in a temporary directory and runs
//!   `packaging/dev/down.sh` when dropped, so a test never touches the machine's own containerd.
//! - [`Cri`] makes the CRI calls crictl makes, through `k8s-cri` over the unix socket.
//! - [`Crictl`] runs the same calls through a real `crictl`, where one is installed.
//! - Both implement [`Driver`], so one scenario runs through either; [`lifecycle`] is the
//!   busybox pod lifecycle the scenarios share.
//! - [`registry`] runs a real OCI registry on the private pod bridge, for guest pull.
//! - [`tools`] finds the shim, the CLI and the guest image; [`skip`] prints the `SKIP:` line a
//!   test that cannot run here leaves for CI.

mod containerd;
mod cri;
mod crictl;
mod driver;
pub mod lifecycle;
pub mod registry;
pub mod stream;
pub mod tools;

pub use containerd::{Footprint, Options, PrivateContainerd, StartError};
pub use cri::{Cri, CriError};
pub use crictl::Crictl;
pub use driver::{
    Container, ContainerSecurity, ContainerState, DnsConfig, Driver, ExecResult, Pod, PodResources,
    BUSYBOX_IMAGE,
};

/// Prints why a test does not run, in the form CI greps for, and lets the caller return.
pub fn skip(reason: impl std::fmt::Display) {
    eprintln!("SKIP: {reason}");
}
