//! Framing: a `u32` big-endian length, then that many bytes of JSON.
//!
//! [`FrameDecoder`] is the one frame reader: it does no I/O, so the guest's blocking port
//! reader, the host's async client and the tests all feed it bytes and take whole frames out of
//! it, and they all refuse a lost sync, an oversized frame and a truncated one the same way.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::MAX_FRAME;

/// Length of a frame's prefix.
const PREFIX: usize = 4;

/// Errors while reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream between frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        have: usize,
        /// Bytes the frame needed (just the prefix, when even that was cut).
        want: usize,
    },
    /// A frame announced a length over the limit.
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME} bytes; the peer speaks another protocol or the stream lost sync")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// A frame is not the JSON this protocol expects.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Reading or writing failed.
    #[error("I/O error on the agent channel: {0}")]
    Io(#[from] io::Error),
}

/// Serialises a message into one frame (length prefix included).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|_| json.len() <= MAX_FRAME)
        .ok_or(FrameError::TooLarge { len: json.len() })?;
    let mut out = Vec::with_capacity(PREFIX + json.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Parses a frame's JSON body (without its length prefix).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Splits a byte stream into frame bodies.
///
/// Feed it what the stream gives ([`push`](Self::push)) and take whole frames out
/// ([`next_body`](Self::next_body)) until it has none. It holds at most one frame plus what was
/// pushed after it: a prefix over [`MAX_FRAME`] is refused before its body is buffered.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The body of the next whole frame, or `None` until more bytes arrive.
    ///
    /// A prefix over [`MAX_FRAME`] means the stream lost sync: nothing buffered can be trusted,
    /// so it is dropped and [`FrameError::TooLarge`] returned.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(len) = self.announced()? else {
            return Ok(None);
        };
        if self.buf.len() < PREFIX + len {
            return Ok(None);
        }
        let body = self.buf[PREFIX..PREFIX + len].to_vec();
        self.buf.drain(..PREFIX + len);
        Ok(Some(body))
    }

    /// How many more bytes complete the frame being read: reading no more than this never
    /// takes bytes that belong to the next frame.
    pub fn wanted(&self) -> usize {
        match self.announced() {
            Ok(Some(len)) => (PREFIX + len).saturating_sub(self.buf.len()).max(1),
            _ => PREFIX.saturating_sub(self.buf.len()).max(1),
        }
    }

    /// Whether a frame is partly buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forgets what is buffered (the peer went away; its half-sent frame is of no use).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// The error for a stream that ended now: [`FrameError::Closed`] between frames,
    /// [`FrameError::Truncated`] inside one.
    pub fn end_of_stream(&self) -> FrameError {
        if self.buf.is_empty() {
            return FrameError::Closed;
        }
        let want = match self.announced() {
            Ok(Some(len)) => PREFIX + len,
            _ => PREFIX,
        };
        FrameError::Truncated {
            have: self.buf.len(),
            want,
        }
    }

    /// The length the buffered prefix announces, once all of it is there.
    fn announced(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<PREFIX>() else {
            return Ok(None);
        };
        let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge { len });
        }
        Ok(Some(len))
    }
}

/// Writes one message as a frame (blocking I/O).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, message: &T) -> Result<(), FrameError> {
    w.write_all(&encode(message)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame (blocking I/O), never past its end.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, FrameError> {
    let mut decoder = FrameDecoder::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(body) = next_or_clear(&mut decoder)? {
            return decode(&body);
        }
        let want = decoder.wanted().min(chunk.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) => return Err(decoder.end_of_stream()),
            Ok(n) => decoder.push(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads one frame (async I/O), never past its end.
#[cfg(feature = "client")]
pub async fn read_frame_async<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    use tokio::io::AsyncReadExt;
    let mut decoder = FrameDecoder::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(body) = next_or_clear(&mut decoder)? {
            return decode(&body);
        }
        let want = decoder.wanted().min(chunk.len());
        match r.read(&mut chunk[..want]).await {
            Ok(0) => return Err(decoder.end_of_stream()),
            Ok(n) => decoder.push(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn next_or_clear(decoder: &mut FrameDecoder) -> Result<Option<Vec<u8>>, FrameError> {
    decoder.next_body().inspect_err(|_| decoder.reset())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &[u8]) -> Vec<u8> {
        let mut f = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
        f.extend_from_slice(json);
        f
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        let mut stream = frame(br#"{"a":1}"#);
        stream.extend(frame(b"[]"));
        stream.extend(frame(b""));
        for step in [1, 2, 3, 5, stream.len()] {
            let mut d = FrameDecoder::new();
            let mut bodies = Vec::new();
            for piece in stream.chunks(step) {
                d.push(piece);
                while let Some(body) = d.next_body().unwrap() {
                    bodies.push(body);
                }
            }
            assert_eq!(bodies, [br#"{"a":1}"#.to_vec(), b"[]".to_vec(), Vec::new()]);
            assert!(d.is_empty());
            assert!(matches!(d.end_of_stream(), FrameError::Closed));
        }
    }

    #[test]
    fn wanted_never_reaches_into_the_next_frame() {
        let mut d = FrameDecoder::new();
        assert_eq!(d.wanted(), 4);
        d.push(&[0, 0]);
        assert_eq!(d.wanted(), 2);
        d.push(&[0, 3]);
        assert_eq!(d.wanted(), 3);
        d.push(b"[1");
        assert_eq!(d.wanted(), 1);
        d.push(b"]");
        assert_eq!(d.next_body().unwrap(), Some(b"[1]".to_vec()));
        assert_eq!(d.wanted(), 4);
    }

    #[test]
    fn lost_sync_is_refused_before_the_body_is_buffered_and_drops_the_rest() {
        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        d.push(b"garbage that followed");
        let err = d.next_body().unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len } if len == u32::MAX as usize));
        // A caller that goes on after a lost sync starts from nothing (read_frame does this).
        d.reset();
        d.push(&frame(b"{}"));
        assert_eq!(d.next_body().unwrap(), Some(b"{}".to_vec()));
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_truncated_not_closed() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0]);
        assert!(matches!(
            d.end_of_stream(),
            FrameError::Truncated { have: 2, want: 4 }
        ));
        d.push(&[0, 10, b'{']);
        assert!(matches!(
            d.end_of_stream(),
            FrameError::Truncated { have: 5, want: 14 }
        ));
        let cut: &[u8] = &[0, 0, 0, 10, b'{'];
        assert!(matches!(
            read_frame::<_, serde_json::Value>(&mut &cut[..]),
            Err(FrameError::Truncated { have: 5, want: 14 })
        ));
    }

    #[test]
    fn read_frame_leaves_the_next_frame_in_the_stream() {
        let mut stream = frame(b"1");
        stream.extend(frame(b"2"));
        let mut r = &stream[..];
        assert_eq!(read_frame::<_, u32>(&mut r).unwrap(), 1);
        assert_eq!(read_frame::<_, u32>(&mut r).unwrap(), 2);
        assert!(matches!(
            read_frame::<_, u32>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn an_oversized_message_is_not_encoded() {
        let big = "x".repeat(MAX_FRAME);
        assert!(matches!(
            encode(&big),
            Err(FrameError::TooLarge { len }) if len == MAX_FRAME + 2
        ));
    }
}
