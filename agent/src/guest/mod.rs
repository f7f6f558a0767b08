//! The guest side: everything `coffer-agent` does as PID 1.
//!
//! Bringing the guest up: `boot`, `initdata`, `tee`, `policy` (with `kata_input`, what its
//! rules see). Serving the host: `server`, and
//! `outgoing`, the ordered queue of frames to it. Containers: `container` (the registry, from
//! create to remove), `image` (the images the guest pulls itself, with `registry`, where from,
//! and `layer`, how one is unpacked), `child` (a process between clone and exec) and its `report` pipe,
//! `security` and `seccomp` (what confines the process, prepared before the clone), `stdio` and
//! `pty` (the process's streams), and `error` (what the host is told when one fails).

pub mod boot;
pub mod cgroup;
mod child;
pub mod components;
pub mod container;
mod error;
mod files;
pub mod image;
pub mod initdata;
pub mod kata_input;
mod layer;
pub mod network;
pub mod outgoing;
pub mod policy;
mod pty;
pub mod registry;
mod report;
mod seccomp;
mod security;
pub mod server;
mod stdio;
pub mod tee;
