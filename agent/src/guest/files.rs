//! Files the host gives a container (the pod's `/etc/hosts`, `/etc/resolv.conf`,
//! `/etc/hostname`, other single-file mounts of its spec): the agent keeps a copy under
//! [`FILES_DIR`] and makes a detached bind mount of each (`open_tree(OPEN_TREE_CLONE)`); the
//! container's first process attaches them over their paths (`move_mount`) once inside its
//! root, so the copies need not be reachable from there and the old root can go.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::ContainerError;
use crate::protocol::{ContainerFile, MAX_CONTAINER_FILES, MAX_CONTAINER_FILE_BYTES};

/// Where the copies live, one directory per container.
pub const FILES_DIR: &str = "/run/coffer/files";

/// A file ready to be bind-mounted: a detached mount of the agent's copy, and where it goes.
#[derive(Debug)]
pub(super) struct FileMount {
    /// The detached bind mount of the copy, held until the container's process attached it.
    pub tree: OwnedFd,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// Checks the files of a create request, without touching anything.
pub(super) fn check(files: &[ContainerFile]) -> Result<(), ContainerError> {
    if files.len() > MAX_CONTAINER_FILES {
        return Err(ContainerError::Invalid(format!(
            "{} file mounts; a container may have at most {MAX_CONTAINER_FILES}",
            files.len()
        )));
    }
    for f in files {
        let p = Path::new(&f.path);
        let ok = p.is_absolute()
            && !f.path.contains('\0')
            && p.components().all(|c| !matches!(c, Component::ParentDir))
            && p.components().count() > 1;
        if !ok {
            return Err(ContainerError::Invalid(format!(
                "file mount path {:?} must be absolute, below /, without '..'",
                f.path
            )));
        }
        if f.data.len() > MAX_CONTAINER_FILE_BYTES {
            return Err(ContainerError::Invalid(format!(
                "file mount {} is {} bytes; at most {MAX_CONTAINER_FILE_BYTES}",
                f.path,
                f.data.len()
            )));
        }
    }
    Ok(())
}

/// A detached bind mount of `path` (`open_tree(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)`).
pub(super) fn clone_tree(path: &Path) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    // SAFETY: open_tree reads a NUL-terminated path and takes plain flags; it returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    let fd =
        i32::try_from(fd).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to this process and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The copies of one container's files; dropping this removes them.
#[derive(Debug, Default)]
pub(super) struct Files {
    dir: Option<PathBuf>,
    /// The files, ready to mount.
    pub mounts: Vec<FileMount>,
}

impl Drop for Files {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                super::boot::log(&format!("removing {}: {e}", dir.display()));
            }
        }
    }
}

/// Writes the copies of container `id`'s files in a new directory under `root` and opens them
/// for mounting.
pub(super) fn write(
    root: &Path,
    id: &str,
    files: &[ContainerFile],
) -> Result<Files, ContainerError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    check(files)?;
    if files.is_empty() {
        return Ok(Files::default());
    }
    let dir = root.join(format!("{id}.{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let io = |step: String| {
        move |e: std::io::Error| ContainerError::Sys {
            step,
            source: super::error::io_errno(&e),
        }
    };
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    std::fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut out = Files {
        dir: Some(dir.clone()),
        mounts: Vec::with_capacity(files.len()),
    };
    for (n, f) in files.iter().enumerate() {
        let path = dir.join(n.to_string());
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if f.readonly { 0o444 } else { 0o644 })
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        file.write_all(&f.data)
            .map_err(io(format!("writing {}", path.display())))?;
        drop(file);
        out.mounts.push(FileMount {
            tree: clone_tree(&path)
                .map_err(io(format!("cloning a mount of {}", path.display())))?,
            target: f.path.clone(),
            readonly: f.readonly,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> ContainerFile {
        ContainerFile {
            path: path.into(),
            data: data.to_vec(),
            readonly: false,
        }
    }

    #[test]
    fn copies_are_written_opened_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let files = write(
            root.path(),
            "c1",
            &[
                file("/etc/hosts", b"127.0.0.1 localhost\n"),
                file("/etc/resolv.conf", b"nameserver 10.0.0.10\n"),
            ],
        )
        .unwrap();
        let mounts = &files.mounts;
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].target, "/etc/hosts");
        let copy = std::fs::read_dir(root.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("1");
        assert_eq!(std::fs::read(&copy).unwrap(), b"nameserver 10.0.0.10\n");
        // A second container with the same id (a create that will be refused) has its own.
        let again = write(root.path(), "c1", &[file("/etc/hosts", b"x")]).unwrap();
        drop(again);
        assert_eq!(std::fs::read(&copy).unwrap(), b"nameserver 10.0.0.10\n");
        drop(files);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn bad_paths_and_sizes_are_refused() {
        for bad in ["etc/hosts", "/", "/etc/../x", ""] {
            let e = check(&[file(bad, b"")]).unwrap_err().to_string();
            assert!(e.contains("must be absolute"), "{bad}: {e}");
        }
        let big = vec![0u8; MAX_CONTAINER_FILE_BYTES + 1];
        let e = check(&[file("/x", &big)]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "file mount /x is {} bytes; at most {MAX_CONTAINER_FILE_BYTES}",
                big.len()
            )
        );
        let many: Vec<_> = (0..=MAX_CONTAINER_FILES).map(|_| file("/x", b"")).collect();
        assert!(check(&many)
            .unwrap_err()
            .to_string()
            .starts_with("33 file mounts"));
    }
}
