//! Moving envelopes from the delivery log into mailboxes, and waking the connections that
//! are waiting for them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use levee_queue::{LogConsumer, LoggedRecord};
use levee_sharding::{InsertOutcome, MailboxId, NewEnvelope, ShardId, shard_of};
use prost::Message;
use tokio::sync::watch;

use super::Shared;
use super::tokio_util_shim::CancelToken;
use crate::clock::now_ms;
use crate::wire::internal::LoggedEnvelope;

/// Consumer group of the delivery workers.
const DELIVERY_GROUP: &str = "levee-delivery";
/// Records moved per store batch: large enough to amortise one fsync over many envelopes.
const DELIVERY_BATCH: usize = 1024;
/// Longest a consumer may take to take up a new set of shards before the worker gives up
/// and tries again (with the then-current placement).
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(20);

/// Which mailboxes have a subscriber on this node, and a way to wake them.
///
/// A subscriber holds a `watch::Receiver`; the delivery worker bumps the mailbox's counter
/// after storing envelopes for it. A watch never loses a wake-up between a subscriber's
/// read and its wait, which a bare `Notify` could.
#[derive(Default)]
pub(crate) struct Presence {
    mailboxes: Mutex<HashMap<MailboxId, watch::Sender<u64>>>,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashMap<MailboxId, watch::Sender<u64>>> {
        // The map holds only channels; a panic elsewhere cannot leave it inconsistent.
        self.mailboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watching `mailbox` for new envelopes.
    pub fn watch(&self, mailbox: MailboxId) -> watch::Receiver<u64> {
        self.lock()
            .entry(mailbox)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Wakes the subscribers of `mailbox`, if any.
    pub fn notify(&self, mailbox: &MailboxId) {
        if let Some(tx) = self.lock().get(mailbox) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes the subscribers of every mailbox in `shards` (of `shard_count`).
    pub fn notify_shards(&self, shards: &HashSet<ShardId>, shard_count: u32) {
        for (mailbox, tx) in self.lock().iter() {
            if shards.contains(&shard_of(mailbox, shard_count)) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Forgets `mailbox` once its last subscriber is gone. Call after dropping a receiver.
    pub fn release(&self, mailbox: &MailboxId) {
        let mut map = self.lock();
        if map.get(mailbox).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(mailbox);
        }
    }
}

/// Turns a log record into the envelope to store; `None` if its payload is not ours.
fn to_envelope(record: &LoggedRecord) -> Option<NewEnvelope> {
    let logged = LoggedEnvelope::decode(record.payload.clone()).ok()?;
    Some(NewEnvelope {
        mailbox: record.mailbox,
        id: record.position.offset,
        dedupe_key: logged.dedupe_key.as_ref().try_into().ok()?,
        client_message_id: logged.client_message_id.as_ref().try_into().ok()?,
        accepted_at_ms: logged.accepted_at_ms,
        expires_at_ms: logged.expires_at_ms,
        ciphertext: logged.ciphertext,
    })
}

/// The delivery worker: log → mailbox store → commit → wake subscribers, for the shards
/// this node owns in its current view of the cluster.
///
/// A batch is committed to the log only after the store made it durable, and retried until
/// it is, so an envelope acknowledged to its sender cannot fall between the two.
///
/// When placement changes, the worker finishes (stores and commits) the batch in hand and
/// then takes exactly the new set of shards; the new owner of a shard resumes after the
/// last commit, and wakes its subscribers in the shards it gained. For a moment two nodes
/// may both read a shard's newest records; the store recognises the second copy by its
/// dedupe key, even after the first was acknowledged and deleted, so a handoff never
/// delivers an envelope twice after its acknowledgement.
pub(crate) async fn deliver(shared: Arc<Shared>, stop: CancelToken) {
    let mut view = shared.membership.subscribe();
    // A node that cannot read the roster takes no shards (see `membership`): others may
    // own them by now.
    let mut demoted = shared.membership.subscribe_demoted();
    let mut consumer: Box<dyn LogConsumer> = loop {
        match shared.log.consumer(DELIVERY_GROUP).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the delivery log consumer; retrying");
                if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    };
    let mut assigned: Option<Vec<ShardId>> = None;
    loop {
        let owned = if *demoted.borrow_and_update() {
            Vec::new()
        } else {
            view.borrow_and_update().owned()
        };
        if assigned.as_ref() != Some(&owned) {
            // Reading the committed positions waits on the broker; a broker that does not
            // answer must not hold the node's shutdown or the next placement change.
            let assign = tokio::select! {
                () = stop.cancelled() => return,
                a = tokio::time::timeout(ASSIGN_TIMEOUT, consumer.assign(&owned)) => a,
            };
            let assign = assign.unwrap_or_else(|_| {
                Err(levee_queue::LogError::Backend(format!(
                    "assign took longer than {ASSIGN_TIMEOUT:?}"
                )))
            });
            if let Err(e) = assign {
                tracing::error!(error = %e, "cannot assign shards; retrying");
                if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
            // The shards' last owner may have stored a batch and committed it after this
            // node's subscribers read their backlogs but before `assign` read the committed
            // positions: this node then neither re-reads those records nor hears of them,
            // and they would wait for the mailbox's next envelope. Whatever it committed
            // is stored by now, so one more look at each mailbox finds it.
            let gained: HashSet<ShardId> = owned
                .iter()
                .filter(|s| !assigned.as_ref().is_some_and(|a| a.contains(s)))
                .copied()
                .collect();
            if !gained.is_empty() {
                shared.presence.notify_shards(&gained, shared.log.shards());
            }
            assigned = Some(owned);
        }
        let records = tokio::select! {
            () = stop.cancelled() => return,
            // A new placement: go round and take the new shards. Polling is cancel-safe.
            Ok(()) = view.changed() => continue,
            Ok(()) = demoted.changed() => continue,
            polled = consumer.poll(DELIVERY_BATCH, Duration::from_millis(250)) => match polled {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(error = %e, "delivery log poll failed");
                    if sleep_or_stop(&stop, Duration::from_millis(500)).await { return; }
                    continue;
                }
            },
        };
        shared.metrics.log_skipped(consumer.skipped());
        if records.is_empty() {
            // Nothing to store: say so, or the last backlog would stand as evidence.
            shared.admission.record_lag(consumer.lag());
            continue;
        }
        let mut envelopes = Vec::with_capacity(records.len());
        for record in &records {
            match to_envelope(record) {
                Some(e) => envelopes.push(e),
                // Only Levee writes this log; an undecodable record is damage, not input.
                // Skipping it keeps the other mailboxes flowing, and it is logged loudly.
                None => tracing::error!(
                    shard = record.position.shard,
                    offset = record.position.offset,
                    "undecodable delivery log record skipped"
                ),
            }
        }
        let outcomes = loop {
            let write = shared.admission.backend_write();
            let inserted = shared.store.insert(envelopes.clone()).await;
            drop(write);
            match inserted {
                Ok(outcomes) => break outcomes,
                Err(e) => {
                    tracing::error!(error = %e, "mailbox store insert failed; retrying the batch");
                    if sleep_or_stop(&stop, Duration::from_millis(500)).await {
                        return;
                    }
                }
            }
        };
        let positions: Vec<_> = records.iter().map(|r| r.position).collect();
        if let Err(e) = consumer.commit(&positions).await {
            // Harmless: the records are stored, and re-reading them later is idempotent.
            tracing::warn!(error = %e, "delivery log commit failed");
        }
        shared.admission.record_lag(consumer.lag());
        // Duplicates wake too: after a handoff the other node may have stored them a moment
        // ago, while this node's subscriber was reading its backlog, and told nobody here.
        let woken: HashSet<MailboxId> = envelopes.iter().map(|e| e.mailbox).collect();
        for mailbox in &woken {
            shared.presence.notify(mailbox);
        }
        shared.metrics.envelopes_stored(
            outcomes
                .iter()
                .filter(|o| **o == InsertOutcome::Stored)
                .count(),
        );
    }
}

/// Expired records removed per store call, so one sweep never holds the store for long.
const SWEEP_BATCH: usize = 10_000;

/// Deletes expired envelopes once a minute.
pub(crate) async fn sweep_expired(shared: Arc<Shared>, stop: CancelToken) {
    loop {
        if sleep_or_stop(&stop, Duration::from_secs(60)).await {
            return;
        }
        loop {
            match shared.store.expire(now_ms(), SWEEP_BATCH).await {
                Ok(SWEEP_BATCH) => continue, // more to do
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "expiry sweep failed");
                    break;
                }
            }
        }
    }
}

/// Sleeps for `d`; returns true if the node is stopping instead.
async fn sleep_or_stop(stop: &CancelToken, d: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waking_shards_wakes_exactly_the_subscribers_in_them() {
        const SHARDS: u32 = 8;
        let presence = Presence::default();
        let mailboxes: Vec<MailboxId> = (0..32u8).map(|i| MailboxId([i; 32])).collect();
        let watching: Vec<_> = mailboxes.iter().map(|m| presence.watch(*m)).collect();
        let gained: HashSet<ShardId> = [1, 5].into();

        presence.notify_shards(&gained, SHARDS);

        for (mailbox, rx) in mailboxes.iter().zip(&watching) {
            let in_gained = gained.contains(&shard_of(mailbox, SHARDS));
            assert_eq!(rx.has_changed().ok(), Some(in_gained), "{mailbox:?}");
        }
        assert!(
            mailboxes
                .iter()
                .any(|m| gained.contains(&shard_of(m, SHARDS))),
            "the test wakes someone"
        );
    }
}
