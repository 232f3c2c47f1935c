//! Background threads of the embedded store run at the lowest priority.
//!
//! The store's own background work — fjall's memtable flushes and compactions, and the
//! memtable reaper — can wait; the requests the node's runtime serves cannot. On the
//! development machine (2 cores, the load generator beside the node) a flush at normal
//! priority took a core for half a second, and the runtime's workers, preempted while
//! holding the store's locks, held up every request behind them (docs/PERFORMANCE.md,
//! "Latency at half the rate"). At the lowest priority the background work still gets
//! every idle cycle; when the node is saturated it falls behind, and fjall's own write
//! stall (writers wait while four sealed memtables are queued) is the backpressure.
//!
//! Linux gives each thread its own nice value; elsewhere this does nothing.

/// How fjall's flush and compaction threads are named (the prefix).
pub(crate) const FJALL_THREADS: &str = "fjall:";

/// The nice value of background threads: the lowest priority.
#[cfg(target_os = "linux")]
const BACKGROUND_NICE: i32 = 19;

/// Lowers the calling thread to background priority.
pub(crate) fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    set_nice(rustix::thread::gettid());
}

/// Lowers every thread of this process whose name starts with `prefix` to background
/// priority (threads a library started, which cannot be given a priority at their start).
pub(crate) fn lower_priority_of_threads_named(prefix: &str) {
    #[cfg(target_os = "linux")]
    {
        // Reading /proc/self/task while other threads end can step over a live thread (the
        // directory's positions shift under the reader). So read it again until a pass
        // finds nothing left to lower *and* the same threads as the pass before: a pass
        // that stepped over a thread lowers nothing either, and stopping at it missed a
        // named thread in a unit test 6 runs in 250, each time beside a thread that had
        // just ended.
        let mut before = None;
        for _ in 0..8 {
            let (lowered, seen) = lower_pass(prefix);
            if lowered == 0 && before.as_ref() == Some(&seen) {
                break;
            }
            before = Some(seen);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = prefix;
}

/// One pass over the process's threads: how many it lowered, and the threads it saw.
#[cfg(target_os = "linux")]
fn lower_pass(prefix: &str) -> (usize, std::collections::BTreeSet<i32>) {
    let mut seen = std::collections::BTreeSet::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, seen);
    };
    let mut lowered = 0;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        seen.insert(tid.as_raw_nonzero().get());
        let named = std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|comm| comm.starts_with(prefix));
        if named && rustix::process::getpriority_process(Some(tid)) != Ok(BACKGROUND_NICE) {
            set_nice(tid);
            lowered += 1;
        }
    }
    (lowered, seen)
}

/// On Linux a thread id given as a process id sets that thread's nice value alone.
#[cfg(target_os = "linux")]
fn set_nice(tid: rustix::process::Pid) {
    // Failing (the thread has just ended) changes nothing that matters.
    if let Err(e) = rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE) {
        tracing::debug!(tid = tid.as_raw_nonzero().get(), error = %e, "could not lower a background thread's priority");
    }
}

/// A thread with a given name that waits until dropped, for tests of the above.
#[cfg(all(test, target_os = "linux"))]
pub(crate) struct NamedThread {
    pub(crate) tid: rustix::process::Pid,
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(all(test, target_os = "linux"))]
impl NamedThread {
    /// Starts it; returns once it runs (and so carries its name).
    pub(crate) fn start(name: &str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                tx.send(rustix::thread::gettid()).expect("send");
                let _ = wait.recv();
            })
            .expect("spawn");
        Self {
            tid: rx.recv().expect("tid"),
            done: Some(done),
            thread: Some(thread),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
impl Drop for NamedThread {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of(tid: rustix::process::Pid) -> i32 {
        let stat =
            std::fs::read_to_string(format!("/proc/self/task/{}/stat", tid.as_raw_nonzero()))
                .expect("stat");
        // The fields after the command's closing parenthesis; nice is the 17th of them.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        rest.split_whitespace()
            .nth(16)
            .expect("nice")
            .parse()
            .expect("number")
    }

    #[test]
    fn named_threads_are_lowered_and_others_left_alone() {
        let worker = NamedThread::start("bg-test-worker");
        let me = rustix::thread::gettid();
        let mine = nice_of(me);
        lower_priority_of_threads_named("bg-test-");
        assert_eq!(nice_of(worker.tid), BACKGROUND_NICE);
        assert_eq!(nice_of(me), mine, "an unnamed thread keeps its priority");
    }
}
