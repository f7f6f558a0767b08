//! `coffer-exec`: `crictl exec [-i] [-t]` for machines without crictl. It asks the CRI for a
//! streaming exec, attaches to containerd's streaming server (WebSocket, `v4.channel.k8s.io`),
//! puts the local terminal in raw mode for `-t`, passes terminal resizes on, and exits with the
//! command's exit code.
//!
//! ```text
//! coffer-exec --socket DIR/containerd.sock [-i] [-t] CONTAINER-ID CMD [ARG...]
//! ```

use std::io::{IsTerminal, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use coffer_tests::stream::{self, Input};
use coffer_tests::Cri;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(
    about = "Run a command in a container through the CRI's streaming server, as crictl exec"
)]
struct Args {
    /// containerd's socket (packaging/dev/up.sh prints it).
    #[arg(long)]
    socket: PathBuf,
    /// Pass stdin to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (and put this one in raw mode).
    #[arg(short, long)]
    tty: bool,
    /// The container.
    container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        Err(e) => {
            eprintln!("coffer-exec: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<i32, String> {
    let mut cri = Cri::connect(&args.socket).map_err(|e| e.to_string())?;
    let url = cri
        .exec_url(&args.container, &args.command, args.tty, args.interactive)
        .map_err(|e| e.to_string())?;
    drop(cri);

    let stdin = std::io::stdin();
    let raw = if args.tty && stdin.is_terminal() {
        Some(RawMode::enter(&stdin).map_err(|e| format!("raw terminal mode: {e}"))?)
    } else {
        None
    };
    let (tx, rx) = mpsc::channel(64);
    if args.tty {
        if let Some((cols, rows)) = window_size() {
            let _ = tx.try_send(Input::Resize(cols, rows));
        }
    }
    if args.interactive {
        let tx = tx.clone();
        // Blocking reads of stdin; the thread ends with the process.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(Input::Data(buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = rt.block_on(async move {
        if args.tty {
            let mut winch =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                    .map_err(|e| format!("SIGWINCH: {e}"))?;
            let resizes = tx.clone();
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((cols, rows)) = window_size() {
                        if resizes.send(Input::Resize(cols, rows)).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
        drop(tx);
        stream::run(&url, rx, tokio::io::stdout(), tokio::io::stderr())
            .await
            .map_err(|e| e.to_string())
    });
    drop(raw);
    result
}

/// The local terminal in raw mode, restored when dropped.
struct RawMode {
    fd: std::io::Stdin,
    saved: Termios,
}

impl RawMode {
    fn enter(stdin: &std::io::Stdin) -> nix::Result<RawMode> {
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode {
            fd: std::io::stdin(),
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// The size of the terminal on stdout, in columns and rows, if it is one.
fn window_size() -> Option<(u16, u16)> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively borrowed `ws`; the
    // descriptor is stdout's, open for the whole call.
    unsafe { tiocgwinsz(stdout.as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}
