//! The CPU backend's KV caches: storage in the cache's types (f16 values or ggml's Q8_0 / Q4_0
//! blocks), the store that converts keys and values as llama.cpp's CPU backend does (rotated
//! first where the cache's [`super::super::KvRotation`] says), attention over a cache split
//! between the pool's threads (the arithmetic is `crate::cpu::attention`'s, around it the query
//! and output rotations), and the byte views a cache is copied through.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::super::{
    check_len, f16_bytes, f16_bytes_mut, AttentionParams, BackendError, DeviceBytes, KvRotation,
    KvShape, KvType, KvTypes, KvView, Lease,
};
use super::CpuBackend;
use crate::cpu::attention::{attend, AttentionScratch, CacheRows, KvRows, Logits};
use crate::cpu::hadamard;
use crate::cpu::quantize::quantize_row_q8_0;
use crate::quant::quantize::quantize_row_q4_0;
use crate::quant::view::zeroed_block;
use crate::quant::{blocks_as_bytes, blocks_as_bytes_mut, BlockQ4_0, BlockQ8_0, QK};

/// One layer's KV cache of one sequence in host memory.
#[derive(Debug)]
pub struct CpuKv {
    /// Its shape and types.
    shape: KvShape,
    /// Keys: `(capacity, n_kv_heads * head_dim)` values of `shape.types.k`.
    k: KvData,
    /// Values: the same layout, of `shape.types.v`.
    v: KvData,
    /// The bytes charged to the device's budget.
    lease: Lease,
}

impl CpuKv {
    /// Bytes charged to the budget.
    pub(super) fn bytes(&self) -> u64 {
        self.lease.bytes()
    }
}

/// Keys or values in their storage type.
#[derive(Debug)]
enum KvData {
    /// f16 values.
    F16(Vec<f16>),
    /// Q8_0 blocks of 32 values.
    Q8_0(Vec<BlockQ8_0>),
    /// Q4_0 blocks of 32 values.
    Q4_0(Vec<BlockQ4_0>),
}

impl KvData {
    /// `values` zero values of `ty` (a whole number of blocks).
    fn zeroed(ty: KvType, values: usize) -> Self {
        match ty {
            KvType::F16 => KvData::F16(vec![f16::ZERO; values]),
            KvType::Q8_0 => KvData::Q8_0(vec![zeroed_block(); values / QK]),
            KvType::Q4_0 => KvData::Q4_0(vec![zeroed_block(); values / QK]),
        }
    }

    /// The rows as attention reads them.
    fn rows(&self) -> KvRows<'_> {
        match self {
            KvData::F16(v) => KvRows::F16(v),
            KvData::Q8_0(b) => KvRows::Q8_0(b),
            KvData::Q4_0(b) => KvRows::Q4_0(b),
        }
    }

    /// Writes `src` (whole blocks) converted to the storage type at value `at` (a block
    /// boundary): f16 with F16C where the CPU has it (round to nearest even either way), Q8_0 as
    /// ggml-cpu's x86 `quantize_row_q8_0`, Q4_0 as `quantize_row_q4_0_ref` (what ggml's
    /// `set_rows` into a cache of that type runs).
    fn store(&mut self, at: usize, src: &[f32]) {
        match self {
            KvData::F16(v) => v[at..at + src.len()].convert_from_f32_slice(src),
            KvData::Q8_0(b) => quantize_row_q8_0(src, &mut b[at / QK..(at + src.len()) / QK]),
            KvData::Q4_0(b) => quantize_row_q4_0(src, &mut b[at / QK..(at + src.len()) / QK]),
        }
    }

    /// [`KvData::store`] of `src` rotated in chunks of `rot` values first if `Some` (through
    /// `buf`), as llama.cpp rotates a quantized cache's rows before storing them.
    fn store_rotated(&mut self, at: usize, src: &[f32], rot: Option<usize>, buf: &mut Vec<f32>) {
        match rot {
            None => self.store(at, src),
            Some(n) => {
                buf.clear();
                buf.extend_from_slice(src);
                hadamard::rotate(buf, n);
                self.store(at, buf);
            }
        }
    }

    /// The bytes of the first `values` values.
    fn bytes(&self, values: usize) -> &[u8] {
        match self {
            KvData::F16(v) => f16_bytes(&v[..values]),
            KvData::Q8_0(b) => blocks_as_bytes(&b[..values / QK]),
            KvData::Q4_0(b) => blocks_as_bytes(&b[..values / QK]),
        }
    }

    /// The bytes of the first `values` values, to be written.
    fn bytes_mut(&mut self, values: usize) -> &mut [u8] {
        match self {
            KvData::F16(v) => f16_bytes_mut(&mut v[..values]),
            KvData::Q8_0(b) => blocks_as_bytes_mut(&mut b[..values / QK]),
            KvData::Q4_0(b) => blocks_as_bytes_mut(&mut b[..values / QK]),
        }
    }
}

impl CpuBackend {
    /// [`super::super::Backend::alloc_kv`].
    pub(super) fn new_kv(
        &self,
        capacity: usize,
        n_kv_heads: usize,
        head_dim: usize,
        types: KvTypes,
    ) -> Result<CpuKv, BackendError> {
        let shape = KvShape::new(capacity, n_kv_heads, head_dim, types)?;
        let lease = self.charge("KV cache", shape.bytes())?;
        Ok(CpuKv {
            shape,
            k: KvData::zeroed(types.k, shape.values()),
            v: KvData::zeroed(types.v, shape.values()),
            lease,
        })
    }

    /// [`super::super::Backend::kv_store`].
    pub(super) fn store_kv(
        &self,
        kv: &mut CpuKv,
        k: &[f32],
        v: &[f32],
        first_row: usize,
        positions: &[u32],
    ) -> Result<(), BackendError> {
        let w = kv.shape.width();
        check_len("kv_store", k.len(), (first_row + positions.len()) * w)?;
        check_len("kv_store", v.len(), (first_row + positions.len()) * w)?;
        kv.shape.check_positions("kv_store", positions)?;
        let rot = kv.shape.rotation();
        let mut buf = Vec::with_capacity(if rot == KvRotation::default() { 0 } else { w });
        for (i, &pos) in positions.iter().enumerate() {
            let (row, at) = (first_row + i, pos as usize * w);
            kv.k.store_rotated(at, &k[row * w..(row + 1) * w], rot.k, &mut buf);
            kv.v.store_rotated(at, &v[row * w..(row + 1) * w], rot.v, &mut buf);
        }
        Ok(())
    }

    /// [`super::super::Backend::attention`]: the (token, head) items are split between the
    /// pool's threads, each computed by [`attend`].
    pub(super) fn attend_kv(
        &self,
        q: &[f32],
        kv: &CpuKv,
        first_row: usize,
        positions: &[u32],
        p: AttentionParams,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        let hd = p.head_dim;
        let qw = p.n_heads * hd;
        kv.shape.check_attention("attention", &p)?;
        check_len("attention", q.len(), (first_row + positions.len()) * qw)?;
        check_len("attention", out.len(), (first_row + positions.len()) * qw)?;
        kv.shape.check_positions("attention", positions)?;
        let cache = CacheRows {
            k: kv.k.rows(),
            v: kv.v.rows(),
            width: kv.shape.width(),
            head_dim: hd,
        };
        let logits = Logits {
            scale: p.scale,
            softcap: p.softcap,
        };
        let group = p.n_heads / p.n_kv_heads;
        let n_items = positions.len() * p.n_heads;
        let out_rows = &mut out[first_row * qw..(first_row + positions.len()) * qw];
        let out_ptr = SharedOut(out_rows.as_mut_ptr());
        let out_len = out_rows.len();
        let rot = kv.shape.rotation();
        self.pool.run(&|ti, nt| {
            let mut scratch = AttentionScratch::default();
            let mut acc = vec![0.0f32; hd];
            let mut q_rot = Vec::new();
            let mut item = ti;
            while item < n_items {
                let (i, h) = (item / p.n_heads, item % p.n_heads);
                let pos = positions[i] as usize;
                let first = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let mut qrow =
                    &q[(first_row + i) * qw + h * hd..(first_row + i) * qw + (h + 1) * hd];
                // Rotated keys are dotted with the query rotated alike; a rotated value
                // accumulation is rotated back.
                if let Some(n) = rot.k {
                    q_rot.clear();
                    q_rot.extend_from_slice(qrow);
                    hadamard::rotate(&mut q_rot, n);
                    qrow = &q_rot;
                }
                attend(
                    &cache,
                    h / group,
                    first..=pos,
                    qrow,
                    logits,
                    &mut scratch,
                    &mut acc,
                );
                if let Some(n) = rot.v {
                    hadamard::rotate(&mut acc, n);
                }
                let at = i * qw + h * hd;
                debug_assert!(at + hd <= out_len);
                // SAFETY: each (token, head) item writes its own disjoint `hd`-wide slice of the
                // output rows, inside `out_rows` (at + hd <= out_len); items are split between
                // threads without overlap and `run` returns only after every thread finished.
                unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out_ptr.get().add(at), hd) };
                item += nt;
            }
        });
        Ok(())
    }

    /// [`super::super::Backend::kv_view`].
    pub(super) fn view_kv<'a>(
        &'a self,
        kv: &'a CpuKv,
        len: usize,
    ) -> Result<KvView<'a>, BackendError> {
        let n = kv.shape.values_of("kv_view", len)?;
        Ok(KvView {
            len,
            n_kv_heads: kv.shape.n_kv_heads,
            head_dim: kv.shape.head_dim,
            types: kv.shape.types,
            k: DeviceBytes::host(&self.name, kv.k.bytes(n)),
            v: DeviceBytes::host(&self.name, kv.v.bytes(n)),
        })
    }

    /// [`super::super::Backend::import_kv`].
    pub(super) fn copy_kv(&self, src: &KvView<'_>, capacity: usize) -> Result<CpuKv, BackendError> {
        let (shape, _, _) = src.check("import_kv", capacity)?;
        let n = shape.values_of("import_kv", src.len)?;
        let mut kv = self.new_kv(capacity, src.n_kv_heads, src.head_dim, src.types)?;
        src.k.read_into(kv.k.bytes_mut(n))?;
        src.v.read_into(kv.v.bytes_mut(n))?;
        Ok(kv)
    }
}

/// A raw output pointer shared by the attention workers, each writing a disjoint part.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the pointer is only used to write disjoint slices while `ThreadPool::run` holds the
// borrow of the output buffer (see the attention loop).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::{Backend, DeviceMemory, HostKv};
    use crate::cpu::quantize::BlockQ8_0Act;
    use crate::cpu::ThreadPool;
    use crate::quant::dequantize;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The bytes `ty`'s store writes for `x` (one whole row), rotated first by `rot`.
    fn stored(ty: KvType, x: &[f32], rot: Option<usize>) -> Vec<u8> {
        let mut x = x.to_vec();
        if let Some(n) = rot {
            hadamard::rotate(&mut x, n);
        }
        let mut data = KvData::zeroed(ty, x.len());
        data.store(0, &x);
        data.bytes(x.len()).to_vec()
    }

    /// `x` rotated by the normalised Hadamard matrix of size `n`, in f64 from its definition.
    fn rotate_f64(x: &[f64], n: Option<usize>) -> Vec<f64> {
        let Some(n) = n else {
            return x.to_vec();
        };
        let s = 1.0 / (n as f64).sqrt();
        x.chunks(n)
            .flat_map(|c| {
                (0..n).map(move |i| {
                    (0..n)
                        .map(|j| {
                            let sign = if (i & j).count_ones() % 2 == 0 { s } else { -s };
                            sign * c[j]
                        })
                        .sum::<f64>()
                })
            })
            .collect()
    }

    #[test]
    fn stores_convert_as_llama_cpp_and_attention_reads_every_type() {
        // 8 query heads over 2 KV heads of 64; 4 prompt tokens after one unrelated row, then a
        // decode step; the second query sees a window of 3 positions.
        let (n_heads, n_kv, hd, capacity) = (8, 2, 64, 16);
        let (kw, qw) = (n_kv * hd, n_heads * hd);
        let b = CpuBackend::new(
            "cpu:0",
            DeviceMemory::new(1 << 30),
            Arc::new(ThreadPool::new(2).expect("threads")),
        );
        for k_ty in KvType::ALL {
            for v_ty in KvType::ALL {
                let types = KvTypes { k: k_ty, v: v_ty };
                let mut kv = b.alloc_kv(capacity, n_kv, hd, types).expect("alloc");
                assert_eq!(
                    b.kv_bytes(&kv),
                    crate::backend::kv_cache_bytes(capacity, n_kv, hd, types)
                );
                let (k, v) = (values(6 * kw, 1), values(6 * kw, 2));
                let positions = [0u32, 1, 2, 3, 4];
                b.kv_store(&mut kv, &k, &v, 1, &positions).expect("store");
                // Row r of the activations went to position r - 1, rotated as llama.cpp rotates
                // a quantized side of heads of 64 (in chunks of 64), then converted by the
                // type's quantizer (llama.cpp's set_rows).
                let rot = types.rotation(hd);
                assert_eq!(rot.k.is_some(), k_ty != KvType::F16);
                assert_eq!(rot.v.is_some(), v_ty != KvType::F16);
                let host = HostKv::download(&b.kv_view(&kv, 5).expect("view")).expect("host");
                let row_k: Vec<u8> = (1..6)
                    .flat_map(|r| stored(k_ty, &k[r * kw..(r + 1) * kw], rot.k))
                    .collect();
                let row_v: Vec<u8> = (1..6)
                    .flat_map(|r| stored(v_ty, &v[r * kw..(r + 1) * kw], rot.v))
                    .collect();
                assert_eq!((host.k == row_k, host.v == row_v), (true, true), "{types}");
                if k_ty == KvType::Q8_0 {
                    // ggml-cpu's x86 quantize_row_q8_0: the values of the first block.
                    let mut x = k[kw..kw + 64].to_vec();
                    hadamard::rotate(&mut x, 64);
                    let x = &x[..QK];
                    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let q: Vec<u8> = x
                        .iter()
                        .map(|v| (v * (127.0 / amax)).round_ties_even() as i8 as u8)
                        .collect();
                    assert_eq!(&host.k[2..34], &q[..]);
                    assert_eq!(&host.k[..2], &f16::from_f32(amax / 127.0).to_le_bytes());
                }
                let dequant = |ty: KvType, bytes: &[u8]| -> Vec<f32> {
                    let mut out = vec![0.0; bytes.len() / ty.block_bytes() * ty.block_elems()];
                    dequantize(ty.ggml_type(), bytes, &mut out).expect("dequantize");
                    out
                };
                let (kr, vr) = (dequant(k_ty, &host.k), dequant(v_ty, &host.v));
                // Attention of positions 3 and 4 (rows 2 and 3 of q) against an f64 reference
                // over the stored values, the query rounded as the path rounds it.
                let q = values(4 * qw, 3);
                let mut out = vec![f32::NAN; 4 * qw];
                let qpos = [3u32, 4];
                for window in [None, Some(3)] {
                    let p = AttentionParams {
                        n_heads,
                        n_kv_heads: n_kv,
                        head_dim: hd,
                        scale: 0.125,
                        window,
                        softcap: None,
                    };
                    b.attention(&q, &kv, 2, &qpos, p, &mut out)
                        .expect("attention");
                    for (i, &pos) in qpos.iter().enumerate() {
                        let first = window.map_or(0, |w| pos as usize + 1 - w);
                        for h in 0..n_heads {
                            let g = h / (n_heads / n_kv);
                            let mut qh =
                                q[(2 + i) * qw + h * hd..(2 + i) * qw + (h + 1) * hd].to_vec();
                            if let Some(n) = rot.k {
                                hadamard::rotate(&mut qh, n);
                            }
                            let qh = &qh[..];
                            let qr: Vec<f64> = match k_ty {
                                KvType::F16 => {
                                    qh.iter().map(|&x| f64::from(f16::from_f32(x))).collect()
                                }
                                _ => {
                                    let mut a = vec![
                                        BlockQ8_0Act {
                                            d: 0.0,
                                            qs: [0; QK]
                                        };
                                        2
                                    ];
                                    crate::cpu::quantize::quantize_row_q8_0_act(qh, &mut a);
                                    a.iter()
                                        .flat_map(|b| {
                                            b.qs.iter().map(|&x| f64::from(b.d) * f64::from(x))
                                        })
                                        .collect()
                                }
                            };
                            let s: Vec<f64> = (first..=pos as usize)
                                .map(|j| {
                                    (0..hd)
                                        .map(|d| qr[d] * f64::from(kr[j * kw + g * hd + d]))
                                        .sum::<f64>()
                                        * 0.125
                                })
                                .collect();
                            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                            let total: f64 = e.iter().sum();
                            let rotated: Vec<f64> = (0..hd)
                                .map(|d| {
                                    (first..=pos as usize)
                                        .zip(&e)
                                        .map(|(j, w)| {
                                            w / total * f64::from(vr[j * kw + g * hd + d])
                                        })
                                        .sum()
                                })
                                .collect();
                            let want_row = rotate_f64(&rotated, rot.v);
                            for (d, &want) in want_row.iter().enumerate() {
                                let got = f64::from(out[(2 + i) * qw + h * hd + d]);
                                assert!(
                                    (got - want).abs() < 1e-5,
                                    "{types} window {window:?} query {i} head {h} dim {d}: \
                                     {got} vs {want}"
                                );
                            }
                        }
                    }
                }
                // Rows outside the queries are untouched.
                assert!(out[..2 * qw].iter().all(|x| x.is_nan()));
            }
        }
        assert_eq!(b.used_bytes(), 0, "caches returned their bytes");
    }

    #[test]
    fn copies_keep_types_and_bytes_and_refuse_mismatches() {
        let b = CpuBackend::new(
            "cpu:0",
            DeviceMemory::new(1 << 30),
            Arc::new(ThreadPool::new(1).expect("threads")),
        );
        let types = KvTypes {
            k: KvType::Q4_0,
            v: KvType::Q8_0,
        };
        let mut kv = b.alloc_kv(8, 1, 32, types).expect("alloc");
        let x = values(3 * 32, 5);
        b.kv_store(&mut kv, &x, &x, 0, &[0, 1, 2]).expect("store");
        let view = b.kv_view(&kv, 3).expect("view");
        assert_eq!((view.k.len, view.v.len), (3 * 18, 3 * 34));
        let copy = b.import_kv(&view, 4).expect("copy into a smaller cache");
        let back = HostKv::download(&b.kv_view(&copy, 3).expect("view")).expect("host");
        let orig = HostKv::download(&view).expect("host");
        assert_eq!((&back.k, &back.v, back.types), (&orig.k, &orig.v, types));
        assert!(b.import_kv(&view, 2).is_err(), "3 positions into 2");
        let mut wrong = orig.clone();
        wrong.types = KvTypes::F16;
        let e = b
            .import_kv(&wrong.view(), 8)
            .expect_err("q4_0 bytes as f16");
        assert!(e.to_string().contains("key bytes"), "{e}");
        let e = b
            .alloc_kv(8, 1, 48, KvTypes::both(KvType::Q8_0))
            .expect_err("48 is not whole blocks");
        assert!(e.to_string().contains("multiple of 32"), "{e}");
    }
}
