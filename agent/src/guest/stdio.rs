//! A process's standard streams: the child's ends, which it makes its 0, 1 and 2, and the
//! agent's ends, which take the host's stdin bytes and stream the output to the host as events.
//!
//! Without a terminal, stdout and stderr are pipes, and stdin is a pipe the agent writes into
//! when the process was started with `stdin` (else /dev/null). On a terminal, the pty's slave is
//! all three and its master is the agent's end (see [`super::pty`]).

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, SyncSender};

use super::error::{io_errno, sys, ContainerError};
use super::outgoing::Outgoing;
use crate::protocol::{Event, GuestFrame, Stream};

/// The child's ends of its standard streams: what it makes its 0, 1 and 2.
#[derive(Debug)]
pub(super) struct ChildIo {
    pub(super) stdin: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    /// The streams are a terminal's slave: the child makes it its controlling terminal.
    pub(super) controlling_tty: bool,
}

/// The agent's ends of a process's standard streams.
#[derive(Debug, Default)]
pub(super) struct AgentIo {
    /// Where stdin bytes are written, if the process has stdin.
    pub(super) stdin: Option<File>,
    /// Output to stream to the host.
    pub(super) outputs: Vec<(Stream, File)>,
    /// The pty master, if the process runs on a terminal.
    pub(super) tty: Option<File>,
}

fn dev_null() -> Result<OwnedFd, ContainerError> {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| ContainerError::Sys {
            step: "open /dev/null".into(),
            source: io_errno(&e),
        })
}

fn dup(fd: &impl std::os::fd::AsFd, what: &str) -> Result<OwnedFd, ContainerError> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| ContainerError::Sys {
            step: format!("dup of {what}"),
            source: io_errno(&e),
        })
}

impl ChildIo {
    /// Pipes for stdout and stderr; a pipe for stdin when `stdin`, else /dev/null (the
    /// process reads end-of-file).
    pub(super) fn pipes(stdin: bool) -> Result<(ChildIo, AgentIo), ContainerError> {
        let (child_stdin, agent_stdin) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(File::from(w)))
        } else {
            (dev_null()?, None)
        };
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        Ok((
            ChildIo {
                stdin: child_stdin,
                stdout: stdout_w,
                stderr: stderr_w,
                controlling_tty: false,
            },
            AgentIo {
                stdin: agent_stdin,
                outputs: vec![
                    (Stream::Stdout, File::from(stdout_r)),
                    (Stream::Stderr, File::from(stderr_r)),
                ],
                tty: None,
            },
        ))
    }

    /// /dev/null for all three.
    pub(super) fn null() -> Result<ChildIo, ContainerError> {
        Ok(ChildIo {
            stdin: dev_null()?,
            stdout: dev_null()?,
            stderr: dev_null()?,
            controlling_tty: false,
        })
    }

    /// A terminal's slave for all three, made the controlling terminal.
    pub(super) fn terminal(slave: OwnedFd) -> Result<ChildIo, ContainerError> {
        Ok(ChildIo {
            stdout: dup(&slave, "the terminal")?,
            stderr: dup(&slave, "the terminal")?,
            stdin: slave,
            controlling_tty: true,
        })
    }
}

impl AgentIo {
    /// The master of a terminal: read as stdout (a terminal has one output stream), written
    /// to for stdin when `stdin`.
    pub(super) fn terminal(master: OwnedFd, stdin: bool) -> Result<AgentIo, ContainerError> {
        let output = File::from(dup(&master, "the terminal master")?);
        let stdin = if stdin {
            Some(File::from(dup(&master, "the terminal master")?))
        } else {
            None
        };
        Ok(AgentIo {
            stdin,
            outputs: vec![(Stream::Stdout, output)],
            tty: Some(File::from(master)),
        })
    }
}

/// A pipe, (read end, write end), closed on exec: a started process keeps only what it dup2s
/// into 0, 1 and 2.
pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))
}

/// Streams one pipe to the host as output events; an empty event marks its end. A chunk
/// `may_read` refuses (the agent policy's `ReadStreamRequest`) is read and dropped: the
/// process is not held up, and the host never sees it.
pub(super) fn forward_output(
    mut pipe: File,
    stream: Stream,
    id: String,
    exec_id: Option<String>,
    events: SyncSender<Outgoing>,
    done: mpsc::Sender<()>,
    may_read: &dyn Fn(&str, Option<&str>, usize) -> bool,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut withheld = false;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if n > 0 && !may_read(&id, exec_id.as_deref(), n) {
            if !withheld {
                withheld = true;
                super::boot::log(&format!(
                    "the agent policy (ReadStreamRequest) keeps the {stream:?} of container {id} in the guest"
                ));
            }
            continue;
        }
        let event = Event::Output {
            id: id.clone(),
            exec_id: exec_id.clone(),
            stream,
            data: buf[..n].to_vec(),
        };
        // The writer blocks while no host is connected; so does this, and so does the process
        // writing into the pipe: output is held back, not dropped.
        let _ = events.send(GuestFrame::Event { event }.into());
        if n == 0 {
            let _ = done.send(());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn stdin_pipe_carries_bytes_then_end_of_file() {
        let (child, agent) = ChildIo::pipes(true).unwrap();
        let mut w = agent.stdin.unwrap();
        w.write_all(b"got this\n").unwrap();
        drop(w);
        let mut r = File::from(child.stdin);
        let mut text = String::new();
        r.read_to_string(&mut text).unwrap();
        assert_eq!(text, "got this\n");
        assert!(!child.controlling_tty);
        let streams: Vec<_> = agent.outputs.iter().map(|(s, _)| *s).collect();
        assert_eq!(streams, [Stream::Stdout, Stream::Stderr]);

        // Without stdin the process reads /dev/null, and the agent has nothing to write to.
        let (child, agent) = ChildIo::pipes(false).unwrap();
        assert!(agent.stdin.is_none());
        let mut buf = Vec::new();
        File::from(child.stdin).read_to_end(&mut buf).unwrap();
        assert!(buf.is_empty());
    }
}
