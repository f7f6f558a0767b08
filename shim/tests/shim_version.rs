//! `containerd-shim-coffer-v2 -v`, as containerd's own shims answer it: outside containerd,
//! with none of the environment a shim is started with.

use std::process::Command;

#[test]
fn the_shim_prints_its_version_and_runtime_type() {
    for flag in ["-v", "-version", "--version"] {
        let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-coffer-v2"))
            .arg(flag)
            .env_remove("TTRPC_ADDRESS")
            .output()
            .expect("run the shim");
        assert!(out.status.success(), "{flag}: {out:?}");
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        assert_eq!(
            text,
            format!(
                "containerd-shim-coffer-v2:\n  Version:  {}\n  Runtime:  io.containerd.coffer.v2\n",
                env!("CARGO_PKG_VERSION")
            ),
            "{flag}"
        );
    }
}
