//! A hostile guest agent: PID 1 of a test VM, in place of `coffer-agent`, that answers the
//! host's hello correctly (so the pod starts) and then misbehaves as the kernel command line's
//! `coffer.hostile=<case>` says:
//!
//! - `oversized`: answers CreateContainer with a frame announcing 4 GiB;
//! - `truncated`: answers CreateContainer with half a frame, then nothing;
//! - `unknown-ids`: answers every request after the hello with an id nobody asked for;
//! - `wrong-answer`: answers CreateContainer with a started process instead of `ok`;
//! - `host-pids`: answers Start with pid 1, the host's init if the host believed it;
//! - `endless-events`: sends output and exit events for containers that do not exist, forever;
//! - `console-flood`: writes to the console as fast as it can, forever.
//!
//! Everything not named by the case is answered as the real agent would, briefly. Built static
//! for the guest by `packaging/dev/test.sh`; the tests add it to a copy of the guest's initrd and
//! boot it with `rdinit=`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_agent::protocol::{
    encode, read_frame, Event, ExitStatus, GuestFrame, Hello, InitDataReport, Outcome, Request,
    RequestFrame, Response, Stream, AGENT_PORT_NAME, PROTOCOL_VERSION,
};

fn log(line: &str) {
    // stderr of PID 1 is the console.
    eprintln!("hostile-guest: {line}");
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in a constant");
    let (source, target_c, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: the arguments are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        log(&format!(
            "mount {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
}

/// `/dev/vportNpM` of the agent's port, once the kernel has it.
fn agent_port() -> Option<PathBuf> {
    for _ in 0..200 {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == AGENT_PORT_NAME {
                    return Some(PathBuf::from("/dev").join(e.file_name()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The case the command line names.
fn case() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("coffer.hostile="))
        .unwrap_or("none")
        .to_owned()
}

type Port = Arc<Mutex<File>>;

fn send(port: &Port, bytes: &[u8]) {
    if let Ok(mut p) = port.lock() {
        let _ = p.write_all(bytes).and_then(|()| p.flush());
    }
}

fn answer(port: &Port, id: u64, response: Response) {
    let frame = GuestFrame::Response {
        id,
        outcome: Outcome::Ok(response),
    };
    send(port, &encode(&frame).expect("a frame of ours encodes"));
}

/// What the real agent would answer, in short.
fn normal(request: &Request) -> Response {
    match request {
        Request::Hello { .. } => Response::Hello(Box::new(Hello {
            agent_version: "hostile".into(),
            protocol_version: PROTOCOL_VERSION,
            initdata: InitDataReport::default(),
        })),
        Request::Start { .. } | Request::Exec { .. } => Response::Started { pid: 42 },
        _ => Response::Ok,
    }
}

fn endless_events(port: Port) {
    let output = GuestFrame::Event {
        event: Event::Output {
            id: "ghost".into(),
            exec_id: None,
            stream: Stream::Stdout,
            data: vec![b'x'; 16 * 1024],
        },
    };
    let output = encode(&output).expect("encodes");
    let mut n: u64 = 0;
    loop {
        send(&port, &output);
        let exit = GuestFrame::Event {
            event: Event::Exit {
                id: format!("ghost-{n}"),
                exec_id: Some(format!("exec-{n}")),
                status: ExitStatus {
                    code: 1,
                    signal: None,
                },
            },
        };
        send(&port, &encode(&exit).expect("encodes"));
        n += 1;
    }
}

fn console_flood() {
    let Ok(mut console) = OpenOptions::new().write(true).open("/dev/console") else {
        log("cannot open /dev/console");
        return;
    };
    let line = [b'c'; 1023];
    loop {
        let _ = console
            .write_all(&line)
            .and_then(|()| console.write_all(b"\n"));
    }
}

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    let case = case();
    log(&format!("case {case}"));
    let Some(path) = agent_port() else {
        log("no agent port");
        loop {
            std::thread::park();
        }
    };
    // A port opens once: the writer is a second descriptor of the same open file.
    let mut reader = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            log(&format!("open {}: {e}", path.display()));
            loop {
                std::thread::park();
            }
        }
    };
    let port: Port = Arc::new(Mutex::new(
        reader
            .try_clone()
            .expect("the port's descriptor duplicates"),
    ));
    match case.as_str() {
        "endless-events" => {
            let port = port.clone();
            std::thread::spawn(move || endless_events(port));
        }
        "console-flood" => {
            std::thread::spawn(console_flood);
        }
        _ => {}
    }
    let mut hello_done = false;
    loop {
        let frame: RequestFrame = match read_frame(&mut reader) {
            Ok(f) => f,
            Err(e) => {
                log(&format!("reading a request: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let is_hello = matches!(frame.request, Request::Hello { .. });
        let is_create = matches!(frame.request, Request::CreateContainer(_));
        let is_start = matches!(frame.request, Request::Start { .. });
        if !hello_done || is_hello {
            hello_done = true;
            answer(&port, frame.id, normal(&frame.request));
            continue;
        }
        match case.as_str() {
            "oversized" if is_create => {
                send(&port, &u32::MAX.to_be_bytes());
                send(&port, &[b'{'; 64]);
            }
            "truncated" if is_create => {
                send(&port, &100u32.to_be_bytes());
                send(&port, &[b'{'; 10]);
                // And nothing more: the frame never ends.
                loop {
                    std::thread::park();
                }
            }
            "unknown-ids" => answer(&port, frame.id + 1_000_000, normal(&frame.request)),
            "wrong-answer" if is_create => answer(&port, frame.id, Response::Started { pid: 7 }),
            "host-pids" if is_start => answer(&port, frame.id, Response::Started { pid: 1 }),
            _ => answer(&port, frame.id, normal(&frame.request)),
        }
    }
}
