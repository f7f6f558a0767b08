//! The shim process's lifecycle: `start` (find or spawn the pod's shim), serving, and `delete`
//! (clean up after a shim that died).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error as ShimError, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::MessageField;

use crate::process::{timestamp, Exit};
use crate::sandbox::{cleanup_leftover, read_bundle_record};
use crate::spec::BundleSpec;
use crate::state::StateDir;
use crate::task::TaskService;

/// containerd's name for this runtime.
pub const RUNTIME_TYPE: &str = "io.containerd.coffer.v2";

/// Exit status reported for a task whose shim died: killed (128 + SIGKILL), as runc's shim does.
const DEAD_SHIM_EXIT: u32 = 137;

/// The shim.
pub struct CofferShim {
    id: String,
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for CofferShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CofferShim")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// The options this shim runs containerd-shim with.
pub fn shim_config() -> Config {
    Config {
        // Logging goes through `tracing` (see crate::logging).
        no_setup_logger: true,
        default_log_level: "info".into(),
        // The only children are QEMU processes, which tokio reaps itself; a SIGCHLD reaper
        // calling waitpid(-1) would steal their exit status from it.
        no_reaper: true,
        no_sub_reaper: true,
    }
}

#[async_trait]
impl Shim for CofferShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        crate::logging::init(&args.action, args.debug);
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        CofferShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, ShimError> {
        // One shim per pod: a container joins the shim of its sandbox, found by the socket
        // address derived from the sandbox id.
        let spec = BundleSpec::load(&self.bundle)
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let grouping = spec.sandbox_id(&opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file(
            self.bundle.join("address"),
            &address,
        )
        .await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, ShimError> {
        tracing::info!(id = %self.id, bundle = %self.bundle.display(), "cleaning up after a dead shim");
        cleanup_bundle(&self.bundle).map_err(ShimError::Other)?;
        Ok(DeleteResponse {
            pid: 0,
            exit_status: DEAD_SHIM_EXIT,
            exited_at: MessageField::some(timestamp(Exit::now(DEAD_SHIM_EXIT).at)),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(&self.namespace, Some(publisher), self.exit.clone())
    }
}

/// What the `delete` action does: the sandbox's VM and state (if this bundle is a sandbox's),
/// then the bundle's root filesystem mount.
pub fn cleanup_bundle(bundle: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Some(dir) = read_bundle_record(bundle) {
        let root = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match StateDir::new(&root, &id) {
            Ok(state) => {
                if let Err(e) = cleanup_leftover(&state) {
                    problems.push(e.to_string());
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
        let _ = std::fs::remove_file(bundle.join(crate::sandbox::BUNDLE_RECORD));
    }
    if let Err(e) = crate::mount::unmount_all(&bundle.join("rootfs")) {
        problems.push(e);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
