//! Refusing early and cheaply: limits checked before a connection costs a TLS handshake,
//! and per-account request rates.
//!
//! Addresses are used only as in-memory rate-limiter keys, truncated to their network
//! prefix, and never logged.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use levee_sharding::MailboxId;

use crate::config::NodeConfig;

/// What to do with a new connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Start the handshake.
    Accept,
    /// Answer with a QUIC Retry: the client must prove its address (one round trip for it,
    /// no state for us) before we spend a handshake on it.
    Retry,
    /// Refuse at once.
    Refuse,
}

/// The decision, from the numbers alone. Past half the handshake budget, unvalidated
/// addresses are asked to retry; at the budget or over a prefix's rate, refused. Refusing
/// costs one packet, and the client library backs off. (The node-wide handshake rate is
/// kept before this, by the door: see `node::door`.)
pub(crate) fn decide(
    handshaking: usize,
    max_handshakes: usize,
    validated: bool,
    prefix_within_rate: bool,
) -> Gate {
    if !prefix_within_rate || handshaking >= max_handshakes {
        Gate::Refuse
    } else if !validated && handshaking >= max_handshakes / 2 {
        Gate::Retry
    } else {
        Gate::Accept
    }
}

/// The network a client address belongs to for rate limiting: a /24 for IPv4, a /48 for
/// IPv6 (what one subscriber or small network usually holds).
fn prefix(ip: IpAddr) -> [u8; 6] {
    let mut key = [0u8; 6];
    match ip {
        IpAddr::V4(v4) => key[..3].copy_from_slice(&v4.octets()[..3]),
        IpAddr::V6(v6) => key.copy_from_slice(&v6.octets()[..6]),
    }
    key
}

fn quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_second.max(1).saturating_mul(2)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// Handshake and rate limits of one node.
pub(crate) struct Guard {
    max_handshakes: usize,
    handshaking: Arc<AtomicUsize>,
    per_prefix: DefaultKeyedRateLimiter<[u8; 6]>,
    per_account: DefaultKeyedRateLimiter<MailboxId>,
}

/// Counts a handshake in progress until dropped.
pub(crate) struct Handshaking(Arc<AtomicUsize>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Guard {
    pub(crate) fn new(config: &NodeConfig) -> Self {
        Self {
            max_handshakes: config.max_handshakes as usize,
            handshaking: Arc::default(),
            per_prefix: RateLimiter::keyed(quota(config.connections_per_prefix_per_sec)),
            per_account: RateLimiter::keyed(quota(config.account_requests_per_sec)),
        }
    }

    /// Decides a new connection attempt from `addr`.
    pub(crate) fn gate(&self, addr: SocketAddr, validated: bool) -> Gate {
        let within = self.per_prefix.check_key(&prefix(addr.ip())).is_ok();
        let handshaking = self.handshaking.load(Ordering::Relaxed);
        decide(handshaking, self.max_handshakes, validated, within)
    }

    /// Marks a handshake as in progress for as long as the returned value lives. Taken at
    /// the accept gate, so a burst within one accept round counts before the next decision.
    pub(crate) fn handshaking(&self) -> Handshaking {
        self.handshaking.fetch_add(1, Ordering::Relaxed);
        Handshaking(self.handshaking.clone())
    }

    /// The count of handshakes in progress and the most the node takes at once, for the
    /// door to drop new connections while the budget is spent.
    pub(crate) fn handshake_budget(&self) -> (Arc<AtomicUsize>, usize) {
        (self.handshaking.clone(), self.max_handshakes)
    }

    /// Whether `account` is within its request rate.
    pub(crate) fn account_within_rate(&self, account: &MailboxId) -> bool {
        self.per_account.check_key(account).is_ok()
    }

    /// Forgets idle keys so the limiters do not grow without bound.
    pub(crate) fn forget_idle(&self) {
        self.per_prefix.retain_recent();
        self.per_account.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_past_half_the_budget_refuse_at_it_or_over_a_prefix_rate() {
        assert_eq!(decide(0, 100, false, true), Gate::Accept);
        assert_eq!(decide(49, 100, false, true), Gate::Accept);
        assert_eq!(decide(50, 100, false, true), Gate::Retry);
        // A validated address is not asked again.
        assert_eq!(decide(50, 100, true, true), Gate::Accept);
        assert_eq!(decide(100, 100, true, true), Gate::Refuse);
        assert_eq!(decide(0, 100, true, false), Gate::Refuse);
    }

    #[test]
    fn prefixes_group_neighbours_and_rates_apply_per_key() {
        let a: IpAddr = "192.0.2.10".parse().expect("ip");
        let b: IpAddr = "192.0.2.200".parse().expect("ip");
        let c: IpAddr = "198.51.100.1".parse().expect("ip");
        assert_eq!(prefix(a), prefix(b));
        assert_ne!(prefix(a), prefix(c));
        let config = NodeConfig {
            account_requests_per_sec: 5,
            ..NodeConfig::default()
        };
        let guard = Guard::new(&config);
        let (alice, bob) = (MailboxId([1; 32]), MailboxId([2; 32]));
        let allowed = (0..100)
            .filter(|_| guard.account_within_rate(&alice))
            .count();
        assert_eq!(allowed, 10, "burst of twice the rate, then limited");
        assert!(
            guard.account_within_rate(&bob),
            "other accounts are unaffected"
        );
    }
}
