//! The selection of the best entries of logits rows on the GPU (`select.cu`'s
//! `select_chunks_f32`, then `select_merge_f32` when a row spans several chunks), exact as the
//! host's [`crate::select`].

use cudarc::driver::PushKernelArg;

use super::{cfg, grid_yz, grown, BackendError, CudaBackend, DeviceBuf};
use crate::backend::check_select;
use crate::select::{Selection, CANDIDATE_FLOATS};

/// Threads of a selection block (`SEL_THREADS` in `select.cu`).
const SELECT_THREADS: u32 = 256;
/// Values of a row one block of the first pass selects from (`SEL_CHUNK` in `select.cu`).
const SELECT_CHUNK: usize = 4096;

impl CudaBackend {
    pub(super) fn select_on_device(
        &self,
        x: &DeviceBuf<f32>,
        m: usize,
        n: usize,
        sel: Selection,
        out: &mut DeviceBuf<f32>,
        out_at: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "select";
        let at = check_select(x.len(), m, n, sel, out.len(), out_at)?;
        if m == 0 {
            return Ok(());
        }
        let rows = grid_yz(OP, "rows", m)?;
        let k = sel.k() as i32;
        let greedy = i32::from(sel == Selection::Argmax);
        let n64 = n as i64;
        let n_chunks = n.div_ceil(SELECT_CHUNK);
        let mut dst = out.slice_mut(at);
        if n_chunks == 1 {
            let mut launch = self
                .stream
                .launch_builder(self.function("select_chunks_f32")?);
            launch.arg(x).arg(&n64).arg(&k).arg(&greedy).arg(&mut dst);
            // SAFETY: select_chunks_f32(const float* x, i64 n, int k, int greedy, float* out)
            // over (1, m) blocks of 256 reads m rows of n values of x and writes m * k
            // candidate pairs to out (lengths checked by check_select; k <= n).
            unsafe { launch.launch(cfg((1, rows, 1), (SELECT_THREADS, 1, 1))) }
                .map_err(|e| self.err("select_chunks_f32", e))?;
            return Ok(());
        }
        let mut reused = self.reused();
        let partials = grown(
            &self.stream,
            &self.gpu,
            &mut reused.select,
            m * n_chunks * sel.k() * CANDIDATE_FLOATS,
        )
        .map_err(|e| self.err("allocating the selection's partial results", e))?;
        let chunks = u32::try_from(n_chunks)
            .map_err(|_| super::shape(OP, format!("{n_chunks} chunks of a row")))?;
        let mut launch = self
            .stream
            .launch_builder(self.function("select_chunks_f32")?);
        launch
            .arg(x)
            .arg(&n64)
            .arg(&k)
            .arg(&greedy)
            .arg(&mut *partials);
        // SAFETY: as above over (n_chunks, m) blocks: block (c, r) writes at most k candidate
        // pairs of chunk c of row r at slots (r * n_chunks + c) * k of partials, which holds
        // m * n_chunks * k pairs.
        unsafe { launch.launch(cfg((chunks, rows, 1), (SELECT_THREADS, 1, 1))) }
            .map_err(|e| self.err("select_chunks_f32", e))?;
        let n_chunks_i = chunks as i32;
        let mut launch = self
            .stream
            .launch_builder(self.function("select_merge_f32")?);
        launch
            .arg(&*partials)
            .arg(&n64)
            .arg(&n_chunks_i)
            .arg(&k)
            .arg(&greedy)
            .arg(&mut dst);
        // SAFETY: select_merge_f32(const float* partials, i64 n, int n_chunks, int k, int greedy,
        // float* out) over (1, m) blocks of 256 reads each row's n_chunks * k pairs that the first
        // pass wrote (the last chunk's filled slots computed from n) and writes m * k pairs to
        // out (length checked).
        unsafe { launch.launch(cfg((1, rows, 1), (SELECT_THREADS, 1, 1))) }
            .map_err(|e| self.err("select_merge_f32", e))?;
        Ok(())
    }
}
