//! Terminals. A process started with `terminal` runs on a pty of its container's own devpts
//! instance (mounted on the container's `/dev/pts`, as runc does), so `tty` inside shows
//! `/dev/pts/N` and no container sees another's terminals. The agent opens the master through
//! `/proc/<container pid>/root/dev/pts/ptmx`; the process gets the slave as its controlling
//! terminal (`setsid` + `TIOCSCTTY`) and as its stdin, stdout and stderr.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::{io_errno, sys, ContainerError};

/// The pty index a container's process is told at start when it has no terminal.
pub(super) const NO_TTY: u32 = u32::MAX;

/// Options of a container's devpts: its own instance (runc's), group `tty` (5).
pub(super) const DEVPTS_OPTIONS: &[u8] = b"newinstance,ptmxmode=0666,mode=0620,gid=5\0";

/// The devpts of the container whose first process is `pid`, as the agent reaches it.
pub(super) fn container_pts(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root/dev/pts"))
}

/// A pseudo-terminal's master and its index in its devpts instance.
#[derive(Debug)]
pub(super) struct Pty {
    pub(super) master: OwnedFd,
    pub(super) index: u32,
}

impl Pty {
    /// Allocates a pty through the `ptmx` node of a devpts instance and unlocks its slave.
    pub(super) fn open(ptmx: &Path) -> Result<Pty, ContainerError> {
        let master: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(ptmx)
            .map_err(|e| ContainerError::Sys {
                step: format!(
                    "allocating a terminal through {} (is devpts mounted in the container?)",
                    ptmx.display()
                ),
                source: io_errno(&e),
            })?
            .into();
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int from a valid pointer; the fd is a ptmx master.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
            return Err(sys("unlocking the terminal (TIOCSPTLCK)")(
                nix::Error::last(),
            ));
        }
        let mut index: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes an unsigned int through a valid pointer.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut index) } < 0 {
            return Err(sys("reading the terminal's number (TIOCGPTN)")(
                nix::Error::last(),
            ));
        }
        Ok(Pty { master, index })
    }

    /// Opens the slave in `pts` (the devpts the master came from), without making it the
    /// agent's controlling terminal.
    pub(super) fn open_slave(&self, pts: &Path) -> Result<OwnedFd, ContainerError> {
        let path = pts.join(self.index.to_string());
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| ContainerError::Sys {
                step: format!("opening the terminal {}", path.display()),
                source: io_errno(&e),
            })
    }
}

/// `TIOCSWINSZ`: the terminal's size in columns and rows.
pub(super) fn set_window_size(master: &File, width: u16, height: u16) -> Result<(), nix::Error> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// `/dev/pts/<index>` as a NUL-terminated path, without allocating (the child builds it).
pub(super) fn pts_path(index: u32) -> [u8; 24] {
    let mut out = [0u8; 24];
    let prefix = b"/dev/pts/";
    out[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 10];
    let mut n = index;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[prefix.len() + i] = digits[len - 1 - i];
    }
    out
}

/// The pty of the machine running the tests, standing in for a container's devpts.
#[cfg(test)]
pub(super) fn host_pty() -> Option<Pty> {
    match Pty::open(Path::new("/dev/ptmx")) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("SKIP: no pty on this machine: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::super::stdio::AgentIo;
    use super::*;
    use crate::protocol::Stream;

    #[test]
    fn pts_paths_are_built_without_allocating() {
        let text = |i| {
            let p = pts_path(i);
            let end = p.iter().position(|&b| b == 0).unwrap();
            String::from_utf8(p[..end].to_vec()).unwrap()
        };
        assert_eq!(text(0), "/dev/pts/0");
        assert_eq!(text(17), "/dev/pts/17");
        assert_eq!(text(NO_TTY - 1), "/dev/pts/4294967294");
        assert_eq!(pts_path(NO_TTY - 1)[23], 0);
    }

    #[test]
    fn pty_carries_both_ways_and_resizes() {
        let Some(pty) = host_pty() else { return };
        let slave = File::from(pty.open_slave(Path::new("/dev/pts")).unwrap());
        let agent = AgentIo::terminal(pty.master, true).unwrap();
        assert_eq!(agent.outputs.len(), 1);
        assert_eq!(agent.outputs[0].0, Stream::Stdout);
        // Typed into the master, read by the process as a line (canonical mode).
        agent.stdin.as_ref().unwrap().write_all(b"hello\n").unwrap();
        let mut buf = [0u8; 64];
        let n = (&slave).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello\n");
        // Written by the process, read as its output (with the terminal's CR before LF).
        (&slave).write_all(b"out\n").unwrap();
        let mut out = &agent.outputs[0].1;
        let mut got = Vec::new();
        while !got.ends_with(b"out\r\n") {
            let n = out.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        // The echo of the typed line comes first.
        assert_eq!(got, b"hello\r\nout\r\n");

        set_window_size(agent.tty.as_ref().unwrap(), 132, 43).unwrap();
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into `size`, which lives across the call.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_col, size.ws_row), (132, 43));
    }
}
