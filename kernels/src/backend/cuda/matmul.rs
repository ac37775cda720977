//! `matmul` on the GPU: the matrix-vector kernels for decode (`mmv.cu` for F32/F16/BF16
//! weights, `mmvq.cu` after `quantize_q8_1` of the activations for every block-quantized type)
//! and, from [`PREFILL_GEMM_MIN_TOKENS`] tokens, the GEMM path (`gemm.cu`, weight tiles
//! dequantized by `dequantize.cu`). Which kernels a weight type uses comes from
//! [`super::types`].

use cudarc::driver::sys::CUresult;
use cudarc::driver::{DriverError, PushKernelArg};

use super::types::{cuda_type, matvec_kernel, MatVec};
use super::{
    blocks_for, cfg, check_len, grid_yz, grown, shape, to_i32, BackendError, CudaBackend,
    CudaWeight, DeviceBuf, MAX_GRID_YZ,
};
use crate::quant::GgmlType;

/// Bytes of one Q8_1 block (32 quantized activations, f16 scale and f16 sum).
const Q8_1_BLOCK_BYTES: usize = 36;
/// Fewest tokens for which `matmul` runs as a matrix-matrix product (dequantize weight rows to
/// f32, then `gemm_f32_nt`) instead of the matrix-vector kernels. The matrix-vector kernels
/// re-read every weight for each token (0.56 bytes for Q4_K to 2 for F16, ~0.15-0.6 ps per
/// weight and token at ~3.5 TB/s); the GEMM path reads the weight once and writes and reads back
/// 4 bytes of f32 per weight (~2-3 ps per weight, once), then computes at roughly 0.1 ps per
/// weight and token (2 flops at ~20 TFLOPS for this simple 64x64-tiled f32 kernel). That breaks
/// even near 6 tokens for F16, 13 for Q8_0 and 20-35 for Q4_K (F32: 1-2). llama.cpp leaves the
/// matrix-vector kernels above 8 tokens (`MMVQ_MAX_BATCH_SIZE`) for much faster tensor-core
/// kernels; for this plain f32 GEMM, 16 keeps decode and small batches on the matrix-vector
/// kernels and real prefill chunks (usually hundreds of tokens) on the GEMM path, which is also
/// the more accurate (activations stay f32). Estimates, not yet measured on a GPU.
pub(super) const PREFILL_GEMM_MIN_TOKENS: usize = 16;
/// Default size, in f32 values, of the scratch buffer that holds one dequantized weight tile on
/// the GEMM path: 32 Mi floats = 128 MiB, so an 8192-column weight goes in tiles of 4096 rows,
/// enough to fill the GPU with GEMM blocks, while the transient allocation stays small next to
/// the weights themselves.
pub(super) const GEMM_SCRATCH_FLOATS: usize = 32 << 20;
/// Rows and columns of `out` computed by one `gemm_f32_nt` thread block (GEMM_BM = GEMM_BN in
/// gemm.cu); weight tiles are whole multiples of it, except the last.
pub(super) const GEMM_TILE: usize = 64;
/// Tokens one block of the quantized matrix-vector kernels multiplies (MMVQ_TOKENS in mmvq.cu).
const MMVQ_TOKENS: usize = 8;
/// `cols` must be a multiple of this for the tensor-core GEMM (`gemm_f16_tc` stages 32-wide k
/// slices with 16-byte loads).
const TC_K_MULTIPLE: usize = 32;
/// Values written by one thread of a `dequantize_*` kernel (blocks of 256 threads).
const DEQUANT_VALUES_PER_THREAD: usize = 8;

/// Whether `matmul` of `n_tokens` rows by a `ty` weight of `rows` x `cols` takes the GEMM path:
/// enough tokens, a type with `dequantize_*` kernels (or F32, multiplied as it is), whole groups
/// of 8 values in every tile (`cols % 8 == 0`: tiles are whole rows; the block-quantized types'
/// blocks are multiples of 8 already, F16 and BF16 need the check), and sizes within the
/// kernels' int arguments and the grid's y extent. Otherwise the matrix-vector kernels run.
pub(super) fn gemm_applies(ty: GgmlType, rows: usize, cols: usize, n_tokens: usize) -> bool {
    let typed = ty == GgmlType::F32
        || (cuda_type(ty).is_some() && cols.is_multiple_of(DEQUANT_VALUES_PER_THREAD));
    let int = |v: usize| i32::try_from(v).is_ok();
    typed
        && n_tokens >= PREFILL_GEMM_MIN_TOKENS
        && rows > 0
        && cols > 0
        && int(rows)
        && int(cols)
        && int(n_tokens)
        && n_tokens.div_ceil(GEMM_TILE) <= MAX_GRID_YZ
}

/// Rows of a weight dequantized at once on the GEMM path: as many as `budget_floats` f32 values
/// hold, rounded down to whole [`GEMM_TILE`]s, at least one `GEMM_TILE` (a weight wider than
/// `budget_floats / 64` columns exceeds the budget rather than fails) and at most `rows`.
pub(super) fn gemm_tile_rows(rows: usize, cols: usize, budget_floats: usize) -> usize {
    let fit = budget_floats / cols.max(1) / GEMM_TILE * GEMM_TILE;
    fit.max(GEMM_TILE).min(rows)
}

impl CudaBackend {
    /// `out (n_tokens, rows) = x (n_tokens, cols) * w^T`: the GEMM path where
    /// [`gemm_applies`] (and its scratch fits), else the matrix-vector kernels.
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
        if gemm_applies(w.ty, w.rows, w.cols, n_tokens) && self.matmul_gemm(w, x, n_tokens, out)? {
            return Ok(());
        }
        let t = cuda_type(w.ty).ok_or_else(|| self.unsupported(w))?;
        let ny = grid_yz(OP, "n_tokens", n_tokens)?;
        let rows = to_i32(OP, "rows", w.rows)?;
        let cols = to_i32(OP, "cols", w.cols)?;
        let grid = (blocks_for(w.rows, 4), ny, 1);
        let block = (32, 4, 1);
        let name = matvec_kernel(t);
        match t.matvec {
            MatVec::Float => {
                if !w.cols.is_multiple_of(2) {
                    return Err(shape(
                        OP,
                        format!("{} has an odd number of columns", w.name),
                    ));
                }
                let mut launch = self.stream.launch_builder(self.function(&name)?);
                launch.arg(&w.data).arg(x).arg(out).arg(&rows).arg(&cols);
                // SAFETY: mul_mat_vec_f32/f16/bf16(const float*/half*/u16* w, const float* x,
                // float* out, int rows, int cols) over (ceil(rows/4), n_tokens) blocks of (32,4)
                // reads rows*cols weights (the upload checked the byte size), n_tokens*cols
                // values of x and writes n_tokens*rows of out (lengths checked); cols is even.
                unsafe { launch.launch(cfg(grid, block)) }.map_err(|e| self.err(&name, e))?;
            }
            MatVec::Q8_1 => {
                // Q8_1 activations need whole 32-blocks; every block-quantized type's blocks
                // (32 or 256 weights) divide cols (checked at upload).
                if !w.cols.is_multiple_of(32) {
                    return Err(shape(
                        OP,
                        format!("{} columns, need a multiple of 32", w.cols),
                    ));
                }
                let n_values = n_tokens * w.cols;
                let mut reused = self.reused();
                let q8 = grown(
                    &self.stream,
                    &self.gpu,
                    &mut reused.q8,
                    n_values / 32 * Q8_1_BLOCK_BYTES,
                )
                .map_err(|e| self.err("allocating Q8_1 activations", e))?;
                let n_i64 = n_values as i64;
                let mut quant = self.stream.launch_builder(self.function("quantize_q8_1")?);
                quant.arg(x).arg(&mut *q8).arg(&n_i64);
                // SAFETY: quantize_q8_1(const float* x, q8_1* y, i64 n) over ceil(n/256) blocks
                // of 256 reads n values of x (length checked) and writes n/32 blocks of 36 bytes
                // into q8, which holds at least that many bytes (`grown`); n % 32 == 0.
                unsafe { quant.launch(cfg((blocks_for(n_values, 256), 1, 1), (256, 1, 1))) }
                    .map_err(|e| self.err("quantize_q8_1", e))?;
                drop(quant);
                let n_tokens_i = to_i32(OP, "n_tokens", n_tokens)?;
                let token_groups = grid_yz(OP, "token groups", n_tokens.div_ceil(MMVQ_TOKENS))?;
                let mut launch = self.stream.launch_builder(self.function(&name)?);
                launch
                    .arg(&w.data)
                    .arg(&*q8)
                    .arg(out)
                    .arg(&rows)
                    .arg(&cols)
                    .arg(&n_tokens_i);
                // SAFETY: mul_mat_vec_<type>_q8_1(const void* w, const q8_1* y, float* out, int
                // rows, int cols, int n_tokens) over (ceil(rows/4), ceil(n_tokens/8)) blocks of
                // (32,4) reads the rows*cols weights (byte size checked at upload),
                // n_tokens*cols/32 Q8_1 blocks and writes n_tokens*rows values of out (length
                // checked).
                unsafe { launch.launch(cfg((grid.0, token_groups, 1), block)) }
                    .map_err(|e| self.err(&name, e))?;
            }
        }
        Ok(())
    }

    /// The tensor-core prefill path of `matmul` (weights other than F32 with `cols` a multiple of
    /// [`TC_K_MULTIPLE`]): the activations are converted to f16 once, then [`gemm_in_tiles`]
    /// multiplies with `gemm_f16_tc` (WMMA, f32 accumulation), F16 weights as they lie and other
    /// types dequantized to f16 tile by tile. Returns `Ok(false)` having launched nothing when the
    /// device is out of memory for the f16 copies, so that the caller runs the matrix-vector
    /// kernels.
    ///
    /// [`gemm_in_tiles`]: CudaBackend::gemm_in_tiles
    fn matmul_tensor_cores(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<bool, BackendError> {
        let n_values = n_tokens * w.cols;
        let mut x16 = match self.stream.alloc_zeros::<u16>(n_values) {
            Ok(b) => self.wrap(b),
            Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => return Ok(false),
            Err(e) => return Err(self.err("allocating f16 activations", e)),
        };
        let n_i64 = n_values as i64;
        let mut convert = self
            .stream
            .launch_builder(self.function("convert_f32_to_f16")?);
        convert.arg(x).arg(&mut x16).arg(&n_i64);
        // SAFETY: convert_f32_to_f16(const float* x, __half* y, i64 n) over ceil(n/256) blocks
        // of 256 reads n = n_tokens*cols values of x (length checked by matmul) and writes n
        // halves into x16, allocated with n.
        unsafe { convert.launch(cfg((blocks_for(n_values, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("convert_f32_to_f16", e))?;
        drop(convert);
        self.gemm_in_tiles::<u16, u16>(w, &x16, n_tokens, out, &F16_GEMM)
    }

    /// The prefill path of `matmul` (for shapes [`gemm_applies`] accepts; `matmul` checked the
    /// lengths of `x` and `out`): `out (n_tokens, rows) = x (n_tokens, cols) * w^T`, on tensor
    /// cores where `cols` allows ([`CudaBackend::matmul_tensor_cores`]), else with the f32 kernel
    /// `gemm_f32_nt` ([`CudaBackend::gemm_in_tiles`]). Returns `Ok(false)`, having launched
    /// nothing, when the device is out of memory for the scratch, so that the caller runs the
    /// matrix-vector kernels, which need far less memory.
    fn matmul_gemm(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
    ) -> Result<bool, BackendError> {
        if w.ty != GgmlType::F32 && w.cols.is_multiple_of(TC_K_MULTIPLE) {
            return self.matmul_tensor_cores(w, x, n_tokens, out);
        }
        self.gemm_in_tiles::<f32, f32>(w, x, n_tokens, out, &F32_GEMM)
    }

    /// `out (n_tokens, rows) = x (n_tokens, cols) * w^T` with `kernels.gemm` over activations `x`
    /// of `A` (the GEMM kernels share one signature, `(x, w, out, M, N, K, ldo)`). Weights of
    /// `kernels.native` type are multiplied as they lie, in one launch; others are dequantized
    /// (`dequantize_<type>_<suffix>`) tile by tile of [`gemm_tile_rows`] whole rows into a
    /// scratch buffer of `T`, each tile multiplied into columns `r0..r0 + n` of `out` (offset by
    /// `r0`, row stride `rows`). The scratch is allocated per call with the stream-ordered
    /// allocator (freed on the stream after the last kernel that reads it, its memory kept in
    /// the driver's pool), so no idle backend holds it. `Ok(false)`, having launched nothing,
    /// when the device is out of memory for it.
    fn gemm_in_tiles<T, A>(
        &self,
        w: &CudaWeight,
        x: &DeviceBuf<A>,
        n_tokens: usize,
        out: &mut DeviceBuf<f32>,
        kernels: &TiledGemm,
    ) -> Result<bool, BackendError>
    where
        T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits,
        A: cudarc::driver::DeviceRepr,
    {
        const OP: &str = "matmul";
        let end = n_tokens * w.rows;
        if w.ty == kernels.native {
            let dims = GemmDims {
                m: n_tokens,
                n: w.rows,
                k: w.cols,
                ldo: w.rows,
            };
            self.launch_gemm(
                kernels,
                x,
                &w.data.slice(..),
                &mut out.slice_mut(0..end),
                dims,
            )?;
            return Ok(true);
        }
        let t = cuda_type(w.ty).ok_or_else(|| self.unsupported(w))?;
        let dequant_name = format!("dequantize_{}_{}", t.suffix, kernels.dequant_suffix);
        let dequant = self.function(&dequant_name)?;
        let row_bytes =
            w.ty.row_bytes(w.cols as u64)
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| shape(OP, format!("{}: no whole blocks per row", w.name)))?;
        let tile_rows = gemm_tile_rows(w.rows, w.cols, self.gemm_scratch_floats);
        let mut tile = match self.stream.alloc_zeros::<T>(tile_rows * w.cols) {
            Ok(tile) => self.wrap(tile),
            Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => return Ok(false),
            Err(e) => return Err(self.err("allocating a GEMM weight tile", e)),
        };
        let mut r0 = 0;
        while r0 < w.rows {
            let n_rows = tile_rows.min(w.rows - r0);
            let n_values = n_rows * w.cols;
            let n_i64 = n_values as i64;
            let src = w.data.slice(r0 * row_bytes..(r0 + n_rows) * row_bytes);
            let mut launch = self.stream.launch_builder(dequant);
            launch.arg(&src).arg(&mut tile).arg(&n_i64);
            // SAFETY: dequantize_<type>_<f32|f16>(const void* w, float*/__half* y, i64 n) over
            // ceil(n/8/256) blocks of 256 (8 values per thread; threads past n return) reads the
            // blocks of n = n_rows*cols weights from `src`, a view of exactly those n_rows whole
            // rows (row_bytes each; it starts at a block boundary, byte size checked at upload),
            // and writes n values of T (f32 or f16, matching the suffix) into `tile`, allocated
            // with tile_rows*cols >= n values (fresh allocation: 256-byte aligned for the 16-byte
            // stores). n is a multiple of the block size (whole rows) and of 8 (cols % 8 == 0,
            // checked by gemm_applies).
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
            self.launch_gemm(
                kernels,
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

/// The kernels of one GEMM path: the weight type it multiplies as it lies, the dequantize
/// kernels' output suffix for the other types, and the GEMM kernel with its block size.
struct TiledGemm {
    /// Weights of this type need no dequantization (`f32` weights for `gemm_f32_nt`, `f16` for
    /// `gemm_f16_tc`).
    native: GgmlType,
    /// `f32` or `f16`: which `dequantize_<type>_<suffix>` kernels fill the tiles.
    dequant_suffix: &'static str,
    /// `gemm_f32_nt` or `gemm_f16_tc`.
    gemm: &'static str,
    /// Threads per block of that GEMM kernel.
    block: u32,
}

/// f32 activations times f32 weight tiles on the SIMT kernel.
const F32_GEMM: TiledGemm = TiledGemm {
    native: GgmlType::F32,
    dequant_suffix: "f32",
    gemm: "gemm_f32_nt",
    block: 256,
};

/// f16 activations times f16 weight tiles on tensor cores (`cols % 32 == 0`).
const F16_GEMM: TiledGemm = TiledGemm {
    native: GgmlType::F16,
    dequant_suffix: "f16",
    gemm: "gemm_f16_tc",
    block: 128,
};

/// The shape of one GEMM launch: `out (m, n)` with row stride `ldo` = `x (m, k)` times
/// `w (n, k)` transposed.
#[derive(Clone, Copy)]
struct GemmDims {
    m: usize,
    n: usize,
    k: usize,
    ldo: usize,
}

impl CudaBackend {
    /// Launches `kernels.gemm(x, w, out, M, N, K, ldo)`. The callers pass `x` with `m * k` values
    /// (checked by `matmul`), `w` a view of exactly `n * k` values of the kernel's element type
    /// (the weight as uploaded, or a tile the dequantize launch before it on this stream wrote),
    /// and `out` a view starting at the first output column with at least `(m - 1) * ldo + n`
    /// values; `k` is a multiple of 32 for `gemm_f16_tc`.
    fn launch_gemm<A: cudarc::driver::DeviceRepr, W>(
        &self,
        kernels: &TiledGemm,
        x: &DeviceBuf<A>,
        w: &cudarc::driver::CudaView<'_, W>,
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
        let mut launch = self.stream.launch_builder(self.function(kernels.gemm)?);
        launch
            .arg(x)
            .arg(w)
            .arg(out)
            .arg(&m)
            .arg(&n)
            .arg(&k)
            .arg(&ldo);
        // SAFETY: gemm_f32_nt / gemm_f16_tc(const T* x, const T* w, float* out, int M, int N,
        // int K, int ldo) over (ceil(N/64), ceil(M/64)) blocks of kernels.block threads reads
        // M*K values of x and N*K values of w and writes out[m*ldo + n] for m < M, n < N, all
        // within `out` (its length checked above; x and w as the callers guarantee, see the doc
        // comment). Fresh allocations are 256-byte aligned and rows are 64-byte multiples when
        // K % 32 == 0, as gemm_f16_tc's 16-byte loads need.
        unsafe {
            launch.launch(cfg(
                (blocks_for(dims.n, GEMM_TILE), grid_m, 1),
                (kernels.block, 1, 1),
            ))
        }
        .map_err(|e| self.err(kernels.gemm, e))?;
        Ok(())
    }
}
