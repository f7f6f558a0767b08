//! The VM: TEE kinds, host probe, launch plan, KVM UAPI structs and the VM process.
//!
//! - [`Tee`] and [`Accel`]: what a sandbox VM is launched as;
//! - [`HostCapabilities`]: what this host can launch, and why not (see [`probe`], [`speed`]);
//! - [`VmConfig`]: the `[vm]` table of a runtime handler's configuration;
//! - [`LaunchPlan`]: the exact hypervisor command line, as data, with the Init-Data digest bound
//!   into TDX MRCONFIGID or SEV-SNP HOST_DATA;
//! - [`uapi`]: the KVM structures a direct-KVM launch fills from the digest;
//! - [`Vm`]: the running QEMU process (QMP, stop, reap).
//!
//! ```
//! use coffer_hypervisor::{HostCapabilities, LaunchPlan, Tee, VmConfig, VmResources};
//!
//! let config = VmConfig::default();
//! let host = HostCapabilities::for_dry_run(config.accel);
//! let plan = LaunchPlan::build(&config, Tee::None, &host, None, &VmResources::in_dir("/run/coffer/pod"))?;
//! // No KVM in a dry run: the guest is emulated, with a bounded translation cache.
//! assert!(plan.args.contains(&"tcg,tb-size=48".to_string()));
//! # Ok::<(), coffer_hypervisor::Error>(())
//! ```

pub mod config;
pub mod console;
mod error;
pub mod plan;
pub mod probe;
mod qmp;
pub mod speed;
mod tee;
pub mod uapi;
mod vm;

pub use config::{HypervisorKind, Machine, SnpConfig, TdxConfig, VmConfig};
pub use error::{Error, Result};
pub use plan::{LaunchPlan, Nic, RunAs, VmResources, QEMU_DIR, TAP_FD};
pub use probe::{HostCapabilities, Support};
pub use tee::{Accel, Tee};
pub use vm::{StopStep, Vm, VmExit, VmStatus, QMP_START_TIMEOUT};
