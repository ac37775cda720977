//! The process-wide compute pool and the shares of it that models run their forward passes on:
//! fork-join parallelism where one closure runs once per share index at once (a matrix multiply
//! splits its rows over the indices).
//!
//! A daemon starts one [`ComputePool`] of `threads` threads in all (the config's total): the
//! calling thread of each job is one of them, so the pool spawns `threads - 1` workers. Every
//! model gets a [`ThreadPool`], a *share* of `n` threads of that pool ([`ComputePool::share`]):
//! its jobs always run as `n` indices, whatever else is running, so results never depend on
//! what other models do. A job reserves up to `n - 1` idle workers (the lowest-numbered first, so
//! one busy model keeps reusing the same warm workers); the indices that found no idle worker
//! (another model holds them) and those of workers that have not woken up yet are run by the
//! caller itself. On a shared machine a descheduled worker therefore costs nothing, instead of
//! making every call wait a scheduler time slice for it.
//!
//! A forward pass runs about ten jobs per layer per token, so the hand-off must cost
//! microseconds: a worker that has just finished spins on its slot for [`SPIN_TIME`] before it
//! parks. Between bursts (an idle daemon) every worker is parked and uses no CPU.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before parking. Long enough to cover the gap
/// between two operations of a forward pass (norms, attention on the calling thread), short
/// enough that an idle daemon stops burning CPU at once.
pub const SPIN_TIME: Duration = Duration::from_micros(300);

/// How long the caller polls for workers to finish before it starts yielding its core.
const CALLER_SPIN_TIME: Duration = Duration::from_micros(100);

/// The most threads a pool or a share may have (a sanity bound on the argument; the daemon
/// clamps its config lower).
pub const MAX_THREADS: usize = 1024;

/// A job: called as `job(index, n)` once for every index `0..n` of a share.
type Job = dyn Fn(usize, usize) + Sync;

/// What a reserved worker runs for one generation of its slot.
#[derive(Clone, Copy)]
struct Task {
    /// The job (its lifetime erased: see [`ThreadPool::run`]).
    job: &'static Job,
    /// The share index the worker runs.
    index: usize,
    /// The share's size (the job's `n`).
    n: usize,
}

/// One worker's mailbox. A caller reserves it (`busy`), writes `task`, publishes a new
/// `generation`; the worker or, if the worker is late, the caller claims that generation
/// (`claimed`), exactly once; the worker reports `done` when it ran it.
struct Slot {
    /// Held by the caller that reserved this worker for its current job.
    busy: AtomicBool,
    /// Incremented once per job given to this worker (only by the reserving caller).
    generation: AtomicU64,
    /// The last generation whose task was claimed, by the worker or by the caller; always
    /// `generation - 1` while a published task is unclaimed.
    claimed: AtomicU64,
    /// The last generation the worker finished running.
    done: AtomicU64,
    /// Set when the worker's task of the current generation panicked.
    panicked: AtomicBool,
    /// The current task. Written only by the reserving caller while the worker cannot read it
    /// (before the generation that publishes it; after the worker is done or the caller
    /// claimed it).
    task: UnsafeCell<Option<Task>>,
}

// SAFETY: `task` is written only by the caller holding `busy`, before it publishes the generation
// (Release) and after the generation's claim is settled; the worker reads it only after claiming
// a generation it observed with Acquire, which happens-after the write. The job is `Sync`, so
// calling it from several threads is allowed.
unsafe impl Sync for Slot {}

/// State shared by callers and workers.
struct Shared {
    /// One per worker.
    slots: Vec<Slot>,
    /// Set when the pool is dropped: workers exit.
    shutdown: AtomicBool,
}

/// The process-wide pool: `threads - 1` workers, each parked when idle.
pub struct ComputePool {
    /// State shared with the workers.
    shared: Arc<Shared>,
    /// Worker handles: to unpark them for a job and join them on drop.
    workers: Vec<JoinHandle<()>>,
}

impl ComputePool {
    /// Starts a pool of `threads` threads in all (at least 1): the caller of each job is one of
    /// them, so `threads - 1` workers are spawned.
    ///
    /// # Errors
    /// If the operating system refuses to start a thread.
    pub fn new(threads: usize) -> std::io::Result<Arc<Self>> {
        let threads = threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared {
            slots: (1..threads)
                .map(|_| Slot {
                    busy: AtomicBool::new(false),
                    generation: AtomicU64::new(0),
                    claimed: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    panicked: AtomicBool::new(false),
                    task: UnsafeCell::new(None),
                })
                .collect(),
            shutdown: AtomicBool::new(false),
        });
        let mut pool = ComputePool {
            shared,
            workers: Vec::new(),
        };
        for index in 0..threads - 1 {
            let shared = Arc::clone(&pool.shared);
            let handle = thread::Builder::new()
                .name(format!("llmd-cpu-{}", index + 1))
                .spawn(move || worker(&shared, index))?;
            pool.workers.push(handle);
        }
        Ok(Arc::new(pool))
    }

    /// A pool without workers: every job runs on its caller (starts no thread, so it cannot
    /// fail).
    pub fn single() -> Arc<Self> {
        Arc::new(ComputePool {
            shared: Arc::new(Shared {
                slots: Vec::new(),
                shutdown: AtomicBool::new(false),
            }),
            workers: Vec::new(),
        })
    }

    /// Threads in the pool, a job's caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// A share of `n` threads (at least 1, at most the pool's size) for one model's work.
    pub fn share(self: &Arc<Self>, n: usize) -> ThreadPool {
        ThreadPool {
            pool: Arc::clone(self),
            n_threads: n.clamp(1, self.threads()),
        }
    }

    /// Reserves an idle worker at or after `from`: its index, or `None` when all are busy.
    fn reserve(&self, from: usize) -> Option<usize> {
        (from..self.workers.len()).find(|&w| {
            self.shared.slots[w]
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
    }
}

impl Drop for ComputePool {
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

/// A share of a [`ComputePool`]: jobs run as `n_threads` indices, on the calling thread and on
/// whichever of the pool's workers are idle. Cheap to hold; any number of shares (and calls
/// from several threads on one share) may run at once.
pub struct ThreadPool {
    /// The pool whose workers run the share's indices.
    pool: Arc<ComputePool>,
    /// Indices per job: the model's configured share.
    n_threads: usize,
}

impl ThreadPool {
    /// A pool of its own with `n_threads` threads in all, wholly this share's (tests, tools and
    /// anything outside the daemon's shared pool).
    ///
    /// # Errors
    /// If the operating system refuses to start a thread.
    pub fn new(n_threads: usize) -> std::io::Result<Self> {
        let pool = ComputePool::new(n_threads)?;
        Ok(pool.share(n_threads))
    }

    /// Indices per job (the share's size), the caller included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `job(index, n_threads)` once for each index (the caller runs index 0) and returns
    /// when all have finished.
    ///
    /// # Panics
    /// If the job panicked on any thread (after every index has finished).
    pub fn run<'j>(&self, job: &'j (dyn Fn(usize, usize) + Sync + 'j)) {
        let n = self.n_threads;
        if n == 1 {
            job(0, 1);
            return;
        }
        let pool = &*self.pool;
        let slots = &pool.shared.slots;
        // SAFETY: we erase the closure's lifetime to store it where the workers can see it. It
        // stays valid: this function does not return (or unwind) before every reserved worker
        // has either finished its task (`done`) or lost its claim to us, and a worker reads the
        // task only after winning the claim.
        let job_static: &'static Job = unsafe {
            std::mem::transmute::<&'j (dyn Fn(usize, usize) + Sync + 'j), &'static Job>(job)
        };

        // Reserve up to n - 1 idle workers and hand each its index.
        // (worker, its generation, whether we ran its index ourselves)
        let mut reserved = [(0u32, 0u64, false); MAX_RESERVED];
        let mut count = 0;
        let mut next = 0;
        while count + 1 < n.min(MAX_RESERVED + 1) {
            let Some(w) = pool.reserve(next) else { break };
            next = w + 1;
            let slot = &slots[w];
            // SAFETY: we hold `busy`; the worker finished (or lost) its previous generation
            // before the previous holder released `busy`, and the new generation is not yet
            // published, so nobody reads `task` now.
            unsafe {
                *slot.task.get() = Some(Task {
                    job: job_static,
                    index: count + 1,
                    n,
                })
            };
            slot.panicked.store(false, Ordering::Relaxed);
            let generation = slot.generation.load(Ordering::Relaxed) + 1;
            slot.generation.store(generation, Ordering::Release);
            pool.workers[w].thread().unpark();
            reserved[count] = (w as u32, generation, false);
            count += 1;
        }

        let mut failed = false;
        let mut run_here = |index: usize| {
            if panic::catch_unwind(AssertUnwindSafe(|| job(index, n))).is_err() {
                failed = true;
            }
        };
        let own = panic::catch_unwind(AssertUnwindSafe(|| job(0, n)));
        // Indices no idle worker took.
        for index in count + 1..n {
            run_here(index);
        }
        // Indices of reserved workers that have not woken up yet.
        for (i, (w, generation, revoked)) in reserved[..count].iter_mut().enumerate() {
            if claim(&slots[*w as usize].claimed, *generation) {
                *revoked = true;
                run_here(i + 1);
            }
        }
        // Wait for the workers that did wake up, then give every reservation back.
        for &(w, generation, revoked) in &reserved[..count] {
            let slot = &slots[w as usize];
            if !revoked {
                wait_done(slot, generation);
            }
            failed |= slot.panicked.load(Ordering::Relaxed);
            // SAFETY: the generation's claim is settled and, if the worker won it, the worker
            // is done with the task; we still hold `busy`.
            unsafe { *slot.task.get() = None };
            slot.busy.store(false, Ordering::Release);
        }

        if let Err(payload) = own {
            panic::resume_unwind(payload);
        }
        if failed {
            panic!("a thread-pool job panicked on one of its indices");
        }
    }
}

/// The most workers one job reserves: its other indices run on the caller. Bounds the caller's
/// stack record of its reservations (the daemon's shares are at most 256 threads).
const MAX_RESERVED: usize = 255;

/// Waits until the worker of `slot` has finished `generation` (whose claim it won).
fn wait_done(slot: &Slot, generation: u64) {
    let start = Instant::now();
    let mut spins = 0u32;
    while slot.done.load(Ordering::Acquire) != generation {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(64) && start.elapsed() > CALLER_SPIN_TIME {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Claims `generation` of a slot; true for exactly one claimant (the worker or the caller).
fn claim(claimed: &AtomicU64, generation: u64) -> bool {
    claimed
        .compare_exchange(
            generation - 1,
            generation,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
}

/// A worker's loop: wait for a new generation of its slot, claim and run it, report done.
fn worker(shared: &Shared, index: usize) {
    let slot = &shared.slots[index];
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = slot.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN_TIME {
                // A caller unparks us after publishing a generation, and an unpark that comes
                // before this park makes it return at once, so no job is missed.
                thread::park();
            } else {
                std::hint::spin_loop();
            }
        }
        if !claim(&slot.claimed, seen) {
            // The caller ran this index already (we were late); wait for the next job.
            continue;
        }
        // SAFETY: we observed the generation with Acquire, which happens-after the caller's
        // write of `task`, and we hold its claim; the caller does not write `task` again until
        // it has seen our `done` below.
        let task = unsafe { *slot.task.get() };
        if let Some(task) = task {
            let r: Result<(), Box<dyn Any + Send>> =
                panic::catch_unwind(AssertUnwindSafe(|| (task.job)(task.index, task.n)));
            if r.is_err() {
                slot.panicked.store(true, Ordering::Relaxed);
            }
        }
        slot.done.store(seen, Ordering::Release);
    }
}
