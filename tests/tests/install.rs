//! packaging/install.sh against a private containerd (never the machine's own): install
//! registers the Coffer handlers without touching any other setting, containerd loads them and
//! runs the installed shim, a second install changes nothing, and `--uninstall` leaves the
//! containerd config byte for byte as it was and removes every file the install added.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coffer_initdata::annotation::ANNOTATION;
use coffer_tests::registry::{self, GuestImages};
use coffer_tests::tools::{self, Coffer};
use coffer_tests::{skip, Container, Driver, Options, Pod, PrivateContainerd};
use serde_json::Value;

const HANDLERS: [&str; 3] = ["coffer-qemu", "coffer-qemu-tdx", "coffer-qemu-snp"];
/// The Init-Data keys, and Kata's policy annotation (passed so the shim can refuse it).
const POD_ANNOTATIONS: [&str; 3] = [
    "io.katacontainers.config.hypervisor.cc_init_data",
    "io.katacontainers.config.runtime.cc_init_data",
    "io.katacontainers.config.agent.policy",
];

fn install_sh(args: &[&Path], extra: &[&str]) -> std::process::Output {
    let script = tools::workspace().join("packaging/install.sh");
    let mut cmd = Command::new(&script);
    cmd.args(args).args(extra);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "install.sh {:?} {extra:?} failed ({}):\n{}{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The CRI plugin's effective configuration, as `crictl info` shows it.
fn cri_config(ctd: &PrivateContainerd) -> Value {
    let mut cri = ctd.cri().expect("connect to the private containerd");
    let status = cri.status(true).expect("Status");
    let config = status
        .info
        .get("config")
        .unwrap_or_else(|| panic!("Status verbose has no config: {:?}", status.info.keys()));
    serde_json::from_str(config).expect("the CRI config is JSON")
}

/// containerd's CRI config lists each handler as install.sh under `prefix` registered it.
fn assert_handlers_loaded(config: &Value, prefix: &Path) {
    let shim = prefix.join("bin/containerd-shim-coffer-v2");
    for h in HANDLERS {
        let rt = &config["containerd"]["runtimes"][h];
        assert_eq!(rt["runtimeType"], "io.containerd.coffer.v2", "{h}: {rt}");
        assert_eq!(
            rt["runtimePath"],
            shim.to_string_lossy().as_ref(),
            "{h}: {rt}"
        );
        // containerd 1.6 spells this key "PodAnnotations" in its JSON, later ones camelCase.
        let annotations = rt.get("podAnnotations").unwrap_or(&rt["PodAnnotations"]);
        assert_eq!(
            annotations,
            &serde_json::json!(POD_ANNOTATIONS),
            "{h}: {rt}"
        );
        assert_eq!(
            rt["options"]["ConfigPath"],
            prefix
                .join(format!("etc/coffer/{h}.toml"))
                .to_string_lossy()
                .as_ref(),
            "{h}: {rt}"
        );
    }
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn install_registers_the_handlers_and_uninstall_restores_the_config() {
    if let Some(reason) = tools::containerd_missing() {
        return skip(reason);
    }
    let bin = match tools::bin_dir() {
        Ok(b) => b,
        Err(reason) => return skip(reason),
    };
    let guest = tools::guest_dir().ok();
    let mut ctd = PrivateContainerd::start_with(&Options {
        runc_only: true,
        ..Options::default()
    })
    .expect("the private containerd starts");

    let config_before = cri_config(&ctd);
    for h in HANDLERS {
        assert!(
            config_before["containerd"]["runtimes"].get(h).is_none(),
            "{h} registered before the install"
        );
    }

    ctd.stop_containerd().expect("stop containerd");
    let config_file = ctd.config_path();
    let before = std::fs::read(&config_file).expect("read the containerd config");
    let prefix = ctd.dir().join("prefix");
    let state_dir = ctd.dir().join("installed-state");
    let guest_dir = guest.clone().unwrap_or_else(|| ctd.dir().join("no-guest"));
    let args: [&Path; 10] = [
        Path::new("--prefix"),
        &prefix,
        Path::new("--containerd-config"),
        &config_file,
        Path::new("--state-dir"),
        &state_dir,
        Path::new("--bin-dir"),
        &bin,
        Path::new("--guest-dir"),
        &guest_dir,
    ];
    install_sh(&args, &[]);

    // The binaries and configs are in place, with this install's paths.
    let shim = prefix.join("bin/containerd-shim-coffer-v2");
    assert_eq!(
        std::fs::read(&shim).expect("installed shim"),
        std::fs::read(bin.join(tools::SHIM)).expect("built shim")
    );
    assert!(prefix.join("bin/coffer").is_file());
    for h in HANDLERS {
        let text = std::fs::read_to_string(prefix.join(format!("etc/coffer/{h}.toml")))
            .expect("installed handler config");
        assert!(
            text.contains(&format!("state_dir = \"{}\"", state_dir.display())),
            "{h}.toml: {text}"
        );
        let kernel = if h == "coffer-qemu" {
            "vmlinux"
        } else {
            "vmlinuz"
        };
        assert!(
            text.contains(&format!(
                "kernel = \"{}\"",
                prefix.join("share/coffer/guest").join(kernel).display()
            )),
            "{h}.toml: {text}"
        );
    }

    // The config gained the handler tables and nothing else changed.
    let after = std::fs::read(&config_file).expect("read the containerd config");
    assert!(
        after.starts_with(&before),
        "install.sh changed existing bytes of the config"
    );
    let installed_tree = tree(ctd.dir());

    // Idempotent: a second install changes no byte anywhere.
    install_sh(&args, &[]);
    assert_eq!(std::fs::read(&config_file).expect("config"), after);
    assert_eq!(tree(ctd.dir()), installed_tree);

    // containerd loads the handlers, keeps every other setting, and runs the installed shim.
    ctd.restart()
        .expect("containerd restarts with the edited config");
    let config = cri_config(&ctd);
    assert_eq!(config["sandboxImage"], "localhost/coffer/pause:latest");
    assert_eq!(config["restrictOOMScoreAdj"], true);
    assert_eq!(
        config["containerd"]["runtimes"]["runc"]["runtimeType"],
        "io.containerd.runc.v2"
    );
    assert_handlers_loaded(&config, &prefix);
    let no_pod = match &guest {
        None => Some("no guest image".to_owned()),
        Some(_) => registry::missing(),
    };
    if let Some(reason) = &no_pod {
        skip(format!(
            "{reason}: not starting a pod on the installed handlers"
        ));
    } else {
        // A pod on the installed coffer-qemu handler runs, with the installed guest image,
        // pulling its image in the guest (the packaged default) from a registry on the pod
        // network that its Init-Data names.
        let images = GuestImages::start(&ctd).unwrap_or_else(|e| panic!("the registry: {e}"));
        let coffer = Coffer::in_dir(&prefix.join("bin"));
        let seed = std::fs::read_to_string(tools::seed_initdata()).expect("the seed document");
        let doc = ctd.scratch().join("installed.toml");
        std::fs::create_dir_all(ctd.scratch()).expect("scratch");
        std::fs::write(&doc, images.initdata(&seed).expect("the seed's cdh.toml"))
            .expect("write the Init-Data");
        let annotation = coffer
            .encode(&doc)
            .expect("installed coffer initdata encode");
        let mut cri = ctd.cri().expect("connect");
        let pod = Pod::new("installed", "coffer-qemu", &ctd.log_root())
            .annotation(ANNOTATION, &annotation);
        let pod_id = cri
            .run_pod_sandbox(&pod)
            .expect("RunPodSandbox on coffer-qemu");
        let line = "hello from the installed handler";
        let mut container = Container::busybox_sh("main", &format!("echo '{line}'"));
        container.image = images.busybox.clone();
        let id = cri
            .create_container(&pod_id, &pod, &container)
            .expect("CreateContainer");
        cri.start_container(&id).expect("StartContainer");
        let code = cri
            .wait_exited(&id, Duration::from_secs(120))
            .expect("the container exits");
        assert_eq!(code, 0);
        assert_eq!(
            cri.read_log(&id).expect("the CRI log"),
            vec![line.to_owned()]
        );
        cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
        cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");

        // The TDX handler reaches the installed shim, which reads the installed config
        // (tee = "tdx") and refuses before starting anything on this host.
        let annotation = coffer
            .encode(&tools::seed_initdata())
            .expect("installed coffer initdata encode");
        let mut cri = ctd.cri().expect("connect");
        let pod = Pod::new("installed-tdx", "coffer-qemu-tdx", &ctd.log_root())
            .annotation(ANNOTATION, &annotation);
        let err = cri
            .run_pod_sandbox(&pod)
            .expect_err("a TDX pod started on a host without TDX");
        assert!(
            err.message()
                .contains("this host cannot launch TDX guests: "),
            "{}",
            err.message()
        );
    }

    // Uninstall: the config is byte-equal to before, and the install's files are gone.
    ctd.stop_containerd().expect("stop containerd");
    install_sh(&args[..4], &["--uninstall"]);
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&config_file).expect("config")),
        String::from_utf8_lossy(&before),
        "the config after --uninstall differs from before the install"
    );
    assert!(!prefix.exists(), "left behind: {:?}", tree(&prefix));
    // Uninstalling again is a no-op.
    install_sh(&args[..4], &["--uninstall"]);

    ctd.restart()
        .expect("containerd restarts with the restored config");
    let config = cri_config(&ctd);
    for h in HANDLERS {
        assert!(
            config["containerd"]["runtimes"].get(h).is_none(),
            "{h} still registered"
        );
    }
}

/// containerd 2.x takes the handlers as a version 3 drop-in listed first in `imports`, before the
/// entries already there; checked on the files install.sh writes (a real 2.x loads them in
/// `install_on_containerd_2_writes_a_drop_in_and_uninstall_restores_the_config`).
#[test]
fn containerd_2_gets_a_drop_in_listed_in_imports() {
    let bin = match tools::bin_dir() {
        Ok(b) => b,
        Err(reason) => return skip(reason),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let etc = dir.path().join("etc/containerd");
    std::fs::create_dir_all(&etc).expect("mkdir");
    let config_file = etc.join("config.toml");
    let before = "version = 3\nimports = [\"/etc/containerd/other.toml\"]\n\n\
                  [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  \
                  sandbox = \"registry.example/pause:3.10\"\n";
    std::fs::write(&config_file, before).expect("write config");
    let prefix = dir.path().join("prefix");
    let args: [&Path; 8] = [
        Path::new("--prefix"),
        &prefix,
        Path::new("--containerd-config"),
        &config_file,
        Path::new("--bin-dir"),
        &bin,
        Path::new("--containerd-version"),
        Path::new("2.1.4"),
    ];
    install_sh(&args, &[]);

    let dropin = etc.join("conf.d/coffer.toml");
    let config: toml::Table = std::fs::read_to_string(&config_file)
        .expect("config")
        .parse()
        .expect("the edited config is TOML");
    assert_eq!(
        config["imports"],
        toml::Value::Array(vec![
            dropin.to_string_lossy().into_owned().into(),
            "/etc/containerd/other.toml".into()
        ])
    );
    assert_eq!(
        config["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
        Some("registry.example/pause:3.10")
    );
    let d: toml::Table = std::fs::read_to_string(&dropin)
        .expect("drop-in")
        .parse()
        .expect("the drop-in is TOML");
    assert_eq!(d["version"].as_integer(), Some(3));
    for h in HANDLERS {
        let rt = &d["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"][h];
        assert_eq!(rt["runtime_type"].as_str(), Some("io.containerd.coffer.v2"));
        assert_eq!(
            rt["runtime_path"].as_str(),
            Some(
                prefix
                    .join("bin/containerd-shim-coffer-v2")
                    .to_string_lossy()
                    .as_ref()
            )
        );
        assert_eq!(
            rt["options"]["ConfigPath"].as_str(),
            Some(
                prefix
                    .join(format!("etc/coffer/{h}.toml"))
                    .to_string_lossy()
                    .as_ref()
            )
        );
        let keys: Vec<&str> = rt["pod_annotations"]
            .as_array()
            .expect("pod_annotations")
            .iter()
            .filter_map(toml::Value::as_str)
            .collect();
        assert_eq!(keys, POD_ANNOTATIONS);
    }

    install_sh(&args[..4], &["--uninstall"]);
    assert_eq!(
        std::fs::read_to_string(&config_file).expect("config"),
        before
    );
    assert!(!dropin.exists() && !etc.join("conf.d").exists());
    assert!(!prefix.exists());
}

/// install.sh on a real containerd of another version (`tools::other_containerd`), on the
/// private containerd's own config in that version's native format: 1.x gets the handler tables
/// appended to the config, 2.x a version 3 drop-in listed first in `imports`. containerd then
/// lists the handlers in its CRI config; --uninstall gives back the config byte for byte and
/// containerd lists them no more.
fn install_on_containerd(folder: &str, drop_in: bool) {
    if let Some(reason) = tools::containerd_missing() {
        return skip(reason);
    }
    let bin = match tools::bin_dir() {
        Ok(b) => b,
        Err(reason) => return skip(reason),
    };
    let containerd = match tools::other_containerd(folder) {
        Ok(c) => c,
        Err(reason) => return skip(reason),
    };
    let version = tools::containerd_version(&containerd).unwrap_or_else(|e| panic!("{e}"));
    let mut ctd = PrivateContainerd::start_with(&Options {
        runc_only: true,
        containerd: Some(containerd),
        ..Options::default()
    })
    .expect("the private containerd starts");
    for h in HANDLERS {
        assert!(
            cri_config(&ctd)["containerd"]["runtimes"].get(h).is_none(),
            "{h} registered before the install"
        );
    }

    ctd.stop_containerd().expect("stop containerd");
    let config_file = ctd.config_path();
    let before = std::fs::read(&config_file).expect("read the containerd config");
    let prefix = ctd.dir().join("prefix");
    let no_guest = ctd.dir().join("no-guest");
    let version_arg = PathBuf::from(&version);
    let args: [&Path; 10] = [
        Path::new("--prefix"),
        &prefix,
        Path::new("--containerd-config"),
        &config_file,
        Path::new("--bin-dir"),
        &bin,
        Path::new("--guest-dir"),
        &no_guest,
        Path::new("--containerd-version"),
        &version_arg,
    ];
    install_sh(&args, &[]);

    let after = std::fs::read_to_string(&config_file).expect("read the containerd config");
    let dropin = ctd.dir().join("conf.d/coffer.toml");
    if drop_in {
        let config: toml::Table = after.parse().expect("the edited config is TOML");
        assert_eq!(config["version"].as_integer(), Some(3));
        assert_eq!(
            config["imports"],
            toml::Value::Array(vec![dropin.to_string_lossy().into_owned().into()])
        );
        let d: toml::Table = std::fs::read_to_string(&dropin)
            .expect("the drop-in")
            .parse()
            .expect("the drop-in is TOML");
        assert_eq!(d["version"].as_integer(), Some(3));
        assert!(
            d["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
                .get("coffer-qemu")
                .is_some(),
            "the drop-in has no coffer-qemu: {d}"
        );
    } else {
        assert!(
            after.as_bytes().starts_with(&before),
            "install.sh changed existing bytes of the config"
        );
        assert!(!dropin.exists(), "a drop-in for containerd {version}");
    }

    ctd.restart()
        .expect("containerd restarts with the edited config");
    assert!(
        !ctd.containerd_log().to_lowercase().contains("migrat"),
        "containerd {version} migrated its config:\n{}",
        ctd.containerd_log_tail(20)
    );
    let config = cri_config(&ctd);
    assert_eq!(
        config["containerd"]["runtimes"]["runc"]["runtimeType"],
        "io.containerd.runc.v2"
    );
    assert_handlers_loaded(&config, &prefix);

    ctd.stop_containerd().expect("stop containerd");
    install_sh(&args[..4], &["--uninstall"]);
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&config_file).expect("config")),
        String::from_utf8_lossy(&before),
        "the config after --uninstall differs from before the install"
    );
    assert!(!dropin.exists() && !ctd.dir().join("conf.d").exists());
    assert!(!prefix.exists(), "left behind: {:?}", tree(&prefix));

    ctd.restart()
        .expect("containerd restarts with the restored config");
    let config = cri_config(&ctd);
    for h in HANDLERS {
        assert!(
            config["containerd"]["runtimes"].get(h).is_none(),
            "{h} still registered"
        );
    }
}

#[test]
fn install_on_containerd_1_7_appends_the_handlers_and_uninstall_restores_the_config() {
    install_on_containerd("1.7", false);
}

#[test]
fn install_on_containerd_2_writes_a_drop_in_and_uninstall_restores_the_config() {
    install_on_containerd("2.x", true);
}

/// The packaged per-handler configs name the TEE their handler is for and the default paths
/// install.sh and up.sh rewrite.
#[test]
fn packaged_handler_configs_match_their_handlers() {
    for (h, tee) in [
        ("coffer-qemu", "none"),
        ("coffer-qemu-tdx", "tdx"),
        ("coffer-qemu-snp", "snp"),
    ] {
        let path = tools::workspace().join(format!("packaging/config/{h}.toml"));
        let c: toml::Table = std::fs::read_to_string(&path)
            .expect("packaged config")
            .parse()
            .expect("packaged config is TOML");
        assert_eq!(c["tee"].as_str(), Some(tee), "{}", path.display());
        assert_eq!(c["state_dir"].as_str(), Some("/run/coffer"));
        // The plain handler boots the uncompressed kernel through qboot (PVH); a TEE's firmware
        // boots the bzImage.
        let (kernel, firmware) = match tee {
            "none" => ("vmlinux", Some("/usr/share/qemu/qboot.rom")),
            _ => ("vmlinuz", None),
        };
        assert_eq!(
            c["vm"]["kernel"].as_str(),
            Some(format!("/usr/local/share/coffer/guest/{kernel}").as_str()),
            "{h}"
        );
        assert_eq!(
            c["vm"].get("firmware").and_then(|f| f.as_str()),
            firmware,
            "{h}"
        );
        assert_eq!(
            c["vm"]["initrd"].as_str(),
            Some("/usr/local/share/coffer/guest/initrd.img")
        );
        // Pods on a TEE handler must be measured with their own Init-Data.
        assert_eq!(c["required"].as_bool(), Some(tee != "none"), "{h}");
    }
}

/// The value of `key: "value"` on the first line of `text` holding `key`.
fn yaml_string(text: &str, key: &str) -> Option<String> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    let value = line.trim_start()[key.len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim();
    Some(value.trim_matches('"').to_owned())
}

/// The example pod carries exactly the Init-Data example, encoded as `coffer initdata encode`
/// encodes it, and quotes the TDX reference value `coffer initdata digest` prints.
#[test]
fn kubernetes_example_pod_carries_the_encoded_example() {
    let dir = tools::workspace().join("packaging/kubernetes");
    let pod = std::fs::read_to_string(dir.join("example-pod.yaml")).expect("example-pod.yaml");
    assert_eq!(
        yaml_string(&pod, "runtimeClassName").as_deref(),
        Some("coffer-qemu-tdx")
    );
    let value = yaml_string(&pod, ANNOTATION).expect("the Init-Data annotation");
    let example = tools::seed_initdata();
    let document = std::fs::read(&example).expect("the Init-Data example");
    let decoded =
        coffer_initdata::annotation::decode_bytes(&value, &coffer_initdata::Limits::default())
            .expect("the annotation decodes");
    assert_eq!(
        decoded, document,
        "the annotation is not the example document"
    );

    let Ok(bin) = tools::bin_dir() else {
        return skip("no coffer CLI built: not comparing with `coffer initdata encode`");
    };
    let coffer = Coffer::in_dir(&bin);
    assert_eq!(
        coffer.encode(&example).expect("coffer initdata encode"),
        value
    );
    let digest = coffer
        .digest(&example, "tdx")
        .expect("coffer initdata digest");
    assert!(
        pod.contains(&digest),
        "the pod's comment lacks the TDX reference value {digest}"
    );
}

/// One RuntimeClass per handler, with its overhead and a TEE node selector.
#[test]
fn kubernetes_runtime_classes_name_the_handlers() {
    let path = tools::workspace().join("packaging/kubernetes/runtimeclasses.yaml");
    let text = std::fs::read_to_string(path).expect("runtimeclasses.yaml");
    let docs: Vec<&str> = text.split("\n---\n").skip(1).collect();
    assert_eq!(docs.len(), HANDLERS.len());
    for (doc, h) in docs.iter().zip(HANDLERS) {
        assert_eq!(yaml_string(doc, "kind").as_deref(), Some("RuntimeClass"));
        assert_eq!(yaml_string(doc, "name").as_deref(), Some(h));
        assert_eq!(yaml_string(doc, "handler").as_deref(), Some(h));
        assert!(
            doc.contains("podFixed:") && doc.contains("memory:"),
            "{h}: no overhead"
        );
        assert_eq!(yaml_string(doc, "coffer/runtime").as_deref(), Some("true"));
        if let Some(tee) = h.strip_prefix("coffer-qemu-") {
            assert_eq!(
                yaml_string(doc, &format!("coffer/tee-{tee}")).as_deref(),
                Some("true"),
                "{h}: no TEE node selector"
            );
        }
    }
}
