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
//!
//! The node's `BacklogDone` marker takes its place in the queue, after the backlog's
//! deliveries, and takes no room in the window: `Deliveries::backlog` ends there.

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

/// What waits in the queue.
#[derive(Debug)]
enum Item {
    Delivery(Delivery),
    /// Everything before this was the subscription's backlog.
    BacklogDone,
}

/// What a look at the queue found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    Delivery(Delivery),
    /// The backlog is drained (asked for by `stop_at_backlog_end` only).
    BacklogDone,
    /// Nothing waits now.
    Nothing,
    /// Nothing waits and no connection is left to deliver more.
    Ended,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Item>,
    /// Deliveries in `queue`: what the window bounds.
    held: usize,
    /// The backlog marker has been reached.
    backlog_done: bool,
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

    /// The oldest delivery waiting, passing over the backlog marker (noting it) unless
    /// `stop_at_backlog_end`, which also answers [`Taken::BacklogDone`] for good once the
    /// marker has been reached.
    pub(super) fn take(&self, stop_at_backlog_end: bool) -> Taken {
        let mut state = self.lock();
        loop {
            if stop_at_backlog_end && state.backlog_done {
                return Taken::BacklogDone;
            }
            match state.queue.pop_front() {
                Some(Item::Delivery(d)) => {
                    state.held -= 1;
                    return Taken::Delivery(d);
                }
                Some(Item::BacklogDone) => state.backlog_done = true,
                None if state.senders == 0 => return Taken::Ended,
                None => return Taken::Nothing,
            }
        }
    }

    /// Waits for the next delivery; `None` once the stream has ended. With
    /// `stop_at_backlog_end`, also `None` once the backlog is drained.
    pub(super) async fn next(&self, stop_at_backlog_end: bool) -> Option<Delivery> {
        loop {
            // Registered before looking, so a delivery that lands in between still wakes.
            let changed = self.changed.notified();
            match self.take(stop_at_backlog_end) {
                Taken::Delivery(d) => return Some(d),
                Taken::Nothing => changed.await,
                Taken::BacklogDone | Taken::Ended => return None,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain values changed in single steps: a panic elsewhere cannot tear them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

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
        self.queue(Item::Delivery(d))
    }

    /// Queues the node's word that the backlog is drained (after what came before it).
    pub(super) fn backlog_done(&self) {
        // The marker takes no room, so it never overflows.
        let _ = self.queue(Item::BacklogDone);
    }

    fn queue(&self, item: Item) -> Result<(), Overflow> {
        let mut state = self.inbox.lock();
        if self.link < state.link {
            return Ok(());
        }
        if self.link > state.link {
            state.queue.clear();
            state.held = 0;
            state.link = self.link;
        }
        if let Item::Delivery(_) = item {
            if state.held >= self.inbox.capacity {
                return Err(Overflow {
                    window: self.inbox.capacity,
                });
            }
            state.held += 1;
        }
        state.queue.push_back(item);
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
        std::iter::from_fn(|| match inbox.take(false) {
            Taken::Delivery(d) => Some(d.envelope_id),
            _ => None,
        })
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
        assert_eq!(inbox.take(false), Taken::Delivery(delivery(7)));
        assert_eq!(inbox.take(false), Taken::Nothing, "one connection is left");
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.next(false).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(second);
        let next = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the last sender went")
            .unwrap();
        assert_eq!(next, None);
        assert_eq!(inbox.take(false), Taken::Ended);
    }

    #[tokio::test]
    async fn the_backlog_ends_at_the_marker_and_the_marker_takes_no_room() {
        let inbox = Inbox::new(2);
        let tx = inbox.sender();
        tx.push(delivery(1)).unwrap();
        tx.push(delivery(2)).unwrap();
        tx.backlog_done();
        assert_eq!(inbox.next(true).await, Some(delivery(1)));
        // Room for one more delivery (the marker counts for nothing), a live one.
        tx.push(delivery(3)).unwrap();
        assert_eq!(inbox.next(true).await, Some(delivery(2)));
        assert_eq!(inbox.next(true).await, None, "the backlog is drained");
        assert_eq!(inbox.next(true).await, None, "and stays drained");
        assert_eq!(inbox.next(false).await, Some(delivery(3)));
    }

    #[test]
    fn taking_live_deliveries_passes_over_the_marker() {
        let inbox = Inbox::new(4);
        let tx = inbox.sender();
        tx.backlog_done();
        tx.push(delivery(5)).unwrap();
        assert_eq!(inbox.take(false), Taken::Delivery(delivery(5)));
        assert_eq!(inbox.take(true), Taken::BacklogDone, "noted on the way");
    }
}
