//! A subscription's delivery window: how many envelopes a session may hold delivered and
//! not yet acknowledged on its connection.
//!
//! Deliveries share the session stream with responses, so a client that buffered them
//! without bound could be made to hold a whole mailbox in memory, and one that stopped
//! reading the stream to push back would stall its own responses behind them (an `AckOk`
//! behind a delivery the application will not take until its ack returns: a deadlock).
//! Instead the node sends at most the window, and each `Ack` on the connection makes room
//! again — MQTT 5's receive maximum, AMQP's prefetch count. The client asks for a window
//! (`Subscribe.window`), the node grants at most its own `delivery_window`, and the client
//! can then size its buffer to what it asked for and never block its reader.
//!
//! Outstanding envelopes are counted by id, so an acknowledgement of something this
//! connection did not deliver (an earlier session's, or a repeat) makes no room.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::Notify;

/// The window a node grants a subscription that asked for `requested` (0: whatever the
/// node allows) when it allows at most `most`.
pub(super) fn granted(requested: u32, most: u32) -> u32 {
    match requested {
        0 => most,
        n => n.min(most),
    }
}

/// The envelopes one subscription has outstanding, and room for the pump to wait on.
#[derive(Debug)]
pub(super) struct DeliveryWindow {
    size: usize,
    outstanding: Mutex<HashSet<u64>>,
    room: Notify,
}

impl DeliveryWindow {
    /// A window of `size` envelopes (at least one).
    pub(super) fn new(size: u32) -> Self {
        Self {
            size: (size as usize).max(1),
            outstanding: Mutex::new(HashSet::new()),
            room: Notify::new(),
        }
    }

    /// Waits until fewer than the window are outstanding, then counts `id` as outstanding.
    /// Cancel-safe: `id` is counted only when this returns.
    pub(super) async fn enter(&self, id: u64) {
        loop {
            // Registered before the check, so room made after it is not missed.
            let room = self.room.notified();
            {
                let mut outstanding = self.lock();
                if outstanding.len() < self.size {
                    outstanding.insert(id);
                    return;
                }
            }
            room.await;
        }
    }

    /// The client acknowledged `ids`; those this connection delivered make room.
    pub(super) fn acknowledged(&self, ids: &[u64]) {
        let mut outstanding = self.lock();
        let before = outstanding.len();
        for id in ids {
            outstanding.remove(id);
        }
        if outstanding.len() < before {
            // One waiter at most (the pump); a permit keeps the news if it is not waiting.
            self.room.notify_one();
        }
    }

    /// How many are outstanding now.
    #[cfg(test)]
    fn outstanding(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        // A plain set changed in single steps: a panic elsewhere cannot tear it.
        self.outstanding.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_request_is_granted_up_to_the_nodes_limit() {
        assert_eq!(granted(0, 1024), 1024);
        assert_eq!(granted(16, 1024), 16);
        assert_eq!(granted(5000, 1024), 1024);
    }

    #[tokio::test]
    async fn the_pump_waits_for_an_acknowledgement_when_the_window_is_full() {
        let window = Arc::new(DeliveryWindow::new(2));
        window.enter(1).await;
        window.enter(2).await;
        let third = tokio::spawn({
            let window = window.clone();
            async move { window.enter(3).await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "a third envelope waits");
        // An id this connection never delivered makes no room.
        window.acknowledged(&[99]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        window.acknowledged(&[1]);
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("room made")
            .unwrap();
        assert_eq!(window.outstanding(), 2);
    }

    #[tokio::test]
    async fn room_made_before_the_pump_waits_is_kept() {
        let window = DeliveryWindow::new(1);
        window.enter(1).await;
        window.acknowledged(&[1]);
        tokio::time::timeout(Duration::from_secs(5), window.enter(2))
            .await
            .expect("room was there");
    }
}
