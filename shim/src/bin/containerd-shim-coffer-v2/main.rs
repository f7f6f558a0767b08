//! `containerd-shim-coffer-v2`: the containerd runtime v2 shim that runs each pod in its own
//! (confidential) VM. containerd runs it for handlers with `runtime_type = "io.containerd.coffer.v2"`.

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<coffer_shim::shim::CofferShim>(
        coffer_shim::shim::RUNTIME_TYPE,
        Some(coffer_shim::shim::shim_config()),
    )
    .await;
}
