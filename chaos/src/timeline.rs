//! Per-second accumulation of what the drill's clients saw, shared by all of them.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::record::{ClassSecond, Second};

/// A request class, as the drill counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Established users' sends.
    Messaging,
    /// Established users logging in (again).
    Login,
    /// Newcomers' registrations.
    Registration,
}

/// What ended in one class in one second.
#[derive(Default)]
struct ClassAcc {
    offered: u64,
    ok: u64,
    shed: u64,
    failed: u64,
    latency_us: Option<Histogram<u64>>,
}

impl ClassAcc {
    fn record(&mut self, took: Duration) {
        let h = self.latency_us.get_or_insert_with(histogram);
        // Clamped into the histogram's range; a sample outside it is a bug in the drill,
        // not a reason to lose the rest.
        let us = (took.as_micros() as u64).clamp(1, h.high());
        let _ = h.record(us);
    }

    fn finish(&self) -> ClassSecond {
        let q = |q: f64| {
            self.latency_us
                .as_ref()
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        ClassSecond {
            offered: self.offered,
            ok: self.ok,
            shed: self.shed,
            failed: self.failed,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
        }
    }
}

/// A latency histogram in µs, 1 µs to 10 min, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

#[derive(Default)]
struct Acc {
    messaging: ClassAcc,
    login: ClassAcc,
    registration: ClassAcc,
    refused: u64,
    estimated_wait_ms: u64,
    waiting: u64,
    level: Option<f64>,
    nodes_up: u32,
    phase: String,
}

/// One bucket per second since `epoch`.
pub struct Timeline {
    epoch: Instant,
    seconds: Mutex<Vec<Acc>>,
}

impl Timeline {
    /// Starts the clock now.
    pub fn start() -> Self {
        Self {
            epoch: Instant::now(),
            seconds: Mutex::new(Vec::new()),
        }
    }

    /// Seconds since the start.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// The instant the run started.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    fn with<R>(&self, f: impl FnOnce(&mut Acc) -> R) -> R {
        let second = self.epoch.elapsed().as_secs() as usize;
        let mut seconds = self.lock();
        if seconds.len() <= second {
            seconds.resize_with(second + 1, Acc::default);
        }
        f(&mut seconds[second])
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Acc>> {
        // Plain counters; a panicking client task cannot leave them torn.
        self.seconds.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn class(acc: &mut Acc, class: Class) -> &mut ClassAcc {
        match class {
            Class::Messaging => &mut acc.messaging,
            Class::Login => &mut acc.login,
            Class::Registration => &mut acc.registration,
        }
    }

    /// A request of `class` started.
    pub fn offered(&self, class: Class) {
        self.with(|a| Self::class(a, class).offered += 1);
    }

    /// A request of `class` succeeded, after `took` (recorded as its latency if given).
    pub fn ok(&self, class: Class, took: Option<Duration>) {
        self.with(|a| {
            let c = Self::class(a, class);
            c.ok += 1;
            if let Some(t) = took {
                c.record(t);
            }
        });
    }

    /// A latency sample for `class` without a count (messaging: send → push).
    pub fn latency(&self, class: Class, took: Duration) {
        self.with(|a| Self::class(a, class).record(took));
    }

    /// A request of `class` was deferred by admission control.
    pub fn shed(&self, class: Class) {
        self.with(|a| Self::class(a, class).shed += 1);
    }

    /// A request of `class` failed for good.
    pub fn failed(&self, class: Class) {
        self.with(|a| Self::class(a, class).failed += 1);
    }

    /// A connection attempt was refused as busy.
    pub fn refused(&self) {
        self.with(|a| a.refused += 1);
    }

    /// A ticket promised a wait of `wait`.
    pub fn estimated_wait(&self, wait: Duration) {
        self.with(|a| a.estimated_wait_ms = a.estimated_wait_ms.max(wait.as_millis() as u64));
    }

    /// The state sampled once a second.
    pub fn sample(&self, phase: &str, waiting: u64, nodes_up: u32, level: Option<f64>) {
        self.with(|a| {
            a.phase = phase.to_owned();
            a.waiting = waiting;
            a.nodes_up = nodes_up;
            a.level = level;
        });
    }

    /// The messaging p99 of the last complete second, ms (for the progress bar).
    pub fn last_messaging_p99(&self) -> Option<f64> {
        let second = self.epoch.elapsed().as_secs() as usize;
        let seconds = self.lock();
        second
            .checked_sub(1)
            .and_then(|s| seconds.get(s))
            .and_then(|a| a.messaging.finish().p99_ms)
    }

    /// The seconds recorded so far, and the messaging latency merged over the seconds whose
    /// phase `during` accepts versus those `before` accepts.
    pub fn finish(
        &self,
        before: impl Fn(&str) -> bool,
        during: impl Fn(&str) -> bool,
    ) -> (Vec<Second>, Histogram<u64>, Histogram<u64>) {
        let seconds = self.lock();
        let (mut h_before, mut h_during) = (histogram(), histogram());
        let mut out = Vec::with_capacity(seconds.len());
        for (t, a) in seconds.iter().enumerate() {
            if let Some(h) = &a.messaging.latency_us {
                if before(&a.phase) {
                    let _ = h_before.add(h);
                } else if during(&a.phase) {
                    let _ = h_during.add(h);
                }
            }
            out.push(Second {
                t: t as u32,
                phase: a.phase.clone(),
                messaging: a.messaging.finish(),
                login: a.login.finish(),
                registration: a.registration.finish(),
                refused_connections: a.refused,
                waiting: a.waiting,
                estimated_wait_ms: a.estimated_wait_ms,
                admission_level: a.level,
                nodes_up: a.nodes_up,
            });
        }
        (out, h_before, h_during)
    }
}
