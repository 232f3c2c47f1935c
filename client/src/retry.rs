//! When the client tries again: the rules every retry loop of [`Client`](crate::Client)
//! follows, public so that a model of a crowd of clients (`levee-wave`, the signup-wave
//! simulator) follows the same ones.
//!
//! Randomness comes in as a byte, so the rules themselves are deterministic.

use std::time::Duration;

/// The first pause after a connection attempt was turned away.
pub const FIRST_CONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between connection attempts, before jitter.
pub const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(8);

/// The pauses between connection attempts turned away: 0.5 s doubling to at most 8 s,
/// each plus up to 100% jitter. The growing back-off keeps a crowd of patient clients
/// from becoming a retry storm; the jitter keeps them from coming back together.
#[derive(Clone, Debug)]
pub struct ConnectBackoff {
    next: Duration,
}

impl Default for ConnectBackoff {
    fn default() -> Self {
        Self {
            next: FIRST_CONNECT_BACKOFF,
        }
    }
}

impl ConnectBackoff {
    /// The pause before the next attempt, with `random` (a uniform byte) as its jitter;
    /// the pause after it will be twice as long (up to the cap).
    pub fn pause(&mut self, random: u8) -> Duration {
        let pause = self.next.mul_f64(1.0 + f64::from(random) / 255.0);
        self.next = (self.next * 2).min(MAX_CONNECT_BACKOFF);
        pause
    }
}

/// A wait the node asked for (`retry_after`), stretched by up to 25% with `random` (a
/// uniform byte): never earlier than asked, so a client does not come back before its
/// place is due; a little later, so clients told the same thing do not return at once.
pub fn jittered(wait: Duration, random: u8) -> Duration {
    wait.mul_f64(1.0 + f64::from(random) / 1020.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_backoff_doubles_to_its_cap_with_at_most_double_jitter() {
        let mut b = ConnectBackoff::default();
        let least: Vec<u128> = (0..6).map(|_| b.pause(0).as_millis()).collect();
        assert_eq!(least, [500, 1000, 2000, 4000, 8000, 8000]);
        let mut b = ConnectBackoff::default();
        assert_eq!(b.pause(255), Duration::from_secs(1));
    }

    #[test]
    fn a_retry_is_never_early_and_at_most_a_quarter_late() {
        let wait = Duration::from_secs(4);
        assert_eq!(jittered(wait, 0), wait);
        assert_eq!(jittered(wait, 255), Duration::from_secs(5));
    }
}
