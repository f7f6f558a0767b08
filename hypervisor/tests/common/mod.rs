//! The reference Init-Data vector the integration tests share.

#![allow(dead_code)] // each test file uses part of it

use coffer_initdata::{annotation, Digest, InitData, Limits};

/// Kata's test annotation (reference §6).
pub const KATA_ANNOTATION: &str = "H4sIAFlC92cAAytLLSrOzM9TsFVQMtAz1DNQ4krMSc8vyizJyAWJFWckGpmaKXFFpySWJMZyKSUm6pXk5+YoAeXU1dW5QJhLKTklA4toQX5OZnKlXlFqej6yBABS/5JkcQAAAA==";
/// sha256 of the document it carries.
pub const DIGEST_HEX: &str = "c6694bb7a29d6f37ec72a15582e004b9f3142159682db8509a304407419a49e5";

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
