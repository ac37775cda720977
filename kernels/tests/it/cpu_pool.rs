//! The thread pool: every thread index runs exactly once per call, calls can follow each other
//! quickly, a panic in a job reaches the caller without breaking the pool, and a one-thread pool
//! runs inline. Also reports the per-call overhead (printed with `--nocapture`; not asserted,
//! since a loaded machine can deschedule a worker for a whole time slice).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use llmd_kernels::cpu::ThreadPool;

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
