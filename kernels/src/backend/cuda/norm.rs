//! RMS norm (`norm.cu`): in place or into another buffer.

use cudarc::driver::{DevicePtrMut, PushKernelArg};

use super::{cfg, check_len, shape, to_i32, BackendError, CudaBackend, CudaWeight, DeviceBuf};

impl CudaBackend {
    /// Checks the shapes of an RMS norm and returns the weight's values and `dim` as an int.
    pub(super) fn rms_norm_args<'w>(
        &self,
        x_len: usize,
        weight: &'w CudaWeight,
        n_rows: usize,
        dim: usize,
    ) -> Result<(&'w DeviceBuf<u8>, i32), BackendError> {
        const OP: &str = "rms_norm";
        check_len(OP, x_len, n_rows * dim)?;
        let w = self.f32_vector(OP, weight, dim)?;
        Ok((w, to_i32(OP, "dim", dim)?))
    }

    pub(super) fn rms_norm_on_device(
        &self,
        x: &mut DeviceBuf<f32>,
        weight: &CudaWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), BackendError> {
        let (w, dim_i) = self.rms_norm_args(x.len(), weight, n_rows, dim)?;
        if n_rows == 0 {
            return Ok(());
        }
        let rows = u32::try_from(n_rows).map_err(|_| shape("rms_norm", "too many rows".into()))?;
        // The kernel is given x as both input and output (it allows out == x).
        let (ptr, _record) = x.device_ptr_mut(&self.stream);
        let mut launch = self.stream.launch_builder(self.function("rms_norm_f32")?);
        launch.arg(&ptr).arg(w).arg(&ptr).arg(&dim_i).arg(&eps);
        // SAFETY: rms_norm_f32(const float* x, const float* weight, float* out, int dim, float
        // eps) with n_rows blocks of 256 reads and writes n_rows*dim values at `ptr` (x's
        // length checked; each block reads its row fully before writing it, so out == x is
        // allowed) and reads dim weights (checked). `_record` orders the launch on the stream.
        unsafe { launch.launch(cfg((rows, 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("rms_norm_f32", e))?;
        Ok(())
    }

    pub(super) fn rms_norm_into_on_device(
        &self,
        x: &DeviceBuf<f32>,
        weight: &CudaWeight,
        n_rows: usize,
        dim: usize,
        eps: f32,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        let (w, dim_i) = self.rms_norm_args(x.len(), weight, n_rows, dim)?;
        check_len("rms_norm", out.len(), n_rows * dim)?;
        if n_rows == 0 {
            return Ok(());
        }
        let rows = u32::try_from(n_rows).map_err(|_| shape("rms_norm", "too many rows".into()))?;
        let mut launch = self.stream.launch_builder(self.function("rms_norm_f32")?);
        launch.arg(x).arg(w).arg(out).arg(&dim_i).arg(&eps);
        // SAFETY: rms_norm_f32 with n_rows blocks of 256 reads n_rows*dim values of x and dim
        // weights and writes n_rows*dim values of out; all lengths were checked.
        unsafe { launch.launch(cfg((rows, 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("rms_norm_f32", e))?;
        Ok(())
    }
}
