//! A pipeline taken apart, for a live re-split: every layer (its weights and the KV caches of its
//! sequences) and the output head become separate parts that stay resident where they are. A
//! part moves to another device in one direct copy per tensor (device to device on a GPU, peer
//! to peer between GPUs, host to device and back; see `Backend::import_weight`), goes back into a
//! stage on the device it is on without any copy, or is spilled: its KV caches copied to the
//! host and its weights read again from the model file into host memory (refused if the file
//! changed since the load), when no device has room to take it while it is still resident.
//!
//! The parts here are typed by their backend; `super::backend::AnyPart` holds one whatever its
//! device.

use std::collections::HashMap;
use std::sync::Arc;

use llmd_kernels::backend::{Backend, BackendError, HostKv, HostTensor, KvView, WeightView};

use super::batch::SeqId;
use super::config::ModelConfig;
use super::host_tensors::{HostTensors, PartSource};
/// Named here too, beside the parts it numbers.
pub use super::weights::Slot;
use super::weights::{FeedForward, HeadWeights, LayerWeights, TensorSource, WeightError};

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

/// A sequence whose caches move with their layers: how much of its cache to move and how much
/// room it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSequence {
    /// Its id.
    pub id: SeqId,
    /// Positions in its KV cache now.
    pub len: usize,
    /// Positions its KV cache has room for.
    pub capacity: usize,
    /// A finished generation's cache kept by the prefix cache, not a running generation (a
    /// re-split moves it alike but does not count it among the generations carried over).
    pub retained: bool,
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

    /// Which part.
    pub fn slot(&self) -> Slot {
        self.weights.slot()
    }

    /// The device it is resident on.
    pub fn device_name(&self) -> &str {
        self.backend.device_name()
    }

    /// Bytes it holds on its device (weights and KV caches).
    pub fn bytes(&self) -> u64 {
        let weights: u64 = self
            .weights
            .tensors()
            .into_iter()
            .map(|w| self.backend.weight_bytes(w))
            .sum();
        let kv: u64 = self.kv.values().map(|kv| self.backend.kv_bytes(kv)).sum();
        weights + kv
    }

    /// Its weights as a device copies them.
    pub fn weight_views(&self) -> Result<PartWeights<WeightView<'_>>, WeightError> {
        Ok(self.weights.try_map(|w| self.backend.weight_view(w))?)
    }

    /// The KV caches of the `live` sequences, each with its cached positions.
    pub fn kv_views(&self, live: &[LiveSequence]) -> Result<Vec<KvCopy<'_>>, WeightError> {
        live_kv_views(self.slot(), live, |seq, len| {
            self.kv.get(&seq).map(|kv| self.backend.kv_view(kv, len))
        })
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
    /// Reads the weights of the part in `slot` from `source` (the model file: refused if it
    /// changed since the load, and the part stays where it is) and copies its caches (`kv`: the
    /// running sequences' caches where the part is resident) to the host; `bytes` is what it held
    /// on its device; `experts_elsewhere`, whether its layer's experts live on another device.
    /// Dropping the part afterwards frees its device memory.
    pub fn spill<'k>(
        slot: Slot,
        bytes: u64,
        experts_elsewhere: bool,
        kv: impl FnOnce() -> Result<Vec<KvCopy<'k>>, WeightError>,
        source: &dyn PartSource,
        config: &ModelConfig,
    ) -> Result<Self, WeightError> {
        let weights = source.read_part(config, slot)?;
        // Shape-checked now, so a part that could not come back is never spilled.
        PartWeights::from_source(&weights, config, slot)?;
        let kv = kv()?
            .iter()
            .map(|c| Ok((c.seq, HostKv::download(&c.view)?)))
            .collect::<Result<_, BackendError>>()?;
        Ok(HostPart {
            slot,
            weights,
            kv,
            bytes,
            experts_elsewhere,
        })
    }

    /// Which part.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The bytes it held on the device it came from (about what it needs on the next).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Its weights as a device copies them, from their host copy.
    pub fn weight_views<'a>(
        &'a self,
        config: &ModelConfig,
    ) -> Result<PartWeights<WeightView<'a>>, WeightError> {
        let mut weights = PartWeights::from_source(&self.weights, config, self.slot)?;
        if let (PartWeights::Layer(_, layer), true) = (&mut weights, self.experts_elsewhere) {
            layer.ffn = FeedForward::Elsewhere;
        }
        Ok(weights)
    }

    /// The KV caches of the `live` sequences, each with its cached positions.
    pub fn kv_views(&self, live: &[LiveSequence]) -> Result<Vec<KvCopy<'_>>, WeightError> {
        live_kv_views(self.slot, live, |seq, _| {
            self.kv.get(&seq).map(|kv| Ok(kv.view()))
        })
    }
}
