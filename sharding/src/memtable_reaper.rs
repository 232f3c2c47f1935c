//! Freeing flushed memtables away from the locks every write waits on.
//!
//! fjall (lsm-tree 3.1) drops a flushed memtable when it garbage-collects old versions of a
//! keyspace, and it does so while holding that keyspace's version lock — the lock every
//! write to and read of the keyspace takes. Freeing a 64 MiB memtable is a walk over a
//! skiplist of a few hundred thousand nodes, 170 ms of CPU measured on the development
//! machine; meanwhile a write batch that touches the keyspace waits for the lock *while it
//! holds the journal lock*, so every write to the database waits, and the node's runtime
//! workers sit blocked behind them. Under a steady open-loop load this showed, with the
//! flush's own CPU, as one stall of 0.3–0.9 s each time a memtable was flushed (docs/PERFORMANCE.md, "Latency at half
//! the rate").
//!
//! The reaper holds its own reference to every memtable a keyspace has had: when fjall lets
//! go of one, its reference is no longer the last, so nothing is freed under the lock. The
//! reaper notices that it holds the only reference left and frees the memtable on its own
//! thread, where no write waits for it. Holding a reference changes nothing fjall sees;
//! it only moves where the memory is freed, and delays it by at most one [`TICK`].

use std::any::Any;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use fjall::{AbstractTree, Keyspace};

/// How often the reaper looks for new and released memtables. A memtable fills in seconds
/// at the most the node writes, so a look every tick cannot miss one.
const TICK: Duration = Duration::from_millis(20);

/// How many ticks between two looks for fjall threads still at normal priority: fjall may
/// start a thread after the store opened, and a thread names itself only once it runs, so
/// the look made at open can miss one (`levee up` was seen with one of its two fjall workers
/// at nice 0).
const PRIORITY_EVERY: u32 = 50;

/// A memtable, held only to be freed later (its type is fjall's and need not be named).
type Held = Arc<dyn Any + Send + Sync>;

/// The keyspaces whose memtables are watched; shared with the reaper's thread.
#[derive(Default)]
pub(crate) struct Watched {
    keyspaces: Mutex<Vec<Keyspace>>,
}

impl Watched {
    fn lock(&self) -> MutexGuard<'_, Vec<Keyspace>> {
        // Only a list of handles: a panic elsewhere cannot leave it half-changed.
        self.keyspaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops watching every keyspace. The reaper reaches them only while holding this list's
    /// lock, so once this returns it holds none of them, and the database can close
    /// (a reopen of the same directory right after would otherwise find it still open).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Watches `keyspace` (once, however often it is opened).
    pub(crate) fn add(&self, keyspace: &Keyspace) {
        let mut keyspaces = self.lock();
        if !keyspaces.iter().any(|k| k.name() == keyspace.name()) {
            keyspaces.push(keyspace.clone());
        }
    }
}

/// Starts the reaper for `watched`. The thread ends once `watched` is dropped (the store
/// closed), freeing what it still holds.
pub(crate) fn start(watched: &Arc<Watched>) -> std::io::Result<()> {
    let watched = Arc::downgrade(watched);
    std::thread::Builder::new()
        .name("levee-memtable-reaper".into())
        .spawn(move || run(&watched))
        .map(drop)
}

fn run(watched: &Weak<Watched>) {
    // Freeing a memtable is work nobody waits for.
    crate::background::lower_own_priority();
    let mut held: Vec<Held> = Vec::new();
    let mut tick: u32 = 0;
    loop {
        if tick.is_multiple_of(PRIORITY_EVERY) {
            crate::background::lower_priority_of_threads_named(crate::background::FJALL_THREADS);
        }
        tick = tick.wrapping_add(1);
        {
            let Some(watched) = watched.upgrade() else {
                return;
            };
            for keyspace in watched.lock().iter() {
                let active: Held = keyspace.tree.active_memtable();
                if !held.iter().any(|m| Arc::ptr_eq(m, &active)) {
                    held.push(active);
                }
            }
        }
        // Ours is the only reference left: fjall has flushed it and let go. Freed here, on
        // this thread, holding no lock of the database's.
        held.retain(|m| Arc::strong_count(m) > 1);
        std::thread::sleep(TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedStore;

    #[test]
    fn the_reaper_holds_each_memtable_and_frees_it_once_fjall_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let keyspace = store.keyspace("k").expect("keyspace");
        keyspace.insert("a", "1").expect("insert");
        // How many references fjall itself keeps, read off a keyspace the reaper does not
        // watch: read off the watched one, it counted the reaper's own whenever the reaper
        // had already taken it, and the wait below never ended (1 run in 250).
        let plain = store.unwatched_keyspace("plain").expect("keyspace");
        plain.insert("a", "1").expect("insert");
        let fjalls = Arc::strong_count(&plain.tree.active_memtable()) - 1;
        let first = Arc::downgrade(&keyspace.tree.active_memtable());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while first.strong_count() <= fjalls {
            assert!(
                std::time::Instant::now() < deadline,
                "the reaper never took it"
            );
            std::thread::sleep(TICK);
        }
        // Flushed, and old versions collected by later rotations: fjall lets go, and the
        // reaper frees it rather than keeping it for good.
        let mut n = 0;
        while first.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "never freed");
            keyspace.insert(format!("b{n}"), "2").expect("insert");
            keyspace.rotate_memtable_and_wait().expect("flush");
            n += 1;
            std::thread::sleep(TICK);
        }
        assert_eq!(keyspace.get("a").expect("get").as_deref(), Some(&b"1"[..]));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fjall_thread_started_after_the_store_opened_is_lowered_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _store = EmbeddedStore::open(dir.path()).expect("open");
        let late = crate::background::NamedThread::start("fjall:late-test");
        let tid = Some(late.tid);
        let deadline = std::time::Instant::now() + TICK * PRIORITY_EVERY * 5;
        while rustix::process::getpriority_process(tid).expect("priority") != 19 {
            assert!(
                std::time::Instant::now() < deadline,
                "the reaper never lowered a thread named after it opened"
            );
            std::thread::sleep(TICK);
        }
    }
}
