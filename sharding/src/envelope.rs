use bytes::Bytes;

use crate::MailboxId;

/// The relay's id for an envelope: its offset in the delivery-log partition (shard) of its
/// mailbox. Unique within a mailbox and increasing in delivery order, and the same every time
/// a log record is replayed, which makes replays idempotent by construction.
pub type EnvelopeId = u64;

/// An envelope on its way into a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEnvelope {
    /// The recipient.
    pub mailbox: MailboxId,
    /// See [`EnvelopeId`].
    pub id: EnvelopeId,
    /// Identifies "the same message sent again": a hash of the sender and its client message
    /// id, so the store can drop re-sends without learning who the sender is.
    pub dedupe_key: [u8; 16],
    /// The sender's own id for the message, handed to the recipient for its own de-duplication.
    pub client_message_id: [u8; 16],
    /// When the relay accepted it (ms since the Unix epoch).
    pub accepted_at_ms: u64,
    /// After this instant (ms since the Unix epoch) it is never delivered and may be deleted.
    pub expires_at_ms: u64,
    /// The opaque payload.
    pub ciphertext: Bytes,
}

/// An envelope as it sits in a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// See [`EnvelopeId`].
    pub id: EnvelopeId,
    /// See [`NewEnvelope::client_message_id`].
    pub client_message_id: [u8; 16],
    /// When the relay accepted it (ms since the Unix epoch).
    pub accepted_at_ms: u64,
    /// When it expires (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The opaque payload.
    pub ciphertext: Bytes,
}
