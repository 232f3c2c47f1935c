//! Accounts are Ed25519 key pairs: no phone number, no e-mail, nothing a third party holds.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

pub use crate::account::AccountId;

/// What a signature authorises; part of the signed transcript so a registration signature
/// cannot be replayed as a login or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Create (or re-confirm) an account.
    Register,
    /// Log in to an existing account.
    Authenticate,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Register => b"register",
            Purpose::Authenticate => b"authenticate",
        }
    }
}

/// The bytes an account signs to prove it holds its key on this TLS session
/// (see the protocol schema).
pub fn transcript(purpose: Purpose, exporter: &[u8; 32], nonce: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(8 + 13 + 1 + 64);
    t.extend_from_slice(b"levee/1 ");
    t.extend_from_slice(purpose.label());
    t.push(0);
    t.extend_from_slice(exporter);
    t.extend_from_slice(nonce);
    t
}

/// Whether `signature` is `account`'s signature over `message`.
pub fn verify(account: &AccountId, message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, account.as_bytes())
        .verify(message, signature)
        .is_ok()
}

/// Why an identity could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a Levee identity.
    #[error(
        "identity file {path} is not a Levee identity (expected `levee-identity-v1` and a 64-hex-character seed)"
    )]
    Format {
        /// The file.
        path: String,
    },
    /// The system random source failed.
    #[error("the system random number generator failed")]
    Random,
}

const FILE_HEADER: &str = "levee-identity-v1";

/// An account's private key, and the latest door pass a node gave it.
///
/// The pass (see `Authenticated.door_pass` in the protocol) lets this account's new
/// connections past a node's door while a signup wave has it limiting new connections:
/// a user whose node died logs in again elsewhere ahead of the crowd. Clones share it, so
/// whichever connection logs in last renews it for all; it is never written to the
/// identity file (it names the IP address it was given to and lasts a day). The `levee` CLI
/// keeps it in a file of its own beside the identity.
pub struct Identity {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
    door_pass: Arc<Mutex<Option<Bytes>>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("account", &self.account())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            door_pass: self.door_pass.clone(),
            ..Self::from_seed(self.seed)
        }
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| IdentityError::Random)?;
        Ok(Self::from_seed(seed))
    }

    /// The identity with this 32-byte Ed25519 seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        // `from_seed_unchecked` only fails for a seed of the wrong length, which the type
        // rules out.
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).expect("a 32-byte seed is always valid");
        Self {
            seed,
            pair,
            door_pass: Arc::default(),
        }
    }

    /// The latest door pass a node gave this account, if any.
    pub fn door_pass(&self) -> Option<Bytes> {
        self.door_pass
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps `pass` (from a node's `Authenticated`) for this account's next connections;
    /// an empty one is ignored.
    pub fn set_door_pass(&self, pass: Bytes) {
        if !pass.is_empty() {
            *self.door_pass.lock().unwrap_or_else(|p| p.into_inner()) = Some(pass);
        }
    }

    /// The account this key controls.
    pub fn account(&self) -> AccountId {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.pair.public_key().as_ref());
        AccountId(id)
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }

    /// Writes the identity to a new file readable only by its owner (mode 0600). Refuses to
    /// overwrite an existing file: losing a key loses the account.
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        writeln!(file, "{FILE_HEADER}\n{}", hex::encode(self.seed)).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads an identity written by [`write_new`](Self::write_new).
    pub fn read(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let format = || IdentityError::Format {
            path: path.display().to_string(),
        };
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(FILE_HEADER) {
            return Err(format());
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(lines.next().ok_or_else(format)?.trim(), &mut seed)
            .map_err(|_| format())?;
        Ok(Self::from_seed(seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_purpose_binding() {
        let id = Identity::generate().expect("rng");
        let t = transcript(Purpose::Register, &[1; 32], &[2; 32]);
        let sig = id.sign(&t);
        assert!(verify(&id.account(), &t, &sig));
        assert!(!verify(
            &id.account(),
            &transcript(Purpose::Authenticate, &[1; 32], &[2; 32]),
            &sig
        ));
        assert!(!verify(
            &id.account(),
            &transcript(Purpose::Register, &[9; 32], &[2; 32]),
            &sig
        ));
        let other = Identity::generate().expect("rng");
        assert!(!verify(&other.account(), &t, &sig));
    }

    #[test]
    fn file_round_trip_is_private_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("me.key");
        let id = Identity::generate().expect("rng");
        id.write_new(&path).expect("write");
        assert_eq!(Identity::read(&path).expect("read").account(), id.account());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(id.write_new(&path), Err(IdentityError::Io { .. })));
        std::fs::write(&path, "nope").expect("write");
        assert!(matches!(
            Identity::read(&path),
            Err(IdentityError::Format { .. })
        ));
    }
}
