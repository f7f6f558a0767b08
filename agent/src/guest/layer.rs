//! Unpacking one image layer (a tar stream, already decompressed) onto the layers below it, with
//! the OCI whiteouts: `.wh.<name>` removes `<name>` of the layers below, `.wh..wh..opq` empties
//! its directory of what the layers below put there.
//!
//! Paths stay inside the image directory: the tar crate refuses `..` and absolute names and
//! checks that an entry's parent resolves inside the destination; whiteouts are resolved here
//! without following a symbolic link.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The whiteout prefix.
const WHITEOUT: &str = ".wh.";
/// The opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tar stream is not valid (or its decompression failed).
    #[error("cannot read the layer archive: {0}")]
    Read(std::io::Error),
    /// An entry could not be written.
    #[error("cannot unpack {path}: {source}")]
    Unpack {
        /// The entry.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// An entry's name leaves the image or passes through a symbolic link.
    #[error("entry {0:?} leaves the image directory")]
    Escapes(String),
    /// More bytes than allowed.
    #[error("unpacked more than the {0} bytes this guest can hold")]
    TooLarge(u64),
}

/// Unpacks the tar stream `tar` into `root`; fails once the entries' sizes exceed `budget`
/// bytes. Returns the bytes written.
pub fn unpack(tar: impl Read, root: &Path, budget: u64) -> Result<u64, LayerError> {
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // What this layer itself put in place: an opaque marker empties only what lay below.
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut written: u64 = 0;
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut entry = entry.map_err(LayerError::Read)?;
        let name = entry.path().map_err(LayerError::Read)?.into_owned();
        let rel = relative(&name).ok_or_else(|| LayerError::Escapes(name.display().to_string()))?;
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file_name == OPAQUE {
            let dir = rel.parent().unwrap_or(Path::new(""));
            let abs =
                inside(root, dir).ok_or_else(|| LayerError::Escapes(name.display().to_string()))?;
            if let Ok(children) = std::fs::read_dir(&abs) {
                for child in children.flatten() {
                    let child_rel = dir.join(child.file_name());
                    if !created.contains(&child_rel) {
                        remove(&child.path()).map_err(|source| LayerError::Unpack {
                            path: child_rel.display().to_string(),
                            source,
                        })?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT) {
            let target_rel = rel.with_file_name(hidden);
            let Some(abs) = inside(root, &target_rel) else {
                return Err(LayerError::Escapes(name.display().to_string()));
            };
            if abs.symlink_metadata().is_ok() {
                remove(&abs).map_err(|source| LayerError::Unpack {
                    path: target_rel.display().to_string(),
                    source,
                })?;
            }
            continue;
        }
        written = written.saturating_add(entry.header().size().unwrap_or(0));
        if written > budget {
            return Err(LayerError::TooLarge(budget));
        }
        // A directory over a file (or the reverse) of a lower layer replaces it.
        if let Some(abs) = inside(root, &rel) {
            if let Ok(meta) = abs.symlink_metadata() {
                let is_dir_entry = entry.header().entry_type().is_dir();
                if meta.is_dir() != is_dir_entry || meta.file_type().is_symlink() {
                    let _ = remove(&abs);
                }
            }
        }
        entry.unpack_in(root).map_err(|source| LayerError::Unpack {
            path: rel.display().to_string(),
            source,
        })?;
        created.insert(rel);
    }
    Ok(written)
}

/// A tar name as a plain relative path (`./a/b` -> `a/b`); `None` for `..` or absolute names.
fn relative(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// `root/rel`, provided no directory on the way is a symbolic link (which could point anywhere
/// in the guest). The last component itself may be a link (a whiteout removes the link).
fn inside(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        let Component::Normal(n) = c else {
            return None;
        };
        at.push(n);
        if i + 1 < parts.len() {
            if let Ok(meta) = at.symlink_metadata() {
                if meta.file_type().is_symlink() {
                    return None;
                }
            }
        }
    }
    Some(at)
}

fn remove(path: &Path) -> std::io::Result<()> {
    let meta = path.symlink_metadata()?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(u64::try_from(data.len()).unwrap());
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_cksum();
        b.append_data(&mut h, path, &[][..]).unwrap();
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let lower = layer(|b| {
            dir(b, "etc");
            file(b, "etc/keep", b"k");
            file(b, "etc/gone", b"g");
            dir(b, "var/cache");
            file(b, "var/cache/old", b"o");
        });
        unpack(&lower[..], root, 1 << 20).unwrap();
        let upper = layer(|b| {
            file(b, "etc/.wh.gone", b"");
            dir(b, "var/cache");
            file(b, "var/cache/.wh..wh..opq", b"");
            file(b, "var/cache/new", b"n");
        });
        unpack(&upper[..], root, 1 << 20).unwrap();
        assert!(root.join("etc/keep").exists());
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("etc/.wh.gone").exists());
        assert!(!root.join("var/cache/old").exists());
        assert_eq!(std::fs::read(root.join("var/cache/new")).unwrap(), b"n");
    }

    #[test]
    fn whiteouts_do_not_follow_links_out_of_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), "v").unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        let evil = layer(|b| file(b, "link/.wh.victim", b""));
        assert!(matches!(
            unpack(&evil[..], &root, 1 << 20),
            Err(LayerError::Escapes(_))
        ));
        assert!(outside.path().join("victim").exists());
    }

    #[test]
    fn a_layer_over_budget_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let big = layer(|b| file(b, "big", &[0u8; 4096]));
        assert!(matches!(
            unpack(&big[..], tmp.path(), 1024),
            Err(LayerError::TooLarge(1024))
        ));
    }
}
