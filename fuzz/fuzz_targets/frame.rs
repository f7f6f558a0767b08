//! Both sides' readers of the host<->guest byte stream.
//!
//! Input: one control byte, then the stream. The control byte picks how the stream is cut into
//! the chunks a port read returns (0: all at once; otherwise pseudo-random sizes up to
//! `(ctl & 0x3f) + 1`).
//!
//! - The guest (agent/src/guest/server.rs `serve`): a `FrameDecoder` fed the chunks, every body
//!   decoded as a `RequestFrame`, a lost sync dropped with `reset` and reading going on.
//! - The host (the client's `read_frame_async`, same code as `read_frame`): frames read one at a
//!   time with no read past a frame's end, each decoded as a `GuestFrame`.
//!
//! Checked against a plain reading of the framing (u32 big-endian length, that many bytes, over
//! `MAX_FRAME` = lost sync): the same bodies however the bytes arrive, up to the first lost sync;
//! the same end-of-stream verdict; `wanted()` never reaching into the next frame; and every
//! message either side accepts encodes back to itself.
#![no_main]

use coffer_agent::protocol::{
    decode, encode, read_frame, FrameDecoder, FrameError, GuestFrame, RequestFrame, MAX_FRAME,
};
use libfuzzer_sys::fuzz_target;

/// How a plain reading of the stream ends.
#[derive(Debug, PartialEq)]
enum End {
    /// Between frames.
    Clean,
    /// Inside a frame: bytes there, bytes wanted.
    Cut { have: usize, want: usize },
    /// A prefix over the limit.
    TooLarge { len: usize },
}

/// The frames of `stream` by the letter of the framing, and how the reading ends.
fn reference(stream: &[u8]) -> (Vec<&[u8]>, End) {
    let mut bodies = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (bodies, End::Clean);
        }
        let Some((prefix, after)) = rest.split_first_chunk::<4>() else {
            return (
                bodies,
                End::Cut {
                    have: rest.len(),
                    want: 4,
                },
            );
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME {
            return (bodies, End::TooLarge { len });
        }
        if after.len() < len {
            return (
                bodies,
                End::Cut {
                    have: rest.len(),
                    want: 4 + len,
                },
            );
        }
        bodies.push(&after[..len]);
        rest = &after[len..];
    }
}

/// The chunks a reader of the port would get.
fn chunks(ctl: u8, stream: &[u8]) -> Vec<&[u8]> {
    if ctl == 0 {
        return vec![stream];
    }
    let max = u32::from(ctl & 0x3f) + 1;
    let mut x = u32::from(ctl).wrapping_mul(0x9e37_79b9) | 1;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = ((x % max) as usize + 1).min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// What the guest does with a body: decode the request. Whatever it accepts must encode back
/// to the same request.
fn guest_decodes(body: &[u8]) {
    match decode::<RequestFrame>(body) {
        Ok(frame) => {
            let wire = encode(&frame).expect("an accepted request re-encodes");
            let again: RequestFrame = decode(&wire[4..]).expect("a re-encoded request decodes");
            assert_eq!(again, frame, "request changed through encode -> decode");
        }
        Err(e) => assert!(matches!(e, FrameError::Malformed(_)), "{e:?}"),
    }
}

/// What the host does with a body: decode the guest's frame, with the same round-trip check.
fn host_decodes(body: &[u8]) -> Result<GuestFrame, ()> {
    match decode::<GuestFrame>(body) {
        Ok(frame) => {
            let wire = encode(&frame).expect("an accepted guest frame re-encodes");
            let again: GuestFrame = decode(&wire[4..]).expect("a re-encoded guest frame decodes");
            assert_eq!(again, frame, "guest frame changed through encode -> decode");
            Ok(frame)
        }
        Err(e) => {
            assert!(matches!(e, FrameError::Malformed(_)), "{e:?}");
            Err(())
        }
    }
}

fn guest_side(ctl: u8, stream: &[u8], expected: &[&[u8]], end: &End) {
    let mut decoder = FrameDecoder::new();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut lost_sync = false;
    for chunk in chunks(ctl, stream) {
        assert!(decoder.wanted() >= 1);
        decoder.push(chunk);
        loop {
            match decoder.next_body() {
                Ok(Some(body)) => {
                    guest_decodes(&body);
                    if !lost_sync {
                        bodies.push(body);
                    }
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len }) => {
                    assert!(len > MAX_FRAME);
                    if !lost_sync {
                        assert_eq!(end, &End::TooLarge { len });
                        lost_sync = true;
                    }
                    decoder.reset();
                    break;
                }
                Err(e) => panic!("next_body failed with {e:?}"),
            }
        }
    }
    assert_eq!(bodies, expected, "chunking changed the frames");
    if lost_sync {
        return;
    }
    match (decoder.end_of_stream(), end) {
        (FrameError::Closed, End::Clean) => assert!(decoder.is_empty()),
        (FrameError::Truncated { have, want }, End::Cut { have: h, want: w }) => {
            assert_eq!((have, want), (*h, *w));
        }
        (got, _) => panic!("end of stream: {got:?}, expected {end:?}"),
    }
}

fn host_side(stream: &[u8], expected: &[&[u8]], end: &End) {
    let mut reader = stream;
    let mut offset = 0;
    for body in expected {
        let got = read_frame::<_, GuestFrame>(&mut reader);
        offset += 4 + body.len();
        assert_eq!(
            reader.len(),
            stream.len() - offset,
            "read_frame read past its frame"
        );
        match (got, host_decodes(body)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(FrameError::Malformed(_)), Err(())) => {}
            (got, want) => panic!("read_frame gave {got:?}, decode gave {want:?}"),
        }
    }
    match (read_frame::<_, GuestFrame>(&mut reader), end) {
        (Err(FrameError::Closed), End::Clean) => {}
        (Err(FrameError::Truncated { have, want }), End::Cut { have: h, want: w }) => {
            assert_eq!((have, want), (*h, *w));
            assert!(reader.is_empty());
        }
        (Err(FrameError::TooLarge { len }), End::TooLarge { len: l }) => {
            assert_eq!(len, *l);
            assert_eq!(
                reader.len(),
                stream.len() - offset - 4,
                "read past the prefix"
            );
        }
        (got, _) => panic!("host end of stream: {got:?}, expected {end:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let (expected, end) = reference(stream);
    guest_side(ctl, stream, &expected, &end);
    host_side(stream, &expected, &end);
});
