//! The token embedding lookup, on the host before the first stage (as llama.cpp keeps its input
//! layer on the CPU), from one copy of the table:
//!
//! - **Shared with the head**: a model whose output head reuses the embedding (tied, no
//!   `output.weight`) with the head on a device whose weights lie in host memory (a CPU device)
//!   reads the rows of that weight ([`Backend::embed_host`](llmd_kernels::backend::Backend)), so
//!   the table is resident once.
//! - **Owned**: otherwise the table is read from the model file at load into memory the daemon
//!   owns (the file is never mapped; see [`super::host_tensors`]).
//!
//! A live re-split that takes a shared head off its device first copies the table out of it
//! ([`Embedding::unshare`]), and shares it again once a host-memory device holds the head
//! ([`Embedding::share`]), so the table is never lost and never kept twice afterwards.

use llmd_kernels::quant;

use super::backend::AnyStage;
use super::config::ModelConfig;
use super::host_tensors::OwnedTensor;
use super::stage::ForwardError;

/// Where a pipeline reads its token embedding rows.
#[derive(Debug)]
pub enum Embedding {
    /// A copy of the table in host memory the daemon owns, in the file's layout.
    Owned(OwnedTensor),
    /// The tied output head's weight on the last stage, whose device holds it in host memory.
    SharedWithHead,
}

impl Embedding {
    /// Bytes of host memory it holds of its own (0 when shared with the head).
    pub fn owned_bytes(&self) -> u64 {
        match self {
            Embedding::Owned(t) => t.bytes(),
            Embedding::SharedWithHead => 0,
        }
    }

    /// Looks `tokens` up into `hidden`, `(tokens, n_embd)`, scaled by the model's embedding
    /// scale; `stages` are the pipeline's (the last holds the head).
    pub fn lookup(
        &self,
        config: &ModelConfig,
        stages: &[AnyStage],
        tokens: &[u32],
        hidden: &mut [f32],
    ) -> Result<(), ForwardError> {
        match self {
            Embedding::Owned(table) => lookup_owned(table, config, tokens, hidden),
            Embedding::SharedWithHead => {
                let head = stages
                    .last()
                    .ok_or_else(|| ForwardError::BadBatch("the pipeline has no stages".into()))?;
                let scale = config.embed_scale.unwrap_or(1.0);
                match head.embed_from_head(
                    tokens,
                    scale,
                    &mut hidden[..tokens.len() * config.n_embd],
                ) {
                    Some(done) => Ok(done?),
                    None => Err(ForwardError::BadBatch(format!(
                        "the embedding is shared with the output head, but {} does not hold it \
                         in host memory",
                        head.device_name()
                    ))),
                }
            }
        }
    }

    /// Before a re-split that moves the head off its device: a shared table is copied out of
    /// the head into owned memory (from the device, not the file, which may have changed).
    pub fn unshare(&mut self, stages: &[AnyStage]) -> Result<(), ForwardError> {
        if let Embedding::SharedWithHead = self {
            let head = stages
                .last()
                .and_then(|s| s.head_output_host())
                .ok_or_else(|| {
                    ForwardError::BadBatch("no output head to copy the embedding from".into())
                })??;
            *self = Embedding::Owned(head);
        }
        Ok(())
    }

    /// After the stages changed: for a tied model whose head is now on a host-memory device, the
    /// owned copy is dropped and the head's weight serves the lookups.
    pub fn share(&mut self, tied: bool, stages: &[AnyStage]) {
        if tied && stages.last().is_some_and(|s| s.head_in_host_memory()) {
            *self = Embedding::SharedWithHead;
        }
    }
}

/// Dequantizes the rows of `tokens` from an owned `table` into `hidden`.
fn lookup_owned(
    table: &OwnedTensor,
    config: &ModelConfig,
    tokens: &[u32],
    hidden: &mut [f32],
) -> Result<(), ForwardError> {
    let d = config.n_embd;
    let row_bytes = table
        .ty
        .row_bytes(d as u64)
        .ok_or_else(|| ForwardError::BadBatch("embedding rows are not whole blocks".into()))?
        as usize;
    for (t, &id) in tokens.iter().enumerate() {
        let id = id as usize;
        if id >= table.rows {
            return Err(ForwardError::BadBatch(format!(
                "token id {id} is outside the vocabulary of {}",
                table.rows
            )));
        }
        let row = &table.data[id * row_bytes..(id + 1) * row_bytes];
        let out = &mut hidden[t * d..(t + 1) * d];
        quant::dequantize(table.ty, row, out)
            .map_err(|e| ForwardError::BadBatch(format!("embedding row {id}: {e}")))?;
        if let Some(scale) = config.embed_scale {
            out.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(())
}
