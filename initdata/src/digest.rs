//! The Init-Data digest and its binding into each TEE's launch register.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::Algorithm;

/// `H_algorithm(exact document bytes)`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    bytes: Vec<u8>,
}

impl Digest {
    pub(crate) fn new(algorithm: Algorithm, bytes: Vec<u8>) -> Self {
        Digest { algorithm, bytes }
    }

    /// The algorithm that produced this digest.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The raw digest (32, 48 or 64 bytes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lower-case hex of the raw digest.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// Standard, padded base64 of the raw digest.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.bytes)
    }

    /// The value this digest puts into `field`.
    pub fn bind(&self, field: TeeField) -> Binding {
        let bytes = match field {
            TeeField::VtpmPcr8 => {
                // PCR 8 starts at zero and is extended once with the digest resized to 32 bytes.
                let mut h = Sha256::new();
                h.update([0u8; 32]);
                h.update(resize(&self.bytes, 32));
                h.finalize().to_vec()
            }
            _ => resize(&self.bytes, field.len()),
        };
        Binding { field, bytes }
    }

    /// The 48-byte TDX MRCONFIGID value.
    pub fn mrconfigid(&self) -> [u8; 48] {
        fixed(&self.bytes)
    }

    /// The 32-byte SEV-SNP HOST_DATA value.
    pub fn host_data(&self) -> [u8; 32] {
        fixed(&self.bytes)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Keep the first `len` bytes, or append zero bytes up to `len`: how every TEE binds a digest
/// into a register of fixed size.
fn resize(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = bytes[..bytes.len().min(len)].to_vec();
    out.resize(len, 0);
    out
}

fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// A TEE register that carries the Init-Data digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TeeField {
    /// Intel TDX MRCONFIGID, 48 bytes.
    TdxMrConfigId,
    /// AMD SEV-SNP HOST_DATA, 32 bytes.
    SnpHostData,
    /// Arm CCA Realm personalization value, 64 bytes.
    CcaPersonalizationValue,
    /// Intel SGX CONFIGID, 64 bytes.
    SgxConfigId,
    /// IBM Secure Execution user data, 256 bytes.
    SeUserData,
    /// vTPM PCR 8 of the sha256 bank: `sha256(32 zero bytes || digest resized to 32)`.
    VtpmPcr8,
}

impl TeeField {
    /// Every field, in the order tools print them.
    pub const ALL: [TeeField; 6] = [
        TeeField::TdxMrConfigId,
        TeeField::SnpHostData,
        TeeField::CcaPersonalizationValue,
        TeeField::SgxConfigId,
        TeeField::SeUserData,
        TeeField::VtpmPcr8,
    ];

    /// Size of the register in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            TeeField::TdxMrConfigId => 48,
            TeeField::SnpHostData => 32,
            TeeField::CcaPersonalizationValue | TeeField::SgxConfigId => 64,
            TeeField::SeUserData => 256,
            TeeField::VtpmPcr8 => 32,
        }
    }

    /// Short name used on command lines and in JSON: `tdx`, `snp`, `cca`, `sgx`, `se`, `vtpm`.
    pub fn short_name(self) -> &'static str {
        match self {
            TeeField::TdxMrConfigId => "tdx",
            TeeField::SnpHostData => "snp",
            TeeField::CcaPersonalizationValue => "cca",
            TeeField::SgxConfigId => "sgx",
            TeeField::SeUserData => "se",
            TeeField::VtpmPcr8 => "vtpm",
        }
    }

    /// The register's name as the TEE's documentation spells it.
    pub fn register_name(self) -> &'static str {
        match self {
            TeeField::TdxMrConfigId => "TDX MRCONFIGID",
            TeeField::SnpHostData => "SNP HOST_DATA",
            TeeField::CcaPersonalizationValue => "CCA personalization value",
            TeeField::SgxConfigId => "SGX CONFIGID",
            TeeField::SeUserData => "IBM SE user data",
            TeeField::VtpmPcr8 => "vTPM PCR8 (sha256)",
        }
    }
}

impl fmt::Display for TeeField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

impl FromStr for TeeField {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TeeField::ALL
            .into_iter()
            .find(|f| f.short_name() == s)
            .ok_or_else(|| format!("unknown TEE field \"{s}\"; use tdx, snp, cca, sgx, se or vtpm"))
    }
}

/// The value a digest puts into one TEE register.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    field: TeeField,
    bytes: Vec<u8>,
}

impl Binding {
    /// The register.
    pub fn field(&self) -> TeeField {
        self.field
    }

    /// The register's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lower-case hex: what Trustee's `init_data` claim shows and a policy pins.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// Standard, padded base64: what QEMU's `mrconfigid` and `host-data` take.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.bytes)
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.field, self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_from_hex(alg: Algorithm, h: &str) -> Digest {
        Digest::new(alg, hex::decode(h).unwrap())
    }

    #[test]
    fn pcr8_reference_vector() {
        let d = digest_from_hex(
            Algorithm::Sha256,
            "8505e4e25e50a27c5dc8147af88efbece627fbea55291911eff832d9ee127781",
        );
        assert_eq!(
            d.bind(TeeField::VtpmPcr8).to_hex(),
            "bddaccb9c52249e97a31baea61b7d91be8221a16e703d92148d04fb8e9c1dfdd"
        );
    }

    #[test]
    fn resize_table() {
        for alg in [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
            let d = alg.hash(b"x");
            let n = alg.digest_len();
            assert_eq!(d.as_bytes().len(), n);
            for field in TeeField::ALL {
                let b = d.bind(field);
                assert_eq!(b.as_bytes().len(), field.len(), "{alg} {field}");
                if field == TeeField::VtpmPcr8 {
                    continue;
                }
                let k = n.min(field.len());
                assert_eq!(&b.as_bytes()[..k], &d.as_bytes()[..k]);
                assert!(b.as_bytes()[k..].iter().all(|&z| z == 0));
            }
            assert_eq!(
                &d.mrconfigid()[..],
                d.bind(TeeField::TdxMrConfigId).as_bytes()
            );
            assert_eq!(&d.host_data()[..], d.bind(TeeField::SnpHostData).as_bytes());
        }
    }

    #[test]
    fn field_names_round_trip() {
        for f in TeeField::ALL {
            assert_eq!(f.short_name().parse::<TeeField>().unwrap(), f);
        }
        assert!("tpm"
            .parse::<TeeField>()
            .unwrap_err()
            .contains("use tdx, snp"));
    }
}
