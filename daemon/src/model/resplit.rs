//! Live re-split: changing which device runs which layers of a loaded pipeline between two
//! forward steps, carrying the KV caches of the running sequences along, so that they continue
//! with exactly the tokens they would have produced.
//!
//! Memory: stages whose device, layers and head are unchanged are kept as they are. Every other
//! stage is first copied out (the KV caches of the running sequences, layer by layer, to the
//! host; weights need no copy, they are read again from the memory-mapped model file) and
//! dropped, returning its memory, and only then are the new stages built. So a device never
//! holds the old and the new copy of a layer at once: its peak is the larger of the old and the
//! new placement, never their sum, and a re-split fits whenever the new placement fits.
//! If building fails (another model took the memory meanwhile), the old placement is rebuilt the
//! same way and the error reported; only if that fails too is the pipeline left without stages
//! (reported as [`ResplitError::Broken`]: its generations must be stopped).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use llmd_kernels::backend::HostKv;
use thiserror::Error;

use super::backend::StageBackend;
use super::batch::SeqId;
use super::pipeline::{Pipeline, PipelineStage};
use super::weights::TensorSource;

/// A sequence running at the time of a re-split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSequence {
    /// Its id.
    pub id: SeqId,
    /// Positions in its KV cache now.
    pub len: usize,
    /// Positions its KV cache has room for.
    pub capacity: usize,
}

/// Where one stage lives: device, layers, head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Device name.
    pub device: String,
    /// The layers it runs.
    pub layers: Range<usize>,
    /// Whether it holds the output head.
    pub head: bool,
}

/// What a re-split did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResplitReport {
    /// Seconds from the first copy to the last upload.
    pub secs: f64,
    /// Bytes copied onto devices: weights and KV caches of the rebuilt stages.
    pub bytes_moved: u64,
    /// Layers now on another device than before.
    pub layers_moved: usize,
    /// Stages built anew.
    pub stages_rebuilt: usize,
    /// Running sequences carried over.
    pub sequences: usize,
}

/// Errors of a re-split.
#[derive(Debug, Error)]
pub enum ResplitError {
    /// The target placement is inconsistent.
    #[error("invalid placement: {0}")]
    Invalid(String),
    /// Building the new stages failed; the old placement was rebuilt and keeps serving.
    #[error("re-split failed ({0}); the previous placement was restored and keeps serving")]
    Restored(String),
    /// Building failed and the old placement could not be rebuilt either.
    #[error(
        "re-split failed ({cause}) and the previous placement could not be restored ({restore}); \
         unload the model and load it again"
    )]
    Broken {
        /// Why the new placement failed.
        cause: String,
        /// Why the old one could not be rebuilt.
        restore: String,
    },
}

/// The layout of a pipeline's stages.
pub fn layout_of(p: &Pipeline) -> Vec<Layout> {
    p.stages()
        .iter()
        .map(|s| Layout {
            device: s.device_name().to_string(),
            layers: s.layers(),
            head: s.has_head(),
        })
        .collect()
}

/// Checks that `target` covers every layer in order and ends with the head.
fn check_layout(target: &[Layout], n_layer: usize) -> Result<(), ResplitError> {
    let mut next = 0;
    for (i, l) in target.iter().enumerate() {
        if l.layers.start != next || (l.head && i + 1 != target.len()) {
            return Err(ResplitError::Invalid(format!(
                "stage {i} on {} runs layers {:?}, expected to start at {next}",
                l.device, l.layers
            )));
        }
        next = l.layers.end;
    }
    if next != n_layer || !target.last().is_some_and(|l| l.head) {
        return Err(ResplitError::Invalid(
            "the stages do not cover the model".into(),
        ));
    }
    Ok(())
}

/// Host copies of the running sequences' caches, per sequence and global layer.
type HostCaches = HashMap<SeqId, Vec<Option<HostKv>>>;

/// Stages in pipeline order, as the pipeline holds them.
type Stages = Vec<Box<dyn PipelineStage>>;

/// Stages built: the stages, bytes copied onto devices, stages built anew.
type Built = (Stages, u64, usize);

/// Builds the stage for `layout`: the kept stage if there is one, else a new one from `source`
/// with the sequences' caches uploaded. Returns the stage and the bytes copied onto its device.
struct Builder<'a> {
    source: &'a dyn TensorSource,
    backends: &'a HashMap<String, StageBackend>,
    config: Arc<super::config::ModelConfig>,
    host: &'a HostCaches,
    live: &'a [LiveSequence],
    max_batch: usize,
    max_logit_rows: usize,
}

impl Builder<'_> {
    fn build(&self, layout: &Layout) -> Result<(Box<dyn PipelineStage>, u64), String> {
        let backend = self
            .backends
            .get(&layout.device)
            .ok_or_else(|| format!("no backend for device {}", layout.device))?;
        let mut stage = backend
            .load_stage(
                Arc::clone(&self.config),
                self.source,
                layout.layers.clone(),
                layout.head,
                self.max_batch,
                self.max_logit_rows,
                &mut || {},
            )
            .map_err(|e| e.to_string())?;
        for seq in self.live {
            let caches = self
                .host
                .get(&seq.id)
                .ok_or_else(|| format!("no host copy of sequence {}", seq.id))?;
            let slice: Vec<HostKv> = layout
                .layers
                .clone()
                .map(|il| {
                    caches
                        .get(il)
                        .and_then(Option::clone)
                        .ok_or_else(|| format!("no host copy of layer {il} of sequence {}", seq.id))
                })
                .collect::<Result<_, _>>()?;
            stage
                .upload_sequence(seq.id, &slice, seq.capacity)
                .map_err(|e| e.to_string())?;
        }
        let bytes = stage.weight_bytes() + stage.kv_bytes();
        Ok((stage, bytes))
    }

    /// Builds `target`, taking kept stages from `kept` (by target index). On failure, the kept
    /// stages are put back into `kept` and the error returned.
    fn build_all(
        &self,
        target: &[Layout],
        kept: &mut [Option<Box<dyn PipelineStage>>],
    ) -> Result<Built, String> {
        let mut built: Vec<(usize, Box<dyn PipelineStage>)> = Vec::with_capacity(target.len());
        let mut bytes = 0;
        let mut rebuilt = 0;
        for (i, layout) in target.iter().enumerate() {
            if let Some(stage) = kept[i].take() {
                built.push((i, stage));
                continue;
            }
            match self.build(layout) {
                Ok((stage, b)) => {
                    bytes += b;
                    rebuilt += 1;
                    built.push((i, stage));
                }
                Err(e) => {
                    // Give kept stages back; new ones are dropped here, freeing their memory.
                    for (j, stage) in built {
                        if kept_slot(target, j, &*stage) {
                            kept[j] = Some(stage);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok((built.into_iter().map(|(_, s)| s).collect(), bytes, rebuilt))
    }
}

/// Whether `stage` was a kept one (same layout as target slot `j`); new stages have it too, but
/// then they are equal anyway and keeping them is just as right.
fn kept_slot(target: &[Layout], j: usize, stage: &dyn PipelineStage) -> bool {
    let l = &target[j];
    stage.device_name() == l.device && stage.layers() == l.layers && stage.has_head() == l.head
}

/// Re-splits `pipeline` to `target` (see the module docs for the memory order). `source` is the
/// model's file, `backends` the backend of every device of the old and new placement, `live` the
/// running sequences (their caches move with their layers).
pub fn resplit(
    pipeline: &mut Pipeline,
    source: &dyn TensorSource,
    target: &[Layout],
    backends: &HashMap<String, StageBackend>,
    live: &[LiveSequence],
    max_batch: usize,
    max_logit_rows: usize,
) -> Result<ResplitReport, ResplitError> {
    let started = Instant::now();
    let config = Arc::clone(pipeline.config());
    check_layout(target, config.n_layer)?;
    let old = layout_of(pipeline);
    let mut report = ResplitReport {
        sequences: live.len(),
        ..ResplitReport::default()
    };
    let device_of = |layouts: &[Layout], il: usize| {
        layouts
            .iter()
            .find(|l| l.layers.contains(&il))
            .map(|l| l.device.clone())
    };
    report.layers_moved = (0..config.n_layer)
        .filter(|&il| device_of(&old, il) != device_of(target, il))
        .count();
    if old == target {
        report.secs = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // Copy out the caches of every stage that will not be kept.
    let keep_old: Vec<bool> = old.iter().map(|l| target.contains(l)).collect();
    let mut host: HostCaches = live
        .iter()
        .map(|s| (s.id, vec![None; config.n_layer]))
        .collect();
    for (i, stage) in pipeline.stages().iter().enumerate() {
        if keep_old[i] {
            continue;
        }
        for seq in live {
            let caches = stage
                .download_sequence(seq.id, seq.len)
                .map_err(|e| ResplitError::Invalid(format!("copying sequence {}: {e}", seq.id)))?;
            let slots = host.entry(seq.id).or_default();
            for (il, kv) in stage.layers().zip(caches) {
                slots[il] = Some(kv);
            }
        }
    }

    // Take the stages out: kept ones wait in their new slot, the others are dropped now.
    let old_stages = pipeline.replace_stages(Vec::new());
    let mut kept_new: Vec<Option<Box<dyn PipelineStage>>> = target.iter().map(|_| None).collect();
    for (i, stage) in old_stages.into_iter().enumerate() {
        if keep_old[i] {
            if let Some(j) = target.iter().position(|l| l == &old[i]) {
                kept_new[j] = Some(stage);
            }
        }
    }

    let builder = Builder {
        source,
        backends,
        config: Arc::clone(&config),
        host: &host,
        live,
        max_batch,
        max_logit_rows,
    };
    match builder.build_all(target, &mut kept_new) {
        Ok((stages, bytes, rebuilt)) => {
            pipeline.replace_stages(stages);
            report.bytes_moved = bytes;
            report.stages_rebuilt = rebuilt;
            report.secs = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(cause) => {
            // Rebuild the old placement, with the kept stages back in their old slots.
            let mut kept_old: Vec<Option<Box<dyn PipelineStage>>> =
                old.iter().map(|_| None).collect();
            for (j, slot) in kept_new.into_iter().enumerate() {
                if let (Some(stage), Some(i)) = (slot, old.iter().position(|l| l == &target[j])) {
                    kept_old[i] = Some(stage);
                }
            }
            match builder.build_all(&old, &mut kept_old) {
                Ok((stages, _, _)) => {
                    pipeline.replace_stages(stages);
                    Err(ResplitError::Restored(cause))
                }
                Err(restore) => Err(ResplitError::Broken { cause, restore }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(device: &str, layers: Range<usize>, head: bool) -> Layout {
        Layout {
            device: device.into(),
            layers,
            head,
        }
    }

    use crate::make_model::{self, MakeModelArgs, Preset, WeightType};
    use crate::model::batch::Batch;
    use crate::model::load::{build_pipeline, OpenedModel, StageSpec};
    use llmd_kernels::backend::{CpuBackend, DeviceMemory};
    use llmd_kernels::cpu::ThreadPool;

    /// A tiny random 4-layer llama written to `dir`.
    fn tiny_model(dir: &std::path::Path) -> OpenedModel {
        let path = dir.join("tiny.gguf");
        make_model::run(MakeModelArgs {
            arch: make_model::Arch::Llama,
            preset: Preset::Tiny,
            layers: Some(4),
            embd: None,
            ff: None,
            heads: None,
            kv_heads: None,
            head_dim: None,
            vocab: None,
            ctx: None,
            ty: WeightType::Q8_0,
            vocab_kind: None,
            seed: 7,
            header_only: false,
            threads: Some(1),
            fill: make_model::Fill::Random,
            json: false,
            output: path.clone(),
        })
        .unwrap();
        OpenedModel::open(&path).unwrap()
    }

    /// Feeds `tokens` from `pos` and returns the last row's logits.
    fn step(p: &mut Pipeline, tokens: &[u32], pos: usize) -> Vec<f32> {
        let mut b = Batch::default();
        for (i, &t) in tokens.iter().enumerate() {
            b.push(t, (pos + i) as u32, 1, i + 1 == tokens.len());
        }
        let mut logits = Vec::new();
        p.forward(&b, &mut logits).unwrap();
        logits
    }

    #[test]
    fn resplit_keeps_a_live_sequence_exact_and_restores_when_it_cannot_build() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny_model(dir.path());
        let pool = Arc::new(ThreadPool::new(1).unwrap());
        let mem: HashMap<&str, Arc<DeviceMemory>> = [
            ("a", DeviceMemory::new(1 << 30)),
            ("b", DeviceMemory::new(1 << 30)),
            ("tiny", DeviceMemory::new(64 << 10)),
        ]
        .into_iter()
        .collect();
        let backends: HashMap<String, StageBackend> = mem
            .iter()
            .map(|(n, m)| {
                let b = CpuBackend::new(*n, Arc::clone(m), Arc::clone(&pool));
                (n.to_string(), StageBackend::Cpu(Arc::new(b)))
            })
            .collect();
        let build = |layout: &[Layout]| {
            let specs = layout
                .iter()
                .map(|l| StageSpec {
                    backend: backends[&l.device].clone(),
                    layers: l.layers.clone(),
                    head: l.head,
                })
                .collect();
            build_pipeline(&model, specs, 16, 1, |_, _| {}).unwrap()
        };
        let start = [l("a", 0..2, false), l("b", 2..4, true)];
        let prompt = [1, 2, 3, 4, 5];
        let decode = [9, 8, 7, 6];

        // Undisturbed reference.
        let mut reference = build(&start);
        reference.add_sequence(1, 16).unwrap();
        let mut want = vec![step(&mut reference, &prompt, 0)];
        for (i, &t) in decode.iter().enumerate() {
            want.push(step(&mut reference, &[t], prompt.len() + i));
        }
        drop(reference);

        let mut p = build(&start);
        p.add_sequence(1, 16).unwrap();
        let mut got = vec![step(&mut p, &prompt, 0)];
        let live = |len| {
            [LiveSequence {
                id: 1,
                len,
                capacity: 16,
            }]
        };
        // Move layer 2 and the head between steps, then everything to one device.
        let moves = [
            vec![l("a", 0..3, false), l("b", 3..4, true)],
            vec![l("b", 0..4, true)],
        ];
        for (i, &t) in decode.iter().enumerate() {
            if let Some(target) = moves.get(i) {
                let r = resplit(
                    &mut p,
                    &*model.source,
                    target,
                    &backends,
                    &live(prompt.len() + i),
                    16,
                    1,
                )
                .unwrap();
                assert_eq!(r.sequences, 1);
                assert!(r.bytes_moved > 0);
                assert_eq!(layout_of(&p), *target);
            }
            if i == moves.len() {
                // Nothing fits on "tiny": refused, old placement rebuilt and still exact.
                let target = [l("tiny", 0..4, true)];
                let e = resplit(
                    &mut p,
                    &*model.source,
                    &target,
                    &backends,
                    &live(prompt.len() + i),
                    16,
                    1,
                )
                .unwrap_err();
                assert!(matches!(e, ResplitError::Restored(_)), "{e}");
                assert_eq!(layout_of(&p), moves[moves.len() - 1]);
                assert_eq!(mem["tiny"].used(), 0);
            }
            got.push(step(&mut p, &[t], prompt.len() + i));
        }
        assert_eq!(got, want, "logits changed across re-splits");
        // Device a was emptied; b holds exactly its stage's weights and cache.
        assert_eq!(mem["a"].used(), 0);
        let s = &p.stages()[0];
        assert_eq!(mem["b"].used(), s.weight_bytes() + s.kv_bytes());
    }

    #[test]
    fn layouts_must_cover_the_model_in_order() {
        assert!(check_layout(&[l("a", 0..3, false), l("b", 3..5, true)], 5).is_ok());
        assert!(check_layout(&[l("a", 0..3, false), l("b", 4..5, true)], 5).is_err());
        assert!(check_layout(&[l("a", 0..3, true), l("b", 3..5, false)], 5).is_err());
        assert!(check_layout(&[l("a", 0..3, false)], 3).is_err());
        assert!(check_layout(&[l("a", 0..3, false), l("b", 3..3, true)], 3).is_ok());
    }
}
