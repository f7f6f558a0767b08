//! The pod annotation that carries Init-Data: `base64(gzip(document))`.
//!
//! The value is what `gzip -c initdata.toml | base64 -w0` prints. Line-wrapped base64 (plain
//! `base64`) is accepted, since the Kata Go runtime accepts it too; anything else that is not
//! standard, padded base64 is refused with the reason.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::{gzip, Error, InitData, Limits, Result};

/// The annotation key Kata Containers 3.20+ and Confidential Containers 0.16+ read.
pub const ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";

/// The key older Kata releases read; still found in circulating documentation.
pub const LEGACY_ANNOTATION: &str = "io.katacontainers.config.runtime.cc_init_data";

/// Every key that may carry Init-Data.
pub const KEYS: [&str; 2] = [ANNOTATION, LEGACY_ANNOTATION];

/// Finds the Init-Data value among a pod's annotations.
///
/// An empty value counts as absent. When both keys carry a value they must agree.
pub fn find(annotations: &HashMap<String, String>) -> Result<Option<&str>> {
    let get = |k: &str| {
        annotations
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    match (get(ANNOTATION), get(LEGACY_ANNOTATION)) {
        (Some(a), Some(b)) if a != b => Err(Error::ConflictingAnnotations {
            current: ANNOTATION,
            legacy: LEGACY_ANNOTATION,
        }),
        (Some(v), _) | (None, Some(v)) => Ok(Some(v)),
        (None, None) => Ok(None),
    }
}

/// Reads, decodes and validates the Init-Data a pod carries, if any.
pub fn from_annotations(
    annotations: &HashMap<String, String>,
    limits: &Limits,
) -> Result<Option<InitData>> {
    find(annotations)?
        .map(|value| decode(value, limits))
        .transpose()
}

/// Removes every Init-Data key, as Kata does before a spec reaches a container.
pub fn strip(annotations: &mut HashMap<String, String>) {
    for key in KEYS {
        annotations.remove(key);
    }
}

/// Decodes an annotation value and validates the document.
pub fn decode(value: &str, limits: &Limits) -> Result<InitData> {
    InitData::parse(decode_bytes(value, limits)?)
}

/// Decodes an annotation value into the document's exact bytes, without validating them.
pub fn decode_bytes(value: &str, limits: &Limits) -> Result<Vec<u8>> {
    if value.len() > limits.max_encoded {
        return Err(Error::EncodedTooLarge {
            size: value.len(),
            limit: limits.max_encoded,
        });
    }
    let compact: Vec<u8> = value.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(Error::InvalidBase64 {
            reason: "the value is empty".into(),
        });
    }
    let gz = STANDARD
        .decode(&compact)
        .map_err(|e| Error::InvalidBase64 {
            reason: explain(&e, &compact),
        })?;
    gzip::inflate_bounded(&gz, limits.max_inflated)
}

/// Encodes a document as an annotation value. The gzip header is fixed, so the same document
/// always gives the same value.
pub fn encode(document: &[u8]) -> String {
    STANDARD.encode(gzip::compress(document))
}

fn explain(e: &base64::DecodeError, input: &[u8]) -> String {
    use base64::DecodeError::*;
    match e {
        InvalidByte(at, b'-' | b'_') | InvalidLastSymbol(at, b'-' | b'_') => format!(
            "character '{}' at offset {at} belongs to the URL-safe alphabet; use the standard one (+ and /)",
            char::from(input[*at])
        ),
        InvalidByte(at, b'=') => format!("padding '=' in the middle of the value at offset {at}"),
        InvalidByte(at, b) if b.is_ascii_graphic() => {
            format!("character '{}' at offset {at} is not base64", char::from(*b))
        }
        InvalidByte(at, b) => format!("byte 0x{b:02x} at offset {at} is not base64"),
        InvalidLength(_) | InvalidPadding => {
            "the value is truncated or lacks its '=' padding".to_owned()
        }
        InvalidLastSymbol(at, _) => format!("the last symbol at offset {at} has trailing bits set"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The annotation from Kata's Go tests and the digest the reference gives for it.
    use coffer_testkit::{KATA_ANNOTATION as KATA_VALUE, KATA_DIGEST_HEX as KATA_DIGEST};

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kata_vector() {
        let doc = decode(KATA_VALUE, &Limits::default()).unwrap();
        assert_eq!(doc.as_bytes().len(), 113);
        let d = doc.digest();
        assert_eq!(d.to_hex(), KATA_DIGEST);
        assert_eq!(
            d.bind(crate::TeeField::SnpHostData).to_base64(),
            "xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeU="
        );
        assert_eq!(
            d.bind(crate::TeeField::TdxMrConfigId).to_base64(),
            "xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeUAAAAAAAAAAAAAAAAAAAAA"
        );
        assert_eq!(
            d.bind(crate::TeeField::VtpmPcr8).to_hex(),
            "7c5191c4cc9e8c0a2fc91a36c484204dde1b62e4d2344e6f8d8adcc591793e55"
        );
    }

    #[test]
    fn trailing_newline_changes_every_value() {
        let mut bytes = decode_bytes(KATA_VALUE, &Limits::default()).unwrap();
        bytes.push(b'\n');
        let d = InitData::parse(bytes).unwrap().digest();
        assert_ne!(d.to_hex(), KATA_DIGEST);
        for f in crate::TeeField::ALL {
            let reference = decode(KATA_VALUE, &Limits::default()).unwrap().digest();
            assert_ne!(d.bind(f), reference.bind(f), "{f}");
        }
    }

    #[test]
    fn encode_round_trip_is_deterministic() {
        let doc = decode_bytes(KATA_VALUE, &Limits::default()).unwrap();
        let v = encode(&doc);
        assert_eq!(v, encode(&doc));
        assert_eq!(decode_bytes(&v, &Limits::default()).unwrap(), doc);
        assert!(!v.contains('\n'));
    }

    #[test]
    fn wrapped_base64_accepted() {
        let wrapped: String = KATA_VALUE
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        let doc = decode(&format!("  {wrapped}\r\n"), &Limits::default()).unwrap();
        assert_eq!(doc.digest().to_hex(), KATA_DIGEST);
    }

    #[test]
    fn bad_base64_reasons() {
        let l = Limits::default();
        let url_safe = KATA_VALUE.replace('+', "-");
        let e = decode(&url_safe, &l).unwrap_err();
        assert!(e.to_string().contains("URL-safe alphabet"), "{e}");
        let unpadded = KATA_VALUE.trim_end_matches('=');
        let e = decode(unpadded, &l).unwrap_err();
        assert!(e.to_string().contains("padding"), "{e}");
        let e = decode("abc*", &l).unwrap_err();
        assert!(e.to_string().contains("'*' at offset 3"), "{e}");
        let e = decode("   ", &l).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert!(e.to_string().contains("base64 -w0"), "{e}");
    }

    #[test]
    fn not_gzip_says_how_to_fix() {
        let plain = STANDARD.encode("version = \"0.1.0\"\n");
        let e = decode(&plain, &Limits::default()).unwrap_err();
        assert_eq!(e, Error::NotGzip);
        assert!(e.to_string().contains("gzip -c initdata.toml | base64 -w0"));
    }

    #[test]
    fn limits() {
        let small = Limits {
            max_encoded: 10,
            max_inflated: 50,
        };
        assert_eq!(
            decode(KATA_VALUE, &small).unwrap_err(),
            Error::EncodedTooLarge {
                size: KATA_VALUE.len(),
                limit: 10
            }
        );
        let small = Limits {
            max_encoded: 1000,
            max_inflated: 112,
        };
        assert_eq!(
            decode(KATA_VALUE, &small).unwrap_err(),
            Error::InflatedTooLarge { limit: 112 }
        );
    }

    #[test]
    fn key_rules() {
        let l = Limits::default();
        assert_eq!(from_annotations(&map(&[]), &l).unwrap(), None);
        assert_eq!(
            from_annotations(&map(&[(ANNOTATION, "")]), &l).unwrap(),
            None
        );
        let legacy = from_annotations(&map(&[(LEGACY_ANNOTATION, KATA_VALUE)]), &l).unwrap();
        assert_eq!(legacy.unwrap().digest().to_hex(), KATA_DIGEST);
        let both = map(&[(ANNOTATION, KATA_VALUE), (LEGACY_ANNOTATION, KATA_VALUE)]);
        assert!(from_annotations(&both, &l).unwrap().is_some());
        let conflict = map(&[(ANNOTATION, KATA_VALUE), (LEGACY_ANNOTATION, "H4sI")]);
        let e = from_annotations(&conflict, &l).unwrap_err();
        assert!(matches!(e, Error::ConflictingAnnotations { .. }));
        let mut m = both;
        m.insert("other".into(), "x".into());
        strip(&mut m);
        assert_eq!(m, map(&[("other", "x")]));
    }
}
