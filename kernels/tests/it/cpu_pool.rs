//! The compute pool and its shares: every index runs exactly once per call, calls can follow each
//! other quickly, a panic in a job reaches the caller without breaking the pool, a one-thread pool
//! runs inline, a share is at most its pool, and shares (and threads on one share) run at once
//! on one pool with every index of every call run exactly once. Also reports the per-call overhead (printed with `--nocapture`; not asserted,
//! since a loaded machine can deschedule a worker for a whole time slice).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use llmd_kernels::cpu::{ComputePool, ThreadPool};

#[test]
fn every_index_runs_once_per_call() {
    for n in [1usize, 2, 3, 5] {
        let pool = ThreadPool::new(n).expect("spawn");
        assert_eq!(pool.n_threads(), n);
        for _ in 0..200 {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i, total| {
                assert_eq!(total, n);
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }
}

#[test]
fn borrowed_data_is_written_by_all_threads() {
    let pool = ThreadPool::new(3).expect("spawn");
    let sums: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
    let data: Vec<usize> = (0..3000).collect();
    pool.run(&|i, n| {
        let s: usize = data.iter().skip(i).step_by(n).sum();
        sums[i].store(s, Ordering::Relaxed);
    });
    let total: usize = sums.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    assert_eq!(total, data.iter().sum::<usize>());
}

#[test]
fn a_panicking_job_reaches_the_caller_and_the_pool_survives() {
    let pool = ThreadPool::new(2).expect("spawn");
    let worker_panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run(&|i, _| {
            if i == 1 {
                panic!("worker job failed");
            }
        })
    }));
    assert!(worker_panic.is_err());
    let caller_panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run(&|i, _| {
            if i == 0 {
                panic!("caller share failed");
            }
        })
    }));
    assert!(caller_panic.is_err());
    let count = AtomicUsize::new(0);
    pool.run(&|_, _| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(count.load(Ordering::Relaxed), 2);
}

#[test]
fn many_quick_calls_and_their_overhead() {
    let pool = ThreadPool::new(2).expect("spawn");
    let count = AtomicUsize::new(0);
    let job = |_: usize, _: usize| {
        count.fetch_add(1, Ordering::Relaxed);
    };
    for _ in 0..1000 {
        pool.run(&job);
    }
    let calls = 5_000;
    let start = Instant::now();
    for _ in 0..calls {
        pool.run(&job);
    }
    let per_call = start.elapsed() / calls;
    println!("thread pool (2 threads): {per_call:?} per empty run() call");
    assert_eq!(count.load(Ordering::Relaxed), 2 * (1000 + calls as usize));
}

#[test]
fn a_share_is_at_least_one_and_at_most_its_pool() {
    let pool = ComputePool::new(3).expect("spawn");
    assert_eq!(pool.threads(), 3);
    assert_eq!(pool.share(0).n_threads(), 1);
    assert_eq!(pool.share(2).n_threads(), 2);
    assert_eq!(pool.share(8).n_threads(), 3);
    assert_eq!(ComputePool::single().share(4).n_threads(), 1);
}

/// Runs `calls` jobs on `share`, checking that each runs every index exactly once.
fn every_index_once(share: &ThreadPool, calls: usize) {
    let n = share.n_threads();
    for _ in 0..calls {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        share.run(&|i, total| {
            assert_eq!(total, n);
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }
}

#[test]
fn shares_run_at_once_on_one_pool() {
    let pool = ComputePool::new(3).expect("spawn");
    // More indices in flight than the pool has threads: callers run what no worker takes.
    let shares = [pool.share(3), pool.share(2), pool.share(3)];
    std::thread::scope(|s| {
        for share in &shares {
            s.spawn(|| every_index_once(share, 500));
            // Two callers on one share at once.
            s.spawn(|| every_index_once(share, 200));
        }
    });
}

#[test]
fn a_panic_in_one_share_leaves_the_others_working() {
    let pool = ComputePool::new(2).expect("spawn");
    let (a, b) = (pool.share(2), pool.share(2));
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.run(&|i, _| {
            if i == 1 {
                panic!("share a failed");
            }
        })
    }));
    assert!(failed.is_err());
    every_index_once(&b, 100);
    every_index_once(&a, 100);
}
