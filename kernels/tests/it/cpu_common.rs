//! Shared helpers for the CPU kernel tests: random weight rows of every type, drawn from the
//! test kit's seeded generator.

use half::{bf16, f16};
use llmd_kernels::quant::GgmlType;

use llmd_testkit::blocks::set_block_scales;
pub use llmd_testkit::Rng;

/// `rows` random rows of `cols` elements of `ty`, as GGUF bytes, in a buffer aligned to 8.
pub fn random_weights(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> AlignedBytes {
    let row_bytes = ty
        .row_bytes(cols as u64)
        .expect("cols a multiple of the block") as usize;
    let mut bytes: Vec<u8> = (0..rows * row_bytes)
        .map(|_| rng.next_u64() as u8)
        .collect();
    match ty {
        GgmlType::F32 => {
            for c in bytes.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.f32().to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in bytes.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.f32()).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in bytes.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16::from_f32(rng.f32()).to_le_bytes());
            }
        }
        _ => {
            // Sane positive scales; every other byte stays uniformly random, which every
            // quantized format accepts.
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                set_block_scales(ty, block, || {
                    f16::from_f32(0.001 + 0.01 * (rng.f32() + 1.0))
                });
            }
        }
    }
    AlignedBytes::new(&bytes)
}

/// Bytes stored in u64s so that any block struct can view them.
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub fn new(bytes: &[u8]) -> Self {
        let words = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .collect();
        AlignedBytes {
            words,
            len: bytes.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the u64 buffer holds at least `len` initialised bytes (native-endian packing
        // keeps byte i at offset i); u8 has alignment 1.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Every weight type the matrix multiply supports: the quant crate's type table less what
/// llmd does not compute with ([`GgmlType::is_supported`]) and Q8_K, the K-quants' activation
/// format, which no model's weights use.
pub fn weight_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|t| t.is_supported() && *t != GgmlType::Q8_K)
}
