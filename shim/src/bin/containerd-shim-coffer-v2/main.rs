//! `containerd-shim-coffer-v2`: the containerd runtime v2 shim that runs each pod in its own
//! (confidential) VM. containerd runs it for handlers with `runtime_type = "io.containerd.coffer.v2"`.

/// One shim serves one pod: a single-threaded runtime is plenty, and it keeps the shim's memory
/// small (no worker threads, each with its own stack). Blocking work goes to `spawn_blocking`.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    containerd_shim::asynchronous::run::<coffer_shim::service::CofferShim>(
        coffer_shim::service::RUNTIME_TYPE,
        Some(coffer_shim::service::shim_config()),
    )
    .await;
}
