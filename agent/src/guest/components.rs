//! The Confidential Containers guest components, started as kata-agent starts them: the
//! attestation agent, then the confidential data hub, then the REST API server, each with
//! kata-agent's flags, and each of the first two waited for until its socket appears. A socket
//! that does not appear in time fails the sandbox: no later component starts, and the guest
//! refuses containers, naming the component.
//!
//! The guest image ships none of them; an operator adds the binaries to `/usr/local/bin` of the
//! image (`COFFER_GUEST_COMPONENTS` of `packaging/guest/build.sh`). Components missing from the
//! image are reported and skipped; the others start in order.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::protocol::{Service, INITDATA_DIR};

/// Where kata-agent looks for the components, and so where an image carries them.
pub const COMPONENT_DIR: &str = "/usr/local/bin";

/// The attestation agent's socket, which kata-agent waits for.
pub const AA_SOCKET: &str = "/run/confidential-containers/attestation-agent/attestation-agent.sock";

/// The confidential data hub's socket, which kata-agent waits for.
pub const CDH_SOCKET: &str = "/run/confidential-containers/cdh.sock";

/// The ocicrypt key-provider configuration the data hub is pointed at.
pub const OCICRYPT_CONFIG: &str = "/etc/ocicrypt_config.json";

/// How long a component's socket may take to appear: kata-agent's default
/// `launch_process_timeout`.
pub const SOCKET_WAIT: Duration = Duration::from_secs(6);

/// The REST API server's features, as kata-agent's default `guest_components_rest_api`.
const REST_API_FEATURES: &str = "resource";

/// One component to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Its binary's name.
    pub name: &'static str,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment additions.
    pub env: Vec<(String, String)>,
    /// The socket to wait for before the next component starts.
    pub socket: Option<&'static str>,
}

/// What kata-agent starts, in order, for a guest whose Init-Data was delivered as `files`
/// under [`INITDATA_DIR`] (`None`: the pod has no Init-Data).
pub fn plan(files: Option<&[String]>) -> Vec<Component> {
    let dir = Path::new(INITDATA_DIR);
    let has = |name: &str| files.is_some_and(|f| f.iter().any(|x| x == name));
    let config = |name: &str| {
        has(name)
            .then(|| ["-c".to_string(), dir.join(name).display().to_string()])
            .into_iter()
            .flatten()
    };
    let mut aa = vec![
        "--attestation_sock".to_string(),
        format!("unix://{AA_SOCKET}"),
    ];
    if files.is_some() {
        aa.extend([
            "--initdata-toml".to_string(),
            dir.join("initdata.toml").display().to_string(),
        ]);
    }
    aa.extend(config("aa.toml"));
    vec![
        Component {
            name: "attestation-agent",
            args: aa,
            env: Vec::new(),
            socket: Some(AA_SOCKET),
        },
        Component {
            name: "confidential-data-hub",
            args: config("cdh.toml").collect(),
            env: vec![(
                "OCICRYPT_KEYPROVIDER_CONFIG".to_string(),
                OCICRYPT_CONFIG.to_string(),
            )],
            socket: Some(CDH_SOCKET),
        },
        Component {
            name: "api-server-rest",
            args: vec!["--features".to_string(), REST_API_FEATURES.to_string()],
            env: Vec::new(),
            socket: None,
        },
    ]
}

/// The components started, or why not; and the failure that ends the sandbox, if one did.
#[derive(Debug, Default)]
pub struct Started {
    /// One entry per component of the plan.
    pub services: Vec<Service>,
    /// Why the sandbox cannot serve containers (a component that did not come up).
    pub failure: Option<String>,
}

/// Starts `plan` from the binaries in `dir`, in order, waiting up to `wait` for each socket.
pub fn start(plan: &[Component], dir: &Path, wait: Duration) -> Started {
    let mut started = Started::default();
    for c in plan {
        let service = |pid: Option<u32>, note: Option<String>| Service {
            name: c.name.into(),
            pid,
            note,
        };
        if started.failure.is_some() {
            started.services.push(service(
                None,
                Some("not started: an earlier component failed".into()),
            ));
            continue;
        }
        let path: PathBuf = dir.join(c.name);
        if !path.is_file() {
            started
                .services
                .push(service(None, Some("not in the guest image".into())));
            continue;
        }
        if let Some(socket) = c.socket {
            // A stale socket would pass the wait below before the component listens.
            let _ = std::fs::remove_file(socket);
        }
        // PID 1 reaps it like any other child; the console gets its output.
        let child = Command::new(&path)
            .args(&c.args)
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .spawn();
        let pid = match child {
            Ok(child) => child.id(),
            Err(e) => {
                let why = format!("{} failed to start: {e}", path.display());
                started.services.push(service(None, Some(why.clone())));
                started.failure = Some(why);
                continue;
            }
        };
        if let Some(socket) = c.socket {
            if !wait_for(Path::new(socket), wait) {
                let why = format!(
                    "{} (pid {pid}) did not create its socket {socket} within {wait:?}",
                    c.name
                );
                started.services.push(service(Some(pid), Some(why.clone())));
                started.failure = Some(why);
                continue;
            }
        }
        started.services.push(service(Some(pid), None));
    }
    started
}

/// Whether `path` exists within `wait`, as kata-agent waits for a component's socket.
fn wait_for(path: &Path, wait: Duration) -> bool {
    let end = Instant::now() + wait;
    loop {
        if path.exists() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_plan_has_kata_agents_order_flags_and_waits() {
        let files = vec![
            "aa.toml".to_string(),
            "cdh.toml".into(),
            "initdata.toml".into(),
        ];
        let p = plan(Some(&files));
        let names: Vec<&str> = p.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "attestation-agent",
                "confidential-data-hub",
                "api-server-rest"
            ]
        );
        assert_eq!(
            p[0].args,
            [
                "--attestation_sock",
                "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock",
                "--initdata-toml",
                "/run/confidential-containers/initdata/initdata.toml",
                "-c",
                "/run/confidential-containers/initdata/aa.toml",
            ]
        );
        assert_eq!(p[0].socket, Some(AA_SOCKET));
        assert_eq!(
            p[1].args,
            ["-c", "/run/confidential-containers/initdata/cdh.toml"]
        );
        assert_eq!(
            p[1].env,
            [(
                "OCICRYPT_KEYPROVIDER_CONFIG".to_string(),
                "/etc/ocicrypt_config.json".to_string()
            )]
        );
        assert_eq!(p[1].socket, Some(CDH_SOCKET));
        assert_eq!(p[2].args, ["--features", "resource"]);
        assert_eq!(p[2].socket, None);

        // Without Init-Data: no --initdata-toml, no configs.
        let bare = plan(None);
        assert_eq!(bare[0].args.len(), 2);
        assert!(bare[1].args.is_empty());
    }

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn component(name: &'static str, socket: Option<&'static str>) -> Component {
        Component {
            name,
            args: vec![],
            env: vec![],
            socket,
        }
    }

    #[test]
    fn components_start_in_order_and_a_missing_socket_stops_the_rest() {
        let bin = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let sock = |n: &str| -> &'static str {
            Box::leak(run.path().join(n).display().to_string().into_boxed_str())
        };
        let (first, second) = (sock("first.sock"), sock("second.sock"));
        script(
            bin.path(),
            "first",
            &format!("touch {first}; exec sleep 30"),
        );
        script(bin.path(), "second", "exec sleep 30");
        let plan = [
            component("first", Some(first)),
            component("absent", None),
            component("second", Some(second)),
            component("third", None),
        ];
        let started = start(&plan, bin.path(), Duration::from_millis(500));
        let kill = |s: &Service| {
            if let Some(pid) = s.pid {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        };
        started.services.iter().for_each(kill);
        assert!(started.services[0].pid.is_some());
        assert_eq!(started.services[0].note, None);
        assert_eq!(
            started.services[1].note.as_deref(),
            Some("not in the guest image")
        );
        let failure = started.failure.expect("second never makes its socket");
        assert!(
            failure.starts_with("second (pid ")
                && failure.ends_with(&format!("did not create its socket {second} within 500ms")),
            "{failure}"
        );
        assert_eq!(started.services[2].note.as_deref(), Some(failure.as_str()));
        assert_eq!(
            started.services[3].note.as_deref(),
            Some("not started: an earlier component failed")
        );
    }
}
