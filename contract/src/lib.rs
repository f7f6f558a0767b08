//! The host-guest contract: every name both sides of the VM boundary must agree on, defined
//! once.
//!
//! The launch plan (`coffer-hypervisor`) writes these into QEMU's command line and the guest's
//! kernel command line; `coffer-agent` looks for them inside the guest. Neither side knows the
//! other: both import this leaf crate, so a renamed port or parameter cannot drift apart.
//!
//! | name | host side | guest side |
//! |---|---|---|
//! | [`AGENT_PORT_NAME`] | `virtserialport,name=` | `/sys/class/virtio-ports/*/name` |
//! | [`SHARE_MOUNT_TAG`] | `virtio-9p-pci,mount_tag=` | `mount -t 9p <tag>` |
//! | [`INITDATA_DISK_SERIAL`] | `virtio-blk-pci,serial=` | `/sys/block/vd*/serial` |
//! | [`KernelParams`] | appended to `-append` | parsed from `/proc/cmdline` |
//! | [`Tee`] | what the VM is launched as | which register the guest reads |

use std::fmt;
use std::str::FromStr;

use coffer_initdata::Limits;
use serde::{Deserialize, Serialize};

/// Name of the agent's virtio-serial port.
pub const AGENT_PORT_NAME: &str = "coffer.agent";
/// 9p mount tag of the share that carries container root filesystems.
pub const SHARE_MOUNT_TAG: &str = "coffer";
/// Serial of the Init-Data disk.
pub const INITDATA_DISK_SERIAL: &str = "initdata";

/// Kernel parameter naming the TEE.
pub const TEE_PARAM: &str = "coffer.tee";
/// Kernel parameter carrying the hex digest of the Init-Data the host bound.
pub const DIGEST_PARAM: &str = "coffer.initdata_digest";
/// Kernel parameter carrying the handler's bound on the encoded Init-Data (the image's gzip
/// stream), so the guest reads with the same limits the host validated with.
pub const MAX_ENCODED_PARAM: &str = "coffer.initdata_max_encoded";
/// Kernel parameter carrying the handler's bound on the inflated Init-Data document.
pub const MAX_INFLATED_PARAM: &str = "coffer.initdata_max_inflated";

/// The trusted execution environment a sandbox VM runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    /// An ordinary VM: nothing is measured. For development; reported as unmeasured everywhere.
    #[default]
    None,
    /// Intel TDX: the digest goes into MRCONFIGID.
    Tdx,
    /// AMD SEV-SNP: the digest goes into HOST_DATA.
    Snp,
}

impl Tee {
    /// Every kind, in the order tools print them.
    pub const ALL: [Tee; 3] = [Tee::None, Tee::Tdx, Tee::Snp];

    /// `none`, `tdx` or `snp`, as in configuration files and on the kernel command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::None => "none",
            Tee::Tdx => "tdx",
            Tee::Snp => "snp",
        }
    }

    /// The name people write in prose: `TDX`, `SNP`.
    pub fn display_name(self) -> &'static str {
        match self {
            Tee::None => "non-confidential",
            Tee::Tdx => "TDX",
            Tee::Snp => "SNP",
        }
    }
}

impl fmt::Display for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tee {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Tee::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown TEE \"{s}\"; use none, tdx or snp"))
    }
}

/// What the host tells the guest on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelParams {
    /// [`TEE_PARAM`].
    pub tee: Tee,
    /// [`DIGEST_PARAM`]: hex of the raw digest of the Init-Data the launch is bound to.
    pub initdata_digest: Option<String>,
    /// [`MAX_ENCODED_PARAM`] and [`MAX_INFLATED_PARAM`]: written only when they differ from the
    /// defaults, which the guest assumes anyway.
    pub limits: Limits,
}

impl KernelParams {
    /// Parses a kernel command line. Other parameters are someone else's; a bad value of one of
    /// ours is an error, so it is reported rather than taken for a default.
    pub fn parse(cmdline: &str) -> Result<KernelParams, String> {
        let mut out = KernelParams::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                TEE_PARAM => {
                    out.tee = value.parse().map_err(|_| {
                        format!(
                            "kernel command line has {TEE_PARAM}={value}; expected none, tdx or snp"
                        )
                    })?;
                }
                DIGEST_PARAM if !value.is_empty() => out.initdata_digest = Some(value.to_string()),
                MAX_ENCODED_PARAM => out.limits.max_encoded = parse_size(key, value)?,
                MAX_INFLATED_PARAM => out.limits.max_inflated = parse_size(key, value)?,
                _ => {}
            }
        }
        Ok(out)
    }
}

impl fmt::Display for KernelParams {
    /// The parameters as words for the kernel command line, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TEE_PARAM}={}", self.tee)?;
        if let Some(d) = &self.initdata_digest {
            write!(f, " {DIGEST_PARAM}={d}")?;
        }
        let limits = limits_params(&self.limits);
        if !limits.is_empty() {
            write!(f, " {limits}")?;
        }
        Ok(())
    }
}

/// The kernel parameters that tell the guest the host's Init-Data limits; empty for the
/// defaults, which the guest assumes anyway.
pub fn limits_params(limits: &Limits) -> String {
    let default = Limits::default();
    let mut params = Vec::new();
    if limits.max_encoded != default.max_encoded {
        params.push(format!("{MAX_ENCODED_PARAM}={}", limits.max_encoded));
    }
    if limits.max_inflated != default.max_inflated {
        params.push(format!("{MAX_INFLATED_PARAM}={}", limits.max_inflated));
    }
    params.join(" ")
}

fn parse_size(param: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("kernel command line has {param}={value}; expected a size in bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_params_round_trip() {
        let cases = [
            KernelParams::default(),
            KernelParams {
                tee: Tee::Snp,
                initdata_digest: Some("ab".repeat(32)),
                limits: Limits::default(),
            },
            KernelParams {
                tee: Tee::Tdx,
                initdata_digest: Some("cd".repeat(48)),
                limits: Limits {
                    max_encoded: 1 << 20,
                    max_inflated: 8 << 20,
                },
            },
        ];
        for params in cases {
            let line = format!("console=ttyS0 quiet {params} foo=bar");
            assert_eq!(KernelParams::parse(&line), Ok(params));
        }
    }

    #[test]
    fn limits_reach_the_guest_only_when_they_differ_from_the_defaults() {
        assert_eq!(limits_params(&Limits::default()), "");
        let l = Limits {
            max_encoded: 1 << 20,
            ..Limits::default()
        };
        assert_eq!(limits_params(&l), "coffer.initdata_max_encoded=1048576");
        let l = Limits {
            max_encoded: 10,
            max_inflated: 20,
        };
        assert_eq!(
            limits_params(&l),
            "coffer.initdata_max_encoded=10 coffer.initdata_max_inflated=20"
        );
    }

    #[test]
    fn only_limits_that_differ_from_the_defaults_are_written() {
        let mut params = KernelParams::default();
        assert_eq!(params.to_string(), "coffer.tee=none");
        params.limits.max_inflated = 9;
        assert_eq!(
            params.to_string(),
            "coffer.tee=none coffer.initdata_max_inflated=9"
        );
    }

    #[test]
    fn bad_values_are_errors_not_defaults() {
        assert_eq!(
            KernelParams::parse("coffer.tee=sev").unwrap_err(),
            "kernel command line has coffer.tee=sev; expected none, tdx or snp"
        );
        assert_eq!(
            KernelParams::parse("coffer.initdata_max_inflated=4M").unwrap_err(),
            "kernel command line has coffer.initdata_max_inflated=4M; expected a size in bytes"
        );
        // An empty digest is no digest.
        assert_eq!(
            KernelParams::parse("coffer.initdata_digest= coffer.tee=tdx"),
            Ok(KernelParams {
                tee: Tee::Tdx,
                ..KernelParams::default()
            })
        );
    }

    #[test]
    fn tee_names_round_trip() {
        for tee in Tee::ALL {
            assert_eq!(tee.as_str().parse::<Tee>(), Ok(tee));
        }
        assert_eq!(
            "sev".parse::<Tee>().unwrap_err(),
            "unknown TEE \"sev\"; use none, tdx or snp"
        );
    }
}
