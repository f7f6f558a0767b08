//! `coffer containerd-config {register,unregister}`: Coffer's runtime handlers in containerd's
//! configuration, added without changing any other byte and taken out again exactly.
//!
//! Where the handler tables go:
//! - containerd 1.6/1.7 (configuration version 2): appended to the configuration itself, between
//!   marker comments. containerd 1.x merges an imported file by whole plugin sections, so a
//!   drop-in would replace the configuration's CRI settings (sandbox image, CNI, runc options).
//! - containerd 2.x: into a drop-in (by default `conf.d/coffer.toml` beside the configuration,
//!   in the configuration's own version 2 or 3 layout) listed first in the configuration's
//!   top-level `imports`, which containerd 2.x merges key by key. Without an `imports` key, the
//!   line `imports = ["<drop-in>"]` goes right after the `version` line.
//!
//! How `unregister` gives back the original bytes: the configuration is parsed (toml_edit, which
//! keeps the byte span of every value) only to find *where* to add: the end of the file, just
//! after the `[` of `imports`, or the end of the `version` line. The document is never
//! re-serialised: the new text is spliced in at those offsets, so every other byte (comments,
//! spacing, key order, line endings) stays as it was. Before the configuration is written, the
//! record file (`--record`) gets each spliced piece with its byte offset, whether the
//! configuration had to be created, what the drop-in replaced and which directories were made.
//! `unregister` removes exactly those pieces: at their recorded offsets when the file is
//! unchanged there, else at the one place each piece occurs (the file was edited elsewhere since;
//! those edits stay). Taking out what was spliced in gives back the original byte for byte. A
//! piece that is gone or occurs twice means Coffer's lines were edited: then nothing changes and
//! the error says so. `register` on a configuration it registered before first takes its
//! recorded pieces out (in memory) and registers again on that original: the same arguments give
//! the same bytes, so a second run writes nothing, and new paths replace the old ones.
//!
//! Every result is parsed again before anything is written; each file is written to a temporary
//! file beside it and renamed over it; nothing is written when any check fails.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use coffer_shim::sandbox::POD_ANNOTATIONS;
use coffer_shim::service::RUNTIME_TYPE;
use serde::{Deserialize, Serialize};
use toml_edit::{ImDocument, Item, TomlError};

use crate::Failure;

mod files;
mod text;

use files::*;
use text::*;

/// The runtime handlers Coffer ships, one per `packaging/config/<handler>.toml`.
const DEFAULT_HANDLERS: [&str; 3] = ["coffer-qemu", "coffer-qemu-tdx", "coffer-qemu-snp"];

/// The comment lines around the handler tables appended for containerd 1.x. They tell a reader
/// where the tables come from; `unregister` finds what to take out through the record.
const BEGIN_MARKER: &str =
    "# >>> coffer runtime handlers (`coffer containerd-config unregister` takes them out)";
const END_MARKER: &str = "# <<< coffer runtime handlers";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add Coffer's runtime handlers to containerd's configuration, changing nothing else.
    Register(RegisterArgs),
    /// Take out exactly what `register` added: the configuration is byte for byte as before.
    Unregister(UnregisterArgs),
}

/// The files both subcommands work on.
#[derive(Debug, Args)]
pub struct Files {
    /// containerd's configuration.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/containerd/config.toml"
    )]
    config: PathBuf,
    /// What `register` changed, kept for `unregister` (JSON; removed by `unregister`).
    #[arg(long, value_name = "FILE")]
    record: PathBuf,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    files: Files,
    /// The containerd that reads the configuration, as `containerd --version` prints it: 1.x
    /// gets the handler tables in the configuration itself, 2.x a drop-in listed in `imports`.
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    containerd_version: ContainerdVersion,
    /// A runtime handler to register; repeat for several.
    #[arg(
        long = "handler",
        value_name = "NAME",
        default_values = DEFAULT_HANDLERS,
        value_parser = parse_handler
    )]
    handlers: Vec<String>,
    /// The shim containerd runs for the handlers (their runtime_path).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/usr/local/bin/containerd-shim-coffer-v2"
    )]
    shim: PathBuf,
    /// The directory of the handlers' Coffer configs: each handler's options.ConfigPath is
    /// DIR/<handler>.toml.
    #[arg(long, value_name = "DIR", default_value = "/etc/coffer")]
    handler_config_dir: PathBuf,
    /// containerd 2.x: the drop-in to write (default: conf.d/coffer.toml beside the
    /// configuration).
    #[arg(long, value_name = "FILE")]
    drop_in: Option<PathBuf>,
    /// Check everything and say what would change, without writing anything.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub struct UnregisterArgs {
    #[command(flatten)]
    files: Files,
}

/// A containerd version as `containerd --version` prints it, and its major number.
#[derive(Debug, Clone)]
pub struct ContainerdVersion {
    text: String,
    major: u64,
}

fn parse_version(s: &str) -> Result<ContainerdVersion, String> {
    let bad = || format!("cannot read a containerd version from {s:?} (e.g. 1.7.2 or v2.1.4)");
    let v = s.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if end == 0 || !(v[end..].is_empty() || v[end..].starts_with('.')) {
        return Err(bad());
    }
    let major = v[..end].parse().map_err(|_| bad())?;
    Ok(ContainerdVersion {
        text: v.to_owned(),
        major,
    })
}

fn parse_handler(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a runtime handler name (letters, digits, '-', '_' and '.')"
        ))
    }
}

/// What `register` changed, as the record file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The containerd configuration this record is about.
    config: PathBuf,
    /// The configuration did not exist: `register` created it with this text, then added to it.
    created: Option<String>,
    /// Each piece of text spliced into the configuration, at its byte offset in the result,
    /// in order.
    inserted: Vec<Insertion>,
    /// The drop-in written for containerd 2.x.
    drop_in: Option<DropIn>,
    /// Directories `register` created (for the configuration or the drop-in), outermost first.
    created_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Insertion {
    offset: usize,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DropIn {
    path: PathBuf,
    /// What the file held before `register` wrote it; None: it did not exist.
    previous: Option<String>,
}

/// The handler tables to write.
#[derive(Debug)]
struct Handlers {
    names: Vec<String>,
    shim: String,
    config_dir: String,
}

/// One registration, as far as the configuration's text is concerned.
#[derive(Debug)]
struct Request<'a> {
    config: &'a Path,
    containerd: &'a ContainerdVersion,
    handlers: &'a Handlers,
    drop_in: &'a str,
}

/// What `register` makes of one original configuration.
#[derive(Debug)]
struct Plan {
    /// The configuration's new text.
    config: String,
    /// The text the configuration is created with, when it does not exist.
    created: Option<String>,
    inserted: Vec<Insertion>,
    /// The drop-in's text (containerd 2.x).
    drop_in: Option<String>,
}

pub fn run(cmd: Command) -> Result<(), Failure> {
    let line = match cmd {
        Command::Register(args) => register(&args)?,
        Command::Unregister(args) => unregister(&args)?,
    };
    println!("{line}");
    Ok(())
}

fn register(args: &RegisterArgs) -> Result<String, Failure> {
    let mut names: Vec<String> = Vec::new();
    for name in &args.handlers {
        if names.contains(name) {
            return Err(Failure::Usage(format!("--handler {name} is given twice")));
        }
        names.push(name.clone());
    }
    let handlers = Handlers {
        names,
        shim: utf8(&absolute(&args.shim)?)?.to_owned(),
        config_dir: utf8(&absolute(&args.handler_config_dir)?)?.to_owned(),
    };
    let config = absolute(&args.files.config)?;
    let record_path = absolute(&args.files.record)?;
    let drop_in = match &args.drop_in {
        Some(p) => absolute(p)?,
        None => parent(&config).join("conf.d/coffer.toml"),
    };
    let req = Request {
        config: &config,
        containerd: &args.containerd_version,
        handlers: &handlers,
        drop_in: utf8(&drop_in)?,
    };

    let target = follow_symlinks(&config);
    let previous = read_record(&record_path, &config)?;
    let current = read_text(&target)?;
    let mut stale = None;
    let original = match &previous {
        None => current.clone(),
        Some(r) => match original_of(r, current.as_deref()) {
            Ok(o) => o,
            // Recorded but none of it there: taken out by hand, or never written.
            Err(why) if none_present(r, current.as_deref()) => {
                stale = Some(why);
                current.clone()
            }
            Err(why) => return Err(edited(&config, &why, &record_path)),
        },
    };
    let plan = plan(&req, original.as_deref()).map_err(|e| match stale {
        // Coffer's lines are still there, edited.
        Some(why) => edited(&config, &why, &record_path),
        None => Failure::Invalid(e),
    })?;

    let recorded_drop_in = previous.as_ref().and_then(|r| r.drop_in.as_ref());
    let drop_in_record = match (&plan.drop_in, recorded_drop_in) {
        (None, None) => None,
        (Some(_), Some(d)) if d.path == drop_in => Some(d.clone()),
        (Some(_), None) => Some(DropIn {
            path: drop_in.clone(),
            previous: read_text(&drop_in)?,
        }),
        (_, Some(d)) => {
            return Err(Failure::Invalid(format!(
                "{}: registered with the drop-in {} (record {}); unregister first",
                config.display(),
                d.path.display(),
                record_path.display()
            )))
        }
    };
    let mut created_dirs = previous
        .as_ref()
        .map(|r| r.created_dirs.clone())
        .unwrap_or_default();
    let mut needed = Vec::new();
    if plan.created.is_some() {
        needed.extend(missing_dirs(parent(&config)));
    }
    if plan.drop_in.is_some() {
        needed.extend(missing_dirs(parent(&drop_in)));
    }
    for dir in needed {
        if !created_dirs.contains(&dir) {
            created_dirs.push(dir);
        }
    }
    let record = Record {
        config: config.clone(),
        created: plan.created.clone(),
        inserted: plan.inserted.clone(),
        drop_in: drop_in_record,
        created_dirs,
    };

    let names = handlers.names.join(", ");
    let what = match &plan.drop_in {
        None => format!("the runtime handlers {names} in {}", config.display()),
        Some(_) => format!(
            "the runtime handlers {names} in {}, imported by {}",
            drop_in.display(),
            config.display()
        ),
    };
    let drop_in_current = match plan.drop_in {
        Some(_) => read_text(&drop_in)?,
        None => None,
    };
    if previous.as_ref() == Some(&record)
        && current.as_deref() == Some(plan.config.as_str())
        && drop_in_current == plan.drop_in
    {
        return Ok(format!("{what}: registered already, nothing changed"));
    }
    let created = match plan.created {
        Some(_) => " (created)",
        None => "",
    };
    if args.dry_run {
        return Ok(format!("would register {what}{created}"));
    }

    // The record first: should a later write fail, it names everything that may have changed.
    let json = serde_json::to_string_pretty(&record)?;
    if let Some(dir) = record_path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| Failure::Invalid(format!("cannot create {}: {e}", dir.display())))?;
    }
    write_atomic(&record_path, &format!("{json}\n"))?;
    for dir in &record.created_dirs {
        if !dir.is_dir() {
            fs::create_dir(dir)
                .map_err(|e| Failure::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    if let Some(text) = &plan.drop_in {
        write_atomic(&drop_in, text)?;
    }
    write_atomic(&target, &plan.config)?;
    Ok(format!("registered {what}{created}"))
}

fn unregister(args: &UnregisterArgs) -> Result<String, Failure> {
    let config = absolute(&args.files.config)?;
    let record_path = absolute(&args.files.record)?;
    let Some(record) = read_record(&record_path, &config)? else {
        return Ok(format!(
            "nothing to unregister: no {}",
            record_path.display()
        ));
    };
    let target = follow_symlinks(&config);
    let current = read_text(&target)?;
    let original = original_of(&record, current.as_deref())
        .map_err(|why| edited(&config, &why, &record_path))?;
    match (&original, &current) {
        (None, Some(_)) => remove_file(&target)?,
        (Some(o), Some(c)) if o != c => write_atomic(&target, o)?,
        _ => {}
    }
    if let Some(d) = &record.drop_in {
        match &d.previous {
            Some(text) => write_atomic(&d.path, text)?,
            None => remove_file(&d.path)?,
        }
    }
    for dir in record.created_dirs.iter().rev() {
        // Only when empty: anything put there since stays, and so does the directory.
        let _ = fs::remove_dir(dir);
    }
    remove_file(&record_path)?;
    Ok(format!(
        "unregistered the Coffer runtime handlers from {}",
        config.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use clap::Parser as _;

    use super::*;

    /// A containerd 1.x node's configuration, comments and all.
    const V2_CONFIG: &str = "\
# containerd 1.7 on this node.
version = 2
root = \"/var/lib/containerd\"   # where the images live

[plugins.\"io.containerd.grpc.v1.cri\"]
  # pinned for air-gapped nodes
  sandbox_image = \"registry.example/pause:3.9\"
[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]
  runtime_type = \"io.containerd.runc.v2\"
# the end
";

    /// A containerd 2.x node's configuration with a multi-line `imports`.
    const V3_CONFIG: &str = "\
# containerd 2.1
version = 3 # the 2.x layout
imports = [
  # site-wide settings
  \"/etc/containerd/site.toml\",
]

[plugins.\"io.containerd.cri.v1.images\".pinned_images]
  sandbox = \"registry.example/pause:3.10\"  # pinned
";

    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new(config: Option<&str>) -> Node {
            let dir = tempfile::tempdir().expect("temp dir");
            fs::create_dir_all(dir.path().join("etc/containerd")).expect("mkdir");
            let node = Node { dir };
            if let Some(text) = config {
                fs::write(node.config(), text).expect("write config");
            }
            node
        }

        fn config(&self) -> PathBuf {
            self.dir.path().join("etc/containerd/config.toml")
        }

        fn drop_in(&self) -> PathBuf {
            self.dir.path().join("etc/containerd/conf.d/coffer.toml")
        }

        fn record(&self) -> PathBuf {
            self.dir.path().join("record/containerd-config.json")
        }

        fn read(&self) -> String {
            fs::read_to_string(self.config()).expect("read config")
        }

        /// Runs `coffer containerd-config ARGS --config ... --record ...`.
        fn run(&self, args: &[&str]) -> Result<String, Failure> {
            let config = self.config();
            let record = self.record();
            let argv = ["coffer", "containerd-config"]
                .into_iter()
                .chain(args.iter().copied())
                .chain(["--config", config.to_str().expect("utf-8")])
                .chain(["--record", record.to_str().expect("utf-8")]);
            let cli = crate::Cli::try_parse_from(argv).expect("the arguments parse");
            match cli.command {
                crate::Command::ContainerdConfig(Command::Register(a)) => register(&a),
                crate::Command::ContainerdConfig(Command::Unregister(a)) => unregister(&a),
                other => panic!("not containerd-config: {other:?}"),
            }
        }

        fn register(&self, containerd: &str) -> String {
            self.run(&["register", "--containerd-version", containerd])
                .unwrap_or_else(|e| panic!("register: {e:?}"))
        }

        fn unregister(&self) -> String {
            self.run(&["unregister"])
                .unwrap_or_else(|e| panic!("unregister: {e:?}"))
        }

        /// Every file under the node's directory with its content.
        fn snapshot(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
            fn walk(dir: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
                for e in fs::read_dir(dir).expect("read_dir").filter_map(Result::ok) {
                    let p = e.path();
                    if p.is_dir() {
                        out.push((p.clone(), None));
                        walk(&p, out);
                    } else {
                        out.push((p.clone(), Some(fs::read(&p).expect("read"))));
                    }
                }
            }
            let mut out = Vec::new();
            walk(self.dir.path(), &mut out);
            out.sort();
            out
        }
    }

    fn message(result: Result<String, Failure>) -> String {
        match result {
            Err(Failure::Invalid(m)) => m,
            other => panic!("expected an invalid-input failure, got {other:?}"),
        }
    }

    fn runtimes<'a>(doc: &'a toml::Table, plugin: &str) -> &'a toml::Table {
        doc["plugins"][plugin]["containerd"]["runtimes"]
            .as_table()
            .expect("runtimes")
    }

    #[test]
    fn version_2_config_gets_the_tables_appended_and_unregister_restores_every_byte() {
        let node = Node::new(Some(V2_CONFIG));
        let line = node.register("1.7.2");
        assert!(
            line.starts_with("registered the runtime handlers coffer-qemu, "),
            "{line}"
        );

        let after = node.read();
        assert!(after.starts_with(V2_CONFIG), "{after}");
        let added = &after[V2_CONFIG.len()..];
        assert!(
            added.starts_with(&format!("\n{BEGIN_MARKER}\n[plugins.")),
            "{added}"
        );
        assert!(added.ends_with(&format!("\n{END_MARKER}\n")), "{added}");
        let doc: toml::Table = after.parse().expect("TOML");
        let rt = runtimes(&doc, "io.containerd.grpc.v1.cri");
        assert_eq!(
            rt["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        for h in DEFAULT_HANDLERS {
            assert_eq!(rt[h]["runtime_type"].as_str(), Some(RUNTIME_TYPE));
            assert_eq!(
                rt[h]["runtime_path"].as_str(),
                Some("/usr/local/bin/containerd-shim-coffer-v2")
            );
            let keys: Vec<&str> = rt[h]["pod_annotations"]
                .as_array()
                .expect("pod_annotations")
                .iter()
                .filter_map(toml::Value::as_str)
                .collect();
            assert_eq!(keys, POD_ANNOTATIONS);
            assert_eq!(
                rt[h]["options"]["ConfigPath"].as_str(),
                Some(format!("/etc/coffer/{h}.toml").as_str())
            );
        }
        assert!(!node.drop_in().exists());

        let line = node.unregister();
        assert!(line.starts_with("unregistered"), "{line}");
        assert_eq!(node.read(), V2_CONFIG);
        assert!(!node.record().exists());
    }

    #[test]
    fn version_3_config_gets_a_drop_in_first_in_imports_and_unregister_restores_every_byte() {
        let node = Node::new(Some(V3_CONFIG));
        node.register("v2.1.4");
        let dropin = node.drop_in();
        let after = node.read();
        assert_eq!(
            after,
            V3_CONFIG.replacen(
                "imports = [\n",
                &format!("imports = [\"{}\",\n", dropin.display()),
                1
            )
        );
        let doc: toml::Table = after.parse().expect("TOML");
        assert_eq!(
            doc["imports"].as_array().expect("imports")[0].as_str(),
            dropin.to_str()
        );
        let d: toml::Table = fs::read_to_string(&dropin)
            .expect("drop-in")
            .parse()
            .expect("the drop-in is TOML");
        assert_eq!(d["version"].as_integer(), Some(3));
        for h in DEFAULT_HANDLERS {
            let rt = &runtimes(&d, "io.containerd.cri.v1.runtime")[h];
            assert_eq!(rt["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        }

        node.unregister();
        assert_eq!(node.read(), V3_CONFIG);
        assert!(!dropin.exists());
        assert!(
            !dropin.parent().expect("conf.d").exists(),
            "conf.d left behind"
        );
        assert!(!node.record().exists());
    }

    #[test]
    fn imports_are_added_after_the_version_line_or_into_a_one_line_array() {
        for (before, after) in [
            (
                "version = 3 # the 2.x layout\n\n[plugins]\n",
                "version = 3 # the 2.x layout\nimports = [\"DROPIN\"]\n\n[plugins]\n",
            ),
            ("version = 3", "version = 3\nimports = [\"DROPIN\"]"),
            (
                "version = 2\nimports = [\"/a.toml\"]\n",
                "version = 2\nimports = [\"DROPIN\", \"/a.toml\"]\n",
            ),
            (
                "version = 2\nimports = []\n",
                "version = 2\nimports = [\"DROPIN\"]\n",
            ),
            (
                "version = 3\r\n# windows\r\n[x]\r\n",
                "version = 3\r\nimports = [\"DROPIN\"]\r\n# windows\r\n[x]\r\n",
            ),
        ] {
            let node = Node::new(Some(before));
            node.register("2.0.0");
            let dropin = node.drop_in();
            let expected = after.replace("DROPIN", dropin.to_str().expect("utf-8"));
            assert_eq!(node.read(), expected, "from {before:?}");
            // A version 2 configuration gets a drop-in in the version 2 layout.
            let d: toml::Table = fs::read_to_string(&dropin)
                .expect("drop-in")
                .parse()
                .expect("TOML");
            let plugin = if before.starts_with("version = 2") {
                "io.containerd.grpc.v1.cri"
            } else {
                "io.containerd.cri.v1.runtime"
            };
            assert!(runtimes(&d, plugin).contains_key("coffer-qemu"), "{d:?}");
            node.unregister();
            assert_eq!(node.read(), before);
        }
    }

    #[test]
    fn a_last_line_without_newline_and_crlf_line_ends_are_kept() {
        for before in [
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  x = 1",
            "version = 2\r\n# crlf\r\n[a]\r\nb = 1\r\n",
            "version = 2\r\n[a]\r\nb = 1",
        ] {
            let node = Node::new(Some(before));
            node.register("1.6.20~ds1");
            let after = node.read();
            assert!(after.starts_with(before));
            let _: toml::Table = after.parse().expect("TOML");
            if before.contains("\r\n") {
                assert!(!after.replace("\r\n", "").contains('\n'), "{after:?}");
            }
            node.unregister();
            assert_eq!(node.read(), before);
        }
    }

    #[test]
    fn registering_twice_changes_nothing() {
        for (config, containerd) in [(V2_CONFIG, "1.7.2"), (V3_CONFIG, "2.1.4")] {
            let node = Node::new(Some(config));
            node.register(containerd);
            let snapshot = node.snapshot();
            let inode = fs::metadata(node.config()).expect("stat").ino();
            let line = node.register(containerd);
            assert!(
                line.ends_with("registered already, nothing changed"),
                "{line}"
            );
            assert_eq!(node.snapshot(), snapshot);
            // Not even rewritten with the same bytes.
            assert_eq!(fs::metadata(node.config()).expect("stat").ino(), inode);
            node.unregister();
            assert_eq!(node.read(), config);
        }
    }

    #[test]
    fn registering_again_with_new_paths_replaces_them() {
        for (config, containerd) in [(V2_CONFIG, "1.7.2"), (V3_CONFIG, "2.1.4")] {
            let node = Node::new(Some(config));
            node.register(containerd);
            node.run(&[
                "register",
                "--containerd-version",
                containerd,
                "--shim",
                "/opt/coffer/bin/containerd-shim-coffer-v2",
                "--handler-config-dir",
                "/opt/coffer/etc",
                "--handler",
                "coffer-qemu",
            ])
            .expect("register with new paths");
            let tables = if containerd.starts_with('1') {
                node.read()
            } else {
                fs::read_to_string(node.drop_in()).expect("drop-in")
            };
            assert!(!tables.contains("/usr/local/bin"), "{tables}");
            assert!(!tables.contains("coffer-qemu-tdx"), "{tables}");
            assert!(tables.contains("ConfigPath = \"/opt/coffer/etc/coffer-qemu.toml\""));
            assert_eq!(
                tables.matches(BEGIN_MARKER).count(),
                usize::from(containerd.starts_with('1'))
            );
            node.unregister();
            assert_eq!(node.read(), config);
            assert!(!node.drop_in().exists());
        }
    }

    #[test]
    fn a_malformed_config_is_refused_and_nothing_is_written() {
        let bad = "# broken\nversion = 2\n[plugins.\"io.containerd.grpc.v1.cri\"\n  x = 1\n";
        for containerd in ["1.7.2", "2.1.4"] {
            let node = Node::new(Some(bad));
            let before = node.snapshot();
            let msg = message(node.run(&["register", "--containerd-version", containerd]));
            assert!(
                msg.starts_with(&node.config().display().to_string()),
                "{msg}"
            );
            assert!(msg.contains("not valid TOML: line 3, column "), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
            assert_eq!(node.snapshot(), before);
        }
    }

    #[test]
    fn configs_coffer_cannot_edit_are_refused_and_left_alone() {
        for (config, containerd, expected) in [
            ("root = \"/x\"\n", "1.7.2", "is a version 1 configuration"),
            ("", "2.0.0", "is a version 1 configuration"),
            ("version = 3\n", "1.7.2", "which containerd 1.7.2 cannot read"),
            ("version = 4\n", "2.1.0", "version 4 is not one Coffer knows"),
            ("version = \"2\"\n", "2.1.0", "version is not a number (line 1)"),
            ("version = 3\nimports = \"/a\"\n", "2.1.0", "imports is not an array (line 2)"),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.coffer-qemu-tdx]\n",
                "1.7.2",
                "already defines the runtime handler coffer-qemu-tdx",
            ),
            (
                "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes]\n\
                 coffer-qemu = { runtime_type = \"x\" }\n",
                "2.1.0",
                "already defines the runtime handler coffer-qemu",
            ),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = {}\n",
                "1.7.2",
                "adding the handlers would make it invalid TOML",
            ),
        ] {
            let node = Node::new(Some(config));
            let before = node.snapshot();
            let msg = message(node.run(&["register", "--containerd-version", containerd]));
            assert!(msg.contains(expected), "{config:?}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
            assert_eq!(node.snapshot(), before, "{config:?}");
        }
    }

    #[test]
    fn a_missing_config_is_created_and_unregister_removes_it_and_its_directory() {
        let node = Node::new(None);
        let config = node.dir.path().join("etc/containerd/new/config.toml");
        let config = config.to_str().expect("utf-8");
        let record = node.record();
        let record = record.to_str().expect("utf-8");
        let run = |args: &[&str]| {
            let argv = ["coffer", "containerd-config"]
                .into_iter()
                .chain(args.iter().copied())
                .chain(["--config", config, "--record", record]);
            match crate::Cli::try_parse_from(argv).expect("parse").command {
                crate::Command::ContainerdConfig(Command::Register(a)) => register(&a),
                crate::Command::ContainerdConfig(Command::Unregister(a)) => unregister(&a),
                other => panic!("{other:?}"),
            }
            .expect("runs")
        };
        for (containerd, version) in [("1.6.20", 2), ("2.1.4", 3)] {
            let line = run(&["register", "--containerd-version", containerd]);
            assert!(line.ends_with("(created)"), "{line}");
            let text = fs::read_to_string(config).expect("created");
            assert!(
                text.starts_with(&format!("version = {version}\n")),
                "{text}"
            );
            run(&["unregister"]);
            assert!(!Path::new(config).exists());
            assert!(!node.dir.path().join("etc/containerd/new").exists());
            assert!(node.dir.path().join("etc/containerd").exists());
        }
    }

    #[test]
    fn an_existing_drop_in_is_put_back() {
        let node = Node::new(Some(V3_CONFIG));
        fs::create_dir_all(node.drop_in().parent().expect("conf.d")).expect("mkdir");
        fs::write(node.drop_in(), "# someone else's\n").expect("write");
        node.register("2.1.4");
        assert!(fs::read_to_string(node.drop_in())
            .expect("drop-in")
            .contains("coffer-qemu"));
        node.unregister();
        assert_eq!(
            fs::read_to_string(node.drop_in()).expect("drop-in"),
            "# someone else's\n"
        );
        assert_eq!(node.read(), V3_CONFIG);
    }

    #[test]
    fn edits_elsewhere_survive_unregister() {
        let node = Node::new(Some(V3_CONFIG));
        node.register("2.1.4");
        let edited = format!("# a new first line\n{}# a new last line\n", node.read());
        fs::write(node.config(), &edited).expect("edit");
        node.unregister();
        assert_eq!(
            node.read(),
            format!("# a new first line\n{V3_CONFIG}# a new last line\n")
        );
    }

    #[test]
    fn edited_coffer_lines_make_unregister_refuse_and_change_nothing() {
        let node = Node::new(Some(V2_CONFIG));
        node.register("1.7.2");
        let edited = node.read().replace("coffer-qemu-snp.toml", "snp.toml");
        fs::write(node.config(), &edited).expect("edit");
        let before = node.snapshot();
        let msg = message(node.run(&["unregister"]));
        assert!(msg.contains("Coffer's lines were edited"), "{msg}");
        assert!(msg.contains(&node.record().display().to_string()), "{msg}");
        assert_eq!(node.snapshot(), before);
        // And register does not stack a second copy on top.
        let msg = message(node.run(&["register", "--containerd-version", "1.7.2"]));
        assert!(msg.contains("Coffer's lines were edited"), "{msg}");
        assert_eq!(node.snapshot(), before);
    }

    #[test]
    fn unregister_without_a_record_does_nothing() {
        let node = Node::new(Some(V2_CONFIG));
        let line = node.unregister();
        assert!(line.starts_with("nothing to unregister"), "{line}");
        assert_eq!(node.read(), V2_CONFIG);
    }

    #[test]
    fn dry_run_writes_nothing() {
        let node = Node::new(Some(V3_CONFIG));
        let before = node.snapshot();
        let line = node
            .run(&["register", "--containerd-version", "2.1.4", "--dry-run"])
            .expect("dry run");
        assert!(line.starts_with("would register"), "{line}");
        assert_eq!(node.snapshot(), before);
    }

    #[test]
    fn versions_and_handler_names_are_checked() {
        for (v, major) in [
            ("1.6.20~ds1", 1),
            ("v2.1.4", 2),
            ("2", 2),
            ("10.0.0-rc.1", 10),
        ] {
            assert_eq!(parse_version(v).expect(v).major, major);
        }
        for v in ["", "x1.2", "1x.2", "v", "-1"] {
            assert!(parse_version(v).is_err(), "{v}");
        }
        assert!(parse_handler("coffer-qemu_2.x").is_ok());
        for h in ["", ".hidden", "a/b", "a b", "\"q\""] {
            assert!(parse_handler(h).is_err(), "{h:?}");
        }
        let node = Node::new(Some(V2_CONFIG));
        let r = node.run(&[
            "register",
            "--containerd-version",
            "1.7.2",
            "--handler",
            "a",
            "--handler",
            "a",
        ]);
        assert!(matches!(r, Err(Failure::Usage(_))), "{r:?}");
    }

    /// The tables written with the default paths are the ones packaging/containerd/ shows.
    #[test]
    fn the_tables_are_the_packaged_ones() {
        let handlers = Handlers {
            names: DEFAULT_HANDLERS.map(String::from).to_vec(),
            shim: "/usr/local/bin/containerd-shim-coffer-v2".to_owned(),
            config_dir: "/etc/coffer".to_owned(),
        };
        for version in [2, 3] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../packaging/containerd/coffer-v{version}.toml"));
            let packaged = fs::read_to_string(&path).expect("packaged drop-in");
            let from = packaged.find("\n[plugins").expect("tables") + 1;
            assert_eq!(
                tables(version, &handlers, "\n"),
                packaged[from..],
                "{}",
                path.display()
            );
        }
    }
}
