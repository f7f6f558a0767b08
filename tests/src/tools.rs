//! Where the things under test are: the workspace, the Coffer binaries, the guest image, the
//! packaging scripts; and the `coffer` CLI calls the scenarios check against.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shim's binary name: containerd derives it from runtime_type `io.containerd.coffer.v2`.
pub const SHIM: &str = "containerd-shim-coffer-v2";
/// The operator CLI's binary name.
pub const CLI: &str = "coffer";

/// The workspace root (the directory holding `packaging/`).
pub use coffer_testkit::workspace;

/// `name` on PATH, if there.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directory holding the built shim and CLI: env `COFFER_BIN_DIR`, else whichever of
/// `<workspace>/target/{debug,release}` (or `$CARGO_TARGET_DIR/{debug,release}`) has the
/// newer shim. Err says what is missing and how to build it.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("COFFER_BIN_DIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return if is_executable(&dir.join(SHIM)) && is_executable(&dir.join(CLI)) {
            Ok(dir)
        } else {
            Err(format!(
                "COFFER_BIN_DIR={} lacks {SHIM} or {CLI}",
                dir.display()
            ))
        };
    }
    let mut roots = vec![workspace().join("target")];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(t));
    }
    roots
        .iter()
        .flat_map(|root| [root.join("debug"), root.join("release")])
        .filter(|d| is_executable(&d.join(SHIM)) && is_executable(&d.join(CLI)))
        .max_by_key(|d| {
            std::fs::metadata(d.join(SHIM))
                .and_then(|m| m.modified())
                .ok()
        })
        .ok_or_else(|| {
            format!(
                "no {SHIM} and {CLI} built under {}/target (cargo build -p coffer-shim), \
                 and COFFER_BIN_DIR is not set",
                workspace().display()
            )
        })
}

pub use coffer_testkit::guest_dir;

/// Whether this process runs as root (containerd and runc need it).
pub fn is_root() -> bool {
    // Reading /proc keeps this crate free of libc for one getuid call.
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Why a private containerd cannot run here, if it cannot.
pub fn containerd_missing() -> Option<String> {
    if !is_root() {
        return Some("not running as root; a private containerd needs root".into());
    }
    for tool in ["containerd", "ctr", "runc"] {
        if on_path(tool).is_none() && !Path::new("/usr/sbin").join(tool).exists() {
            return Some(format!(
                "{tool} is not installed (packaging/dev/deps.sh installs it)"
            ));
        }
    }
    None
}

/// The containerd versions besides the machine's own that `packaging/dev/containerd-versions.sh`
/// fetches from Debian (never installed): the folder name under the cache and the version
/// prefix `containerd --version` shows.
pub const OTHER_CONTAINERDS: [(&str, &str); 2] = [("1.7", "1.7."), ("2.x", "2.")];

/// Where `packaging/dev/containerd-versions.sh` extracts them: env `COFFER_CONTAINERD_CACHE`,
/// else `<workspace>/target/containerd`.
pub fn containerd_cache() -> PathBuf {
    std::env::var_os("COFFER_CONTAINERD_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| workspace().join("target/containerd"), PathBuf::from)
}

/// The containerd binary of `version` ("1.7" or "2.x") fetched by
/// `packaging/dev/containerd-versions.sh`. Err is the reason a test prints as its SKIP line:
/// why the script could not fetch it, or that it has not run.
pub fn other_containerd(version: &str) -> Result<PathBuf, String> {
    let cache = containerd_cache();
    let bin = cache.join(version).join("usr/bin/containerd");
    if is_executable(&bin) {
        return Ok(bin);
    }
    match std::fs::read_to_string(cache.join(format!("{version}.unavailable"))) {
        Ok(reason) => Err(reason.trim().to_owned()),
        Err(_) => Err(format!(
            "no containerd {version} in {} (packaging/dev/containerd-versions.sh fetches it)",
            cache.display()
        )),
    }
}

/// `BINARY --version`'s version word (e.g. `1.7.24~ds1`, `2.1.9+unknown`; a leading `v` is
/// dropped).
pub fn containerd_version(binary: &Path) -> Result<String, String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // "containerd github.com/containerd/containerd[/v2] VERSION [REVISION]"
    text.split_whitespace()
        .nth(2)
        .map(|v| v.trim_start_matches('v').to_owned())
        .ok_or_else(|| format!("{} --version printed {text:?}", binary.display()))
}

/// The `coffer` CLI under test.
#[derive(Debug, Clone)]
pub struct Coffer {
    bin: PathBuf,
}

impl Coffer {
    /// The CLI in `bin_dir`.
    pub fn in_dir(bin_dir: &Path) -> Coffer {
        Coffer {
            bin: bin_dir.join(CLI),
        }
    }

    /// Runs `coffer args...` and returns its output, whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output, String> {
        Command::new(&self.bin)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))
    }

    /// Runs `coffer args...`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run(args)?;
        if !out.status.success() {
            return Err(format!(
                "coffer {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        String::from_utf8(out.stdout)
            .map_err(|_| format!("coffer {} printed non-UTF-8", args.join(" ")))
    }

    /// `coffer initdata encode FILE`: the annotation value.
    pub fn encode(&self, file: &Path) -> Result<String, String> {
        let path = file.to_string_lossy();
        Ok(self.ok(&["initdata", "encode", &path])?.trim().to_owned())
    }

    /// `coffer initdata digest FILE --tee TEE`: the hex digest (the first hex word printed).
    pub fn digest(&self, file: &Path, tee: &str) -> Result<String, String> {
        let path = file.to_string_lossy();
        let out = self.ok(&["initdata", "digest", &path, "--tee", tee])?;
        first_hex_word(&out)
            .ok_or_else(|| format!("coffer initdata digest printed no hex digest: {out:?}"))
    }
}

/// The first whitespace-separated word of at least 64 hex digits in `text`.
pub fn first_hex_word(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == ':' || c == '=')
        .find(|w| w.len() >= 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

/// The pids of processes whose command line mentions `needle` and starts with a program whose
/// file name contains `program` (e.g. "qemu-system").
pub fn processes(program: &str, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let mut args = raw.split(|b| *b == 0).map(String::from_utf8_lossy);
            let Some(argv0) = args.next() else {
                return false;
            };
            let name = argv0.rsplit('/').next().unwrap_or_default().to_owned();
            name.contains(program) && args.any(|a| a.contains(needle))
        })
        .collect()
}

/// The Init-Data example every scenario uses, from the repository's own test data.
pub use coffer_testkit::seed_initdata_path as seed_initdata;

/// The pids of processes that belong to `dir`: their command line mentions it or their root
/// directory lies under it (container processes, whose root is a rootfs mounted there).
pub fn processes_of(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle.as_str()) || root.starts_with(dir)
        })
        .collect()
}

/// Mount points at or under `dir`, from this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(prefix.as_str()))
        .map(str::to_owned)
        .collect()
}

/// `GET /` from `addr` over plain HTTP/1.0, retried until `wait` runs out (a server that is
/// still starting refuses the connection); returns the body.
pub fn http_get(addr: std::net::SocketAddr, wait: std::time::Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + wait;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let mut s =
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut reply = Vec::new();
            s.take(1 << 20).read_to_end(&mut reply)?;
            Ok(String::from_utf8_lossy(&reply).into_owned())
        })();
        match attempt {
            Ok(reply) => {
                return match reply.split_once("\r\n\r\n") {
                    Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                        Ok(body.to_owned())
                    }
                    _ => Err(format!("unexpected reply from {addr}: {reply:?}")),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    Err(format!("no answer from {addr} in {wait:?}: {last}"))
}

/// Runs `args` inside the network namespace at `netns` (nsenter); its stdout, or why it failed.
pub fn in_netns(netns: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .map_err(|e| format!("nsenter: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Why tests that boot Coffer pods through a private containerd cannot run here (no shim, no
/// guest image, no containerd), if they cannot.
pub fn coffer_pods_missing() -> Option<String> {
    bin_dir().and(guest_dir()).err().or_else(containerd_missing)
}

/// The peak resident memory of process `pid` in KiB (`VmHWM`), 0 once it is gone.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A TAP for the VM's NIC, made in a new network namespace (on a thread of its own, which
/// ends there): nothing appears on the host's network, and the namespace goes when the
/// descriptor is closed.
pub fn isolated_tap() -> Result<OwnedFd, String> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("cannot make a network namespace for the NIC: {e}"))?;
        coffer_shim::network::open_tap().map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the thread making the TAP panicked".to_string())?
}
