//! Accounts and the mailboxes they name.

use std::fmt;
use std::str::FromStr;

/// An account: its owner's Ed25519 public key (32 bytes), which also names its mailbox.
///
/// Shown to people as 64 lowercase hex characters, everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 32]);

impl AccountId {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads an account id from exactly 32 bytes (e.g. a protobuf field).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AccountId {
    // Abbreviated: enough to tell accounts apart in test output, short enough that a
    // debug log line is not a full account id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({}…)", &hex::encode(&self.0[..4]))
    }
}

/// Why a string is not an account id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseAccountIdError {
    /// Not 64 characters long.
    #[error("an account id is 64 hex characters, got {0}")]
    Length(usize),
    /// Contains a character that is not lowercase or uppercase hex.
    #[error("an account id is hex (0-9, a-f)")]
    NotHex,
}

impl FromStr for AccountId {
    type Err = ParseAccountIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(ParseAccountIdError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseAccountIdError::NotHex)?;
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = AccountId([0xab; 32]);
        assert_eq!(id.to_string().parse::<AccountId>(), Ok(id));
        assert_eq!(
            "ab".parse::<AccountId>(),
            Err(ParseAccountIdError::Length(2))
        );
        assert_eq!(
            "zz".repeat(32).parse::<AccountId>(),
            Err(ParseAccountIdError::NotHex)
        );
    }
}
