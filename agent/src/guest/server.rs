//! Serving the host on the virtio-serial port: one reader, one writer, a thread per request,
//! except for hello and the network's requests, which one thread serves in the order they came.
//!
//! The host sends the pod's network right behind its first hello, before the guest is up, and
//! its interface, routes and neighbours build on each other: served in order, they need no
//! round trip each.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use super::boot;
use super::container::Containers;
use super::outgoing::Outgoing;
use super::policy::AgentPolicy;
use crate::protocol::{
    decode, encode, ErrorKind, FrameDecoder, GuestError, GuestFrame, Hello, InitDataReport,
    Outcome, Request, RequestFrame, Response, INITDATA_DIR, PROTOCOL_VERSION,
};

/// Frames waiting for the writer. Bounded: when no host listens, producers (output readers)
/// block instead of growing memory.
pub const QUEUE: usize = 256;

/// Requests waiting for the in-order thread. Bounded: beyond it, the reader waits (and the
/// host's writes with it).
const IN_ORDER_QUEUE: usize = 16;

/// How often the reader looks for a host while none is connected (a read returns 0 at once then).
const NO_HOST_POLL: Duration = Duration::from_millis(50);

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Agent {
    /// The Init-Data report, as hello returns it.
    pub report: InitDataReport,
    /// The containers.
    pub containers: Arc<Containers>,
    /// Frames to the host.
    pub out: SyncSender<Outgoing>,
    /// The Init-Data's agent policy, checked before each request is served.
    pub policy: Arc<AgentPolicy>,
}

/// Writes frames to the port in order. A write blocks while no host is connected.
pub fn writer(mut port: File, frames: Receiver<Outgoing>) {
    for Outgoing { frame, written } in frames {
        match encode(&frame) {
            Ok(bytes) => {
                if let Err(e) = port.write_all(&bytes) {
                    boot::log(&format!("writing to the host: {e}"));
                }
            }
            Err(e) => boot::log(&format!("cannot encode a frame: {e}")),
        }
        if let Some(tx) = written {
            let _ = tx.send(());
        }
    }
}

/// Reads requests forever and serves each on its own thread, or in order (see [`in_order`]).
pub fn serve(mut port: File, agent: Arc<Agent>) -> ! {
    let (ordered, queue) = mpsc::sync_channel::<RequestFrame>(IN_ORDER_QUEUE);
    {
        let agent = agent.clone();
        std::thread::spawn(move || {
            for frame in queue {
                answer(&agent, frame);
            }
        });
    }
    let mut frames = FrameDecoder::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match port.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                boot::log(&format!("reading from the host: {e}"));
                std::thread::sleep(NO_HOST_POLL);
                continue;
            }
        };
        if n == 0 {
            // No host connected: whatever was half read belongs to a session that is gone.
            frames.reset();
            std::thread::sleep(NO_HOST_POLL);
            continue;
        }
        frames.push(&chunk[..n]);
        loop {
            match frames.next_body() {
                Ok(Some(body)) => dispatch(&agent, &ordered, &body),
                Ok(None) => break,
                Err(e) => {
                    // The stream lost sync; nothing after this point can be trusted.
                    boot::log(&format!("dropping input from the host: {e}"));
                    frames.reset();
                    break;
                }
            }
        }
    }
}

/// Whether `request` is served in the order it came, after the ones before it: hello (so the
/// first hello is answered first) and the network's requests (an interface before its routes).
fn in_order(request: &Request) -> bool {
    matches!(
        request,
        Request::Hello { .. }
            | Request::UpdateInterface { .. }
            | Request::UpdateRoutes { .. }
            | Request::AddArpNeighbors { .. }
    )
}

fn dispatch(agent: &Arc<Agent>, ordered: &SyncSender<RequestFrame>, body: &[u8]) {
    let frame: RequestFrame = match decode(body) {
        Ok(f) => f,
        Err(e) => {
            match refuse_malformed(body, &e) {
                Some(answer) => {
                    let _ = agent.out.send(answer.into());
                }
                None => boot::log(&format!("ignoring a frame without an id: {e}")),
            }
            return;
        }
    };
    if in_order(&frame.request) {
        // The thread lives as long as the reader; should it be gone, nothing is served.
        let _ = ordered.send(frame);
        return;
    }
    let agent = agent.clone();
    std::thread::spawn(move || answer(&agent, frame));
}

/// Serves one request and sends its answer.
fn answer(agent: &Agent, frame: RequestFrame) {
    let shutdown = matches!(frame.request, Request::Shutdown);
    let outcome = match handle(agent, frame.request) {
        Ok(r) => Outcome::Ok(r),
        Err(e) => Outcome::Err(e),
    };
    let (written, was_written) = mpsc::channel();
    let _ = agent.out.send(Outgoing {
        frame: GuestFrame::Response {
            id: frame.id,
            outcome,
        },
        written: Some(written),
    });
    if shutdown {
        // Let the answer reach the host before the VM goes away (bounded: a host that went
        // away must not keep the VM up).
        let _ = was_written.recv_timeout(Duration::from_secs(2));
        boot::log("shutdown requested by the host");
        boot::power_off();
    }
}

/// The answer to a request this agent cannot decode (a newer host's operation, a bad field),
/// when the frame at least carries an id, so the host does not wait forever.
fn refuse_malformed(body: &[u8], error: &crate::protocol::FrameError) -> Option<GuestFrame> {
    #[derive(serde::Deserialize)]
    struct JustId {
        id: u64,
    }
    let JustId { id } = serde_json::from_slice(body).ok()?;
    Some(GuestFrame::Response {
        id,
        outcome: Outcome::Err(GuestError::new(
            ErrorKind::InvalidArgument,
            format!(
                "this agent (protocol version {PROTOCOL_VERSION}) does not understand the request: {error}"
            ),
        )),
    })
}

fn handle(agent: &Agent, request: Request) -> Result<Response, GuestError> {
    agent.policy.check(&request)?;
    let c = &agent.containers;
    match request {
        Request::Hello { protocol_version } => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(GuestError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "this agent speaks protocol version {PROTOCOL_VERSION}, the host {protocol_version}; use a guest image built from the same Coffer release"
                    ),
                ));
            }
            Ok(Response::Hello(Box::new(Hello {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                protocol_version: PROTOCOL_VERSION,
                initdata: agent.report.clone(),
            })))
        }
        Request::CreateContainer(req) => c
            .create(req)
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::Start { id } => c
            .start(&id)
            .map(|pid| Response::Started { pid })
            .map_err(GuestError::from),
        Request::Exec {
            id,
            exec_id,
            process,
        } => c
            .exec(&id, &exec_id, &process)
            .map(|pid| Response::Started { pid })
            .map_err(GuestError::from),
        Request::Wait { id, exec_id } => c
            .wait(&id, exec_id.as_deref())
            .map(|status| Response::Exited { status })
            .map_err(GuestError::from),
        Request::Signal {
            id,
            exec_id,
            signal,
        } => c
            .signal(&id, exec_id.as_deref(), signal)
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::Remove { id } => c
            .remove(&id)
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::ReadFile { path } => {
            read_initdata_file(Path::new(INITDATA_DIR), &path).map(|data| Response::File { data })
        }
        Request::WriteStdin { id, exec_id, data } => c
            .write_stdin(&id, exec_id.as_deref(), &data)
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::CloseStdin { id, exec_id } => c
            .close_stdin(&id, exec_id.as_deref())
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::ResizePty {
            id,
            exec_id,
            width,
            height,
        } => c
            .resize_pty(&id, exec_id.as_deref(), width, height)
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::UpdateInterface { interface } => {
            super::network::update_interface(&interface).map(|()| Response::Ok)
        }
        Request::UpdateRoutes { routes } => {
            super::network::update_routes(&routes).map(|()| Response::Ok)
        }
        Request::AddArpNeighbors { neighbors } => {
            super::network::add_neighbors(&neighbors).map(|()| Response::Ok)
        }
        Request::Stats { id } => c.stats(&id).map(Response::Stats).map_err(GuestError::from),
        Request::UpdateResources { id, resources } => c
            .update(&id, &resources)
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::Pause { id } => c
            .freeze(&id, true)
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::Resume { id } => c
            .freeze(&id, false)
            .map(|()| Response::Ok)
            .map_err(GuestError::from),
        Request::Shutdown => Ok(Response::Ok),
    }
}

/// Reads `path` (absolute, or relative to `dir`) if it lies inside `dir`.
pub fn read_initdata_file(dir: &Path, path: &str) -> Result<Vec<u8>, GuestError> {
    let outside = |message: String| GuestError::new(ErrorKind::InvalidArgument, message);
    let p = Path::new(path);
    let rel: PathBuf = if p.is_absolute() {
        p.strip_prefix(dir)
            .map_err(|_| {
                outside(format!(
                    "read_file is limited to {}; {path} is outside it",
                    dir.display()
                ))
            })?
            .to_owned()
    } else {
        p.to_owned()
    };
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(outside(format!(
            "read_file is limited to files in {}; {path:?} is not one",
            dir.display()
        )));
    }
    let full = dir.join(&rel);
    // A symlink inside the directory must not lead out of it.
    let real = fs::canonicalize(&full).map_err(|e| cannot_read(&full, &e))?;
    let real_dir = fs::canonicalize(dir).map_err(|e| cannot_read(dir, &e))?;
    if !real.starts_with(&real_dir) {
        return Err(outside(format!(
            "read_file is limited to {}; {path} leads outside it",
            dir.display()
        )));
    }
    fs::read(&real).map_err(|e| cannot_read(&full, &e))
}

fn cannot_read(path: &Path, e: &std::io::Error) -> GuestError {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    };
    GuestError::new(kind, format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_requests_with_an_id_are_answered() {
        let body = br#"{"id":7,"request":{"op":"format_disk"}}"#;
        let err = decode::<RequestFrame>(body).unwrap_err();
        match refuse_malformed(body, &err) {
            Some(GuestFrame::Response {
                id: 7,
                outcome: Outcome::Err(e),
            }) => {
                assert_eq!(e.kind, ErrorKind::InvalidArgument);
                assert!(
                    e.message.starts_with(&format!("this agent (protocol version {PROTOCOL_VERSION}) does not understand the request: malformed frame: unknown variant `format_disk`")),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let junk = b"[1,2]";
        let err = decode::<RequestFrame>(junk).unwrap_err();
        assert_eq!(refuse_malformed(junk, &err), None);
    }

    #[test]
    fn read_file_stays_in_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("initdata");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("aa.toml"), b"x = 1\n").unwrap();
        fs::write(tmp.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), dir.join("link")).unwrap();

        assert_eq!(read_initdata_file(&dir, "aa.toml").unwrap(), b"x = 1\n");
        let abs = dir.join("aa.toml").display().to_string();
        assert_eq!(read_initdata_file(&dir, &abs).unwrap(), b"x = 1\n");
        let refused = |path: &str, kind: ErrorKind, text: &str| {
            let e = read_initdata_file(&dir, path).unwrap_err();
            assert_eq!(e.kind, kind, "{path}: {e}");
            assert!(e.message.contains(text), "{path}: {e}");
        };
        refused("../secret", ErrorKind::InvalidArgument, "is not one");
        refused("/etc/passwd", ErrorKind::InvalidArgument, "is outside it");
        refused("link", ErrorKind::InvalidArgument, "leads outside it");
        refused("", ErrorKind::InvalidArgument, "is not one");
        refused("cdh.toml", ErrorKind::NotFound, "cannot read");
    }
}
