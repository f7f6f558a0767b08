//! The guest's serial console, kept on the host in bounded space.
//!
//! QEMU writes the console to a unix socket; a task of the host reads it and appends it to
//! `console.log`. When the file reaches [`CONSOLE_CAP`] it becomes `console.log.1` (replacing
//! the previous one) and a new file starts: whatever the guest prints, the host keeps at most
//! twice the cap, and always the latest lines. A guest that prints faster than the host writes
//! is slowed down by the socket, never buffered without bound.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The most bytes one console file holds.
pub const CONSOLE_CAP: u64 = 512 * 1024;

/// Copies the console from `stream` into `log` (rotating at `cap`) until QEMU closes it.
pub async fn pump(mut stream: UnixStream, log: PathBuf, cap: u64) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut file = match open(&log).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %log.display(), error = %e, "cannot write the guest console");
            return;
        }
    };
    let mut size = file.metadata().await.map_or(0, |m| m.len());
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut chunk = buf.get(..n).unwrap_or_default();
        while !chunk.is_empty() {
            if size >= cap {
                match rotate(&log).await {
                    Ok(f) => {
                        file = f;
                        size = 0;
                    }
                    Err(e) => {
                        tracing::warn!(path = %log.display(), error = %e, "cannot rotate the guest console");
                        return;
                    }
                }
            }
            let room = usize::try_from(cap - size).unwrap_or(usize::MAX);
            let (now, later) = chunk.split_at(chunk.len().min(room));
            // tokio's file writes in the background: flushed, the bytes are in the file
            // before it may be renamed.
            if file.write_all(now).await.is_err() || file.flush().await.is_err() {
                return;
            }
            size = size.saturating_add(u64::try_from(now.len()).unwrap_or(u64::MAX));
            chunk = later;
        }
    }
}

async fn open(log: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await
}

/// `console.log` becomes `console.log.1`; a new, empty `console.log` is returned.
async fn rotate(log: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::rename(log, rotated(log)).await?;
    open(log).await
}

/// Where the older half of the console is kept.
pub fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_stays_within_twice_the_cap_and_keeps_the_latest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (mut guest, host) = UnixStream::pair().unwrap();
        let pump = tokio::spawn(pump(host, log.clone(), 4096));
        for i in 0..2000 {
            guest
                .write_all(format!("line {i:05} of a chatty guest\n").as_bytes())
                .await
                .unwrap();
        }
        drop(guest);
        pump.await.unwrap();
        let current = std::fs::read_to_string(&log).unwrap();
        let older = std::fs::read_to_string(rotated(&log)).unwrap();
        assert!(current.len() <= 4096 && older.len() <= 4096);
        assert!(
            current.ends_with("line 01999 of a chatty guest\n"),
            "{current}"
        );
        // Nothing lost between the two files.
        let joined = older + &current;
        let last: Vec<&str> = joined.lines().rev().take(100).collect();
        assert_eq!(last[99], "line 01900 of a chatty guest");
    }
}
