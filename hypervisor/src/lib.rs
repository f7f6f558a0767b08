//! The VM: TEE kinds, host probe, launch plan, KVM UAPI structs and the VM process.
