//! The pod annotation decoder, as the shim runs it on what a pod carries: base64 (whitespace
//! allowed) -> bounded gunzip -> Init-Data document validation, with the default limits.
//!
//! Besides "never panics", it checks what the decoder promises: the inflated document never
//! exceeds the limit, the key lookup gives the same answer as a direct decode, and a document
//! it accepts survives the shim's own encoder unchanged.
#![no_main]

use std::collections::HashMap;

use coffer_initdata::{annotation, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // An annotation value is a Kubernetes string: UTF-8 by construction.
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();

    let bytes = annotation::decode_bytes(value, &limits);
    if let Ok(bytes) = &bytes {
        assert!(
            bytes.len() <= limits.max_inflated,
            "inflated past the limit"
        );
    }
    let decoded = annotation::decode(value, &limits);
    match &decoded {
        Ok(doc) => {
            assert_eq!(bytes.as_deref().ok(), Some(doc.as_bytes()));
            let _ = doc.digest().to_hex();
            let _ = doc.warnings();
            let again = annotation::decode(&annotation::encode(doc.as_bytes()), &limits)
                .expect("a document the decoder accepted must survive encode -> decode");
            assert_eq!(&again, doc);
        }
        Err(e) => {
            // Every error is shown to the operator: formatting it must not fail.
            let _ = e.to_string();
        }
    }

    // The lookup by key, as the shim does it with a pod's annotations.
    let pod: HashMap<String, String> =
        [(annotation::ANNOTATION.to_owned(), value.to_owned())].into();
    let found = annotation::from_annotations(&pod, &limits);
    if value.is_empty() {
        assert_eq!(found, Ok(None));
    } else {
        assert_eq!(found, decoded.map(Some));
    }
});
