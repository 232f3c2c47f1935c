//! Deliveries that arrived and that the application has not taken yet, in a fixed space.
//!
//! The node sends a subscription at most the window it granted (`SubscribeOk.window`, at
//! most what the client asked for) of unacknowledged envelopes. What waits here was
//! delivered and not yet taken, so not yet acknowledged: never more than the window. The
//! connection's reader therefore never has to wait for room (which would hold up the
//! responses behind a delivery on the same stream, the application's own acks among them),
//! and a node that sends past the window is breaking the protocol.
//!
//! A session that follows its mailbox to a new node subscribes there again, and the new
//! node delivers everything still unacknowledged from the start. So when the first delivery
//! of a newer connection arrives, what the older one left here is dropped (it comes again),
//! and anything the older one still sends is ignored: the buffer holds one connection's
//! deliveries, within that connection's window.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Delivery;

/// The buffer between the connections' readers and [`super::Deliveries`].
#[derive(Debug)]
pub(super) struct Inbox {
    capacity: usize,
    state: Mutex<State>,
    /// A delivery arrived, or the last sender went away.
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Delivery>,
    /// The connection whose deliveries `queue` holds.
    link: u64,
    /// The number the next connection gets.
    next_link: u64,
    /// Connections that may still deliver; none left ends the stream.
    senders: usize,
}

/// The node sent more unacknowledged deliveries than the window.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Overflow {
    pub(super) window: usize,
}

impl Inbox {
    /// Room for `window` deliveries (at least one).
    pub(super) fn new(window: u32) -> Arc<Self> {
        Arc::new(Self {
            capacity: (window as usize).max(1),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    /// A sender for one more connection, newer than every earlier one.
    pub(super) fn sender(self: &Arc<Self>) -> InboxSender {
        let mut state = self.lock();
        state.next_link += 1;
        state.senders += 1;
        InboxSender {
            inbox: self.clone(),
            link: state.next_link,
        }
    }

    /// The oldest delivery waiting; `Err(Ended)` once nothing waits and no connection is
    /// left to deliver more.
    pub(super) fn pop(&self) -> Result<Option<Delivery>, Ended> {
        let mut state = self.lock();
        match state.queue.pop_front() {
            Some(d) => Ok(Some(d)),
            None if state.senders == 0 => Err(Ended),
            None => Ok(None),
        }
    }

    /// Waits for the next delivery; `None` once the stream has ended.
    pub(super) async fn next(&self) -> Option<Delivery> {
        loop {
            // Registered before looking, so a delivery that lands in between still wakes.
            let changed = self.changed.notified();
            match self.pop() {
                Ok(Some(d)) => return Some(d),
                Ok(None) => changed.await,
                Err(Ended) => return None,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain values changed in single steps: a panic elsewhere cannot tear them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// No delivery waits and none can come.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ended;

/// One connection's way into an [`Inbox`]; dropping the last one ends the stream.
#[derive(Debug)]
pub(super) struct InboxSender {
    inbox: Arc<Inbox>,
    link: u64,
}

impl InboxSender {
    /// A sender for the connection that follows this one (after a move).
    pub(super) fn next_link(&self) -> InboxSender {
        self.inbox.sender()
    }

    /// Queues `d`, which arrived on this sender's connection. A delivery from a connection
    /// older than the queue's is dropped (the newer one delivers it again); the first from
    /// a newer one drops what the older left.
    pub(super) fn push(&self, d: Delivery) -> Result<(), Overflow> {
        let mut state = self.inbox.lock();
        if self.link < state.link {
            return Ok(());
        }
        if self.link > state.link {
            state.queue.clear();
            state.link = self.link;
        }
        if state.queue.len() >= self.inbox.capacity {
            return Err(Overflow {
                window: self.inbox.capacity,
            });
        }
        state.queue.push_back(d);
        drop(state);
        // One reader at most (`Deliveries` takes `&mut self`); a permit keeps the news.
        self.inbox.changed.notify_one();
        Ok(())
    }
}

impl Drop for InboxSender {
    fn drop(&mut self) {
        let mut state = self.inbox.lock();
        state.senders -= 1;
        let ended = state.senders == 0;
        drop(state);
        if ended {
            self.inbox.changed.notify_one();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn delivery(id: u64) -> Delivery {
        Delivery {
            envelope_id: id,
            ciphertext: Bytes::new(),
            client_message_id: [0; 16],
            accepted_at_ms: 0,
        }
    }

    fn ids(inbox: &Inbox) -> Vec<u64> {
        std::iter::from_fn(|| inbox.pop().ok().flatten())
            .map(|d| d.envelope_id)
            .collect()
    }

    #[test]
    fn more_than_the_window_is_refused() {
        let inbox = Inbox::new(2);
        let tx = inbox.sender();
        tx.push(delivery(1)).unwrap();
        tx.push(delivery(2)).unwrap();
        assert_eq!(tx.push(delivery(3)), Err(Overflow { window: 2 }));
        assert_eq!(ids(&inbox), vec![1, 2]);
        // Taken by the application: room again.
        tx.push(delivery(3)).unwrap();
        assert_eq!(ids(&inbox), vec![3]);
    }

    #[test]
    fn a_newer_connection_replaces_what_the_older_left() {
        let inbox = Inbox::new(2);
        let old = inbox.sender();
        old.push(delivery(1)).unwrap();
        old.push(delivery(2)).unwrap();
        let new = old.next_link();
        // The new node delivers from the start again, within its own window.
        new.push(delivery(1)).unwrap();
        new.push(delivery(2)).unwrap();
        // The old connection's late deliveries are ignored, not counted.
        old.push(delivery(3)).unwrap();
        assert_eq!(ids(&inbox), vec![1, 2]);
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_last_connection_goes_after_what_waits_is_taken() {
        let inbox = Inbox::new(4);
        let first = inbox.sender();
        let second = first.next_link();
        second.push(delivery(7)).unwrap();
        drop(first);
        assert_eq!(inbox.pop(), Ok(Some(delivery(7))));
        assert_eq!(inbox.pop(), Ok(None), "one connection is left");
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.next().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(second);
        let next = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the last sender went")
            .unwrap();
        assert_eq!(next, None);
        assert_eq!(inbox.pop(), Err(Ended));
    }
}
