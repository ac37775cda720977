//! A model split by layers over one or more devices: the token embedding lookup on the host
//! (as llama.cpp keeps its input layer on the CPU; from one copy of the table, see
//! [`super::embedding`]), then each stage's layers in order, with the residual stream crossing
//! between devices at stage boundaries. The last stage produces logits.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use llmd_kernels::backend::{BackendError, HostStaging, KvTypes, WeightView};

use super::backend::{AnyExperts, AnyStage, ExpertScratch, StageBackend};
use super::batch::{Batch, SeqId};
use super::config::ModelConfig;
use super::embedding::Embedding;
use super::graphs::{graphs_enabled, GraphCounts};
use super::head_output::{device_select_enabled, HeadOutput};
use super::stage::{ForwardError, Handoff};
use super::weights::{ExpertWeights, WeightError};

/// A loaded model: host embedding plus stages covering every layer in order.
pub struct Pipeline {
    /// Hyperparameters.
    config: Arc<ModelConfig>,
    /// Where token embedding rows are read: an owned table, or the tied head's weight.
    embedding: Embedding,
    /// Whether the output head is the token embedding (the file has no `output.weight`).
    tied: bool,
    /// Stages in layer order; the last holds the head.
    stages: Vec<AnyStage>,
    /// Residual stream on the host between stages: `(batch, n_embd)`.
    hidden: Vec<f32>,
    /// The same in page-locked memory when a stage's device offers it (a GPU copies from and to
    /// it directly), else `None` and `hidden` serves.
    staging: Option<Box<dyn HostStaging>>,
    /// Whether page-locked memory is still worth asking for (no stage offers it, or allocating
    /// it failed once: ordinary memory then serves).
    want_staging: bool,
    /// Stage boundaries crossed device to device.
    device_handoffs: u64,
    /// Element types of the KV caches of sequences added from now on (f16 unless the load asked
    /// otherwise; a re-split keeps the running sequences' caches as they are).
    kv_types: KvTypes,
    /// The buffers that experts living off their layers' devices share (`--cpu-moe`), kept so
    /// that experts moved there by a live re-split share them too; dropped when no layer's
    /// experts are elsewhere any more.
    expert_scratch: ExpertScratch,
    /// When a step of several sequences over several stages runs as micro-batches that the
    /// stages work on at the same time ([`StageOverlap::from_env`] unless
    /// [`Pipeline::with_stage_overlap`] says otherwise).
    overlap: StageOverlap,
    /// Whether the stages capture their decode steps as CUDA graphs ([`graphs_enabled`] unless
    /// [`Pipeline::with_graphs`] says otherwise); given to the stages of a re-split too.
    graphs: bool,
    /// Whether the head picks the candidates rows ask for on its device
    /// ([`device_select_enabled`] unless [`Pipeline::with_device_select`] says otherwise); given
    /// to the stages of a re-split too.
    device_select: bool,
}

/// The environment variable that sets the stage overlap: `0` off, `1` always, unset (or anything
/// else) [`StageOverlap::Auto`].
pub const STAGE_OVERLAP_ENV: &str = "LLMD_STAGE_OVERLAP";

/// Rows every micro-batch needs for [`StageOverlap::Auto`] to cut a step. Below it a stage's time
/// is its weight reads, whatever the rows (decode is memory-bound: matrix-vector kernels and
/// small products), so two micro-batches over two stages would take T0 + max(T0, T1) + T1
/// instead of T0 + T1; from here the products are compute-bound and the overlap pays. A round
/// figure above the GEMM path's threshold, not yet measured on a GPU.
pub const MIN_OVERLAP_ROWS: usize = 32;

/// When the stages work on micro-batches of a step at the same time (see [`Pipeline::forward`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageOverlap {
    /// Never: each stage runs on the whole batch.
    Off,
    /// When every micro-batch has at least [`MIN_OVERLAP_ROWS`] rows (prompts of several
    /// sequences), where it pays.
    Auto,
    /// Whenever the batch can be cut (several sequences and stages): for tests and measurements.
    Always,
}

impl StageOverlap {
    /// The setting [`STAGE_OVERLAP_ENV`] asks for.
    pub fn from_env() -> Self {
        match std::env::var(STAGE_OVERLAP_ENV).as_deref() {
            Ok("0") => StageOverlap::Off,
            Ok("1") => StageOverlap::Always,
            _ => StageOverlap::Auto,
        }
    }

    /// The micro-batches of `batch` over `n_stages` stages under this setting; `gpu_stages` is
    /// how many of them queue their work on a GPU. [`StageOverlap::Auto`] cuts only where two
    /// stages can run at once: on at least two GPUs (a CPU stage runs synchronously, so cutting
    /// its batch would only add passes over its weights).
    fn parts(self, batch: &Batch, n_stages: usize, gpu_stages: usize) -> Vec<Range<usize>> {
        let parts = match self {
            StageOverlap::Off => return whole_batch(batch),
            StageOverlap::Auto if gpu_stages < 2 => return whole_batch(batch),
            StageOverlap::Auto | StageOverlap::Always => micro_batches(batch, n_stages),
        };
        if self == StageOverlap::Auto && parts.iter().any(|r| r.len() < MIN_OVERLAP_ROWS) {
            return whole_batch(batch);
        }
        parts
    }
}

impl Pipeline {
    /// Assembles a pipeline; the stages must cover `0..n_layer` in order and the last must hold
    /// the head. `embedding` is where token rows are read (shared with the head only if `tied`
    /// and the last stage holds it in host memory); `tied` says whether the head is the token
    /// embedding.
    pub fn new(
        config: Arc<ModelConfig>,
        embedding: Embedding,
        tied: bool,
        stages: Vec<AnyStage>,
    ) -> Result<Self, ForwardError> {
        let mut next = 0;
        for s in &stages {
            if s.layers().start != next {
                return Err(ForwardError::BadBatch(format!(
                    "stage on {} starts at layer {}, expected {next}",
                    s.device_name(),
                    s.layers().start
                )));
            }
            next = s.layers().end;
        }
        if next != config.n_layer || !stages.last().is_some_and(|s| s.has_head()) {
            return Err(ForwardError::BadBatch(
                "stages do not cover the model".into(),
            ));
        }
        if matches!(embedding, Embedding::SharedWithHead)
            && !(tied && stages.last().is_some_and(|s| s.head_in_host_memory()))
        {
            return Err(ForwardError::BadBatch(
                "the embedding can be shared only with a tied head in host memory".into(),
            ));
        }
        Ok(Pipeline {
            config,
            embedding,
            tied,
            stages,
            hidden: Vec::new(),
            staging: None,
            want_staging: true,
            device_handoffs: 0,
            kv_types: KvTypes::F16,
            expert_scratch: ExpertScratch::default(),
            overlap: StageOverlap::from_env(),
            graphs: graphs_enabled(),
            device_select: device_select_enabled(),
        })
    }

    /// The pipeline with CUDA graphs of decode steps on or off (see [`super::graphs`]).
    pub fn with_graphs(mut self, enabled: bool) -> Self {
        self.graphs = enabled;
        for s in &mut self.stages {
            s.set_graphs(enabled);
        }
        self
    }

    /// The pipeline with the head's selection of candidates on its device on or off (see
    /// [`super::head_output`]): off, whole logits rows are read and the same candidates picked
    /// on the host.
    pub fn with_device_select(mut self, enabled: bool) -> Self {
        self.device_select = enabled;
        for s in &mut self.stages {
            s.set_device_select(enabled);
        }
        self
    }

    /// What the stages' CUDA graphs have done so far, summed, and how many they hold.
    pub fn graph_counts(&self) -> (GraphCounts, usize) {
        self.stages
            .iter()
            .map(AnyStage::graph_counts)
            .fold((GraphCounts::default(), 0), |(sum, held), (c, h)| {
                (sum + c, held + h)
            })
    }

    /// The pipeline with stage overlap as `overlap` says (see [`Pipeline::forward`]).
    pub fn with_stage_overlap(mut self, overlap: StageOverlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// The pipeline with KV caches of `types` for the sequences it adds (the caller has checked
    /// that the model's heads are whole blocks of them: [`KvTypes::check_head_dim`]).
    pub fn with_kv_types(mut self, types: KvTypes) -> Self {
        self.kv_types = types;
        self
    }

    /// The pipeline with `scratch`, the buffers its experts living elsewhere share.
    pub fn with_expert_scratch(mut self, scratch: ExpertScratch) -> Self {
        self.expert_scratch = scratch;
        self
    }

    /// Layers whose experts live on another device than the layer's, by that device.
    pub fn experts_elsewhere(&self) -> Vec<(String, Range<usize>)> {
        self.stages
            .iter()
            .filter_map(|s| s.experts_elsewhere())
            .map(|(device, layers, _)| (device, layers))
            .collect()
    }

    /// The stage running layer `il`.
    fn stage_of(&mut self, il: usize) -> Result<&mut AnyStage, WeightError> {
        self.stages
            .iter_mut()
            .find(|s| s.layers().contains(&il))
            .ok_or_else(|| WeightError::Misplaced(format!("no stage runs layer {il}")))
    }

    /// Moves layer `il`'s experts from its stage's device to `to` (`--n-cpu-moe` raised live),
    /// where they share the buffers of the experts already there; `max_batch` sizes those
    /// buffers if they are the first. Returns the bytes copied.
    pub fn experts_out(
        &mut self,
        il: usize,
        to: &StageBackend,
        max_batch: usize,
    ) -> Result<u64, WeightError> {
        let config = Arc::clone(&self.config);
        let scratch = RefCell::new(std::mem::take(&mut self.expert_scratch));
        let load = |w: &ExpertWeights<WeightView<'_>>| -> Result<AnyExperts, _> {
            to.load_experts(&config, w, &mut scratch.borrow_mut(), max_batch)
        };
        let moved = self.stage_of(il).and_then(|s| s.experts_out(il, &load));
        self.expert_scratch = scratch.into_inner();
        moved
    }

    /// Brings layer `il`'s experts back onto its stage's device (`--n-cpu-moe` lowered live).
    /// Returns the bytes copied.
    pub fn experts_home(&mut self, il: usize) -> Result<u64, WeightError> {
        let moved = self.stage_of(il)?.experts_home(il)?;
        if self.experts_elsewhere().is_empty() {
            self.expert_scratch = ExpertScratch::default();
        }
        Ok(moved)
    }

    /// Takes every layer's experts living elsewhere out of the stages, by layer, before the
    /// stages are taken apart; [`Pipeline::put_experts`] gives them to the new ones.
    pub fn take_experts(&mut self) -> Vec<(usize, AnyExperts)> {
        self.stages
            .iter_mut()
            .flat_map(|s| s.take_experts())
            .collect()
    }

    /// Gives each layer of `experts` its experts living elsewhere (see
    /// [`Pipeline::take_experts`]). Fails only for a layer no stage runs or one holding its
    /// experts itself (a bug); the experts not given are then freed.
    pub fn put_experts(&mut self, experts: Vec<(usize, AnyExperts)>) -> Result<(), WeightError> {
        for (il, e) in experts {
            self.stage_of(il)?.put_experts(il, e)?;
        }
        Ok(())
    }

    /// Element types of the KV caches it allocates.
    pub fn kv_types(&self) -> KvTypes {
        self.kv_types
    }

    /// Hyperparameters.
    pub fn config(&self) -> &Arc<ModelConfig> {
        &self.config
    }

    /// The stages, in layer order.
    pub fn stages(&self) -> &[AnyStage] {
        &self.stages
    }

    /// Bytes of host memory the embedding table holds of its own (0 when it reads the tied head
    /// where that lies).
    pub fn embedding_bytes(&self) -> u64 {
        self.embedding.owned_bytes()
    }

    /// Whether the embedding lookups read the tied head's weight (no copy of their own).
    pub fn embedding_shared(&self) -> bool {
        matches!(self.embedding, Embedding::SharedWithHead)
    }

    /// Before the stages are taken apart with the head going to another device: an embedding
    /// shared with the head is copied into owned memory first (see [`Embedding::unshare`]).
    pub fn unshare_embedding(&mut self) -> Result<(), ForwardError> {
        self.embedding.unshare(&self.stages)
    }

    /// After the stages changed: shares the embedding with the head again if the head is tied and
    /// in host memory, dropping the owned copy.
    pub fn share_embedding(&mut self) {
        self.embedding.share(self.tied, &self.stages);
    }

    /// Replaces the stages (a re-split), returning the old ones.
    pub fn replace_stages(&mut self, stages: Vec<AnyStage>) -> Vec<AnyStage> {
        // The new stages may sit on other devices: ask them for staging memory afresh.
        self.staging = None;
        self.want_staging = true;
        let mut stages = stages;
        for s in &mut stages {
            s.set_graphs(self.graphs);
            s.set_device_select(self.device_select);
        }
        std::mem::replace(&mut self.stages, stages)
    }

    /// Mutable access to the stages.
    pub fn stages_mut(&mut self) -> &mut [AnyStage] {
        &mut self.stages
    }

    /// Allocates KV caches (of [`Pipeline::kv_types`]) for a sequence on every stage.
    pub fn add_sequence(&mut self, seq: SeqId, capacity: usize) -> Result<(), BackendError> {
        for i in 0..self.stages.len() {
            if let Err(e) = self.stages[i].add_sequence(seq, capacity, self.kv_types) {
                for s in &mut self.stages[..i] {
                    s.remove_sequence(seq);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Allocates KV caches for sequence `seq` with room for `capacity` positions on every stage,
    /// holding the first `len` positions of sequence `src`'s caches (a copy on each device; the
    /// types are `src`'s). Nothing is left allocated for `seq` on failure.
    pub fn fork_sequence(
        &mut self,
        src: SeqId,
        seq: SeqId,
        len: usize,
        capacity: usize,
    ) -> Result<(), BackendError> {
        for i in 0..self.stages.len() {
            if let Err(e) = self.stages[i].fork_sequence(src, seq, len, capacity) {
                for s in &mut self.stages[..i] {
                    s.remove_sequence(seq);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Bytes of sequence `seq`'s KV caches over every stage.
    pub fn sequence_kv_bytes(&self, seq: SeqId) -> u64 {
        self.stages.iter().map(|s| s.sequence_kv_bytes(seq)).sum()
    }

    /// Frees a sequence's KV caches on every stage.
    pub fn remove_sequence(&mut self, seq: SeqId) {
        for s in &mut self.stages {
            s.remove_sequence(seq);
        }
    }

    /// Runs the whole model over `batch`; writes the logits of the tokens that want them, in
    /// batch order, `n_vocab` each. The residual stream crosses between stages in host memory:
    /// page-locked when a stage's device offers it (GPU copies then run as direct DMA), else
    /// ordinary memory.
    ///
    /// Stage overlap (as [`StageOverlap`] allows): with several stages and several sequences,
    /// the batch is cut into micro-batches of whole sequences (see [`micro_batches`]) and the stages are issued as a
    /// wavefront: stage `i + 1` takes micro-batch `k` (its copy ordered after stage `i`'s writes
    /// by an event, and stage `i`'s next writes after the copy) before stage `i` is issued on
    /// micro-batch `k + 1`, so devices whose work is queued without host waits run both at
    /// once. The last stage only gathers each micro-batch's rows wanting logits; the head runs
    /// once at the end, with the step's one read-back. Each sequence's rows stay together, so
    /// its attention, and every token, is what the whole batch gives.
    pub fn forward(&mut self, batch: &Batch, logits: &mut Vec<f32>) -> Result<(), ForwardError> {
        let mut out = HeadOutput::default();
        out.logits = std::mem::take(logits);
        let ran = self.forward_rows(batch, &mut out);
        *logits = std::mem::take(&mut out.logits);
        ran
    }

    /// Runs the whole model over `batch` as [`Pipeline::forward`] does, each token wanting
    /// logits getting what `out.requests` asks for it, in batch order (see [`HeadOutput`]):
    /// its logits row, or only the candidates its sampler needs, which the head's device picks
    /// so that only they are read back.
    pub fn forward_rows(
        &mut self,
        batch: &Batch,
        out: &mut HeadOutput,
    ) -> Result<(), ForwardError> {
        let d = self.config.n_embd;
        let need = batch.len() * d;
        self.ensure_staging(need);
        let hidden: &mut [f32] = match self.staging.as_mut() {
            Some(staging) => &mut staging.values()?[..need],
            None => {
                self.hidden.resize(need, 0.0);
                &mut self.hidden
            }
        };
        self.embedding
            .lookup(&self.config, &self.stages, &batch.tokens, hidden)?;
        let kinds: Vec<Option<&'static str>> =
            self.stages.iter().map(|s| s.handoff_kind()).collect();
        let n_stages = self.stages.len();
        let gpu_stages = self
            .stages
            .iter()
            .filter(|s| matches!(s, AnyStage::Cuda(_)))
            .count();
        let parts = self.overlap.parts(batch, n_stages, gpu_stages);
        let whole = parts.len() == 1;
        let sub: Vec<Batch> = if whole {
            Vec::new()
        } else {
            parts.iter().map(|r| rows_of(batch, r.clone())).collect()
        };
        // What stage i left on its device for stage i + 1, by micro-batch.
        let mut inputs: Vec<Vec<Option<_>>> = (0..n_stages)
            .map(|_| (0..parts.len()).map(|_| None).collect())
            .collect();
        // Rows wanting logits gathered for the head so far.
        let mut head_row = 0;
        // Wavefront: at step t stage i works on micro-batch t - i, later stages issued first.
        for t in 0..parts.len() + n_stages - 1 {
            for i in (0..n_stages).rev() {
                let Some(k) = t.checked_sub(i).filter(|&k| k < parts.len()) else {
                    continue;
                };
                let part = if whole { batch } else { &sub[k] };
                let rows = parts[k].clone();
                // Device to device when this stage and the next can copy from each other.
                let next = kinds.get(i + 1).copied().flatten();
                let mut handoff = Handoff {
                    input: inputs[i][k].take(),
                    keep_output: next.is_some() && kinds[i] == next,
                    output: None,
                    head_row,
                    defer_head: !whole,
                };
                let hidden_part = &mut hidden[rows.start * d..rows.end * d];
                self.stages[i].forward(part, hidden_part, out, &mut handoff)?;
                if handoff.output.is_some() {
                    self.device_handoffs += 1;
                }
                if i + 1 < n_stages {
                    inputs[i + 1][k] = handoff.output;
                } else {
                    head_row += part.n_logits();
                }
            }
        }
        if !whole {
            if let Some(last) = self.stages.last_mut() {
                last.head(head_row, out)?;
            }
        }
        // The stages copy the residual stream from page-locked staging when their streams get
        // there; the logits' read-back waits for that, but a step wanting no logits (a prompt
        // chunk) ends without a wait, and the next step's embedding would overwrite the staging
        // before those copies ran.
        if self.staging.is_some() && batch.n_logits() == 0 {
            for s in &self.stages {
                s.synchronize()?;
            }
        }
        Ok(())
    }

    /// Stage boundaries crossed device to device so far (the others went through the host).
    pub fn device_handoffs(&self) -> u64 {
        self.device_handoffs
    }

    /// Whether the residual stream crosses in page-locked memory (after a forward step).
    pub fn uses_page_locked_staging(&self) -> bool {
        self.staging.is_some()
    }

    /// Makes `staging` hold at least `need` values if a stage offers page-locked memory (its
    /// allocations are slow, so it grows to the largest batch seen and stays).
    fn ensure_staging(&mut self, need: usize) {
        if !self.want_staging || self.staging.as_ref().is_some_and(|s| s.len() >= need) {
            return;
        }
        let offered = self.stages.iter().find_map(|s| s.alloc_host_staging(need));
        match offered {
            Some(Ok(staging)) => self.staging = Some(staging),
            Some(Err(e)) => {
                tracing::warn!("page-locked memory for activations: {e}; using ordinary memory");
                self.staging = None;
                self.want_staging = false;
            }
            None => {
                self.staging = None;
                self.want_staging = false;
            }
        }
    }
}

/// The micro-batches of a step over `n_stages` stages, as row ranges of `batch` in order: one
/// per stage at most, each of whole runs of one sequence and as even in rows as the runs allow.
/// One range (the whole batch) when there is nothing to overlap: a single stage, a single
/// sequence, or a sequence whose rows are not all in one run (its attention would then span
/// micro-batches).
pub fn micro_batches(batch: &Batch, n_stages: usize) -> Vec<Range<usize>> {
    let segments = batch.segments();
    let distinct = segments
        .iter()
        .enumerate()
        .all(|(i, s)| segments[..i].iter().all(|o| o.seq != s.seq));
    let count = n_stages.min(segments.len());
    if count < 2 || !distinct {
        return whole_batch(batch);
    }
    let mut out = Vec::with_capacity(count);
    let mut start = 0;
    let mut seg = 0;
    for k in 0..count {
        // Whole runs until this part reaches its share of the rows left, leaving at least one
        // run for each part after it.
        let share = (batch.len() - start).div_ceil(count - k);
        let mut end = segments[seg].rows.end;
        seg += 1;
        while seg < segments.len() - (count - k - 1) && end - start < share {
            end = segments[seg].rows.end;
            seg += 1;
        }
        if k + 1 == count {
            end = batch.len();
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// The whole of `batch` as its one micro-batch.
fn whole_batch(batch: &Batch) -> Vec<Range<usize>> {
    std::iter::once(0..batch.len()).collect()
}

/// Rows `rows` of `batch` as a batch of their own.
fn rows_of(batch: &Batch, rows: Range<usize>) -> Batch {
    Batch {
        tokens: batch.tokens[rows.clone()].to_vec(),
        positions: batch.positions[rows.clone()].to_vec(),
        seqs: batch.seqs[rows.clone()].to_vec(),
        logits: batch.logits[rows].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `runs` (sequence, rows) in order.
    fn batch_of(runs: &[(SeqId, usize)]) -> Batch {
        let mut b = Batch::default();
        for &(seq, n) in runs {
            for p in 0..n {
                b.push(1, p as u32, seq, true);
            }
        }
        b
    }

    #[test]
    fn micro_batches_keep_sequences_whole_and_share_the_rows() {
        let decode = batch_of(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(micro_batches(&decode, 2), vec![0..2, 2..4]);
        assert_eq!(micro_batches(&decode, 3), vec![0..2, 2..3, 3..4]);
        assert_eq!(micro_batches(&decode, 8), vec![0..1, 1..2, 2..3, 3..4]);
        let odd = batch_of(&[(1, 1), (2, 1), (3, 1)]);
        assert_eq!(micro_batches(&odd, 2), vec![0..2, 2..3]);
        // A prompt beside decode steps: the long run alone.
        let mixed = batch_of(&[(1, 6), (2, 1), (3, 1)]);
        assert_eq!(micro_batches(&mixed, 2), vec![0..6, 6..8]);
    }

    #[test]
    fn nothing_to_overlap_is_one_micro_batch() {
        let two = batch_of(&[(1, 1), (2, 1)]);
        assert_eq!(micro_batches(&two, 1), vec![0..2]);
        assert_eq!(micro_batches(&batch_of(&[(1, 5)]), 4), vec![0..5]);
        // Sequence 1 in two runs.
        let split = batch_of(&[(1, 1), (2, 1), (1, 1)]);
        assert_eq!(micro_batches(&split, 2), vec![0..3]);
    }

    #[test]
    fn auto_overlap_cuts_only_batches_of_long_runs() {
        let decode = batch_of(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(StageOverlap::Auto.parts(&decode, 2, 2), vec![0..4]);
        assert_eq!(StageOverlap::Always.parts(&decode, 2, 0), vec![0..2, 2..4]);
        assert_eq!(StageOverlap::Off.parts(&decode, 2, 2), vec![0..4]);
        let n = MIN_OVERLAP_ROWS;
        let prompts = batch_of(&[(1, n), (2, n + 3)]);
        assert_eq!(
            StageOverlap::Auto.parts(&prompts, 2, 2),
            vec![0..n, n..2 * n + 3]
        );
        let short = batch_of(&[(1, n), (2, n - 1)]);
        assert_eq!(StageOverlap::Auto.parts(&short, 2, 2), vec![0..2 * n - 1]);
        // Fewer than two GPU stages: nothing would run at once.
        assert_eq!(StageOverlap::Auto.parts(&prompts, 2, 1), vec![0..2 * n + 3]);
        assert_eq!(StageOverlap::Auto.parts(&prompts, 2, 0), vec![0..2 * n + 3]);
    }
}
