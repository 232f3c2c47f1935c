use std::fmt;
use std::str::FromStr;

/// The name of a mailbox: its owner's Ed25519 public key (32 bytes).
///
/// Shown to people as 64 lowercase hex characters, everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxId(pub [u8; 32]);

impl MailboxId {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a mailbox id from exactly 32 bytes (e.g. a protobuf field).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Display for MailboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MailboxId {
    // Abbreviated: enough to tell mailboxes apart in test output, short enough that a
    // debug log line is not a full account id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MailboxId({}…)", &hex::encode(&self.0[..4]))
    }
}

/// Why a string is not a mailbox (account) id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseMailboxIdError {
    /// Not 64 characters long.
    #[error("an account id is 64 hex characters, got {0}")]
    Length(usize),
    /// Contains a character that is not lowercase or uppercase hex.
    #[error("an account id is hex (0-9, a-f)")]
    NotHex,
}

impl FromStr for MailboxId {
    type Err = ParseMailboxIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(ParseMailboxIdError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseMailboxIdError::NotHex)?;
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = MailboxId([0xab; 32]);
        assert_eq!(id.to_string().parse::<MailboxId>(), Ok(id));
        assert_eq!(
            "ab".parse::<MailboxId>(),
            Err(ParseMailboxIdError::Length(2))
        );
        assert_eq!(
            "zz".repeat(32).parse::<MailboxId>(),
            Err(ParseMailboxIdError::NotHex)
        );
    }
}
