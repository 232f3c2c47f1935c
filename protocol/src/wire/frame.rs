use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// Why the byte stream cannot be split into frames any more.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced more bytes than the limit. Its bytes cannot be skipped without
    /// reading them, so the stream is unusable.
    #[error("frame of at least {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length, or as much of it as was read before it passed the limit.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("invalid frame length prefix")]
    BadLength,
}

/// Encodes `message` as one frame: varint length, then the protobuf bytes.
pub fn encode_frame<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.encoded_len() + 5);
    // Writing into a BytesMut grows it as needed, so encoding cannot fail.
    message
        .encode_length_delimited(&mut buf)
        .expect("BytesMut grows to fit");
    buf.freeze()
}

/// Splits a byte stream into frames. Pure: bytes in, frames out, no I/O.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Adds bytes read from the stream.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame's body, if one has fully arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let mut len: u64 = 0;
        let mut prefix = 0;
        loop {
            let Some(&byte) = self.buf.get(prefix) else {
                return Ok(None);
            };
            // 10 bytes encode any u64; more is malformed.
            if prefix == 10 {
                return Err(FrameError::BadLength);
            }
            len |= u64::from(byte & 0x7f) << (7 * prefix);
            prefix += 1;
            if len > self.max_frame as u64 {
                return Err(FrameError::TooLarge {
                    len,
                    max: self.max_frame,
                });
            }
            if byte & 0x80 == 0 {
                break;
            }
        }
        let len = len as usize; // <= max_frame, a usize
        if self.buf.len() < prefix + len {
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(prefix);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pb;
    use proptest::prelude::*;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arb_client_body() -> impl Strategy<Value = pb::client_frame::Body> {
        use pb::client_frame::Body;
        prop_oneof![
            ".{0,20}".prop_map(|client| Body::Hello(pb::Hello { client })),
            (arb_bytes(40), arb_bytes(70), arb_bytes(80), any::<u64>()).prop_map(
                |(public_key, signature, ticket, work)| {
                    Body::Register(pb::Register {
                        public_key,
                        signature,
                        ticket,
                        work,
                    })
                }
            ),
            (arb_bytes(40), arb_bytes(70), ".{0,30}").prop_map(
                |(public_key, signature, unreachable)| {
                    Body::Authenticate(pb::Authenticate {
                        public_key,
                        signature,
                        unreachable,
                    })
                }
            ),
            (arb_bytes(40), arb_bytes(300), arb_bytes(20)).prop_map(
                |(recipient, ciphertext, client_message_id)| {
                    Body::Send(pb::Send {
                        recipient,
                        ciphertext,
                        client_message_id,
                    })
                }
            ),
            any::<u32>().prop_map(|window| Body::Subscribe(pb::Subscribe { window })),
            proptest::collection::vec(any::<u64>(), 0..20)
                .prop_map(|envelope_ids| Body::Ack(pb::Ack { envelope_ids })),
            Just(Body::Ping(pb::Ping {})),
        ]
    }

    fn arb_server_frame() -> impl Strategy<Value = pb::ServerFrame> {
        use pb::response::Result as R;
        let result = prop_oneof![
            (0..15i32, ".{0,30}", any::<u64>()).prop_map(|(code, message, retry_after_ms)| {
                R::Error(pb::Error {
                    code,
                    message,
                    retry_after_ms,
                })
            }),
            (arb_bytes(32), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
                |(nonce, a, b, bits)| {
                    R::Challenge(pb::Challenge {
                        nonce,
                        max_envelope_bytes: a,
                        max_frame_bytes: b,
                        registration_work_bits: bits,
                    })
                }
            ),
            (arb_bytes(32), any::<bool>(), arb_bytes(41)).prop_map(
                |(account_id, created, door_pass)| R::Authenticated(pb::Authenticated {
                    account_id,
                    created,
                    door_pass,
                })
            ),
            any::<u64>().prop_map(|envelope_id| R::SendOk(pb::SendOk { envelope_id })),
            any::<u32>().prop_map(|window| R::SubscribeOk(pb::SubscribeOk { window })),
            (any::<u32>(), proptest::collection::vec(any::<u64>(), 0..10)).prop_map(
                |(deleted, unknown_ids)| R::AckOk(pb::AckOk {
                    deleted,
                    unknown_ids
                })
            ),
            Just(R::Pong(pb::Pong {})),
            (
                arb_bytes(80),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(
                    |(ticket, position, ahead, retry_after_ms, estimated_wait_ms)| {
                        R::Queued(pb::Queued {
                            ticket,
                            position,
                            ahead,
                            retry_after_ms,
                            estimated_wait_ms,
                        })
                    }
                ),
        ];
        let delivery = (any::<u64>(), arb_bytes(300), arb_bytes(16), any::<u64>()).prop_map(
            |(envelope_id, ciphertext, client_message_id, accepted_at_ms)| pb::Delivery {
                envelope_id,
                ciphertext,
                client_message_id,
                accepted_at_ms,
            },
        );
        prop_oneof![
            (any::<u64>(), result).prop_map(|(request_id, r)| pb::ServerFrame {
                body: Some(pb::server_frame::Body::Response(pb::Response {
                    request_id,
                    result: Some(r)
                }))
            }),
            delivery.prop_map(|d| pb::ServerFrame {
                body: Some(pb::server_frame::Body::Delivery(d))
            }),
        ]
    }

    /// Feeds `stream` to a decoder in chunks of `chunk` bytes and collects the frames.
    fn split(stream: &[u8], chunk: usize, max: usize) -> Result<Vec<Bytes>, FrameError> {
        let mut decoder = FrameDecoder::new(max);
        let mut frames = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            decoder.extend(piece);
            while let Some(frame) = decoder.next_frame()? {
                frames.push(frame);
            }
        }
        assert_eq!(decoder.buffered(), 0, "no bytes left over");
        Ok(frames)
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(
            bodies in proptest::collection::vec((any::<u64>(), arb_client_body()), 1..8),
            chunk in 1usize..64,
        ) {
            let frames: Vec<pb::ClientFrame> = bodies
                .into_iter()
                .map(|(request_id, body)| pb::ClientFrame { request_id, body: Some(body) })
                .collect();
            let stream: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f).to_vec()).collect();
            let decoded: Vec<pb::ClientFrame> = split(&stream, chunk, 1 << 20)
                .expect("valid stream")
                .into_iter()
                .map(|b| pb::ClientFrame::decode(b).expect("valid frame"))
                .collect();
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn server_frames_round_trip(
            frames in proptest::collection::vec(arb_server_frame(), 1..8),
            chunk in 1usize..64,
        ) {
            let stream: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f).to_vec()).collect();
            let decoded: Vec<pb::ServerFrame> = split(&stream, chunk, 1 << 20)
                .expect("valid stream")
                .into_iter()
                .map(|b| pb::ServerFrame::decode(b).expect("valid frame"))
                .collect();
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(stream in proptest::collection::vec(any::<u8>(), 0..200), chunk in 1usize..16) {
            let mut decoder = FrameDecoder::new(64);
            for piece in stream.chunks(chunk) {
                decoder.extend(piece);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    let _ = pb::ClientFrame::decode(frame);
                }
            }
        }
    }

    #[test]
    fn oversized_and_bad_prefixes_are_errors() {
        let mut d = FrameDecoder::new(100);
        d.extend(&[0xe5, 0x01]); // 229
        // Refused as soon as the prefix read so far passes the limit.
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: 101..,
                max: 100
            })
        ));
        let mut d = FrameDecoder::new(usize::MAX);
        d.extend(&[0xff; 11]);
        assert_eq!(d.next_frame(), Err(FrameError::BadLength));
        let mut d = FrameDecoder::new(100);
        d.extend(&[5, 1, 2]);
        assert_eq!(d.next_frame(), Ok(None), "incomplete frame waits");
    }
}
