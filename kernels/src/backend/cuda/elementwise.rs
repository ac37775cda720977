//! The element-wise ops of `elementwise.cu`: bias, soft-capping, residual add, scaling and
//! the gated activations (GeGLU, SwiGLU).

use cudarc::driver::PushKernelArg;

use super::{
    blocks_for, cfg, check_len, to_i32, BackendError, CudaBackend, CudaWeight, DeviceBuf,
    GatedActivation,
};

impl CudaBackend {
    pub(super) fn add_bias_on_device(
        &self,
        x: &mut DeviceBuf<f32>,
        bias: &CudaWeight,
        n_tokens: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "add_bias";
        let width = bias.rows * bias.cols;
        let b = self.f32_vector(OP, bias, width)?;
        let n = n_tokens * width;
        check_len(OP, x.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let width_i = to_i32(OP, "width", width)?;
        let n_i64 = n as i64;
        let mut launch = self.stream.launch_builder(self.function("add_bias_f32")?);
        launch.arg(x).arg(b).arg(&width_i).arg(&n_i64);
        // SAFETY: add_bias_f32(float* x, const float* bias, int width, i64 n) over ceil(n/256)
        // blocks of 256 updates n values of x (checked) reading width values of bias (checked).
        unsafe { launch.launch(cfg((blocks_for(n, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("add_bias_f32", e))?;
        Ok(())
    }

    pub(super) fn softcap_on_device(
        &self,
        x: &mut DeviceBuf<f32>,
        cap: f32,
        len: usize,
    ) -> Result<(), BackendError> {
        check_len("softcap", x.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        let mut launch = self.stream.launch_builder(self.function("softcap_f32")?);
        launch.arg(x).arg(&cap).arg(&n);
        // SAFETY: softcap_f32(float* x, float cap, i64 n) over ceil(n/256) blocks of 256
        // rewrites n values of x (length checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("softcap_f32", e))?;
        Ok(())
    }

    pub(super) fn add_on_device(
        &self,
        dst: &mut DeviceBuf<f32>,
        src: &DeviceBuf<f32>,
        len: usize,
    ) -> Result<(), BackendError> {
        check_len("add", dst.len(), len)?;
        check_len("add", src.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        let mut launch = self.stream.launch_builder(self.function("add_f32")?);
        launch.arg(dst).arg(src).arg(&n);
        // SAFETY: add_f32(float* dst, const float* src, i64 n) over ceil(n/256) blocks of 256
        // touches n values of each buffer (both lengths checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("add_f32", e))?;
        Ok(())
    }

    pub(super) fn scale_on_device(
        &self,
        x: &mut DeviceBuf<f32>,
        factor: f32,
        len: usize,
    ) -> Result<(), BackendError> {
        check_len("scale", x.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = len as i64;
        let mut launch = self.stream.launch_builder(self.function("scale_f32")?);
        launch.arg(x).arg(&factor).arg(&n);
        // SAFETY: scale_f32(float* x, float factor, i64 n) over ceil(n/256) blocks of 256
        // scales n values of x (length checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("scale_f32", e))?;
        Ok(())
    }

    pub(super) fn gated_activation_on_device(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        len: usize,
        act: GatedActivation,
    ) -> Result<(), BackendError> {
        check_len("gated_activation", gate.len(), len)?;
        check_len("gated_activation", up.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let name = match act {
            GatedActivation::Silu => "swiglu_f32",
            GatedActivation::Gelu => "geglu_f32",
        };
        let n = len as i64;
        let mut launch = self.stream.launch_builder(self.function(name)?);
        launch.arg(gate).arg(up).arg(&n);
        // SAFETY: geglu_f32/swiglu_f32(float* gate, const float* up, i64 n) over ceil(n/256)
        // blocks of 256 touch n values of each buffer (both lengths checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err(name, e))?;
        Ok(())
    }
}
