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

/// What a sandbox state directory may hold: the files [`crate::sandbox`] writes there.
const STATE_ENTRIES: [&str; 10] = [
    "state.json",
    "initdata.img",
    "agent.sock",
    "qmp.sock",
    "tty.sock",
    "console.log",
    "console.log.1",
    "share",
    ".state.json.tmp",
    ".initdata.img.tmp",
];

/// Whether `state` is the sandbox state directory of `bundle`, before anything in it is killed
/// or removed: named after the bundle (both carry the sandbox id), and its `state.json` names
/// this bundle, or (a shim that died while creating the sandbox) it holds nothing but what a
/// sandbox's state directory holds. A record that was tampered with to name another directory
/// removes nothing.
pub fn is_sandbox_state_of(state: &StateDir, bundle: &Path) -> Result<(), String> {
    let dir = state.path();
    if !dir.exists() {
        return Ok(());
    }
    if dir.file_name() != bundle.file_name() {
        return Err("is not named after the bundle's sandbox".into());
    }
    match state.read_state() {
        Ok(Some(record)) if record.bundle == bundle => return Ok(()),
        Ok(Some(record)) => {
            return Err(format!("belongs to the bundle {}", record.bundle.display()))
        }
        Ok(None) => {}
        Err(e) => return Err(format!("has an unreadable state.json ({e})")),
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot be listed ({e})"))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !STATE_ENTRIES.iter().any(|n| name.as_os_str() == *n) {
            return Err(format!(
                "holds {:?}, which no sandbox state directory holds",
                name
            ));
        }
    }
    Ok(())
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
            Ok(state) => match is_sandbox_state_of(&state, bundle) {
                Ok(()) => {
                    if let Err(e) = cleanup_leftover(&state) {
                        problems.push(e.to_string());
                    }
                }
                Err(why) => {
                    tracing::warn!(dir = %dir.display(), reason = %why, "not removing what the bundle's record names");
                    problems.push(format!(
                        "the bundle's record names {}, which {why}; it was left alone",
                        dir.display()
                    ));
                }
            },
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
