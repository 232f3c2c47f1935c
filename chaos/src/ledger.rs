//! The ledger: what the drill's clients were told, and what the invariants say about it.
//!
//! Pure bookkeeping, fed by the drill's clients as things happen; [`Ledger::invariants`] turns
//! it into PASS/FAIL lines at the end. Kept apart from the networking so the judgement can
//! be tested on its own.

use std::collections::HashMap;

use levee_relay::AccountId;
use levee_relay::admission::Place;

use crate::record::Verdict;

/// A message id as the sender chose it (the same for every copy of a re-sent message).
pub type MessageId = [u8; 16];

/// What became of one message.
#[derive(Clone, Debug, Default)]
struct Message {
    /// Its recipient.
    to: Option<AccountId>,
    /// The sender was told it is durable, at this many seconds into the run.
    acked_at: Option<f64>,
    /// Copies delivered.
    deliveries: u32,
    /// The recipient's session (per-recipient counter) that acknowledged it, once it has.
    acked_in_session: Option<u64>,
    /// Copies delivered on a later session than the one that acknowledged it: the
    /// acknowledged envelope came back.
    after_ack: u32,
}

/// How a newcomer's registration ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The account exists.
    Admitted,
    /// Still in line at the end, holding a ticket the cluster key verifies.
    WaitingValid,
    /// Still in line at the end, but the ticket does not verify (a bug: reported as such).
    WaitingInvalid(String),
    /// Never got past the door (connection refused as busy until the end).
    RefusedAtEnd,
    /// An error a person would see.
    HardError(String),
}

/// One newcomer's way through the line.
#[derive(Clone, Debug)]
pub struct Newcomer {
    /// Its place in the cluster's one line: from its ticket, if it was handed one; if it
    /// was admitted at once, when it was (`None`: neither).
    pub place: Option<Place>,
    /// When (s into the run) the newcomer last *sent* an attempt that was told to wait.
    pub last_told_to_wait: Option<f64>,
    /// When (s into the run) the newcomer learned it was admitted.
    pub admitted_at: Option<f64>,
    /// When (s into the run) the node last said this newcomer's place would be reached:
    /// the last "wait" answer's arrival plus its estimated wait (`None`: never told to wait).
    pub promised_at: Option<f64>,
    /// How it ended.
    pub ending: Ending,
}

/// How close two places may be and still count as one moment for the drills' order check
/// (ms of issue time). The cluster's line keeps exact order between places that were in a
/// line when it formed; in the heartbeat or two it takes every node to learn that a line
/// formed on one of them, newcomers elsewhere still go straight in
/// (`levee_relay::admission::ClusterLine`, "An open cluster"). That moment is a heartbeat
/// (250 ms) plus the board's write and read; 1 s covers it with room.
pub const ORDER_RESOLUTION_MS: u64 = 1_000;

/// The name of the check that every acknowledged envelope was delivered.
pub const DELIVERED: &str = "every acknowledged envelope delivered";

/// See the module docs.
#[derive(Debug, Default)]
pub struct Ledger {
    messages: HashMap<MessageId, Message>,
    newcomers: Vec<Newcomer>,
    /// Per recipient, the highest envelope id delivered for the first time so far.
    highest_first: HashMap<AccountId, u64>,
    /// First deliveries of an envelope whose id is below one already delivered to the
    /// same mailbox: it was skipped and came later (or never, had the session ended).
    out_of_order: u64,
    /// The first of those, for the report: (recipient's highest id then, the late id).
    first_out_of_order: Option<(u64, u64)>,
}

/// Counts the verdicts are made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages acknowledged to their senders.
    pub acked: u64,
    /// ... of which delivered at least once.
    pub delivered: u64,
    /// ... of which never delivered.
    pub lost: u64,
    /// Copies delivered after their acknowledgement, on a later session.
    pub after_ack: u64,
    /// Newcomers by ending.
    pub admitted: u64,
    /// Waiting with a valid ticket.
    pub waiting_valid: u64,
    /// Waiting with a ticket that does not verify.
    pub waiting_invalid: u64,
    /// Refused at the door until the end.
    pub refused_at_end: u64,
    /// Hard errors.
    pub hard_errors: u64,
    /// Newcomers turned away after someone whose place was later, anywhere in the
    /// cluster, got in (see [`overtakes`]).
    pub overtakes: u64,
    /// The same, comparing every two places however close (reported, not judged).
    pub overtakes_any_distance: u64,
    /// Newcomers kept away while a later place got in (see [`kept_away`]; judged only by a
    /// scenario's `kept_away_max`).
    pub kept_away: u64,
    /// Envelopes first delivered after a higher id of the same mailbox.
    pub out_of_order: u64,
}

impl Ledger {
    fn message(&mut self, id: MessageId, to: AccountId) -> &mut Message {
        let m = self.messages.entry(id).or_default();
        m.to = Some(to);
        m
    }

    /// The sender of `id` (to `to`) was told it is durable, `at` seconds into the run.
    pub fn acked(&mut self, id: MessageId, to: AccountId, at: f64) {
        self.message(id, to).acked_at = Some(at);
    }

    /// `to` received a copy of `id`, stored as envelope `envelope` of its mailbox, on its
    /// session number `session`.
    ///
    /// Envelope ids grow within a mailbox (they are the log offsets of its shard), and a
    /// session reads its mailbox in id order, so an envelope delivered for the *first*
    /// time must come after every envelope already delivered to that mailbox. One that
    /// comes later was skipped by a reader whose cursor had moved past it (copies of
    /// envelopes delivered before are not judged: a new session reads the backlog again).
    pub fn delivered(&mut self, id: MessageId, to: AccountId, session: u64, envelope: u64) {
        let first = self.messages.get(&id).is_none_or(|m| m.deliveries == 0);
        if first {
            let highest = self.highest_first.entry(to).or_insert(envelope);
            if envelope < *highest {
                self.out_of_order += 1;
                self.first_out_of_order.get_or_insert((*highest, envelope));
            }
            *highest = (*highest).max(envelope);
        }
        let m = self.message(id, to);
        m.deliveries += 1;
        // On the session that acknowledged it, a copy may have been pushed before the
        // acknowledgement was processed and arrive after its answer: not a repeat. On a
        // later session it is one.
        if m.acked_in_session.is_some_and(|s| session > s) {
            m.after_ack += 1;
        }
    }

    /// `to` acknowledged `id` on session `session` and the relay confirmed it.
    pub fn recipient_acked(&mut self, id: MessageId, to: AccountId, session: u64) {
        let m = self.message(id, to);
        m.acked_in_session.get_or_insert(session);
    }

    /// Acknowledged messages not delivered yet (to wait for at the end).
    pub fn undelivered(&self) -> u64 {
        self.messages
            .values()
            .filter(|m| m.acked_at.is_some() && m.deliveries == 0)
            .count() as u64
    }

    /// Where to look when something was lost: when the lost ones were acknowledged, and
    /// to how many recipients they were addressed.
    fn lost_detail(&self) -> String {
        let lost: Vec<&Message> = self
            .messages
            .values()
            .filter(|m| m.acked_at.is_some() && m.deliveries == 0)
            .collect();
        let times = lost.iter().filter_map(|m| m.acked_at);
        let (first, last) = times.fold((f64::INFINITY, 0f64), |(a, b), t| (a.min(t), b.max(t)));
        let recipients: std::collections::HashSet<_> = lost.iter().filter_map(|m| m.to).collect();
        if lost.is_empty() {
            String::new()
        } else {
            format!(
                "; acknowledged between {first:.1} s and {last:.1} s, to {} recipients",
                recipients.len()
            )
        }
    }

    /// Records how a newcomer's registration ended.
    pub fn newcomer(&mut self, n: Newcomer) {
        self.newcomers.push(n);
    }

    /// The counts behind the verdicts.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for m in self.messages.values().filter(|m| m.acked_at.is_some()) {
            t.acked += 1;
            if m.deliveries > 0 {
                t.delivered += 1;
            } else {
                t.lost += 1;
            }
        }
        t.after_ack = self.messages.values().map(|m| u64::from(m.after_ack)).sum();
        for n in &self.newcomers {
            match n.ending {
                Ending::Admitted => t.admitted += 1,
                Ending::WaitingValid => t.waiting_valid += 1,
                Ending::WaitingInvalid(_) => t.waiting_invalid += 1,
                Ending::RefusedAtEnd => t.refused_at_end += 1,
                Ending::HardError(_) => t.hard_errors += 1,
            }
        }
        t.overtakes = overtakes(&self.newcomers, ORDER_RESOLUTION_MS);
        t.overtakes_any_distance = overtakes(&self.newcomers, 0);
        t.kept_away = kept_away(&self.newcomers, ORDER_RESOLUTION_MS, KEPT_AWAY_SLACK_S);
        t.out_of_order = self.out_of_order;
        t
    }

    /// The invariants that every drill must keep, as PASS/FAIL lines.
    pub fn invariants(&self) -> Vec<Verdict> {
        let t = self.tally();
        let first_error = self.newcomers.iter().find_map(|n| match &n.ending {
            Ending::HardError(e) | Ending::WaitingInvalid(e) => Some(e.clone()),
            _ => None,
        });
        let unresolved = t.hard_errors + t.waiting_invalid + t.refused_at_end;
        vec![
            Verdict {
                name: DELIVERED.into(),
                pass: t.lost == 0,
                detail: format!(
                    "{} of {} ({} lost){}",
                    t.delivered,
                    t.acked,
                    t.lost,
                    self.lost_detail()
                ),
            },
            Verdict {
                name: "nothing delivered again after its acknowledgement".into(),
                pass: t.after_ack == 0,
                detail: format!("{} repeated after ack", t.after_ack),
            },
            Verdict {
                name: "every registration ends as an account or a valid ticket".into(),
                pass: unresolved == 0,
                detail: format!(
                    "{} admitted, {} waiting with a valid ticket; {} hard errors, {} invalid tickets, {} still refused at the door{}",
                    t.admitted,
                    t.waiting_valid,
                    t.hard_errors,
                    t.waiting_invalid,
                    t.refused_at_end,
                    first_error
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                ),
            },
            Verdict {
                name: "within each mailbox, envelopes are first delivered in id order".into(),
                pass: t.out_of_order == 0,
                detail: match self.first_out_of_order {
                    None => "0 out of order".into(),
                    Some((highest, late)) => format!(
                        "{} out of order (first: envelope {late} after {highest})",
                        t.out_of_order
                    ),
                },
            },
            Verdict {
                name: "admissions follow ticket order across the cluster".into(),
                pass: t.overtakes == 0,
                detail: format!(
                    "{} overtaken (places {ORDER_RESOLUTION_MS} ms apart or more compared; {} \
                     at any distance, not judged); {} kept away while a later place got in",
                    t.overtakes, t.overtakes_any_distance, t.kept_away
                ),
            },
        ]
    }
}

/// Newcomers turned away after someone later in the cluster's line had got in: `j`
/// overtook `i` if `i`'s place is earlier by at least `resolution_ms` of issue time (see
/// [`ORDER_RESOLUTION_MS`]; 0 compares every pair), and `i` sent an attempt that was told
/// to wait *after* `j` had learned it was admitted — so some node had admitted `j` before
/// one turned `i` away, whichever nodes they were. (Coming back later than one's turn is
/// not being overtaken: the line lets in everyone whose turn has come, in whatever order
/// they return.)
pub fn overtakes(newcomers: &[Newcomer], resolution_ms: u64) -> u64 {
    let line = ByPlace::new(newcomers);
    line.placed
        .iter()
        .filter(|(place, n)| {
            let first_later_in = line.first_in_after(place, resolution_ms);
            n.last_told_to_wait
                .is_some_and(|waited| waited > first_later_in)
        })
        .count() as u64
}

/// Newcomers with a place, earliest place first, and when the first of those from each
/// one on got in.
struct ByPlace<'a> {
    placed: Vec<(Place, &'a Newcomer)>,
    /// `earliest[k]`: the earliest admission among `placed[k..]`.
    earliest: Vec<f64>,
}

impl<'a> ByPlace<'a> {
    fn new(newcomers: &'a [Newcomer]) -> Self {
        let mut placed: Vec<(Place, &Newcomer)> = newcomers
            .iter()
            .filter_map(|n| n.place.map(|p| (p, n)))
            .collect();
        placed.sort_by_key(|(p, _)| *p);
        let mut earliest = vec![f64::INFINITY; placed.len() + 1];
        for k in (0..placed.len()).rev() {
            let admitted = placed[k].1.admitted_at.unwrap_or(f64::INFINITY);
            earliest[k] = earliest[k + 1].min(admitted);
        }
        Self { placed, earliest }
    }

    /// When the first newcomer whose place is later than `place` got in: at least
    /// `resolution_ms` later, or (0) any later place.
    fn first_in_after(&self, place: &Place, resolution_ms: u64) -> f64 {
        let later = self.placed.partition_point(|(p, _)| {
            if resolution_ms == 0 {
                p <= place
            } else {
                p.issued_ms < place.issued_ms.saturating_add(resolution_ms)
            }
        });
        self.earliest[later]
    }
}

/// How much earlier than it was promised a newcomer's place may be passed by a later one
/// before [`kept_away`] counts it: the board's lag (1 s by default) and the estimate's own
/// error (the front's speed, measured over the last seconds, changes).
pub const KEPT_AWAY_SLACK_S: f64 = 2.0;

/// Newcomers a node told to stay away while someone with a later place got in: `i` is kept
/// away if its place is earlier than `j`'s by at least `resolution_ms`, `j` was admitted
/// more than `slack_s` before the moment the node last promised `i` its place would be
/// reached, and `i` was not in by then. Stricter than [`overtakes`], which forgives a wait
/// the node announced: a newcomer told "come back in 20 s" while later places enter
/// elsewhere is not overtaken by that rule if it is let in when it does. With a line per
/// node that is what happens on a slow node, and only this count shows it. The ledger does
/// not judge it; a scenario may judge its share (`kept_away_max`). Estimates err (the
/// cluster's front speeds up when a wave thins), so a cluster keeping one line scores some
/// too (docs/ARCHITECTURE.md, "One line for the cluster").
pub fn kept_away(newcomers: &[Newcomer], resolution_ms: u64, slack_s: f64) -> u64 {
    let line = ByPlace::new(newcomers);
    line.placed
        .iter()
        .filter(|(place, n)| {
            let first_later_in = line.first_in_after(place, resolution_ms);
            n.promised_at.is_some_and(|promised| {
                first_later_in < promised - slack_s
                    && n.admitted_at.is_none_or(|a| a > first_later_in)
            })
        })
        .count() as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn who(n: u8) -> AccountId {
        AccountId([n; 32])
    }

    fn newcomer(place: u64, waited: Option<f64>, admitted: Option<f64>) -> Newcomer {
        Newcomer {
            place: Some(Place {
                issued_ms: place * 1_000,
                tiebreak: 0,
            }),
            last_told_to_wait: waited,
            admitted_at: admitted,
            promised_at: None,
            ending: if admitted.is_some() {
                Ending::Admitted
            } else {
                Ending::WaitingValid
            },
        }
    }

    #[test]
    fn a_lost_envelope_fails_and_a_delivered_one_passes() {
        let mut l = Ledger::default();
        l.acked([1; 16], who(1), 1.0);
        l.acked([2; 16], who(1), 2.0);
        l.delivered([1; 16], who(1), 0, 1);
        assert_eq!(l.undelivered(), 1);
        let v = l.invariants();
        assert!(!v[0].pass, "{v:?}");
        assert!(v[0].detail.contains("1 of 2 (1 lost)"));
        l.delivered([2; 16], who(1), 1, 2);
        assert!(l.invariants()[0].pass);
        // Delivered but never acknowledged to its sender is not counted either way.
        l.delivered([3; 16], who(1), 1, 3);
        assert_eq!(l.tally().acked, 2);
    }

    #[test]
    fn a_copy_after_the_acknowledgement_fails_only_on_a_later_session() {
        let mut l = Ledger::default();
        l.acked([1; 16], who(1), 1.0);
        l.delivered([1; 16], who(1), 3, 1);
        l.recipient_acked([1; 16], who(1), 3);
        // Redelivered before the ack: fine. Same session after the ack: ambiguous, fine.
        l.delivered([1; 16], who(1), 3, 1);
        assert!(l.invariants()[1].pass);
        l.delivered([1; 16], who(1), 4, 1);
        let v = l.invariants();
        assert!(!v[1].pass && v[1].detail.starts_with("1 "), "{v:?}");
    }

    #[test]
    fn registrations_must_end_as_accounts_or_valid_tickets() {
        let mut l = Ledger::default();
        l.newcomer(newcomer(1, None, Some(1.0)));
        l.newcomer(newcomer(2, Some(1.0), None));
        assert!(l.invariants()[2].pass);
        for bad in [
            Ending::RefusedAtEnd,
            Ending::HardError("UNAUTHENTICATED".into()),
            Ending::WaitingInvalid("bad signature".into()),
        ] {
            let mut l = Ledger::default();
            l.newcomer(Newcomer {
                place: None,
                last_told_to_wait: None,
                admitted_at: None,
                promised_at: None,
                ending: bad,
            });
            assert!(!l.invariants()[2].pass);
        }
    }

    #[test]
    fn an_envelope_first_delivered_after_a_higher_one_of_its_mailbox_fails() {
        let mut l = Ledger::default();
        l.delivered([1; 16], who(1), 1, 7);
        l.delivered([3; 16], who(1), 1, 9);
        // Another mailbox has its own order; a copy of 7 again (a new session's backlog)
        // is no first delivery.
        l.delivered([5; 16], who(2), 1, 2);
        l.delivered([1; 16], who(1), 2, 7);
        let order = |l: &Ledger| {
            l.invariants()
                .into_iter()
                .find(|v| v.name.contains("id order"))
        };
        assert!(order(&l).unwrap().pass);
        // 8 arrives for the first time after 9: it was skipped.
        l.delivered([2; 16], who(1), 2, 8);
        let v = order(&l).unwrap();
        assert!(!v.pass);
        assert_eq!(v.detail, "1 out of order (first: envelope 8 after 9)");
    }

    #[test]
    fn overtaking_is_being_turned_away_after_someone_later_got_in() {
        let strict = |l: &[Newcomer]| overtakes(l, 0);
        // 1 waits at t=5 although 2 (later in line) was admitted at t=4: overtaken.
        let l = [
            newcomer(1, Some(5.0), Some(6.0)),
            newcomer(2, None, Some(4.0)),
        ];
        assert_eq!(strict(&l), 1);
        // 1 was last told to wait before 2 got in, and came back later: not overtaken.
        let l = [
            newcomer(1, Some(3.0), Some(6.0)),
            newcomer(2, None, Some(4.0)),
        ];
        assert_eq!(strict(&l), 0);
        // Whoever admitted whom: one line for the cluster.
        let mut other = newcomer(2, None, Some(4.0));
        other.place.as_mut().unwrap().tiebreak = 99;
        assert_eq!(strict(&[newcomer(1, Some(5.0), None), other]), 1);
        // Neither ticket nor admission, no place: nothing to overtake.
        let mut direct = newcomer(3, None, Some(0.5));
        direct.place = None;
        assert_eq!(strict(&[newcomer(1, Some(5.0), None), direct]), 0);
        // Places closer than the resolution count as one moment.
        let close = [
            newcomer(1, Some(5.0), Some(6.0)),
            Newcomer {
                place: Some(Place {
                    issued_ms: 1_500,
                    tiebreak: 0,
                }),
                ..newcomer(0, None, Some(4.0))
            },
        ];
        assert_eq!(strict(&close), 1);
        assert_eq!(overtakes(&close, 1_000), 0);
        assert_eq!(overtakes(&l, 1_000), 0);
        let far = [
            newcomer(1, Some(5.0), Some(6.0)),
            newcomer(2, None, Some(4.0)),
        ];
        assert_eq!(overtakes(&far, 1_000), 1, "a second apart: compared");
    }

    #[test]
    fn kept_away_is_told_to_stay_away_while_someone_later_got_in() {
        let promised = |place, told_at: f64, wait: f64, admitted| Newcomer {
            promised_at: Some(told_at + wait),
            ..newcomer(place, Some(told_at), admitted)
        };
        let count = |l: &[Newcomer]| kept_away(l, 1_000, 2.0);
        // 1, told at t=6 to come back at t=25, gets in then; 10 (joined later, elsewhere)
        // got in at t=10. Not overtaken by the drills' rule, but kept away.
        let l = [
            promised(1, 6.0, 19.0, Some(25.0)),
            newcomer(10, None, Some(10.0)),
        ];
        assert_eq!(overtakes(&l, 1_000), 0);
        assert_eq!(count(&l), 1);
        // Passed within the slack of its promise, or only after it got in: not counted.
        let l = [
            promised(1, 6.0, 5.0, Some(12.0)),
            newcomer(10, None, Some(10.0)),
        ];
        assert_eq!(count(&l), 0);
        let l = [
            promised(1, 6.0, 19.0, Some(9.0)),
            newcomer(10, None, Some(10.0)),
        ];
        assert_eq!(count(&l), 0);
        // A later place kept away too is no one getting in; nor is an earlier place.
        let l = [
            promised(1, 6.0, 19.0, Some(25.0)),
            promised(10, 8.0, 19.0, Some(27.0)),
            newcomer(0, None, Some(3.0)),
        ];
        assert_eq!(count(&l), 0);
        // Never told to wait: nothing promised, nothing kept.
        assert_eq!(
            count(&[
                newcomer(1, None, Some(25.0)),
                newcomer(10, None, Some(10.0))
            ]),
            0
        );
    }
}
