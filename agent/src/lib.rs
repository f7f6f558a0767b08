//! coffer-agent, the in-guest agent, and the host<->guest protocol.
//!
//! The library holds the [`protocol`] both sides speak: message types, framing, and (with the
//! `client` feature) the host's async client. The `coffer-agent` binary is PID 1 of the guest
//! initramfs: it mounts the early filesystems, loads the kernel modules listed in
//! `/etc/coffer/modules`, reads the Init-Data disk (serial `initdata`), checks its digest against
//! the TEE register (or, without a TEE, against `coffer.initdata_digest` on the kernel command
//! line), delivers it under `/run/confidential-containers/initdata/`, starts the attestation
//! agent and data hub when the image has them, and serves the host on the virtio-serial port
//! `coffer.agent`: containers from root filesystems on the 9p share, each in its own mount, PID,
//! UTS and IPC namespaces.

pub mod protocol;
