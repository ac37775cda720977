//! Rotary position embedding of queries or keys in place (`rope.cu`'s `rope_f32`).

use cudarc::driver::PushKernelArg;

use super::{
    cfg, check_len, check_rope, grid_yz, shape, to_i32, BackendError, CudaBackend, CudaWeight,
    DeviceBuf, RopeMode, RopeParams,
};
use crate::quant::GgmlType;

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rope_on_device(
        &self,
        x: &mut DeviceBuf<f32>,
        n_tokens: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        p: RopeParams,
        freq_factors: Option<&CudaWeight>,
    ) -> Result<(), BackendError> {
        const OP: &str = "rope";
        if positions.len() != n_tokens {
            return Err(shape(
                OP,
                format!("{} positions for {n_tokens} tokens", positions.len()),
            ));
        }
        if let Some(f) = freq_factors.filter(|f| f.ty != GgmlType::F32) {
            return Err(self.unsupported(f));
        }
        check_rope(&p, head_dim, freq_factors.map(|f| f.rows * f.cols))?;
        check_len(OP, x.len(), n_tokens * n_heads * head_dim)?;
        if n_tokens == 0 || n_heads == 0 {
            return Ok(());
        }
        let heads = u32::try_from(n_heads).map_err(|_| shape(OP, "too many heads".into()))?;
        let ny = grid_yz(OP, "n_tokens", n_tokens)?;
        let heads_i = to_i32(OP, "n_heads", n_heads)?;
        let hd = to_i32(OP, "head_dim", head_dim)?;
        let nd = to_i32(OP, "n_dims", p.n_dims)?;
        let neox: i32 = (p.mode == RopeMode::Neox).into();
        let [corr_low, corr_high] = p.corr_dims();
        let no_factors: u64 = 0;
        let mut reused = self.reused();
        let pos = self.device_positions(&mut reused.positions, positions)?;
        let mut launch = self.stream.launch_builder(self.function("rope_f32")?);
        launch.arg(x).arg(pos);
        match freq_factors {
            Some(f) => launch.arg(&f.data),
            None => launch.arg(&no_factors),
        };
        launch
            .arg(&heads_i)
            .arg(&hd)
            .arg(&nd)
            .arg(&p.freq_base)
            .arg(&p.freq_scale)
            .arg(&p.ext_factor)
            .arg(&p.attn_factor)
            .arg(&corr_low)
            .arg(&corr_high)
            .arg(&neox);
        // SAFETY: rope_f32(float* x, const u32* positions, const float* freq_factors, int
        // n_heads, int head_dim, int n_dims, float freq_base, float freq_scale, float ext_factor,
        // float attn_factor, float corr_low, float corr_high, int neox) over (n_heads, n_tokens)
        // blocks of 64 rotates n_tokens*n_heads*head_dim values of x (checked) using n_tokens
        // positions (checked) and, when not null, n_dims/2 f32 frequency factors (an F32 weight
        // of at least that many values, checked); n_dims is even and <= head_dim.
        unsafe { launch.launch(cfg((heads, ny, 1), (64, 1, 1))) }
            .map_err(|e| self.err("rope_f32", e))?;
        Ok(())
    }
}
