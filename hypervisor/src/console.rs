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

/// The most console bytes the host takes per second. A boot prints a few KiB; a guest that
/// prints without end costs the host a bounded share of a core, and the socket slows the guest
/// down for the rest.
pub const CONSOLE_RATE: u64 = 256 * 1024;

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
    let second = std::time::Duration::from_secs(1);
    let mut window = tokio::time::Instant::now();
    let mut taken: u64 = 0;
    loop {
        if taken >= CONSOLE_RATE {
            tokio::time::sleep_until(window + second).await;
        }
        if window.elapsed() >= second {
            window = tokio::time::Instant::now();
            taken = 0;
        }
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        taken = taken.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
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

    /// A flood is taken at [`CONSOLE_RATE`]: two and a half seconds' worth needs two waits for
    /// the next second (a bound from below, which a slow machine cannot break).
    #[tokio::test]
    async fn a_flood_is_taken_at_the_console_rate() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (mut guest, host) = UnixStream::pair().unwrap();
        let started = std::time::Instant::now();
        let pump = tokio::spawn(pump(host, log.clone(), CONSOLE_CAP));
        let flood = vec![b'x'; usize::try_from(CONSOLE_RATE * 5 / 2).unwrap()];
        guest.write_all(&flood).await.unwrap();
        drop(guest);
        pump.await.unwrap();
        assert!(
            started.elapsed() >= std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let kept = std::fs::metadata(&log).unwrap().len()
            + std::fs::metadata(rotated(&log)).map_or(0, |m| m.len());
        // Slowed, not dropped: under twice the cap, every byte is kept.
        assert_eq!(kept, CONSOLE_RATE * 5 / 2);
    }
}
