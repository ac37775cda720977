//! A pipeline taken apart, for a live re-split: every layer (its weights and the KV caches of its
//! sequences) and the output head become separate parts that stay resident where they are. A
//! part moves to another device in one direct copy per tensor (device to device on a GPU, peer
//! to peer between GPUs, host to device and back; see `Backend::import_weight`), goes back into a
//! stage on the device it is on without any copy, or is spilled: its KV caches copied to the
//! host and its weights read again from the model file into host memory (refused if the file
//! changed since the load), when no device has room to take it while it is still resident.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use llmd_kernels::backend::{Backend, BackendError, HostKv, HostTensor, KvView, WeightView};

use super::batch::SeqId;
use super::config::ModelConfig;
use super::host_tensors::{HostTensors, PartSource};
use super::weights::{FeedForward, HeadWeights, LayerWeights, TensorSource, WeightError};

/// Which part of the model: a layer, or the output head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Transformer layer `il`.
    Layer(usize),
    /// The output head.
    Head,
}

impl Slot {
    /// Its index among `n_layer + 1` parts (the head last).
    pub fn index(self, n_layer: usize) -> usize {
        match self {
            Slot::Layer(il) => il,
            Slot::Head => n_layer,
        }
    }

    /// The slot at `index` among `n_layer + 1` parts.
    pub fn at(index: usize, n_layer: usize) -> Slot {
        if index < n_layer {
            Slot::Layer(index)
        } else {
            Slot::Head
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Layer(il) => write!(f, "layer {il}"),
            Slot::Head => f.write_str("the output head"),
        }
    }
}

/// The weights of one part (`W`: in the file, on a device, or a view).
pub enum PartWeights<W> {
    /// A layer's.
    Layer(usize, LayerWeights<W>),
    /// The head's.
    Head(HeadWeights<W>),
}

impl<W> PartWeights<W> {
    /// Which part.
    pub fn slot(&self) -> Slot {
        match self {
            PartWeights::Layer(il, _) => Slot::Layer(*il),
            PartWeights::Head(_) => Slot::Head,
        }
    }

    /// The same part with every tensor passed through `f`.
    pub fn try_map<'s, V, E>(
        &'s self,
        f: impl FnMut(&'s W) -> Result<V, E>,
    ) -> Result<PartWeights<V>, E> {
        Ok(match self {
            PartWeights::Layer(il, w) => PartWeights::Layer(*il, w.try_map(f)?),
            PartWeights::Head(h) => PartWeights::Head(h.try_map(f)?),
        })
    }

    /// Every tensor.
    pub fn tensors(&self) -> Vec<&W> {
        match self {
            PartWeights::Layer(_, w) => w.tensors().collect(),
            PartWeights::Head(h) => h.tensors().collect(),
        }
    }
}

impl<'a> PartWeights<WeightView<'a>> {
    /// The tensors of `slot` in `source`, shape-checked against `config`, as views a device
    /// uploads.
    pub fn from_source<S: TensorSource + ?Sized>(
        source: &'a S,
        config: &ModelConfig,
        slot: Slot,
    ) -> Result<Self, WeightError> {
        let found = match slot {
            Slot::Layer(il) => {
                PartWeights::Layer(il, LayerWeights::from_source(source, config, il)?)
            }
            Slot::Head => PartWeights::Head(HeadWeights::from_source(source, config)?),
        };
        found.try_map(|t: &HostTensor<'a>| Ok(t.view()))
    }
}

/// A running sequence's KV cache in one part, as a device copies it.
pub struct KvCopy<'a> {
    /// The sequence.
    pub seq: SeqId,
    /// Its cached positions.
    pub view: KvView<'a>,
    /// Positions the copy must have room for.
    pub capacity: usize,
}

/// A running sequence: how much of its cache to move and how much room it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSequence {
    /// Its id.
    pub id: SeqId,
    /// Positions in its KV cache now.
    pub len: usize,
    /// Positions its KV cache has room for.
    pub capacity: usize,
}

/// One part of a model taken apart, wherever it is.
pub trait Part: Send {
    /// Which part.
    fn slot(&self) -> Slot;
    /// The device it is resident on; `None` when spilled to the host.
    fn device_name(&self) -> Option<&str>;
    /// Bytes it holds on its device (weights and KV caches); when spilled, the bytes it held on
    /// the device it came from (about what it needs on the next).
    fn bytes(&self) -> u64;
    /// Its weights as a device copies them (spilled parts: from their host copy).
    fn weight_views<'a>(
        &'a self,
        config: &ModelConfig,
    ) -> Result<PartWeights<WeightView<'a>>, WeightError>;
    /// The KV caches of the `live` sequences, each with its cached positions.
    fn kv_views(&self, live: &[LiveSequence]) -> Result<Vec<KvCopy<'_>>, WeightError>;
    /// Itself, to check its type before taking it back.
    fn as_any(&self) -> &dyn Any;
    /// Itself, to take it back into a stage of its type.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// The KV caches of the `live` sequences found by `view` (a layer must have one for each; the
/// head has none).
fn live_kv_views<'a>(
    slot: Slot,
    live: &[LiveSequence],
    mut view: impl FnMut(SeqId, usize) -> Option<Result<KvView<'a>, BackendError>>,
) -> Result<Vec<KvCopy<'a>>, WeightError> {
    if slot == Slot::Head {
        return Ok(Vec::new());
    }
    live.iter()
        .map(|s| {
            let found = view(s.id, s.len).ok_or_else(|| {
                WeightError::Missing(format!("KV cache of sequence {} in {slot}", s.id))
            })?;
            Ok(KvCopy {
                seq: s.id,
                view: found?,
                capacity: s.capacity,
            })
        })
        .collect()
}

/// A part resident on a device.
pub struct DevicePart<B: Backend> {
    /// The device (the backend the stage it came from used).
    pub backend: Arc<B>,
    /// Its weights.
    pub weights: PartWeights<B::Weight>,
    /// KV caches by sequence (none for the head).
    pub kv: HashMap<SeqId, B::KvCache>,
}

impl<B: Backend> DevicePart<B> {
    /// Copies a part onto `backend`: its weights (`weights`) and its sequences' caches (`kv`).
    pub fn import(
        backend: &Arc<B>,
        weights: &PartWeights<WeightView<'_>>,
        kv: &[KvCopy<'_>],
    ) -> Result<Self, BackendError> {
        let weights = weights.try_map(|w| backend.import_weight(w))?;
        let kv = kv
            .iter()
            .map(|c| Ok((c.seq, backend.import_kv(&c.view, c.capacity)?)))
            .collect::<Result<_, BackendError>>()?;
        Ok(DevicePart {
            backend: Arc::clone(backend),
            weights,
            kv,
        })
    }
}

impl<B: Backend> Part for DevicePart<B> {
    fn slot(&self) -> Slot {
        self.weights.slot()
    }

    fn device_name(&self) -> Option<&str> {
        Some(self.backend.device_name())
    }

    fn bytes(&self) -> u64 {
        let weights: u64 = self
            .weights
            .tensors()
            .into_iter()
            .map(|w| self.backend.weight_bytes(w))
            .sum();
        let kv: u64 = self.kv.values().map(|kv| self.backend.kv_bytes(kv)).sum();
        weights + kv
    }

    fn weight_views<'a>(
        &'a self,
        _config: &ModelConfig,
    ) -> Result<PartWeights<WeightView<'a>>, WeightError> {
        Ok(self.weights.try_map(|w| self.backend.weight_view(w))?)
    }

    fn kv_views(&self, live: &[LiveSequence]) -> Result<Vec<KvCopy<'_>>, WeightError> {
        live_kv_views(self.slot(), live, |seq, len| {
            self.kv.get(&seq).map(|kv| self.backend.kv_view(kv, len))
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A part spilled to the host: its sequences' caches copied out, its weights read again from the
/// model file.
pub struct HostPart {
    /// Which part.
    slot: Slot,
    /// Its weights, read from the model file when it was spilled.
    weights: HostTensors,
    /// KV caches by sequence.
    kv: HashMap<SeqId, HostKv>,
    /// Bytes it held on its device.
    bytes: u64,
    /// Whether its layer's experts live on another device (`--cpu-moe`): they stay there, and
    /// the copy read from the file with the layer is left out of its weights.
    experts_elsewhere: bool,
}

impl HostPart {
    /// Reads `part`'s weights from `source` (the model file: refused if it changed since the
    /// load, and `part` stays where it is) and copies its caches of the `live` sequences to the
    /// host; dropping `part` afterwards frees its device memory.
    pub fn spill(
        part: &dyn Part,
        live: &[LiveSequence],
        source: &dyn PartSource,
        config: &ModelConfig,
    ) -> Result<Self, WeightError> {
        let experts_elsewhere = matches!(
            part.weight_views(config)?,
            PartWeights::Layer(
                _,
                LayerWeights {
                    ffn: FeedForward::Elsewhere,
                    ..
                }
            )
        );
        let weights = source.read_part(config, part.slot())?;
        // Shape-checked now, so a part that could not come back is never spilled.
        PartWeights::from_source(&weights, config, part.slot())?;
        let kv = part
            .kv_views(live)?
            .iter()
            .map(|c| Ok((c.seq, HostKv::download(&c.view)?)))
            .collect::<Result<_, BackendError>>()?;
        Ok(HostPart {
            slot: part.slot(),
            weights,
            kv,
            bytes: part.bytes(),
            experts_elsewhere,
        })
    }
}

impl Part for HostPart {
    fn slot(&self) -> Slot {
        self.slot
    }

    fn device_name(&self) -> Option<&str> {
        None
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn weight_views<'a>(
        &'a self,
        config: &ModelConfig,
    ) -> Result<PartWeights<WeightView<'a>>, WeightError> {
        let mut weights = PartWeights::from_source(&self.weights, config, self.slot)?;
        if let (PartWeights::Layer(_, layer), true) = (&mut weights, self.experts_elsewhere) {
            layer.ffn = FeedForward::Elsewhere;
        }
        Ok(weights)
    }

    fn kv_views(&self, live: &[LiveSequence]) -> Result<Vec<KvCopy<'_>>, WeightError> {
        live_kv_views(self.slot, live, |seq, _| {
            self.kv.get(&seq).map(|kv| Ok(kv.view()))
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
