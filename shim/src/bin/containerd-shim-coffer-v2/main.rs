//! `containerd-shim-coffer-v2`: the containerd runtime v2 shim that runs each pod in its own
//! (confidential) VM. containerd runs it for handlers with `runtime_type = "io.containerd.coffer.v2"`.

use std::process::ExitCode;
use std::time::Duration;

/// How long a thread that ran blocking work (a FIFO open, the KVM probe) waits for more before
/// it exits. tokio's default is 10 s; a pod's shim runs such work rarely.
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// One shim serves one pod, and there is one shim process per pod on the node: its memory is
/// multiplied by the pod count. So the runtime is single-threaded (no worker threads, each with
/// its own stack), blocking work goes to `spawn_blocking` threads that leave soon after, and
/// the allocator keeps a single heap: musl's always does (the node build, packaging/build-node.sh);
/// glibc is told to keep one malloc arena instead of one more per thread that ever allocated.
fn main() -> ExitCode {
    // As containerd's own shims answer it. The shim library would first want the environment
    // containerd gives a shim, and fail without it.
    if std::env::args_os()
        .skip(1)
        .any(|a| a == "-v" || a == "-version" || a == "--version")
    {
        println!(
            "containerd-shim-coffer-v2:\n  Version:  {}\n  Runtime:  {}",
            env!("CARGO_PKG_VERSION"),
            coffer_shim::service::RUNTIME_TYPE
        );
        return ExitCode::SUCCESS;
    }
    // SAFETY: mallopt only sets a parameter of the allocator, and no other thread exists yet.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("containerd-shim-coffer-v2: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(containerd_shim::asynchronous::run::<
        coffer_shim::service::CofferShim,
    >(
        coffer_shim::service::RUNTIME_TYPE,
        Some(coffer_shim::service::shim_config()),
    ));
    ExitCode::SUCCESS
}
