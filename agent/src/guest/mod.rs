//! The guest side: everything `coffer-agent` does as PID 1.

pub mod boot;
pub mod container;
pub mod initdata;
pub mod policy;
pub mod server;
pub mod tee;
