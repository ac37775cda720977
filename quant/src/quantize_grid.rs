//! The codebook quantizers ggml can run without an importance matrix: IQ3_XXS, IQ3_S and IQ2_S,
//! byte-exact with ggml's `quantize_iq3_xxs` / `quantize_iq3_s` / `quantize_iq2_s` (what
//! llama-quantize runs for these types without one).
//!
//! Each searches, per group of weights, a scale for which each `N` weights (as magnitudes;
//! signs are stored apart) fall on a codeword of the grid, snapping points that are not on the
//! grid to their nearest codeword among precomputed neighbours. The neighbour lists are what
//! ggml's `iq3xs_init_impl` / `iq2xs_init_impl` build at start-up, rebuilt here once per process
//! ([`CodeGrid`]) from the codebooks in [`super::tables`]: for each point off the grid, the
//! codewords at its `nwant` smallest squared distances, ordered by (distance, index).
//!
//! Every float operation is ggml's, in ggml's order. ggml's IQ3_S writes the codes of a group
//! whose weights are all zero nowhere and shifts the later groups' codes and signs down by one
//! slot (its write cursors advance only for quantized groups); this is reproduced, since the
//! files must be the same.

use std::sync::OnceLock;

use super::blocks_iq::{BlockIQ2S, BlockIQ3S, BlockIQ3XXS};
use super::fit::nearest_int;
use super::float::f32_to_f16;
use super::quantize::check_row;
use super::tables::{IQ2S_GRID, IQ3S_GRID, IQ3XXS_GRID};
use super::types::QK_K;

/// ggml's `GROUP_MAX_EPS_IQ3_XXS` and `GROUP_MAX_EPS_IQ2_S`: a group below this is all zeros.
const GROUP_MAX_EPS_IQ: f32 = 1e-8;

/// A grid of `N`-weight codewords with ggml's lookup structures.
struct CodeGrid<const N: usize> {
    /// Codeword `j` as `N` magnitudes `2 l + 1`.
    grid: Vec<[i8; N]>,
    /// Bits per level in a point index (3 for the IQ3 grids, 2 for IQ2).
    bits: usize,
    /// For each point (levels packed `bits` each, the first lowest), its codeword, if on the
    /// grid.
    map: Vec<Option<u16>>,
    /// For each point off the grid whose levels are all below `max_level`, the codewords to try.
    neighbours: Vec<Vec<u16>>,
}

impl<const N: usize> CodeGrid<N> {
    /// Builds ggml's tables for `grid` (codewords as levels) for points of levels
    /// `0..max_level`, keeping the codewords at the `nwant` smallest distances of each.
    fn new(levels: Vec<[i8; N]>, bits: usize, max_level: usize, nwant: usize) -> Self {
        let grid: Vec<[i8; N]> = levels.iter().map(|l| l.map(|l| 2 * l + 1)).collect();
        let mut map = vec![None; 1 << (bits * N)];
        for (j, l) in levels.iter().enumerate() {
            map[point(l, bits)] = Some(j as u16);
        }
        let mut neighbours = vec![Vec::new(); map.len()];
        for (p, out) in neighbours.iter_mut().enumerate() {
            let level = |k: usize| (p >> (bits * k)) & ((1 << bits) - 1);
            if map[p].is_some() || (0..N).any(|k| level(k) >= max_level) {
                continue;
            }
            let pos: [i32; N] = std::array::from_fn(|k| 2 * level(k) as i32 + 1);
            let mut dist: Vec<(i32, u16)> = grid
                .iter()
                .enumerate()
                .map(|(j, g)| {
                    let d2 = (0..N).map(|k| (i32::from(g[k]) - pos[k]).pow(2)).sum();
                    (d2, j as u16)
                })
                .collect();
            dist.sort_unstable();
            let (mut d2, mut nhave) = (dist[0].0, 1);
            for &(d, j) in &dist {
                if d > d2 {
                    if nhave == nwant {
                        break;
                    }
                    d2 = d;
                    nhave += 1;
                }
                out.push(j);
            }
        }
        CodeGrid {
            grid,
            bits,
            map,
            neighbours,
        }
    }

    /// ggml's `iq*_find_best_neighbour`: among the neighbours of off-grid point `p`, the
    /// codeword nearest to `xval / scale` in the weighted squared distance; returns its index.
    fn best_neighbour(&self, p: usize, xval: &[f32], weight: &[f32], scale: f32) -> u16 {
        let mut best_d2 = f32::MAX;
        let mut best = self.neighbours[p].first().copied().unwrap_or(0);
        for &j in &self.neighbours[p] {
            let g = &self.grid[usize::from(j)];
            let mut d2 = 0.0f32;
            for i in 0..N {
                let diff = scale * f32::from(g[i]) - xval[i];
                d2 += weight[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                best = j;
            }
        }
        best
    }

    /// Writes the levels of codeword `j`.
    fn levels_of(&self, j: u16, levels: &mut [i8]) {
        for (l, &g) in levels.iter_mut().zip(&self.grid[usize::from(j)]) {
            *l = (g - 1) / 2;
        }
    }

    /// The codeword of the `N` `levels`, or the point's index when it is off the grid.
    fn lookup(&self, levels: &[i8]) -> Result<u16, usize> {
        let l: [i8; N] = std::array::from_fn(|i| levels[i]);
        let p = point(&l, self.bits);
        self.map[p].ok_or(p)
    }

    /// The codeword index of each `N` levels of a group. They are on the grid by construction
    /// (every path of [`search`] ends on a codeword's levels), where ggml aborts otherwise.
    fn codes<const G: usize>(&self, levels: &[i8; G]) -> impl Iterator<Item = u16> + '_ {
        let levels = *levels;
        (0..G / N).map(move |k| {
            let code = self.lookup(&levels[N * k..N * k + N]);
            debug_assert!(code.is_ok(), "codebook levels off the grid");
            code.unwrap_or(0)
        })
    }
}

/// The point index of `levels` (`bits` each, the first lowest).
fn point<const N: usize>(levels: &[i8; N], bits: usize) -> usize {
    levels
        .iter()
        .enumerate()
        .fold(0, |u, (i, &l)| u | ((l as usize) << (bits * i)))
}

/// The levels of a codebook's entries: each byte of a packed codeword mapped to its index in
/// `bytes` (the magnitudes the codebook stores for levels 0, 1, ..).
fn grid_levels<const N: usize>(words: impl Iterator<Item = u64>, bytes: &[u8]) -> Vec<[i8; N]> {
    words
        .map(|w| {
            std::array::from_fn(|k| {
                let b = (w >> (8 * k)) as u8;
                bytes.iter().position(|&v| v == b).unwrap_or(0) as i8
            })
        })
        .collect()
}

/// The IQ3_XXS grid: 256 codewords of 4, stored as magnitudes 4, 12, .., 52, 62 (`kMaxQ` 8).
fn iq3xxs_grid() -> &'static CodeGrid<4> {
    static GRID: OnceLock<CodeGrid<4>> = OnceLock::new();
    GRID.get_or_init(|| {
        let words = IQ3XXS_GRID.iter().map(|&w| u64::from(w));
        CodeGrid::new(
            grid_levels(words, &[4, 12, 20, 28, 36, 44, 52, 62]),
            3,
            8,
            2,
        )
    })
}

/// The IQ3_S grid: 512 codewords of 4, stored as magnitudes 1, 3, .., 15 (`kMaxQ` 8).
fn iq3s_grid() -> &'static CodeGrid<4> {
    static GRID: OnceLock<CodeGrid<4>> = OnceLock::new();
    GRID.get_or_init(|| {
        let words = IQ3S_GRID.iter().map(|&w| u64::from(w));
        CodeGrid::new(grid_levels(words, &[1, 3, 5, 7, 9, 11, 13, 15]), 3, 8, 3)
    })
}

/// The IQ2_S grid: 1024 codewords of 8, stored as magnitudes 8, 25, 43 (`kMaxQ` 3).
fn iq2s_grid() -> &'static CodeGrid<8> {
    static GRID: OnceLock<CodeGrid<8>> = OnceLock::new();
    GRID.get_or_init(|| {
        CodeGrid::new(
            grid_levels(IQ2S_GRID.iter().copied(), &[8, 25, 43]),
            2,
            3,
            1,
        )
    })
}

/// How the formats differ in ggml's group search.
struct Search {
    /// Levels per weight (`kMaxQ`): magnitudes `2 l + 1` for `l` in `0..levels`.
    levels: i32,
    /// Scale trials on each side of the first guess.
    tries: i32,
    /// Step between trials, in levels.
    step: f32,
    /// Whether codewords count as on the grid before any trial succeeds (IQ3_XXS, IQ2_S).
    on_grid_at_start: bool,
    /// Whether the final pass re-snaps only the off-grid codewords (IQ3_XXS, IQ2_S) or all.
    resnap_off_grid_only: bool,
}

/// The levels `clamp(round((id * x - 1) / 2), 0, levels - 1)` of magnitudes `xval`.
fn snap(id: f32, xval: &[f32], levels: &mut [i8], max_level: i32) {
    for (l, &x) in levels.iter_mut().zip(xval) {
        *l = nearest_int(0.5 * (id * x - 1.0)).clamp(0, max_level - 1) as i8;
    }
}

/// `(Σ w x q, Σ w q q)` for the magnitudes `q = 2 l + 1` of `levels`.
fn fit_sums<const G: usize>(weight: &[f32; G], xval: &[f32; G], levels: &[i8; G]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..G {
        let w = weight[i];
        let q = f32::from(2 * levels[i] + 1);
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// One group's scale search, as ggml's codebook quantizers run it on magnitudes `xval` with
/// `weight`: returns the scale and fills `levels` (on the grid, `N` weights per codeword). A
/// negative scale (which ggml says should not happen) is left to the caller to flip with the
/// signs.
fn search<const N: usize, const G: usize>(
    g: &CodeGrid<N>,
    s: &Search,
    xval: &[f32; G],
    weight: &[f32; G],
    levels: &mut [i8; G],
) -> f32 {
    let mut waux = [0f32; G];
    for (a, &w) in waux.iter_mut().zip(weight) {
        *a = w.sqrt();
    }
    let mut max = xval[0];
    for &x in &xval[1..] {
        max = if max > x { max } else { x };
    }
    let top = (2 * s.levels - 1) as f32;
    let mut best = 0.0f32;
    let mut scale = max / top;
    let mut on_grid = vec![s.on_grid_at_start; G / N];
    let mut on_grid_aux = vec![true; G / N];
    let mut laux = [0i8; G];
    for is in -s.tries..=s.tries {
        let id = (top + is as f32 * s.step) / max;
        let this_scale = 1.0 / id;
        for (k, on) in on_grid_aux.iter_mut().enumerate() {
            let r = N * k..N * k + N;
            snap(id, &xval[r.clone()], &mut laux[r.clone()], s.levels);
            *on = true;
            if let Err(p) = g.lookup(&laux[r.clone()]) {
                *on = false;
                let j = g.best_neighbour(p, &xval[r.clone()], &waux[r.clone()], this_scale);
                g.levels_of(j, &mut laux[r]);
            }
        }
        let (sumqx, sumq2) = fit_sums(weight, xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            *levels = laux;
            on_grid.copy_from_slice(&on_grid_aux);
        }
    }
    if on_grid.iter().any(|&o| !o) && scale > 0.0 {
        let id = 1.0 / scale;
        for (k, &on) in on_grid.iter().enumerate() {
            if s.resnap_off_grid_only && on {
                continue;
            }
            let r = N * k..N * k + N;
            snap(id, &xval[r.clone()], &mut levels[r.clone()], s.levels);
            if let Err(p) = g.lookup(&levels[r.clone()]) {
                let j = g.best_neighbour(p, &xval[r.clone()], &waux[r.clone()], scale);
                g.levels_of(j, &mut levels[r]);
            }
        }
        let (sumqx, sumq2) = fit_sums(weight, xval, levels);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    scale
}

/// The magnitudes and sign bits (one byte per 8 weights) of a group.
fn magnitudes<const G: usize, const S: usize>(x: &[f32]) -> ([f32; G], [u8; S]) {
    let mut xval = [0f32; G];
    let mut signs = [0u8; S];
    for i in 0..G {
        if x[i] >= 0.0 {
            xval[i] = x[i];
        } else {
            xval[i] = -x[i];
            signs[i / 8] |= 1 << (i % 8);
        }
    }
    (xval, signs)
}

/// The weights `x^2` of a group (ggml's weights without an importance matrix).
fn squares<const G: usize>(x: &[f32]) -> [f32; G] {
    std::array::from_fn(|i| x[i] * x[i])
}

/// The largest of `xval`, as ggml's `MAX` scan finds it.
fn max_of(xval: &[f32]) -> f32 {
    let mut max = xval[0];
    for &v in &xval[1..] {
        max = if max > v { max } else { v };
    }
    max
}

/// The 4-bit code of a group scale against the super-block's `id = 31 / max_scale`.
fn scale_code(id: f32, scale: f32) -> u8 {
    nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15) as u8
}

/// Weights per IQ3 group (one scale, four sign bytes).
const IQ3_GROUP: usize = 32;

/// Quantizes a row to IQ3_XXS as ggml's `quantize_iq3_xxs` does without an importance matrix.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_iq3_xxs(x: &[f32], out: &mut [BlockIQ3XXS]) {
    check_row(x, out);
    const SEARCH: Search = Search {
        levels: 8,
        tries: 15,
        step: 0.2,
        on_grid_at_start: true,
        resnap_off_grid_only: true,
    };
    let g = iq3xxs_grid();
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        y.qs = [0; 3 * QK_K / 8];
        let mut scales = [0f32; QK_K / IQ3_GROUP];
        let mut sas = [0u32; QK_K / IQ3_GROUP];
        let mut max_scale = 0.0f32;
        for (ib, x) in x.chunks_exact(IQ3_GROUP).enumerate() {
            let (mut xval, mut signs) = magnitudes::<IQ3_GROUP, 4>(x);
            let weight = squares::<IQ3_GROUP>(x);
            // IQ3_XXS stores 7 sign bits per 8 weights (the eighth is their parity): with an odd
            // count of negatives, the weight of least x^4 changes sign.
            for k in 0..IQ3_GROUP / 8 {
                if signs[k].count_ones() % 2 == 1 {
                    let mut imin = 0;
                    let mut min = weight[8 * k] * x[8 * k] * x[8 * k];
                    for i in 1..8 {
                        let ax = weight[8 * k + i] * x[8 * k + i] * x[8 * k + i];
                        if ax < min {
                            min = ax;
                            imin = i;
                        }
                    }
                    xval[8 * k + imin] = -xval[8 * k + imin];
                    signs[k] ^= 1 << imin;
                }
                signs[k] &= 127;
            }
            if max_of(&xval) < GROUP_MAX_EPS_IQ {
                continue;
            }
            let mut levels = [0i8; IQ3_GROUP];
            let mut scale = search(g, &SEARCH, &xval, &weight, &mut levels);
            if scale < 0.0 {
                scale = -scale;
                for s in &mut signs {
                    *s = !*s & 127;
                }
            }
            for (k, c) in g.codes(&levels).enumerate() {
                y.qs[8 * ib + k] = c as u8;
            }
            sas[ib] = u32::from(signs[0])
                | (u32::from(signs[1]) << 7)
                | (u32::from(signs[2]) << 14)
                | (u32::from(signs[3]) << 21);
            scales[ib] = scale;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            y.d = f32_to_f16(0.0);
            y.qs = [0; 3 * QK_K / 8];
            continue;
        }
        let d = max_scale / 31.0;
        // ggml's "small improvement via this fudge factor".
        y.d = f32_to_f16(d * 1.0125);
        let id = 1.0 / d;
        for (ib, s) in sas.iter().enumerate() {
            let w = s | (u32::from(scale_code(id, scales[ib])) << 28);
            y.qs[QK_K / 4 + 4 * ib..QK_K / 4 + 4 * ib + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Quantizes a row to IQ3_S as ggml's `quantize_iq3_s` does without an importance matrix.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_iq3_s(x: &[f32], out: &mut [BlockIQ3S]) {
    check_row(x, out);
    const SEARCH: Search = Search {
        levels: 8,
        tries: 9,
        step: 0.2,
        on_grid_at_start: false,
        resnap_off_grid_only: false,
    };
    let g = iq3s_grid();
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        y.qs = [0; QK_K / 4];
        y.qh = [0; QK_K / 32];
        y.signs = [0; QK_K / 8];
        y.scales = [0; QK_K / 64];
        y.d = f32_to_f16(0.0);
        let mut scales = [0f32; QK_K / IQ3_GROUP];
        let mut max_scale = 0.0f32;
        // ggml's write cursors into qs and signs: they advance only for quantized groups.
        let mut slot = 0;
        for (ib, x) in x.chunks_exact(IQ3_GROUP).enumerate() {
            let (xval, mut signs) = magnitudes::<IQ3_GROUP, 4>(x);
            if max_of(&xval) == 0.0 {
                continue;
            }
            let weight = squares::<IQ3_GROUP>(x);
            let mut levels = [0i8; IQ3_GROUP];
            let mut scale = search(g, &SEARCH, &xval, &weight, &mut levels);
            if scale < 0.0 {
                scale = -scale;
                for s in &mut signs {
                    *s = !*s;
                }
            }
            for (k, c) in g.codes(&levels).enumerate() {
                y.qs[8 * slot + k] = c as u8;
                y.qh[ib] |= ((c >> 8) as u8) << k;
            }
            y.signs[4 * slot..4 * slot + 4].copy_from_slice(&signs);
            slot += 1;
            scales[ib] = scale;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        // ggml's fudge factor for IQ3_S.
        y.d = f32_to_f16(d * 1.033);
        let id = 1.0 / d;
        for (s, pair) in y.scales.iter_mut().zip(scales.chunks_exact(2)) {
            *s = scale_code(id, pair[0]) | (scale_code(id, pair[1]) << 4);
        }
    }
}

/// Weights per IQ2_S group (one 4-bit scale, two sign bytes).
const IQ2S_GROUP: usize = 16;

/// Quantizes a row to IQ2_S as ggml's `quantize_iq2_s` does without an importance matrix: the
/// weights are `sigma^2 / 4 + x^2`, with `sigma^2` twice the super-block's mean square.
///
/// # Panics
/// If `x.len() != 256 * out.len()`.
pub fn quantize_row_iq2_s(x: &[f32], out: &mut [BlockIQ2S]) {
    check_row(x, out);
    const SEARCH: Search = Search {
        levels: 3,
        tries: 9,
        step: 0.1,
        on_grid_at_start: true,
        resnap_off_grid_only: true,
    };
    let g = iq2s_grid();
    for (x, y) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        y.qs = [0; QK_K / 4];
        y.qh = [0; QK_K / 32];
        y.scales = [0; QK_K / 32];
        y.d = f32_to_f16(0.0);
        let mut sumx2 = 0.0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        let mut scales = [0f32; QK_K / IQ2S_GROUP];
        let mut max_scale = 0.0f32;
        for (ib, x) in x.chunks_exact(IQ2S_GROUP).enumerate() {
            let (xval, mut signs) = magnitudes::<IQ2S_GROUP, 2>(x);
            if max_of(&xval) < GROUP_MAX_EPS_IQ {
                continue;
            }
            let weight: [f32; IQ2S_GROUP] = std::array::from_fn(|i| 0.25 * sigma2 + x[i] * x[i]);
            let mut levels = [0i8; IQ2S_GROUP];
            let mut scale = search(g, &SEARCH, &xval, &weight, &mut levels);
            if scale < 0.0 {
                scale = -scale;
                for s in &mut signs {
                    *s = !*s;
                }
            }
            for (k, c) in g.codes(&levels).enumerate() {
                let i8 = 2 * ib + k;
                y.qs[i8] = c as u8;
                y.qh[i8 / 4] |= ((c >> 8) as u8) << (2 * (i8 % 4));
                y.qs[QK_K / 8 + i8] = signs[k];
            }
            scales[ib] = scale;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        // ggml's fudge factor for IQ2_S.
        y.d = f32_to_f16(d * 0.9875);
        let id = 1.0 / d;
        for (s, pair) in y.scales.iter_mut().zip(scales.chunks_exact(2)) {
            *s = scale_code(id, pair[0]) | (scale_code(id, pair[1]) << 4);
        }
    }
}
