//! The agent policy's `input`: for every request Coffer gates, the JSON kata-agent would pass to
//! the same rule, so that a policy written for Kata (by hand or by genpolicy) reads the same
//! fields.
//!
//! kata-agent evaluates its policy with the serde JSON of its ttrpc request: the rust-protobuf
//! types generated from Kata's `agent.proto` and `oci.proto`. That JSON has every field of the
//! message, named exactly as in the `.proto` file (`container_id`, `OCI`, `Process`, `Args`,
//! `hwAddr`), except that a field called `type` is `type_`; an absent message is `null`, an
//! empty repeated field `[]`, a map `{}`, a string `""`, a number `0`, an enum its number
//! (`IPFamily` `v4` is `0`) and a oneof `null` or `{"Variant": value}` (`ErrnoRet` is
//! `{"Errnoret": 1}`). The builders here write that shape, field for field; a field Coffer cannot
//! know gets its proto3 default.
//!
//! `input.OCI` of `CreateContainerRequest` is the container's OCI spec as the host sent it
//! ([`CreateContainer::oci`]), converted to `oci.proto`'s shape, with every field the guest acts
//! on replaced by the value it acts on: the host could otherwise show the policy one command and
//! have the guest run another. `docs/kata-compatibility.md` lists every top-level field of each
//! rule's input and where its value comes from; a test below keeps the two in step.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::protocol::network::{ArpNeighbor, Interface, IpAddress, Route};
use crate::protocol::{Capabilities, CreateContainer, Process, Request, Resources, Seccomp};

/// The annotation naming a CRI container's image, which Kata's runtime reads to fill the
/// guest-pull storage.
const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// kata-agent's storage driver for an image the guest pulls.
const GUEST_PULL_DRIVER: &str = "image_guest_pull";

/// `IPFamily` in Kata's `types.proto`.
const FAMILY_V4: u32 = 0;
const FAMILY_V6: u32 = 1;

/// The neighbour state the guest gives every entry it adds (`NUD_PERMANENT`).
const NUD_PERMANENT: u32 = 0x80;

/// kata-agent's request JSON for `request`, the `input` of the rule `rule_for` names.
/// Hello is never gated and has no input (`null`).
pub fn request_input(request: &Request) -> Value {
    match request {
        Request::Hello { .. } => Value::Null,
        Request::CreateContainer(c) => create_container(c),
        Request::Start { id } => json!({ "container_id": id }),
        Request::Exec {
            id,
            exec_id,
            process,
        } => json!({
            "container_id": id,
            "exec_id": exec_id,
            "string_user": null,
            "process": coffer_process(process),
            "stdin_port": 0,
            "stdout_port": 0,
            "stderr_port": 0,
        }),
        Request::Wait { id, exec_id } => json!({
            "container_id": id,
            "exec_id": process_id(id, exec_id.as_deref()),
        }),
        Request::Signal {
            id,
            exec_id,
            signal,
        } => json!({
            "container_id": id,
            "exec_id": process_id(id, exec_id.as_deref()),
            // uint32 in agent.proto; a negative number (which the guest refuses) stays visible.
            "signal": signal,
        }),
        Request::Remove { id } => json!({ "container_id": id, "timeout": 0 }),
        // Coffer's own rule: Kata has no request for it.
        Request::ReadFile { path } => json!({ "path": path }),
        Request::Shutdown => json!({}),
        Request::WriteStdin { id, exec_id, data } => json!({
            "container_id": id,
            "exec_id": process_id(id, exec_id.as_deref()),
            // `bytes` is a `Vec<u8>` in rust-protobuf: serde writes an array of numbers.
            "data": data,
        }),
        Request::CloseStdin { id, exec_id } => json!({
            "container_id": id,
            "exec_id": process_id(id, exec_id.as_deref()),
        }),
        Request::ResizePty {
            id,
            exec_id,
            width,
            height,
        } => json!({
            "container_id": id,
            "exec_id": process_id(id, exec_id.as_deref()),
            "row": height,
            "column": width,
        }),
        Request::UpdateInterface { interface } => json!({ "interface": kata_interface(interface) }),
        Request::UpdateRoutes { routes } => json!({
            "routes": { "Routes": routes.iter().map(kata_route).collect::<Vec<_>>() },
        }),
        Request::AddArpNeighbors { neighbors } => json!({
            "neighbors": {
                "ARPNeighbors": neighbors.iter().map(kata_neighbor).collect::<Vec<_>>(),
            },
        }),
        Request::Stats { id } | Request::Pause { id } | Request::Resume { id } => {
            json!({ "container_id": id })
        }
        Request::UpdateResources { id, resources } => json!({
            "container_id": id,
            "resources": coffer_resources(resources),
        }),
    }
}

/// kata-agent's `ReadStreamRequest`: reading `len` bytes of a process's output.
pub fn read_stream(id: &str, exec_id: Option<&str>, len: usize) -> Value {
    json!({
        "container_id": id,
        "exec_id": process_id(id, exec_id),
        "len": u32::try_from(len).unwrap_or(u32::MAX),
    })
}

/// Kata's runtime names a container's own process by the container id.
fn process_id<'a>(id: &'a str, exec_id: Option<&'a str>) -> &'a str {
    exec_id.unwrap_or(id)
}

/// Where Kata's runtime mounts the root filesystem of a container whose image the guest pulls.
fn guest_pull_root(id: &str) -> String {
    format!("/run/kata-containers/{id}/rootfs")
}

fn create_container(c: &CreateContainer) -> Value {
    let mut oci = spec(&c.oci);
    enforce(&mut oci, c);
    let storages = match &c.image {
        Some(image) => vec![guest_pull_storage(&c.id, image, &oci["Annotations"])],
        // A root filesystem the host shares: Kata would describe its virtio-fs or block
        // storage; Coffer's 9p share has no kata-agent storage to describe.
        None => Vec::new(),
    };
    json!({
        "container_id": c.id,
        // Kata's runtime creates the container's process under the container's id.
        "exec_id": c.id,
        "string_user": null,
        "devices": [],
        "storages": storages,
        "OCI": oci,
        // Every container has its own PID namespace in Coffer's guest.
        "sandbox_pidns": false,
        "shared_mounts": [],
        "stdin_port": 0,
        "stdout_port": 0,
        "stderr_port": 0,
        // Coffer's addition: the image the guest pulls, `null` for a host-shared root.
        "image": c.image,
    })
}

/// The `Storage` Kata's runtime sends for an image the guest pulls: driver `image_guest_pull`,
/// the image reference as source, the container's annotations as the pull's metadata.
fn guest_pull_storage(id: &str, image: &str, annotations: &Value) -> Value {
    let metadata: BTreeMap<&str, &str> = annotations
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
        .collect();
    let volume = json!({ "metadata": metadata });
    json!({
        "driver": GUEST_PULL_DRIVER,
        "driver_options": [format!("{GUEST_PULL_DRIVER}={volume}")],
        "source": image,
        "fstype": "overlay",
        "options": [],
        "mount_point": guest_pull_root(id),
        "fs_group": null,
        "shared": false,
    })
}

/// Replaces, in the converted spec, every field the guest acts on by the value it acts on.
fn enforce(oci: &mut Value, c: &CreateContainer) {
    // Process: what the guest runs.
    let mut process = match oci["Process"].take() {
        Value::Null => process(&json!({})),
        p => p,
    };
    let ours = coffer_process(&c.process);
    for key in [
        "Terminal",
        "Args",
        "Env",
        "Cwd",
        "Capabilities",
        "Rlimits",
        "NoNewPrivileges",
    ] {
        process[key] = ours[key].clone();
    }
    match process["User"].as_object_mut() {
        Some(user) => {
            for key in ["UID", "GID", "AdditionalGids"] {
                user.insert(key.into(), ours["User"][key].clone());
            }
        }
        None => process["User"] = ours["User"].clone(),
    }
    oci["Process"] = process;

    if oci["Root"].is_null() {
        oci["Root"] = root(&json!({}));
    }
    oci["Root"]["Readonly"] = Value::Bool(c.readonly_root);
    if c.image.is_some() {
        // Where Kata's runtime puts a guest-pulled root, matching the storage's mount point.
        oci["Root"]["Path"] = Value::String(guest_pull_root(&c.id));
    }

    oci["Hostname"] = Value::String(c.hostname.clone().unwrap_or_default());

    if let Some(image) = &c.image {
        if let Some(annotations) = oci["Annotations"].as_object_mut() {
            annotations.insert(IMAGE_NAME.into(), Value::String(image.clone()));
        }
    }

    // Files the guest binds into the container appear as bind mounts at their paths.
    if let Some(mounts) = oci["Mounts"].as_array_mut() {
        for file in &c.files {
            if !mounts
                .iter()
                .any(|m| m["destination"] == file.path.as_str())
            {
                let mode = if file.readonly { "ro" } else { "rw" };
                mounts.push(json!({
                    "destination": file.path,
                    "source": "",
                    "type_": "bind",
                    "options": ["rbind", "rprivate", mode],
                }));
            }
        }
    }

    if oci["Linux"].is_null() {
        oci["Linux"] = linux(&json!({}));
    }
    let linux = &mut oci["Linux"];
    linux["MaskedPaths"] = json!(c.masked_paths);
    linux["ReadonlyPaths"] = json!(c.readonly_paths);
    linux["Seccomp"] = c
        .process
        .seccomp
        .as_ref()
        .map_or(Value::Null, coffer_seccomp);
    enforce_resources(&mut linux["Resources"], c.resources.unwrap_or_default());
}

/// The limits the guest applies, over what the spec says: a limit the guest does not apply
/// reads as the proto3 default.
fn enforce_resources(res: &mut Value, ours: Resources) {
    if res.is_null() {
        if ours == Resources::default() {
            return;
        }
        *res = resources(&json!({}));
    }
    let mut set = |message: &str, make: fn(&Value) -> Value, field: &str, value: Value| {
        if res[message].is_null() {
            if value == json!(0) {
                return;
            }
            res[message] = make(&json!({}));
        }
        res[message][field] = value;
    };
    set(
        "Memory",
        memory,
        "Limit",
        json!(ours.memory_limit.unwrap_or(0)),
    );
    set("CPU", cpu, "Quota", json!(ours.cpu_quota.unwrap_or(0)));
    set("CPU", cpu, "Period", json!(ours.cpu_period.unwrap_or(0)));
    set("CPU", cpu, "Shares", json!(ours.cpu_shares.unwrap_or(0)));
    set("Pids", pids, "Limit", json!(ours.pids_limit.unwrap_or(0)));
}

/// Coffer's process as `oci.proto`'s `Process`.
fn coffer_process(p: &Process) -> Value {
    json!({
        "Terminal": p.terminal,
        "ConsoleSize": null,
        "User": {
            "UID": p.uid,
            "GID": p.gid,
            "AdditionalGids": p.additional_gids,
            "Username": "",
        },
        "Args": p.args,
        "Env": p.env,
        "Cwd": p.cwd,
        "Capabilities": p.capabilities.as_ref().map_or(Value::Null, coffer_capabilities),
        "Rlimits": p.rlimits.iter().map(|r| json!({
            "Type": r.kind,
            "Hard": r.hard,
            "Soft": r.soft,
        })).collect::<Vec<_>>(),
        "NoNewPrivileges": p.no_new_privileges,
        "ApparmorProfile": "",
        "OOMScoreAdj": 0,
        "SelinuxLabel": "",
    })
}

fn coffer_capabilities(c: &Capabilities) -> Value {
    json!({
        "Bounding": c.bounding,
        "Effective": c.effective,
        "Inheritable": c.inheritable,
        "Permitted": c.permitted,
        "Ambient": c.ambient,
    })
}

fn coffer_seccomp(s: &Seccomp) -> Value {
    json!({
        "DefaultAction": s.default_action,
        "Architectures": s.architectures,
        "Flags": s.flags,
        "Syscalls": s.syscalls.iter().map(|c| json!({
            "Names": c.names,
            "Action": c.action,
            "ErrnoRet": c.errno_ret.map_or(Value::Null, |e| json!({ "Errnoret": e })),
            "Args": c.args.iter().map(|a| json!({
                "Index": a.index,
                "Value": a.value,
                "ValueTwo": a.value_two,
                "Op": a.op,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Coffer's limits as `oci.proto`'s `LinuxResources`; a message with no limit is `null`.
fn coffer_resources(r: &Resources) -> Value {
    let mut res = resources(&json!({}));
    enforce_resources(&mut res, *r);
    res
}

fn kata_ip(family: u32, address: &str, mask: String) -> Value {
    json!({ "family": family, "address": address, "mask": mask })
}

fn family_of(address: &std::net::IpAddr) -> u32 {
    if address.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

fn kata_interface(i: &Interface) -> Value {
    json!({
        // Kata's runtime names the device after the interface.
        "device": i.name,
        "name": i.name,
        "IPAddresses": i.ip_addresses.iter().map(|a: &IpAddress| kata_ip(
            family_of(&a.address),
            &a.address.to_string(),
            a.prefix_len.to_string(),
        )).collect::<Vec<_>>(),
        "mtu": i.mtu,
        "hwAddr": i.hw_addr,
        "devicePath": "",
        "type_": "",
        "raw_flags": 0,
    })
}

fn kata_route(r: &Route) -> Value {
    let family = r
        .dest
        .map(|d| d.address)
        .or(r.gateway)
        .or(r.source)
        .map_or(FAMILY_V4, |a| family_of(&a));
    json!({
        "dest": r.dest.map(|d| format!("{}/{}", d.address, d.prefix_len)).unwrap_or_default(),
        "gateway": r.gateway.map(|g| g.to_string()).unwrap_or_default(),
        "device": r.device,
        "source": r.source.map(|s| s.to_string()).unwrap_or_default(),
        "scope": r.scope,
        "family": family,
        "flags": 0,
        "mtu": 0,
    })
}

fn kata_neighbor(n: &ArpNeighbor) -> Value {
    json!({
        "toIPAddress": kata_ip(family_of(&n.address), &n.address.to_string(), String::new()),
        "device": n.device,
        "lladdr": n.lladdr,
        "state": NUD_PERMANENT,
        "flags": 0,
    })
}

// The OCI runtime spec (its JSON names, camelCase) to `oci.proto`'s shape. Each function takes
// the spec's object (or `{}`) and writes every field of the message; a value of the wrong JSON
// type reads as absent.

fn string(v: &Value, key: &str) -> Value {
    Value::String(v[key].as_str().unwrap_or_default().to_string())
}

fn boolean(v: &Value, key: &str) -> Value {
    Value::Bool(v[key].as_bool().unwrap_or(false))
}

fn number(v: &Value, key: &str) -> Value {
    match &v[key] {
        Value::Number(n) => Value::Number(n.clone()),
        _ => json!(0),
    }
}

/// The elements of the array `v[key]` that `keep` accepts (none when it is not an array).
fn array_of(v: &Value, key: &str, keep: fn(&Value) -> bool) -> Value {
    Value::Array(
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| keep(e))
            .cloned()
            .collect(),
    )
}

fn strings(v: &Value, key: &str) -> Value {
    array_of(v, key, Value::is_string)
}

fn numbers(v: &Value, key: &str) -> Value {
    array_of(v, key, Value::is_number)
}

fn string_map(v: &Value, key: &str) -> Value {
    let map: Map<String, Value> = v[key]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, s)| s.is_string())
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    Value::Object(map)
}

fn message(v: &Value, key: &str, convert: fn(&Value) -> Value) -> Value {
    if v[key].is_object() {
        convert(&v[key])
    } else {
        Value::Null
    }
}

fn repeated(v: &Value, key: &str, convert: fn(&Value) -> Value) -> Value {
    Value::Array(
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e.is_object())
            .map(convert)
            .collect(),
    )
}

/// `Spec`; a spec that is not a JSON object converts as an empty one.
fn spec(v: &Value) -> Value {
    let empty = json!({});
    let v = if v.is_object() { v } else { &empty };
    json!({
        "Version": string(v, "ociVersion"),
        "Process": message(v, "process", process),
        "Root": message(v, "root", root),
        "Hostname": string(v, "hostname"),
        "Mounts": repeated(v, "mounts", |m| json!({
            "destination": string(m, "destination"),
            "source": string(m, "source"),
            "type_": string(m, "type"),
            "options": strings(m, "options"),
        })),
        "Hooks": message(v, "hooks", hooks),
        "Annotations": string_map(v, "annotations"),
        "Linux": message(v, "linux", linux),
        "Solaris": message(v, "solaris", |_| json!({ "dummy": "" })),
        "Windows": message(v, "windows", |_| json!({ "dummy": "" })),
    })
}

fn process(v: &Value) -> Value {
    json!({
        "Terminal": boolean(v, "terminal"),
        "ConsoleSize": message(v, "consoleSize", |b| json!({
            "Height": number(b, "height"),
            "Width": number(b, "width"),
        })),
        "User": message(v, "user", |u| json!({
            "UID": number(u, "uid"),
            "GID": number(u, "gid"),
            "AdditionalGids": numbers(u, "additionalGids"),
            "Username": string(u, "username"),
        })),
        "Args": strings(v, "args"),
        "Env": strings(v, "env"),
        "Cwd": string(v, "cwd"),
        "Capabilities": message(v, "capabilities", |c| json!({
            "Bounding": strings(c, "bounding"),
            "Effective": strings(c, "effective"),
            "Inheritable": strings(c, "inheritable"),
            "Permitted": strings(c, "permitted"),
            "Ambient": strings(c, "ambient"),
        })),
        "Rlimits": repeated(v, "rlimits", |r| json!({
            "Type": string(r, "type"),
            "Hard": number(r, "hard"),
            "Soft": number(r, "soft"),
        })),
        "NoNewPrivileges": boolean(v, "noNewPrivileges"),
        "ApparmorProfile": string(v, "apparmorProfile"),
        "OOMScoreAdj": number(v, "oomScoreAdj"),
        "SelinuxLabel": string(v, "selinuxLabel"),
    })
}

fn root(v: &Value) -> Value {
    json!({ "Path": string(v, "path"), "Readonly": boolean(v, "readonly") })
}

fn hook(v: &Value) -> Value {
    json!({
        "Path": string(v, "path"),
        "Args": strings(v, "args"),
        "Env": strings(v, "env"),
        "Timeout": number(v, "timeout"),
    })
}

fn hooks(v: &Value) -> Value {
    json!({
        "Prestart": repeated(v, "prestart", hook),
        "Poststart": repeated(v, "poststart", hook),
        "Poststop": repeated(v, "poststop", hook),
        "CreateRuntime": repeated(v, "createRuntime", hook),
        "CreateContainer": repeated(v, "createContainer", hook),
        "StartContainer": repeated(v, "startContainer", hook),
    })
}

fn id_mapping(v: &Value) -> Value {
    json!({
        "HostID": number(v, "hostID"),
        "ContainerID": number(v, "containerID"),
        "Size": number(v, "size"),
    })
}

fn linux(v: &Value) -> Value {
    json!({
        "UIDMappings": repeated(v, "uidMappings", id_mapping),
        "GIDMappings": repeated(v, "gidMappings", id_mapping),
        "Sysctl": string_map(v, "sysctl"),
        "Resources": message(v, "resources", resources),
        "CgroupsPath": string(v, "cgroupsPath"),
        "Namespaces": repeated(v, "namespaces", |n| json!({
            "Type": string(n, "type"),
            "Path": string(n, "path"),
        })),
        "Devices": repeated(v, "devices", |d| json!({
            "Path": string(d, "path"),
            "Type": string(d, "type"),
            "Major": number(d, "major"),
            "Minor": number(d, "minor"),
            "FileMode": number(d, "fileMode"),
            "UID": number(d, "uid"),
            "GID": number(d, "gid"),
        })),
        "Seccomp": message(v, "seccomp", |s| json!({
            "DefaultAction": string(s, "defaultAction"),
            "Architectures": strings(s, "architectures"),
            "Flags": strings(s, "flags"),
            "Syscalls": repeated(s, "syscalls", |c| json!({
                "Names": strings(c, "names"),
                "Action": string(c, "action"),
                "ErrnoRet": if c["errnoRet"].is_number() {
                    json!({ "Errnoret": c["errnoRet"] })
                } else {
                    Value::Null
                },
                "Args": repeated(c, "args", |a| json!({
                    "Index": number(a, "index"),
                    "Value": number(a, "value"),
                    "ValueTwo": number(a, "valueTwo"),
                    "Op": string(a, "op"),
                })),
            })),
        })),
        "RootfsPropagation": string(v, "rootfsPropagation"),
        "MaskedPaths": strings(v, "maskedPaths"),
        "ReadonlyPaths": strings(v, "readonlyPaths"),
        "MountLabel": string(v, "mountLabel"),
        "IntelRdt": message(v, "intelRdt", |r| json!({
            "L3CacheSchema": string(r, "l3CacheSchema"),
        })),
    })
}

fn resources(v: &Value) -> Value {
    json!({
        "Devices": repeated(v, "devices", |d| json!({
            "Allow": boolean(d, "allow"),
            "Type": string(d, "type"),
            "Major": number(d, "major"),
            "Minor": number(d, "minor"),
            "Access": string(d, "access"),
        })),
        "Memory": message(v, "memory", memory),
        "CPU": message(v, "cpu", cpu),
        "Pids": message(v, "pids", pids),
        "BlockIO": message(v, "blockIO", block_io),
        "HugepageLimits": repeated(v, "hugepageLimits", |h| json!({
            "Pagesize": string(h, "pageSize"),
            "Limit": number(h, "limit"),
        })),
        "Network": message(v, "network", |n| json!({
            "ClassID": number(n, "classID"),
            "Priorities": repeated(n, "priorities", |p| json!({
                "Name": string(p, "name"),
                "Priority": number(p, "priority"),
            })),
        })),
    })
}

fn memory(v: &Value) -> Value {
    json!({
        "Limit": number(v, "limit"),
        "Reservation": number(v, "reservation"),
        "Swap": number(v, "swap"),
        "Kernel": number(v, "kernel"),
        "KernelTCP": number(v, "kernelTCP"),
        "Swappiness": number(v, "swappiness"),
        "DisableOOMKiller": boolean(v, "disableOOMKiller"),
    })
}

fn cpu(v: &Value) -> Value {
    json!({
        "Shares": number(v, "shares"),
        "Quota": number(v, "quota"),
        "Period": number(v, "period"),
        "RealtimeRuntime": number(v, "realtimeRuntime"),
        "RealtimePeriod": number(v, "realtimePeriod"),
        "Cpus": string(v, "cpus"),
        "Mems": string(v, "mems"),
    })
}

fn pids(v: &Value) -> Value {
    json!({ "Limit": number(v, "limit") })
}

fn block_io(v: &Value) -> Value {
    let throttle = |d: &Value| {
        json!({
            "Major": number(d, "major"),
            "Minor": number(d, "minor"),
            "Rate": number(d, "rate"),
        })
    };
    let throttles = |key: &str| {
        Value::Array(
            v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e.is_object())
                .map(throttle)
                .collect(),
        )
    };
    json!({
        "Weight": number(v, "weight"),
        "LeafWeight": number(v, "leafWeight"),
        "WeightDevice": repeated(v, "weightDevice", |d| json!({
            "Major": number(d, "major"),
            "Minor": number(d, "minor"),
            "Weight": number(d, "weight"),
            "LeafWeight": number(d, "leafWeight"),
        })),
        "ThrottleReadBpsDevice": throttles("throttleReadBpsDevice"),
        "ThrottleWriteBpsDevice": throttles("throttleWriteBpsDevice"),
        "ThrottleReadIOPSDevice": throttles("throttleReadIOPSDevice"),
        "ThrottleWriteIOPSDevice": throttles("throttleWriteIOPSDevice"),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::guest::policy::{rule_for, AgentPolicy, PolicyError, READ_STREAM_RULE};
    use crate::protocol::{ContainerFile, Rlimit, SeccompSyscall};

    const DOC: &str = include_str!("../../../docs/kata-compatibility.md");

    const IMAGE: &str = "registry.example:5000/busybox:1.36";

    /// A CRI container's spec as containerd writes it (trimmed).
    fn cri_spec(args: &[&str]) -> Value {
        json!({
            "ociVersion": "1.1.0",
            "process": {
                "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
                "args": args,
                "env": ["PATH=/usr/bin:/bin"],
                "cwd": "/",
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                                 "permitted": ["CAP_CHOWN"]},
                "noNewPrivileges": true,
                "oomScoreAdj": 1000
            },
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/etc/hosts", "type": "bind",
                 "source": "/var/lib/containerd/sandboxes/sb1/hosts",
                 "options": ["rbind", "rprivate", "rw"]}
            ],
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.sandbox-id": "sb1",
                "io.kubernetes.cri.image-name": IMAGE
            },
            "linux": {
                "resources": {"memory": {"limit": 134217728, "swap": -1}},
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO",
                            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]},
                "maskedPaths": ["/proc/kcore"]
            }
        })
    }

    fn process(args: &[&str]) -> Process {
        Process {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/".into(),
            additional_gids: vec![10],
            no_new_privileges: true,
            capabilities: Some(Capabilities {
                bounding: vec!["CAP_CHOWN".into()],
                effective: vec!["CAP_CHOWN".into()],
                permitted: vec!["CAP_CHOWN".into()],
                ..Capabilities::default()
            }),
            ..Process::default()
        }
    }

    /// What the shim sends for a guest-pulled CRI container running `args`.
    fn create(image: &str, args: &[&str]) -> CreateContainer {
        let mut oci = cri_spec(args);
        oci["annotations"][IMAGE_NAME] = json!(image);
        CreateContainer {
            id: "c1".into(),
            rootfs: None,
            image: Some(image.into()),
            hostname: Some("pod1".into()),
            process: process(args),
            resources: Some(Resources {
                memory_limit: Some(134_217_728),
                ..Resources::default()
            }),
            files: vec![],
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec![],
            readonly_root: false,
            oci,
        }
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

    /// One request of every gated kind.
    fn every_gated_request() -> Vec<Request> {
        let ip = |a: &str| a.parse().unwrap();
        vec![
            Request::CreateContainer(create(IMAGE, &["sh"])),
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
            Request::WriteStdin {
                id: "c1".into(),
                exec_id: None,
                data: b"ls\n".to_vec(),
            },
            Request::CloseStdin {
                id: "c1".into(),
                exec_id: Some("e1".into()),
            },
            Request::ResizePty {
                id: "c1".into(),
                exec_id: None,
                width: 80,
                height: 24,
            },
            Request::UpdateInterface {
                interface: Interface {
                    name: "eth0".into(),
                    hw_addr: "0a:58:0a:58:00:05".into(),
                    mtu: 1500,
                    ip_addresses: vec![IpAddress {
                        address: ip("10.88.0.5"),
                        prefix_len: 16,
                    }],
                },
            },
            Request::UpdateRoutes {
                routes: vec![Route {
                    dest: None,
                    gateway: Some(ip("10.88.0.1")),
                    source: None,
                    device: "eth0".into(),
                    scope: 0,
                }],
            },
            Request::AddArpNeighbors {
                neighbors: vec![ArpNeighbor {
                    address: ip("10.88.0.1"),
                    lladdr: "0a:58:0a:58:00:01".into(),
                    device: "eth0".into(),
                }],
            },
            Request::Stats { id: "c1".into() },
            Request::UpdateResources {
                id: "c1".into(),
                resources: Resources {
                    cpu_quota: Some(50_000),
                    cpu_period: Some(100_000),
                    ..Resources::default()
                },
            },
            Request::Pause { id: "c1".into() },
            Request::Resume { id: "c1".into() },
        ]
    }

    /// The fields each rule's table in the document lists, by rule.
    fn documented_fields() -> BTreeMap<String, BTreeSet<String>> {
        let section = DOC
            .split_once("\n## The policy's `input`\n")
            .expect("docs/kata-compatibility.md has the section")
            .1;
        let section = section.split("\n## ").next().unwrap_or(section);
        let mut fields: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut rules: Vec<String> = Vec::new();
        for line in section.lines() {
            if let Some(heading) = line.strip_prefix("### ") {
                rules = heading
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                for rule in &rules {
                    fields.entry(rule.clone()).or_default();
                }
            } else if let Some(row) = line.strip_prefix("| `") {
                let field = row.split('`').next().unwrap_or_default();
                for rule in &rules {
                    fields.get_mut(rule).unwrap().insert(field.to_string());
                }
            }
        }
        fields
    }

    fn keys(input: &Value) -> BTreeSet<String> {
        input.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_document_lists_every_field_of_every_rule() {
        let documented = documented_fields();
        let mut built: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for request in every_gated_request() {
            let rule = rule_for(&request).unwrap();
            built.insert(rule.to_string(), keys(&request_input(&request)));
        }
        built.insert(
            READ_STREAM_RULE.to_string(),
            keys(&read_stream("c1", None, 10)),
        );
        // A host-shared root has the same fields as a guest pull.
        let mut shared = create(IMAGE, &["sh"]);
        shared.image = None;
        shared.rootfs = Some("c1/rootfs".into());
        assert_eq!(
            keys(&request_input(&Request::CreateContainer(shared))),
            built["CreateContainerRequest"]
        );
        assert_eq!(documented, built);
    }

    #[test]
    fn every_gated_request_has_its_kata_shape() {
        let inputs: Vec<Value> = every_gated_request().iter().map(request_input).collect();
        assert_eq!(inputs[1], json!({"container_id": "c1"}));
        assert_eq!(
            inputs[2],
            json!({
                "container_id": "c1", "exec_id": "e1", "string_user": null,
                "process": {
                    "Terminal": false, "ConsoleSize": null,
                    "User": {"UID": 0, "GID": 0, "AdditionalGids": [], "Username": ""},
                    "Args": ["ls"], "Env": [], "Cwd": "", "Capabilities": null, "Rlimits": [],
                    "NoNewPrivileges": false, "ApparmorProfile": "", "OOMScoreAdj": 0,
                    "SelinuxLabel": ""
                },
                "stdin_port": 0, "stdout_port": 0, "stderr_port": 0
            })
        );
        assert_eq!(inputs[3], json!({"container_id": "c1", "exec_id": "c1"}));
        assert_eq!(
            inputs[4],
            json!({"container_id": "c1", "exec_id": "e1", "signal": 15})
        );
        assert_eq!(inputs[5], json!({"container_id": "c1", "timeout": 0}));
        assert_eq!(inputs[7], json!({}));
        assert_eq!(
            inputs[8],
            json!({"container_id": "c1", "exec_id": "c1", "data": [108, 115, 10]})
        );
        assert_eq!(
            inputs[10],
            json!({"container_id": "c1", "exec_id": "c1", "row": 24, "column": 80})
        );
        assert_eq!(
            inputs[11],
            json!({"interface": {
                "device": "eth0", "name": "eth0",
                "IPAddresses": [{"family": 0, "address": "10.88.0.5", "mask": "16"}],
                "mtu": 1500, "hwAddr": "0a:58:0a:58:00:05", "devicePath": "", "type_": "",
                "raw_flags": 0
            }})
        );
        assert_eq!(
            inputs[12],
            json!({"routes": {"Routes": [{
                "dest": "", "gateway": "10.88.0.1", "device": "eth0", "source": "", "scope": 0,
                "family": 0, "flags": 0, "mtu": 0
            }]}})
        );
        assert_eq!(
            inputs[13],
            json!({"neighbors": {"ARPNeighbors": [{
                "toIPAddress": {"family": 0, "address": "10.88.0.1", "mask": ""},
                "device": "eth0", "lladdr": "0a:58:0a:58:00:01", "state": 128, "flags": 0
            }]}})
        );
        assert_eq!(
            inputs[15]["resources"],
            json!({
                "Devices": [], "Memory": null,
                "CPU": {"Shares": 0, "Quota": 50000, "Period": 100000, "RealtimeRuntime": 0,
                        "RealtimePeriod": 0, "Cpus": "", "Mems": ""},
                "Pids": null, "BlockIO": null, "HugepageLimits": [], "Network": null
            })
        );
        assert_eq!(
            read_stream("c1", Some("e1"), 5),
            json!({"container_id": "c1", "exec_id": "e1", "len": 5})
        );
    }

    #[test]
    fn create_container_carries_the_spec_in_oci_proto_shape() {
        let input = request_input(&Request::CreateContainer(create(IMAGE, &["sh"])));
        let oci = &input["OCI"];
        assert_eq!(oci["Version"], "1.1.0");
        assert_eq!(oci["Process"]["Args"], json!(["sh"]));
        assert_eq!(oci["Process"]["OOMScoreAdj"], 1000);
        assert_eq!(
            oci["Process"]["Capabilities"],
            json!({"Bounding": ["CAP_CHOWN"], "Effective": ["CAP_CHOWN"], "Inheritable": [],
                   "Permitted": ["CAP_CHOWN"], "Ambient": []})
        );
        assert_eq!(
            oci["Root"],
            json!({"Path": "/run/kata-containers/c1/rootfs", "Readonly": false})
        );
        assert_eq!(oci["Hostname"], "pod1");
        assert_eq!(
            oci["Mounts"][0],
            json!({"destination": "/proc", "source": "proc", "type_": "proc",
                   "options": ["nosuid", "noexec", "nodev"]})
        );
        assert_eq!(oci["Hooks"], Value::Null);
        assert_eq!(oci["Annotations"][IMAGE_NAME], IMAGE);
        assert_eq!(oci["Solaris"], Value::Null);
        assert_eq!(oci["Windows"], Value::Null);
        let linux = &oci["Linux"];
        assert_eq!(linux["Namespaces"][0], json!({"Type": "pid", "Path": ""}));
        assert_eq!(linux["Resources"]["Memory"]["Limit"], 134_217_728);
        assert_eq!(linux["Resources"]["Memory"]["Swap"], -1);
        assert_eq!(linux["MaskedPaths"], json!(["/proc/kcore"]));
        assert_eq!(linux["UIDMappings"], json!([]));
        assert_eq!(linux["Sysctl"], json!({}));
        assert_eq!(linux["IntelRdt"], Value::Null);
        // The guest installs no seccomp profile the request does not carry.
        assert_eq!(linux["Seccomp"], Value::Null);
        let storage = &input["storages"][0];
        assert_eq!(storage["driver"], "image_guest_pull");
        assert_eq!(storage["source"], IMAGE);
        assert_eq!(storage["fstype"], "overlay");
        assert_eq!(storage["mount_point"], "/run/kata-containers/c1/rootfs");
        assert_eq!(storage["fs_group"], Value::Null);
        let options = storage["driver_options"][0].as_str().unwrap();
        let metadata: Value =
            serde_json::from_str(options.strip_prefix("image_guest_pull=").unwrap()).unwrap();
        assert_eq!(metadata["metadata"][IMAGE_NAME], IMAGE);
        assert_eq!(input["image"], IMAGE);
        assert_eq!(input["exec_id"], "c1");
        assert_eq!(input["sandbox_pidns"], false);
    }

    #[test]
    fn the_policy_sees_what_the_guest_does_not_what_the_spec_claims() {
        // A host that shows one command in the spec and asks for another.
        let mut c = create(IMAGE, &["rm", "-rf", "/"]);
        c.oci = cri_spec(&["sleep", "infinity"]);
        c.oci["annotations"][IMAGE_NAME] = json!("registry.example:5000/allowed:1");
        c.oci["root"]["readonly"] = json!(true);
        c.readonly_root = false;
        c.process.rlimits = vec![Rlimit {
            kind: "RLIMIT_NOFILE".into(),
            hard: 1024,
            soft: 1024,
        }];
        c.process.seccomp = Some(Seccomp {
            default_action: "SCMP_ACT_ALLOW".into(),
            syscalls: vec![SeccompSyscall {
                names: vec!["ptrace".into()],
                action: "SCMP_ACT_ERRNO".into(),
                errno_ret: Some(1),
                ..SeccompSyscall::default()
            }],
            ..Seccomp::default()
        });
        c.files = vec![
            ContainerFile {
                path: "/etc/hosts".into(),
                data: b"127.0.0.1 localhost\n".to_vec(),
                readonly: false,
            },
            ContainerFile {
                path: "/etc/passwd".into(),
                data: b"root::0:0::/:/bin/sh\n".to_vec(),
                readonly: true,
            },
        ];
        c.resources = None;
        let input = request_input(&Request::CreateContainer(c));
        let oci = &input["OCI"];
        assert_eq!(oci["Process"]["Args"], json!(["rm", "-rf", "/"]));
        assert_eq!(
            oci["Process"]["Rlimits"],
            json!([{"Type": "RLIMIT_NOFILE", "Hard": 1024, "Soft": 1024}])
        );
        assert_eq!(oci["Annotations"][IMAGE_NAME], IMAGE);
        assert_eq!(oci["Root"]["Readonly"], false);
        assert_eq!(
            oci["Linux"]["Seccomp"]["Syscalls"][0]["ErrnoRet"],
            json!({"Errnoret": 1})
        );
        assert_eq!(oci["Linux"]["Resources"]["Memory"]["Limit"], 0);
        assert_eq!(
            oci["Mounts"][2],
            json!({"destination": "/etc/passwd", "source": "", "type_": "bind",
                   "options": ["rbind", "rprivate", "ro"]})
        );
        // /etc/hosts is in the spec already: not listed twice.
        assert_eq!(oci["Mounts"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn without_a_spec_the_oci_input_still_has_kata_shape() {
        let mut c = create(IMAGE, &["sh"]);
        c.oci = Value::Null;
        c.image = None;
        c.rootfs = Some("c1/rootfs".into());
        let input = request_input(&Request::CreateContainer(c));
        assert_eq!(input["storages"], json!([]));
        assert_eq!(input["image"], Value::Null);
        let oci = &input["OCI"];
        assert_eq!(oci["Version"], "");
        assert_eq!(oci["Process"]["Args"], json!(["sh"]));
        assert_eq!(oci["Process"]["User"]["Username"], "");
        assert_eq!(oci["Root"], json!({"Path": "", "Readonly": false}));
        assert_eq!(oci["Annotations"], json!({}));
        assert_eq!(oci["Mounts"], json!([]));
        assert_eq!(oci["Linux"]["Namespaces"], json!([]));
    }

    fn load(rego: &str) -> AgentPolicy {
        let p = AgentPolicy::load(Some(rego));
        assert!(matches!(p, AgentPolicy::Enforced(_)), "{:?}", p.status());
        p
    }

    /// Rules written as genpolicy writes them, over kata-agent's input.
    const GENPOLICY_STYLE: &str = r#"package agent_policy

import future.keywords.in
import future.keywords.every

default CreateContainerRequest := false
default ExecProcessRequest := false

allowed_image := "registry.example:5000/busybox:1.36"

CreateContainerRequest {
    i_oci := input.OCI
    i_oci.Process.Args == ["sh", "-c", "echo ready; sleep infinity"]
    i_oci.Annotations["io.kubernetes.cri.image-name"] == allowed_image
    some i_storage in input.storages
    i_storage.driver == "image_guest_pull"
    i_storage.source == allowed_image
    i_oci.Root.Readonly == false
    every i_mount in i_oci.Mounts {
        i_mount.type_ in {"proc", "bind", "tmpfs", "sysfs", "mqueue", "devpts", "cgroup"}
    }
    is_null(input.string_user)
    count(input.shared_mounts) == 0
    input.sandbox_pidns == false
}

ExecProcessRequest {
    input.process.Args[0] == "sh"
    input.process.Args[1] == "-c"
    count(input.process.Args) == 3
}
"#;

    #[test]
    fn a_genpolicy_style_policy_allows_exactly_its_image_and_command() {
        let p = load(GENPOLICY_STYLE);
        let ready = ["sh", "-c", "echo ready; sleep infinity"];
        let ok = Request::CreateContainer(create(IMAGE, &ready));
        assert_eq!(p.check(&ok), Ok(()));
        let denied = Err(PolicyError::Denied {
            rule: "CreateContainerRequest",
        });
        for other in [
            create("registry.example:5000/other:1", &ready),
            create(IMAGE, &["sh", "-c", "cat /secret"]),
        ] {
            assert_eq!(p.check(&Request::CreateContainer(other)), denied);
        }
        let mut readonly = create(IMAGE, &ready);
        readonly.readonly_root = true;
        assert_eq!(p.check(&Request::CreateContainer(readonly)), denied);
        let mut overlay = create(IMAGE, &ready);
        overlay.oci["mounts"] = json!([{"destination": "/x", "type": "overlay", "source": "o"}]);
        assert_eq!(p.check(&Request::CreateContainer(overlay)), denied);
    }

    #[test]
    fn an_exec_allow_list_admits_sh_c_only() {
        let p = load(GENPOLICY_STYLE);
        assert_eq!(p.check(&exec(&["sh", "-c", "date"])), Ok(()));
        for other in [
            &["ls", "/"][..],
            &["sh"],
            &["sh", "-i", "x"],
            &["bash", "-c", "id"],
        ] {
            assert_eq!(
                p.check(&exec(other)),
                Err(PolicyError::Denied {
                    rule: "ExecProcessRequest"
                }),
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_deny_list_over_the_oci_process_denies_what_it_lists() {
        // Over an input without `OCI`, `not input.OCI.Process.Args[0] in {...}` held for every
        // request: the deny list allowed everything.
        let p = load(
            r#"package agent_policy
import future.keywords.in
default CreateContainerRequest := false
CreateContainerRequest { not input.OCI.Process.Args[0] in {"nc", "curl"} }
"#,
        );
        assert_eq!(
            p.check(&Request::CreateContainer(create(IMAGE, &["curl", "x"]))),
            Err(PolicyError::Denied {
                rule: "CreateContainerRequest"
            })
        );
        assert_eq!(
            p.check(&Request::CreateContainer(create(IMAGE, &["sleep", "1"]))),
            Ok(())
        );
    }
}
