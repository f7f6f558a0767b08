//! End-to-end tests: a private containerd driven through the CRI, and QEMU.
