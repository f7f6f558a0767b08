//! `coffer-agent`: PID 1 of the Coffer guest.
//!
//! Boot order: off the initramfs, early filesystems, kernel modules, the Init-Data (find, read, verify, deliver,
//! start the attestation services), the 9p share (not in a TEE guest), then the host channel. Whatever fails along the
//! way is reported in hello rather than ending PID 1, because an agent that answers explains the
//! failure to the host and one that died only leaves a kernel panic on the console.

mod guest;

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use coffer_agent::protocol;
use coffer_contract::KernelParams;
use guest::{boot, container, initdata, policy, server};

/// How long to wait for the agent's port to appear before giving up and powering off.
const PORT_WAIT: Duration = Duration::from_secs(10);

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "coffer-agent is the init process of the Coffer guest (/init of its initramfs); it does not run on a host"
        );
        std::process::exit(2);
    }
    // Before anything is mounted: containers can only pivot_root away from a root that is not
    // the initramfs.
    if let Err(e) = boot::leave_initramfs() {
        boot::log(&format!(
            "cannot leave the initramfs ({e}); containers will fail to pivot_root"
        ));
    }
    boot::mount_early();
    boot::load_modules();
    boot::mount_configfs();
    boot::watch_power_button();
    if let Err(e) = guest::cgroup::setup(Path::new(guest::cgroup::ROOT)) {
        boot::log(&format!("cgroups: {e}; containers cannot be created"));
    }
    if let Err(e) = guest::network::loopback_up() {
        boot::log(&format!("bringing up the loopback interface: {e}"));
    }

    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (cmdline, cmdline_error) = match KernelParams::parse(&cmdline_text) {
        Ok(c) => (c, None),
        Err(e) => (KernelParams::default(), Some(e)),
    };
    let initdata::Processed {
        mut report,
        mut policy,
    } = initdata::process(cmdline.tee, &cmdline, &cmdline.limits);
    if let Some(reason) = cmdline_error {
        report.verification = protocol::Verification::Error { reason };
        // Containers are refused anyway; a policy from an unchecked launch is not applied.
        policy = None;
    }
    // Loaded before the host is served, so the first request is already gated and a policy that
    // does not load is in the first hello.
    let policy = policy::AgentPolicy::load(policy.as_deref());
    report.policy = policy.status();
    boot::log(&format!(
        "Init-Data digest {}, verification {:?}, agent policy {:?}",
        report.digest.as_deref().unwrap_or("(none)"),
        report.verification,
        report.policy
    ));

    // A TEE guest never takes its root filesystems from the host: it pulls its images itself.
    // Elsewhere a missing share only matters to containers that ask for one.
    let share_error = if report.tee == protocol::Tee::None {
        boot::mount_share().err().map(|e| {
            boot::log(&format!(
                "{e} (containers must then use guest-pulled images)"
            ));
            format!("this guest has no 9p share: {e}")
        })
    } else {
        Some(format!(
            "a {} guest never runs a root filesystem shared by the host; use guest pull (rootfs = \"guest\" in the handler's configuration)",
            report.tee.display_name()
        ))
    };
    let refusal = report.verification.refusal().or_else(|| {
        report
            .component_failure
            .as_ref()
            .map(|why| format!("a guest component failed: {why}"))
    });

    let port_path = match boot::find_port(Path::new("/sys/class/virtio-ports"), PORT_WAIT) {
        Ok(p) => p,
        Err(e) => {
            boot::log(&e);
            boot::power_off();
        }
    };
    let (read_port, write_port) = match open_port(&port_path) {
        Ok(p) => p,
        Err(e) => {
            boot::log(&format!("cannot open {}: {e}", port_path.display()));
            boot::power_off();
        }
    };

    let (out, frames) = mpsc::sync_channel(server::QUEUE);
    std::thread::spawn(move || server::writer(write_port, frames));
    let policy = Arc::new(policy);
    let containers = container::Containers::new(out.clone(), refusal, policy.clone(), share_error);
    let agent = Arc::new(server::Agent {
        report,
        containers,
        out,
        policy,
    });
    // The boot's allocations are done; what it freed can go back to the host.
    boot::release_freed_memory();
    boot::log(&format!("serving the host on {}", port_path.display()));
    server::serve(read_port, agent)
}

/// Opens the port once and splits it into a reader and a writer.
fn open_port(path: &Path) -> std::io::Result<(File, File)> {
    let port = OpenOptions::new().read(true).write(true).open(path)?;
    let writer = port.try_clone()?;
    Ok((port, writer))
}
