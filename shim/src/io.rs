//! A process's standard streams: containerd's FIFOs to and from the guest.
//!
//! containerd (the CRI plugin) creates one FIFO per stream and reads it into the container log
//! (`crictl logs`) or into an exec's result (`ExecSync`). The guest sends output as events; each
//! stream gets a copier task that opens its FIFO for writing, writes the chunks in order, and
//! closes the FIFO when the guest says the stream ended or the process exited. Closing is what
//! tells containerd the output is complete, so it happens even when nothing was written.
//!
//! Standard input goes the other way: once the process runs in the guest, a copier reads
//! containerd's stdin FIFO and sends each chunk as a `WriteStdin` request, one at a time (the
//! guest serves requests concurrently; waiting for each answer keeps the bytes in order). At the
//! FIFO's end of file, or when containerd asks to close stdin (`CloseIO`), what is left in the
//! FIFO is sent and then `CloseStdin`, so the process reads end-of-file. A process on a terminal
//! has one output stream, stdout, and its stdin is typed into the terminal.
//!
//! Output waiting for its FIFO is bounded ([`OUTPUT_QUEUE_BYTES`] per stream): when containerd
//! does not read a stream, what the guest sends beyond that is dropped and counted, rather than
//! held in the shim's memory or allowed to stall the other processes' output.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coffer_agent::protocol::client::AgentClient;
use coffer_agent::protocol::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// How long closing waits for output to reach containerd. A FIFO nobody reads (containerd gone)
/// would otherwise hold a process's exit, and the pod's teardown, forever.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// Largest chunk of stdin sent in one request.
const STDIN_CHUNK: usize = 32 * 1024;

/// Bytes of one stream's output that may wait for its FIFO.
pub const OUTPUT_QUEUE_BYTES: usize = 4 << 20;

/// One output stream's way to its copier, and the bytes waiting in it.
#[derive(Debug)]
struct Sink {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// The standard streams of one process.
#[derive(Debug, Default)]
pub struct ProcessIo {
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    /// Bytes of output dropped because containerd did not read them in time.
    dropped: u64,
    copiers: Vec<JoinHandle<()>>,
    stdin: Option<StdinCopier>,
    /// containerd closed stdin before the copier started.
    stdin_closed: bool,
}

/// Where a process's stdin goes: the process in the guest.
#[derive(Debug, Clone)]
pub struct StdinTarget {
    /// The pod's agent.
    pub agent: Arc<AgentClient>,
    /// Container id.
    pub id: String,
    /// Exec id, `None` for the container's own process.
    pub exec_id: Option<String>,
}

impl StdinTarget {
    async fn write(&self, data: Vec<u8>) -> Result<()> {
        Ok(self
            .agent
            .write_stdin(&self.id, self.exec_id.as_deref(), data)
            .await?)
    }

    async fn close(&self) {
        if let Err(e) = self
            .agent
            .close_stdin(&self.id, self.exec_id.as_deref())
            .await
        {
            // The process may have exited already; then there is nothing to close.
            tracing::debug!(container = %self.id, exec = ?self.exec_id, error = %e, "closing stdin");
        }
    }
}

/// The copier of one process's stdin FIFO.
#[derive(Debug)]
struct StdinCopier {
    path: PathBuf,
    /// Asks the copier to send what is left and close stdin (containerd's `CloseIO`).
    close: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl StdinCopier {
    /// Ends the copier at once (the process is gone).
    fn stop(self) {
        self.task.abort();
        // An open for reading that still waits for containerd's writer sits in a blocking
        // thread the abort cannot reach; a writer that comes and goes releases it.
        if let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
        {
            drop(f);
        }
    }
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

    /// Starts copying containerd's stdin FIFO (`stdin`, empty when the process has none) into
    /// the process, which must run in the guest by now.
    pub fn start_stdin(&mut self, stdin: &str, target: StdinTarget) -> Result<()> {
        let Some(path) = stdio_path(stdin)? else {
            return Ok(());
        };
        let (close, closed) = oneshot::channel();
        let close = if self.stdin_closed {
            let _ = close.send(());
            None
        } else {
            Some(close)
        };
        let task = tokio::spawn(copy_stdin(path.clone(), target, closed));
        if let Some(old) = self.stdin.replace(StdinCopier { path, close, task }) {
            old.stop();
        }
        Ok(())
    }

    /// Closes the process's stdin once what containerd wrote so far is sent (`CloseIO`).
    pub fn close_stdin(&mut self) {
        self.stdin_closed = true;
        if let Some(close) = self.stdin.as_mut().and_then(|s| s.close.take()) {
            let _ = close.send(());
        }
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
        } else if let Some(sink) = slot {
            // Over the bound, containerd is not keeping up: the chunk is dropped, not buffered
            // without bound. (A send fails only when the copier gave up, having no reader: the
            // output is lost either way, and the process must not be held up for it.)
            let len = data.len();
            if sink.queued.load(Ordering::Acquire) + len > OUTPUT_QUEUE_BYTES {
                if self.dropped == 0 {
                    tracing::warn!(
                        "containerd is not reading a process's output; output beyond {OUTPUT_QUEUE_BYTES} bytes is dropped"
                    );
                }
                self.dropped += len as u64;
            } else {
                sink.queued.fetch_add(len, Ordering::AcqRel);
                let _ = sink.tx.send(data);
            }
        }
    }

    /// Closes both streams and waits (boundedly) until everything written so far reached the
    /// FIFOs.
    pub async fn close(mut self) {
        if let Some(stdin) = self.stdin.take() {
            stdin.stop();
        }
        self.stdout = None;
        self.stderr = None;
        if self.dropped > 0 {
            tracing::warn!(
                bytes = self.dropped,
                "output dropped because containerd did not read it"
            );
        }
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

fn spawn_copier(path: PathBuf) -> (Sink, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let sink = Sink {
        tx,
        queued: queued.clone(),
    };
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
            let written = file.write_all(&chunk).await;
            queued.fetch_sub(chunk.len(), Ordering::AcqRel);
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "cannot write stdio; output is dropped");
                while rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = file.flush().await;
    });
    (sink, handle)
}

/// Copies a stdin FIFO into the guest until its end of file or a close request, then closes
/// the process's stdin.
async fn copy_stdin(path: PathBuf, target: StdinTarget, mut close: oneshot::Receiver<()>) {
    let opened = tokio::select! {
        f = open_for_reading(&path) => f,
        // Closed before containerd ever wrote: the process reads end-of-file.
        _ = &mut close => {
            target.close().await;
            return;
        }
    };
    let mut fifo = match opened {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open stdin; the process reads end-of-file");
            target.close().await;
            return;
        }
    };
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut closing = false;
    loop {
        let n = if closing {
            // Only what is already in the FIFO still goes in. A plain non-blocking read: the
            // reactor may not have seen the FIFO become readable yet, and `try_read` would then
            // report nothing without asking the kernel.
            read_now(&fifo, &mut buf)
        } else {
            tokio::select! {
                r = fifo.read(&mut buf) => r.unwrap_or_else(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "reading stdin; closing it");
                    0
                }),
                // A dropped sender (the process's IO went away) also ends the copy.
                _ = &mut close => {
                    closing = true;
                    continue;
                }
            }
        };
        if n == 0 {
            break;
        }
        if let Err(e) = target.write(buf[..n].to_vec()).await {
            // The process exited or closed its stdin: nothing more can go in.
            tracing::debug!(container = %target.id, exec = ?target.exec_id, error = %e, "stdin not delivered");
            return;
        }
    }
    target.close().await;
}

/// Reads what the FIFO holds right now (0 when it is empty or at its end).
fn read_now(fifo: &pipe::Receiver, buf: &mut [u8]) -> usize {
    use std::os::fd::AsRawFd;
    loop {
        match nix::unistd::read(fifo.as_raw_fd(), buf) {
            Ok(n) => return n,
            Err(nix::Error::EINTR) => continue,
            // EAGAIN: empty (the receiver's descriptor is non-blocking).
            Err(_) => return 0,
        }
    }
}

/// Opens a stdin FIFO for reading. The open waits (in a blocking thread) until containerd
/// has the writing end open; then reads are asynchronous.
async fn open_for_reading(path: &Path) -> Result<pipe::Receiver> {
    let p = path.to_path_buf();
    let io_err = |source| Error::Io {
        what: "cannot open stdin",
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::task::spawn_blocking(move || std::fs::File::open(&p))
        .await
        .map_err(|e| io_err(std::io::Error::other(e)))?
        .map_err(io_err)?;
    let is_fifo = file
        .metadata()
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if !is_fifo {
        return Err(Error::InvalidArgument(format!(
            "stdin {} is not a FIFO; the coffer runtime reads stdin from a FIFO only",
            path.display()
        )));
    }
    pipe::Receiver::from_file(file).map_err(io_err)
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

    /// A reader that does not read: what waits for the FIFO stays within OUTPUT_QUEUE_BYTES, the
    /// rest is dropped and counted, and the reader later gets what was kept, in order.
    #[tokio::test]
    async fn output_nobody_reads_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        nix::unistd::mkfifo(&out, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut io = ProcessIo::open(out.to_str().unwrap(), "").unwrap();
        const CHUNK: usize = 64 * 1024;
        let chunks = 3 * OUTPUT_QUEUE_BYTES / CHUNK;
        for i in 0..chunks {
            io.write(Stream::Stdout, vec![u8::try_from(i % 251).unwrap(); CHUNK]);
        }
        assert_eq!(io.dropped, (chunks * CHUNK - OUTPUT_QUEUE_BYTES) as u64);
        // containerd comes back: it reads the first OUTPUT_QUEUE_BYTES, then the end.
        let reader = tokio::spawn(async move { tokio::fs::read(out).await.unwrap() });
        io.close().await;
        let got = reader.await.unwrap();
        assert_eq!(got.len(), OUTPUT_QUEUE_BYTES);
        assert!(got
            .chunks(CHUNK)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| usize::from(*b) == i % 251)));
    }

    use coffer_agent::protocol::{
        encode, read_frame_async, GuestFrame, Outcome, Request, RequestFrame, Response,
    };
    use tokio::net::UnixStream;

    /// The guest's side of the agent channel: answers every request with ok and passes each
    /// stdin request on (the agent itself runs only in a VM; the VM tests drive it).
    fn guest(mut s: UnixStream) -> mpsc::UnboundedReceiver<Request> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok(frame) = read_frame_async::<_, RequestFrame>(&mut s).await else {
                    return;
                };
                let answer = GuestFrame::Response {
                    id: frame.id,
                    outcome: Outcome::Ok(Response::Ok),
                };
                s.write_all(&encode(&answer).unwrap()).await.unwrap();
                let _ = tx.send(frame.request);
            }
        });
        rx
    }

    fn stdin_setup(dir: &Path) -> (PathBuf, StdinTarget, mpsc::UnboundedReceiver<Request>) {
        let fifo = dir.join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (host, guest_end) = UnixStream::pair().unwrap();
        let target = StdinTarget {
            agent: Arc::new(AgentClient::from_stream(host)),
            id: "c1".into(),
            exec_id: Some("e1".into()),
        };
        (fifo, target, guest(guest_end))
    }

    fn write_req(data: &[u8]) -> Request {
        Request::WriteStdin {
            id: "c1".into(),
            exec_id: Some("e1".into()),
            data: data.to_vec(),
        }
    }

    fn close_req() -> Request {
        Request::CloseStdin {
            id: "c1".into(),
            exec_id: Some("e1".into()),
        }
    }

    /// Collects the stdin bytes the guest got until the close.
    async fn received(requests: &mut mpsc::UnboundedReceiver<Request>) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            match requests.recv().await.unwrap() {
                Request::WriteStdin { data: d, .. } => data.extend_from_slice(&d),
                r => {
                    assert_eq!(r, close_req());
                    return data;
                }
            }
        }
    }

    #[tokio::test]
    async fn stdin_reaches_the_guest_in_order_then_closes_at_end_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, target, mut requests) = stdin_setup(dir.path());
        let mut io = ProcessIo::default();
        io.start_stdin(fifo.to_str().unwrap(), target).unwrap();
        // containerd's side: 100 KiB (several chunks), then close.
        let payload: Vec<u8> = (0..100 * 1024)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let expected = payload.clone();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .unwrap()
                .write_all(&payload)
                .unwrap();
        });
        assert_eq!(received(&mut requests).await, expected);
        writer.await.unwrap();
        io.close().await;
    }

    #[tokio::test]
    async fn close_io_sends_what_is_in_the_fifo_then_closes() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, target, mut requests) = stdin_setup(dir.path());
        let mut io = ProcessIo::default();
        io.start_stdin(fifo.to_str().unwrap(), target).unwrap();
        let p = fifo.clone();
        let mut w = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new().write(true).open(&p).unwrap()
        })
        .await
        .unwrap();
        use std::io::Write;
        w.write_all(b"first\n").unwrap();
        assert_eq!(requests.recv().await.unwrap(), write_req(b"first\n"));
        // The writer stays open, as containerd's does until the client detaches.
        w.write_all(b"kept\n").unwrap();
        io.close_stdin();
        assert_eq!(received(&mut requests).await, b"kept\n");
        drop(w);
        io.close().await;
    }

    #[tokio::test]
    async fn stdin_closed_before_anything_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, target, mut requests) = stdin_setup(dir.path());
        let mut io = ProcessIo::default();
        // CloseIO before start: the copier closes at once, without waiting for a writer.
        io.close_stdin();
        io.start_stdin(fifo.to_str().unwrap(), target).unwrap();
        assert_eq!(requests.recv().await.unwrap(), close_req());
        io.close().await;
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
