//! gzip in both directions: deterministic compression and bounded inflation.

use std::io::{Read, Write};

use flate2::read::MultiGzDecoder;
use flate2::{Compression, GzBuilder};

use crate::{Error, Result};

/// The two bytes every gzip stream starts with (RFC 1952).
const MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Compresses `data` with a fixed header (no file name, mtime 0), so the same input always gives
/// the same bytes.
pub(crate) fn compress(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::with_capacity(data.len() / 2 + 32), Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// Inflates a gzip stream (several members are read as one, like `gunzip` and Go's reader),
/// refusing to produce more than `max` bytes. The limit is enforced while reading: at most
/// `max + 1` bytes are ever buffered.
pub(crate) fn inflate_bounded(data: &[u8], max: usize) -> Result<Vec<u8>> {
    if data.len() < MAGIC.len() || data[..2] != MAGIC {
        return Err(Error::NotGzip);
    }
    let mut out = Vec::new();
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    MultiGzDecoder::new(data)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| Error::CorruptGzip(e.to_string()))?;
    if out.len() > max {
        return Err(Error::InflatedTooLarge { limit: max });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_determinism() {
        let a = compress(b"hello");
        assert_eq!(a, compress(b"hello"));
        assert_eq!(&a[..2], &MAGIC);
        assert_eq!(inflate_bounded(&a, 5).unwrap(), b"hello");
    }

    #[test]
    fn limit_is_enforced_exactly() {
        let z = compress(&[b'a'; 1000]);
        assert_eq!(inflate_bounded(&z, 1000).unwrap().len(), 1000);
        assert!(matches!(
            inflate_bounded(&z, 999),
            Err(Error::InflatedTooLarge { limit: 999 })
        ));
    }

    #[test]
    fn bomb_stops_at_limit() {
        // 64 MiB of zeros compresses to ~64 KiB; inflating it under a 1 MiB limit must stop early.
        let z = compress(&vec![0u8; 64 << 20]);
        assert!(z.len() < 128 << 10);
        assert!(matches!(
            inflate_bounded(&z, 1 << 20),
            Err(Error::InflatedTooLarge { .. })
        ));
    }

    #[test]
    fn not_gzip_and_corrupt() {
        assert!(matches!(inflate_bounded(b"plain", 10), Err(Error::NotGzip)));
        assert!(matches!(inflate_bounded(b"", 10), Err(Error::NotGzip)));
        let mut z = compress(b"some content here");
        let n = z.len();
        z.truncate(n - 6);
        assert!(matches!(
            inflate_bounded(&z, 100),
            Err(Error::CorruptGzip(_))
        ));
    }
}
