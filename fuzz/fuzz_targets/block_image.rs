//! The Init-Data block image reader, as the guest agent runs it on the `initdata` disk:
//! header ("initdata", u64 LE length) -> bounded gunzip -> Init-Data document validation,
//! with the default limits.
//!
//! Besides "never panics", it checks the reader's promises: it refuses what is shorter than the
//! header or lacks the magic, never returns more than the limit, and what it accepts is read
//! back unchanged from the host's own writer.
#![no_main]

use coffer_initdata::{image, Error, InitData, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    // The guest reads the device through `read_from` (seek to the end for the size, then read):
    // the same path as `read` on memory.
    let read = image::read_from(&mut std::io::Cursor::new(data), &limits);
    assert_eq!(read, image::read(data, &limits));
    match &read {
        Ok(doc) => {
            assert!(doc.len() <= limits.max_inflated, "inflated past the limit");
            assert!(data.len() >= image::HEADER_LEN && data.starts_with(image::MAGIC));
            assert_eq!(
                image::read(&image::write(doc), &limits).as_ref(),
                Ok(doc),
                "an accepted document must survive write -> read"
            );
            match InitData::parse(doc.clone()) {
                Ok(d) => {
                    let _ = d.digest().to_hex();
                    let _ = d.warnings();
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        Err(e) => {
            if data.len() < image::HEADER_LEN {
                assert!(matches!(e, Error::ImageTooShort { .. }), "{e:?}");
            } else if !data.starts_with(image::MAGIC) {
                assert_eq!(e, &Error::BadMagic);
            }
            let _ = e.to_string();
        }
    }
});
