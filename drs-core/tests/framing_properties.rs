//! Property tests of the framers: frames survive being cut into any
//! pieces, and garbage never panics or yields a frame over the limit.

use bytes::{Bytes, BytesMut};
use drs_core::{FrameCodec, FrameSpec, Framing};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn decode_in_pieces(
    framing: Framing,
    wire: &[u8],
    cuts: &[usize],
    limit: usize,
) -> Result<Vec<Bytes>, ()> {
    let mut codec = FrameCodec::new(FrameSpec::new(framing).max_frame_len(limit));
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(wire.len());
    for cut in cuts {
        buf.extend_from_slice(&wire[at..cut.max(at)]);
        at = cut.max(at);
        while let Some(f) = codec.decode(&mut buf).map_err(|_| ())? {
            frames.push(f);
        }
    }
    if let Some(f) = codec.decode_eof(&mut buf).map_err(|_| ())? {
        frames.push(f);
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]
    #[test]
    fn frames_survive_any_cutting(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        lines in any::<bool>(),
    ) {
        let framing = if lines { Framing::Lines } else { Framing::LengthPrefixed };
        // Lines cannot hold a newline, and blank lines are skipped.
        let frames: Vec<Bytes> = frames
            .into_iter()
            .map(|f| if lines { f.into_iter().map(|b| if b == b'\n' || b == b'\r' { b'.' } else { b }).collect() } else { f })
            .filter(|f: &Vec<u8>| !lines || !f.iter().all(u8::is_ascii_whitespace))
            .map(Bytes::from)
            .collect();
        let mut codec = FrameCodec::new(FrameSpec::new(framing));
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode(f.clone(), &mut wire).unwrap();
        }
        // A first line that starts as a MessagePack frame or an HTTP line
        // is another protocol's (drs_core::Foreign): refused, not framed.
        let foreign = lines
            && frames.first().is_some_and(|f| {
                matches!(&f[..], [0, _, _, _, 0x80..=0x8f | 0xde | 0xdf, ..])
                    || f.starts_with(b"HTTP/")
                    || drs_core::starts_http_request(f)
            });
        let got = decode_in_pieces(framing, &wire, &cuts, 1 << 20);
        if foreign {
            prop_assert!(got.is_err(), "a foreign first line is refused");
        } else {
            prop_assert_eq!(got.unwrap(), frames);
        }
    }

    #[test]
    fn garbage_never_yields_a_frame_over_the_limit(
        wire in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
        lines in any::<bool>(),
    ) {
        let framing = if lines { Framing::Lines } else { Framing::LengthPrefixed };
        if let Ok(frames) = decode_in_pieces(framing, &wire, &cuts, 32) {
            prop_assert!(frames.iter().all(|f| f.len() <= 32));
        }
    }
}
