//! Safe views between raw bytes and slices of block structs.
//!
//! Every block struct in [`super::blocks`] and [`super::blocks_iq`] is plain old data: `#[repr(C)]`, no padding, and every
//! bit pattern of its fields (`u8`, `i8`, `u16`, `i16`, `f32`, `half::f16`) is valid. So a byte
//! slice of the right length *is* a slice of blocks, provided it is aligned for the struct: 2
//! bytes for every block holding an f16 or u16, 4 for [`BlockQ8K`] (its `d` is f32), 1 for
//! [`BlockIQ1M`] and [`BlockMXFP4`] (bytes only).
//!
//! The choice made here: [`view_blocks`] reinterprets in place and fails with
//! [`QuantError::Misaligned`] rather than copying behind the caller's back (GGUF tensor data is
//! 32-byte aligned in the file and a memory map is page aligned, so views of mapped tensors
//! always succeed); [`blocks_from_bytes`] is the convenience that falls back to a copy. The
//! dequantizers in [`super::dequant`] that take bytes need neither: they read each block with an
//! unaligned load, so any byte slice works at full speed.

use std::borrow::Cow;
use std::mem::{align_of, size_of};

use super::blocks::*;
use super::blocks_iq::*;
use super::error::QuantError;
use super::types::GgmlType;

/// A GGML block struct that may be reinterpreted from and to bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]` with no padding bytes, and every bit pattern must be a
/// valid value of every field; `size_of::<Self>()` must equal `TYPE.block_bytes()`.
pub unsafe trait Block: Copy + Send + Sync + 'static {
    /// The tensor type this block encodes.
    const TYPE: GgmlType;
    /// Elements (weights or activations) per block.
    const ELEMS: usize;
}

macro_rules! impl_block {
    ($($block:ty => $ty:ident),* $(,)?) => {$(
        // SAFETY: the struct is #[repr(C)] with only integer, f32 and f16 fields (all bit
        // patterns valid), and its size (asserted below) is the sum of its fields' sizes, so it
        // has no padding.
        unsafe impl Block for $block {
            const TYPE: GgmlType = GgmlType::$ty;
            const ELEMS: usize = GgmlType::$ty.block_elems();
        }
        const _: () = assert!(size_of::<$block>() == GgmlType::$ty.block_bytes());
    )*};
}

impl_block!(
    BlockQ4_0 => Q4_0,
    BlockQ4_1 => Q4_1,
    BlockQ5_0 => Q5_0,
    BlockQ5_1 => Q5_1,
    BlockQ8_0 => Q8_0,
    BlockQ8_1 => Q8_1,
    BlockQ2K => Q2_K,
    BlockQ3K => Q3_K,
    BlockQ4K => Q4_K,
    BlockQ5K => Q5_K,
    BlockQ6K => Q6_K,
    BlockQ8K => Q8_K,
    BlockIQ2XXS => IQ2_XXS,
    BlockIQ2XS => IQ2_XS,
    BlockIQ2S => IQ2_S,
    BlockIQ3XXS => IQ3_XXS,
    BlockIQ3S => IQ3_S,
    BlockIQ1S => IQ1_S,
    BlockIQ1M => IQ1_M,
    BlockIQ4NL => IQ4_NL,
    BlockIQ4XS => IQ4_XS,
    BlockTQ1_0 => TQ1_0,
    BlockTQ2_0 => TQ2_0,
    BlockMXFP4 => MXFP4,
);

fn check_len<B: Block>(bytes: &[u8]) -> Result<(), QuantError> {
    if !bytes.len().is_multiple_of(size_of::<B>()) {
        return Err(QuantError::PartialBlock {
            ty: B::TYPE,
            elems: bytes.len() / size_of::<B>() * B::ELEMS,
            block: B::ELEMS,
        });
    }
    Ok(())
}

/// `bytes` viewed in place as blocks of `B`.
///
/// Fails with [`QuantError::PartialBlock`] if the length is not a whole number of blocks and with
/// [`QuantError::Misaligned`] if `bytes` does not start at a multiple of `B`'s alignment.
pub fn view_blocks<B: Block>(bytes: &[u8]) -> Result<&[B], QuantError> {
    check_len::<B>(bytes)?;
    let addr = bytes.as_ptr() as usize;
    if !addr.is_multiple_of(align_of::<B>()) {
        return Err(QuantError::Misaligned {
            ty: B::TYPE,
            addr,
            align: align_of::<B>(),
        });
    }
    // SAFETY: the pointer is aligned for B (checked), the length is a whole number of blocks
    // (checked), B has no padding and accepts every bit pattern (Block's contract), and the
    // result borrows `bytes` so it cannot outlive or alias a mutable use of them.
    Ok(unsafe {
        std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size_of::<B>())
    })
}

/// `bytes` as blocks of `B`: borrowed in place when aligned, else copied into an aligned vector.
pub fn blocks_from_bytes<B: Block>(bytes: &[u8]) -> Result<Cow<'_, [B]>, QuantError> {
    match view_blocks::<B>(bytes) {
        Ok(blocks) => Ok(Cow::Borrowed(blocks)),
        Err(QuantError::Misaligned { .. }) => Ok(Cow::Owned(
            bytes
                .chunks_exact(size_of::<B>())
                .map(read_block::<B>)
                .collect(),
        )),
        Err(e) => Err(e),
    }
}

/// One block read from exactly `size_of::<B>()` bytes at any alignment.
///
/// # Panics
/// If `bytes.len() != size_of::<B>()` (callers pass `chunks_exact` pieces).
#[inline(always)]
pub fn read_block<B: Block>(bytes: &[u8]) -> B {
    assert_eq!(bytes.len(), size_of::<B>());
    // SAFETY: `bytes` holds exactly size_of::<B>() readable bytes (asserted), read_unaligned
    // needs no alignment, and every bit pattern is a valid B (Block's contract).
    unsafe { bytes.as_ptr().cast::<B>().read_unaligned() }
}

/// The bytes of a slice of blocks (for writing files or hashing).
pub fn blocks_as_bytes<B: Block>(blocks: &[B]) -> &[u8] {
    // SAFETY: B has no padding (Block's contract), so every byte of the slice is initialised;
    // u8 has alignment 1 and the length is the slice's exact size in bytes.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks))
    }
}

/// The bytes of a mutable slice of blocks; any bytes written there leave valid blocks.
pub fn blocks_as_bytes_mut<B: Block>(blocks: &mut [B]) -> &mut [u8] {
    let len = std::mem::size_of_val(blocks);
    // SAFETY: as in blocks_as_bytes; in addition every bit pattern is a valid B, so writes
    // through the byte view cannot produce an invalid block, and the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), len) }
}

/// A block with every byte zero (scales 0.0, quants 0).
pub fn zeroed_block<B: Block>() -> B {
    // SAFETY: all-zero bytes are a valid B (Block's contract: every bit pattern is valid).
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_checks_length_and_alignment() {
        // A u32 buffer is 4-aligned, so offset 2 is 2-aligned but not 4-aligned.
        let buf = vec![zeroed_block::<BlockQ8K>(); 3];
        let bytes = blocks_as_bytes(&buf);
        assert_eq!(
            view_blocks::<BlockQ8_0>(&bytes[..68]).map(|b| b.len()),
            Ok(2)
        );
        assert!(matches!(
            view_blocks::<BlockQ8_0>(&bytes[..67]),
            Err(QuantError::PartialBlock { .. })
        ));
        assert!(matches!(
            view_blocks::<BlockQ8_0>(&bytes[1..69]),
            Err(QuantError::Misaligned { align: 2, .. })
        ));
        assert!(view_blocks::<BlockQ8K>(&bytes[..292]).is_ok());
        assert!(matches!(
            view_blocks::<BlockQ8K>(&bytes[2..294]),
            Err(QuantError::Misaligned { align: 4, .. })
        ));
    }

    #[test]
    fn unaligned_bytes_are_copied_with_the_same_content() {
        let mut buf = [0u8; 1 + 2 * 34];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = i as u8;
        }
        let src = &buf[1..];
        let blocks = blocks_from_bytes::<BlockQ8_0>(src).unwrap();
        assert_eq!(blocks_as_bytes(&blocks), src);
    }
}
