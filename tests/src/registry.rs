//! A real OCI registry for one test: Debian's `docker-registry` (distribution) in a network
//! namespace of its own, attached to the private containerd's CNI bridge like a pod, at the
//! bridge subnet's `.250` (outside host-local's allocations in practice, and never a host
//! address). Images are loaded with `skopeo` from the OCI layouts `packaging/dev/images.sh`
//! made. Everything goes when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::up_env;
use crate::PrivateContainerd;

/// The registry's port inside its namespace.
pub const PORT: u16 = 5000;

/// How long the registry may take to answer after it was started.
const START_WAIT: Duration = Duration::from_secs(60);

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    netns: String,
    veth: String,
    ip: String,
    dir: PathBuf,
    child: Option<Child>,
}

/// What the registry needs that may be missing here.
pub fn missing() -> Option<String> {
    for tool in ["docker-registry", "skopeo", "ip", "nsenter"] {
        if crate::tools::on_path(tool).is_none() {
            return Some(format!(
                "{tool} not found (packaging/dev/deps.sh installs docker-registry and skopeo)"
            ));
        }
    }
    None
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Registry {
    /// Starts a registry on `ctd`'s pod bridge.
    pub fn start(ctd: &PrivateContainerd) -> Result<Registry, String> {
        Registry::start_in(ctd.dir())
    }

    /// Starts a registry on the pod bridge of the private containerd up.sh made in `dir`.
    pub fn start_in(dir: &Path) -> Result<Registry, String> {
        let bridge = up_env(dir, "BRIDGE")?;
        let subnet = up_env(dir, "SUBNET")?;
        let base = subnet
            .strip_suffix(".0/24")
            .ok_or_else(|| format!("subnet {subnet} is not a /24"))?;
        let ip = format!("{base}.250");
        let tag = bridge.trim_start_matches("cf");
        let mut registry = Registry {
            netns: format!("cfreg{tag}"),
            veth: format!("vr{tag}"),
            ip,
            dir: dir.join("registry"),
            child: None,
        };
        // The CNI plugin makes the bridge with the first pod; the registry comes first, so the
        // bridge may have to be made here (the plugin adopts it, down.sh deletes it).
        if run("ip", &["link", "show", &bridge]).is_err() {
            run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        }
        run("ip", &["link", "set", &bridge, "up"])?;
        run("ip", &["netns", "add", &registry.netns])?;
        let ns = registry.netns.clone();
        run(
            "ip",
            &[
                "link",
                "add",
                &registry.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &registry.veth, "master", &bridge, "up"],
        )?;
        let cidr = format!("{}/24", registry.ip);
        for args in [
            vec!["addr", "add", cidr.as_str(), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend(args);
            run("ip", &full)?;
        }
        std::fs::create_dir_all(registry.dir.join("data"))
            .map_err(|e| format!("registry dir: {e}"))?;
        let config = registry.dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 0.0.0.0:{PORT}\n",
                registry.dir.join("data").display()
            ),
        )
        .map_err(|e| format!("registry config: {e}"))?;
        let log = std::fs::File::create(registry.dir.join("registry.log"))
            .map_err(|e| format!("registry log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting docker-registry: {e}"))?;
        registry.child = Some(child);
        Ok(registry)
    }

    /// `host:port` of the registry, as image references name it.
    pub fn host(&self) -> String {
        format!("{}:{PORT}", self.ip)
    }

    /// Copies the OCI layout tar `layout` into the registry as `name` (`repo:tag`); returns
    /// the full reference. Retried while the registry is starting.
    pub fn load(&self, layout: &Path, name: &str) -> Result<String, String> {
        let source = format!("oci-archive:{}", layout.display());
        // From inside the registry's namespace: the copy never leaves it.
        let dest = format!("docker://127.0.0.1:{PORT}/{name}");
        let end = Instant::now() + START_WAIT;
        loop {
            match run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.netns,
                    "skopeo",
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    &source,
                    &dest,
                ],
            ) {
                Ok(_) => return Ok(format!("{}/{name}", self.host())),
                Err(e) if Instant::now() > end => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Where the registry keeps the blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// Stops the registry process; its address stays, and refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the registry: the child is the registry itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Where the registry keeps the repository `name` (its manifests and tags).
    pub fn repository_path(&self, name: &str) -> PathBuf {
        self.dir
            .join("data/docker/registry/v2/repositories")
            .join(name)
    }

    /// The registry's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // The veth pair goes with the namespace.
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = run("ip", &["link", "del", &self.veth]);
    }
}

/// The test images in a [`Registry`] on the pod network, known to containerd by the same names
/// (the CRI checks that a container's image exists before it creates the container), and the
/// Init-Data that points a guest at that registry.
#[derive(Debug)]
pub struct GuestImages {
    /// The private containerd's directory.
    dir: PathBuf,
    /// The registry serving them.
    pub registry: Registry,
    /// busybox (`<registry>/busybox:latest`), from the layout [`crate::BUSYBOX_IMAGE`] came from.
    pub busybox: String,
    /// Another image (`<registry>/other:latest`, the pause image): containerd names a
    /// container's image by the first of its image's references, so a second name of busybox
    /// would be indistinguishable in the container's spec.
    pub other: String,
}

impl GuestImages {
    /// Starts a registry on `ctd`'s pod bridge and loads the images.
    pub fn start(ctd: &PrivateContainerd) -> Result<GuestImages, String> {
        GuestImages::start_in(ctd.dir())
    }

    /// As [`GuestImages::start`], for the private containerd up.sh made in `dir`.
    pub fn start_in(dir: &Path) -> Result<GuestImages, String> {
        let registry = Registry::start_in(dir)?;
        let load = |layout: &str, name: &str| {
            registry
                .load(&dir.join("images").join(layout), name)
                .map_err(|e| format!("loading {name} into the registry: {e}\n{}", registry.log()))
        };
        let busybox = load("busybox.oci.tar", "busybox:latest")?;
        let other = load("pause.oci.tar", "other:latest")?;
        let images = GuestImages {
            dir: dir.to_owned(),
            registry,
            busybox,
            other,
        };
        images.tag(crate::BUSYBOX_IMAGE, &images.busybox)?;
        images.tag("localhost/coffer/pause:latest", &images.other)?;
        Ok(images)
    }

    /// Gives containerd's image `local` the name `name` too.
    pub fn tag(&self, local: &str, name: &str) -> Result<(), String> {
        let ctr = up_env(&self.dir, "CTR")?;
        let sock = up_env(&self.dir, "SOCK")?;
        run(
            &ctr,
            &[
                "--address",
                &sock,
                "-n",
                "k8s.io",
                "images",
                "tag",
                local,
                name,
            ],
        )
        .map(drop)
    }

    /// The Init-Data document `doc` with its data hub told to pull from this registry over
    /// plain HTTP, as Confidential Containers' image-rs reads it: `cdh.toml`'s `[image]` names
    /// a `registries.conf` delivered beside it. `doc` must have a `"cdh.toml"` entry (the seed
    /// document has one).
    pub fn initdata(&self, doc: &str) -> Result<String, String> {
        const CDH: &str = "\"cdh.toml\" = '''\n";
        if !doc.contains(CDH) {
            return Err("the Init-Data has no \"cdh.toml\" = ''' entry to extend".into());
        }
        let mut doc = doc.replace(
            CDH,
            &format!("{CDH}[image]\nregistry_configuration_uri = \"file:///run/confidential-containers/initdata/registries.conf\"\n"),
        );
        doc.push_str(&format!(
            "\"registries.conf\" = '''\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n'''\n",
            self.registry.host()
        ));
        Ok(doc)
    }
}
