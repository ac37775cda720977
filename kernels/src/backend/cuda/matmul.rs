//! `matmul` on the GPU. Decode and small batches (up to [`MMVQ_TOKENS`] tokens) run the
//! matrix-vector kernels (`mmv.cu` for F32/F16/BF16 weights, `mmvq.cu` after `quantize_q8_1` of
//! the activations for every block-quantized type). From [`PREFILL_GEMM_MIN_TOKENS`] tokens the
//! product is a matrix-matrix one, each weight type on the path that keeps activations of any
//! size finite (the outlier features of large models exceed f16's 65504):
//! - block-quantized weights: `quantize_mmq` of the activations (8-bit values, f32 scales), then
//!   `mul_mat_q_<type>` (`mmq.cu`) on the int8 tensor cores, the weights read as they lie;
//! - F16 weights: `convert_f32_to_f16_rows` (each token's row scaled by a power of two into
//!   f16's range), then `gemm_f16_tc`, which scales the results back;
//! - BF16 weights: `convert_f32_to_bf16` (bf16 has f32's range; the CPU rounds BF16's partner
//!   activations to bf16 too), then `gemm_bf16_tc`;
//! - F32 weights: `gemm_f32_nt` in f32;
//! - F16 and BF16 rows that are not whole 32-value slices of the tensor-core kernels:
//!   `dequantize_<type>_f32` tiles and `gemm_f32_nt`.
//!
//! Which kernels a weight type uses comes from [`super::types`].

use cudarc::driver::sys::CUresult;
use cudarc::driver::{DriverError, PushKernelArg};

use super::types::{cuda_type, matvec_kernel, MatVec};
use super::{
    blocks_for, cfg, check_len, grid_yz, grown, shape, to_i32, BackendError, CudaBackend,
    CudaWeight, DeviceBuf, MAX_GRID_YZ,
};
use crate::quant::GgmlType;

/// Bytes of one Q8_1 block (32 quantized activations, f16 scale and f16 sum).
pub(super) const Q8_1_BLOCK_BYTES: usize = 36;
/// Tokens one block of the quantized matrix-vector kernels multiplies (MMVQ_TOKENS in mmvq.cu):
/// up to this many tokens they read each weight once.
pub(super) const MMVQ_TOKENS: usize = 8;
/// Weight rows one block of the quantized matrix-vector kernels computes (MMVQ_ROWS in mmvq.cu).
const MMVQ_ROWS: usize = 4;
/// Weights one launch of the quantized matrix-vector kernels multiplies (q, k and v).
pub(super) const MMVQ_WEIGHTS: usize = 3;
/// Fewest tokens for which `matmul` runs as a matrix-matrix product. The matrix-vector kernels
/// read every weight once per [`MMVQ_TOKENS`] tokens (mmv: once per token), at the memory's
/// speed; the matrix-matrix kernels read a weight tile once per [`GEMM_TILE`] tokens and, for
/// quantized weights, unpack it once into int8 for the tensor cores (mmq), whose arithmetic
/// costs little beside the memory traffic at these sizes. At 9 tokens the matrix-vector path
/// reads the weights twice and the matrix-matrix path once, so it wins from there on, as in
/// llama.cpp (matrix-vector up to `MMVQ_MAX_BATCH_SIZE` = 8). Derived from the kernels' memory
/// traffic, not yet measured on a GPU.
pub(super) const PREFILL_GEMM_MIN_TOKENS: usize = MMVQ_TOKENS + 1;
/// Default size, in f32 values, of the scratch buffer that holds one dequantized weight tile on
/// the f32 GEMM path of F16/BF16 rows that the tensor-core kernels cannot take: 32 Mi floats =
/// 128 MiB.
pub(super) const GEMM_SCRATCH_FLOATS: usize = 32 << 20;
/// Rows and columns of `out` computed by one block of every matrix-matrix kernel (64 x 64 in
/// gemm.cu and mmq.cu); f32 weight tiles are whole multiples of it, except the last.
pub(super) const GEMM_TILE: usize = 64;
/// `cols` must be a multiple of this for the tensor-core GEMMs of F16/BF16 weights
/// (`gemm_*_tc` stage 32-wide k slices with 16-byte loads) and for the Q8 activations of mmq.
const TC_K_MULTIPLE: usize = 32;
/// Values written by one thread of a `dequantize_*` kernel (blocks of 256 threads).
const DEQUANT_VALUES_PER_THREAD: usize = 8;

/// How `matmul` multiplies a weight of a given type and shape by a batch of tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MatmulPath {
    /// The matrix-vector kernels (`mmv.cu`, `mmvq.cu`).
    MatVec,
    /// `quantize_mmq` and `mul_mat_q_<type>` (block-quantized weights).
    Mmq,
    /// f16 activations scaled per row, `gemm_f16_tc` (F16 weights).
    F16TensorCores,
    /// bf16 activations, `gemm_bf16_tc` (BF16 weights).
    Bf16TensorCores,
    /// `gemm_f32_nt` on the weights as they lie (F32) or on dequantized f32 tiles.
    F32,
}

/// The path `matmul` of `n_tokens` rows by a `ty` weight of `rows` x `cols` takes: the
/// matrix-vector kernels below [`PREFILL_GEMM_MIN_TOKENS`] tokens, for types without kernels
/// (refused there) and for sizes beyond the matrix-matrix kernels' int arguments and grid; else
/// the matrix-matrix kernel of the weight type (see the module documentation). F16 and BF16
/// rows of whole groups of 8 values but not of 32 go through f32 tiles; other widths stay on the
/// matrix-vector kernels.
pub(super) fn matmul_path(ty: GgmlType, rows: usize, cols: usize, n_tokens: usize) -> MatmulPath {
    let int = |v: usize| i32::try_from(v).is_ok();
    let fits = n_tokens >= PREFILL_GEMM_MIN_TOKENS
        && rows > 0
        && cols > 0
        && int(rows)
        && int(cols)
        && int(n_tokens)
        && n_tokens.div_ceil(GEMM_TILE) <= MAX_GRID_YZ
        && rows.div_ceil(GEMM_TILE) <= MAX_GRID_YZ;
    let Some(t) = cuda_type(ty).filter(|_| fits) else {
        return MatmulPath::MatVec;
    };
    let tensor_cores = cols.is_multiple_of(TC_K_MULTIPLE);
    match (t.matvec, ty) {
        (MatVec::Q8_1, _) if tensor_cores => MatmulPath::Mmq,
        (_, GgmlType::F32) => MatmulPath::F32,
        (_, GgmlType::F16) if tensor_cores => MatmulPath::F16TensorCores,
        (_, GgmlType::BF16) if tensor_cores => MatmulPath::Bf16TensorCores,
        (MatVec::Float, _) if cols.is_multiple_of(DEQUANT_VALUES_PER_THREAD) => MatmulPath::F32,
        _ => MatmulPath::MatVec,
    }
}

/// Rows of a weight dequantized at once on the f32 tile path: as many as `budget_floats` f32
/// values hold, rounded down to whole [`GEMM_TILE`]s, at least one `GEMM_TILE` (a weight wider
/// than `budget_floats / 64` columns exceeds the budget rather than fails) and at most `rows`.
pub(super) fn gemm_tile_rows(rows: usize, cols: usize, budget_floats: usize) -> usize {
    let fit = budget_floats / cols.max(1) / GEMM_TILE * GEMM_TILE;
    fit.max(GEMM_TILE).min(rows)
}

/// Where the three arrays of `quantize_mmq`'s output lie in one byte buffer for `n_values`
/// activations: the int8 values, then (16-byte aligned) one f32 scale per 32 values, then one
/// f32 sum per 16 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MmqLayout {
    /// Byte offset of the scales.
    pub scales: usize,
    /// Byte offset of the sums.
    pub sums: usize,
    /// Bytes in all.
    pub bytes: usize,
}

impl MmqLayout {
    /// The layout for `n_values` activations (a multiple of 32).
    pub(super) fn new(n_values: usize) -> Self {
        let scales = n_values.next_multiple_of(16);
        let sums = scales + n_values / 32 * 4;
        MmqLayout {
            scales,
            sums,
            bytes: sums + n_values / 16 * 4,
        }
    }
}

impl CudaBackend {
    /// `out (n_tokens, rows) = x (n_tokens, cols) * w^T` on the path [`matmul_path`] picks
    /// (a matrix-matrix path falls back to the matrix-vector kernels when the device is out of
    /// memory for its scratch).
    pub(super) fn matmul_on_device(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul";
        check_len(OP, x.len(), n_tokens * w.cols)?;
        check_len(OP, out.len(), n_tokens * w.rows)?;
        if n_tokens == 0 || w.rows == 0 {
            return Ok(());
        }
        let done = match matmul_path(w.ty, w.rows, w.cols, n_tokens) {
            MatmulPath::MatVec => false,
            MatmulPath::Mmq => self.matmul_mmq(w, x, n_tokens, out)?,
            MatmulPath::F16TensorCores => self.matmul_f16(w, x, n_tokens, out)?,
            MatmulPath::Bf16TensorCores => self.matmul_bf16(w, x, n_tokens, out)?,
            MatmulPath::F32 => self.gemm_f32(w, x, n_tokens, out)?,
        };
        if done {
            return Ok(());
        }
        self.matvec(w, x, n_tokens, out)
    }

    /// The matrix-vector kernels: `mul_mat_vec_<type>` on f32 activations for float weights,
    /// `quantize_q8_1` and `mul_mat_vec_<type>_q8_1` for block-quantized ones.
    fn matvec(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul";
        let t = cuda_type(w.ty).ok_or_else(|| self.unsupported(w))?;
        if t.matvec == MatVec::Q8_1 {
            let mut reused = self.reused();
            let q8 = self.quantize_q8_1(&mut reused.q8, x, n_tokens * w.cols)?;
            return self.launch_mmvq(q8, n_tokens, false, &mut [(w, out)]);
        }
        let ny = grid_yz(OP, "n_tokens", n_tokens)?;
        let rows = to_i32(OP, "rows", w.rows)?;
        let cols = to_i32(OP, "cols", w.cols)?;
        if !w.cols.is_multiple_of(2) {
            return Err(shape(
                OP,
                format!("{} has an odd number of columns", w.name),
            ));
        }
        let name = matvec_kernel(t);
        let mut launch = self.stream.launch_builder(self.function(&name)?);
        launch.arg(&w.data).arg(x).arg(out).arg(&rows).arg(&cols);
        // SAFETY: mul_mat_vec_f32/f16/bf16(const float*/half*/u16* w, const float* x, float*
        // out, int rows, int cols) over (ceil(rows/4), n_tokens) blocks of (32,4) reads rows*cols
        // weights (the upload checked the byte size), n_tokens*cols values of x and writes
        // n_tokens*rows of out (lengths checked); cols is even.
        unsafe { launch.launch(cfg((blocks_for(w.rows, 4), ny, 1), (32, 4, 1))) }
            .map_err(|e| self.err(&name, e))?;
        Ok(())
    }

    /// `quantize_q8_1` of the first `n_values` values of `x` (a multiple of 32: rows of whole
    /// blocks) into the reused buffer `slot`, which it returns.
    pub(super) fn quantize_q8_1<'r>(
        &self,
        slot: &'r mut Option<DeviceBuf<u8>>,
        x: &DeviceBuf<f32>,
        n_values: usize,
    ) -> Result<&'r DeviceBuf<u8>, BackendError> {
        const OP: &str = "quantize_q8_1";
        check_len(OP, x.len(), n_values)?;
        if !n_values.is_multiple_of(32) {
            return Err(shape(
                OP,
                format!("{n_values} values, need whole blocks of 32"),
            ));
        }
        let q8 = grown(
            &self.stream,
            &self.gpu,
            slot,
            n_values / 32 * Q8_1_BLOCK_BYTES,
        )
        .map_err(|e| self.err("allocating Q8_1 activations", e))?;
        let n_i64 = n_values as i64;
        let mut quant = self.stream.launch_builder(self.function("quantize_q8_1")?);
        quant.arg(x).arg(&mut *q8).arg(&n_i64);
        // SAFETY: quantize_q8_1(const float* x, q8_1* y, i64 n) over ceil(n/256) blocks of 256
        // reads n values of x (length checked) and writes n/32 blocks of 36 bytes into q8, which
        // holds at least that many bytes (`grown`); n % 32 == 0 (checked).
        unsafe { quant.launch(cfg((blocks_for(n_values, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("quantize_q8_1", e))?;
        Ok(q8)
    }

    /// One launch of `mul_mat_vec_<type>_q8_1` for 1 to [`MMVQ_WEIGHTS`] weights of one
    /// block-quantized type and of equal `cols`, each into its output (`accumulate`: added to
    /// it), over `n_tokens` rows of Q8_1 activations `q8` (as [`CudaBackend::quantize_q8_1`]
    /// left them). Larger groups go in several launches.
    pub(super) fn launch_mmvq(
        &self,
        q8: &DeviceBuf<u8>,
        n_tokens: usize,
        accumulate: bool,
        targets: &mut [(&CudaWeight, &mut DeviceBuf<f32>)],
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul";
        for group in targets.chunks_mut(MMVQ_WEIGHTS) {
            let (first, _) = &group[0];
            let t = cuda_type(first.ty).ok_or_else(|| self.unsupported(first))?;
            let cols = first.cols;
            if t.matvec != MatVec::Q8_1 || !cols.is_multiple_of(32) {
                return Err(shape(
                    OP,
                    format!(
                        "{}: not a block-quantized weight of whole blocks",
                        first.name
                    ),
                ));
            }
            let mut blocks = 0;
            for (w, out) in group.iter() {
                if w.ty != first.ty || w.cols != cols {
                    return Err(shape(
                        OP,
                        format!("{} and {} in one product", w.name, first.name),
                    ));
                }
                check_len(OP, out.len(), n_tokens * w.rows)?;
                to_i32(OP, "rows", w.rows)?;
                blocks += w.rows.div_ceil(MMVQ_ROWS);
            }
            check_len(OP, q8.len(), n_tokens * cols / 32 * Q8_1_BLOCK_BYTES)?;
            let name = matvec_kernel(t);
            let token_groups = grid_yz(OP, "token groups", n_tokens.div_ceil(MMVQ_TOKENS))?;
            let grid_x = u32::try_from(blocks).map_err(|_| shape(OP, "too many rows".into()))?;
            let cols_i = to_i32(OP, "cols", cols)?;
            let n_tokens_i = to_i32(OP, "n_tokens", n_tokens)?;
            let accumulate_i = i32::from(accumulate);
            let rows: Vec<i32> = (0..MMVQ_WEIGHTS)
                .map(|i| group.get(i).map_or(0, |(w, _)| w.rows as i32))
                .collect();
            let null: u64 = 0;
            let mut launch = self.stream.launch_builder(self.function(&name)?);
            launch
                .arg(q8)
                .arg(&cols_i)
                .arg(&n_tokens_i)
                .arg(&accumulate_i);
            let mut pushed = 0;
            for (i, (w, out)) in group.iter_mut().enumerate() {
                launch.arg(&w.data).arg(&mut **out).arg(&rows[i]);
                pushed += 1;
            }
            for unused in &rows[pushed..] {
                launch.arg(&null).arg(&null).arg(unused);
            }
            // SAFETY: mul_mat_vec_<type>_q8_1(const q8_1* y, int cols, int n_tokens, int
            // accumulate, then (const void* w, float* out, int rows) three times) over (the sum
            // of ceil(rows_i/4), ceil(n_tokens/8)) blocks of (32,4): each block reads the rows
            // of its weight (byte sizes checked at upload, all of type `t` with `cols` columns,
            // checked), n_tokens*cols/32 Q8_1 blocks of q8 (length checked) and reads/writes
            // n_tokens*rows_i values of out_i (lengths checked); unused weights have rows 0 and
            // null pointers, which no block reaches.
            unsafe { launch.launch(cfg((grid_x, token_groups, 1), (32, MMVQ_ROWS as u32, 1))) }
                .map_err(|e| self.err(&name, e))?;
        }
        Ok(())
    }

    /// A scratch buffer of `len` values on the stream, or `None` when the device is out of
    /// memory for it (the caller then falls back to the matrix-vector kernels).
    fn scratch<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        what: &str,
        len: usize,
    ) -> Result<Option<DeviceBuf<T>>, BackendError> {
        match self.stream.alloc_zeros::<T>(len.max(1)) {
            Ok(b) => Ok(Some(self.wrap(b))),
            Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => Ok(None),
            Err(e) => Err(self.err(&format!("allocating {what}"), e)),
        }
    }

    /// [`MatmulPath::Mmq`]: the activations quantized once by `quantize_mmq` into the kept
    /// buffer ([`MmqLayout`]), then `mul_mat_q_<type>` over the weights as they lie.
    /// `Ok(false)`, having launched nothing, when the scratch does not fit.
    fn matmul_mmq(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<bool, BackendError> {
        let mut reused = self.reused();
        let Some(q8) = self.quantize_mmq(&mut reused.mmq, x, n_tokens * w.cols)? else {
            return Ok(false);
        };
        self.launch_mmq(w, q8, n_tokens, out)?;
        Ok(true)
    }

    /// `quantize_mmq` of the first `n_values` values of `x` (rows of whole blocks of 32) into
    /// the kept buffer `slot` (grown when too small; `Reused::mmq`) laid out as [`MmqLayout`],
    /// or `None` when it does not fit.
    pub(super) fn quantize_mmq<'r>(
        &self,
        slot: &'r mut Option<DeviceBuf<u8>>,
        x: &DeviceBuf<f32>,
        n_values: usize,
    ) -> Result<Option<&'r DeviceBuf<u8>>, BackendError> {
        const OP: &str = "quantize_mmq";
        check_len(OP, x.len(), n_values)?;
        if !n_values.is_multiple_of(32) {
            return Err(shape(
                OP,
                format!("{n_values} values, need whole blocks of 32"),
            ));
        }
        let layout = MmqLayout::new(n_values);
        let q8 = match grown(&self.stream, &self.gpu, slot, layout.bytes) {
            Ok(q8) => q8,
            Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => return Ok(None),
            Err(e) => return Err(self.err("allocating 8-bit activations", e)),
        };
        let n_i64 = n_values as i64;
        {
            let mut used = q8.slice_mut(0..layout.bytes);
            let (mut values, mut rest) = used.split_at_mut(layout.scales);
            let (mut scales, mut sums) = rest.split_at_mut(layout.sums - layout.scales);
            let mut quant = self.stream.launch_builder(self.function("quantize_mmq")?);
            quant
                .arg(x)
                .arg(&mut values)
                .arg(&mut scales)
                .arg(&mut sums)
                .arg(&n_i64);
            // SAFETY: quantize_mmq(const float* x, i8* q, float* d, float* s, i64 n) over
            // ceil(n/256) blocks of 256 reads n values of x (length checked; n % 32 == 0) and
            // writes n bytes of q, n/32 floats of d and n/16 floats of s: the three disjoint
            // parts of q8's first layout.bytes (grown to at least that) that MmqLayout sizes exactly (scales and sums 4-byte aligned).
            unsafe { quant.launch(cfg((blocks_for(n_values, 256), 1, 1), (256, 1, 1))) }
                .map_err(|e| self.err("quantize_mmq", e))?;
        }
        Ok(Some(q8))
    }

    /// `mul_mat_q_<type>` of `w` by `n_tokens` rows of activations as
    /// [`CudaBackend::quantize_mmq`] left them in `q8`, into `out`.
    pub(super) fn launch_mmq(
        &self,
        w: &CudaWeight,
        q8: &DeviceBuf<u8>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul";
        let t = cuda_type(w.ty).ok_or_else(|| self.unsupported(w))?;
        let layout = MmqLayout::new(n_tokens * w.cols);
        check_len(OP, q8.len(), layout.bytes)?;
        check_len(OP, out.len(), n_tokens * w.rows)?;
        let name = format!("mul_mat_q_{}", t.suffix);
        let m = to_i32(OP, "n_tokens", n_tokens)?;
        let n = to_i32(OP, "rows", w.rows)?;
        let k = to_i32(OP, "cols", w.cols)?;
        let row_tiles = grid_yz(OP, "row tiles", w.rows.div_ceil(GEMM_TILE))?;
        let values = q8.slice(..layout.scales);
        let scales = q8.slice(layout.scales..layout.sums);
        let sums = q8.slice(layout.sums..layout.bytes);
        let mut launch = self.stream.launch_builder(self.function(&name)?);
        launch
            .arg(&w.data)
            .arg(&values)
            .arg(&scales)
            .arg(&sums)
            .arg(out)
            .arg(&m)
            .arg(&n)
            .arg(&k)
            .arg(&n);
        // SAFETY: mul_mat_q_<type>(const void* w, const i8* xq, const float* xd, const float*
        // xs, float* out, int M, int N, int K, int ldo) over (ceil(M/64), ceil(N/64)) blocks of
        // 128 reads the N rows of K/qk blocks of w (byte size checked at upload; K a multiple
        // of the block size and of 32), M*K bytes of xq (16-byte aligned: the allocation's
        // start), M*K/32 scales and M*K/16 sums (q8's length checked against the layout) and
        // writes out[m*N + n] for m < M, n < N (out's length checked).
        unsafe {
            launch.launch(cfg(
                (blocks_for(n_tokens, GEMM_TILE), row_tiles, 1),
                (128, 1, 1),
            ))
        }
        .map_err(|e| self.err(&name, e))?;
        Ok(())
    }

    /// [`MatmulPath::F16TensorCores`]: the activations as f16, each token's row scaled by a
    /// power of two into f16's range (`convert_f32_to_f16_rows`), then `gemm_f16_tc` on the
    /// weights as they lie, which scales each row's results back. `Ok(false)`, having launched
    /// nothing, when the scratch does not fit.
    fn matmul_f16(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<bool, BackendError> {
        let Some(mut x16) = self.scratch::<u16>("f16 activations", n_tokens * w.cols)? else {
            return Ok(false);
        };
        let Some(mut row_scale) = self.scratch::<f32>("row scales", n_tokens)? else {
            return Ok(false);
        };
        let cols = to_i32("matmul", "cols", w.cols)?;
        let rows =
            u32::try_from(n_tokens).map_err(|_| shape("matmul", "too many tokens".into()))?;
        let mut convert = self
            .stream
            .launch_builder(self.function("convert_f32_to_f16_rows")?);
        convert.arg(x).arg(&mut x16).arg(&mut row_scale).arg(&cols);
        // SAFETY: convert_f32_to_f16_rows(const float* x, half* y, float* row_scale, int cols)
        // with one block of 256 per row reads n_tokens rows of cols values of x (length checked
        // by matmul) and writes as many halves into x16 and one float per row into row_scale,
        // both allocated with those lengths.
        unsafe { convert.launch(cfg((rows, 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("convert_f32_to_f16_rows", e))?;
        drop(convert);
        self.launch_tc("gemm_f16_tc", w, &x16, n_tokens, out, Some(&row_scale))?;
        Ok(true)
    }

    /// [`MatmulPath::Bf16TensorCores`]: the activations as bf16 (`convert_f32_to_bf16`), then
    /// `gemm_bf16_tc` on the weights as they lie. `Ok(false)`, having launched nothing, when
    /// the scratch does not fit.
    fn matmul_bf16(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<bool, BackendError> {
        let n_values = n_tokens * w.cols;
        let Some(mut x16) = self.scratch::<u16>("bf16 activations", n_values)? else {
            return Ok(false);
        };
        let n_i64 = n_values as i64;
        let mut convert = self
            .stream
            .launch_builder(self.function("convert_f32_to_bf16")?);
        convert.arg(x).arg(&mut x16).arg(&n_i64);
        // SAFETY: convert_f32_to_bf16(const float* x, bf16* y, i64 n) over ceil(n/256) blocks
        // of 256 reads n = n_tokens*cols values of x (length checked by matmul) and writes n
        // bf16 values into x16, allocated with n.
        unsafe { convert.launch(cfg((blocks_for(n_values, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("convert_f32_to_bf16", e))?;
        drop(convert);
        self.launch_tc("gemm_bf16_tc", w, &x16, n_tokens, out, None)?;
        Ok(true)
    }

    /// Launches `gemm_f16_tc` / `gemm_bf16_tc (x16, w, out, M = n_tokens, N = rows, K = cols,
    /// ldo = rows, row_scale)` on 16-bit activations `x16` of `n_tokens * cols` values.
    fn launch_tc(
        &self,
        kernel: &'static str,
        w: &CudaWeight,
        x16: &DeviceBuf<u16>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
        row_scale: Option<&DeviceBuf<f32>>,
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul";
        let m = to_i32(OP, "n_tokens", n_tokens)?;
        let n = to_i32(OP, "rows", w.rows)?;
        let k = to_i32(OP, "cols", w.cols)?;
        let grid_m = grid_yz(OP, "token tiles", n_tokens.div_ceil(GEMM_TILE))?;
        let no_scale: u64 = 0;
        let mut launch = self.stream.launch_builder(self.function(kernel)?);
        launch
            .arg(x16)
            .arg(&w.data)
            .arg(out)
            .arg(&m)
            .arg(&n)
            .arg(&k)
            .arg(&n);
        match row_scale {
            Some(s) => launch.arg(s),
            None => launch.arg(&no_scale),
        };
        // SAFETY: gemm_f16_tc / gemm_bf16_tc(const T* x, const T* w, float* out, int M, int N,
        // int K, int ldo, const float* row_scale) over (ceil(N/64), ceil(M/64)) blocks of 128
        // reads M*K values of x16 (allocated with that many), the N*K 16-bit weights as
        // uploaded (byte size checked) and M row scales when given (allocated with M), and
        // writes out[m*N + n] (out's length checked by matmul). K % 32 == 0 (matmul_path), and
        // fresh allocations are 256-byte aligned, so every row is 16-byte aligned.
        unsafe { launch.launch(cfg((blocks_for(w.rows, GEMM_TILE), grid_m, 1), (128, 1, 1))) }
            .map_err(|e| self.err(kernel, e))?;
        Ok(())
    }

    /// [`MatmulPath::F32`]: `gemm_f32_nt` over the f32 activations, F32 weights multiplied as
    /// they lie, F16 and BF16 ones dequantized (`dequantize_<type>_f32`) tile by tile of
    /// [`gemm_tile_rows`] whole rows into a scratch buffer, each tile multiplied into columns
    /// `r0..r0 + n` of `out`. The scratch is allocated per call with the stream-ordered
    /// allocator (freed on the stream after the last kernel that reads it), so no idle backend
    /// holds it. `Ok(false)`, having launched nothing, when it does not fit.
    fn gemm_f32(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<bool, BackendError> {
        const OP: &str = "matmul";
        let end = n_tokens * w.rows;
        if w.ty == GgmlType::F32 {
            let dims = GemmDims {
                m: n_tokens,
                n: w.rows,
                k: w.cols,
                ldo: w.rows,
            };
            self.launch_gemm_f32(x, &w.data.slice(..), &mut out.slice_mut(0..end), dims)?;
            return Ok(true);
        }
        let t = cuda_type(w.ty).ok_or_else(|| self.unsupported(w))?;
        let dequant_name = format!("dequantize_{}_f32", t.suffix);
        let dequant = self.function(&dequant_name)?;
        let row_bytes =
            w.ty.row_bytes(w.cols as u64)
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| shape(OP, format!("{}: no whole blocks per row", w.name)))?;
        let tile_rows = gemm_tile_rows(w.rows, w.cols, self.gemm_scratch_floats);
        let Some(mut tile) = self.scratch::<f32>("a GEMM weight tile", tile_rows * w.cols)? else {
            return Ok(false);
        };
        let mut r0 = 0;
        while r0 < w.rows {
            let n_rows = tile_rows.min(w.rows - r0);
            let n_values = n_rows * w.cols;
            let n_i64 = n_values as i64;
            let src = w.data.slice(r0 * row_bytes..(r0 + n_rows) * row_bytes);
            let mut launch = self.stream.launch_builder(dequant);
            launch.arg(&src).arg(&mut tile).arg(&n_i64);
            // SAFETY: dequantize_<f16|bf16>_f32(const void* w, float* y, i64 n) over
            // ceil(n/8/256) blocks of 256 (8 values per thread; threads past n return) reads the
            // n = n_rows*cols weights of `src`, a view of exactly those n_rows whole rows, and
            // writes n floats into `tile`, allocated with tile_rows*cols >= n (fresh: 256-byte
            // aligned for the 16-byte stores). n is a multiple of 8 (cols % 8 == 0,
            // matmul_path).
            unsafe {
                launch.launch(cfg(
                    (blocks_for(n_values, DEQUANT_VALUES_PER_THREAD * 256), 1, 1),
                    (256, 1, 1),
                ))
            }
            .map_err(|e| self.err(&dequant_name, e))?;
            drop(launch);
            let dims = GemmDims {
                m: n_tokens,
                n: n_rows,
                k: w.cols,
                ldo: w.rows,
            };
            self.launch_gemm_f32(
                x,
                &tile.slice(0..n_values),
                &mut out.slice_mut(r0..end),
                dims,
            )?;
            r0 += n_rows;
        }
        Ok(true)
    }
}

/// The shape of one `gemm_f32_nt` launch: `out (m, n)` with row stride `ldo` = `x (m, k)` times
/// `w (n, k)` transposed.
#[derive(Clone, Copy)]
struct GemmDims {
    m: usize,
    n: usize,
    k: usize,
    ldo: usize,
}

impl CudaBackend {
    /// Launches `gemm_f32_nt(x, w, out, M, N, K, ldo)`. The callers pass `x` with `m * k`
    /// values (checked by `matmul`), `w` a view of exactly `n * k` f32 values (the weight as
    /// uploaded, or a tile the dequantize launch before it on this stream wrote), and `out` a
    /// view starting at the first output column with at least `(m - 1) * ldo + n` values.
    fn launch_gemm_f32(
        &self,
        x: &DeviceBuf<f32>,
        w: &cudarc::driver::CudaView<'_, impl cudarc::driver::DeviceRepr>,
        out: &mut cudarc::driver::CudaViewMut<'_, f32>,
        dims: GemmDims,
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul";
        if dims.m > 0 && out.len() < (dims.m - 1) * dims.ldo + dims.n {
            return Err(shape(OP, format!("output view of {} values", out.len())));
        }
        let m = to_i32(OP, "n_tokens", dims.m)?;
        let n = to_i32(OP, "rows", dims.n)?;
        let k = to_i32(OP, "cols", dims.k)?;
        let ldo = to_i32(OP, "rows", dims.ldo)?;
        let grid_m = grid_yz(OP, "token tiles", dims.m.div_ceil(GEMM_TILE))?;
        let mut launch = self.stream.launch_builder(self.function("gemm_f32_nt")?);
        launch
            .arg(x)
            .arg(w)
            .arg(out)
            .arg(&m)
            .arg(&n)
            .arg(&k)
            .arg(&ldo);
        // SAFETY: gemm_f32_nt(const float* x, const float* w, float* out, int M, int N, int K,
        // int ldo) over (ceil(N/64), ceil(M/64)) blocks of 256 reads M*K values of x and N*K
        // values of w and writes out[m*ldo + n] for m < M, n < N, all within `out` (its length
        // checked above; x and w as the callers guarantee, see the doc comment).
        unsafe { launch.launch(cfg((blocks_for(dims.n, GEMM_TILE), grid_m, 1), (256, 1, 1))) }
            .map_err(|e| self.err("gemm_f32_nt", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_tiles_are_whole_64_row_tiles_within_the_budget() {
        // The GPU test's budget: 64 rows of 512 columns.
        assert_eq!(gemm_tile_rows(200, 512, GEMM_TILE * 512), 64);
        // The default budget: 32 Mi floats.
        assert_eq!(gemm_tile_rows(152_064, 3584, GEMM_SCRATCH_FLOATS), 9344);
        assert_eq!(gemm_tile_rows(100_000, 8192, GEMM_SCRATCH_FLOATS), 4096);
        assert_eq!(gemm_tile_rows(2048, 8192, GEMM_SCRATCH_FLOATS), 2048);
        // Fewer rows than a tile: all of them.
        assert_eq!(gemm_tile_rows(48, 512, GEMM_SCRATCH_FLOATS), 48);
        // Rounded down to whole tiles; at least one tile even past the budget.
        assert_eq!(gemm_tile_rows(1000, 10, 1279), 64);
        assert_eq!(gemm_tile_rows(1000, 10, 1280), 128);
        assert_eq!(gemm_tile_rows(1000, 1 << 22, GEMM_SCRATCH_FLOATS), 64);
        for (rows, cols, budget) in [
            (1, 8, 1),
            (63, 8, 1 << 20),
            (65, 4096, 1 << 18),
            (999, 1, 0),
        ] {
            let t = gemm_tile_rows(rows, cols, budget);
            assert!(t >= 1 && t <= rows, "{rows} {cols} {budget}: {t}");
            assert!(
                t == rows || t.is_multiple_of(GEMM_TILE),
                "{rows} {cols}: {t}"
            );
            assert!(
                t * cols <= budget.max(GEMM_TILE * cols),
                "{rows} {cols}: {t}"
            );
        }
    }

    #[test]
    fn each_weight_type_takes_its_own_matrix_matrix_path() {
        use MatmulPath::*;
        let n = PREFILL_GEMM_MIN_TOKENS;
        for (ty, path) in [
            (GgmlType::F32, F32),
            (GgmlType::F16, F16TensorCores),
            (GgmlType::BF16, Bf16TensorCores),
            (GgmlType::Q4_0, Mmq),
            (GgmlType::Q4_K, Mmq),
            (GgmlType::IQ1_M, Mmq),
            (GgmlType::MXFP4, Mmq),
        ] {
            assert_eq!(matmul_path(ty, 200, 512, n), path, "{ty}");
            assert_eq!(
                matmul_path(ty, 200, 512, n - 1),
                MatVec,
                "{ty}: decode and small batches stay matrix-vector"
            );
        }
        // F16 / BF16 rows of whole groups of 8 but not 32 go through f32 tiles; others stay
        // matrix-vector; F32 takes any width.
        assert_eq!(matmul_path(GgmlType::F16, 70, 520, 40), F32);
        assert_eq!(matmul_path(GgmlType::BF16, 70, 520, 40), F32);
        assert_eq!(matmul_path(GgmlType::F16, 70, 516, 40), MatVec);
        assert_eq!(matmul_path(GgmlType::F32, 70, 3, 40), F32);
        // No kernels: matrix-vector (which refuses the type).
        assert_eq!(matmul_path(GgmlType::Q8_K, 200, 512, n), MatVec);
        assert_eq!(matmul_path(GgmlType::I32, 200, 512, n), MatVec);
        // Empty or beyond the kernels' int arguments and grid.
        assert_eq!(matmul_path(GgmlType::F32, 0, 512, n), MatVec);
        assert_eq!(matmul_path(GgmlType::F32, 200, 0, n), MatVec);
        assert_eq!(matmul_path(GgmlType::Q8_0, 1 << 31, 512, n), MatVec);
        assert_eq!(matmul_path(GgmlType::Q8_0, 200, 1 << 31, n), MatVec);
        let most = MAX_GRID_YZ * GEMM_TILE;
        assert_eq!(matmul_path(GgmlType::Q8_0, 200, 512, most), Mmq);
        assert_eq!(matmul_path(GgmlType::Q8_0, 200, 512, most + 1), MatVec);
        assert_eq!(matmul_path(GgmlType::Q8_0, most, 512, n), Mmq);
        assert_eq!(matmul_path(GgmlType::Q8_0, most + 1, 512, n), MatVec);
    }

    #[test]
    fn mmq_activations_are_three_aligned_arrays() {
        let l = MmqLayout::new(70 * 512);
        assert_eq!(l.scales, 70 * 512);
        assert_eq!(l.sums, l.scales + 70 * 16 * 4);
        assert_eq!(l.bytes, l.sums + 70 * 32 * 4);
        let odd = MmqLayout::new(9 * 32);
        assert_eq!(odd.scales, 9 * 32);
        let odd = MmqLayout::new(32);
        assert!(odd.scales.is_multiple_of(16) && odd.sums.is_multiple_of(4));
    }
}
