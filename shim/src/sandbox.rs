//! The sandbox: one VM per pod, from Init-Data to a ready guest agent, and back to nothing.
//!
//! [`Sandbox::create`] walks the pod's Init-Data through the launch: take it (annotation, else
//! the handler's default), validate it, write its block image into the sandbox's private state
//! directory, build the launch plan (which binds the digest into the TEE and refuses a TEE this
//! host cannot launch), start QEMU, wait for the agent's hello and check that the guest read the
//! very document the host bound. Any failure on the way stops the VM and removes the state
//! directory before the error goes back to containerd, so a refused pod leaves nothing behind.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_agent::protocol::client::{AgentClient, ClientError, EventReceiver, Sent};
use coffer_agent::protocol::{ErrorKind, Request};
use coffer_hypervisor::{HostCapabilities, LaunchPlan, Nic, RunAs, Tee, Vm, VmConfig, VmResources};
use coffer_initdata::{InitData, Limits};
use containerd_shim_protos::protobuf::well_known_types::any::Any;

use crate::config::{Config, RootfsSource, DEFAULT_CONFIG_PATH};
use crate::error::{Error, Result};
use crate::network::GuestNetwork;
use crate::spec::{BundleSpec, Namespace};
use crate::state::{self, InitDataRecord, LaunchCommand, NetworkRecord, SandboxState, StateDir};

/// File in a sandbox's bundle naming its state directory, so the `delete` subcommand (which
/// gets neither the runtime options nor a live shim) finds what to clean up.
pub const BUNDLE_RECORD: &str = "coffer-state-dir";

/// Kata's annotation for an agent policy the host sends (kata-agent's SetPolicy). A confidential
/// pod's policy must be measured, so Coffer takes it only from the Init-Data's `policy.rego`.
pub const KATA_POLICY_ANNOTATION: &str = "io.katacontainers.config.agent.policy";

/// The pod annotations each handler asks containerd to pass into the sandbox's spec: the
/// Init-Data keys, and Kata's policy annotation so that a pod carrying it is refused instead of
/// having it silently dropped.
pub const POD_ANNOTATIONS: [&str; 3] = [
    coffer_initdata::annotation::ANNOTATION,
    coffer_initdata::annotation::LEGACY_ANNOTATION,
    KATA_POLICY_ANNOTATION,
];

/// File in the handler's state root keeping this host boot's KVM speed verdict, so that the
/// probe's timed loop runs once per host boot instead of once per pod.
pub const KVM_SPEED_RECORD: &str = "kvm-speed.json";

/// How long the guest gets to power off after the agent's shutdown, and QEMU after each QMP
/// step, before the next, harsher step.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for the agent to acknowledge shutdown.
const SHUTDOWN_ACK: Duration = Duration::from_secs(5);

/// Where a sandbox's Init-Data came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The pod's annotation.
    Annotation,
    /// The handler's default file.
    Default(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Annotation => f.write_str("annotation"),
            Source::Default(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Picks the Init-Data for a pod: its annotation, else the handler's default, else none (or a
/// refusal when the handler requires Init-Data).
pub fn select_initdata(
    annotations: &HashMap<String, String>,
    config: &Config,
) -> Result<Option<(InitData, Source)>> {
    if let Some(doc) = coffer_initdata::annotation::from_annotations(annotations, &config.initdata)?
    {
        return Ok(Some((doc, Source::Annotation)));
    }
    if let Some(path) = &config.default {
        let doc = read_default(path, &config.initdata)?;
        return Ok(Some((doc, Source::Default(path.clone()))));
    }
    if config.required {
        return Err(Error::InitDataRequired);
    }
    Ok(None)
}

fn read_default(path: &Path, limits: &Limits) -> Result<InitData> {
    let bad = |reason: String| Error::DefaultInitData {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > limits.max_inflated as u64 {
        return Err(bad(format!(
            "it is {} bytes, larger than the limit of {} bytes",
            meta.len(),
            limits.max_inflated
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    InitData::parse(bytes).map_err(|e| bad(e.to_string()))
}

/// A running sandbox VM and its agent connection.
#[derive(Debug)]
pub struct Sandbox {
    /// The pod's id.
    pub id: String,
    /// The handler's configuration.
    pub config: Config,
    /// The state directory.
    pub dir: StateDir,
    /// What was recorded in `state.json`.
    pub record: SandboxState,
    /// The 9p share directory; `None` when the guest pulls its images (no share at all).
    pub share_dir: Option<PathBuf>,
    /// The guest agent.
    pub agent: Arc<AgentClient>,
    /// The pod's hostname (its containers' UTS namespaces get it).
    pub hostname: Option<String>,
    /// The VM's process id, kept once the VM is gone.
    pid: u32,
    /// The running VM, until [`Sandbox::take_vm`] takes it to stop it.
    running: Option<RunningVm>,
}

/// A sandbox's VM, taken out of its [`Sandbox`] to be stopped without holding the pod.
#[derive(Debug)]
pub struct RunningVm {
    id: String,
    agent: Arc<AgentClient>,
    /// The pod's network namespace, when the VM is connected to one.
    netns: Option<PathBuf>,
    vm: Vm,
}

/// Why a pod on the host's network cannot run in a VM; crictl shows it verbatim.
pub const HOST_NETWORK_REFUSED: &str = "the pod asks for the host's network (hostNetwork: true, \
     NamespaceOption network=NODE), but a Coffer pod runs in a VM with a network stack of its own \
     and cannot share the node's; run it without host networking, or with a runc runtime class";

impl Sandbox {
    /// Creates the sandbox VM for the bundle of a pod's sandbox. Returns the sandbox and the
    /// receiver of the guest's events.
    pub async fn create(
        id: &str,
        bundle: &Path,
        spec: &BundleSpec,
        options: Option<&Any>,
    ) -> Result<(Sandbox, EventReceiver)> {
        let config_path = crate::options::config_path(options)?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let config = Config::load(&config_path)?;
        let annotations = spec.annotations();
        if annotations.contains_key(KATA_POLICY_ANNOTATION) {
            return Err(Error::InvalidArgument(format!(
                "the pod carries {KATA_POLICY_ANNOTATION}, an agent policy sent by the host, which \
                 no measurement covers; Coffer takes the agent policy only from the Init-Data's \
                 policy.rego: move the policy there and remove the annotation"
            )));
        }
        let netns = match spec.network_namespace() {
            Namespace::Host if spec.is_cri_sandbox() => {
                return Err(Error::InvalidArgument(HOST_NETWORK_REFUSED.into()))
            }
            Namespace::Path(p) => Some(p),
            Namespace::Host | Namespace::Empty => None,
        };
        let initdata = select_initdata(&annotations, &config)?;
        let vm = crate::sizing::vm_for_pod(&config.vm, &annotations)?;
        let dir = StateDir::new(&config.state_dir, id)?;
        if dir.path().exists() {
            return Err(Error::AlreadyExists(format!(
                "sandbox state directory {} (left by an earlier sandbox with this id; containerd's shim `delete` removes it)",
                dir.path().display()
            )));
        }
        dir.create()?;
        let mut launched: Option<Vm> = None;
        let result = Self::launch(
            id,
            bundle,
            &config,
            vm,
            &config_path,
            &dir,
            initdata,
            netns.as_deref(),
            &mut launched,
        )
        .await;
        match result {
            Ok((record, agent, events)) => {
                let share_dir = (config.rootfs_source() == RootfsSource::Host)
                    .then(|| dir.path().join("share"));
                let vm = launched.ok_or_else(|| {
                    Error::FailedPrecondition("the VM vanished during sandbox creation".into())
                })?;
                Ok((
                    Sandbox {
                        id: id.to_string(),
                        config,
                        dir,
                        record,
                        share_dir,
                        agent: agent.clone(),
                        hostname: spec.hostname(),
                        pid: vm.pid(),
                        running: Some(RunningVm {
                            id: id.to_string(),
                            agent,
                            netns,
                            vm,
                        }),
                    },
                    events,
                ))
            }
            Err(e) => {
                if let Some(mut vm) = launched {
                    if let Err(stop) = vm.stop(STOP_GRACE).await {
                        tracing::warn!(sandbox = id, error = %stop, "stopping the refused sandbox's VM");
                    }
                }
                if let Some(netns) = &netns {
                    crate::network::detach(netns).await;
                }
                log_console_tail(&dir);
                // The console goes with the state directory: keep its last words in the error.
                let e = match e {
                    Error::Agent(t @ ClientError::Timeout { .. }) => Error::AgentTimeout {
                        detail: t.to_string(),
                        console: console_last_lines(&dir, 3),
                    },
                    Error::VmExitedEarly { exit, .. } => Error::VmExitedEarly {
                        exit,
                        console: console_last_lines(&dir, 3),
                    },
                    other => other,
                };
                let _ = std::fs::remove_file(bundle.join(BUNDLE_RECORD));
                if let Err(rm) = dir.remove() {
                    tracing::warn!(sandbox = id, error = %rm, "removing the refused sandbox's state");
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn launch(
        id: &str,
        bundle: &Path,
        config: &Config,
        mut vm: VmConfig,
        config_path: &Path,
        dir: &StateDir,
        initdata: Option<(InitData, Source)>,
        netns: Option<&Path>,
        launched: &mut Option<Vm>,
    ) -> Result<(SandboxState, Arc<AgentClient>, EventReceiver)> {
        write_bundle_record(bundle, dir)?;
        let mut resources = VmResources::in_dir(dir.path());
        if let Some(user) = &config.vm.user {
            resources.run_as(RunAs::lookup(user)?);
        }
        // Guest pull: the VM gets no share from the host at all.
        resources.share_dir = None;
        if config.rootfs_source() == RootfsSource::Host {
            let share_dir = dir.path().join("share");
            std::fs::create_dir(&share_dir).map_err(|source| Error::Io {
                what: "cannot create the sandbox share",
                path: share_dir.clone(),
                source,
            })?;
            resources.share_dir = Some(share_dir);
        }
        let digest = initdata.as_ref().map(|(doc, _)| doc.digest());
        let record_initdata = match &initdata {
            Some((doc, source)) => {
                let image = coffer_initdata::image::write(doc.as_bytes());
                let path = dir.write_private("initdata.img", &image)?;
                resources.initdata_image = Some(path);
                let digest = doc.digest();
                // The digest identifies the document; the document itself is never logged.
                tracing::info!(
                    sandbox = id,
                    algorithm = %doc.algorithm(),
                    digest = %digest.to_hex(),
                    source = %source,
                    "Init-Data accepted"
                );
                Some(InitDataRecord {
                    algorithm: doc.algorithm().to_string(),
                    digest: digest.to_hex(),
                    source: source.to_string(),
                })
            }
            None => {
                resources.initdata_image = None;
                tracing::info!(sandbox = id, "pod has no Init-Data");
                None
            }
        };

        // KVM's speed is timed once per host boot, not per pod (see probe_cached).
        let probe_started = std::time::Instant::now();
        let speed_record = config.state_dir.join(KVM_SPEED_RECORD);
        let host =
            tokio::task::spawn_blocking(move || HostCapabilities::probe_cached(&speed_record))
                .await
                .map_err(|e| Error::FailedPrecondition(format!("host probe failed: {e}")))?;
        // The guest reads the Init-Data disk with the limits this handler validated it with.
        let limits = coffer_contract::limits_params(&config.initdata);
        if !limits.is_empty() {
            vm.kernel_params = format!("{} {limits}", vm.kernel_params);
        }
        let network_started = std::time::Instant::now();
        let network = match netns {
            Some(netns) => crate::network::attach(netns).await?,
            None => None,
        };
        let network_took = network_started.elapsed();
        resources.nic = network.as_ref().map(|n| Nic {
            tap_fd: n.tap.as_raw_fd(),
            mac: n.guest.interface.hw_addr.clone(),
        });
        let plan = LaunchPlan::build(&vm, config.tee, &host, digest.as_ref(), &resources)?;
        tracing::info!(
            sandbox = id,
            command = %plan,
            host_probe = ?(network_started - probe_started),
            network = ?network_took,
            "launching the sandbox VM"
        );
        let vm = Vm::spawn(&plan, &resources).await?;
        let pid = vm.pid();
        *launched = Some(vm);
        // QEMU holds the TAP now: the shim's copy goes, so the TAP goes with QEMU.
        let network = network.map(|n| n.guest);
        // The pod's network goes right behind the first hello: the guest sets it up as soon as
        // it is up, with no round trip after the hello.
        let network_requests = network.as_ref().map(network_requests).unwrap_or_default();

        // A guest that dies while booting (a kernel panic, say) fails the pod at once, not at
        // the end of the agent's deadline.
        let (agent, hello, network_sent) = {
            let vm = launched
                .as_mut()
                .ok_or_else(|| Error::FailedPrecondition("the VM was not launched".into()))?;
            tokio::select! {
                connected = AgentClient::connect_sending(&resources.agent_socket, config.agent_timeout(), network_requests) => connected?,
                exit = vm.exited() => {
                    let exit = match exit {
                        Ok(_) => vm.wait().await.map_or_else(|e| e.to_string(), |x| x.to_string()),
                        Err(e) => e.to_string(),
                    };
                    return Err(Error::VmExitedEarly {
                        exit,
                        console: String::new(),
                    });
                }
            }
        };
        check_hello(digest.as_ref().map(|d| d.to_hex()), &hello.initdata)?;
        tracing::info!(
            sandbox = id,
            agent_version = %hello.agent_version,
            verification = ?hello.initdata.verification,
            "guest agent ready"
        );
        let events = agent.take_events().ok_or_else(|| {
            Error::FailedPrecondition("the agent's event stream was already taken".into())
        })?;
        let network = match (network, netns) {
            (Some(guest), Some(netns)) => {
                Some(configure_guest_network(id, &agent, &guest, network_sent, netns).await?)
            }
            _ => None,
        };

        let record = SandboxState {
            sandbox_id: id.to_string(),
            tee: config.tee.to_string(),
            measured: config.tee != Tee::None,
            initdata: record_initdata,
            guest_report: describe_guest(&hello.initdata),
            vm_pid: pid,
            launch: LaunchCommand {
                program: plan.program.clone(),
                args: plan.args.clone(),
            },
            bundle: bundle.to_path_buf(),
            config_path: config_path.to_path_buf(),
            created_unix: state::now_unix(),
            network,
        };
        dir.write_state(&record)?;
        Ok((record, Arc::new(agent), events))
    }

    /// The VM's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The running VM, to be stopped; `None` once it has been taken.
    pub fn take_vm(&mut self) -> Option<RunningVm> {
        self.running.take()
    }
}

impl RunningVm {
    /// Kills a VM whose guest no longer answers, without the graceful steps of
    /// [`RunningVm::stop`]. Returns QEMU's exit description.
    pub async fn kill(mut self) -> String {
        let exit = match self.vm.kill().await {
            Ok(exit) => exit.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(sandbox = %self.id, exit = %exit, "killed the unresponsive sandbox VM");
        if let Some(netns) = &self.netns {
            crate::network::detach(netns).await;
        }
        exit
    }

    /// Stops the VM: the agent's shutdown first (the guest syncs and powers off), then QEMU's
    /// own stop sequence, which ends with SIGKILL. Returns QEMU's exit description.
    pub async fn stop(mut self) -> String {
        match tokio::time::timeout(SHUTDOWN_ACK, self.agent.shutdown()).await {
            Ok(Ok(())) => {}
            // The VM is already gone: the stop below only reaps it.
            Ok(Err(ClientError::Disconnected | ClientError::Broken { .. })) => {}
            Ok(Err(e)) => tracing::debug!(sandbox = %self.id, error = %e, "agent shutdown"),
            Err(_) => {
                // A live guest acknowledges at once: this one is hung, and a hung QEMU
                // answers no powerdown either.
                tracing::warn!(sandbox = %self.id, "the agent did not acknowledge shutdown");
                return self.kill().await;
            }
        }
        if !self.vm.has_power_button() {
            // The agent's shutdown is the only one such a guest has: give it the time the
            // power button would get, rather than quitting QEMU under it at once.
            if let Err(e) = self.vm.wait_for(STOP_GRACE).await {
                tracing::debug!(sandbox = %self.id, error = %e, "waiting for the guest to stop");
            }
        }
        let exit = match self.vm.stop(STOP_GRACE).await {
            Ok(exit) => {
                tracing::info!(sandbox = %self.id, exit = %exit, "sandbox VM stopped");
                exit.to_string()
            }
            Err(e) => {
                tracing::warn!(sandbox = %self.id, error = %e, "stopping the sandbox VM");
                e.to_string()
            }
        };
        if let Some(netns) = &self.netns {
            crate::network::detach(netns).await;
        }
        exit
    }
}

impl Sandbox {
    /// Removes everything on the host: mounts left in the share, the state directory and the
    /// bundle's record. The VM must have been stopped.
    pub fn remove_state(&self) -> Result<()> {
        remove_state_dir(&self.dir)?;
        let _ = std::fs::remove_file(self.record.bundle.join(BUNDLE_RECORD));
        Ok(())
    }
}

/// The requests that give the guest the pod's interface, routes and neighbours, in order.
/// Each may be served twice (see [`AgentClient::connect_sending`]): the guest replaces what
/// is there.
fn network_requests(guest: &GuestNetwork) -> Vec<Request> {
    let mut requests = vec![Request::UpdateInterface {
        interface: guest.interface.clone(),
    }];
    if !guest.routes.is_empty() {
        requests.push(Request::UpdateRoutes {
            routes: guest.routes.clone(),
        });
    }
    if !guest.neighbors.is_empty() {
        requests.push(Request::AddArpNeighbors {
            neighbors: guest.neighbors.clone(),
        });
    }
    requests
}

/// Waits for the guest's answers to the pod's network requests ([`network_requests`]), in
/// order. The guest serves each on its own, its policy judging each, so a request after one
/// that failed still runs; the first failure is the outcome. An agent policy that denies them
/// leaves the pod without network: that is recorded and logged, not an error.
async fn configure_guest_network(
    id: &str,
    agent: &AgentClient,
    guest: &GuestNetwork,
    sent: Vec<Sent>,
    netns: &Path,
) -> Result<NetworkRecord> {
    let mut record = NetworkRecord {
        netns: netns.to_path_buf(),
        interface: guest.interface.name.clone(),
        mac: guest.interface.hw_addr.clone(),
        addresses: guest
            .interface
            .ip_addresses
            .iter()
            .map(|a| format!("{}/{}", a.address, a.prefix_len))
            .collect(),
        status: "configured".into(),
    };
    let mut result = Ok(());
    for s in sent {
        result = agent.answer_ok(s).await;
        if result.is_err() {
            break;
        }
    }
    match result {
        Ok(()) => {
            tracing::info!(sandbox = id, interface = %record.interface, addresses = ?record.addresses, "pod network configured in the guest");
            Ok(record)
        }
        Err(ClientError::Remote {
            kind: ErrorKind::PermissionDenied,
            message,
            ..
        }) => {
            record.status = format!("none: the agent policy denied it ({message})");
            tracing::warn!(sandbox = id, reason = %message, "the agent policy denied the pod's network: the pod runs without network");
            Ok(record)
        }
        Err(e) => Err(Error::FailedPrecondition(format!(
            "configuring the pod's network in the guest failed: {e}"
        ))),
    }
}

/// Unmounts whatever is still mounted below the state directory, then removes it. Refuses to
/// remove it while something stays mounted, so no container's files are deleted through a mount.
pub fn remove_state_dir(dir: &StateDir) -> Result<()> {
    if dir.path().exists() {
        crate::mount::unmount_below(dir.path()).map_err(Error::Mount)?;
    }
    dir.remove()?;
    Ok(())
}

/// Checks the guest's hello against what the host launched: the same digest (or none on both
/// sides), and a guest that accepts running containers.
pub fn check_hello(
    expected: Option<String>,
    report: &coffer_agent::protocol::InitDataReport,
) -> Result<()> {
    if let Some(refusal) = report.verification.refusal() {
        return Err(Error::GuestRefused(refusal));
    }
    if expected != report.digest {
        return Err(Error::DigestMismatch {
            expected: expected.unwrap_or_else(|| "no Init-Data".into()),
            found: report
                .digest
                .clone()
                .unwrap_or_else(|| "no Init-Data".into()),
        });
    }
    // As kata-agent fails the sandbox when a guest component does not come up.
    if let Some(why) = &report.component_failure {
        return Err(Error::GuestRefused(format!(
            "a guest component failed: {why}"
        )));
    }
    // A policy the guest cannot load would refuse every container: refuse the pod now, with
    // the reason, instead of at its first container.
    if let Some(refusal) = report.policy.refusal() {
        return Err(Error::GuestRefused(refusal));
    }
    Ok(())
}

/// One line on what the guest found, for `state.json` and `coffer inspect`.
/// What the guest reported, for `coffer inspect`: the Init-Data check, and a warning when the
/// agent policy does not enforce what it denies.
pub fn describe_guest(report: &coffer_agent::protocol::InitDataReport) -> String {
    let mut text = describe_report(&report.verification);
    if let coffer_agent::protocol::PolicyStatus::Permissive { .. } = report.policy {
        text.push_str(
            "; INSECURE: the agent policy sets AllowRequestsFailingPolicy, so denied requests are served",
        );
    }
    text
}

/// One line on the guest's Init-Data check.
pub fn describe_report(v: &coffer_agent::protocol::Verification) -> String {
    use coffer_agent::protocol::Verification as V;
    match v {
        V::Verified { tee, register } => {
            format!("verified: the {tee} launch register holds the document's digest ({register})")
        }
        V::Unmeasured {
            matches_cmdline: true,
        } => "unmeasured (no TEE); the guest's digest matches the kernel command line".into(),
        V::Unmeasured {
            matches_cmdline: false,
        } => {
            "unmeasured (no TEE); the guest's digest does not match the kernel command line".into()
        }
        V::NoInitData => "no Init-Data".into(),
        other => other.refusal().unwrap_or_else(|| format!("{other:?}")),
    }
}

fn write_bundle_record(bundle: &Path, dir: &StateDir) -> Result<()> {
    let path = bundle.join(BUNDLE_RECORD);
    std::fs::write(&path, dir.path().as_os_str().as_encoded_bytes()).map_err(|source| Error::Io {
        what: "cannot write",
        path,
        source,
    })
}

/// The state directory a sandbox bundle points at, if it is a Coffer sandbox bundle.
pub fn read_bundle_record(bundle: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(bundle.join(BUNDLE_RECORD)).ok()?;
    let path = PathBuf::from(text.trim());
    path.is_absolute().then_some(path)
}

/// The last `n` bytes of the guest console (the console is bounded, but only its end is
/// read anyway).
fn console_tail(dir: &StateDir, n: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(dir.path().join("console.log")) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if file.seek(SeekFrom::Start(len.saturating_sub(n))).is_err() {
        return Vec::new();
    }
    let mut tail = Vec::new();
    let _ = file.take(n).read_to_end(&mut tail);
    tail
}

/// Logs the end of the guest console: the first place to look when a guest did not answer.
fn log_console_tail(dir: &StateDir) {
    let tail = console_tail(dir, 2048);
    tracing::warn!(console = %String::from_utf8_lossy(&tail), "guest console (last 2 KiB)");
}

/// The last `n` non-empty lines of the guest console, joined with " | " (or a note that it is
/// empty), bounded in size for an error message.
fn console_last_lines(dir: &StateDir, n: usize) -> String {
    let tail = console_tail(dir, 4096);
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    let mut joined = lines[lines.len().saturating_sub(n)..].join(" | ");
    if joined.len() > 400 {
        let cut = (joined.len() - 400..joined.len())
            .find(|i| joined.is_char_boundary(*i))
            .unwrap_or(0);
        joined = format!("...{}", &joined[cut..]);
    }
    joined
}

/// Cleans up after a sandbox whose shim died: kills its VM (only if the pid still is that VM's
/// QEMU), unmounts what is left in its share and removes its state directory.
pub fn cleanup_leftover(dir: &StateDir) -> Result<()> {
    if let Some(record) = dir.read_state()? {
        let pid = record.vm_pid;
        // A pid that is no pid_t is no process of ours (and never -1: that would be everyone).
        let target = i32::try_from(pid).ok().filter(|p| *p > 0);
        if let Some(target) = target.filter(|_| is_our_vm(pid, &record, dir.path())) {
            tracing::info!(sandbox = %record.sandbox_id, pid, "killing the leftover sandbox VM");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(target),
                nix::sys::signal::Signal::SIGKILL,
            );
            // Not our child: poll /proc until it is gone (SIGKILL is not refusable; this is
            // short).
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    remove_state_dir(dir)
}

/// Whether `pid` is the QEMU of this sandbox: same program and its command line mentions this
/// sandbox's state directory. Guards against killing a process that reused the pid.
pub fn is_our_vm(pid: u32, record: &SandboxState, state_dir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let Some(argv0) = args.first() else {
        return false;
    };
    let name = |p: &Path| p.file_name().map(|n| n.to_os_string());
    let same_program = name(Path::new(argv0)) == name(&record.launch.program);
    let dir = state_dir.to_string_lossy();
    same_program && args.iter().skip(1).any(|a| a.contains(dir.as_ref()))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use coffer_agent::protocol::{InitDataReport, Verification};

    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n";

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/t.toml")).unwrap()
    }

    #[test]
    fn annotation_wins_over_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("d.toml");
        std::fs::write(&default, format!("{DOC}\"x\" = \"y\"\n")).unwrap();
        let c = config(&format!("default = \"{}\"", default.display()));
        let mut a = HashMap::new();
        a.insert(
            coffer_initdata::annotation::ANNOTATION.to_string(),
            coffer_initdata::annotation::encode(DOC.as_bytes()),
        );
        let (doc, source) = select_initdata(&a, &c).unwrap().unwrap();
        assert_eq!(doc.as_bytes(), DOC.as_bytes());
        assert_eq!(source, Source::Annotation);
        let (doc, source) = select_initdata(&HashMap::new(), &c).unwrap().unwrap();
        assert_eq!(doc.as_bytes(), format!("{DOC}\"x\" = \"y\"\n").as_bytes());
        assert_eq!(source.to_string(), default.display().to_string());
    }

    #[test]
    fn legacy_annotation_is_read() {
        let mut a = HashMap::new();
        a.insert(
            coffer_initdata::annotation::LEGACY_ANNOTATION.to_string(),
            coffer_initdata::annotation::encode(DOC.as_bytes()),
        );
        let (doc, _) = select_initdata(&a, &config("")).unwrap().unwrap();
        assert_eq!(doc.as_bytes(), DOC.as_bytes());
    }

    #[test]
    fn no_initdata_is_fine_unless_required() {
        assert!(select_initdata(&HashMap::new(), &config(""))
            .unwrap()
            .is_none());
        let e = select_initdata(&HashMap::new(), &config("required = true")).unwrap_err();
        assert!(matches!(e, Error::InitDataRequired));
    }

    #[test]
    fn malformed_annotation_names_the_problem() {
        let mut a = HashMap::new();
        a.insert(
            coffer_initdata::annotation::ANNOTATION.to_string(),
            "H4sI-not_base64".to_string(),
        );
        let e = select_initdata(&a, &config("")).unwrap_err().to_string();
        assert!(
            e.starts_with("pod Init-Data refused: Init-Data annotation is not valid base64"),
            "{e}"
        );
        assert!(e.contains("URL-safe"), "{e}");
    }

    #[test]
    fn bad_default_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("d.toml");
        std::fs::write(
            &default,
            "version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n",
        )
        .unwrap();
        let c = config(&format!("default = \"{}\"", default.display()));
        let e = select_initdata(&HashMap::new(), &c)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("default Init-Data {} (from the coffer config) is unusable: Init-Data version \"0.2.0\" is not supported; the only version is \"0.1.0\"", default.display())
        );
    }

    #[test]
    fn hello_must_carry_the_launched_digest() {
        let report = |digest: Option<&str>, verification| InitDataReport {
            digest: digest.map(Into::into),
            verification,
            ..Default::default()
        };
        let ok = Verification::Unmeasured {
            matches_cmdline: true,
        };
        check_hello(Some("aa".into()), &report(Some("aa"), ok.clone())).unwrap();
        check_hello(None, &report(None, Verification::NoInitData)).unwrap();
        assert_eq!(
            check_hello(Some("aa".into()), &report(Some("bb"), ok.clone()))
                .unwrap_err()
                .to_string(),
            "Init-Data digest mismatch: the host launched the VM with aa but the guest read bb"
        );
        assert_eq!(
            check_hello(Some("aa".into()), &report(None, Verification::NoInitData))
                .unwrap_err()
                .to_string(),
            "Init-Data digest mismatch: the host launched the VM with aa but the guest read no Init-Data"
        );
        let refused = Verification::Error {
            reason: "no disk with serial initdata".into(),
        };
        assert_eq!(
            check_hello(Some("aa".into()), &report(None, refused))
                .unwrap_err()
                .to_string(),
            "the Init-Data could not be verified: no disk with serial initdata"
        );
        let broken_policy = InitDataReport {
            policy: coffer_agent::protocol::PolicyStatus::Invalid {
                reason: "policy.rego:3:1: expecting expression".into(),
            },
            ..report(Some("aa"), ok)
        };
        assert_eq!(
            check_hello(Some("aa".into()), &broken_policy)
                .unwrap_err()
                .to_string(),
            "the agent policy (policy.rego in the Init-Data) does not load: policy.rego:3:1: expecting expression"
        );
    }

    #[test]
    fn a_foreign_pid_is_not_our_vm() {
        let record = SandboxState {
            sandbox_id: "p".into(),
            tee: "none".into(),
            measured: false,
            initdata: None,
            guest_report: String::new(),
            vm_pid: std::process::id(),
            launch: LaunchCommand {
                program: "qemu-system-x86_64".into(),
                args: vec![],
            },
            bundle: "/b".into(),
            config_path: "/c".into(),
            created_unix: 0,
            network: None,
        };
        // This test process is not QEMU.
        assert!(!is_our_vm(
            std::process::id(),
            &record,
            Path::new("/run/coffer/p")
        ));
        assert!(!is_our_vm(
            u32::MAX - 1,
            &record,
            Path::new("/run/coffer/p")
        ));
    }

    #[test]
    fn bundle_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(Path::new("/run/coffer"), "pod9").unwrap();
        write_bundle_record(dir.path(), &state).unwrap();
        assert_eq!(
            read_bundle_record(dir.path()),
            Some(PathBuf::from("/run/coffer/pod9"))
        );
        assert_eq!(read_bundle_record(Path::new("/nonexistent")), None);
    }
}
