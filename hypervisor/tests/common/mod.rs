//! The reference Init-Data vector the integration tests share.

#![allow(dead_code)] // each test file uses part of it

use coffer_initdata::{annotation, Digest, InitData, Limits};

pub use coffer_testkit::{KATA_ANNOTATION, KATA_DIGEST_HEX as DIGEST_HEX};

/// The document the annotation carries.
pub fn kata_document() -> InitData {
    annotation::decode(KATA_ANNOTATION, &Limits::default())
        .expect("the reference annotation decodes")
}

/// Its digest, checked against the reference.
pub fn kata_digest() -> Digest {
    let d = kata_document().digest();
    assert_eq!(d.to_hex(), DIGEST_HEX);
    d
}
