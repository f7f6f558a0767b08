//! Confidential Containers Init-Data, as a pure library.
//!
//! Init-Data is a small TOML document (`version`, `algorithm`, `[data]`) that a pod carries in an
//! annotation, gzip'ed and base64'ed. The host binds its digest into the TEE's launch measurement
//! (TDX MRCONFIGID, SEV-SNP HOST_DATA, ...) and hands the document to the guest on a block device.
//! This crate implements every step of that walk and matches Kata Containers and guest-components
//! byte for byte:
//!
//! - [`InitData`]: parse and validate a document while keeping its exact bytes;
//! - [`Digest`] and [`TeeField`]: the digest and its binding into each TEE register;
//! - [`annotation`]: the pod annotation codec, bounded by [`Limits`];
//! - [`image`]: Kata's block image (`"initdata"` magic, length, gzip, padding).
//!
//! It does no I/O beyond what its callers hand it, starts no process and never panics on input.
//!
//! ```
//! use coffer_initdata::{InitData, TeeField};
//!
//! let doc = InitData::parse(b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n".to_vec())?;
//! let digest = doc.digest();
//! assert_eq!(digest.bind(TeeField::TdxMrConfigId).as_bytes().len(), 48);
//! # Ok::<(), coffer_initdata::Error>(())
//! ```

pub mod annotation;
mod digest;
mod document;
mod error;
mod gzip;
pub mod image;
mod limits;

pub use digest::{Binding, Digest, TeeField};
pub use document::{Algorithm, InitData, Warning, KNOWN_DATA_KEYS, VERSION};
pub use error::Error;
pub use limits::Limits;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
