//! `exec -it` through containerd's streaming server, driven on a real terminal: tmux runs the
//! client (crictl when installed, else `coffer-exec`, which speaks the same protocol over
//! WebSocket), the test types into it and reads the screen. Once on runc, which proves the
//! harness, then on coffer-qemu: the prompt, the remote echo of what is typed, the terminal's
//! size, and the exit code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use coffer_tests::lifecycle::{assert_nothing_left, start_busybox};
use coffer_tests::{skip, tools, Crictl, Pod, PrivateContainerd};

/// How long the screen may take to show what the test waits for (a TCG guest is slow).
const SCREEN_WAIT: Duration = Duration::from_secs(60);

/// The terminal tmux gives the client: the guest's terminal must get the same size.
const COLUMNS: u16 = 100;
const ROWS: u16 = 30;

/// A tmux server of the test's own (its socket in the private containerd's directory), with
/// one window running `command`; killed when dropped.
struct Terminal {
    socket: PathBuf,
}

impl Terminal {
    fn start(dir: &Path, command: &str) -> Terminal {
        let terminal = Terminal {
            socket: dir.join("tmux.sock"),
        };
        // The shell after the client keeps the window (and the exit code on screen).
        let script = format!("{command}; echo \"EXIT=$?\"; sleep 600");
        terminal.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "exec",
            "-x",
            &COLUMNS.to_string(),
            "-y",
            &ROWS.to_string(),
            &script,
        ]);
        terminal
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the window shows.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "exec"])
    }

    /// Types `text` and Enter.
    fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "exec", "-l", text]);
        self.tmux(&["send-keys", "-t", "exec", "Enter"]);
    }

    /// Waits until a line of the screen satisfies `pred`; the screen then.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.lines().any(|l| pred(l.trim_end())) {
                return screen;
            }
            assert!(
                start.elapsed() < SCREEN_WAIT,
                "{what} did not appear within {SCREEN_WAIT:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The `exec -it` client's command line for `container`: crictl when installed, else
/// coffer-exec.
fn client(ctd: &PrivateContainerd, bin: &Path, container: &str) -> String {
    let socket = ctd.socket().display().to_string();
    match Crictl::find() {
        Some(crictl) => format!(
            "{} --runtime-endpoint unix://{socket} exec -it {container} sh",
            crictl.display()
        ),
        None => format!(
            "{} --socket {socket} -it {container} sh",
            bin.join("coffer-exec").display()
        ),
    }
}

fn interactive_exec(handler: &str) {
    let bin = match (tools::bin_dir(), tools::guest_dir()) {
        (Ok(b), Ok(_)) => b,
        (Err(reason), _) | (_, Err(reason)) => return skip(reason),
    };
    if let Some(reason) = tools::containerd_missing() {
        return skip(reason);
    }
    if tools::on_path("tmux").is_none() {
        return skip("tmux not found (packaging/dev/deps.sh installs it)");
    }
    let ctd = PrivateContainerd::start().expect("the private containerd starts");
    let mut cri = ctd.cri().expect("connect");
    let pod = Pod::new(&format!("tty-{handler}"), handler, &ctd.log_root());
    let running = start_busybox(&mut cri, &pod);

    let terminal = Terminal::start(ctd.dir(), &client(&ctd, &bin, &running.container_id));
    // busybox sh's prompt for root, in the container's working directory.
    terminal.wait_for("the shell's prompt", |l| l.ends_with("/ #"));
    // The terminal here is raw: what is typed shows only when the remote terminal echoes it.
    terminal.type_line("echo $((6 * 7)); tty; stty size");
    let screen = terminal.wait_for("the command's output", |l| l == format!("{ROWS} {COLUMNS}"));
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("# echo $((6 * 7)); tty; stty size")),
        "{handler}: the typed line was not echoed:\n{screen}"
    );
    assert!(lines.contains(&"42"), "{handler}: no 42:\n{screen}");
    assert!(
        lines.iter().any(|l| l.starts_with("/dev/pts/")),
        "{handler}: stdin is not a terminal:\n{screen}"
    );
    terminal.type_line("exit 7");
    let screen = terminal.wait_for("the exit code", |l| l.starts_with("EXIT="));
    assert!(
        screen.lines().any(|l| l.trim_end() == "EXIT=7"),
        "{handler}: the client did not exit with the shell's code 7:\n{screen}"
    );
    drop(terminal);

    // The container itself still runs; the exec is gone.
    let status = cri
        .container_status(&running.container_id)
        .expect("ContainerStatus");
    assert_eq!(status.state, 1, "{handler}: the container is not running");
    cri.stop_pod_sandbox(&running.pod_id)
        .expect("StopPodSandbox");
    cri.remove_pod_sandbox(&running.pod_id)
        .expect("RemovePodSandbox");
    assert_nothing_left(&mut cri);
}

#[test]
fn exec_it_on_runc() {
    interactive_exec("runc");
}

#[test]
fn exec_it_on_coffer() {
    interactive_exec("coffer-qemu");
}
