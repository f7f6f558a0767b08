//! Size limits that keep a hostile pod from exhausting the node.

use serde::Deserialize;

/// Bounds applied while decoding Init-Data from outside the process.
///
/// `max_encoded` bounds what arrives compressed: the annotation's text, or the gzip stream of a
/// block image. `max_inflated` bounds the document after gunzip and is enforced while inflating,
/// so a gzip bomb never allocates past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest encoded value accepted, in bytes (default 256 KiB: Kubernetes' cap on all of an
    /// object's annotations together).
    pub max_encoded: usize,
    /// Largest document accepted after gunzip, in bytes (default 4 MiB).
    pub max_inflated: usize,
}

impl Limits {
    /// Default bound on the encoded value: 256 KiB.
    pub const DEFAULT_MAX_ENCODED: usize = 256 * 1024;
    /// Default bound on the inflated document: 4 MiB.
    pub const DEFAULT_MAX_INFLATED: usize = 4 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_encoded: Self::DEFAULT_MAX_ENCODED,
            max_inflated: Self::DEFAULT_MAX_INFLATED,
        }
    }
}
