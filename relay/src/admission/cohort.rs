use std::time::Duration;

use ring::hmac;

/// How many cohorts accounts are split into: the granularity of shedding (1/128 ≈ 0.8%).
pub const COHORTS: u16 = 128;

/// A stable bucket of accounts, `0..COHORTS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cohort(u16);

impl Cohort {
    /// The bucket number.
    pub fn index(self) -> u16 {
        self.0
    }
}

/// The secret that maps keys to cohorts, rotated every `period` so that the same users are
/// not always the ones shed. Keyed (HMAC), so nobody can grind a key into a favoured cohort.
pub struct CohortSalt {
    secret: Vec<u8>,
    period: Duration,
}

impl CohortSalt {
    /// Cohorts derived from `secret` (e.g. from the cluster key, so all nodes agree),
    /// reshuffled every `period`.
    pub fn new(secret: &[u8], period: Duration) -> Self {
        Self {
            secret: secret.to_vec(),
            period: period.max(Duration::from_secs(1)),
        }
    }

    /// The cohort of `key` (an account key or registration key) at `unix_time`.
    /// Everything about a request other than the key and the rotation — retrying,
    /// reconnecting, another node — leaves it unchanged.
    pub fn cohort(&self, key: &[u8], unix_time: Duration) -> Cohort {
        let rotation = unix_time.as_secs() / self.period.as_secs();
        let mac_key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        let mut ctx = hmac::Context::with_key(&mac_key);
        ctx.update(b"levee cohort v1");
        ctx.update(&rotation.to_be_bytes());
        ctx.update(key);
        let tag = ctx.sign();
        let first = u16::from_be_bytes([tag.as_ref()[0], tag.as_ref()[1]]);
        Cohort(first % COHORTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_cohort_within_a_rotation_and_spread_across_keys() {
        let salt = CohortSalt::new(b"cluster key", Duration::from_secs(3600));
        let key = [7u8; 32];
        let t0 = Duration::from_secs(7200);
        let c = salt.cohort(&key, t0);
        for s in 0..3600 {
            assert_eq!(
                salt.cohort(&key, t0 + Duration::from_secs(s)),
                c,
                "stable for the whole rotation"
            );
        }
        let rotations: std::collections::BTreeSet<_> = (0..20)
            .map(|r| salt.cohort(&key, Duration::from_secs(3600 * r)))
            .collect();
        assert!(rotations.len() > 1, "rotation reshuffles");
        let mut counts = vec![0u32; COHORTS as usize];
        for i in 0..12_800u32 {
            counts[salt.cohort(&i.to_be_bytes(), t0).index() as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (50..=150).contains(&n)),
            "roughly uniform: {counts:?}"
        );
        let other = CohortSalt::new(b"other cluster", Duration::from_secs(3600));
        let differs = (0..100u32)
            .any(|i| other.cohort(&i.to_be_bytes(), t0) != salt.cohort(&i.to_be_bytes(), t0));
        assert!(differs, "the secret matters");
    }
}
