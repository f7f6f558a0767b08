//! The Init-Data document: parsing and validation that keep the exact bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha384, Sha512};

use crate::{Digest, Error, Result};

/// The only Init-Data version that exists.
pub const VERSION: &str = "0.1.0";

/// `[data]` keys that the Confidential Containers guest consumes. `registries.conf` is the
/// containers-registries.conf file `cdh.toml`'s `[image] registry_configuration_uri` names
/// (`file:///run/confidential-containers/initdata/registries.conf`) for pulls in the guest.
pub const KNOWN_DATA_KEYS: [&str; 4] = ["policy.rego", "aa.toml", "cdh.toml", "registries.conf"];

/// Hash algorithm named by a document's `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256, 32-byte digest.
    Sha256,
    /// SHA-384, 48-byte digest.
    Sha384,
    /// SHA-512, 64-byte digest.
    Sha512,
}

impl Algorithm {
    /// The spelling used in documents: `sha256`, `sha384`, `sha512`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of this algorithm's digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }

    /// Hashes `bytes`.
    pub fn hash(self, bytes: &[u8]) -> Digest {
        let out = match self {
            Algorithm::Sha256 => Sha256::digest(bytes).to_vec(),
            Algorithm::Sha384 => Sha384::digest(bytes).to_vec(),
            Algorithm::Sha512 => Sha512::digest(bytes).to_vec(),
        };
        Digest::new(self, out)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Accepts exactly the three names every implementation accepts. A near miss (`sha-384`,
    /// `SHA384`, `SHA_384`) gets a hint, since the spec text itself uses the IANA spelling.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sha256" => return Ok(Algorithm::Sha256),
            "sha384" => return Ok(Algorithm::Sha384),
            "sha512" => return Ok(Algorithm::Sha512),
            _ => {}
        }
        let folded: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let hint = match folded.as_str() {
            "sha256" => Some("sha256"),
            "sha384" => Some("sha384"),
            "sha512" => Some("sha512"),
            _ => None,
        };
        Err(Error::UnsupportedAlgorithm {
            given: s.to_owned(),
            hint,
        })
    }
}

/// Something legal but probably unintended in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A `[data]` key that no guest component reads. It is still covered by the digest.
    UnknownDataKey(String),
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::UnknownDataKey(key) => write!(
                f,
                "[data] key {key:?} is not one the guest reads (policy.rego, aa.toml, cdh.toml); \
                 it is still covered by the digest"
            ),
        }
    }
}

/// A validated Init-Data document that keeps the exact bytes it was parsed from, since the
/// digest is taken over those bytes and nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct InitData {
    raw: Vec<u8>,
    algorithm: Algorithm,
    data: BTreeMap<String, String>,
}

impl fmt::Debug for InitData {
    // The document may hold secrets-adjacent configuration: show its shape, never its content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitData")
            .field("len", &self.raw.len())
            .field("algorithm", &self.algorithm)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl InitData {
    /// Parses and validates a document.
    ///
    /// Rules: UTF-8; TOML without duplicate keys; `version = "0.1.0"`; `algorithm` one of
    /// `sha256`, `sha384`, `sha512`; a `[data]` table whose values are all strings. Unknown
    /// top-level keys are ignored; unknown `[data]` keys are kept and reported by
    /// [`InitData::warnings`].
    pub fn parse(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let raw = bytes.into();
        let text = std::str::from_utf8(&raw).map_err(|e| Error::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::Toml(one_line(&e)))?;

        match table.get("version") {
            None => {
                return Err(Error::Missing {
                    key: "version",
                    example: "version = \"0.1.0\"",
                })
            }
            Some(toml::Value::String(v)) if v == VERSION => {}
            Some(toml::Value::String(v)) => return Err(Error::UnsupportedVersion(v.clone())),
            Some(other) => {
                return Err(Error::WrongType {
                    key: "version",
                    expected: "a string (\"0.1.0\")",
                    found: other.type_str(),
                })
            }
        }
        let algorithm = match table.get("algorithm") {
            None => {
                return Err(Error::Missing {
                    key: "algorithm",
                    example: "algorithm = \"sha256\" (or sha384, sha512)",
                })
            }
            Some(toml::Value::String(a)) => a.parse::<Algorithm>()?,
            Some(other) => {
                return Err(Error::WrongType {
                    key: "algorithm",
                    expected: "a string (sha256, sha384 or sha512)",
                    found: other.type_str(),
                })
            }
        };
        let data = match table.get("data") {
            None => {
                return Err(Error::Missing {
                    key: "data",
                    example: "a [data] table (it may be empty)",
                })
            }
            Some(toml::Value::Table(t)) => t
                .iter()
                .map(|(k, v)| match v {
                    toml::Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(Error::DataNotString {
                        key: k.clone(),
                        found: other.type_str(),
                    }),
                })
                .collect::<Result<BTreeMap<_, _>>>()?,
            Some(other) => {
                return Err(Error::WrongType {
                    key: "data",
                    expected: "a table ([data])",
                    found: other.type_str(),
                })
            }
        };
        Ok(InitData {
            raw,
            algorithm,
            data,
        })
    }

    /// The exact bytes of the document.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Consumes the document, giving back its exact bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw
    }

    /// The document's version (always [`VERSION`] once parsed).
    pub fn version(&self) -> &'static str {
        VERSION
    }

    /// The document's hash algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// All `[data]` entries, sorted by key.
    pub fn data(&self) -> &BTreeMap<String, String> {
        &self.data
    }

    /// One `[data]` entry.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    /// Legal but suspicious content: `[data]` keys no guest component reads.
    pub fn warnings(&self) -> Vec<Warning> {
        self.data
            .keys()
            .filter(|k| !KNOWN_DATA_KEYS.contains(&k.as_str()))
            .map(|k| Warning::UnknownDataKey(k.clone()))
            .collect()
    }

    /// The digest of the exact bytes with the document's algorithm.
    pub fn digest(&self) -> Digest {
        self.algorithm.hash(&self.raw)
    }
}

/// toml's messages often span several lines ("invalid table header", then "duplicate key ..."),
/// and an error that travels through containerd to kubectl must fit on one: the lines are
/// trimmed and joined with ": ", empty ones dropped, and any control character left is blanked.
fn one_line(e: &toml::de::Error) -> String {
    let msg: String = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n";

    #[test]
    fn minimal_document() {
        let d = InitData::parse(MIN).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha384);
        assert!(d.data().is_empty());
        assert_eq!(d.as_bytes(), MIN.as_bytes());
        assert!(d.warnings().is_empty());
    }

    #[test]
    fn seed_example_parses() {
        let bytes = include_bytes!("../tests/data/seed-initdata.toml");
        let d = InitData::parse(bytes.to_vec()).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(
            d.data().keys().collect::<Vec<_>>(),
            ["aa.toml", "cdh.toml", "policy.rego"]
        );
        assert!(d.get("cdh.toml").unwrap().contains("name = \"cc_kbc\""));
    }

    #[test]
    fn version_rules() {
        let e = InitData::parse("version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n");
        assert_eq!(e.unwrap_err(), Error::UnsupportedVersion("0.2.0".into()));
        let e = InitData::parse("algorithm = \"sha256\"\n[data]\n").unwrap_err();
        assert!(e.to_string().contains("has no `version`"), "{e}");
        let e = InitData::parse("version = 1\nalgorithm = \"sha256\"\n[data]\n").unwrap_err();
        assert!(matches!(
            e,
            Error::WrongType {
                key: "version",
                found: "integer",
                ..
            }
        ));
    }

    #[test]
    fn algorithm_rules_and_hints() {
        for (given, hint) in [
            ("sha-384", Some("sha384")),
            ("SHA384", Some("sha384")),
            ("SHA-256", Some("sha256")),
            ("sha_512", Some("sha512")),
            ("md5", None),
            ("", None),
        ] {
            let doc = format!("version = \"0.1.0\"\nalgorithm = \"{given}\"\n[data]\n");
            let e = InitData::parse(doc).unwrap_err();
            assert_eq!(
                e,
                Error::UnsupportedAlgorithm {
                    given: given.into(),
                    hint
                }
            );
            assert!(e.to_string().contains("use sha256, sha384 or sha512"));
        }
        let e = InitData::parse("version = \"0.1.0\"\n[data]\n").unwrap_err();
        assert!(matches!(
            e,
            Error::Missing {
                key: "algorithm",
                ..
            }
        ));
    }

    #[test]
    fn data_rules() {
        let e = InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\n").unwrap_err();
        assert!(matches!(e, Error::Missing { key: "data", .. }));
        let e = InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = 1\n")
            .unwrap_err();
        assert_eq!(
            e,
            Error::DataNotString {
                key: "x".into(),
                found: "integer"
            }
        );
        let e = InitData::parse(
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n[data.nested]\na = \"b\"\n",
        )
        .unwrap_err();
        assert!(matches!(e, Error::DataNotString { found: "table", .. }));
        let e = InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = \"x\"\n")
            .unwrap_err();
        assert!(matches!(e, Error::WrongType { key: "data", .. }));
    }

    #[test]
    fn unknown_keys() {
        let d = InitData::parse(
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\nextra = 5\n[data]\n\"foo.toml\" = \"x\"\n\"aa.toml\" = \"\"\n",
        )
        .unwrap();
        assert_eq!(
            d.warnings(),
            vec![Warning::UnknownDataKey("foo.toml".into())]
        );
        assert!(d.warnings()[0]
            .to_string()
            .contains("still covered by the digest"));
    }

    #[test]
    fn duplicates_and_bad_bytes() {
        let e = InitData::parse(
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\na = \"1\"\na = \"2\"\n",
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Toml(m) if m.contains("duplicate")),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
        let mut bytes = MIN.as_bytes().to_vec();
        bytes.extend_from_slice(b"x = \"\xff\"\n");
        assert_eq!(
            InitData::parse(bytes).unwrap_err(),
            Error::NotUtf8 {
                offset: MIN.len() + 5
            }
        );
    }

    /// What the operator sees of an error must be one line without control characters: it
    /// travels through containerd to kubectl and into logs.
    fn assert_one_clean_line(e: &Error) {
        let msg = e.to_string();
        assert!(!msg.contains(char::is_control), "{msg:?}");
    }

    #[test]
    fn toml_error_is_one_line() {
        // A table declared twice: toml explains it on two lines.
        let doc = "[a]\n[a]\n";
        assert_eq!(doc.len(), 8);
        let e = InitData::parse(doc).unwrap_err();
        assert_one_clean_line(&e);
        let msg = e.to_string();
        assert!(msg.starts_with("Init-Data is not valid TOML: "), "{msg}");
        assert!(msg.contains(": duplicate key `a`"), "{msg}");
        assert!(msg.ends_with(" (at byte 4)"), "{msg}");
    }

    #[test]
    fn one_line_joins_lines_and_blanks_control_characters() {
        let e = <toml::de::Error as serde::de::Error>::custom(
            "first line  \r\n\n  second\u{7}line\t\n\n",
        );
        assert_eq!(one_line(&e), "first line: second line");
    }

    #[test]
    fn quoted_version_is_escaped() {
        let e = InitData::parse("version = \"0.1.0\\n\"\nalgorithm = \"sha256\"\n[data]\n")
            .unwrap_err();
        assert_eq!(e, Error::UnsupportedVersion("0.1.0\n".into()));
        assert_one_clean_line(&e);
        assert!(
            e.to_string()
                .starts_with(r#"Init-Data version "0.1.0\n" is not supported;"#),
            "{e}"
        );
    }

    #[test]
    fn quoted_algorithm_is_escaped() {
        let e = InitData::parse("version = \"0.1.0\"\nalgorithm = \"\\u001b[31m\"\n[data]\n")
            .unwrap_err();
        assert_eq!(
            e,
            Error::UnsupportedAlgorithm {
                given: "\u{1b}[31m".into(),
                hint: None
            }
        );
        assert_one_clean_line(&e);
        assert!(
            e.to_string()
                .starts_with(r#"Init-Data algorithm "\u{1b}[31m" is not supported;"#),
            "{e}"
        );
    }

    #[test]
    fn quoted_data_key_is_escaped() {
        let e =
            InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"a\\nb\" = 1\n")
                .unwrap_err();
        assert_eq!(
            e,
            Error::DataNotString {
                key: "a\nb".into(),
                found: "integer"
            }
        );
        assert_one_clean_line(&e);
        assert!(
            e.to_string()
                .starts_with(r#"Init-Data [data] entry "a\nb" must be a string, found integer;"#),
            "{e}"
        );
    }

    #[test]
    fn warning_key_is_escaped() {
        let d = InitData::parse(
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"x\\ny\\u001b\" = \"\"\n",
        )
        .unwrap();
        let w = d.warnings()[0].to_string();
        assert!(!w.contains(char::is_control), "{w:?}");
        assert!(
            w.starts_with(r#"[data] key "x\ny\u{1b}" is not one"#),
            "{w}"
        );
    }

    #[test]
    fn ordinary_values_are_quoted_as_before() {
        let e =
            InitData::parse("version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Init-Data version \"0.2.0\" is not supported; the only version is \"0.1.0\""
        );
        let e =
            InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha-384\"\n[data]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Init-Data algorithm \"sha-384\" is not supported; use sha256, sha384 or sha512 \
             (did you mean \"sha384\"?)"
        );
        let e = InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = 1\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Init-Data [data] entry \"x\" must be a string, found integer; \
             quote it or use a '''multi-line''' string"
        );
        let d = InitData::parse(
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"foo.toml\" = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            d.warnings()[0].to_string(),
            "[data] key \"foo.toml\" is not one the guest reads (policy.rego, aa.toml, \
             cdh.toml); it is still covered by the digest"
        );
    }

    #[test]
    fn debug_hides_content() {
        let d = InitData::parse(
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = \"secret-url\"\n",
        )
        .unwrap();
        let s = format!("{d:?}");
        assert!(s.contains("aa.toml") && !s.contains("secret-url"), "{s}");
    }
}
