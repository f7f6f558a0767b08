//! What a VM is launched as: the TEE kind and the accelerator.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The trusted execution environment a sandbox VM runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    /// An ordinary VM: nothing is measured. For development; reported as unmeasured everywhere.
    None,
    /// Intel TDX: the digest goes into MRCONFIGID.
    Tdx,
    /// AMD SEV-SNP: the digest goes into HOST_DATA.
    Snp,
}

impl Tee {
    /// Every kind, in the order tools print them.
    pub const ALL: [Tee; 3] = [Tee::None, Tee::Tdx, Tee::Snp];

    /// `none`, `tdx` or `snp`.
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

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when the host probe finds it usable at hardware speed, else TCG.
    #[default]
    Auto,
    /// Hardware virtualization through /dev/kvm. TDX and SNP always use it.
    Kvm,
    /// QEMU's instruction translator: slow but works everywhere.
    Tcg,
}

impl Accel {
    /// `auto`, `kvm` or `tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Accel::Auto, Accel::Kvm, Accel::Tcg]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown accelerator \"{s}\"; use auto, kvm or tcg"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Tee::ALL {
            assert_eq!(t.to_string().parse::<Tee>().unwrap(), t);
        }
        assert_eq!(
            "sev".parse::<Tee>().unwrap_err(),
            "unknown TEE \"sev\"; use none, tdx or snp"
        );
        for a in [Accel::Auto, Accel::Kvm, Accel::Tcg] {
            assert_eq!(a.to_string().parse::<Accel>().unwrap(), a);
        }
        assert!("hvf"
            .parse::<Accel>()
            .unwrap_err()
            .contains("auto, kvm or tcg"));
    }
}
