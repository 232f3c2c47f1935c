//! Certificate fingerprints: how a client pins a self-signed node.

use std::fmt;
use std::str::FromStr;

use ring::digest;

/// A SHA-256 certificate fingerprint, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate in DER.
    pub fn of(der: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    /// Accepts 64 hex characters, optionally separated by colons (as `openssl x509
    /// -fingerprint` prints them).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cleaned: String = s.trim().chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&cleaned, &mut out)
            .map_err(|_| "a fingerprint is 64 hex characters (a SHA-256 digest)".to_owned())?;
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_colon_separated_hex() {
        let fp = Fingerprint::of(b"a certificate");
        let plain = fp.to_string();
        assert_eq!(plain.parse::<Fingerprint>(), Ok(fp));
        let colons = plain
            .as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).expect("hex"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.to_uppercase().parse::<Fingerprint>(), Ok(fp));
        assert!("abcd".parse::<Fingerprint>().is_err());
    }
}
