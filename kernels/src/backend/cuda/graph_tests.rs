//! CUDA graphs on the strict fake driver (`kernels/cuda/fake_driver/capture.h`): a replay equals
//! the same work run eagerly and counts as one launch; a capture records without running, with
//! kernel arguments frozen by value and buffers read when the replay runs; every call a real
//! driver refuses during a capture (a sync, an allocation, a pageable copy) invalidates it, and
//! the stream works eagerly again afterwards; a thread-local capture leaves other threads free.

use super::tests::{acts, read};
use super::*;
use crate::backend::cuda::gpu_test::{on_fake_driver, run_on_fake_driver, stats};
use llmd_testkit::Rng;

/// Values in each test buffer.
const N: usize = 1000;

/// The fake driver's counter `key` now (as of its last host sync), 0 when absent.
fn stat(key: &str) -> i64 {
    stats().get(key).copied().unwrap_or(0)
}

fn gpu() -> CudaBackend {
    CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0")
}

/// The work the tests capture: `x = (x + y) * 0.5`, then soft-capped at 3.
fn step(b: &CudaBackend, x: &mut DeviceBuf<f32>, y: &DeviceBuf<f32>) -> Result<(), BackendError> {
    b.add(x, y, N)?;
    b.scale(x, 0.5, N)?;
    b.softcap(x, 3.0, N)
}

/// Kernels [`step`] launches.
const STEP_KERNELS: i64 = 3;

/// Asserts that `r` failed with the driver error named `code` (for example
/// `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`); `what` names the case.
fn assert_failed_with<T: std::fmt::Debug>(r: Result<T, BackendError>, code: &str, what: &str) {
    match r {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(code), "{what}: expected {code}, got: {text}");
        }
        Ok(v) => panic!("{what}: expected {code}, got Ok({v:?})"),
    }
}

#[test]
fn replay_equals_eager_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::graph_tests::replay_equals_eager",
        &[],
        "replay equals eager",
    );
}

/// The captured step replayed gives bit for bit what the same step run eagerly gives; the
/// capture itself runs nothing; each replay reads the buffers as they are when it runs (written
/// between launches) with the arguments frozen at capture; a replay is one launch.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn replay_equals_eager() {
    crate::backend::cuda::gpu_test::require_cuda();
    let b = gpu();
    let mut rng = Rng(18);
    let (xs, ys) = (rng.f32s(N, 4.0), rng.f32s(N, 4.0));
    let y = acts(&b, &ys);
    let eager = |from: &[f32]| {
        let mut x = acts(&b, from);
        step(&b, &mut x, &y).expect("eager step");
        read(&b, &x, N)
    };
    let mut x = acts(&b, &xs);
    let (graph, ()) = b.capture(|| step(&b, &mut x, &y)).expect("capture");
    assert_eq!(
        read(&b, &x, N),
        xs,
        "a capture records the work without running it"
    );

    let before = (
        stat("launches"),
        stat("graph_launches"),
        stat("graph_kernels"),
    );
    b.launch_graph(&graph).expect("launch");
    let once = read(&b, &x, N);
    let after = (
        stat("launches"),
        stat("graph_launches"),
        stat("graph_kernels"),
    );
    if !stats().is_empty() {
        assert_eq!(
            (after.0 - before.0, after.1 - before.1, after.2 - before.2),
            (1, 1, STEP_KERNELS),
            "the replay is one launch replaying {STEP_KERNELS} kernels: {:?}",
            stats()
        );
    }
    assert_eq!(once, eager(&xs), "one replay equals the eager step");

    // A second replay starts from the buffer as the first left it.
    b.launch_graph(&graph).expect("launch again");
    assert_eq!(read(&b, &x, N), eager(&once), "replays chain");

    // New contents written between launches are what the replay reads.
    let fresh = rng.f32s(N, 4.0);
    b.write_activations(&mut x, &fresh).expect("write");
    b.launch_graph(&graph).expect("launch on new contents");
    assert_eq!(
        read(&b, &x, N),
        eager(&fresh),
        "the replay reads the buffer when it runs"
    );
    println!("replay equals eager");
}

#[test]
fn copies_from_pinned_memory_are_captured_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::graph_tests::copies_from_pinned_memory_are_captured",
        &[],
        "pinned copies replayed",
    );
}

/// An upload from page-locked memory is captured as a copy node that reads the host memory at
/// each replay (what the decode step's positions need), and counts as a host-to-device copy
/// each time.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn copies_from_pinned_memory_are_captured() {
    crate::backend::cuda::gpu_test::require_cuda();
    let b = gpu();
    let mut rng = Rng(19);
    let mut staging = b
        .alloc_host_staging(N)
        .expect("a GPU stages")
        .expect("pinned memory");
    let y = acts(&b, &rng.f32s(N, 4.0));
    let mut x = b.alloc_activations(N).expect("alloc");
    let first = rng.f32s(N, 4.0);
    staging.values().expect("values").copy_from_slice(&first);
    let src: &[f32] = staging.values().expect("values");
    let src_ptr = src.as_ptr();
    let (graph, ()) = b
        .capture(|| {
            let dst = x.device_address(&b.stream);
            // SAFETY: `src_ptr` points at N page-locked values that live (in `staging`) until
            // after the last replay has been read back below.
            let src = unsafe { std::slice::from_raw_parts(src_ptr, N) };
            // SAFETY: `dst` is the address of `x`, which holds N values and outlives the graph.
            unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, b.stream.cu_stream()) }
                .map_err(|e| b.err("capturing a pinned upload", e))?;
            step(&b, &mut x, &y)
        })
        .expect("capture");
    let eager = |from: &[f32]| {
        let mut e = acts(&b, from);
        step(&b, &mut e, &y).expect("eager step");
        read(&b, &e, N)
    };
    // The counters are written at host syncs: one now, for the baseline.
    b.stream.synchronize().expect("sync");
    let h2d = stat("h2d_bytes");
    b.launch_graph(&graph).expect("launch");
    assert_eq!(read(&b, &x, N), eager(&first));
    if !stats().is_empty() {
        // The eager reference uploaded N values too (pageable).
        assert_eq!(stat("h2d_bytes") - h2d, 2 * (N * 4) as i64, "{:?}", stats());
    }
    let second = rng.f32s(N, 4.0);
    staging.values().expect("values").copy_from_slice(&second);
    b.launch_graph(&graph).expect("launch");
    assert_eq!(
        read(&b, &x, N),
        eager(&second),
        "the replay copies the host memory as it is when it runs"
    );
    drop(graph);
    println!("pinned copies replayed");
}

#[test]
fn refused_calls_invalidate_the_capture_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::graph_tests::refused_calls_invalidate_the_capture",
        &[],
        "refused calls invalidate",
    );
}

/// Each call a real driver refuses while the stream captures fails with
/// `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED` and invalidates the capture; work queued after it in
/// the capture fails with `_INVALIDATED`, the capture yields no graph, and the stream runs
/// eagerly again afterwards.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn refused_calls_invalidate_the_capture() {
    crate::backend::cuda::gpu_test::require_cuda();
    let b = gpu();
    let mut rng = Rng(20);
    let ys = rng.f32s(N, 4.0);
    let y = acts(&b, &ys);
    let mut x = acts(&b, &ys);
    let mut host = vec![0.0f32; N];
    const UNSUPPORTED: &str = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
    const INVALIDATED: &str = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
    let invalidated_before = stat("captures_invalidated");
    assert_failed_with(
        b.capture(|| b.read_activations(&x, &mut host)),
        UNSUPPORTED,
        "a read into pageable memory",
    );
    assert_failed_with(
        b.capture(|| b.write_activations(&mut x, &ys)),
        UNSUPPORTED,
        "a write from pageable memory",
    );
    if on_fake_driver() {
        // Stricter than a real driver, which records a memory node instead.
        assert_failed_with(
            b.capture(|| b.alloc_activations(N).map(drop)),
            UNSUPPORTED,
            "a stream-ordered allocation",
        );
    }
    assert_failed_with(
        b.capture(|| b.stream.synchronize().map_err(|e| b.err("sync", e))),
        UNSUPPORTED,
        "a stream synchronisation",
    );
    assert_failed_with(
        b.capture(|| {
            b.stream
                .context()
                .synchronize()
                .map_err(|e| b.err("sync", e))
        }),
        UNSUPPORTED,
        "a context synchronisation",
    );
    // A refused call whose error is ignored: the next captured launch fails, and so does the
    // end of the capture.
    assert_failed_with(
        b.capture(|| {
            let _ignored = b.stream.synchronize();
            b.scale(&mut x, 2.0, N)
        }),
        INVALIDATED,
        "a launch after an ignored refusal",
    );
    assert_failed_with(
        b.capture(|| {
            let _ignored = b.stream.synchronize();
            Ok(())
        }),
        INVALIDATED,
        "the end of an invalidated capture",
    );

    // The stream runs eagerly again, and x still holds ys (nothing captured ran).
    step(&b, &mut x, &y).expect("eager step after the refused captures");
    let mut e = acts(&b, &ys);
    step(&b, &mut e, &y).expect("eager reference");
    assert_eq!(read(&b, &x, N), read(&b, &e, N));
    if !stats().is_empty() {
        assert_eq!(
            stat("captures_invalidated") - invalidated_before,
            7,
            "{:?}",
            stats()
        );
        assert_eq!(stat("graph_launches"), 0, "{:?}", stats());
    }
    println!("refused calls invalidate the capture");
}

#[test]
fn other_threads_work_during_a_capture_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::graph_tests::other_threads_work_during_a_capture",
        &[],
        "other threads work",
    );
}

/// A capture is thread-local: another worker of the process, driving another model on the same
/// GPU, allocates, uploads, synchronises and reads while it is open, and the capture still
/// yields its graph.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn other_threads_work_during_a_capture() {
    crate::backend::cuda::gpu_test::require_cuda();
    let b = gpu();
    let other = CudaBackend::new("cuda:0 (another model)", 0, 1 << 30).expect("cuda:0 again");
    let mut rng = Rng(21);
    let (xs, ys) = (rng.f32s(N, 4.0), rng.f32s(N, 4.0));
    let y = acts(&b, &ys);
    let mut x = acts(&b, &xs);
    let (graph, seen) = b
        .capture(|| {
            step(&b, &mut x, &y)?;
            let seen = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let a = acts(&other, &ys);
                        read(&other, &a, N)
                    })
                    .join()
            })
            .expect("the other thread");
            Ok::<_, BackendError>(seen)
        })
        .expect("capture beside another thread's work");
    assert_eq!(seen, ys, "the other thread's upload and read");
    b.launch_graph(&graph).expect("launch");
    let mut e = acts(&b, &xs);
    step(&b, &mut e, &y).expect("eager step");
    assert_eq!(read(&b, &x, N), read(&b, &e, N));
    println!("other threads work during a capture");
}

#[test]
fn replaying_freed_memory_faults_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::graph_tests::replaying_freed_memory_faults",
        &[],
        "freed memory faults",
    );
}

/// A graph keeps the addresses it captured: replayed after one of its buffers was freed, it
/// faults the context (`CUDA_ERROR_ILLEGAL_ADDRESS`, sticky) as the GPU's MMU would, which is
/// why a graph must be dropped with (or before) the buffers it uses. The fake driver's promise
/// only: on a real GPU the freed buffer may stay mapped in the driver's memory pool (no fault),
/// and a fault would poison the context the later tests of this process share.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn replaying_freed_memory_faults() {
    crate::backend::cuda::gpu_test::require_cuda();
    if !on_fake_driver() {
        println!("replaying freed memory: checked on the fake driver only");
        return;
    }
    let b = gpu();
    let mut rng = Rng(22);
    let y = acts(&b, &rng.f32s(N, 4.0));
    let mut x = acts(&b, &rng.f32s(N, 4.0));
    let (graph, ()) = b.capture(|| step(&b, &mut x, &y)).expect("capture");
    drop(y);
    b.launch_graph(&graph).expect("the launch itself is queued");
    let synced = b.stream.synchronize().map_err(|e| b.err("sync", e));
    assert_failed_with(
        synced,
        "CUDA_ERROR_ILLEGAL_ADDRESS",
        "a replay on freed memory",
    );
    assert!(cuda_gpu_fault(0).is_some(), "the GPU is marked failed");
    println!("replaying freed memory faults");
}

#[test]
fn staged_positions_are_the_graphs_first_copy_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::graph_tests::staged_positions_are_the_graphs_first_copy",
        &[],
        "staged positions replayed",
    );
}

/// A step that reads positions, captured after `stage_positions`: its graph copies the staged
/// positions from page-locked memory as its first node, so each replay reads the positions
/// staged before its launch (equal to the same step run eagerly at those positions); the ops
/// inside the capture copy nothing of their own; positions other than the staged ones are
/// refused during the capture; no copy goes through pageable memory and no host write races a
/// pending copy.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn staged_positions_are_the_graphs_first_copy() {
    crate::backend::cuda::gpu_test::require_cuda();
    use crate::backend::{RopeMode, RopeParams};
    const TOKENS: usize = 3;
    const HEADS: usize = 2;
    const HEAD_DIM: usize = 64;
    const VALUES: usize = TOKENS * HEADS * HEAD_DIM;
    let mut rng = Rng(23);
    let input = rng.f32s(VALUES, 1.0);
    let params = RopeParams::new(RopeMode::Neox, HEAD_DIM, 10_000.0);
    let replayed: [[u32; TOKENS]; 3] = [[6, 10, 41], [7, 11, 42], [100, 3, 64]];
    // What each replay must give: the same rope run eagerly (on a backend of its own).
    let want: Vec<Vec<f32>> = replayed
        .iter()
        .map(|positions| {
            let e = gpu();
            let mut x = acts(&e, &input);
            e.rope(&mut x, TOKENS, HEADS, HEAD_DIM, positions, params, None)
                .expect("eager rope");
            read(&e, &x, VALUES)
        })
        .collect();
    let b = gpu();
    let mut x = acts(&b, &input);
    let mut step = |positions: [u32; TOKENS]| -> Result<(), BackendError> {
        b.rope(&mut x, TOKENS, HEADS, HEAD_DIM, &positions, params, None)
    };
    // The first step runs eagerly (allocating the buffers); the second is captured.
    b.stage_positions(&[5, 9, 40]).expect("stage");
    step([5, 9, 40]).expect("eager step");
    b.stage_positions(&replayed[0]).expect("stage");
    let refused = b.capture_step(&mut || step([7, 11, 42]));
    assert!(
        matches!(&refused, Some(Err(e)) if e.to_string().contains("not staged before the capture")),
        "positions other than the staged ones are refused in a capture: {refused:?}"
    );
    let graph = b
        .capture_step(&mut || step(replayed[0]))
        .expect("a GPU captures")
        .expect("capture");
    b.synchronize().expect("sync");
    let (pinned, pageable) = (stat("h2d_pinned_bytes"), stat("pageable_copies"));
    for (positions, want) in replayed.iter().zip(&want) {
        b.stage_positions(positions).expect("stage");
        b.write_activations(&mut x, &input).expect("input");
        b.launch_step(&graph).expect("launch");
        assert_eq!(
            &read(&b, &x, VALUES),
            want,
            "the replay reads the positions staged before its launch"
        );
    }
    // Staged for another row count, the graph is not launched.
    b.stage_positions(&[1, 2]).expect("stage");
    assert!(
        b.launch_step(&graph).is_err(),
        "a graph of 3 rows with 2 staged"
    );
    if on_fake_driver() {
        b.synchronize().expect("sync");
        // Three replays copied 3 positions each from page-locked memory; only the inputs'
        // writes and the results' reads took the pageable path.
        let others = stat("pageable_copies") - pageable;
        assert_eq!(
            stat("h2d_pinned_bytes") - pinned,
            3 * 3 * 4,
            "{:?}",
            stats()
        );
        assert_eq!(others, 2 * 3, "{:?}", stats());
        assert_eq!(stat("pinned_races"), 0, "{:?}", stats());
    }
    drop(graph);
    println!("staged positions replayed");
}

#[test]
fn a_host_write_racing_a_pinned_copy_is_caught_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::graph_tests::a_host_write_racing_a_pinned_copy_is_caught",
        &[],
        "pinned race caught",
    );
}

/// The strict fake driver catches a host write into page-locked memory between queueing a copy
/// from it and the copy running (what the positions' event prevents): the fake's lazy stream
/// has not run the copy when the host writes, and the race is counted.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn a_host_write_racing_a_pinned_copy_is_caught() {
    crate::backend::cuda::gpu_test::require_cuda();
    if !on_fake_driver() {
        println!("SKIPPED: the race counter is the fake driver's");
        println!("pinned race caught");
        return;
    }
    let b = gpu();
    let mut staging = b
        .alloc_host_staging(N)
        .expect("a GPU stages")
        .expect("pinned memory");
    let x = b.alloc_activations(N).expect("alloc");
    b.synchronize().expect("sync");
    let races = stat("pinned_races");
    staging.values().expect("values").fill(1.0);
    let src: &[f32] = staging.values().expect("values");
    // SAFETY: `x` holds N values and outlives the copy (synchronised below); `src` is N
    // page-locked values that live until after the synchronisation.
    unsafe {
        cudarc::driver::result::memcpy_htod_async(
            x.device_address(&b.stream),
            src,
            b.stream.cu_stream(),
        )
    }
    .expect("copy");
    // The racing write: the copy is still queued on the lazy stream.
    staging.values().expect("values").fill(2.0);
    b.synchronize().expect("sync");
    assert_eq!(stat("pinned_races") - races, 1, "{:?}", stats());
    println!("pinned race caught");
}
