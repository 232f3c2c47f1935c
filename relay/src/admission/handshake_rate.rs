//! The door's token bucket: how many new connections a node lets through per second.

use std::time::Instant;

/// A token bucket for new handshakes across the node, whose rate admission control sets
/// while it is shedding or people are waiting in line. A handshake costs more CPU than
/// anything a connected client asks for, and it comes before any admission decision: if
/// the node kept taking handshakes as fast as they arrive, shedding requests would free
/// nothing and the overload would spread to the users already connected. With the rate
/// tied to how fast the waiting line moves, new connections arrive about as fast as the
/// node can seat them.
#[derive(Debug)]
pub struct HandshakeRate {
    tokens: f64,
    last: Instant,
}

impl HandshakeRate {
    /// An empty bucket.
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: 0.0,
            last: now,
        }
    }

    /// Takes a token if one is available at `rate` per second (banking at most a quarter
    /// second's worth, and at least one); `None` means no limit.
    pub fn take(&mut self, rate: Option<f64>, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let Some(rate) = rate else {
            self.tokens = 0.0;
            return true;
        };
        let burst = (rate / 4.0).max(1.0);
        self.tokens = (self.tokens + rate * dt).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_rate_limits_only_when_asked() {
        let t0 = Instant::now();
        let mut bucket = HandshakeRate::new(t0);
        assert!((0..1000).all(|_| bucket.take(None, t0)), "no limit");
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        // 40/s: nothing banked from the unlimited time, then 40 over one second.
        assert!(!bucket.take(Some(40.0), t0));
        let taken = (1..=1000)
            .filter(|&ms| bucket.take(Some(40.0), at(ms)))
            .count();
        assert_eq!(taken, 40);
        // An idle bucket banks a quarter second's worth, no more.
        let after_idle = (0..100)
            .filter(|_| bucket.take(Some(40.0), at(60_000)))
            .count();
        assert_eq!(after_idle, 10);
    }
}
