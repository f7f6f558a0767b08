//! A container's root filesystem: mounted at `<bundle>/rootfs` and exposed to the guest.
//!
//! containerd does not mount a v2 shim's root filesystem; `CreateTaskRequest.rootfs` lists the
//! mounts (an overlay from the snapshotter) and the shim mounts them at `<bundle>/rootfs`, as the
//! runc shim does. The guest sees host directories only through the sandbox's 9p share, so the
//! mounted root is then bind-mounted to `<share>/<container-id>/rootfs`, which the guest reaches
//! as `/run/coffer/share/<container-id>/rootfs`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Error, Result};

/// The mounts made for one container, undone by [`Rootfs::unmount`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// `<bundle>/rootfs`, if the shim mounted something there.
    pub bundle_rootfs: Option<PathBuf>,
    /// The sandbox's share directory.
    pub share: PathBuf,
    /// The bind mount inside the share.
    pub shared: PathBuf,
    /// `shared` relative to the share, as the guest protocol wants it.
    pub guest_path: String,
}

impl Rootfs {
    /// Mounts `mounts` at `<bundle>/rootfs` (when there are any) and binds the result into the
    /// share. On failure nothing stays mounted.
    pub async fn mount(
        mounts: &[Mount],
        bundle: &Path,
        share_dir: &Path,
        container_id: &str,
    ) -> Result<Rootfs> {
        let target = bundle.join("rootfs");
        mkdir_all(&target)?;
        let mut bundle_rootfs = None;
        for m in mounts {
            containerd_shim::asynchronous::util::mount_rootfs(m, &target)
                .await
                .map_err(|e| {
                    Error::Mount(format!(
                        "cannot mount the container's {} root filesystem at {}: {e}",
                        m.type_,
                        target.display()
                    ))
                })?;
            bundle_rootfs = Some(target.clone());
        }
        let guest_path = format!("{container_id}/rootfs");
        let shared = share_dir.join(&guest_path);
        let rootfs = Rootfs {
            bundle_rootfs,
            share: share_dir.to_path_buf(),
            shared,
            guest_path,
        };
        // Without mounts (a client that prepared <bundle>/rootfs itself) the directory is shared
        // as it is.
        if let Err(e) = rootfs.bind(&target) {
            let _ = rootfs.unmount();
            return Err(e);
        }
        Ok(rootfs)
    }

    fn bind(&self, source: &Path) -> Result<()> {
        // The guest writes in the share: the mount point is reached through descriptors, never
        // through a path a symlink of the guest's could redirect. The share itself is the
        // host's.
        mkdir_all(&self.share)?;
        let target = open_in_share(&self.share, &self.guest_path, true)?;
        // MS_REC: the snapshot may itself contain mounts.
        mount(
            Some(source),
            &fd_path(&target),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| {
            Error::Mount(format!(
                "cannot bind {} into the sandbox share at {}: {e}",
                source.display(),
                self.shared.display()
            ))
        })
    }

    /// Unmounts the share bind and the bundle's rootfs, and removes the share directory of the
    /// container. Already unmounted is fine.
    pub fn unmount(&self) -> Result<()> {
        let mut problems = Vec::new();
        // In the share, through descriptors resolved without symlinks (see `bind`). What the
        // guest moved away is still under the state directory, whose removal unmounts
        // everything below it.
        if let Err(e) = unmount_in_share(&self.share, &self.guest_path) {
            problems.push(e);
        }
        if let Some(target) = &self.bundle_rootfs {
            if let Err(e) = unmount_all(target) {
                problems.push(e);
            }
        }
        // Only empty directories are removed (never recursively): if an unmount failed, the
        // container's files are still visible here and must not be deleted through it.
        if problems.is_empty() {
            if let Err(e) = remove_in_share(&self.share, &self.guest_path) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Mount(problems.join("; ")))
        }
    }
}

/// Resolution inside the share: beneath it, no symlink, no magic link.
fn beneath() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

/// A path of the share that could not be opened, created or removed: the system's error, to
/// tell a missing path from the others, and a message naming the path.
#[derive(Debug)]
struct ShareError {
    errno: Errno,
    message: String,
}

impl ShareError {
    fn new(errno: Errno, what: &str, path: &Path) -> ShareError {
        let why = match errno {
            Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV => {
                "; it is not a plain directory of the share (the guest can write there)"
            }
            _ => "",
        };
        ShareError {
            errno,
            message: format!("cannot {what} {}: {errno}{why}", path.display()),
        }
    }
}

impl From<ShareError> for Error {
    fn from(e: ShareError) -> Error {
        Error::Mount(e.message)
    }
}

/// An `O_PATH` descriptor of the directory `rel` (`/`-separated; empty: the share itself) under
/// the sandbox's share, each component created when `create` and missing, and none of them a
/// symlink: the guest can change the share, and a symlink there must not lead a mount of the
/// host's anywhere else.
fn open_in_share(
    share: &Path,
    rel: &str,
    create: bool,
) -> std::result::Result<OwnedFd, ShareError> {
    let fd = nix::fcntl::open(
        share,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ShareError::new(e, "open the share", share))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut shown = share.to_path_buf();
    for name in rel.split('/').filter(|n| !n.is_empty()) {
        shown.push(name);
        if create {
            match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(ShareError::new(e, "create", &shown)),
            }
        }
        let fd = openat2(dir.as_raw_fd(), name, beneath())
            .map_err(|e| ShareError::new(e, "open", &shown))?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(dir)
}

/// Removes the empty directories of `rel` under the share, deepest first, without following
/// symlinks (a name the guest turned into a symlink is left alone).
fn remove_in_share(share: &Path, rel: &str) -> std::result::Result<(), String> {
    let names: Vec<&str> = rel.split('/').collect();
    for depth in (0..names.len()).rev() {
        let dir = match open_in_share(share, &names[..depth].join("/"), false) {
            Ok(dir) => dir,
            Err(e) if e.errno == Errno::ENOENT => return Ok(()),
            Err(e) => return Err(e.message),
        };
        let path = share.join(names[..=depth].join("/"));
        match unlinkat(
            Some(dir.as_raw_fd()),
            names[depth],
            UnlinkatFlags::RemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(ShareError::new(e, "remove", &path).message),
        }
    }
    Ok(())
}

/// Unmounts everything mounted at `rel` under the share (stacked mounts included), each time
/// reaching the topmost mount through a descriptor resolved as in [`open_in_share`].
fn unmount_in_share(share: &Path, rel: &str) -> std::result::Result<(), String> {
    for _ in 0..16 {
        let target = match open_in_share(share, rel, false) {
            Ok(fd) => fd,
            Err(e) if e.errno == Errno::ENOENT => return Ok(()),
            Err(e) => return Err(e.message),
        };
        // The magic link is followed to the mount's root: no UMOUNT_NOFOLLOW here.
        match umount2(&fd_path(&target), MntFlags::empty()) {
            Ok(()) => continue,
            Err(Errno::EINVAL) => return Ok(()),
            Err(Errno::EBUSY) => {
                return umount2(&fd_path(&target), MntFlags::MNT_DETACH)
                    .map_err(|e| format!("cannot unmount {}: {e}", share.join(rel).display()));
            }
            Err(e) => return Err(format!("cannot unmount {}: {e}", share.join(rel).display())),
        }
    }
    Err(format!(
        "cannot unmount {}: more than 16 mounts stacked on it",
        share.join(rel).display()
    ))
}

/// The path through which `fd` itself is reached.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Unmounts everything mounted at `target` (stacked mounts included); lazily when busy, so a
/// process the kernel still reports as using it cannot block teardown forever.
pub fn unmount_all(target: &Path) -> std::result::Result<(), String> {
    for _ in 0..16 {
        match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                return umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                    .map_err(|e| format!("cannot unmount {}: {e}", target.display()));
            }
            Err(e) => return Err(format!("cannot unmount {}: {e}", target.display())),
        }
    }
    Err(format!(
        "cannot unmount {}: more than 16 mounts stacked on it",
        target.display()
    ))
}

/// Unmounts every mount point at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn unmount_below(dir: &Path) -> std::result::Result<(), String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    let mut problems = Vec::new();
    for p in points {
        if let Err(e) = unmount_all(&p) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mkdir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: "cannot create directory",
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
    }

    #[tokio::test]
    async fn bind_into_share_and_unmount() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let lower = dir.path().join("lower");
        let share = dir.path().join("share");
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(lower.join("hello"), b"hi").unwrap();
        let m = Mount {
            type_: "bind".into(),
            source: lower.to_string_lossy().into(),
            options: vec!["rbind".into(), "ro".into()],
            ..Default::default()
        };
        let rootfs = Rootfs::mount(&[m], &bundle, &share, "c1").await.unwrap();
        assert_eq!(rootfs.guest_path, "c1/rootfs");
        assert_eq!(std::fs::read(share.join("c1/rootfs/hello")).unwrap(), b"hi");
        assert_eq!(std::fs::read(bundle.join("rootfs/hello")).unwrap(), b"hi");
        rootfs.unmount().unwrap();
        assert!(!share.join("c1").exists());
        assert!(!bundle.join("rootfs/hello").exists());
        assert_eq!(std::fs::read(lower.join("hello")).unwrap(), b"hi");
    }

    #[tokio::test]
    async fn a_symlink_in_the_share_is_never_followed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(bundle.join("rootfs/f"), b"x").unwrap();
        let share = dir.path().join("s");
        let elsewhere = dir.path().join("host-dir");
        std::fs::create_dir_all(elsewhere.join("rootfs")).unwrap();
        std::fs::create_dir_all(&share).unwrap();
        // What a guest can do: the container's directory in the share made a symlink out.
        std::os::unix::fs::symlink(&elsewhere, share.join("c1")).unwrap();
        let e = Rootfs::mount(&[], &bundle, &share, "c1").await.unwrap_err();
        assert!(
            e.to_string().contains("not a plain directory of the share"),
            "{e}"
        );
        // Nothing was mounted through the symlink, and nothing of the host removed.
        assert!(!elsewhere.join("rootfs/f").exists());
        assert!(elsewhere.join("rootfs").is_dir());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let tmp = dir.path().to_string_lossy().into_owned();
        assert!(!info.contains(tmp.as_str()), "a mount under {tmp}");
    }

    #[tokio::test]
    async fn without_mounts_the_bundle_rootfs_is_shared() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(bundle.join("rootfs/f"), b"x").unwrap();
        let rootfs = Rootfs::mount(&[], &bundle, &dir.path().join("s"), "c1")
            .await
            .unwrap();
        assert_eq!(rootfs.bundle_rootfs, None);
        assert_eq!(
            std::fs::read(dir.path().join("s/c1/rootfs/f")).unwrap(),
            b"x"
        );
        rootfs.unmount().unwrap();
        assert!(!dir.path().join("s/c1").exists());
        assert_eq!(std::fs::read(bundle.join("rootfs/f")).unwrap(), b"x");
    }
}
