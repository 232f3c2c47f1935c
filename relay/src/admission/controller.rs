use std::time::{Duration, Instant};

use super::cohort::{COHORTS, Cohort};

/// What a request is, most important first. Shedding starts from the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestClass {
    /// Acknowledgements, deletes, pings: never shed, they reduce load.
    Control,
    /// Send and receive on an authenticated session.
    Messaging,
    /// Authentication / reconnect of an existing account.
    Login,
    /// A new registration.
    Registration,
}

/// Classes that can be shed, in the order they give way.
const SHEDDABLE: u32 = 3;
/// Priority slots: one per (sheddable class, cohort).
pub(super) const SLOTS: u32 = SHEDDABLE * COHORTS as u32;

/// How much is admitted: the number of (class, cohort) priority slots served, counted from
/// the most important (messaging, cohort 0) down to the least (registration, last cohort).
/// `SLOTS` admits everything; 0 admits only control requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AdmissionLevel(u32);

impl AdmissionLevel {
    /// Everything admitted.
    pub const ALL: Self = Self(SLOTS);

    /// This level with `n` more slots shed (for tests of what reads levels).
    #[cfg(test)]
    pub(crate) fn lowered(self, n: u32) -> Self {
        Self(self.0.saturating_sub(n))
    }

    /// Admitted slots out of all sheddable slots, 0.0..=1.0.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / f64::from(SLOTS)
    }

    /// The share of `class`'s cohorts served at this level, 0.0..=1.0.
    pub fn share(self, class: RequestClass) -> f64 {
        let Some(start) = first_slot(class) else {
            return 1.0;
        };
        f64::from(self.0.saturating_sub(start).min(u32::from(COHORTS))) / f64::from(COHORTS)
    }

    /// Whether a request of `class` from `cohort` is served at this level.
    pub fn admits(self, class: RequestClass, cohort: Cohort) -> bool {
        slot(class, cohort).is_none_or(|s| s < self.0)
    }
}

/// The first priority slot of a sheddable class; `None` for control, which has none.
fn first_slot(class: RequestClass) -> Option<u32> {
    let rank = match class {
        RequestClass::Control => return None,
        RequestClass::Messaging => 0,
        RequestClass::Login => 1,
        RequestClass::Registration => 2,
    };
    Some(rank * u32::from(COHORTS))
}

/// The priority slot of `class` and `cohort`; `None` for control.
fn slot(class: RequestClass, cohort: Cohort) -> Option<u32> {
    first_slot(class).map(|start| start + u32::from(cohort.index()))
}

/// The slots that saw a request in a window, one bit each.
#[derive(Clone, Debug, Default)]
struct Offered([u64; SLOTS.div_ceil(64) as usize]);

impl Offered {
    fn insert(&mut self, slot: u32) {
        self.0[(slot / 64) as usize] |= 1 << (slot % 64);
    }

    fn contains(&self, slot: u32) -> bool {
        self.0[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }
}

/// What a closed window showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Queueing delay over the limit, or the backend overloaded: shed more.
    Overloaded,
    /// Between the limits: keep the level.
    Hold,
    /// Queueing delay low: admit more.
    Calm,
}

impl Verdict {
    /// The more severe of two verdicts on the same window.
    pub fn worst(self, other: Self) -> Self {
        let severity = |v| match v {
            Self::Overloaded => 2,
            Self::Hold => 1,
            Self::Calm => 0,
        };
        if severity(other) > severity(self) {
            other
        } else {
            self
        }
    }
}

/// Tuning of the controller. Defaults follow WeChat's DAGOR (overload when the average
/// queueing delay over a 1 s window exceeds 20 ms; shed 5%, restore 1%), except that the
/// window closes early only after 20,000 requests, not DAGOR's 2,000: a Levee node serves
/// ten thousand requests a second, so 2,000-request windows were 150 ms long, and one
/// storage stall of a few hundred milliseconds (which the backend signal reports for as
/// long as it lasts) closed several overloaded windows in a row and shed a third of the
/// level at once (measured with `levee-surge`).
#[derive(Clone, Debug, PartialEq)]
pub struct ControllerConfig {
    /// A window closes after this long...
    pub window: Duration,
    /// ...or after this many samples, whichever comes first.
    pub window_samples: u32,
    /// Average queueing delay above which the window counts as overloaded.
    pub overload_wait: Duration,
    /// Average queueing delay below which the level may climb. Between the two, it holds:
    /// a node running at capacity keeps its level instead of oscillating around it. 10 ms,
    /// not CoDel's 5: a node under a CPU quota (a container's limit, or `levee-surge`'s
    /// quarter core, 10 ms period) is paused up to 7.5 ms whenever it uses its quota, which
    /// its lag probe reads as waiting; at 5 ms its windows were never calm after a wave, the
    /// level never climbed back, and the line stayed held back (`levee-surge --trace`).
    pub recover_wait: Duration,
    /// Fraction of the admitted slots shed per overloaded window.
    pub fall: f64,
    /// Fraction of all slots restored per calm window, counting only slots that saw a
    /// request in it: restoring a slot nobody asked for adds no load, so the level steps
    /// over those at once.
    pub climb: f64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(1),
            window_samples: 20_000,
            overload_wait: Duration::from_millis(20),
            recover_wait: Duration::from_millis(10),
            fall: 0.05,
            climb: 0.01,
        }
    }
}

/// Adapts the [`AdmissionLevel`] from queueing delay and backend health. Pure: the caller
/// passes the time of every observation.
#[derive(Debug)]
pub struct AdmissionController {
    config: ControllerConfig,
    level: AdmissionLevel,
    window_start: Instant,
    wait_total: Duration,
    samples: u32,
    /// Scheduling lag reported in this window, and how many reports.
    lag_total: Duration,
    lag_samples: u32,
    /// The last scheduling lag reports, smoothed over about the last two.
    recent_lag: Duration,
    backend_overloaded: bool,
    /// The average queueing delay of the last closed window (see [`delay`](Self::delay)).
    last_delay: Duration,
    /// Slots requests were offered for in this window, admitted or not.
    offered: Offered,
}

impl AdmissionController {
    /// A controller that starts admitting everything.
    pub fn new(config: ControllerConfig, now: Instant) -> Self {
        Self {
            config,
            level: AdmissionLevel::ALL,
            window_start: now,
            wait_total: Duration::ZERO,
            samples: 0,
            lag_total: Duration::ZERO,
            lag_samples: 0,
            recent_lag: Duration::ZERO,
            backend_overloaded: false,
            last_delay: Duration::ZERO,
            offered: Offered::default(),
        }
    }

    /// The current level.
    pub fn level(&self) -> AdmissionLevel {
        self.level
    }

    /// The queueing delay the last closed window judged by: the larger of its requests'
    /// average wait and its scheduling lag probes' average.
    pub fn delay(&self) -> Duration {
        self.last_delay
    }

    /// Whether to serve a request now.
    pub fn admits(&self, class: RequestClass, cohort: Cohort) -> bool {
        self.level.admits(class, cohort)
    }

    /// Notes that a request of `class` from `cohort` was offered in this window, whether or
    /// not it is served. A calm window restores slots by the ones that saw requests: the
    /// others carry no load, and climbing through them one percent a window kept a node
    /// that had fallen below registrations (into logins nobody was attempting) holding its
    /// waiting line for half a minute after the overload was over (`levee-surge --trace`).
    pub fn record_offered(&mut self, class: RequestClass, cohort: Cohort) {
        if let Some(slot) = slot(class, cohort) {
            self.offered.insert(slot);
        }
    }

    /// Backend health (delivery-log append latency, store latency, log lag) as judged by
    /// the caller: while overloaded, every closing window counts as overloaded.
    pub fn set_backend_overloaded(&mut self, overloaded: bool) {
        self.backend_overloaded = overloaded;
    }

    /// Records how long an admitted request waited before a worker started it. Returns the
    /// verdict and length of the window if this closed one.
    pub fn record_wait(&mut self, wait: Duration, now: Instant) -> Option<(Verdict, Duration)> {
        self.wait_total += wait;
        self.samples += 1;
        self.tick(now)
    }

    /// Records how late the node's scheduler ran a task that asked to run at a given time
    /// (a probe that sleeps briefly and measures its oversleep). Requests' own queueing
    /// delay starts only once their bytes reach a connection task; when the CPU is
    /// saturated — by handshakes above all, which happen before any request — packets wait
    /// in sockets and in QUIC's drivers first, and only the scheduler's lag shows it. The
    /// window's delay is the larger of the two averages. Probes are averaged on their own,
    /// not with requests: they are few, and each stands for every task that waited with it.
    pub fn record_lag(&mut self, lag: Duration) {
        self.lag_total += lag;
        self.lag_samples += 1;
        self.recent_lag = (self.recent_lag + lag) / 2;
    }

    /// Whether the node is congested right now: the last scheduling lag reports (smoothed
    /// over about two) are over the overload limit. Windows judge the level over a second;
    /// this answers within a few probes, for decisions that must not wait a window (see
    /// [`WaitingLine::pause`](super::WaitingLine::pause)).
    pub fn congested(&self) -> bool {
        self.lagging(self.config.overload_wait)
    }

    /// Whether the last scheduling lag reports (smoothed over about two) are over `limit`.
    /// One report a few milliseconds over is not enough — a node under a CPU quota is
    /// paused for the rest of a period whenever it uses its quota, a few milliseconds at a
    /// time — but one more than twice the limit is.
    pub fn lagging(&self, limit: Duration) -> bool {
        self.recent_lag > limit
    }

    /// Closes the window if it is over (call also when idle, so an idle node recovers) and
    /// returns what it showed and how long it lasted.
    pub fn tick(&mut self, now: Instant) -> Option<(Verdict, Duration)> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < self.config.window && self.samples < self.config.window_samples {
            return None;
        }
        let average = if self.samples == 0 {
            Duration::ZERO
        } else {
            self.wait_total / self.samples
        }
        .max(self.lag_total / self.lag_samples.max(1));
        self.last_delay = average;
        let level = self.level.0;
        let verdict = if self.backend_overloaded || average > self.config.overload_wait {
            Verdict::Overloaded
        } else if average < self.config.recover_wait {
            Verdict::Calm
        } else {
            Verdict::Hold
        };
        self.level.0 = match verdict {
            Verdict::Overloaded => {
                let shed = ((f64::from(level) * self.config.fall).ceil() as u32).max(1);
                level.saturating_sub(shed)
            }
            Verdict::Calm => {
                let mut restore = ((f64::from(SLOTS) * self.config.climb).ceil() as u32).max(1);
                let mut level = level;
                // Up past every slot nobody asked for, and `restore` that somebody did.
                while level < SLOTS {
                    if self.offered.contains(level) {
                        if restore == 0 {
                            break;
                        }
                        restore -= 1;
                    }
                    level += 1;
                }
                level
            }
            Verdict::Hold => level,
        };
        self.window_start = now;
        self.wait_total = Duration::ZERO;
        self.samples = 0;
        self.lag_total = Duration::ZERO;
        self.lag_samples = 0;
        self.offered = Offered::default();
        Some((verdict, elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::CohortSalt;

    fn cohort(i: u16) -> Cohort {
        // Find a key landing in cohort `i` through the public API.
        let salt = CohortSalt::new(b"t", Duration::from_secs(3600));
        (0u32..)
            .map(|k| salt.cohort(&k.to_be_bytes(), Duration::ZERO))
            .find(|c| c.index() == i)
            .expect("every cohort is reachable")
    }

    #[test]
    fn one_late_probe_is_not_lagging_but_a_run_of_them_is() {
        let ms = Duration::from_millis;
        let mut c = AdmissionController::new(ControllerConfig::default(), Instant::now());
        c.record_lag(ms(1));
        c.record_lag(ms(7));
        assert!(!c.lagging(ms(5)), "a quota pause of a few ms");
        c.record_lag(ms(7));
        assert!(c.lagging(ms(5)));
        c.record_lag(ms(1));
        c.record_lag(ms(1));
        assert!(!c.lagging(ms(5)), "on time again");
        c.record_lag(ms(12));
        assert!(c.lagging(ms(5)), "one probe more than twice the limit late");
    }

    #[test]
    fn the_worst_verdict_wins() {
        use Verdict::{Calm, Hold, Overloaded};
        for (a, b, worst) in [
            (Calm, Calm, Calm),
            (Calm, Hold, Hold),
            (Hold, Calm, Hold),
            (Hold, Overloaded, Overloaded),
            (Overloaded, Calm, Overloaded),
        ] {
            assert_eq!(a.worst(b), worst, "{a:?} and {b:?}");
        }
    }

    #[test]
    fn levels_shed_registration_first_and_control_never() {
        let none = AdmissionLevel(0);
        assert!(none.admits(RequestClass::Control, cohort(5)));
        assert!(!none.admits(RequestClass::Messaging, cohort(0)));
        let two_classes = AdmissionLevel(2 * u32::from(COHORTS));
        assert!(two_classes.admits(RequestClass::Login, cohort(127)));
        assert!(!two_classes.admits(RequestClass::Registration, cohort(0)));
        let half_registrations = AdmissionLevel(2 * u32::from(COHORTS) + 64);
        assert!(half_registrations.admits(RequestClass::Registration, cohort(63)));
        assert!(!half_registrations.admits(RequestClass::Registration, cohort(64)));
        assert_eq!(half_registrations.share(RequestClass::Registration), 0.5);
        assert_eq!(half_registrations.share(RequestClass::Login), 1.0);
        assert_eq!(two_classes.share(RequestClass::Registration), 0.0);
        assert_eq!(none.share(RequestClass::Messaging), 0.0);
        assert_eq!(none.share(RequestClass::Control), 1.0);
    }

    /// Every cohort, in index order.
    fn all_cohorts() -> Vec<Cohort> {
        let salt = CohortSalt::new(b"t", Duration::from_secs(3600));
        let mut found = vec![None; usize::from(COHORTS)];
        for k in 0u32.. {
            let c = salt.cohort(&k.to_be_bytes(), Duration::ZERO);
            found[usize::from(c.index())].get_or_insert(c);
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        found.into_iter().map(|c| c.expect("found")).collect()
    }

    /// Requests offered in every sheddable (class, cohort) slot of this window.
    fn offer_everywhere(c: &mut AdmissionController, cohorts: &[Cohort]) {
        for class in [
            RequestClass::Messaging,
            RequestClass::Login,
            RequestClass::Registration,
        ] {
            cohorts.iter().for_each(|&k| c.record_offered(class, k));
        }
    }

    /// One simulated second of a node that serves `capacity` requests/s, offered `offered`
    /// requests/s spread over all sheddable slots. Waiting is an M/M/1 queue's:
    /// 1 ms × ρ/(1−ρ), and grows without bound past capacity.
    fn simulate_window(
        c: &mut AdmissionController,
        cohorts: &[Cohort],
        now: Instant,
        offered: f64,
        capacity: f64,
    ) -> f64 {
        offer_everywhere(c, cohorts);
        let admitted = offered * c.level().fraction();
        let rho = admitted / capacity;
        let wait = if rho >= 0.999 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs_f64(0.001 * rho / (1.0 - rho))
        };
        let samples = (admitted as u32).clamp(1, 100);
        for i in 0..samples {
            c.record_wait(wait, now + Duration::from_millis(u64::from(i)));
        }
        c.tick(now + Duration::from_secs(1));
        admitted
    }

    #[test]
    fn falls_fast_under_queueing_delay_and_recovers_after() {
        let t0 = Instant::now();
        let mut c = AdmissionController::new(ControllerConfig::default(), t0);
        // Ten windows with 100 ms of queueing delay.
        for s in 0..10 {
            let now = t0 + Duration::from_secs(s);
            c.record_wait(Duration::from_millis(100), now);
            c.tick(now + Duration::from_secs(1));
        }
        let after_overload = c.level();
        assert!(
            after_overload.fraction() < 0.62,
            "fell fast: {after_overload:?}"
        );
        assert!(
            after_overload.fraction() > 0.55,
            "by about 5% per window: {after_overload:?}"
        );
        // Calm again, with requests in every slot: climbs 1% of all slots per window, back
        // to everything.
        let cohorts = all_cohorts();
        let mut s = 10;
        while c.level() < AdmissionLevel::ALL {
            let now = t0 + Duration::from_secs(s);
            offer_everywhere(&mut c, &cohorts);
            c.record_wait(Duration::from_millis(1), now);
            c.tick(now + Duration::from_secs(1));
            s += 1;
            assert!(s < 200, "recovers");
        }
        assert!(s - 10 >= 30, "climbs slowly ({} windows)", s - 10);
    }

    #[test]
    fn scheduling_lag_counts_even_when_requests_wait_little() {
        let t0 = Instant::now();
        let mut c = AdmissionController::new(ControllerConfig::default(), t0);
        for _ in 0..1000 {
            c.record_wait(Duration::from_micros(100), t0);
        }
        c.record_lag(Duration::from_millis(40));
        c.record_lag(Duration::from_millis(30));
        let (verdict, _) = c.tick(t0 + Duration::from_secs(1)).expect("window closed");
        assert_eq!(verdict, Verdict::Overloaded);
        // The lag belongs to its window only.
        c.record_wait(Duration::from_micros(100), t0);
        let (verdict, _) = c.tick(t0 + Duration::from_secs(2)).expect("window closed");
        assert_eq!(verdict, Verdict::Calm);
    }

    #[test]
    fn a_calm_window_climbs_at_once_over_slots_nobody_asked_for() {
        let t0 = Instant::now();
        let mut c = AdmissionController::new(ControllerConfig::default(), t0);
        // Overloaded down into the login range.
        for s in 0..10 {
            c.record_lag(Duration::from_millis(100));
            c.tick(t0 + Duration::from_secs(s + 1));
        }
        assert!(
            c.level().share(RequestClass::Login) < 1.0,
            "{:?}",
            c.level()
        );
        assert_eq!(c.level().share(RequestClass::Registration), 0.0);
        // Calm, with messaging and registrations offered but no login attempts: the login
        // slots add no load, so one window takes the level past them into registrations,
        // and then 1% of all slots (4) further.
        let cohorts = all_cohorts();
        for &k in &cohorts {
            c.record_offered(RequestClass::Messaging, k);
            c.record_offered(RequestClass::Registration, k);
        }
        c.tick(t0 + Duration::from_secs(12));
        assert_eq!(c.level().share(RequestClass::Login), 1.0);
        assert_eq!(c.level().share(RequestClass::Registration), 4.0 / 128.0);
        // A login arriving in a shed cohort is a slot somebody asked for again: with one
        // login cohort offered, the next calm window from below it stops after it.
        let mut c = AdmissionController::new(ControllerConfig::default(), t0);
        for s in 0..10 {
            c.record_lag(Duration::from_millis(100));
            c.tick(t0 + Duration::from_secs(s + 1));
        }
        let below = c.level();
        let shed_login = cohorts
            .iter()
            .copied()
            .find(|&k| !below.admits(RequestClass::Login, k))
            .expect("some login cohort is shed");
        for _ in 0..5 {
            c.record_offered(RequestClass::Login, shed_login);
        }
        for &k in &cohorts {
            c.record_offered(RequestClass::Registration, k);
        }
        c.tick(t0 + Duration::from_secs(12));
        assert!(c.level().admits(RequestClass::Login, shed_login));
        assert_eq!(c.level().share(RequestClass::Registration), 3.0 / 128.0);
    }

    #[test]
    fn backend_overload_sheds_even_without_queueing_delay() {
        let t0 = Instant::now();
        let mut c = AdmissionController::new(ControllerConfig::default(), t0);
        c.set_backend_overloaded(true);
        c.record_wait(Duration::ZERO, t0);
        c.tick(t0 + Duration::from_secs(1));
        assert!(c.level() < AdmissionLevel::ALL);
    }

    #[test]
    fn steady_load_above_capacity_settles_without_oscillating() {
        let t0 = Instant::now();
        let mut c = AdmissionController::new(ControllerConfig::default(), t0);
        // Offered twice what the node can serve.
        let (offered, capacity) = (20_000.0, 10_000.0);
        let cohorts = all_cohorts();
        let mut levels = Vec::new();
        let mut admitted = Vec::new();
        for s in 0..300 {
            admitted.push(simulate_window(
                &mut c,
                &cohorts,
                t0 + Duration::from_secs(s * 2),
                offered,
                capacity,
            ));
            levels.push(c.level());
        }
        let tail = &levels[200..];
        let (lo, hi) = (
            tail.iter().min().expect("non-empty"),
            tail.iter().max().expect("non-empty"),
        );
        assert_eq!(lo, hi, "the level holds still once settled: {lo:?}..{hi:?}");
        let served = admitted[299];
        assert!(served < capacity, "not overloaded: {served}");
        assert!(served > 0.7 * capacity, "goodput stays high: {served}");
    }
}
