//! containerd-shim-coffer-v2 and the coffer CLI.
