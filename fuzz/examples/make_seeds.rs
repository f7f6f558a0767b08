//! Writes the seed inputs of every fuzz target from the repository's own test data and the
//! crates' own encoders:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example make_seeds -- fuzz/seeds
//!
//! Deterministic: the same tree gives the same files. The fuzzers start from these (and from
//! the committed corpus, which was grown from them and minimized).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use coffer_agent::protocol::network::{ArpNeighbor, Interface, IpAddress, Route};
use coffer_agent::protocol::{
    encode, Capabilities, ContainerFile, CreateContainer, ErrorKind, Event, ExitStatus, GuestError,
    GuestFrame, Hello, InitDataReport, Outcome, PolicyStatus, Process, Request, RequestFrame,
    Response, Rlimit, Seccomp, SeccompArg, SeccompSyscall, Service, Stream, Tee, Verification,
    PROTOCOL_VERSION,
};
use coffer_initdata::{annotation, image, Limits};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../initdata/tests/data");
    let seed_toml = fs::read(data.join("seed-initdata.toml")).expect("seed-initdata.toml");
    let kata_value = fs::read_to_string(data.join("kata-annotation.b64")).expect("kata b64");
    let kata_doc = annotation::decode_bytes(&kata_value, &Limits::default()).expect("kata doc");

    let docs: Vec<(&str, Vec<u8>)> = vec![
        ("seed-initdata", seed_toml.clone()),
        ("kata", kata_doc.clone()),
        ("min-sha384", b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n".to_vec()),
        (
            "min-sha512-unknown-key",
            b"version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n\"x.toml\" = \"a\"\n".to_vec(),
        ),
        ("bad-version", b"version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n".to_vec()),
        ("near-miss-alg", b"version = \"0.1.0\"\nalgorithm = \"SHA-384\"\n[data]\n".to_vec()),
        (
            "data-not-string",
            b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nk = 1\n".to_vec(),
        ),
        (
            "inline-and-dup",
            b"version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = { a = \"\"\"x\ny\"\"\" }\n[data]\n"
                .to_vec(),
        ),
    ];

    // document: the TOML itself.
    let dir = mkdir(&out, "document");
    for (name, doc) in &docs {
        put(&dir, name, doc);
    }

    // annotation: the values a pod may carry, good and bad.
    let dir = mkdir(&out, "annotation");
    put(&dir, "kata-file", kata_value.as_bytes());
    for (name, doc) in &docs[..4] {
        put(&dir, name, annotation::encode(doc).as_bytes());
    }
    let seed_value = annotation::encode(&seed_toml);
    let wrapped: String = seed_value
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).expect("base64 is ASCII")))
        .collect();
    put(&dir, "wrapped-crlf", format!("  {wrapped}").as_bytes());
    put(
        &dir,
        "url-safe",
        kata_value
            .trim()
            .replace('+', "-")
            .replace('/', "_")
            .as_bytes(),
    );
    put(
        &dir,
        "unpadded",
        kata_value.trim().trim_end_matches('=').as_bytes(),
    );
    put(&dir, "not-gzip", b"dmVyc2lvbiA9ICIwLjEuMCIK");
    put(&dir, "gzip-magic-only", b"H4sI");
    put(&dir, "bad-char", b"abc*");

    // block_image: images as the host writes them and as others may.
    let dir = mkdir(&out, "block_image");
    for (name, doc) in &docs[..4] {
        put(&dir, name, &image::write(doc));
    }
    put(&dir, "some-content", &image::write(b"some content"));
    let foreign = foreign_image(&kata_doc);
    put(&dir, "go-runtime-gzip", &foreign);
    let mut two_members = image::write(b"");
    let (a, b) = (
        gzip(b"version = \"0.1.0\"\n"),
        gzip(b"algorithm = \"sha256\"\n[data]\n"),
    );
    two_members.truncate(8);
    two_members.extend_from_slice(&((a.len() + b.len()) as u64).to_le_bytes());
    two_members.extend_from_slice(&a);
    two_members.extend_from_slice(&b);
    two_members.resize(512, 0);
    put(&dir, "two-gzip-members", &two_members);
    let mut huge = image::write(b"doc");
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    put(&dir, "declared-huge", &huge);
    put(&dir, "short", b"initdat");

    // frame: a control byte (how the stream is cut into reads), then frames.
    let dir = mkdir(&out, "frame");
    let requests = requests();
    let guest = guest_frames();
    for (i, r) in requests.iter().enumerate() {
        put(
            &dir,
            &format!("request-{i:02}"),
            &[&[0u8][..], &frame(r)].concat(),
        );
    }
    for (i, g) in guest.iter().enumerate() {
        put(
            &dir,
            &format!("guest-{i:02}"),
            &[&[0u8][..], &frame(g)].concat(),
        );
    }
    let mut session: Vec<u8> = vec![0x47];
    for r in &requests {
        session.extend(frame(r));
    }
    put(&dir, "all-requests-chunked", &session);
    let mut session: Vec<u8> = vec![0x05];
    for g in &guest {
        session.extend(frame(g));
    }
    put(&dir, "all-guest-frames-chunked", &session);
    let mut mixed = vec![0x13];
    mixed.extend(frame(&requests[0]));
    mixed.extend(&[0, 0, 0, 2, b'{', b'}']);
    mixed.extend(&[0, 0, 0, 0]);
    mixed.extend(&[0, 0, 0, 9, b'n', b'u', b'l', b'l']);
    put(&dir, "empty-and-cut", &mixed);
    let mut lost = vec![0x21];
    lost.extend(frame(&guest[0]));
    lost.extend(&u32::MAX.to_be_bytes());
    lost.extend(frame(&requests[1]));
    put(&dir, "lost-sync", &lost);
    let mut no_id = vec![0];
    no_id.extend(frame_json(
        br#"{"id":9,"request":{"op":"from_the_future"}}"#,
    ));
    no_id.extend(frame_json(br#"{"request":{"op":"start","id":"c"}}"#));
    put(&dir, "unknown-op", &no_id);
}

fn mkdir(out: &Path, target: &str) -> PathBuf {
    let dir = out.join(target);
    fs::create_dir_all(&dir).expect("create the seed directory");
    dir
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// An image whose gzip header differs from ours (mtime set, OS byte 3), as Kata's Go runtime
/// writes it.
fn foreign_image(doc: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(1_700_000_000)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::fast());
    enc.write_all(doc).expect("gzip into memory");
    let gz = enc.finish().expect("gzip into memory");
    let mut img = image::MAGIC.to_vec();
    img.extend_from_slice(&(gz.len() as u64).to_le_bytes());
    img.extend_from_slice(&gz);
    img.resize(img.len().next_multiple_of(image::SECTOR), 0);
    img
}

fn frame<T: serde::Serialize>(message: &T) -> Vec<u8> {
    encode(message).expect("seed frames encode")
}

fn frame_json(json: &[u8]) -> Vec<u8> {
    let mut f = (json.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(json);
    f
}

fn process() -> Process {
    Process {
        args: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 1000,
        gid: 1000,
        additional_gids: vec![10],
        terminal: true,
        stdin: true,
        capabilities: Some(Capabilities {
            bounding: vec!["CAP_KILL".into()],
            effective: vec!["CAP_KILL".into()],
            ..Default::default()
        }),
        no_new_privileges: true,
        rlimits: vec![Rlimit {
            kind: "RLIMIT_NOFILE".into(),
            hard: 1024,
            soft: 1024,
        }],
        seccomp: Some(Seccomp {
            default_action: "SCMP_ACT_ERRNO".into(),
            default_errno_ret: Some(1),
            architectures: vec!["SCMP_ARCH_X86_64".into()],
            flags: vec![],
            syscalls: vec![SeccompSyscall {
                names: vec!["clone".into()],
                action: "SCMP_ACT_ALLOW".into(),
                errno_ret: None,
                args: vec![SeccompArg {
                    index: 0,
                    value: 2_114_060_288,
                    value_two: 0,
                    op: "SCMP_CMP_MASKED_EQ".into(),
                }],
            }],
        }),
    }
}

fn requests() -> Vec<RequestFrame> {
    let ip = |s: &str| s.parse().expect("an address");
    let ops = vec![
        Request::Hello {
            protocol_version: PROTOCOL_VERSION,
        },
        Request::CreateContainer(CreateContainer {
            id: "c1".into(),
            rootfs: Some("c1/rootfs".into()),
            image: None,
            hostname: Some("pod".into()),
            process: process(),
            files: vec![ContainerFile {
                path: "/etc/hosts".into(),
                data: b"127.0.0.1 localhost\n".to_vec(),
                readonly: true,
            }],
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            readonly_root: true,
            oci: Default::default(),
            resources: None,
        }),
        Request::Start { id: "c1".into() },
        Request::Exec {
            id: "c1".into(),
            exec_id: "e1".into(),
            process: Process {
                args: vec!["ls".into()],
                ..Default::default()
            },
        },
        Request::Wait {
            id: "c1".into(),
            exec_id: Some("e1".into()),
        },
        Request::Signal {
            id: "c1".into(),
            exec_id: None,
            signal: 15,
        },
        Request::Remove { id: "c1".into() },
        Request::ReadFile {
            path: "aa.toml".into(),
        },
        Request::Shutdown,
        Request::WriteStdin {
            id: "c1".into(),
            exec_id: Some("e1".into()),
            data: b"ls\n".to_vec(),
        },
        Request::CloseStdin {
            id: "c1".into(),
            exec_id: None,
        },
        Request::ResizePty {
            id: "c1".into(),
            exec_id: Some("e1".into()),
            width: 80,
            height: 24,
        },
        Request::UpdateInterface {
            interface: Interface {
                name: "eth0".into(),
                hw_addr: "02:00:00:00:00:01".into(),
                mtu: 1500,
                ip_addresses: vec![
                    IpAddress {
                        address: ip("10.88.0.2"),
                        prefix_len: 16,
                    },
                    IpAddress {
                        address: ip("fd00::2"),
                        prefix_len: 64,
                    },
                ],
            },
        },
        Request::UpdateRoutes {
            routes: vec![
                Route {
                    dest: Some(IpAddress {
                        address: ip("10.88.0.0"),
                        prefix_len: 16,
                    }),
                    gateway: None,
                    source: Some(ip("10.88.0.2")),
                    device: "eth0".into(),
                    scope: 253,
                },
                Route {
                    dest: None,
                    gateway: Some(ip("10.88.0.1")),
                    source: None,
                    device: "eth0".into(),
                    scope: 0,
                },
            ],
        },
        Request::AddArpNeighbors {
            neighbors: vec![ArpNeighbor {
                address: ip("10.88.0.1"),
                lladdr: "02:00:00:00:00:fe".into(),
                device: "eth0".into(),
            }],
        },
    ];
    ops.into_iter()
        .enumerate()
        .map(|(i, request)| RequestFrame {
            id: i as u64 + 1,
            request,
        })
        .collect()
}

fn guest_frames() -> Vec<GuestFrame> {
    let ok = |id, r| GuestFrame::Response {
        id,
        outcome: Outcome::Ok(r),
    };
    let report = |verification, policy| InitDataReport {
        tee: Tee::Snp,
        digest: Some("ab".repeat(32)),
        algorithm: Some("sha256".into()),
        verification,
        files: vec!["aa.toml".into(), "policy.rego".into()],
        services: vec![Service {
            name: "attestation-agent".into(),
            pid: Some(42),
            note: None,
        }],
        component_failure: None,
        warnings: vec!["unknown key".into()],
        policy,
    };
    vec![
        ok(
            1,
            Response::Hello(Box::new(Hello {
                agent_version: "0.1.0".into(),
                protocol_version: PROTOCOL_VERSION,
                initdata: report(
                    Verification::Verified {
                        tee: Tee::Snp,
                        register: "cd".repeat(32),
                    },
                    PolicyStatus::Enforced { rules: 37 },
                ),
            })),
        ),
        ok(
            1,
            Response::Hello(Box::new(Hello {
                agent_version: "0.1.0".into(),
                protocol_version: PROTOCOL_VERSION,
                initdata: report(
                    Verification::Mismatch {
                        source: "HOST_DATA".into(),
                        expected: "00".into(),
                        found: "11".into(),
                    },
                    PolicyStatus::Invalid {
                        reason: "parse error".into(),
                    },
                ),
            })),
        ),
        ok(
            1,
            Response::Hello(Box::new(Hello {
                agent_version: "0.1.0".into(),
                protocol_version: PROTOCOL_VERSION,
                initdata: InitDataReport {
                    verification: Verification::Unmeasured {
                        matches_cmdline: true,
                    },
                    ..Default::default()
                },
            })),
        ),
        ok(2, Response::Ok),
        ok(3, Response::Started { pid: 7 }),
        ok(
            4,
            Response::Exited {
                status: ExitStatus {
                    code: 137,
                    signal: Some(9),
                },
            },
        ),
        ok(
            5,
            Response::File {
                data: b"[token_configs]\n".to_vec(),
            },
        ),
        GuestFrame::Response {
            id: 6,
            outcome: Outcome::Err(GuestError::new(ErrorKind::NotFound, "no container c9")),
        },
        GuestFrame::Response {
            id: 7,
            outcome: Outcome::Err(GuestError::new(
                ErrorKind::PermissionDenied,
                "CreateContainerRequest is blocked by policy",
            )),
        },
        GuestFrame::Event {
            event: Event::Output {
                id: "c1".into(),
                exec_id: Some("e1".into()),
                stream: Stream::Stderr,
                data: b"hello\n".to_vec(),
            },
        },
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
        ok(
            8,
            Response::Hello(Box::new(Hello {
                agent_version: "0.1.0".into(),
                protocol_version: PROTOCOL_VERSION,
                initdata: InitDataReport {
                    tee: Tee::Tdx,
                    verification: Verification::Error {
                        reason: "no disk".into(),
                    },
                    ..Default::default()
                },
            })),
        ),
    ]
}
