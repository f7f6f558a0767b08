//! Early boot as PID 1: off the initramfs onto a root of its own, filesystems, kernel modules,
//! the agent's port, the share, and power-off. (The kernel command line is parsed by `coffer_contract::KernelParams`.)

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::protocol::{AGENT_PORT_NAME, SHARE_MOUNT, SHARE_MOUNT_TAG};

/// The module list the image builder writes, in load order (dependencies first).
pub const MODULE_LIST: &str = "/etc/coffer/modules";

/// Where the agent's root is bind-mounted before it is moved over `/`.
const NEW_ROOT: &str = "/.coffer-root";

/// `statfs` magic of ramfs (`<linux/magic.h>`), what the initramfs is without `CONFIG_TMPFS`.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Puts the agent's root on a mount of its own: a bind mount of the initramfs's root, moved
/// over `/`. Nothing is copied; the files stay where the kernel unpacked them.
///
/// Why: the initramfs root (`rootfs`) is the one mount that has no parent, and `pivot_root(2)`
/// refuses to move it. A container must `pivot_root` into its rootfs and detach the old root,
/// as runc does: a `chroot` alone can be escaped by a process with `CAP_SYS_CHROOT`, which
/// containers have by default, and everything the agent mounted would stay reachable. The bind
/// mount has a parent (rootfs), so `pivot_root` accepts it, and the old root a container
/// detaches carries every mount of the agent with it.
///
/// Runs first thing, before anything is mounted. Does nothing when `/` is not an initramfs.
pub fn leave_initramfs() -> Result<(), String> {
    let root = nix::sys::statfs::statfs("/").map_err(|e| format!("statfs /: {e}"))?;
    // The initramfs is a tmpfs (with CONFIG_TMPFS) or a ramfs.
    let kind = root.filesystem_type();
    if kind != nix::sys::statfs::TMPFS_MAGIC && kind != nix::sys::statfs::FsType(RAMFS_MAGIC) {
        return Ok(());
    }
    let new_root = Path::new(NEW_ROOT);
    fs::create_dir_all(new_root).map_err(|e| format!("mkdir {NEW_ROOT}: {e}"))?;
    mount(
        Some("/"),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind-mounting / on {NEW_ROOT}: {e}"))?;
    std::env::set_current_dir(new_root).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {NEW_ROOT} over /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot into the new root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    // The mount point, seen again (empty) through the bind mount.
    let _ = fs::remove_dir(NEW_ROOT);
    Ok(())
}

/// Mounts what PID 1 needs. Failures are logged, not fatal: the agent still answers the host,
/// and what is missing shows in the report and the errors of later requests.
pub fn mount_early() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 4] = [
        ("proc", "/proc", "proc", nodev, None),
        ("sysfs", "/sys", "sysfs", nodev, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
            log(&format!("mount {fstype} on {target}: {e}"));
        }
    }
}

/// Mounts configfs (configfs-tsm reports live there) once its module is loaded. Kernels without
/// it are fine: only SEV-SNP guests of newer kernels use it.
pub fn mount_configfs() {
    let target = "/sys/kernel/config";
    if !Path::new(target).is_dir() {
        return;
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(
        Some("configfs"),
        target,
        Some("configfs"),
        flags,
        None::<&str>,
    ) {
        log(&format!("mount configfs on {target}: {e}"));
    }
}

/// Loads the modules of [`MODULE_LIST`] in order, when the image has one (a prebuilt Debian
/// kernel). A module already loaded (or built in) is fine.
pub fn load_modules() {
    let list = match fs::read_to_string(MODULE_LIST) {
        Ok(l) => l,
        // The image's own kernel has every driver built in, and no list.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            log(&format!("cannot read the module list {MODULE_LIST}: {e}"));
            return;
        }
    };
    let no_params = CString::default();
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let result = fs::File::open(path)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|f| {
                nix::kmod::finit_module(&f, &no_params, nix::kmod::ModuleInitFlags::empty())
            });
        match result {
            // EEXIST: already loaded. ENODEV: a driver for hardware this VM lacks (sev-guest
            // outside SNP), which is expected.
            Ok(()) | Err(nix::Error::EEXIST) | Err(nix::Error::ENODEV) => {}
            Err(e) => log(&format!("loading {path}: {e}")),
        }
    }
}

/// Mounts the 9p share the host exposes for container root filesystems.
pub fn mount_share() -> Result<(), String> {
    fs::create_dir_all(SHARE_MOUNT).map_err(|e| format!("mkdir {SHARE_MOUNT}: {e}"))?;
    mount(
        Some(SHARE_MOUNT_TAG),
        SHARE_MOUNT,
        Some("9p"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("trans=virtio,version=9p2000.L,msize=262144"),
    )
    .map_err(|e| {
        format!("cannot mount the 9p share (tag {SHARE_MOUNT_TAG}) on {SHARE_MOUNT}: {e}; the VM needs -device virtio-9p-pci,mount_tag={SHARE_MOUNT_TAG}")
    })
}

/// Finds the device of the port named [`AGENT_PORT_NAME`], creating its node if /dev lacks it.
/// Waits up to `wait` for the driver to announce the port.
pub fn find_port(sys_ports: &Path, wait: Duration) -> Result<PathBuf, String> {
    let end = Instant::now() + wait;
    loop {
        if let Some((node, dev)) = port_by_name(sys_ports, AGENT_PORT_NAME) {
            let path = Path::new("/dev").join(&node);
            if !fs::metadata(&path)
                .map(|m| m.file_type().is_char_device())
                .unwrap_or(false)
            {
                let (major, minor) = dev;
                mknod(
                    &path,
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o600),
                    makedev(major, minor),
                )
                .map_err(|e| format!("mknod {}: {e}", path.display()))?;
            }
            return Ok(path);
        }
        if Instant::now() >= end {
            return Err(format!(
                "no virtio-serial port named {AGENT_PORT_NAME} in {} after {wait:?}; the VM needs -device virtserialport,name={AGENT_PORT_NAME}",
                sys_ports.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(vportNpM, (major, minor))` of the port whose `name` file reads `name`.
pub fn port_by_name(sys_ports: &Path, name: &str) -> Option<(String, (u64, u64))> {
    let mut entries: Vec<_> = fs::read_dir(sys_ports).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|e| {
        let dir = e.path();
        let port_name = fs::read_to_string(dir.join("name")).ok()?;
        if port_name.trim() != name {
            return None;
        }
        let dev = fs::read_to_string(dir.join("dev")).ok()?;
        let (major, minor) = dev.trim().split_once(':')?;
        Some((
            e.file_name().to_string_lossy().into_owned(),
            (major.parse().ok()?, minor.parse().ok()?),
        ))
    })
}

/// Name the kernel gives the ACPI power button's input device.
const POWER_BUTTON: &str = "Power Button";

/// Powers the VM off when the host presses the ACPI power button (QMP `system_powerdown`), so a
/// host stopping the VM gets a clean poweroff instead of waiting for its timeout. Without the
/// button's input device (no `button`/`evdev` modules) the host's fallback (QMP quit) applies.
pub fn watch_power_button() {
    let Some(dev) = find_power_button(Path::new("/sys/class/input")) else {
        if Path::new("/sys/firmware/acpi").exists() {
            log("no ACPI power button input device; a powerdown request from the host will be ignored");
        } else {
            log(
                "no ACPI (a microvm), so no power button: the host stops this VM through the agent",
            );
        }
        return;
    };
    std::thread::spawn(move || {
        let mut file = match fs::File::open(&dev) {
            Ok(f) => f,
            Err(e) => {
                log(&format!("cannot open {}: {e}", dev.display()));
                return;
            }
        };
        let mut event = [0u8; INPUT_EVENT_LEN];
        while std::io::Read::read_exact(&mut file, &mut event).is_ok() {
            if is_power_press(&event) {
                log("power button pressed: powering off");
                power_off();
            }
        }
    });
}

/// `/dev/input/eventN` of the power button, from `/sys/class/input/eventN/device/name`.
fn find_power_button(sys_input: &Path) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(sys_input).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            return None;
        }
        let device = fs::read_to_string(e.path().join("device/name")).ok()?;
        (device.trim() == POWER_BUTTON).then(|| Path::new("/dev/input").join(name))
    })
}

/// Size of `struct input_event` on x86_64: a 16-byte timeval, then type (u16), code (u16) and
/// value (i32).
const INPUT_EVENT_LEN: usize = 24;

/// Whether an input event is the power key going down (`EV_KEY`, `KEY_POWER`, value 1).
fn is_power_press(event: &[u8; INPUT_EVENT_LEN]) -> bool {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// The most times [`release_freed_memory`] asks the kernel to shrink its per-CPU page lists.
const PCP_DECAY_ROUNDS: usize = 64;

/// Hands the pages the boot freed back to the buddy allocator, where free page reporting (the
/// plain handler's balloon device) can return them to the host.
///
/// The kernel frees the initramfs archive (~10 MB) page by page once it is unpacked. Freed in
/// bulk, those pages grow the per-CPU page lists (up to an eighth of the zone), and pages there
/// are neither merged nor reported: the host keeps holding memory the guest no longer uses. The
/// lists shrink by an eighth each time the kernel refreshes its memory statistics, which an idle
/// guest rarely does. Each read of `/proc/sys/vm/stat_refresh` is such a refresh, so this reads
/// it until the lists stop shrinking. Best effort: without it the memory is only held longer.
pub fn release_freed_memory() {
    let mut before = pcp_pages(&fs::read_to_string("/proc/zoneinfo").unwrap_or_default());
    for _ in 0..PCP_DECAY_ROUNDS {
        if fs::read("/proc/sys/vm/stat_refresh").is_err() {
            return;
        }
        let now = pcp_pages(&fs::read_to_string("/proc/zoneinfo").unwrap_or_default());
        if now >= before {
            return;
        }
        before = now;
    }
}

/// Pages on all per-CPU page lists, the sum of the `count:` lines of `/proc/zoneinfo`.
fn pcp_pages(zoneinfo: &str) -> u64 {
    zoneinfo
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("count:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// Syncs and powers the VM off. Never returns.
pub fn power_off() -> ! {
    // Processes get a moment to die before the disks are synced; SIGKILL is enough since the
    // guest's state is thrown away with the VM.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGKILL);
    nix::unistd::sync();
    // Without ACPI (a microvm) the kernel cannot power off, only halt, and a halted guest
    // leaves QEMU running: reset instead, which ends the VM as QEMU runs with -no-reboot.
    let mode = if Path::new("/sys/firmware/acpi").exists() {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    } else {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    };
    let _ = nix::sys::reboot::reboot(mode);
    // reboot(2) does not return on success; PID 1 must not exit either way.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Writes a line to the console (stderr of PID 1 is /dev/console).
pub fn log(message: &str) {
    // Stamped with the time since boot, as the kernel stamps its lines with `printk.time=1`, so
    // that where a boot spends its time reads off the console.
    let since_boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| format!("[{:5}.{:03}] ", t.tv_sec(), t.tv_nsec() / 1_000_000))
        .unwrap_or_default();
    eprintln!("{since_boot}coffer-agent: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_pages_on_per_cpu_lists() {
        let zoneinfo = "Node 0, zone    DMA32\n  pages free     114780\n  pagesets\n    cpu: 0\n              count: 3043\n              high:  3152\n              batch: 63\n    cpu: 1\n              count: 7\n              high:  3152\nNode 0, zone   Normal\n  pages free     0\n";
        assert_eq!(pcp_pages(zoneinfo), 3050);
        assert_eq!(pcp_pages("garbage\ncount: lots\n"), 0);
    }

    #[test]
    fn recognises_the_power_key() {
        let event = |kind: u16, code: u16, value: i32| {
            let mut e = [0u8; INPUT_EVENT_LEN];
            e[..8].copy_from_slice(&1_700_000_000u64.to_ne_bytes());
            e[16..18].copy_from_slice(&kind.to_ne_bytes());
            e[18..20].copy_from_slice(&code.to_ne_bytes());
            e[20..24].copy_from_slice(&value.to_ne_bytes());
            e
        };
        assert!(is_power_press(&event(1, 116, 1)));
        assert!(!is_power_press(&event(1, 116, 0))); // release
        assert!(!is_power_press(&event(0, 0, 0))); // EV_SYN
        assert!(!is_power_press(&event(1, 30, 1))); // KEY_A
    }

    #[test]
    fn finds_the_power_button() {
        let tmp = tempfile::tempdir().unwrap();
        for (node, name) in [
            ("event0", "AT Translated Set 2 keyboard"),
            ("event1", POWER_BUTTON),
            ("input1", POWER_BUTTON),
        ] {
            let d = tmp.path().join(node).join("device");
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_power_button(tmp.path()),
            Some(PathBuf::from("/dev/input/event1"))
        );
    }

    #[test]
    fn finds_the_port_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        for (port, name, dev) in [
            ("vport1p0", "other", "251:0"),
            ("vport1p1", AGENT_PORT_NAME, "251:1"),
        ] {
            let d = tmp.path().join(port);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("name"), format!("{name}\n")).unwrap();
            fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        }
        assert_eq!(
            port_by_name(tmp.path(), AGENT_PORT_NAME),
            Some(("vport1p1".into(), (251, 1)))
        );
        assert_eq!(port_by_name(tmp.path(), "nope"), None);
    }
}
