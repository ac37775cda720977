//! Weights repacked at load into the layout the AVX-512 kernels stream (as ggml's CPU "repack"
//! buffers do): Q4_K, Q6_K, Q8_0 and Q5_0 matrices whose row count is a multiple of
//! [`PACK_ROWS`], on CPUs where [`super::isa`] is [`super::Isa::Avx512`].
//!
//! - [`layout`]: the byte permutation (same size as GGUF) and its exact inverse, so a packed
//!   weight can still be handed to another device in GGUF's layout.
//! - [`act`]: the activation formats of the packed kernels.
//! - `run`: the threaded matrix multiply over packed weights.

pub mod act;
pub mod layout;
mod run;

pub use layout::{has_packed_layout, pack, unpack, unpack_row, PACK_ROWS};
pub(crate) use run::matmul_packed;

use super::Isa;
use crate::quant::GgmlType;

/// Whether a `rows × cols` weight of `ty` is stored packed on this CPU: its type has a packed
/// layout and kernels, whole row groups, whole blocks, and the CPU runs the AVX-512 kernels.
pub fn should_pack(ty: GgmlType, rows: usize, cols: usize) -> bool {
    super::isa() >= Isa::Avx512
        && has_packed_layout(ty)
        && rows > 0
        && rows.is_multiple_of(PACK_ROWS)
        && cols > 0
        && cols.is_multiple_of(ty.block_elems())
}
