//! What a real GPU box would break on its first day (issue 23), checked on the strict fake
//! driver: each test runs in a child process on two fake GPUs and reads the driver's counters.
//! Frees in the wrong context, peer copies staged through the host, stage handoffs through host
//! syncs, staging memory pinned for one GPU only, and a kernel fault that must mark the GPU
//! failed.

use super::tests::{acts, read};
use super::*;
use crate::backend::cuda::gpu_test::{run_on_fake_driver, stats};
use llmd_testkit::Rng;

/// Two fake GPUs.
const TWO: (&str, &str) = ("LLMD_FAKE_CUDA_DEVICES", "2");

/// `stats()[key]`, 0 when absent.
fn stat(key: &str) -> i64 {
    stats().get(key).copied().unwrap_or(0)
}

fn gpus() -> (CudaBackend, CudaBackend) {
    let gpu0 = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    let gpu1 = CudaBackend::new("cuda:1", 1, 1 << 30).expect("cuda:1");
    (gpu0, gpu1)
}

#[test]
fn buffers_free_in_their_own_context_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::strict_tests::buffers_free_in_their_own_context",
        &[TWO],
        "freed in their own contexts",
    );
}

/// A buffer of one GPU dropped while the other GPU's context is current (a worker driving two
/// stages) is freed in its own context: nothing is refused, and no later call of either GPU
/// reports a stale error.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn buffers_free_in_their_own_context() {
    crate::backend::cuda::gpu_test::require_cuda();
    let (gpu0, gpu1) = gpus();
    let values: Vec<f32> = (0..256).map(|i| i as f32).collect();
    for _ in 0..4 {
        let on0 = acts(&gpu0, &values);
        let on1 = acts(&gpu1, &values); // leaves cuda:1's context current
        drop(on0);
        assert_eq!(read(&gpu1, &on1, 256), values);
        drop(on1);
        let again = acts(&gpu0, &values);
        assert_eq!(
            read(&gpu0, &again, 256),
            values,
            "cuda:0 works after the drops"
        );
    }
    assert_eq!(gpu0.free_failures().0, 0, "{:?}", gpu0.free_failures());
    assert_eq!(gpu1.free_failures().0, 0, "{:?}", gpu1.free_failures());
    assert_eq!(stat("refused_context"), 0, "{:?}", stats());
    println!("buffers freed in their own contexts");
}

#[test]
fn peer_copies_go_direct_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::strict_tests::peer_copies_go_direct",
        &[TWO],
        "peer copies: direct",
    );
    run_on_fake_driver(
        "backend::cuda::strict_tests::peer_copies_go_direct",
        &[TWO, ("LLMD_FAKE_CUDA_P2P", "0")],
        "peer copies: through the host",
    );
}

/// Two GPUs that allow peer access copy weights and activations peer to peer: both contexts
/// and both memory pools are opened at backend creation, and the pair is reported as direct.
/// Where the hardware does not allow it, the pair is reported as going through the host, with
/// the reason, and the copies still arrive.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn peer_copies_go_direct() {
    crate::backend::cuda::gpu_test::require_cuda();
    let p2p = std::env::var("LLMD_FAKE_CUDA_P2P").map_or(true, |v| v != "0");
    let (gpu0, gpu1) = gpus();
    let mut rng = Rng(5);
    let (rows, cols) = (32, 256);
    let data =
        crate::quant::quantize(GgmlType::Q8_0, &rng.f32s(rows * cols, 1.0)).expect("quantize");
    let w0 = gpu0
        .upload_weight(&HostTensor {
            name: "w",
            ty: GgmlType::Q8_0,
            rows,
            cols,
            data: &data,
        })
        .expect("upload");
    let w1 = gpu1
        .import_weight(&gpu0.weight_view(&w0).expect("view"))
        .expect("peer copy");
    let mut back = vec![0; data.len()];
    gpu1.weight_view(&w1)
        .expect("view")
        .bytes
        .read_into(&mut back)
        .expect("read");
    assert_eq!(back, data, "the weight arrived whole");
    let values = rng.f32s(cols, 1.0);
    let a = acts(&gpu0, &values);
    let exported = gpu0
        .export_activations(&a, cols)
        .expect("export")
        .expect("a GPU exports");
    let mut b = gpu1.alloc_activations(cols).expect("alloc");
    assert!(gpu1.import_activations(&mut b, &exported).expect("import"));
    assert_eq!(
        read(&gpu1, &b, cols),
        values,
        "the activations arrived whole"
    );
    let paths = cuda_peer_paths();
    let pair = paths
        .iter()
        .find(|(a, b, _)| (*a, *b) == (0, 1))
        .map(|(_, _, path)| path.clone())
        .expect("the pair is reported");
    let (direct, staged) = (stat("peer_copies_direct"), stat("peer_copies_staged"));
    println!("peer path {pair:?}, {direct} direct and {staged} staged copies");
    if p2p {
        assert_eq!(pair, PeerPath::Direct);
        assert!(direct >= 2 && staged == 0, "{:?}", stats());
        println!("peer copies: direct");
    } else {
        assert!(
            matches!(&pair, PeerPath::ThroughHost(why) if why.contains("no peer access")),
            "{pair:?}"
        );
        assert!(direct == 0 && staged >= 2, "{:?}", stats());
        println!("peer copies: through the host");
    }
}

#[test]
fn stage_handoffs_wait_on_events_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::strict_tests::stage_handoffs_wait_on_events",
        &[TWO],
        "handoff without host syncs",
    );
}

/// Activations handed from one GPU stage to the next cross without the host waiting: the
/// consumer's stream waits for the producer's writes (an event), and the producer's stream
/// waits for the consumer's copy before it overwrites its buffer.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn stage_handoffs_wait_on_events() {
    crate::backend::cuda::gpu_test::require_cuda();
    let (gpu0, gpu1) = gpus();
    let n = 4096;
    let first: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let second = vec![-1.0f32; n];
    for _ in 0..3 {
        let mut a = acts(&gpu0, &first);
        let mut b = gpu1.alloc_activations(n).expect("alloc");
        let _ = read(&gpu0, &a, 1); // both streams idle, counters written
        let syncs = stat("host_syncs");
        // Queued on cuda:0 and not run yet (the fake's streams are lazy): the handoff must
        // order the copy after it.
        gpu0.scale(&mut a, 2.0, n).expect("scale");
        let exported = gpu0
            .export_activations(&a, n)
            .expect("export")
            .expect("GPU");
        assert!(gpu1.import_activations(&mut b, &exported).expect("import"));
        // cuda:0 overwrites its buffer at once: the copy must already have been ordered first.
        gpu0.write_activations(&mut a, &second).expect("overwrite");
        let got = read(&gpu1, &b, n);
        assert_eq!(
            stat("host_syncs") - syncs,
            2,
            "only the read on cuda:1 waits (its copy and its synchronize): {:?}",
            stats()
        );
        let want: Vec<f32> = first.iter().map(|v| v * 2.0).collect();
        assert_eq!(got, want, "the consumer got the producer's finished values");
        assert_eq!(read(&gpu0, &a, n), second);
    }
    println!("handoff without host syncs");
}

#[test]
fn staging_memory_is_pinned_for_every_gpu_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::strict_tests::staging_memory_is_pinned_for_every_gpu",
        &[TWO],
        "staging pinned for both GPUs",
    );
}

/// The pipeline's page-locked staging buffer comes from one stage's GPU but every GPU stage
/// copies from and to it: it must be page-locked for all of them (portable), or the other GPUs'
/// copies fall back to staged, pageable ones.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn staging_memory_is_pinned_for_every_gpu() {
    crate::backend::cuda::gpu_test::require_cuda();
    let (gpu0, gpu1) = gpus();
    let n = 1024;
    let mut staging = gpu0
        .alloc_host_staging(n)
        .expect("a GPU offers staging")
        .expect("page-locked memory");
    let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    staging.values().expect("values").copy_from_slice(&values);
    let mut b = gpu1.alloc_activations(n).expect("alloc");
    let _ = read(&gpu1, &b, 1);
    let pageable = stat("pageable_copies");
    gpu1.write_activations(&mut b, staging.values().expect("values"))
        .expect("write");
    gpu1.read_activations(&b, staging.values().expect("values"))
        .expect("read back");
    assert_eq!(staging.values().expect("values"), &values[..]);
    assert_eq!(
        stat("pageable_copies"),
        pageable,
        "cuda:1 copied from and to the staging as page-locked memory: {:?}",
        stats()
    );
    println!("staging pinned for both GPUs");
}

#[test]
fn a_kernel_fault_marks_the_gpu_failed_on_the_fake_driver() {
    run_on_fake_driver(
        "backend::cuda::strict_tests::a_kernel_fault_marks_the_gpu_failed",
        &[TWO, ("LLMD_FAKE_CUDA_FAULT", "add_f32:2")],
        "cuda:0 failed, cuda:1 serves",
    );
}

/// A kernel fault is sticky: the GPU is recorded as failed with the reason, every backend on it
/// refuses work naming it, no new backend opens there, and the other GPU keeps working.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn a_kernel_fault_marks_the_gpu_failed() {
    crate::backend::cuda::gpu_test::require_cuda();
    let (gpu0, gpu1) = gpus();
    let twin = CudaBackend::new("cuda:0b", 0, 1 << 30).expect("cuda:0 again");
    let ones = vec![1.0f32; 512];
    let mut a = acts(&gpu0, &ones);
    let b = acts(&gpu0, &ones);
    gpu0.add(&mut a, &b, 512).expect("the first add runs");
    assert_eq!(read(&gpu0, &a, 512), vec![2.0; 512]);
    assert_eq!(cuda_gpu_fault(0), None);
    // The second add_f32 faults (LLMD_FAKE_CUDA_FAULT); the launch itself is queued fine, the
    // fault shows when the work is waited for.
    gpu0.add(&mut a, &b, 512).expect("queued");
    let mut out = vec![0.0; 512];
    let err = gpu0
        .read_activations(&a, &mut out)
        .expect_err("the fault surfaces");
    let fault = cuda_gpu_fault(0).expect("GPU 0 is marked failed");
    assert!(fault.contains("illegal memory access"), "{fault}");
    assert!(err.to_string().contains("GPU 0 failed"), "{err}");
    // Every backend on GPU 0 refuses, naming the fault; no new one opens.
    let twin_err = twin
        .alloc_activations(16)
        .map(|_| ())
        .expect_err("cuda:0b refuses");
    assert!(twin_err.to_string().contains("GPU 0 failed"), "{twin_err}");
    let reopen = CudaBackend::new("cuda:0c", 0, 1 << 30)
        .map(|_| ())
        .expect_err("no new backend");
    assert!(reopen.to_string().contains("failed"), "{reopen}");
    // GPU 1 keeps serving.
    let c = acts(&gpu1, &ones);
    assert_eq!(read(&gpu1, &c, 512), ones);
    assert_eq!(cuda_gpu_fault(1), None);
    println!("cuda:0 failed, cuda:1 serves");
}

#[test]
fn kernels_load_for_each_gpu_and_driver_on_the_fake_driver() {
    for (expect, env) in [
        ("cubin", &[][..]),
        ("cubin", &[("LLMD_FAKE_CUDA_CC", "8.6")][..]),
        ("cubin", &[("LLMD_FAKE_CUDA_CC", "9.0")][..]),
        ("ptx", &[("LLMD_FAKE_CUDA_CC", "12.0")][..]),
        (
            "old-driver",
            &[
                ("LLMD_FAKE_CUDA_DRIVER", "12020"),
                ("LLMD_FAKE_CUDA_PTX_ISA", "8.2"),
            ][..],
        ),
        ("old-gpu", &[("LLMD_FAKE_CUDA_CC", "7.0")][..]),
    ] {
        let mut env = env.to_vec();
        env.push(("LLMD_TEST_EXPECT", expect));
        run_on_fake_driver(
            "backend::cuda::strict_tests::kernels_load_for_each_gpu_and_driver",
            &env,
            &format!("kernels: {expect}"),
        );
    }
}

/// The CUBIN of the GPU's architecture loads where one is shipped (the fake driver checks the
/// image's architecture against the device), the PTX on newer GPUs; a driver older than 550 is
/// refused with the requirement and what was found, a GPU older than Ampere by its compute
/// capability.
#[test]
#[ignore = "needs CUDA: its launcher runs it on the fake driver; --include-ignored on a GPU"]
fn kernels_load_for_each_gpu_and_driver() {
    let expect = std::env::var("LLMD_TEST_EXPECT").unwrap_or_default();
    if expect == "old-driver" {
        let err = cuda_available().expect_err("the driver is too old");
        assert_eq!(
            err,
            "NVIDIA driver 550 or newer is required, found a driver for CUDA 12.2 (release 535)"
        );
        println!("kernels: {expect}");
        return;
    }
    crate::backend::cuda::gpu_test::require_cuda();
    if expect == "old-gpu" {
        let err = CudaBackend::new("cuda:0", 0, 1 << 30)
            .map(|_| ())
            .expect_err("refused");
        assert!(err.to_string().contains("compute capability 7.0"), "{err}");
        println!("kernels: {expect}");
        return;
    }
    let gpu = CudaBackend::new("cuda:0", 0, 1 << 30).expect("cuda:0");
    let want = if expect == "ptx" {
        ModuleImage::Ptx
    } else {
        ModuleImage::Cubin
    };
    assert!(
        gpu.module_images().iter().all(|&image| image == want),
        "{:?}",
        gpu.module_images()
    );
    // And they run.
    let values: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let mut a = acts(&gpu, &values);
    gpu.scale(&mut a, 0.5, 256).expect("scale");
    let half: Vec<f32> = values.iter().map(|v| v * 0.5).collect();
    assert_eq!(read(&gpu, &a, 256), half);
    println!("kernels: {expect}");
}
