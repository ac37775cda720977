//! The routed matmul of a mixture of experts on the GPU (ggml's `mul_mat_id`): for decode-sized
//! batches, every (token, expert) pair of a batch multiplied by its expert in one launch of
//! `mul_mat_vec_id_<type>_q8_1` (`mmvq.cu`), after one `quantize_q8_1` of the activations. The
//! experts' weights stay where they were uploaded: the kernel finds them through a small device
//! table of their addresses, uploaded with the pairs' expert ids in one copy per call.

use cudarc::driver::PushKernelArg;

use super::matmul::{MMVQ_TOKENS, Q8_1_BLOCK_BYTES};
use super::types::{cuda_type, routed_matvec_kernel, MatVec};
use super::{
    cfg, check_len, grid_yz, grown, shape, to_i32, BackendError, CudaBackend, CudaWeight,
    DeviceBuf, Reused,
};

/// Weight rows one block of the routed kernel computes (MMVQ_ROWS in mmvq.cu).
const ROUTED_ROWS: usize = 4;

impl CudaBackend {
    /// [`super::Backend::routes`]: block-quantized experts (float ones have no routed kernel)
    /// for batches of up to [`MMVQ_TOKENS`] tokens (beyond, the grouped path's matrix-matrix
    /// kernels read each expert once for all of its rows, where the routed kernel reads it once
    /// per pair).
    pub(super) fn routes_on_device(&self, expert: &CudaWeight, n_tokens: usize) -> bool {
        n_tokens <= MMVQ_TOKENS && cuda_type(expert.ty).is_some_and(|t| t.matvec == MatVec::Q8_1)
    }

    /// [`super::Backend::matmul_id`]: refused where [`CudaBackend::routes_on_device`] says no.
    pub(super) fn matmul_id_on_device(
        &self,
        experts: &[CudaWeight],
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        x_per_pair: bool,
        ids: &[u32],
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul_id";
        let first = experts
            .first()
            .ok_or_else(|| shape(OP, "no experts".into()))?;
        if n_tokens == 0 || !ids.len().is_multiple_of(n_tokens) {
            return Err(shape(
                OP,
                format!("{} expert ids for {n_tokens} tokens", ids.len()),
            ));
        }
        let t = cuda_type(first.ty).ok_or_else(|| self.unsupported(first))?;
        if !self.routes_on_device(first, n_tokens) {
            return Err(shape(
                OP,
                format!(
                    "{n_tokens} tokens of {} experts: no routed kernel (float experts, or more \
                     than {MMVQ_TOKENS} tokens)",
                    first.ty
                ),
            ));
        }
        for w in experts {
            if w.ty != first.ty || w.rows != first.rows || w.cols != first.cols {
                return Err(shape(
                    OP,
                    format!(
                        "experts {} and {} differ in type or shape",
                        first.name, w.name
                    ),
                ));
            }
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= experts.len()) {
            return Err(shape(
                OP,
                format!("expert id {bad} of {} experts", experts.len()),
            ));
        }
        let (rows, cols) = (first.rows, first.cols);
        let per_token = ids.len() / n_tokens;
        let (x_rows, pairs_per_row) = if x_per_pair {
            (ids.len(), 1)
        } else {
            (n_tokens, per_token)
        };
        check_len(OP, x.len(), x_rows * cols)?;
        check_len(OP, out.len(), ids.len() * rows)?;
        let n_pairs = grid_yz(OP, "expert pairs", ids.len())?;
        let rows_i = to_i32(OP, "rows", rows)?;
        let cols_i = to_i32(OP, "cols", cols)?;
        let n_expert_i = to_i32(OP, "experts", experts.len())?;
        let pairs_per_row_i = to_i32(OP, "pairs per row", pairs_per_row)?;
        let grid_x = u32::try_from(rows.div_ceil(ROUTED_ROWS))
            .map_err(|_| shape(OP, "too many rows".into()))?;
        // The experts' addresses, then the pairs' expert ids: one upload.
        let table: Vec<u64> = experts
            .iter()
            .map(|w| w.data.device_address(&self.stream))
            .chain(ids.iter().map(|&id| u64::from(id)))
            .collect();
        let mut reused = self.reused();
        let Reused { q8, routed, .. } = &mut *reused;
        let q8 = self.quantize_q8_1(q8, x, x_rows * cols)?;
        check_len(OP, q8.len(), x_rows * cols / 32 * Q8_1_BLOCK_BYTES)?;
        let table_dev = grown(&self.stream, &self.gpu, routed, table.len())
            .map_err(|e| self.err("allocating the expert table", e))?;
        self.stream
            .memcpy_htod(&table, &mut table_dev.slice_mut(0..table.len()))
            .map_err(|e| self.err("uploading the expert table", e))?;
        let name = routed_matvec_kernel(t);
        let mut launch = self.stream.launch_builder(self.function(&name)?);
        launch
            .arg(q8)
            .arg(&cols_i)
            .arg(&*table_dev)
            .arg(&n_expert_i)
            .arg(&pairs_per_row_i)
            .arg(out)
            .arg(&rows_i);
        // SAFETY: mul_mat_vec_id_<type>_q8_1(const q8_1* y, int cols, const u64* table, int
        // n_expert, int pairs_per_row, float* out, int rows) over (ceil(rows/4), n_pairs) blocks
        // of (32,4): block (x, p) reads row p / pairs_per_row of q8 (x_rows * cols / 32 blocks,
        // length checked), table[n_expert + p] (an id below n_expert, checked) and that
        // expert's weight at table[id] (a live allocation of this context: `experts` borrows
        // it until the launch is enqueued, and the stream frees buffers only after their last
        // use; its `rows` rows of `cols` values of type `t`, byte size checked at upload and
        // shapes checked equal above), and writes row p of out (ids.len() * rows values,
        // checked).
        unsafe { launch.launch(cfg((grid_x, n_pairs, 1), (32, ROUTED_ROWS as u32, 1))) }
            .map_err(|e| self.err(&name, e))?;
        Ok(())
    }
}
