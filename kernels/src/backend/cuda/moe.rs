//! A mixture of experts on the GPU without the host: the routing (`moe_route_f32`, `moe.cu`:
//! softmax, top-k and weights of every token, ids and weights left in device buffers), the routed
//! matmul (ggml's `mul_mat_id`: for decode-sized batches, every (token, expert) pair multiplied
//! by its expert in one launch of `mul_mat_vec_id_<type>_q8_1`, `mmvq.cu`, after one
//! `quantize_q8_1` of the activations, reading the pairs' expert ids where the routing wrote
//! them) and the weighted sum of the experts' outputs into the residual stream
//! (`moe_combine_f32`, or together with the down in one routed launch,
//! `mul_mat_vec_id_combine_<type>_q8_1`); before them, the block's norm quantizes its output once
//! for the router and the routed gate and up (`rms_norm_q8_1`). The experts' weights stay where they were uploaded: the routed kernel
//! finds them through a small device table of their addresses, uploaded once per set of experts
//! ([`ExpertTables`]), so a decode step uploads nothing and can be captured in a CUDA graph.

use cudarc::driver::PushKernelArg;

use super::fused::decode_q8;
use super::matmul::{matmul_path, MatmulPath, MMVQ_TOKENS, Q8_1_BLOCK_BYTES};
use super::types::{cuda_type, routed_combine_kernel, routed_matvec_kernel, CudaType, MatVec};
use super::{
    blocks_for, cfg, check_len, grid_yz, shape, to_i32, BackendError, CudaBackend, CudaWeight,
    DeviceBuf, GatedActivation, Reused, RouteBuffers, RouteWeights,
};
use crate::backend::moe;
use crate::moe::Routing;
use crate::quant::GgmlType;

/// Weight rows one block of the routed kernel computes (MMVQ_ROWS in mmvq.cu).
const ROUTED_ROWS: usize = 4;

/// Warps of a `moe_router_route_f32` block, each computing every fourth logit of its token
/// (MOE_ROUTER_WARPS in moe.cu).
const ROUTER_WARPS: u32 = 4;

/// Expert tables a backend keeps at most: one per layer of every model on the stream's device
/// (a 94-layer model twice over is under 200); beyond, the tables are dropped and rebuilt as
/// used (a re-split that uploads experts anew leaves tables of freed weights behind).
const MAX_EXPERT_TABLES: usize = 1024;

/// The device tables of expert addresses the routed kernel reads, one per set of experts (a
/// layer's gate, up or down), each found by the addresses it holds: a table whose addresses
/// equal the experts' is theirs, whatever uploaded it.
#[derive(Default)]
pub(super) struct ExpertTables {
    /// The addresses each table holds, and the table on the device.
    tables: Vec<(Vec<u64>, DeviceBuf<u64>)>,
}

impl CudaBackend {
    /// [`super::Backend::routes`]: block-quantized experts (float ones have no routed kernel)
    /// for batches of up to [`MMVQ_TOKENS`] tokens (beyond, the grouped path's matrix-matrix
    /// kernels read each expert once for all of its rows, where the routed kernel reads it once
    /// per pair).
    pub(super) fn routes_on_device(&self, expert: &CudaWeight, n_tokens: usize) -> bool {
        n_tokens <= MMVQ_TOKENS && cuda_type(expert.ty).is_some_and(|t| t.matvec == MatVec::Q8_1)
    }

    /// The index in `tables` of the device table of `experts`' addresses, uploaded on first use
    /// (an eager step: a captured one finds it and uploads nothing).
    fn expert_table(
        &self,
        tables: &mut ExpertTables,
        experts: &[CudaWeight],
    ) -> Result<usize, BackendError> {
        let addresses = || experts.iter().map(|w| w.data.device_address(&self.stream));
        if let Some(at) = tables
            .tables
            .iter()
            .position(|(held, _)| held.iter().copied().eq(addresses()))
        {
            return Ok(at);
        }
        if tables.tables.len() >= MAX_EXPERT_TABLES {
            // Graphs captured with the dropped tables' addresses must not be replayed.
            self.gpu.reallocated();
            tables.tables.clear();
        }
        let held: Vec<u64> = addresses().collect();
        let mut dev = self.alloc::<u64>("an expert table", held.len())?;
        self.stream
            .memcpy_htod(&held, &mut dev.slice_mut(0..held.len()))
            .map_err(|e| self.err("uploading an expert table", e))?;
        tables.tables.push((held, dev));
        Ok(tables.tables.len() - 1)
    }

    /// The routed kernel's type for `sets` of experts (a block's gate and up, or one of its
    /// sets), refused where [`CudaBackend::routes_on_device`] says no or where the experts
    /// differ in type or shape.
    fn routed_type(
        &self,
        sets: &[&[CudaWeight]],
        n_tokens: usize,
    ) -> Result<&'static CudaType, BackendError> {
        const OP: &str = "matmul_id";
        let first = sets
            .first()
            .and_then(|s| s.first())
            .ok_or_else(|| shape(OP, "no experts".into()))?;
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
        for set in sets {
            if set.len() != sets[0].len() {
                return Err(shape(
                    OP,
                    format!("sets of {} and {} experts", sets[0].len(), set.len()),
                ));
            }
            for w in *set {
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
        }
        Ok(t)
    }

    /// One launch of the routed kernel of type `t` over the pairs of `n_tokens` tokens with
    /// `n_used` experts each, for each set of experts (at most two: `sets`, each with its
    /// output), their activations in `q8` (`x_rows` rows of `cols`).
    #[allow(clippy::too_many_arguments)]
    fn launch_routed(
        &self,
        t: &CudaType,
        q8: &DeviceBuf<u8>,
        x_per_pair: bool,
        tables: &ExpertTables,
        sets: &mut [(&[CudaWeight], usize, &mut DeviceBuf<f32>)],
        ids: &DeviceBuf<f32>,
        n_tokens: usize,
        n_used: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "matmul_id";
        let (experts, _, _) = sets.first().ok_or_else(|| shape(OP, "no experts".into()))?;
        let first = experts
            .first()
            .ok_or_else(|| shape(OP, "no experts".into()))?;
        if n_tokens == 0 || n_used == 0 || sets.len() > 2 {
            return Err(shape(
                OP,
                format!(
                    "{n_used} experts per token for {n_tokens} tokens, {} sets of experts",
                    sets.len()
                ),
            ));
        }
        let (rows, cols, n_expert) = (first.rows, first.cols, experts.len());
        let pairs = n_tokens * n_used;
        let (x_rows, pairs_per_row) = if x_per_pair {
            (pairs, 1)
        } else {
            (n_tokens, n_used)
        };
        check_len(OP, ids.len(), pairs)?;
        check_len(OP, q8.len(), x_rows * cols / 32 * Q8_1_BLOCK_BYTES)?;
        for (_, _, out) in sets.iter() {
            check_len(OP, out.len(), pairs * rows)?;
        }
        let grid_y = grid_yz(OP, "expert pairs", pairs * sets.len())?;
        let rows_i = to_i32(OP, "rows", rows)?;
        let cols_i = to_i32(OP, "cols", cols)?;
        let n_expert_i = to_i32(OP, "experts", n_expert)?;
        let pairs_i = to_i32(OP, "expert pairs", pairs)?;
        let pairs_per_row_i = to_i32(OP, "pairs per row", pairs_per_row)?;
        let grid_x = u32::try_from(rows.div_ceil(ROUTED_ROWS))
            .map_err(|_| shape(OP, "too many rows".into()))?;
        let null = 0u64;
        let name = routed_matvec_kernel(t);
        let mut launch = self.stream.launch_builder(self.function(&name)?);
        launch.arg(q8).arg(&cols_i);
        let [(_, table0, out0), rest @ ..] = sets else {
            return Err(shape(OP, "no experts".into()));
        };
        launch.arg(&tables.tables[*table0].1).arg(&mut **out0);
        match rest {
            [(_, table1, out1)] => launch.arg(&tables.tables[*table1].1).arg(&mut **out1),
            _ => launch.arg(&null).arg(&null),
        };
        launch
            .arg(&n_expert_i)
            .arg(ids)
            .arg(&pairs_i)
            .arg(&pairs_per_row_i)
            .arg(&rows_i);
        // SAFETY: mul_mat_vec_id_<type>_q8_1(const q8_1* y, int cols, const u64* experts0,
        // float* out0, const u64* experts1, float* out1, int n_expert, const float* ids, int
        // n_pairs, int pairs_per_row, int rows) over (ceil(rows/4), n_pairs * sets) blocks of
        // (32,4): block (x, y) takes set y / n_pairs (experts1 and out1 are null only with one
        // set, whose grid never reaches them) and pair p = y % n_pairs: it reads row
        // p / pairs_per_row of q8 (x_rows * cols / 32 blocks, length checked), ids[p] (pairs
        // values, checked) and, for an id below n_expert (others give NaN rows), that expert's
        // weight through its set's table (which holds exactly that set's n_expert addresses,
        // live allocations of this context that the sets borrow until the launch is enqueued,
        // and the stream frees buffers only after their last use; each `rows` rows of `cols`
        // values of type `t`, byte size checked at upload and every set's shapes checked equal
        // by `routed_type`), and writes row p of its set's output (pairs * rows values,
        // checked).
        unsafe { launch.launch(cfg((grid_x, grid_y, 1), (32, ROUTED_ROWS as u32, 1))) }
            .map_err(|e| self.err(&name, e))?;
        Ok(())
    }

    /// [`super::Backend::matmul_id`]: refused where [`CudaBackend::routes_on_device`] says no.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_id_on_device(
        &self,
        experts: &[CudaWeight],
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        n_used: usize,
        x_per_pair: bool,
        ids: &DeviceBuf<f32>,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        let t = self.routed_type(&[experts], n_tokens)?;
        let cols = experts[0].cols;
        let x_rows = if x_per_pair {
            n_tokens * n_used
        } else {
            n_tokens
        };
        let mut reused = self.reused();
        let Reused {
            q8, expert_tables, ..
        } = &mut *reused;
        let table = self.expert_table(expert_tables, experts)?;
        let q8 = self.quantize_q8_1(q8, x, x_rows * cols)?;
        let mut sets = [(experts, table, out)];
        self.launch_routed(
            t,
            q8,
            x_per_pair,
            expert_tables,
            &mut sets,
            ids,
            n_tokens,
            n_used,
        )
    }

    /// [`super::Backend::matmul_id_pair`]: the activations quantized once, both sets of experts
    /// in one launch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_id_pair_on_device(
        &self,
        gate: &[CudaWeight],
        up: &[CudaWeight],
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        n_used: usize,
        ids: &DeviceBuf<f32>,
        gate_out: &mut DeviceBuf<f32>,
        up_out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        let Ok(t) = self.routed_type(&[gate, up], n_tokens) else {
            // Gate and up of different types or shapes: one launch each.
            self.matmul_id_on_device(gate, x, n_tokens, n_used, false, ids, gate_out)?;
            return self.matmul_id_on_device(up, x, n_tokens, n_used, false, ids, up_out);
        };
        let cols = gate[0].cols;
        let mut reused = self.reused();
        let Reused {
            q8, expert_tables, ..
        } = &mut *reused;
        let gate_table = self.expert_table(expert_tables, gate)?;
        let up_table = self.expert_table(expert_tables, up)?;
        let q8 = self.quantize_q8_1(q8, x, n_tokens * cols)?;
        let mut sets = [(gate, gate_table, gate_out), (up, up_table, up_out)];
        self.launch_routed(
            t,
            q8,
            false,
            expert_tables,
            &mut sets,
            ids,
            n_tokens,
            n_used,
        )
    }

    /// [`super::Backend::norm_route_pair`]: one `rms_norm_q8_1` (the normalised rows and their
    /// Q8_1 quantization), the router's product and the routing (for an F32 router, as
    /// llama-quantize leaves it, in one launch: `moe_router_route_f32`; otherwise
    /// `mul_mat_vec_<type>_q8_1` on that quantization, or `mul_mat_vec_f16`/`bf16` on the
    /// normalised rows, then `moe_route_f32`) and one routed launch for gate and up on the same
    /// quantization: three or four launches where the single ops take five or six. Elsewhere (a router
    /// or experts without these kernels, rows not of whole Q8_1 blocks) the single ops.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn norm_route_pair_on_device(
        &self,
        x: &DeviceBuf<f32>,
        w: RouteWeights<'_, CudaWeight>,
        routing: &Routing,
        n_tokens: usize,
        dim: usize,
        eps: f32,
        out: RouteBuffers<'_, DeviceBuf<f32>>,
    ) -> Result<(), BackendError> {
        let router = w.router;
        let router_q8 = decode_q8(&[router], n_tokens, dim);
        // A float router's matrix-vector kernel reads the f32 rows and leaves the Q8_1 buffer
        // alone (and takes no lock on it).
        let router_float = router.cols == dim
            && cuda_type(router.ty).is_some_and(|t| t.matvec == MatVec::Float)
            && matmul_path(router.ty, router.rows, router.cols, n_tokens) == MatmulPath::MatVec;
        let routed = self.routed_type(&[w.gate, w.up], n_tokens);
        let (Ok(t), true) = (
            routed,
            n_tokens > 0
                && dim.is_multiple_of(32)
                && (router_q8 || router_float)
                && w.gate.first().is_some_and(|g| g.cols == dim),
        ) else {
            return moe::norm_route_pair(self, x, w, routing, n_tokens, dim, eps, out);
        };
        let mut reused = self.reused();
        let Reused {
            q8, expert_tables, ..
        } = &mut *reused;
        let gate_table = self.expert_table(expert_tables, w.gate)?;
        let up_table = self.expert_table(expert_tables, w.up)?;
        let q8 = self.rms_norm_q8_1(q8, x, w.norm, n_tokens, dim, eps, out.normed)?;
        if router_q8 {
            self.launch_mmvq(q8, n_tokens, false, &mut [(router, &mut *out.logits)])?;
            self.route_on_device(routing, out.logits, n_tokens, out.ids, out.weights)?;
        } else if router.ty == GgmlType::F32 {
            let logits = (&mut *out.logits, &mut *out.ids, &mut *out.weights);
            self.router_route_on_device(router, out.normed, n_tokens, routing, logits)?;
        } else {
            self.matmul_on_device(router, out.normed, n_tokens, out.logits)?;
            self.route_on_device(routing, out.logits, n_tokens, out.ids, out.weights)?;
        }
        let mut sets = [(w.gate, gate_table, out.gate), (w.up, up_table, out.up)];
        self.launch_routed(
            t,
            q8,
            false,
            expert_tables,
            &mut sets,
            out.ids,
            n_tokens,
            routing.n_used,
        )
    }

    /// [`super::Backend::gated_matmul_id`]: `glu_q8_1` (the activation and the quantization of
    /// its result in one pass) and the routed product of each pair's own row.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gated_matmul_id_on_device(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        ff: usize,
        act: GatedActivation,
        down: &[CudaWeight],
        n_tokens: usize,
        n_used: usize,
        ids: &DeviceBuf<f32>,
        out: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        let t = self.routed_type(&[down], n_tokens)?;
        if down[0].cols != ff || !ff.is_multiple_of(32) {
            return Err(shape(
                "gated_matmul_id",
                format!("experts of {} columns after {ff} activations", down[0].cols),
            ));
        }
        let mut reused = self.reused();
        let Reused {
            q8, expert_tables, ..
        } = &mut *reused;
        let table = self.expert_table(expert_tables, down)?;
        let q8 = self.glu_q8_1(q8, gate, up, n_tokens * n_used * ff, act)?;
        let mut sets = [(down, table, out)];
        self.launch_routed(t, q8, true, expert_tables, &mut sets, ids, n_tokens, n_used)
    }

    /// [`super::Backend::gated_matmul_id_combine`]: `glu_q8_1` and one launch of
    /// `mul_mat_vec_id_combine_<type>_q8_1`, which computes each pair's down products as the
    /// routed kernel does and sums them (with the shared expert's) into `x` as `moe_combine_f32`
    /// does, so the pairs' products are never written (`scratch` is not used): two launches
    /// where the single ops take three.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gated_matmul_id_combine_on_device(
        &self,
        gate: &mut DeviceBuf<f32>,
        up: &DeviceBuf<f32>,
        ff: usize,
        act: GatedActivation,
        down: &[CudaWeight],
        n_tokens: usize,
        n_used: usize,
        ids: &DeviceBuf<f32>,
        weights: &DeviceBuf<f32>,
        width: usize,
        shared: Option<(&DeviceBuf<f32>, &DeviceBuf<f32>)>,
        _scratch: &mut DeviceBuf<f32>,
        x: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "gated_matmul_id_combine";
        let t = self.routed_type(&[down], n_tokens)?;
        let (rows, cols) = (down[0].rows, down[0].cols);
        if cols != ff || !ff.is_multiple_of(32) || rows != width {
            return Err(shape(
                OP,
                format!("experts of {rows} x {cols} after {ff} activations into rows of {width}"),
            ));
        }
        let pairs = n_tokens * n_used;
        let len = n_tokens * width;
        if n_used == 0 {
            return Err(shape(OP, "no expert used per token".into()));
        }
        check_len(OP, ids.len(), pairs)?;
        check_len(OP, weights.len(), pairs)?;
        check_len(OP, x.len(), len)?;
        if let Some((mlp, gate_logit)) = shared {
            check_len(OP, mlp.len(), len)?;
            check_len(OP, gate_logit.len(), n_tokens)?;
        }
        if n_tokens == 0 {
            return Ok(());
        }
        let grid_y = grid_yz(OP, "tokens", n_tokens)?;
        let grid_x = u32::try_from(rows.div_ceil(ROUTED_ROWS))
            .map_err(|_| shape(OP, "too many rows".into()))?;
        let cols_i = to_i32(OP, "cols", cols)?;
        let rows_i = to_i32(OP, "rows", rows)?;
        let n_expert_i = to_i32(OP, "experts", down.len())?;
        let k_i = to_i32(OP, "experts used", n_used)?;
        let mut reused = self.reused();
        let Reused {
            q8, expert_tables, ..
        } = &mut *reused;
        let table = self.expert_table(expert_tables, down)?;
        let q8 = self.glu_q8_1(q8, gate, up, pairs * ff, act)?;
        check_len(OP, q8.len(), pairs * cols / 32 * Q8_1_BLOCK_BYTES)?;
        let null = 0u64;
        let name = routed_combine_kernel(t);
        let mut launch = self.stream.launch_builder(self.function(&name)?);
        launch
            .arg(q8)
            .arg(&cols_i)
            .arg(&expert_tables.tables[table].1)
            .arg(&n_expert_i)
            .arg(ids)
            .arg(weights)
            .arg(&k_i)
            .arg(&rows_i);
        match shared {
            Some((mlp, gate_logit)) => launch.arg(mlp).arg(gate_logit),
            None => launch.arg(&null).arg(&null),
        };
        launch.arg(x);
        // SAFETY: mul_mat_vec_id_combine_<type>_q8_1(const q8_1* y, int cols, const u64*
        // experts, int n_expert, const float* ids, const float* weights, int n_used, int rows,
        // const float* shared, const float* shared_gate, float* x) over (ceil(rows/4), n_tokens)
        // blocks of (32,4): block (bx, t) reads the n_used pairs of token t: their ids and
        // weights (n_tokens * n_used values each, checked), their Q8_1 rows of q8 (pairs *
        // cols / 32 blocks, checked) and, for an id below n_expert (others give NaN), that
        // expert's weight through the table (exactly the n_expert addresses of `down`, live
        // allocations of this context borrowed until the launch is enqueued; each `rows` rows of
        // `cols` values of type `t`, byte size checked at upload, shapes checked equal by
        // `routed_type`); with shared not null, row t of shared and shared_gate[t] (checked);
        // and it adds into row t of x (n_tokens * rows values, checked).
        unsafe { launch.launch(cfg((grid_x, grid_y, 1), (32, ROUTED_ROWS as u32, 1))) }
            .map_err(|e| self.err(&name, e))?;
        Ok(())
    }

    /// An F32 router's product and the routing in one launch (`moe_router_route_f32`: one block
    /// per token, the same bits as `mul_mat_vec_f32` and `moe_route_f32`): the `n_tokens` rows
    /// of `x` times `router` into `logits` (then probabilities), the chosen experts' ids and
    /// weights into `ids` and `weights`.
    fn router_route_on_device(
        &self,
        router: &CudaWeight,
        x: &DeviceBuf<f32>,
        n_tokens: usize,
        routing: &Routing,
        (logits, ids, weights): (
            &mut DeviceBuf<f32>,
            &mut DeviceBuf<f32>,
            &mut DeviceBuf<f32>,
        ),
    ) -> Result<(), BackendError> {
        const OP: &str = "router_route";
        routing
            .check_device()
            .map_err(|e| shape(OP, e.to_string()))?;
        let (e, k, cols) = (routing.n_expert, routing.n_used, router.cols);
        if router.ty != GgmlType::F32 || router.rows != e || !cols.is_multiple_of(2) {
            return Err(shape(
                OP,
                format!(
                    "router {} ({}, {} x {cols}) for {e} experts: need F32 rows of an even \
                     width",
                    router.name, router.ty, router.rows
                ),
            ));
        }
        check_len(OP, x.len(), n_tokens * cols)?;
        check_len(OP, logits.len(), n_tokens * e)?;
        check_len(OP, ids.len(), n_tokens * k)?;
        check_len(OP, weights.len(), n_tokens * k)?;
        if n_tokens == 0 {
            return Ok(());
        }
        let blocks = u32::try_from(n_tokens).map_err(|_| shape(OP, "too many tokens".into()))?;
        let cols_i = to_i32(OP, "cols", cols)?;
        let e_i = to_i32(OP, "experts", e)?;
        let k_i = to_i32(OP, "experts used", k)?;
        let normalize = i32::from(routing.normalize);
        let name = "moe_router_route_f32";
        let mut launch = self.stream.launch_builder(self.function(name)?);
        launch
            .arg(&router.data)
            .arg(x)
            .arg(&cols_i)
            .arg(logits)
            .arg(&e_i)
            .arg(&k_i)
            .arg(&normalize)
            .arg(ids)
            .arg(weights);
        // SAFETY: moe_router_route_f32(const float* router, const float* x, int cols, float*
        // logits, int n_expert, int n_used, int normalize, float* ids, float* weights) over
        // n_tokens blocks of (32, MOE_ROUTER_WARPS = 4): block t reads the router's n_expert rows
        // of cols f32 values (an F32 weight of n_expert rows, byte size checked at upload; cols
        // even, so rows are read as aligned pairs) and row t of x (n_tokens * cols values,
        // checked), writes row t of logits (n_tokens * n_expert, checked) and row t of ids and
        // weights (n_tokens * n_used each, checked); 1 <= n_used <= min(n_expert, MOE_MAX_USED)
        // checked by check_device.
        unsafe { launch.launch(cfg((blocks, 1, 1), (32, ROUTER_WARPS, 1))) }
            .map_err(|e| self.err(name, e))?;
        Ok(())
    }

    /// [`super::Backend::route_experts`]: one warp per token.
    pub(super) fn route_on_device(
        &self,
        routing: &Routing,
        logits: &mut DeviceBuf<f32>,
        n_tokens: usize,
        ids: &mut DeviceBuf<f32>,
        weights: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "route_experts";
        routing
            .check_device()
            .map_err(|e| shape(OP, e.to_string()))?;
        let (e, k) = (routing.n_expert, routing.n_used);
        check_len(OP, logits.len(), n_tokens * e)?;
        check_len(OP, ids.len(), n_tokens * k)?;
        check_len(OP, weights.len(), n_tokens * k)?;
        if n_tokens == 0 {
            return Ok(());
        }
        let blocks = u32::try_from(n_tokens).map_err(|_| shape(OP, "too many tokens".into()))?;
        let e_i = to_i32(OP, "experts", e)?;
        let k_i = to_i32(OP, "experts used", k)?;
        let normalize = i32::from(routing.normalize);
        let mut launch = self.stream.launch_builder(self.function("moe_route_f32")?);
        launch
            .arg(logits)
            .arg(&e_i)
            .arg(&k_i)
            .arg(&normalize)
            .arg(ids)
            .arg(weights);
        // SAFETY: moe_route_f32(float* logits, int n_expert, int n_used, int normalize, float*
        // ids, float* weights) over n_tokens blocks of 32: block t rewrites row t of logits
        // (n_tokens * n_expert values, checked) and writes row t of ids and weights (n_tokens *
        // n_used values each, checked); 1 <= n_used <= min(n_expert, MOE_MAX_USED) checked by
        // check_device.
        unsafe { launch.launch(cfg((blocks, 1, 1), (32, 1, 1))) }
            .map_err(|e| self.err("moe_route_f32", e))?;
        Ok(())
    }

    /// [`super::Backend::moe_combine`]: one thread per value of the residual.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn combine_on_device(
        &self,
        down: &DeviceBuf<f32>,
        weights: &DeviceBuf<f32>,
        n_tokens: usize,
        n_used: usize,
        width: usize,
        shared: Option<(&DeviceBuf<f32>, &DeviceBuf<f32>)>,
        x: &mut DeviceBuf<f32>,
    ) -> Result<(), BackendError> {
        const OP: &str = "moe_combine";
        let len = n_tokens * width;
        if n_used == 0 {
            return Err(shape(OP, "no expert used per token".into()));
        }
        check_len(OP, down.len(), n_tokens * n_used * width)?;
        check_len(OP, weights.len(), n_tokens * n_used)?;
        check_len(OP, x.len(), len)?;
        if let Some((mlp, gate)) = shared {
            check_len(OP, mlp.len(), len)?;
            check_len(OP, gate.len(), n_tokens)?;
        }
        if len == 0 {
            return Ok(());
        }
        let k_i = to_i32(OP, "experts used", n_used)?;
        let width_i = to_i32(OP, "width", width)?;
        let n = len as i64;
        let null = 0u64;
        let mut launch = self
            .stream
            .launch_builder(self.function("moe_combine_f32")?);
        launch.arg(down).arg(weights).arg(&k_i).arg(&width_i);
        match shared {
            Some((mlp, gate)) => launch.arg(mlp).arg(gate),
            None => launch.arg(&null).arg(&null),
        };
        launch.arg(x).arg(&n);
        // SAFETY: moe_combine_f32(const float* down, const float* weights, int n_used, int
        // width, const float* shared, const float* shared_gate, float* x, i64 n) over
        // ceil(n/256) blocks of 256: value i of x (n = n_tokens * width, checked) reads n_used
        // rows of down (n_tokens * n_used * width values, checked), n_used weights (checked) and,
        // when shared is not null, value i of shared and one gate per token (both checked).
        unsafe { launch.launch(cfg((blocks_for(len, 256), 1, 1), (256, 1, 1))) }
            .map_err(|e| self.err("moe_combine_f32", e))?;
        Ok(())
    }
}
