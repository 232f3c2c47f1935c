//! The wire protocol: generated protobuf types and the length-delimited frame codec.
//!
//! The schema is `protocol/proto/levee/v1/levee.proto`; `docs/PROTOCOL.md` is the protocol
//! specification.

mod frame;

pub use frame::{FrameDecoder, FrameError, encode_frame};

/// Generated from `levee/v1/levee.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/levee.v1.rs"));
}

/// The ALPN protocol id of this protocol version.
pub const ALPN: &[u8] = b"levee/1";

/// Most envelope ids one `Ack` may carry. Acknowledgements are never shed (they reduce
/// load), so one request must not be able to hold a node's thread for long.
pub const MAX_ACK_IDS: usize = 1024;

/// TLS exporter label for the authentication transcript.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-levee-auth";

impl pb::Response {
    /// An error response to `request_id`.
    pub fn error(request_id: u64, code: pb::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            request_id,
            result: Some(pb::response::Result::Error(pb::Error {
                code: code as i32,
                message: message.into(),
                retry_after_ms: 0,
            })),
        }
    }

    /// A successful response.
    pub fn ok(request_id: u64, result: pb::response::Result) -> Self {
        Self {
            request_id,
            result: Some(result),
        }
    }
}

impl From<pb::Response> for pb::ServerFrame {
    fn from(r: pb::Response) -> Self {
        Self {
            body: Some(pb::server_frame::Body::Response(r)),
        }
    }
}
