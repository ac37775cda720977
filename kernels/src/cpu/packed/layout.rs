//! The packed byte layout: GGUF blocks of [`PACK_ROWS`] consecutive rows interleaved so that one
//! 64-byte load holds the same four bytes of every row ("rows in lanes").
//!
//! A matrix of `rows × cols` becomes `rows / PACK_ROWS` row groups, each a run of tiles, one per
//! block column: tile `(g, b)` holds block `b` of rows `16 g .. 16 g + 16`. Within a tile the
//! block's fields come one after the other ([`Segment`]s); a field of `len` bytes is cut into
//! chunks of `chunk` bytes, and chunk `c` of the sixteen rows lies together (`16 * chunk` bytes,
//! row order). A tile is exactly `PACK_ROWS` blocks long, so a packed matrix takes the same bytes
//! as the GGUF one, and packing is a permutation (plus, for Q8_0, flipping each value's sign bit
//! so the kernels read unsigned bytes), undone exactly by [`unpack`].

use crate::cpu::KernelError;
use crate::quant::GgmlType;

/// Rows interleaved in one tile: one 32-bit lane of a 512-bit register per row.
pub const PACK_ROWS: usize = 16;

/// One field of a block: where it lies in the GGUF block and how it is chunked in a tile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    /// Offset of the field in the GGUF block.
    pub src: usize,
    /// Its length in bytes.
    pub len: usize,
    /// Bytes of one row kept together in the tile (2 for an f16, 4 for a 32-bit lane).
    pub chunk: usize,
    /// Whether the bytes are stored with their top bit flipped (signed to offset-128 unsigned).
    pub flip_sign: bool,
}

impl Segment {
    const fn new(src: usize, len: usize, chunk: usize) -> Self {
        Segment {
            src,
            len,
            chunk,
            flip_sign: false,
        }
    }
}

/// Q4_K: d, dmin, the 12 scale bytes as three 32-bit words, 128 bytes of nibbles.
const Q4_K_SEGMENTS: [Segment; 4] = [
    Segment::new(0, 2, 2),
    Segment::new(2, 2, 2),
    Segment::new(4, 12, 4),
    Segment::new(16, 128, 4),
];

/// Q6_K: d, the 16 signed scales as four words, 128 bytes of low nibbles, 64 of high bits.
const Q6_K_SEGMENTS: [Segment; 4] = [
    Segment::new(208, 2, 2),
    Segment::new(192, 16, 4),
    Segment::new(0, 128, 4),
    Segment::new(128, 64, 4),
];

/// Q8_0: d, the 32 values with the sign bit flipped (`q + 128`).
const Q8_0_SEGMENTS: [Segment; 2] = [
    Segment::new(0, 2, 2),
    Segment {
        src: 2,
        len: 32,
        chunk: 4,
        flip_sign: true,
    },
];

/// Q5_0: d, the 32 fifth bits as one word, 16 bytes of nibbles.
const Q5_0_SEGMENTS: [Segment; 3] = [
    Segment::new(0, 2, 2),
    Segment::new(2, 4, 4),
    Segment::new(6, 16, 4),
];

/// The fields of a packed type's block, in tile order (the kernels' offsets follow this order).
pub(crate) const fn segments(ty: GgmlType) -> &'static [Segment] {
    match ty {
        GgmlType::Q4_K => &Q4_K_SEGMENTS,
        GgmlType::Q6_K => &Q6_K_SEGMENTS,
        GgmlType::Q8_0 => &Q8_0_SEGMENTS,
        GgmlType::Q5_0 => &Q5_0_SEGMENTS,
        _ => &[],
    }
}

/// Whether `ty` has a packed layout (and packed kernels).
pub const fn has_packed_layout(ty: GgmlType) -> bool {
    !segments(ty).is_empty()
}

/// Offset in a tile of the field `index` of [`segments`].
pub(crate) const fn tile_offset(ty: GgmlType, index: usize) -> usize {
    let segs = segments(ty);
    let mut off = 0;
    let mut i = 0;
    while i < index {
        off += PACK_ROWS * segs[i].len;
        i += 1;
    }
    off
}

/// Checks that `src` and `dst` are `rows × cols` of a packable `ty` in whole row groups.
fn check(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    src: usize,
    dst: usize,
) -> Result<usize, KernelError> {
    if !has_packed_layout(ty) {
        return Err(KernelError::UnsupportedType(ty));
    }
    let block = ty.block_elems();
    if !cols.is_multiple_of(block) {
        return Err(KernelError::RowNotBlocks { ty, cols, block });
    }
    if !rows.is_multiple_of(PACK_ROWS) {
        return Err(KernelError::Length {
            what: "packed rows (whole groups of 16)",
            expected: rows.next_multiple_of(PACK_ROWS),
            got: rows,
        });
    }
    let bytes = rows * (cols / block) * ty.block_bytes();
    for (what, got) in [("weight bytes to pack", src), ("packed weight bytes", dst)] {
        if got != bytes {
            return Err(KernelError::Length {
                what,
                expected: bytes,
                got,
            });
        }
    }
    Ok(cols / block)
}

/// Every chunk of a `rows × blocks` matrix: calls `visit(gguf_offset, packed_offset, segment)`
/// with the offsets of the chunk's bytes in the GGUF and the packed matrix.
fn for_each_chunk(
    ty: GgmlType,
    rows: usize,
    blocks: usize,
    mut visit: impl FnMut(usize, usize, &Segment),
) {
    let bb = ty.block_bytes();
    for g in 0..rows / PACK_ROWS {
        for b in 0..blocks {
            let mut field_start = (g * blocks + b) * PACK_ROWS * bb;
            for seg in segments(ty) {
                for c in 0..seg.len / seg.chunk {
                    for lane in 0..PACK_ROWS {
                        let row = g * PACK_ROWS + lane;
                        let gguf = (row * blocks + b) * bb + seg.src + c * seg.chunk;
                        let packed = field_start + (c * PACK_ROWS + lane) * seg.chunk;
                        visit(gguf, packed, seg);
                    }
                }
                field_start += PACK_ROWS * seg.len;
            }
        }
    }
}

/// Copies one chunk, flipping sign bits where the segment says so.
#[inline(always)]
fn copy_chunk(src: &[u8], dst: &mut [u8], seg: &Segment) {
    dst.copy_from_slice(src);
    if seg.flip_sign {
        dst.iter_mut().for_each(|b| *b ^= 0x80);
    }
}

/// Packs `src` (GGUF rows, `rows × cols` of `ty`) into `dst` (as long).
///
/// # Errors
/// If `ty` has no packed layout, `rows` is not a multiple of [`PACK_ROWS`], `cols` not of the
/// block, or a length does not match.
pub fn pack(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let blocks = check(ty, rows, cols, src.len(), dst.len())?;
    for_each_chunk(ty, rows, blocks, |gguf, packed, seg| {
        copy_chunk(
            &src[gguf..gguf + seg.chunk],
            &mut dst[packed..packed + seg.chunk],
            seg,
        );
    });
    Ok(())
}

/// Unpacks `src` (as [`pack`] wrote it) into GGUF rows `dst`.
///
/// # Errors
/// As [`pack`].
pub fn unpack(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let blocks = check(ty, rows, cols, dst.len(), src.len())?;
    for_each_chunk(ty, rows, blocks, |gguf, packed, seg| {
        copy_chunk(
            &src[packed..packed + seg.chunk],
            &mut dst[gguf..gguf + seg.chunk],
            seg,
        );
    });
    Ok(())
}

/// Writes row `row` of a packed matrix as its GGUF bytes into `dst` (`ty.row_bytes(cols)` long).
///
/// # Errors
/// As [`pack`], or if `row` is outside the matrix or `dst` has the wrong length.
pub fn unpack_row(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    src: &[u8],
    row: usize,
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let blocks = check(ty, rows, cols, src.len(), src.len())?;
    let bb = ty.block_bytes();
    if row >= rows {
        return Err(KernelError::Length {
            what: "packed row index",
            expected: rows,
            got: row,
        });
    }
    if dst.len() != blocks * bb {
        return Err(KernelError::Length {
            what: "unpacked row bytes",
            expected: blocks * bb,
            got: dst.len(),
        });
    }
    let (g, lane) = (row / PACK_ROWS, row % PACK_ROWS);
    let tile = PACK_ROWS * bb;
    for b in 0..blocks {
        let tile_start = (g * blocks + b) * tile;
        let mut field_start = tile_start;
        for seg in segments(ty) {
            for c in 0..seg.len / seg.chunk {
                let packed = field_start + (c * PACK_ROWS + lane) * seg.chunk;
                let out = b * bb + seg.src + c * seg.chunk;
                copy_chunk(
                    &src[packed..packed + seg.chunk],
                    &mut dst[out..out + seg.chunk],
                    seg,
                );
            }
            field_start += PACK_ROWS * seg.len;
        }
    }
    Ok(())
}

/// Every packed type's fields add up to its block, in chunks that divide them (that they do not
/// overlap is checked by the round-trip tests).
const fn segments_cover_blocks() -> bool {
    let types = [
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::Q5_0,
    ];
    let mut t = 0;
    while t < types.len() {
        let segs = segments(types[t]);
        let mut total = 0;
        let mut i = 0;
        while i < segs.len() {
            if !segs[i].len.is_multiple_of(segs[i].chunk) {
                return false;
            }
            total += segs[i].len;
            i += 1;
        }
        if total != types[t].block_bytes() {
            return false;
        }
        t += 1;
    }
    true
}
const _: () = assert!(segments_cover_blocks());
