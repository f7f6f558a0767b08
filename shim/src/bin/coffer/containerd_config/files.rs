//! The files: the record of what `register` changed, reading and writing atomically, and the
//! directories it made.

use super::*;

/// The configuration before `register`, from the record and what is there now (None: there
/// was no configuration). Err says why the recorded pieces cannot be taken out.
pub(super) fn original_of(
    record: &Record,
    current: Option<&str>,
) -> Result<Option<String>, String> {
    let Some(text) = current else {
        return match record.created {
            Some(_) => Ok(None),
            None => Err("it no longer exists".to_owned()),
        };
    };
    let original = take_out(&record.inserted, text)?;
    Ok(if record.created.as_deref() == Some(original.as_str()) {
        None
    } else {
        Some(original)
    })
}

pub(super) fn none_present(record: &Record, current: Option<&str>) -> bool {
    current.is_none_or(|text| {
        record
            .inserted
            .iter()
            .all(|p| p.text.is_empty() || !text.contains(&p.text))
    })
}

pub(super) fn edited(config: &Path, why: &str, record: &Path) -> Failure {
    Failure::Invalid(format!(
        "{}: cannot take out what Coffer added ({why}): Coffer's lines were edited since; \
         take them out by hand, then delete {}",
        config.display(),
        record.display()
    ))
}

pub(super) fn read_record(path: &Path, config: &Path) -> Result<Option<Record>, Failure> {
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    let record: Record = serde_json::from_str(&text).map_err(|e| {
        Failure::Invalid(format!(
            "{}: not a record of `coffer containerd-config register`: {e}",
            path.display()
        ))
    })?;
    if record.config != config {
        return Err(Failure::Invalid(format!(
            "{} is the record of {}, not of {}",
            path.display(),
            record.config.display(),
            config.display()
        )));
    }
    Ok(Some(record))
}

/// The file's text; None when it does not exist.
pub(super) fn read_text(path: &Path) -> Result<Option<String>, Failure> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Failure::Invalid(format!("{}: not UTF-8 text", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::Invalid(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, keeping the
/// mode and owner of the file it replaces (a new file gets 0644).
pub(super) fn write_atomic(path: &Path, text: &str) -> Result<(), Failure> {
    let name = path
        .file_name()
        .ok_or_else(|| Failure::Invalid(format!("{}: not a file name", path.display())))?;
    let tmp = path.with_file_name(format!(
        ".{}.coffer-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let existing = fs::metadata(path).ok();
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        if let Some(meta) = &existing {
            // The owner where allowed (as root); anyone else keeps their own.
            let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
            file.set_permissions(meta.permissions())?;
        }
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Failure::Invalid(format!("cannot write {}: {e}", path.display()))
    })
}

pub(super) fn remove_file(path: &Path) -> Result<(), Failure> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::Invalid(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// The directories from the outermost missing one down to `dir`.
pub(super) fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

/// What to write when `config` is a symbolic link: the file it points to.
pub(super) fn follow_symlinks(config: &Path) -> PathBuf {
    fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf())
}

pub(super) fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))
}

pub(super) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

pub(super) fn utf8(path: &Path) -> Result<&str, Failure> {
    path.to_str().ok_or_else(|| {
        Failure::Invalid(format!(
            "{}: not UTF-8, which containerd's configuration cannot name",
            path.display()
        ))
    })
}
