//! The delivery log's record format (`proto/levee/internal/v1/log.proto`): what a node
//! appends for an accepted envelope. Internal to nodes; clients never see it.

/// Generated from `levee/internal/v1/log.proto`.
#[allow(missing_docs, clippy::all)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/levee.internal.v1.rs"));
}

pub(crate) use pb::LoggedEnvelope;
