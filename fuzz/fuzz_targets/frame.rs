//! The bytes of a QUIC stream as a node reads them (and a client reads a node's): split into
//! frames by `FrameDecoder`, each decoded as a `ClientFrame` and as a `ServerFrame`.
//!
//! Checked beyond "no panic": the frames do not depend on how the network cut the stream
//! into reads; no frame exceeds the limit; whatever decodes re-encodes to a frame that
//! decodes to the same message.
#![no_main]

use levee_protocol::wire::{FrameDecoder, FrameError, encode_frame, pb};
use libfuzzer_sys::fuzz_target;
use prost::Message;

const MAX_FRAME: usize = 4096;

/// Every frame of `stream` read `read` bytes at a time, then the error that ended it, if any.
fn frames(stream: &[u8], read: usize) -> (Vec<prost::bytes::Bytes>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    let mut out = Vec::new();
    for piece in stream.chunks(read) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => out.push(body),
                Ok(None) => break,
                // The stream is unusable from here; a node closes the connection.
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let (whole, whole_error) = frames(stream, stream.len().max(1));
    let (cut_up, cut_error) = frames(stream, usize::from(cut % 16) + 1);
    assert_eq!(whole, cut_up, "frames depend on how the stream was read");
    assert_eq!(whole_error.is_some(), cut_error.is_some());
    for body in whole {
        assert!(body.len() <= MAX_FRAME);
        if let Ok(frame) = pb::ClientFrame::decode(body.clone()) {
            let (again, error) = frames(&encode_frame(&frame), usize::MAX);
            assert!(error.is_none() && again.len() == 1);
            let decoded = pb::ClientFrame::decode(again[0].clone()).expect("re-encoded frame");
            assert_eq!(decoded, frame);
        }
        let _ = pb::ServerFrame::decode(body);
    }
});
