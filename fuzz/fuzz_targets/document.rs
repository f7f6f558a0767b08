//! The Init-Data document parser (UTF-8 -> TOML -> version/algorithm/[data] validation), and the
//! two transports around it with valid gzip, which mutated annotations and images rarely reach
//! (a flipped byte breaks the gzip CRC): a document must come back byte for byte from
//! `annotation::encode` -> `annotation::decode` and `image::write` -> `image::read`, and be judged
//! the same way there (checked for every document that parses and a sample of the rest).
#![no_main]

use coffer_initdata::{annotation, image, InitData, Limits, TeeField};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let parsed = InitData::parse(data.to_vec());
    match &parsed {
        Ok(doc) => {
            assert_eq!(doc.as_bytes(), data);
            let digest = doc.digest();
            assert_eq!(digest.as_bytes().len(), doc.algorithm().digest_len());
            let _ = digest.to_hex();
            for field in TeeField::ALL {
                assert_eq!(digest.bind(field).as_bytes().len(), field.len());
            }
            let _ = doc.warnings();
        }
        Err(e) => {
            let msg = e.to_string();
            // Messages travel through containerd to kubectl on one line: the crate folds toml's
            // multi-line messages (`one_line` in document.rs) and quotes the document's own
            // strings with `{:?}` (finding F1 of docs/fuzzing.md). The `strict-messages`
            // feature, on by default, keeps the check.
            if cfg!(feature = "strict-messages") {
                assert!(
                    !msg.contains(|c: char| c.is_control()),
                    "error message with a control character: {msg:?}"
                );
            }
        }
    }

    // The round trips compress at the best level, which costs most of an execution: run them
    // for every document that parses and for one in eight of the others (gzip does not care
    // whether its input is TOML).
    if parsed.is_err() && data.first().is_some_and(|b| b & 7 != 0) {
        return;
    }
    let value = annotation::encode(data);
    if value.len() <= limits.max_encoded {
        assert_eq!(
            annotation::decode_bytes(&value, &limits).as_deref(),
            Ok(data)
        );
        assert_eq!(annotation::decode(&value, &limits), parsed);
    }
    let img = image::write(data);
    assert_eq!(img.len() % image::SECTOR, 0);
    let declared = u64::from_le_bytes(img[8..16].try_into().expect("8 bytes"));
    if declared <= limits.max_encoded as u64 {
        assert_eq!(image::read(&img, &limits).as_deref(), Ok(data));
    }
});
