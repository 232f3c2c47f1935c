//! A CPU budget for the node under test: a Linux control group with a CPU quota.
//!
//! A benchmark that runs its load generator on the same machine as the node can only offer
//! what the cores left over can generate. A new connection costs the client about as much
//! CPU as it costs the node (measured with `perf` in docs/PERFORMANCE-LOG.md), so on a 2-core
//! machine a load tool cannot offer ten times what a node with the whole machine absorbs.
//! Giving the node a fixed fraction of a core instead makes the node small and the load side
//! large, the way a real wave of people with their own phones is large compared to one relay.
//!
//! Both cgroup versions are supported: v1 (`cpu` controller, `cpu.cfs_quota_us`) and v2
//! (`cpu.max`). Creating a group needs write access to the cgroup file system (root, or a
//! delegated subtree); [`CpuBudget::create`] says so when it cannot.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Scheduling period of the quota. The kernel's default is 100 ms, which lets a node with a
/// fifth of a core run flat out for 20 ms and then stand still for 80: every message caught
/// in the pause would wait for it. A 10 ms period bounds such a pause to 8 ms.
const PERIOD_US: u64 = 10_000;

/// The quota's period and the time allowed in each, in µs, for `cores`. The kernel takes no
/// quota under 1 ms, so a budget under 0.1 core lengthens the period instead of (as it
/// once did) silently granting 0.1 core.
fn period_and_quota(cores: f64) -> (u64, u64) {
    let period_us = PERIOD_US.max((1_000.0 / cores).ceil() as u64);
    let quota_us = ((cores * period_us as f64).round() as u64).max(1_000);
    (period_us, quota_us)
}

/// A control group whose processes together get at most `cores` CPUs' worth of time.
/// Removed when dropped (its processes must have exited by then).
#[derive(Debug)]
pub struct CpuBudget {
    dir: PathBuf,
    cores: f64,
}

impl CpuBudget {
    /// Creates a group limited to `cores` (e.g. 0.25 = a quarter of one core).
    pub fn create(cores: f64) -> anyhow::Result<Self> {
        if !(cores > 0.0 && cores.is_finite()) {
            bail!("a CPU budget must be a positive number of cores, not {cores}");
        }
        let name = format!("levee-bench-{}", std::process::id());
        let (period_us, quota_us) = period_and_quota(cores);
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let (dir, files) = if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            let files = vec![
                ("cpu.cfs_period_us", period_us.to_string()),
                ("cpu.cfs_quota_us", quota_us.to_string()),
            ];
            (dir, files)
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            let dir = v2.join(name);
            (dir, vec![("cpu.max", format!("{quota_us} {period_us}"))])
        } else {
            bail!(
                "no cgroup CPU controller at /sys/fs/cgroup/cpu (v1) or in \
                 /sys/fs/cgroup/cgroup.controllers (v2); run with --node-cpus 0 to give \
                 the node the whole machine"
            );
        };
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "cannot create the control group {} (needs root or a delegated cgroup); \
                 run with --node-cpus 0 to give the node the whole machine",
                dir.display()
            )
        })?;
        let budget = Self { dir, cores };
        for (file, value) in files {
            std::fs::write(budget.dir.join(file), &value)
                .with_context(|| format!("cannot set {file} = {value}"))?;
        }
        Ok(budget)
    }

    /// Where the group lives, for a child to [`join`] it.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The cores it allows.
    pub fn cores(&self) -> f64 {
        self.cores
    }
}

/// Moves the calling process into the group at `dir`. A child calls it first thing, before
/// it starts any threads, so that everything it runs is inside the budget.
pub fn join(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("cannot join the control group {}", dir.display()))
}

impl Drop for CpuBudget {
    fn drop(&mut self) {
        // rmdir on a cgroup with no processes left removes it (its files are virtual).
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::period_and_quota;

    #[test]
    fn the_quota_is_the_budget_and_never_under_a_millisecond() {
        assert_eq!(period_and_quota(0.25), (10_000, 2_500));
        assert_eq!(period_and_quota(2.0), (10_000, 20_000));
        assert_eq!(
            period_and_quota(0.05),
            (20_000, 1_000),
            "a twentieth of a core"
        );
    }
}
