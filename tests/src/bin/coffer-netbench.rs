//! `coffer-netbench`: pod networking, a Coffer pod beside the same pod on runc, in one run.
//!
//! For each handler: pod A serves files with busybox `httpd`; the host fetches a large file
//! (throughput) and a small one many times in a row (request latency) from pod A's IP; pod B
//! does the same from inside its container with `nc` (pod to pod). All traffic stays on the
//! private CNI bridge.
//!
//! ```text
//! coffer-netbench --socket DIR/containerd.sock [--handlers runc,coffer-qemu] [--mib 32] [--requests 200]
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use coffer_tests::{Container, Cri, Pod};

#[derive(Parser)]
#[command(about = "Pod network throughput and latency, Coffer beside runc")]
struct Args {
    /// The private containerd's socket (packaging/dev/up.sh prints it).
    #[arg(long)]
    socket: PathBuf,
    /// Runtime handlers to compare, in order.
    #[arg(long, value_delimiter = ',', default_value = "runc,coffer-qemu")]
    handlers: Vec<String>,
    /// Size of the file fetched for throughput, in MiB.
    #[arg(long, default_value_t = 32)]
    mib: u32,
    /// Small requests in a row for latency.
    #[arg(long, default_value_t = 200)]
    requests: u32,
    /// Where containerd writes the pods' logs.
    #[arg(long, default_value = "/tmp/coffer-netbench-logs")]
    log_root: PathBuf,
}

/// What one handler measured.
struct Figures {
    host_mib_s: f64,
    host_latency_ms: (f64, f64),
    pod_mib_s: f64,
    pod_latency_ms: f64,
}

const PORT: u16 = 8080;
/// Bound on any single transfer.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(120);

fn get(addr: SocketAddr, path: &str) -> Result<usize, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(TRANSFER_DEADLINE))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) => return Err(format!("GET {path} from {addr}: {e}")),
        }
    }
}

/// The `pct`th percentile of sorted values (nearest rank).
fn percentile(sorted: &[f64], pct: usize) -> f64 {
    let last = sorted.len().saturating_sub(1);
    sorted
        .get((last * pct + 50) / 100)
        .copied()
        .unwrap_or(f64::NAN)
}

fn exec(cri: &mut Cri, id: &str, script: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let r = cri
        .exec_sync(id, &["sh", "-c", script])
        .map_err(|e| e.to_string())?;
    if r.exit_code != 0 {
        return Err(format!(
            "{script}: exit {}: {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr)
        ));
    }
    Ok(start.elapsed())
}

fn bench(cri: &mut Cri, args: &Args, handler: &str) -> Result<Figures, String> {
    let tag = handler.replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let pod_a = Pod::new(&format!("bench-a-{tag}"), handler, &args.log_root);
    let pod_b = Pod::new(&format!("bench-b-{tag}"), handler, &args.log_root);
    let a = cri.run_pod_sandbox(&pod_a).map_err(|e| e.to_string())?;
    let b = cri.run_pod_sandbox(&pod_b).map_err(|e| e.to_string())?;
    let result = (|| {
        let server = Container::busybox_sh(
            "httpd",
            &format!(
                "mkdir -p /www && echo ok > /www/small && dd if=/dev/zero of=/www/big bs=1M count={} 2>/dev/null && exec httpd -f -p {PORT} -h /www",
                args.mib
            ),
        );
        let server = cri
            .create_container(&a, &pod_a, &server)
            .map_err(|e| e.to_string())?;
        cri.start_container(&server).map_err(|e| e.to_string())?;
        let client = Container::busybox_sh("client", "exec sleep 3600");
        let client = cri
            .create_container(&b, &pod_b, &client)
            .map_err(|e| e.to_string())?;
        cri.start_container(&client).map_err(|e| e.to_string())?;
        let ip = cri
            .pod_sandbox_status(&a)
            .map_err(|e| e.to_string())?
            .network
            .map(|n| n.ip)
            .unwrap_or_default();
        let addr: SocketAddr = format!("{ip}:{PORT}")
            .parse()
            .map_err(|e| format!("pod IP {ip:?}: {e}"))?;
        // The server is up once the small file comes back.
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(addr, "/small").is_err() {
            if Instant::now() > deadline {
                return Err(format!("no HTTP server at {addr} after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }

        let bytes = f64::from(args.mib) * 1024.0 * 1024.0;
        let mut rates = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let got = get(addr, "/big")?;
            if (got as f64) < bytes {
                return Err(format!("GET /big returned {got} bytes"));
            }
            rates.push(bytes / 1048576.0 / start.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        let mut lat = Vec::new();
        for _ in 0..args.requests {
            let start = Instant::now();
            get(addr, "/small")?;
            lat.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);

        let fetch = |path: &str| {
            format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc {ip} {PORT} > /dev/null")
        };
        let baseline = exec(cri, &client, "true")?;
        let big = exec(cri, &client, &fetch("/big"))?.saturating_sub(baseline);
        let n = 50;
        let loop_script = format!(
            "i=0; while [ $i -lt {n} ]; do {}; i=$((i+1)); done",
            fetch("/small")
        );
        let small = exec(cri, &client, &loop_script)?.saturating_sub(baseline);
        Ok(Figures {
            host_mib_s: rates[1],
            host_latency_ms: (percentile(&lat, 50), percentile(&lat, 95)),
            pod_mib_s: bytes / 1048576.0 / big.as_secs_f64(),
            pod_latency_ms: small.as_secs_f64() * 1000.0 / f64::from(n),
        })
    })();
    for id in [&a, &b] {
        let _ = cri.stop_pod_sandbox(id);
        let _ = cri.remove_pod_sandbox(id);
    }
    result
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cri = match Cri::connect(&args.socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coffer-netbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{:<12} {:>14} {:>16} {:>16} {:>14} {:>16}",
        "handler",
        "host->pod MiB/s",
        "host->pod p50 ms",
        "host->pod p95 ms",
        "pod->pod MiB/s",
        "pod->pod req ms"
    );
    let mut failed = false;
    for handler in &args.handlers {
        match bench(&mut cri, &args, handler) {
            Ok(f) => println!(
                "{:<12} {:>14.1} {:>16.2} {:>16.2} {:>14.1} {:>16.2}",
                handler,
                f.host_mib_s,
                f.host_latency_ms.0,
                f.host_latency_ms.1,
                f.pod_mib_s,
                f.pod_latency_ms
            ),
            Err(e) => {
                eprintln!("coffer-netbench: {handler}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
