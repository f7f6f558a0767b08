//! containerd-shim-coffer-v2: every pod a (confidential) VM, as a containerd runtime v2 shim.
//!
//! Laid out by the concepts a containerd reader already knows:
//! - [`config`]: the runtime handler's TOML; [`options`]: how containerd names that file;
//! - [`shim`]: the process lifecycle (`start`, serve, `delete`); [`service`]: the task API;
//! - [`sandbox`]: the pod's VM, from Init-Data to a ready guest agent and back;
//! - [`container`], [`process`], [`io`], [`mount`]: the tasks in the VM, their processes,
//!   their output and their root filesystems; [`network`]: the pod's network, joined to the VM;
//! - [`spec`]: what is read from the OCI bundle; [`state`]: the per-sandbox state directory and
//!   `state.json`, which `coffer inspect` reads;
//! - [`error`]: one error type whose messages reach crictl verbatim; [`logging`]: the shim log.

pub mod config;
pub mod container;
pub mod error;
mod events;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod network;
pub mod options;
mod pod;
pub mod process;
pub mod sandbox;
pub mod service;
pub mod sizing;
pub mod spec;
pub mod state;
pub mod task;
