//! The CPU backend's packed weights: uploaded weights of the packed types are stored packed when
//! the CPU runs the packed kernels, charged exactly their GGUF size, handed to other devices in
//! GGUF's bytes, moved between CPU devices without change, and embedded and multiplied as the
//! GGUF weight would be.

use std::sync::Arc;

use super::*;
use crate::cpu::{packed, ThreadPool};
use crate::quant::{self, GgmlType};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn packed_weights_keep_their_gguf_bytes_charge_and_results() {
    let pool = Arc::new(ThreadPool::new(2).expect("threads"));
    let memory = DeviceMemory::new(1 << 30);
    let a = CpuBackend::new("cpu:0", Arc::clone(&memory), Arc::clone(&pool));
    let b = CpuBackend::new("cpu:1", DeviceMemory::new(1 << 30), pool);
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
    ] {
        let (rows, cols) = (32usize, 512usize);
        let gguf = quant::quantize(ty, &values(rows * cols, ty as u64)).expect("quantize");
        let t = HostTensor {
            name: "w",
            ty,
            rows,
            cols,
            data: &gguf,
        };
        let before = memory.used();
        let w = a.upload_weight(&t).expect("upload");
        assert_eq!(
            a.weight_bytes(&w),
            gguf.len() as u64,
            "{ty}: charged as GGUF"
        );
        assert_eq!(memory.used() - before, gguf.len() as u64);
        assert_eq!(
            w.layout() == crate::cpu::Layout::Packed,
            packed::should_pack(ty, rows, cols)
        );

        // Others see GGUF's bytes.
        let view = a.weight_view(&w).expect("view");
        let mut seen = vec![0u8; view.bytes.len];
        view.bytes.read_into(&mut seen).expect("read");
        assert_eq!(seen, gguf, "{ty}: the view is GGUF's layout");
        assert_eq!(b.import_cost(&view), gguf.len() as u64);
        let moved = b.import_weight(&view).expect("import");
        assert_eq!(moved.layout(), w.layout());
        assert_eq!(moved.bytes(), w.bytes(), "{ty}: moved unchanged");

        // Rows embed as their GGUF rows dequantize.
        let ids = [0u32, 17, 31];
        let mut out = a.alloc_activations(ids.len() * cols).expect("alloc");
        a.embed(&w, &ids, 1.0, &mut out).expect("embed");
        let rb = gguf.len() / rows;
        for (i, &id) in ids.iter().enumerate() {
            let mut row = vec![0.0f32; cols];
            let id = id as usize;
            quant::dequantize(ty, &gguf[id * rb..(id + 1) * rb], &mut row).expect("dequantize");
            assert_eq!(&out[i * cols..(i + 1) * cols], &row[..], "{ty} row {id}");
        }

        // The product equals the one of a GGUF-layout copy of the same weight.
        let n = 5;
        let x = values(n * cols, 7);
        let mut xa = a.alloc_activations(n * cols).expect("alloc");
        a.write_activations(&mut xa, &x).expect("write");
        let mut got = a.alloc_activations(n * rows).expect("alloc");
        a.matmul(&w, &xa, n, &mut got).expect("matmul");
        let mut moved_out = b.alloc_activations(n * rows).expect("alloc");
        b.matmul(&moved, &xa, n, &mut moved_out).expect("matmul");
        assert_eq!(got, moved_out);
        let plain = crate::cpu::QMatrix {
            ty,
            rows,
            cols,
            data: &gguf,
            layout: crate::cpu::Layout::Gguf,
        };
        let mut want = vec![0.0f32; n * rows];
        let mut scratch = crate::cpu::MatmulScratch::new();
        let single = ThreadPool::new(1).expect("thread");
        crate::cpu::matmul(&single, &plain, &x, n, &mut want, &mut scratch).expect("matmul");
        for (g, e) in got.iter().zip(&want) {
            assert!(
                (g - e).abs() <= 1e-4 * e.abs().max(1.0),
                "{ty}: packed {g} vs GGUF {e}"
            );
        }
    }
}

#[test]
fn weights_filled_in_place_equal_uploaded_ones() {
    let pool = Arc::new(ThreadPool::new(1).expect("threads"));
    let memory = DeviceMemory::new(1 << 30);
    let cpu = CpuBackend::new("cpu:0", Arc::clone(&memory), pool);
    for (ty, rows) in [
        (GgmlType::Q4_K, 48),
        (GgmlType::Q6_K, 32),
        (GgmlType::Q8_0, 16),
        (GgmlType::Q5_0, 17),
        (GgmlType::F32, 1),
        (GgmlType::F16, 3),
    ] {
        let cols = 512;
        let gguf = quant::quantize(ty, &values(rows * cols, 5)).expect("quantize");
        let t = HostTensor {
            name: "w",
            ty,
            rows,
            cols,
            data: &gguf,
        };
        let uploaded = cpu.upload_weight(&t).expect("upload");
        let before = memory.used();
        let filled = cpu
            .upload_weight_filled("w", ty, rows, cols, &mut |dst| {
                dst.copy_from_slice(&gguf);
                Ok(())
            })
            .expect("filled");
        assert_eq!(filled.layout(), uploaded.layout(), "{ty}");
        assert_eq!(filled.bytes(), uploaded.bytes(), "{ty}");
        assert_eq!(
            filled.vector("test").ok(),
            uploaded.vector("test").ok(),
            "{ty}"
        );
        assert_eq!(memory.used() - before, cpu.weight_bytes(&filled), "{ty}");
        let err = cpu
            .upload_weight_filled("w", ty, rows, cols, &mut |_| {
                Err(shape("fill", "the file changed".into()))
            })
            .unwrap_err();
        assert!(err.to_string().contains("the file changed"), "{err}");
        assert_eq!(memory.used() - before, cpu.weight_bytes(&filled), "{ty}");
    }
}
