//! The agent policy: the Init-Data's `policy.rego`, enforced on every request as kata-agent does.
//!
//! The model is Kata's: the policy is Rego in `package agent_policy`, and before serving a request
//! the agent evaluates the rule named after the kata-agent request (`CreateContainerRequest`,
//! `ExecProcessRequest`, ...) with the request as `input`. The request is served only when the rule
//! evaluates to `true`; `false`, any other value, a rule the policy does not define and an
//! evaluation error all deny. Policies are parsed as Rego v0, as kata-agent does, so Kata's
//! policies (with `import future.keywords...` or `import rego.v1`) load unchanged.
//!
//! Coffer's requests map to Kata's rules:
//!
//! | Coffer request | rule |
//! |---|---|
//! | `create_container` | `CreateContainerRequest` |
//! | `start` | `StartContainerRequest` |
//! | `exec` | `ExecProcessRequest` |
//! | `signal` | `SignalProcessRequest` |
//! | `wait` | `WaitProcessRequest` |
//! | `remove` | `RemoveContainerRequest` |
//! | `shutdown` | `DestroySandboxRequest` |
//! | `read_file` | `ReadInitDataRequest` (Coffer's own; allowed when the policy does not define it) |
//! | `write_stdin`, `close_stdin`, `resize_pty` | `WriteStreamRequest`, `CloseStdinRequest`, `TtyWinResizeRequest` |
//! | `update_interface`, `update_routes`, `add_arp_neighbors` | `UpdateInterfaceRequest`, `UpdateRoutesRequest`, `AddARPNeighborsRequest` |
//! | `stats`, `update_resources`, `pause`, `resume` | `StatsContainerRequest`, `UpdateContainerRequest`, `PauseContainerRequest`, `ResumeContainerRequest` |
//! | `hello` | never gated: the host needs it to learn the guest's verdict |
//!
//! `input` is the request kata-agent would pass to the same rule, in its protobuf JSON shape
//! (`container_id`, `OCI.Process.Args`, `process.Args`, ...), built by [`super::kata_input`];
//! `CreateContainerRequest` also carries Coffer's `input.image`, the reference of an image the
//! guest pulls itself. `docs/kata-compatibility.md` lists every field and where it comes from.
//!
//! Only the policy of a document that passed the Init-Data check is applied; without one every
//! request is allowed. A policy that does not load is reported in hello and containers are
//! refused, as with an Init-Data document that fails its check.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Mutex;

use regorus::{Engine, PolicyLengthConfig, Value};

use crate::protocol::{ErrorKind, GuestError, PolicyStatus, Request};

/// The Rego package the policy must declare, as in Kata.
const PACKAGE: &str = "agent_policy";

/// The source name errors refer to.
const SOURCE: &str = "policy.rego";

/// Kata's debugging switch: denials are logged and the request is served anyway.
pub const ALLOW_FAILURES_RULE: &str = "AllowRequestsFailingPolicy";

/// Most bytes of `print()` output a denial carries.
const MAX_PRINTS: usize = 2048;

/// kata-agent's rule for reading a process's output.
pub const READ_STREAM_RULE: &str = "ReadStreamRequest";

/// Coffer's rule for [`Request::ReadFile`]; Kata policies do not know it.
pub const READ_INITDATA_RULE: &str = "ReadInitDataRequest";

/// Largest policy state (`data.pstate`, as JSON) the ops of allowed requests may build: the ops
/// are the policy's, but what they record (container ids, ...) comes from the host.
const MAX_PSTATE: usize = 1 << 20;

/// A rule's answer in its long form: kata-agent accepts `{"allowed": ..., "ops": [...]}` as
/// well as `true`, and applies the ops (a JSON patch over the policy's data, where
/// `data.pstate` is the sandbox's policy state) when the request is allowed.
#[derive(Debug, serde::Deserialize)]
struct Verdict {
    allowed: bool,
    #[serde(default)]
    ops: Option<json_patch::Patch>,
}

/// Why the policy did not load or denied a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The policy is not valid Rego, or not a Kata agent policy.
    #[error("this guest refuses to run containers: the agent policy (policy.rego in the Init-Data) does not load: {0}; fix policy.rego and start the pod with the corrected Init-Data")]
    Invalid(String),
    /// The rule evaluated to something other than `true`.
    #[error("the agent policy denies {rule}")]
    Denied {
        /// The kata-agent rule that was evaluated.
        rule: &'static str,
    },
    /// The rule did not evaluate to `true`, and the policy said why with `print()`.
    #[error("the agent policy denies {rule}: {prints}")]
    DeniedSaying {
        /// The kata-agent rule that was evaluated.
        rule: &'static str,
        /// What the policy printed while evaluating it (bounded), as kata-agent reports it.
        prints: String,
    },
    /// The rule could not be evaluated (a builtin failed, conflicting values, ...).
    #[error("the agent policy denies {rule}: evaluating it failed: {reason}")]
    EvalFailed {
        /// The kata-agent rule that was evaluated.
        rule: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The request could not be turned into the policy's `input`.
    #[error("the agent policy denies {rule}: cannot pass the request as input: {reason}")]
    Input {
        /// The kata-agent rule that was evaluated.
        rule: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// The policy this guest enforces.
#[derive(Debug)]
pub enum AgentPolicy {
    /// No policy in the Init-Data (or no Init-Data): everything is allowed.
    AllowAll,
    /// A loaded policy.
    Enforced(Box<Enforcer>),
    /// The policy did not load: containers are refused.
    Invalid(String),
}

/// A loaded policy and what it declares.
#[derive(Debug)]
pub struct Enforcer {
    /// Evaluation needs `&mut`; requests run on their own threads, so they take turns.
    engine: Mutex<Engine>,
    /// Rule definitions in the policy (each `default` and each rule body counts).
    rules: usize,
    /// Whether the policy has its own say on [`Request::ReadFile`].
    defines_read_initdata: bool,
    /// `AllowRequestsFailingPolicy := true`: denials are logged, not enforced.
    allow_failures: bool,
}

impl AgentPolicy {
    /// The policy of a verified Init-Data document (`None`: the document has no `policy.rego`,
    /// or there is no document).
    pub fn load(rego: Option<&str>) -> AgentPolicy {
        match rego {
            None => AgentPolicy::AllowAll,
            Some(text) => match Enforcer::load(text) {
                Ok(e) => AgentPolicy::Enforced(Box::new(e)),
                Err(PolicyError::Invalid(reason)) => AgentPolicy::Invalid(reason),
                Err(other) => AgentPolicy::Invalid(other.to_string()),
            },
        }
    }

    /// Whether the host may read `len` bytes of a process's output: kata-agent's
    /// `ReadStreamRequest`, with its input (`container_id`, `exec_id`, `len`). As kata-agent
    /// does, output the policy does not allow stays in the guest (a policy that does not define
    /// the rule keeps all of it there).
    pub fn allows_reading(&self, id: &str, exec_id: Option<&str>, len: usize) -> bool {
        match self {
            AgentPolicy::AllowAll => true,
            AgentPolicy::Invalid(_) => false,
            AgentPolicy::Enforced(e) => {
                let input = super::kata_input::read_stream(id, exec_id, len).to_string();
                e.check_input(READ_STREAM_RULE, &input).is_ok()
            }
        }
    }

    /// What hello reports.
    pub fn status(&self) -> PolicyStatus {
        match self {
            AgentPolicy::AllowAll => PolicyStatus::None,
            AgentPolicy::Enforced(e) if e.allow_failures => {
                PolicyStatus::Permissive { rules: e.rules }
            }
            AgentPolicy::Enforced(e) => PolicyStatus::Enforced { rules: e.rules },
            AgentPolicy::Invalid(reason) => PolicyStatus::Invalid {
                reason: reason.clone(),
            },
        }
    }

    /// Whether `request` may be served.
    pub fn check(&self, request: &Request) -> Result<(), PolicyError> {
        let Some(rule) = rule_for(request) else {
            return Ok(());
        };
        match self {
            AgentPolicy::AllowAll => Ok(()),
            // Reading back the delivered files and powering off stay possible, so the host can
            // show what is wrong and stop the VM cleanly; nothing else is served.
            AgentPolicy::Invalid(_)
                if matches!(request, Request::ReadFile { .. } | Request::Shutdown) =>
            {
                Ok(())
            }
            AgentPolicy::Invalid(reason) => Err(PolicyError::Invalid(reason.clone())),
            AgentPolicy::Enforced(e) => match e.check(rule, request) {
                Err(denied) if e.allow_failures => {
                    super::boot::log(&format!(
                        "{denied}; served anyway: the policy sets AllowRequestsFailingPolicy"
                    ));
                    Ok(())
                }
                result => result,
            },
        }
    }
}

impl From<PolicyError> for GuestError {
    /// A denial is PERMISSION_DENIED, as kata-agent answers it; a policy that does not load
    /// leaves the guest unable to serve, whatever the request.
    fn from(e: PolicyError) -> GuestError {
        let kind = match e {
            PolicyError::Invalid(_) => ErrorKind::FailedPrecondition,
            PolicyError::Denied { .. }
            | PolicyError::DeniedSaying { .. }
            | PolicyError::EvalFailed { .. }
            | PolicyError::Input { .. } => ErrorKind::PermissionDenied,
        };
        GuestError::new(kind, e.to_string())
    }
}

/// The kata-agent rule that gates `request`; `None` for hello, which is never gated.
///
/// Exhaustive on purpose: a new request must be given its rule here.
pub fn rule_for(request: &Request) -> Option<&'static str> {
    Some(match request {
        Request::Hello { .. } => return None,
        Request::CreateContainer(_) => "CreateContainerRequest",
        Request::Start { .. } => "StartContainerRequest",
        Request::Exec { .. } => "ExecProcessRequest",
        Request::Wait { .. } => "WaitProcessRequest",
        Request::Signal { .. } => "SignalProcessRequest",
        Request::Remove { .. } => "RemoveContainerRequest",
        Request::ReadFile { .. } => READ_INITDATA_RULE,
        Request::Shutdown => "DestroySandboxRequest",
        Request::WriteStdin { .. } => "WriteStreamRequest",
        Request::CloseStdin { .. } => "CloseStdinRequest",
        Request::ResizePty { .. } => "TtyWinResizeRequest",
        Request::UpdateInterface { .. } => "UpdateInterfaceRequest",
        Request::UpdateRoutes { .. } => "UpdateRoutesRequest",
        Request::AddArpNeighbors { .. } => "AddARPNeighborsRequest",
        Request::Stats { .. } => "StatsContainerRequest",
        Request::UpdateResources { .. } => "UpdateContainerRequest",
        Request::Pause { .. } => "PauseContainerRequest",
        Request::Resume { .. } => "ResumeContainerRequest",
    })
}

impl Enforcer {
    /// Parses and prepares `rego`, so that errors show at boot rather than at the first request.
    pub fn load(rego: &str) -> Result<Enforcer, PolicyError> {
        // Rego v1 first (what Kata's engine reads by default), then v0, where genpolicy's
        // `Rule { ... }` bodies and `import future.keywords` live: a policy that parses as v1
        // means what v1 says, and a v0 policy is not valid v1.
        match Self::load_as(rego, false) {
            Ok(e) => Ok(e),
            Err(_) => Self::load_as(rego, true),
        }
    }

    fn load_as(rego: &str, v0: bool) -> Result<Enforcer, PolicyError> {
        let invalid = |e| PolicyError::Invalid(chain(e));
        let mut engine = Engine::new();
        engine.set_rego_v0(v0);
        // As kata-agent's engine: a builtin that fails makes its expression undefined.
        engine.set_strict_builtin_errors(false);
        // The sandbox's policy state, which allowed requests' ops change (see `Verdict`).
        engine
            .add_data(Value::from_json_str(r#"{"pstate":{}}"#).map_err(invalid)?)
            .map_err(invalid)?;
        // print() output is gathered and reported with a denial, as kata-agent does.
        engine.set_gather_prints(true);
        // regorus caps policy files (1 MiB, 20 000 lines, 1 024 columns) against pathological
        // input; here the Init-Data limits the host validated with already bound the size, and
        // generated Kata policies exceed those caps.
        engine.set_policy_length_config(PolicyLengthConfig {
            max_col: NonZeroU32::MAX,
            max_file_bytes: NonZeroUsize::new(rego.len().max(1)).unwrap_or(NonZeroUsize::MIN),
            max_lines: NonZeroUsize::MAX,
        });
        let package = engine
            .add_policy(SOURCE.into(), rego.into())
            .map_err(invalid)?;
        if package != format!("data.{PACKAGE}") {
            return Err(PolicyError::Invalid(format!(
                "it declares {}, but an agent policy must be `package {PACKAGE}`",
                package.trim_start_matches("data.")
            )));
        }
        // Evaluating a trivial query prepares the engine: unknown functions, unsafe variables and
        // the like are found now.
        engine.eval_query("true".into(), false).map_err(invalid)?;
        let rules = engine.get_modules().iter().map(|m| m.policy.len()).sum();
        let defines_read_initdata = engine
            .has_declared_rule_rooted_at(SOURCE, READ_INITDATA_RULE)
            .map_err(invalid)?;
        let allow_failures = engine
            .has_declared_rule_rooted_at(SOURCE, ALLOW_FAILURES_RULE)
            .map_err(invalid)?
            && engine
                .eval_rule(format!("data.{PACKAGE}.{ALLOW_FAILURES_RULE}"))
                .map_err(invalid)?
                == Value::Bool(true);
        let _ = engine.take_prints();
        Ok(Enforcer {
            engine: Mutex::new(engine),
            rules,
            defines_read_initdata,
            allow_failures,
        })
    }

    fn check(&self, rule: &'static str, request: &Request) -> Result<(), PolicyError> {
        if rule == READ_INITDATA_RULE && !self.defines_read_initdata {
            return Ok(());
        }
        let input = super::kata_input::request_input(request).to_string();
        self.check_input(rule, &input)
    }

    /// Evaluates `rule` with `input` (JSON).
    fn check_input(&self, rule: &'static str, input: &str) -> Result<(), PolicyError> {
        // A thread that panicked mid-evaluation leaves nothing half done that matters: input and
        // evaluation state are reset below.
        let mut engine = self
            .engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        engine
            .set_input_json(input)
            .map_err(|e| PolicyError::Input {
                rule,
                reason: chain(e),
            })?;
        let declared = engine
            .has_declared_rule_rooted_at(SOURCE, rule)
            .map_err(|e| PolicyError::EvalFailed {
                rule,
                reason: chain(e),
            })?;
        if !declared {
            return Err(PolicyError::Denied { rule });
        }
        let value = engine
            .eval_rule(format!("data.{PACKAGE}.{rule}"))
            .map_err(|e| PolicyError::EvalFailed {
                rule,
                reason: chain(e),
            })?;
        let prints = engine.take_prints().unwrap_or_default();
        let allowed = match value {
            Value::Bool(b) => b,
            Value::Object(_) => {
                let verdict: Verdict = serde_json::to_value(&value)
                    .and_then(serde_json::from_value)
                    .map_err(|e| PolicyError::EvalFailed {
                        rule,
                        reason: format!(
                            "its result is neither true nor {{\"allowed\": ..., \"ops\": [...]}}: {e}"
                        ),
                    })?;
                if let (true, Some(ops)) = (verdict.allowed, &verdict.ops) {
                    apply_ops(&mut engine, ops).map_err(|reason| PolicyError::EvalFailed {
                        rule,
                        reason: format!("applying its ops to the policy state: {reason}"),
                    })?;
                }
                verdict.allowed
            }
            _ => false,
        };
        if allowed {
            Ok(())
        } else if prints.is_empty() {
            Err(PolicyError::Denied { rule })
        } else {
            let mut said = prints.join("; ");
            if said.len() > MAX_PRINTS {
                let cut = (0..=MAX_PRINTS)
                    .rev()
                    .find(|i| said.is_char_boundary(*i))
                    .unwrap_or(0);
                said.truncate(cut);
                said.push_str("...");
            }
            Err(PolicyError::DeniedSaying { rule, prints: said })
        }
    }
}

/// Applies `ops` to the engine's data, all or nothing, keeping the state within [`MAX_PSTATE`].
fn apply_ops(engine: &mut Engine, ops: &json_patch::Patch) -> Result<(), String> {
    let mut data = serde_json::to_value(engine.get_data()).map_err(|e| e.to_string())?;
    json_patch::patch(&mut data, ops).map_err(|e| e.to_string())?;
    let text = data.to_string();
    let state = data.get("pstate").map(|p| p.to_string().len()).unwrap_or(0);
    if state > MAX_PSTATE {
        return Err(format!(
            "the state would grow to {state} bytes, over the {MAX_PSTATE}-byte limit"
        ));
    }
    let value = Value::from_json_str(&text).map_err(chain)?;
    engine.clear_data();
    engine.add_data(value).map_err(chain)
}

/// An error with its causes (regorus returns `anyhow` errors), on one line: regorus renders
/// source errors as a multi-line snippet (`--> policy.rego:3:1`, the line, a caret, `error: ...`),
/// which would reach the user through crictl; keep the location and the message.
fn chain(e: impl std::fmt::Display) -> String {
    let text = format!("{e:#}");
    let location = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> "))
        .map(str::trim);
    let message = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::trim);
    match (location, message) {
        (Some(at), Some(what)) => format!("{at}: {what}"),
        _ => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CreateContainer, Process};

    /// The policy of the Init-Data example (`initdata/tests/data/seed-initdata.toml`).
    const SEED: &str = include_str!("../../../initdata/tests/data/seed-initdata.toml");

    fn seed_policy() -> String {
        let doc = coffer_initdata::InitData::parse(SEED.as_bytes().to_vec()).unwrap();
        doc.get("policy.rego").unwrap().to_string()
    }

    fn exec(args: &[&str]) -> Request {
        Request::Exec {
            id: "c1".into(),
            exec_id: "e1".into(),
            process: Process {
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Process::default()
            },
        }
    }

    fn every_request() -> Vec<Request> {
        vec![
            Request::Hello {
                protocol_version: 1,
            },
            Request::CreateContainer(CreateContainer {
                id: "c1".into(),
                rootfs: Some("c1/rootfs".into()),
                image: None,
                hostname: None,
                process: Process::default(),
                files: vec![],
                resources: None,
                masked_paths: Vec::new(),
                readonly_paths: Vec::new(),
                readonly_root: false,
                oci: Default::default(),
            }),
            Request::Start { id: "c1".into() },
            exec(&["ls"]),
            Request::Wait {
                id: "c1".into(),
                exec_id: None,
            },
            Request::Signal {
                id: "c1".into(),
                exec_id: Some("e1".into()),
                signal: 15,
            },
            Request::Remove { id: "c1".into() },
            Request::ReadFile {
                path: "aa.toml".into(),
            },
            Request::Shutdown,
            Request::UpdateInterface {
                interface: crate::protocol::network::Interface {
                    name: "eth0".into(),
                    hw_addr: "0a:58:0a:58:00:05".into(),
                    mtu: 1500,
                    ip_addresses: vec![],
                },
            },
            Request::UpdateRoutes { routes: vec![] },
            Request::AddArpNeighbors { neighbors: vec![] },
        ]
    }

    fn load(rego: &str) -> AgentPolicy {
        let p = AgentPolicy::load(Some(rego));
        assert!(matches!(p, AgentPolicy::Enforced(_)), "{:?}", p.status());
        p
    }

    #[test]
    fn no_policy_allows_everything() {
        let p = AgentPolicy::load(None);
        assert_eq!(p.status(), PolicyStatus::None);
        for r in every_request() {
            assert_eq!(p.check(&r), Ok(()), "{r:?}");
        }
    }

    #[test]
    fn the_seed_policy_allows_every_request() {
        let p = load(&seed_policy());
        assert_eq!(p.status(), PolicyStatus::Enforced { rules: 36 });
        for r in every_request() {
            assert_eq!(p.check(&r), Ok(()), "{r:?}");
        }
    }

    #[test]
    fn rego_v1_policies_load_and_mean_what_v1_says() {
        // v1-only syntax: `if` without an import.
        let p = load(
            "package agent_policy\ndefault ExecProcessRequest := false\nExecProcessRequest if { input.process.Args[0] == \"ls\" }\n",
        );
        assert_eq!(p.check(&exec(&["ls"])), Ok(()));
        assert!(p.check(&exec(&["sh"])).is_err());
        // v0 with future keywords, as genpolicy writes it, still loads.
        let p = load(
            "package agent_policy\nimport future.keywords.in\ndefault ExecProcessRequest := false\nExecProcessRequest { input.process.Args[0] in [\"ls\"] }\n",
        );
        assert_eq!(p.check(&exec(&["ls"])), Ok(()));
        assert!(p.check(&exec(&["sh"])).is_err());
    }

    #[test]
    fn prints_explain_a_denial() {
        let p = load(
            "package agent_policy\ndefault ExecProcessRequest := false\nExecProcessRequest if {\n print(\"exec of\", input.process.Args[0], \"is not allowed\")\n false\n}\n",
        );
        assert_eq!(
            p.check(&exec(&["sh"])).unwrap_err().to_string(),
            "the agent policy denies ExecProcessRequest: policy.rego:4: exec of sh is not allowed"
        );
    }

    #[test]
    fn allow_requests_failing_policy_serves_denied_requests_and_says_so() {
        let p = load(
            "package agent_policy\ndefault ExecProcessRequest := false\ndefault AllowRequestsFailingPolicy := true\n",
        );
        assert_eq!(p.status(), PolicyStatus::Permissive { rules: 2 });
        assert_eq!(p.check(&exec(&["sh"])), Ok(()));
        let p = load(
            "package agent_policy\ndefault ExecProcessRequest := false\ndefault AllowRequestsFailingPolicy := false\n",
        );
        assert_eq!(p.status(), PolicyStatus::Enforced { rules: 2 });
        assert!(p.check(&exec(&["sh"])).is_err());
    }

    #[test]
    fn output_is_read_only_as_read_stream_request_allows() {
        assert!(AgentPolicy::AllowAll.allows_reading("c1", None, 10));
        assert!(load(&seed_policy()).allows_reading("c1", None, 10));
        let p = load(
            "package agent_policy\ndefault ReadStreamRequest := false\nReadStreamRequest { input.container_id == \"chatty\" }\n",
        );
        assert!(p.allows_reading("chatty", Some("e1"), 5));
        assert!(!p.allows_reading("quiet", None, 5));
        // Undefined: kept in the guest, as kata-agent keeps it.
        let p = load("package agent_policy\ndefault CreateContainerRequest := true\n");
        assert!(!p.allows_reading("c1", None, 5));
    }

    #[test]
    fn a_default_false_rule_denies_and_names_the_rule() {
        let p = load(&seed_policy().replace(
            "default ExecProcessRequest := true",
            "default ExecProcessRequest := false",
        ));
        let err = p.check(&exec(&["ls"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the agent policy denies ExecProcessRequest"
        );
        assert_eq!(p.check(&Request::Start { id: "c1".into() }), Ok(()));
    }

    #[test]
    fn rules_see_kata_agents_request_as_input() {
        let p = load(
            r#"package agent_policy
import future.keywords.if
default ExecProcessRequest := false
ExecProcessRequest if {
    input.container_id == "c1"
    input.exec_id == "e1"
    input.process.Args[0] != "sh"
}
default WaitProcessRequest := false
WaitProcessRequest if { input.container_id == "c1"; input.exec_id == "c1" }
"#,
        );
        assert_eq!(p.status(), PolicyStatus::Enforced { rules: 4 });
        assert_eq!(p.check(&exec(&["ls", "/"])), Ok(()));
        assert_eq!(
            p.check(&exec(&["sh", "-c", "id"])),
            Err(PolicyError::Denied {
                rule: "ExecProcessRequest"
            })
        );
        let wait = |id: &str, exec_id: Option<&str>| Request::Wait {
            id: id.into(),
            exec_id: exec_id.map(Into::into),
        };
        assert_eq!(p.check(&wait("c1", None)), Ok(()));
        assert!(p.check(&wait("c1", Some("e1"))).is_err());
        assert!(p.check(&wait("c2", None)).is_err());
        // The policy evaluates again for each request: an earlier input does not leak.
        assert_eq!(p.check(&exec(&["ls", "/"])), Ok(()));
    }

    #[test]
    fn a_policy_can_allow_exactly_the_images_it_names() {
        let p = load(
            r#"package agent_policy
default CreateContainerRequest := false
CreateContainerRequest {
    input.image == "10.88.0.250:5000/busybox:latest"
}
"#,
        );
        let create = |image: Option<&str>| {
            Request::CreateContainer(CreateContainer {
                id: "c1".into(),
                rootfs: image.is_none().then(|| "c1/rootfs".into()),
                image: image.map(Into::into),
                hostname: None,
                process: Process::default(),
                files: vec![],
                masked_paths: Vec::new(),
                readonly_paths: Vec::new(),
                readonly_root: false,
                oci: Default::default(),
                resources: None,
            })
        };
        assert_eq!(
            p.check(&create(Some("10.88.0.250:5000/busybox:latest"))),
            Ok(())
        );
        for other in [Some("10.88.0.250:5000/other:latest"), None] {
            assert_eq!(
                p.check(&create(other)),
                Err(PolicyError::Denied {
                    rule: "CreateContainerRequest"
                })
            );
        }
    }

    #[test]
    fn undefined_rules_deny_except_coffers_own() {
        let p = load("package agent_policy\ndefault CreateContainerRequest := true\n");
        assert_eq!(p.status(), PolicyStatus::Enforced { rules: 1 });
        let create = &every_request()[1];
        assert_eq!(p.check(create), Ok(()));
        assert_eq!(
            p.check(&Request::Start { id: "c1".into() })
                .unwrap_err()
                .to_string(),
            "the agent policy denies StartContainerRequest"
        );
        assert_eq!(
            p.check(&Request::Shutdown).unwrap_err().to_string(),
            "the agent policy denies DestroySandboxRequest"
        );
        // Not a Kata rule: allowed unless the policy speaks about it.
        let read = Request::ReadFile {
            path: "policy.rego".into(),
        };
        assert_eq!(p.check(&read), Ok(()));
        let p = load("package agent_policy\ndefault ReadInitDataRequest := false\n");
        assert_eq!(
            p.check(&read),
            Err(PolicyError::Denied {
                rule: "ReadInitDataRequest"
            })
        );
        // A rule whose body does not hold and that has no default is undefined: denied.
        let p = load("package agent_policy\nimport rego.v1\nRemoveContainerRequest if input.container_id == \"keep\"\n");
        assert!(p.check(&Request::Remove { id: "c1".into() }).is_err());
        assert_eq!(p.check(&Request::Remove { id: "keep".into() }), Ok(()));
        // Hello is never gated, even by a policy that allows nothing.
        assert_eq!(
            p.check(&Request::Hello {
                protocol_version: 1
            }),
            Ok(())
        );
    }

    #[test]
    fn stdin_and_terminal_requests_use_kata_rules() {
        let p = load("package agent_policy\ndefault WriteStreamRequest := true\n");
        let write = Request::WriteStdin {
            id: "c1".into(),
            exec_id: None,
            data: b"ls\n".to_vec(),
        };
        assert_eq!(p.check(&write), Ok(()));
        let close = Request::CloseStdin {
            id: "c1".into(),
            exec_id: None,
        };
        assert_eq!(
            p.check(&close).unwrap_err().to_string(),
            "the agent policy denies CloseStdinRequest"
        );
        let resize = Request::ResizePty {
            id: "c1".into(),
            exec_id: None,
            width: 80,
            height: 24,
        };
        assert_eq!(
            p.check(&resize).unwrap_err().to_string(),
            "the agent policy denies TtyWinResizeRequest"
        );
    }

    #[test]
    fn a_rule_that_is_not_true_denies() {
        let p = load("package agent_policy\nStartContainerRequest := \"yes\"\n");
        assert!(p.check(&Request::Start { id: "c1".into() }).is_err());
    }

    /// kata-agent's long answer: `{"allowed": ..., "ops": [...]}`, whose ops patch the policy's
    /// data, so that later requests see the sandbox's earlier ones in `data.pstate`.
    #[test]
    fn allowed_requests_ops_keep_policy_state() {
        let p = load(
            r#"package agent_policy
default StartContainerRequest := {"allowed": false}
StartContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/started", "value": 1}]} if {
    not data.pstate.started
}
StartContainerRequest := {"allowed": true, "ops": [{"op": "replace", "path": "/pstate/started", "value": n + 1}]} if {
    n := data.pstate.started
    n < 2
}
default RemoveContainerRequest := {"allowed": false, "ops": [{"op": "add", "path": "/pstate/started", "value": 0}]}
"#,
        );
        let start = Request::Start { id: "c1".into() };
        assert_eq!(p.check(&start), Ok(()));
        assert_eq!(p.check(&start), Ok(()));
        assert_eq!(
            p.check(&start).unwrap_err().to_string(),
            "the agent policy denies StartContainerRequest"
        );
        // A denial's ops are not applied: the count stays at 2.
        assert!(p.check(&Request::Remove { id: "c1".into() }).is_err());
        assert!(p.check(&start).is_err());
    }

    #[test]
    fn ops_that_do_not_apply_or_grow_the_state_too_far_deny() {
        let p = load(
            r#"package agent_policy
StartContainerRequest := {"allowed": true, "ops": [{"op": "remove", "path": "/pstate/nothing"}]}
RemoveContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/pstate/big", "value": [i | some i in numbers.range(1, 300000)]}]}
ExecProcessRequest := {"allowed": "yes"}
"#,
        );
        let e = p.check(&Request::Start { id: "c1".into() }).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the agent policy denies StartContainerRequest: evaluating it failed: applying its ops to the policy state: "),
            "{e}"
        );
        let e = p.check(&Request::Remove { id: "c1".into() }).unwrap_err();
        assert!(e.to_string().contains("over the 1048576-byte limit"), "{e}");
        let e = p.check(&exec(&["ls"])).unwrap_err();
        assert!(
            e.to_string().contains("its result is neither true nor"),
            "{e}"
        );
    }

    #[test]
    fn policies_that_do_not_load_refuse_containers() {
        let cases = [
            // A syntax error.
            "package agent_policy\ndefault ExecProcessRequest := \n",
            // Another package.
            "package other\ndefault ExecProcessRequest := true\n",
            // A variable bound nowhere.
            "package agent_policy\nExecProcessRequest { x == input.id }\n",
        ];
        let mut reasons = Vec::new();
        for rego in cases {
            let p = AgentPolicy::load(Some(rego));
            let PolicyStatus::Invalid { reason } = p.status() else {
                panic!("{rego:?} loaded: {:?}", p.status());
            };
            let refused = p.check(&every_request()[1]).unwrap_err().to_string();
            assert_eq!(
                refused,
                format!(
                    "this guest refuses to run containers: {}; fix policy.rego and start the pod with the corrected Init-Data",
                    p.status().refusal().unwrap()
                )
            );
            assert_eq!(p.check(&Request::Shutdown), Ok(()));
            assert_eq!(
                p.check(&Request::ReadFile {
                    path: "policy.rego".into()
                }),
                Ok(())
            );
            reasons.push(reason);
        }
        assert_eq!(
            reasons,
            [
                "policy.rego:3:1: expecting expression",
                "it declares other, but an agent policy must be `package agent_policy`",
                "policy.rego:2:22: use of undefined variable `x` is unsafe",
            ]
        );
    }

    #[test]
    fn evaluation_errors_deny() {
        // regorus resolves functions when it evaluates a rule, not when it loads the policy.
        let p = load("package agent_policy\nExecProcessRequest { no_such_function(input) }\n");
        let err = p.check(&exec(&["ls"])).unwrap_err();
        assert!(
            matches!(&err, PolicyError::EvalFailed { rule: "ExecProcessRequest", reason } if reason.contains("no_such_function")),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("the agent policy denies ExecProcessRequest: evaluating it failed: "));
    }
}
