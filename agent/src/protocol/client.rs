//! The host side of the protocol: an async client over QEMU's chardev socket.
//!
//! One task reads frames and routes each response to the request that waits for it, so any
//! number of requests can be in flight at once; events go to the receiver
//! [`AgentClient::take_events`] hands out.
//!
//! ```no_run
//! # async fn f() -> Result<(), coffer_agent::protocol::client::ClientError> {
//! use std::time::Duration;
//! use coffer_agent::protocol::client::AgentClient;
//!
//! let (client, hello) = AgentClient::connect("/run/coffer/sb1/agent.sock", Duration::from_secs(30)).await?;
//! println!("guest read Init-Data {:?}: {:?}", hello.initdata.digest, hello.initdata.verification);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{
    encode, read_frame_async, ContainerStats, CreateContainer, ErrorKind, Event, ExitStatus,
    FrameError, GuestFrame, Hello, Outcome, Process, Request, RequestFrame, Resources, Response,
    PROTOCOL_VERSION, PULL_DEADLINE,
};

/// The longest the host waits for the answer to any request but a wait for an exit. Generous:
/// under emulation a container's create takes seconds; a guest that answers nothing in this
/// time is hung.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest the host waits for the answer to a signal or a shutdown.
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The request's name in messages (`create_container`, `start`, ...).
fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "hello",
        Request::CreateContainer(_) => "create_container",
        Request::Start { .. } => "start",
        Request::Exec { .. } => "exec",
        Request::Wait { .. } => "wait",
        Request::Signal { .. } => "signal",
        Request::Remove { .. } => "remove",
        Request::ReadFile { .. } => "read_file",
        Request::Shutdown => "shutdown",
        Request::WriteStdin { .. } => "write_stdin",
        Request::CloseStdin { .. } => "close_stdin",
        Request::ResizePty { .. } => "resize_pty",
        Request::UpdateInterface { .. } => "update_interface",
        Request::UpdateRoutes { .. } => "update_routes",
        Request::AddArpNeighbors { .. } => "add_arp_neighbors",
        Request::Stats { .. } => "stats",
        Request::UpdateResources { .. } => "update_resources",
        Request::Pause { .. } => "pause",
        Request::Resume { .. } => "resume",
    }
}

/// How long the host waits for `request`'s answer; `None`: as long as it takes.
fn answer_limit(request: &Request) -> Option<Duration> {
    match request {
        Request::Wait { .. } => None,
        // A healthy guest answers these at once; the host uses them to end a pod.
        Request::Signal { .. } | Request::Shutdown => Some(SIGNAL_TIMEOUT),
        // The guest pulls the image first, within its own deadline.
        Request::CreateContainer(CreateContainer { image: Some(_), .. }) => {
            Some(PULL_DEADLINE + CALL_TIMEOUT)
        }
        _ => Some(CALL_TIMEOUT),
    }
}

/// Waits for `answer` at most `limit`.
async fn within(
    op: &'static str,
    limit: Option<Duration>,
    answer: impl std::future::Future<Output = Result<Outcome, ClientError>>,
) -> Result<Outcome, ClientError> {
    let Some(limit) = limit else {
        return answer.await;
    };
    match tokio::time::timeout(limit, answer).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ClientError::CallTimeout {
            op: op.to_string(),
            after: limit,
        }),
    }
}

/// A request sent whose answer has not been awaited yet ([`AgentClient::answer`]).
#[derive(Debug)]
pub struct Sent {
    op: &'static str,
    id: u64,
    limit: Option<Duration>,
    answer: oneshot::Receiver<Outcome>,
}

impl Sent {
    /// The request's name (`update_interface`, ...).
    pub fn op(&self) -> &'static str {
        self.op
    }
}

/// How often hello is resent while the guest has not answered.
const HELLO_RETRY: Duration = Duration::from_secs(1);

/// How long to wait between attempts to connect to a socket QEMU has not created yet.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

/// Errors of the host side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The guest did not answer hello in time.
    #[error("the guest agent did not answer on {socket} within {waited:?}{}; check the guest console log",
        last.as_ref().map(|l| format!(" (last problem: {l})")).unwrap_or_default())]
    Timeout {
        /// The agent socket.
        socket: PathBuf,
        /// How long we tried.
        waited: Duration,
        /// The last error seen while trying, if any.
        last: Option<String>,
    },
    /// The guest did not answer a request in time (a hung or stopped VM).
    #[error("the guest agent did not answer {op} within {after:?}; the VM may be hung")]
    CallTimeout {
        /// The request.
        op: String,
        /// How long the host waited.
        after: Duration,
    },
    /// The guest speaks another protocol version.
    #[error("the guest agent speaks protocol version {guest}, this host speaks {PROTOCOL_VERSION}; use a guest image built from the same Coffer release")]
    VersionMismatch {
        /// The guest's version.
        guest: u32,
    },
    /// The connection broke or a frame was bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection to the guest is gone (the VM stopped or the agent died).
    #[error("the connection to the guest agent is closed")]
    Disconnected,
    /// The guest broke the protocol (an oversized, truncated or malformed frame), and the host
    /// closed the connection.
    #[error("the guest agent broke the protocol, so the host closed the connection: {reason}")]
    Broken {
        /// The frame error.
        reason: String,
    },
    /// The guest refused or failed the request.
    #[error("the guest agent refused {op}: {message}")]
    Remote {
        /// The operation.
        op: &'static str,
        /// What kind of failure the guest reported.
        kind: ErrorKind,
        /// The guest's message.
        message: String,
    },
    /// The guest answered with a response of the wrong kind.
    #[error("the guest agent answered {op} with an unexpected {got}")]
    Unexpected {
        /// The operation.
        op: &'static str,
        /// What came back.
        got: String,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome>>>>;

/// Events that may wait for the host's consumer. Beyond it, exits and OOM events wait for room
/// (holding back the reading of the guest's frames: backpressure), and process output is
/// dropped.
pub const EVENT_QUEUE: usize = 1024;

/// Bytes of process output that may wait for the host's consumer; output beyond them is dropped
/// (and counted, see [`AgentClient::dropped_output`]) rather than held in memory.
pub const EVENT_QUEUE_BYTES: usize = 16 << 20;

/// The guest's events (process output and exits), in the order the guest sent them.
#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::Receiver<Event>,
    queued: Arc<AtomicUsize>,
}

impl EventReceiver {
    /// The next event; `None` once the connection is gone and every event was received.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.rx.recv().await?;
        self.release(&event);
        Some(event)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<Event, mpsc::error::TryRecvError> {
        let event = self.rx.try_recv()?;
        self.release(&event);
        Ok(event)
    }

    fn release(&self, event: &Event) {
        if let Event::Output { data, .. } = event {
            self.queued.fetch_sub(data.len(), Ordering::AcqRel);
        }
    }
}

/// A connection to the guest agent. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct AgentClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: Mutex<Option<EventReceiver>>,
    /// Bytes of process output dropped because the host's consumer did not keep up.
    dropped: Arc<AtomicU64>,
    /// Why the reader stopped, when the guest broke the protocol.
    broken: Broken,
    reader: tokio::task::JoinHandle<()>,
}

type Broken = Arc<Mutex<Option<String>>>;

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl AgentClient {
    /// Connects to the agent socket and says hello, retrying both until `deadline` has passed
    /// (the socket may not exist yet, and the guest may still be booting).
    ///
    /// Fails with [`ClientError::VersionMismatch`] at once if the guest speaks another version.
    pub async fn connect(
        socket: impl AsRef<Path>,
        deadline: Duration,
    ) -> Result<(AgentClient, Hello), ClientError> {
        let (client, hello, _) = Self::connect_sending(socket, deadline, Vec::new()).await?;
        Ok((client, hello))
    }

    /// Connects and says hello as [`AgentClient::connect`] does, and sends `follow` right behind
    /// the first hello, so that the guest has them as soon as it is up: their answers come
    /// without a round trip after the hello. Returns them in `follow`'s order, to be awaited
    /// with [`AgentClient::answer`].
    ///
    /// The guest serves them whatever its hello says: pass only requests that may be served
    /// before the hello is checked. When the first hello goes unanswered and a resent one is
    /// answered, `follow` may have been lost with it and is sent again behind the answered
    /// one: pass only requests that may be served twice.
    pub async fn connect_sending(
        socket: impl AsRef<Path>,
        deadline: Duration,
        follow: Vec<Request>,
    ) -> Result<(AgentClient, Hello, Vec<Sent>), ClientError> {
        let socket = socket.as_ref();
        let start = Instant::now();
        let end = start + deadline;
        let mut last: Option<String> = None;
        while Instant::now() < end {
            let stream = match UnixStream::connect(socket).await {
                Ok(s) => s,
                Err(e) => {
                    last = Some(format!("connect: {e}"));
                    tokio::time::sleep(CONNECT_RETRY).await;
                    continue;
                }
            };
            let client = AgentClient::from_stream(stream);
            match client.hello_until(end, &follow).await {
                Ok((hello, sent)) => return Ok((client, hello, sent)),
                // The guest answered: retrying would get the same answer.
                Err(e @ (ClientError::VersionMismatch { .. } | ClientError::Remote { .. })) => {
                    return Err(e)
                }
                Err(ClientError::Timeout { last: l, .. }) => {
                    last = l.or(last);
                    break;
                }
                Err(e) => {
                    // The connection broke (QEMU restarted, a stale frame): try a fresh one.
                    last = Some(e.to_string());
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
            }
        }
        Err(ClientError::Timeout {
            socket: socket.to_owned(),
            waited: start.elapsed(),
            last,
        })
    }

    /// Wraps an already connected stream without saying hello.
    pub fn from_stream(stream: UnixStream) -> AgentClient {
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let events = EventSender {
            tx: events_tx,
            queued: queued.clone(),
            dropped: dropped.clone(),
        };
        let broken = Broken::default();
        let reader = tokio::spawn(read_loop(read, pending.clone(), events, broken.clone()));
        AgentClient {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events: Mutex::new(Some(EventReceiver {
                rx: events_rx,
                queued,
            })),
            dropped,
            broken,
            reader,
        }
    }

    /// The error for a call whose answer will never come: why the reader stopped.
    fn gone(&self) -> ClientError {
        match self.broken.lock().ok().and_then(|b| b.clone()) {
            Some(reason) => ClientError::Broken { reason },
            None => ClientError::Disconnected,
        }
    }

    /// Takes the receiver of the guest's events (process output and exits). Only the first call
    /// returns it. Events wait until they are received, within [`EVENT_QUEUE`] and
    /// [`EVENT_QUEUE_BYTES`].
    pub fn take_events(&self) -> Option<EventReceiver> {
        self.events.lock().ok().and_then(|mut e| e.take())
    }

    /// Bytes of process output dropped so far because the events were not received in time.
    pub fn dropped_output(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    /// Sends one request and waits for its outcome, at most [`CALL_TIMEOUT`] ([`SIGNAL_TIMEOUT`]
    /// for a signal or shutdown); only a wait for a process's exit waits as long as the process
    /// runs. The typed methods below are thin
    /// wrappers.
    pub async fn call(&self, request: Request) -> Result<Outcome, ClientError> {
        let op = request_name(&request);
        let limit = answer_limit(&request);
        let call = async {
            let (_, rx) = self.send(request).await?;
            rx.await.map_err(|_| self.gone())
        };
        within(op, limit, call).await
    }

    /// Sends one request without waiting for its outcome; [`AgentClient::answer`] waits for it.
    pub async fn submit(&self, request: Request) -> Result<Sent, ClientError> {
        let op = request_name(&request);
        let limit = answer_limit(&request);
        let (id, answer) = self.send(request).await?;
        Ok(Sent {
            op,
            id,
            limit,
            answer,
        })
    }

    /// The outcome of a request sent with [`AgentClient::submit`], waited for as long as
    /// [`AgentClient::call`] would wait, from now on.
    pub async fn answer(&self, sent: Sent) -> Result<Response, ClientError> {
        let Sent {
            op, limit, answer, ..
        } = sent;
        let outcome = within(op, limit, async { answer.await.map_err(|_| self.gone()) }).await?;
        response(op, outcome)
    }

    /// As [`AgentClient::answer`], for a request whose answer is a plain ok.
    pub async fn answer_ok(&self, sent: Sent) -> Result<(), ClientError> {
        let op = sent.op;
        ok(op, self.answer(sent).await?)
    }

    /// Stops waiting for a request's answer (it is dropped when it comes).
    fn forget(&self, sent: Sent) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&sent.id);
        }
    }

    /// Sends `requests` in order without waiting for their outcomes.
    async fn submit_all(&self, requests: &[Request]) -> Result<Vec<Sent>, ClientError> {
        let mut sent = Vec::with_capacity(requests.len());
        for r in requests {
            sent.push(self.submit(r.clone()).await?);
        }
        Ok(sent)
    }

    async fn send(
        &self,
        request: Request,
    ) -> Result<(u64, oneshot::Receiver<Outcome>), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(&RequestFrame { id, request })?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| ClientError::Disconnected)?
            .insert(id, tx);
        // A reader that has stopped answers nothing more: fail now rather than at the deadline.
        if self.reader.is_finished() {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&id);
            }
            return Err(self.gone());
        }
        let mut writer = self.writer.lock().await;
        if let Err(e) = writer.write_all(&frame).await {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&id);
            }
            // The other end is gone (QEMU exited): the connection is lost, nothing more.
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                return Err(self.gone());
            }
            return Err(FrameError::Io(e).into());
        }
        Ok((id, rx))
    }

    async fn expect(&self, op: &'static str, request: Request) -> Result<Response, ClientError> {
        response(op, self.call(request).await?)
    }

    /// Says hello, sends `follow` behind it, and waits for the hello's answer until `end`,
    /// resending hello every second. The stream is ordered, and the guest serves hello and
    /// what follows it in order: when the first hello is answered, `follow` reached the guest
    /// behind it. When another is, the first may have been lost with what followed it, so
    /// `follow` is sent again.
    async fn hello_until(
        &self,
        end: Instant,
        follow: &[Request],
    ) -> Result<(Hello, Vec<Sent>), ClientError> {
        let hello = || Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        };
        let mut answers = vec![self.send(hello()).await?];
        let first = answers[0].0;
        let mut sent = self.submit_all(follow).await?;
        let started = Instant::now();
        loop {
            let wait_until = (Instant::now() + HELLO_RETRY).min(end);
            // Any of the hellos sent so far may be the one answered.
            let any = futures_select(&mut answers);
            match tokio::time::timeout_at(wait_until, any).await {
                Ok(Some((id, outcome))) => {
                    let hello = hello_from(outcome)?;
                    if id != first {
                        for lost in sent.drain(..) {
                            self.forget(lost);
                        }
                        sent = self.submit_all(follow).await?;
                    }
                    return Ok((hello, sent));
                }
                Ok(None) => return Err(ClientError::Disconnected),
                Err(_) if Instant::now() >= end => {
                    return Err(ClientError::Timeout {
                        socket: PathBuf::new(),
                        waited: started.elapsed(),
                        last: Some("connected, but no hello answer yet".into()),
                    })
                }
                Err(_) => answers.push(self.send(hello()).await?),
            }
        }
    }

    /// Asks for the guest's hello again (versions, Init-Data report).
    pub async fn hello(&self) -> Result<Hello, ClientError> {
        let outcome = self
            .call(Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            })
            .await?;
        hello_from(outcome)
    }

    /// Creates a container (not started yet).
    pub async fn create_container(&self, container: CreateContainer) -> Result<(), ClientError> {
        ok(
            "create_container",
            self.expect("create_container", Request::CreateContainer(container))
                .await?,
        )
    }

    /// Starts a created container's process; returns its pid in the guest.
    pub async fn start(&self, id: &str) -> Result<u32, ClientError> {
        started(
            "start",
            self.expect("start", Request::Start { id: id.into() })
                .await?,
        )
    }

    /// Runs another process in a running container; returns its pid in the guest.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Process,
    ) -> Result<u32, ClientError> {
        let r = self
            .expect(
                "exec",
                Request::Exec {
                    id: id.into(),
                    exec_id: exec_id.into(),
                    process,
                },
            )
            .await?;
        started("exec", r)
    }

    /// Writes bytes to a process's stdin (the container's own when `exec_id` is `None`).
    /// Returns once the guest has them: await each write before sending the next, so they
    /// arrive in order.
    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: Option<&str>,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        let r = self
            .expect(
                "write_stdin",
                Request::WriteStdin {
                    id: id.into(),
                    exec_id: exec_id.map(Into::into),
                    data,
                },
            )
            .await?;
        ok("write_stdin", r)
    }

    /// Closes a process's stdin (end-of-file for a pipe).
    pub async fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), ClientError> {
        let r = self
            .expect(
                "close_stdin",
                Request::CloseStdin {
                    id: id.into(),
                    exec_id: exec_id.map(Into::into),
                },
            )
            .await?;
        ok("close_stdin", r)
    }

    /// Sets the window size (columns, rows) of a process's terminal.
    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        width: u16,
        height: u16,
    ) -> Result<(), ClientError> {
        let r = self
            .expect(
                "resize_pty",
                Request::ResizePty {
                    id: id.into(),
                    exec_id: exec_id.map(Into::into),
                    width,
                    height,
                },
            )
            .await?;
        ok("resize_pty", r)
    }

    /// A container's figures.
    pub async fn stats(&self, id: &str) -> Result<ContainerStats, ClientError> {
        match self
            .expect("stats", Request::Stats { id: id.into() })
            .await?
        {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// Changes a container's limits.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: Resources,
    ) -> Result<(), ClientError> {
        let r = self
            .expect(
                "update_resources",
                Request::UpdateResources {
                    id: id.into(),
                    resources,
                },
            )
            .await?;
        ok("update_resources", r)
    }

    /// Freezes (`true`) or thaws a container.
    pub async fn freeze(&self, id: &str, frozen: bool) -> Result<(), ClientError> {
        let (op, request) = if frozen {
            ("pause", Request::Pause { id: id.into() })
        } else {
            ("resume", Request::Resume { id: id.into() })
        };
        let r = self.expect(op, request).await?;
        ok(op, r)
    }

    /// Waits for a process (the container's own when `exec_id` is `None`) to exit.
    pub async fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<ExitStatus, ClientError> {
        let r = self
            .expect(
                "wait",
                Request::Wait {
                    id: id.into(),
                    exec_id: exec_id.map(Into::into),
                },
            )
            .await?;
        match r {
            Response::Exited { status } => Ok(status),
            other => Err(unexpected("wait", &other)),
        }
    }

    /// Sends `signal` to a process (the container's own when `exec_id` is `None`).
    pub async fn signal(
        &self,
        id: &str,
        exec_id: Option<&str>,
        signal: i32,
    ) -> Result<(), ClientError> {
        let r = self
            .expect(
                "signal",
                Request::Signal {
                    id: id.into(),
                    exec_id: exec_id.map(Into::into),
                    signal,
                },
            )
            .await?;
        ok("signal", r)
    }

    /// Forgets a container whose processes have exited.
    pub async fn remove(&self, id: &str) -> Result<(), ClientError> {
        ok(
            "remove",
            self.expect("remove", Request::Remove { id: id.into() })
                .await?,
        )
    }

    /// Reads a file under `/run/confidential-containers/initdata/`.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        match self
            .expect("read_file", Request::ReadFile { path: path.into() })
            .await?
        {
            Response::File { data } => Ok(data),
            other => Err(unexpected("read_file", &other)),
        }
    }

    /// Asks the guest to sync and power off. Returns once the guest acknowledged.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        ok(
            "shutdown",
            self.expect("shutdown", Request::Shutdown).await?,
        )
    }
}

/// Waits for the first of several pending answers; `None` when all senders are gone.
async fn futures_select(
    answers: &mut Vec<(u64, oneshot::Receiver<Outcome>)>,
) -> Option<(u64, Outcome)> {
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < answers.len() {
            let (id, answer) = &mut answers[i];
            match std::pin::Pin::new(answer).poll(cx) {
                std::task::Poll::Ready(Ok(o)) => return std::task::Poll::Ready(Some((*id, o))),
                std::task::Poll::Ready(Err(_)) => {
                    answers.swap_remove(i);
                }
                std::task::Poll::Pending => i += 1,
            }
        }
        if answers.is_empty() {
            std::task::Poll::Ready(None)
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

use std::future::Future as _;

fn hello_from(outcome: Outcome) -> Result<Hello, ClientError> {
    match outcome {
        Outcome::Ok(Response::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => Ok(*h),
        Outcome::Ok(Response::Hello(h)) => Err(ClientError::VersionMismatch {
            guest: h.protocol_version,
        }),
        Outcome::Ok(other) => Err(unexpected("hello", &other)),
        Outcome::Err(e) => Err(ClientError::Remote {
            op: "hello",
            kind: e.kind,
            message: e.message,
        }),
    }
}

/// The response in `outcome`, or the guest's refusal of `op`.
fn response(op: &'static str, outcome: Outcome) -> Result<Response, ClientError> {
    match outcome {
        Outcome::Ok(r) => Ok(r),
        Outcome::Err(e) => Err(ClientError::Remote {
            op,
            kind: e.kind,
            message: e.message,
        }),
    }
}

fn ok(op: &'static str, r: Response) -> Result<(), ClientError> {
    match r {
        Response::Ok => Ok(()),
        other => Err(unexpected(op, &other)),
    }
}

fn started(op: &'static str, r: Response) -> Result<u32, ClientError> {
    match r {
        Response::Started { pid } => Ok(pid),
        other => Err(unexpected(op, &other)),
    }
}

fn unexpected(op: &'static str, r: &Response) -> ClientError {
    let got = match r {
        Response::Hello(_) => "hello",
        Response::Ok => "ok",
        Response::Started { .. } => "started",
        Response::Exited { .. } => "exited",
        Response::File { .. } => "file",
        Response::Stats(_) => "stats",
    };
    ClientError::Unexpected {
        op,
        got: got.into(),
    }
}

/// The read loop's side of [`EventReceiver`].
struct EventSender {
    tx: mpsc::Sender<Event>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl EventSender {
    /// Queues `event`: output within the byte budget and room, or dropped; anything else waits
    /// for room. Returns false once nobody receives events any more.
    async fn send(&self, event: Event) -> bool {
        let len = match &event {
            // An empty chunk ends its stream: never dropped.
            Event::Output { data, .. } if !data.is_empty() => data.len(),
            _ => return self.tx.send(event).await.is_ok(),
        };
        if self.queued.load(Ordering::Acquire) + len > EVENT_QUEUE_BYTES {
            self.dropped.fetch_add(len as u64, Ordering::AcqRel);
            return true;
        }
        self.queued.fetch_add(len, Ordering::AcqRel);
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                self.dropped.fetch_add(len as u64, Ordering::AcqRel);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Reads frames until the connection ends; then fails every pending request (by dropping its
/// sender) so no caller waits forever.
async fn read_loop(mut read: OwnedReadHalf, pending: Pending, events: EventSender, broken: Broken) {
    let mut receiving = true;
    loop {
        let frame = match read_frame_async::<_, GuestFrame>(&mut read).await {
            Ok(f) => f,
            Err(FrameError::Closed) => break,
            // The connection went away (QEMU exited): not a protocol error of the guest's.
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                break
            }
            Err(e) => {
                if let Ok(mut b) = broken.lock() {
                    *b = Some(e.to_string());
                }
                break;
            }
        };
        match frame {
            GuestFrame::Response { id, outcome } => {
                let tx = pending.lock().ok().and_then(|mut p| p.remove(&id));
                // A response nobody waits for (a duplicate hello) is dropped.
                if let Some(tx) = tx {
                    let _ = tx.send(outcome);
                }
            }
            GuestFrame::Event { event } => {
                // A dropped receiver means nobody wants events any more.
                if receiving {
                    receiving = events.send(event).await;
                }
            }
        }
    }
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted guest on a unix socket: ordering, retries and failures that
    //! a healthy guest in a VM does not produce on demand.

    use super::*;
    use crate::protocol::{GuestError, InitDataReport, Stream, Verification};
    use tokio::net::UnixListener;

    async fn read_request(s: &mut UnixStream) -> RequestFrame {
        read_frame_async(s).await.unwrap()
    }

    async fn send(s: &mut UnixStream, frame: GuestFrame) {
        s.write_all(&encode(&frame).unwrap()).await.unwrap();
    }

    /// Answers request `id` with a started process `pid`.
    async fn answer_started(s: &mut UnixStream, id: u64, pid: u32) {
        let outcome = Outcome::Ok(Response::Started { pid });
        send(s, GuestFrame::Response { id, outcome }).await;
    }

    fn hello(version: u32) -> Outcome {
        Outcome::Ok(Response::Hello(Box::new(Hello {
            agent_version: "test".into(),
            protocol_version: version,
            initdata: InitDataReport {
                digest: Some("ab".into()),
                verification: Verification::Unmeasured {
                    matches_cmdline: true,
                },
                ..Default::default()
            },
        })))
    }

    /// Accepts one connection and answers its first hello.
    async fn guest_answering_hello(listener: &UnixListener, version: u32) -> UnixStream {
        let (mut s, _) = listener.accept().await.unwrap();
        let req = read_request(&mut s).await;
        assert_eq!(
            req.request,
            Request::Hello {
                protocol_version: PROTOCOL_VERSION
            }
        );
        send(
            &mut s,
            GuestFrame::Response {
                id: req.id,
                outcome: hello(version),
            },
        )
        .await;
        s
    }

    #[tokio::test]
    async fn waits_for_the_socket_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let p = path.clone();
        let guest = tokio::spawn(async move {
            // QEMU creates the socket some time after the shim starts waiting.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = UnixListener::bind(&p).unwrap();
            guest_answering_hello(&listener, PROTOCOL_VERSION).await
        });
        let (_client, hello) = AgentClient::connect(&path, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(hello.initdata.digest.as_deref(), Some("ab"));
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn answers_are_matched_by_id_and_events_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let guest = tokio::spawn(async move {
            let mut s = guest_answering_hello(&listener, PROTOCOL_VERSION).await;
            let (a, b) = (read_request(&mut s).await, read_request(&mut s).await);
            let (wait, signal) = match a.request {
                Request::Wait { .. } => (a, b),
                _ => (b, a),
            };
            assert!(matches!(wait.request, Request::Wait { .. }));
            assert_eq!(
                signal.request,
                Request::Signal {
                    id: "c1".into(),
                    exec_id: None,
                    signal: 9
                }
            );
            // The signal is answered first, then output, then the wait.
            send(
                &mut s,
                GuestFrame::Response {
                    id: signal.id,
                    outcome: Outcome::Ok(Response::Ok),
                },
            )
            .await;
            send(
                &mut s,
                GuestFrame::Event {
                    event: Event::Output {
                        id: "c1".into(),
                        exec_id: None,
                        stream: Stream::Stdout,
                        data: b"bye\n".to_vec(),
                    },
                },
            )
            .await;
            send(
                &mut s,
                GuestFrame::Response {
                    id: wait.id,
                    outcome: Outcome::Ok(Response::Exited {
                        status: ExitStatus {
                            code: 137,
                            signal: Some(9),
                        },
                    }),
                },
            )
            .await;
            let create = read_request(&mut s).await;
            send(
                &mut s,
                GuestFrame::Response {
                    id: create.id,
                    outcome: Outcome::Err(GuestError::new(
                        ErrorKind::FailedPrecondition,
                        "this guest refuses to run containers: no",
                    )),
                },
            )
            .await;
            s
        });
        let (client, _) = AgentClient::connect(&path, Duration::from_secs(60))
            .await
            .unwrap();
        let mut events = client.take_events().unwrap();
        assert!(client.take_events().is_none());
        let wait = client.wait("c1", None);
        // Both in flight at once; the signal is answered first.
        let signal = client.signal("c1", None, 9);
        let (status, signalled) = tokio::join!(wait, signal);
        signalled.unwrap();
        assert_eq!(
            status.unwrap(),
            ExitStatus {
                code: 137,
                signal: Some(9)
            }
        );
        assert_eq!(
            events.recv().await.unwrap(),
            Event::Output {
                id: "c1".into(),
                exec_id: None,
                stream: Stream::Stdout,
                data: b"bye\n".to_vec()
            }
        );
        let refused = client
            .create_container(CreateContainer {
                id: "c2".into(),
                rootfs: Some("r".into()),
                image: None,
                hostname: None,
                process: Process::default(),
                files: vec![],
                resources: None,
                masked_paths: Vec::new(),
                readonly_paths: Vec::new(),
                readonly_root: false,
                oci: Default::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the guest agent refused create_container: this guest refuses to run containers: no"
        );
        // The guest goes away: a pending request fails instead of hanging.
        drop(guest.await.unwrap());
        assert!(matches!(
            client.start("c2").await,
            Err(ClientError::Disconnected) | Err(ClientError::Frame(_))
        ));
    }

    #[tokio::test]
    async fn refuses_another_protocol_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let guest = tokio::spawn(async move { guest_answering_hello(&listener, 99).await });
        let err = AgentClient::connect(&path, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the guest agent speaks protocol version 99, this host speaks {PROTOCOL_VERSION}; use a guest image built from the same Coffer release")
        );
        guest.await.unwrap();
    }

    /// A guest that reads requests and never answers: every call but a wait ends at its
    /// deadline, and says which request.
    #[tokio::test(start_paused = true)]
    async fn a_guest_that_stops_answering_fails_calls_at_their_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let guest = tokio::spawn(async move {
            let mut s = guest_answering_hello(&listener, PROTOCOL_VERSION).await;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
        });
        let (client, _) = AgentClient::connect(&path, Duration::from_secs(60))
            .await
            .unwrap();
        let started = Instant::now();
        let err = client.start("c1").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the guest agent did not answer start within {CALL_TIMEOUT:?}; the VM may be hung"
            )
        );
        assert!(started.elapsed() >= CALL_TIMEOUT);
        let err = client.signal("c1", None, 9).await.unwrap_err();
        assert!(
            matches!(err, ClientError::CallTimeout { after, .. } if after == SIGNAL_TIMEOUT),
            "{err}"
        );
        drop(client);
        guest.await.unwrap();
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_when_the_guest_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts, reads nothing, answers nothing: a guest that never booted.
        let _guest = tokio::spawn(async move {
            let conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(conn);
        });
        let err = AgentClient::connect(&path, Duration::from_millis(1500))
            .await
            .unwrap_err();
        match &err {
            ClientError::Timeout { socket, last, .. } => {
                assert_eq!(socket, &path);
                assert_eq!(last.as_deref(), Some("connected, but no hello answer yet"));
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().starts_with(&format!(
            "the guest agent did not answer on {} within ",
            path.display()
        )));
    }

    /// A connected client and the scripted guest's end of the connection, after hello.
    async fn connected() -> (AgentClient, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let guest =
            tokio::spawn(async move { guest_answering_hello(&listener, PROTOCOL_VERSION).await });
        let (client, _) = AgentClient::connect(&path, Duration::from_secs(30))
            .await
            .unwrap();
        (client, guest.await.unwrap(), dir)
    }

    /// A hostile guest: a length prefix over the frame limit ends the connection, and the call
    /// waiting on it fails saying why; the host buffers nothing of the announced body.
    #[tokio::test]
    async fn an_oversized_frame_fails_the_call_saying_so() {
        let (client, mut s, _dir) = connected().await;
        let guest = tokio::spawn(async move {
            let _ = read_request(&mut s).await;
            let len = u32::try_from(crate::protocol::MAX_FRAME + 1).unwrap();
            s.write_all(&len.to_be_bytes()).await.unwrap();
            s.write_all(&[b'{'; 1024]).await.unwrap();
            s
        });
        let e = client.start("c1").await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Broken { reason } if reason.contains("exceeds the limit")),
            "{e}"
        );
        // Every later call fails the same way, at once.
        let again = client.stats("c1").await.unwrap_err();
        assert!(matches!(again, ClientError::Broken { .. }), "{again}");
        drop(guest.await.unwrap());
    }

    /// A frame cut short by the guest closing, and a frame that is not JSON, each end the
    /// connection with their own message.
    #[tokio::test]
    async fn truncated_and_malformed_frames_fail_the_call_saying_so() {
        for (bytes, expected) in [
            (
                [&100u32.to_be_bytes()[..], &[b'{'; 10][..]].concat(),
                "the stream ended inside a frame",
            ),
            (
                [&5u32.to_be_bytes()[..], &b"hello"[..]].concat(),
                "malformed frame",
            ),
        ] {
            let (client, mut s, _dir) = connected().await;
            let guest = tokio::spawn(async move {
                let _ = read_request(&mut s).await;
                s.write_all(&bytes).await.unwrap();
                // Closing ends a truncated frame; a malformed one is refused before.
            });
            let e = client.start("c1").await.unwrap_err();
            guest.await.unwrap();
            assert!(
                matches!(&e, ClientError::Broken { reason } if reason.contains(expected)),
                "{expected}: {e}"
            );
        }
    }

    /// The pod's network as the host sends it behind hello (two requests).
    fn network_follow() -> Vec<Request> {
        vec![
            Request::UpdateRoutes { routes: vec![] },
            Request::AddArpNeighbors { neighbors: vec![] },
        ]
    }

    fn answer_ok_frame(id: u64) -> GuestFrame {
        GuestFrame::Response {
            id,
            outcome: Outcome::Ok(Response::Ok),
        }
    }

    /// What follows the first hello is on its way before the hello is answered, and each
    /// answer reaches its own request; a refusal says which request it was.
    #[tokio::test]
    async fn requests_sent_behind_the_first_hello_need_no_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let guest = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // All three arrive before the guest answers anything.
            let hello_req = read_request(&mut s).await;
            let (routes, neighbors) = (read_request(&mut s).await, read_request(&mut s).await);
            assert!(matches!(hello_req.request, Request::Hello { .. }));
            assert_eq!(
                [routes.request, neighbors.request].to_vec(),
                network_follow()
            );
            let refusal = Outcome::Err(GuestError::new(ErrorKind::PermissionDenied, "no"));
            send(&mut s, answer_ok_frame(routes.id)).await;
            let outcome = hello(PROTOCOL_VERSION);
            send(
                &mut s,
                GuestFrame::Response {
                    id: hello_req.id,
                    outcome,
                },
            )
            .await;
            let outcome = refusal;
            send(
                &mut s,
                GuestFrame::Response {
                    id: neighbors.id,
                    outcome,
                },
            )
            .await;
            s
        });
        let (client, hello, sent) =
            AgentClient::connect_sending(&path, Duration::from_secs(30), network_follow())
                .await
                .unwrap();
        assert_eq!(hello.initdata.digest.as_deref(), Some("ab"));
        let ops: Vec<_> = sent.iter().map(Sent::op).collect();
        assert_eq!(ops, ["update_routes", "add_arp_neighbors"]);
        let mut sent = sent.into_iter();
        client.answer_ok(sent.next().unwrap()).await.unwrap();
        let err = client.answer_ok(sent.next().unwrap()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the guest agent refused add_arp_neighbors: no"
        );
        drop(guest.await.unwrap());
    }

    /// When the first hello goes unanswered and a resent one is answered, what followed the
    /// first may be lost: it is sent again behind the answered hello, and those answers count.
    #[tokio::test(start_paused = true)]
    async fn what_followed_a_lost_hello_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let guest = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // The first hello and what follows it: lost.
            let mut lost = Vec::new();
            for _ in 0..3 {
                lost.push(read_request(&mut s).await.id);
            }
            let again = read_request(&mut s).await;
            assert!(matches!(again.request, Request::Hello { .. }));
            let outcome = hello(PROTOCOL_VERSION);
            send(
                &mut s,
                GuestFrame::Response {
                    id: again.id,
                    outcome,
                },
            )
            .await;
            let (routes, neighbors) = (read_request(&mut s).await, read_request(&mut s).await);
            assert_eq!(
                [routes.request, neighbors.request].to_vec(),
                network_follow()
            );
            // Late answers to the lost ones are dropped; the resent ones' answers count.
            for id in lost {
                let outcome = Outcome::Err(GuestError::new(ErrorKind::Internal, "stale"));
                send(&mut s, GuestFrame::Response { id, outcome }).await;
            }
            send(&mut s, answer_ok_frame(routes.id)).await;
            send(&mut s, answer_ok_frame(neighbors.id)).await;
            s
        });
        let (client, _, sent) =
            AgentClient::connect_sending(&path, Duration::from_secs(30), network_follow())
                .await
                .unwrap();
        assert_eq!(sent.len(), 2);
        for s in sent {
            client.answer_ok(s).await.unwrap();
        }
        drop(guest.await.unwrap());
    }

    /// Answers to ids nobody asked for, and answers out of order, are dropped or matched: the
    /// caller gets its own answer.
    #[tokio::test]
    async fn unknown_ids_are_dropped_and_answers_matched() {
        let (client, mut s, _dir) = connected().await;
        let guest = tokio::spawn(async move {
            let req = read_request(&mut s).await;
            for id in [0, req.id + 1000, u64::MAX] {
                answer_started(&mut s, id, 666).await;
            }
            answer_started(&mut s, req.id, 7).await;
            s
        });
        assert_eq!(client.start("c1").await.unwrap(), 7);
        drop(guest.await.unwrap());
    }

    /// A guest that floods output while the host does not take events: the host keeps at most
    /// EVENT_QUEUE_BYTES of it, counts what it dropped, and still delivers the exit that follows,
    /// after the output it kept.
    #[tokio::test]
    async fn flooding_output_is_bounded_and_exits_are_kept() {
        let (client, mut s, _dir) = connected().await;
        let mut events = client.take_events().unwrap();
        const CHUNK: usize = 64 * 1024;
        let chunks = 3 * EVENT_QUEUE_BYTES / CHUNK;
        let guest = tokio::spawn(async move {
            for _ in 0..chunks {
                send(
                    &mut s,
                    GuestFrame::Event {
                        event: Event::Output {
                            id: "c1".into(),
                            exec_id: None,
                            stream: Stream::Stdout,
                            data: vec![b'x'; CHUNK],
                        },
                    },
                )
                .await;
            }
            send(
                &mut s,
                GuestFrame::Event {
                    event: Event::Exit {
                        id: "c1".into(),
                        exec_id: None,
                        status: ExitStatus {
                            code: 0,
                            signal: None,
                        },
                    },
                },
            )
            .await;
            // Answered after the flood: once the host has the answer, it has read every frame.
            let req = read_request(&mut s).await;
            answer_started(&mut s, req.id, 7).await;
            s
        });
        // The host reads every frame although nobody takes an event.
        let started = tokio::time::timeout(Duration::from_secs(60), client.start("c1"))
            .await
            .expect("the host stopped reading the guest");
        assert_eq!(started.unwrap(), 7);
        let s = guest.await.unwrap();
        let mut kept = 0;
        let exit = loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Event::Output { data, .. } => kept += data.len(),
                other => break other,
            }
        };
        assert!(matches!(exit, Event::Exit { .. }), "{exit:?}");
        assert!(kept <= EVENT_QUEUE_BYTES, "{kept} bytes kept");
        assert!(kept >= EVENT_QUEUE_BYTES / 2, "{kept} bytes kept");
        assert_eq!(
            client.dropped_output(),
            (chunks * CHUNK - kept) as u64,
            "what was not kept is counted"
        );
        drop(s);
    }
}
