//! Moving envelopes from the delivery log into mailboxes, and waking the connections that
//! are waiting for them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use levee_queue::{LogConsumer, LoggedRecord};
use levee_sharding::{InsertOutcome, MailboxId, NewEnvelope, ShardId, shard_of};
use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use super::holdings::Holdings;
use super::tokio_util_shim::CancelToken;
use crate::clock::now_ms;
use crate::cluster::{Claim, ClusterView, LeaseError, Taking, claim};
use crate::log_record::LoggedEnvelope;

/// Consumer group of the delivery workers.
const DELIVERY_GROUP: &str = "levee-delivery";
/// Records moved per store batch: large enough to amortise one fsync over many envelopes.
const DELIVERY_BATCH: usize = 1024;
/// Longest a consumer may take to take up a new set of shards before the worker gives up
/// and tries again (with the then-current placement).
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a worker owed shards whose leases are not free yet asks again.
const CLAIM_RETRY: Duration = Duration::from_millis(250);
/// How often, at most, a shard's position is committed to its lease (a Paxos round in the
/// CQL database): a new holder after a crash re-reads at most this much of the shard.
const LEASE_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Lease calls in flight at once.
const LEASE_CONCURRENCY: usize = 16;
/// Longest the worker waits to release leases before it goes on without.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

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
/// whose leases this node holds (see `cluster::lease`).
///
/// A batch is committed only after the store made it durable, and retried until it is, so
/// an envelope acknowledged to its sender cannot fall between the two.
///
/// **Leases.** The worker asks for the lease of every shard its view gives it, and reads a
/// shard only while it holds the lease; when placement moves a shard away it stores and
/// commits the batch in hand and releases the lease with its final position, and the new
/// holder resumes from there. Positions are committed to the lease, conditional on its
/// epoch, at most once a second per shard (and to the log's own offsets, a fallback for a
/// shard whose lease has none yet). A commit refused because a later holder took the lease
/// stops the worker reading that shard at once. Before storing a batch the worker checks
/// its node's *tenure* (its own last good heartbeat, by its own clock): a node that may
/// already have been given up for dead, a zombie woken from a long pause say, drops the
/// batch unstored and lets go of everything; whoever holds the leases now delivers it.
/// A node that has demoted itself (it cannot read the roster) takes no shards either.
///
/// When an old holder could not release (it died), the new one may re-read records the old
/// one stored; the store recognises them by their dedupe keys, even after the first copy
/// was acknowledged and deleted, so a handoff never delivers an envelope twice after its
/// acknowledgement.
pub(crate) async fn deliver(shared: Arc<Shared>, stop: CancelToken) {
    let mut view = shared.membership.subscribe();
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
    let me = shared.membership.name();
    let patience = 2 * Duration::from_millis(shared.config.failure_timeout_ms);
    let mut holdings = Holdings::default();
    let mut assigned: Option<Vec<ShardId>> = None;
    let mut last_claims: Option<Instant> = None;
    loop {
        let current = view.borrow_and_update().clone();
        let acting = !*demoted.borrow_and_update() && shared.membership.tenured();
        let placed = current.owned();
        let owned = if acting { placed.clone() } else { Vec::new() };
        let surplus = holdings.surplus(&owned);
        if !surplus.is_empty() {
            release(&shared, &mut holdings, &surplus).await;
        }
        let wanted = holdings.wanted(&owned);
        if !wanted.is_empty() && last_claims.is_none_or(|t| t.elapsed() >= CLAIM_RETRY) {
            last_claims = Some(Instant::now());
            claim_leases(&shared, &me, &current, &mut holdings, &wanted, patience).await;
        }
        let holding = holdings.shards();
        if assigned.as_ref() != Some(&holding) {
            let gained: HashSet<ShardId> = holding
                .iter()
                .filter(|s| !assigned.as_ref().is_some_and(|a| a.contains(s)))
                .copied()
                .collect();
            // The lease's position is where its last holder got to; the log's own committed
            // offset is only a fallback, and may lag or run ahead of it.
            let starts: BTreeMap<ShardId, u64> = gained
                .iter()
                .filter_map(|s| Some((*s, holdings.lease(*s)?.position?)))
                .collect();
            // Reading the committed positions waits on the broker; a broker that does not
            // answer must not hold the node's shutdown or the next placement change.
            let assign = tokio::select! {
                () = stop.cancelled() => break,
                a = tokio::time::timeout(
                    ASSIGN_TIMEOUT,
                    consumer.assign_from(&holding, &starts),
                ) => a,
            };
            let assign = assign.unwrap_or_else(|_| {
                Err(levee_queue::LogError::Backend(format!(
                    "assign took longer than {ASSIGN_TIMEOUT:?}"
                )))
            });
            if let Err(e) = assign {
                tracing::error!(error = %e, "cannot assign shards; retrying");
                assigned = None;
                if sleep_or_stop(&stop, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
            // The shards' last holder may have stored a batch after this node's subscribers
            // read their backlogs: one more look at each mailbox finds it.
            if !gained.is_empty() {
                shared.presence.notify_shards(&gained, shared.log.shards());
            }
            shared.metrics.leases_held(holding.len());
            *shared.held.lock().unwrap_or_else(|p| p.into_inner()) = holding.clone();
            assigned = Some(holding);
        }
        // Something still to take up: shards owed whose leases are not free yet, or shards
        // to take back once the node's tenure is renewed.
        let pending =
            owned.iter().any(|s| holdings.lease(*s).is_none()) || (!acting && !placed.is_empty());
        let records = tokio::select! {
            () = stop.cancelled() => break,
            // A new placement: go round and take the new shards. Polling is cancel-safe.
            Ok(()) = view.changed() => {
                last_claims = None;
                continue;
            }
            Ok(()) = demoted.changed() => continue,
            () = tokio::time::sleep(CLAIM_RETRY), if pending => continue,
            polled = consumer.poll(DELIVERY_BATCH, Duration::from_millis(250)) => match polled {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(error = %e, "delivery log poll failed");
                    if sleep_or_stop(&stop, Duration::from_millis(500)).await { break; }
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
        let Some(outcomes) = store_batch(&shared, &envelopes, &stop).await else {
            if stop.is_cancelled() {
                break;
            }
            // The tenure ran out: others may hold these shards by now. Drop the batch and
            // every lease (none is this node's to release), and read again from the
            // committed positions once it holds leases again.
            tracing::warn!(
                records = records.len(),
                "tenure ran out before the batch was stored; dropping it and every shard"
            );
            shared.metrics.batch_abandoned();
            holdings.clear();
            // The consumer is past the dropped records: it must let go of every shard now,
            // so that a shard taken again starts from its lease's position rather than
            // going on after them (were the tenure back by the next round, the shards
            // would otherwise count as kept).
            if reset(consumer.as_mut(), &stop).await {
                break;
            }
            assigned = Some(Vec::new());
            continue;
        };
        for record in &records {
            holdings.stored(record.position.shard, record.position.offset);
        }
        commit_leases(&shared, &mut holdings).await;
        // Only shards still held: a fenced holder must not move the log's offsets either.
        let positions: Vec<_> = records
            .iter()
            .map(|r| r.position)
            .filter(|p| holdings.lease(p.shard).is_some())
            .collect();
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
    // Stopping: hand every shard over with its last position, so the next holder neither
    // waits for this node's row to lapse nor re-reads what it stored.
    let all = holdings.shards();
    release(&shared, &mut holdings, &all).await;
}

/// Makes `consumer` read nothing, retrying until it does; true if the node is stopping.
async fn reset(consumer: &mut dyn LogConsumer, stop: &CancelToken) -> bool {
    loop {
        match tokio::time::timeout(ASSIGN_TIMEOUT, consumer.assign(&[])).await {
            Ok(Ok(())) => return false,
            Ok(Err(e)) => tracing::error!(error = %e, "cannot drop the log's shards; retrying"),
            Err(_) => tracing::error!("dropping the log's shards timed out; retrying"),
        }
        if sleep_or_stop(stop, Duration::from_secs(1)).await {
            return true;
        }
    }
}

/// Stores a batch, retrying until it is durable; `None` if the node's tenure ran out first
/// (checked before every try) or it is stopping.
async fn store_batch(
    shared: &Shared,
    envelopes: &[NewEnvelope],
    stop: &CancelToken,
) -> Option<Vec<InsertOutcome>> {
    loop {
        if !shared.membership.tenured() {
            return None;
        }
        let write = shared.admission.backend_write();
        let inserted = shared.store.insert(envelopes.to_vec()).await;
        drop(write);
        match inserted {
            Ok(outcomes) => return Some(outcomes),
            Err(e) => {
                tracing::error!(error = %e, "mailbox store insert failed; retrying the batch");
                if sleep_or_stop(stop, Duration::from_millis(500)).await {
                    return None;
                }
            }
        }
    }
}

/// Asks for the leases of `wanted` (shards placement gives this node), taking those that
/// [`claim`] says may be taken; the round is bounded by the failure timeout.
async fn claim_leases(
    shared: &Shared,
    me: &str,
    view: &ClusterView,
    holdings: &mut Holdings,
    wanted: &[ShardId],
    patience: Duration,
) {
    let now = Instant::now();
    let asks: Vec<(ShardId, Duration)> = wanted
        .iter()
        .map(|s| (*s, holdings.waited(*s, now)))
        .collect();
    let live = |name: &str| view.nodes().any(|n| n.name == name);
    let ask = |(shard, waited): (ShardId, Duration)| async move {
        let row = shared.leases.read(shard).await?;
        match claim(&row, me, live, waited, patience) {
            Claim::Wait => Ok(None),
            Claim::Take(how) => {
                let taken = shared.leases.take(shard, me, &row).await?;
                Ok::<_, LeaseError>(taken.map(|lease| (lease, how, row.holder)))
            }
        }
    };
    let mut round = futures::stream::iter(asks)
        .map(ask)
        .buffer_unordered(LEASE_CONCURRENCY);
    let limit = Duration::from_millis(shared.config.failure_timeout_ms);
    let deadline = Instant::now() + limit;
    let mut failed = 0;
    // Each answer is kept as it comes: a round cut short by its deadline keeps the leases
    // it took (one taken but not heard of is this node's own next time).
    loop {
        let answer = match tokio::time::timeout_at(deadline, round.next()).await {
            Err(_) => {
                tracing::warn!("taking shard leases took longer than {limit:?}; going on");
                break;
            }
            Ok(None) => break,
            Ok(Some(answer)) => answer,
        };
        match answer {
            Ok(Some((lease, how, from))) => {
                if matches!(how, Taking::Absent | Taking::Overdue) {
                    tracing::info!(
                        shard = lease.shard,
                        epoch = lease.epoch,
                        from = from.as_deref().unwrap_or(""),
                        how = how.as_str(),
                        "took a shard lease its holder had not released"
                    );
                }
                shared.metrics.lease_taken(how);
                holdings.hold(lease);
            }
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                tracing::debug!(error = %e, "could not take a shard lease");
            }
        }
    }
    if failed > 0 {
        tracing::warn!(failed, "shard leases could not be taken; trying again");
    }
}

/// Commits the due positions to their leases; a shard whose lease a later holder took is
/// no longer read from here on.
async fn commit_leases(shared: &Shared, holdings: &mut Holdings) {
    let due = holdings.due(Instant::now(), LEASE_COMMIT_INTERVAL);
    if due.is_empty() {
        return;
    }
    let commits = futures::stream::iter(due)
        .map(|(lease, next)| async move {
            let result = shared.leases.commit(&lease, next).await;
            (lease.shard, next, result)
        })
        .buffer_unordered(LEASE_CONCURRENCY)
        .collect::<Vec<_>>();
    let limit = Duration::from_millis(shared.config.failure_timeout_ms);
    let Ok(results) = tokio::time::timeout(limit, commits).await else {
        // Positions not moved: a later holder re-reads a little more. Tried again next batch.
        tracing::warn!("committing lease positions took longer than {limit:?}");
        return;
    };
    for (shard, next, result) in results {
        match result {
            Ok(()) => holdings.committed(shard, next, Instant::now()),
            Err(LeaseError::Fenced { epoch: lost, .. }) => {
                tracing::warn!(
                    shard,
                    epoch = lost,
                    "another node took this shard's lease; no longer delivering it"
                );
                shared.metrics.lease_fenced();
                holdings.fence(shard, Instant::now());
            }
            Err(e) => tracing::warn!(shard, error = %e, "lease position commit failed"),
        }
    }
}

/// Lets go of `shards`, releasing each lease with its last stored position (bounded: a
/// release that cannot get through leaves the lease to lapse with this node's row).
async fn release(shared: &Shared, holdings: &mut Holdings, shards: &[ShardId]) {
    let held: Vec<_> = shards.iter().filter_map(|s| holdings.let_go(*s)).collect();
    let releases = futures::stream::iter(held)
        .map(|h| async move { (h.lease.shard, shared.leases.release(&h.lease, h.next).await) })
        .buffer_unordered(LEASE_CONCURRENCY)
        .collect::<Vec<_>>();
    match tokio::time::timeout(RELEASE_TIMEOUT, releases).await {
        Err(_) => tracing::warn!("releasing shard leases timed out; they lapse with the node"),
        Ok(results) => {
            for (shard, result) in results {
                if let Err(e) = result {
                    tracing::debug!(shard, error = %e, "shard lease not released");
                }
            }
        }
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
