//! A process's standard output and error: from the guest's output events into containerd's FIFOs.
//!
//! containerd (the CRI plugin) creates one FIFO per stream and reads it into the container log
//! (`crictl logs`) or into an exec's result (`ExecSync`). The guest sends output as events; each
//! stream gets a copier task that opens its FIFO for writing, writes the chunks in order, and
//! closes the FIFO when the guest says the stream ended or the process exited. Closing is what
//! tells containerd the output is complete, so it happens even when nothing was written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_agent::protocol::Stream;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// How long closing waits for output to reach containerd. A FIFO nobody reads (containerd gone)
/// would otherwise hold a process's exit, and the pod's teardown, forever.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// The output side of one process.
#[derive(Debug, Default)]
pub struct ProcessIo {
    stdout: Option<mpsc::UnboundedSender<Vec<u8>>>,
    stderr: Option<mpsc::UnboundedSender<Vec<u8>>>,
    copiers: Vec<JoinHandle<()>>,
}

/// Turns a stdio path from containerd into a filesystem path; empty means "not wanted".
///
/// containerd sends plain FIFO paths for CRI containers and `file://` URIs for some clients;
/// `binary://` loggers would need a process of their own and are refused.
pub fn stdio_path(uri: &str) -> Result<Option<PathBuf>> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Some(PathBuf::from(path)));
    }
    if uri.contains("://") {
        return Err(Error::InvalidArgument(format!(
            "stdio {uri:?} is not supported by the coffer runtime; use a FIFO or a file:// path"
        )));
    }
    Ok(Some(PathBuf::from(uri)))
}

impl ProcessIo {
    /// Starts the copiers for the given stdout and stderr paths (either may be empty).
    pub fn open(stdout: &str, stderr: &str) -> Result<ProcessIo> {
        let mut io = ProcessIo::default();
        if let Some(path) = stdio_path(stdout)? {
            let (tx, handle) = spawn_copier(path);
            io.stdout = Some(tx);
            io.copiers.push(handle);
        }
        if let Some(path) = stdio_path(stderr)? {
            let (tx, handle) = spawn_copier(path);
            io.stderr = Some(tx);
            io.copiers.push(handle);
        }
        Ok(io)
    }

    /// Hands a chunk of output to its stream; an empty chunk closes the stream.
    pub fn write(&mut self, stream: Stream, data: Vec<u8>) {
        let slot = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if data.is_empty() {
            // Dropping the sender lets the copier finish and close the FIFO.
            *slot = None;
        } else if let Some(tx) = slot {
            // A send fails only when the copier gave up (no reader); the output is then lost
            // either way, and the process must not be held up for it.
            let _ = tx.send(data);
        }
    }

    /// Closes both streams and waits (boundedly) until everything written so far reached the
    /// FIFOs.
    pub async fn close(mut self) {
        self.stdout = None;
        self.stderr = None;
        let copiers = std::mem::take(&mut self.copiers);
        let all = async {
            for copier in copiers {
                let _ = copier.await;
            }
        };
        if tokio::time::timeout(CLOSE_GRACE, all).await.is_err() {
            tracing::warn!("process output did not drain into containerd's FIFOs within {CLOSE_GRACE:?}; the rest is dropped");
        }
    }
}

/// Closes several processes' output at once (each bounded as [`ProcessIo::close`] is).
pub async fn close_all(ios: Vec<ProcessIo>) {
    let mut set = tokio::task::JoinSet::new();
    for io in ios {
        set.spawn(io.close());
    }
    while set.join_next().await.is_some() {}
}

fn spawn_copier(path: PathBuf) -> (mpsc::UnboundedSender<Vec<u8>>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let handle = tokio::spawn(async move {
        let mut file = match open_for_writing(&path).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open stdio; output is dropped");
                while rx.recv().await.is_some() {}
                return;
            }
        };
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = file.write_all(&chunk).await {
                tracing::warn!(path = %path.display(), error = %e, "cannot write stdio; output is dropped");
                while rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = file.flush().await;
    });
    (tx, handle)
}

/// Opens a FIFO (or file) for writing. Opening a FIFO blocks until containerd has the reading
/// end open, which it does before it asks for the task, so this returns promptly.
async fn open_for_writing(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .append(true)
        .create(false)
        .open(path)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_paths() {
        assert_eq!(stdio_path("").unwrap(), None);
        assert_eq!(
            stdio_path("/run/x/stdout").unwrap(),
            Some(PathBuf::from("/run/x/stdout"))
        );
        assert_eq!(
            stdio_path("file:///var/log/c.log").unwrap(),
            Some(PathBuf::from("/var/log/c.log"))
        );
        assert_eq!(
            stdio_path("binary:///usr/bin/logger").unwrap_err().to_string(),
            "stdio \"binary:///usr/bin/logger\" is not supported by the coffer runtime; use a FIFO or a file:// path"
        );
    }

    #[tokio::test]
    async fn output_reaches_a_fifo_in_order_and_the_fifo_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        for p in [&out, &err] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }
        // The reader side, as containerd holds it: read to EOF.
        let read = |p: PathBuf| tokio::spawn(async move { tokio::fs::read(p).await.unwrap() });
        let out_reader = read(out.clone());
        let err_reader = read(err.clone());
        let mut io = ProcessIo::open(out.to_str().unwrap(), err.to_str().unwrap()).unwrap();
        io.write(Stream::Stdout, b"hello ".to_vec());
        io.write(Stream::Stderr, b"oops\n".to_vec());
        io.write(Stream::Stdout, b"world\n".to_vec());
        io.write(Stream::Stdout, Vec::new());
        io.write(Stream::Stdout, b"after close is dropped".to_vec());
        io.close().await;
        assert_eq!(out_reader.await.unwrap(), b"hello world\n");
        assert_eq!(err_reader.await.unwrap(), b"oops\n");
    }

    #[tokio::test]
    async fn a_silent_process_still_closes_its_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        nix::unistd::mkfifo(&out, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let p = out.clone();
        let reader = tokio::spawn(async move { tokio::fs::read(p).await.unwrap() });
        let io = ProcessIo::open(out.to_str().unwrap(), "").unwrap();
        io.close().await;
        assert_eq!(reader.await.unwrap(), b"");
    }
}
