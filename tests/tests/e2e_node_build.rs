//! End to end on the shim and CLI as a node gets them (`packaging/build-node.sh`: the `node`
//! profile, static for the musl target), where every other test runs the debug build. The test
//! command builds them and names their directory in COFFER_NODE_BIN_DIR; without it, or without
//! containerd or the guest image, the test prints `SKIP: <reason>` and passes.

use std::path::{Path, PathBuf};

use coffer_initdata::annotation::ANNOTATION;
use coffer_initdata::InitData;
use coffer_tests::lifecycle;
use coffer_tests::tools::{self, Coffer};
use coffer_tests::{skip, Options, Pod, PrivateContainerd};

/// Where build-node.sh puts a static build.
const MUSL: &str = "x86_64-unknown-linux-musl";

/// The shared objects `pid` has mapped (libc.so.6, ld-linux-x86-64.so.2, ...).
fn shared_objects(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/maps: {e}"));
    let mut objects: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.contains(".so"))
        .map(str::to_owned)
        .collect();
    objects.dedup();
    objects
}

fn node_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("COFFER_NODE_BIN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or("COFFER_NODE_BIN_DIR is not set (packaging/build-node.sh prints it)")?;
    for b in ["containerd-shim-coffer-v2", "coffer"] {
        if !dir.join(b).is_file() {
            return Err(format!("COFFER_NODE_BIN_DIR={} lacks {b}", dir.display()));
        }
    }
    Ok(dir)
}

/// The pod's shim is the node build, static when built for musl.
fn assert_the_node_shim(ctd: &PrivateContainerd, node: &Path) {
    let socket = ctd.socket().to_string_lossy().into_owned();
    let shims = tools::processes("containerd-shim-coffer-v2", &socket);
    assert_eq!(shims.len(), 1, "expected one shim for the pod: {shims:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", shims[0])).expect("the shim's exe");
    assert_eq!(exe, node.join("containerd-shim-coffer-v2"));
    let objects = shared_objects(shims[0]);
    if node.components().any(|c| c.as_os_str() == MUSL) {
        assert_eq!(
            objects,
            Vec::<String>::new(),
            "the static shim maps shared objects"
        );
    } else {
        println!("NOTE: the node build is dynamically linked (no {MUSL} target): {objects:?}");
    }
}

#[test]
fn the_node_build_runs_a_pod_with_init_data() {
    let parts = (
        node_dir(),
        tools::guest_dir(),
        tools::containerd_missing().map_or(Ok(()), Err),
    );
    let (node, guest) = match parts {
        (Ok(n), Ok(g), Ok(())) => (n, g),
        (Err(reason), _, _) | (_, Err(reason), _) | (_, _, Err(reason)) => return skip(reason),
    };
    let ctd = PrivateContainerd::start_with(&Options {
        bin_dir: Some(node.clone()),
        guest_dir: Some(guest),
        rootfs: Some("host".into()),
        ..Options::found()
    })
    .unwrap_or_else(|e| panic!("the private containerd did not start: {e}"));

    // The node's CLI makes the annotation and reads the digest back from the running pod.
    let coffer = Coffer::in_dir(&node);
    let example = tools::seed_initdata();
    let annotation = coffer.encode(&example).expect("coffer initdata encode");
    let expected = InitData::parse(std::fs::read(&example).expect("read the example"))
        .expect("the example is valid Init-Data")
        .digest()
        .to_hex();
    let mut cri = ctd.cri().expect("connect");
    let pod =
        Pod::new("node-build", "coffer-qemu", &ctd.log_root()).annotation(ANNOTATION, &annotation);
    let running = lifecycle::start_busybox(&mut cri, &pod);
    assert_eq!(ctd.vms().len(), 1, "expected exactly one VM for the pod");
    assert_the_node_shim(&ctd, &node);
    lifecycle::assert_on_the_pod_network(&ctd, &mut cri, &running);
    let state = ctd.coffer_state_dir().to_string_lossy().into_owned();
    let shown = coffer
        .ok(&["inspect", "--state-dir", &state, &running.pod_id])
        .expect("coffer inspect");
    assert!(
        shown.contains(&expected),
        "coffer inspect does not show the digest {expected}:\n{shown}"
    );
    lifecycle::stop_and_assert_gone(&ctd, &mut cri, &running);
}
