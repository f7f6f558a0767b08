//! Kata's Init-Data block image: how the document reaches the guest.
//!
//! ```text
//! offset 0   8 bytes  ASCII "initdata"
//! offset 8   8 bytes  u64 little-endian: length N of the gzip stream
//! offset 16  N bytes  gzip(the exact document bytes)
//! then       zero bytes up to a multiple of 512
//! ```
//!
//! The writer is deterministic. The reader checks the declared length against the bytes that
//! are really there and against the limit before it allocates anything, which kata-agent does not.

use std::io::{Read, Seek, SeekFrom};

use crate::{gzip, Error, Limits, Result};

/// The first eight bytes of every image.
pub const MAGIC: &[u8; 8] = b"initdata";

/// Size of the header: magic and length.
pub const HEADER_LEN: usize = 16;

/// Images are padded to whole sectors.
pub const SECTOR: usize = 512;

/// Builds the image of a document: header, deterministic gzip, zero padding to 512 bytes.
pub fn write(document: &[u8]) -> Vec<u8> {
    let gz = gzip::compress(document);
    let mut out = Vec::with_capacity((HEADER_LEN + gz.len()).next_multiple_of(SECTOR));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(gz.len() as u64).to_le_bytes());
    out.extend_from_slice(&gz);
    out.resize(out.len().next_multiple_of(SECTOR), 0);
    out
}

/// Reads the document's exact bytes from an image held in memory.
pub fn read(image: &[u8], limits: &Limits) -> Result<Vec<u8>> {
    read_from(&mut std::io::Cursor::new(image), limits)
}

/// Reads the document's exact bytes from an image file or block device.
///
/// The size comes from seeking to the end, which works for both regular files and block devices.
pub fn read_from<R: Read + Seek>(source: &mut R, limits: &Limits) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| Error::Io(e.to_string());
    let size = source.seek(SeekFrom::End(0)).map_err(io)?;
    if size < HEADER_LEN as u64 {
        return Err(Error::ImageTooShort { size });
    }
    source.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut header = [0u8; HEADER_LEN];
    source.read_exact(&mut header).map_err(io)?;
    if &header[..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[8..]);
    let declared = u64::from_le_bytes(len);
    let available = size - HEADER_LEN as u64;
    if declared > available {
        return Err(Error::ImageTruncated {
            declared,
            available,
        });
    }
    if declared > limits.max_encoded as u64 {
        return Err(Error::ImageTooLarge {
            declared,
            limit: limits.max_encoded,
        });
    }
    // Bounded by the checks above: declared <= max_encoded, so it fits in usize.
    let declared = usize::try_from(declared).map_err(|_| Error::ImageTooLarge {
        declared,
        limit: limits.max_encoded,
    })?;
    let mut gz = vec![0u8; declared];
    source.read_exact(&mut gz).map_err(io)?;
    gzip::inflate_bounded(&gz, limits.max_inflated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_agent_test_image() {
        // The layout of kata-agent's own test image: 512 bytes, N = 36, "some content".
        let img = write(b"some content");
        assert_eq!(img.len(), 512);
        assert_eq!(&img[..8], b"initdata");
        let n = u64::from_le_bytes(img[8..16].try_into().unwrap());
        assert_eq!(&img[16..19], &[0x1f, 0x8b, 0x08]);
        assert!(img[16 + usize::try_from(n).unwrap()..]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(read(&img, &Limits::default()).unwrap(), b"some content");
    }

    #[test]
    fn reads_an_image_made_by_another_gzip() {
        // A header followed by a gzip stream with a different header (mtime set, OS byte 3), as
        // the Go runtime writes it.
        use std::io::Write;
        let mut enc = flate2::GzBuilder::new()
            .mtime(1_700_000_000)
            .operating_system(3)
            .write(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"some content").unwrap();
        let gz = enc.finish().unwrap();
        let mut img = b"initdata".to_vec();
        img.extend_from_slice(&(gz.len() as u64).to_le_bytes());
        img.extend_from_slice(&gz);
        img.resize(512, 0);
        assert_eq!(read(&img, &Limits::default()).unwrap(), b"some content");
    }

    #[test]
    fn deterministic_and_padded() {
        let big = vec![b'x'; 10_000];
        let a = write(&big);
        assert_eq!(a, write(&big));
        assert_eq!(a.len() % SECTOR, 0);
    }

    #[test]
    fn rejects_bad_images() {
        let l = Limits::default();
        assert_eq!(read(b"initdat", &l), Err(Error::ImageTooShort { size: 7 }));
        let mut img = write(b"doc");
        img[0] = b'I';
        assert_eq!(read(&img, &l), Err(Error::BadMagic));

        let mut img = write(b"doc");
        img[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            read(&img, &l),
            Err(Error::ImageTruncated {
                declared: u64::MAX,
                available: 512 - 16
            })
        );

        let img = write(&[b'y'; 100]);
        let tight = Limits {
            max_encoded: 8,
            max_inflated: 1000,
        };
        assert!(matches!(
            read(&img, &tight),
            Err(Error::ImageTooLarge { limit: 8, .. })
        ));
        let tight = Limits {
            max_encoded: 1000,
            max_inflated: 99,
        };
        assert_eq!(
            read(&img, &tight),
            Err(Error::InflatedTooLarge { limit: 99 })
        );

        let mut img = write(b"some document");
        img[20] ^= 0xff;
        img[30] ^= 0xff;
        assert!(matches!(read(&img, &l), Err(Error::CorruptGzip(_))));
    }
}
