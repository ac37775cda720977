//! A fixed pool of worker threads that run one closure on every thread at once, for the
//! fork-join parallelism of a forward pass (a matrix multiply splits its rows over the threads).
//!
//! A forward pass calls [`ThreadPool::run`] about ten times per layer per token, so the hand-off
//! must cost microseconds, not the tens of microseconds of waking sleeping threads: a worker that
//! has just finished spins on a generation counter for [`SPIN_TIME`] before it parks, and the
//! caller runs share 0 itself. Between bursts (idle daemon) the workers park and use no CPU.
//!
//! Each share is claimed exactly once, by its worker or by the caller: when the caller has
//! finished its own share it claims (and runs) the shares of workers that have not started yet.
//! On a machine shared with other processes a descheduled worker then costs nothing, instead of
//! making every call wait a scheduler time slice for it.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before parking. Long enough to cover the gap
/// between two operations of a forward pass (norms, attention on the calling thread), short
/// enough that an idle daemon stops burning CPU at once.
pub const SPIN_TIME: Duration = Duration::from_micros(300);

/// How long the caller polls for workers to finish before it starts yielding its core.
const CALLER_SPIN_TIME: Duration = Duration::from_micros(100);

/// The most threads a pool may have (a sanity bound on the argument).
pub const MAX_THREADS: usize = 1024;

/// A job: called as `job(thread_index, n_threads)` on every thread of the pool.
type Job = dyn Fn(usize, usize) + Sync;

/// State shared by the caller and the workers.
struct Shared {
    /// Incremented once per job; a worker runs the job when it sees a new value.
    generation: AtomicU64,
    /// The current job. Written by the caller only while no worker can read it (before the
    /// generation increment that publishes it, after every worker reported done).
    job: UnsafeCell<Option<&'static Job>>,
    /// Shares (of workers 1..n) not yet finished in the current job.
    pending: AtomicUsize,
    /// Per worker: the last generation whose share was claimed, by the worker or by the caller.
    /// Always `generation - 1` for a share not yet claimed.
    claimed: Vec<AtomicU64>,
    /// Set when a worker's share of the current job panicked.
    panicked: AtomicBool,
    /// Set when the pool is dropped: workers exit.
    shutdown: AtomicBool,
    /// Total threads including the caller.
    n_threads: usize,
}

// SAFETY: `job` is only written by the thread holding `ThreadPool::run_lock` while every worker
// is idle (pending == 0 and the new generation not yet published); workers read it only after
// observing the new generation with Acquire ordering, which happens-after the write. The
// referenced closure is `Sync`, so calling it from several threads is allowed.
unsafe impl Sync for Shared {}

/// A pool of `n_threads - 1` worker threads plus the calling thread.
pub struct ThreadPool {
    /// State shared with the workers.
    shared: Arc<Shared>,
    /// Worker handles: to unpark them for a job and join them on drop.
    workers: Vec<JoinHandle<()>>,
    /// Serializes `run` calls from different threads (one job at a time).
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// Starts a pool of `n_threads` threads in all (at least 1; the caller of [`Self::run`] is
    /// thread 0, so `n_threads - 1` workers are spawned).
    ///
    /// # Errors
    /// If the operating system refuses to start a thread.
    pub fn new(n_threads: usize) -> std::io::Result<Self> {
        let n_threads = n_threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            claimed: (1..n_threads).map(|_| AtomicU64::new(0)).collect(),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            n_threads,
        });
        let mut pool = ThreadPool {
            shared,
            workers: Vec::new(),
            run_lock: Mutex::new(()),
        };
        for index in 1..n_threads {
            let shared = Arc::clone(&pool.shared);
            let handle = thread::Builder::new()
                .name(format!("llmd-cpu-{index}"))
                .spawn(move || worker(&shared, index))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads in the pool, the caller included.
    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `job(thread_index, n_threads)` once on each of the pool's threads (the caller is
    /// thread 0) and returns when all have finished.
    ///
    /// Calls from several threads at once are serialized.
    ///
    /// # Panics
    /// If the job panicked on any thread (after every thread has finished).
    pub fn run<'j>(&self, job: &'j (dyn Fn(usize, usize) + Sync + 'j)) {
        let n = self.shared.n_threads;
        if n == 1 {
            job(0, 1);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: we erase the closure's lifetime to store it where the workers can see it. It
        // stays valid: this function does not return (or unwind) before `pending` is 0, i.e.
        // before every worker has finished calling it, and the slot is cleared before return.
        let job_static: &'static Job = unsafe {
            std::mem::transmute::<&'j (dyn Fn(usize, usize) + Sync + 'j), &'static Job>(job)
        };
        // SAFETY: no worker reads `job` now: all finished the previous job (pending == 0) and
        // the new generation is not yet published. We hold `run_lock`.
        unsafe { *shared.job.get() = Some(job_static) };
        shared.panicked.store(false, Ordering::Relaxed);
        shared.pending.store(n - 1, Ordering::Relaxed);
        let generation = shared.generation.fetch_add(1, Ordering::Release) + 1;
        for w in &self.workers {
            w.thread().unpark();
        }

        let own = panic::catch_unwind(AssertUnwindSafe(|| job(0, n)));
        // Run the shares of workers that have not woken up yet.
        for (i, slot) in shared.claimed.iter().enumerate() {
            if claim(slot, generation) {
                let r = panic::catch_unwind(AssertUnwindSafe(|| job(i + 1, n)));
                if r.is_err() {
                    shared.panicked.store(true, Ordering::Relaxed);
                }
                shared.pending.fetch_sub(1, Ordering::Release);
            }
        }

        let start = Instant::now();
        let mut spins = 0u32;
        while shared.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > CALLER_SPIN_TIME {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: every share has been claimed and finished (pending == 0, Acquire pairs with the
        // Release decrements); a worker that lost its claim never reads the job. We still hold
        // `run_lock`.
        unsafe { *shared.job.get() = None };

        if let Err(payload) = own {
            panic::resume_unwind(payload);
        }
        if shared.panicked.load(Ordering::Relaxed) {
            panic!("a thread-pool job panicked on a worker thread");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            // A worker never panics outside a job (job panics are caught), so join only fails
            // if the thread was killed; nothing to do then.
            let _ = w.join();
        }
    }
}

/// Claims the share guarded by `slot` for `generation`; true for exactly one claimant.
fn claim(slot: &AtomicU64, generation: u64) -> bool {
    slot.compare_exchange(
        generation - 1,
        generation,
        Ordering::AcqRel,
        Ordering::Relaxed,
    )
    .is_ok()
}

/// A worker's loop: wait for a new generation, claim and run its share, report done.
fn worker(shared: &Shared, index: usize) {
    let slot = &shared.claimed[index - 1];
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN_TIME {
                // `run` unparks us after publishing a generation, and an unpark that comes
                // before this park makes it return at once, so no job is missed.
                thread::park();
            } else {
                std::hint::spin_loop();
            }
        }
        if !claim(slot, seen) {
            // The caller ran this share already (we were late); wait for the next job.
            continue;
        }
        // SAFETY: we observed the new generation with Acquire, which happens-after the caller's
        // write of `job`, and we hold the claim for it; the caller does not touch the slot again
        // until `pending` reaches 0, which needs our decrement below.
        let job = unsafe { *shared.job.get() };
        if let Some(job) = job {
            let r: Result<(), Box<dyn Any + Send>> =
                panic::catch_unwind(AssertUnwindSafe(|| job(index, shared.n_threads)));
            if r.is_err() {
                shared.panicked.store(true, Ordering::Relaxed);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}
