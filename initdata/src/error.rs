//! The one error type of this crate. Each message says what was wrong and how to fix it, because
//! it travels verbatim to the operator (through containerd, crictl and kubectl). A message is
//! therefore one line without control characters: strings taken from the document are printed
//! with `{:?}` (quoted, with newlines and escapes spelled out), and toml's messages are folded
//! onto one line before they get here.

/// Everything that can be wrong with Init-Data handed to this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The document is not UTF-8.
    #[error("Init-Data is not valid UTF-8 (first bad byte at offset {offset}); TOML documents must be UTF-8")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The document is not TOML (syntax error, duplicate key, ...).
    #[error("Init-Data is not valid TOML: {0}")]
    Toml(String),
    /// A required top-level key is absent.
    #[error("Init-Data has no `{key}`; add {example}")]
    Missing {
        /// The missing key.
        key: &'static str,
        /// A line that would fix it.
        example: &'static str,
    },
    /// A top-level key has the wrong TOML type.
    #[error("Init-Data `{key}` must be {expected}, found {found}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What the spec requires.
        expected: &'static str,
        /// The TOML type found.
        found: &'static str,
    },
    /// `version` is not one this implementation knows.
    #[error("Init-Data version {0:?} is not supported; the only version is \"0.1.0\"")]
    UnsupportedVersion(String),
    /// `algorithm` is not one of the three accepted names.
    #[error("Init-Data algorithm {given:?} is not supported; use sha256, sha384 or sha512{}",
        hint.map(|h| format!(" (did you mean \"{h}\"?)")).unwrap_or_default())]
    UnsupportedAlgorithm {
        /// What the document said.
        given: String,
        /// The accepted spelling the user probably meant.
        hint: Option<&'static str>,
    },
    /// A `[data]` entry is not a string.
    #[error("Init-Data [data] entry {key:?} must be a string, found {found}; quote it or use a '''multi-line''' string")]
    DataNotString {
        /// The offending key.
        key: String,
        /// The TOML type found.
        found: &'static str,
    },
    /// Both annotation keys are present and disagree.
    #[error("pod has both {current} and {legacy} with different values; keep only {current}")]
    ConflictingAnnotations {
        /// The current key.
        current: &'static str,
        /// The legacy key.
        legacy: &'static str,
    },
    /// The encoded value (annotation or image payload) is larger than allowed.
    #[error("Init-Data value is {size} bytes, larger than the limit of {limit} bytes")]
    EncodedTooLarge {
        /// Its size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The annotation value is not standard, padded base64.
    #[error("Init-Data annotation is not valid base64: {reason}; make the value with `gzip -c initdata.toml | base64 -w0`")]
    InvalidBase64 {
        /// What exactly is wrong.
        reason: String,
    },
    /// The decoded payload is not gzip.
    #[error("Init-Data payload is not gzip-compressed (gzip is mandatory); make the value with `gzip -c initdata.toml | base64 -w0`")]
    NotGzip,
    /// The gzip stream is damaged or truncated.
    #[error("Init-Data gzip stream is corrupt: {0}")]
    CorruptGzip(String),
    /// The document inflates past the limit.
    #[error("Init-Data inflates to more than the limit of {limit} bytes")]
    InflatedTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The block image is shorter than its 16-byte header.
    #[error("Init-Data image is {size} bytes, shorter than its 16-byte header")]
    ImageTooShort {
        /// Its size.
        size: u64,
    },
    /// The block image does not start with `initdata`.
    #[error("Init-Data image does not start with the \"initdata\" magic")]
    BadMagic,
    /// The header claims more payload than the image holds.
    #[error(
        "Init-Data image header declares {declared} payload bytes but only {available} follow it"
    )]
    ImageTruncated {
        /// Length in the header.
        declared: u64,
        /// Bytes present after the header.
        available: u64,
    },
    /// The header claims more payload than the limit allows.
    #[error("Init-Data image header declares {declared} payload bytes, larger than the limit of {limit} bytes")]
    ImageTooLarge {
        /// Length in the header.
        declared: u64,
        /// The limit in force.
        limit: usize,
    },
    /// Reading the image failed.
    #[error("cannot read Init-Data image: {0}")]
    Io(String),
}
