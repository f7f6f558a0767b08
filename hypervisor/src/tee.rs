//! What a VM is launched as: the TEE kind and the accelerator.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The TEE kind is part of the host-guest contract: the guest reads it from the kernel command
/// line.
pub use coffer_contract::Tee;

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
