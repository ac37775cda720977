//! Token embedding: the rows of a table of any weight type gathered and dequantized
//! (`getrows.cu`'s `get_rows_<type>`).

use cudarc::driver::PushKernelArg;

use super::types::cuda_type;
use super::{
    blocks_for, cfg, check_len, grid_yz, shape, to_i32, BackendError, CudaBackend, CudaWeight,
    DeviceBuf,
};

impl CudaBackend {
    pub(super) fn embed_on_device(
        &self,
        table: &CudaWeight,
        ids: &[u32],
        scale: f32,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "embed";
        let t = cuda_type(table.ty).ok_or_else(|| self.unsupported(table))?;
        if !table.cols.is_multiple_of(8) {
            return Err(shape(
                OP,
                format!("{} columns, need a multiple of 8", table.cols),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(shape(
                OP,
                format!("token id {bad} beyond {} rows", table.rows),
            ));
        }
        check_len(OP, out.len(), ids.len() * table.cols)?;
        if ids.is_empty() {
            return Ok(());
        }
        let n = grid_yz(OP, "tokens", ids.len())?;
        let cols = to_i32(OP, "cols", table.cols)?;
        let ids_dev = self
            .stream
            .clone_htod(ids)
            .map(|s| self.wrap(s))
            .map_err(|e| self.err("uploading token ids", e))?;
        let name = format!("get_rows_{}", t.suffix);
        let f = self.function(&name)?;
        let mut launch = self.stream.launch_builder(f);
        launch
            .arg(&table.data)
            .arg(&ids_dev)
            .arg(out)
            .arg(&cols)
            .arg(&scale);
        // SAFETY: get_rows_<type>(const void* table, const u32* ids, float* out, int cols,
        // float scale) over (ceil(cols/8/256), n_tokens) blocks of 256 reads rows ids[t] < rows
        // of the table (checked) and writes n_tokens * cols values of out (length checked).
        unsafe { launch.launch(cfg((blocks_for(table.cols, 8 * 256), n, 1), (256, 1, 1))) }
            .map_err(|e| self.err(&name, e))?;
        Ok(())
    }
}
