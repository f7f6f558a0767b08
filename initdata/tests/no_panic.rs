//! Property tests: no input from outside the process makes the library panic, and what it
//! writes it reads back exactly.

use coffer_initdata::{annotation, image, InitData, Limits};
use proptest::prelude::*;

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // A refusal is shown to the operator: one line, no control characters.
        if let Err(e) = InitData::parse(bytes) {
            let msg = e.to_string();
            prop_assert!(!msg.contains(char::is_control), "{:?}", msg);
        }
    }

    #[test]
    fn decode_never_panics(value in "[ -~\\n]{0,300}") {
        let _ = annotation::decode(&value, &Limits::default());
    }

    #[test]
    fn image_reader_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..1200), magic in any::<bool>()) {
        if magic && bytes.len() >= 16 {
            bytes[..8].copy_from_slice(image::MAGIC);
        }
        let _ = image::read(&bytes, &Limits::default());
    }

    #[test]
    fn round_trips(doc in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let l = Limits::default();
        prop_assert_eq!(image::read(&image::write(&doc), &l).unwrap(), doc.clone());
        prop_assert_eq!(annotation::decode_bytes(&annotation::encode(&doc), &l).unwrap(), doc);
    }
}
