//! The launch plan: the exact command line that starts a sandbox VM, as data.
//!
//! A [`LaunchPlan`] is built from the configuration, the TEE, what the host can do and the bound
//! digest; it can be printed (`coffer launch-plan`), compared in tests, and then run by
//! [`crate::Vm`]. Everything the guest relies on is decided here:
//!
//! - the agent channel: virtio-serial port `coffer.agent` on a unix socket;
//! - the container root filesystems: 9p share with mount tag `coffer`;
//! - the Init-Data disk: raw, read-only, virtio-blk with `serial=initdata`;
//! - the kernel command line: `console=ttyS0 panic=-1 quiet coffer.tee=<tee>`, with Init-Data
//!   `coffer.initdata_digest=<hex>`, and for TEE `none` the [`FAST_BOOT_PARAMS`] (and under
//!   TCG the [`TCG_REPORTING_PARAMS`]).

use std::fmt;
use std::path::{Path, PathBuf};

use coffer_contract::{KernelParams, AGENT_PORT_NAME, INITDATA_DISK_SERIAL, SHARE_MOUNT_TAG};
use coffer_initdata::{Digest, TeeField};
use serde::Serialize;

use crate::config::{HypervisorKind, Machine, VmConfig};
use crate::probe::HostCapabilities;
use crate::{Accel, Error, Result, Tee};

/// Longest unix socket path `sockaddr_un` holds (108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The host files a VM uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmResources {
    /// Directory that holds everything below.
    pub state_dir: PathBuf,
    /// The Init-Data block image; attached only when a digest is bound.
    pub initdata_image: Option<PathBuf>,
    /// Host end of the agent channel (QEMU listens).
    pub agent_socket: PathBuf,
    /// QMP control socket (QEMU listens).
    pub qmp_socket: PathBuf,
    /// Where the guest's serial console is written (bounded, see [`crate::console`]).
    pub console_log: PathBuf,
    /// The socket QEMU writes the console to (QEMU listens).
    pub console_socket: PathBuf,
    /// Directory shared with the guest over 9p, if any.
    pub share_dir: Option<PathBuf>,
    /// The pod's network device, if it has one.
    pub nic: Option<Nic>,
    /// The unprivileged user QEMU runs as, if not the caller's.
    pub run_as: Option<RunAs>,
}

/// An unprivileged host user for QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Its name, for messages.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (those of `/dev/kvm` and `/dev/sev`, so it can use them).
    pub groups: Vec<u32>,
}

impl RunAs {
    /// The host user `name`, with the groups of `/dev/kvm` and `/dev/sev` (where they exist)
    /// among its groups.
    pub fn lookup(name: &str) -> crate::Result<RunAs> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| {
                crate::Error::InvalidConfig(format!("cannot look up the [vm] user {name:?}: {e}"))
            })?
            .ok_or_else(|| {
                crate::Error::InvalidConfig(format!(
                    "the [vm] user {name:?} does not exist on this host"
                ))
            })?;
        let mut groups = vec![user.gid.as_raw()];
        // KVM, and SEV's firmware device for SEV-SNP launches.
        for device in ["/dev/kvm", "/dev/sev"] {
            if let Ok(meta) = std::fs::metadata(device) {
                groups.push(std::os::unix::fs::MetadataExt::gid(&meta));
            }
        }
        groups.sort_unstable();
        groups.dedup();
        Ok(RunAs {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
        })
    }
}

/// The directory of the state directory an unprivileged QEMU owns (see [`VmResources::run_as`]).
pub const QEMU_DIR: &str = "qemu";

/// QEMU's `-sandbox` setting for every VM.
pub const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The descriptor number the hypervisor finds the TAP at (after stdin, stdout and stderr).
pub const TAP_FD: i32 = 3;

/// A virtio-net device backed by a TAP the caller opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The TAP's descriptor in the caller's process: borrowed, it must stay open until
    /// [`crate::Vm::spawn`] returns. The hypervisor gets it as [`TAP_FD`].
    pub tap_fd: i32,
    /// The guest NIC's MAC address (the pod interface's).
    pub mac: String,
}

impl VmResources {
    /// The standard names inside `state_dir`: `initdata.img`, `agent.sock`, `qmp.sock`,
    /// `tty.sock` (the console), `console.log` and `share/`.
    pub fn in_dir(state_dir: impl Into<PathBuf>) -> Self {
        let dir: PathBuf = state_dir.into();
        VmResources {
            initdata_image: Some(dir.join("initdata.img")),
            agent_socket: dir.join("agent.sock"),
            qmp_socket: dir.join("qmp.sock"),
            console_log: dir.join("console.log"),
            console_socket: dir.join("tty.sock"),
            share_dir: Some(dir.join("share")),
            nic: None,
            run_as: None,
            state_dir: dir,
        }
    }

    /// Where QEMU makes its sockets when it runs as `run_as`: a directory of the state
    /// directory that only that user may write, so that QEMU can change nothing else there.
    pub fn run_as(&mut self, run_as: RunAs) {
        let dir = self.state_dir.join(QEMU_DIR);
        self.agent_socket = dir.join("agent.sock");
        self.qmp_socket = dir.join("qmp.sock");
        self.console_socket = dir.join("tty.sock");
        self.run_as = Some(run_as);
    }
}

/// The command that starts a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchPlan {
    /// The hypervisor binary.
    pub program: PathBuf,
    /// Its arguments, one per element (no shell involved).
    pub args: Vec<String>,
    /// Which VMM the arguments are for.
    #[serde(skip)]
    pub hypervisor: HypervisorKind,
    /// Whether the VMM's memory may be backed by transparent huge pages.
    ///
    /// QEMU asks for them on guest RAM and its translation cache. Under KVM they speed up the
    /// guest's memory accesses. Under TCG they buy little, and each guest page touched costs the
    /// host the whole 2 MiB around it: an idle guest's RAM took 58 MiB with them and 50 MiB
    /// without. Off (`PR_SET_THP_DISABLE` before exec) for TCG, on otherwise.
    pub transparent_huge_pages: bool,
    /// Whether the guest has an ACPI power button, which QMP `system_powerdown` presses (see
    /// [`crate::Vm::stop`]). A `microvm` guest has none.
    pub power_button: bool,
}

impl LaunchPlan {
    /// Builds the plan, or says why this VM cannot be launched here. Nothing is started.
    ///
    /// `digest` is the bound Init-Data digest, if the pod has Init-Data; the disk
    /// `resources.initdata_image` is attached exactly then.
    pub fn build(
        config: &VmConfig,
        tee: Tee,
        host: &HostCapabilities,
        digest: Option<&Digest>,
        resources: &VmResources,
    ) -> Result<LaunchPlan> {
        check_config(config)?;
        if tee != Tee::None && config.machine != Machine::Q35 {
            return Err(Error::InvalidConfig(format!(
                "machine = \"{}\" cannot run a {tee} guest; TDX and SEV-SNP guests need q35",
                config.machine.as_str()
            )));
        }
        let support = host.tee(tee);
        if !support.available {
            return Err(Error::TeeUnavailable {
                tee,
                reason: support
                    .reason
                    .unwrap_or_else(|| "the host probe found no support".into()),
            });
        }
        let accel = match (tee, config.accel) {
            (Tee::None, Accel::Auto) => host.auto_accel(),
            (Tee::None, a) => a,
            (_, Accel::Auto | Accel::Kvm) => Accel::Kvm,
            (_, Accel::Tcg) => {
                return Err(Error::TeeNeedsKvm {
                    tee,
                    accel: Accel::Tcg,
                })
            }
        };
        let initdata_image = match (digest, &resources.initdata_image) {
            (Some(_), Some(path)) => Some(path.as_path()),
            (Some(_), None) => return Err(Error::MissingInitDataImage),
            (None, _) => None,
        };
        for (what, path) in [
            ("agent socket", &resources.agent_socket),
            ("QMP socket", &resources.qmp_socket),
            ("console socket", &resources.console_socket),
        ] {
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(Error::SocketPathTooLong {
                    what,
                    path: path.clone(),
                    len,
                });
            }
        }
        let cmdline = kernel_cmdline(config, tee, accel, digest);
        let args = match config.hypervisor {
            HypervisorKind::Qemu => qemu_args(
                config,
                tee,
                accel,
                host,
                digest,
                initdata_image,
                resources,
                &cmdline,
            )?,
            HypervisorKind::CloudHypervisor => {
                cloud_hypervisor_args(config, tee, digest, initdata_image, resources, &cmdline)?
            }
        };
        Ok(LaunchPlan {
            program: config.program(),
            args,
            hypervisor: config.hypervisor,
            transparent_huge_pages: accel != Accel::Tcg,
            power_button: config.hypervisor != HypervisorKind::Qemu
                || tee != Tee::None
                || config.machine == Machine::Q35,
        })
    }
}

impl fmt::Display for LaunchPlan {
    /// The command as one shell-quoted line, for people to read or paste.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_quote(&self.program.to_string_lossy()))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        Ok(())
    }
}

/// A MAC address goes into a comma-separated option list: only `aa:bb:cc:dd:ee:ff` passes.
fn check_mac(mac: &str) -> Result<()> {
    let ok = mac.len() == 17
        && mac
            .split(':')
            .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(Error::BadMac(mac.to_string()))
    }
}

/// Quotes a word for a POSIX shell when it needs it, so a printed command line can be pasted.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn check_config(config: &VmConfig) -> Result<()> {
    if config.vcpus == 0 || config.vcpus > 255 {
        return Err(Error::InvalidConfig(format!(
            "vcpus = {} is out of range; use 1 to 255",
            config.vcpus
        )));
    }
    if config.memory_mib < 64 {
        return Err(Error::InvalidConfig(format!(
            "memory_mib = {} is too small for a Linux guest; use at least 64",
            config.memory_mib
        )));
    }
    Ok(())
}

/// Kernel parameters that cut a plain guest's boot time, most of them Kata's own defaults: trust
/// the TSC (no calibration, no watchdog), no timer and APIC-timer checks, no self-tests of the
/// crypto API, one UART, no PS/2 probing beyond the keyboard, expedited RCU, PCI bus 0 only.
/// `noreplace-smp` keeps a one-vCPU guest from rewriting every lock prefix of the kernel for a
/// uniprocessor (0.13 s of its boot under TCG, for atomics that cost the same either way).
/// Under TCG they take about 0.9 s off the boot. Only TEE `none` uses them: each one's effect on
/// a TEE guest's trust (a TSC, an entropy source taken on faith) is for the TEE handlers to
/// decide.
pub const FAST_BOOT_PARAMS: &str = "tsc=reliable no_timer_check noapictimer \
    rcupdate.rcu_expedited=1 cryptomgr.notests random.trust_cpu=on 8250.nr_uarts=1 \
    i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 pci=lastbus=0 noreplace-smp";

/// Where the guest is emulated (TCG), its balloon reports freed memory in blocks of 512 KiB
/// (order 7) instead of the kernel's default 2 MiB. QEMU's memory there has no huge pages to
/// keep whole (see [`LaunchPlan::transparent_huge_pages`]), and an idle guest's memory freed
/// at boot is fragmented: this returns about 5 MiB more of it to the host.
pub const TCG_REPORTING_PARAMS: &str = "page_reporting.page_reporting_order=7";

/// On a `microvm` the kernel looks for neither ACPI tables nor a PCI bus, which the machine does
/// not have. With no ACPI the guest cannot power off: its agent resets it instead, which ends
/// the VM as QEMU runs with `-no-reboot`. A triple fault resets at once, where the kernel's
/// default would first try ACPI and a keyboard controller the machine does not have either.
///
/// QEMU offers every virtio-mmio queue at 1024 entries, where virtio-pci offers each device's
/// own size (128 for virtio-serial, the balloon and 9p, 256 for virtio-net and virtio-blk), and
/// the console driver fills each receive queue with a 4 KiB buffer per entry: 8 MiB of guest
/// memory for the agent's channel alone, ~17 MiB of QEMU PSS per idle pod in all under TCG. The
/// image's kernel caps the queues it sets up on virtio-mmio at `virtio_mmio.queue_size_max`
/// (`packaging/guest/kernel/patches`); 128 is virtio-serial's own size, and leaves a microvm pod
/// no larger than a q35 one. A kernel without the patch ignores the parameter.
pub const MICROVM_PARAMS: &str = "acpi=off pci=off reboot=t virtio_mmio.queue_size_max=128";

/// The microvm's virtio-mmio transports the plan puts devices on, in order. Without ACPI QEMU
/// makes eight, transport N on legacy interrupt 5 + N, and fills them from the last one: a
/// fifth device would land on transport 3, interrupt 8, the RTC's, and the guest's RTC driver
/// would then fail to probe (no wall-clock time). Transport 3 is left out.
const MICROVM_VIRTIO_SLOTS: [u8; 7] = [7, 6, 5, 4, 2, 1, 0];

fn kernel_cmdline(config: &VmConfig, tee: Tee, accel: Accel, digest: Option<&Digest>) -> String {
    let params = KernelParams {
        tee,
        initdata_digest: digest.map(Digest::to_hex),
        ..KernelParams::default()
    };
    let mut cmdline = format!("console=ttyS0 panic=-1 quiet {params}");
    if tee == Tee::None {
        cmdline.push(' ');
        cmdline.push_str(FAST_BOOT_PARAMS);
        if config.machine == Machine::Microvm {
            cmdline.push(' ');
            cmdline.push_str(MICROVM_PARAMS);
        }
        if accel == Accel::Tcg {
            cmdline.push(' ');
            cmdline.push_str(TCG_REPORTING_PARAMS);
        }
    }
    let extra = config.kernel_params.trim();
    if !extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

fn utf8<'a>(what: &'static str, path: &'a Path) -> Result<&'a str> {
    path.to_str().ok_or_else(|| Error::NonUtf8Path {
        what,
        path: path.to_path_buf(),
    })
}

/// A path as a QEMU option value: commas are doubled, or QEMU would split the option there.
fn qemu_path(what: &'static str, path: &Path) -> Result<String> {
    Ok(utf8(what, path)?.replace(',', ",,"))
}

#[allow(clippy::too_many_arguments)]
fn qemu_args(
    config: &VmConfig,
    tee: Tee,
    accel: Accel,
    host: &HostCapabilities,
    digest: Option<&Digest>,
    initdata_image: Option<&Path>,
    res: &VmResources,
    cmdline: &str,
) -> Result<Vec<String>> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |words: &[&str]| a.extend(words.iter().map(|w| w.to_string()));
    // A virtio device on the machine's transport: PCI, or virtio-mmio on a microvm.
    let mmio = tee == Tee::None && config.machine == Machine::Microvm;
    let mut mmio_slots = MICROVM_VIRTIO_SLOTS.iter();
    let mut virtio = |kind: &str| -> Result<String> {
        if !mmio {
            return Ok(format!("virtio-{kind}-pci"));
        }
        let slot = mmio_slots.next().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "a microvm has room for {} virtio devices; use machine = \"q35\"",
                MICROVM_VIRTIO_SLOTS.len()
            ))
        })?;
        Ok(format!("virtio-{kind}-device,bus=virtio-mmio-bus.{slot}"))
    };

    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        // QEMU's own seccomp filter, as Kata sets it: no obsolete calls, no new programs, no
        // privilege or scheduling changes once the guest runs.
        "-sandbox",
        QEMU_SANDBOX,
        // The guest starts once the host listens to its console (QMP `cont`).
        "-S",
    ]);
    match tee {
        Tee::None => {
            let accel_arg = match (accel, config.tcg_cache_mib) {
                (Accel::Tcg, mib) if mib > 0 => format!("tcg,tb-size={mib}"),
                _ => accel.as_str().to_owned(),
            };
            let machine = match config.machine {
                Machine::Q35 => "q35",
                // No ACPI: QEMU then lists the virtio-mmio devices on the kernel command line.
                // The RTC gives the guest the wall-clock time (image pulls check certificates).
                Machine::Microvm => "microvm,acpi=off,rtc=on",
            };
            push(&["-machine", machine, "-accel", &accel_arg]);
            push(&["-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
        }
        Tee::Tdx => {
            let mrconfigid = digest.map(|d| d.bind(TeeField::TdxMrConfigId).to_base64());
            let object = match config.tdx.quote_generation_socket_port {
                // The socket is a nested struct: only QEMU's JSON syntax can express it.
                Some(port) => {
                    let mut o = serde_json::json!({"qom-type": "tdx-guest", "id": "tdx0"});
                    if let Some(m) = &mrconfigid {
                        o["mrconfigid"] = m.as_str().into();
                    }
                    o["quote-generation-socket"] =
                        serde_json::json!({"type": "vsock", "cid": "2", "port": port.to_string()});
                    o.to_string()
                }
                None => match &mrconfigid {
                    Some(m) => format!("tdx-guest,id=tdx0,mrconfigid={m}"),
                    None => "tdx-guest,id=tdx0".to_string(),
                },
            };
            push(&["-object", &object]);
            push(&[
                "-machine",
                "q35,kernel-irqchip=split,confidential-guest-support=tdx0",
                "-accel",
                "kvm",
                "-cpu",
                "host",
            ]);
        }
        Tee::Snp => {
            let cbitpos = host
                .snp_cbitpos
                .or(config.snp.cbitpos)
                .ok_or(Error::UnknownCbitpos)?;
            let mut object = format!(
                "sev-snp-guest,id=snp0,cbitpos={cbitpos},reduced-phys-bits={},kernel-hashes=on,policy={:#x}",
                config.snp.reduced_phys_bits, config.snp.policy
            );
            if let Some(d) = digest {
                object.push_str(",host-data=");
                object.push_str(&d.bind(TeeField::SnpHostData).to_base64());
            }
            push(&["-object", &object]);
            push(&[
                "-machine",
                "q35,confidential-guest-support=snp0",
                "-accel",
                "kvm",
                "-cpu",
                "EPYC-v4",
            ]);
        }
    }
    if let Some(fw) = config.qemu_firmware(tee) {
        push(&["-bios", utf8("firmware", &fw)?]);
    }
    push(&[
        "-smp",
        &config.vcpus.to_string(),
        "-m",
        &format!("{}M", config.memory_mib),
    ]);
    push(&[
        "-kernel",
        utf8("kernel", &config.kernel)?,
        "-initrd",
        utf8("initrd", &config.initrd)?,
        "-append",
        cmdline,
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=console,path={},server=on,wait=off",
            qemu_path("console socket", &res.console_socket)?
        ),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            qemu_path("QMP socket", &res.qmp_socket)?
        ),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    push(&[
        "-device",
        &format!("{},id=vser0", virtio("serial")?),
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=on,wait=off",
            qemu_path("agent socket", &res.agent_socket)?
        ),
        "-device",
        &format!("virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT_NAME}"),
    ]);
    if tee == Tee::None {
        // Free page reporting: the guest reports the pages it frees and QEMU discards them, so
        // the pod costs the host what its guest uses now rather than the most it ever touched
        // (the initramfs, an image pull's layers). A TEE guest's private memory is not the
        // host's to reclaim this way.
        push(&[
            "-device",
            &format!("{},id=balloon0,free-page-reporting=on", virtio("balloon")?),
        ]);
    }
    if let Some(share) = &res.share_dir {
        push(&[
            "-fsdev",
            &format!(
                "local,id=share,path={},security_model=none",
                qemu_path("share", share)?
            ),
            "-device",
            &format!("{},fsdev=share,mount_tag={SHARE_MOUNT_TAG}", virtio("9p")?),
        ]);
    }
    if let Some(nic) = &res.nic {
        check_mac(&nic.mac)?;
        push(&[
            "-netdev",
            &format!("tap,id=net0,fd={TAP_FD}"),
            "-device",
            // No option ROM: the guest never boots from the network.
            &format!(
                "{},netdev=net0,mac={}{}",
                virtio("net")?,
                nic.mac,
                if mmio { "" } else { ",romfile=" }
            ),
        ]);
    }
    if let Some(image) = initdata_image {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=initdata,format=raw,readonly=on",
                qemu_path("Init-Data image", image)?
            ),
            "-device",
            &format!(
                "{},drive=initdata,serial={INITDATA_DISK_SERIAL}",
                virtio("blk")?
            ),
        ]);
    }
    Ok(a)
}

/// Cloud Hypervisor, SEV-SNP only: it has no MRCONFIGID, so TDX would run unbound.
///
/// The agent channel is Cloud Hypervisor's hybrid vsock (a unix socket on the host, vsock CID 3
/// in the guest) since it has no virtio-serial, and it has no 9p: a root filesystem share needs
/// virtiofsd, which this plan does not start.
fn cloud_hypervisor_args(
    config: &VmConfig,
    tee: Tee,
    digest: Option<&Digest>,
    initdata_image: Option<&Path>,
    res: &VmResources,
    cmdline: &str,
) -> Result<Vec<String>> {
    match tee {
        Tee::Snp => {}
        Tee::Tdx => return Err(Error::UnsupportedByCloudHypervisor(
            "Cloud Hypervisor cannot bind Init-Data into a TDX guest: it has no option to set MRCONFIGID (it is always zero), so the guest would launch unbound; use hypervisor = \"qemu\" for TDX",
        )),
        Tee::None => return Err(Error::UnsupportedByCloudHypervisor(
            "Coffer uses Cloud Hypervisor for SEV-SNP guests only; use hypervisor = \"qemu\" for TEE none",
        )),
    }
    let igvm = config.firmware.as_deref().ok_or(Error::MissingFirmware {
        what: "an SEV-SNP guest on Cloud Hypervisor",
        firmware: "an IGVM file",
    })?;
    let mut a: Vec<String> = Vec::new();
    let mut push = |words: &[&str]| a.extend(words.iter().map(|w| w.to_string()));
    push(&[
        "--platform",
        "sev_snp=on",
        "--igvm",
        utf8("firmware", igvm)?,
    ]);
    if let Some(d) = digest {
        push(&["--host-data", &d.bind(TeeField::SnpHostData).to_hex()]);
    }
    push(&[
        "--cpus",
        &format!("boot={}", config.vcpus),
        "--memory",
        &format!("size={}M", config.memory_mib),
        "--kernel",
        utf8("kernel", &config.kernel)?,
        "--initramfs",
        utf8("initrd", &config.initrd)?,
        "--cmdline",
        cmdline,
        "--serial",
        &format!("file={}", utf8("console log", &res.console_log)?),
        "--console",
        "off",
        "--api-socket",
        &format!("path={}", utf8("API socket", &res.qmp_socket)?),
        "--vsock",
        &format!("cid=3,socket={}", utf8("agent socket", &res.agent_socket)?),
    ]);
    if let Some(nic) = &res.nic {
        check_mac(&nic.mac)?;
        push(&["--net", &format!("fd={TAP_FD},mac={}", nic.mac)]);
    }
    if let Some(image) = initdata_image {
        push(&[
            "--disk",
            &format!(
                "path={},readonly=on,serial={INITDATA_DISK_SERIAL}",
                utf8("Init-Data image", image)?
            ),
        ]);
    }
    Ok(a)
}

#[cfg(test)]
mod run_as_tests {
    use super::*;

    #[test]
    fn a_user_is_looked_up_and_an_unknown_one_named() {
        let root = RunAs::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        let e = RunAs::lookup("no-such-coffer-user")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"no-such-coffer-user\" does not exist on this host"),
            "{e}"
        );
    }

    #[test]
    fn an_unprivileged_qemu_makes_its_sockets_in_its_own_directory() {
        let mut r = VmResources::in_dir("/run/coffer/sb");
        r.run_as(RunAs {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        });
        for socket in [&r.agent_socket, &r.qmp_socket, &r.console_socket] {
            assert_eq!(socket.parent(), Some(Path::new("/run/coffer/sb/qemu")));
        }
        // What the shim writes stays where QEMU cannot change it.
        assert_eq!(r.console_log, Path::new("/run/coffer/sb/console.log"));
        assert_eq!(
            r.initdata_image.as_deref(),
            Some(Path::new("/run/coffer/sb/initdata.img"))
        );
    }
}
